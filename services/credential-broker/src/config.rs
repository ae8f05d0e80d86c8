//! The broker's configuration: the shared service settings, where its
//! key-encryption key comes from, and credential lifetimes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use steward_server::{ServiceConfig, Settings};

use crate::keys::{KeyError, LocalKek};

/// The environment variable that may hold the key-encryption key (64 hex
/// digits) instead of a file. It is read once at start and never logged.
pub const KEK_ENV: &str = "STEWARD_BROKER_KEK";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokerConfig {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// A file holding the key-encryption key as 64 hex digits (mode 0600).
    /// Without it the key comes from `STEWARD_BROKER_KEK`; with neither the
    /// broker refuses to start.
    #[serde(default)]
    pub kek_file: Option<PathBuf>,
    /// Credential lifetimes.
    #[serde(default)]
    pub ttl: TtlConfig,
    /// CA lifetimes.
    #[serde(default)]
    pub ca: CaConfig,
    /// Where to serve the SPIFFE Workload API (a Unix domain socket);
    /// unset serves none.
    #[serde(default)]
    pub workload_api_socket: Option<PathBuf>,
    /// PostgreSQL login roles as leased credentials; unset offers none.
    #[serde(default)]
    pub postgres_backend: Option<crate::backends::PostgresBackendConfig>,
    /// Trust-domain federation: this trust domain's bundle endpoint and
    /// the foreign trust domains whose bundles workloads get.
    #[serde(default)]
    pub federation: FederationConfig,
}

/// Trust-domain federation (the SPIFFE Trust Domain and Bundle
/// specification, section 5). Unset, nothing is published or fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Where to serve this trust domain's bundle over HTTPS
    /// (`https_spiffe`: the endpoint presents an X.509-SVID of this trust
    /// domain for the broker's own SPIFFE ID); unset serves none.
    #[serde(default)]
    pub bundle_endpoint: Option<std::net::SocketAddr>,
    /// The `spiffe_refresh_hint` the endpoint publishes, in seconds.
    #[serde(default = "five_minutes")]
    pub refresh_hint_secs: u64,
    /// Foreign trust domains to fetch bundles from.
    #[serde(default)]
    pub trust_domains: Vec<ForeignTrustDomain>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            bundle_endpoint: None,
            refresh_hint_secs: five_minutes(),
            trust_domains: Vec::new(),
        }
    }
}

/// How a foreign bundle endpoint is authenticated (section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointProfile {
    /// The endpoint presents an X.509-SVID of its trust domain, verified
    /// against that trust domain's last bundle (the first one given out of
    /// band in `bundle_file`) and required to be `endpoint_spiffe_id`.
    HttpsSpiffe,
    /// The endpoint presents a Web PKI certificate for its host name,
    /// verified against the public roots (and `ca_file`'s, when set).
    HttpsWeb,
}

/// One foreign trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignTrustDomain {
    /// Its name (`example.org`).
    pub trust_domain: String,
    /// Its bundle endpoint: `https://host:port/path`.
    pub bundle_endpoint_url: String,
    pub profile: EndpointProfile,
    /// `https_spiffe`: the SPIFFE ID the endpoint must present.
    #[serde(default)]
    pub endpoint_spiffe_id: Option<String>,
    /// `https_spiffe`: the trust domain's bundle (a SPIFFE bundle
    /// document) exchanged out of band; used until the first fetch.
    #[serde(default)]
    pub bundle_file: Option<PathBuf>,
    /// `https_web`: PEM roots trusted beside the public ones.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How often to fetch, in seconds; unset follows the bundle's
    /// `spiffe_refresh_hint` (five minutes when it has none).
    #[serde(default)]
    pub refresh_secs: Option<u64>,
}

/// Default and longest lifetimes, in seconds. Authority's `@max_ttl`
/// obligations cap them further; a task window's end caps every lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlConfig {
    #[serde(default = "hour")]
    pub x509_svid_default: u64,
    #[serde(default = "five_minutes")]
    pub jwt_svid_default: u64,
    #[serde(default = "hour")]
    pub api_token_default: u64,
    /// No credential is issued, or a lease renewed, for longer than this.
    #[serde(default = "day")]
    pub max: u64,
    /// The shortest SVID lifetime a registration entry gets through the
    /// Workload API and SDS: a shorter entry TTL is raised to it, so one
    /// entry cannot have its stream re-issue (a lease and an evidence
    /// record each time) every few seconds.
    #[serde(default = "minute")]
    pub svid_min: u64,
}

