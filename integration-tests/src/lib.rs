//! Test support for Steward's end-to-end tests and benchmarks: a CA per
//! test, SVID files in a temporary directory, a fresh database per service
//! (SQLite, or PostgreSQL when `STEWARD_TEST_DATABASE_URL` is set), and the
//! real services bound to `127.0.0.1:0` over real mTLS.

pub mod broker;
mod cli;
pub mod cluster;
pub mod dev;
pub mod echo;
pub mod evidence;
pub mod faults;
mod humans;
pub mod imports;
pub mod inventory;
pub mod otlp;
pub mod protos;
pub mod workload;

pub use cli::{binary_dir, cli_json, exits, python, run_steward, workspace_root};
use humans::test_issuer_key;
pub use humans::{TEST_ISSUER, bearer, human_token};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use steward_db::DatabaseConfig;
use steward_identity::{ServerAuthorizer, SpiffeId, SvidPaths, SvidSource};
use steward_pki::{CertificateAuthority, IssuedLeaf, LeafSpec};
use steward_server::{Application, ServiceConfig};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The trust domain every test PKI uses.
pub const TRUST_DOMAIN: &str = "steward.test";

/// Environment variable naming a PostgreSQL server for the suite.
pub const DATABASE_URL_ENV: &str = "STEWARD_TEST_DATABASE_URL";

/// The four services, by name.
pub const SERVICE_NAMES: &[&str] = &["inventory", "authority", "credential-broker", "audit"];

/// `spiffe://steward.test/<path>`.
pub fn spiffe_id(path: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}{path}")).unwrap()
}

/// A per-test CA and a directory to hold SVID files and databases.
pub struct TestPki {
    pub dir: TempDir,
    pub ca: CertificateAuthority,
    pub bundle: PathBuf,
    /// The trust domain its certificates are in.
    pub trust_domain: String,
}

impl TestPki {
    pub fn new() -> Self {
        Self::new_in(TRUST_DOMAIN)
    }

    /// A dev PKI for `trust_domain` (a second trust domain to federate
    /// with, say).
    pub fn new_in(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(trust_domain, time::Duration::days(1)).unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, ca.cert_pem()).unwrap();
        let pkcs8 = steward_evidence::NoteSigner::generate_pkcs8().unwrap();
        std::fs::write(
            dir.path().join("audit-log.key"),
            steward_evidence::note::private_key_pem(&pkcs8),
        )
        .unwrap();
        Self {
            dir,
            ca,
            bundle,
            trust_domain: trust_domain.to_owned(),
        }
    }

    /// `spiffe://<this trust domain><path>`.
    pub fn spiffe_id(&self, path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{}{path}", self.trust_domain)).unwrap()
    }

    /// The audit log's signing key for this test.
    pub fn log_key(&self) -> PathBuf {
        self.path().join("audit-log.key")
    }

    /// Writes the audit log's verifier key (`<name>+<hash>+<key>`), derived
    /// from the signing key rather than asked of the server, and returns
    /// its path.
    pub fn log_verifier_key(&self) -> PathBuf {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(self.log_key()).unwrap();
        let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem).unwrap();
        let signer =
            steward_evidence::NoteSigner::from_pkcs8("steward.test/audit", der.secret_der())
                .unwrap();
        let vkey = self.path().join("audit-log.vkey");
        std::fs::write(&vkey, signer.verifier_key()).unwrap();
        vkey
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The `steward` CLI's connection flags: the SVID `<cert>.crt` /
    /// `<cert>.key` written here, the bundle, and `addr`.
    pub fn cli_args(&self, cert: &str, addr: &str) -> Vec<String> {
        let file = |name: String| self.path().join(name).display().to_string();
        vec![
            "--cert".to_owned(),
            file(format!("{cert}.crt")),
            "--key".to_owned(),
            file(format!("{cert}.key")),
            "--bundle".to_owned(),
            file("bundle.pem".to_owned()),
            "--addr".to_owned(),
            addr.to_owned(),
        ]
    }

    /// Issues a compliant SVID for `id` (with `localhost`/`127.0.0.1` SANs)
    /// and writes `<file>.crt` / `<file>.key`.
    pub fn svid(&self, file: &str, id: &str) -> SvidPaths {
        let spec = LeafSpec::svid(id, time::Duration::hours(1))
            .with_hosts(&["localhost".to_owned(), "127.0.0.1".to_owned()]);
        self.write_leaf(file, &self.ca.issue(&spec).unwrap())
    }

    /// Writes an issued leaf as `<file>.crt` / `<file>.key`, key first, each
    /// through a rename so a reloading server never sees half a file.
    pub fn write_leaf(&self, file: &str, leaf: &IssuedLeaf) -> SvidPaths {
        let cert = self.path().join(format!("{file}.crt"));
        let key = self.path().join(format!("{file}.key"));
        write_atomic(&key, leaf.key_pem.as_bytes());
        write_atomic(&cert, leaf.cert_pem.as_bytes());
        SvidPaths {
            cert,
            key,
            bundle: self.bundle.clone(),
        }
    }

    /// An SVID source for a client with SPIFFE ID `id`.
    pub fn client(&self, file: &str, id: &str) -> Arc<SvidSource> {
        SvidSource::load(self.svid(file, id), Vec::new()).unwrap()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn write_atomic(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Which database engine a test runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestBackend {
    Sqlite,
    /// The admin URL of a PostgreSQL server; each test gets its own database.
    Postgres(String),
}

impl TestBackend {
    /// PostgreSQL when `STEWARD_TEST_DATABASE_URL` is set, SQLite otherwise.
    pub fn from_env() -> Self {
        match std::env::var(DATABASE_URL_ENV) {
            Ok(url) if !url.is_empty() => Self::Postgres(url),
            _ => Self::Sqlite,
        }
    }

    /// A fresh, empty database for one service of one test.
    pub async fn fresh_database(&self, dir: &Path, name: &str) -> DatabaseConfig {
        match self {
            Self::Sqlite => DatabaseConfig::sqlite(&dir.join(format!("{name}.db"))),
            Self::Postgres(admin_url) => {
                let database = format!("steward_test_{}", uuid::Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
                sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {database}"
                )))
                .execute(&admin)
                .await
                .unwrap();
                admin.close().await;
                DatabaseConfig {
                    url: replace_database(admin_url, &database),
                    max_connections: 8,
                }
            }
        }
    }
}

