//! Group commit for evidence that is not part of another state change, such
//! as authority's decisions: many callers' records, one transaction.

use std::time::Duration;

use steward_db::{Database, on_backend};
use steward_evidence::EvidenceRecord;
use tokio::sync::{mpsc, oneshot};

use crate::{Forwarder, OutboxError, OutboxTransaction};

/// Most records in one transaction.
const MAX_BATCH: usize = 1000;

type Job = (EvidenceRecord, Option<oneshot::Sender<Result<(), String>>>);

/// A handle to the batching writer.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<Job>,
}

impl Batcher {
    /// Starts the writer on `database`; it stops when `shutdown` resolves,
    /// after committing what was queued.
    pub fn start(
        database: Database,
        forwarder: Option<Forwarder>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        (Self { queue }, run(database, forwarder, rx, shutdown))
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

    /// Queues `record` without waiting for its commit (it follows within
    /// one batch). Fails only when the queue is full or stopped.
    pub fn record_soon(&self, record: EvidenceRecord) -> Result<(), OutboxError> {
        record.validate()?;
        self.queue
            .try_send((record, None))
            .map_err(|_| OutboxError::Stopped)
    }
}

async fn run(
    database: Database,
    forwarder: Option<Forwarder>,
    mut rx: mpsc::Receiver<Job>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.try_recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                () = &mut shutdown => { stopping = true; continue; }
                job = rx.recv() => match job { Some(job) => job, None => return },
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let records: Vec<EvidenceRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
        let mut result = commit(&database, &records).await;
        if let Err(error) = &result {
            tracing::error!(%error, records = records.len(), "evidence batch not committed; retrying once");
            tokio::time::sleep(Duration::from_millis(50)).await;
            result = commit(&database, &records).await;
        }
        if result.is_ok()
            && let Some(f) = &forwarder
        {
            f.wake();
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
