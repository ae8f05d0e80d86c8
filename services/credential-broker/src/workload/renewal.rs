//! When a streamed X.509-SVID is replaced: at half its lifetime, at once
//! when its lease is revoked, and for every SVID after a CA rotation. The
//! Workload API's `FetchX509SVID` and SDS's `StreamSecrets` both wait here.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use steward_proto::spiffe_workload as pb;
use tokio::sync::{broadcast, watch};

use super::Entry;
use crate::federation::{Federation, ForeignBundles};
use crate::issuance::Issuer;
use crate::store::RevocationEntry;

/// The X.509-SVIDs one `FetchX509SVID` stream serves, by entry id.
#[derive(Default)]
pub(super) struct Held {
    pub(super) svids: BTreeMap<String, HeldSvid>,
}

pub(super) struct HeldSvid {
    /// What the entry said when this SVID was issued: a changed entry
    /// gets a new one at once.
    pub(super) issued_as: Issued,
    pub(super) svid: pb::X509svid,
    pub(super) lease_id: String,
    /// Half its lifetime.
    pub(super) renew_at_ns: i64,
}

#[derive(PartialEq, Eq)]
pub(super) struct Issued {
    spiffe_id: String,
    identity_id: String,
    x509_ttl: u32,
    dns_names: Vec<String>,
}

impl Issued {
    pub(super) fn of(entry: &Entry) -> Self {
        Self {
            spiffe_id: entry.spiffe_id.clone(),
            identity_id: entry.identity_id.clone(),
            x509_ttl: entry.x509_ttl,
            dns_names: entry.dns_names.clone(),
        }
    }
}

impl Held {
    /// Drops what `wake` made stale; false when the stream should end.
    pub(super) fn apply(&mut self, wake: Wake) -> bool {
        match wake {
            Wake::Due | Wake::Bundles => {}
            Wake::Revoked(lease_id) => self.svids.retain(|_, h| h.lease_id != lease_id),
            Wake::Renew => self.svids.clear(),
            Wake::Closed => return false,
        }
        true
    }
}

/// Why a stream wakes to serve again.
pub(super) enum Wake {
    /// An SVID reached half its lifetime.
    Due,
    /// One of the stream's leases was revoked.
    Revoked(String),
    /// A CA rotation (or revocations missed): every SVID is replaced.
    Renew,
    /// A foreign trust domain's bundle changed: the SVIDs stay, the
    /// answer's federated bundles are new.
    Bundles,
    /// The broker is going away.
    Closed,
}

/// What a stream listens to between answers.
pub(super) struct Renewals {
    revocations: broadcast::Receiver<Arc<RevocationEntry>>,
    ca_changes: watch::Receiver<u64>,
    federated: watch::Receiver<ForeignBundles>,
}

impl Renewals {
    pub(super) fn of(issuer: &Issuer, federation: &Federation) -> Self {
        Self {
            revocations: issuer.writer.subscribe(),
            ca_changes: issuer.ca_changes(),
            federated: federation.changes(),
        }
    }

    /// Waits until the stream's next SVID is due (`refresh`), one of
    /// `leases` is revoked, or the CA rotates.
    pub(super) async fn next(&mut self, refresh: Duration, leases: &HashSet<String>) -> Wake {
        let deadline = tokio::time::sleep(refresh);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Wake::Due,
                changed = self.ca_changes.changed() => {
                    return if changed.is_err() { Wake::Closed } else { Wake::Renew };
                }
                changed = self.federated.changed() => {
                    return if changed.is_err() { Wake::Closed } else { Wake::Bundles };
                }
                revoked = self.revocations.recv() => match revoked {
                    Ok(entry) if leases.contains(&entry.lease.lease_id) => {
                        return Wake::Revoked(entry.lease.lease_id.clone());
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Wake::Renew,
                    Err(broadcast::error::RecvError::Closed) => return Wake::Closed,
                },
            }
        }
    }
}
