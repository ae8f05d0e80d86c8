//! Evidence records, validated, and their canonical leaf encoding
//! (`docs/evidence-encoding.md`).
//!
//! The leaf is JSON with no insignificant whitespace, object keys in
//! ascending order, and only strings, arrays of strings and objects as values.
//! For such documents this is exactly the JSON Canonicalization Scheme
//! (RFC 8785), so a verifier in any language can reproduce the bytes from
//! the fields the API returns.

use std::collections::BTreeMap;

use serde_json::Value;
use steward_identity::SpiffeId;
use time::OffsetDateTime;
use uuid::Uuid;

/// The `schema` member of every leaf.
pub const SCHEMA: &str = "steward.evidence.v1";

/// Limits on a record's fields.
pub const MAX_ATTRIBUTES: usize = 32;
pub const MAX_ATTRIBUTE_KEY: usize = 64;
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;
pub const MAX_FIELD: usize = 256;
pub const MAX_REASON: usize = 1024;
pub const MAX_IDS: usize = 64;

/// A field that failed validation, named as in the protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The policy decision's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    NotEvaluated,
    Allow,
    Deny,
    ApprovalRequired,
}

impl Effect {
    /// The protobuf enum value name, as written in the leaf.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotEvaluated => "EFFECT_NOT_EVALUATED",
            Self::Allow => "EFFECT_ALLOW",
            Self::Deny => "EFFECT_DENY",
            Self::ApprovalRequired => "EFFECT_APPROVAL_REQUIRED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::NotEvaluated,
            Self::Allow,
            Self::Deny,
            Self::ApprovalRequired,
        ]
        .into_iter()
        .find(|e| e.as_str() == name)
    }
}

/// Whether the action succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    Succeeded,
    Failed,
}

impl OutcomeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "OUTCOME_STATUS_SUCCEEDED",
            Self::Failed => "OUTCOME_STATUS_FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub workload_spiffe_id: String,
    pub human_subject: String,
    pub human_issuer: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Target {
    pub nhi_id: String,
    pub nhi_kind: String,
    pub lease_id: String,
    pub credential_serial: String,
    pub credential_fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub policy_set_version: String,
    pub effect: Effect,
    pub policy_ids: Vec<String>,
    pub approval_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub reason: String,
}

/// The trace of the request that produced a record: W3C trace context
/// ids, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: String,
    pub span_id: String,
}

impl Trace {
    /// The current span's trace, if tracing is on.
    pub fn current() -> Option<Self> {
        steward_telemetry::grpc::current_ids().map(|(trace_id, span_id)| Self { trace_id, span_id })
    }
}

/// One evidence record. Construct it, then [`EvidenceRecord::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceRecord {
    pub record_id: Uuid,
    pub time: OffsetDateTime,
    pub actor: Actor,
    pub action: String,
    pub target: Target,
    pub decision: Decision,
    pub outcome: Outcome,
    pub incident_ref: String,
    pub correlation_id: String,
    pub emitting_service: String,
    pub attributes: BTreeMap<String, String>,
    /// Where tracing was on: the request's trace.
    pub trace: Option<Trace>,
}

