//! Google Cloud service accounts and their keys, as gcloud prints them:
//! `gcloud iam service-accounts list --format=json` and
//! `gcloud iam service-accounts keys list --iam-account=… --format=json`,
//! in one file or several concatenated. Each account becomes a
//! service-account identity, each user-managed key an API-key identity
//! valid from `validAfterTime` to `validBeforeTime`; a disabled account or
//! key starts suspended. Google-managed keys (`SYSTEM_MANAGED`) rotate
//! themselves and are not credentials anyone holds: they are left out.

use serde_json::Value;

use super::documents::{copy, expiry, read, text, time};
use super::{CREDENTIAL_FIELDS, Defaults, Parsed, blank};
use crate::domain::{Kind, PRINCIPAL_LABEL, State};
use crate::store::import::ImportRow;

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(items) = read(
        content,
        &["accounts", "serviceAccounts", "keys"],
        &mut parsed,
    ) else {
        return parsed;
    };
    for (index, item) in items.iter().enumerate() {
        let line = index as u64 + 1;
        let row = if item.get("email").is_some() {
            account(item, defaults)
        } else if text(item, "name").contains("/keys/") {
            if text(item, "keyType") == "SYSTEM_MANAGED" {
                continue;
            }
            key(item, defaults)
        } else {
            Err((
                "item",
                "neither a service account (email) nor a key (name …/keys/…)".into(),
            ))
        };
        parsed.total += 1;
        match row {
            Ok(row) => parsed.rows.push(ImportRow { line, ..row }),
            Err((field, reason)) => parsed.reject(line, field, reason),
        }
    }
    parsed
}

/// `gcp:<project>`, or the request's source system.
fn source_system(project: &str, defaults: &Defaults) -> String {
    match (defaults.source_system.as_str(), project) {
        ("", "") => "gcp".into(),
        ("", project) => format!("gcp:{project}"),
        (named, _) => named.to_owned(),
    }
}

/// The project of `projects/<project>/serviceAccounts/…`.
fn project_of(name: &str) -> &str {
    name.strip_prefix("projects/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("")
}

fn disabled(item: &Value) -> Option<State> {
    (item.get("disabled").and_then(Value::as_bool) == Some(true)).then_some(State::Suspended)
}

fn account(item: &Value, defaults: &Defaults) -> Result<ImportRow, (&'static str, String)> {
    let email = text(item, "email");
    if !email.contains('@') {
        return Err(("email", "is not a service account's email".into()));
    }
    let project = match text(item, "projectId") {
        "" => project_of(text(item, "name")),
        project => project,
    };
    let mut spec = blank(
        Kind::ServiceAccount,
        &source_system(project, defaults),
        email.to_owned(),
        &defaults.environment,
    );
    let mut fields = vec!["kind", "display_name", "labels"];
    spec.display_name = match text(item, "displayName") {
        "" => email.to_owned(),
        name => name.to_owned(),
    };
    let description = text(item, "description").trim();
    if !description.is_empty() {
        spec.purpose = description.to_owned();
        fields.push("purpose");
    }
    spec.labels.insert("gcp/project".into(), project.to_owned());
    copy(
        item,
        &mut spec.labels,
        &[
            ("gcp/unique-id", "uniqueId"),
            ("gcp/oauth2-client-id", "oauth2ClientId"),
        ],
    );
    spec.labels
        .insert("gcp/disabled".into(), disabled(item).is_some().to_string());
    let mut row = ImportRow::new(0, spec, fields);
    row.state = disabled(item);
    Ok(row)
}

fn key(item: &Value, defaults: &Defaults) -> Result<ImportRow, (&'static str, String)> {
    let name = text(item, "name");
    let (owner, id) = name
        .split_once("/serviceAccounts/")
        .and_then(|(_, rest)| rest.split_once("/keys/"))
        .filter(|(owner, id)| owner.contains('@') && !id.is_empty())
        .ok_or((
            "name",
            "is not projects/…/serviceAccounts/…/keys/…".to_owned(),
        ))?;
    let mut spec = blank(
        Kind::ApiKey,
        &source_system(project_of(name), defaults),
        name.to_owned(),
        &defaults.environment,
    );
    spec.display_name = format!("{owner} key {}", &id[..id.len().min(12)]);
    let valid_after = time(item, "validAfterTime")?;
    spec.source_created_at = valid_after;
    spec.last_rotated_at = valid_after;
    // gcloud writes 9999-12-31T23:59:59Z for a key that never expires.
    spec.expires_at = expiry(item, "validBeforeTime")?;
    spec.labels.insert(PRINCIPAL_LABEL.into(), owner.to_owned());
    spec.labels
        .insert("gcp/service-account".into(), owner.to_owned());
    copy(
        item,
        &mut spec.labels,
        &[
            ("gcp/key-algorithm", "keyAlgorithm"),
            ("gcp/key-origin", "keyOrigin"),
        ],
    );
    spec.labels
        .insert("gcp/disabled".into(), disabled(item).is_some().to_string());
    let mut row = ImportRow::new(0, spec, CREDENTIAL_FIELDS.to_vec());
    row.state = disabled(item);
    Ok(row)
}
