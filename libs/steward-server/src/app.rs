//! Building and running one service: bind, then serve until shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use steward_db::{Database, MigrationSet};
use steward_identity::authz::AllowlistError;
use steward_identity::{
    AuthorizeCallerLayer, CallerAllowlist, SpiffeId, SvidSource, TlsError, TrustDomain,
};
use steward_proto::steward::common::v1::identity_service_server::IdentityServiceServer;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::bounds::{Bounds, BoundsLayer};
use crate::config::ServiceConfig;
use crate::whoami::WhoAmI;

/// What distinguishes one service binary from another.
#[derive(Debug, Clone, Copy)]
pub struct ServiceSpec {
    /// Short name: `inventory`, `authority`, `credential-broker`, `audit`.
    pub name: &'static str,
    pub default_port: u16,
    pub migrations: MigrationSet,
    /// The gRPC service names to report in health checks.
    pub grpc_services: &'static [&'static str],
    /// Built-in allowlist, used when the config gives none.
    pub default_authz: &'static [(&'static str, &'static [&'static str])],
    /// The largest request message accepted
    /// ([`crate::bounds::DEFAULT_MAX_REQUEST_BYTES`] unless a service needs
    /// more); the service's gRPC servers must accept at least as much.
    pub max_request_bytes: usize,
    /// Fields allowed past the wire bound's defaults, `(full field name,
    /// bytes)`: `("steward.inventory.v1.ImportIdentitiesRequest.content",
    /// …)`. See [`crate::bounds`].
    pub field_limits: &'static [(&'static str, usize)],
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "cannot load this service's svid: {0} (run `steward dev up` to create the dev pki, or set tls.cert, tls.key and tls.bundle)"
    )]
    Tls(#[from] TlsError),
    #[error("invalid trust domain in tls.extra_trust_domains: {0}")]
    TrustDomain(#[from] steward_identity::SpiffeIdError),
    #[error("invalid authz rule: {0}")]
    Authz(#[from] AllowlistError),
    #[error("database: {0}")]
    Database(#[from] steward_db::DbError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Init(String),
}

/// What a service's route builder gets: its database, its identity, and a
/// way to run background tasks that stop with the service.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    pub database: Database,
    pub spiffe_id: SpiffeId,
    /// This service's SVID, for calls to the other services.
    pub svid: Arc<SvidSource>,
    /// Where the other services listen.
    pub peers: crate::config::Peers,
    shutdown: tokio::sync::watch::Receiver<bool>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    unhealthy: Unhealthy,
    conditions: Conditions,
    refreshers: crate::ops::Refreshers,
    needed: crate::readiness::NeededPeers,
}

/// Conditions reported under health names of their own, beside the
/// service's: name → why it is NOT_SERVING (`None`: SERVING).
type Conditions = Arc<std::sync::RwLock<BTreeMap<&'static str, Option<String>>>>;

fn conditions_now(conditions: &Conditions) -> BTreeMap<&'static str, Option<String>> {
    conditions.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Why the service must report NOT_SERVING although its database answers
/// (audit's log failing its integrity check, say); `None` when nothing
/// holds it back.
type Unhealthy = Arc<std::sync::RwLock<Option<String>>>;

fn held_back(unhealthy: &Unhealthy) -> Option<String> {
    unhealthy.read().unwrap_or_else(|p| p.into_inner()).clone()
}

impl ServiceContext {
    /// Makes health report NOT_SERVING for good, for `reason` (logged once),
    /// whatever the database says: for a service that keeps answering
    /// reads but cannot vouch for what it would serve.
    pub fn mark_unhealthy(&self, reason: &str) {
        tracing::error!(reason, "reporting NOT_SERVING");
        *self.unhealthy.write().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_owned());
    }

    /// Reports a condition under its own health name `name` (gRPC health's
    /// `service` field): NOT_SERVING for `Some(reason)`, SERVING for
    /// `None`. The service's own status is not affected; a probe that
    /// cares asks for `name`. Changes show within half a second, and each
    /// is logged once.
    pub fn report(&self, name: &'static str, reason: Option<String>) {
        self.conditions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, reason);
    }

    /// Counts peer service `name` at `addr` in readiness: `/readyz` is 503
    /// while it does not answer its health check SERVING. Only for a peer
    /// without which the service can do none of its work
    /// ([`crate::readiness`]).
    pub fn needs_peer(&self, name: &'static str, addr: &str) -> Result<(), StartError> {
        let peer = SpiffeId::service(self.spiffe_id.trust_domain(), name)?;
        let channel = steward_identity::connector::connect_lazy(
            self.svid.clone(),
            addr,
            steward_identity::ServerAuthorizer::Exact(peer),
        )
        .map_err(|e| StartError::Init(format!("peer {name} at {addr}: {e}")))?;
        self.spawn(self.needed.clone().follow(name, channel, self.shutdown()));
        Ok(())
    }

    /// Runs `refresh` before each scrape of `/metrics` answers (when
    /// metrics are on): how gauges read from the database stay current
    /// without a query while nobody scrapes.
    pub fn on_scrape<F, Fut>(&self, refresh: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if steward_telemetry::metrics::render().is_none() {
            return;
        }
        let refresh: crate::ops::Refresh = Arc::new(move || Box::pin(refresh()));
        self.refreshers.add(refresh);
    }

    /// Resolves once the service is shutting down (after in-flight calls
    /// have finished or the grace period ran out).
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    /// Whether the service is shutting down.
    pub(crate) fn is_stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// A lazily connecting mTLS channel to peer service `name` (`audit`,
    /// `inventory`, …) at `addr`, which must present
    /// `spiffe://<own trust domain>/service/<name>`.
    /// Every call on it is traced ([`steward_telemetry::Traced`]).
    pub fn peer_channel(
        &self,
        name: &str,
        addr: &str,
    ) -> Result<steward_telemetry::TracedChannel, StartError> {
        let peer = SpiffeId::service(self.spiffe_id.trust_domain(), name)?;
        steward_identity::connector::connect_lazy(
            self.svid.clone(),
            addr,
            steward_identity::ServerAuthorizer::Exact(peer),
        )
        .map(steward_telemetry::Traced::new)
        .map_err(|e| StartError::Init(format!("peer {name} at {addr}: {e}")))
    }

    /// Runs a background task; the service waits for it when it stops.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task);
        self.tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(handle);
    }
}

