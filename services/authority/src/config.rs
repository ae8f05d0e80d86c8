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
}

impl Settings for AuthorityConfig {
    fn service(&self) -> &ServiceConfig {
        &self.service
    }
}

impl AuthorityConfig {
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
    fn membership_is_exact_or_by_path_prefix() {
        let mut config = AuthorityConfig {
            service: ServiceConfig::defaults("authority", 0),
            groups: BTreeMap::new(),
        };
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
