//! The entitlements an import carries (a role's attached policies, the
//! cloud role a ServiceAccount may assume). An import is authoritative for
//! the entitlements it granted itself (`imported_from` is its source
//! system): a re-import withdraws those it no longer names and refreshes
//! their last use. What an operator granted through `GrantEntitlement` is
//! never touched.

use std::collections::{BTreeMap, HashMap};

use steward_db::Engine;
use uuid::Uuid;

use crate::domain::{Error, Nanos};
use crate::store::activity::Permission;

/// Entitlements a multi-row INSERT (9 parameters each).
const ADD_CHUNK: usize = 500;

/// One entitlement as its source states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitled {
    pub permission: Permission,
    /// When it was granted, where the source says (else: the import).
    pub granted_at: Option<Nanos>,
    /// When it was last used, where the source says.
    pub last_used_at: Option<Nanos>,
}

/// An entitlement the identity holds now.
#[derive(Debug, Clone)]
pub(super) struct Held {
    granted: bool,
    last_used_at: Option<Nanos>,
    imported_from: String,
}

/// What one identity's entitlements need.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// Granted anew (or an observed-only entitlement now granted).
    pub add: Vec<Entitled>,
    /// Held already; the source has seen a later use.
    pub used: Vec<(Permission, Nanos)>,
    /// Granted by this source before and no longer named.
    pub withdraw: Vec<Permission>,
}

impl Writes {
    /// Whether the identity's granted entitlements change (drift), as
    /// opposed to only their last use.
    pub fn drifts(&self) -> bool {
        !self.add.is_empty() || !self.withdraw.is_empty()
    }

    fn is_empty(&self) -> bool {
        !self.drifts() && self.used.is_empty()
    }
}

/// Compares what the source names with what the identity holds.
pub(super) fn diff(
    named: &[Entitled],
    held: Option<&BTreeMap<Permission, Held>>,
    source_system: &str,
) -> Writes {
    let empty = BTreeMap::new();
    let held = held.unwrap_or(&empty);
    let mut writes = Writes::default();
    for e in named {
        match held.get(&e.permission) {
            Some(h) if h.granted => {
                if let Some(used) = e.last_used_at
                    && h.last_used_at.is_none_or(|before| before < used)
                {
                    writes.used.push((e.permission.clone(), used));
                }
            }
            _ => writes.add.push(e.clone()),
        }
    }
    for (permission, h) in held {
        if h.granted
            && h.imported_from == source_system
            && !named.iter().any(|e| &e.permission == permission)
        {
            writes.withdraw.push(permission.clone());
        }
    }
    writes
}

/// The entitlements `ids` hold, by identity.
pub(super) async fn held<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, BTreeMap<Permission, Held>>, Error>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB> + sqlx::Decode<'q, DB>,
    for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Decode<'q, DB>,
    (String, String, String, String, i64, Option<i64>, String): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let mut out: HashMap<Uuid, BTreeMap<Permission, Held>> = HashMap::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT identity_id, system, permission, resource, granted, last_used_at_ns, imported_from
             FROM entitlements WHERE identity_id IN ({})",
            DB::list(chunk.len(), 1)
        );
        let mut query = sqlx::query_as::<
            DB,
            (String, String, String, String, i64, Option<i64>, String),
        >(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.hyphenated().to_string());
        }
        for (id, system, permission, resource, granted, last_used_at, imported_from) in
            query.fetch_all(&mut **tx).await?
        {
            let id = Uuid::try_parse(&id).map_err(|_| super::super::corrupt("id", &id))?;
            out.entry(id).or_default().insert(
                Permission {
                    system,
                    permission,
                    resource,
                },
                Held {
                    granted: granted != 0,
                    last_used_at,
                    imported_from,
                },
            );
        }
    }
    Ok(out)
}

