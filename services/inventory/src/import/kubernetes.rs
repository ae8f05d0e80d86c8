//! Kubernetes ServiceAccounts (`kubectl get serviceaccounts -A -o json`).
//! Each becomes a service-account identity `namespace/name` acting as
//! `spiffe://<trust domain>/ns/<namespace>/sa/<name>` (the SPIFFE ID shape
//! SPIRE's Kubernetes registrar uses). Owners and purpose are read from the
//! annotations `steward/business-owner`, `steward/business-owner-contact`,
//! `steward/technical-owner`, `steward/technical-owner-contact` and
//! `steward/purpose` when present.

use serde_json::Value;
use steward_identity::SpiffeId;

use super::{Defaults, Parsed, blank};
use crate::domain::{Kind, Owner, OwnerKind};
use crate::store::import::ImportRow;

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let source = if defaults.source_system.is_empty() {
        "kubernetes"
    } else {
        defaults.source_system.as_str()
    };
    let document: Value = match serde_json::from_slice(content) {
        Ok(v) => v,
        Err(e) => {
            parsed.reject(
                u64::try_from(e.line()).unwrap_or(0),
                "content",
                format!("not JSON: {e}"),
            );
            return parsed;
        }
    };
    let Some(items) = document.get("items").and_then(Value::as_array) else {
        parsed.reject(0, "items", "a ServiceAccount list has an items array");
        return parsed;
    };
    for (index, item) in items.iter().enumerate() {
        parsed.total += 1;
        let line = index as u64 + 1;
        match service_account(item, line, source, defaults) {
            Ok(row) => parsed.rows.push(row),
            Err((field, reason)) => parsed.reject(line, field, reason),
        }
    }
    parsed
}

/// One list item as an import row, or the field that makes it unusable
/// and why.
fn service_account(
    item: &Value,
    line: u64,
    source: &str,
    defaults: &Defaults,
) -> Result<ImportRow, (&'static str, String)> {
    if let Some(kind) = item.get("kind").and_then(Value::as_str)
        && kind != "ServiceAccount"
    {
        let reason = format!("{} is not a ServiceAccount", steward_errors::shown(kind));
        return Err(("kind", reason));
    }
    let metadata = item.get("metadata").cloned().unwrap_or(Value::Null);
    let text = |key: &str| metadata.get(key).and_then(Value::as_str).unwrap_or("");
    let (name, namespace) = (text("name"), text("namespace"));
    if name.is_empty() {
        return Err(("metadata.name", "is required".into()));
    }
    if namespace.is_empty() {
        return Err(("metadata.namespace", "is required".into()));
    }
    let mut spec = blank(
        Kind::ServiceAccount,
        source,
        format!("{namespace}/{name}"),
        &defaults.environment,
    );
    spec.workload = name.to_owned();
    let path = format!("/ns/{namespace}/sa/{name}");
    spec.spiffe_id = Some(
        SpiffeId::from_parts(&defaults.trust_domain, &path)
            .map_err(|e| ("metadata.name", format!("no valid SPIFFE ID: {e}")))?,
    );
    spec.labels
        .insert("k8s/namespace".into(), namespace.to_owned());
    if let Some(labels) = metadata.get("labels").and_then(Value::as_object) {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                spec.labels.insert(k.clone(), v.to_owned());
            }
        }
    }
    let mut fields = vec!["kind", "display_name", "workload", "spiffe_id", "labels"];
    if !defaults.environment.is_empty() {
        fields.push("environment");
    }
    let annotations = metadata.get("annotations").cloned().unwrap_or(Value::Null);
    annotated(&annotations, &mut spec, &mut fields);
    Ok(ImportRow {
        line,
        spec,
        fields,
        state: None,
    })
}

/// Owners and purpose from the `steward/…` annotations, where present.
fn annotated(
    annotations: &Value,
    spec: &mut crate::domain::IdentitySpec,
    fields: &mut Vec<&'static str>,
) {
    let note = |key: &str| {
        annotations
            .get(format!("steward/{key}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    for (role, field) in [
        ("business-owner", "business_owner"),
        ("technical-owner", "technical_owner"),
    ] {
        let owner = note(role);
        if owner.is_empty() {
            continue;
        }
        let contact = note(&format!("{role}-contact"));
        let owner = Owner {
            kind: if owner.starts_with("team-") {
                OwnerKind::Team
            } else {
                OwnerKind::Person
            },
            contact: if contact.is_empty() {
                owner.clone()
            } else {
                contact
            },
            name: owner,
        };
        if field == "business_owner" {
            spec.business_owner = Some(owner);
        } else {
            spec.technical_owner = Some(owner);
        }
        fields.push(field);
    }
    let purpose = note("purpose");
    if !purpose.is_empty() {
        spec.purpose = purpose;
        fields.push("purpose");
    }
}
