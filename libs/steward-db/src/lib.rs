//! The database behind one Steward service: embedded SQLite (WAL, durable
//! commits) by default, PostgreSQL from a URL in production, and versioned
//! migrations embedded in the service binary.
//!
//! Each service owns its database. On first use the database is stamped with
//! the owning service's name, and a service refuses to start on a database
//! stamped by another: pointing two services at one database is a
//! misconfiguration that would otherwise surface much later as missing
//! tables or, worse, shared state.

mod fault;
pub mod role;
mod start;

pub use fault::{FULL, Fault, Source, StorageError, fault_of};
pub use start::Starting;

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, SqlSafeStr};

/// Runs one body against whichever pool `$db` holds, with `$ty` bound to the
/// sqlx database type. The SQL must work on both engines: `$1`-style
/// placeholders do (SQLite numbers them in order of first appearance).
///
/// ```ignore
/// on_backend!(&database, pool, Db => {
///     sqlx::query::<Db>("SELECT 1").execute(pool).await?;
/// })
/// ```
#[macro_export]
macro_rules! on_backend {
    ($db:expr, $pool:ident, $ty:ident => $body:expr) => {
        match $db {
            $crate::Database::Sqlite(sqlite) => {
                let $pool = sqlite.pool();
                #[allow(dead_code)]
                type $ty = ::sqlx::Sqlite;
                $body
            }
            $crate::Database::Postgres($pool) => {
                #[allow(dead_code)]
                type $ty = ::sqlx::Postgres;
                $body
            }
        }
    };
}

/// Page cache per SQLite connection, in KiB.
const SQLITE_CACHE_KIB: u32 = 64 * 1024;

/// What differs between the engines in the statements services write.
pub trait Engine: sqlx::Database + Placeholders {
    /// Starts a read-modify-write transaction. SQLite takes the write lock
    /// up front, so a transaction never finds its snapshot stale at COMMIT.
    const BEGIN_WRITE: &'static str;
    /// Locks the rows a read-modify-write transaction selected.
    const FOR_UPDATE: &'static str;
    /// Case-insensitive LIKE.
    const ILIKE: &'static str;
}

impl Engine for sqlx::Sqlite {
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const FOR_UPDATE: &'static str = "";
    const ILIKE: &'static str = "LIKE";
}

impl Engine for sqlx::Postgres {
    const BEGIN_WRITE: &'static str = "BEGIN";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const ILIKE: &'static str = "ILIKE";
}

/// How one engine spells the placeholders of a multi-row statement.
///
/// SQLite treats `$N` as a *named* parameter and sqlx binds names by
/// searching them, which is quadratic in the size of the statement; large
/// SQLite statements therefore use positional `?`. PostgreSQL needs `$N`.
pub trait Placeholders {
    /// `rows` groups of `columns` placeholders, numbered from `first` (1 for
    /// a statement with no earlier parameters): `($1, $2), ($3, $4)`.
    fn values(rows: usize, columns: usize, first: usize) -> String;

    /// A comma-separated list of `count` placeholders numbered from `first`.
    fn list(count: usize, first: usize) -> String {
        let group = Self::values(1, count, first);
        group
            .trim_start_matches('(')
            .trim_end_matches(')')
            .to_owned()
    }
}

impl Placeholders for sqlx::Sqlite {
    fn values(rows: usize, columns: usize, _first: usize) -> String {
        let group = format!("({})", vec!["?"; columns].join(", "));
        vec![group; rows].join(", ")
    }
}