/// Applies each identity's writes, then refreshes the over-privileged
/// report's key of every identity written.
pub(super) async fn apply<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    writes: &[(Uuid, String, Writes)],
    now: Nanos,
) -> Result<(), Error>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<i64>: sqlx::Encode<'q, DB>,
{
    let added: Vec<(String, &String, &Entitled)> = writes
        .iter()
        .flat_map(|(id, source, w)| {
            let id = id.hyphenated().to_string();
            w.add.iter().map(move |e| (id.clone(), source, e))
        })
        .collect();
    for chunk in added.chunks(ADD_CHUNK) {
        let sql = format!(
            "INSERT INTO entitlements (identity_id, system, permission, resource, granted,
                granted_at_ns, last_used_at_ns, use_count, imported_from)
             VALUES {}
             ON CONFLICT (identity_id, system, permission, resource) DO UPDATE SET
                granted = 1, granted_at_ns = excluded.granted_at_ns,
                imported_from = excluded.imported_from,
                last_used_at_ns = CASE WHEN entitlements.last_used_at_ns IS NULL
                    OR entitlements.last_used_at_ns < excluded.last_used_at_ns
                    THEN excluded.last_used_at_ns ELSE entitlements.last_used_at_ns END",
            DB::values(chunk.len(), 9, 1)
        );
        let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for (id, source, e) in chunk {
            let p = &e.permission;
            query = query
                .bind(id.clone())
                .bind(p.system.clone())
                .bind(p.permission.clone())
                .bind(p.resource.clone())
                .bind(1_i64)
                .bind(e.granted_at.unwrap_or(now))
                .bind(e.last_used_at)
                .bind(0_i64)
                .bind((*source).clone());
        }
        query.execute(&mut **tx).await?;
    }
    let mut written: Vec<String> = Vec::new();
    for (id, _, w) in writes {
        if w.is_empty() {
            continue;
        }
        let id = id.hyphenated().to_string();
        for (p, used) in &w.used {
            sqlx::query::<DB>(
                "UPDATE entitlements SET last_used_at_ns = $1
                 WHERE identity_id = $2 AND system = $3 AND permission = $4 AND resource = $5",
            )
            .bind(*used)
            .bind(id.clone())
            .bind(p.system.clone())
            .bind(p.permission.clone())
            .bind(p.resource.clone())
            .execute(&mut **tx)
            .await?;
        }
        for p in &w.withdraw {
            sqlx::query::<DB>(
                "DELETE FROM entitlements
                 WHERE identity_id = $1 AND system = $2 AND permission = $3 AND resource = $4",
            )
            .bind(id.clone())
            .bind(p.system.clone())
            .bind(p.permission.clone())
            .bind(p.resource.clone())
            .execute(&mut **tx)
            .await?;
        }
        written.push(id);
    }
    for chunk in written.chunks(500) {
        let sql = format!(
            "UPDATE identities SET entitlement_idle_since_ns = (
                SELECT MIN(COALESCE(e.last_used_at_ns, e.granted_at_ns)) FROM entitlements e
                WHERE e.identity_id = identities.id AND e.granted = 1)
             WHERE id IN ({})",
            DB::list(chunk.len(), 1)
        );
        let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id.clone());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission(name: &str) -> Permission {
        Permission {
            system: "aws".into(),
            permission: name.into(),
            resource: "*".into(),
        }
    }

    fn held(granted: bool, used: Option<Nanos>, from: &str) -> Held {
        Held {
            granted,
            last_used_at: used,
            imported_from: from.into(),
        }
    }

    #[test]
    fn an_import_withdraws_only_what_it_granted() {
        let named = vec![Entitled {
            permission: permission("s3:GetObject"),
            granted_at: None,
            last_used_at: Some(20),
        }];
        let mut current = BTreeMap::new();
        current.insert(
            permission("s3:GetObject"),
            held(true, Some(10), "aws-iam:1"),
        );
        current.insert(permission("iam:PassRole"), held(true, None, "aws-iam:1"));
        current.insert(permission("ec2:RunInstances"), held(true, None, ""));
        current.insert(permission("kms:Decrypt"), held(true, None, "aws-iam:2"));
        let w = diff(&named, Some(&current), "aws-iam:1");
        assert!(w.add.is_empty());
        assert_eq!(w.used, vec![(permission("s3:GetObject"), 20)]);
        assert_eq!(w.withdraw, vec![permission("iam:PassRole")]);
        assert!(w.drifts());
    }

    #[test]
    fn an_observed_permission_becomes_granted_and_an_older_use_is_ignored() {
        let named = vec![
            Entitled {
                permission: permission("s3:GetObject"),
                granted_at: Some(5),
                last_used_at: None,
            },
            Entitled {
                permission: permission("s3:PutObject"),
                granted_at: None,
                last_used_at: Some(5),
            },
        ];
        let mut current = BTreeMap::new();
        current.insert(permission("s3:GetObject"), held(false, Some(10), ""));
        current.insert(
            permission("s3:PutObject"),
            held(true, Some(10), "aws-iam:1"),
        );
        let w = diff(&named, Some(&current), "aws-iam:1");
        assert_eq!(w.add.len(), 1);
        assert_eq!(w.add[0].permission, permission("s3:GetObject"));
        assert!(w.used.is_empty() && w.withdraw.is_empty());
        let unchanged = diff(&named[1..], Some(&current), "aws-iam:1");
        assert!(!unchanged.drifts() && unchanged.is_empty());
    }
}
