//! The credential broker: short-lived X.509-SVIDs, JWT-SVIDs and API tokens on leases bound to a task window.
//!
//! - [`keys`]: private keys sealed under a key-encryption key;
//! - [`ca`]: the CA hierarchy and X.509-SVID issuance from CSRs;
//! - [`backends`]: external systems' credentials (PostgreSQL login roles);
//! - [`authorities`]: the CA and JWT signing key, generated once, then
//!   loaded and opened on every start;
//! - [`issuance`]: the domain core, [`issuance::Issuer`]: issue, renew,
//!   revoke, rotate, each asking authority through [`issuance::Decide`]
//!   and committing its evidence with the lease;
//! - [`store`]: leases and the revocation log, every change group-committed
//!   with its evidence ([`store::writer`]);
//! - [`authorizer`]: authority's decisions, queued and sent in batches;
//! - [`grpc`]: the `steward.broker.v1.CredentialBroker` gRPC adapter
//!   (parsing in `convert`, `WatchRevocations` in [`grpc::watch`]);
//! - [`reaper`]: ends expired leases in batches;
//! - [`workload`]: the SPIFFE Workload API on a Unix domain socket.
//!
//! This crate is the service's library; `main.rs` only calls
//! [`steward_server::service_main`]. Tests build the same
//! [`steward_server::Application`] in-process with [`build`].

pub mod authorities;
pub mod authorizer;
pub mod backends;
pub mod ca;
pub mod config;
mod convert;
pub mod federation;
pub mod grpc;
pub mod issuance;
pub mod keys;
mod peers;
pub mod reaper;
pub mod store;
pub mod workload;

use std::sync::Arc;

use steward_db::MigrationSet;
use steward_outbox::{Forwarder, ForwarderOptions};
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::broker::v1::credential_broker_server::CredentialBrokerServer;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use steward_server::roles::{AUDITORS, AUTOMATION, OPERATORS, SERVICES, WORKLOADS};
use steward_server::{Application, ServiceConfig, ServiceContext, ServiceSpec, StartError};
use tonic::service::Routes;

pub use config::BrokerConfig;

const MIGRATIONS: MigrationSet = steward_db::migrations!("credential-broker", {
    2: "evidence outbox" => (steward_outbox::SQLITE_SQL, steward_outbox::POSTGRES_SQL),
    3: "signing keys, leases, revocations" => "0003_keys_and_leases.sql",
    4: "rotations" => "0004_rotations.sql",
    5: "credential backends" => "0005_backends.sql",
    6: "rotation correlation ids" => "0006_rotation_correlation.sql",
    7: "federated bundles" => "0007_federation.sql",
});

macro_rules! rpc {
    ($name:literal) => {
        concat!("/steward.broker.v1.CredentialBroker/", $name)
    };
}

/// Every workload of the trust domain that may read public material or
/// check credentials.
const EVERYONE: &[&str] = &[OPERATORS, AUTOMATION, AUDITORS, SERVICES, WORKLOADS];
const ISSUERS: &[&str] = &[OPERATORS, AUTOMATION, SERVICES];

/// What makes this binary the credential-broker service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "credential-broker",
    default_port: 50053,
    migrations: MIGRATIONS,
    grpc_services: &["steward.broker.v1.CredentialBroker"],
    // RPC → callers; `{td}` is replaced by the service's trust domain.
    default_authz: &[
        (
            "/steward.common.v1.EvidenceOutbox/GetOutbox",
            steward_outbox::OUTBOX_READERS,
        ),
        (
            "/steward.common.v1.EvidenceOutbox/RetryParked",
            steward_outbox::OUTBOX_MAINTAINERS,
        ),
        (rpc!("GetTrustBundle"), EVERYONE),
        (rpc!("RotateCa"), &[OPERATORS]),
        (rpc!("IssueX509Svid"), ISSUERS),
        (rpc!("IssueJwtSvid"), ISSUERS),
        (rpc!("IssueApiToken"), ISSUERS),
        (rpc!("IssueDatabaseCredential"), ISSUERS),
        (rpc!("Introspect"), EVERYONE),
        (
            rpc!("GetLease"),
            &[OPERATORS, AUTOMATION, AUDITORS, SERVICES],
        ),
        (
            rpc!("ListLeases"),
            &[OPERATORS, AUTOMATION, AUDITORS, SERVICES],
        ),
        (rpc!("RenewLease"), ISSUERS),
        (rpc!("RevokeLease"), ISSUERS),
        (rpc!("RevokeLeases"), ISSUERS),
        (rpc!("Rotate"), ISSUERS),
        (
            rpc!("GetRotation"),
            &[OPERATORS, AUTOMATION, AUDITORS, SERVICES],
        ),
        (rpc!("WatchRevocations"), EVERYONE),
    ],
    max_request_bytes: steward_server::bounds::DEFAULT_MAX_REQUEST_BYTES,
    field_limits: &[],
};

pub use steward_evidence::clock::now_ns;