impl Placeholders for sqlx::Postgres {
    fn values(rows: usize, columns: usize, first: usize) -> String {
        let mut out = String::with_capacity(rows * columns * 5);
        for row in 0..rows {
            if row > 0 {
                out.push_str(", ");
            }
            out.push('(');
            for column in 0..columns {
                if column > 0 {
                    out.push_str(", ");
                }
                out.push('$');
                out.push_str(&(first + row * columns + column).to_string());
            }
            out.push(')');
        }
        out
    }
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database url must start with sqlite: or postgres:// (got {0:?})")]
    UnsupportedUrl(String),
    #[error("cannot open database: {0}")]
    Connect(#[source] sqlx::Error),
    /// An SQLite file that cannot be opened: where, and why.
    #[error("cannot open the SQLite database {path}: {reason}")]
    OpenSqlite { path: String, reason: String },
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database belongs to service {found:?}, not {expected:?}")]
    WrongOwner { expected: String, found: String },
    #[error("migration version {0} is reserved for the baseline; number service migrations from 2")]
    ReservedVersion(i64),
    #[error("migration version {0} has an unclosed or one-sided {{{{sqlite|postgres}}}}")]
    MalformedMigration(i64),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// Database settings of one service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Largest number of pooled connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

fn default_max_connections() -> u32 {
    8
}

impl DatabaseConfig {
    /// An SQLite database at `path`.
    pub fn sqlite(path: &std::path::Path) -> Self {
        Self {
            url: format!("sqlite://{}", path.display()),
            max_connections: default_max_connections(),
        }
    }
}

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// A service's migrations for both backends.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// The owning service's name, stamped into the database.
    pub service: &'static str,
    pub sqlite: &'static [MigrationFile],
    pub postgres: &'static [MigrationFile],
}

/// A service's [`MigrationSet`] from one list: each migration's version,
/// description and file, read from the crate's `migrations/` for both
/// engines; or, for SQL another crate ships, its text for each engine as
/// `(sqlite, postgres)`.
///
/// One file serves both engines: where they spell a piece differently the
/// file holds both spellings as `{{sqlite|postgres}}`, and [`for_engine`]
/// keeps the one that engine reads. The schema is written once, so the two
/// engines' tables cannot drift apart.
///
/// ```ignore
/// const MIGRATIONS: MigrationSet = steward_db::migrations!(SERVICE, {
///     2: "evidence outbox" => (steward_outbox::SQLITE_SQL, steward_outbox::POSTGRES_SQL),
///     3: "policy sets" => "0003_policy_sets.sql",
/// });
/// ```
#[macro_export]
macro_rules! migrations {
    ($service:expr, { $( $version:literal : $description:literal => $sql:tt ),+ $(,)? }) => {
        $crate::MigrationSet {
            service: $service,
            sqlite: &[$($crate::MigrationFile {
                version: $version,
                description: $description,
                sql: $crate::migration_sql!(sqlite, $sql),
            }),+],
            postgres: &[$($crate::MigrationFile {
                version: $version,
                description: $description,
                sql: $crate::migration_sql!(postgres, $sql),
            }),+],
        }
    };
}

/// One engine's SQL of a [`migrations!`] entry.
#[doc(hidden)]
#[macro_export]
macro_rules! migration_sql {
    (sqlite, ($sqlite:expr, $postgres:expr)) => {
        $sqlite
    };
    (postgres, ($sqlite:expr, $postgres:expr)) => {
        $postgres
    };
    ($engine:ident, $file:literal) => {
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $file))
    };
}

/// Which engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool on either backend.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqliteDatabase),
    Postgres(PgPool),
}

/// An SQLite database: a pool of connections, and one more connection
/// that the service's busy writers share (see [`Database::writer`]).
#[derive(Debug, Clone)]
pub struct SqliteDatabase {
    pool: SqlitePool,
    writer: SqlitePool,
    /// One connection of its own for the readiness probe, with a short
    /// busy timeout: a probe never holds the writers' connection while
    /// another process holds the lock.
    probe: SqlitePool,
}

impl SqliteDatabase {
    /// The pool statements run on.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Every pool of this database: the readers', the writers' shared
    /// connection and the readiness probe's. For tools that must reach
    /// each connection (a per-connection `PRAGMA`, say).
    pub fn pools(&self) -> [&SqlitePool; 3] {
        [&self.pool, &self.writer, &self.probe]
    }
}

