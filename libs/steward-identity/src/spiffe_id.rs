//! `SpiffeId` and `TrustDomain`, parsed exactly as the SPIFFE ID
//! specification (`standards/SPIFFE-ID.md`) says.
//!
//! The rules, in the spec's order:
//! - the scheme is `spiffe` (lowercase) and is followed by `://`;
//! - the trust domain is non-empty, at most 255 bytes, and uses only
//!   `[a-z0-9._-]`, so userinfo (`@`), a port (`:`) and percent-encoding are
//!   all rejected;
//! - the path is empty (the trust domain's own ID) or a sequence of `/segment`
//!   where each segment is non-empty, is not `.` or `..`, and uses only
//!   `[a-zA-Z0-9._-]`; there is no trailing slash; a query (`?`) or fragment
//!   (`#`) is therefore impossible;
//! - the whole URI is at most 2048 bytes.

use std::fmt;
use std::str::FromStr;

/// The scheme prefix every SPIFFE ID starts with.
pub const SCHEME_PREFIX: &str = "spiffe://";
/// The longest SPIFFE ID the spec requires implementations to accept, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// The longest trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Where Steward's own services' IDs live in a trust domain.
const SERVICE_PREFIX: &str = "/service/";

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("spiffe id cannot be empty")]
    Empty,
    #[error("scheme is missing or invalid: a spiffe id starts with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores (found {0:?} at byte {1})"
    )]
    BadTrustDomainChar(char, usize),
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_LEN} bytes")]
    TrustDomainTooLong,
    #[error("path must have a leading slash")]
    NoLeadingSlash,
    #[error("path cannot contain empty segments")]
    EmptySegment,
    #[error("path cannot contain dot segments")]
    DotSegment,
    #[error(
        "path segment characters are limited to letters, numbers, dots, dashes, and underscores (found {0:?} at byte {1})"
    )]
    BadPathSegmentChar(char, usize),
    #[error("path cannot have a trailing slash")]
    TrailingSlash,
    #[error("spiffe id is longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
}

/// A SPIFFE trust domain name, e.g. `steward.local`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID
    /// (`spiffe://example.org`).
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if input.contains(":/") {
            let id = SpiffeId::parse(input)?;
            if !id.path().is_empty() {
                return Err(SpiffeIdError::BadTrustDomainChar('/', 0));
            }
            return Ok(id.trust_domain);
        }
        validate_trust_domain(input, 0)?;
        Ok(Self(input.to_owned()))
    }

    /// The trust domain's name, e.g. `steward.local`.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (empty path).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain: self.clone(),
            path: String::new(),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A SPIFFE ID, `spiffe://<trust-domain><path>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    path: String,
}

impl SpiffeId {
    /// Parses a SPIFFE ID URI.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        validate_trust_domain(td, SCHEME_PREFIX.len())?;
        validate_path(path, SCHEME_PREFIX.len() + td.len())?;
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            trust_domain: TrustDomain(td.to_owned()),
            path: path.to_owned(),
        })
    }

    /// Builds an ID from a trust domain and a path such as `/service/audit`.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path, 0)?;
        if SCHEME_PREFIX.len() + trust_domain.0.len() + path.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(Self {
            trust_domain: trust_domain.clone(),
            path: path.to_owned(),
        })
    }

    /// The SPIFFE ID Steward service `name` (`inventory`, `authority`,
    /// `credential-broker`, `audit`) presents in `trust_domain`:
    /// `spiffe://<trust domain>/service/<name>`. The one place that path
    /// is spelled.
    pub fn service(trust_domain: &TrustDomain, name: &str) -> Result<Self, SpiffeIdError> {
        Self::from_parts(trust_domain, &format!("{SERVICE_PREFIX}{name}"))
    }

    /// Whether this is Steward service `name`'s ID in `trust_domain`.
    pub fn is_service(&self, trust_domain: &TrustDomain, name: &str) -> bool {
        &self.trust_domain == trust_domain && self.path.strip_prefix(SERVICE_PREFIX) == Some(name)
    }

    /// The trust domain the ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this ID is `prefix` itself or lies below it segment-wise:
    /// `spiffe://td/service` covers `spiffe://td/service/audit` but not
    /// `spiffe://td/services`.
    pub fn is_under(&self, prefix: &SpiffeId) -> bool {
        self.trust_domain == prefix.trust_domain
            && (prefix.path.is_empty()
                || self.path == prefix.path
                || (self.path.starts_with(&prefix.path)
                    && self.path.as_bytes().get(prefix.path.len()) == Some(&b'/')))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain.0, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str, offset: usize) -> Result<(), SpiffeIdError> {
    for (i, c) in td.char_indices() {
        if !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_') {
            return Err(SpiffeIdError::BadTrustDomainChar(c, offset + i));
        }
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    Ok(())
}

