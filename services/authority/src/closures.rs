//! Closing an incident revokes every credential lease tied to it.
//!
//! `CloseIncident` commits the closure (grants ended, requests cancelled)
//! with a row in `closed_incidents`, then asks the credential broker to
//! revoke the incident's leases (`RevokeLeases` by incident, as
//! `service/authority`). If the broker cannot be reached the closure still
//! stands and the answer says the leases are pending; a background task
//! retries every pending closure until the broker has revoked them, so a
//! closure is never forgotten by a restart or an outage.

use std::sync::Arc;
use std::time::Duration;

use steward_evidence::record::truncate_utf8;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
use steward_telemetry::TracedChannel;
use tokio::sync::Notify;

use crate::store::{Closure, Store, StoreError};

/// How often pending closures are retried.
const RETRY: Duration = Duration::from_secs(3);
/// How long `CloseIncident` waits for the broker before answering.
pub const INLINE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Closures {
    store: Store,
    broker: Option<CredentialBrokerClient<TracedChannel>>,
    wake: Notify,
}

impl Closures {
    /// `broker` is `None` when no broker is configured: closures are then
    /// kept pending (and logged) until one is.
    pub fn new(store: Store, broker: Option<TracedChannel>) -> Self {
        Self {
            store,
            broker: broker.map(CredentialBrokerClient::new),
            wake: Notify::new(),
        }
    }

    /// Has the broker revoke every lease of the closed incident; returns
    /// their ids. On success the closure is marked done.
    pub async fn announce(&self, closure: &Closure) -> Result<Vec<String>, String> {
        let Closure {
            incident,
            reason,
            closed_at,
            correlation_id,
        } = closure;
        let mut client = self.broker.clone().ok_or_else(|| {
            "no credential broker is configured (peers.credential_broker)".to_owned()
        })?;
        let mut revoked = Vec::new();
        loop {
            let response = client
                .revoke_leases(broker::RevokeLeasesRequest {
                    selector: Some(broker::revoke_leases_request::Selector::IncidentRef(
                        incident.to_owned(),
                    )),
                    reason: truncate_utf8(format!("incident {incident} closed: {reason}"), 1024),
                    correlation_id: correlation_id.clone(),
                })
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            revoked.extend(response.lease_ids);
            if !response.more {
                break;
            }
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.store
            .closure_announced(incident, *closed_at, now)
            .await
            .map_err(|e: StoreError| e.to_string())?;
        Ok(revoked)
    }

    /// Wakes the retry loop.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Retries pending closures until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(RETRY) => {}
                () = self.wake.notified() => {}
            }
            let pending = match self.store.closures_to_announce(100).await {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::warn!(%error, "cannot read pending incident closures");
                    continue;
                }
            };
            for closure in pending {
                let incident = &closure.incident;
                match self.announce(&closure).await {
                    Ok(leases) => tracing::info!(
                        incident,
                        leases = leases.len(),
                        "the broker revoked the closed incident's leases"
                    ),
                    Err(error) => {
                        tracing::warn!(incident, %error, "cannot have the broker revoke a closed incident's leases yet; retrying");
                        break;
                    }
                }
            }
        }
    }
}
