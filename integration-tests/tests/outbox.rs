//! The evidence outbox: state changes commit with their evidence while audit
//! is down, and every record reaches the log exactly once, in order.

use std::time::{Duration, Instant};

use steward_db::{Database, MigrationFile, MigrationSet, on_backend};
use steward_evidence::wire::record_from_proto;
use steward_identity::ServerAuthorizer;
use steward_integration_tests::evidence::record;
use steward_integration_tests::{TestStack, spiffe_id};
use steward_outbox::{Forwarder, ForwarderOptions};
use steward_proto::steward::audit::v1 as pb;

const SQLITE: &[MigrationFile] = &[
    MigrationFile {
        version: 2,
        description: "outbox",
        sql: steward_outbox::SQLITE_SQL,
    },
    MigrationFile {
        version: 3,
        description: "widgets",
        sql: "CREATE TABLE widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    },
];
const POSTGRES: &[MigrationFile] = &[
    MigrationFile {
        version: 2,
        description: "outbox",
        sql: steward_outbox::POSTGRES_SQL,
    },
    MigrationFile {
        version: 3,
        description: "widgets",
        sql: "CREATE TABLE widgets (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    },
];
const WIDGETS: MigrationSet = MigrationSet {
    service: "inventory",
    sqlite: SQLITE,
    postgres: POSTGRES,
};

/// One state change and its evidence, in one transaction; `commit` decides.
async fn change(db: &Database, n: u64, commit: bool) {
    let evidence = record_from_proto(record(n, "INC-outbox")).unwrap();
    on_backend!(db, pool, Db => {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query::<Db>("INSERT INTO widgets (id, name) VALUES ($1, $2)")
            .bind(n as i64)
            .bind(format!("widget-{n}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        enqueue(&mut tx, &evidence).await;
        if commit { tx.commit().await.unwrap() } else { tx.rollback().await.unwrap() }
    });
}

trait Enqueue {
    async fn enqueue_into(&mut self, record: &steward_evidence::EvidenceRecord);
}
impl Enqueue for sqlx::Transaction<'_, sqlx::Sqlite> {
    async fn enqueue_into(&mut self, record: &steward_evidence::EvidenceRecord) {
        steward_outbox::enqueue_sqlite(self, record).await.unwrap();
    }
}
impl Enqueue for sqlx::Transaction<'_, sqlx::Postgres> {
    async fn enqueue_into(&mut self, record: &steward_evidence::EvidenceRecord) {
        steward_outbox::enqueue_postgres(self, record)
            .await
            .unwrap();
    }
}
async fn enqueue(tx: &mut impl Enqueue, record: &steward_evidence::EvidenceRecord) {
    tx.enqueue_into(record).await;
}

async fn count(db: &Database, sql: &'static str) -> i64 {
    on_backend!(db, pool, Db => sqlx::query_scalar::<Db, i64>(sql).fetch_one(pool).await.unwrap())
}

/// Waits until audit has every queued record: delivered rows leave the
/// outbox, so it ends empty.
async fn wait_until_delivered(db: &Database) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = Forwarder::stats(db).await.unwrap();
        if stats.pending == 0 {
            assert_eq!(
                count(db, "SELECT COUNT(*) FROM evidence_outbox").await,
                0,
                "{stats:?}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "outbox not drained: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_queues_while_audit_is_down_and_arrives_exactly_once_in_order() {
    let mut stack = TestStack::audit_only().await;
    let audit_addr = stack.service("audit").address();
    stack.stop("audit").await;

    // The service's own database, with the outbox beside its state.
    let database = stack
        .backend
        .fresh_database(stack.pki.path(), "widgets")
        .await;
    let db = Database::connect(&database).await.unwrap();
    db.migrate(&WIDGETS).await.unwrap();

    // Audit is down: state changes still commit, and their evidence queues.
    for n in 0..20 {
        change(&db, n, true).await;
    }
    change(&db, 99, false).await; // rolled back: neither state nor evidence
    assert_eq!(count(&db, "SELECT COUNT(*) FROM widgets").await, 20);
    assert_eq!(Forwarder::stats(&db).await.unwrap().pending, 20);
    // A row an earlier version kept after delivery, marked: the forwarder
    // removes it when it starts.
    steward_integration_tests::execute_sql(
        &database,
        "INSERT INTO evidence_outbox (record_id, record, enqueued_at_ns, delivered_at_ns, log_index)
         VALUES ('delivered-before-adr-0013', '', 1, 2, 0)",
    )
    .await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM evidence_outbox").await, 21);

    let inventory = stack.pki.client(
        "inventory-forwarder",
        &spiffe_id("/service/inventory").to_string(),
    );
    let channel = steward_identity::connector::connect_lazy(
        inventory,
        &audit_addr,
        ServerAuthorizer::Exact(spiffe_id("/service/audit")),
    )
    .unwrap();
    let options = ForwarderOptions {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        ..Default::default()
    };
    let forwarder = Forwarder::new(db.clone(), steward_telemetry::Traced::new(channel), options);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(forwarder.clone().run(async {
        let _ = stopped.await;
    }));

    // A few failed attempts against the stopped audit, and nothing lost;
    // the row delivered long ago is gone.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(Forwarder::stats(&db).await.unwrap().pending, 20);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM evidence_outbox").await, 20);
    // The last five rows as queued, to put back below.
    let last_five: Vec<(String, Vec<u8>, i64)> = on_backend!(&db, pool, Db => {
        sqlx::query_as::<Db, (String, Vec<u8>, i64)>(
            "SELECT record_id, record, enqueued_at_ns FROM evidence_outbox WHERE seq > 15 ORDER BY seq",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    });
    assert_eq!(last_five.len(), 5);

    // Audit comes back on the same address: the queue drains.
    stack.restart_on("audit", audit_addr.parse().unwrap()).await;
    wait_until_delivered(&db).await;

    // Pretend the acknowledgement of the last five was lost, so their rows
    // were never deleted: they are sent again, and audit logs them once.
    on_backend!(&db, pool, Db => {
        for (id, bytes, at) in &last_five {
            sqlx::query::<Db>(
                "INSERT INTO evidence_outbox (record_id, record, enqueued_at_ns) VALUES ($1, $2, $3)",
            )
            .bind(id)
            .bind(bytes)
            .bind(at)
            .execute(pool)
            .await
            .unwrap();
        }
    });
    // The running forwarder may already be sending them again.
    assert!(Forwarder::stats(&db).await.unwrap().pending <= 5);
    forwarder.wake();
    wait_until_delivered(&db).await;

    let mut reader = stack.audit_reader().await;
    let entries = reader
        .get_entries(pb::GetEntriesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let order: Vec<String> = entries
        .iter()
        .map(|e| e.record.as_ref().unwrap().attributes["n"].clone())
        .collect();
    assert_eq!(
        order,
        (0..20).map(|n| n.to_string()).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    assert!(
        entries
            .iter()
            .all(|e| e.appended_by == "spiffe://steward.test/service/inventory")
    );

    let _ = stop.send(());
    task.await.unwrap();
}

/// Decisions' evidence is queued, not awaited (ADR 0008). A batch that
/// fails keeps its queued records for the next one, and until a batch
/// commits again callers wait for durability, so a broken database
/// refuses them instead of losing what it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_evidence_survives_a_failed_batch_and_a_broken_database_refuses() {
    let stack = TestStack::audit_only().await;
    let database = stack
        .backend
        .fresh_database(stack.pki.path(), "batcher")
        .await;
    let db = Database::connect(&database).await.unwrap();
    db.migrate(&WIDGETS).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (batcher, writer) = steward_outbox::Batcher::start(db.clone(), None, async {
        let _ = stopped.await;
    });
    let writer = tokio::spawn(writer);
    let records: Vec<_> = (0..5)
        .map(|n| record_from_proto(record(n, "INC-batcher")).unwrap())
        .collect();
    let evidence = |n: usize| records[n].clone();
    let pending = async || Forwarder::stats(&db).await.unwrap().pending;

    batcher.record_queued(evidence(1)).await.unwrap();
    for _ in 0..200 {
        if pending().await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(pending().await, 1, "a queued record is committed soon");

    // The database breaks: the next queued record is accepted, its batch
    // fails, and it is kept.
    steward_integration_tests::execute_sql(
        &database,
        "ALTER TABLE evidence_outbox RENAME TO evidence_outbox_away",
    )
    .await;
    batcher.record_queued(evidence(2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now callers wait for durability, and hear the failure.
    assert!(batcher.record_queued(evidence(3)).await.is_err());

    // Repaired: the next record commits with the one kept from the
    // failed batch; the refused one is not there.
    steward_integration_tests::execute_sql(
        &database,
        "ALTER TABLE evidence_outbox_away RENAME TO evidence_outbox",
    )
    .await;
    batcher.record_queued(evidence(4)).await.unwrap();
    let ids: Vec<String> = on_backend!(&db, pool, Db => {
        sqlx::query_scalar::<Db, String>("SELECT record_id FROM evidence_outbox ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    let want: Vec<String> = [1, 2, 4]
        .map(|n| records[n].record_id.hyphenated().to_string())
        .into();
    assert_eq!(ids, want);

    let _ = stop.send(());
    writer.await.unwrap();
}
