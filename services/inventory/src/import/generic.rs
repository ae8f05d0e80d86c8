//! Steward's generic import formats: CSV with a header row, or JSON (an
//! array of objects, or `{"identities": [...]}`), both with the field names
//! of `IdentitySpec`. Only the columns present are authoritative, so an
//! export that knows nothing of owners never erases them.

use std::collections::BTreeMap;

use serde_json::Value;
use steward_identity::SpiffeId;

use super::{Defaults, Parsed, RowError, blank, json_document, rfc3339};
use crate::domain::{Classification, IdentitySpec, Kind, Owner, OwnerKind};
use crate::store::import::ImportRow;

/// Every column the generic formats know.
pub const COLUMNS: &[&str] = &[
    "kind",
    "display_name",
    "source_system",
    "external_id",
    "environment",
    "business_service",
    "workload",
    "classification",
    "purpose",
    "business_owner",
    "business_owner_kind",
    "business_owner_contact",
    "technical_owner",
    "technical_owner_kind",
    "technical_owner_contact",
    "spiffe_id",
    "labels",
    "expire_time",
    "last_rotate_time",
    "last_use_time",
    "source_create_time",
];

pub fn parse_csv(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(content);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            parsed.reject(1, "content", format!("not CSV: {e}"));
            return parsed;
        }
    };
    for h in &headers {
        if !COLUMNS.contains(&h) {
            parsed.reject(1, h, "unknown column (see docs/inventory-import.md)");
            return parsed;
        }
    }
    for record in reader.records() {
        parsed.total += 1;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                parsed.reject(line, "content", e.to_string());
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let mut fields = BTreeMap::new();
        for (h, v) in headers.iter().zip(record.iter()) {
            fields.insert(h.to_owned(), v.to_owned());
        }
        let labels = match fields.remove("labels") {
            Some(text) if !text.is_empty() => match csv_labels(&text) {
                Ok(l) => Some(l),
                Err(reason) => {
                    parsed.reject(line, "labels", reason);
                    continue;
                }
            },
            Some(_) => Some(BTreeMap::new()),
            None => None,
        };
        push(&mut parsed, line, fields, labels, defaults);
    }
    parsed
}

/// `key=value;key2=value2`.
fn csv_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    text.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("{} is not key=value", steward_errors::shown(pair)))
        })
        .collect()
}

pub fn parse_json(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(document) = json_document(content, &mut parsed) else {
        return parsed;
    };
    let items = match &document {
        Value::Array(items) => items.clone(),
        Value::Object(o) => match o.get("identities") {
            Some(Value::Array(items)) => items.clone(),
            _ => {
                parsed.reject(0, "identities", "expected an array of identities");
                return parsed;
            }
        },
        _ => {
            parsed.reject(0, "content", "expected an array or {\"identities\": [...]}");
            return parsed;
        }
    };
    for (index, item) in items.iter().enumerate() {
        parsed.total += 1;
        let line = index as u64 + 1;
        match json_fields(item) {
            Ok((fields, labels)) => push(&mut parsed, line, fields, labels, defaults),
            Err(e) => parsed.errors.push(RowError { line, ..e }),
        }
    }
    parsed
}

/// A row's columns, and its labels when the row names them.
type Columns = (BTreeMap<String, String>, Option<BTreeMap<String, String>>);

