//! The AWS IAM credential report: one CSV row per IAM user, with two
//! access-key slots and two signing-certificate slots. It is taken as the
//! CSV itself or as `aws iam get-credential-report`'s JSON, whose
//! `Content` holds the CSV in base64. Every key that exists becomes an
//! API-key identity with its rotation and last-use dates, and every
//! certificate a certificate identity with its rotation date; the user's
//! name, the credential's status and where a key was last used become
//! labels.

use super::{Defaults, Parsed, blank, rfc3339};
use crate::domain::{IdentitySpec, Kind, PRINCIPAL_LABEL, State};
use crate::store::import::ImportRow;

/// Columns the report must have.
const REQUIRED: &[&str] = &["user", "arn"];

/// The values AWS writes where a date would be.
fn absent(value: &str) -> bool {
    matches!(value, "" | "N/A" | "no_information" | "not_supported")
}

/// What `aws iam get-credential-report` prints.
#[derive(serde::Deserialize)]
struct CliReport {
    #[serde(rename = "Content")]
    content: String,
    #[serde(rename = "ReportFormat", default)]
    report_format: String,
}

/// The CSV in the CLI's JSON, or `None` when `content` is not JSON (the
/// CSV itself). The reason never quotes the content.
fn from_cli_json(content: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if content.trim_ascii_start().first() != Some(&b'{') {
        return Ok(None);
    }
    let report: CliReport = serde_json::from_slice(content).map_err(|e| {
        format!(
            "not the AWS CLI's credential report (JSON with Content): line {}, column {}",
            e.line(),
            e.column()
        )
    })?;
    if !report.report_format.is_empty() && report.report_format != "text/csv" {
        return Err(format!(
            "ReportFormat {} is not text/csv",
            steward_errors::shown(&report.report_format)
        ));
    }
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(report.content.trim())
        .map(Some)
        .map_err(|_| "Content is not base64".to_owned())
}

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let decoded = match from_cli_json(content) {
        Ok(decoded) => decoded,
        Err(reason) => {
            parsed.reject(1, "content", reason);
            return parsed;
        }
    };
    let content = decoded.as_deref().unwrap_or(content);
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
        let row = Row {
            line,
            user,
            arn,
            source: source_system(arn, defaults),
        };
        access_keys(&mut parsed, &get, &row, defaults);
        certificates(&mut parsed, &get, &row, defaults);
    }
    parsed
}

/// A credential the report marks inactive (`*_active` is `false`) starts
/// suspended: it exists and may be switched on again, and until then
/// authority gives nothing to it.
fn disabled(active: &str) -> Option<State> {
    active
        .eq_ignore_ascii_case("false")
        .then_some(State::Suspended)
}

/// The request's source system, else `aws-iam:<account id>` from the
/// ARN, so that two accounts' reports never name each other's keys.
pub(super) fn source_system(arn: &str, defaults: &Defaults) -> String {
    if !defaults.source_system.is_empty() {
        return defaults.source_system.clone();
    }
    match arn.split(':').nth(4) {
        Some(account) if !account.is_empty() => format!("aws-iam:{account}"),
        _ => "aws-iam".to_owned(),
    }
}

/// The user a report row is about.
struct Row<'a> {
    line: u64,
    user: &'a str,
    arn: &'a str,
    source: String,
}

impl Row<'_> {
    /// A credential of this user in `slot` (`access_key_1`, `cert_2`)
    /// created (or last replaced) at `rotated`, with the labels every
    /// credential of the report has.
    fn credential(
        &self,
        kind: Kind,
        slot: &str,
        rotated: i64,
        defaults: &Defaults,
    ) -> IdentitySpec {
        let mut spec = blank(
            kind,
            &self.source,
            format!("{}#{slot}", self.arn),
            &defaults.environment,
        );
        // The report's "last rotated" is when this key or certificate was
        // created: rotating one in IAM makes a new one.
        spec.last_rotated_at = Some(rotated);
        spec.source_created_at = Some(rotated);
        spec.labels.insert("aws/user".into(), self.user.to_owned());
        spec.labels
            .insert(PRINCIPAL_LABEL.into(), self.arn.to_owned());
        spec
    }
}

/// The row's signing certificates (`cert_N_*`), as certificate identities.
fn certificates<'r>(
    parsed: &mut Parsed,
    get: &dyn Fn(&str) -> &'r str,
    row: &Row<'_>,
    defaults: &Defaults,
) {
    for slot in 1..=2 {
        let column = |suffix: &str| format!("cert_{slot}_{suffix}");
        let rotated = get(&column("last_rotated"));
        if absent(rotated) {
            continue; // no certificate in this slot
        }
        let rotated = match rfc3339(rotated) {
            Ok(t) => t,
            Err(reason) => {
                parsed.reject(row.line, column("last_rotated"), reason);
                continue;
            }
        };
        let mut spec = row.credential(
            Kind::Certificate,
            &format!("cert_{slot}"),
            rotated,
            defaults,
        );
        spec.display_name = format!("{} signing certificate {slot}", row.user);
        spec.labels.insert(
            "aws/cert-active".into(),
            get(&column("active")).to_ascii_lowercase(),
        );
        parsed.rows.push(ImportRow {
            line: row.line,
            spec,
            fields: vec![
                "kind",
                "display_name",
                "last_rotate_time",
                "source_create_time",
                "labels",
            ],
            state: disabled(get(&column("active"))),
            entitlements: None,
        });
    }
}

/// The row's access keys (`access_key_N_*`), as API-key identities.
fn access_keys<'r>(
    parsed: &mut Parsed,
    get: &dyn Fn(&str) -> &'r str,
    row: &Row<'_>,
    defaults: &Defaults,
) {
    for slot in 1..=2 {
        let column = |suffix: &str| format!("access_key_{slot}_{suffix}");
        let rotated = get(&column("last_rotated"));
        if absent(rotated) {
            continue; // no key in this slot
        }
        let rotated = match rfc3339(rotated) {
            Ok(t) => t,
            Err(reason) => {
                parsed.reject(row.line, column("last_rotated"), reason);
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
                    parsed.reject(row.line, column("last_used_date"), reason);
                    continue;
                }
            }
        };
        let mut spec = row.credential(
            Kind::ApiKey,
            &format!("access_key_{slot}"),
            rotated,
            defaults,
        );
        spec.display_name = format!("{} access key {slot}", row.user);
        spec.last_used_at = used;
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
            line: row.line,
            spec,
            fields: vec![
                "kind",
                "display_name",
                "last_rotate_time",
                "last_use_time",
                "source_create_time",
                "labels",
            ],
            state: disabled(get(&column("active"))),
            entitlements: None,
        });
    }
}
