//! Kubernetes ServiceAccounts (`kubectl get serviceaccounts -A -o json`).
//! Each becomes a service-account identity `namespace/name` acting as
//! `spiffe://<trust domain>/ns/<namespace>/sa/<name>` (the SPIFFE ID shape
//! SPIRE's Kubernetes registrar uses), created when the cluster says
//! (`creationTimestamp`). Labels and annotations become labels; owners
//! come from owner annotations (configurable), purpose from
//! `steward/purpose` or `kubernetes.io/description`, and a cloud identity
//! the ServiceAccount may act as (EKS IRSA, GKE Workload Identity, Azure
//! Workload Identity) becomes an entitlement on that cloud identity.

use serde_json::Value;
use steward_identity::SpiffeId;

use super::documents::read;
use super::{Defaults, Parsed, blank, keep, own, rfc3339};
use crate::domain::{IdentitySpec, Kind};
use crate::store::activity::Permission;
use crate::store::import::{Entitled, ImportRow};

/// The annotations that name a technical owner when the request names
/// none; the first one present wins.
pub const OWNER_ANNOTATIONS: &[&str] = &["steward/technical-owner", "owner", "team"];

/// Annotations that are never labels: kubectl's copy of the whole object.
const SKIPPED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// The cloud identities a ServiceAccount may be bound to, by annotation:
/// the system, the permission that binding grants, and how the resource is
/// named.
const CLOUD_LINKS: &[(&str, &str, &str)] = &[
    (
        "eks.amazonaws.com/role-arn",
        "aws",
        "sts:AssumeRoleWithWebIdentity",
    ),
    (
        "iam.gke.io/gcp-service-account",
        "gcp",
        "roles/iam.workloadIdentityUser",
    ),
    (
        "azure.workload.identity/client-id",
        "azure",
        "workload-identity-federation",
    ),
];

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let source = if defaults.source_system.is_empty() {
        "kubernetes"
    } else {
        defaults.source_system.as_str()
    };
    // A file that breaks is refused at the first item that is not whole.
    let Some(items) = read(content, &["items"], &mut parsed) else {
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
    let mut fields = vec!["kind", "display_name", "workload", "spiffe_id", "labels"];
    if !defaults.environment.is_empty() {
        fields.push("environment");
    }
    let created = text("creationTimestamp");
    if !created.is_empty() {
        spec.source_created_at =
            Some(rfc3339(created).map_err(|reason| ("metadata.creationTimestamp", reason))?);
        fields.push("source_create_time");
    }
    spec.labels
        .insert("k8s/namespace".into(), namespace.to_owned());
    let automount = match item.get("automountServiceAccountToken") {
        Some(Value::Bool(false)) => "false",
        _ => "true", // Kubernetes mounts a token unless told not to
    };
    spec.labels
        .insert("k8s/automount-token".into(), automount.into());
    if let Some(secrets) = item.get("secrets").and_then(Value::as_array)
        && !secrets.is_empty()
    {
        // Secrets listed on the ServiceAccount: long-lived token secrets
        // from before Kubernetes 1.24's bound tokens.
        spec.labels
            .insert("k8s/token-secrets".into(), secrets.len().to_string());
    }
    let annotations = metadata.get("annotations").cloned().unwrap_or(Value::Null);
    for map in [metadata.get("labels"), Some(&annotations)] {
        if let Some(map) = map.and_then(Value::as_object) {
            for (k, v) in map {
                if let Some(v) = v.as_str() {
                    keep_label(&mut spec, k, v);
                }
            }
        }
    }
    annotated(
        &annotations,
        &mut spec,
        &mut fields,
        &defaults.owner_annotations,
    );
    let entitlements = CLOUD_LINKS
        .iter()
        .filter_map(|(key, system, permission)| {
            let target = annotations.get(*key).and_then(Value::as_str)?.trim();
            (!target.is_empty()).then(|| Entitled {
                permission: Permission {
                    system: (*system).to_owned(),
                    permission: (*permission).to_owned(),
                    resource: target.to_owned(),
                },
                granted_at: spec.source_created_at,
                last_used_at: None,
            })
        })
        .collect();
    let mut row = ImportRow::new(line, spec, fields);
    row.entitlements = Some(entitlements);
    Ok(row)
}

/// Adds a Kubernetes label or annotation as a label, unless it is
/// kubectl's copy of the object or one Steward cannot hold.
fn keep_label(spec: &mut IdentitySpec, key: &str, value: &str) {
    if !SKIPPED.contains(&key) {
        keep(&mut spec.labels, key, value);
    }
}

/// Owners and purpose from the annotations, where present: the business
/// owner from `steward/business-owner`, the technical owner from the first
/// of `owner_keys` (or [`OWNER_ANNOTATIONS`]) present, each with a
/// `<key>-contact` annotation where there is one.
fn annotated(
    annotations: &Value,
    spec: &mut IdentitySpec,
    fields: &mut Vec<&'static str>,
    owner_keys: &[String],
) {
    let note = |key: &str| {
        annotations
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let defaults: Vec<String> = OWNER_ANNOTATIONS.iter().map(|k| (*k).to_owned()).collect();
    let technical = if owner_keys.is_empty() {
        &defaults
    } else {
        owner_keys
    };
    let business = ["steward/business-owner".to_owned()];
    for (keys, field) in [
        (&business[..], "business_owner"),
        (technical, "technical_owner"),
    ] {
        let Some((key, name)) = keys
            .iter()
            .map(|k| (k, note(k)))
            .find(|(_, name)| !name.is_empty())
        else {
            continue;
        };
        let contact = note(&format!("{key}-contact"));
        let contact = if contact.is_empty() {
            name.clone()
        } else {
            contact
        };
        own(spec, fields, field, name, contact, key.as_str() == "team");
    }
    let purpose = [note("steward/purpose"), note("kubernetes.io/description")]
        .into_iter()
        .find(|p| !p.is_empty());
    if let Some(purpose) = purpose {
        spec.purpose = purpose;
        fields.push("purpose");
    }
}
