//! Versioned documents (policy sets, response rule sets) and their
//! activations; approvals, grants and reviews (`approvals`); each change
//! with its evidence in the outbox.

use steward_db::{Database, Engine, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

mod approvals;
mod responses;
pub use approvals::{Closure, ListFilter};
pub use responses::ResponseAction;

/// A stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSet {
    pub version: u64,
    pub policies: String,
    pub description: String,
    pub policy_ids: Vec<String>,
    pub uploaded_by: String,
    pub created_at_ns: i64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Storage(#[from] steward_db::StorageError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.into())
    }
}

impl From<steward_outbox::OutboxError> for StoreError {
    fn from(e: steward_outbox::OutboxError) -> Self {
        match e {
            steward_outbox::OutboxError::Storage(e) => e.into(),
            other => Self::Storage(steward_db::StorageError::unavailable(other)),
        }
    }
}

/// A stored value this version cannot read.
pub(crate) fn corrupt(detail: String) -> StoreError {
    StoreError::Storage(steward_db::StorageError::corrupt(detail))
}

/// A stored version; a negative one is a corrupt row, never version 0.
fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(format!("stored version {v} is not valid")))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

type Row = (i64, String, String, String, String, i64);

fn stored(
    (version, policies, description, ids, uploaded_by, created_at_ns): Row,
) -> Result<StoredSet, StoreError> {
    Ok(StoredSet {
        version: to_u64(version)?,
        policies,
        description,
        policy_ids: ids
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        uploaded_by,
        created_at_ns,
    })
}

const COLUMNS: &str = "version, policies, description, policy_ids, uploaded_by, created_at_ns";

/// A document to store as a new version.
#[derive(Debug, Clone, Copy)]
pub struct NewVersion<'a> {
    pub text: &'a str,
    pub description: &'a str,
    /// The ids of its policies or rules.
    pub ids: &'a [String],
    pub uploaded_by: &'a str,
    pub now_ns: i64,
}

/// Which versioned document: both kinds are stored, listed, activated and
/// rolled back the same way, in tables of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKind {
    Policies,
    ResponseRules,
}

impl SetKind {
    /// (versions table, activations table).
    fn tables(self) -> (&'static str, &'static str) {
        match self {
            Self::Policies => ("policy_sets", "activations"),
            Self::ResponseRules => ("rule_sets", "rule_activations"),
        }
    }

