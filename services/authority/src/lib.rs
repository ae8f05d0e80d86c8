//! The authority service: Cedar policies deciding who may approve, who may
//! execute and which identity acts.
//!
//! - [`engine`]: the shipped schema, compiled policy sets, sliced decisions;
//! - [`decide`]: the decision path: a request bound to its verified caller,
//!   the NHI's facts from inventory (fails closed), grants tried and spent,
//!   approval requests opened, every decision recorded as evidence;
//! - [`error`]: what the decision path refuses or fails with;
//! - [`state`]: what every part shares (engine, store, active policies);
//! - [`store`]: policy set versions and activations;
//! - [`server`]: the `steward.authority.v1.AuthorityService` gRPC adapter:
//!   wire checks, calls into `decide` and the stores, errors mapped;
//! - [`approvals`]: approval requests, grants and break-glass post-action
//!   reviews, with the evidence each change writes;
//! - [`closures`]: closing an incident has the broker revoke its leases;
//! - [`humans`]: OIDC bearer tokens verified against the issuer's JWKS;
//! - [`rules`]: response rules (signal → proportionate action), applied by
//!   the responder in `server` to inventory's signal feed;
//! - [`config`]: group membership for principals, the OIDC issuer.

pub mod approvals;
pub mod closures;
pub mod config;
pub mod currency;
pub mod decide;
pub mod engine;
pub mod error;
pub mod facts;
pub mod humans;
pub mod rules;
pub mod server;
pub mod state;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use steward_db::MigrationSet;
use steward_outbox::{Batcher, Forwarder, ForwarderOptions};
use steward_proto::steward::authority::v1::authority_service_server::AuthorityServiceServer;
use steward_server::roles::{AUDITORS, AUTOMATION, OPERATORS, SERVICES};
use steward_server::{Application, ServiceConfig, ServiceContext, ServiceSpec, StartError};
use tonic::service::Routes;

pub use config::AuthorityConfig;
use engine::{CompiledSet, DEFAULT_POLICIES, Engine};
use state::{Active, Shared};
use store::SetKind;

const MIGRATIONS: MigrationSet = steward_db::migrations!(SERVICE, {
    2: "evidence outbox" => (steward_outbox::SQLITE_SQL, steward_outbox::POSTGRES_SQL),
    3: "policy sets" => "0003_policy_sets.sql",
    4: "approvals, grants, break-glass reviews" => "0004_approvals.sql",
    5: "response rules" => "0005_response_rules.sql",
    6: "closed incidents" => "0006_closed_incidents.sql",
    7: "closure correlation ids" => "0007_closure_correlation.sql",
    8: "policy followers" => "0008_policy_followers.sql",
});

macro_rules! rpc {
    ($name:literal) => {
        concat!("/steward.authority.v1.AuthorityService/", $name)
    };
}

/// The largest policy set or response-rule document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;

/// The service's name: in its records, its database and its SPIFFE ID.
pub const SERVICE: &str = "authority";

/// What makes this binary the authority service.
pub const SPEC: ServiceSpec = ServiceSpec {
    name: SERVICE,
    default_port: 50052,
    migrations: MIGRATIONS,
    grpc_services: &["steward.authority.v1.AuthorityService"],
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
        (rpc!("ValidatePolicySet"), &[OPERATORS, AUTOMATION]),
        (rpc!("UploadPolicySet"), &[OPERATORS]),
        (rpc!("ListPolicySets"), &[OPERATORS, AUDITORS, AUTOMATION]),
        (rpc!("GetPolicySet"), &[OPERATORS, AUDITORS, AUTOMATION]),
        (rpc!("ActivatePolicySet"), &[OPERATORS]),
        (rpc!("RollbackPolicySet"), &[OPERATORS]),
        (rpc!("Authorize"), &[SERVICES, OPERATORS, AUTOMATION]),
        (rpc!("AuthorizeBatch"), &[SERVICES, OPERATORS, AUTOMATION]),
        (rpc!("DryRun"), &[OPERATORS, AUTOMATION]),
        (rpc!("Explain"), &[OPERATORS, AUDITORS, AUTOMATION]),
        (
            rpc!("GetApprovalRequest"),
            &[OPERATORS, AUDITORS, AUTOMATION, SERVICES],
        ),
        (
            rpc!("ListApprovalRequests"),
            &[OPERATORS, AUDITORS, AUTOMATION, SERVICES],
        ),
        (rpc!("ReviewApprovalRequest"), &[OPERATORS, AUTOMATION]),
        (
            rpc!("CancelApprovalRequest"),
            &[OPERATORS, AUTOMATION, SERVICES],
        ),
        (
            rpc!("GetGrant"),
            &[OPERATORS, AUDITORS, AUTOMATION, SERVICES],
        ),
        (
            rpc!("ListGrants"),
            &[OPERATORS, AUDITORS, AUTOMATION, SERVICES],
        ),
        (rpc!("RevokeGrant"), &[OPERATORS, AUTOMATION]),
        (rpc!("CloseIncident"), &[OPERATORS, AUTOMATION]),
        (rpc!("BreakGlass"), &[OPERATORS, AUTOMATION]),
        (
            rpc!("ListPostActionReviews"),
            &[OPERATORS, AUDITORS, AUTOMATION],
        ),
        (rpc!("CompletePostActionReview"), &[OPERATORS, AUTOMATION]),
        (rpc!("ValidateResponseRules"), &[OPERATORS, AUTOMATION]),
        (rpc!("UploadResponseRules"), &[OPERATORS]),
        (
            rpc!("ListResponseRules"),
            &[OPERATORS, AUDITORS, AUTOMATION],
        ),
        (rpc!("GetResponseRules"), &[OPERATORS, AUDITORS, AUTOMATION]),
        (rpc!("ActivateResponseRules"), &[OPERATORS]),
        (rpc!("RollbackResponseRules"), &[OPERATORS]),
        (
            rpc!("ListResponseActions"),
            &[OPERATORS, AUDITORS, AUTOMATION],
        ),
    ],
    max_request_bytes: steward_server::bounds::DEFAULT_MAX_REQUEST_BYTES,
    field_limits: &[
        (
            "steward.authority.v1.ValidatePolicySetRequest.policies",
            MAX_DOCUMENT_BYTES,
        ),
        (
            "steward.authority.v1.UploadPolicySetRequest.policies",
            MAX_DOCUMENT_BYTES,
        ),
        (
            "steward.authority.v1.ValidateResponseRulesRequest.document",
            MAX_DOCUMENT_BYTES,
        ),
        (
            "steward.authority.v1.UploadResponseRulesRequest.document",
            MAX_DOCUMENT_BYTES,
        ),
    ],
};

