//! The test-only `steward.testing.v1.EchoService`, served through the same
//! runtime as the real services so that the transport and the caller
//! authorisation layer can be tested and benchmarked on a trivial handler.

use std::collections::BTreeMap;

use steward_db::MigrationSet;
use steward_proto::steward::testing::v1::echo_service_server::{EchoService, EchoServiceServer};
use steward_proto::steward::testing::v1::{EchoRequest, EchoResponse};
use steward_server::{Application, ServiceSpec};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::{RunningService, TestBackend, TestPki, service_config, spiffe_id};

/// Echoes the request.
#[derive(Debug, Clone, Copy)]
pub struct Echo;

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            message: request.into_inner().message,
        }))
    }
}

/// The echo service's spec: no migrations of its own.
pub const ECHO_SPEC: ServiceSpec = ServiceSpec {
    name: "echo",
    default_port: 0,
    migrations: MigrationSet {
        service: "echo",
        sqlite: &[],
        postgres: &[],
    },
    grpc_services: &["steward.testing.v1.EchoService"],
    default_authz: &[],
    max_request_bytes: steward_server::bounds::DEFAULT_MAX_REQUEST_BYTES,
    field_limits: &[],
};

/// Starts the echo service on `pki`, with `rules` as its allowlist.
pub async fn start_echo(pki: &TestPki, rules: &[(&str, &[&str])]) -> RunningService {
    let svid = pki.svid("echo", &spiffe_id("/service/echo").to_string());
    let database = TestBackend::Sqlite.fresh_database(pki.path(), "echo").await;
    let mut config = service_config("echo", svid, database);
    config.authz = rules
        .iter()
        .map(|(rpc, callers)| {
            (
                (*rpc).to_owned(),
                callers.iter().map(|c| (*c).to_owned()).collect(),
            )
        })
        .collect::<BTreeMap<_, _>>();
    let app = Application::build(ECHO_SPEC, config, async |_| {
        Ok(Routes::new(EchoServiceServer::new(Echo)))
    })
    .await
    .unwrap();
    RunningService::start("echo", app)
}
