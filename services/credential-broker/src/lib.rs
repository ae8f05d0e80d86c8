//! The credential broker: short-lived X.509-SVIDs, JWT-SVIDs and API tokens on leases bound to a task window.
//!
//! This crate is the service's library; `main.rs` only calls
//! [`steward_server::service_main`]. Tests build the same
//! [`steward_server::Application`] in-process with [`build`].

pub mod ca;
pub mod keys;

use steward_db::{MigrationFile, MigrationSet};
use steward_server::{Application, ServiceConfig, ServiceContext, ServiceSpec, StartError};
use tonic::service::Routes;

/// The service's embedded migrations, per backend. Version 1 is the shared
/// baseline from `steward-db`; this service's own start at 2.
const SQLITE_MIGRATIONS: &[MigrationFile] = &[];
const POSTGRES_MIGRATIONS: &[MigrationFile] = &[];

/// What makes this binary the credential-broker service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "credential-broker",
    default_port: 50053,
    migrations: MigrationSet {
        service: "credential-broker",
        sqlite: SQLITE_MIGRATIONS,
        postgres: POSTGRES_MIGRATIONS,
    },
    grpc_services: &[],
    // RPC → callers; `{td}` is replaced by the service's trust domain.
    default_authz: &[],
};

/// This service's configuration with its defaults.
pub fn default_config() -> ServiceConfig {
    ServiceConfig::defaults(SPEC.name, SPEC.default_port)
}

/// The service's own gRPC services.
pub async fn routes(_context: ServiceContext) -> Result<Routes, StartError> {
    Ok(Routes::default())
}

/// Builds the service (binds, migrates) from `config`.
pub async fn build(config: ServiceConfig) -> Result<Application, StartError> {
    Application::build(SPEC, config, routes).await
}
