//! Every service starts on SQLite and on PostgreSQL, applies its migrations
//! twice without harm, and refuses a database that belongs to another.

use steward_db::{Database, DatabaseConfig};
use steward_integration_tests::{
    DATABASE_URL_ENV, RunningService, SERVICE_NAMES, TestBackend, TestPki, build_service,
    service_config, spiffe_id,
};

async fn counts(config: &DatabaseConfig) -> (i64, i64) {
    let db = Database::connect(config).await.unwrap();
    const MIGRATIONS: &str = "SELECT COUNT(*) FROM _sqlx_migrations";
    const STARTS: &str = "SELECT COUNT(*) FROM steward_service_starts";
    let counts = match &db {
        Database::Sqlite(sqlite) => (
            sqlx::query_scalar::<sqlx::Sqlite, i64>(MIGRATIONS)
                .fetch_one(sqlite.pool())
                .await
                .unwrap(),
            sqlx::query_scalar::<sqlx::Sqlite, i64>(STARTS)
                .fetch_one(sqlite.pool())
                .await
                .unwrap(),
        ),
        Database::Postgres(pool) => (
            sqlx::query_scalar::<sqlx::Postgres, i64>(MIGRATIONS)
                .fetch_one(pool)
                .await
                .unwrap(),
            sqlx::query_scalar::<sqlx::Postgres, i64>(STARTS)
                .fetch_one(pool)
                .await
                .unwrap(),
        ),
    };
    db.close().await;
    counts
}

async fn starts_twice_on(backend: TestBackend) {
    let pki = TestPki::new();
    for name in SERVICE_NAMES {
        let svid = pki.svid(name, &spiffe_id(&format!("/service/{name}")).to_string());
        let database = backend.fresh_database(pki.path(), name).await;
        let config = service_config(name, svid, database.clone());

        let first = build_service(name, config.clone()).await.unwrap();
        RunningService::start(name, first).shutdown().await;
        let (migrations_after_first, _) = counts(&database).await;

        let second = build_service(name, config).await.unwrap();
        RunningService::start(name, second).shutdown().await;
        let (migrations_after_second, starts) = counts(&database).await;

        assert!(migrations_after_first >= 1, "{name}: nothing migrated");
        assert_eq!(
            migrations_after_second, migrations_after_first,
            "{name}: migrations re-applied"
        );
        assert_eq!(starts, 2, "{name}: start journal");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_starts_twice_on_sqlite() {
    starts_twice_on(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_starts_twice_on_postgres() {
    match TestBackend::from_env() {
        backend @ TestBackend::Postgres(_) => starts_twice_on(backend).await,
        TestBackend::Sqlite => {
            // CI always sets it (.ci/run starts a PostgreSQL server).
            eprintln!("{DATABASE_URL_ENV} is not set: PostgreSQL not exercised in this run");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_refuses_a_database_owned_by_another() {
    let pki = TestPki::new();
    let backend = TestBackend::from_env();
    let database = backend.fresh_database(pki.path(), "shared").await;
    let inventory = service_config(
        "inventory",
        pki.svid("inventory", &spiffe_id("/service/inventory").to_string()),
        database.clone(),
    );
    let app = build_service("inventory", inventory).await.unwrap();
    RunningService::start("inventory", app).shutdown().await;

    let audit = service_config(
        "audit",
        pki.svid("audit", &spiffe_id("/service/audit").to_string()),
        database,
    );
    let error = build_service("audit", audit).await.unwrap_err().to_string();
    assert!(
        error.contains("belongs to service \"inventory\""),
        "{error}"
    );
}
