//! Storage faults made from outside, as an operator's database would fail:
//! a lock held past the busy timeout, a database that refuses connections,
//! a full disk, a whole PostgreSQL server stopped; and the checks that
//! nothing acknowledged was lost once it is back.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use steward_db::{Database, DatabaseConfig, on_backend};
use steward_outbox::{Forwarder, OutboxStats};
use steward_proto::steward::audit::v1 as audit;

use crate::{TestBackend, TestStack, run_steward};

/// A service's storage failing: on SQLite another process holds the write
/// lock longer than the service's busy timeout (10 s); on PostgreSQL the
/// database refuses connections and its sessions are ended.
pub enum Outage {
    Sqlite(sqlx::SqliteConnection),
    Postgres {
        admin: sqlx::PgPool,
        database: String,
    },
}

/// The database a PostgreSQL URL names.
fn database_of(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap_or_default();
    path.split('?').next().unwrap_or_default().to_owned()
}

impl Outage {
    pub async fn begin(backend: &TestBackend, config: &DatabaseConfig) -> Self {
        use sqlx::Connection as _;
        match backend {
            TestBackend::Sqlite => {
                let mut connection = sqlx::SqliteConnection::connect(&config.url).await.unwrap();
                sqlx::query("BEGIN EXCLUSIVE")
                    .execute(&mut connection)
                    .await
                    .unwrap();
                Self::Sqlite(connection)
            }
            TestBackend::Postgres(admin_url) => {
                let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
                let database = database_of(&config.url);
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS false"
                )))
                .execute(&admin)
                .await
                .unwrap();
                end_sessions(&admin, &database).await;
                Self::Postgres { admin, database }
            }
        }
    }

    /// How long the fault must last to fail writes, not just delay them.
    pub fn length(&self) -> Duration {
        match self {
            Self::Sqlite(_) => Duration::from_secs(16),
            Self::Postgres { .. } => Duration::from_secs(8),
        }
    }

    pub async fn end(self) {
        match self {
            Self::Sqlite(mut connection) => {
                sqlx::query("ROLLBACK")
                    .execute(&mut connection)
                    .await
                    .unwrap();
            }
            Self::Postgres { admin, database } => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE \"{database}\" WITH ALLOW_CONNECTIONS true"
                )))
                .execute(&admin)
                .await
                .unwrap();
            }
        }
    }
}

/// A service's disk "full" for that service alone: every insert into
/// `table` fails, as it would with no space left, until `end`.
/// PostgreSQL: a trigger raises SQLSTATE 53100 (`disk_full`), what the
/// server says when its disk is full. SQLite: every connection of the
/// pools is capped with `PRAGMA max_page_count` just above what it holds
/// (SQLITE_FULL); a connection the pool opens afresh has no cap, so a
/// trigger fails inserts on those too.
pub struct FullDisk {
    database: Database,
    table: String,
}

impl FullDisk {
    pub async fn begin(database: &Database, table: &str) -> Self {
        let trigger = match database {
            Database::Sqlite(_) => format!(
                "CREATE TRIGGER steward_test_disk_full BEFORE INSERT ON {table} \
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            ),
            Database::Postgres(_) => format!(
                "CREATE TRIGGER steward_test_disk_full BEFORE INSERT ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION steward_test_disk_full()"
            ),
        };
        let function = "CREATE OR REPLACE FUNCTION steward_test_disk_full() RETURNS trigger \
             LANGUAGE plpgsql AS $$ BEGIN \
             RAISE EXCEPTION 'could not extend file: No space left on device' \
             USING ERRCODE = 'disk_full'; END $$";
        let statements = match database {
            Database::Sqlite(_) => vec![trigger],
            Database::Postgres(_) => vec![function.to_owned(), trigger],
        };
        for sql in statements {
            on_backend!(&database.writer(), pool, Db => {
                sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
            });
        }
        if let Database::Sqlite(sqlite) = database {
            let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
                .fetch_one(sqlite.pool())
                .await
                .unwrap();
            cap_sqlite(database, Some(pages + 2)).await;
        }
        Self {
            database: database.clone(),
            table: table.to_owned(),
        }
    }

    /// Space returns.
    pub async fn end(self) {
        cap_sqlite(&self.database, None).await;
        let sql = match &self.database {
            Database::Sqlite(_) => "DROP TRIGGER steward_test_disk_full".to_owned(),
            Database::Postgres(_) => {
                format!("DROP TRIGGER steward_test_disk_full ON {}", self.table)
            }
        };
        on_backend!(&self.database.writer(), pool, Db => {
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).execute(pool).await.unwrap();
        });
    }
}

/// Caps (or, with `None`, uncaps) every connection of an SQLite service's
/// pools with `PRAGMA max_page_count`.
pub async fn cap_sqlite(database: &Database, pages: Option<i64>) {
    let cap = pages.unwrap_or(1_073_741_823);
    on_every_connection(database, &format!("PRAGMA max_page_count = {cap}")).await;
}

