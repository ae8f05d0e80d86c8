//! Inventory's database: the same SQL on SQLite and PostgreSQL. Every write
//! is one transaction that also queues its evidence records in the outbox.
//!
//! - this file: reading and writing identities;
//! - [`rows`]: the identity columns, bound and read back;
//! - [`transitions`]: lifecycle changes, group-committed;
//! - [`activity`]: signals, entitlements, usage and owners;
//! - [`registration`]: registration entries and selector matching;
//! - [`reviews`]: access-review campaigns;
//! - [`reports`]: the posture reports;
//! - [`import`]: batched upserts for the importers.

pub mod activity;
pub mod import;
pub mod registration;
pub mod reports;
pub mod reviews;
mod rows;
pub mod transitions;

use std::collections::{BTreeMap, BTreeSet};

use crate::changes::{Changed, SharedChanges};
use steward_db::{Database, Placeholders, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::{Forwarder, OutboxTransaction};
use uuid::Uuid;

use crate::domain::{Error, Filter, Identity, now_ns};

pub use steward_db::Engine;

pub(crate) use rows::{
    COLUMN_COUNT, COLUMNS, Columns, StoredRow, active_at, bind_identity, corrupt, created_at,
    labels_json, owner_columns, read_identity, rotated_at, update_row,
};

/// The inventory database and the outbox forwarder to wake after commits.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) db: Database,
    forwarder: Option<Forwarder>,
    /// Facts caches to keep coherent (ADR 0008).
    pub changes: SharedChanges,
}

/// A page position: the last id returned.
pub(crate) fn after_id(token: &str) -> Result<String, Error> {
    if token.is_empty() {
        return Ok(String::new());
    }
    Uuid::try_parse(token)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| {
            Error::Invalid(crate::domain::bad(
                "page_token",
                "not a token from a previous response",
            ))
        })
}

/// A WHERE clause under construction, with its parameters.
#[derive(Debug, Default)]
pub(crate) struct Clause {
    pub(crate) sql: Vec<String>,
    pub(crate) params: Vec<Param>,
}

#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Int(i64),
}

impl Clause {
    /// Adds a condition whose `?` marks are replaced by numbered placeholders.
    pub(crate) fn push(&mut self, condition: &str, params: impl IntoIterator<Item = Param>) {
        let mut out = String::with_capacity(condition.len() + 8);
        let mut params = params.into_iter();
        for ch in condition.chars() {
            if ch == '?' {
                if let Some(p) = params.next() {
                    self.params.push(p);
                }
                out.push('$');
                out.push_str(&self.params.len().to_string());
            } else {
                out.push(ch);
            }
        }
        self.sql.push(out);
    }

    pub(crate) fn next_param(&self) -> usize {
        self.params.len() + 1
    }

    pub(crate) fn where_sql(&self) -> String {
        if self.sql.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", self.sql.join(" AND "))
        }
    }

    /// The conditions of `filter` on `identities` (aliased `i`).
    pub(crate) fn filter<DB: Engine>(&mut self, filter: &Filter) {
        if !filter.kinds.is_empty() {
            let marks = vec!["?"; filter.kinds.len()].join(", ");
            self.push(
                &format!("i.kind IN ({marks})"),
                filter.kinds.iter().map(|k| Param::Text(k.as_str().into())),
            );
        }
        if !filter.states.is_empty() {
            let marks = vec!["?"; filter.states.len()].join(", ");
            self.push(
                &format!("i.state IN ({marks})"),
                filter.states.iter().map(|s| Param::Text(s.as_str().into())),
            );
        }
        if !filter.owner.is_empty() {
            // Two index ranges joined, rather than an OR the planner scans.
            self.push(
                "i.id IN (SELECT id FROM identities WHERE business_owner = ? \
                 UNION SELECT id FROM identities WHERE technical_owner = ?)",
                [
                    Param::Text(filter.owner.clone()),
                    Param::Text(filter.owner.clone()),
                ],
            );
        }
        match &filter.label {
            Some((key, Some(value))) => self.push(
                "i.id IN (SELECT identity_id FROM identity_labels WHERE key = ? AND value = ?)",
                [Param::Text(key.clone()), Param::Text(value.clone())],
            ),
            Some((key, None)) => self.push(
                "i.id IN (SELECT identity_id FROM identity_labels WHERE key = ?)",
                [Param::Text(key.clone())],
            ),
            None => {}
        }
        if !filter.business_service.is_empty() {
            self.push(
                "i.business_service = ?",
                [Param::Text(filter.business_service.clone())],
            );
        }
        if !filter.environment.is_empty() {
            self.push(
                "i.environment = ?",
                [Param::Text(filter.environment.clone())],
            );
        }
        if !filter.source_system.is_empty() {
            self.push(
                "i.source_system = ?",
                [Param::Text(filter.source_system.clone())],
            );
        }
        if !filter.text.is_empty() {
            let pattern = format!("%{}%", escape_like(&filter.text));
            let like = DB::ILIKE;
            self.push(
                &format!(
                    "(i.display_name {like} ? ESCAPE '\\' OR i.external_id {like} ? ESCAPE '\\' \
                     OR i.purpose {like} ? ESCAPE '\\')"
                ),
                [
                    Param::Text(pattern.clone()),
                    Param::Text(pattern.clone()),
                    Param::Text(pattern),
                ],
            );
        }
    }
}

fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// Binds a clause's parameters, in order.
macro_rules! bind_params {
    ($query:expr, $params:expr) => {{
        let mut query = $query;
        for p in $params {
            query = match p {
                $crate::store::Param::Text(t) => query.bind(t.clone()),
                $crate::store::Param::Int(n) => query.bind(*n),
            };
        }
        query
    }};
}
pub(crate) use bind_params;

impl Store {
    pub fn new(db: Database, forwarder: Option<Forwarder>) -> Self {
        Self {
            db,
            forwarder,
            changes: SharedChanges::default(),
        }
    }

    /// After a commit: tells the forwarder that evidence was committed, and
    /// returns once facts caches no longer serve what `changed` replaced.
    pub(crate) async fn committed(&self, changed: Changed) {
        if let Some(f) = &self.forwarder {
            f.wake();
        }
        self.changes.publish(changed).await;
    }

    /// Inserts a new identity with its labels and evidence.
    pub async fn create(
        &self,
        identity: &Identity,
        evidence: &EvidenceRecord,
    ) -> Result<(), Error> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let taken: Option<String> = sqlx::query_scalar::<Db, String>(
                "SELECT id FROM identities WHERE source_system = $1 AND external_id = $2",
            )
            .bind(&identity.spec.source_system)
            .bind(&identity.spec.external_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = taken {
                return Err(Error::AlreadyExists(format!(
                    "identity.external_id: {:?} in {:?} is already registered as {existing}",
                    identity.spec.external_id, identity.spec.source_system
                )));
            }
            let orphaned = orphaned_in(&mut *tx, identity).await?;
            let sql = format!(
                "INSERT INTO identities ({COLUMNS}) VALUES {}",
                <Db as Placeholders>::values(1, COLUMN_COUNT, 1)
            );
            let query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            bind_identity!(query, identity, orphaned).execute(&mut *tx).await?;
            write_labels::<Db>(&mut tx, &identity.id, &identity.spec.labels, false).await?;
            tx.enqueue_all(std::slice::from_ref(evidence)).await?;
            tx.commit().await?;
        });
        self.committed(Changed::Nothing).await;
        Ok(())
    }

    /// One identity, or NotFound.
    pub async fn get(&self, id: &Uuid) -> Result<Identity, Error> {
        let sql = format!("SELECT {COLUMNS} FROM identities WHERE id = $1");
        let found = on_backend!(&self.db, pool, Db => {
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id.hyphenated().to_string()).fetch_optional(pool).await? {
                Some(row) => Some(read_identity(&row)?),
                None => None,
            }
        });
        found.ok_or_else(|| not_found(id))
    }

    /// One identity and whether an owner of it departed, in one query
    /// (the read authority makes for every decision).
    pub async fn get_with_departure(&self, id: &Uuid) -> Result<(Identity, bool), Error> {
        let sql = format!(
            "SELECT {COLUMNS}, (SELECT COUNT(*) FROM owners o WHERE o.departed = 1 \
             AND o.name IN (identities.business_owner, identities.technical_owner)) \
             FROM identities WHERE id = $1"
        );
        let found = on_backend!(&self.db, pool, Db => {
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).bind(id.hyphenated().to_string()).fetch_optional(pool).await? {
                Some(row) => {
                    let departed: i64 = sqlx::Row::try_get(&row, COLUMN_COUNT)?;
                    Some((read_identity(&row)?, departed > 0))
                }
                None => None,
            }
        });
        found.ok_or_else(|| not_found(id))
    }

    /// Which of `names` are marked departed.
    pub async fn departed_among(&self, names: &[String]) -> Result<BTreeSet<String>, Error> {
        if names.is_empty() {
            return Ok(BTreeSet::new());
        }
        let found: Vec<String> = on_backend!(&self.db, pool, Db => {
            let sql = format!(
                "SELECT name FROM owners WHERE departed = 1 AND name IN ({})",
                <Db as Placeholders>::list(names.len(), 1)
            );
            let mut query = sqlx::query_scalar::<Db, String>(sqlx::AssertSqlSafe(sql));
            for n in names {
                query = query.bind(n);
            }
            query.fetch_all(pool).await?
        });
        Ok(found.into_iter().collect())
    }

    /// Applies `change` to the stored identity (at `expected_version` when
    /// given) and writes it back with its evidence.
    pub async fn update(
        &self,
        id: &Uuid,
        expected_version: Option<i64>,
        change: impl FnOnce(&mut Identity) -> Result<EvidenceRecord, Error>,
    ) -> Result<Identity, Error> {
        let updated = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT {COLUMNS} FROM identities WHERE id = $1{}", <Db as Engine>::FOR_UPDATE);
            let row = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| not_found(id))?;
            let mut identity = read_identity(&row)?;
            check_version(&identity, expected_version)?;
            let labels_before = identity.spec.labels.clone();
            let evidence = change(&mut identity)?;
            identity.updated_at = now_ns();
            identity.version += 1;
            let orphaned = orphaned_in(&mut *tx, &identity).await?;
            update_row!(tx, Db, &identity, orphaned);
            if labels_before != identity.spec.labels {
                write_labels::<Db>(&mut tx, &identity.id, &identity.spec.labels, true).await?;
            }
            tx.enqueue_all(std::slice::from_ref(&evidence)).await?;
            tx.commit().await?;
            identity
        });
        self.committed(Changed::one(id.hyphenated().to_string()))
            .await;
        Ok(updated)
    }

    /// A page of identities matching `filter`, in id (creation) order.
    pub async fn list(
        &self,
        filter: &Filter,
        page: usize,
        token: &str,
    ) -> Result<(Vec<Identity>, String), Error> {
        let after = after_id(token)?;
        let rows = on_backend!(&self.db, pool, Db => {
            let mut clause = Clause::default();
            clause.filter::<Db>(filter);
            if !after.is_empty() {
                clause.push("i.id > ?", [Param::Text(after.clone())]);
            }
            let sql = format!(
                "SELECT {} FROM identities i {} ORDER BY i.id LIMIT {}",
                prefixed_columns("i"),
                clause.where_sql(),
                page + 1
            );
            let query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            let rows = bind_params!(query, &clause.params).fetch_all(pool).await?;
            rows.iter().map(read_identity).collect::<Result<Vec<_>, _>>()?
        });
        Ok(paged(rows, page, |i| i.id.hyphenated().to_string()))
    }
}

