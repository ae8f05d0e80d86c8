//! Ships queued evidence to audit, in order, until told to stop.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use steward_db::{Database, on_backend};
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use steward_telemetry::TracedChannel;
use tokio::sync::Notify;

/// Forwarder settings.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    /// Records per AppendBatch, at most audit's
    /// [`steward_batch::limits::APPEND_BATCH`] (a larger setting is capped).
    pub batch_size: u32,
    /// How often to look for work when nobody calls [`Forwarder::wake`].
    pub poll_interval: Duration,
    /// First and largest pause after a failed delivery. The largest bounds
    /// how long evidence waits after audit is back (5 s by default: a
    /// call every 5 s to an audit that is down costs nothing).
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// The pause after a delivered batch before the next one, so that
    /// under load batches grow instead of rounds multiplying.
    pub linger: Duration,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        Self {
            batch_size: 500,
            poll_interval: Duration::from_millis(500),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            linger: Duration::from_millis(20),
        }
    }
}

/// What the outbox holds, for health and tests: delivered records are
/// deleted, so only these remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Waiting for audit.
    pub pending: i64,
    /// Refused by audit, parked for an operator.
    pub parked: i64,
    /// When the oldest pending record was queued (Unix nanoseconds).
    pub oldest_pending_ns: Option<i64>,
}

/// Opens a new connection to audit.
type Reconnect = Arc<dyn Fn() -> Option<TracedChannel> + Send + Sync>;

