//! `steward dev up` and `steward dev reset`: the development environment.
//!
//! Layout under the dev directory (default `.steward/dev/`):
//! - `pki/ca.crt`, `pki/ca.key` — the dev root CA (dev only)
//! - `pki/bundle.pem` — the trust bundle every process trusts
//! - `pki/<name>.crt`, `pki/<name>.key` — an X.509-SVID per service and the
//!   operator's (`spiffe://steward.local/operator/admin`); keys are 0600
//! - `config/<name>.toml` — the config each service is started with
//! - `data/<name>.db` — each service's SQLite database
//! - with `--postgres`: `config/<name>-1.toml` for each second replica, and
//!   `postgres/` when the server is a throwaway one (see `dev/postgres.rs`)

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use steward_server::balancer::Balancer;
use steward_server::shutdown::Signals;
use tokio::process::{Child, Command};

use crate::SERVICES;
use crate::client::ConnectionArgs;
use crate::login::DEV_ISSUER;

mod pki;
mod postgres;

use pki::{ensure_pki, write_file};

/// The dev trust domain.
pub const TRUST_DOMAIN: &str = "steward.local";
/// The dev audit log's origin and signing key name.
pub const LOG_ORIGIN: &str = "steward.local/audit";
/// The operator's SPIFFE ID in the dev PKI.
pub const OPERATOR_ID: &str = "spiffe://steward.local/operator/admin";
/// Client SVIDs the dev PKI also issues, for `make demo`: file stem and
/// SPIFFE ID path.
pub const DEMO_CLIENTS: &[(&str, &str)] = &[
    ("soar", "/automation/soar"),
    ("secret-scanner", "/automation/secret-scanner"),
    ("auditor", "/auditor/demo"),
];
/// What the invoking user's processes are, through the Workload API.
pub const DEV_WORKLOAD_ID: &str = "spiffe://steward.local/dev/workload";

pub fn reset(dir: &Path) -> anyhow::Result<ExitCode> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        println!("removed {} (pki, data and configs)", dir.display());
    } else {
        println!("nothing to remove: {} does not exist", dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Each service's plain-HTTP probes (`/healthz`, `/readyz`) listen this
/// far above its gRPC port.
pub const OPS_PORT_OFFSET: u16 = 10;

/// Where the services keep their data.
enum Storage {
    /// One process per service, each on its own SQLite file.
    Sqlite,
    /// [`postgres::REPLICAS`] per service on PostgreSQL: each service's
    /// database URL, where the server is (for printing), and the
    /// throwaway server if one was made.
    Postgres {
        urls: std::collections::BTreeMap<&'static str, String>,
        shown: String,
        local: Option<postgres::LocalServer>,
    },
}

impl Storage {
    fn replicas(&self) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::Postgres { .. } => postgres::REPLICAS,
        }
    }
}

/// One process to start: replica `replica` of the service at `index` in
/// [`SERVICES`], on its ports.
struct Replica {
    name: &'static str,
    index: usize,
    replica: usize,
    grpc: u16,
    ops: u16,
}

impl Replica {
    fn label(&self) -> String {
        if self.replica == 0 {
            self.name.to_owned()
        } else {
            format!("{}-{}", self.name, self.replica)
        }
    }
}

/// Every process of the environment, service by service.
fn layout(base_port: u16, replicas: usize) -> Vec<Replica> {
    let mut layout = Vec::new();
    for (index, (name, _)) in SERVICES.iter().enumerate() {
        for replica in 0..replicas {
            let (grpc, ops) = if replicas == 1 {
                let port = base_port + u16::try_from(index).unwrap_or(0);
                (port, port + OPS_PORT_OFFSET)
            } else {
                (
                    postgres::grpc_port(base_port, index, replica),
                    postgres::ops_port(base_port, index, replica),
                )
            };
            layout.push(Replica {
                name,
                index,
                replica,
                grpc,
                ops,
            });
        }
    }
    layout
}

