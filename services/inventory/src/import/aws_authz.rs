//! `aws iam get-account-authorization-details`: every IAM user and role
//! with the policies it holds. Roles become workload identities and users
//! service accounts (their access keys come from the credential report,
//! in the same estate); each `Allow` statement of the policies an identity
//! holds (inline, attached managed, and its groups') becomes a granted
//! entitlement per action and resource. A role's `RoleLastUsed` is the
//! role's last use and, the export knowing no finer, its entitlements'.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::documents::{text, time};
use super::{Defaults, Parsed, blank, json_document, keep, own};
use crate::domain::{IdentitySpec, Kind, Nanos, PRINCIPAL_LABEL};
use crate::store::activity::Permission;
use crate::store::import::{Entitled, ImportRow};

/// Most entitlements recorded for one identity; the rest are counted in
/// the label `aws/entitlements-left-out`.
pub const MAX_ENTITLEMENTS: usize = 1000;

/// Tags naming owners and purpose, compared without case.
const OWNER_TAGS: &[&str] = &["owner", "team", "technical-owner"];
const BUSINESS_OWNER_TAGS: &[&str] = &["business-owner"];
const PURPOSE_TAGS: &[&str] = &["purpose", "description"];

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(document) = json_document(content, &mut parsed) else {
        return parsed;
    };
    if !["UserDetailList", "RoleDetailList"]
        .iter()
        .any(|list| document.get(list).is_some_and(Value::is_array))
    {
        parsed.reject(
            1,
            "content",
            "not the output of aws iam get-account-authorization-details \
             (no UserDetailList or RoleDetailList)",
        );
        return parsed;
    }
    let policies = Policies::of(&document);
    let groups: HashMap<&str, &Value> = list(&document, "GroupDetailList")
        .iter()
        .filter_map(|g| Some((g.get("GroupName")?.as_str()?, g)))
        .collect();
    for (list_name, kind) in [
        ("UserDetailList", Kind::ServiceAccount),
        ("RoleDetailList", Kind::WorkloadIdentity),
    ] {
        for (index, item) in list(&document, list_name).iter().enumerate() {
            parsed.total += 1;
            let line = index as u64 + 1;
            match entity(item, kind, &policies, &groups, defaults) {
                Ok(row) => parsed.rows.push(ImportRow { line, ..row }),
                Err((field, reason)) => {
                    parsed.reject(line, format!("{list_name}[{index}].{field}"), reason);
                }
            }
        }
    }
    parsed
}

fn list<'a>(document: &'a Value, name: &str) -> &'a [Value] {
    document
        .get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The managed policies' default documents, by ARN.
struct Policies<'a>(HashMap<&'a str, &'a Value>);

impl<'a> Policies<'a> {
    fn of(document: &'a Value) -> Self {
        let mut out = HashMap::new();
        for policy in list(document, "Policies") {
            let default = text(policy, "DefaultVersionId");
            let version = list(policy, "PolicyVersionList").iter().find(|v| {
                v.get("IsDefaultVersion").and_then(Value::as_bool) == Some(true)
                    || (!default.is_empty() && text(v, "VersionId") == default)
            });
            if let Some(doc) = version.and_then(|v| v.get("Document")) {
                out.insert(text(policy, "Arn"), doc);
            }
        }
        Self(out)
    }
}

