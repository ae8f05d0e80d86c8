//! The operator's view of one service's outbox (`steward.common.v1.
//! EvidenceOutbox`): what waits, what audit refused, and sending the
//! refused again once the cause is fixed.

use prost::Message as _;
use steward_db::{Database, on_backend};
use steward_errors::invalid;
use steward_identity::PeerIdentity;
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::common::v1 as pb;
use steward_proto::steward::common::v1::evidence_outbox_server::{
    EvidenceOutbox, EvidenceOutboxServer,
};
use tonic::{Request, Response, Status};

use crate::Forwarder;

/// Most parked records one retry names: a page's worth.
const MAX_PAGE: usize = steward_errors::wire::MAX_PAGE;

/// Serves [`EvidenceOutbox`] over a service's database.
#[derive(Debug, Clone)]
pub struct OutboxAdmin {
    database: Database,
    service: &'static str,
    forwarder: Forwarder,
}

impl OutboxAdmin {
    /// The gRPC service for `service`'s outbox, shipped by `forwarder`
    /// (woken when records go back in line).
    pub fn server(
        database: Database,
        service: &'static str,
        forwarder: Forwarder,
    ) -> EvidenceOutboxServer<Self> {
        EvidenceOutboxServer::new(Self {
            database: database.writer(),
            service,
            forwarder,
        })
    }
}

fn storage(error: sqlx::Error) -> Status {
    steward_errors::to_status(&steward_db::StorageError::from(error))
}

/// A stored nanosecond time as the wire's timestamp.
fn time_of(ns: i64) -> Option<prost_types::Timestamp> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .map(steward_evidence::wire::timestamp)
}

#[tonic::async_trait]
impl EvidenceOutbox for OutboxAdmin {
    async fn get_outbox(
        &self,
        request: Request<pb::GetOutboxRequest>,
    ) -> Result<Response<pb::GetOutboxResponse>, Status> {
        let page = steward_errors::wire::page_size(request.into_inner().page_size)?;
        let stats = Forwarder::stats(&self.database).await.map_err(storage)?;
        const OLDEST: &str = "SELECT MIN(enqueued_at_ns) FROM evidence_outbox
            WHERE delivered_at_ns IS NULL AND last_error IS NULL";
        const PARKED: &str =
            "SELECT seq, record_id, record, last_error, CAST(attempts AS BIGINT), enqueued_at_ns
            FROM evidence_outbox WHERE last_error IS NOT NULL ORDER BY seq LIMIT $1";
        type Row = (i64, String, Vec<u8>, String, i64, i64);
        let (oldest, rows): (Option<i64>, Vec<Row>) = on_backend!(&self.database, pool, Db => {
            let oldest = sqlx::query_scalar::<Db, Option<i64>>(OLDEST)
                .fetch_one(pool)
                .await
                .map_err(storage)?;
            let rows = sqlx::query_as::<Db, Row>(PARKED)
                .bind(page as i64)
                .fetch_all(pool)
                .await
                .map_err(storage)?;
            (oldest, rows)
        });
        let parked_records = rows
            .into_iter()
            .map(
                |(seq, record_id, record, error, attempts, at)| pb::ParkedRecord {
                    seq,
                    record_id,
                    action: audit::EvidenceRecord::decode(record.as_slice())
                        .map(|r| r.action)
                        .unwrap_or_default(),
                    error,
                    attempts,
                    enqueue_time: time_of(at),
                },
            )
            .collect();
        Ok(Response::new(pb::GetOutboxResponse {
            pending: stats.pending,
            parked: stats.parked,
            parked_records,
            oldest_pending_time: oldest.and_then(time_of),
            service: self.service.to_owned(),
        }))
    }

    async fn retry_parked(
        &self,
        request: Request<pb::RetryParkedRequest>,
    ) -> Result<Response<pb::RetryParkedResponse>, Status> {
        let caller = PeerIdentity::caller(&request)?;
        let pb::RetryParkedRequest { seqs, all } = request.into_inner();
        match (all, seqs.len()) {
            (true, 0) | (false, 1..=MAX_PAGE) => {}
            (true, _) => return Err(invalid("seqs", "name records, or set all, not both").into()),
            (false, 0) => {
                let why = "name the parked records to send again, or set all";
                return Err(invalid("seqs", why).into());
            }
            (false, _) => {
                return Err(invalid("seqs", format!("at most {MAX_PAGE} per call")).into());
            }
        }
        const ALL: &str =
            "UPDATE evidence_outbox SET last_error = NULL WHERE last_error IS NOT NULL";
        const ONE: &str = "UPDATE evidence_outbox SET last_error = NULL WHERE last_error IS NOT NULL AND seq = $1";
        let requeued: u64 = on_backend!(&self.database, pool, Db => {
            if all {
                sqlx::query::<Db>(ALL).execute(pool).await.map_err(storage)?.rows_affected()
            } else {
                let mut tx = pool.begin().await.map_err(storage)?;
                let mut n = 0;
                for seq in &seqs {
                    n += sqlx::query::<Db>(ONE).bind(seq).execute(&mut *tx).await.map_err(storage)?.rows_affected();
                }
                tx.commit().await.map_err(storage)?;
                n
            }
        });
        tracing::warn!(%caller, requeued, "parked evidence sent to audit again");
        self.forwarder.wake();
        Ok(Response::new(pb::RetryParkedResponse {
            requeued: i64::try_from(requeued).unwrap_or(i64::MAX),
        }))
    }
}
