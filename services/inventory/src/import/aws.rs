//! The AWS IAM credential report (`aws iam get-credential-report`, base64
//! decoded): one CSV row per IAM user, with two access-key slots. Every key
//! that exists becomes an API-key identity with its rotation and last-use
//! dates; the user's name, the key's status and where it was last used
//! become labels.

use super::{Defaults, Parsed, blank, rfc3339};
use crate::domain::Kind;
use crate::store::import::ImportRow;

/// Columns the report must have.
const REQUIRED: &[&str] = &["user", "arn"];

/// The values AWS writes where a date would be.
fn absent(value: &str) -> bool {
    matches!(value, "" | "N/A" | "no_information" | "not_supported")
}

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let source = if defaults.source_system.is_empty() {
        "aws-iam"
    } else {
        defaults.source_system.as_str()
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(content);
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            parsed.reject(1, "content", format!("not a CSV credential report: {e}"));
            return parsed;
        }
    };
    for column in REQUIRED {
        if !headers.iter().any(|h| h == *column) {
            parsed.reject(
                1,
                *column,
                "column missing from the credential report header",
            );
            return parsed;
        }
    }
    let index = |name: &str| headers.iter().position(|h| h == name);
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
        let get = |name: &str| index(name).and_then(|i| record.get(i)).unwrap_or("");
        let user = get("user");
        let arn = get("arn");
        if user.is_empty() {
            parsed.reject(line, "user", "is empty");
            continue;
        }
        if !arn.starts_with("arn:") {
            parsed.reject(
                line,
                "arn",
                format!("{} is not an ARN", steward_errors::shown(arn)),
            );
            continue;
        }
        for slot in 1..=2 {
            let column = |suffix: &str| format!("access_key_{slot}_{suffix}");
            let rotated = get(&column("last_rotated"));
            if absent(rotated) {
                continue; // no key in this slot
            }
            let rotated = match rfc3339(rotated) {
                Ok(t) => t,
                Err(reason) => {
                    parsed.reject(line, column("last_rotated"), reason);
                    continue;
                }
            };
            let used = get(&column("last_used_date"));
            let used = if absent(used) {
                None
            } else {
                match rfc3339(used) {
                    Ok(t) => Some(t),
                    Err(reason) => {
                        parsed.reject(line, column("last_used_date"), reason);
                        continue;
                    }
                }
            };
            let mut spec = blank(
                Kind::ApiKey,
                source,
                format!("{arn}#access_key_{slot}"),
                &defaults.environment,
            );
            spec.display_name = format!("{user} access key {slot}");
            spec.last_rotated_at = Some(rotated);
            spec.last_used_at = used;
            spec.labels.insert("aws/user".into(), user.to_owned());
            spec.labels.insert(
                "aws/key-active".into(),
                get(&column("active")).to_ascii_lowercase(),
            );
            for (label, suffix) in [
                ("aws/last-used-region", "last_used_region"),
                ("aws/last-used-service", "last_used_service"),
            ] {
                let value = get(&column(suffix));
                if !absent(value) {
                    spec.labels.insert(label.into(), value.to_owned());
                }
            }
            parsed.rows.push(ImportRow {
                line,
                spec,
                fields: vec![
                    "kind",
                    "display_name",
                    "last_rotate_time",
                    "last_use_time",
                    "labels",
                ],
            });
        }
    }
    parsed
}
