//! The audit database: entries and checkpoints, the same SQL on SQLite and
//! PostgreSQL. Only the sequencer writes entries.

use steward_db::{Backend, Database, on_backend};
use steward_evidence::Hash;

/// Rows per multi-row INSERT (11 parameters each, well under SQLite's limit).
const INSERT_CHUNK: usize = 200;
/// Record ids per dedup lookup.
const LOOKUP_CHUNK: usize = 500;

/// A leaf about to be stored.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub index: u64,
    pub leaf_hash: Hash,
    pub columns: IndexColumns,
}

/// What an entry's row holds besides its index and leaf hash: the leaf
/// and the columns Query filters on, each derived from the leaf when it is
/// written ([`IndexColumns::of`]) and checked against it at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexColumns {
    pub record_id: String,
    pub leaf: String,
    pub time_ns: i64,
    pub incident_ref: String,
    pub nhi_id: String,
    pub workload: String,
    pub human_subject: String,
    pub action: String,
    pub correlation_id: String,
}

impl IndexColumns {
    /// The columns of `record`'s row, its leaf being `leaf`.
    pub fn of(record: &steward_evidence::EvidenceRecord, leaf: String) -> Self {
        Self {
            record_id: record.record_id.hyphenated().to_string(),
            leaf,
            time_ns: i64::try_from(record.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            incident_ref: record.incident_ref.clone(),
            nhi_id: record.target.nhi_id.clone(),
            workload: record.actor.workload_spiffe_id.clone(),
            human_subject: record.actor.human_subject.clone(),
            action: record.action.clone(),
            correlation_id: record.correlation_id.clone(),
        }
    }

    /// The first column that differs from `other`'s, by name.
    pub fn first_difference(&self, other: &Self) -> Option<&'static str> {
        [
            ("record_id", self.record_id == other.record_id),
            ("time_ns", self.time_ns == other.time_ns),
            ("incident_ref", self.incident_ref == other.incident_ref),
            ("nhi_id", self.nhi_id == other.nhi_id),
            ("workload", self.workload == other.workload),
            ("human_subject", self.human_subject == other.human_subject),
            ("action", self.action == other.action),
            (
                "correlation_id",
                self.correlation_id == other.correlation_id,
            ),
        ]
        .into_iter()
        .find(|(_, same)| !same)
        .map(|(name, _)| name)
    }
}

/// A stored row, whole.
#[derive(Debug, Clone)]
pub struct ScannedEntry {
    pub index: u64,
    pub leaf_hash: Vec<u8>,
    pub columns: IndexColumns,
}

/// A stored leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEntry {
    pub index: u64,
    pub leaf: String,
    pub leaf_hash: Vec<u8>,
}

impl StoredEntry {
    fn from_row((idx, leaf, leaf_hash): (i64, String, Vec<u8>)) -> Result<Self, sqlx::Error> {
        Ok(Self {
            index: to_u64(idx)?,
            leaf,
            leaf_hash,
        })
    }
}

/// What Query filters on; empty strings match anything.
#[derive(Debug, Clone, Default)]
pub struct QueryFilter {
    pub incident_ref: String,
    pub nhi_id: String,
    pub actor: String,
    pub action: String,
    pub correlation_id: String,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub root_hash: Vec<u8>,
    pub note: String,
}

/// Inserts `entries` in chunks inside transaction `tx`.
macro_rules! insert_in {
    ($tx:ident, $db:ty, $backend:expr, $entries:expr) => {
        for chunk in $entries.chunks(INSERT_CHUNK) {
            let sql = insert_sql($backend, chunk.len());
            let mut query = sqlx::query::<$db>(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                let c = &e.columns;
                query = query
                    .bind(to_i64(e.index))
                    .bind(&c.record_id)
                    .bind(&c.leaf)
                    .bind(e.leaf_hash.to_vec())
                    .bind(c.time_ns)
                    .bind(&c.incident_ref)
                    .bind(&c.nhi_id)
                    .bind(&c.workload)
                    .bind(&c.human_subject)
                    .bind(&c.action)
                    .bind(&c.correlation_id);
            }
            query.execute(&mut *$tx).await?;
        }
    };
}