fn validate_path(path: &str, offset: usize) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(body) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::NoLeadingSlash);
    };
    let mut pos = offset + 1;
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len() - 1;
    for (n, segment) in segments.into_iter().enumerate() {
        if segment.is_empty() {
            return Err(if n == last {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        for (i, c) in segment.char_indices() {
            if !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_') {
                return Err(SpiffeIdError::BadPathSegmentChar(c, pos + i));
            }
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        pos += segment.len() + 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_service_ids_and_trust_domain_ids() {
        let id = SpiffeId::parse("spiffe://steward.local/service/audit").unwrap();
        assert_eq!(id.trust_domain().name(), "steward.local");
        assert_eq!(id.path(), "/service/audit");
        let td = SpiffeId::parse("spiffe://steward.local").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td, id.trust_domain().id());
    }

    #[test]
    fn a_service_id_is_spelled_and_recognised_in_one_place() {
        let td = TrustDomain::parse("steward.local").unwrap();
        let broker = SpiffeId::service(&td, "credential-broker").unwrap();
        assert_eq!(
            broker.to_string(),
            "spiffe://steward.local/service/credential-broker"
        );
        assert!(broker.is_service(&td, "credential-broker"));
        assert!(!broker.is_service(&td, "credential"));
        assert!(!broker.is_service(
            &TrustDomain::parse("other.local").unwrap(),
            "credential-broker"
        ));
        let nested = SpiffeId::parse("spiffe://steward.local/service/credential-broker/x").unwrap();
        assert!(!nested.is_service(&td, "credential-broker"));
        let workload =
            SpiffeId::parse("spiffe://steward.local/workload/credential-broker").unwrap();
        assert!(!workload.is_service(&td, "credential-broker"));
        assert!(SpiffeId::service(&td, "bad name").is_err());
    }

    #[test]
    fn rejects_every_invalid_form_the_spec_lists() {
        use SpiffeIdError::*;
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", Empty),
            ("http://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:/example.org/a", WrongScheme),
            ("example.org/a", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar('E', 9)),
            ("spiffe://user@example.org/a", BadTrustDomainChar('@', 13)),
            ("spiffe://example.org:8443/a", BadTrustDomainChar(':', 20)),
            ("spiffe://exa%41mple.org", BadTrustDomainChar('%', 12)),
            ("spiffe://example.org/a?x=1", BadPathSegmentChar('?', 22)),
            ("spiffe://example.org/a#frag", BadPathSegmentChar('#', 22)),
            ("spiffe://example.org/a%20b", BadPathSegmentChar('%', 22)),
            ("spiffe://example.org/a b", BadPathSegmentChar(' ', 22)),
            ("spiffe://example.org/é", BadPathSegmentChar('é', 21)),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org//a", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/.", DotSegment),
            ("spiffe://example.org/a/../b", DotSegment),
            ("spiffe://example.org/./a", DotSegment),
        ];
        for (input, want) in cases {
            assert_eq!(
                SpiffeId::parse(input).as_ref(),
                Err(want),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn enforces_length_limits() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        assert!(TrustDomain::parse(&td).is_ok());
        let long_td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            TrustDomain::parse(&long_td),
            Err(SpiffeIdError::TrustDomainTooLong)
        );
        let base = "spiffe://example.org/";
        let fits = format!("{base}{}", "a".repeat(MAX_SPIFFE_ID_LEN - base.len()));
        assert!(SpiffeId::parse(&fits).is_ok());
        let too_long = format!("{fits}a");
        assert_eq!(SpiffeId::parse(&too_long), Err(SpiffeIdError::TooLong));
    }

    #[test]
    fn trust_domain_accepts_a_name_or_a_trust_domain_id() {
        assert_eq!(TrustDomain::parse("spiffe://td.x").unwrap().name(), "td.x");
        assert_eq!(TrustDomain::parse("td.x").unwrap().name(), "td.x");
        assert!(TrustDomain::parse("spiffe://td.x/a").is_err());
        assert!(TrustDomain::parse("TD").is_err());
        assert!(TrustDomain::parse("").is_err());
    }

    #[test]
    fn prefix_matching_is_segment_wise() {
        let p = SpiffeId::parse("spiffe://td/service").unwrap();
        let under = SpiffeId::parse("spiffe://td/service/audit").unwrap();
        let sibling = SpiffeId::parse("spiffe://td/services").unwrap();
        let other_td = SpiffeId::parse("spiffe://other/service/audit").unwrap();
        assert!(under.is_under(&p));
        assert!(p.is_under(&p));
        assert!(!sibling.is_under(&p));
        assert!(!other_td.is_under(&p));
        assert!(under.is_under(&p.trust_domain().id()));
    }

    fn trust_domain_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9._-]{1,64}"
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-zA-Z0-9._-]{1,16}", 0..6).prop_map(|segments| {
            segments
                .into_iter()
                .filter(|s| s != "." && s != "..")
                .map(|s| format!("/{s}"))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_valid_id_round_trips(td in trust_domain_strategy(), path in path_strategy()) {
            let text = format!("spiffe://{td}{path}");
            let id = SpiffeId::parse(&text).unwrap();
            prop_assert_eq!(id.to_string(), text.clone());
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
            let rebuilt = SpiffeId::from_parts(id.trust_domain(), id.path()).unwrap();
            prop_assert_eq!(rebuilt, id);
        }

        #[test]
        fn a_forbidden_character_anywhere_is_rejected(
            td in trust_domain_strategy(),
            path in path_strategy(),
            bad in prop::sample::select(vec!['?', '#', '%', ':', '@', ' ', '\\', '\u{e9}', '*']),
            at in any::<prop::sample::Index>(),
        ) {
            let text = format!("spiffe://{td}{path}");
            let body_start = "spiffe://".len();
            let pos = body_start + at.index(text.len() - body_start);
            let mut broken = text.clone();
            broken.insert(pos, bad);
            prop_assert!(SpiffeId::parse(&broken).is_err(), "accepted {}", broken);
        }

        #[test]
        fn uppercase_in_the_trust_domain_is_rejected(td in "[a-z]{0,8}[A-Z][a-z]{0,8}") {
            let rejected = matches!(
                SpiffeId::parse(&format!("spiffe://{td}/a")),
                Err(SpiffeIdError::BadTrustDomainChar(_, _))
            );
            prop_assert!(rejected);
        }

        #[test]
        fn parsing_arbitrary_input_never_panics(input in ".{0,64}") {
            let _ = SpiffeId::parse(&input);
            let _ = SpiffeId::parse(&format!("spiffe://{input}"));
            let _ = TrustDomain::parse(&input);
        }
    }
}
