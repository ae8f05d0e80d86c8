//! `steward.common.v1.IdentityService`: tells callers who they are.

use steward_identity::PeerIdentity;
use steward_proto::steward::common::v1::identity_service_server::IdentityService;
use steward_proto::steward::common::v1::{WhoAmIRequest, WhoAmIResponse};
use tonic::{Request, Response, Status};

/// Answers `WhoAmI` from the verified peer identity on the connection.
#[derive(Debug, Clone)]
pub struct WhoAmI {
    pub service: &'static str,
}

#[tonic::async_trait]
impl IdentityService for WhoAmI {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        let peer = PeerIdentity::required(&request)?;
        Ok(Response::new(WhoAmIResponse {
            caller_spiffe_id: peer.spiffe_id.to_string(),
            server_spiffe_id: peer.server_id.to_string(),
            service: self.service.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }))
    }
}
