//! Storage faults under load lose nothing: the broker keeps acknowledging
//! leases while audit cannot commit, and every one of them reaches the log
//! once audit can again; a PostgreSQL server crashed and restarted under
//! inventory and broker writes leaves every acknowledged change in place,
//! with exactly one evidence record each.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_integration_tests::faults::{
    FullDisk, PrivatePostgres, drained, log_verifies, logged, outbox,
};
use steward_integration_tests::inventory::spec;
use steward_integration_tests::{TestBackend, TestStack};
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tokio::sync::Mutex;

/// An API token for `identity`; its lease id once acknowledged.
async fn issue(
    client: &mut steward_integration_tests::broker::Client,
    identity: &str,
) -> Result<String, tonic::Status> {
    let issued = client
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: identity.into(),
            scopes: vec!["ledger:read".into()],
            ttl_seconds: 600,
            task: task("INC-FAULT"),
        })
        .await?;
    Ok(issued.into_inner().lease.unwrap().lease_id)
}

/// How many `credential.issue` records the log holds for each lease of
/// `identity`.
async fn issue_records(stack: &TestStack, identity: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for entry in logged(stack, identity, "credential.issue").await {
        let record = entry.record.unwrap();
        *seen.entry(record.target.unwrap().lease_id).or_default() += 1;
    }
    seen
}

/// Every acknowledged lease has exactly one record.
fn each_once(acknowledged: &[String], seen: &BTreeMap<String, usize>) {
    for lease in acknowledged {
        assert_eq!(seen.get(lease), Some(&1), "lease {lease}");
    }
}

/// Audit's disk fills (`FullDisk` on its entries table) while the broker
/// issues. The broker keeps
/// acknowledging, its outbox keeps every record, and once space returns
/// each acknowledged lease has exactly one record in a log that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_acknowledged_while_audit_cannot_commit_all_reach_the_log() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("fault-ledger", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let broker_db = &stack.service("credential-broker").database;
    drained(broker_db, Duration::from_secs(20)).await;

    let full = FullDisk::begin(&stack.service("audit").database, "entries").await;
    // Issue for 3 s, and until a delivery to audit has failed.
    let started = Instant::now();
    let mut acknowledged = Vec::new();
    loop {
        acknowledged.push(issue(&mut soar, &identity.id).await.unwrap());
        let (_, attempts) = outbox(broker_db).await;
        if attempts > 0 && started.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no delivery failed in a minute of a full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (during, _) = outbox(broker_db).await;
    assert!(during.pending > 0, "nothing waited for audit: {during:?}");
    full.end().await;

    drained(broker_db, Duration::from_secs(60)).await;
    each_once(&acknowledged, &issue_records(&stack, &identity.id).await);
    log_verifies(&stack).await;
    eprintln!(
        "{} leases acknowledged while audit could not commit ({} waited at most)",
        acknowledged.len(),
        during.pending
    );
}

/// What the load saw: acknowledged ids, and the codes of failed calls.
#[derive(Default)]
struct Seen {
    identities: Vec<String>,
    leases: Vec<String>,
    failed: BTreeMap<String, usize>,
    /// The longest a create and an issue took together.
    slowest: Duration,
}

impl Seen {
    fn failed(&mut self, status: &tonic::Status) {
        *self
            .failed
            .entry(format!("{:?}", status.code()))
            .or_default() += 1;
    }
}

/// Inventory creates and broker issues, back to back, until `stop`.
async fn load(
    stack: &TestStack,
    identity: String,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut inventory = stack.inventory().await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let started = Instant::now();
        let created = inventory
            .create_identity(inventory::CreateIdentityRequest {
                identity: Some(spec(&format!("crash-{n}"))),
                context: None,
            })
            .await;
        let issued = issue(&mut soar, &identity).await;
        let mut seen = seen.lock().await;
        seen.slowest = seen.slowest.max(started.elapsed());
        match created {
            Ok(c) => seen.identities.push(c.into_inner().identity.unwrap().id),
            Err(status) => seen.failed(&status),
        }
        match issued {
            Ok(lease) => seen.leases.push(lease),
            Err(status) => seen.failed(&status),
        }
        drop(seen);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// PostgreSQL stopped as a crash would (`pg_ctl stop -m immediate`) for
/// 5 s under inventory and broker writes, then started again: every call
/// that failed said UNAVAILABLE (others waited for the server), every acknowledged identity and lease is
/// there with exactly one record, the outboxes drain, the log verifies.
/// On a PostgreSQL server of the test's own, so the suite's shared one
/// keeps serving the other tests; run in the PostgreSQL pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashed_under_load_loses_nothing_acknowledged() {
    if TestBackend::from_env() == TestBackend::Sqlite {
        return; // the PostgreSQL pass runs it
    }
    let Some(server) = PrivatePostgres::start() else {
        panic!("the PostgreSQL pass needs PostgreSQL's initdb and pg_ctl installed");
    };
    let stack = TestStack::start_on(TestBackend::Postgres(server.admin_url())).await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("crash-ledger", "production").await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writer = load(&stack, identity.id.clone(), seen.clone(), stopped);
    let fault = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = seen.lock().await.identities.len();
        server.crash();
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.up();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.send(true).unwrap();
        before
    };
    let (_, before) = tokio::join!(writer, fault);
    let seen = seen.lock().await;
    assert!(before > 0, "nothing was written before the crash");
    // The crash either failed calls, each UNAVAILABLE, or held them until
    // the server was back.
    assert!(
        !seen.failed.is_empty() || seen.slowest > Duration::from_secs(3),
        "the crash neither failed nor delayed a call"
    );
    assert!(
        seen.failed.keys().all(|code| code == "Unavailable"),
        "{:?}",
        seen.failed
    );
    assert!(
        seen.identities.len() > before,
        "no write succeeded after the restart"
    );

    for service in ["inventory", "credential-broker"] {
        drained(&stack.service(service).database, Duration::from_secs(60)).await;
    }
    let mut client = stack.inventory().await;
    for id in &seen.identities {
        let created = logged(&stack, id, "identity.create").await.len();
        assert_eq!(created, 1, "{id}: {created} identity.create records");
        client
            .get_identity(inventory::GetIdentityRequest { id: id.clone() })
            .await
            .unwrap();
    }
    each_once(&seen.leases, &issue_records(&stack, &identity.id).await);
    log_verifies(&stack).await;
    eprintln!(
        "{} identities and {} leases acknowledged, failed calls {:?}, slowest {} ms",
        seen.identities.len(),
        seen.leases.len(),
        seen.failed,
        seen.slowest.as_millis()
    );
}