/// This service's configuration with its defaults.
pub fn default_config() -> AuthorityConfig {
    AuthorityConfig::new(ServiceConfig::defaults(SPEC.name, SPEC.default_port))
}

async fn routes(context: ServiceContext, config: AuthorityConfig) -> Result<Routes, StartError> {
    let engine = Engine::new().map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    let store = store::Store::new(context.database.clone());
    let own = context.spiffe_id.to_string();
    let version = match store
        .active(SetKind::Policies)
        .await
        .map_err(|e| StartError::Init(steward_errors::causes(&e)))?
    {
        Some(v) => v,
        None => bootstrap(&engine, &store, &own, "first start").await?,
    };
    let mut stored = store
        .get(SetKind::Policies, version)
        .await
        .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    // A site still on an earlier release's defaults, untouched, moves to
    // this release's (new actions are decided only by policies that name
    // them). A site's own set is the site's to update.
    if stored.uploaded_by == own
        && stored.description == DEFAULTS_DESCRIPTION
        && stored.policies != DEFAULT_POLICIES
    {
        let version =
            bootstrap(&engine, &store, &own, "Steward's default policies updated").await?;
        stored = store
            .get(SetKind::Policies, version)
            .await
            .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    }
    let version = stored.version;
    let set = CompiledSet::compile(&engine, &stored.policies).map_err(|e| {
        StartError::Init(format!(
            "active policy set {version} does not compile: {:?}",
            e.first()
        ))
    })?;
    let broker = if context.peers.credential_broker.is_empty() {
        tracing::warn!(
            "no credential broker configured (peers.credential_broker): closed incidents' leases are revoked once one is"
        );
        None
    } else {
        Some(context.peer_channel("credential-broker", &context.peers.credential_broker)?)
    };
    let shared = Arc::new(Shared {
        engine,
        store: store.clone(),
        active: RwLock::new(Arc::new(Active {
            version,
            set: Arc::new(set),
        })),
        compiled: RwLock::new(HashMap::new()),
        humans: humans::Humans::new(config.oidc.as_ref()).map_err(StartError::Init)?,
        config,
        own: context.spiffe_id.clone(),
        grant_holders: RwLock::new(Default::default()),
        facts: Arc::default(),
        closures: Arc::new(closures::Closures::new(store.clone(), broker)),
        currency: match &context.database {
            steward_db::Database::Postgres(pool) => {
                currency::Currency::among_replicas(pool.clone())
            }
            steward_db::Database::Sqlite(_) => currency::Currency::alone(),
        },
    });
    follow_once(&shared).await;
    // Work done once for the database, by one replica at a time.
    let closures = Arc::clone(&shared.closures);
    context.spawn_singleton("authority.closures", move |stop| {
        Arc::clone(&closures).run(stop)
    });
    shared
        .refresh_grant_holders()
        .await
        .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    let forwarder = Forwarder::spawn(&context, ForwarderOptions::default())?;
    let outbox =
        steward_outbox::OutboxAdmin::server(context.database.clone(), SPEC.name, forwarder.clone());
    let (batcher, writer) = Batcher::start(
        context.database.clone(),
        Some(forwarder),
        context.shutdown(),
    );
    context.spawn(writer);
    context.spawn(follow(shared.clone(), context.shutdown()));
    let swept = shared.clone();
    context.spawn_singleton("authority.sweep", move |stop| sweep(swept.clone(), stop));
    // Every decision reads inventory's facts (the cache aside).
    context.needs_peer("inventory", &context.peers.inventory)?;
    let gauged = shared.clone();
    context.on_scrape(move || {
        let shared = gauged.clone();
        async move {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            match shared.store.pending_approvals(now).await {
                Ok(n) => {
                    metrics::gauge!("steward_authority_pending_approval_requests").set(n as f64)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot count approval requests for the metrics")
                }
            }
        }
    });
    let inventory = context.peer_channel("inventory", &context.peers.inventory)?;
    context.spawn(Arc::clone(&shared.facts).follow(inventory.clone(), context.shutdown()));
    let server = server::AuthorityServer::new(shared, inventory, batcher);
    let responder = server.clone();
    context.spawn_singleton("authority.responder", move |stop| {
        responder.clone().respond(stop)
    });
    Ok(Routes::new(AuthorityServiceServer::new(server)).add_service(outbox))
}