/// Ships the outbox of one service's database to audit.
#[derive(Clone)]
pub struct Forwarder {
    /// The service's [`Database::writer`]: the outbox's rows were just
    /// written there, and settling them is a write.
    database: Database,
    client: AuditServiceClient<TracedChannel>,
    /// After UNAVAILABLE from a live connection (an audit replica that is
    /// not the sequencer, behind a balancer), the next try goes over a new
    /// connection, which the balancer may send elsewhere.
    reconnect: Option<Reconnect>,
    options: ForwarderOptions,
    wake: Arc<Notify>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// `channel` should be lazy (`steward_identity::connector::connect_lazy`)
    /// so that audit being down at start-up is just another retry.
    pub fn new(database: Database, channel: TracedChannel, options: ForwarderOptions) -> Self {
        Self {
            database: database.writer(),
            client: AuditServiceClient::new(channel),
            reconnect: None,
            options,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Starts forwarding this service's outbox to the audit service at
    /// `context.peers.audit`; the task stops with the service. Returns a
    /// handle whose [`Forwarder::wake`] signals new records.
    pub fn spawn(
        context: &steward_server::ServiceContext,
        options: ForwarderOptions,
    ) -> Result<Self, steward_server::StartError> {
        let channel = context.peer_channel("audit", &context.peers.audit)?;
        let mut forwarder = Self::new(context.database.clone(), channel, options);
        let peers = context.clone();
        forwarder.reconnect = Some(Arc::new(move || {
            peers.peer_channel("audit", &peers.peers.audit).ok()
        }));
        // One replica at a time delivers a database's outbox, in order;
        // the others' commits reach it within a poll interval.
        let delivering = forwarder.clone();
        context.spawn_singleton("outbox", move |stop| delivering.clone().run(stop));
        context.report(crate::HEALTH_NAME, None);
        context.spawn(report_parked(context.clone()));
        let database = context.database.clone();
        context.on_scrape(move || {
            let database = database.clone();
            async move {
                match Forwarder::stats(&database).await {
                    Ok(stats) => record_gauges(&stats),
                    Err(error) => tracing::warn!(%error, "cannot count the outbox for the metrics"),
                }
            }
        });
        Ok(forwarder)
    }

    /// Tells the forwarder that new records were committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // Versions before ADR 0013 kept delivered rows, marked.
        const DELIVERED_BEFORE: &str =
            "DELETE FROM evidence_outbox WHERE delivered_at_ns IS NOT NULL";
        let tidied: Result<(), sqlx::Error> = on_backend!(&self.database, pool, Db => {
            sqlx::query::<Db>(DELIVERED_BEFORE).execute(pool).await.map(|_| ())
        });
        if let Err(error) = tidied {
            tracing::warn!(%error, "cannot remove delivered outbox rows");
        }
        // Versions before this one parked a record audit could not store
        // as if audit had refused it: those go back in line.
        const NOT_REFUSED: &str = "UPDATE evidence_outbox SET last_error = NULL
            WHERE last_error IN ('evidence storage is unavailable; retry', 'the audit log is shutting down', 'no result')
               OR last_error LIKE 'this audit replica is not the sequencer; retry%'";
        let requeued: Result<u64, sqlx::Error> = on_backend!(&self.database, pool, Db => {
            sqlx::query::<Db>(NOT_REFUSED).execute(pool).await.map(|r| r.rows_affected())
        });
        match requeued {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                records = n,
                "evidence parked by an earlier version although audit never refused it: sending it again"
            ),
            Err(error) => tracing::warn!(%error, "cannot re-queue parked outbox rows"),
        }
        let mut backoff = self.options.min_backoff;
        loop {
            let forwarded = self.forward_once().await;
            if let Ok(n) = &forwarded {
                metrics::counter!("steward_outbox_settled_records_total").increment(*n as u64);
            }
            let failed = forwarded.is_err();
            let pause = match forwarded {
                Ok(0) => self.options.poll_interval,
                // A full batch: a backlog is waiting, send the next now.
                Ok(n) if n >= self.batch_size() => {
                    backoff = self.options.min_backoff;
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return,
                        () = std::future::ready(()) => continue,
                    }
                }
                Ok(_) => {
                    backoff = self.options.min_backoff;
                    // Under load, let records gather for a moment instead of
                    // settling one small batch after another: each round is a
                    // write (and an fsync) on the service's database, taken
                    // in turn with the service's own writers.
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(self.options.linger) => {}
                    }
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "evidence not delivered to audit; will retry");
                    let pause = backoff;
                    backoff = (backoff * 2).min(self.options.max_backoff);
                    pause
                }
            };
            if failed {
                // Backing off: new commits do not cut the pause short.
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Records per AppendBatch: the setting, within what audit accepts.
    fn batch_size(&self) -> usize {
        (self.options.batch_size as usize).clamp(1, steward_batch::limits::APPEND_BATCH)
    }

    /// Delivers one batch; returns how many records it settled.
    pub async fn forward_once(&mut self) -> Result<usize, ForwardError> {
        const PENDING: &str = "SELECT seq, record FROM evidence_outbox
            WHERE delivered_at_ns IS NULL AND last_error IS NULL ORDER BY seq LIMIT $1";
        let rows: Vec<(i64, Vec<u8>)> = on_backend!(&self.database, pool, Db => {
            sqlx::query_as::<Db, (i64, Vec<u8>)>(PENDING)
                .bind(self.batch_size() as i64)
                .fetch_all(pool)
                .await?
        });
        if rows.is_empty() {
            return Ok(0);
        }
        let records = rows
            .iter()
            .map(|(_, bytes)| pb::EvidenceRecord::decode(bytes.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ForwardError::Corrupt(e.to_string()))?;
        let seqs: Vec<i64> = rows.iter().map(|(seq, _)| *seq).collect();
        // The call joins the trace of the first record's request and links
        // to every record's, so each request's trace reaches audit.
        let origins = records
            .iter()
            .filter_map(|r| r.trace.as_ref())
            .filter_map(|t| steward_telemetry::grpc::span_context(&t.trace_id, &t.span_id))
            .collect();
        let mut request = tonic::Request::new(pb::AppendBatchRequest { records });
        request
            .extensions_mut()
            .insert(steward_telemetry::Batched(origins));
        let response = self.client.append_batch(request).await;
        let results = match response {
            Ok(response) => response.into_inner().results,
            Err(status) => {
                if status.code() == tonic::Code::Unavailable
                    && let Some(channel) = self.reconnect.as_ref().and_then(|r| r())
                {
                    self.client = AuditServiceClient::new(channel);
                }
                self.count_attempt(&seqs).await?;
                return Err(ForwardError::Audit(
                    status.code(),
                    status.message().to_owned(),
                ));
            }
        };
        // Audit has every appended record (or had it already): its rows
        // leave the outbox. The common case is a whole batch of
        // consecutive seqs, and one DELETE of the range.
        const DELIVERED: &str = "DELETE FROM evidence_outbox WHERE seq = $1";
        const PARK: &str =
            "UPDATE evidence_outbox SET last_error = $1, attempts = attempts + 1 WHERE seq = $2";
        let all_appended = results.len() == seqs.len()
            && results
                .iter()
                .all(|r| matches!(r.result, Some(pb::append_batch_result::Result::Appended(_))));
        if all_appended
            && seqs.windows(2).all(|w| w[1] == w[0] + 1)
            && let (Some(first), Some(last)) = (seqs.first(), seqs.last())
        {
            const DELIVERED_RANGE: &str =
                "DELETE FROM evidence_outbox WHERE seq >= $1 AND seq <= $2";
            on_backend!(&self.database, pool, Db => {
                sqlx::query::<Db>(DELIVERED_RANGE)
                    .bind(first)
                    .bind(last)
                    .execute(pool)
                    .await?;
            });
            return Ok(results.len());
        }
        // A record audit refused (invalid, or its id logged with other
        // content) is parked for an operator, so it does not block every
        // later one; one audit could not store is left pending and the
        // whole round backs off, as for a failed call.
        let mut retry: Option<(tonic::Code, String)> = None;
        let mut waiting = Vec::new();
        on_backend!(&self.database, pool, Db => {
            let mut tx = pool.begin().await?;
            for (seq, result) in seqs.iter().zip(&results) {
                match &result.result {
                    Some(pb::append_batch_result::Result::Appended(_)) => {
                        sqlx::query::<Db>(DELIVERED).bind(seq).execute(&mut *tx).await?;
                    }
                    Some(pb::append_batch_result::Result::Error(e)) if refused(e.code) => {
                        tracing::error!(seq, code = e.code, refusal = %e.message, "audit refused an evidence record; parked in the outbox for an operator");
                        sqlx::query::<Db>(PARK).bind(&e.message).bind(seq).execute(&mut *tx).await?;
                    }
                    Some(pb::append_batch_result::Result::Error(e)) => {
                        waiting.push(*seq);
                        retry.get_or_insert((tonic::Code::from(e.code), e.message.clone()));
                    }
                    None => waiting.push(*seq),
                }
            }
            tx.commit().await?;
        });
        if let Some((code, message)) = retry {
            self.count_attempt(&waiting).await?;
            return Err(ForwardError::Audit(code, message));
        }
        Ok(results.len())
    }

    async fn count_attempt(&self, seqs: &[i64]) -> Result<(), ForwardError> {
        const ATTEMPT: &str = "UPDATE evidence_outbox SET attempts = attempts + 1
            WHERE seq >= $1 AND seq <= $2 AND delivered_at_ns IS NULL";
        if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
            on_backend!(&self.database, pool, Db => {
                sqlx::query::<Db>(ATTEMPT).bind(first).bind(last).execute(pool).await?;
            });
        }
        Ok(())
    }

    /// Counts of pending and parked records.
    pub async fn stats(database: &Database) -> Result<OutboxStats, sqlx::Error> {
        const SQL: &str = "SELECT
            COUNT(*) FILTER (WHERE last_error IS NULL),
            COUNT(*) FILTER (WHERE last_error IS NOT NULL),
            MIN(enqueued_at_ns) FILTER (WHERE last_error IS NULL)
            FROM evidence_outbox WHERE delivered_at_ns IS NULL";
        let (pending, parked, oldest_pending_ns): (i64, i64, Option<i64>) = on_backend!(database, pool, Db => {
            sqlx::query_as::<Db, (i64, i64, Option<i64>)>(SQL).fetch_one(pool).await?
        });
        Ok(OutboxStats {
            pending,
            parked,
            oldest_pending_ns,
        })
    }
}

