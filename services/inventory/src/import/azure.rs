//! Microsoft Entra ID through Microsoft Graph: `GET /applications` and
//! `GET /servicePrincipals` (`{"value": [...]}`, pages concatenated or
//! not). Each application becomes an OAuth-app identity and each service
//! principal a service account (a managed identity: a workload identity);
//! every client secret (`passwordCredentials`) becomes an API-key identity
//! and every certificate (`keyCredentials`) a certificate identity, valid
//! from `startDateTime` to `endDateTime`. A disabled service principal
//! (`accountEnabled` false) starts suspended. Owners come from `owners`
//! when the export expanded them (`$expand=owners`).

use serde_json::Value;

use super::documents::{copy, expiry, read, text, time};
use super::{CREDENTIAL_FIELDS, Defaults, Parsed, blank};
use crate::domain::{Kind, Owner, OwnerKind, PRINCIPAL_LABEL, State};
use crate::store::import::ImportRow;

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(items) = read(content, &["value"], &mut parsed) else {
        return parsed;
    };
    for (index, item) in items.iter().enumerate() {
        parsed.total += 1;
        let line = index as u64 + 1;
        match object(item, defaults) {
            Ok(rows) => parsed
                .rows
                .extend(rows.into_iter().map(|row| ImportRow { line, ..row })),
            Err((field, reason)) => parsed.reject(line, field, reason),
        }
    }
    parsed
}

/// An application or service principal, and its credentials.
fn object(item: &Value, defaults: &Defaults) -> Result<Vec<ImportRow>, (String, String)> {
    let fail = |field: &str, reason: &str| (field.to_owned(), reason.to_owned());
    let app_id = text(item, "appId");
    if app_id.is_empty() {
        return Err(fail(
            "appId",
            "is required (an application or service principal)",
        ));
    }
    let sp_type = text(item, "servicePrincipalType");
    let (kind, prefix) = match sp_type {
        "" => (Kind::OauthApp, "application"),
        t if kind_is_managed(t) => (Kind::WorkloadIdentity, "servicePrincipal"),
        _ => (Kind::ServiceAccount, "servicePrincipal"),
    };
    let source = match defaults.source_system.as_str() {
        "" => "entra-id".to_owned(),
        named => named.to_owned(),
    };
    let principal = format!("{prefix}/{app_id}");
    let mut spec = blank(kind, &source, principal.clone(), &defaults.environment);
    let name = text(item, "displayName");
    spec.display_name = if name.is_empty() {
        app_id.to_owned()
    } else {
        name.to_owned()
    };
    let mut fields = vec!["kind", "display_name", "labels"];
    spec.labels.insert("azure/app-id".into(), app_id.to_owned());
    spec.labels
        .insert("azure/object-id".into(), text(item, "id").to_owned());
    if !sp_type.is_empty() {
        spec.labels
            .insert("azure/service-principal-type".into(), sp_type.to_owned());
    }
    let created = time(item, "createdDateTime").map_err(|(f, r)| (f.to_owned(), r))?;
    if created.is_some() {
        spec.source_created_at = created;
        fields.push("source_create_time");
    }
    let purpose = [text(item, "description"), text(item, "notes")]
        .into_iter()
        .map(str::trim)
        .find(|p| !p.is_empty());
    if let Some(purpose) = purpose {
        spec.purpose = purpose.to_owned();
        fields.push("purpose");
    }
    if let Some(owner) = owner(item) {
        spec.technical_owner = Some(owner);
        fields.push("technical_owner");
    }
    let state = (item.get("accountEnabled").and_then(Value::as_bool) == Some(false))
        .then_some(State::Suspended);
    let mut owner = ImportRow::new(0, spec, fields);
    owner.state = state;
    let mut rows = Vec::new();
    for (list, kind, word) in [
        ("passwordCredentials", Kind::ApiKey, "client secret"),
        ("keyCredentials", Kind::Certificate, "certificate"),
    ] {
        // A managed identity's certificates are Azure's, rotated by Azure.
        if kind_is_managed(sp_type) {
            continue;
        }
        let credentials = item
            .get(list)
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        for (i, c) in credentials.iter().enumerate() {
            let field = |f: &str| format!("{list}[{i}].{f}");
            rows.push(
                credential(&owner, app_id, c, (kind, word, list))
                    .map_err(|(f, r)| (field(f), r))?,
            );
        }
    }
    rows.insert(0, owner);
    Ok(rows)
}

/// One secret or certificate of `owner`, as a row of its own that takes
/// the owner's purpose, technical owner and state. `what` is the kind,
/// its word in the name, and the Graph list it is in.
fn credential(
    owner: &ImportRow,
    app_id: &str,
    credential: &Value,
    (kind, word, list): (Kind, &str, &str),
) -> Result<ImportRow, (&'static str, String)> {
    let spec = &owner.spec;
    let key_id = text(credential, "keyId");
    if key_id.is_empty() {
        return Err(("keyId", "is required".into()));
    }
    let mut c = blank(
        kind,
        &spec.source_system,
        format!("{}/{list}/{key_id}", spec.external_id),
        &spec.environment,
    );
    let label = text(credential, "displayName");
    c.display_name = format!("{} {word}", spec.display_name);
    if !label.is_empty() {
        c.display_name.push(' ');
        c.display_name.push_str(label);
    }
    let start = time(credential, "startDateTime")?;
    c.source_created_at = start;
    c.last_rotated_at = start;
    c.expires_at = expiry(credential, "endDateTime")?;
    c.technical_owner.clone_from(&spec.technical_owner);
    c.purpose.clone_from(&spec.purpose);
    c.labels
        .insert(PRINCIPAL_LABEL.into(), spec.external_id.clone());
    c.labels.insert("azure/app-id".into(), app_id.to_owned());
    copy(
        credential,
        &mut c.labels,
        &[
            ("azure/secret-hint", "hint"),
            ("azure/key-type", "type"),
            ("azure/key-usage", "usage"),
        ],
    );
    let mut fields = CREDENTIAL_FIELDS.to_vec();
    fields.extend(
        owner
            .fields
            .iter()
            .filter(|f| matches!(**f, "purpose" | "technical_owner")),
    );
    let mut row = ImportRow::new(0, c, fields);
    row.state = owner.state;
    Ok(row)
}

fn kind_is_managed(sp_type: &str) -> bool {
    sp_type == "ManagedIdentity"
}

/// The first owner of an export with `$expand=owners`: a user by its
/// principal name, anything else by its display name.
fn owner(item: &Value) -> Option<Owner> {
    let first = item.get("owners")?.as_array()?.first()?;
    let name = [text(first, "userPrincipalName"), text(first, "displayName")]
        .into_iter()
        .find(|n| !n.is_empty())?;
    let person = text(first, "@odata.type") == "#microsoft.graph.user"
        || !text(first, "userPrincipalName").is_empty();
    Some(Owner {
        kind: if person {
            OwnerKind::Person
        } else {
            OwnerKind::Team
        },
        name: name.to_owned(),
        contact: text(first, "mail").to_owned(),
    })
}
