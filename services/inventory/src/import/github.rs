//! GitHub's machine credentials, as its REST API returns them (pages
//! concatenated or not): an organisation's app installations
//! (`GET /orgs/{org}/installations`), repository deploy keys
//! (`GET /repos/{owner}/{repo}/keys`) and fine-grained personal access
//! tokens granted to the organisation (`GET /orgs/{org}/personal-access-tokens`).
//! Each becomes an identity whose permissions are entitlements on the
//! organisation or repository; a suspended installation or a disabled
//! deploy key starts suspended.

use serde_json::Value;

use super::documents::{expiry, read, text, time};
use super::{Defaults, Parsed, blank};
use crate::domain::{Kind, Owner, OwnerKind, State};
use crate::store::activity::Permission;
use crate::store::import::{Entitled, ImportRow};

type Refusal = (&'static str, String);

pub fn parse(content: &[u8], defaults: &Defaults) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(items) = read(content, &["installations"], &mut parsed) else {
        return parsed;
    };
    // One organisation a file: a token names its organisation only by
    // number, so the estate is the one the installations or deploy keys
    // name (or the request's).
    let org = items
        .iter()
        .find_map(|item| {
            let login = item.get("account").map(|a| text(a, "login"));
            login
                .or_else(|| repository_of(text(item, "url")).map(|(owner, _)| owner))
                .filter(|o| !o.is_empty())
        })
        .unwrap_or("");
    let estate = Estate {
        source: source_system(org, defaults),
        org,
        environment: &defaults.environment,
    };
    for (index, item) in items.iter().enumerate() {
        parsed.total += 1;
        let line = index as u64 + 1;
        let row = if item.get("app_slug").is_some() {
            installation(item, &estate)
        } else if item.get("token_id").is_some() {
            token(item, &estate)
        } else if item.get("read_only").is_some() && item.get("key").is_some() {
            deploy_key(item, &estate)
        } else {
            Err((
                "item",
                "not an app installation, a deploy key or a fine-grained token".into(),
            ))
        };
        match row {
            Ok(row) => parsed.rows.push(ImportRow { line, ..row }),
            Err((field, reason)) => parsed.reject(line, field, reason),
        }
    }
    parsed
}

/// The organisation a file is about.
struct Estate<'a> {
    source: String,
    org: &'a str,
    environment: &'a str,
}

/// `github:<org>`, or the request's source system.
fn source_system(org: &str, defaults: &Defaults) -> String {
    match (defaults.source_system.as_str(), org) {
        ("", "") => "github".into(),
        ("", org) => format!("github:{org}"),
        (named, _) => named.to_owned(),
    }
}

/// A numeric or text id.
fn id(item: &Value, key: &'static str) -> Result<String, Refusal> {
    match item.get(key) {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err((key, "is required".into())),
    }
}

/// `{"contents": "write", …}` as entitlements `contents:write` on `resource`.
fn permissions(
    map: Option<&Value>,
    prefix: &str,
    resource: &str,
    since: Option<i64>,
) -> Vec<Entitled> {
    map.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, level)| {
            Some(Entitled {
                permission: Permission {
                    system: "github".into(),
                    permission: format!("{prefix}{name}:{}", level.as_str()?),
                    resource: resource.to_owned(),
                },
                granted_at: since,
                last_used_at: None,
            })
        })
        .collect()
}

/// Where an installation's or token's repository permissions apply.
fn scope(org: &str, selection: &str) -> String {
    match selection {
        "all" | "" => format!("{org}/*"),
        other => format!("{org} ({other} repositories)"),
    }
}

fn installation(item: &Value, estate: &Estate<'_>) -> Result<ImportRow, Refusal> {
    let installation = id(item, "id")?;
    let org = item.get("account").map_or(estate.org, |a| text(a, "login"));
    let slug = text(item, "app_slug");
    let mut spec = blank(
        Kind::OauthApp,
        &estate.source,
        format!("installation/{installation}"),
        estate.environment,
    );
    spec.display_name = format!("GitHub App {slug} on {org}");
    // The API says nothing of an installation's use: its installation
    // date is a label, so that neither stale nor over-privileged claims
    // disuse without evidence.
    let installed = text(item, "created_at");
    let selection = text(item, "repository_selection");
    time(item, "created_at")?;
    for (label, value) in [
        (
            "github/installed",
            installed.get(..10).unwrap_or(installed).to_owned(),
        ),
        ("github/app-slug", slug.to_owned()),
        ("github/app-id", id(item, "app_id").unwrap_or_default()),
        ("github/repository-selection", selection.to_owned()),
    ] {
        if !value.is_empty() {
            spec.labels.insert(label.into(), value);
        }
    }
    let fields = vec!["kind", "display_name", "labels"];
    let mut row = ImportRow::new(0, spec, fields);
    row.state = item
        .get("suspended_at")
        .is_some_and(|s| !s.is_null())
        .then_some(State::Suspended);
    row.entitlements = Some(permissions(
        item.get("permissions"),
        "",
        &scope(org, selection),
        None,
    ));
    Ok(row)
}

