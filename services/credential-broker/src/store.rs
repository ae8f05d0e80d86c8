//! The broker's database: sealed authority keys, leases and the revocation
//! log. Reads are plain queries; every lease change goes through the
//! group-committing [`writer`], which commits it with its evidence.

pub mod bundles;
pub mod rotations;
pub mod writer;

use steward_db::StorageError;
use steward_db::{Database, Engine, Placeholders, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A stored `what` that is not one of its codes.
pub(crate) fn corrupt(what: &str, code: i64) -> StoreError {
    StoreError::Storage(StorageError::corrupt(format!(
        "stored {what} {code} is not one this version knows"
    )))
}

impl StoreError {
    /// The store cannot do its work for a reason of its own (a writer
    /// task that stopped): UNAVAILABLE.
    pub(crate) fn unavailable(detail: &'static str) -> Self {
        Self::Storage(StorageError::unavailable(detail))
    }
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
            other => Self::Storage(StorageError::unavailable(other)),
        }
    }
}

steward_vocab::names!(
    /// What a credential is.
    Kind {
        X509Svid = 1 => "x509_svid",
        JwtSvid = 2 => "jwt_svid",
        ApiToken = 3 => "api_token",
        /// A login role in an external system (a [`crate::backends`] backend).
        DatabaseRole = 4 => "database_role",
    }
);

steward_vocab::names!(
    /// Where a lease stands.
    LeaseState {
        Active = 1 => "active",
        Revoked = 2 => "revoked",
        Expired = 3 => "expired",
    }
);

impl Kind {
    pub(crate) fn from_i64(v: i64) -> Result<Self, StoreError> {
        Self::from_code(v).ok_or_else(|| corrupt("lease kind", v))
    }
}

impl LeaseState {
    pub(crate) fn from_i64(v: i64) -> Result<Self, StoreError> {
        Self::from_code(v).ok_or_else(|| corrupt("lease state", v))
    }
}

/// One lease, as stored. Times are Unix nanoseconds; 0 means unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: String,
    pub identity_id: String,
    pub kind: Kind,
    pub holder: String,
    pub spiffe_id: String,
    pub incident_ref: String,
    pub window_start_ns: i64,
    /// `i64::MAX` for an open window.
    pub window_end_ns: i64,
    pub issued_at_ns: i64,
    pub expires_at_ns: i64,
    pub max_expires_at_ns: i64,
    pub ttl_seconds: i64,
    pub renewable: bool,
    pub state: LeaseState,
    pub credential_ref: String,
    /// SHA-256 of an API token; `None` for other kinds.
    pub token_hash: Option<Vec<u8>>,
    pub audience: Vec<String>,
    pub scopes: Vec<String>,
    pub decision_id: String,
    pub grant_id: String,
    pub revoked_at_ns: i64,
    pub revoked_by: String,
    pub revoke_reason: String,
    /// The backend holding a database role's credential (empty otherwise).
    pub backend: String,
    /// A database role's password, sealed under the key-encryption key;
    /// wiped once the role is revoked.
    pub sealed_secret: Option<Vec<u8>>,
}

impl Lease {
    /// Live at `now_ns`: active and not yet expired (the reaper may not
    /// have reached it yet; an expired lease is never live).
    pub fn live(&self, now_ns: i64) -> bool {
        self.state == LeaseState::Active && self.expires_at_ns > now_ns
    }

    /// Why this lease cannot be renewed to expire at `expires_at_ns`
    /// (`None`: it can). Checked before authority is asked, and again by
    /// the writer inside the renewal's transaction.
    pub fn renewal_refused(&self, now_ns: i64, expires_at_ns: i64) -> Option<String> {
        if !self.live(now_ns) {
            let state = match self.state {
                LeaseState::Active => "expired",
                other => other.as_str(),
            };
            return Some(format!(
                "lease_id: lease {} is {state}; only an active lease can be renewed",
                self.lease_id
            ));
        }
        if !self.renewable {
            return Some(format!(
                "lease_id: a {} lease is not renewable; issue a new credential",
                self.kind.as_str()
            ));
        }
        if expires_at_ns > self.max_expires_at_ns {
            let until =
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.max_expires_at_ns))
                    .map(|t| t.to_string())
                    .unwrap_or_default();
            return Some(format!(
                "ttl_seconds: the renewal would outlive the lease's max TTL (it ends at {until})"
            ));
        }
        None
    }
}

