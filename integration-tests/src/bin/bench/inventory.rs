//! Inventory at scale: 1,000,000 identities and 5,000,000 entitlements in
//! SQLite, measured through the public gRPC API over mTLS.
//!
//! The data set is seeded once with direct multi-row INSERTs (the same
//! schema and derived report keys the service maintains) and cached in
//! `target/bench/`; each run works on a fresh copy of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use steward_db::{Database, DatabaseConfig};
use steward_integration_tests::inventory::Client;
use steward_integration_tests::{
    RunningService, TestStack, build_service, service_config, spiffe_id, workspace_root,
};
use steward_proto::steward::inventory::v1 as pb;

use super::Figure;

pub const IDENTITIES: u64 = 1_000_000;
pub const ENTITLEMENTS_PER_IDENTITY: u64 = 5;
const DAY: i64 = 86_400 * 1_000_000_000;
/// Bump when the seed or the schema changes.
const SEED_VERSION: u32 = 2;

/// SplitMix64: a deterministic data set without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A time `lo..hi` days from `now`.
    fn days(&mut self, now: i64, lo: i64, hi: i64) -> i64 {
        now + (lo * DAY)
            + i64::try_from(self.below(u64::try_from((hi - lo) * DAY).unwrap_or(1))).unwrap_or(0)
    }
}

const KINDS: &[&str] = &[
    "service_account",
    "api_key",
    "oauth_app",
    "certificate",
    "workload_identity",
    "ai_agent",
    "connector",
    "webhook_secret",
    "ssh_key",
    "other",
];
const SYSTEMS: &[&str] = &["aws", "github", "gcp", "okta", "slack"];
const PERMISSIONS: &[&str] = &[
    "read",
    "write",
    "admin",
    "deploy",
    "list",
    "delete",
    "invoke",
    "publish",
    "subscribe",
    "manage",
];

fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(0)
}