/// One user or role as an import row, or the field that makes it unusable.
fn entity(
    item: &Value,
    kind: Kind,
    policies: &Policies<'_>,
    groups: &HashMap<&str, &Value>,
    defaults: &Defaults,
) -> Result<ImportRow, (&'static str, String)> {
    let arn = text(item, "Arn");
    if !arn.starts_with("arn:") {
        return Err(("Arn", "is not an ARN".into()));
    }
    let (name_key, entity_word) = match kind {
        Kind::WorkloadIdentity => ("RoleName", "role"),
        _ => ("UserName", "user"),
    };
    let name = text(item, name_key);
    if name.is_empty() {
        return Err((name_key, "is required".into()));
    }
    let source = super::aws::source_system(arn, defaults);
    let mut spec = blank(kind, &source, arn.to_owned(), &defaults.environment);
    spec.display_name = format!("IAM {entity_word} {name}");
    spec.labels.insert("aws/entity".into(), entity_word.into());
    spec.labels.insert(PRINCIPAL_LABEL.into(), arn.to_owned());
    let mut fields = vec!["kind", "display_name", "labels"];
    let created = time(item, "CreateDate")?;
    if kind == Kind::WorkloadIdentity {
        // A role's last use is in the export, so "created long ago and
        // never used" is a fact. A user acts through its access keys,
        // whose use the credential report carries: the user's own
        // creation date would make every user "never used".
        spec.source_created_at = created;
        fields.push("source_create_time");
    } else if let Some(at) = created {
        spec.labels.insert("aws/created".into(), rfc3339_date(at));
    }
    let path = text(item, "Path");
    if path.starts_with("/aws-service-role/") {
        spec.labels
            .insert("aws/service-linked".into(), "true".into());
    }
    let used = if kind == Kind::WorkloadIdentity {
        role_use(item, &mut spec, &mut fields)?
    } else {
        None
    };
    tagged(item, &mut spec, &mut fields);
    let mut permissions = BTreeSet::new();
    let mut held = |holder: &Value, inline: &str| {
        for policy in list(holder, inline) {
            statements(&document(policy.get("PolicyDocument")), &mut permissions);
        }
        for attached in list(holder, "AttachedManagedPolicies") {
            let policy_arn = text(attached, "PolicyArn");
            match policies.0.get(policy_arn) {
                Some(doc) => statements(&document(Some(doc)), &mut permissions),
                // A managed policy the export does not carry (filtered
                // out): held as a whole, by its ARN.
                None => {
                    permissions.insert((
                        format!("policy/{}", text(attached, "PolicyName")),
                        policy_arn.to_owned(),
                    ));
                }
            }
        }
    };
    match kind {
        Kind::WorkloadIdentity => held(item, "RolePolicyList"),
        _ => {
            held(item, "UserPolicyList");
            for group in list(item, "GroupList").iter().filter_map(Value::as_str) {
                if let Some(g) = groups.get(group) {
                    held(g, "GroupPolicyList");
                }
            }
        }
    }
    let left_out = permissions.len().saturating_sub(MAX_ENTITLEMENTS);
    if left_out > 0 {
        spec.labels
            .insert("aws/entitlements-left-out".into(), left_out.to_string());
    }
    let entitlements = permissions
        .into_iter()
        .take(MAX_ENTITLEMENTS)
        .map(|(permission, resource)| Entitled {
            permission: Permission {
                system: "aws".into(),
                permission,
                resource,
            },
            // Only a role's use is known; a user's policies count from the
            // import, so nothing is called unused without evidence.
            granted_at: if kind == Kind::WorkloadIdentity {
                created
            } else {
                None
            },
            last_used_at: used,
        })
        .collect();
    let mut row = ImportRow::new(0, spec, fields);
    row.entitlements = Some(entitlements);
    Ok(row)
}

/// The date of `at`, e.g. `2021-06-11`.
fn rfc3339_date(at: Nanos) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at))
        .map(|t| t.date().to_string())
        .unwrap_or_default()
}

/// A role's last use (`RoleLastUsed`), its region and who its trust
/// policy lets assume it.
fn role_use(
    item: &Value,
    spec: &mut IdentitySpec,
    fields: &mut Vec<&'static str>,
) -> Result<Option<Nanos>, (&'static str, String)> {
    let last = item.get("RoleLastUsed");
    let used = last
        .map(|u| time(u, "LastUsedDate"))
        .transpose()
        .map_err(|(_, reason)| ("RoleLastUsed.LastUsedDate", reason))?
        .flatten();
    spec.last_used_at = used;
    fields.push("last_use_time");
    if let Some(region) = last.map(|u| text(u, "Region")).filter(|r| !r.is_empty()) {
        spec.labels
            .insert("aws/last-used-region".into(), region.to_owned());
    }
    let trusted = trusted_by(item.get("AssumeRolePolicyDocument"));
    if !trusted.is_empty() {
        spec.labels
            .insert("aws/trusted-by".into(), clipped(&trusted.join(",")));
    }
    Ok(used)
}