/// Cuts `text` to at most `max` bytes on a character boundary: how
/// emitters fit free text (reasons, annotations) into a record's limits.
pub fn truncate_utf8(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl EvidenceRecord {
    /// A record of `action` by `workload_spiffe_id`, emitted by
    /// `emitting_service` now, with a fresh UUIDv7, no target, no policy
    /// decision, a succeeded outcome, no attributes and the current span's
    /// trace: emitters fill in what applies.
    pub fn new(workload_spiffe_id: &str, action: &str, emitting_service: &str) -> Self {
        Self {
            record_id: Uuid::now_v7(),
            time: OffsetDateTime::now_utc(),
            actor: Actor {
                workload_spiffe_id: workload_spiffe_id.to_owned(),
                human_subject: String::new(),
                human_issuer: String::new(),
            },
            action: action.to_owned(),
            target: Target::default(),
            decision: Decision {
                policy_set_version: String::new(),
                effect: Effect::NotEvaluated,
                policy_ids: Vec::new(),
                approval_ids: Vec::new(),
            },
            outcome: Outcome {
                status: OutcomeStatus::Succeeded,
                reason: String::new(),
            },
            incident_ref: String::new(),
            correlation_id: String::new(),
            emitting_service: emitting_service.to_owned(),
            attributes: BTreeMap::new(),
            trace: Trace::current(),
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.record_id.get_version_num() != 7 {
            return Err(bad("record.record_id", "must be a UUIDv7"));
        }
        let year = self.time.year();
        if !(1970..=9999).contains(&year) {
            return Err(bad("record.time", "must lie between 1970 and 9999"));
        }
        SpiffeId::parse(&self.actor.workload_spiffe_id)
            .map_err(|e| bad("record.actor.workload_spiffe_id", e.to_string()))?;
        if self.actor.human_subject.is_empty() != self.actor.human_issuer.is_empty() {
            return Err(bad(
                "record.actor.human_issuer",
                "human_subject and human_issuer go together",
            ));
        }
        limit(
            "record.actor.human_subject",
            &self.actor.human_subject,
            MAX_FIELD,
        )?;
        limit(
            "record.actor.human_issuer",
            &self.actor.human_issuer,
            MAX_FIELD,
        )?;
        if self.action.is_empty() {
            return Err(bad("record.action", "is required"));
        }
        limit("record.action", &self.action, 128)?;
        if !self
            .action
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b':'))
        {
            return Err(bad(
                "record.action",
                "may contain only a-z, 0-9 and . _ - :",
            ));
        }
        let t = &self.target;
        limit("record.target.nhi_id", &t.nhi_id, MAX_FIELD)?;
        limit("record.target.nhi_kind", &t.nhi_kind, MAX_FIELD)?;
        limit("record.target.lease_id", &t.lease_id, MAX_FIELD)?;
        limit(
            "record.target.credential_serial",
            &t.credential_serial,
            MAX_FIELD,
        )?;
        limit(
            "record.target.credential_fingerprint",
            &t.credential_fingerprint,
            MAX_FIELD,
        )?;
        let d = &self.decision;
        limit(
            "record.decision.policy_set_version",
            &d.policy_set_version,
            MAX_FIELD,
        )?;
        ids("record.decision.policy_ids", &d.policy_ids)?;
        ids("record.decision.approval_ids", &d.approval_ids)?;
        limit("record.outcome.reason", &self.outcome.reason, MAX_REASON)?;
        if self.outcome.status == OutcomeStatus::Failed && self.outcome.reason.is_empty() {
            return Err(bad(
                "record.outcome.reason",
                "is required when the outcome is FAILED",
            ));
        }
        limit("record.incident_ref", &self.incident_ref, MAX_FIELD)?;
        limit("record.correlation_id", &self.correlation_id, MAX_FIELD)?;
        limit("record.emitting_service", &self.emitting_service, MAX_FIELD)?;
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(bad(
                "record.attributes",
                format!("at most {MAX_ATTRIBUTES} entries"),
            ));
        }
        for (key, value) in &self.attributes {
            let field = format!("record.attributes[{key:?}]");
            if key.is_empty()
                || key.len() > MAX_ATTRIBUTE_KEY
                || !key
                    .bytes()
                    .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-'))
            {
                return Err(bad(
                    field,
                    format!("keys are 1 to {MAX_ATTRIBUTE_KEY} characters of a-z, 0-9 and . _ -"),
                ));
            }
            limit(&field, value, MAX_ATTRIBUTE_VALUE)?;
        }
        if let Some(trace) = &self.trace {
            hex_id("record.trace.trace_id", &trace.trace_id, 32)?;
            hex_id("record.trace.span_id", &trace.span_id, 16)?;
        }
        Ok(())
    }

    /// The canonical leaf bytes: this record as appended by `appended_by`.
    /// Written directly, members in ascending order, escaping as RFC 8785.
    pub fn canonical_leaf(&self, appended_by: &str) -> Vec<u8> {
        let mut w = Canonical(String::with_capacity(768));
        w.0.push('{');
        w.member("action", &self.action);
        w.0.push_str(",\"actor\":{");
        w.member("human_issuer", &self.actor.human_issuer);
        w.0.push(',');
        w.member("human_subject", &self.actor.human_subject);
        w.0.push(',');
        w.member("workload_spiffe_id", &self.actor.workload_spiffe_id);
        w.0.push_str("},");
        w.member("appended_by", appended_by);
        w.0.push_str(",\"attributes\":{");
        for (i, (key, value)) in self.attributes.iter().enumerate() {
            if i > 0 {
                w.0.push(',');
            }
            w.member(key, value);
        }
        w.0.push_str("},");
        w.member("correlation_id", &self.correlation_id);
        w.0.push_str(",\"decision\":{");
        w.list("approval_ids", &self.decision.approval_ids);
        w.0.push(',');
        w.member("effect", self.decision.effect.as_str());
        w.0.push(',');
        w.list("policy_ids", &self.decision.policy_ids);
        w.0.push(',');
        w.member("policy_set_version", &self.decision.policy_set_version);
        w.0.push_str("},");
        w.member("emitting_service", &self.emitting_service);
        w.0.push(',');
        w.member("incident_ref", &self.incident_ref);
        w.0.push_str(",\"outcome\":{");
        w.member("reason", &self.outcome.reason);
        w.0.push(',');
        w.member("status", self.outcome.status.as_str());
        w.0.push_str("},");
        w.member("record_id", &self.record_id.hyphenated().to_string());
        w.0.push(',');
        w.member("schema", SCHEMA);
        w.0.push_str(",\"target\":{");
        w.member(
            "credential_fingerprint",
            &self.target.credential_fingerprint,
        );
        w.0.push(',');
        w.member("credential_serial", &self.target.credential_serial);
        w.0.push(',');
        w.member("lease_id", &self.target.lease_id);
        w.0.push(',');
        w.member("nhi_id", &self.target.nhi_id);
        w.0.push(',');
        w.member("nhi_kind", &self.target.nhi_kind);
        w.0.push_str("},");
        w.member("time", &format_time(self.time));
        // Only where the emitter knew the trace, so a leaf written before
        // traces were recorded reads (and hashes) as it always did.
        if let Some(trace) = &self.trace {
            w.0.push_str(",\"trace\":{");
            w.member("span_id", &trace.span_id);
            w.0.push(',');
            w.member("trace_id", &trace.trace_id);
            w.0.push('}');
        }
        w.0.push('}');
        w.0.into_bytes()
    }

    /// Reads a leaf back into the record and the `appended_by` ID.
    pub fn from_canonical_leaf(leaf: &[u8]) -> Result<(Self, String), FieldError> {
        let v: Value = serde_json::from_slice(leaf).map_err(|e| bad("leaf", e.to_string()))?;
        let s = |path: &[&str]| -> Result<String, FieldError> {
            let mut cur = &v;
            for p in path {
                cur = cur.get(p).ok_or_else(|| bad(path.join("."), "missing"))?;
            }
            cur.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad(path.join("."), "not a string"))
        };
        let list = |path: &[&str]| -> Result<Vec<String>, FieldError> {
            let mut cur = &v;
            for p in path {
                cur = cur.get(p).ok_or_else(|| bad(path.join("."), "missing"))?;
            }
            cur.as_array()
                .ok_or_else(|| bad(path.join("."), "not an array"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| bad(path.join("."), "not a string"))
                })
                .collect()
        };
        if s(&["schema"])? != SCHEMA {
            return Err(bad("schema", "unknown schema"));
        }
        let time = OffsetDateTime::parse(
            &s(&["time"])?,
            &time::format_description::well_known::Rfc3339,
        )
        .map_err(|e| bad("time", e.to_string()))?;
        let effect = Effect::parse(&s(&["decision", "effect"])?)
            .ok_or_else(|| bad("decision.effect", "unknown"))?;
        let status = OutcomeStatus::parse(&s(&["outcome", "status"])?)
            .ok_or_else(|| bad("outcome.status", "unknown"))?;
        let attributes = v
            .get("attributes")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("attributes", "missing"))?
            .iter()
            .map(|(k, x)| {
                Ok((
                    k.clone(),
                    x.as_str()
                        .ok_or_else(|| bad("attributes", "not a string"))?
                        .to_owned(),
                ))
            })
            .collect::<Result<_, FieldError>>()?;
        let record = Self {
            record_id: Uuid::parse_str(&s(&["record_id"])?)
                .map_err(|e| bad("record_id", e.to_string()))?,
            time,
            actor: Actor {
                workload_spiffe_id: s(&["actor", "workload_spiffe_id"])?,
                human_subject: s(&["actor", "human_subject"])?,
                human_issuer: s(&["actor", "human_issuer"])?,
            },
            action: s(&["action"])?,
            target: Target {
                nhi_id: s(&["target", "nhi_id"])?,
                nhi_kind: s(&["target", "nhi_kind"])?,
                lease_id: s(&["target", "lease_id"])?,
                credential_serial: s(&["target", "credential_serial"])?,
                credential_fingerprint: s(&["target", "credential_fingerprint"])?,
            },
            decision: Decision {
                policy_set_version: s(&["decision", "policy_set_version"])?,
                effect,
                policy_ids: list(&["decision", "policy_ids"])?,
                approval_ids: list(&["decision", "approval_ids"])?,
            },
            outcome: Outcome {
                status,
                reason: s(&["outcome", "reason"])?,
            },
            incident_ref: s(&["incident_ref"])?,
            correlation_id: s(&["correlation_id"])?,
            emitting_service: s(&["emitting_service"])?,
            attributes,
            trace: match v.get("trace") {
                None => None,
                Some(_) => Some(Trace {
                    trace_id: s(&["trace", "trace_id"])?,
                    span_id: s(&["trace", "span_id"])?,
                }),
            },
        };
        Ok((record, s(&["appended_by"])?))
    }
}

