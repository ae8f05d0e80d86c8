//! Coherent invalidation for caches of identities' facts
//! (`WatchIdentityChanges`, ADR 0008).
//!
//! After a write commits, [`Changes::publish`] sends the changed ids to
//! every watcher and waits until each has acknowledged them or its lease
//! has run out. A watcher's lease is granted from the moment it *asked*
//! (its own clock), and inventory counts it from the moment the request
//! *arrived*, so the watcher's lease always ends first. A watcher that
//! leaves a change unacknowledged for a whole lease gets no more leases
//! and is dropped once its last one has ended.
//!
//! Replicas on one PostgreSQL database relay each other's changes
//! ([`relay`], ADR 0023), so a write through one replica waits for the
//! watchers of every other as well.

pub mod relay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use steward_proto::steward::inventory::v1 as pb;
use tokio::sync::{Notify, mpsc};
use tonic::Status;

/// How long a granted lease lasts.
pub const LEASE: Duration = Duration::from_secs(2);

/// What a committed write changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// These identities' facts.
    Identities(Vec<String>),
    /// Possibly any identity's (imports, owner departures).
    All,
    /// No identity's facts (registration entries, campaigns).
    Nothing,
}

impl Changed {
    pub fn one(id: impl Into<String>) -> Self {
        Self::Identities(vec![id.into()])
    }
}

pub type Outgoing = mpsc::UnboundedSender<Result<pb::IdentityChange, Status>>;

#[derive(Debug)]
struct Watcher {
    out: Outgoing,
    /// The last sequence sent to it, and when it was sent if unacknowledged.
    sent: u64,
    unacked_since: Option<Instant>,
    applied: u64,
    /// When its lease ends on inventory's clock.
    lease_end: Instant,
    /// It failed to acknowledge within a lease or went away: no more
    /// leases; dropped once `lease_end` has passed.
    revoked: bool,
}

#[derive(Debug, Default)]
struct State {
    sequence: u64,
    next_id: u64,
    watchers: HashMap<u64, Watcher>,
    /// With a relay: leases are granted only until then (the relay's
    /// promise to the other replicas, [`relay`]); `None` without one.
    grants_until: Option<Instant>,
}

/// The watchers of one inventory.
#[derive(Debug, Default)]
pub struct Changes {
    state: Mutex<State>,
    acked: Notify,
    relay: OnceLock<Arc<relay::Relay>>,
}

impl Changes {
    /// Registers a watcher; its first message tells it to start empty.
    pub fn watch(&self, out: Outgoing) -> u64 {
        let Ok(mut s) = self.state.lock() else {
            return 0;
        };
        let now = Instant::now();
        s.watchers.retain(|_, w| !(w.revoked && w.lease_end <= now));
        s.next_id += 1;
        let id = s.next_id;
        let sequence = s.sequence;
        let _ = out.send(Ok(pb::IdentityChange {
            sequence,
            all: true,
            ..Default::default()
        }));
        s.watchers.insert(
            id,
            Watcher {
                out,
                sent: sequence,
                unacked_since: None,
                applied: 0,
                lease_end: Instant::now(),
                revoked: false,
            },
        );
        id
    }

    /// A watcher's acknowledgement and, optionally, its lease request.
    pub fn ack(&self, id: u64, applied: u64, lease_request: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        let may_grant = s.grants_until.is_none_or(|until| now <= until);
        let Some(w) = s.watchers.get_mut(&id) else {
            return;
        };
        if applied > w.applied {
            w.applied = applied.min(w.sent);
        }
        if w.applied >= w.sent {
            w.unacked_since = None;
        } else if w.unacked_since.is_some_and(|t| now - t > LEASE) {
            w.revoked = true;
        }
        if lease_request != 0 && !w.revoked && may_grant {
            w.lease_end = w.lease_end.max(now + LEASE);
            let granted = w.out.send(Ok(pb::IdentityChange {
                lease_granted: lease_request,
                lease_millis: u32::try_from(LEASE.as_millis()).unwrap_or(u32::MAX),
                ..Default::default()
            }));
            if granted.is_err() {
                w.revoked = true;
            }
        }
        drop(s);
        self.acked.notify_waiters();
    }

    /// The watcher's stream ended; it is dropped once its lease has run out.
    pub fn gone(&self, id: u64) {
        if let Ok(mut s) = self.state.lock()
            && let Some(w) = s.watchers.get_mut(&id)
        {
            w.revoked = true;
        }
        self.acked.notify_waiters();
    }

    /// Sends `changed` to every watcher, this replica's and (through the
    /// relay) every other's, and returns once each has applied it or can
    /// no longer be serving from a lease granted before it.
    pub async fn publish(&self, changed: Changed) {
        match self.relay.get() {
            Some(relay) => {
                tokio::join!(relay.send(&changed), self.publish_here(changed.clone()));
            }
            None => self.publish_here(changed).await,
        }
    }

    /// [`Changes::publish`] to this replica's watchers only.
    pub async fn publish_here(&self, changed: Changed) {
        if let Some(sequence) = self.send(changed) {
            self.wait(sequence).await;
        }
    }

