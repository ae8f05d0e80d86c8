//! `steward login` / `steward logout`: the OIDC token that identifies the
//! human behind the operator's SVID, for actions only a person may take
//! (approving, break-glass, completing reviews).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use rustls_pki_types::pem::PemObject;

use crate::Output;

/// The dev OIDC issuer authority trusts for humans (`steward login --dev`).
pub const DEV_ISSUER: &str = "https://oidc.steward.local/dev";

/// Who `steward login --dev` names by default: `$USER`.
pub fn default_subject() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
}

/// How long a dev token lasts unless `--ttl-minutes` says otherwise.
pub const DEV_TOKEN_MINUTES: u32 = 8 * 60;

/// Where the token is kept: `--token-file`, else
/// `$XDG_CONFIG_HOME/steward/token`, else `~/.config/steward/token`.
pub fn token_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(
            std::env::var_os("HOME")
                .context("neither XDG_CONFIG_HOME nor HOME is set; pass --token-file")?,
        )
        .join(".config"),
    };
    Ok(config.join("steward").join("token"))
}

/// What a stored token says about itself (read without verifying: the
/// services verify it on every call).
#[derive(Debug, serde::Serialize)]
pub struct TokenInfo {
    pub subject: String,
    pub issuer: String,
    pub expires_at: String,
    pub token_file: String,
}

fn describe(token: &str, path: &Path) -> anyhow::Result<TokenInfo> {
    use base64::Engine as _;
    let payload = token
        .split('.')
        .nth(1)
        .context("the token is not a JWT (header.payload.signature)")?;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .context("the token's payload is not base64url")?,
    )
    .context("the token's payload is not JSON")?;
    let text = |name: &str| claims[name].as_str().unwrap_or_default().to_owned();
    let expires = claims["exp"]
        .as_i64()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    Ok(TokenInfo {
        subject: text("sub"),
        issuer: text("iss"),
        expires_at: expires,
        token_file: path.display().to_string(),
    })
}

fn store(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(token.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print(info: &TokenInfo, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(info)?),
        Output::Table => println!(
            "logged in as {} ({}) until {}\ntoken saved in {}",
            info.subject, info.issuer, info.expires_at, info.token_file
        ),
    }
    Ok(())
}

/// `steward login --dev`: a token from the dev issuer of `steward dev up`.
pub fn login_dev(
    dev_dir: &Path,
    subject: &str,
    ttl_minutes: u32,
    token_file: Option<&Path>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        bail!("--as: a name of 1 to 256 characters, no control characters");
    }
    if ttl_minutes == 0 || ttl_minutes > 24 * 60 {
        bail!("--ttl-minutes: from 1 to 1440");
    }
    let key = dev_issuer_key(&dev_dir.join("pki"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": DEV_ISSUER,
        "sub": subject,
        "aud": "steward",
        "iat": now,
        "nbf": now,
        "exp": now + i64::from(ttl_minutes) * 60,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let claims = claims
        .as_object()
        .context("token claims are an object")?
        .clone();
    let token = key.sign("JWT", &claims)?;
    let path = token_path(token_file)?;
    store(&path, &token)?;
    print(&describe(&token, &path)?, output)?;
    Ok(ExitCode::SUCCESS)
}

/// `steward login --from-file F`: keep a token obtained from your
/// organisation's OIDC issuer.
pub fn login_from_file(
    source: &Path,
    token_file: Option<&Path>,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let token = std::fs::read_to_string(source)
        .with_context(|| format!("cannot read {}", source.display()))?;
    let token = token.trim();
    let path = token_path(token_file)?;
    let info = describe(token, &path)?;
    store(&path, token)?;
    print(&info, output)?;
    Ok(ExitCode::SUCCESS)
}

/// `steward logout`: forget the stored token.
pub fn logout(token_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    let path = token_path(token_file)?;
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("not logged in ({} does not exist)", path.display());
        }
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored token, if any, for calls that act as the human.
pub fn stored_token(token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let path = token_path(token_file)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Who the stored token says you are, if there is one.
pub fn stored_human(token_file: Option<&Path>) -> anyhow::Result<Option<TokenInfo>> {
    let path = token_path(token_file)?;
    stored_token(token_file)?
        .map(|token| describe(&token, &path))
        .transpose()
}

/// Loads the dev issuer's signing key from the dev PKI directory.
pub fn dev_issuer_key(pki: &Path) -> anyhow::Result<steward_identity::jwt::SigningKey> {
    let key_path = pki.join("oidc-issuer.key");
    let pem = std::fs::read(&key_path).with_context(|| {
        format!(
            "cannot read {}: run `steward dev up` first",
            key_path.display()
        )
    })?;
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?;
    Ok(steward_identity::jwt::SigningKey::from_pkcs8(
        der.secret_der(),
    )?)
}