impl TtlConfig {
    /// An entry's SVID lifetime as the Workload API issues it: 0 (the
    /// kind's default) stays 0, anything else is at least `svid_min`.
    pub fn entry_ttl(&self, entry_ttl: u32) -> u32 {
        match entry_ttl {
            0 => 0,
            n => n.max(u32::try_from(self.svid_min).unwrap_or(u32::MAX)),
        }
    }
}

impl Default for TtlConfig {
    fn default() -> Self {
        Self {
            x509_svid_default: hour(),
            jwt_svid_default: five_minutes(),
            api_token_default: hour(),
            max: day(),
            svid_min: minute(),
        }
    }
}

/// How long generated CA certificates live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaConfig {
    /// The root: ten years.
    #[serde(default = "ten_years")]
    pub root_validity_secs: u64,
    /// Each intermediate: thirty days.
    #[serde(default = "thirty_days")]
    pub intermediate_validity_secs: u64,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            root_validity_secs: ten_years(),
            intermediate_validity_secs: thirty_days(),
        }
    }
}

fn minute() -> u64 {
    60
}
fn five_minutes() -> u64 {
    300
}
fn hour() -> u64 {
    3600
}
fn day() -> u64 {
    86_400
}
fn thirty_days() -> u64 {
    30 * 86_400
}
fn ten_years() -> u64 {
    3650 * 86_400
}

impl Settings for BrokerConfig {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

impl BrokerConfig {
    /// `service` with default lifetimes and no key-encryption key file.
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            kek_file: None,
            ttl: TtlConfig::default(),
            ca: CaConfig::default(),
            workload_api_socket: None,
            postgres_backend: None,
            federation: FederationConfig::default(),
        }
    }

    /// The key-encryption key: from `kek_file`, else from `STEWARD_BROKER_KEK`.
    pub fn kek(&self) -> Result<LocalKek, KeyError> {
        match &self.kek_file {
            Some(path) => LocalKek::from_file(path),
            None => match std::env::var(KEK_ENV) {
                Ok(hex) => LocalKek::from_hex(&hex),
                Err(_) => Err(KeyError::Missing(format!(
                    "no key-encryption key: set kek_file in the config or {KEK_ENV}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EndpointProfile;

    #[test]
    fn the_example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/credential-broker.example.toml");
        let config = steward_server::config::load(crate::default_config(), Some(&path)).unwrap();
        assert_eq!(config.service.listen_addr.port(), 50053);
        assert_eq!(
            config.kek_file.as_deref(),
            Some(std::path::Path::new("/etc/steward/secrets/broker.kek"))
        );
        assert_eq!(config.ttl.jwt_svid_default, 300);
        assert_eq!(config.ttl.max, 86_400);
        assert_eq!(config.ttl.svid_min, 60);
        assert_eq!(config.ttl.entry_ttl(0), 0, "the default stays the default");
        assert_eq!(config.ttl.entry_ttl(20), 60);
        assert_eq!(config.ttl.entry_ttl(3600), 3600);
        assert_eq!(config.ca.intermediate_validity_secs, 30 * 86_400);
        assert_eq!(
            config.workload_api_socket.as_deref(),
            Some(std::path::Path::new("/run/steward/workload.sock"))
        );
        let federation = &config.federation;
        assert_eq!(federation.bundle_endpoint.unwrap().port(), 8443);
        assert_eq!(federation.trust_domains.len(), 2);
        assert_eq!(
            federation.trust_domains[0].profile,
            EndpointProfile::HttpsSpiffe
        );
        assert_eq!(federation.trust_domains[1].refresh_secs, Some(600));
        let mut postgres = config.postgres_backend.unwrap();
        assert_eq!(postgres.role_prefix, "steward_");
        assert_eq!(postgres.templates["payments-reader"].len(), 2);
        // The admin URL's password never reaches a log line through Debug.
        postgres.url = "postgres://admin:s3cret-pw@db.internal/payments".into();
        assert!(!format!("{postgres:?}").contains("s3cret-pw"));
    }
}
