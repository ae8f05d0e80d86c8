//! The dev PKI: a root CA, an X.509-SVID per service and per demo client,
//! the audit log's signing key, the broker's key-encryption key and the dev
//! OIDC issuer's key, each made once and renewed when close to expiry.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use steward_evidence::NoteSigner;
use steward_evidence::note::private_key_pem;
use steward_pki::{CertificateAuthority, LeafSpec};

use super::{DEMO_CLIENTS, LOG_ORIGIN, OPERATOR_ID, TRUST_DOMAIN};
use crate::SERVICES;
use crate::login::dev_issuer_key;

const CA_VALIDITY_DAYS: i64 = 365;
const SVID_VALIDITY_DAYS: i64 = 30;
/// Leaves closer than this to expiry are re-issued by `dev up`.
const RENEW_BEFORE: time::Duration = time::Duration::days(2);
/// Host names standard gRPC clients use to reach the services.
const SERVER_HOSTS: &[&str] = &["localhost", "127.0.0.1"];

/// Creates the CA and any missing or nearly expired SVID. A new CA means
/// every SVID is re-issued.
pub(super) fn ensure_pki(pki: &Path) -> anyhow::Result<()> {
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

/// Writes through a temporary file and a rename, so a process reloading
/// the file never reads half of it.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
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