/// The cached seed, built if missing.
async fn seed() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("inventory-seed-v{SEED_VERSION}-{IDENTITIES}.db"));
    if path.exists() {
        return Ok(path);
    }
    let building = dir.join("inventory-seed.building.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", building.display()));
    }
    let started = Instant::now();
    eprintln!(
        "seeding {IDENTITIES} identities and {} entitlements (cached for later runs)…",
        IDENTITIES * ENTITLEMENTS_PER_IDENTITY
    );
    let db = Database::connect(&DatabaseConfig::sqlite(&building)).await?;
    db.migrate(&steward_inventory::SPEC.migrations).await?;
    let Database::Sqlite(sqlite) = &db else {
        anyhow::bail!("expected sqlite")
    };
    let pool = sqlite.pool();
    sqlx::query::<sqlx::Sqlite>("PRAGMA synchronous = OFF")
        .execute(pool)
        .await?;
    let now = now_ns();
    let mut rng = Rng(42);
    let chunk = 200usize;
    let per_tx = 20_000u64;
    let mut n = 0u64;
    while n < IDENTITIES {
        let mut tx = pool.begin().await?;
        let end = (n + per_tx).min(IDENTITIES);
        let mut rows = Vec::with_capacity(per_tx as usize);
        let mut entitlements = Vec::with_capacity((per_tx * ENTITLEMENTS_PER_IDENTITY) as usize);
        let mut labels = Vec::with_capacity(per_tx as usize);
        let mut consumers = Vec::new();
        for i in n..end {
            let id = uuid::Uuid::from_u64_pair(
                0x0190_0000_0000_7000 | (i >> 48),
                0x8000_0000_0000_0000 | i,
            )
            .hyphenated()
            .to_string();
            let unowned = rng.below(100) == 0;
            let state = match rng.below(100) {
                0..=89 => "active",
                90..=93 => "watchlisted",
                94..=95 => "restricted",
                96..=97 => "suspended",
                98 => "revoked",
                _ => "decommissioned",
            };
            let person = format!("person-{}", rng.below(2000));
            let team = format!("team-{}", rng.below(200));
            let created = rng.days(now, -900, -1);
            let expires = if rng.below(10) < 3 {
                None
            } else {
                Some(rng.days(now, -60, 700))
            };
            let used = if rng.below(20) == 0 {
                None
            } else {
                Some(rng.days(now, -400, 0))
            };
            let rotated = Some(rng.days(now, -800, 0));
            let consumer_count = if rng.below(100) < 3 {
                2 + rng.below(2)
            } else {
                1
            };
            let mut idle = i64::MAX;
            for j in 0..ENTITLEMENTS_PER_IDENTITY {
                let granted = rng.days(now, -800, -1);
                let last = match rng.below(10) {
                    0..=4 => Some(rng.days(now, -30, 0)),
                    5..=7 => Some(rng.days(now, -400, -31)),
                    _ => None,
                };
                idle = idle.min(last.unwrap_or(granted));
                entitlements.push((
                    id.clone(),
                    SYSTEMS[(j as usize) % SYSTEMS.len()],
                    PERMISSIONS[rng.below(PERMISSIONS.len() as u64) as usize],
                    format!("res-{j}-{}", rng.below(1000)),
                    granted,
                    last,
                ));
            }
            labels.push((id.clone(), format!("cc-{}", rng.below(500))));
            if consumer_count > 1 {
                for c in 0..consumer_count {
                    consumers.push((
                        id.clone(),
                        format!("workflow-{}", rng.below(300) + c * 1000),
                    ));
                }
            }
            let orphaned = unowned || person.ends_with("-7");
            rows.push((
                id,
                KINDS[(i % KINDS.len() as u64) as usize],
                unowned,
                orphaned,
                state,
                person,
                team,
                created,
                expires,
                used,
                rotated,
                consumer_count,
                idle,
            ));
        }
        for c in rows.chunks(chunk) {
            let sql = format!(
                "INSERT INTO identities (id, kind, display_name, source_system, external_id, environment, business_service, workload, classification, purpose, business_owner, business_owner_kind, business_owner_contact, technical_owner, technical_owner_kind, technical_owner_contact, unowned, orphaned, state, spiffe_id, labels, created_at_ns, updated_at_ns, state_changed_at_ns, expires_at_ns, last_rotated_at_ns, last_used_at_ns, active_at_ns, rotated_at_ns, entitlement_idle_since_ns, consumer_count, signal_score, signal_summary, version) VALUES {}",
                vec![format!("({})", vec!["?"; 34].join(", ")); c.len()].join(", ")
            );
            let mut q = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql));
            for (
                id,
                kind,
                unowned,
                orphaned,
                state,
                person,
                team,
                created,
                expires,
                used,
                rotated,
                consumers,
                idle,
            ) in c
            {
                let num = id.rsplit('-').next().unwrap_or("0").to_owned();
                let env = ["production", "production", "production", "staging", "dev"]
                    [(created.unsigned_abs() % 5) as usize];
                let service = format!("service-{}", created.unsigned_abs() % 200);
                q = q
                    .bind(id.clone())
                    .bind(*kind)
                    .bind(format!("{kind} {num}"))
                    .bind("seed")
                    .bind(format!("ext-{num}"))
                    .bind(env)
                    .bind(service)
                    .bind(format!("workload-{}", created.unsigned_abs() % 1000))
                    .bind("machine_to_machine")
                    .bind(if *unowned {
                        ""
                    } else {
                        "seeded for the benchmark"
                    })
                    .bind(if *unowned {
                        String::new()
                    } else {
                        team.clone()
                    })
                    .bind(if *unowned { "" } else { "team" })
                    .bind(if *unowned {
                        String::new()
                    } else {
                        format!("#{team}")
                    })
                    .bind(if *unowned {
                        String::new()
                    } else {
                        person.clone()
                    })
                    .bind(if *unowned { "" } else { "person" })
                    .bind(if *unowned {
                        String::new()
                    } else {
                        format!("{person}@example.test")
                    })
                    .bind(i64::from(*unowned))
                    .bind(i64::from(*orphaned))
                    .bind(*state)
                    .bind("")
                    .bind("{}")
                    .bind(*created)
                    .bind(*created)
                    .bind(*created)
                    .bind(*expires)
                    .bind(*rotated)
                    .bind(*used)
                    .bind(used.unwrap_or(*created))
                    .bind(rotated.unwrap_or(*created))
                    .bind(*idle)
                    .bind(i64::try_from(*consumers).unwrap_or(1))
                    .bind(0_i64)
                    .bind("")
                    .bind(1_i64);
            }
            q.execute(&mut *tx).await?;
        }
        for c in entitlements.chunks(500) {
            let sql = format!(
                "INSERT OR IGNORE INTO entitlements (identity_id, system, permission, resource, granted, granted_at_ns, last_used_at_ns, use_count) VALUES {}",
                vec!["(?, ?, ?, ?, 1, ?, ?, 1)"; c.len()].join(", ")
            );
            let mut q = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql));
            for (id, system, permission, resource, granted, last) in c {
                q = q
                    .bind(id.clone())
                    .bind(*system)
                    .bind(*permission)
                    .bind(resource.clone())
                    .bind(*granted)
                    .bind(*last);
            }
            q.execute(&mut *tx).await?;
        }
        for c in labels.chunks(500) {
            let sql = format!(
                "INSERT INTO identity_labels (identity_id, key, value) VALUES {}",
                vec!["(?, 'cost-center', ?)"; c.len()].join(", ")
            );
            let mut q = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql));
            for (id, value) in c {
                q = q.bind(id.clone()).bind(value.clone());
            }
            q.execute(&mut *tx).await?;
        }
        for c in consumers.chunks(500) {
            let sql = format!(
                "INSERT OR IGNORE INTO identity_consumers (identity_id, consumer, first_seen_ns, last_seen_ns, uses) VALUES {}",
                vec!["(?, ?, 0, 0, 1)"; c.len()].join(", ")
            );
            let mut q = sqlx::query::<sqlx::Sqlite>(sqlx::AssertSqlSafe(sql));
            for (id, consumer) in c {
                q = q.bind(id.clone()).bind(consumer.clone());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        n = end;
        if n.is_multiple_of(200_000) {
            eprintln!(
                "  {n} identities ({:.0} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    sqlx::query::<sqlx::Sqlite>("INSERT INTO owners (name, departed, reason, updated_at_ns) VALUES ('person-7', 1, 'left', 0)").execute(pool).await?;
    sqlx::query::<sqlx::Sqlite>("ANALYZE").execute(pool).await?;
    sqlx::query::<sqlx::Sqlite>("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(pool)
        .await?;
    db.close().await;
    std::fs::rename(&building, &path)?;
    eprintln!("seeded in {:.0} s", started.elapsed().as_secs_f64());
    Ok(path)
}

fn figure(
    name: impl Into<String>,
    value: f64,
    unit: &'static str,
    h: Option<&Histogram<u64>>,
) -> Figure {
    Figure {
        name: name.into(),
        value,
        unit,
        p50_us: h.map(|h| h.value_at_quantile(0.5) as f64),
        p99_us: h.map(|h| h.value_at_quantile(0.99) as f64),
    }
}

/// Inventory on a copy of the seed, with audit and the rest of the stack.
async fn start(seed: &Path, dir: &Path) -> anyhow::Result<(TestStack, RunningService)> {
    let db = dir.join("inventory.db");
    std::fs::copy(seed, &db)?;
    // Write the copy back now, so its 1.5 GB of dirty pages are not being
    // flushed while the measured commits wait for fsync.
    std::fs::File::open(&db)?.sync_all()?;
    let stack = TestStack::start().await;
    let svid = stack
        .pki
        .svid("inventory-1m", &spiffe_id("/service/inventory").to_string());
    let mut config = service_config("inventory", svid, DatabaseConfig::sqlite(&db));
    config.peers = stack.configs["inventory"].peers.clone();
    let app = build_service("inventory", config)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let inventory = RunningService::start("inventory", app);
    // Inventory's gate has authority decide each transition, and authority
    // reads the identity's facts from inventory: from this one.
    let mut stack = stack;
    let address = inventory.address();
    stack
        .restart_authority(|settings| settings.service.peers.inventory = address)
        .await;
    Ok((stack, inventory))
}

/// Runs every inventory figure, or only those named in `only`
/// (`lists`, `reports`, `writes`, `import`).
pub async fn run(only: &[String]) -> anyhow::Result<Vec<Figure>> {
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let seed = seed().await?;
    let dir = tempfile::tempdir_in(workspace_root().join("target/bench"))?;
    let (stack, inventory) = start(&seed, dir.path()).await?;
    let channel = inventory.channel(&stack.operator).await;
    let client: Client = steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let mut figures = Vec::new();
    if wanted("lists") {
        figures.extend(filtered_lists(client.clone()).await?);
    }
    if wanted("reports") {
        figures.extend(reports(client.clone()).await?);
    }
    if wanted("writes") {
        figures.extend(transitions(client.clone()).await?);
    }
    if wanted("import") {
        figures.extend(super::imports::run(client.clone(), stack.audit_reader().await).await?);
    }
    inventory.shutdown().await;
    drop(stack);
    Ok(figures)
}

async fn filtered_lists(mut client: Client) -> anyhow::Result<Vec<Figure>> {
    use pb::IdentityFilter as F;
    let filters: Vec<(&str, F)> = vec![
        (
            "kind",
            F {
                kinds: vec![pb::IdentityKind::ApiKey as i32],
                ..Default::default()
            },
        ),
        (
            "state",
            F {
                states: vec![pb::LifecycleState::Watchlisted as i32],
                ..Default::default()
            },
        ),
        (
            "owner",
            F {
                owner: "person-123".into(),
                ..Default::default()
            },
        ),
        (
            "label",
            F {
                label: "cost-center=cc-42".into(),
                ..Default::default()
            },
        ),
        (
            "service + environment",
            F {
                business_service: "service-18".into(),
                environment: "staging".into(),
                ..Default::default()
            },
        ),
        (
            "kind + state + environment",
            F {
                kinds: vec![pb::IdentityKind::Connector as i32],
                states: vec![pb::LifecycleState::Active as i32],
                environment: "production".into(),
                ..Default::default()
            },
        ),
    ];
    let mut all = Histogram::<u64>::new(3)?;
    let mut figures = Vec::new();
    for (name, filter) in &filters {
        let mut h = Histogram::<u64>::new(3)?;
        for round in 0..60 {
            let mut f = filter.clone();
            if name == &"owner" {
                f.owner = format!("person-{}", round * 31 % 2000);
            }
            if name == &"label" {
                f.label = format!("cost-center=cc-{}", round * 7 % 500);
            }
            let started = Instant::now();
            let page = client
                .list_identities(pb::ListIdentitiesRequest {
                    filter: Some(f),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            let us = u64::try_from(started.elapsed().as_micros())?;
            h.record(us)?;
            all.record(us)?;
            anyhow::ensure!(!page.identities.is_empty(), "filter {name} found nothing");
        }
        figures.push(figure(
            format!("inventory list at 1M, filter: {name}"),
            h.value_at_quantile(0.99) as f64 / 1000.0,
            "ms p99",
            Some(&h),
        ));
    }
    figures.push(figure(
        "inventory filtered list at 1M, all filters",
        all.value_at_quantile(0.99) as f64 / 1000.0,
        "ms p99",
        Some(&all),
    ));
    // Substring search has no index: it scans until a page is found.
    let mut h = Histogram::<u64>::new(3)?;
    for round in 0..10 {
        let started = Instant::now();
        client
            .list_identities(pb::ListIdentitiesRequest {
                filter: Some(F {
                    text: format!("api_key {}", 1000 + round),
                    ..Default::default()
                }),
                page_size: 100,
                page_token: String::new(),
            })
            .await?;
        h.record(u64::try_from(started.elapsed().as_micros())?)?;
    }
    figures.push(figure(
        "inventory list at 1M, text substring (unindexed)",
        h.value_at_quantile(0.99) as f64 / 1000.0,
        "ms p99",
        Some(&h),
    ));
    Ok(figures)
}

async fn reports(mut client: Client) -> anyhow::Result<Vec<Figure>> {
    use pb::PostureReport as R;
    let mut figures = Vec::new();
    for (name, report) in [
        ("stale", R::Stale),
        ("orphaned", R::Orphaned),
        ("over-privileged", R::OverPrivileged),
        ("expiring", R::Expiring),
        ("expired but active", R::ExpiredButActive),
        ("shared", R::Shared),
        ("no expiry", R::NoExpiry),
        ("long-lived secret", R::LongLivedSecret),
    ] {
        let mut h = Histogram::<u64>::new(3)?;
        let mut total = 0;
        for _ in 0..5 {
            let started = Instant::now();
            let page = client
                .get_posture_report(pb::GetPostureReportRequest {
                    report: report as i32,
                    page_size: 100,
                    ..Default::default()
                })
                .await?
                .into_inner();
            h.record(u64::try_from(started.elapsed().as_micros())?)?;
            total = page.total;
        }
        figures.push(figure(
            format!("inventory report at 1M: {name} ({total} findings, first page + total)"),
            h.max() as f64 / 1000.0,
            "ms max",
            Some(&h),
        ));
    }
    Ok(figures)
}

/// Lifecycle writes from 64 callers: watchlist and back, on distinct
/// identities, each a transition plus its outbox record.
async fn transitions(client: Client) -> anyhow::Result<Vec<Figure>> {
    let callers = 64u64;
    let window = Duration::from_secs(5);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut done = 0u64;
            let mut n = c;
            while started.elapsed() < window {
                // Identities i ≡ c (mod 64) among the first 640,000, all
                // seeded active or watchlisted-or-other; skip refusals.
                let i = n % 640_000;
                n += callers;
                let id =
                    uuid::Uuid::from_u64_pair(0x0190_0000_0000_7000, 0x8000_0000_0000_0000 | i)
                        .hyphenated()
                        .to_string();
                for target in [pb::LifecycleState::Restricted, pb::LifecycleState::Active] {
                    let sent = Instant::now();
                    let result = client
                        .transition_state(pb::TransitionStateRequest {
                            id: id.clone(),
                            target_state: target as i32,
                            reason: "benchmark".into(),
                            expected_version: 0,
                            context: None,
                        })
                        .await;
                    h.record(u64::try_from(sent.elapsed().as_micros())?)?;
                    match result {
                        Ok(_) => done += 1,
                        Err(s) if s.code() == tonic::Code::FailedPrecondition => {}
                        Err(s) => anyhow::bail!("transition failed: {s}"),
                    }
                }
            }
            anyhow::Ok((done, h))
        }));
    }
    let mut done = 0;
    let mut h = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (d, th) = t.await??;
        done += d;
        h.add(th)?;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    Ok(vec![figure(
        "inventory transitions + outbox at 1M (64 callers)",
        rate,
        "write/s",
        Some(&h),
    )])
}
