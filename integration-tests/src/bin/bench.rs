//! `make bench`: the baseline figures every later target is a ratio of,
//! measured on this machine in this run.
//!
//! - mTLS gRPC unary round trips through the full Steward server stack
//!   (listener, caller authorisation, tonic) with a trivial handler, at 1
//!   and 64 concurrent callers, with p50/p99 latency;
//! - ECDSA P-256 and Ed25519 signatures per second on one core (ring);
//! - SQLite durable commits per second (WAL, synchronous=FULL): one row per
//!   transaction, 1,000 single-row INSERTs per transaction, and 100-row
//!   multi-row INSERTs.
//!
//! Results are printed as a table and written to `target/bench/baseline.json`.

#[path = "bench/authority.rs"]
mod authority;
#[path = "bench/broker.rs"]
mod broker;
#[path = "bench/imports.rs"]
mod imports;
#[path = "bench/inventory.rs"]
mod inventory;
#[path = "bench/outbox.rs"]
mod outbox;
#[path = "bench/replicas.rs"]
mod replicas;
#[path = "bench/telemetry.rs"]
mod telemetry;
#[path = "bench/workload.rs"]
mod workload;

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use steward_db::{Database, DatabaseConfig};
use steward_evidence::MerkleTree;
use steward_integration_tests::echo::start_echo;
use steward_integration_tests::evidence::record;
use steward_integration_tests::{TestPki, TestStack, spiffe_id, workspace_root};
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::testing::v1::EchoRequest;
use steward_proto::steward::testing::v1::echo_service_client::EchoServiceClient;

/// How long each throughput figure is measured for.
const WINDOW: Duration = Duration::from_secs(3);