const LEASE_COLUMNS: &str = "lease_id, identity_id, kind, holder, spiffe_id, incident_ref, \
    window_start_ns, window_end_ns, issued_at_ns, expires_at_ns, max_expires_at_ns, ttl_seconds, \
    renewable, state, credential_ref, token_hash, audience, scopes, decision_id, grant_id, \
    revoked_at_ns, revoked_by, revoke_reason, backend, sealed_secret";
const LEASE_COLUMN_COUNT: usize = 25;

pub(crate) fn split(list: String) -> Vec<String> {
    list.split('\n')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Reads a [`Lease`] from a row selected with [`LEASE_COLUMNS`] first.
macro_rules! lease_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        $crate::store::Lease {
            lease_id: row.try_get(0)?,
            identity_id: row.try_get(1)?,
            kind: $crate::store::Kind::from_i64(row.try_get(2)?)?,
            holder: row.try_get(3)?,
            spiffe_id: row.try_get(4)?,
            incident_ref: row.try_get(5)?,
            window_start_ns: row.try_get(6)?,
            window_end_ns: row.try_get(7)?,
            issued_at_ns: row.try_get(8)?,
            expires_at_ns: row.try_get(9)?,
            max_expires_at_ns: row.try_get(10)?,
            ttl_seconds: row.try_get(11)?,
            renewable: row.try_get::<i64, _>(12)? != 0,
            state: $crate::store::LeaseState::from_i64(row.try_get(13)?)?,
            credential_ref: row.try_get(14)?,
            token_hash: row.try_get(15)?,
            audience: $crate::store::split(row.try_get(16)?),
            scopes: $crate::store::split(row.try_get(17)?),
            decision_id: row.try_get(18)?,
            grant_id: row.try_get(19)?,
            revoked_at_ns: row.try_get(20)?,
            revoked_by: row.try_get(21)?,
            revoke_reason: row.try_get(22)?,
            backend: row.try_get(23)?,
            sealed_secret: row.try_get(24)?,
        }
    }};
}
pub(crate) use lease_from_row;

/// Binds a [`Lease`]'s columns, in [`LEASE_COLUMNS`] order.
macro_rules! bind_lease {
    ($query:expr, $lease:expr) => {{
        let l = $lease;
        $query
            .bind(&l.lease_id)
            .bind(&l.identity_id)
            .bind(l.kind.code())
            .bind(&l.holder)
            .bind(&l.spiffe_id)
            .bind(&l.incident_ref)
            .bind(l.window_start_ns)
            .bind(l.window_end_ns)
            .bind(l.issued_at_ns)
            .bind(l.expires_at_ns)
            .bind(l.max_expires_at_ns)
            .bind(l.ttl_seconds)
            .bind(i64::from(l.renewable))
            .bind(l.state.code())
            .bind(&l.credential_ref)
            .bind(&l.token_hash)
            .bind(l.audience.join("\n"))
            .bind(l.scopes.join("\n"))
            .bind(&l.decision_id)
            .bind(&l.grant_id)
            .bind(l.revoked_at_ns)
            .bind(&l.revoked_by)
            .bind(&l.revoke_reason)
            .bind(&l.backend)
            .bind(&l.sealed_secret)
    }};
}
pub(crate) use bind_lease;

/// A stored CA certificate or JWT signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: i64,
    /// `root`, `intermediate` or `jwt`.
    pub kind: String,
    /// PEM certificate, or the public JWK as JSON.
    pub public: String,
    pub sealed_key: Vec<u8>,
    pub kek_id: String,
    pub not_after_ns: i64,
    pub created_at_ns: i64,
    /// 0 while current.
    pub retired_at_ns: i64,
}

/// One entry of the revocation log, with its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationEntry {
    pub sequence: i64,
    pub state: LeaseState,
    pub revoked_at_ns: i64,
    pub reason: String,
    pub lease: Lease,
}

/// Which leases a list or bulk revocation selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    pub identity_id: Option<String>,
    pub incident_ref: Option<String>,
    pub holder: Option<String>,
    pub state: Option<LeaseState>,
}