/// How often parked evidence is counted for health.
const PARKED_EVERY: Duration = Duration::from_secs(2);

/// Reports [`crate::HEALTH_NAME`] NOT_SERVING while audit has refused
/// records that wait, parked, for an operator.
async fn report_parked(context: steward_server::ServiceContext) {
    let shutdown = context.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(PARKED_EVERY) => {}
        }
        match Forwarder::stats(&context.database).await {
            Ok(OutboxStats { parked: 0, .. }) => context.report(crate::HEALTH_NAME, None),
            Ok(OutboxStats { parked, .. }) => context.report(
                crate::HEALTH_NAME,
                Some(format!(
                    "{parked} evidence records parked: audit refused them (`steward outbox show`)"
                )),
            ),
            // The storage watchdog reports the database itself.
            Err(_) => {}
        }
    }
}

/// The outbox's gauges (`docs/metrics.md`), from its latest count.
fn record_gauges(stats: &OutboxStats) {
    let age = stats.oldest_pending_ns.map_or(0.0, |queued| {
        let now = steward_evidence::clock::now_ns();
        (now.saturating_sub(queued)).max(0) as f64 / 1e9
    });
    metrics::gauge!("steward_outbox_pending_records").set(stats.pending as f64);
    metrics::gauge!("steward_outbox_parked_records").set(stats.parked as f64);
    metrics::gauge!("steward_outbox_oldest_pending_age_seconds").set(age);
}

/// Whether a per-record `AppendError` code is audit refusing the record
/// (INVALID_ARGUMENT, ALREADY_EXISTS: sending it again cannot help), as
/// opposed to audit not storing it this time (anything else, retried).
fn refused(code: i32) -> bool {
    matches!(
        tonic::Code::from(code),
        tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
    )
}

/// Why a delivery attempt failed; the forwarder retries.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("audit answered {0:?}: {1}")]
    Audit(tonic::Code, String),
    #[error("outbox storage: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("a queued record cannot be decoded: {0}")]
    Corrupt(String),
}
