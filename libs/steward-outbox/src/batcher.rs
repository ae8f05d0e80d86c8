//! Group commit for evidence that is not part of another state change, such
//! as authority's decisions: many callers' records, one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use steward_batch::{Group, limits};
use steward_db::{Database, on_backend};
use steward_evidence::EvidenceRecord;
use tokio::sync::{mpsc, oneshot};

use crate::{Forwarder, OutboxError, OutboxTransaction};

type Job = (EvidenceRecord, Option<oneshot::Sender<Result<(), String>>>);

/// A handle to the batching writer.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
    /// False from a failed batch until the next committed one.
    healthy: Arc<AtomicBool>,
}

impl Batcher {
    /// Starts the writer on `database`'s [`Database::writer`]; it stops
    /// when `shutdown` resolves, after committing what was queued.
    pub fn start(
        database: Database,
        forwarder: Option<Forwarder>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, rx) = steward_batch::queue(limits::OUTBOX_RECORDS);
        let healthy = Arc::new(AtomicBool::new(true));
        let writer = run(
            database.writer(),
            forwarder,
            rx,
            Arc::clone(&healthy),
            shutdown,
        );
        (Self { queue, healthy }, writer)
    }

    /// Queues `record` and waits until it is durable in the outbox.
    pub async fn record(&self, record: EvidenceRecord) -> Result<(), OutboxError> {
        record.validate()?;
        let (reply, done) = oneshot::channel();
        self.queue
            .send((record, Some(reply)))
            .await
            .map_err(|_| OutboxError::Stopped)?;
        done.await
            .map_err(|_| OutboxError::Stopped)?
            .map_err(OutboxError::Batch)
    }

    /// Queues `record` and returns without waiting for its commit, which
    /// follows within one batch. When the queue is full, or the last batch
    /// failed, it waits for the commit like [`Batcher::record`]: a slow or
    /// broken database slows callers down or refuses them, and never loses
    /// what it accepted silently. A record whose batch fails is kept and
    /// committed with the next batch.
    pub async fn record_queued(&self, record: EvidenceRecord) -> Result<(), OutboxError> {
        if !self.healthy.load(Ordering::Acquire) {
            return self.record(record).await;
        }
        record.validate()?;
        match self.queue.try_send((record, None)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full((record, _))) => self.record(record).await,
            Err(mpsc::error::TrySendError::Closed(_)) => Err(OutboxError::Stopped),
        }
    }
}

async fn run(
    database: Database,
    forwarder: Option<Forwarder>,
    mut rx: Group<Job>,
    healthy: Arc<AtomicBool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let mut stopping = false;
    // Queued records (nobody waiting) of batches that failed.
    let mut carried: Vec<EvidenceRecord> = Vec::new();
    loop {
        let batch = if stopping {
            match rx.ready() {
                Some(batch) => batch,
                None => {
                    if !carried.is_empty()
                        && let Err(error) = commit(&database, &carried).await
                    {
                        tracing::error!(%error, records = carried.len(), "stopping with evidence records that could not be committed");
                    }
                    return;
                }
            }
        } else {
            tokio::select! {
                () = &mut shutdown => { stopping = true; continue; }
                batch = rx.next() => match batch { Some(batch) => batch, None => return },
            }
        };
        let carried_count = carried.len();
        let mut records = std::mem::take(&mut carried);
        records.extend(batch.iter().map(|(r, _)| r.clone()));
        let mut result = commit(&database, &records).await;
        if let Err(error) = &result {
            tracing::error!(%error, records = records.len(), "evidence batch not committed; retrying once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            result = commit(&database, &records).await;
        }
        if result.is_err() && carried_count > 0 {
            // Carried records may be what fails; they must not hold up
            // the new ones.
            result = commit(&database, &records[carried_count..]).await;
            if result.is_ok() {
                records.truncate(carried_count);
                tracing::error!(
                    records = carried_count,
                    "evidence records from a failed batch still cannot be committed; kept, retried with every batch"
                );
                carried = records;
                records = Vec::new();
            }
        }
        healthy.store(result.is_ok(), Ordering::Release);
        if result.is_ok()
            && let Some(f) = &forwarder
        {
            f.wake();
        }
        if result.is_err() {
            // Keep the records nobody waits for (earlier carried ones and
            // this batch's queued ones); waiters hear the failure.
            carried = records
                .into_iter()
                .enumerate()
                .filter(|(i, _)| {
                    *i < carried_count
                        || batch
                            .get(*i - carried_count)
                            .is_some_and(|(_, reply)| reply.is_none())
                })
                .map(|(_, record)| record)
                .collect();
            tracing::error!(
                kept = carried.len(),
                "evidence batch failed; queued records kept for the next batch"
            );
        }
        let outcome = result.map_err(|e| e.to_string());
        for (_, reply) in batch {
            if let Some(reply) = reply {
                let _ = reply.send(outcome.clone());
            }
        }
    }
}

async fn commit(database: &Database, records: &[EvidenceRecord]) -> Result<(), OutboxError> {
    on_backend!(database, pool, Db => {
        let mut tx = pool.begin().await?;
        tx.enqueue_all(records).await?;
        tx.commit().await?;
    });
    Ok(())
}
