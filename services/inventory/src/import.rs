//! Importers: parse a source system's export into identity specs, row by
//! row. A bad row is reported with its line and reason and the good rows
//! still import. Formats are documented in `docs/inventory-import.md`.

mod aws;
mod aws_authz;
mod azure;
mod documents;
mod gcp;
mod generic;
mod github;
mod kubernetes;

pub use kubernetes::OWNER_ANNOTATIONS;

use std::collections::{BTreeMap, BTreeSet};

use steward_identity::TrustDomain;

use crate::domain::{IdentitySpec, Kind, Nanos, Owner, OwnerKind};
use crate::store::import::ImportRow;

crate::domain::names!(
    /// What an import's content is.
    Format {
        AwsIamCredentialReport => "aws_iam_credential_report",
        AwsAuthorizationDetails => "aws_iam_authorization_details",
        Gcp => "gcp_service_accounts",
        Azure => "entra_applications",
        Github => "github_credentials",
        KubernetesServiceAccounts => "kubernetes_service_accounts",
        Csv => "csv",
        Json => "json",
    }
);

impl Format {
    /// The kinds of identity the format makes (`None`: any).
    pub fn kinds(self) -> Option<&'static [Kind]> {
        match self {
            Self::AwsIamCredentialReport => Some(&[Kind::ApiKey, Kind::Certificate]),
            Self::AwsAuthorizationDetails => Some(&[Kind::ServiceAccount, Kind::WorkloadIdentity]),
            Self::KubernetesServiceAccounts => Some(&[Kind::ServiceAccount]),
            Self::Gcp => Some(&[Kind::ServiceAccount, Kind::ApiKey]),
            Self::Azure => Some(&[
                Kind::OauthApp,
                Kind::ServiceAccount,
                Kind::WorkloadIdentity,
                Kind::ApiKey,
                Kind::Certificate,
            ]),
            Self::Github => Some(&[Kind::OauthApp, Kind::SshKey, Kind::ApiKey]),
            Self::Csv | Self::Json => None,
        }
    }
}

/// What the caller says about the rows.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// The source system for rows that name none.
    pub source_system: String,
    /// The environment for rows that name none.
    pub environment: String,
    /// For SPIFFE IDs derived from the source (Kubernetes).
    pub trust_domain: TrustDomain,
    /// Kubernetes: the annotations naming a technical owner, first present
    /// wins; empty means [`OWNER_ANNOTATIONS`].
    pub owner_annotations: Vec<String>,
}

/// A row that could not be imported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub reason: String,
}

/// The parsed rows, the rejected ones, and the source systems covered.
#[derive(Debug, Default)]
pub struct Parsed {
    pub rows: Vec<ImportRow>,
    pub errors: Vec<RowError>,
    /// Input rows seen (good and bad).
    pub total: u64,
    pub sources: BTreeSet<String>,
    /// The kinds of identity the format speaks of (`None`: any): vanished
    /// is judged only among them, so two exports of one estate (an AWS
    /// account's credential report and its authorization details) never
    /// report each other's identities as gone.
    pub kinds: Option<Vec<Kind>>,
}

impl Parsed {
    /// Records a refused row. The field is a column name from the file
    /// (a CSV header, say): one that is long or odd is quoted by
    /// [`steward_errors::shown`], and the reason is cut at
    /// [`MAX_REASON`] bytes, so an error never carries a file back.
    fn reject(&mut self, line: u64, field: impl Into<String>, reason: impl Into<String>) {
        let field = field.into();
        let plain = field.len() <= 64
            && field.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']')
            });
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        self.errors.push(RowError {
            line,
            field: if plain {
                field
            } else {
                steward_errors::shown(&field)
            },
            reason,
        });
    }

    /// Keeps the first row for each (source system, external id) and
    /// reports the repeats.
    fn dedup(&mut self) {
        let mut first: BTreeMap<(String, String), u64> = BTreeMap::new();
        let mut kept = Vec::with_capacity(self.rows.len());
        for row in std::mem::take(&mut self.rows) {
            let key = (row.spec.source_system.clone(), row.spec.external_id.clone());
            if let Some(line) = first.get(&key) {
                self.reject(
                    row.line,
                    "external_id",
                    format!("repeats the identity of line {line}"),
                );
                continue;
            }
            first.insert(key, row.line);
            self.sources.insert(row.spec.source_system.clone());
            kept.push(row);
        }
        self.rows = kept;
        self.errors.sort_by_key(|e| e.line);
    }
}

/// Parses `content` in `format`.
pub fn parse(format: Format, content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = match format {
        Format::AwsIamCredentialReport => aws::parse(content, defaults),
        Format::AwsAuthorizationDetails => aws_authz::parse(content, defaults),
        Format::KubernetesServiceAccounts => kubernetes::parse(content, defaults),
        Format::Gcp => gcp::parse(content, defaults),
        Format::Azure => azure::parse(content, defaults),
        Format::Github => github::parse(content, defaults),
        Format::Csv => generic::parse_csv(content, defaults),
        Format::Json => generic::parse_json(content, defaults),
    };
    parsed.kinds = format.kinds().map(<[Kind]>::to_vec);
    for row in &mut parsed.rows {
        holdable(row);
    }
    parsed.dedup();
    parsed
}