/// A bound, migrated service, ready to serve.
pub struct Application {
    spec: ServiceSpec,
    config: ServiceConfig,
    listener: TcpListener,
    local_addr: SocketAddr,
    source: Arc<SvidSource>,
    database: Database,
    allowlist: CallerAllowlist,
    bounds: Bounds,
    routes: Routes,
    stop_tasks: tokio::sync::watch::Sender<bool>,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    unhealthy: Unhealthy,
    conditions: Conditions,
    /// The plain-HTTP probes' listener, when `ops_addr` is set.
    ops: Option<TcpListener>,
    refreshers: crate::ops::Refreshers,
    needed: crate::readiness::NeededPeers,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("service", &self.spec.name)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Loads the SVID, opens and migrates the database, binds the listener
    /// and asks `routes` for the service's own gRPC services. On PostgreSQL
    /// the migrations and `routes` run under the database's start lock
    /// ([`steward_db::Starting`]), so one replica at a time does them.
    pub async fn build<F>(
        spec: ServiceSpec,
        config: ServiceConfig,
        routes: F,
    ) -> Result<Self, StartError>
    where
        F: AsyncFnOnce(ServiceContext) -> Result<Routes, StartError>,
    {
        let extra = config
            .tls
            .extra_trust_domains
            .iter()
            .map(|td| TrustDomain::parse(td))
            .collect::<Result<Vec<_>, _>>()?;
        let source = SvidSource::load(config.tls.svid.clone(), extra)?;
        let own = source.material().id.clone();
        let allowlist = build_allowlist(&spec, &config, own.trust_domain().clone())?;
        let bounds = Bounds::new(
            steward_proto::FILE_DESCRIPTOR_SET,
            spec.field_limits,
            spec.max_request_bytes,
        )
        .map_err(StartError::Init)?;

        let database = Database::connect(&config.database).await?;
        // Held until the routes are built: replicas starting together on
        // one database stamp, migrate and create their first keys in turn.
        let starting = database.start(&spec.migrations).await?;
        database.record_start(env!("CARGO_PKG_VERSION")).await?;

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| StartError::Bind(config.listen_addr, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Bind(config.listen_addr, e))?;
        let ops = match config.ops_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartError::Bind(addr, e))?,
            ),
            None => None,
        };
        let (stop_tasks, shutdown) = tokio::sync::watch::channel(false);
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let unhealthy = Unhealthy::default();
        let conditions = Conditions::default();
        let refreshers = crate::ops::Refreshers::default();
        let needed = crate::readiness::NeededPeers::default();
        let context = ServiceContext {
            database: database.clone(),
            spiffe_id: own.clone(),
            svid: source.clone(),
            peers: config.peers.clone(),
            shutdown,
            tasks: tasks.clone(),
            unhealthy: unhealthy.clone(),
            conditions: conditions.clone(),
            refreshers: refreshers.clone(),
            needed: needed.clone(),
        };
        let routes = routes(context).await?;
        starting.done().await?;
        tracing::info!(service = spec.name, spiffe_id = %own, %local_addr, backend = ?database.backend(), "service bound");
        Ok(Self {
            spec,
            config,
            listener,
            local_addr,
            source,
            database,
            allowlist,
            bounds,
            routes,
            stop_tasks,
            tasks,
            unhealthy,
            conditions,
            ops,
            refreshers,
            needed,
        })
    }

    /// The probes' address actually bound, when `ops_addr` is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (tests bind port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The SPIFFE ID this service presents.
    pub fn spiffe_id(&self) -> SpiffeId {
        self.source.material().id.clone()
    }

    /// The service's database pool.
    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Serves until `shutdown` resolves, then stops accepting, reports
    /// NOT_SERVING, and gives in-flight calls `shutdown_grace_secs` to end.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), StartError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            spec,
            config,
            listener,
            source,
            database,
            allowlist,
            bounds,
            routes,
            stop_tasks,
            tasks,
            unhealthy,
            conditions,
            ops,
            refreshers,
            needed,
            ..
        } = self;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let (ready, readiness) = tokio::sync::watch::channel(false);
        let health = Health {
            reporter: reporter.clone(),
            ready,
        };
        let initially = if held_back(&unhealthy).is_some() {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        health.set_all(&spec, initially).await;
        let probes = ops.map(|listener| {
            tokio::spawn(crate::ops::serve(
                listener,
                readiness,
                needed,
                refreshers,
                stop_tasks.subscribe(),
            ))
        });
        let watchdog = tokio::spawn(watch_database(
            database.clone(),
            health.clone(),
            spec,
            unhealthy,
        ));
        let reporting = tokio::spawn(watch_conditions(conditions, reporter.clone()));

        let routes = with_shared_services(routes, health_service, spec);

        let (incoming, accept_loop) = steward_identity::listener::incoming(listener, source);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let end_streams = crate::streams::EndStreamsLayer::new(
            crate::streams::streaming_paths(&[
                steward_proto::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
            ]),
            stop_rx.clone(),
        );
        let shutdown_health = health.clone();
        let signalled = async move {
            shutdown.await;
            shutdown_health
                .set_all(&spec, ServingStatus::NotServing)
                .await;
            let _ = stop_tx.send(true);
        };
        let server = tonic::transport::Server::builder()
            .layer(steward_telemetry::ServerLayer::new(caller_of))
            .layer(end_streams)
            .timeout(Duration::from_secs(config.request_timeout_secs.max(1)))
            .layer(AuthorizeCallerLayer::new(allowlist))
            .layer(BoundsLayer::new(bounds))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, signalled);

        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let mut stop_rx = stop_rx;
        let deadline = async move {
            let _ = stop_rx.wait_for(|stopped| *stopped).await;
            tokio::time::sleep(grace).await;
        };
        let result = tokio::select! {
            result = server => result.map_err(StartError::from),
            () = deadline => {
                tracing::warn!(grace_secs = grace.as_secs(), "calls still running after the shutdown grace period; closing them");
                Ok(())
            }
        };
        watchdog.abort();
        reporting.abort();
        let _ = stop_tasks.send(true);
        if let Some(probes) = probes {
            let _ = probes.await;
        }
        let handles: Vec<_> = std::mem::take(&mut *tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in handles {
            if tokio::time::timeout(Duration::from_secs(10), handle)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop within 10s");
            }
        }
        // The server (and with it the connection stream) is gone: wait for
        // the accept loop to close the socket, so the port is free on return.
        let _ = accept_loop.await;
        database.close().await;
        tracing::info!(service = spec.name, "stopped");
        result
    }
}