impl Database {
    /// Opens a pool. SQLite files (and their directory) are created if
    /// missing and run in WAL mode with `synchronous=FULL`: a commit is on
    /// disk when it returns.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        let url = config.url.as_str();
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(DbError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // SQLite's default page cache is 2 MiB per connection; a
                // service's indexes at a million rows are far larger, and
                // every index insert or lookup would go to the OS.
                .pragma("cache_size", format!("-{}", SQLITE_CACHE_KIB))
                // Checkpoint every ~40 MiB of WAL rather than 4 MiB: a hot
                // index page rewritten by many commits is copied back once.
                .pragma("wal_autocheckpoint", "10000")
                // A multi-row statement inside a transaction keeps a
                // statement journal, which SQLite spills to a file in
                // /var/tmp past 64 KiB: an open, writes, an unlink and a
                // close for every large batch. Keep it (and sorts) in
                // memory.
                .pragma("temp_store", "memory");
            let path = options.get_filename().to_owned();
            let cannot_open = |reason: String| DbError::OpenSqlite {
                path: path.display().to_string(),
                reason,
            };
            if let Some(parent) = path.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| {
                    cannot_open(format!(
                        "cannot create its directory {}: {e}",
                        parent.display()
                    ))
                })?;
            }
            let pool = recovering(SqlitePoolOptions::new())
                .max_connections(config.max_connections.max(1))
                .connect_with(options.clone())
                .await
                .map_err(|e| cannot_open(why_not_open(&path, &e)))?;
            let writer = recovering(SqlitePoolOptions::new())
                .max_connections(1)
                .connect_lazy_with(options.clone());
            let probe = recovering(SqlitePoolOptions::new())
                .max_connections(1)
                .connect_lazy_with(options.busy_timeout(PROBE_BUSY_TIMEOUT));
            Ok(Self::Sqlite(SqliteDatabase {
                pool,
                writer,
                probe,
            }))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(DbError::Connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .map_err(DbError::Connect)?;
            Ok(Self::Postgres(pool))
        } else {
            Err(DbError::UnsupportedUrl(redact(url)))
        }
    }

    /// The same database, with every statement on one connection that the
    /// service's busy writers share (the lease writer, the evidence
    /// batcher and sequencer, the outbox's settles); other statements stay
    /// on the pool. On PostgreSQL this is the pool itself.
    ///
    /// SQLite commits one write at a time, and a connection that finds the
    /// database changed by another connection drops its whole page cache.
    /// Writers taking turns on separate connections would each re-read
    /// their indexes from the OS after every commit of the others, and
    /// collide in SQLite's sleeping busy handler; on one connection the
    /// pages stay cached and the turns are a queue. The connection is
    /// shared, so a holder must never wait for it again while holding it
    /// (inside a transaction, use the transaction).
    pub fn writer(&self) -> Self {
        match self {
            Self::Sqlite(sqlite) => Self::Sqlite(SqliteDatabase {
                pool: sqlite.writer.clone(),
                writer: sqlite.writer.clone(),
                probe: sqlite.probe.clone(),
            }),
            Self::Postgres(pool) => Self::Postgres(pool.clone()),
        }
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }

    /// Appends a row to the start journal (`steward_service_starts`), so an
    /// operator can see which versions have run against this database.
    pub async fn record_start(&self, version: &str) -> Result<(), DbError> {
        const INSERT: &str =
            "INSERT INTO steward_service_starts (version, started_at) VALUES ($1, $2)";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        match self {
            Self::Sqlite(SqliteDatabase { pool, .. }) => {
                sqlx::query::<sqlx::Sqlite>(INSERT)
                    .bind(version)
                    .bind(now)
                    .execute(pool)
                    .await?;
            }
            Self::Postgres(pool) => {
                sqlx::query::<sqlx::Postgres>(INSERT)
                    .bind(version)
                    .bind(now)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Cheap liveness probe: the database answers a query.
    pub async fn ping(&self) -> Result<(), DbError> {
        match self {
            Self::Sqlite(SqliteDatabase { pool, .. }) => {
                sqlx::query::<sqlx::Sqlite>("SELECT 1")
                    .execute(pool)
                    .await?;
            }
            Self::Postgres(pool) => {
                sqlx::query::<sqlx::Postgres>("SELECT 1")
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// The readiness probe: one real write, committed (an unchanged row
    /// rewritten: on SQLite a WAL frame and an fsync, on its own connection
    /// that waits at most [`PROBE_BUSY_TIMEOUT`] for the lock; on
    /// PostgreSQL a tuple and a WAL record). It fails when the database
    /// cannot take writes, which `SELECT 1` never notices: a full disk, a
    /// read-only file, a lock held elsewhere.
    pub async fn probe_write(&self) -> Result<(), DbError> {
        const TOUCH: &str =
            "UPDATE steward_database_owner SET service = service WHERE singleton = 1";
        match self {
            Self::Sqlite(SqliteDatabase { probe, .. }) => {
                sqlx::query::<sqlx::Sqlite>(TOUCH).execute(probe).await?;
            }
            Self::Postgres(pool) => {
                sqlx::query::<sqlx::Postgres>(TOUCH).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(sqlite) => {
                sqlite.probe.close().await;
                sqlite.writer.close().await;
                sqlite.pool.close().await;
            }
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// Why SQLite could not open `path`, in an operator's terms where the
/// file system tells (SQLite itself says only "unable to open database
/// file").
fn why_not_open(path: &std::path::Path, error: &sqlx::Error) -> String {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    match (std::fs::metadata(path), std::fs::metadata(dir)) {
        (Ok(file), _) if file.is_dir() => "it is a directory".to_owned(),
        (Ok(file), _) if file.permissions().readonly() => {
            format!("the file is read-only ({error})")
        }
        (_, Err(e)) => format!("its directory {} cannot be used: {e}", dir.display()),
        (_, Ok(d)) if !d.is_dir() => format!("{} is not a directory", dir.display()),
        (_, Ok(d)) if d.permissions().readonly() => format!(
            "its directory {} is read-only (SQLite creates the -wal and -shm files beside the database)",
            dir.display()
        ),
        _ => error.to_string(),
    }
}

/// Pool options whose connections never return to the pool stuck inside a
/// transaction. After a full disk or an I/O error SQLite may end the
/// transaction itself; the rollback sqlx then sends fails, and sqlx would
/// count the connection as inside a transaction for good ("begin_with at
/// non-zero transaction depth" on every later write). Such a connection is
/// closed, and the pool opens a fresh one: writes succeed again as soon as
/// the storage does, without a restart.
fn recovering(options: SqlitePoolOptions) -> SqlitePoolOptions {
    options.after_release(|connection, _| {
        Box::pin(async move {
            use sqlx::Connection as _;
            // A transaction dropped on an error queued its rollback: let it
            // run before looking.
            connection.ping().await?;
            if connection.is_in_transaction() {
                tracing::warn!(
                    "a database connection is stuck inside a transaction SQLite already ended; replacing it"
                );
                return Ok(false);
            }
            Ok(true)
        })
    })
}

/// How long the readiness probe waits for SQLite's write lock.
pub const PROBE_BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Version 1 of every service database: the start journal.
const BASELINE: &MigrationFile = &MigrationFile {
    version: 1,
    description: "steward baseline",
    sql: "CREATE TABLE steward_service_starts (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        version TEXT NOT NULL,
        started_at BIGINT NOT NULL
    )",
};

/// SQLite spells an auto-increment key differently.
const BASELINE_SQLITE: &MigrationFile = &MigrationFile {
    version: 1,
    description: "steward baseline",
    sql: "CREATE TABLE steward_service_starts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        version TEXT NOT NULL,
        started_at BIGINT NOT NULL
    )",
};

fn migrator(
    baseline: &'static MigrationFile,
    files: &'static [MigrationFile],
    engine: Backend,
) -> Result<Migrator, DbError> {
    if let Some(file) = files.iter().find(|f| f.version <= baseline.version) {
        return Err(DbError::ReservedVersion(file.version));
    }
    let migrations = std::iter::once(baseline)
        .chain(files)
        .map(|file| {
            let sql =
                for_engine(file.sql, engine).ok_or(DbError::MalformedMigration(file.version))?;
            Ok(Migration::new(
                file.version,
                Cow::Borrowed(file.description),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            ))
        })
        .collect::<Result<_, DbError>>()?;
    Ok(Migrator::with_migrations(migrations))
}

/// One engine's text of a migration written for both: every
/// `{{sqlite|postgres}}` becomes the spelling `engine` reads, and the rest
/// is kept byte for byte (sqlx checksums the result, so a file that serves
/// both engines gives each the very text it had when it was two files).
/// `None` for an unclosed `{{` or one without its `|`.
pub fn for_engine(sql: &str, engine: Backend) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let inner = &rest[open + 2..];
        let close = inner.find("}}")?;
        let (sqlite, postgres) = inner[..close].split_once('|')?;
        out.push_str(match engine {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        });
        rest = &inner[close + 2..];
    }
    out.push_str(rest);
    Some(out)
}

/// A database URL with any password replaced, safe to log or return.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn one_file_gives_each_engine_its_spelling_and_keeps_the_rest_byte_for_byte() {
        let sql = "CREATE TABLE t (\n  id {{INTEGER |BIGINT  }}PRIMARY KEY,\n  b {{BLOB|BYTEA}}\n)";
        assert_eq!(
            for_engine(sql, Backend::Sqlite).unwrap(),
            "CREATE TABLE t (\n  id INTEGER PRIMARY KEY,\n  b BLOB\n)"
        );
        assert_eq!(
            for_engine(sql, Backend::Postgres).unwrap(),
            "CREATE TABLE t (\n  id BIGINT  PRIMARY KEY,\n  b BYTEA\n)"
        );
        assert_eq!(
            for_engine("SELECT 1", Backend::Postgres).unwrap(),
            "SELECT 1"
        );
        assert_eq!(for_engine("a {{b|c", Backend::Sqlite), None);
        assert_eq!(for_engine("a {{b}} c", Backend::Sqlite), None);
    }

    const FILES: &[MigrationFile] = &[MigrationFile {
        version: 2,
        description: "widgets",
        sql: "CREATE TABLE widgets (id INTEGER PRIMARY KEY)",
    }];
    const SET: MigrationSet = MigrationSet {
        service: "inventory",
        sqlite: FILES,
        postgres: FILES,
    };

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[tokio::test]
    async fn sqlite_migrates_twice_and_refuses_another_owner() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig::sqlite(&dir.path().join("nested/svc.db"));
        let db = Database::connect(&config).await.unwrap();
        db.migrate(&SET).await.unwrap();
        db.migrate(&SET).await.unwrap();
        let other = MigrationSet {
            service: "audit",
            ..SET
        };
        assert!(matches!(
            db.migrate(&other).await,
            Err(DbError::WrongOwner { .. })
        ));
    }

    /// A full database (here: capped with `max_page_count` on the one
    /// writer connection) is classified as full, and once the cap is lifted
    /// the next write succeeds on the same `Database`, with no restart, and
    /// is durable. SQLite ends the transaction itself on SQLITE_FULL; the
    /// connection sqlx then believed inside a transaction refused every
    /// `BEGIN IMMEDIATE`, and plain transactions on it became savepoints of
    /// a transaction nobody would commit (acknowledged, then lost).
    #[tokio::test]
    async fn sqlite_recovers_from_a_full_database_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::connect(&DatabaseConfig::sqlite(&dir.path().join("full.db")))
            .await
            .unwrap();
        db.migrate(&SET).await.unwrap();
        let writer = db.writer();
        let Database::Sqlite(sqlite) = &writer else {
            unreachable!()
        };
        let pool = sqlite.pool();
        sqlx::query("CREATE TABLE blobs (b BLOB NOT NULL)")
            .execute(pool)
            .await
            .unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(pool)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {}",
            pages + 4
        )))
        .execute(pool)
        .await
        .unwrap();
        // Transactions of large rows until the cap is hit.
        let mut full = None;
        for _ in 0..100 {
            let result: Result<(), sqlx::Error> = async {
                let mut tx = pool.begin().await?;
                for _ in 0..4 {
                    sqlx::query("INSERT INTO blobs (b) VALUES (zeroblob(200000))")
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            }
            .await;
            if let Err(error) = result {
                full = Some(error);
                break;
            }
        }
        let error = full.expect("the cap was never reached");
        assert_eq!(fault_of(&error), Fault::Full, "{error}");
        // Space returns: lift the cap (on whichever connection the pool
        // now holds), and write again.
        sqlx::query("PRAGMA max_page_count = 1073741823")
            .execute(pool)
            .await
            .unwrap();
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO blobs (b) VALUES (x'0102')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let plain = pool.begin().await.unwrap();
        plain.commit().await.unwrap();
        // Seen from a connection of its own: committed.
        let other = Database::connect(&DatabaseConfig::sqlite(&dir.path().join("full.db")))
            .await
            .unwrap();
        let Database::Sqlite(other) = &other else {
            unreachable!()
        };
        let marked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blobs WHERE b = x'0102'")
            .fetch_one(other.pool())
            .await
            .unwrap();
        assert_eq!(marked, 1);
    }

    #[tokio::test]
    async fn an_sqlite_file_that_cannot_be_opened_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        // Its "directory" is a regular file.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let path = blocker.join("svc.db");
        let error = Database::connect(&DatabaseConfig::sqlite(&path))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains(&path.display().to_string()), "{error}");
        assert!(error.contains("cannot create its directory"), "{error}");
        // The database path is a directory.
        let error = Database::connect(&DatabaseConfig::sqlite(dir.path()))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("it is a directory"), "{error}");
    }

    #[test]
    fn io_faults_are_classified() {
        let io = |kind| sqlx::Error::Io(std::io::Error::from(kind));
        assert_eq!(fault_of(&io(std::io::ErrorKind::StorageFull)), Fault::Full);
        assert_eq!(
            fault_of(&io(std::io::ErrorKind::ReadOnlyFilesystem)),
            Fault::ReadOnly
        );
        assert_eq!(
            fault_of(&io(std::io::ErrorKind::ConnectionRefused)),
            Fault::Unavailable
        );
        assert_eq!(fault_of(&sqlx::Error::PoolTimedOut), Fault::Unavailable);
    }

    #[tokio::test]
    async fn rejects_unknown_url_schemes_without_echoing_passwords() {
        let config = DatabaseConfig {
            url: "mysql://u:hunter2@h/db".into(),
            max_connections: 1,
        };
        let error = Database::connect(&config).await.unwrap_err().to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
