//! The inventory service: the one governed view of every non-human identity.
//!
//! - [`domain`]: validated types, the lifecycle state machine, risk, selectors;
//! - [`store`]: SQLite / PostgreSQL, every write with its evidence in the
//!   outbox, posture reports as index ranges;
//! - [`import`]: parsers for the AWS IAM credential report, Kubernetes
//!   ServiceAccounts and Steward's generic CSV / JSON;
//! - [`server`]: the `steward.inventory.v1.InventoryService` gRPC adapter.
//!
//! `main.rs` only calls [`steward_server::service_main`]; tests build the same
//! [`steward_server::Application`] in-process with [`build`].

pub mod changes;
pub mod domain;
pub mod evidence;
pub mod import;
pub mod server;
pub mod store;

use std::time::Duration;

use steward_db::MigrationSet;
use steward_outbox::{Forwarder, ForwarderOptions};
use steward_proto::steward::inventory::v1::inventory_service_server::InventoryServiceServer;
use steward_server::roles::{AUDITORS, AUTOMATION, OPERATORS, SERVICES};
use steward_server::{Application, ServiceConfig, ServiceContext, ServiceSpec, StartError};
use tonic::service::Routes;

const MIGRATIONS: MigrationSet = steward_db::migrations!("inventory", {
    2: "evidence outbox" => (steward_outbox::SQLITE_SQL, steward_outbox::POSTGRES_SQL),
    3: "inventory" => "0003_inventory.sql",
    4: "registration entries' dns names" => "0004_registration_dns_names.sql",
    5: "change relays" => "0005_change_relays.sql",
    6: "what imports carry" => "0006_import_facts.sql",
});

const AUTHORITY: &str = steward_server::service_caller!("authority");
const BROKER: &str = steward_server::service_caller!("credential-broker");

const READERS: &[&str] = &[OPERATORS, AUTOMATION, AUDITORS, SERVICES];
const MAINTAINERS: &[&str] = &[OPERATORS, AUTOMATION];
const TRANSITIONERS: &[&str] = &[OPERATORS, AUTHORITY];
const SIGNALLERS: &[&str] = &[OPERATORS, AUTOMATION, SERVICES];
const RESOLVERS: &[&str] = &[OPERATORS, AUTOMATION, AUTHORITY];
const ENTITLERS: &[&str] = &[OPERATORS, AUTOMATION, AUTHORITY];
const OPERATORS_ONLY: &[&str] = &[OPERATORS];
const ENTRY_READERS: &[&str] = &[OPERATORS, AUDITORS, SERVICES];
const MATCHERS: &[&str] = &[OPERATORS, BROKER];
const REVIEW_READERS: &[&str] = &[OPERATORS, AUTOMATION, AUDITORS];
const FEED_READERS: &[&str] = &[OPERATORS, AUDITORS, SERVICES];

macro_rules! rpc {
    ($name:literal) => {
        concat!("/steward.inventory.v1.InventoryService/", $name)
    };
}

/// What makes this binary the inventory service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "inventory",
    default_port: 50051,
    migrations: MIGRATIONS,
    grpc_services: &["steward.inventory.v1.InventoryService"],
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
        (rpc!("CreateIdentity"), MAINTAINERS),
        (rpc!("GetIdentity"), READERS),
        (rpc!("UpdateIdentity"), MAINTAINERS),
        (rpc!("ListIdentities"), READERS),
        (rpc!("TransitionState"), TRANSITIONERS),
        (rpc!("ListTransitions"), READERS),
        (rpc!("AddSignal"), SIGNALLERS),
        (rpc!("ResolveSignal"), RESOLVERS),
        (rpc!("ListSignals"), READERS),
        (rpc!("ListSignalFeed"), FEED_READERS),
        (rpc!("WatchIdentityChanges"), &[AUTHORITY]),
        (rpc!("GrantEntitlement"), ENTITLERS),
        (rpc!("RecordUsage"), SIGNALLERS),
        (rpc!("RemoveEntitlement"), ENTITLERS),
        (rpc!("ListEntitlements"), READERS),
        (rpc!("SetOwnerStatus"), MAINTAINERS),
        (rpc!("CreateRegistrationEntry"), OPERATORS_ONLY),
        (rpc!("UpdateRegistrationEntry"), OPERATORS_ONLY),
        (rpc!("DeleteRegistrationEntry"), OPERATORS_ONLY),
        (rpc!("ListRegistrationEntries"), ENTRY_READERS),
        (rpc!("GetRegistrationEntry"), ENTRY_READERS),
        (rpc!("MatchSelectors"), MATCHERS),
        (rpc!("StartReviewCampaign"), OPERATORS_ONLY),
        (rpc!("GetReviewCampaign"), REVIEW_READERS),
        (rpc!("ListReviewItems"), REVIEW_READERS),
        (rpc!("AttestReview"), MAINTAINERS),
        (rpc!("GetPostureReport"), READERS),
        (rpc!("ImportIdentities"), MAINTAINERS),
    ],
    max_request_bytes: MAX_REQUEST_BYTES,
    field_limits: &[(
        "steward.inventory.v1.ImportIdentitiesRequest.content",
        MAX_REQUEST_BYTES,
    )],
};