/// Leaves out the entitlements a row names that `GrantEntitlement` would
/// refuse (an empty or over-long system or permission, a resource over
/// 2,048 bytes, control characters), counting them in the label
/// `steward/entitlements-left-out`: never cut, since a shortened resource
/// would name something else.
fn holdable(row: &mut ImportRow) {
    use crate::domain::{MAX_NAME, MAX_TEXT, required};
    let Some(entitlements) = row.entitlements.as_mut() else {
        return;
    };
    let before = entitlements.len();
    entitlements.retain(|e| {
        let p = &e.permission;
        required("system", &p.system, MAX_NAME).is_ok()
            && required("permission", &p.permission, MAX_NAME).is_ok()
            && required("resource", &p.resource, MAX_TEXT).is_ok()
    });
    let left_out = before - entitlements.len();
    if left_out > 0 {
        row.spec
            .labels
            .insert("steward/entitlements-left-out".into(), left_out.to_string());
        if !row.fields.contains(&"labels") {
            row.fields.push("labels");
        }
    }
}

/// The whole content as one JSON document, or `None` with the content
/// refused (at the line serde names, never quoting it).
fn json_document(content: &[u8], parsed: &mut Parsed) -> Option<serde_json::Value> {
    match serde_json::from_slice(content) {
        Ok(v) => Some(v),
        Err(e) => {
            parsed.reject(
                u64::try_from(e.line()).unwrap_or(0),
                "content",
                format!("not JSON: {e}"),
            );
            None
        }
    }
}

/// Sets `field` (`business_owner` or `technical_owner`) to `name`, a team
/// when `team` says so or the name starts `team-`, and notes the field as
/// one the source is authoritative for.
fn own(
    spec: &mut IdentitySpec,
    fields: &mut Vec<&'static str>,
    field: &'static str,
    name: String,
    contact: String,
    team: bool,
) {
    let owner = Owner {
        kind: if team || name.starts_with("team-") {
            OwnerKind::Team
        } else {
            OwnerKind::Person
        },
        contact,
        name,
    };
    if field == "business_owner" {
        spec.business_owner = Some(owner);
    } else {
        spec.technical_owner = Some(owner);
    }
    fields.push(field);
}

/// Adds a label from the source when Steward can hold it (key shape, value
/// length, label count) and it is not taken; the rest are left out rather
/// than refusing the row for them.
fn keep(labels: &mut BTreeMap<String, String>, key: &str, value: &str) {
    if labels.contains_key(key) || labels.len() >= crate::domain::MAX_LABELS {
        return;
    }
    let one = BTreeMap::from([(key.to_owned(), value.to_owned())]);
    if crate::domain::validate_labels("labels", &one).is_ok() {
        labels.extend(one);
    }
}

/// A spec with only the identifying fields set; importers fill the rest.
fn blank(kind: Kind, source_system: &str, external_id: String, environment: &str) -> IdentitySpec {
    let mut spec = IdentitySpec::new(kind, source_system, &external_id);
    spec.environment = environment.to_owned();
    spec
}

/// What an export of a credential's validity is authoritative for.
const CREDENTIAL_FIELDS: &[&str] = &[
    "kind",
    "display_name",
    "labels",
    "source_create_time",
    "last_rotate_time",
    "expire_time",
];

/// Most bytes of a rejected row's reason.
const MAX_REASON: usize = 512;

/// Parses an RFC 3339 time.
fn rfc3339(text: &str) -> Result<Nanos, String> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| format!("{} is not an RFC 3339 time", steward_errors::shown(text)))?;
    i64::try_from(t.unix_timestamp_nanos())
        .map_err(|_| format!("{} is out of range", steward_errors::shown(text)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::activity::Permission;
    use crate::store::import::Entitled;

    #[test]
    fn entitlements_steward_cannot_hold_are_left_out_and_counted() {
        let entitled = |permission: &str, resource: String| Entitled {
            permission: Permission {
                system: "aws".into(),
                permission: permission.into(),
                resource,
            },
            granted_at: None,
            last_used_at: None,
        };
        let spec = IdentitySpec::new(Kind::WorkloadIdentity, "aws-iam:1", "arn:aws:iam::1:role/r");
        let mut row = ImportRow::new(1, spec, vec!["kind"]);
        row.entitlements = Some(vec![
            entitled("s3:GetObject", "arn:aws:s3:::a/*".into()),
            entitled("s3:PutObject", "x".repeat(MAX_REASON * 5)),
            entitled("s3:\nGetObject", "*".into()),
        ]);
        holdable(&mut row);
        let kept = row.entitlements.as_ref().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].permission.permission, "s3:GetObject");
        assert_eq!(row.spec.labels["steward/entitlements-left-out"], "2");
        assert!(row.fields.contains(&"labels"));
    }
}