/// `postgres://u@h:p/olddb?x` → `postgres://u@h:p/<database>?x`.
pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{database}{query}")
}

/// The config a test service runs with: port 0, the given SVID and database.
pub fn service_config(name: &str, svid: SvidPaths, database: DatabaseConfig) -> ServiceConfig {
    let mut config = ServiceConfig::defaults(name, 0);
    config.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.tls.svid = svid;
    config.database = database;
    config.shutdown_grace_secs = 2;
    config.ops_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    config
}

/// A running in-process service; stops when dropped.
pub struct RunningService {
    pub name: String,
    pub addr: SocketAddr,
    pub spiffe_id: SpiffeId,
    /// The service's own database handle (the same pools it serves from),
    /// for tests that fault its connections.
    pub database: steward_db::Database,
    /// Where its plain-HTTP probes (`/healthz`, `/readyz`) answer.
    pub ops_addr: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), steward_server::StartError>>>,
}

impl RunningService {
    /// Serves a built application on the current runtime.
    pub fn start(name: &str, app: Application) -> Self {
        let addr = app.local_addr();
        let spiffe_id = app.spiffe_id();
        let database = app.database().clone();
        let ops_addr = app.ops_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Self {
            name: name.to_owned(),
            addr,
            spiffe_id,
            database,
            ops_addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The status code and body of a plain `GET path` to its probes'
    /// listener, as a probe without a client certificate sends it.
    pub async fn probe(&self, path: &str) -> (u16, String) {
        let addr = self.ops_addr.expect("the service has no ops_addr");
        cluster::http_get(addr, path)
            .await
            .unwrap_or_else(|| panic!("no HTTP answer from {addr}{path}"))
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// A channel presenting `client`'s SVID and expecting this service's ID.
    pub async fn channel(&self, client: &Arc<SvidSource>) -> Channel {
        steward_identity::connector::connect(
            client.clone(),
            &self.address(),
            ServerAuthorizer::Exact(self.spiffe_id.clone()),
        )
        .await
        .unwrap()
    }

    /// Stops the service and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// All four services on one test PKI, each with its own fresh database.
pub struct TestStack {
    pub pki: TestPki,
    pub backend: TestBackend,
    pub services: BTreeMap<String, RunningService>,
    pub configs: BTreeMap<String, ServiceConfig>,
    /// The operator's SVID source (`spiffe://steward.test/operator/admin`).
    pub operator: Arc<SvidSource>,
}

impl TestStack {
    /// An OIDC token for `subject` from the test issuer authority trusts.
    pub fn token(&self, subject: &str) -> String {
        human_token(self.pki.path(), subject)
    }

    /// Starts inventory, authority, credential-broker and audit.
    pub async fn start() -> Self {
        Self::start_with_log(|_| {}).await
    }

    /// Starts audit alone: its log then holds only what the test appends
    /// (the other services record evidence of their own start-up, such as
    /// authority installing its default policies).
    pub async fn audit_only() -> Self {
        Self::start_services(&["audit"], |_| {}).await
    }

    /// Audit alone, with its log's settings adjusted.
    pub async fn audit_only_with_log(adjust: impl FnOnce(&mut steward_audit::LogConfig)) -> Self {
        Self::start_services(&["audit"], adjust).await
    }

    /// Starts the four services with the audit log's settings adjusted.
    pub async fn start_with_log(adjust: impl FnOnce(&mut steward_audit::LogConfig)) -> Self {
        Self::start_services(
            &["audit", "inventory", "authority", "credential-broker"],
            adjust,
        )
        .await
    }

    /// Starts the four services on `backend`, whatever the environment
    /// says (a test's own PostgreSQL server, say).
    pub async fn start_on(backend: TestBackend) -> Self {
        let names = ["audit", "inventory", "authority", "credential-broker"];
        Self::start_services_on(&names, TestPki::new(), backend, |_| {}).await
    }

    /// Starts the four services in `trust_domain` (a second trust domain
    /// beside the usual one, to federate with).
    pub async fn start_in(trust_domain: &str) -> Self {
        let names = ["audit", "inventory", "authority", "credential-broker"];
        let pki = TestPki::new_in(trust_domain);
        Self::start_services_on(&names, pki, TestBackend::from_env(), |_| {}).await
    }

    /// Starts `names` on the environment's backend.
    async fn start_services(
        names: &[&str],
        adjust: impl FnOnce(&mut steward_audit::LogConfig),
    ) -> Self {
        Self::start_services_on(names, TestPki::new(), TestBackend::from_env(), adjust).await
    }

    /// Starts `names` (audit first, so the others know where it is).
    async fn start_services_on(
        names: &[&str],
        pki: TestPki,
        backend: TestBackend,
        adjust: impl FnOnce(&mut steward_audit::LogConfig),
    ) -> Self {
        let mut log = test_log_config(pki.path());
        adjust(&mut log);
        let mut services = BTreeMap::new();
        let mut configs = BTreeMap::new();
        // Audit first, so the others' outbox forwarders know where it is.
        let mut peers = steward_server::Peers::default();
        // Authority tells the broker of closed incidents, and starts first:
        // the broker's port is reserved up front.
        let broker_addr = names.contains(&"credential-broker").then(reserve_port);
        if let Some(addr) = broker_addr {
            peers.credential_broker = addr.to_string();
        }
        // Inventory asks authority about lifecycle changes, and starts
        // before it: authority's port is reserved up front too.
        let authority_addr = names.contains(&"authority").then(reserve_port);
        if let Some(addr) = authority_addr {
            peers.authority = addr.to_string();
        }
        for name in names.iter().copied() {
            let mut config = Self::config_for(&pki, &backend, name).await;
            config.peers = peers.clone();
            match (name, broker_addr, authority_addr) {
                ("credential-broker", Some(addr), _) | ("authority", _, Some(addr)) => {
                    config.listen_addr = addr;
                }
                _ => {}
            }
            let app = if name == "audit" {
                steward_audit::build(steward_audit::AuditConfig {
                    service: config.clone(),
                    log: log.clone(),
                })
                .await
                .unwrap()
            } else {
                build_service(name, config.clone()).await.unwrap()
            };
            let service = RunningService::start(name, app);
            let address = service.address();
            match name {
                "audit" => peers.audit = address,
                "inventory" => peers.inventory = address,
                "authority" => peers.authority = address,
                _ => peers.credential_broker = address,
            }
            services.insert(name.to_owned(), service);
            configs.insert(name.to_owned(), config);
        }
        let operator = pki.client("operator", &pki.spiffe_id("/operator/admin").to_string());
        Self {
            pki,
            backend,
            services,
            configs,
            operator,
        }
    }

    /// Restarts authority at its address with post-action reviews due
    /// after `seconds`.
    pub async fn restart_authority_with_review_time(&mut self, seconds: u64) {
        self.restart_authority(|settings| settings.break_glass_review_seconds = seconds)
            .await;
    }

    /// Restarts authority at its address with its settings adjusted (an
    /// inventory of a test's own to read facts from, say).
    pub async fn restart_authority(
        &mut self,
        adjust: impl FnOnce(&mut steward_authority::AuthorityConfig),
    ) {
        let addr = self.service("authority").addr;
        self.stop("authority").await;
        let mut config = self.configs["authority"].clone();
        config.listen_addr = addr;
        let mut settings = test_authority_config(config);
        adjust(&mut settings);
        let app = steward_authority::build_with(settings).await.unwrap();
        self.services
            .insert("authority".into(), RunningService::start("authority", app));
    }

    /// Stops a service and waits until it has finished.
    pub async fn stop(&mut self, name: &str) {
        if let Some(service) = self.services.remove(name) {
            service.shutdown().await;
        }
    }

    /// Starts a stopped service again on its database (a fresh port, but
    /// the broker keeps its reserved one); returns its address.
    pub async fn restart_stopped(&mut self, name: &str) -> String {
        let config = self.configs[name].clone();
        let app = build_service(name, config).await.unwrap();
        let service = RunningService::start(name, app);
        let address = service.address();
        self.services.insert(name.to_owned(), service);
        address
    }

    /// Starts a stopped service again on its database at `addr`.
    pub async fn restart_on(&mut self, name: &str, addr: SocketAddr) {
        let mut config = self.configs[name].clone();
        config.listen_addr = addr;
        let app = build_service(name, config).await.unwrap();
        self.services
            .insert(name.to_owned(), RunningService::start(name, app));
    }

    /// Stops a service and starts it again on the same port and database;
    /// returns the config it runs with.
    pub async fn restart(&mut self, name: &str) -> ServiceConfig {
        let addr = self.services[name].addr;
        self.stop(name).await;
        let mut config = self.configs[name].clone();
        config.listen_addr = addr;
        let app = build_service(name, config.clone()).await.unwrap();
        self.services
            .insert(name.to_owned(), RunningService::start(name, app));
        config
    }

    /// A fresh config for service `name`: its SVID and its own database.
    pub async fn config_for(pki: &TestPki, backend: &TestBackend, name: &str) -> ServiceConfig {
        let svid = pki.svid(
            name,
            &pki.spiffe_id(&format!("/service/{name}")).to_string(),
        );
        let database = backend.fresh_database(pki.path(), name).await;
        service_config(name, svid, database)
    }

    /// Stops the broker and starts it again on its port and database with
    /// its configuration adjusted (a credential backend, say).
    pub async fn restart_broker_with(
        &mut self,
        adjust: impl FnOnce(&mut steward_credential_broker::BrokerConfig),
    ) {
        self.stop("credential-broker").await;
        let mut config = test_broker_config(self.configs["credential-broker"].clone());
        adjust(&mut config);
        let app = steward_credential_broker::build_with(config).await.unwrap();
        self.services.insert(
            "credential-broker".to_owned(),
            RunningService::start("credential-broker", app),
        );
    }

    pub fn service(&self, name: &str) -> &RunningService {
        &self.services[name]
    }
}

impl Drop for TestStack {
    /// Drops the test's PostgreSQL databases, so a full run does not fill
    /// the disk with hundreds of them.
    fn drop(&mut self) {
        let TestBackend::Postgres(admin_url) = &self.backend else {
            return;
        };
        let databases: Vec<String> = self
            .configs
            .values()
            .filter_map(|config| database_name(&config.database.url))
            .collect();
        drop_databases(admin_url.clone(), databases);
    }
}

/// The database a `postgres://…/<name>?…` URL names.
fn database_name(url: &str) -> Option<String> {
    let base = url.split('?').next()?;
    let name = base.rsplit('/').next()?;
    name.starts_with("steward_test_").then(|| name.to_owned())
}

/// `DROP DATABASE … WITH (FORCE)` on a thread of its own (this may run
/// inside a test's runtime, which cannot block on a future).
fn drop_databases(admin_url: String, databases: Vec<String>) {
    if databases.is_empty() {
        return;
    }
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let admin = sqlx::PgPool::connect(&admin_url).await.ok()?;
            for database in databases {
                // Best effort: a database left behind only costs disk.
                let _ = sqlx::query::<sqlx::Postgres>(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                )))
                .execute(&admin)
                .await;
            }
            admin.close().await;
            Some(())
        })
    });
    let _ = dropped.join();
}