#[derive(Debug, serde::Serialize)]
struct Figure {
    name: String,
    value: f64,
    unit: &'static str,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let mut figures = Vec::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // `steward-bench proofs` runs the 1,000,000-entry proof figures alone.
    if std::env::args().nth(1).as_deref() == Some("telemetry-child") {
        return telemetry::child(&runtime);
    }
    if std::env::args().nth(1).as_deref() == Some("replicas") {
        print_table(&runtime.block_on(replicas::run())?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("telemetry") {
        print_table(&telemetry::run()?);
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("proofs") {
        for f in proofs_at_a_million() {
            println!(
                "{}: p50 {:.1} µs, p99 {:.1} µs",
                f.name,
                f.p50_us.unwrap_or(0.0),
                f.p99_us.unwrap_or(0.0)
            );
        }
        return Ok(());
    }
    // `steward-bench inventory` runs the 1,000,000-identity figures alone.
    if std::env::args().nth(1).as_deref() == Some("inventory") {
        let only: Vec<String> = std::env::args().skip(2).collect();
        let figures = runtime.block_on(inventory::run(&only))?;
        print_inventory(&[], &figures);
        print_table(&figures);
        return Ok(());
    }
    // `steward-bench authority [engine|grpc]` runs the authority figures
    // alone (or one half of them, for profiling).
    if std::env::args().nth(1).as_deref() == Some("authority") {
        let only = std::env::args().nth(2);
        let mut figures = Vec::new();
        if only.as_deref() != Some("grpc") {
            figures.extend(authority::run()?);
        }
        if only.as_deref() != Some("engine") {
            figures.extend(runtime.block_on(authority::grpc())?);
        }
        print_authority(&[], &figures);
        print_table(&figures);
        return Ok(());
    }
    // `steward-bench floors` measures only the baseline floors;
    // `steward-bench broker [x509|jwt|watch|reap]` measures them and the
    // broker's figures (or one of them).
    let first = std::env::args().nth(1);
    if matches!(first.as_deref(), Some("floors" | "broker")) {
        let mut floors = runtime.block_on(async {
            let mut f = grpc_round_trips().await?;
            f.extend(sqlite_commits().await?);
            anyhow::Ok(f)
        })?;
        floors.extend(signatures()?);
        let baseline = floors.len();
        if first.as_deref() == Some("broker") {
            floors.extend(runtime.block_on(broker::run(std::env::args().nth(2).as_deref()))?);
            print_broker(&floors[..baseline], &floors[baseline..]);
        }
        print_table(&floors);
        return Ok(());
    }
    // `steward-bench startcheck` runs audit's start-up check at 1,000,000
    // entries alone.
    if std::env::args().nth(1).as_deref() == Some("startcheck") {
        for f in runtime.block_on(audit_start_check())? {
            println!("{}: {:.0} {}", f.name, f.value, f.unit);
        }
        return Ok(());
    }
    // `steward-bench drain` runs the outbox drain figures alone.
    if std::env::args().nth(1).as_deref() == Some("drain") {
        for f in runtime.block_on(outbox::run())? {
            println!("{}: {:.0} {}", f.name, f.value, f.unit);
        }
        return Ok(());
    }
    // `steward-bench workload` runs the Workload API's first-SVID figure alone.
    if std::env::args().nth(1).as_deref() == Some("workload") {
        let figures = runtime.block_on(workload::run())?;
        print_broker(&[], &figures);
        return Ok(());
    }
    // `steward-bench appends` runs the audit append figure alone (profiling).
    if std::env::args().nth(1).as_deref() == Some("appends") {
        for f in runtime.block_on(audit_appends())? {
            println!(
                "{}: {:.0} {} (p50 {:.0} µs)",
                f.name,
                f.value,
                f.unit,
                f.p50_us.unwrap_or(0.0)
            );
        }
        return Ok(());
    }
    runtime.block_on(async {
        figures.extend(grpc_round_trips().await?);
        figures.extend(sqlite_commits().await?);
        anyhow::Ok(())
    })?;
    figures.extend(signatures()?);
    let baseline = figures.len();
    runtime.block_on(async {
        figures.extend(audit_appends().await?);
        figures.extend(subscriber_lag().await?);
        figures.extend(audit_start_check().await?);
        figures.extend(outbox::run().await?);
        anyhow::Ok(())
    })?;
    figures.extend(proofs_at_a_million());
    let audit_end = figures.len();
    figures.extend(runtime.block_on(inventory::run(&[]))?);
    let inventory_end = figures.len();
    figures.extend(authority::run()?);
    figures.extend(runtime.block_on(authority::grpc())?);
    let authority_end = figures.len();
    figures.extend(runtime.block_on(broker::run(None))?);
    figures.extend(runtime.block_on(workload::run())?);
    figures.extend(telemetry::run()?);
    figures.extend(runtime.block_on(replicas::run())?);
    print_ratios(&figures[..baseline], &figures[baseline..audit_end]);
    print_inventory(&figures[..baseline], &figures[audit_end..inventory_end]);
    print_authority(&figures[..baseline], &figures[inventory_end..authority_end]);
    print_broker(&figures[..baseline], &figures[authority_end..]);
    print_table(&figures);
    let out = workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("baseline.json"),
        serde_json::to_string_pretty(&figures)?,
    )?;
    println!("\nwritten to {}", out.join("baseline.json").display());
    Ok(())
}

async fn grpc_round_trips() -> anyhow::Result<Vec<Figure>> {
    let pki = TestPki::new();
    let caller = spiffe_id("/bench/caller").to_string();
    let server = start_echo(
        &pki,
        &[("/steward.testing.v1.EchoService/Echo", &[caller.as_str()])],
    )
    .await;
    let client = pki.client("caller", &caller);
    let mut figures = Vec::new();
    for callers in [1_usize, 64] {
        // 64 callers share 4 HTTP/2 connections, as a pooled client would.
        let connections = callers.min(4);
        let mut channels = Vec::new();
        for _ in 0..connections {
            channels.push(server.channel(&client).await);
        }
        // Warm up every connection.
        for channel in &channels {
            EchoServiceClient::new(channel.clone())
                .echo(EchoRequest {
                    message: "warm".into(),
                })
                .await?;
        }
        let started = Instant::now();
        let deadline = started + WINDOW;
        let mut tasks = Vec::new();
        for i in 0..callers {
            let mut stub = EchoServiceClient::new(channels[i % connections].clone());
            tasks.push(tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new(3)?;
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    stub.echo(EchoRequest {
                        message: "ping".into(),
                    })
                    .await?;
                    histogram.record(u64::try_from(sent.elapsed().as_nanos())?)?;
                }
                anyhow::Ok(histogram)
            }));
        }
        let mut total = Histogram::<u64>::new(3)?;
        for task in tasks {
            total.add(task.await??)?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        figures.push(Figure {
            name: format!("mTLS gRPC unary, {callers} caller(s)"),
            value: total.len() as f64 / elapsed,
            unit: "rpc/s",
            p50_us: Some(total.value_at_quantile(0.50) as f64 / 1000.0),
            p99_us: Some(total.value_at_quantile(0.99) as f64 / 1000.0),
        });
    }
    server.shutdown().await;
    Ok(figures)
}