/// The verified caller's SPIFFE ID, for the call's span.
fn caller_of(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<steward_identity::PeerIdentity>()
        .map(|peer| peer.spiffe_id.to_string())
}

/// The service's own routes with what every service serves beside them:
/// health, WhoAmI and reflection (v1 and v1alpha).
fn with_shared_services(
    routes: Routes,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    spec: ServiceSpec,
) -> Routes {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1();
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(steward_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();

    let routes = routes
        .add_service(health_service)
        .add_service(IdentityServiceServer::new(WhoAmI { service: spec.name }));
    match (reflection_v1, reflection_v1alpha) {
        (Ok(v1), Ok(v1alpha)) => routes.add_service(v1).add_service(v1alpha),
        (Err(error), _) | (_, Err(error)) => {
            tracing::warn!(%error, "grpc reflection unavailable");
            routes
        }
    }
}

fn build_allowlist(
    spec: &ServiceSpec,
    config: &ServiceConfig,
    trust_domain: TrustDomain,
) -> Result<CallerAllowlist, AllowlistError> {
    let rules: BTreeMap<String, Vec<String>> = if config.authz.is_empty() {
        let td = trust_domain.name();
        spec.default_authz
            .iter()
            .map(|(rpc, callers)| {
                let callers = callers.iter().map(|c| c.replace("{td}", td)).collect();
                ((*rpc).to_owned(), callers)
            })
            .collect()
    } else {
        config.authz.clone()
    };
    CallerAllowlist::new(trust_domain, &rules)
}

/// The service's overall health, as the gRPC health service and the
/// plain-HTTP `/readyz` report it.
#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    ready: tokio::sync::watch::Sender<bool>,
}

