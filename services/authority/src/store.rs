//! Policy set versions and activations, with their evidence in the outbox.

use steward_db::{Database, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

mod approvals;
pub use approvals::ListFilter;

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
    #[error("storage: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<steward_outbox::OutboxError> for StoreError {
    fn from(e: steward_outbox::OutboxError) -> Self {
        Self::Storage(e.to_string())
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

type Row = (i64, String, String, String, String, i64);

fn stored((version, policies, description, ids, uploaded_by, created_at_ns): Row) -> StoredSet {
    StoredSet {
        version: to_u64(version),
        policies,
        description,
        policy_ids: ids
            .split('\n')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        uploaded_by,
        created_at_ns,
    }
}

const COLUMNS: &str = "version, policies, description, policy_ids, uploaded_by, created_at_ns";

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores `policies` as the next version; returns it.
    pub async fn upload(
        &self,
        policies: &str,
        description: &str,
        policy_ids: &[String],
        uploaded_by: &str,
        now_ns: i64,
        evidence: impl FnOnce(u64) -> EvidenceRecord,
    ) -> Result<u64, StoreError> {
        let ids = policy_ids.join("\n");
        let version = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin().await?;
            let next: i64 = sqlx::query_scalar::<Db, i64>("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_sets")
                .fetch_one(&mut *tx)
                .await?;
            let sql = format!("INSERT INTO policy_sets ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)");
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(next)
                .bind(policies)
                .bind(description)
                .bind(&ids)
                .bind(uploaded_by)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(&[evidence(to_u64(next))]).await?;
            tx.commit().await?;
            to_u64(next)
        });
        Ok(version)
    }

    /// One version, or the active one for 0.
    pub async fn get(&self, version: u64) -> Result<StoredSet, StoreError> {
        let version = if version == 0 {
            self.active()
                .await?
                .ok_or_else(|| StoreError::NotFound("no policy set is active".into()))?
        } else {
            version
        };
        let row: Option<Row> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {COLUMNS} FROM policy_sets WHERE version = $1");
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(version))
                .fetch_optional(pool)
                .await?
        });
        row.map(stored).ok_or_else(|| {
            StoreError::NotFound(format!("version: policy set {version} does not exist"))
        })
    }

    /// Versions below `before` (all when 0), newest first.
    pub async fn list(&self, before: u64, limit: usize) -> Result<Vec<StoredSet>, StoreError> {
        let rows: Vec<Row> = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {COLUMNS} FROM policy_sets WHERE ($1 = 0 OR version < $1) ORDER BY version DESC LIMIT $2");
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(to_i64(before))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?
        });
        Ok(rows.into_iter().map(stored).collect())
    }

    /// The active version, if any.
    pub async fn active(&self) -> Result<Option<u64>, StoreError> {
        let version: Option<i64> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT version FROM activations ORDER BY seq DESC LIMIT 1")
                .fetch_optional(pool)
                .await?
        });
        Ok(version.map(to_u64))
    }

    /// Activates `version` (which must exist); `None` activates the version
    /// active before the current one. Returns (activated, previous).
    pub async fn activate(
        &self,
        version: Option<u64>,
        activated_by: &str,
        reason: &str,
        now_ns: i64,
        evidence: impl FnOnce(u64, u64) -> EvidenceRecord,
    ) -> Result<(u64, u64), StoreError> {
        let result = on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin().await?;
            let current: Option<(i64, i64)> = sqlx::query_as::<Db, (i64, i64)>(
                "SELECT version, previous FROM activations ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let (current, before) = current.map_or((0, 0), |(v, p)| (to_u64(v), to_u64(p)));
            let target = match version {
                Some(v) => v,
                None if before == 0 => {
                    return Err(StoreError::FailedPrecondition(
                        "no earlier policy set was active; nothing to roll back to".into(),
                    ));
                }
                None => before,
            };
            let exists: Option<i64> = sqlx::query_scalar::<Db, i64>("SELECT version FROM policy_sets WHERE version = $1")
                .bind(to_i64(target))
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!("version: policy set {target} does not exist")));
            }
            if target == current {
                return Err(StoreError::FailedPrecondition(format!("version: policy set {target} is already active")));
            }
            // After a rollback, the one before is the one before the
            // rolled-back-to version, so repeated rollbacks walk back.
            let previous = if version.is_none() {
                let earlier: Option<i64> = sqlx::query_scalar::<Db, i64>(
                    "SELECT previous FROM activations WHERE version = $1 ORDER BY seq DESC LIMIT 1",
                )
                .bind(to_i64(target))
                .fetch_optional(&mut *tx)
                .await?;
                earlier.map_or(0, to_u64)
            } else {
                current
            };
            sqlx::query::<Db>("INSERT INTO activations (version, previous, activated_by, reason, at_ns) VALUES ($1, $2, $3, $4, $5)")
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