fn signatures() -> anyhow::Result<Vec<Figure>> {
    let rng = SystemRandom::new();
    let message = [7_u8; 64];

    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("p-256 keygen failed"))?;
    let ecdsa = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| anyhow::anyhow!("p-256 key rejected"))?;
    let ecdsa_rate = per_second(|| {
        let _ = ecdsa.sign(&rng, &message);
    });

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("ed25519 keygen failed"))?;
    let ed25519 = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("ed25519 key rejected"))?;
    let ed25519_rate = per_second(|| {
        let _ = ed25519.sign(&message);
    });

    Ok(vec![
        Figure {
            name: "ECDSA P-256 signatures, one core".into(),
            value: ecdsa_rate,
            unit: "sig/s",
            p50_us: None,
            p99_us: None,
        },
        Figure {
            name: "Ed25519 signatures, one core".into(),
            value: ed25519_rate,
            unit: "sig/s",
            p50_us: None,
            p99_us: None,
        },
    ])
}

/// Calls `f` repeatedly for [`WINDOW`] on this thread; returns calls/s.
fn per_second(mut f: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut count = 0_u64;
    while started.elapsed() < WINDOW {
        for _ in 0..100 {
            f();
        }
        count += 100;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn sqlite_commits() -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let db = Database::connect(&DatabaseConfig::sqlite(&dir.path().join("bench.db"))).await?;
    let Database::Sqlite(sqlite) = &db else {
        anyhow::bail!("expected sqlite");
    };
    let pool = sqlite.pool();
    sqlx::query::<sqlx::Sqlite>("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        .execute(pool)
        .await?;
    let body = vec![0x5a_u8; 256];
    let mut figures = Vec::new();

    // One row per transaction: every commit waits for fsync.
    let started = Instant::now();
    let mut rows = 0_u64;
    while started.elapsed() < WINDOW {
        let mut tx = pool.begin().await?;
        sqlx::query::<sqlx::Sqlite>("INSERT INTO rows (body) VALUES (?)")
            .bind(&body)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        rows += 1;
    }
    figures.push(Figure {
        name: "SQLite one-row durable transactions".into(),
        value: rows as f64 / started.elapsed().as_secs_f64(),
        unit: "commit/s",
        p50_us: None,
        p99_us: None,
    });

    // 1,000 single-row INSERTs per transaction.
    let started = Instant::now();
    let mut rows = 0_u64;
    while started.elapsed() < WINDOW {
        let mut tx = pool.begin().await?;
        for _ in 0..1000 {
            sqlx::query::<sqlx::Sqlite>("INSERT INTO rows (body) VALUES (?)")
                .bind(&body)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        rows += 1000;
    }
    figures.push(Figure {
        name: "SQLite batched: 1,000 INSERTs per transaction".into(),
        value: rows as f64 / started.elapsed().as_secs_f64(),
        unit: "row/s",
        p50_us: None,
        p99_us: None,
    });

    // 100-row multi-row INSERTs, 10 per transaction.
    let placeholders = vec!["(?)"; 100].join(", ");
    let sql = format!("INSERT INTO rows (body) VALUES {placeholders}");
    let started = Instant::now();
    let mut rows = 0_u64;
    while started.elapsed() < WINDOW {
        let mut tx = pool.begin().await?;
        for _ in 0..10 {
            let mut query = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql.clone()));
            for _ in 0..100 {
                query = query.bind(&body);
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        rows += 1000;
    }
    figures.push(Figure {
        name: "SQLite batched: 100-row multi-row INSERTs".into(),
        value: rows as f64 / started.elapsed().as_secs_f64(),
        unit: "row/s",
        p50_us: None,
        p99_us: None,
    });
    db.close().await;
    Ok(figures)
}

fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<72} {:>12} {:<10} {:>10} {:>10}",
        "figure", "value", "unit", "p50", "p99"
    );
    for f in figures {
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} µs"));
        println!(
            "{:<72} {:>12.1} {:<10} {:>10} {:>10}",
            f.name,
            f.value,
            f.unit,
            us(f.p50_us),
            us(f.p99_us)
        );
    }
}

