//! Response rules: data that maps a risk signal to a proportionate action.
//!
//! A rule set is a JSON document, validated strictly and versioned like
//! policy sets:
//!
//! ```json
//! {"rules": [
//!   {"id": "contain-exposed-secrets", "signal_kind": "secret_exposed",
//!    "min_severity": "high", "actions": ["watchlist", "restrict"],
//!    "reason": "an exposed secret is contained at once"},
//!   {"id": "revoke-on-critical-exposure", "signal_kind": "secret_exposed",
//!    "min_severity": "critical", "actions": ["revoke"],
//!    "approver": "technical_owner"}
//! ]}
//! ```
//!
//! Reversible actions (watchlist, restrict, suspend) run automatically
//! unless the rule sets `"approval": "required"`; the irreversible one
//! (revoke) always waits for an approval. `open_ticket` records a
//! `response.open_ticket` evidence record for the ITSM tooling that follows
//! the audit stream.

use std::collections::BTreeSet;

use serde::Deserialize;

/// Signal kinds, as inventory names them.
pub const SIGNAL_KINDS: &[&str] = &[
    "secret_exposed",
    "anomalous_location",
    "privilege_sprawl",
    "rotation_failed",
    "dormant",
    "owner_departed",
    "policy_violation",
    "custom",
];

/// Severities, least to most severe.
pub const SEVERITIES: &[&str] = &["low", "medium", "high", "critical"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    OpenTicket,
    Watchlist,
    Restrict,
    Suspend,
    Revoke,
}

impl Action {
    pub const ALL: &[(&str, Action)] = &[
        ("open_ticket", Action::OpenTicket),
        ("watchlist", Action::Watchlist),
        ("restrict", Action::Restrict),
        ("suspend", Action::Suspend),
        ("revoke", Action::Revoke),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("", |(name, _)| name)
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == text).map(|(_, a)| *a)
    }

    /// The lifecycle state the action moves an identity to, and how strict
    /// that state is (an action never loosens a stricter state).
    pub fn target_state(self) -> Option<(&'static str, u8)> {
        match self {
            Self::OpenTicket => None,
            Self::Watchlist => Some(("watchlisted", 1)),
            Self::Restrict => Some(("restricted", 2)),
            Self::Suspend => Some(("suspended", 3)),
            Self::Revoke => Some(("revoked", 4)),
        }
    }

    pub fn reversible(self) -> bool {
        self != Self::Revoke
    }
}

/// How strict a lifecycle state is, on the scale of [`Action::target_state`].
pub fn strictness(state: &str) -> u8 {
    match state {
        "active" => 0,
        "watchlisted" => 1,
        "restricted" => 2,
        "suspended" => 3,
        _ => 4,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub signal_kind: String,
    pub min_severity: usize,
    pub actions: Vec<Action>,
    /// Every action waits for approval, reversible or not.
    pub approval_required: bool,
    /// Who approves what waits: technical_owner, business_owner or group:<name>.
    pub approver: String,
    pub reason: String,
}

impl Rule {
    pub fn matches(&self, kind: &str, severity: &str) -> bool {
        self.signal_kind == kind
            && SEVERITIES
                .iter()
                .position(|s| *s == severity)
                .is_some_and(|level| level >= self.min_severity)
    }

    /// Whether `action` runs at once (else it opens an approval request).
    pub fn automatic(&self, action: Action) -> bool {
        action.reversible() && !self.approval_required
    }
}

/// A validated rule set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// One problem, named by its path in the document (`rules[1].actions[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub path: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    signal_kind: String,
    #[serde(default = "lowest")]
    min_severity: String,
    actions: Vec<String>,
    #[serde(default)]
    approval: Option<String>,
    #[serde(default)]
    approver: Option<String>,
    #[serde(default)]
    reason: String,
}

fn lowest() -> String {
    "low".to_owned()
}

/// Every problem a rule document has, each with its path.
#[derive(Default)]
struct Problems(Vec<RuleError>);

impl Problems {
    fn add(&mut self, path: String, message: String) {
        self.0.push(RuleError { path, message });
    }

    /// Rule `i`, validated; its problems are added (`ids` holds the ids
    /// seen so far).
    fn rule(&mut self, i: usize, raw: RawRule, ids: &mut BTreeSet<String>) -> Rule {
        let at = |field: &str| format!("rules[{i}].{field}");
        let valid_id = !raw.id.is_empty()
            && raw.id.len() <= 128
            && raw
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid_id {
            self.add(
                at("id"),
                "1 to 128 characters: letters, digits, '-', '_', '.'".into(),
            );
        } else if !ids.insert(raw.id.clone()) {
            self.add(at("id"), format!("{:?} is used twice", raw.id));
        }
        if !SIGNAL_KINDS.contains(&raw.signal_kind.as_str()) {
            self.add(
                at("signal_kind"),
                format!(
                    "{} is not one of {}",
                    steward_errors::shown(&raw.signal_kind),
                    SIGNAL_KINDS.join(", ")
                ),
            );
        }
        let min_severity = SEVERITIES
            .iter()
            .position(|s| *s == raw.min_severity)
            .unwrap_or_else(|| {
                self.add(
                    at("min_severity"),
                    format!(
                        "{} is not one of {}",
                        steward_errors::shown(&raw.min_severity),
                        SEVERITIES.join(", ")
                    ),
                );
                0
            });
        let actions = self.actions(i, &raw.actions);
        let approval_required = match raw.approval.as_deref() {
            None | Some("auto") => false,
            Some("required") => true,
            Some(other) => {
                self.add(
                    at("approval"),
                    format!(
                        "{} is not \"auto\" or \"required\"",
                        steward_errors::shown(other)
                    ),
                );
                false
            }
        };
        if raw.approval.as_deref() == Some("auto") && actions.iter().any(|a| !a.reversible()) {
            self.add(
                at("approval"),
                "irreversible actions (revoke) always require approval".into(),
            );
        }
        let approver = raw.approver.unwrap_or_else(|| "technical_owner".to_owned());
        let approver_ok = approver == "technical_owner"
            || approver == "business_owner"
            || approver
                .strip_prefix("group:")
                .is_some_and(|g| !g.is_empty() && g.len() <= 128);
        if !approver_ok {
            self.add(
                at("approver"),
                format!(
                    "{} is not technical_owner, business_owner or group:<name>",
                    steward_errors::shown(&approver)
                ),
            );
        }
        if raw.reason.len() > 512 || raw.reason.chars().any(char::is_control) {
            self.add(
                at("reason"),
                "at most 512 bytes, no control characters".into(),
            );
        }
        Rule {
            id: raw.id,
            signal_kind: raw.signal_kind,
            min_severity,
            actions,
            approval_required,
            approver,
            reason: raw.reason,
        }
    }

