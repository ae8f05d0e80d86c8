//! Every lease change, group-committed with its evidence.
//!
//! One writer task takes every change queued while the previous batch was
//! committing and applies them, in order, in one transaction: new leases in
//! one multi-row INSERT, renewals and revocations as they come, the
//! revocation log's rows and every evidence record. The reaper's expiries
//! drained with them follow in a transaction of their own, so no caller
//! waits for them. Each caller is answered once its batch is durable; a
//! change that cannot apply (the lease is not active, a renewal beyond the
//! max TTL) fails alone. The writer commits on the database's
//! [`steward_db::Database::writer`], which the outbox forwarder's settles
//! share.
//!
//! The writer numbers the revocation log inside the transaction that
//! appends to it (on PostgreSQL under a lock that replicas share). After a
//! batch commits it publishes the batch's revocations, in order, to the
//! live watchers, and raises the log's known end; on PostgreSQL a follower
//! ([`Writer::follow_other_replicas`]) raises it for other replicas'
//! revocations too.

use std::sync::Arc;

use steward_batch::{Group, limits};
use steward_db::{Backend, Engine, Placeholders, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::{Forwarder, OutboxTransaction};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use super::{
    LEASE_COLUMNS, Lease, LeaseState, RevocationEntry, Store, StoreError, bind_lease,
    lease_from_row,
};

/// Rows per multi-row INSERT.
const CHUNK: usize = 40;
/// Revocations kept for live watchers that are briefly behind; one further
/// behind is served from the log.
const LIVE_BUFFER: usize = 16_384;

/// Builds a revoked lease's evidence record.
pub type RevocationEvidence = Arc<dyn Fn(&Lease) -> EvidenceRecord + Send + Sync>;
/// Builds a renewed lease's evidence record.
pub type RenewalEvidence = Box<dyn Fn(&Lease) -> EvidenceRecord + Send>;

/// Where one change's result goes once its batch is durable: each kind of
/// change carries an answer of its own type, so no caller can be answered
/// with another kind's result.
struct Answer<T> {
    reply: oneshot::Sender<Result<T, StoreError>>,
    result: Result<T, StoreError>,
}

impl<T> Answer<T> {
    fn new() -> (Self, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, receiver) = oneshot::channel();
        let unapplied = StoreError::unavailable("the lease writer did not apply the change");
        let answer = Self {
            reply,
            result: Err(unapplied),
        };
        (answer, receiver)
    }

    /// Answers with the applied result, or with `failed` when the batch's
    /// transaction did not commit.
    fn send(self, failed: Option<&StoreError>) {
        let result = match failed {
            Some(error) => Err(error.clone()),
            None => self.result,
        };
        // A caller that gave up is fine: the change stands.
        let _ = self.reply.send(result);
    }
}

/// One change.
enum Change {
    /// A new lease and its evidence.
    Issue {
        lease: Box<Lease>,
        /// Taken into the transaction when applied.
        evidence: Option<Box<EvidenceRecord>>,
        answer: Answer<Lease>,
    },
    /// Moves an active lease's expiry to `expires_at_ns` (checked against
    /// its max); `evidence` sees the renewed lease.
    Renew {
        lease_id: String,
        expires_at_ns: i64,
        evidence: RenewalEvidence,
        answer: Answer<Lease>,
    },
    /// Evidence of something that changed no lease (an allowed issuance
    /// that was refused after all).
    Record {
        /// Taken into the transaction when applied.
        evidence: Option<Box<EvidenceRecord>>,
        answer: Answer<()>,
    },
    /// Ends every lease of `lease_ids` that is still active.
    Revoke {
        lease_ids: Vec<String>,
        state: LeaseState,
        by: String,
        reason: String,
        evidence: RevocationEvidence,
        answer: Answer<Vec<Lease>>,
    },
}

impl Change {
    /// The reaper's end of expired leases, rather than a caller's change.
    fn is_expiry(&self) -> bool {
        matches!(
            self,
            Self::Revoke {
                state: LeaseState::Expired,
                ..
            }
        )
    }

    /// Answers the change's caller (with `failed` if its batch did not
    /// commit).
    fn answer(self, failed: Option<&StoreError>) {
        match self {
            Self::Issue { answer, .. } | Self::Renew { answer, .. } => answer.send(failed),
            Self::Record { answer, .. } => answer.send(failed),
            Self::Revoke { answer, .. } => answer.send(failed),
        }
    }
}