/// The broker's figures against the targets, with ratios to the
/// signature and gRPC floors.
fn print_broker(baseline: &[Figure], figures: &[Figure]) {
    println!();
    let floor = |prefix: &str| baseline.iter().find(|b| b.name.starts_with(prefix));
    let grpc = floor("mTLS gRPC unary, 64 caller");
    let ecdsa = floor("ECDSA P-256");
    for f in figures {
        let target = if f.name.contains("while reaping") {
            "p99 <= 50 ms while reaping"
        } else if f.name.contains("first X.509-SVID") {
            "p99 <= 50 ms"
        } else if f.name.contains("X.509-SVID") {
            ">= 2,000/s, p99 <= 20 ms"
        } else if f.name.contains("JWT-SVID") {
            ">= 5,000/s"
        } else if f.name.contains("WatchRevocations") {
            "p99 <= 100 ms"
        } else {
            "no target"
        };
        println!(
            "{}: {:.1} {}, p50 {:.0} µs, p99 {:.0} µs (target: {target})",
            f.name,
            f.value,
            f.unit,
            f.p50_us.unwrap_or(f64::NAN),
            f.p99_us.unwrap_or(f64::NAN)
        );
        if f.name.contains("while reaping")
            && let Some(quiet) = figures.iter().find(|q| {
                q.name.contains("X.509-SVID from a CSR") && q.name.contains(" 16 callers")
            })
        {
            println!(
                "  / the same load without reaping: p99 {:.2}×, throughput {:.2}",
                f.p99_us.unwrap_or(0.0) / quiet.p99_us.unwrap_or(f64::NAN),
                f.value / quiet.value
            );
        }
        if f.unit == "issue/s" {
            if let Some(g) = grpc {
                println!(
                    "  / gRPC 64-caller floor: throughput {:.3}, p99 {:.1}×",
                    f.value / g.value,
                    f.p99_us.unwrap_or(0.0) / g.p99_us.unwrap_or(f64::NAN)
                );
            }
            if let Some(e) = ecdsa {
                println!(
                    "  / ECDSA P-256 signing floor (one core): {:.3}",
                    f.value / e.value
                );
            }
        }
    }
}