pub async fn up(
    dir: &Path,
    base_port: u16,
    log_format: &str,
    postgres: Option<String>,
) -> anyhow::Result<ExitCode> {
    // Before anything else: a Ctrl-C at any point must stop the children.
    let mut signals = Signals::install().context("cannot listen for SIGINT/SIGTERM")?;
    let dir = absolute(dir)?;
    ensure_pki(&dir.join("pki"))?;
    let storage = match postgres {
        None => Storage::Sqlite,
        Some(url) => {
            let local = if url.is_empty() {
                let server = postgres::LocalServer::start(
                    &dir.join("postgres"),
                    postgres::local_port(base_port),
                )?;
                Some(server)
            } else {
                None
            };
            let admin = local.as_ref().map_or(url, postgres::LocalServer::admin_url);
            let storage = match postgres::databases(&admin).await {
                Ok(urls) => Ok(Storage::Postgres {
                    urls,
                    shown: postgres::shown(&admin),
                    local,
                }),
                Err(error) => {
                    if let Some(server) = &local {
                        server.stop();
                    }
                    Err(error)
                }
            };
            storage?
        }
    };
    let served = serve(&dir, base_port, log_format, &storage, &mut signals).await;
    if let Storage::Postgres {
        local: Some(server),
        ..
    } = &storage
    {
        server.stop();
    }
    served
}

