//! A coherent cache of NHIs' facts (ADR 0008).
//!
//! Authority decides with facts from inventory. Reading them per decision
//! costs a round trip, so they are cached, together with their Cedar entity,
//! under a lease from inventory's `WatchIdentityChanges`: inventory sends
//! the ids a committed write changed and holds the write's answer until
//! this cache has dropped them (or its lease has run out). The cache serves
//! only while it holds a lease, so once a write has returned no decision
//! uses what it replaced. Without a lease (inventory restarting, the stream
//! broken) every decision reads inventory, as if there were no cache.
//!
//! Facts that change with time alone (posture parts of the risk score, such
//! as "expired" or "dormant") are re-read after [`MAX_AGE`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use steward_proto::steward::inventory::v1 as inventory;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use steward_telemetry::TracedChannel;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::engine::Resource;

/// How long an entry serves before it is read again.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// From this age an entry is re-read in the background while it serves, so
/// a busy NHI's decisions never wait for the re-read.
pub const REFRESH_AFTER: Duration = Duration::from_secs(5);
/// Most entries kept; past it the cache starts over.
pub const MAX_ENTRIES: usize = 200_000;
/// How often a lease is asked for (a lease lasts two seconds).
const RENEW: Duration = Duration::from_millis(500);
/// Taken off every lease, for clocks that run at slightly different rates.
const MARGIN: Duration = Duration::from_millis(100);

#[derive(Debug)]
enum Slot {
    /// A read is under way; it may fill the slot unless a change for the
    /// identity (or a reset) arrives first.
    Pending(u64),
    Ready {
        resource: Arc<Resource>,
        read_at: Instant,
        /// A background re-read under way; it may replace the entry
        /// unless a change for the identity arrives first.
        refreshing: Option<u64>,
    },
}

/// What the cache has for an identity.
#[derive(Debug)]
pub enum Lookup {
    /// Serve this.
    Hit(Arc<Resource>),
    /// Serve this, and re-read it with this token ([`FactsCache::fill`]).
    Refresh(Arc<Resource>, u64),
    Miss,
}

#[derive(Debug)]
pub struct FactsCache {
    base: Instant,
    /// Nanoseconds after `base` until which the lease lets it serve.
    trusted_until: AtomicU64,
    tokens: AtomicU64,
    slots: RwLock<HashMap<Uuid, Slot>>,
}

impl Default for FactsCache {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            trusted_until: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            slots: RwLock::default(),
        }
    }
}

impl FactsCache {
    fn reading(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Whether a live lease lets the cache serve.
    pub fn serving(&self) -> bool {
        self.reading() < self.trusted_until.load(Ordering::Acquire)
    }

    /// The cached facts of `id`, if the cache may serve them.
    pub fn get(&self, id: &Uuid) -> Lookup {
        if !self.serving() {
            return Lookup::Miss;
        }
        let found = self.slots.read().ok().and_then(|s| match s.get(id) {
            Some(Slot::Ready {
                resource,
                read_at,
                refreshing,
            }) if read_at.elapsed() < MAX_AGE => Some((
                Arc::clone(resource),
                refreshing.is_none() && read_at.elapsed() >= REFRESH_AFTER,
            )),
            _ => None,
        });
        let Some((resource, stale)) = found else {
            return Lookup::Miss;
        };
        if !stale {
            return Lookup::Hit(resource);
        }
        // One re-read per entry: the first to see it ageing takes it.
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut slots) = self.slots.write()
            && let Some(Slot::Ready { refreshing, .. }) = slots.get_mut(id)
            && refreshing.is_none()
        {
            *refreshing = Some(token);
            return Lookup::Refresh(resource, token);
        }
        Lookup::Hit(resource)
    }

    /// Marks a read of `id` as under way; the token fills the slot later.
    pub fn reserve(&self, id: &Uuid) -> Option<u64> {
        if !self.serving() {
            return None;
        }
        let token = self.tokens.fetch_add(1, Ordering::Relaxed) + 1;
        let mut slots = self.slots.write().ok()?;
        if slots.len() >= MAX_ENTRIES {
            slots.clear();
        }
        slots.insert(*id, Slot::Pending(token));
        Some(token)
    }

    /// Keeps what a reserved read or a re-read returned, unless a change
    /// (which empties the slot) came first.
    pub fn fill(&self, id: &Uuid, token: u64, resource: Arc<Resource>) {
        if let Ok(mut slots) = self.slots.write()
            && let Some(slot) = slots.get_mut(id)
            && matches!(slot, Slot::Pending(t) | Slot::Ready { refreshing: Some(t), .. } if *t == token)
        {
            *slot = Slot::Ready {
                resource,
                read_at: Instant::now(),
                refreshing: None,
            };
        }
    }

    /// A re-read failed: the entry serves until it is too old.
    pub fn refresh_failed(&self, id: &Uuid, token: u64) {
        if let Ok(mut slots) = self.slots.write()
            && let Some(Slot::Ready { refreshing, .. }) = slots.get_mut(id)
            && *refreshing == Some(token)
        {
            *refreshing = None;
        }
    }

    fn apply(&self, change: &inventory::IdentityChange) {
        let Ok(mut slots) = self.slots.write() else {
            return;
        };
        if change.all {
            slots.clear();
            return;
        }
        for id in &change.identity_ids {
            if let Ok(id) = Uuid::try_parse(id) {
                slots.remove(&id);
            }
        }
    }

    fn stop_serving(&self) {
        self.trusted_until.store(0, Ordering::Release);
        if let Ok(mut slots) = self.slots.write() {
            slots.clear();
        }
    }