/// Targets from the authority issue that the engine alone answers.
fn print_authority(baseline: &[Figure], figures: &[Figure]) {
    println!();
    for f in figures
        .iter()
        .filter(|f| f.name.starts_with("authority Authorize"))
    {
        println!(
            "{}: {:.0}/s, p50 {:.0} µs, p99 {:.0} µs (targets: p50 <= 300 µs, p99 <= 1,000 µs, >= 10,000/s)",
            f.name,
            f.value,
            f.p50_us.unwrap_or(f64::NAN),
            f.p99_us.unwrap_or(f64::NAN)
        );
        let floor_name = if f.name.contains(" 1 caller") {
            "mTLS gRPC unary, 1 caller"
        } else {
            "mTLS gRPC unary, 64 caller"
        };
        if let Some(floor) = baseline.iter().find(|b| b.name.starts_with(floor_name)) {
            println!(
                "  / gRPC round-trip floor: throughput {:.2}, p50 {:.1}×",
                f.value / floor.value,
                f.p50_us.unwrap_or(0.0) / floor.p50_us.unwrap_or(f64::NAN)
            );
        }
        if f.name.contains(" 1 caller")
            && let Some(floor) = figures
                .iter()
                .find(|b| b.name.starts_with("inventory WhoAmI over mTLS"))
        {
            println!(
                "  / the same stack's round trip (WhoAmI): p50 {:.2}×, p99 {:.2}×",
                f.p50_us.unwrap_or(0.0) / floor.p50_us.unwrap_or(f64::NAN),
                f.p99_us.unwrap_or(0.0) / floor.p99_us.unwrap_or(f64::NAN)
            );
        }
    }
    let sliced = figures.iter().find(|f| f.name.contains("sliced"));
    let whole = figures.iter().find(|f| f.name.contains("whole set"));
    if let Some(s) = sliced {
        println!(
            "authority in-process decision p50 = {:.1} µs (target <= 20 µs), p99 = {:.1} µs",
            s.value,
            s.p99_us.unwrap_or(f64::NAN)
        );
        if let Some(w) = whole {
            println!(
                "  slicing speed-up over the whole set = {:.0}×",
                w.value / s.value
            );
        }
    }
}

/// Targets from the inventory issue, checked against the figures.
fn print_inventory(baseline: &[Figure], inventory: &[Figure]) {
    let find = |set: &[Figure], prefix: &str| {
        set.iter()
            .find(|f| f.name.starts_with(prefix))
            .map(|f| f.value)
    };
    println!();
    if let Some(p99) = find(inventory, "inventory filtered list at 1M, all filters") {
        println!("inventory filtered list p99 = {p99:.1} ms (target <= 20 ms)");
    }
    let slowest = inventory
        .iter()
        .filter(|f| f.name.starts_with("inventory report at 1M"))
        .map(|f| f.value)
        .fold(0.0, f64::max);
    println!("inventory slowest posture report = {slowest:.0} ms (target <= 1,000 ms)");
    if let Some(s) = find(inventory, "inventory import of 100,000") {
        println!("inventory import of 100,000 rows = {s:.1} s (target <= 10 s)");
    }
    if let Some(w) = find(inventory, "inventory transitions") {
        println!("inventory writes = {w:.0}/s (target >= 5,000/s)");
        if let Some(floor) = find(baseline, "SQLite one-row durable") {
            println!("  / SQLite one-row durable commit floor = {:.2}", w / floor);
        }
        if let Some(floor) = find(baseline, "SQLite batched: 1,000 INSERTs") {
            println!("  / SQLite 1,000-INSERT/tx row floor    = {:.2}", w / floor);
        }
    }
}

/// Targets from the audit issue, checked against the figures.
fn print_ratios(baseline: &[Figure], audit: &[Figure]) {
    let find = |set: &[Figure], prefix: &str| {
        set.iter()
            .find(|f| f.name.starts_with(prefix))
            .map(|f| f.value)
    };
    println!();
    if let (Some(appends), Some(floor)) = (
        find(audit, "audit durable appends"),
        find(baseline, "SQLite batched: 1,000 INSERTs"),
    ) {
        println!(
            "audit appends / SQLite batched-insert floor = {:.2}  (target: >= 20,000 records/s; measured {:.0})",
            appends / floor,
            appends
        );
    }
    if let (Some(appends), Some(floor)) = (
        find(audit, "audit durable appends"),
        find(baseline, "SQLite batched: 100-row"),
    ) {
        println!(
            "audit appends / SQLite multi-row floor     = {:.2}",
            appends / floor
        );
    }
    if let (Some(drain), Some(appends)) = (
        find(audit, "outbox: drain rate"),
        find(audit, "audit durable appends"),
    ) {
        println!(
            "outbox drain / audit appends               = {:.2}  (drain {:.0} records/s)",
            drain / appends,
            drain
        );
    }
    for f in audit
        .iter()
        .filter(|f| f.name.starts_with("audit start-up check") || f.name.starts_with("outbox:"))
    {
        println!("{}: {:.1} {}", f.name, f.value, f.unit);
    }
    for f in audit.iter().filter(|f| f.name.contains("proof")) {
        println!(
            "{}: p99 {:.1} µs (target <= 1,000 µs)",
            f.name,
            f.p99_us.unwrap_or(f64::NAN)
        );
    }
    if let Some(f) = audit
        .iter()
        .find(|f| f.name.starts_with("subscriber delivery lag"))
    {
        println!(
            "{}: p99 {:.1} ms (target <= 50 ms)",
            f.name,
            f.p99_us.unwrap_or(f64::NAN) / 1000.0
        );
    }
}

