//! The PostgreSQL credential backend against a real server: login roles
//! created from a template, usable at once, refused after revocation (by a
//! real login attempt), with their sessions ended, and expired by the
//! reaper. Needs `STEWARD_TEST_POSTGRES_BACKEND_URL` (an admin URL; CI
//! sets it) and is skipped, saying so, without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;
use steward_credential_broker::backends::PostgresBackendConfig;
use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_integration_tests::{TestStack, replace_database};
use steward_proto::steward::broker::v1 as pb;
use tonic::Code;

const URL_ENV: &str = "STEWARD_TEST_POSTGRES_BACKEND_URL";

async fn login(url: &str, user: &str, password: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    let options: PgConnectOptions = url.parse().unwrap();
    options.username(user).password(password).connect().await
}

fn refused(result: &Result<sqlx::PgConnection, sqlx::Error>) -> bool {
    matches!(result, Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("28")))
}

async fn until_refused(url: &str, user: &str, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attempt = login(url, user, password).await;
        if refused(&attempt) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} can still log in: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn database_request(
    identity: &str,
    template: &str,
    ttl: u32,
) -> pb::IssueDatabaseCredentialRequest {
    pb::IssueDatabaseCredentialRequest {
        identity_id: identity.into(),
        template: template.into(),
        ttl_seconds: ttl,
        task: task("INC-DB"),
    }
}

#[tokio::test]
async fn postgres_login_roles_are_leased_rotated_with_a_refused_login_and_expired() {
    let Ok(admin) = std::env::var(URL_ENV) else {
        eprintln!("skipped: set {URL_ENV} to a PostgreSQL admin URL to run this test");
        return;
    };
    // The application database the roles are for.
    let app = format!("steward_app_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {app}")))
        .execute(&pool)
        .await
        .unwrap();
    let app_url = replace_database(&admin, &app);
    let app_pool = sqlx::PgPool::connect(&app_url).await.unwrap();
    sqlx::query("CREATE TABLE ledger (id BIGINT PRIMARY KEY)")
        .execute(&app_pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ledger VALUES (1), (2)")
        .execute(&app_pool)
        .await
        .unwrap();

    let mut stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let backend_url = app_url.clone();
    let app_name = app.clone();
    stack
        .restart_broker_with(move |config| {
            config.postgres_backend = Some(PostgresBackendConfig {
                url: backend_url,
                role_prefix: "steward_test_".into(),
                templates: BTreeMap::from([(
                    "ledger-reader".to_owned(),
                    vec![
                        format!("GRANT CONNECT ON DATABASE {app_name} TO {{role}}"),
                        "GRANT SELECT ON ledger TO {role}".to_owned(),
                    ],
                )]),
            });
        })
        .await;
    let identity = stack.workload_identity("ledger-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;

    let err = soar
        .issue_database_credential(database_request(&identity.id, "ledger-admin", 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("template:"), "{err:?}");

    // A role that works at once, with the template's grants and no more.
    let issued = soar
        .issue_database_credential(database_request(&identity.id, "ledger-reader", 0))
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    assert_eq!(lease.kind, pb::CredentialKind::DatabaseRole as i32);
    assert_eq!(lease.credential_ref, issued.username);
    let mut session = login(&app_url, &issued.username, &issued.password)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    assert!(
        sqlx::query("INSERT INTO ledger VALUES (3)")
            .execute(&mut session)
            .await
            .is_err()
    );

    // Rotation: a new role; the old one is revoked, its open session
    // ended, and a real login attempt confirms it is refused.
    let rotated = soar
        .rotate(pb::RotateRequest {
            identity_id: identity.id.clone(),
            kind: pb::CredentialKind::DatabaseRole as i32,
            task: task("INC-DB"),
            overlap_seconds: 0,
            template: "ledger-reader".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let rotation = rotated.rotation.unwrap();
    assert_eq!(
        rotation.state,
        pb::RotationState::Confirmed as i32,
        "{rotation:?}"
    );
    assert!(
        rotation.detail.contains("login attempt was refused"),
        "{rotation:?}"
    );
    assert!(refused(
        &login(&app_url, &issued.username, &issued.password).await
    ));
    assert!(
        sqlx::query("SELECT 1").execute(&mut session).await.is_err(),
        "the old role's open session was ended"
    );
    let gone: Option<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = $1")
            .bind(&issued.username)
            .fetch_optional(&app_pool)
            .await
            .unwrap();
    assert_eq!(gone, None, "the old role was dropped");
    let mut fresh = login(&app_url, &rotated.username, &rotated.password)
        .await
        .unwrap();
    sqlx::query("SELECT id FROM ledger")
        .fetch_all(&mut fresh)
        .await
        .unwrap();
    drop(fresh);

    // Revoking the lease reaches the backend through the revocation log.
    soar.revoke_lease(pb::RevokeLeaseRequest {
        lease_id: rotated.lease.unwrap().lease_id,
        reason: "done".into(),
    })
    .await
    .unwrap();
    until_refused(&app_url, &rotated.username, &rotated.password).await;

    // So does expiry, through the reaper.
    let short = soar
        .issue_database_credential(database_request(&identity.id, "ledger-reader", 1))
        .await
        .unwrap()
        .into_inner();
    login(&app_url, &short.username, &short.password)
        .await
        .unwrap();
    until_refused(&app_url, &short.username, &short.password).await;

    drop(stack);
    app_pool.close().await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {app} WITH (FORCE)"
    )))
    .execute(&pool)
    .await;
    let _ = sqlx::query("DO $$ DECLARE r text; BEGIN FOR r IN SELECT rolname FROM pg_roles WHERE rolname LIKE 'steward\\_test\\_%' LOOP EXECUTE format('DROP ROLE IF EXISTS %I', r); END LOOP; END $$")
        .execute(&pool)
        .await;
}