/// The queue in front of the writer task, and the live revocation feed.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Change>,
    live: broadcast::Sender<Arc<RevocationEntry>>,
    /// The revocation log's last sequence known to be committed, by this
    /// writer or (on PostgreSQL) by another replica's.
    log_end: Arc<watch::Sender<i64>>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer; it stops when `shutdown` resolves.
    pub async fn start(
        store: Store,
        forwarder: Option<Forwarder>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(Self, impl std::future::Future<Output = ()> + Send + 'static), StoreError> {
        let store = Store::new(store.database().writer());
        let (log_end, _) = watch::channel(store.last_sequence().await?);
        let log_end = Arc::new(log_end);
        let (queue, rx) = steward_batch::queue(limits::LEASE_CHANGES);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let task = run(
            store,
            rx,
            live.clone(),
            Arc::clone(&log_end),
            forwarder,
            shutdown,
        );
        Ok((
            Self {
                queue,
                live,
                log_end,
            },
            task,
        ))
    }

    /// Issues `lease`: durable with its evidence when this returns.
    pub async fn issue(&self, lease: Lease, evidence: EvidenceRecord) -> Result<Lease, StoreError> {
        let (answer, result) = Answer::new();
        let kind = lease.kind.as_str();
        let change = Change::Issue {
            lease: Box::new(lease),
            evidence: Some(Box::new(evidence)),
            answer,
        };
        let issued = self.submit(change, result).await?;
        metrics::counter!("steward_broker_credentials_issued_total", "kind" => kind).increment(1);
        Ok(issued)
    }

    /// Moves an active lease's expiry to `expires_at_ns`, within its max;
    /// `evidence` sees the renewed lease.
    pub async fn renew(
        &self,
        lease_id: String,
        expires_at_ns: i64,
        evidence: RenewalEvidence,
    ) -> Result<Lease, StoreError> {
        let (answer, result) = Answer::new();
        let change = Change::Renew {
            lease_id,
            expires_at_ns,
            evidence,
            answer,
        };
        self.submit(change, result).await
    }

    /// Records evidence of something that changed no lease (an allowed
    /// issuance that was refused after all).
    pub async fn record(&self, evidence: EvidenceRecord) -> Result<(), StoreError> {
        let (answer, result) = Answer::new();
        let change = Change::Record {
            evidence: Some(Box::new(evidence)),
            answer,
        };
        self.submit(change, result).await
    }

    /// Ends, as `state`, every lease of `lease_ids` that is still active;
    /// returns those it ended (not those already ended).
    pub async fn revoke(
        &self,
        lease_ids: Vec<String>,
        state: LeaseState,
        by: &str,
        reason: &str,
        evidence: RevocationEvidence,
    ) -> Result<Vec<Lease>, StoreError> {
        let (answer, result) = Answer::new();
        let change = Change::Revoke {
            lease_ids,
            state,
            by: by.to_owned(),
            reason: reason.to_owned(),
            evidence,
            answer,
        };
        let ended: Vec<Lease> = self.submit(change, result).await?;
        metrics::counter!("steward_broker_leases_ended_total", "state" => state.as_str())
            .increment(ended.len() as u64);
        Ok(ended)
    }

    /// Queues one change and waits until it is durable with its evidence.
    async fn submit<T>(
        &self,
        change: Change,
        result: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let stopped = || StoreError::unavailable("the lease writer has stopped");
        self.queue.send(change).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// Revocations committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RevocationEntry>> {
        self.live.subscribe()
    }

    /// The log's last committed sequence, as it grows: through this writer
    /// at once, through other replicas' within [`FOLLOW_LOG`].
    pub fn log_end(&self) -> watch::Receiver<i64> {
        self.log_end.subscribe()
    }

    /// On PostgreSQL, where other replicas append to the same log: reads
    /// the log's end every [`FOLLOW_LOG`] until `shutdown`, so watchers
    /// of this replica see their revocations too.
    pub fn follow_other_replicas(
        &self,
        store: Store,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let log_end = Arc::clone(&self.log_end);
        async move {
            tokio::pin!(shutdown);
            let mut tick = tokio::time::interval(FOLLOW_LOG);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    _ = tick.tick() => {}
                }
                match store.last_sequence().await {
                    Ok(found) => advance(&log_end, found),
                    Err(error) => tracing::debug!(%error, "cannot read the revocation log's end"),
                }
            }
        }
    }
}

/// How often a replica reads the revocation log's end for what other
/// replicas appended.
pub const FOLLOW_LOG: std::time::Duration = std::time::Duration::from_millis(200);