/// Runs `sql` on every connection of an SQLite service's pools, holding
/// each pool's connections at once so that each is reached.
async fn on_every_connection(database: &Database, sql: &str) {
    let Database::Sqlite(sqlite) = database else {
        return;
    };
    for pool in sqlite.pools() {
        let mut held = Vec::new();
        for _ in 0..pool.options().get_max_connections() {
            let mut connection = pool.acquire().await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&mut *connection)
                .await
                .unwrap();
            held.push(connection);
        }
    }
}

/// A service's storage turned read-only, until `end`. SQLite: every
/// connection set `query_only` (each write then fails with SQLITE_READONLY,
/// as on a read-only file). PostgreSQL: the database's sessions made
/// read-only by default and ended, so that each new one is (SQLSTATE
/// 25006, as on a read-only server); at the end the default is reset and
/// the sessions are ended again, as when the primary is back.
pub struct ReadOnly {
    database: Database,
    admin: Option<(sqlx::PgPool, String)>,
}

impl ReadOnly {
    /// Service `name` of `stack` loses write access to its storage.
    pub async fn begin(stack: &TestStack, name: &str) -> Self {
        let service = stack.service(name);
        let admin = match &stack.backend {
            TestBackend::Sqlite => {
                on_every_connection(&service.database, "PRAGMA query_only = ON").await;
                None
            }
            TestBackend::Postgres(admin_url) => {
                let admin = sqlx::PgPool::connect(admin_url).await.unwrap();
                let database = database_of(&stack.configs[name].database.url);
                let sql =
                    format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .unwrap();
                end_sessions(&admin, &database).await;
                Some((admin, database))
            }
        };
        Self {
            database: service.database.clone(),
            admin,
        }
    }

    pub async fn end(self) {
        match self.admin {
            None => on_every_connection(&self.database, "PRAGMA query_only = OFF").await,
            Some((admin, database)) => {
                let sql =
                    format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await
                    .unwrap();
                end_sessions(&admin, &database).await;
            }
        }
    }
}

/// Ends every session of `database` but the admin's own.
async fn end_sessions(admin: &sqlx::PgPool, database: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(admin)
    .await
    .unwrap();
}

/// A service's outbox: its counts, and the most attempts any row has had.
pub async fn outbox(db: &Database) -> (OutboxStats, i64) {
    let stats = Forwarder::stats(db).await.unwrap();
    const ATTEMPTED: &str =
        "SELECT CAST(COALESCE(MAX(attempts), 0) AS BIGINT) FROM evidence_outbox";
    let attempted: i64 = on_backend!(db, pool, Db => {
        sqlx::query_scalar::<Db, i64>(ATTEMPTED).fetch_one(pool).await.unwrap()
    });
    (stats, attempted)
}

/// Waits (up to `within`) until the outbox is empty, failing at once if
/// anything is parked: audit never refused these records.
pub async fn drained(db: &Database, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (stats, _) = outbox(db).await;
        assert_eq!(
            stats.parked, 0,
            "evidence parked although audit never refused it"
        );
        if stats.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained: {stats:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every entry of the log with `action` for `nhi_id`, all pages.
pub async fn logged(stack: &TestStack, nhi_id: &str, action: &str) -> Vec<audit::LogEntry> {
    let mut reader = stack.audit_reader().await;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = reader
            .query(audit::QueryRequest {
                filter: Some(audit::EntryFilter {
                    nhi_id: nhi_id.to_owned(),
                    action: action.to_owned(),
                    ..Default::default()
                }),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

/// `steward audit verify` against the stack's log passes.
pub async fn log_verifies(stack: &TestStack) {
    let mut args = stack
        .pki
        .cli_args("operator", &stack.service("audit").address());
    let state = stack.pki.path().join("verify-state/trusted");
    args.extend([
        "audit".to_owned(),
        "verify".to_owned(),
        "--vkey".to_owned(),
        stack.pki.log_verifier_key().display().to_string(),
        "--state".to_owned(),
        state.display().to_string(),
    ]);
    let out = run_steward(args).await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL server of the test's own, which the test may stop and
/// start: the suite's shared server serves other tests meanwhile. Made
/// with the `initdb` and `pg_ctl` of the installed PostgreSQL; run as the
/// `postgres` user when the tests run as root.
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    /// A new cluster, started; `None` if no PostgreSQL is installed.
    pub fn start() -> Option<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("pg_ctl").exists())
            .max()?;
        let dir = tempfile::tempdir().unwrap();
        let port = crate::reserve_port().port();
        let server = Self { bin, dir, port };
        if as_root() {
            let status = Command::new("chown")
                .args(["postgres"])
                .arg(server.dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        server.run("initdb", &["-A", "trust", "-U", "postgres", "-D", "data"]);
        server.up();
        Some(server)
    }

    /// `postgres://…/postgres` on this server.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) server again.
    pub fn up(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &["-D", "data", "-l", "log", "-w", "-o", &options, "start"],
        );
    }

    /// Stops the server as a crash would: `pg_ctl stop -m immediate`.
    pub fn crash(&self) {
        self.run("pg_ctl", &["-D", "data", "-m", "immediate", "-w", "stop"]);
    }

    /// `program` of this PostgreSQL, run as its owner, in the cluster's
    /// directory.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", "data", "-m", "immediate", "stop"])
            .output();
    }
}

/// Whether this process runs as root (whose `/proc/self` root owns).
fn as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