/// A policy document as the CLI prints it (an object) or as the API
/// returns it (URL-encoded JSON text).
fn document(value: Option<&Value>) -> Value {
    match value {
        Some(Value::String(encoded)) => {
            serde_json::from_str(&percent_decoded(encoded)).unwrap_or(Value::Null)
        }
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One string or a list of them.
fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The (action, resource) pairs a document's `Allow` statements grant.
/// `NotAction` and `NotResource` grant everything but what they name, so
/// they are recorded as `*`: an over-statement, never an under-statement.
/// Conditions are not modelled.
fn statements(document: &Value, out: &mut BTreeSet<(String, String)>) {
    for statement in allowed(document) {
        let mut actions = strings(statement.get("Action"));
        if statement.get("NotAction").is_some() {
            actions = vec!["*".into()];
        }
        let mut resources = strings(statement.get("Resource"));
        if statement.get("NotResource").is_some() || resources.is_empty() {
            resources = vec!["*".into()];
        }
        for action in &actions {
            for resource in &resources {
                out.insert((action.clone(), resource.clone()));
            }
        }
    }
}

/// A document's `Allow` statements (`Statement` is one or a list).
fn allowed(document: &Value) -> Vec<&Value> {
    let statements = match document.get("Statement") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => Vec::new(),
    };
    statements
        .into_iter()
        .filter(|s| text(s, "Effect") == "Allow")
        .collect()
}

/// Who a role's trust policy lets assume it: services, accounts, identity
/// providers.
fn trusted_by(document_value: Option<&Value>) -> Vec<String> {
    let doc = document(document_value);
    let mut out = BTreeSet::new();
    for statement in allowed(&doc) {
        match statement.get("Principal") {
            Some(Value::Object(principals)) => {
                for value in principals.values() {
                    out.extend(strings(Some(value)));
                }
            }
            Some(Value::String(any)) => {
                out.insert(any.clone());
            }
            _ => {}
        }
    }
    out.into_iter().collect()
}

/// A label value cut to what a label holds.
fn clipped(value: &str) -> String {
    let mut cut = value.len().min(crate::domain::MAX_LABEL_VALUE);
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    value[..cut].to_owned()
}

/// Tags as labels `aws/tag/<key>` (where the key can be a label key), and
/// owners and purpose from the tags that name them.
fn tagged(item: &Value, spec: &mut IdentitySpec, fields: &mut Vec<&'static str>) {
    let tags: BTreeMap<String, String> = list(item, "Tags")
        .iter()
        .map(|t| {
            (
                text(t, "Key").to_owned(),
                text(t, "Value").trim().to_owned(),
            )
        })
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect();
    let find = |keys: &[&str]| {
        tags.iter()
            .find(|(k, _)| keys.iter().any(|want| k.eq_ignore_ascii_case(want)))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
    };
    for (keys, field) in [
        (BUSINESS_OWNER_TAGS, "business_owner"),
        (OWNER_TAGS, "technical_owner"),
    ] {
        if let Some((key, name)) = find(keys) {
            own(spec, fields, field, name, String::new(), key == "team");
        }
    }
    if let Some((_, purpose)) = find(PURPOSE_TAGS) {
        spec.purpose = purpose;
        fields.push("purpose");
    }
    for (key, value) in tags {
        keep(&mut spec.labels, &format!("aws/tag/{key}"), &value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_grant_per_action_and_resource_and_not_action_is_everything() {
        let doc = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
                 "Resource": ["arn:aws:s3:::a/*", "arn:aws:s3:::b/*"]},
                {"Effect": "Deny", "Action": "iam:*", "Resource": "*"},
                {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}
            ]
        });
        let mut out = BTreeSet::new();
        statements(&doc, &mut out);
        assert_eq!(out.len(), 5);
        assert!(out.contains(&("*".into(), "*".into())));
        assert!(!out.iter().any(|(a, _)| a == "iam:*"));
    }

    #[test]
    fn url_encoded_documents_are_read() {
        let encoded = "%7B%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Action%22%3A%22sts%3AGetCallerIdentity%22%7D%5D%7D";
        let mut out = BTreeSet::new();
        statements(&document(Some(&Value::String(encoded.into()))), &mut out);
        assert_eq!(
            out.into_iter().collect::<Vec<_>>(),
            vec![("sts:GetCallerIdentity".to_owned(), "*".to_owned())]
        );
    }
}
