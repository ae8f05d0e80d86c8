//! Inventory's domain: validated types, the lifecycle state machine, risk
//! assessment and selectors. Nothing here knows about protobuf or SQL.

/// The lifecycle state machine, shared with every service.
pub mod lifecycle {
    pub use steward_vocab::{LIVE, LifecycleState as State};
}
pub mod risk;
pub mod selector;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use steward_db::StorageError;
pub use steward_evidence::record::FieldError;
use steward_identity::SpiffeId;
use tonic::Code;
use uuid::Uuid;

pub use lifecycle::State;

/// Length limits, in bytes.
pub const MAX_NAME: usize = 256;
pub const MAX_TEXT: usize = 2048;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY: usize = 63;
pub const MAX_LABEL_VALUE: usize = 256;

/// Nanoseconds since the Unix epoch: every stored time.
pub type Nanos = i64;

pub const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SECOND;
pub use steward_evidence::clock::NANOS_PER_SECOND;

pub use steward_evidence::clock::now_ns;

/// Why an inventory operation did not happen. The server maps each variant
/// to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Optimistic concurrency: the row changed since the caller read it.
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A fault of the service's own, not of the request or the store.
    #[error("{0}")]
    Internal(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// The store cannot do its work for a reason of its own: UNAVAILABLE.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::Storage(StorageError::unavailable(detail.into()))
    }
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        Self::Storage(error.into())
    }
}

impl From<steward_outbox::OutboxError> for Error {
    fn from(error: steward_outbox::OutboxError) -> Self {
        match error {
            steward_outbox::OutboxError::Storage(e) => e.into(),
            other => Self::Storage(StorageError::unavailable(other)),
        }
    }
}

impl steward_errors::ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::Internal(_) => Code::Internal,
            Self::Storage(e) => e.code(),
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.field),
            _ => None,
        }
    }
}

pub fn bad(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

pub(crate) use steward_vocab::names;

names!(
    /// What sort of NHI it is.
    Kind {
        ServiceAccount => "service_account",
        ApiKey => "api_key",
        OauthApp => "oauth_app",
        Certificate => "certificate",
        WorkloadIdentity => "workload_identity",
        AiAgent => "ai_agent",
        Connector => "connector",
        WebhookSecret => "webhook_secret",
        SshKey => "ssh_key",
        Other => "other",
    }
);

names!(
    /// Who drives it: machines only, or people at a keyboard too.
    Classification {
        MachineToMachine => "machine_to_machine",
        Interactive => "interactive",
    }
);

names!(
    OwnerKind {
        Person => "person",
        Team => "team",
    }
);

/// A person or team accountable for an NHI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
    pub contact: String,
}

impl Owner {
    fn validate(&self, field: &str) -> Result<(), FieldError> {
        required(&format!("{field}.name"), &self.name, MAX_NAME)?;
        optional(&format!("{field}.contact"), &self.contact, MAX_NAME)?;
        Ok(())
    }
}

/// The label naming who holds a credential (an IAM user's ARN, a GCP
/// service account's email, an app's id): the multiple-active-keys report
/// groups by it.
pub const PRINCIPAL_LABEL: &str = "steward/principal";

/// Everything a caller states about an NHI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySpec {
    pub kind: Kind,
    pub display_name: String,
    pub source_system: String,
    pub external_id: String,
    pub environment: String,
    pub business_service: String,
    pub workload: String,
    pub classification: Classification,
    pub purpose: String,
    pub business_owner: Option<Owner>,
    pub technical_owner: Option<Owner>,
    pub unowned: bool,
    pub spiffe_id: Option<SpiffeId>,
    pub labels: BTreeMap<String, String>,
    pub expires_at: Option<Nanos>,
    pub last_rotated_at: Option<Nanos>,
    pub last_used_at: Option<Nanos>,
    /// When the source system created the credential, where it says.
    pub source_created_at: Option<Nanos>,
}

/// The IdentitySpec fields an update may name.
pub const UPDATABLE: &[&str] = &[
    "display_name",
    "environment",
    "business_service",
    "workload",
    "classification",
    "purpose",
    "business_owner",
    "technical_owner",
    "unowned",
    "spiffe_id",
    "labels",
    "expire_time",
    "last_rotate_time",
    "last_use_time",
    "source_create_time",
];

