//! An import interrupted mid-way, by its client going away or by its
//! service being killed, leaves whole batches (5,000 rows each, with their
//! evidence) and nothing else; running it again converges on the whole
//! file.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use steward_identity::ServerAuthorizer;
use steward_integration_tests::cluster::Cluster;
use steward_integration_tests::evidence::whole_log;
use steward_integration_tests::inventory::Client;
use steward_integration_tests::{DATABASE_URL_ENV, TestBackend, TestStack, spiffe_id};
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use steward_proto::steward::inventory::v1 as pb;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;

/// Rows per import transaction (inventory's `store::import::BATCH`).
const BATCH: u64 = 5000;

/// `rows` new API keys in Steward's CSV, in source system `source`.
fn keys(source: &str, rows: u64) -> Vec<u8> {
    let mut csv = String::from("kind,source_system,external_id,display_name,labels\n");
    for n in 0..rows {
        csv.push_str(&format!(
            "api_key,{source},key-{n},import key {n},batch={}\n",
            n / BATCH
        ));
    }
    csv.into_bytes()
}

fn request(content: Vec<u8>) -> pb::ImportIdentitiesRequest {
    pb::ImportIdentitiesRequest {
        format: pb::ImportFormat::Csv as i32,
        content,
        ..Default::default()
    }
}

/// How many identities `source` holds (the keys have no expiry, so the
/// no-expiry report counts them all).
async fn count(client: &mut Client, source: &str) -> u64 {
    client
        .get_posture_report(pb::GetPostureReportRequest {
            report: pb::PostureReport::NoExpiry as i32,
            filter: Some(pb::IdentityFilter {
                source_system: source.into(),
                ..Default::default()
            }),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total
}

/// Polls until at least one batch of `source` is in and the import is not
/// yet done.
async fn first_batch_in(client: &mut Client, source: &str, rows: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = count(client, source).await;
        if n >= BATCH {
            assert!(
                n < rows,
                "the import finished before it could be interrupted"
            );
            return n;
        }
        assert!(Instant::now() < deadline, "no batch landed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the import again and checks that it converges: what landed is
/// unchanged, the rest is created.
async fn rerun_converges(client: &mut Client, source: &str, rows: u64, landed: u64) {
    let again = client
        .import_identities(request(keys(source, rows)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.created, again.unchanged, again.rejected),
        (rows - landed, landed, 0)
    );
    assert_eq!(count(client, source).await, rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_its_client_abandons_leaves_whole_batches_and_a_rerun_converges() {
    let stack = TestStack::start().await;
    let mut watcher = stack.inventory().await;
    let rows = 60_000;
    let mut importer = stack.inventory().await;
    let call =
        tokio::spawn(async move { importer.import_identities(request(keys("cut", rows))).await });
    first_batch_in(&mut watcher, "cut", rows).await;
    // The client goes away: its call is dropped and the stream reset.
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let landed = count(&mut watcher, "cut").await;
    assert_eq!(landed % BATCH, 0, "{landed} rows: a batch was cut");
    assert!(landed < rows);
    // Nothing more lands once the caller is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&mut watcher, "cut").await, landed);
    rerun_converges(&mut watcher, "cut", rows, landed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_whose_service_is_killed_leaves_whole_batches_with_their_evidence() {
    let backend = TestBackend::from_env();
    if backend == TestBackend::Sqlite {
        eprintln!(
            "{DATABASE_URL_ENV} is not set: killing one of two replicas needs PostgreSQL; not exercised in this run"
        );
        return;
    }
    let mut cluster =
        Cluster::start_with(&backend, |name| if name == "inventory" { 2 } else { 1 }).await;
    let direct = |n: usize| {
        let addr = cluster.replicas["inventory"][n].grpc.to_string();
        let operator = cluster.operator.clone();
        async move {
            let channel = steward_identity::connector::connect(
                operator,
                &addr,
                ServerAuthorizer::Exact(spiffe_id("/service/inventory")),
            )
            .await
            .unwrap();
            InventoryServiceClient::new(channel)
                .max_encoding_message_size(64 * 1024 * 1024)
                .max_decoding_message_size(64 * 1024 * 1024)
        }
    };
    let mut survivor = direct(1).await;
    let mut importer = direct(0).await;
    let rows = 40_000;
    let call = tokio::spawn(async move {
        importer
            .import_identities(request(keys("killed", rows)))
            .await
    });
    first_batch_in(&mut survivor, "killed", rows).await;
    cluster.replicas.get_mut("inventory").unwrap()[0]
        .kill()
        .await;
    assert!(call.await.unwrap().is_err(), "the killed replica answered");
    let landed = count(&mut survivor, "killed").await;
    assert_eq!(landed % BATCH, 0, "{landed} rows: a batch was cut");
    rerun_converges(&mut survivor, "killed", rows, landed).await;

    // Every identity has exactly one import record: the killed replica's
    // committed batches took their evidence with them into the outbox,
    // which the survivor forwards.
    let mut reader = AuditServiceClient::new(cluster.channel("audit", &cluster.operator).await);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut records: BTreeMap<String, usize> = BTreeMap::new();
        for record in whole_log(&mut reader)
            .await
            .iter()
            .filter_map(|e| e.record.as_ref())
        {
            if record.action == "identity.import"
                && record.attributes.get("source_system").map(String::as_str) == Some("killed")
            {
                *records
                    .entry(record.attributes["external_id"].clone())
                    .or_default() += 1;
            }
        }
        assert!(
            records.values().all(|n| *n == 1),
            "an identity has two import records"
        );
        if records.len() as u64 == rows {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {rows} import records reached audit",
            records.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
