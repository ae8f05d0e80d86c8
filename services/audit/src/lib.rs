//! The audit service: the tamper-evident evidence log.
//!
//! - [`log`]: the sequencer (group commit), the in-memory Merkle tree,
//!   signed checkpoints, the committed-batch broadcast;
//! - [`store`]: entries and checkpoints in SQLite or PostgreSQL;
//! - [`server`]: the `steward.audit.v1.AuditService` gRPC adapter;
//! - [`subscribe`]: the resumable `Subscribe` stream.
//!
//! The leaf encoding is specified in `docs/evidence-encoding.md`; the log's
//! data structures and cryptography live in `steward-evidence`.

pub mod config;
pub mod convert;
pub mod log;
pub mod server;
pub mod store;
pub mod subscribe;

use std::time::Duration;

use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use steward_db::MigrationSet;
use steward_evidence::NoteSigner;
use steward_proto::steward::audit::v1::audit_service_server::AuditServiceServer;
use steward_server::roles::{self, AUDITORS, OPERATORS};
use steward_server::{Application, ServiceConfig, ServiceContext, ServiceSpec, StartError};
use tonic::service::Routes;

pub use config::{AuditConfig, LogConfig};

const MIGRATIONS: MigrationSet = steward_db::migrations!("audit", {
    2: "evidence log" => "0002_evidence_log.sql",
    3: "leaf lookup in memory" => "0003_leaf_lookup_in_memory.sql",
});

/// Service identities allowed to append, and readers of the evidence.
const WRITERS: &[&str] = &[
    steward_server::service_caller!("inventory"),
    steward_server::service_caller!("authority"),
    steward_server::service_caller!("credential-broker"),
];
const READERS: &[&str] = &[OPERATORS, AUDITORS];
const EVERYONE: &[&str] = &[roles::EVERYONE];

/// What makes this binary the audit service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: "audit",
    default_port: 50054,
    migrations: MIGRATIONS,
    grpc_services: &["steward.audit.v1.AuditService"],
    default_authz: &[
        ("/steward.audit.v1.AuditService/Append", WRITERS),
        ("/steward.audit.v1.AuditService/AppendBatch", WRITERS),
        ("/steward.audit.v1.AuditService/GetCheckpoint", EVERYONE),
        ("/steward.audit.v1.AuditService/GetVerifierKey", EVERYONE),
        ("/steward.audit.v1.AuditService/GetInclusionProof", EVERYONE),
        (
            "/steward.audit.v1.AuditService/GetConsistencyProof",
            EVERYONE,
        ),
        ("/steward.audit.v1.AuditService/GetEntries", READERS),
        ("/steward.audit.v1.AuditService/Query", READERS),
        ("/steward.audit.v1.AuditService/Subscribe", READERS),
    ],
    max_request_bytes: steward_server::bounds::DEFAULT_MAX_REQUEST_BYTES,
    field_limits: &[],
};

/// This service's configuration with its defaults.
pub fn default_config() -> AuditConfig {
    AuditConfig {
        service: ServiceConfig::defaults(SPEC.name, SPEC.default_port),
        log: LogConfig::default(),
    }
}

/// Builds the service (binds, migrates, rebuilds the tree) from `config`.
pub async fn build(config: AuditConfig) -> Result<Application, StartError> {
    let log_config = config.log;
    Application::build(
        SPEC,
        config.service,
        async move |context: ServiceContext| routes(context, log_config).await,
    )
    .await
}

async fn routes(context: ServiceContext, config: LogConfig) -> Result<Routes, StartError> {
    let origin = if config.origin.is_empty() {
        format!("{}/audit", context.spiffe_id.trust_domain())
    } else {
        config.origin.clone()
    };
    let signer = load_signer(&config, &origin)?;
    let options = log::LogOptions {
        origin,
        checkpoint_interval: Duration::from_millis(config.checkpoint_interval_ms.max(10)),
        max_batch: config.max_batch.max(1),
        subscriber_buffer: config.subscriber_buffer,
    };
    let store = store::Store::new(context.database.clone());
    let (log, queue) = log::Log::open(store, signer, &options)
        .await
        .map_err(|e| StartError::Init(format!("evidence log: {e}")))?;
    if let Some(why) = log.untrusted() {
        context.mark_unhealthy(&format!(
            "the evidence log failed its integrity check: {why}"
        ));
    }
    // On PostgreSQL, take the sequencer role now if it is free so that a
    // lone service accepts appends from its first request; otherwise this
    // process starts as a read replica that follows the log.
    let role = log
        .claim_role()
        .await
        .map_err(|e| StartError::Init(format!("sequencer role: {e}")))?;
    let gauged = log.clone();
    context.on_scrape(move || {
        let log = gauged.clone();
        async move {
            metrics::gauge!("steward_audit_tree_size").set(log.size() as f64);
            metrics::gauge!("steward_audit_sequencer").set(if log.is_sequencer() {
                1.0
            } else {
                0.0
            });
        }
    });
    let follow = options.checkpoint_interval.min(Duration::from_millis(200));
    context.spawn(log.clone().run_roles(queue, follow, context.clone(), role));
    context.spawn(
        log.clone()
            .run_checkpointer(options.checkpoint_interval, context.shutdown()),
    );
    Ok(Routes::new(AuditServiceServer::new(
        server::AuditServer::new(log),
    )))
}

fn load_signer(config: &LogConfig, origin: &str) -> Result<NoteSigner, StartError> {
    let path = &config.signing_key;
    let key = PrivateKeyDer::from_pem_file(path).map_err(|e| {
        StartError::Init(format!(
            "cannot read the log signing key {}: {e} (run `steward dev up`, or set log.signing_key)",
            path.display()
        ))
    })?;
    let PrivateKeyDer::Pkcs8(pkcs8) = key else {
        return Err(StartError::Init(format!(
            "{} is not a PKCS#8 key",
            path.display()
        )));
    };
    NoteSigner::from_pkcs8(origin, pkcs8.secret_pkcs8_der())
        .map_err(|e| StartError::Init(format!("log signing key {}: {e}", path.display())))
}