/// Durable appends through AppendBatch: 4 writers, 1,000 records per RPC.
/// Audit's start-up check (ADR 0015's "queries cannot disagree with the
/// log"): every stored entry's leaf hashed, parsed and compared with its
/// index columns, streamed in pages. Measured as the time a restart takes
/// to bind over 1,000,000 entries, with the floor of a restart over none.
async fn audit_start_check() -> anyhow::Result<Vec<Figure>> {
    const ENTRIES: u64 = 1_000_000;
    const BATCH: u64 = 1000;
    let mut stack = TestStack::audit_only().await;
    // An empty log's restart: what the check adds is measured above it.
    stack.stop("audit").await;
    let started = Instant::now();
    stack.restart_stopped("audit").await;
    let empty = started.elapsed().as_secs_f64();

    let writers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = stack
            .audit_as_service(
                ["inventory", "authority", "credential-broker", "inventory"][w as usize],
            )
            .await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..ENTRIES / writers / BATCH {
                let records = (0..BATCH).map(|n| record(n, "INC-bench")).collect();
                client
                    .append_batch(pb::AppendBatchRequest { records })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    stack.stop("audit").await;
    let started = Instant::now();
    stack.restart_stopped("audit").await;
    let full = started.elapsed().as_secs_f64();
    let checked = (full - empty).max(f64::EPSILON);
    Ok(vec![
        Figure {
            name: "audit start-up check over 1,000,000 entries (restart to bound)".into(),
            value: full,
            unit: "s",
            p50_us: None,
            p99_us: None,
        },
        Figure {
            name: "audit start-up check rate (leaf hash, parse, index columns)".into(),
            value: ENTRIES as f64 / checked,
            unit: "entry/s",
            p50_us: None,
            p99_us: None,
        },
    ])
}

async fn audit_appends() -> anyhow::Result<Vec<Figure>> {
    let stack = TestStack::audit_only().await;
    let writers = 4;
    let per_rpc = 1000u64;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(5);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = stack
            .audit_as_service(["inventory", "authority", "credential-broker", "inventory"][w])
            .await;
        tasks.push(tokio::spawn(async move {
            let mut written = 0u64;
            let mut histogram = Histogram::<u64>::new(3)?;
            while Instant::now() < deadline {
                let records = (0..per_rpc).map(|n| record(n, "INC-bench")).collect();
                let sent = Instant::now();
                let reply = client
                    .append_batch(pb::AppendBatchRequest { records })
                    .await?
                    .into_inner();
                histogram.record(u64::try_from(sent.elapsed().as_micros())?)?;
                written += reply.results.len() as u64;
            }
            anyhow::Ok((written, histogram))
        }));
    }
    let mut total = 0;
    let mut latency = Histogram::<u64>::new(3)?;
    for task in tasks {
        let (written, histogram) = task.await??;
        total += written;
        latency.add(histogram)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(vec![Figure {
        name: "audit durable appends (AppendBatch 1,000 × 4 writers)".into(),
        value: total as f64 / elapsed,
        unit: "record/s",
        p50_us: Some(latency.value_at_quantile(0.5) as f64),
        p99_us: Some(latency.value_at_quantile(0.99) as f64),
    }])
}

/// 50 subscribers while a writer appends 5,000 records/s: the time from the
/// record's creation to its arrival at each subscriber.
async fn subscriber_lag() -> anyhow::Result<Vec<Figure>> {
    let stack = TestStack::audit_only().await;
    let mut tasks = Vec::new();
    let per_tick = 50u64; // every 10 ms: 5,000 records/s
    let ticks = 400u64; // 4 s
    let expected = per_tick * ticks;
    for _connection in 0..10 {
        let mut client = stack.audit_reader().await;
        for _ in 0..5 {
            let mut stream = client
                .subscribe(pb::SubscribeRequest {
                    from_index: 0,
                    filter: None,
                })
                .await?
                .into_inner();
            tasks.push(tokio::spawn(async move {
                let mut lag = Histogram::<u64>::new(3)?;
                let mut seen = 0u64;
                while seen < expected {
                    let Some(message) = stream.message().await? else {
                        anyhow::bail!("stream ended")
                    };
                    anyhow::ensure!(message.fell_behind.is_none(), "a subscriber fell behind");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)?
                        .as_nanos();
                    for entry in &message.entries {
                        let t = entry
                            .record
                            .as_ref()
                            .and_then(|r| r.time.as_ref())
                            .map_or(0, |t| t.seconds as u128 * 1_000_000_000 + t.nanos as u128);
                        lag.record(u64::try_from(now.saturating_sub(t) / 1000)?)?;
                    }
                    seen += message.entries.len() as u64;
                }
                anyhow::Ok(lag)
            }));
        }
    }
    let mut writer = stack.audit_as_service("inventory").await;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for tick in 0..ticks {
        ticker.tick().await;
        let records = (0..per_tick)
            .map(|n| record(tick * per_tick + n, "INC-lag"))
            .collect();
        writer
            .append_batch(pb::AppendBatchRequest { records })
            .await?;
    }
    let mut lag = Histogram::<u64>::new(3)?;
    for task in tasks {
        lag.add(task.await??)?;
    }
    Ok(vec![Figure {
        name: "subscriber delivery lag, 50 subscribers at 5,000 appends/s".into(),
        value: lag.len() as f64,
        unit: "deliveries",
        p50_us: Some(lag.value_at_quantile(0.5) as f64),
        p99_us: Some(lag.value_at_quantile(0.99) as f64),
    }])
}