/// Raises the known end of the log to `sequence` (never lowers it).
fn advance(log_end: &watch::Sender<i64>, sequence: i64) {
    log_end.send_if_modified(|end| {
        let grew = sequence > *end;
        if grew {
            *end = sequence;
        }
        grew
    });
}

async fn run(
    store: Store,
    mut rx: Group<Change>,
    live: broadcast::Sender<Arc<RevocationEntry>>,
    log_end: Arc<watch::Sender<i64>>,
    forwarder: Option<Forwarder>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return,
            group = rx.next() => match group { Some(group) => group, None => return },
        };
        // Expiries (the reaper's bulk changes) commit after, and apart from,
        // what callers are waiting for: an issuance never waits for 200
        // expired leases and their evidence in its own transaction. Each
        // kind keeps its order; no caller's change concerns an expiry.
        let (expiries, calls): (Vec<_>, Vec<_>) = batch.into_iter().partition(Change::is_expiry);
        for part in [calls, expiries] {
            if !part.is_empty() {
                commit(&store, part, &live, &log_end, forwarder.as_ref()).await;
            }
        }
    }
}

/// Applies one transaction's changes and answers their callers.
async fn commit(
    store: &Store,
    mut batch: Vec<Change>,
    live: &broadcast::Sender<Arc<RevocationEntry>>,
    log_end: &watch::Sender<i64>,
    forwarder: Option<&Forwarder>,
) {
    match store.apply(&mut batch).await {
        Ok(revoked) => {
            if let Some(forwarder) = forwarder {
                forwarder.wake();
            }
            for entry in revoked {
                let sequence = entry.sequence;
                // No receivers is fine: nobody is watching.
                let _ = live.send(Arc::new(entry));
                advance(log_end, sequence);
            }
            for change in batch {
                change.answer(None);
            }
        }
        Err(error) => {
            tracing::error!(%error, batch = batch.len(), "lease batch failed");
            for change in batch {
                change.answer(Some(&error));
            }
        }
    }
}

impl Store {
    /// Applies `changes` in order in one transaction, setting each one's
    /// answer; returns the revocation log's new rows. An error means
    /// nothing was applied.
    async fn apply(&self, changes: &mut [Change]) -> Result<Vec<RevocationEntry>, StoreError> {
        let now_ns = crate::now_ns();
        let mut issued: Vec<&Lease> = Vec::new();
        let mut evidence: Vec<EvidenceRecord> = Vec::new();
        let mut revoked: Vec<RevocationEntry> = Vec::new();
        let postgres = self.database().backend() == Backend::Postgres;
        let revoking = changes.iter().any(|c| matches!(c, Change::Revoke { .. }));
        on_backend!(self.database(), pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let mut sequence = if revoking {
                numbering_log::<Db>(&mut tx, postgres).await?
            } else {
                0
            };
            for change in changes {
                match change {
                    Change::Issue { lease, evidence: record, answer } => {
                        let lease: &Lease = lease;
                        answer.result = Ok(lease.clone());
                        issued.push(lease);
                        evidence.extend(record.take().map(|r| *r));
                    }
                    Change::Record { evidence: record, answer } => {
                        evidence.extend(record.take().map(|r| *r));
                        answer.result = Ok(());
                    }
                    Change::Renew { lease_id, expires_at_ns, evidence: record, answer } => {
                        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lease_id = $1");
                        let found = match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                            .bind(&*lease_id)
                            .fetch_optional(&mut *tx)
                            .await?
                        {
                            Some(row) => Some(lease_from_row!(row)),
                            None => None,
                        };
                        let result = match found {
                            None => Err(StoreError::NotFound(format!(
                                "lease_id: lease {lease_id} does not exist"
                            ))),
                            Some(lease) if let Some(why) = lease.renewal_refused(now_ns, *expires_at_ns) => {
                                Err(StoreError::FailedPrecondition(why))
                            }
                            Some(mut lease) => {
                                sqlx::query::<Db>("UPDATE leases SET expires_at_ns = $1 WHERE lease_id = $2")
                                    .bind(*expires_at_ns)
                                    .bind(&*lease_id)
                                    .execute(&mut *tx)
                                    .await?;
                                lease.expires_at_ns = *expires_at_ns;
                                evidence.push(record(&lease));
                                Ok(lease)
                            }
                        };
                        answer.result = result;
                    }
                    Change::Revoke { lease_ids, state, by, reason, evidence: record, answer } => {
                        let mut ended = Vec::new();
                        for chunk in lease_ids.chunks(CHUNK * 10) {
                            let sql = format!(
                                "SELECT {LEASE_COLUMNS} FROM leases WHERE state = 1 AND lease_id IN ({})",
                                <Db as Placeholders>::list(chunk.len(), 1)
                            );
                            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
                            for id in chunk {
                                query = query.bind(id);
                            }
                            for row in query.fetch_all(&mut *tx).await? {
                                ended.push(lease_from_row!(row));
                            }
                            let sql = format!(
                                "UPDATE leases SET state = {}, revoked_at_ns = {}, revoked_by = {}, revoke_reason = {} \
                                 WHERE state = 1 AND lease_id IN ({})",
                                <Db as Placeholders>::list(1, 1),
                                <Db as Placeholders>::list(1, 2),
                                <Db as Placeholders>::list(1, 3),
                                <Db as Placeholders>::list(1, 4),
                                <Db as Placeholders>::list(chunk.len(), 5)
                            );
                            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                                .bind(state.code())
                                .bind(now_ns)
                                .bind(&*by)
                                .bind(&*reason);
                            for id in chunk {
                                query = query.bind(id);
                            }
                            query.execute(&mut *tx).await?;
                        }
                        let ended = Revocation { state: *state, by, reason, at_ns: now_ns }
                            .applied(ended, record, &mut sequence, &mut evidence, &mut revoked);
                        answer.result = Ok(ended);
                    }
                }
            }
            for chunk in issued.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO leases ({LEASE_COLUMNS}) VALUES {}",
                    <Db as Placeholders>::values(chunk.len(), super::LEASE_COLUMN_COUNT, 1)
                );
                let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
                for lease in chunk {
                    query = bind_lease!(query, lease);
                }
                query.execute(&mut *tx).await?;
            }
            insert_revocations::<Db>(&mut tx, &revoked).await?;
            tx.enqueue_all(&evidence).await?;
            tx.commit().await?;
        });
        Ok(revoked)
    }
}