    /// Follows inventory's changes and keeps a lease until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        channel: TracedChannel,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut pause = Duration::from_millis(100);
        loop {
            let session = self.session(channel.clone());
            tokio::select! {
                () = &mut shutdown => {
                    self.stop_serving();
                    return;
                }
                outcome = session => {
                    self.stop_serving();
                    match outcome {
                        Ok(()) => tracing::info!("inventory ended the facts stream; reading inventory directly until it is back"),
                        Err(status) => tracing::debug!(code = ?status.code(), status_message = status.message(), "facts stream unavailable; reading inventory directly"),
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One stream: apply changes, acknowledge them, renew the lease.
    async fn session(&self, channel: TracedChannel) -> Result<(), tonic::Status> {
        let (acks, rx) = mpsc::unbounded_channel();
        let mut changes = InventoryServiceClient::new(channel)
            .watch_identity_changes(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
            .await?
            .into_inner();
        let mut applied = 0u64;
        let mut renew = tokio::time::interval(RENEW);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // False once the request stream is gone: the session is over.
        let send = |ack: inventory::IdentityChangesAck| acks.send(ack).is_ok();
        loop {
            tokio::select! {
                message = changes.message() => {
                    let Some(change) = message? else {
                        return Ok(());
                    };
                    if change.all || !change.identity_ids.is_empty() {
                        self.apply(&change);
                    }
                    if change.sequence > applied {
                        applied = change.sequence;
                        if !send(inventory::IdentityChangesAck { applied_sequence: applied, lease_request: 0 }) {
                            return Ok(());
                        }
                    }
                    if change.lease_granted != 0 {
                        let lease = Duration::from_millis(u64::from(change.lease_millis)).saturating_sub(MARGIN);
                        let until = change.lease_granted.saturating_add(u64::try_from(lease.as_nanos()).unwrap_or(0));
                        self.trusted_until.fetch_max(until, Ordering::AcqRel);
                    }
                }
                _ = renew.tick() => {
                    if !send(inventory::IdentityChangesAck { applied_sequence: applied, lease_request: self.reading() }) {
                        return Ok(());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, NhiFacts};

    fn resource(engine: &Engine, id: &Uuid, state: &str) -> Arc<Resource> {
        engine
            .resource(NhiFacts {
                id: id.to_string(),
                state: state.into(),
                ..Default::default()
            })
            .unwrap()
    }

    fn state(lookup: Lookup) -> Option<String> {
        match lookup {
            Lookup::Hit(r) | Lookup::Refresh(r, _) => Some(r.state.clone()),
            Lookup::Miss => None,
        }
    }

    fn change(ids: &[Uuid], all: bool) -> inventory::IdentityChange {
        inventory::IdentityChange {
            sequence: 1,
            identity_ids: ids.iter().map(ToString::to_string).collect(),
            all,
            ..Default::default()
        }
    }

    #[test]
    fn it_serves_only_under_a_lease_and_a_change_beats_a_read_in_flight() {
        let engine = Engine::new().unwrap();
        let cache = FactsCache::default();
        let id = Uuid::now_v7();
        assert!(cache.reserve(&id).is_none(), "no lease, no caching");
        cache.trusted_until.store(u64::MAX, Ordering::Release);

        let token = cache.reserve(&id).unwrap();
        cache.fill(&id, token, resource(&engine, &id, "active"));
        assert_eq!(state(cache.get(&id)).as_deref(), Some("active"));

        // A read that started before a change must not be kept.
        let token = cache.reserve(&id).unwrap();
        cache.apply(&change(&[id], false));
        cache.fill(&id, token, resource(&engine, &id, "active"));
        assert_eq!(state(cache.get(&id)), None);

        // A reset drops everything; losing the lease stops serving.
        let token = cache.reserve(&id).unwrap();
        cache.fill(&id, token, resource(&engine, &id, "suspended"));
        cache.apply(&change(&[], true));
        assert_eq!(state(cache.get(&id)), None);
        let token = cache.reserve(&id).unwrap();
        cache.fill(&id, token, resource(&engine, &id, "suspended"));
        cache.stop_serving();
        assert_eq!(state(cache.get(&id)), None);
    }

    #[test]
    fn an_ageing_entry_is_re_read_once_and_a_change_beats_the_re_read() {
        let engine = Engine::new().unwrap();
        let cache = FactsCache::default();
        cache.trusted_until.store(u64::MAX, Ordering::Release);
        let id = Uuid::now_v7();
        let old = |cache: &FactsCache| {
            if let Ok(mut slots) = cache.slots.write()
                && let Some(Slot::Ready { read_at, .. }) = slots.get_mut(&id)
            {
                *read_at = Instant::now() - REFRESH_AFTER;
            }
        };
        let token = cache.reserve(&id).unwrap();
        cache.fill(&id, token, resource(&engine, &id, "active"));
        old(&cache);
        let Lookup::Refresh(_, refresh) = cache.get(&id) else {
            panic!("an ageing entry is not re-read");
        };
        assert!(matches!(cache.get(&id), Lookup::Hit(_)), "re-read twice");
        cache.fill(&id, refresh, resource(&engine, &id, "watchlisted"));
        assert_eq!(state(cache.get(&id)).as_deref(), Some("watchlisted"));

        old(&cache);
        let Lookup::Refresh(_, refresh) = cache.get(&id) else {
            panic!("an ageing entry is not re-read");
        };
        cache.apply(&change(&[id], false));
        cache.fill(&id, refresh, resource(&engine, &id, "active"));
        assert_eq!(state(cache.get(&id)), None);
    }
}
