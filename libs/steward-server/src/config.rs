//! The typed configuration shared by every service: read once at start-up
//! from built-in defaults, then an optional TOML file, then `STEWARD_*`
//! environment variables (`__` separates nested keys, e.g.
//! `STEWARD_DATABASE__URL`, `STEWARD_TELEMETRY__FORMAT=json`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use steward_db::DatabaseConfig;
use steward_identity::SvidPaths;
use steward_telemetry::TelemetryConfig;

/// Where development state lives, relative to the working directory.
pub const DEV_DIR: &str = ".steward/dev";

/// Settings every Steward service has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// This service's X.509-SVID, key and trust bundle.
    pub tls: TlsConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// RPC pattern → SPIFFE IDs (or `spiffe://td/prefix/*`) allowed to call
    /// it. Replaces the service's built-in allowlist when non-empty.
    #[serde(default)]
    pub authz: BTreeMap<String, Vec<String>>,
    /// Per-request deadline in seconds (a shorter `grpc-timeout` wins).
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// How long in-flight calls get to finish after SIGINT/SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Where the other services listen (`host:port`).
    #[serde(default)]
    pub peers: Peers,
    /// A plain-HTTP listener for probes without a client certificate:
    /// `/healthz` and `/readyz`. Unset (the default) serves none.
    #[serde(default)]
    pub ops_addr: Option<SocketAddr>,
}

/// The addresses of the other Steward services. Each is reached over mTLS
/// and must present `spiffe://<own trust domain>/service/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peers {
    pub inventory: String,
    pub authority: String,
    pub credential_broker: String,
    pub audit: String,
}

impl Default for Peers {
    /// The default ports on loopback, as `steward dev up` runs them.
    fn default() -> Self {
        Self {
            inventory: "127.0.0.1:50051".into(),
            authority: "127.0.0.1:50052".into(),
            credential_broker: "127.0.0.1:50053".into(),
            audit: "127.0.0.1:50054".into(),
        }
    }
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    #[serde(flatten)]
    pub svid: SvidPaths,
    /// Trust domains besides the SVID's own whose clients are accepted.
    #[serde(default)]
    pub extra_trust_domains: Vec<String>,
}

fn default_request_timeout() -> u64 {
    30
}

fn default_shutdown_grace() -> u64 {
    10
}

impl ServiceConfig {
    /// The defaults for service `name` on `port`: the dev PKI and an SQLite
    /// database under `.steward/dev/`, so a service runs with no config.
    pub fn defaults(name: &str, port: u16) -> Self {
        let pki = Path::new(DEV_DIR).join("pki");
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: TlsConfig {
                svid: SvidPaths {
                    cert: pki.join(format!("{name}.crt")),
                    key: pki.join(format!("{name}.key")),
                    bundle: pki.join("bundle.pem"),
                },
                extra_trust_domains: Vec::new(),
            },
            database: DatabaseConfig::sqlite(
                &Path::new(DEV_DIR).join("data").join(format!("{name}.db")),
            ),
            telemetry: TelemetryConfig::default(),
            authz: BTreeMap::new(),
            request_timeout_secs: default_request_timeout(),
            shutdown_grace_secs: default_shutdown_grace(),
            peers: Peers::default(),
            ops_addr: None,
        }
    }
}

/// A service's whole configuration: the shared part plus its own settings.
pub trait Settings: Serialize + for<'de> Deserialize<'de> {
    fn service(&self) -> &ServiceConfig;
}

impl Settings for ServiceConfig {
    fn service(&self) -> &ServiceConfig {
        self
    }
}

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from `defaults`, then `file` (which must exist if given), then
/// `STEWARD_*` environment variables.
pub fn load<T>(defaults: T, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(
        Env::prefixed("STEWARD_")
            .split("__")
            // These belong to the CLI and the test suite, not a service.
            .ignore(&["config", "test_database_url"]),
    );
    figment
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}