/// The PostgreSQL advisory lock under which a transaction numbers the
/// revocation log.
const REVOCATION_LOG_LOCK: i64 = 0x5354_4557_5245_564b; // "STEWREVK"

/// One revocation change, as the writer applies it to each lease it ends.
struct Revocation<'a> {
    state: LeaseState,
    by: &'a str,
    reason: &'a str,
    at_ns: i64,
}

impl Revocation<'_> {
    /// Marks `ended` revoked, each with its evidence record and the next
    /// number in the revocation log after `sequence`.
    fn applied(
        &self,
        mut ended: Vec<Lease>,
        record: &RevocationEvidence,
        sequence: &mut i64,
        evidence: &mut Vec<EvidenceRecord>,
        revoked: &mut Vec<RevocationEntry>,
    ) -> Vec<Lease> {
        for lease in &mut ended {
            lease.state = self.state;
            lease.revoked_at_ns = self.at_ns;
            self.by.clone_into(&mut lease.revoked_by);
            self.reason.clone_into(&mut lease.revoke_reason);
            evidence.push(record(lease));
            *sequence += 1;
            revoked.push(RevocationEntry {
                sequence: *sequence,
                state: self.state,
                revoked_at_ns: self.at_ns,
                reason: self.reason.to_owned(),
                lease: lease.clone(),
            });
        }
        ended
    }
}

/// Appends `entries` to the revocation log, in multi-row INSERTs.
/// The revocation log's last committed sequence, read by a transaction
/// that will append to it. The log is numbered in that transaction, after
/// the last committed row: replicas on one PostgreSQL take turns (a lock
/// held to COMMIT), so numbers commit in order and never clash; SQLite's
/// write lock does the same.
async fn numbering_log<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    postgres: bool,
) -> Result<i64, StoreError>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    if postgres {
        sqlx::query::<DB>("SELECT pg_advisory_xact_lock($1)")
            .bind(REVOCATION_LOG_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let last = sqlx::query_scalar::<DB, i64>("SELECT COALESCE(MAX(sequence), 0) FROM revocations")
        .fetch_one(&mut **tx)
        .await?;
    Ok(last)
}

async fn insert_revocations<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    entries: &[RevocationEntry],
) -> Result<(), StoreError>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for chunk in entries.chunks(CHUNK * 4) {
        let sql = format!(
            "INSERT INTO revocations (sequence, lease_id, state, revoked_at_ns, reason) VALUES {}",
            DB::values(chunk.len(), 5, 1)
        );
        let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for entry in chunk {
            query = query
                .bind(entry.sequence)
                .bind(entry.lease.lease_id.clone())
                .bind(entry.state.code())
                .bind(entry.revoked_at_ns)
                .bind(entry.reason.clone());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}
