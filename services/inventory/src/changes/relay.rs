//! Replicas relay each other's identity changes through PostgreSQL
//! (`LISTEN`/`NOTIFY`, ADR 0023), so that a write through one replica is
//! never hidden from a facts cache leased by another.
//!
//! - **A write** is sent to this replica's watchers and, as a
//!   notification on [`CHANGES`], to every other replica. The writer then
//!   reads which replicas may have leases out ([`TABLE`]) and waits, for
//!   each, until it acknowledges on [`ACKS`] (its watchers have applied the
//!   change) or until its leases have all ended.
//! - **A relayed change** is published to this replica's watchers, and
//!   acknowledged once they have applied it or their leases have ended.
//! - **The promise.** Every [`HEARTBEAT`] a listening replica stores
//!   "leases I grant end before `leases_until`" (the database's clock plus
//!   [`PROMISE`]), and grants only leases that end before it. A replica
//!   that stops listening (its connection broke, so notifications may be
//!   lost) stops renewing and granting at once; when it listens again it
//!   tells its watchers to start empty before it grants again. So a writer
//!   that does not hear from a replica waits at most until that replica's
//!   last promise ends, and a replica it never saw (one that started after
//!   the write) has nothing cached from before it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;

use super::{Changed, Changes, LEASE};

/// Where writes are announced.
pub const CHANGES: &str = "steward_inventory_changes";
/// Where relayed writes are acknowledged.
pub const ACKS: &str = "steward_inventory_change_acks";
/// One row per replica: until when its granted leases may last.
pub const TABLE: &str = "change_relays";
/// How often a listening replica renews its promise.
const HEARTBEAT: Duration = Duration::from_millis(300);
/// How far past a renewal a replica's leases may end: one lease, plus the
/// time a lease may still be granted after the renewal.
const PROMISE: Duration = Duration::from_millis(LEASE.as_millis() as u64 + GRANT_WINDOW_MS);
/// How long after starting a renewal leases may be granted on it.
const GRANT_WINDOW_MS: u64 = 1_000;
/// Most identity ids in one notification (PostgreSQL's payload limit is
/// 8,000 bytes); more are sent as "any identity".
const MAX_IDS: usize = 150;

/// What a notification on [`CHANGES`] carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Announced {
    /// The writing replica.
    origin: String,
    /// Its number for this write.
    sequence: u64,
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// What a notification on [`ACKS`] carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Acked {
    origin: String,
    sequence: u64,
    by: String,
}

/// This replica's end of the relay.
#[derive(Debug)]
pub struct Relay {
    me: String,
    pool: PgPool,
    next: AtomicU64,
    /// Acknowledgements of this replica's writes, by write.
    acked: Mutex<HashMap<u64, HashSet<String>>>,
    heard: Notify,
}

impl Relay {
    /// Starts relaying for `changes` on `pool`: a listener and a heartbeat,
    /// both ending with `shutdown`.
    pub fn start(
        pool: PgPool,
        changes: &Arc<Changes>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let relay = Arc::new(Self {
            me: uuid::Uuid::new_v4().to_string(),
            pool,
            next: AtomicU64::new(1),
            acked: Mutex::default(),
            heard: Notify::new(),
        });
        changes.relay_through(Arc::clone(&relay));
        let changes = Arc::clone(changes);
        async move {
            tokio::pin!(shutdown);
            tokio::select! {
                () = &mut shutdown => {}
                () = Arc::clone(&relay).run(Arc::clone(&changes)) => {}
            }
            changes.grant_until(Instant::now());
            relay.retire().await;
        }
    }

