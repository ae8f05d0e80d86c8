//! `WatchRevocations`: replay the revocation log, then follow the writer's
//! live feed. The live receiver is taken *before* the log's end is read, so
//! every revocation is seen by one path or the other; sequences at or below
//! the cursor are skipped, so none is seen twice. A watcher that falls
//! behind the live buffer, or sees a gap, is served from the log, so a
//! client never misses one. Revocations other replicas append (on
//! PostgreSQL) arrive as a higher end of the log, and are read from it.

use std::sync::Arc;

use steward_proto::steward::broker::v1 as pb;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::convert::{kind_to_pb, timestamp};
use crate::issuance::Error;
use crate::store::writer::Writer;
use crate::store::{LeaseState, RevocationEntry, Store, StoreError};

/// Revocations read from the log per query.
const REPLAY_PAGE: usize = 1_000;

type Sink = mpsc::Sender<Result<pb::Revocation, Status>>;

pub async fn stream(
    store: Store,
    writer: &Writer,
    after: Option<i64>,
) -> Result<ReceiverStream<Result<pb::Revocation, Status>>, StoreError> {
    let live = writer.subscribe();
    let log_end = writer.log_end();
    let cursor = match after {
        Some(after) => after,
        None => store.last_sequence().await?,
    };
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        if let Err(status) = follow(&store, live, log_end, cursor, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

fn to_pb(entry: &RevocationEntry) -> pb::Revocation {
    let lease = &entry.lease;
    pb::Revocation {
        sequence: u64::try_from(entry.sequence).unwrap_or(0),
        lease_id: lease.lease_id.clone(),
        identity_id: lease.identity_id.clone(),
        kind: kind_to_pb(lease.kind),
        credential_ref: lease.credential_ref.clone(),
        spiffe_id: lease.spiffe_id.clone(),
        incident_ref: lease.incident_ref.clone(),
        state: match entry.state {
            LeaseState::Expired => pb::LeaseState::Expired as i32,
            _ => pb::LeaseState::Revoked as i32,
        },
        revoke_time: timestamp(entry.revoked_at_ns),
        reason: entry.reason.clone(),
    }
}

/// Sends the log after `cursor` up to `until` (inclusive; `None`: to its
/// end); returns the new cursor, or `None` once the client is gone.
async fn replay(
    store: &Store,
    tx: &Sink,
    mut cursor: i64,
    until: Option<i64>,
) -> Result<Option<i64>, Status> {
    loop {
        let page = store
            .revocations_after(cursor, REPLAY_PAGE)
            .await
            .map_err(Status::from)?;
        let full = page.len() == REPLAY_PAGE;
        for entry in page {
            if until.is_some_and(|u| entry.sequence > u) {
                return Ok(Some(cursor));
            }
            if tx.send(Ok(to_pb(&entry))).await.is_err() {
                return Ok(None);
            }
            cursor = entry.sequence;
        }
        if !full || until.is_some_and(|u| cursor >= u) {
            return Ok(Some(cursor));
        }
    }
}

async fn follow(
    store: &Store,
    mut live: broadcast::Receiver<Arc<RevocationEntry>>,
    mut log_end: watch::Receiver<i64>,
    cursor: i64,
    tx: &Sink,
) -> Result<(), Status> {
    let Some(mut cursor) = replay(store, tx, cursor, None).await? else {
        return Ok(());
    };
    loop {
        let entry = tokio::select! {
            () = tx.closed() => return Ok(()),
            received = live.recv() => received,
            // Another replica's revocations: read from the log.
            Ok(()) = log_end.changed() => {
                let end = *log_end.borrow_and_update();
                if end > cursor {
                    match replay(store, tx, cursor, Some(end)).await? {
                        Some(c) => cursor = c,
                        None => return Ok(()),
                    }
                }
                continue;
            }
        };
        match entry {
            Ok(entry) if entry.sequence <= cursor => {}
            Ok(entry) if entry.sequence == cursor + 1 => {
                if tx.send(Ok(to_pb(&entry))).await.is_err() {
                    return Ok(());
                }
                cursor = entry.sequence;
            }
            Ok(entry) => {
                // A gap: what lies between is committed; read it.
                match replay(store, tx, cursor, Some(entry.sequence)).await? {
                    Some(c) => cursor = c,
                    None => return Ok(()),
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                match replay(store, tx, cursor, None).await? {
                    Some(c) => cursor = c,
                    None => return Ok(()),
                }
            }
            Err(broadcast::error::RecvError::Closed) => {
                return Err(Error::unavailable(
                    "the broker is shutting down; resume from the last sequence",
                    "the revocation broadcast closed",
                )
                .into());
            }
        }
    }
}