impl IdentitySpec {
    /// A spec with only its identifying fields set: machine-to-machine, no
    /// owners, no labels, no times. Callers fill in the rest.
    pub fn new(kind: Kind, source_system: &str, external_id: &str) -> Self {
        Self {
            kind,
            display_name: external_id.to_owned(),
            source_system: source_system.to_owned(),
            external_id: external_id.to_owned(),
            environment: String::new(),
            business_service: String::new(),
            workload: String::new(),
            classification: Classification::MachineToMachine,
            purpose: String::new(),
            business_owner: None,
            technical_owner: None,
            unowned: false,
            spiffe_id: None,
            labels: BTreeMap::new(),
            expires_at: None,
            last_rotated_at: None,
            last_used_at: None,
            source_created_at: None,
        }
    }

    /// Clears `unowned` once both owners and a purpose are known: an
    /// identity filed for triage leaves the orphaned report when someone
    /// (an update, a later import) says who owns it and why it exists.
    /// Returns whether it changed.
    pub fn settle_triage(&mut self) -> bool {
        let settled = self.unowned
            && self.business_owner.is_some()
            && self.technical_owner.is_some()
            && !self.purpose.trim().is_empty();
        if settled {
            self.unowned = false;
        }
        settled
    }

    /// Checks every field. Owners and purpose are required unless the NHI
    /// is filed as `unowned` for triage. Field names are IdentitySpec's.
    pub fn validate(&self) -> Result<(), FieldError> {
        required("display_name", &self.display_name, MAX_NAME)?;
        required("source_system", &self.source_system, MAX_NAME)?;
        required("external_id", &self.external_id, MAX_NAME)?;
        optional("environment", &self.environment, MAX_NAME)?;
        optional("business_service", &self.business_service, MAX_NAME)?;
        optional("workload", &self.workload, MAX_NAME)?;
        optional("purpose", &self.purpose, MAX_TEXT)?;
        if !self.unowned {
            if self.purpose.trim().is_empty() {
                return Err(bad(
                    "purpose",
                    "is required (set unowned to file the identity for triage)",
                ));
            }
            if self.business_owner.is_none() {
                return Err(bad(
                    "business_owner",
                    "is required (set unowned to file the identity for triage)",
                ));
            }
            if self.technical_owner.is_none() {
                return Err(bad(
                    "technical_owner",
                    "is required (set unowned to file the identity for triage)",
                ));
            }
        }
        if let Some(owner) = &self.business_owner {
            owner.validate("business_owner")?;
        }
        if let Some(owner) = &self.technical_owner {
            owner.validate("technical_owner")?;
        }
        validate_labels("labels", &self.labels)?;
        for (field, time) in [
            ("expire_time", self.expires_at),
            ("last_rotate_time", self.last_rotated_at),
            ("last_use_time", self.last_used_at),
            ("source_create_time", self.source_created_at),
        ] {
            if time.is_some_and(|t| t <= 0) {
                return Err(bad(field, "must be after 1970-01-01"));
            }
        }
        let now = now_ns();
        for (field, time) in [
            ("last_rotate_time", self.last_rotated_at),
            ("last_use_time", self.last_used_at),
            ("source_create_time", self.source_created_at),
        ] {
            if time.is_some_and(|t| t > now + 300 * NANOS_PER_SECOND) {
                return Err(bad(field, "is in the future"));
            }
        }
        Ok(())
    }
}

/// A stored NHI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: Uuid,
    pub spec: IdentitySpec,
    pub state: State,
    pub created_at: Nanos,
    pub updated_at: Nanos,
    pub state_changed_at: Nanos,
    pub version: i64,
    /// The part of the risk score that comes from open signals, and why.
    pub signal_score: u32,
    pub signal_summary: String,
    /// Kept by the store: the oldest activity of any granted entitlement,
    /// and how many distinct consumers were seen using the identity.
    pub entitlement_idle_since: Option<Nanos>,
    pub consumer_count: i64,
}

impl Identity {
    pub fn owner_names(&self) -> Vec<String> {
        [&self.spec.business_owner, &self.spec.technical_owner]
            .into_iter()
            .flatten()
            .map(|o| o.name.clone())
            .collect()
    }
}

/// Narrows a list; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<Kind>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<State>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// `(key, Some(value))` or `(key, None)` for "has the label".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<(String, Option<String>)>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub business_service: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environment: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_system: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