/// Starts every process (behind balancers when replicated), waits until
/// they serve, and runs until a signal or until one exits.
async fn serve(
    dir: &Path,
    base_port: u16,
    log_format: &str,
    storage: &Storage,
    signals: &mut Signals,
) -> anyhow::Result<ExitCode> {
    let pki = dir.join("pki");
    let replicas = layout(base_port, storage.replicas());
    let configs = write_configs(dir, base_port, &replicas, storage, log_format)?;
    // Each service's usual port is its balancer's when it has replicas.
    let mut balancers = Vec::new();
    if storage.replicas() > 1 {
        for (index, (name, _)) in SERVICES.iter().enumerate() {
            let listen = SocketAddr::from(([127, 0, 0, 1], base_port + u16::try_from(index)?));
            let backends = replicas
                .iter()
                .filter(|r| r.index == index)
                .map(|r| SocketAddr::from(([127, 0, 0, 1], r.grpc)))
                .collect();
            let balancer = Balancer::bind(listen, backends)
                .await
                .with_context(|| format!("cannot listen on {listen} for {name}'s replicas"))?;
            balancers.push(balancer);
        }
    }
    let mut children = spawn_all(&replicas, &configs).await?;

    let conn = ConnectionArgs {
        cert: pki.join("operator.crt"),
        key: pki.join("operator.key"),
        bundle: pki.join("bundle.pem"),
        host: "127.0.0.1".to_owned(),
        base_port,
        addr: None,
        service_addrs: Vec::new(),
        configured_addrs: Vec::new(),
        token_file: None,
    };
    let healthy = tokio::select! {
        result = wait_serving(&conn, &replicas, &mut children) => result,
        () = signals.recv() => {
            stop_all(&mut children).await;
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Err(error) = healthy {
        stop_all(&mut children).await;
        return Err(error);
    }
    if let Err(error) = register_dev_workload(&conn).await {
        stop_all(&mut children).await;
        return Err(error.context("cannot register the dev workload"));
    }
    print_summary(dir, &conn, storage, &replicas)?;

    let replicated = storage.replicas() > 1;
    let exited = loop {
        let exited = tokio::select! {
            () = signals.recv() => break None,
            exited = first_exit(&mut children) => exited,
        };
        // A Ctrl-C at a terminal reaches the children too; if one stopped
        // because of it, our own signal is a moment behind.
        if tokio::time::timeout(Duration::from_millis(500), signals.recv())
            .await
            .is_ok()
        {
            break None;
        }
        let (label, _) = children.remove(exited);
        let service = service_of(&label);
        if !replicated || !children.iter().any(|(l, _)| service_of(l) == service) {
            break Some(label);
        }
        eprintln!("{label} exited; {service}'s other replica carries on");
    };
    stop_all(&mut children).await;
    drop(balancers);
    match exited {
        None => Ok(ExitCode::SUCCESS),
        Some(name) => bail!("{name} exited unexpectedly; stopped the others"),
    }
}

/// Starts one process per entry of `replicas`, with its config.
async fn spawn_all(
    replicas: &[Replica],
    configs: &[PathBuf],
) -> anyhow::Result<Vec<(String, Child)>> {
    let bin_dir = std::env::current_exe()
        .context("cannot locate the steward binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the steward binary has no parent directory")?;
    let mut children = Vec::new();
    for (replica, config) in replicas.iter().zip(configs) {
        let binary = bin_dir.join(format!("steward-{}", replica.name));
        if !binary.exists() {
            stop_all(&mut children).await;
            bail!(
                "{} not found: build the workspace first (`cargo build --bins`)",
                binary.display()
            );
        }
        let child = Command::new(&binary)
            .arg("--config")
            .arg(config)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        children.push((replica.label(), child));
    }
    Ok(children)
}

/// Every service SERVING through its usual port and, with replicas, every
/// replica ready on its probes.
async fn wait_serving(
    conn: &ConnectionArgs,
    replicas: &[Replica],
    children: &mut [(String, Child)],
) -> anyhow::Result<()> {
    wait_healthy(conn, children).await?;
    if replicas.iter().all(|r| r.replica == 0) {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for replica in replicas {
        while !ready(replica.ops).await {
            if Instant::now() > deadline {
                bail!("{} is not ready after 60s", replica.label());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Whether `/readyz` on `port` answers 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let mut answer = String::new();
    tcp.write_all(request).await.is_ok()
        && tcp.read_to_string(&mut answer).await.is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

fn print_summary(
    dir: &Path,
    conn: &ConnectionArgs,
    storage: &Storage,
    replicas: &[Replica],
) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    println!();
    for (name, _) in SERVICES {
        println!(
            "  {:<18} https://{}   spiffe://{TRUST_DOMAIN}/service/{name}",
            name,
            conn.address(name)?
        );
    }
    if let Storage::Postgres { shown, local, .. } = storage {
        for replica in replicas {
            println!(
                "  {:<20} 127.0.0.1:{} (probes http://127.0.0.1:{}/readyz)",
                replica.label(),
                replica.grpc,
                replica.ops
            );
        }
        let made = if local.is_some() {
            format!(", a throwaway server in {}", dir.join("postgres").display())
        } else {
            String::new()
        };
        println!(
            "  postgres          {shown}: databases steward_inventory, steward_authority, steward_credential_broker, steward_audit{made}"
        );
        println!(
            "  balancers         each service's port above spreads connections over its {} replicas",
            postgres::REPLICAS
        );
    } else {
        println!(
            "  probes            http://127.0.0.1:{}/readyz (and /healthz; +1 per service, in this order)",
            conn.base_port + OPS_PORT_OFFSET
        );
    }
    println!();
    println!("  trust bundle      {}", pki.join("bundle.pem").display());
    println!(
        "  operator svid     {} ({OPERATOR_ID})",
        pki.join("operator.crt").display()
    );
    println!("  operator key      {}", pki.join("operator.key").display());
    println!(
        "  audit log key     {} ({LOG_ORIGIN})",
        pki.join("audit-log.vkey").display()
    );
    println!("  humans            {DEV_ISSUER} (`steward login --dev --as <name>`)");
    println!(
        "  workload api      SPIFFE_ENDPOINT_SOCKET=unix:{} (uid {} is {DEV_WORKLOAD_ID})",
        dir.join("run").join("workload.sock").display(),
        effective_uid()?
    );
    if matches!(storage, Storage::Sqlite) {
        println!("  data              {}", dir.join("data").display());
    }
    println!();
    println!("ready");
    std::io::stdout().flush()?;
    Ok(())
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(dir))
    }
}

/// This process's effective uid, from `/proc/self/status`.
fn effective_uid() -> anyhow::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|uid| uid.parse().ok())
        .context("cannot read this process's uid from /proc/self/status")
}

/// Registers the invoking user's uid as `DEV_WORKLOAD_ID` (an identity in
/// inventory and a registration entry), unless it already is: any program
/// this user runs then gets SVIDs from the Workload API.
async fn register_dev_workload(conn: &ConnectionArgs) -> anyhow::Result<()> {
    use steward_proto::steward::inventory::v1 as inv;
    use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;

    let uid = effective_uid()?;
    let source = conn.source()?;
    let channel = crate::client::connect(
        &source,
        &conn.address("inventory")?,
        crate::client::service_id(
            &steward_identity::TrustDomain::parse(TRUST_DOMAIN)?,
            "inventory",
        )?,
    )
    .await?;
    let mut inventory = InventoryServiceClient::new(channel);
    let found = inventory
        .list_identities(inv::ListIdentitiesRequest {
            filter: Some(inv::IdentityFilter {
                source_system: "steward-dev".into(),
                text: "dev-workload".into(),
                ..Default::default()
            }),
            page_size: 10,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .identities
        .into_iter()
        .find(|i| i.external_id == "dev-workload");
    let identity = match found {
        Some(identity) => identity,
        None => {
            let owner = inv::Owner {
                kind: inv::OwnerKind::Person as i32,
                name: format!("uid-{uid}"),
                contact: "the developer running `steward dev up`".into(),
            };
            inventory
                .create_identity(inv::CreateIdentityRequest {
                    identity: Some(inv::IdentitySpec {
                        kind: inv::IdentityKind::WorkloadIdentity as i32,
                        display_name: "local development workload".into(),
                        source_system: "steward-dev".into(),
                        external_id: "dev-workload".into(),
                        environment: "development".into(),
                        business_service: "steward-dev".into(),
                        workload: "local programs".into(),
                        classification: inv::Classification::MachineToMachine as i32,
                        purpose: "lets programs on this machine get SVIDs from the Workload API"
                            .into(),
                        business_owner: Some(owner.clone()),
                        technical_owner: Some(owner),
                        spiffe_id: DEV_WORKLOAD_ID.into(),
                        ..Default::default()
                    }),
                    context: None,
                })
                .await?
                .into_inner()
                .identity
                .context("inventory returned no identity")?
        }
    };
    let selector = format!("uid:{uid}");
    let entries = inventory
        .list_registration_entries(inv::ListRegistrationEntriesRequest {
            identity_id: identity.id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await?
        .into_inner()
        .entries;
    let registered = entries.iter().any(|e| {
        e.spiffe_id == DEV_WORKLOAD_ID
            && e.selectors
                .iter()
                .any(|s| s.r#type == "unix" && s.value == selector)
    });
    if !registered {
        inventory
            .create_registration_entry(inv::CreateRegistrationEntryRequest {
                entry: Some(inv::RegistrationEntry {
                    spiffe_id: DEV_WORKLOAD_ID.into(),
                    parent_id: format!("spiffe://{TRUST_DOMAIN}/service/credential-broker"),
                    selectors: vec![inv::Selector {
                        r#type: "unix".into(),
                        value: selector,
                    }],
                    identity_id: identity.id,
                    ..Default::default()
                }),
                context: None,
            })
            .await?;
    }
    Ok(())
}

fn write_configs(
    dir: &Path,
    base_port: u16,
    replicas: &[Replica],
    storage: &Storage,
    log_format: &str,
) -> anyhow::Result<Vec<PathBuf>> {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    let pki = dir.join("pki");
    let data = dir.join("data");
    let mut paths = Vec::new();
    for replica in replicas {
        let name = replica.name;
        let (port, ops) = (replica.grpc, replica.ops);
        let database = match storage {
            Storage::Sqlite => format!(
                "url = {:?}\n",
                format!("sqlite://{}", data.join(format!("{name}.db")).display())
            ),
            // Eight processes share the server's connections.
            Storage::Postgres { urls, .. } => {
                format!("url = {:?}\nmax_connections = 8\n", urls[name])
            }
        };
        let text = format!(
            "# written by `steward dev up`; edits are overwritten on the next run\n\
             listen_addr = \"127.0.0.1:{port}\"\n\
             ops_addr = \"127.0.0.1:{ops}\"\n\n\
             [tls]\n\
             cert = {cert:?}\n\
             key = {key:?}\n\
             bundle = {bundle:?}\n\n\
             [database]\n\
             {database}\n\
             [telemetry]\n\
             format = {log_format:?}\n\
             metrics = true\n\n\
             [peers]\n\
             inventory = \"127.0.0.1:{p0}\"\n\
             authority = \"127.0.0.1:{p1}\"\n\
             credential_broker = \"127.0.0.1:{p2}\"\n\
             audit = \"127.0.0.1:{p3}\"\n",
            p0 = base_port,
            p1 = base_port + 1,
            p2 = base_port + 2,
            p3 = base_port + 3,
            cert = pki.join(format!("{name}.crt")),
            key = pki.join(format!("{name}.key")),
            bundle = pki.join("bundle.pem"),
        );
        let socket = match replica.replica {
            0 => "workload.sock".to_owned(),
            n => format!("workload-{n}.sock"),
        };
        let text = match name {
            "audit" => format!(
                "{text}\n[log]\norigin = {LOG_ORIGIN:?}\nsigning_key = {:?}\n",
                pki.join("audit-log.key")
            ),
            "credential-broker" => format!(
                "kek_file = {:?}\nworkload_api_socket = {:?}\n{text}",
                pki.join("broker.kek"),
                dir.join("run").join(socket)
            ),
            // The security group reviews break-glass on identities without
            // owners: the demo's security engineer, and you. You also
            // manage policies when logged in (policy-admins).
            "authority" => {
                let you = format!("human:{}", crate::login::default_subject());
                format!(
                    "{text}\n[oidc]\nissuer = {DEV_ISSUER:?}\naudience = \"steward\"\njwks_file = {:?}\n\n[groups]\nsecurity = [\"human:sam\", {you:?}]\npolicy-admins = [{you:?}]\n",
                    pki.join("oidc-jwks.json"),
                )
            }
            _ => text,
        };
        let path = config_dir.join(format!("{}.toml", replica.label()));
        write_file(&path, text.as_bytes(), 0o644)?;
        paths.push(path);
    }
    Ok(paths)
}

async fn wait_healthy(
    conn: &ConnectionArgs,
    children: &mut [(String, Child)],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<&str> = SERVICES.iter().map(|(name, _)| *name).collect();
    while !pending.is_empty() {
        for (name, child) in children.iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited during start-up ({status}); see its log above");
            }
        }
        let mut still = Vec::new();
        for name in pending {
            let serving = crate::health::check(conn, name)
                .await
                .is_ok_and(|h| h.status == "SERVING");
            if !serving {
                still.push(name);
            }
        }
        pending = still;
        if Instant::now() > deadline {
            bail!("services not healthy after 60s: {}", pending.join(", "));
        }
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The position of the first child to exit.
async fn first_exit(children: &mut [(String, Child)]) -> usize {
    loop {
        for (n, (_, child)) in children.iter_mut().enumerate() {
            if let Ok(Some(_)) = child.try_wait() {
                return n;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service a child's label names (`credential-broker-1`:
/// `credential-broker`).
fn service_of(label: &str) -> &str {
    match label.rsplit_once('-') {
        Some((service, n)) if n.parse::<usize>().is_ok() => service,
        _ => label,
    }
}

/// SIGTERM to every child, then SIGKILL to any still running after 15 s.
async fn stop_all(children: &mut [(String, Child)]) {
    for (_, child) in children.iter() {
        if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for (name, child) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{name} did not stop within 15s; killing it");
                let _ = child.kill().await;
            }
        }
    }
}
