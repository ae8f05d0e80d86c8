//! The CLI's own settings file: `$XDG_CONFIG_HOME/steward/config.toml`,
//! else `~/.config/steward/config.toml`, or the file `--config` (or
//! `STEWARD_CONFIG`) names. It holds what would otherwise be repeated on
//! every command: where the SVID, key and bundle are, where the services
//! listen, where the human token is kept. A flag or an environment
//! variable wins over the file; the file wins over the built-in defaults.
//!
//! ```toml
//! cert = "/etc/steward/operator.crt"
//! key = "/etc/steward/operator.key"
//! bundle = "/etc/steward/bundle.pem"
//! output = "json"
//!
//! [services]
//! inventory = "inventory.steward.internal:50051"
//! authority = "authority.steward.internal:50052"
//! ```
//!
//! Relative paths are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::ArgMatches;
use clap::parser::ValueSource;
use figment::Figment;
use figment::providers::{Format, Toml};

use crate::Output;
use crate::client::ConnectionArgs;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    pub host: Option<String>,
    pub base_port: Option<u16>,
    pub token_file: Option<PathBuf>,
    /// `table` or `json`.
    pub output: Option<String>,
    /// `name = "host:port"` per service.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
}

/// Where the settings file is looked for when `--config` names none.
pub fn default_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(base.join("steward").join("config.toml"))
}

/// Reads `path`. A file named explicitly must exist; the default one may
/// be missing.
pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Option<FileConfig>> {
    if !path.exists() {
        if explicit {
            anyhow::bail!("the config file {} does not exist", path.display());
        }
        return Ok(None);
    }
    let config: FileConfig = Figment::from(Toml::file(path))
        .extract()
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    Ok(Some(config))
}

/// Fills what neither a flag nor the environment set from `file`.
pub fn apply(
    file: FileConfig,
    dir: &Path,
    matches: &ArgMatches,
    conn: &mut ConnectionArgs,
    output: &mut Output,
) -> anyhow::Result<()> {
    let unset = |id: &str| {
        matches!(
            matches.value_source(id),
            None | Some(ValueSource::DefaultValue)
        )
    };
    let path = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
    if let Some(cert) = file.cert.filter(|_| unset("cert")) {
        conn.cert = path(cert);
    }
    if let Some(key) = file.key.filter(|_| unset("key")) {
        conn.key = path(key);
    }
    if let Some(bundle) = file.bundle.filter(|_| unset("bundle")) {
        conn.bundle = path(bundle);
    }
    if let Some(host) = file.host.filter(|_| unset("host")) {
        conn.host = host;
    }
    if let Some(port) = file.base_port.filter(|_| unset("base_port")) {
        conn.base_port = port;
    }
    if let Some(token) = file.token_file.filter(|_| unset("token_file")) {
        conn.token_file = Some(path(token));
    }
    if let Some(text) = file.output.filter(|_| unset("output")) {
        *output = match text.as_str() {
            "table" => Output::Table,
            "json" => Output::Json,
            other => anyhow::bail!("config: output: {other:?} is not table or json"),
        };
    }
    // Below --service-addr and --addr (`ConnectionArgs::address`).
    for (name, addr) in file.services {
        let parsed = crate::client::service_addr(&format!("{name}={addr}"))
            .map_err(|e| anyhow::anyhow!("config: services: {e}"))?;
        conn.configured_addrs.push(parsed);
    }
    Ok(())
}