/// A canonical JSON writer for the leaf's few shapes.
struct Canonical(String);

impl Canonical {
    fn string(&mut self, value: &str) {
        use std::fmt::Write;
        self.0.push('"');
        for c in value.chars() {
            match c {
                '"' => self.0.push_str("\\\""),
                '\\' => self.0.push_str("\\\\"),
                '\u{08}' => self.0.push_str("\\b"),
                '\u{0c}' => self.0.push_str("\\f"),
                '\n' => self.0.push_str("\\n"),
                '\r' => self.0.push_str("\\r"),
                '\t' => self.0.push_str("\\t"),
                c if c < '\u{20}' => {
                    let _ = write!(self.0, "\\u{:04x}", c as u32);
                }
                c => self.0.push(c),
            }
        }
        self.0.push('"');
    }

    fn member(&mut self, name: &str, value: &str) {
        self.string(name);
        self.0.push(':');
        self.string(value);
    }

    fn list(&mut self, name: &str, values: &[String]) {
        self.string(name);
        self.0.push_str(":[");
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            self.string(value);
        }
        self.0.push(']');
    }
}

/// RFC 3339 in UTC with exactly nine fractional digits.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

fn limit(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(bad(field, format!("at most {max} bytes")));
    }
    Ok(())
}

/// A W3C trace or span id: `digits` lowercase hex digits, not all zero.
fn hex_id(field: &str, value: &str, digits: usize) -> Result<(), FieldError> {
    let hex = value.len() == digits
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || value.bytes().all(|b| b == b'0') {
        return Err(bad(
            field,
            format!("must be {digits} lowercase hex digits, not all zero"),
        ));
    }
    Ok(())
}

