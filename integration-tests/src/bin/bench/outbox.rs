//! The evidence outbox after an outage: a service holds a 10,000-record
//! backlog while audit is down; audit comes back. How long until the
//! outbox is empty, and how fast the forwarder drains it.

use std::time::{Duration, Instant};

use steward_db::{Database, MigrationFile, MigrationSet};
use steward_evidence::wire::record_from_proto;
use steward_identity::ServerAuthorizer;
use steward_integration_tests::evidence::record;
use steward_integration_tests::{TestStack, spiffe_id};
use steward_outbox::{Forwarder, ForwarderOptions, OutboxTransaction as _};

use crate::Figure;

const BACKLOG: u64 = 10_000;
/// How long audit stays away while the forwarder keeps trying.
const OUTAGE: Duration = Duration::from_secs(3);

const OUTBOX_ONLY: &[MigrationFile] = &[MigrationFile {
    version: 2,
    description: "outbox",
    sql: steward_outbox::SQLITE_SQL,
}];
const OUTBOX_ONLY_PG: &[MigrationFile] = &[MigrationFile {
    version: 2,
    description: "outbox",
    sql: steward_outbox::POSTGRES_SQL,
}];

pub async fn run() -> anyhow::Result<Vec<Figure>> {
    let mut stack = TestStack::audit_only().await;
    let audit_addr = stack.service("audit").address();
    stack.stop("audit").await;
    let config = stack
        .backend
        .fresh_database(stack.pki.path(), "drain")
        .await;
    let db = Database::connect(&config).await?;
    db.migrate(&MigrationSet {
        service: "inventory",
        sqlite: OUTBOX_ONLY,
        postgres: OUTBOX_ONLY_PG,
    })
    .await?;
    // The backlog, queued as services queue it: inside transactions.
    for chunk in 0..BACKLOG / 1000 {
        let records = (0..1000)
            .map(|n| record_from_proto(record(chunk * 1000 + n, "INC-drain")))
            .collect::<Result<Vec<_>, _>>()?;
        steward_db::on_backend!(&db, pool, Db => {
            let mut tx = pool.begin().await?;
            tx.enqueue_all(&records).await?;
            tx.commit().await?;
        });
    }
    let source = stack.pki.client(
        "inventory-drain",
        &spiffe_id("/service/inventory").to_string(),
    );
    let channel = steward_identity::connector::connect_lazy(
        source,
        &audit_addr,
        ServerAuthorizer::Exact(spiffe_id("/service/audit")),
    )?;
    let forwarder = Forwarder::new(
        db.clone(),
        steward_telemetry::Traced::new(channel),
        ForwarderOptions::default(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(forwarder.run(async {
        let _ = stopped.await;
    }));
    // Audit away: the forwarder retries with backoff, as in production.
    tokio::time::sleep(OUTAGE).await;
    stack.restart_on("audit", audit_addr.parse()?).await;
    let recovered = Instant::now();
    let mut first_delivery = None;
    loop {
        let pending = Forwarder::stats(&db).await?.pending;
        if first_delivery.is_none() && pending < BACKLOG as i64 {
            first_delivery = Some(Instant::now());
        }
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            recovered.elapsed() < Duration::from_secs(120),
            "the outbox did not drain: {pending} left"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let empty = recovered.elapsed();
    let draining = first_delivery
        .map_or(empty, |at| at.elapsed())
        .as_secs_f64()
        .max(f64::EPSILON);
    let _ = stop.send(());
    task.await?;
    Ok(vec![
        Figure {
            name: format!(
                "outbox: recovery to empty after {} s away, {BACKLOG}-record backlog",
                OUTAGE.as_secs()
            ),
            value: empty.as_secs_f64() * 1000.0,
            unit: "ms",
            p50_us: None,
            p99_us: None,
        },
        Figure {
            name: "outbox: drain rate once audit answers".into(),
            value: BACKLOG as f64 / draining,
            unit: "record/s",
            p50_us: None,
            p99_us: None,
        },
    ])
}