impl LeaseFilter {
    /// `WHERE …` over the set filters, with placeholders from `$first`;
    /// returns the clause and the values to bind, in order.
    fn clause<Db: Placeholders>(&self, first: usize) -> (String, Vec<String>, Option<i64>) {
        let mut parts = Vec::new();
        let mut values = Vec::new();
        let mut n = first;
        for (column, value) in [
            ("identity_id", &self.identity_id),
            ("incident_ref", &self.incident_ref),
            ("holder", &self.holder),
        ] {
            if let Some(v) = value {
                parts.push(format!("{column} = {}", Db::list(1, n)));
                values.push(v.clone());
                n += 1;
            }
        }
        let state = self.state.map(LeaseState::code);
        if state.is_some() {
            parts.push(format!("state = {}", Db::list(1, n)));
        }
        let clause = if parts.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", parts.join(" AND "))
        };
        (clause, values, state)
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

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every stored key, oldest first.
    pub async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        type Row = (i64, String, String, Vec<u8>, String, i64, i64, i64);
        let rows: Vec<Row> = on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, Row>(
                "SELECT id, kind, public, sealed_key, kek_id, not_after_ns, created_at_ns, retired_at_ns \
                 FROM authority_keys ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    id,
                    kind,
                    public,
                    sealed_key,
                    kek_id,
                    not_after_ns,
                    created_at_ns,
                    retired_at_ns,
                )| {
                    StoredKey {
                        id,
                        kind,
                        public,
                        sealed_key,
                        kek_id,
                        not_after_ns,
                        created_at_ns,
                        retired_at_ns,
                    }
                },
            )
            .collect())
    }

    /// Stores new keys (their ids are assigned here), retires `retire`
    /// (ids) at `now_ns`, and queues `evidence`, in one transaction.
    pub async fn add_keys(
        &self,
        keys: &[StoredKey],
        retire: &[i64],
        now_ns: i64,
        evidence: &[EvidenceRecord],
    ) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            let mut next: i64 = sqlx::query_scalar::<Db, i64>(
                "SELECT COALESCE(MAX(id), 0) + 1 FROM authority_keys",
            )
            .fetch_one(&mut *tx)
            .await?;
            for id in retire {
                sqlx::query::<Db>("UPDATE authority_keys SET retired_at_ns = $1 WHERE id = $2")
                    .bind(now_ns)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for key in keys {
                sqlx::query::<Db>(
                    "INSERT INTO authority_keys (id, kind, public, sealed_key, kek_id, not_after_ns, created_at_ns, retired_at_ns) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
                )
                .bind(next)
                .bind(&key.kind)
                .bind(&key.public)
                .bind(&key.sealed_key)
                .bind(&key.kek_id)
                .bind(key.not_after_ns)
                .bind(key.created_at_ns)
                .execute(&mut *tx)
                .await?;
                next += 1;
            }
            tx.enqueue_all(evidence).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One lease.
    pub async fn lease(&self, lease_id: &str) -> Result<Lease, StoreError> {
        let lease = on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE lease_id = $1");
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(lease_id)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(lease_from_row!(row)),
                None => None,
            }
        });
        lease.ok_or_else(|| {
            StoreError::NotFound(format!("lease_id: lease {lease_id} does not exist"))
        })
    }

    /// The lease an API token (by its SHA-256) belongs to.
    pub async fn lease_by_token(&self, hash: &[u8]) -> Result<Option<Lease>, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE token_hash = $1");
            match sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(hash)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(lease_from_row!(row)),
                None => None,
            }
        }))
    }

    /// Leases matching `filter` with ids after `after`, by id (UUIDv7, so
    /// oldest first), at most `limit`.
    pub async fn list(
        &self,
        filter: &LeaseFilter,
        after: &str,
        limit: usize,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut leases = Vec::new();
        on_backend!(&self.db, pool, Db => {
            let (clause, values, state) = filter.clause::<Db>(1);
            let n = values.len() + usize::from(state.is_some()) + 1;
            let joiner = if clause.is_empty() { "WHERE" } else { "AND" };
            let sql = format!(
                "SELECT {LEASE_COLUMNS} FROM leases {clause} {joiner} lease_id > {} ORDER BY lease_id LIMIT {}",
                <Db as Placeholders>::list(1, n),
                <Db as Placeholders>::list(1, n + 1),
            );
            let mut query = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql));
            for v in &values {
                query = query.bind(v);
            }
            if let Some(s) = state {
                query = query.bind(s);
            }
            let rows = query
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            for row in rows {
                leases.push(lease_from_row!(row));
            }
        });
        Ok(leases)
    }

    /// Active leases that expired at or before `now_ns`, soonest first.
    pub async fn expired(&self, now_ns: i64, limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, String>(
                "SELECT lease_id FROM leases WHERE state = 1 AND expires_at_ns <= $1 \
                 ORDER BY expires_at_ns LIMIT $2",
            )
            .bind(now_ns)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await?
        }))
    }

    /// Active leases by kind, and how many of them are past their expiry
    /// and wait for the reaper: the broker's gauges.
    pub async fn lease_gauges(&self, now_ns: i64) -> Result<(Vec<(Kind, i64)>, i64), StoreError> {
        const ACTIVE: &str = "SELECT kind, COUNT(*) FROM leases WHERE state = 1 GROUP BY kind";
        const BACKLOG: &str = "SELECT COUNT(*) FROM leases WHERE state = 1 AND expires_at_ns <= $1";
        let (active, backlog): (Vec<(i64, i64)>, i64) = on_backend!(&self.db, pool, Db => {
            let active = sqlx::query_as::<Db, (i64, i64)>(ACTIVE).fetch_all(pool).await?;
            let backlog = sqlx::query_scalar::<Db, i64>(BACKLOG)
                .bind(now_ns)
                .fetch_one(pool)
                .await?;
            (active, backlog)
        });
        let active = active
            .into_iter()
            .map(|(kind, n)| Kind::from_i64(kind).map(|kind| (kind, n)))
            .collect::<Result<_, _>>()?;
        Ok((active, backlog))
    }

    /// The revocation log after `after`, in order, at most `limit`.
    pub async fn revocations_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RevocationEntry>, StoreError> {
        let mut entries = Vec::new();
        on_backend!(&self.db, pool, Db => {
            let columns = LEASE_COLUMNS
                .split(", ")
                .map(|c| format!("l.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {columns}, r.sequence, r.state, r.revoked_at_ns, r.reason \
                 FROM revocations r JOIN leases l ON l.lease_id = r.lease_id \
                 WHERE r.sequence > $1 ORDER BY r.sequence LIMIT $2"
            );
            let rows = sqlx::query::<Db>(sqlx::AssertSqlSafe(sql))
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?;
            for row in rows {
                use sqlx::Row as _;
                let sequence: i64 = row.try_get(LEASE_COLUMN_COUNT)?;
                let state: i64 = row.try_get(LEASE_COLUMN_COUNT + 1)?;
                let revoked_at_ns: i64 = row.try_get(LEASE_COLUMN_COUNT + 2)?;
                let reason: String = row.try_get(LEASE_COLUMN_COUNT + 3)?;
                entries.push(RevocationEntry {
                    sequence,
                    state: LeaseState::from_i64(state)?,
                    revoked_at_ns,
                    reason,
                    lease: lease_from_row!(row),
                });
            }
        });
        Ok(entries)
    }

    /// How far `backend` has followed the revocation log.
    pub async fn backend_cursor(&self, backend: &str) -> Result<i64, StoreError> {
        let found: Option<i64> = on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT sequence FROM backend_cursors WHERE backend = $1")
                .bind(backend)
                .fetch_optional(pool)
                .await?
        });
        Ok(found.unwrap_or(0))
    }

    pub async fn set_backend_cursor(&self, backend: &str, sequence: i64) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            sqlx::query::<Db>(
                "INSERT INTO backend_cursors (backend, sequence) VALUES ($1, $2) \
                 ON CONFLICT (backend) DO UPDATE SET sequence = $2",
            )
            .bind(backend)
            .bind(sequence)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets a revoked backend credential's sealed secret.
    pub async fn wipe_secret(&self, lease_id: &str) -> Result<(), StoreError> {
        on_backend!(&self.db, pool, Db => {
            sqlx::query::<Db>("UPDATE leases SET sealed_secret = NULL WHERE lease_id = $1")
                .bind(lease_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// The last sequence in the revocation log (0 when empty).
    pub async fn last_sequence(&self) -> Result<i64, StoreError> {
        Ok(on_backend!(&self.db, pool, Db => {
            sqlx::query_scalar::<Db, i64>("SELECT COALESCE(MAX(sequence), 0) FROM revocations")
                .fetch_one(pool)
                .await?
        }))
    }
}