impl Health {
    async fn set_all(&self, spec: &ServiceSpec, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in spec.grpc_services {
            self.reporter.set_service_status(*name, status).await;
        }
        self.ready.send_replace(status == ServingStatus::Serving);
    }
}

/// Reports each condition under its health name as it changes, logging
/// each change once.
async fn watch_conditions(conditions: Conditions, reporter: HealthReporter) {
    let mut reported: BTreeMap<&'static str, Option<String>> = BTreeMap::new();
    loop {
        for (name, reason) in conditions_now(&conditions) {
            let known = reported.get(name);
            if known == Some(&reason) {
                continue;
            }
            let status = match &reason {
                Some(reason) => {
                    tracing::warn!(health = name, %reason, "reporting NOT_SERVING");
                    ServingStatus::NotServing
                }
                None => {
                    if known.is_some() {
                        tracing::info!(health = name, "reporting SERVING again");
                    }
                    ServingStatus::Serving
                }
            };
            reporter.set_service_status(name, status).await;
            reported.insert(name, reason);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// How often readiness writes to the database, and how long one probe may
/// take: a storage failure shows within `PROBE_EVERY + PROBE_TIMEOUT` (2 s),
/// a recovery within `PROBE_EVERY` of the first probe that succeeds.
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Reports NOT_SERVING while the database does not take a write, or while
/// the service holds itself back ([`ServiceContext::mark_unhealthy`]).
async fn watch_database(
    database: Database,
    health: Health,
    spec: ServiceSpec,
    unhealthy: Unhealthy,
) {
    let mut healthy = held_back(&unhealthy).is_none();
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let probe = if let Some(reason) = held_back(&unhealthy) {
            Err(reason)
        } else {
            match tokio::time::timeout(PROBE_TIMEOUT, database.probe_write()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(steward_db::DbError::Sqlx(error))) => {
                    Err(match steward_db::fault_of(&error) {
                        steward_db::Fault::Full => format!("storage is full: {error}"),
                        steward_db::Fault::ReadOnly => format!("storage is read-only: {error}"),
                        steward_db::Fault::Unavailable => {
                            format!("storage does not take writes: {error}")
                        }
                    })
                }
                Ok(Err(error)) => Err(format!("storage does not take writes: {error}")),
                Err(_) => Err(format!(
                    "a write to storage took longer than {} ms",
                    PROBE_TIMEOUT.as_millis()
                )),
            }
        };
        let ok = probe.is_ok();
        if ok != healthy {
            healthy = ok;
            match probe {
                Ok(()) => tracing::info!("storage takes writes again; reporting SERVING"),
                Err(reason) => tracing::error!(%reason, "reporting NOT_SERVING"),
            }
            let status = if ok {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_all(&spec, status).await;
        }
    }
}
