//! `Subscribe`: replay from the database, then follow the sequencer's
//! broadcast. The broadcast receiver is taken *before* the replay reads the
//! tree size, so every entry is seen by one path or the other, and indices
//! below the cursor are skipped, so none is seen twice.

use std::sync::Arc;

use steward_proto::steward::audit::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert::entry_to_proto;
use crate::log::{Log, LogError, LoggedEntry};
use crate::store::QueryFilter;

/// Entries per replayed message.
const REPLAY_PAGE: u32 = 500;

pub fn stream(
    log: Log,
    from_index: u64,
    filter: QueryFilter,
) -> ReceiverStream<Result<pb::SubscribeResponse, Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let live = log.subscribe();
        if let Err(status) = follow(&log, live, from_index, &filter, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(rx)
}

type Sink = mpsc::Sender<Result<pb::SubscribeResponse, Status>>;

fn matches(filter: &QueryFilter, entry: &LoggedEntry) -> bool {
    let r = &entry.record;
    let eq = |want: &str, have: &str| want.is_empty() || want == have;
    eq(&filter.incident_ref, &r.incident_ref)
        && eq(&filter.nhi_id, &r.target.nhi_id)
        && (filter.actor.is_empty()
            || filter.actor == r.actor.workload_spiffe_id
            || filter.actor == r.actor.human_subject)
        && eq(&filter.action, &r.action)
        && eq(&filter.correlation_id, &r.correlation_id)
}

/// Sends the entries of `batch` at or after `next` that match; returns the
/// new cursor, or `None` when the subscriber went away.
async fn send(tx: &Sink, filter: &QueryFilter, batch: &[LoggedEntry], next: u64) -> Option<u64> {
    let Some(last) = batch.last() else {
        return Some(next);
    };
    if last.index < next {
        return Some(next);
    }
    let entries: Vec<pb::LogEntry> = batch
        .iter()
        .filter(|e| e.index >= next && matches(filter, e))
        .map(entry_to_proto)
        .collect();
    let cursor = last.index + 1;
    let message = pb::SubscribeResponse {
        entries,
        next_index: cursor,
        fell_behind: None,
    };
    tx.send(Ok(message)).await.ok()?;
    Some(cursor)
}

/// Replays `[next, size)` from the database.
async fn replay(
    log: &Log,
    tx: &Sink,
    filter: &QueryFilter,
    mut next: u64,
    until: u64,
) -> Result<Option<u64>, Status> {
    while next < until {
        let stored = log
            .store()
            .entries(next, until, REPLAY_PAGE)
            .await
            .map_err(|e| Status::from(LogError::from(e)))?;
        if stored.is_empty() {
            break;
        }
        let batch = stored
            .iter()
            .map(LoggedEntry::from_stored)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::from)?;
        match send(tx, filter, &batch, next).await {
            Some(cursor) => next = cursor,
            None => return Ok(None),
        }
    }
    Ok(Some(next))
}

async fn follow(
    log: &Log,
    mut live: broadcast::Receiver<Arc<Vec<LoggedEntry>>>,
    from_index: u64,
    filter: &QueryFilter,
    tx: &Sink,
) -> Result<(), Status> {
    let Some(mut next) = replay(log, tx, filter, from_index, log.size()).await? else {
        return Ok(());
    };
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return Ok(()),
            received = live.recv() => received,
        };
        match batch {
            Ok(batch) => {
                // A gap cannot happen by construction; fill it if it does.
                if let Some(first) = batch.first()
                    && first.index > next
                {
                    match replay(log, tx, filter, next, first.index).await? {
                        Some(cursor) => next = cursor,
                        None => return Ok(()),
                    }
                }
                match send(tx, filter, &batch, next).await {
                    Some(cursor) => next = cursor,
                    None => return Ok(()),
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::info!(resume_from = next, skipped, "subscriber fell behind");
                let message = pb::SubscribeResponse {
                    entries: Vec::new(),
                    next_index: next,
                    fell_behind: Some(pb::FellBehind { resume_from: next }),
                };
                let _ = tx.send(Ok(message)).await;
                return Ok(());
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Err(LogError::Stopped.into());
            }
        }
    }
}
