//! Several replicas of every service as real processes on PostgreSQL,
//! each service behind a TCP balancer in the test process, as a
//! Kubernetes Service or HAProxy in TCP mode would put them: the failover
//! test kills replicas with SIGKILL, and the replicas benchmark measures
//! what replication costs.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_identity::{ServerAuthorizer, SvidSource};
use steward_server::balancer::Balancer;
use tokio::net::TcpStream;
use tonic::transport::Channel;

use crate::{
    TestBackend, TestPki, TestStack, binary_dir, reserve_port, spiffe_id, test_authority_config,
    test_broker_config, test_log_config,
};

/// The services, in the order they are started.
pub const SERVICES: [&str; 4] = ["audit", "inventory", "authority", "credential-broker"];

/// One replica: a child process of the service's binary.
pub struct Replica {
    pub grpc: SocketAddr,
    pub ops: SocketAddr,
    child: Option<tokio::process::Child>,
}

impl Replica {
    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }
}

/// The status line's code and the body of `GET path` on `addr`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    Some((status, answer.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// The value of an unlabelled gauge in a Prometheus text page, or of one
/// whose labels are exactly `labels` (`role="outbox"`).
pub fn gauge(page: &str, name: &str, labels: &str) -> Option<f64> {
    let wanted = if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{labels}}}")
    };
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == wanted).then(|| value.parse().ok()).flatten()
        })
}

/// Every service as `replicas` processes on its own PostgreSQL database,
/// each service behind its [`Balancer`]; the services reach each other
/// through the balancers too.
pub struct Cluster {
    pub pki: TestPki,
    pub balancers: BTreeMap<&'static str, Balancer>,
    pub replicas: BTreeMap<&'static str, Vec<Replica>>,
    pub databases: BTreeMap<&'static str, steward_db::DatabaseConfig>,
    pub operator: Arc<SvidSource>,
    logs: PathBuf,
}

impl Cluster {
    /// Starts `replicas` of every service on `backend` (PostgreSQL) and
    /// waits until each is ready.
    pub async fn start(backend: &TestBackend, replicas: usize) -> Self {
        Self::start_with(backend, |_| replicas).await
    }

    /// Starts `replicas(name)` of each service.
    pub async fn start_with(backend: &TestBackend, replicas: impl Fn(&str) -> usize) -> Self {
        let pki = TestPki::new();
        let logs = pki.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let ports: BTreeMap<&str, Vec<(SocketAddr, SocketAddr)>> = SERVICES
            .iter()
            .map(|name| {
                let ports = (0..replicas(name))
                    .map(|_| (reserve_port(), reserve_port()))
                    .collect();
                (*name, ports)
            })
            .collect();
        let mut balancers = BTreeMap::new();
        for name in SERVICES {
            let backends = ports[name].iter().map(|(grpc, _)| *grpc).collect();
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            balancers.insert(name, Balancer::bind(loopback, backends).await.unwrap());
        }
        let peers = steward_server::Peers {
            inventory: balancers["inventory"].addr.to_string(),
            authority: balancers["authority"].addr.to_string(),
            credential_broker: balancers["credential-broker"].addr.to_string(),
            audit: balancers["audit"].addr.to_string(),
        };
        let mut cluster = Self {
            operator: pki.client("operator", &spiffe_id("/operator/admin").to_string()),
            pki,
            balancers,
            replicas: BTreeMap::new(),
            databases: BTreeMap::new(),
            logs,
        };
        for name in SERVICES {
            let mut service = TestStack::config_for(&cluster.pki, backend, name).await;
            service.peers = peers.clone();
            service.shutdown_grace_secs = 2;
            service.telemetry.metrics = true;
            cluster.databases.insert(name, service.database.clone());
            let mut started = Vec::new();
            for (n, (grpc, ops)) in ports[name].iter().enumerate() {
                let mut service = service.clone();
                service.listen_addr = *grpc;
                service.ops_addr = Some(*ops);
                let text = config_text(name, service, cluster.pki.path());
                let file = cluster.pki.path().join(format!("{name}-{n}.toml"));
                std::fs::write(&file, text).unwrap();
                let child = cluster.spawn(name, n, &file);
                started.push(Replica {
                    grpc: *grpc,
                    ops: *ops,
                    child: Some(child),
                });
            }
            cluster.replicas.insert(name, started);
        }
        for name in SERVICES {
            for n in 0..replicas(name) {
                cluster.wait_ready(name, n).await;
            }
        }
        cluster
    }

    fn spawn(&self, name: &str, n: usize, config: &std::path::Path) -> tokio::process::Child {
        let log = std::fs::File::create(self.logs.join(format!("{name}-{n}.log"))).unwrap();
        let mut command =
            tokio::process::Command::new(binary_dir().join(format!("steward-{name}")));
        command
            .arg("--config")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        // Nothing from the test's own environment configures a replica.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("STEWARD_") {
                command.env_remove(key);
            }
        }
        command.env("STEWARD_TELEMETRY__FORMAT", "json");
        command
            .spawn()
            .unwrap_or_else(|e| panic!("steward-{name}: {e}: build the binaries first"))
    }

    /// Waits (up to 60 s) until replica `n` of `name` answers `/readyz`.
    pub async fn wait_ready(&self, name: &str, n: usize) {
        let ops = self.replicas[name][n].ops;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(ops, "/readyz").await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} replica {n} is not ready: see {}",
                self.logs.join(format!("{name}-{n}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What replica `n` of `name` says on `/metrics`.
    pub async fn metrics(&self, name: &str, n: usize) -> String {
        http_get(self.replicas[name][n].ops, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The live replica of `name` whose gauge `steward_role_held{role}`
    /// (or, for `audit.sequencer`, `steward_audit_sequencer`) is 1.
    pub async fn holder(&self, name: &str, role: &str) -> Option<usize> {
        for (n, replica) in self.replicas[name].iter().enumerate() {
            if !replica.alive() {
                continue;
            }
            let page = self.metrics(name, n).await;
            let held = if role == "audit.sequencer" {
                gauge(&page, "steward_audit_sequencer", "")
            } else {
                gauge(&page, "steward_role_held", &format!("role=\"{role}\""))
            };
            if held == Some(1.0) {
                return Some(n);
            }
        }
        None
    }

    /// A channel to `name` through its balancer, as `source`.
    pub async fn channel(&self, name: &str, source: &Arc<SvidSource>) -> Channel {
        steward_identity::connector::connect(
            source.clone(),
            &self.balancers[name].addr.to_string(),
            ServerAuthorizer::Exact(spiffe_id(&format!("/service/{name}"))),
        )
        .await
        .unwrap()
    }

    /// A client certificate for `spiffe://steward.test/<path>`.
    pub fn caller(&self, path: &str) -> Arc<SvidSource> {
        self.pki
            .client(&path.replace('/', "-"), &spiffe_id(path).to_string())
    }
}

/// The replica's config file: the service's own config type, as TOML.
fn config_text(
    name: &str,
    service: steward_server::ServiceConfig,
    pki: &std::path::Path,
) -> String {
    let text = match name {
        "authority" => toml::to_string(&test_authority_config(service)),
        "credential-broker" => {
            let mut broker = test_broker_config(service);
            // The Workload API serves processes on its own host; these
            // replicas share one, so none serves it.
            broker.workload_api_socket = None;
            toml::to_string(&broker)
        }
        "audit" => toml::to_string(&steward_audit::AuditConfig {
            service,
            log: test_log_config(pki),
        }),
        _ => toml::to_string(&service),
    };
    text.unwrap_or_else(|e| panic!("{name}'s config as TOML: {e}"))
}
