//! `steward dev up` and `steward dev reset`: the development environment.
//!
//! Layout under the dev directory (default `.steward/dev/`):
//! - `pki/ca.crt`, `pki/ca.key` — the dev root CA (dev only)
//! - `pki/bundle.pem` — the trust bundle every process trusts
//! - `pki/<name>.crt`, `pki/<name>.key` — an X.509-SVID per service and the
//!   operator's (`spiffe://steward.local/operator/admin`); keys are 0600
//! - `config/<name>.toml` — the config each service is started with
//! - `data/<name>.db` — each service's SQLite database

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rustls_pki_types::pem::PemObject;
use steward_evidence::NoteSigner;
use steward_evidence::note::private_key_pem;
use steward_pki::{CertificateAuthority, LeafSpec};
use steward_server::shutdown::Signals;
use tokio::process::{Child, Command};

use crate::SERVICES;
use crate::client::ConnectionArgs;
use crate::login::{DEV_ISSUER, dev_issuer_key};

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

const CA_VALIDITY_DAYS: i64 = 365;
const SVID_VALIDITY_DAYS: i64 = 30;
/// Leaves closer than this to expiry are re-issued by `dev up`.
const RENEW_BEFORE: time::Duration = time::Duration::days(2);
/// Host names standard gRPC clients use to reach the services.
const SERVER_HOSTS: &[&str] = &["localhost", "127.0.0.1"];

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

pub async fn up(dir: &Path, base_port: u16, log_format: &str) -> anyhow::Result<ExitCode> {
    // Before anything else: a Ctrl-C at any point must stop the children.
    let mut signals = Signals::install().context("cannot listen for SIGINT/SIGTERM")?;
    let dir = absolute(dir)?;
    let pki = dir.join("pki");
    ensure_pki(&pki)?;
    let configs = write_configs(&dir, base_port, log_format)?;

    let bin_dir = std::env::current_exe()
        .context("cannot locate the steward binary")?
        .parent()
        .map(Path::to_path_buf)
        .context("the steward binary has no parent directory")?;
    let mut children = Vec::new();
    for ((name, _), config) in SERVICES.iter().zip(&configs) {
        let binary = bin_dir.join(format!("steward-{name}"));
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
        children.push((*name, child));
    }

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
        result = wait_healthy(&conn, &mut children) => result,
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

    println!();
    for (name, _) in SERVICES {
        println!(
            "  {:<18} https://{}   spiffe://{TRUST_DOMAIN}/service/{name}",
            name,
            conn.address(name)?
        );
    }
    println!(
        "  probes            http://127.0.0.1:{}/readyz (and /healthz; +1 per service, in this order)",
        base_port + OPS_PORT_OFFSET
    );
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
    println!("  data              {}", dir.join("data").display());
    println!();
    println!("ready");
    std::io::stdout().flush()?;

    let exited = tokio::select! {
        () = signals.recv() => None,
        exited = first_exit(&mut children) => {
            // A Ctrl-C at a terminal reaches the children too; if one stopped
            // because of it, our own signal is a moment behind.
            match tokio::time::timeout(Duration::from_millis(500), signals.recv()).await {
                Ok(()) => None,
                Err(_) => Some(exited),
            }
        }
    };
    stop_all(&mut children).await;
    match exited {
        None => Ok(ExitCode::SUCCESS),
        Some(name) => bail!("{name} exited unexpectedly; stopped the others"),
    }
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.is_absolute() {
        Ok(dir.to_owned())
    } else {
        Ok(std::env::current_dir()?.join(dir))
    }
}

/// Creates the CA and any missing or nearly expired SVID. A new CA means
/// every SVID is re-issued.
fn ensure_pki(pki: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(pki).with_context(|| format!("cannot create {}", pki.display()))?;
    let ca_cert = pki.join("ca.crt");
    let ca_key = pki.join("ca.key");
    let (ca, fresh_ca) = if ca_cert.exists() && ca_key.exists() && !expiring(&ca_cert)? {
        let ca = CertificateAuthority::from_pem(
            &std::fs::read_to_string(&ca_cert)?,
            &std::fs::read_to_string(&ca_key)?,
        )
        .with_context(|| format!("cannot load the dev ca from {}", ca_cert.display()))?;
        (ca, false)
    } else {
        let ca =
            CertificateAuthority::generate(TRUST_DOMAIN, time::Duration::days(CA_VALIDITY_DAYS))?;
        write_file(&ca_key, ca.key_pem().as_bytes(), 0o600)?;
        write_file(&ca_cert, ca.cert_pem().as_bytes(), 0o644)?;
        println!("created dev root ca {}", ca_cert.display());
        (ca, true)
    };
    write_file(&pki.join("bundle.pem"), ca.cert_pem().as_bytes(), 0o644)?;

    ensure_log_key(pki)?;
    ensure_oidc_key(pki)?;
    ensure_broker_kek(pki)?;

    let mut leaves: Vec<(String, String, bool)> = SERVICES
        .iter()
        .map(|(name, _)| {
            (
                name.to_string(),
                format!("spiffe://{TRUST_DOMAIN}/service/{name}"),
                true,
            )
        })
        .collect();
    leaves.push(("operator".to_owned(), OPERATOR_ID.to_owned(), false));
    // The demo's automation and auditor (`make demo`).
    for &(name, path) in DEMO_CLIENTS {
        leaves.push((
            name.to_owned(),
            format!("spiffe://{TRUST_DOMAIN}{path}"),
            false,
        ));
    }
    for (name, id, server) in leaves {
        let cert = pki.join(format!("{name}.crt"));
        let key = pki.join(format!("{name}.key"));
        if !fresh_ca && cert.exists() && key.exists() && !expiring(&cert)? {
            continue;
        }
        let mut spec = LeafSpec::svid(&id, time::Duration::days(SVID_VALIDITY_DAYS));
        if server {
            let hosts: Vec<String> = SERVER_HOSTS.iter().map(|h| h.to_string()).collect();
            spec = spec.with_hosts(&hosts);
        }
        let leaf = ca.issue(&spec)?;
        // Key first: a reader that sees the new certificate also finds its key.
        write_file(&key, leaf.key_pem.as_bytes(), 0o600)?;
        write_file(&cert, leaf.cert_pem.as_bytes(), 0o644)?;
        println!("issued {id} -> {}", cert.display());
    }
    Ok(())
}