/// How the default policy set is described when authority installs it.
const DEFAULTS_DESCRIPTION: &str = "Steward's default policies";

/// A fresh authority starts with the default policies, active.
async fn bootstrap(
    engine: &Engine,
    store: &store::Store,
    own: &str,
    why: &str,
) -> Result<u64, StartError> {
    let set = CompiledSet::compile(engine, DEFAULT_POLICIES)
        .map_err(|e| StartError::Init(format!("default policies: {:?}", e.first())))?;
    let ids = set.policy_ids();
    let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0);
    let version = store
        .upload(
            SetKind::Policies,
            store::NewVersion {
                text: DEFAULT_POLICIES,
                description: DEFAULTS_DESCRIPTION,
                ids: &ids,
                uploaded_by: own,
                now_ns: now,
            },
            |v| {
                server::record(
                    own,
                    "policy.upload",
                    DEFAULTS_DESCRIPTION,
                    [("version".to_owned(), v.to_string())]
                        .into_iter()
                        .collect(),
                )
            },
        )
        .await
        .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    store
        .activate(SetKind::Policies, Some(version), own, why, now, |v, p| {
            server::record(
                own,
                "policy.activate",
                why,
                [
                    ("version".to_owned(), v.to_string()),
                    ("previous_version".to_owned(), p.to_string()),
                ]
                .into_iter()
                .collect(),
            )
        })
        .await
        .map_err(|e| StartError::Init(steward_errors::causes(&e)))?;
    tracing::info!(version, "installed the default policy set");
    Ok(version)
}

/// How often grant holders are read again (grants issued elsewhere), in
/// follow periods.
const GRANT_HOLDERS_EVERY: u32 = 8;

/// Follows the last policy activation and renews this replica's promise
/// (ADR 0026) until `shutdown`, then withdraws it; re-reads grant holders
/// every two seconds.
async fn follow(shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    // Alone (SQLite) there is no activation to follow: only grant holders
    // are re-read, every two seconds as before.
    let among_others = shared.currency.among_others();
    let every = if among_others { 1 } else { GRANT_HOLDERS_EVERY };
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(currency::FOLLOW * every) => {}
        }
        ticks = ticks.wrapping_add(every);
        if ticks.is_multiple_of(GRANT_HOLDERS_EVERY)
            && let Err(e) = shared.refresh_grant_holders().await
        {
            tracing::warn!(error = %e, "cannot re-read grant holders; keeping the last set");
        }
        if among_others {
            follow_once(&shared).await;
        }
    }
    shared.currency.withdraw().await;
}

/// Reads the last activation, switches to its version if another replica
/// activated it, and renews this replica's promise.
async fn follow_once(shared: &Shared) {
    let (seq, version) = match shared.store.last_activation(SetKind::Policies).await {
        Ok(Some(last)) => last,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the last policy activation");
            return;
        }
    };
    if version != shared.active().version {
        match shared.compiled(version).await {
            Ok((_, set)) => {
                tracing::info!(version, "another replica activated a policy set; following");
                shared.set_active(Active { version, set });
            }
            Err(e) => {
                tracing::error!(
                    version,
                    error = %e,
                    detail = ?std::error::Error::source(&e).map(ToString::to_string),
                    "cannot load the active policy set; deciding no more until it loads"
                );
                return;
            }
        }
    }
    shared.currency.renew(seq).await;
}

/// How often expired approvals and grants are closed and overdue
/// post-action reviews flagged.
const SWEEP: Duration = Duration::from_secs(10);

/// Closes what lapsed: see `Store::sweep`.
async fn sweep(shared: Arc<Shared>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let actor = shared.own_actor();
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(SWEEP) => {}
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if let Err(e) = shared.store.sweep(&actor, now).await {
            tracing::warn!(error = %e, "approval sweep failed; retrying");
        }
    }
}

/// Builds the service with default settings around `config`.
pub async fn build(config: ServiceConfig) -> Result<Application, StartError> {
    build_with(AuthorityConfig::new(config)).await
}

/// Builds the service (binds, migrates, loads the active policy set).
pub async fn build_with(config: AuthorityConfig) -> Result<Application, StartError> {
    let service = config.service.clone();
    Application::build(SPEC, service, async move |context: ServiceContext| {
        routes(context, config).await
    })
    .await
}
