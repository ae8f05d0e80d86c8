//! The reaper: ends leases whose expiry has passed, in batches.
//!
//! Each pass reads at most [`BATCH`] expired leases and hands them to the
//! lease writer as one change, so a batch shares its transaction with
//! whatever issuance is queued at the time rather than holding the writer
//! for a long sweep. Between batches it yields, so a mass expiry (a hundred
//! thousand leases at once) is worked off steadily without starving RPCs.
//! An expired lease is never live before the reaper reaches it: every
//! check compares the expiry with the clock.

use std::sync::Arc;
use std::time::Duration;

use crate::issuance::lease_record;
use crate::now_ns;
use crate::store::writer::{RevocationEvidence, Writer};
use crate::store::{Lease, LeaseState, Store};

/// Leases ended per change: small enough that the transaction it shares
/// with queued issuance stays short.
pub const BATCH: usize = 200;
/// How often the reaper looks when there is nothing to do.
const IDLE: Duration = Duration::from_millis(500);
/// The pause between full batches, leaving the writer to issuance.
const BETWEEN_BATCHES: Duration = Duration::from_millis(10);

/// Sets the broker's lease gauges (`docs/metrics.md`): active leases by
/// kind (every kind, so a series exists at zero) and the reaper's backlog.
pub async fn record_gauges(store: &Store) {
    let (active, backlog) = match store.lease_gauges(now_ns()).await {
        Ok(counts) => counts,
        Err(error) => {
            tracing::warn!(%error, "cannot count leases for the metrics");
            return;
        }
    };
    for kind in crate::store::Kind::ALL {
        let n = active
            .iter()
            .find(|(k, _)| k == kind)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("steward_broker_active_leases", "kind" => kind.as_str()).set(n as f64);
    }
    metrics::gauge!("steward_broker_reaper_backlog_leases").set(backlog as f64);
}

pub async fn run(
    store: Store,
    writer: Writer,
    actor: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let evidence: RevocationEvidence = {
        let actor = actor.clone();
        Arc::new(move |lease: &Lease| {
            let mut record = lease_record(lease, &actor, "credential.expire");
            record.outcome.reason = "the lease reached its expiry".to_owned();
            record
        })
    };
    loop {
        let mut pause = IDLE;
        match store.expired(now_ns(), BATCH).await {
            Ok(ids) if ids.is_empty() => {}
            Ok(ids) => {
                let full = ids.len() == BATCH;
                let expired = writer.revoke(
                    ids,
                    LeaseState::Expired,
                    &actor,
                    "expired",
                    evidence.clone(),
                );
                if let Err(error) = expired.await {
                    tracing::warn!(%error, "reaping failed; retrying");
                } else if full {
                    pause = BETWEEN_BATCHES;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read expired leases; retrying"),
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}
