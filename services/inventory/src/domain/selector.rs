//! Workload selectors as SPIRE writes them: a type (`unix`, `k8s`, …) and a
//! value (`uid:1000`, `ns:payments`). A registration entry matches a
//! workload when every one of the entry's selectors is among the workload's
//! attested selectors.

use std::fmt;

use super::{FieldError, bad};

/// Most selectors per entry.
pub const MAX_SELECTORS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    pub kind: String,
    pub value: String,
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl Selector {
    /// Validates a selector; `field` names it in errors. Values of the
    /// `unix` type (the ones the broker attests) are checked against the
    /// attestor's vocabulary.
    pub fn parse(field: &str, kind: &str, value: &str) -> Result<Self, FieldError> {
        if kind.is_empty() {
            return Err(bad(format!("{field}.type"), "is required"));
        }
        if kind.len() > 32
            || !kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
        {
            return Err(bad(
                format!("{field}.type"),
                "must be 1 to 32 of a-z, 0-9, _ and -",
            ));
        }
        if value.is_empty() {
            return Err(bad(format!("{field}.value"), "is required"));
        }
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(bad(
                format!("{field}.value"),
                "must be at most 256 bytes without control characters",
            ));
        }
        if kind == "unix" {
            unix_value(value).map_err(|reason| bad(format!("{field}.value"), reason))?;
        }
        Ok(Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        })
    }

    /// Parses the `type:value` form (`unix:uid:1000`).
    pub fn parse_joined(field: &str, text: &str) -> Result<Self, FieldError> {
        let (kind, value) = text.split_once(':').ok_or_else(|| {
            bad(
                field,
                format!(
                    "{} is not of the form type:value",
                    steward_errors::shown(text)
                ),
            )
        })?;
        Self::parse(field, kind, value)
    }
}

fn unix_value(value: &str) -> Result<(), String> {
    let (key, arg) = value.split_once(':').ok_or_else(|| {
        format!(
            "unix selector {} is not of the form key:value",
            steward_errors::shown(value)
        )
    })?;
    match key {
        "uid" | "gid" => arg.parse::<u32>().map(|_| ()).map_err(|_| {
            format!(
                "unix:{key} needs a numeric id, not {}",
                steward_errors::shown(arg)
            )
        }),
        "user" | "group" if !arg.is_empty() => Ok(()),
        "path" if arg.starts_with('/') => Ok(()),
        "path" => Err("unix:path needs an absolute path".into()),
        "sha256" if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(()),
        "sha256" => Err("unix:sha256 needs 64 hex digits".into()),
        other => Err(format!(
            "unknown unix selector {} (uid, gid, user, group, path, sha256)",
            steward_errors::shown(other)
        )),
    }
}

/// Sorts and de-duplicates, and checks the count.
pub fn canonical(field: &str, mut selectors: Vec<Selector>) -> Result<Vec<Selector>, FieldError> {
    if selectors.is_empty() {
        return Err(bad(field, "at least one selector is required"));
    }
    if selectors.len() > MAX_SELECTORS {
        return Err(bad(field, format!("at most {MAX_SELECTORS} selectors")));
    }
    selectors.sort();
    selectors.dedup();
    Ok(selectors)
}

/// Whether every selector of `entry` is among `attested`.
pub fn matches(entry: &[Selector], attested: &[Selector]) -> bool {
    entry.iter().all(|s| attested.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_selectors_are_checked() {
        assert!(Selector::parse("s", "unix", "uid:1000").is_ok());
        assert!(Selector::parse("s", "unix", "path:/usr/bin/x").is_ok());
        assert_eq!(
            Selector::parse("s", "unix", "uid:alice").unwrap_err().field,
            "s.value"
        );
        assert!(Selector::parse("s", "unix", "path:relative").is_err());
        assert!(Selector::parse("s", "unix", "colour:blue").is_err());
        assert_eq!(
            Selector::parse("s", "Unix", "uid:1").unwrap_err().field,
            "s.type"
        );
        assert!(Selector::parse("s", "k8s", "ns:payments").is_ok());
        assert!(Selector::parse_joined("s", "k8s:ns:payments").is_ok());
        assert!(Selector::parse_joined("s", "nocolon").is_err());
    }

    #[test]
    fn an_entry_matches_when_all_its_selectors_are_attested() {
        let uid = Selector::parse("s", "unix", "uid:1000").unwrap();
        let path = Selector::parse("s", "unix", "path:/bin/x").unwrap();
        let gid = Selector::parse("s", "unix", "gid:5").unwrap();
        assert!(matches(
            std::slice::from_ref(&uid),
            &[uid.clone(), gid.clone()]
        ));
        assert!(!matches(&[uid.clone(), path], &[uid, gid]));
    }
}