#[derive(Debug, Clone)]
pub struct Store {
    db: Database,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored index or size; a negative one is a corrupt row, never 0.
fn to_u64(v: i64) -> Result<u64, sqlx::Error> {
    u64::try_from(v)
        .map_err(|_| sqlx::Error::Decode(format!("stored index {v} is negative").into()))
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Entries from `from` on in index order, at most `limit`, with every
    /// column: what the start-up check compares with each leaf.
    pub async fn scan(&self, from: u64, limit: u32) -> Result<Vec<ScannedEntry>, sqlx::Error> {
        const SQL: &str = "SELECT idx, record_id, leaf, leaf_hash, time_ns, incident_ref, nhi_id, workload, human_subject, action, correlation_id FROM entries WHERE idx >= $1 ORDER BY idx LIMIT $2";
        type Row = (
            i64,
            String,
            String,
            Vec<u8>,
            i64,
            String,
            String,
            String,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, Row>(SQL)
                .bind(to_i64(from))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter()
            .map(
                |(
                    idx,
                    record_id,
                    leaf,
                    leaf_hash,
                    time_ns,
                    incident_ref,
                    nhi_id,
                    workload,
                    human_subject,
                    action,
                    correlation_id,
                )| {
                    Ok(ScannedEntry {
                        index: to_u64(idx)?,
                        leaf_hash,
                        columns: IndexColumns {
                            record_id,
                            leaf,
                            time_ns,
                            incident_ref,
                            nhi_id,
                            workload,
                            human_subject,
                            action,
                            correlation_id,
                        },
                    })
                },
            )
            .collect()
    }

    /// `(record_id, index, leaf_hash)` of the given record ids already logged.
    pub async fn existing(
        &self,
        record_ids: &[String],
    ) -> Result<Vec<(String, u64, Vec<u8>)>, sqlx::Error> {
        let mut found = Vec::new();
        for chunk in record_ids.chunks(LOOKUP_CHUNK) {
            let backend = self.db.backend();
            let placeholders: Vec<String> =
                (1..=chunk.len()).map(|i| placeholder(backend, i)).collect();
            let sql = format!(
                "SELECT record_id, idx, leaf_hash FROM entries WHERE record_id IN ({})",
                placeholders.join(", ")
            );
            let rows: Vec<(String, i64, Vec<u8>)> = on_backend!(&self.db, pool, Db => {
                let mut query = sqlx::query_as::<Db, (String, i64, Vec<u8>)>(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    query = query.bind(id);
                }
                query.fetch_all(pool).await?
            });
            for (id, idx, hash) in rows {
                found.push((id, to_u64(idx)?, hash));
            }
        }
        Ok(found)
    }

    /// Inserts entries in one transaction: all or nothing, durable on return.
    pub async fn insert(&self, entries: &[NewEntry]) -> Result<(), sqlx::Error> {
        if entries.is_empty() {
            return Ok(());
        }
        on_backend!(&self.db, pool, Db => {
            let mut tx = pool.begin().await?;
            insert_in!(tx, Db, self.db.backend(), entries);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Like [`Store::insert`], over the connection that holds the sequencer
    /// lock: if that session is gone, so is the right to write.
    pub async fn insert_locked(
        conn: &mut sqlx::PgConnection,
        entries: &[NewEntry],
    ) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        if entries.is_empty() {
            return Ok(());
        }
        let mut tx = conn.begin().await?;
        insert_in!(tx, sqlx::Postgres, Backend::Postgres, entries);
        tx.commit().await?;
        Ok(())
    }

    /// The backend's pool.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Entries with `start <= index < end`, at most `limit`.
    pub async fn entries(
        &self,
        start: u64,
        end: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, sqlx::Error> {
        const SQL: &str = "SELECT idx, leaf, leaf_hash FROM entries WHERE idx >= $1 AND idx < $2 ORDER BY idx LIMIT $3";
        let rows: Vec<(i64, String, Vec<u8>)> = on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, (i64, String, Vec<u8>)>(SQL)
                .bind(to_i64(start))
                .bind(to_i64(end))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(StoredEntry::from_row).collect()
    }

    /// Entries matching `filter` with index in `[after, below)`, oldest first.
    pub async fn query(
        &self,
        filter: &QueryFilter,
        after: u64,
        below: u64,
        limit: u32,
    ) -> Result<Vec<StoredEntry>, sqlx::Error> {
        const SQL: &str = "SELECT idx, leaf, leaf_hash FROM entries
            WHERE idx >= $1 AND idx < $2
              AND ($3 = '' OR incident_ref = $3)
              AND ($4 = '' OR nhi_id = $4)
              AND ($5 = '' OR workload = $5 OR human_subject = $5)
              AND ($6 = '' OR action = $6)
              AND ($7 = '' OR correlation_id = $7)
              AND time_ns >= $8 AND time_ns <= $9
            ORDER BY idx LIMIT $10";
        let rows: Vec<(i64, String, Vec<u8>)> = on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, (i64, String, Vec<u8>)>(SQL)
                .bind(to_i64(after))
                .bind(to_i64(below))
                .bind(&filter.incident_ref)
                .bind(&filter.nhi_id)
                .bind(&filter.actor)
                .bind(&filter.action)
                .bind(&filter.correlation_id)
                .bind(filter.since_ns.unwrap_or(i64::MIN))
                .bind(filter.until_ns.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(StoredEntry::from_row).collect()
    }

    pub async fn latest_checkpoint(&self) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
        const SQL: &str =
            "SELECT tree_size, root_hash, note FROM checkpoints ORDER BY tree_size DESC LIMIT 1";
        let row: Option<(i64, Vec<u8>, String)> = on_backend!(&self.db, pool, Db => {
            sqlx::query_as::<Db, (i64, Vec<u8>, String)>(SQL).fetch_optional(pool).await?
        });
        row.map(|(size, root_hash, note)| {
            Ok(StoredCheckpoint {
                tree_size: to_u64(size)?,
                root_hash,
                note,
            })
        })
        .transpose()
    }

    /// Records a published checkpoint (a checkpoint for a size already
    /// stored is left as it was).
    pub async fn insert_checkpoint(
        &self,
        checkpoint: &StoredCheckpoint,
        created_at_ns: i64,
    ) -> Result<(), sqlx::Error> {
        const SQL: &str = "INSERT INTO checkpoints (tree_size, root_hash, note, created_at_ns)
            VALUES ($1, $2, $3, $4) ON CONFLICT (tree_size) DO NOTHING";
        on_backend!(&self.db, pool, Db => {
            sqlx::query::<Db>(SQL)
                .bind(to_i64(checkpoint.tree_size))
                .bind(&checkpoint.root_hash)
                .bind(&checkpoint.note)
                .bind(created_at_ns)
                .execute(pool)
                .await?;
        });
        Ok(())
    }
}

/// Parameter placeholders: positional `?` on SQLite (its `$N` parameters
/// are named, and binding thousands of named parameters is quadratic in
/// sqlx), `$N` on PostgreSQL.
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${n}"),
    }
}

fn insert_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO entries (idx, record_id, leaf, leaf_hash, time_ns, incident_ref, nhi_id, workload, human_subject, action, correlation_id) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for col in 0..11 {
            if col > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&placeholder(backend, row * 11 + col + 1));
        }
        sql.push(')');
    }
    sql
}

/// The advisory lock key of the audit sequencer role on PostgreSQL.
pub const SEQUENCER_LOCK_KEY: i64 = 0x5354_4557_4155_4454; // "STEWAUDT"

/// Tries to take the sequencer role: a session-level advisory lock held on
/// a connection taken out of the pool for as long as the role lasts.
pub async fn try_sequencer_lock(
    pool: &sqlx::PgPool,
) -> Result<Option<sqlx::PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool =
        sqlx::query_scalar::<sqlx::Postgres, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(SEQUENCER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
    Ok(locked.then_some(conn))
}