/// Builds one of the four services by name.
pub async fn build_service(
    name: &str,
    config: ServiceConfig,
) -> Result<Application, steward_server::StartError> {
    match name {
        "inventory" => steward_inventory::build(config).await,
        "authority" => steward_authority::build_with(test_authority_config(config)).await,
        "credential-broker" => {
            steward_credential_broker::build_with(test_broker_config(config)).await
        }
        "audit" => {
            // The signing key sits beside the service's SVID.
            let log = test_log_config(config.tls.svid.cert.parent().unwrap());
            steward_audit::build(steward_audit::AuditConfig {
                service: config,
                log,
            })
            .await
        }
        other => panic!("unknown service {other}"),
    }
}

/// The broker as tests run it: its key-encryption key in a file beside its
/// SVID (made on first use, so a restart opens the same CA), and the
/// Workload API at `workload.sock` beside it.
pub fn test_broker_config(service: ServiceConfig) -> steward_credential_broker::BrokerConfig {
    let kek_file = service.tls.svid.cert.parent().unwrap().join("broker.kek");
    if !kek_file.exists() {
        let (_, hex) = steward_credential_broker::keys::LocalKek::generate().unwrap();
        write_atomic(&kek_file, hex.as_bytes());
    }
    let socket = service
        .tls
        .svid
        .cert
        .parent()
        .unwrap()
        .join("workload.sock");
    let mut config = steward_credential_broker::BrokerConfig::new(service);
    config.kek_file = Some(kek_file);
    config.workload_api_socket = Some(socket);
    // Tests watch SVIDs of a few seconds rotate.
    config.ttl.svid_min = 1;
    config
}