fn ids(field: &str, values: &[String]) -> Result<(), FieldError> {
    if values.len() > MAX_IDS {
        return Err(bad(field, format!("at most {MAX_IDS} entries")));
    }
    for (i, id) in values.iter().enumerate() {
        if id.is_empty() {
            return Err(bad(format!("{field}[{i}]"), "must not be empty"));
        }
        limit(&format!("{field}[{i}]"), id, MAX_FIELD)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> EvidenceRecord {
        EvidenceRecord {
            record_id: Uuid::parse_str("01936c1e-7d2a-7c3b-8f00-000000000001").unwrap(),
            time: OffsetDateTime::from_unix_timestamp_nanos(1_763_790_000_123_456_789).unwrap(),
            actor: Actor {
                workload_spiffe_id: "spiffe://steward.local/service/soar".into(),
                human_subject: "alice".into(),
                human_issuer: "https://idp.example".into(),
            },
            action: "credential.rotate".into(),
            target: Target {
                nhi_id: "nhi-1".into(),
                nhi_kind: "API_KEY".into(),
                ..Target::default()
            },
            decision: Decision {
                policy_set_version: "v3".into(),
                effect: Effect::Allow,
                policy_ids: vec!["p1".into()],
                approval_ids: vec![],
            },
            outcome: Outcome {
                status: OutcomeStatus::Succeeded,
                reason: String::new(),
            },
            incident_ref: "INC-42".into(),
            correlation_id: "corr-1".into(),
            emitting_service: "credential-broker".into(),
            attributes: BTreeMap::from([("region".into(), "eu \"west\"\n".into())]),
            trace: None,
        }
    }

    #[test]
    fn the_leaf_is_the_documented_canonical_json() {
        let leaf = String::from_utf8(
            sample().canonical_leaf("spiffe://steward.local/service/credential-broker"),
        )
        .unwrap();
        let expected = concat!(
            r#"{"action":"credential.rotate","#,
            r#""actor":{"human_issuer":"https://idp.example","human_subject":"alice","workload_spiffe_id":"spiffe://steward.local/service/soar"},"#,
            r#""appended_by":"spiffe://steward.local/service/credential-broker","#,
            r#""attributes":{"region":"eu \"west\"\n"},"#,
            r#""correlation_id":"corr-1","#,
            r#""decision":{"approval_ids":[],"effect":"EFFECT_ALLOW","policy_ids":["p1"],"policy_set_version":"v3"},"#,
            r#""emitting_service":"credential-broker","incident_ref":"INC-42","#,
            r#""outcome":{"reason":"","status":"OUTCOME_STATUS_SUCCEEDED"},"#,
            r#""record_id":"01936c1e-7d2a-7c3b-8f00-000000000001","schema":"steward.evidence.v1","#,
            r#""target":{"credential_fingerprint":"","credential_serial":"","lease_id":"","nhi_id":"nhi-1","nhi_kind":"API_KEY"},"#,
            r#""time":"2025-11-22T05:40:00.123456789Z"}"#,
        );
        assert_eq!(leaf, expected);
    }

    #[test]
    fn a_trace_is_the_last_member_and_reads_back() {
        let mut record = sample();
        record.trace = Some(Trace {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
        });
        record.validate().unwrap();
        let leaf = record.canonical_leaf("spiffe://x/y");
        let text = String::from_utf8(leaf.clone()).unwrap();
        assert!(
            text.ends_with(r#""time":"2025-11-22T05:40:00.123456789Z","trace":{"span_id":"00f067aa0ba902b7","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736"}}"#),
            "{text}"
        );
        let (back, _) = EvidenceRecord::from_canonical_leaf(&leaf).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn a_trace_that_is_not_w3c_ids_is_refused_by_name() {
        for (trace_id, span_id, field) in [
            (
                "4BF92F3577B34DA6A3CE929D0E0E4736",
                "00f067aa0ba902b7",
                "record.trace.trace_id",
            ),
            (
                "00000000000000000000000000000000",
                "00f067aa0ba902b7",
                "record.trace.trace_id",
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "00f067aa0ba902",
                "record.trace.span_id",
            ),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "0000000000000000",
                "record.trace.span_id",
            ),
        ] {
            let mut record = sample();
            record.trace = Some(Trace {
                trace_id: trace_id.into(),
                span_id: span_id.into(),
            });
            assert_eq!(record.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn escaping_matches_a_json_serializer_for_every_control_character() {
        let mut record = sample();
        let tricky: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/é\u{7f}😀".chars())
            .collect();
        record.incident_ref = tricky.clone();
        let leaf = record.canonical_leaf("spiffe://x/y");
        let parsed: Value = serde_json::from_slice(&leaf).unwrap();
        assert_eq!(parsed["incident_ref"], tricky.as_str());
        let expected = serde_json::to_string(&tricky).unwrap();
        assert!(
            String::from_utf8(leaf)
                .unwrap()
                .contains(&format!("\"incident_ref\":{expected}"))
        );
    }

    #[test]
    fn a_leaf_reads_back_into_the_same_record() {
        let record = sample();
        let leaf = record.canonical_leaf("spiffe://x/y");
        let (back, by) = EvidenceRecord::from_canonical_leaf(&leaf).unwrap();
        assert_eq!(back, record);
        assert_eq!(by, "spiffe://x/y");
        assert_eq!(back.canonical_leaf(&by), leaf);
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut r = sample();
        r.record_id = Uuid::new_v4();
        assert_eq!(r.validate().unwrap_err().field, "record.record_id");
        let mut r = sample();
        r.actor.workload_spiffe_id = "spiffe://Bad/x".into();
        assert_eq!(
            r.validate().unwrap_err().field,
            "record.actor.workload_spiffe_id"
        );
        let mut r = sample();
        r.action = "Rotate Now".into();
        assert_eq!(r.validate().unwrap_err().field, "record.action");
        let mut r = sample();
        r.attributes
            .insert("x".into(), "v".repeat(MAX_ATTRIBUTE_VALUE + 1));
        assert_eq!(r.validate().unwrap_err().field, "record.attributes[\"x\"]");
        let mut r = sample();
        r.outcome = Outcome {
            status: OutcomeStatus::Failed,
            reason: String::new(),
        };
        assert_eq!(r.validate().unwrap_err().field, "record.outcome.reason");
        assert!(sample().validate().is_ok());
    }
}