/// Flattens one JSON identity into the CSV columns.
fn json_fields(item: &Value) -> Result<Columns, RowError> {
    let err = |field: &str, reason: &str| RowError {
        line: 0,
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    let object = item
        .as_object()
        .ok_or_else(|| err("identity", "is not an object"))?;
    let mut fields = BTreeMap::new();
    let mut labels = None;
    for (key, value) in object {
        match (key.as_str(), value) {
            ("labels", Value::Object(map)) => {
                let mut out = BTreeMap::new();
                for (k, v) in map {
                    let v = v
                        .as_str()
                        .ok_or_else(|| err("labels", "label values are strings"))?;
                    out.insert(k.clone(), v.to_owned());
                }
                labels = Some(out);
            }
            ("business_owner" | "technical_owner", Value::Object(owner)) => {
                for part in ["name", "kind", "contact"] {
                    if let Some(v) = owner.get(part) {
                        let v = v
                            .as_str()
                            .ok_or_else(|| err(key, "owner fields are strings"))?;
                        let column = if part == "name" {
                            key.clone()
                        } else {
                            format!("{key}_{part}")
                        };
                        fields.insert(column, v.to_owned());
                    }
                }
            }
            (_, Value::String(s)) if COLUMNS.contains(&key.as_str()) => {
                fields.insert(key.clone(), s.clone());
            }
            (_, Value::Null) if COLUMNS.contains(&key.as_str()) => {
                fields.insert(key.clone(), String::new());
            }
            _ if COLUMNS.contains(&key.as_str()) => {
                return Err(err(key, "has the wrong type"));
            }
            _ => return Err(err(key, "unknown field (see docs/inventory-import.md)")),
        }
    }
    Ok((fields, labels))
}

/// Builds one row from its columns, or reports why not.
fn push(
    parsed: &mut Parsed,
    line: u64,
    mut fields: BTreeMap<String, String>,
    labels: Option<BTreeMap<String, String>>,
    defaults: &Defaults,
) {
    match row(line, &mut fields, labels, defaults) {
        Ok(row) => parsed.rows.push(row),
        Err((field, reason)) => parsed.reject(line, field, reason),
    }
}

/// A row's refusal: the column, and why.
fn fail(field: &str, reason: String) -> (String, String) {
    (field.to_owned(), reason)
}

fn row(
    line: u64,
    fields: &mut BTreeMap<String, String>,
    labels: Option<BTreeMap<String, String>>,
    defaults: &Defaults,
) -> Result<ImportRow, (String, String)> {
    let take = |fields: &mut BTreeMap<String, String>, k: &str| fields.remove(k);
    let kind_text = take(fields, "kind").unwrap_or_default();
    let kind = Kind::parse(&kind_text.to_ascii_lowercase()).ok_or_else(|| {
        fail(
            "kind",
            format!(
                "{} is not one of {}",
                steward_errors::shown(&kind_text),
                Kind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let external_id = take(fields, "external_id").unwrap_or_default();
    if external_id.is_empty() {
        return Err(fail("external_id", "is required".into()));
    }
    let source = match take(fields, "source_system") {
        Some(s) if !s.is_empty() => s,
        _ if !defaults.source_system.is_empty() => defaults.source_system.clone(),
        _ => {
            return Err(fail(
                "source_system",
                "is required (in the row, or as the request's source_system)".into(),
            ));
        }
    };
    let mut present: Vec<&'static str> = vec!["kind"];
    let environment = match take(fields, "environment") {
        Some(e) => {
            present.push("environment");
            e
        }
        None => defaults.environment.clone(),
    };
    let mut spec = blank(kind, &source, external_id, &environment);
    if let Some(v) = take(fields, "display_name") {
        present.push("display_name");
        spec.display_name = v;
    }
    for (name, slot) in [
        ("business_service", &mut spec.business_service),
        ("workload", &mut spec.workload),
        ("purpose", &mut spec.purpose),
    ] {
        if let Some(v) = take(fields, name) {
            present.push(name);
            *slot = v;
        }
    }
    if let Some(v) = take(fields, "classification") {
        present.push("classification");
        spec.classification = Classification::parse(&v.to_ascii_lowercase()).ok_or_else(|| {
            fail(
                "classification",
                format!(
                    "{} is not machine_to_machine or interactive",
                    steward_errors::shown(&v)
                ),
            )
        })?;
    }
    owners(fields, &mut spec, &mut present)?;
    if let Some(v) = take(fields, "spiffe_id") {
        present.push("spiffe_id");
        if !v.is_empty() {
            spec.spiffe_id =
                Some(SpiffeId::parse(&v).map_err(|e| fail("spiffe_id", e.to_string()))?);
        }
    }
    times(fields, &mut spec, &mut present)?;
    if let Some(labels) = labels {
        present.push("labels");
        spec.labels = labels;
    }
    Ok(ImportRow::new(line, spec, present))
}

/// The two owners' columns (`<role>`, `<role>_kind`, `<role>_contact`).
fn owners(
    fields: &mut BTreeMap<String, String>,
    spec: &mut IdentitySpec,
    present: &mut Vec<&'static str>,
) -> Result<(), (String, String)> {
    for (name, field) in [
        ("business_owner", "business_owner"),
        ("technical_owner", "technical_owner"),
    ] {
        let Some(owner) = fields.remove(name) else {
            continue;
        };
        present.push(field);
        if owner.is_empty() {
            continue;
        }
        let kind_text = fields
            .remove(&format!("{name}_kind"))
            .unwrap_or_else(|| "person".into());
        let kind = OwnerKind::parse(&kind_text.to_ascii_lowercase()).ok_or_else(|| {
            fail(
                &format!("{name}_kind"),
                format!(
                    "{} is not person or team",
                    steward_errors::shown(&kind_text)
                ),
            )
        })?;
        let contact = fields
            .remove(&format!("{name}_contact"))
            .unwrap_or_default();
        let owner = Owner {
            kind,
            name: owner,
            contact,
        };
        if name == "business_owner" {
            spec.business_owner = Some(owner);
        } else {
            spec.technical_owner = Some(owner);
        }
    }
    Ok(())
}

/// The RFC 3339 time columns.
fn times(
    fields: &mut BTreeMap<String, String>,
    spec: &mut IdentitySpec,
    present: &mut Vec<&'static str>,
) -> Result<(), (String, String)> {
    for (name, slot) in [
        ("expire_time", &mut spec.expires_at),
        ("last_rotate_time", &mut spec.last_rotated_at),
        ("last_use_time", &mut spec.last_used_at),
        ("source_create_time", &mut spec.source_created_at),
    ] {
        if let Some(v) = fields.remove(name) {
            present.push(name);
            if !v.is_empty() {
                *slot = Some(rfc3339(&v).map_err(|reason| fail(name, reason))?);
            }
        }
    }
    Ok(())
}