    /// Rule `i`'s actions: at least one, each known, none twice.
    fn actions(&mut self, i: usize, names: &[String]) -> Vec<Action> {
        if names.is_empty() {
            self.add(format!("rules[{i}].actions"), "at least one action".into());
        }
        let mut actions = Vec::new();
        for (j, name) in names.iter().enumerate() {
            let at = format!("rules[{i}].actions[{j}]");
            match Action::parse(name) {
                Some(a) if actions.contains(&a) => {
                    self.add(at, format!("{} twice", steward_errors::shown(name)));
                }
                Some(a) => actions.push(a),
                None => self.add(
                    at,
                    format!(
                        "{} is not one of open_ticket, watchlist, restrict, suspend, revoke",
                        steward_errors::shown(name)
                    ),
                ),
            }
        }
        actions
    }
}

impl RuleSet {
    /// Parses and validates `text`; every error, with its path.
    pub fn parse(text: &str) -> Result<Self, Vec<RuleError>> {
        let doc: Document = serde_json::from_str(text).map_err(|e| {
            vec![RuleError {
                path: format!("line {}, column {}", e.line(), e.column()),
                message: e.to_string(),
            }]
        })?;
        let mut problems = Problems::default();
        if doc.rules.len() > 1000 {
            problems.add("rules".into(), "at most 1000 rules".into());
        }
        let mut ids = BTreeSet::new();
        let rules = doc
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, raw)| problems.rule(i, raw, &mut ids))
            .collect();
        if problems.0.is_empty() {
            Ok(Self { rules })
        } else {
            Err(problems.0)
        }
    }

    pub fn ids(&self) -> Vec<String> {
        self.rules.iter().map(|r| r.id.clone()).collect()
    }

    /// The rules a signal triggers, in document order.
    pub fn matching<'a>(
        &'a self,
        kind: &'a str,
        severity: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(move |r| r.matches(kind, severity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"rules": [
        {"id": "contain", "signal_kind": "secret_exposed", "min_severity": "high",
         "actions": ["watchlist", "restrict"], "reason": "contain at once"},
        {"id": "revoke-critical", "signal_kind": "secret_exposed", "min_severity": "critical",
         "actions": ["revoke", "open_ticket"]}
    ]}"#;

    #[test]
    fn a_valid_set_matches_by_kind_and_severity() {
        let set = RuleSet::parse(GOOD).unwrap();
        assert_eq!(set.ids(), vec!["contain", "revoke-critical"]);
        let ids = |kind, severity| {
            set.matching(kind, severity)
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("secret_exposed", "medium"), Vec::<&str>::new());
        assert_eq!(ids("secret_exposed", "high"), vec!["contain"]);
        assert_eq!(
            ids("secret_exposed", "critical"),
            vec!["contain", "revoke-critical"]
        );
        assert_eq!(ids("dormant", "critical"), Vec::<&str>::new());
        let revoke = &set.rules[1];
        assert!(!revoke.automatic(Action::Revoke));
        assert!(revoke.automatic(Action::OpenTicket));
        assert_eq!(revoke.approver, "technical_owner");
        let cautious = RuleSet::parse(
            r#"{"rules": [{"id": "ask-first", "signal_kind": "dormant", "actions": ["suspend"], "approval": "required"}]}"#,
        )
        .unwrap();
        assert!(!cautious.rules[0].automatic(Action::Suspend));
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let bad = r#"{"rules": [
            {"id": "a", "signal_kind": "leak", "min_severity": "huge", "actions": ["nuke"]},
            {"id": "a", "signal_kind": "dormant", "actions": ["revoke"], "approval": "auto"},
            {"id": "b c", "signal_kind": "dormant", "actions": [], "approver": "bob", "reason": "two\nlines"}
        ]}"#;
        let errors = RuleSet::parse(bad).unwrap_err();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "rules[0].signal_kind",
                "rules[0].min_severity",
                "rules[0].actions[0]",
                "rules[1].id",
                "rules[1].approval",
                "rules[2].id",
                "rules[2].actions",
                "rules[2].approver",
                "rules[2].reason",
            ]
        );
        let unknown = RuleSet::parse(r#"{"rules": [], "extra": 1}"#).unwrap_err();
        assert!(unknown[0].message.contains("extra"), "{unknown:?}");
    }
}
