//! Rotations: which lease replaced which, and whether the old ones were
//! confirmed rejected. Each change commits with its evidence.

use steward_db::{Engine, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

use super::{Kind, Store, StoreError};

/// Where a rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationState {
    Overlap = 1,
    Confirmed = 2,
    Failed = 3,
}

impl RotationState {
    fn from_i64(v: i64) -> Result<Self, StoreError> {
        Ok(match v {
            1 => Self::Overlap,
            2 => Self::Confirmed,
            3 => Self::Failed,
            other => return Err(super::corrupt("rotation state", other)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    pub rotation_id: String,
    pub identity_id: String,
    pub kind: Kind,
    pub new_lease_id: String,
    pub old_lease_ids: Vec<String>,
    pub state: RotationState,
    pub revoke_at_ns: i64,
    pub confirmed_at_ns: i64,
    pub detail: String,
    pub incident_ref: String,
    pub actor: String,
    pub created_at_ns: i64,
    /// The records of the revocation and confirmation carry it.
    pub correlation_id: String,
}

const COLUMNS: &str = "rotation_id, identity_id, kind, new_lease_id, old_lease_ids, state, \
    revoke_at_ns, confirmed_at_ns, detail, incident_ref, actor, created_at_ns, correlation_id";

type Row = (
    String,
    String,
    i64,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    String,
    String,
    i64,
    String,
);

fn from_row(row: Row) -> Result<Rotation, StoreError> {
    let (
        rotation_id,
        identity_id,
        kind,
        new_lease_id,
        old,
        state,
        revoke_at_ns,
        confirmed_at_ns,
        detail,
        incident_ref,
        actor,
        created_at_ns,
        correlation_id,
    ) = row;
    Ok(Rotation {
        rotation_id,
        identity_id,
        kind: Kind::from_i64(kind)?,
        new_lease_id,
        old_lease_ids: super::split(old),
        state: RotationState::from_i64(state)?,
        revoke_at_ns,
        confirmed_at_ns,
        detail,
        incident_ref,
        actor,
        created_at_ns,
        correlation_id,
    })
}

impl Store {
    /// Stores a new rotation with its evidence.
    pub async fn insert_rotation(
        &self,
        r: &Rotation,
        evidence: &[EvidenceRecord],
    ) -> Result<(), StoreError> {
        on_backend!(self.database(), pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let sql = format!(
                "INSERT INTO rotations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            );
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(&r.rotation_id)
                .bind(&r.identity_id)
                .bind(r.kind as i64)
                .bind(&r.new_lease_id)
                .bind(r.old_lease_ids.join("\n"))
                .bind(r.state as i64)
                .bind(r.revoke_at_ns)
                .bind(r.confirmed_at_ns)
                .bind(&r.detail)
                .bind(&r.incident_ref)
                .bind(&r.actor)
                .bind(r.created_at_ns)
                .bind(&r.correlation_id)
                .execute(&mut *tx)
                .await?;
            tx.enqueue_all(evidence).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn rotation(&self, id: &str) -> Result<Rotation, StoreError> {
        let row: Option<Row> = on_backend!(self.database(), pool, Db => {
            let sql = format!("SELECT {COLUMNS} FROM rotations WHERE rotation_id = $1");
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        row.map(from_row).transpose()?.ok_or_else(|| {
            StoreError::NotFound(format!("rotation_id: rotation {id} does not exist"))
        })
    }

    /// Rotations whose overlap ended by `now_ns`, oldest first.
    pub async fn due_rotations(
        &self,
        now_ns: i64,
        limit: i64,
    ) -> Result<Vec<Rotation>, StoreError> {
        let rows: Vec<Row> = on_backend!(self.database(), pool, Db => {
            let sql = format!(
                "SELECT {COLUMNS} FROM rotations WHERE state = 1 AND revoke_at_ns <= $1 ORDER BY revoke_at_ns LIMIT $2"
            );
            sqlx::query_as::<Db, Row>(sqlx::AssertSqlSafe(sql))
                .bind(now_ns)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(from_row).collect()
    }

    /// Records a rotation's outcome (once: only a rotation still in its
    /// overlap changes) with its evidence; false if another got there first.
    pub async fn finish_rotation(
        &self,
        id: &str,
        state: RotationState,
        detail: &str,
        at_ns: i64,
        evidence: &[EvidenceRecord],
    ) -> Result<bool, StoreError> {
        Ok(on_backend!(self.database(), pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let changed = sqlx::query::<Db>(
                "UPDATE rotations SET state = $1, detail = $2, confirmed_at_ns = $3 WHERE rotation_id = $4 AND state = 1",
            )
            .bind(state as i64)
            .bind(detail)
            .bind(at_ns)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 1 {
                tx.enqueue_all(evidence).await?;
            }
            tx.commit().await?;
            changed == 1
        }))
    }

    /// Whether the revocation log (what `WatchRevocations` serves) holds
    /// `lease_id`.
    pub async fn in_revocation_log(&self, lease_id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = on_backend!(self.database(), pool, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT sequence FROM revocations WHERE lease_id = $1")
                .bind(lease_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.is_some())
    }
}