/// The audit log's checkpoint signing key, and its verifier key beside it
/// for anyone to verify checkpoints with standard signed-note tooling.
fn ensure_log_key(pki: &Path) -> anyhow::Result<()> {
    let key_path = pki.join("audit-log.key");
    if !key_path.exists() {
        let pkcs8 = NoteSigner::generate_pkcs8()?;
        write_file(&key_path, private_key_pem(&pkcs8).as_bytes(), 0o600)?;
        println!("created audit log signing key {}", key_path.display());
    }
    let pem = std::fs::read(&key_path)?;
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    let signer = NoteSigner::from_pkcs8(LOG_ORIGIN, der.secret_der())?;
    write_file(
        &pki.join("audit-log.vkey"),
        format!("{}\n", signer.verifier_key()).as_bytes(),
        0o644,
    )?;
    Ok(())
}

/// The key-encryption key that seals the broker's CA and JWT signing keys
/// at rest: 32 random bytes as 64 hex digits, readable by the owner alone.
/// Kept across runs (a new one could not open the stored CA).
fn ensure_broker_kek(pki: &Path) -> anyhow::Result<()> {
    use ring::rand::SecureRandom as _;
    let path = pki.join("broker.kek");
    if path.exists() {
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness available for the broker's key"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_file(&path, hex.as_bytes(), 0o600)?;
    println!("created the broker's key-encryption key {}", path.display());
    Ok(())
}

/// The dev OIDC issuer's signing key (dev only) and the JWKS authority
/// verifies humans' tokens with.
fn ensure_oidc_key(pki: &Path) -> anyhow::Result<()> {
    let key_path = pki.join("oidc-issuer.key");
    if !key_path.exists() {
        let pkcs8 = steward_identity::jwt::SigningKey::generate_pkcs8()?;
        write_file(&key_path, private_key_pem(&pkcs8).as_bytes(), 0o600)?;
        println!("created dev OIDC issuer key {}", key_path.display());
    }
    let key = dev_issuer_key(pki)?;
    let jwks = steward_identity::jwt::JwkSet {
        keys: vec![key.jwk()],
    };
    write_file(
        &pki.join("oidc-jwks.json"),
        serde_json::to_string_pretty(&jwks)?.as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn expiring(cert: &Path) -> anyhow::Result<bool> {
    let pem = std::fs::read(cert)?;
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
        return Ok(true);
    };
    let Ok(parsed) = pem.parse_x509() else {
        return Ok(true);
    };
    let not_after = parsed.validity().not_after.to_datetime();
    Ok(not_after - time::OffsetDateTime::now_utc() < RENEW_BEFORE)
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

/// Writes through a temporary file and a rename, so a process reloading
/// the file never reads half of it.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn write_configs(dir: &Path, base_port: u16, log_format: &str) -> anyhow::Result<Vec<PathBuf>> {
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    let pki = dir.join("pki");
    let data = dir.join("data");
    let mut paths = Vec::new();
    for (index, (name, _)) in SERVICES.iter().enumerate() {
        let port = base_port + u16::try_from(index)?;
        let ops = port + OPS_PORT_OFFSET;
        let text = format!(
            "# written by `steward dev up`; edits are overwritten on the next run\n\
             listen_addr = \"127.0.0.1:{port}\"\n\
             ops_addr = \"127.0.0.1:{ops}\"\n\n\
             [tls]\n\
             cert = {cert:?}\n\
             key = {key:?}\n\
             bundle = {bundle:?}\n\n\
             [database]\n\
             url = {db:?}\n\n\
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
            db = format!("sqlite://{}", data.join(format!("{name}.db")).display()),
        );
        let text = match *name {
            "audit" => format!(
                "{text}\n[log]\norigin = {LOG_ORIGIN:?}\nsigning_key = {:?}\n",
                pki.join("audit-log.key")
            ),
            "credential-broker" => format!(
                "kek_file = {:?}\nworkload_api_socket = {:?}\n{text}",
                pki.join("broker.kek"),
                dir.join("run").join("workload.sock")
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
        let path = config_dir.join(format!("{name}.toml"));
        write_file(&path, text.as_bytes(), 0o644)?;
        paths.push(path);
    }
    Ok(paths)
}

async fn wait_healthy(conn: &ConnectionArgs, children: &mut [(&str, Child)]) -> anyhow::Result<()> {
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

async fn first_exit(children: &mut [(&str, Child)]) -> String {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(_)) = child.try_wait() {
                return (*name).to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM to every child, then SIGKILL to any still running after 15 s.
async fn stop_all(children: &mut [(&str, Child)]) {
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
