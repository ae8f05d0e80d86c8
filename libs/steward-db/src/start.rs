//! Starting a replica: the owner stamp, the migrations and whatever the
//! service must create once (a CA, signing keys) happen under one lock, so
//! replicas that start together on an empty PostgreSQL database take
//! turns instead of racing each other's `CREATE TABLE` and key rows.

use sqlx::pool::PoolConnection;
use sqlx::{Executor, Postgres};

use crate::{BASELINE, BASELINE_SQLITE, Backend, Database, DbError, MigrationSet, migrator};

/// The PostgreSQL advisory lock a starting replica holds: one number for
/// every Steward service (each has a database of its own, and advisory
/// locks are per database). sqlx's migration lock is another number, taken
/// on another session while this one is held.
const START_LOCK: i64 = 0x5354_4557_4152_4453; // "STEWARDS"

/// A replica that is starting, with the database's start lock held until
/// [`Starting::done`]. Dropped without `done` (a start that failed), its
/// session is closed, which releases the lock on the server.
#[must_use = "the start lock is held until `done` is called"]
pub struct Starting {
    held: Option<PoolConnection<Postgres>>,
}

impl std::fmt::Debug for Starting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Starting")
            .field("locked", &self.held.is_some())
            .finish()
    }
}

impl Starting {
    /// Releases the start lock: the next replica may start.
    pub async fn done(mut self) -> Result<(), DbError> {
        let Some(mut session) = self.held.take() else {
            return Ok(());
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(START_LOCK)
            .execute(&mut *session)
            .await;
        if let Err(error) = unlocked {
            // The lock must not go back into the pool with the session.
            drop(session.detach());
            return Err(error.into());
        }
        Ok(())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(session) = self.held.take() {
            drop(session.detach());
        }
    }
}

impl Database {
    /// Takes the start lock (on PostgreSQL; SQLite has one process by
    /// construction), checks the owner stamp and applies every pending
    /// migration: the baseline (version 1, shared by every service) and then
    /// the service's own, which must be numbered from 2. The lock stays
    /// held in the returned [`Starting`] so that the service's own first
    /// writes (a CA, signing keys) are made by one replica, and the next
    /// finds them.
    pub async fn start(&self, set: &MigrationSet) -> Result<Starting, DbError> {
        let starting = match self {
            Self::Sqlite(sqlite) => {
                claim::<sqlx::Sqlite>(&mut *sqlite.pool().acquire().await?, set.service).await?;
                migrator(BASELINE_SQLITE, set.sqlite, Backend::Sqlite)?
                    .run(sqlite.pool())
                    .await?;
                Starting { held: None }
            }
            Self::Postgres(pool) => {
                let mut session = pool.acquire().await?;
                let claimed = async {
                    lock(&mut session).await?;
                    claim::<Postgres>(&mut *session, set.service).await
                }
                .await;
                if let Err(error) = claimed {
                    // The lock may be held: the session's end releases it.
                    drop(session.detach());
                    return Err(error);
                }
                // Dropped with an error below, the session detaches too.
                let starting = Starting {
                    held: Some(session),
                };
                // On a connection of its own: the lock is this process's,
                // whichever session holds it.
                migrator(BASELINE, set.postgres, Backend::Postgres)?
                    .run(pool)
                    .await?;
                starting
            }
        };
        tracing::debug!(service = set.service, backend = ?self.backend(), "migrations applied");
        Ok(starting)
    }

    /// [`Database::start`], with the lock released at once: for tools and
    /// tests that only need the schema. Safe to run any number of times.
    pub async fn migrate(&self, set: &MigrationSet) -> Result<(), DbError> {
        self.start(set).await?.done().await
    }
}

/// Waits for the start lock, saying so when another replica holds it.
async fn lock(session: &mut PoolConnection<Postgres>) -> Result<(), DbError> {
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(START_LOCK)
        .fetch_one(&mut **session)
        .await?;
    if !free {
        tracing::info!("another replica is starting on this database; waiting for it");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(START_LOCK)
            .execute(&mut **session)
            .await?;
    }
    Ok(())
}

/// Stamps an unstamped database with `service` and refuses one stamped by
/// another service.
async fn claim<DB>(session: &mut DB::Connection, service: &str) -> Result<(), DbError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    <DB as sqlx::Database>::Arguments: sqlx::IntoArguments<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<<DB as sqlx::Database>::Row>,
{
    const CREATE: &str = "CREATE TABLE IF NOT EXISTS steward_database_owner (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        service TEXT NOT NULL
    )";
    const CLAIM: &str = "INSERT INTO steward_database_owner (singleton, service) VALUES (1, $1)
        ON CONFLICT (singleton) DO NOTHING";
    const OWNER: &str = "SELECT service FROM steward_database_owner WHERE singleton = 1";
    sqlx::query::<DB>(CREATE).execute(&mut *session).await?;
    sqlx::query::<DB>(CLAIM)
        .bind(service)
        .execute(&mut *session)
        .await?;
    let found: String = sqlx::query_scalar::<DB, String>(OWNER)
        .fetch_one(&mut *session)
        .await?;
    if found != service {
        return Err(DbError::WrongOwner {
            expected: service.to_owned(),
            found,
        });
    }
    Ok(())
}