    /// Announces `changed` to the other replicas and returns once each
    /// that may have leases out has applied it or can no longer be serving
    /// from a lease granted before it.
    pub async fn send(&self, changed: &Changed) {
        let (ids, all) = match changed {
            Changed::Nothing => return,
            Changed::Identities(ids) if ids.is_empty() => return,
            Changed::Identities(ids) if ids.len() > MAX_IDS => (Vec::new(), true),
            Changed::Identities(ids) => (ids.clone(), false),
            Changed::All => (Vec::new(), true),
        };
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut acked) = self.acked.lock() {
            acked.insert(sequence, HashSet::new());
        }
        let announced = Announced {
            origin: self.me.clone(),
            sequence,
            ids,
            all,
        };
        // Announce first, then read who may hold leases: a replica that
        // registers after the read started listening after the announcement
        // and grants nothing before telling its watchers to start empty.
        let waits = match self.announce(&announced).await {
            Ok(()) => self.others().await,
            Err(error) => Err(error),
        };
        let waits = waits.unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot relay a change to the other replicas; waiting out their leases");
            vec![(String::new(), Instant::now() + PROMISE)]
        });
        self.wait(sequence, waits).await;
        if let Ok(mut acked) = self.acked.lock() {
            acked.remove(&sequence);
        }
    }

    async fn announce(&self, announced: &Announced) -> Result<(), sqlx::Error> {
        let payload = serde_json::to_string(announced).unwrap_or_default();
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The other replicas whose leases may still be live, each with when
    /// its last promise ends on this machine's clock.
    async fn others(&self) -> Result<Vec<(String, Instant)>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT replica, leases_until_ms - (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
             FROM change_relays WHERE replica <> $1 \
             AND leases_until_ms > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        )
        .bind(&self.me)
        .fetch_all(&self.pool)
        .await?;
        // Counted from after the answer: later than the database meant.
        let now = Instant::now();
        Ok(rows
            .into_iter()
            .map(|(replica, left)| {
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                (replica, now + left)
            })
            .collect())
    }

    /// Until each of `waits` has acknowledged `sequence` or its deadline
    /// has passed.
    async fn wait(&self, sequence: u64, mut waits: Vec<(String, Instant)>) {
        loop {
            let heard = self.heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            let now = Instant::now();
            if let Ok(acked) = self.acked.lock() {
                let acked = acked.get(&sequence);
                waits.retain(|(replica, until)| {
                    *until > now && !acked.is_some_and(|a| a.contains(replica))
                });
            }
            let Some(until) = waits.iter().map(|(_, until)| *until).min() else {
                return;
            };
            let _ = tokio::time::timeout_at(until.into(), heard).await;
        }
    }

    /// Listens, relays and renews until the end, reconnecting as needed.
    async fn run(self: Arc<Self>, changes: Arc<Changes>) {
        let mut pause = Duration::from_millis(100);
        loop {
            let began = Instant::now();
            if let Err(error) = self.listen(&changes).await {
                tracing::warn!(%error, "the change relay lost its connection; granting no leases until it is back");
            }
            if began.elapsed() > Duration::from_secs(10) {
                pause = Duration::from_millis(100);
            }
            // Nothing more is granted; what may have been missed is dropped
            // once the relay is back (`listen` resets before granting).
            changes.grant_until(Instant::now());
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// One connection's worth: subscribe, then renew the promise and relay
    /// what arrives. Ends only with the connection's failure.
    async fn listen(self: &Arc<Self>, changes: &Arc<Changes>) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen_all([CHANGES, ACKS]).await?;
        // Rows of replicas long gone.
        sqlx::query(
            "DELETE FROM change_relays WHERE leases_until_ms < \
             (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - 3600000",
        )
        .execute(&self.pool)
        .await?;
        // The listener reads in a task of its own (a receive is not safe to
        // cancel); its channel closes when the connection is lost, and a
        // lost connection may have lost notifications.
        let (heard, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(notification)) = listener.try_recv().await {
                if heard.send(notification).is_err() {
                    return;
                }
            }
        });
        let _reader = AbortOnDrop(reader);
        let mut renew = tokio::time::interval(HEARTBEAT);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reset = true;
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let started = Instant::now();
                    self.renew().await?;
                    if std::mem::take(&mut reset) {
                        // Whatever was cached while not listening is gone
                        // before the first lease on this connection.
                        changes.reset();
                        tracing::info!(replica = %self.me, "relaying identity changes with the other replicas");
                    }
                    changes.grant_until(started + Duration::from_millis(GRANT_WINDOW_MS));
                }
                received = notifications.recv() => {
                    let Some(notification) = received else {
                        return Err(sqlx::Error::Protocol("the notification connection was lost".into()));
                    };
                    self.received(changes, notification.channel(), notification.payload());
                }
            }
        }
    }

    /// Stores this replica's promise: leases it grants end before now
    /// (the database's clock) plus [`PROMISE`].
    async fn renew(&self) -> Result<(), sqlx::Error> {
        let promise = i64::try_from(PROMISE.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO change_relays (replica, leases_until_ms) \
             VALUES ($1, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + $2) \
             ON CONFLICT (replica) DO UPDATE SET leases_until_ms = EXCLUDED.leases_until_ms",
        )
        .bind(&self.me)
        .bind(promise)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn received(self: &Arc<Self>, changes: &Arc<Changes>, channel: &str, payload: &str) {
        if channel == ACKS {
            let Ok(acked) = serde_json::from_str::<Acked>(payload) else {
                return;
            };
            if acked.origin != self.me {
                return;
            }
            if let Ok(mut all) = self.acked.lock()
                && let Some(by) = all.get_mut(&acked.sequence)
            {
                by.insert(acked.by);
            }
            self.heard.notify_waiters();
            return;
        }
        let Ok(announced) = serde_json::from_str::<Announced>(payload) else {
            tracing::warn!(
                len = payload.len(),
                "a change notification that does not parse; resetting the watchers"
            );
            changes.reset();
            return;
        };
        if announced.origin == self.me {
            return;
        }
        let changed = if announced.all {
            Changed::All
        } else {
            Changed::Identities(announced.ids)
        };
        let relay = Arc::clone(self);
        let changes = Arc::clone(changes);
        tokio::spawn(async move {
            changes.publish_here(changed).await;
            let acked = Acked {
                origin: announced.origin,
                sequence: announced.sequence,
                by: relay.me.clone(),
            };
            let payload = serde_json::to_string(&acked).unwrap_or_default();
            let sent = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ACKS)
                .bind(payload)
                .execute(&relay.pool)
                .await;
            if let Err(error) = sent {
                tracing::warn!(%error, "cannot acknowledge a relayed change; the writer waits out this replica's leases");
            }
        });
    }

    /// At shutdown: the promise shrinks to the leases that may still be
    /// live, so writers stop waiting for this replica once they end.
    async fn retire(&self) {
        let lease = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
        let retired = sqlx::query(
            "UPDATE change_relays SET leases_until_ms = LEAST(leases_until_ms, \
             (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + $2) WHERE replica = $1",
        )
        .bind(&self.me)
        .bind(lease)
        .execute(&self.pool)
        .await;
        if let Err(error) = retired {
            tracing::debug!(%error, "cannot shorten this replica's lease promise");
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
