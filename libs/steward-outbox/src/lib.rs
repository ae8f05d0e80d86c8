//! The evidence outbox. A service never loses evidence and never waits for
//! audit:
//!
//! 1. In the same database transaction as its state change, the service
//!    calls [`enqueue_sqlite`] / [`enqueue_postgres`], which validate the
//!    record and insert it into its own `evidence_outbox` table. The state
//!    change and its evidence commit together or not at all.
//! 2. A [`Forwarder`] task ships pending rows to audit's `AppendBatch` in
//!    `seq` order, deletes them once audit has them (the log is their home
//!    from then on), and retries with exponential backoff while audit is
//!    away. It survives restarts: the table is the queue. A record audit
//!    could not store this time is sent again; one audit refuses (invalid,
//!    or its id logged with other content) is parked, marked with the
//!    error, and listed by [`OutboxAdmin`] until an operator retries it.
//! 3. Audit de-duplicates by record id, so a batch re-sent after a lost
//!    acknowledgement is logged once: delivery is exactly-once in the log,
//!    in per-service order.
//!
//! Services add the outbox table to their migrations with [`SQLITE_SQL`] and
//! [`POSTGRES_SQL`] under a version number of their choosing.

mod admin;
mod batcher;
mod forwarder;

use prost::Message;
use steward_db::Placeholders;
use steward_evidence::record::{EvidenceRecord, FieldError};
use steward_evidence::wire::record_to_proto;
use steward_server::roles;

pub use admin::OutboxAdmin;
pub use batcher::Batcher;
pub use forwarder::{Forwarder, ForwarderOptions, OutboxStats};

/// The gRPC health name under which a service with an outbox reports
/// parked evidence: NOT_SERVING while audit has refused records that wait
/// for an operator, SERVING otherwise. The service's own health is not
/// affected (it still serves); a probe that should page someone asks for
/// this name.
pub const HEALTH_NAME: &str = "steward.common.v1.EvidenceOutbox";

/// Who may read a service's outbox ([`OutboxAdmin`]), as allowlist rules.
pub const OUTBOX_READERS: &[&str] = &[roles::OPERATORS, roles::AUDITORS];
/// Who may send parked records again.
pub const OUTBOX_MAINTAINERS: &[&str] = &[roles::OPERATORS];

/// The outbox table on SQLite.
pub const SQLITE_SQL: &str = "CREATE TABLE evidence_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id        TEXT    NOT NULL UNIQUE,
    record           BLOB    NOT NULL,
    enqueued_at_ns   INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    delivered_at_ns  INTEGER,
    log_index        INTEGER,
    last_error       TEXT
);
CREATE INDEX evidence_outbox_pending ON evidence_outbox (seq) WHERE delivered_at_ns IS NULL;";

/// The outbox table on PostgreSQL.
pub const POSTGRES_SQL: &str = "CREATE TABLE evidence_outbox (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id        TEXT   NOT NULL UNIQUE,
    record           BYTEA  NOT NULL,
    enqueued_at_ns   BIGINT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    delivered_at_ns  BIGINT,
    log_index        BIGINT,
    last_error       TEXT
);
CREATE INDEX evidence_outbox_pending ON evidence_outbox (seq) WHERE delivered_at_ns IS NULL;";

/// Why a record could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("invalid evidence record: {0}")]
    Invalid(#[from] FieldError),
    #[error("cannot queue evidence: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("the evidence writer has stopped")]
    Stopped,
    #[error("evidence not committed: {0}")]
    Batch(String),
}

fn encode(record: &EvidenceRecord, now: i64) -> Result<(String, Vec<u8>, i64), OutboxError> {
    record.validate()?;
    let bytes = record_to_proto(record).encode_to_vec();
    Ok((record.record_id.hyphenated().to_string(), bytes, now))
}

/// Rows per multi-row INSERT.
const CHUNK: usize = 200;

/// Queuing evidence inside a transaction, on either engine.
pub trait OutboxTransaction {
    /// Validates `records` and queues them, in order, inside this
    /// transaction: they commit with the caller's state change or not at all.
    fn enqueue_all(
        &mut self,
        records: &[EvidenceRecord],
    ) -> impl std::future::Future<Output = Result<(), OutboxError>> + Send;
}

macro_rules! outbox_transaction {
    ($db:ty) => {
        impl OutboxTransaction for sqlx::Transaction<'_, $db> {
            async fn enqueue_all(&mut self, records: &[EvidenceRecord]) -> Result<(), OutboxError> {
                let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos())
                    .unwrap_or(i64::MAX);
                let rows = records
                    .iter()
                    .map(|r| encode(r, now))
                    .collect::<Result<Vec<_>, _>>()?;
                for chunk in rows.chunks(CHUNK) {
                    let sql = format!(
                        "INSERT INTO evidence_outbox (record_id, record, enqueued_at_ns) VALUES {}",
                        <$db as Placeholders>::values(chunk.len(), 3, 1)
                    );
                    let mut query = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
                    for (id, bytes, at) in chunk {
                        query = query.bind(id).bind(bytes).bind(at);
                    }
                    query.execute(&mut **self).await?;
                }
                Ok(())
            }
        }
    };
}

outbox_transaction!(sqlx::Sqlite);
outbox_transaction!(sqlx::Postgres);

/// Queues `record` inside the caller's SQLite transaction.
pub async fn enqueue_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    record: &EvidenceRecord,
) -> Result<(), OutboxError> {
    tx.enqueue_all(std::slice::from_ref(record)).await
}

/// Queues `record` inside the caller's PostgreSQL transaction.
pub async fn enqueue_postgres(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    record: &EvidenceRecord,
) -> Result<(), OutboxError> {
    tx.enqueue_all(std::slice::from_ref(record)).await
}