/// Largest request the service accepts (imports carry whole exports).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// How often overdue review campaigns are closed in the background.
const REVIEW_SWEEP: Duration = Duration::from_secs(30);

/// This service's configuration with its defaults.
pub fn default_config() -> ServiceConfig {
    ServiceConfig::defaults(SPEC.name, SPEC.default_port)
}

/// The service's own gRPC services and background tasks: the outbox
/// forwarder, the transition writer, the review sweeper.
pub async fn routes(context: ServiceContext) -> Result<Routes, StartError> {
    let forwarder = Forwarder::spawn(&context, ForwarderOptions::default())?;
    let outbox =
        steward_outbox::OutboxAdmin::server(context.database.clone(), SPEC.name, forwarder.clone());
    let store = store::Store::new(context.database.clone(), Some(forwarder));
    if let steward_db::Database::Postgres(pool) = &context.database {
        // Replicas share writes' invalidations (ADR 0023).
        context.spawn(changes::relay::Relay::start(
            pool.clone(),
            &store.changes,
            context.shutdown(),
        ));
    }
    let (transitions, writer) =
        store::transitions::Transitions::start(store.clone(), context.shutdown());
    context.spawn(writer);
    let gauged = store.clone();
    context.on_scrape(move || {
        let store = gauged.clone();
        async move { record_gauges(&store).await }
    });
    // Done once for the database, by one replica at a time.
    let (swept, own) = (store.clone(), context.spiffe_id.to_string());
    context.spawn_singleton("inventory.review-sweep", move |stop| {
        sweep_reviews(swept.clone(), own.clone(), stop)
    });
    // Lifecycle changes are authority's to decide; with no authority
    // configured, they fail closed (except authority's own).
    let authority = if context.peers.authority.is_empty() {
        tracing::warn!(
            "no authority configured (peers.authority): lifecycle transitions are refused"
        );
        None
    } else {
        Some(context.peer_channel("authority", &context.peers.authority)?)
    };
    let authority_id = format!(
        "spiffe://{}/service/authority",
        context.spiffe_id.trust_domain()
    );
    let server = server::InventoryServer::new(
        store,
        transitions,
        context.spiffe_id.trust_domain().clone(),
        server::gate::LifecycleGate::new(authority, authority_id),
    );
    Ok(Routes::new(
        InventoryServiceServer::new(server)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(outbox))
}

/// Closes review campaigns whose deadline passed, so that flags appear
/// without anyone asking.
async fn sweep_reviews(
    store: store::Store,
    own_id: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let context = domain::ChangeContext {
        actor: own_id,
        ..Default::default()
    };
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(REVIEW_SWEEP) => {}
        }
        if let Err(error) = store.close_overdue_campaigns(&context).await {
            tracing::warn!(%error, "closing overdue review campaigns failed; will retry");
        }
    }
}

/// Builds the service (binds, migrates) from `config`.
pub async fn build(config: ServiceConfig) -> Result<Application, StartError> {
    Application::build(SPEC, config, routes).await
}

/// Sets the identities gauge (`docs/metrics.md`), every state present so
/// that a series exists at zero.
async fn record_gauges(store: &store::Store) {
    let counts = match store.identities_by_state().await {
        Ok(counts) => counts,
        Err(error) => {
            tracing::warn!(%error, "cannot count identities for the metrics");
            return;
        }
    };
    for state in steward_vocab::LifecycleState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| s == state.as_str())
            .map_or(0, |(_, n)| *n);
        metrics::gauge!("steward_inventory_identities", "state" => state.as_str()).set(n as f64);
    }
}
