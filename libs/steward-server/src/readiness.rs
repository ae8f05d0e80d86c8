//! Peers a service cannot do its work without, in its readiness
//! (`/readyz`): the broker asks authority for every credential, authority
//! asks inventory for every decision's facts. Each such peer's gRPC health
//! is checked over mTLS (every second while it is down, every five while it
//! answers), and `/readyz` is 503 while one is not SERVING.
//!
//! Only those two: a peer whose absence the service rides out (audit, whose
//! evidence waits in the outbox; authority for inventory, whose reads go
//! on) stays out, so one service down takes no others out of rotation
//! with it (ADR 0022). The mTLS gRPC health service is unchanged: it
//! speaks of the service itself.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Between checks of a peer that answers, and of one that does not.
const WHILE_UP: Duration = Duration::from_secs(5);
const WHILE_DOWN: Duration = Duration::from_secs(1);
/// A check's deadline.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Each needed peer, by name: whether its last check found it SERVING.
#[derive(Debug, Clone, Default)]
pub(crate) struct NeededPeers(Arc<RwLock<BTreeMap<&'static str, bool>>>);

impl NeededPeers {
    /// Whether every needed peer answered its last check.
    pub(crate) fn all_up(&self) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .all(|up| *up)
    }

    fn set(&self, name: &'static str, up: bool) -> bool {
        let mut peers = self.0.write().unwrap_or_else(|p| p.into_inner());
        peers.insert(name, up) != Some(up)
    }

    /// Checks `name` on `channel` until `stopped` resolves; counts it down
    /// until its first check answers.
    pub(crate) async fn follow(
        self,
        name: &'static str,
        channel: tonic::transport::Channel,
        stopped: impl std::future::Future<Output = ()>,
    ) {
        self.set(name, false);
        let mut client = HealthClient::new(channel);
        tokio::pin!(stopped);
        loop {
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(CHECK_TIMEOUT);
            let up = match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
                Ok(Ok(answer)) => answer.into_inner().status == ServingStatus::Serving as i32,
                _ => false,
            };
            if self.set(name, up) {
                if up {
                    tracing::info!(peer = name, "needed peer is serving; ready");
                } else {
                    tracing::warn!(
                        peer = name,
                        "needed peer is not serving; /readyz answers 503"
                    );
                }
            }
            tokio::select! {
                () = &mut stopped => return,
                () = tokio::time::sleep(if up { WHILE_UP } else { WHILE_DOWN }) => {}
            }
        }
    }
}