/// Authority as tests run it: humans' tokens from the test issuer; groups
/// `security` (the humans `sam` and `sue`), `team-billing` (`bea`, the
/// team that is the sample identities' business owner) and
/// `policy-admins` (`pat`).
pub fn test_authority_config(service: ServiceConfig) -> steward_authority::AuthorityConfig {
    let pki_dir = service.tls.svid.cert.parent().unwrap().to_owned();
    let (_, jwks_file) = test_issuer_key(&pki_dir);
    let mut config = steward_authority::AuthorityConfig::new(service);
    config.oidc = Some(steward_authority::config::OidcConfig {
        issuer: TEST_ISSUER.to_owned(),
        audience: "steward".to_owned(),
        jwks_file,
    });
    config.groups.insert(
        "security".to_owned(),
        vec!["human:sam".to_owned(), "human:sue".to_owned()],
    );
    config
        .groups
        .insert("team-billing".to_owned(), vec!["human:bea".to_owned()]);
    config
        .groups
        .insert("policy-admins".to_owned(), vec!["human:pat".to_owned()]);
    config
}

/// The audit log settings tests use: the per-test signing key, fast checkpoints.
pub fn test_log_config(pki_dir: &Path) -> steward_audit::LogConfig {
    steward_audit::LogConfig {
        signing_key: pki_dir.join("audit-log.key"),
        checkpoint_interval_ms: 200,
        ..steward_audit::LogConfig::default()
    }
}

/// A free port for a service that must be told of before it binds. It is
/// taken from below the kernel's ephemeral range, where every other test
/// listener gets its port 0, so no parallel test is handed it between
/// this probe and the service's bind.
pub fn reserve_port() -> SocketAddr {
    loop {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
        if let Ok(probe) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return probe.local_addr().unwrap();
        }
    }
}

/// Runs one statement directly against a service's database, as an
/// attacker or a careless operator with database access would.
pub async fn execute_sql(database: &DatabaseConfig, sql: &str) {
    let db = steward_db::Database::connect(database).await.unwrap();
    steward_db::on_backend!(&db, pool, Db => {
        sqlx::query::<Db>(sqlx::AssertSqlSafe(sql.to_owned())).execute(pool).await.unwrap();
    });
    db.close().await;
}
