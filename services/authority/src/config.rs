//! Authority's configuration: the shared service settings plus group
//! membership for principals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_server::{ServiceConfig, Settings};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorityConfig {
    #[serde(flatten)]
    pub service: ServiceConfig,
    /// Group name → members: SPIFFE IDs (exact, or `spiffe://td/prefix/*`
    /// for every ID under a path) and humans as `human:<subject>`. A
    /// principal is a member of every group that lists it, which policies
    /// test with `principal in Steward::Group::"<name>"`.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    /// The OIDC issuer humans' bearer tokens come from. Without it, calls
    /// that carry a bearer token are refused (UNAUTHENTICATED).
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// How long the resource owners have to complete a break-glass
    /// post-action review.
    #[serde(default = "default_review_seconds")]
    pub break_glass_review_seconds: u64,
    /// Who reviews a break-glass on an identity with no owners in
    /// inventory (a person or a group of `groups`): without someone, the
    /// review could never be completed.
    #[serde(default = "default_unowned_reviewer")]
    pub unowned_reviewer: String,
    /// Answer a decision only once its evidence record is durable. Off by
    /// default: a decision that changes nothing (no grant spent) is
    /// answered once its record is queued for the next group commit, and a
    /// crash in between loses at most that batch's records (ADR 0008).
    /// Spending a grant, opening an approval request and every other
    /// change are durable before the answer either way.
    #[serde(default)]
    pub durable_decisions: bool,
}

/// A day.
fn default_review_seconds() -> u64 {
    24 * 3600
}

fn default_unowned_reviewer() -> String {
    "security".to_owned()
}

/// An OIDC issuer, trusted through its published JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcConfig {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` tokens must carry for Steward.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The issuer's JWKS document, on disk (re-read when it changes).
    pub jwks_file: std::path::PathBuf,
}

fn default_audience() -> String {
    "steward".to_owned()
}

impl Settings for AuthorityConfig {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

impl AuthorityConfig {
    /// `service` with no groups, no OIDC issuer and the default review time.
    pub fn new(service: ServiceConfig) -> Self {
        Self {
            service,
            groups: BTreeMap::new(),
            oidc: None,
            break_glass_review_seconds: default_review_seconds(),
            unowned_reviewer: default_unowned_reviewer(),
            durable_decisions: false,
        }
    }

    /// The groups `member` (a SPIFFE ID, or `human:<subject>`) belongs to.
    pub fn groups_of(&self, member: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| matches(m, member)))
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn matches(pattern: &str, member: &str) -> bool {
    match pattern.strip_suffix("/*") {
        Some(prefix) => member
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/') && rest.len() > 1),
        None => pattern == member,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/config/authority.example.toml");
        let config = steward_server::config::load(crate::default_config(), Some(&path)).unwrap();
        assert_eq!(config.service.listen_addr.port(), 50052);
        assert_eq!(config.break_glass_review_seconds, 86_400);
        let oidc = config.oidc.as_ref().unwrap();
        assert_eq!(
            (oidc.issuer.as_str(), oidc.audience.as_str()),
            ("https://login.example.org", "steward")
        );
        assert_eq!(config.groups_of("human:sam"), vec!["security"]);
        assert_eq!(
            config.groups_of("spiffe://example.org/automation/soar"),
            vec!["soar"]
        );
    }

    #[test]
    fn membership_is_exact_or_by_path_prefix() {
        let mut config = AuthorityConfig::new(ServiceConfig::defaults("authority", 0));
        config.groups.insert(
            "brokers".into(),
            vec!["spiffe://td/service/credential-broker".into()],
        );
        config
            .groups
            .insert("bots".into(), vec!["spiffe://td/automation/*".into()]);
        config
            .groups
            .insert("security".into(), vec!["human:alice".into()]);
        assert_eq!(
            config.groups_of("spiffe://td/automation/soar"),
            vec!["bots"]
        );
        assert!(config.groups_of("spiffe://td/automation").is_empty());
        assert!(config.groups_of("spiffe://td/automationx/a").is_empty());
        assert_eq!(
            config.groups_of("spiffe://td/service/credential-broker"),
            vec!["brokers"]
        );
        assert_eq!(config.groups_of("human:alice"), vec!["security"]);
    }
}