impl Filter {
    /// Parses the `label` filter: `key` or `key=value`.
    pub fn parse_label(text: &str) -> Result<Option<(String, Option<String>)>, FieldError> {
        if text.is_empty() {
            return Ok(None);
        }
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (text, None),
        };
        validate_label_key("label", key)?;
        if let Some(v) = &value {
            optional("label", v, MAX_LABEL_VALUE)?;
        }
        Ok(Some((key.to_owned(), value)))
    }

    pub fn validate(&self) -> Result<(), FieldError> {
        optional("owner", &self.owner, MAX_NAME)?;
        optional("business_service", &self.business_service, MAX_NAME)?;
        optional("environment", &self.environment, MAX_NAME)?;
        optional("source_system", &self.source_system, MAX_NAME)?;
        optional("text", &self.text, MAX_NAME)?;
        Ok(())
    }
}

/// What authority allowed, for a change's evidence record.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub decision_id: String,
    pub decision: steward_evidence::record::Decision,
}

/// Who changed something, and in service of what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeContext {
    /// The verified SPIFFE ID of the caller.
    pub actor: String,
    pub incident_ref: String,
    pub correlation_id: String,
}

impl ChangeContext {
    pub fn validate(&self) -> Result<(), FieldError> {
        optional("context.incident_ref", &self.incident_ref, MAX_NAME)?;
        optional("context.correlation_id", &self.correlation_id, MAX_NAME)?;
        Ok(())
    }
}

/// A non-empty string of at most `max` bytes with no control characters.
pub fn required(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(bad(field, "is required"));
    }
    optional(field, value, max)
}

/// A string of at most `max` bytes with no control characters.
pub fn optional(field: &str, value: &str, max: usize) -> Result<(), FieldError> {
    if value.len() > max {
        return Err(bad(field, format!("is longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(field, "contains control characters"));
    }
    Ok(())
}

pub fn validate_label_key(field: &str, key: &str) -> Result<(), FieldError> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return Err(bad(
            field,
            format!("label keys are 1 to {MAX_LABEL_KEY} bytes"),
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(bad(
            field,
            format!(
                "label key {} may contain only letters, digits and . _ - /",
                steward_errors::shown(key)
            ),
        ));
    }
    Ok(())
}

pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), FieldError> {
    if labels.len() > MAX_LABELS {
        return Err(bad(field, format!("at most {MAX_LABELS} labels")));
    }
    for (key, value) in labels {
        validate_label_key(field, key)?;
        optional(
            &format!("{field}[{}]", steward_errors::shown(key)),
            value,
            MAX_LABEL_VALUE,
        )?;
    }
    Ok(())
}

/// Parses a UUID field.
pub fn parse_id(field: &str, value: &str) -> Result<Uuid, FieldError> {
    if value.is_empty() {
        return Err(bad(field, "is required"));
    }
    Uuid::try_parse(value).map_err(|_| bad(field, "is not a UUID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> IdentitySpec {
        IdentitySpec {
            kind: Kind::ApiKey,
            display_name: "billing-sync token".into(),
            source_system: "github".into(),
            external_id: "tok-1".into(),
            environment: "production".into(),
            business_service: "billing".into(),
            workload: "billing-sync".into(),
            classification: Classification::MachineToMachine,
            purpose: "syncs invoices".into(),
            business_owner: Some(Owner {
                kind: OwnerKind::Team,
                name: "team-billing".into(),
                contact: "#billing".into(),
            }),
            technical_owner: Some(Owner {
                kind: OwnerKind::Person,
                name: "alice".into(),
                contact: "alice@example.test".into(),
            }),
            unowned: false,
            spiffe_id: None,
            labels: BTreeMap::new(),
            expires_at: None,
            last_rotated_at: None,
            last_used_at: None,
            source_created_at: None,
        }
    }

    #[test]
    fn owners_and_purpose_are_required_unless_unowned() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.purpose = " ".into();
        assert_eq!(s.validate().unwrap_err().field, "purpose");
        let mut s = spec();
        s.technical_owner = None;
        assert_eq!(s.validate().unwrap_err().field, "technical_owner");
        s.business_owner = None;
        s.purpose.clear();
        s.unowned = true;
        assert!(s.validate().is_ok());
    }

    #[test]
    fn labels_and_lengths_are_checked() {
        let mut s = spec();
        s.labels.insert("bad key".into(), "v".into());
        assert_eq!(s.validate().unwrap_err().field, "labels");
        let mut s = spec();
        s.display_name = "x".repeat(MAX_NAME + 1);
        assert_eq!(s.validate().unwrap_err().field, "display_name");
        let mut s = spec();
        s.external_id = "a\nb".into();
        assert_eq!(s.validate().unwrap_err().field, "external_id");
    }

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(*kind));
        }
        assert_eq!(Kind::parse("password"), None);
    }
}