/// The owner and repository of `…/repos/{owner}/{repo}/keys/{id}`.
fn repository_of(url: &str) -> Option<(&str, &str)> {
    let rest = url.split("/repos/").nth(1)?;
    let mut parts = rest.split('/');
    Some((parts.next()?, parts.next()?)).filter(|(o, r)| !o.is_empty() && !r.is_empty())
}

fn deploy_key(item: &Value, estate: &Estate<'_>) -> Result<ImportRow, Refusal> {
    let key = id(item, "id")?;
    let (owner, repo) = repository_of(text(item, "url")).ok_or((
        "url",
        "does not name the repository (…/repos/{owner}/{repo}/keys/{id})".to_owned(),
    ))?;
    let mut spec = blank(
        Kind::SshKey,
        &estate.source,
        format!("deploy-key/{owner}/{repo}/{key}"),
        estate.environment,
    );
    let title = text(item, "title");
    spec.display_name = format!("deploy key {title} on {owner}/{repo}");
    let created = time(item, "created_at")?;
    spec.source_created_at = created;
    spec.last_rotated_at = created;
    spec.last_used_at = time(item, "last_used")?;
    spec.labels
        .insert("github/repository".into(), format!("{owner}/{repo}"));
    let added_by = text(item, "added_by");
    if !added_by.is_empty() {
        spec.labels
            .insert("github/added-by".into(), added_by.to_owned());
    }
    let read_only = item.get("read_only").and_then(Value::as_bool) != Some(false);
    let fields = vec![
        "kind",
        "display_name",
        "labels",
        "source_create_time",
        "last_rotate_time",
        "last_use_time",
    ];
    let mut row = ImportRow::new(0, spec, fields);
    row.state =
        (item.get("enabled").and_then(Value::as_bool) == Some(false)).then_some(State::Suspended);
    row.entitlements = Some(vec![Entitled {
        permission: Permission {
            system: "github".into(),
            permission: if read_only {
                "contents:read"
            } else {
                "contents:write"
            }
            .into(),
            resource: format!("{owner}/{repo}"),
        },
        granted_at: created,
        last_used_at: time(item, "last_used")?,
    }]);
    Ok(row)
}

fn token(item: &Value, estate: &Estate<'_>) -> Result<ImportRow, Refusal> {
    let token = id(item, "token_id")?;
    let org = estate.org;
    let owner = item.get("owner").map_or("", |o| text(o, "login"));
    let mut spec = blank(
        Kind::ApiKey,
        &estate.source,
        format!("fine-grained-pat/{token}"),
        estate.environment,
    );
    let name = text(item, "token_name");
    spec.display_name = format!("token {name} of {owner}");
    let granted = time(item, "access_granted_at")?;
    spec.source_created_at = granted;
    spec.expires_at = expiry(item, "token_expires_at")?;
    spec.last_used_at = time(item, "token_last_used_at")?;
    let mut fields = vec![
        "kind",
        "display_name",
        "labels",
        "source_create_time",
        "expire_time",
        "last_use_time",
    ];
    if !owner.is_empty() {
        // A personal token acts for the person who made it.
        spec.technical_owner = Some(Owner {
            kind: OwnerKind::Person,
            name: owner.to_owned(),
            contact: String::new(),
        });
        spec.labels
            .insert("github/token-owner".into(), owner.to_owned());
        fields.push("technical_owner");
    }
    let expired = item.get("token_expired").and_then(Value::as_bool) == Some(true);
    spec.labels
        .insert("github/token-expired".into(), expired.to_string());
    let selection = text(item, "repository_selection");
    let permissions_of = item.get("permissions");
    let mut entitlements = permissions(
        permissions_of.and_then(|p| p.get("repository")),
        "",
        &scope(org, selection),
        granted,
    );
    for (group, prefix) in [("organization", "organization/"), ("other", "other/")] {
        entitlements.extend(permissions(
            permissions_of.and_then(|p| p.get(group)),
            prefix,
            org,
            granted,
        ));
    }
    for e in &mut entitlements {
        e.last_used_at = spec.last_used_at;
    }
    let mut row = ImportRow::new(0, spec, fields);
    row.entitlements = Some(entitlements);
    Ok(row)
}