/// This service's configuration with its defaults.
pub fn default_config() -> BrokerConfig {
    BrokerConfig::new(ServiceConfig::defaults(SPEC.name, SPEC.default_port))
}

/// The service's own gRPC services.
async fn routes(context: ServiceContext, config: BrokerConfig) -> Result<Routes, StartError> {
    let kek: Arc<dyn keys::KeyEncryption> = Arc::new(
        config
            .kek()
            .map_err(|e| StartError::Init(format!("key-encryption key: {e}")))?,
    );
    let backend: Option<Arc<dyn backends::CredentialBackend>> = match &config.postgres_backend {
        Some(settings) => Some(Arc::new(
            backends::PostgresBackend::new(settings.clone()).map_err(StartError::Init)?,
        )),
        None => None,
    };
    let store = store::Store::new(context.database.clone());
    let own = context.spiffe_id.to_string();
    let authorities = authorities::Authorities::load_or_generate(
        &store,
        kek.as_ref(),
        context.spiffe_id.trust_domain().name(),
        &config.ca,
        &own,
        time::Duration::seconds(i64::try_from(config.ttl.max).unwrap_or(i64::MAX)),
    )
    .await
    .map_err(StartError::Init)?;
    // The lease writer and the forwarder's settles share the database's
    // writer connection.
    let forwarder = Forwarder::spawn(&context, ForwarderOptions::default())?;
    let outbox =
        steward_outbox::OutboxAdmin::server(context.database.clone(), SPEC.name, forwarder.clone());
    let (writer, task) =
        store::writer::Writer::start(store.clone(), Some(forwarder), context.shutdown())
            .await
            .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    context.spawn(task);
    if context.database.backend() == steward_db::Backend::Postgres {
        // Replicas append to one revocation log; watchers here see theirs.
        context.spawn(writer.follow_other_replicas(store.clone(), context.shutdown()));
    }
    // Every issuance asks authority: without it the broker is not ready.
    context.needs_peer("authority", &context.peers.authority)?;
    let gauged = store.clone();
    context.on_scrape(move || {
        let store = gauged.clone();
        async move { reaper::record_gauges(&store).await }
    });
    // Work done once for the database, by one replica at a time.
    let (reaped, reaper_writer) = (store.clone(), writer.clone());
    context.spawn_singleton("broker.reaper", move |stop| {
        reaper::run(reaped.clone(), reaper_writer.clone(), own.clone(), stop)
    });
    // Every issuance asks authority, in batches over several connections,
    // so that one HTTP/2 connection's task does not carry every decision.
    let (authority, task) = authorizer::Authorizer::start(
        (0..authorizer::CONNECTIONS)
            .map(|_| {
                context
                    .peer_channel("authority", &context.peers.authority)
                    .map(AuthorityServiceClient::new)
            })
            .collect::<Result<Vec<_>, _>>()?,
        context.shutdown(),
    );
    context.spawn(task);
    let inventory = context.peer_channel("inventory", &context.peers.inventory)?;
    let issuer = Arc::new(issuance::Issuer {
        own: context.spiffe_id.clone(),
        store: store.clone(),
        writer,
        authorities: std::sync::RwLock::new(Arc::new(authorities)),
        ca_config: config.ca.clone(),
        rotated: tokio::sync::watch::channel(0).0,
        decide: Arc::new(authority),
        signals: Arc::new(peers::Inventory(InventoryServiceClient::new(
            inventory.clone(),
        ))),
        ttl: config.ttl,
        random: ring::rand::SystemRandom::new(),
        backend: backend.clone(),
        kek,
    });
    if let Some(backend) = backend {
        let followed = store.clone();
        context.spawn_singleton("broker.backend", move |stop| {
            backends::follow(followed.clone(), backend.clone(), stop)
        });
    }
    let rotating = issuer.clone();
    context.spawn_singleton("broker.rotation", move |stop| {
        issuance::rotation::run(rotating.clone(), stop)
    });
    let federation = federation::start(&context, &issuer, &config.federation).await?;
    if let Some(socket) = config.workload_api_socket.clone() {
        let api = workload::WorkloadApi::new(issuer.clone(), inventory, federation);
        let shutdown = context.shutdown();
        context.spawn(async move {
            if let Err(error) = workload::serve(api, socket, shutdown).await {
                tracing::error!(%error, "the SPIFFE Workload API stopped");
            }
        });
    }
    let broker = grpc::BrokerServer::new(issuer);
    Ok(Routes::new(CredentialBrokerServer::new(broker)).add_service(outbox))
}

/// Builds the service with default settings around `config` (the
/// key-encryption key then comes from `STEWARD_BROKER_KEK`).
pub async fn build(config: ServiceConfig) -> Result<Application, StartError> {
    build_with(BrokerConfig::new(config)).await
}

/// Builds the service (binds, migrates, opens or generates the CA).
pub async fn build_with(config: BrokerConfig) -> Result<Application, StartError> {
    let service = config.service.clone();
    Application::build(SPEC, service, async move |context: ServiceContext| {
        routes(context, config).await
    })
    .await
}
