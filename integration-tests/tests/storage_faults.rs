//! Storage faults lose nothing: while audit's own storage fails, the other
//! services keep acknowledging changes and their evidence waits in their
//! outboxes; once it is back, every record reaches the log exactly once,
//! nothing is left parked, and the log verifies.

use std::time::{Duration, Instant};

use steward_db::{Database, on_backend};
use steward_integration_tests::faults::{
    Outage, ReadOnly, cap_sqlite, drained, log_verifies, outbox,
};
use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TestBackend, TestStack, evidence, run_steward, spiffe_id};
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::common::v1 as common;
use steward_proto::steward::common::v1::evidence_outbox_client::EvidenceOutboxClient;

/// Each identity has exactly one `identity.create` record in the log
/// (waiting up to 20 s for the first).
async fn each_created_once(stack: &TestStack, identities: &[String]) {
    for id in identities {
        let created = stack
            .evidence_for(id, 1)
            .await
            .iter()
            .filter(|e| {
                e.record
                    .as_ref()
                    .is_some_and(|r| r.action == "identity.create")
            })
            .count();
        assert_eq!(created, 1, "{id}: {created} identity.create records");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_waits_out_audits_storage_failure_and_arrives_exactly_once() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let outbox_db = Database::connect(&stack.configs["inventory"].database)
        .await
        .unwrap();
    // The start-up records are in: the outbox is empty.
    let deadline = Instant::now() + Duration::from_secs(20);
    while outbox(&outbox_db).await.0.pending > 0 {
        assert!(Instant::now() < deadline, "start-up evidence not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let outage = Outage::begin(&stack.backend, &stack.configs["audit"].database).await;
    // Writes go on for the fault's length, and until at least one delivery
    // has failed (audit's writer waits out its busy timeout first).
    let started = Instant::now();
    let mut acknowledged = Vec::new();
    let mut retried = false;
    while started.elapsed() < outage.length() || !retried {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no delivery failed in a minute of fault"
        );
        let n = acknowledged.len();
        acknowledged.push(create(&mut inventory, spec(&format!("fault-{n}"))).await.id);
        let (_, attempts) = outbox(&outbox_db).await;
        retried |= attempts > 0;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (during, _) = outbox(&outbox_db).await;
    outage.end().await;
    assert!(
        during.pending > 0,
        "the fault never held evidence back: {during:?}"
    );

    // Recovery: the outbox drains completely, nothing parked.
    drained(&outbox_db, Duration::from_secs(60)).await;

    // Every acknowledged change has exactly one record in the log, and the
    // log is one a verifier accepts.
    each_created_once(&stack, &acknowledged).await;
    log_verifies(&stack).await;
}

async fn outbox_as(
    stack: &TestStack,
    path: &str,
) -> EvidenceOutboxClient<tonic::transport::Channel> {
    let source = stack
        .pki
        .client(&path.replace('/', "-"), &spiffe_id(path).to_string());
    EvidenceOutboxClient::new(stack.service("inventory").channel(&source).await)
}

async fn parked(stack: &TestStack) -> common::GetOutboxResponse {
    outbox_as(stack, "/operator/alice")
        .await
        .get_outbox(common::GetOutboxRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// A record audit refuses (here: its id already logged with other
/// content) is parked, not retried forever nor dropped: an operator sees
/// it through the API and the CLI and can send it again; nobody else can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_parked_listed_and_sent_again_only_by_an_operator() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let stack = TestStack::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        stack.service("inventory").channel(&stack.operator).await,
    );
    assert_eq!(evidence_health(&mut health).await, ServingStatus::Serving);
    let mut writer = stack.audit_as_service("inventory").await;
    let logged = evidence::record(1, "INC-parked");
    writer
        .append(audit::AppendRequest {
            record: Some(logged.clone()),
        })
        .await
        .unwrap();
    // The same id, other content, queued in inventory's outbox.
    let mut clash = logged.clone();
    clash.action = "identity.suspend".into();
    let db = Database::connect(&stack.configs["inventory"].database)
        .await
        .unwrap();
    on_backend!(&db, pool, Db => {
        sqlx::query::<Db>(
            "INSERT INTO evidence_outbox (record_id, record, enqueued_at_ns) VALUES ($1, $2, 1)",
        )
        .bind(&clash.record_id)
        .bind(prost::Message::encode_to_vec(&clash))
        .execute(pool)
        .await
        .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = parked(&stack).await;
        if answer.parked == 1 {
            break answer;
        }
        assert!(Instant::now() < deadline, "never parked: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.service, "inventory");
    // Health says so under the outbox's name, within one count (2 s); the
    // service itself still serves.
    let deadline = Instant::now() + Duration::from_secs(5);
    while evidence_health(&mut health).await != ServingStatus::NotServing {
        assert!(Instant::now() < deadline, "parked evidence not in health");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_becomes(&mut health, ServingStatus::Serving).await;
    let record = &answer.parked_records[0];
    assert_eq!(record.record_id, logged.record_id);
    assert_eq!(record.action, "identity.suspend");
    assert!(!record.error.is_empty());

    // The CLI lists it, and says so by its exit code.
    let mut args = stack
        .pki
        .cli_args("operator", &stack.service("inventory").address());
    args.extend(["outbox", "show", "--service", "inventory"].map(String::from));
    let out = run_steward(args).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(6), "{text}");
    assert!(text.contains(&logged.record_id), "{text}");

    // An auditor may look but not send it again: nothing changes.
    let err = outbox_as(&stack, "/auditor/eve")
        .await
        .retry_parked(common::RetryParkedRequest {
            seqs: vec![],
            all: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        parked(&stack).await.parked_records[0].attempts,
        record.attempts
    );

    let mut operator = outbox_as(&stack, "/operator/alice").await;
    for bad in [
        common::RetryParkedRequest::default(),
        common::RetryParkedRequest {
            seqs: vec![record.seq],
            all: true,
        },
        common::RetryParkedRequest {
            seqs: (0..1001).collect(),
            all: false,
        },
    ] {
        let err = operator.retry_parked(bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("seqs: "), "{}", err.message());
    }
    let err = operator
        .get_outbox(common::GetOutboxRequest { page_size: 1001 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().starts_with("page_size: "),
        "{}",
        err.message()
    );
    assert_eq!(
        parked(&stack).await.parked_records[0].attempts,
        record.attempts
    );

    // The operator sends it again: audit refuses it again, and it is
    // parked again, one attempt more.
    let requeued = operator
        .retry_parked(common::RetryParkedRequest {
            seqs: vec![record.seq],
            all: false,
        })
        .await
        .unwrap()
        .into_inner()
        .requeued;
    assert_eq!(requeued, 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = parked(&stack).await;
        if answer.parked == 1 && answer.parked_records[0].attempts > record.attempts {
            break;
        }
        assert!(Instant::now() < deadline, "not sent again: {answer:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What health reports under the outbox's name (parked evidence).
async fn evidence_health(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
) -> tonic_health::pb::health_check_response::ServingStatus {
    let request = tonic_health::pb::HealthCheckRequest {
        service: steward_outbox::HEALTH_NAME.to_owned(),
    };
    health.check(request).await.unwrap().into_inner().status()
}

/// Waits until inventory's health says `wanted`; how long that took.
async fn health_becomes(
    health: &mut tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    wanted: tonic_health::pb::health_check_response::ServingStatus,
) -> Duration {
    let started = Instant::now();
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == wanted {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {status:?}, not {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Readiness writes to storage (`SELECT 1` would answer throughout): a
/// database that takes no writes is NOT_SERVING within about 2 s (a probe
/// every 0.5 s, each given 1.5 s), and SERVING again as soon as it does.
/// The plain-HTTP probes, which need no client certificate, say the same:
/// `/readyz` 503 while storage is down (and not why), `/healthz` 200
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_storage_that_takes_no_writes() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let stack = TestStack::start().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        stack.service("inventory").channel(&stack.operator).await,
    );
    health_becomes(&mut health, ServingStatus::Serving).await;
    let inventory = stack.service("inventory");
    assert_eq!(inventory.probe("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(
        inventory.probe("/readyz").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(inventory.probe("/metrics-or-else").await.0, 404);

    let outage = Outage::begin(&stack.backend, &stack.configs["inventory"].database).await;
    let down = health_becomes(&mut health, ServingStatus::NotServing).await;
    assert_eq!(
        inventory.probe("/readyz").await,
        (503, "not ready\n".to_owned())
    );
    assert_eq!(inventory.probe("/healthz").await.0, 200);
    // The others' storage is fine: they still serve.
    let mut audit = tonic_health::pb::health_client::HealthClient::new(
        stack.service("audit").channel(&stack.operator).await,
    );
    health_becomes(&mut audit, ServingStatus::Serving).await;
    outage.end().await;
    let up = health_becomes(&mut health, ServingStatus::Serving).await;
    assert_eq!(inventory.probe("/readyz").await.0, 200);
    eprintln!(
        "NOT_SERVING {} ms after the fault, SERVING {} ms after recovery",
        down.as_millis(),
        up.as_millis()
    );
}

/// SQLite: a full disk answers RESOURCE_EXHAUSTED naming the storage as
/// full, changes nothing, and once space returns writes succeed again
/// without a restart; every acknowledged change has its one record, and
/// the log verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_writes_resume_without_a_restart() {
    let stack = TestStack::start().await;
    if stack.backend != TestBackend::Sqlite {
        return; // PostgreSQL's disk-full path is the same mapping (53100)
    }
    let mut inventory = stack.inventory().await;
    let database = &stack.service("inventory").database;
    let Database::Sqlite(sqlite) = database else {
        unreachable!()
    };
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
        .fetch_one(sqlite.pool())
        .await
        .unwrap();
    cap_sqlite(database, Some(pages + 2)).await;

    let mut acknowledged = Vec::new();
    let mut refused = None;
    for n in 0..2000 {
        let mut identity = spec(&format!("full-{n}"));
        identity.purpose = "p".repeat(2000);
        match inventory
            .create_identity(
                steward_proto::steward::inventory::v1::CreateIdentityRequest {
                    identity: Some(identity),
                    context: None,
                },
            )
            .await
        {
            Ok(created) => acknowledged.push(created.into_inner().identity.unwrap().id),
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("the capped database never filled");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("storage is full"),
        "{}",
        status.message()
    );
    // Nothing half-done: exactly the acknowledged identities exist.
    let listed = inventory
        .list_identities(
            steward_proto::steward::inventory::v1::ListIdentitiesRequest {
                page_size: 1000,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_inner()
        .identities
        .len();
    assert_eq!(listed, acknowledged.len());

    // Space returns: the next write succeeds, no restart.
    cap_sqlite(database, None).await;
    acknowledged.push(create(&mut inventory, spec("after-the-fault")).await.id);

    each_created_once(&stack, &acknowledged).await;
    log_verifies(&stack).await;
}

/// Storage that turns read-only (SQLite: `query_only` on every
/// connection, as a read-only file answers; PostgreSQL: read-only
/// sessions, as a demoted primary answers): a change is UNAVAILABLE and
/// changes nothing, reads still answer, health says NOT_SERVING; once it
/// is writable the next change succeeds without a restart, and every
/// acknowledged change has its one record in a log that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_storage_refuses_changes_and_resumes_without_a_restart() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        stack.service("inventory").channel(&stack.operator).await,
    );
    let mut acknowledged = vec![create(&mut inventory, spec("before-read-only")).await.id];
    let listed = |inventory: &mut steward_integration_tests::inventory::Client| {
        let mut inventory = inventory.clone();
        async move {
            let request = steward_proto::steward::inventory::v1::ListIdentitiesRequest {
                page_size: 1000,
                ..Default::default()
            };
            let answer = inventory.list_identities(request).await.unwrap();
            answer.into_inner().identities.len()
        }
    };

    let read_only = ReadOnly::begin(&stack, "inventory").await;
    let status = inventory
        .create_identity(
            steward_proto::steward::inventory::v1::CreateIdentityRequest {
                identity: Some(spec("while-read-only")),
                context: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(listed(&mut inventory).await, 1, "a refused change was kept");
    health_becomes(&mut health, ServingStatus::NotServing).await;
    read_only.end().await;

    health_becomes(&mut health, ServingStatus::Serving).await;
    acknowledged.push(create(&mut inventory, spec("after-read-only")).await.id);
    assert_eq!(listed(&mut inventory).await, 2);
    each_created_once(&stack, &acknowledged).await;
    log_verifies(&stack).await;
}
