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
///
/// An address is `host:port`; a service run as replicas is a list of them
/// (`["a:50054", "b:50054"]`, or `"a:50054,b:50054"` in one string, as an
/// environment variable gives it), or a DNS name that resolves to each.
/// Connections spread over the replicas and move to a live one when theirs
/// is lost (`steward_identity::connector::connect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Peers {
    #[serde(deserialize_with = "addresses")]
    pub inventory: String,
    #[serde(deserialize_with = "addresses")]
    pub authority: String,
    #[serde(deserialize_with = "addresses")]
    pub credential_broker: String,
    #[serde(deserialize_with = "addresses")]
    pub audit: String,
}

/// One address, or a list of them, as one comma-separated string.
fn addresses<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(address) => address,
        OneOrMany::Many(addresses) => addresses.join(","),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_one_address_a_list_or_a_comma_separated_string() {
        let dir = std::env::temp_dir().join(format!("steward-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("peers.toml");
        std::fs::write(
            &file,
            "[peers]\naudit = [\"a.example:50054\", \"b.example:50054\"]\n\
             inventory = \"x:1,y:2\"\nauthority = \"authority.steward:50052\"\n",
        )
        .unwrap();
        let peers = load(Peers::default(), None).unwrap();
        assert_eq!(peers, Peers::default());
        #[derive(Serialize, Deserialize)]
        struct Holder {
            peers: Peers,
        }
        let loaded = load(
            Holder {
                peers: Peers::default(),
            },
            Some(&file),
        )
        .unwrap()
        .peers;
        assert_eq!(loaded.audit, "a.example:50054,b.example:50054");
        assert_eq!(loaded.inventory, "x:1,y:2");
        assert_eq!(loaded.authority, "authority.steward:50052");
        assert_eq!(loaded.credential_broker, "127.0.0.1:50053");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