/// Splits one extra row off as the next page's token.
pub(crate) use steward_errors::wire::next_page as paged;

/// [`COLUMNS`] with a table alias.
pub(crate) fn prefixed_columns(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn not_found(id: &Uuid) -> Error {
    Error::NotFound(format!("identity {id} does not exist"))
}

pub(crate) fn check_version(identity: &Identity, expected: Option<i64>) -> Result<(), Error> {
    match expected {
        Some(v) if v != identity.version => Err(Error::Aborted(format!(
            "expected_version: the identity is at version {}, not {v}; re-read it and retry",
            identity.version
        ))),
        _ => Ok(()),
    }
}

/// Whether `identity` belongs on the orphaned report: no owner, or an owner
/// marked departed.
pub(crate) async fn orphaned_in<'e, E, DB>(executor: E, identity: &Identity) -> Result<bool, Error>
where
    DB: Engine,
    E: sqlx::Executor<'e, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> i64: sqlx::Decode<'q, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    if identity.spec.unowned
        || identity.spec.business_owner.is_none()
        || identity.spec.technical_owner.is_none()
    {
        return Ok(true);
    }
    let names = identity.owner_names();
    let sql = format!(
        "SELECT COUNT(*) FROM owners WHERE departed = 1 AND name IN ({})",
        DB::list(names.len(), 1)
    );
    let mut query = sqlx::query_scalar::<DB, i64>(sqlx::AssertSqlSafe(sql));
    for n in names {
        query = query.bind(n);
    }
    Ok(query.fetch_one(executor).await? > 0)
}

/// Replaces an identity's label rows.
pub(crate) async fn write_labels<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    id: &Uuid,
    labels: &BTreeMap<String, String>,
    replace: bool,
) -> Result<(), Error>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let id = id.hyphenated().to_string();
    if replace {
        sqlx::query::<DB>("DELETE FROM identity_labels WHERE identity_id = $1")
            .bind(id.clone())
            .execute(&mut **tx)
            .await?;
    }
    if labels.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO identity_labels (identity_id, key, value) VALUES {}",
        DB::values(labels.len(), 3, 1)
    );
    let mut query = sqlx::query::<DB>(sqlx::AssertSqlSafe(sql));
    for (k, v) in labels {
        query = query.bind(id.clone()).bind(k.clone()).bind(v.clone());
    }
    query.execute(&mut **tx).await?;
    Ok(())
}