    /// Sends `changed` to this replica's watchers; the sequence to wait
    /// for, if any watcher was sent it.
    fn send(&self, changed: Changed) -> Option<u64> {
        let (ids, all) = match changed {
            Changed::Nothing => return None,
            Changed::Identities(ids) if ids.is_empty() => return None,
            Changed::Identities(ids) => (ids, false),
            Changed::All => (Vec::new(), true),
        };
        {
            let mut s = self.state.lock().ok()?;
            if s.watchers.is_empty() {
                return None;
            }
            s.sequence += 1;
            let sequence = s.sequence;
            let now = Instant::now();
            for w in s.watchers.values_mut() {
                let sent = w.out.send(Ok(pb::IdentityChange {
                    sequence,
                    identity_ids: ids.clone(),
                    all,
                    ..Default::default()
                }));
                if sent.is_err() {
                    w.revoked = true;
                }
                w.sent = sequence;
                w.unacked_since.get_or_insert(now);
            }
            Some(sequence)
        }
    }

    /// Returns once every watcher has applied `sequence` or can no longer
    /// be serving from a lease granted before it.
    async fn wait(&self, sequence: u64) {
        loop {
            let notified = self.acked.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let Ok(mut s) = self.state.lock() else {
                    return;
                };
                let now = Instant::now();
                // Drop revoked watchers whose last lease has ended.
                s.watchers.retain(|_, w| !(w.revoked && w.lease_end <= now));
                let mut until: Option<Instant> = None;
                for w in s.watchers.values_mut() {
                    if w.applied >= sequence || w.lease_end <= now {
                        continue;
                    }
                    if w.unacked_since.is_some_and(|t| now - t > LEASE) {
                        w.revoked = true;
                    }
                    until = Some(until.map_or(w.lease_end, |u| u.min(w.lease_end)));
                }
                until
            };
            let Some(until) = wait else {
                return;
            };
            let _ = tokio::time::timeout_at(until.into(), notified).await;
        }
    }
}

impl Changes {
    /// From now on, publishing also goes through `relay` to the other
    /// replicas, and leases are granted only while it allows.
    fn relay_through(&self, relay: Arc<relay::Relay>) {
        if let Ok(mut s) = self.state.lock() {
            s.grants_until = Some(Instant::now());
        }
        let _ = self.relay.set(relay);
    }

    /// Leases may be granted until `until` (the relay renewed its promise).
    fn grant_until(&self, until: Instant) {
        if let Ok(mut s) = self.state.lock() {
            s.grants_until = Some(until);
        }
    }

    /// Tells every watcher to start empty, without waiting: the relay
    /// missed changes, or may have.
    fn reset(&self) {
        let _ = self.send(Changed::All);
    }
}

/// The shared handle a store and the server hold.
pub type SharedChanges = Arc<Changes>;

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(
        changes: &Changes,
    ) -> (
        u64,
        mpsc::UnboundedReceiver<Result<pb::IdentityChange, Status>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        (changes.watch(tx), rx)
    }

    #[tokio::test]
    async fn a_write_waits_for_a_leased_watcher_to_apply_it() {
        let changes = Arc::new(Changes::default());
        let (id, mut rx) = watcher(&changes);
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.all, "a new watcher starts empty");
        changes.ack(id, first.sequence, 7);
        let grant = rx.recv().await.unwrap().unwrap();
        assert_eq!((grant.lease_granted, grant.lease_millis), (7, 2000));

        let publish = tokio::spawn({
            let changes = Arc::clone(&changes);
            async move { changes.publish(Changed::one("a")).await }
        });
        let change = rx.recv().await.unwrap().unwrap();
        assert_eq!(change.identity_ids, ["a"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !publish.is_finished(),
            "the write returned before the watcher applied it"
        );
        changes.ack(id, change.sequence, 0);
        tokio::time::timeout(Duration::from_secs(1), publish)
            .await
            .expect("the write still waits after the ack")
            .unwrap();
    }

    #[tokio::test]
    async fn a_silent_watcher_holds_a_write_only_until_its_lease_ends() {
        let changes = Arc::new(Changes::default());
        let (id, mut rx) = watcher(&changes);
        let first = rx.recv().await.unwrap().unwrap();
        changes.ack(id, first.sequence, 1);
        assert_eq!(rx.recv().await.unwrap().unwrap().lease_granted, 1);
        let started = Instant::now();
        changes.publish(Changed::All).await;
        let waited = started.elapsed();
        assert!(waited >= LEASE - Duration::from_millis(100), "{waited:?}");
        assert!(waited < LEASE + Duration::from_secs(1), "{waited:?}");
        // It renews, but the change is still unacknowledged after a lease:
        // no new lease, and the next write does not wait for it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        changes.ack(id, first.sequence, 2);
        let started = Instant::now();
        changes.publish(Changed::one("b")).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await
        {
            assert_eq!(m.lease_granted, 0, "a lagging watcher got a lease");
        }
    }

    #[tokio::test]
    async fn watchers_without_a_lease_and_unchanged_writes_do_not_wait() {
        let changes = Arc::new(Changes::default());
        let (_id, _rx) = watcher(&changes);
        let started = Instant::now();
        changes.publish(Changed::one("a")).await;
        changes.publish(Changed::Nothing).await;
        assert!(started.elapsed() < Duration::from_millis(200));
    }
}