    /// The prefix of its evidence actions (`policy.activate`, `rules.upload`).
    pub fn event_prefix(self) -> &'static str {
        match self {
            Self::Policies => "policy",
            Self::ResponseRules => "rules",
        }
    }

    /// How errors name the document.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Policies => "policy set",
            Self::ResponseRules => "response rule set",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a document as the next version of its kind; returns it.
    pub async fn upload(
        &self,
        kind: SetKind,
        new: NewVersion<'_>,
        evidence: impl FnOnce(u64) -> EvidenceRecord,
    ) -> Result<u64, StoreError> {
        let NewVersion {
            text: policies,
            description,
            ids: policy_ids,
            uploaded_by,
            now_ns,
        } = new;
        let ids = policy_ids.join("\n");
        let (sets, _) = kind.tables();
        let version = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT COALESCE(MAX(version), 0) + 1 FROM {sets}");
            let next: i64 = sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut *tx)
                .await?;
            let sql = format!("INSERT INTO {sets} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(next)
                .bind(policies)
                .bind(description)
                .bind(&ids)
                .bind(uploaded_by)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
            let version = to_u64(next)?;
            tx.enqueue_all(&[evidence(version)]).await?;
            tx.commit().await?;
            version
        });
        Ok(version)
    }

    /// One version, or the active one for 0.
    pub async fn get(&self, kind: SetKind, version: u64) -> Result<StoredSet, StoreError> {
        let (sets, _) = kind.tables();
        let version = if version == 0 {
            self.active(kind)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no {} is active", kind.noun())))?
        } else {
            version
        };
        let row: Option<Row> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {COLUMNS} FROM {sets} WHERE version = $1");
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(version))
                .fetch_optional(pool)
                .await?
        });
        row.map(stored).transpose()?.ok_or_else(|| {
            StoreError::NotFound(format!("version: {} {version} does not exist", kind.noun()))
        })
    }

    /// Versions below `before` (all when 0), newest first.
    pub async fn list(
        &self,
        kind: SetKind,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredSet>, StoreError> {
        let (sets, _) = kind.tables();
        let rows: Vec<Row> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {COLUMNS} FROM {sets} WHERE ($1 = 0 OR version < $1) ORDER BY version DESC LIMIT $2");
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(before))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(stored).collect()
    }

    /// The active version, if any.
    pub async fn active(&self, kind: SetKind) -> Result<Option<u64>, StoreError> {
        let (_, acts) = kind.tables();
        let version: Option<i64> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT version FROM {acts} ORDER BY seq DESC LIMIT 1");
            sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_optional(pool)
                .await?
        });
        version.map(to_u64).transpose()
    }

    /// The last activation of `kind`: its sequence number (which only
    /// grows, whatever version it activated) and the version.
    pub async fn last_activation(&self, kind: SetKind) -> Result<Option<(u64, u64)>, StoreError> {
        let (_, acts) = kind.tables();
        let found: Option<(i64, i64)> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT seq, version FROM {acts} ORDER BY seq DESC LIMIT 1");
            sqlx::query_as::<Db, (i64, i64)>(sqlx::AssertSqlSafe(sql))
                .fetch_optional(pool)
                .await?
        });
        found
            .map(|(seq, version)| Ok((to_u64(seq)?, to_u64(version)?)))
            .transpose()
    }

    /// The version a rollback would activate: the one active before the
    /// current one (0 when there is none).
    pub async fn rollback_target(&self, kind: SetKind) -> Result<u64, StoreError> {
        let (_, acts) = kind.tables();
        let previous: Option<i64> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT previous FROM {acts} ORDER BY seq DESC LIMIT 1");
            sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_optional(pool)
                .await?
        });
        previous.map_or(Ok(0), to_u64)
    }

    /// Activates `version` (which must exist); `None` activates the version
    /// active before the current one. Returns (activated, previous).
    pub async fn activate(
        &self,
        kind: SetKind,
        version: Option<u64>,
        activated_by: &str,
        reason: &str,
        now_ns: i64,
        evidence: impl FnOnce(u64, u64) -> EvidenceRecord,
    ) -> Result<(u64, u64), StoreError> {
        let (sets, acts) = kind.tables();
        let noun = kind.noun();
        let result = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!("SELECT version, previous FROM {acts} ORDER BY seq DESC LIMIT 1");
            let current: Option<(i64, i64)> = sqlx::query_as::<Db, (i64, i64)>(sqlx::AssertSqlSafe(sql))
            .fetch_optional(&mut *tx)
            .await?;
            let (current, before) = match current {
                Some((v, p)) => (to_u64(v)?, to_u64(p)?),
                None => (0, 0),
            };
            let target = match version {
                Some(v) => v,
                None if before == 0 => {
                    return Err(StoreError::FailedPrecondition(format!(
                        "no earlier {noun} was active; nothing to roll back to"
                    )));
                }
                None => before,
            };
            let sql = format!("SELECT version FROM {sets} WHERE version = $1");
            let exists: Option<i64> = sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(target))
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("version: {noun} {target} does not exist")));
            }
            if target == current {
                return Err(StoreError::FailedPrecondition(format!("version: {noun} {target} is already active")));
            }
            // After a rollback, the one before is the one before the
            // rolled-back-to version, so repeated rollbacks walk back.
            let previous = if version.is_none() {
                let sql = format!("SELECT previous FROM {acts} WHERE version = $1 ORDER BY seq DESC LIMIT 1");
                let earlier: Option<i64> = sqlx::query_scalar::<Db, i64>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(target))
                .fetch_optional(&mut *tx)
                .await?;
                earlier.map_or(Ok(0), to_u64)?
            } else {
                current
            };
            let sql = format!("INSERT INTO {acts} (version, previous, activated_by, reason, at_ns) VALUES ($1, $2, $3, $4, $5)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(target))
                .bind(to_i64(previous))
                .bind(activated_by)
                .bind(reason)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(&[evidence(target, current)]).await?;
            tx.commit().await?;
            (target, current)
        });
        Ok(result)
    }
}