/// The server-side cost of proofs in a 1,000,000-entry tree: the same
/// `MerkleTree` the audit service answers from.
fn proofs_at_a_million() -> Vec<Figure> {
    let n = 1_000_000u64;
    let mut tree = MerkleTree::new();
    for i in 0..n {
        tree.push(steward_evidence::leaf_hash(&i.to_be_bytes()));
    }
    let mut inclusion = Histogram::<u64>::new(3).unwrap();
    let mut consistency = Histogram::<u64>::new(3).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..10_000 {
        let size = n - next() % 1000;
        let index = next() % size;
        let t = Instant::now();
        let proof = std::hint::black_box(
            tree.inclusion_proof(std::hint::black_box(index), std::hint::black_box(size)),
        );
        let head = std::hint::black_box(tree.root(size));
        inclusion.record(t.elapsed().as_nanos() as u64).unwrap();
        assert!(proof.is_ok() && head.is_ok());
        let first = 1 + next() % (size - 1);
        let t = Instant::now();
        let proof = std::hint::black_box(
            tree.consistency_proof(std::hint::black_box(first), std::hint::black_box(size)),
        );
        consistency.record(t.elapsed().as_nanos() as u64).unwrap();
        assert!(proof.is_ok());
    }
    let figure = |name: &str, h: &Histogram<u64>| Figure {
        name: name.into(),
        value: 1e9 / h.mean(),
        unit: "proof/s",
        p50_us: Some(h.value_at_quantile(0.5) as f64 / 1000.0),
        p99_us: Some(h.value_at_quantile(0.99) as f64 / 1000.0),
    };
    vec![
        figure(
            "inclusion proof + tree head at 1,000,000 entries",
            &inclusion,
        ),
        figure("consistency proof at 1,000,000 entries", &consistency),
    ]
}
