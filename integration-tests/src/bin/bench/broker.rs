//! Credential-broker figures, end to end over mTLS with all four services
//! in this process: each issuance is authority's decision, the signature,
//! the lease and its evidence committed, and the evidence shipped to audit.
//!
//! - X.509-SVID and JWT-SVID issuance at 64 callers over four connections
//!   (three rounds each; the median round is reported);
//! - how long a revocation takes to reach 100 `WatchRevocations` streams;
//! - issuance while the reaper ends 100,000 expired leases.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use steward_db::on_backend;
use steward_integration_tests::TestStack;
use steward_integration_tests::broker::{BROKER_POLICIES, Client, SOAR, csr, task};
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
use tokio_stream::StreamExt;

use super::Figure;

const IDENTITIES: usize = 200;
/// Concurrent callers for the throughput figures, and the lighter load
/// at which latency is also reported (and reaping is measured).
const CALLERS: usize = 64;
const LIGHT: usize = 16;
const WATCHERS: usize = 100;
const REVOCATIONS: usize = 200;
const EXPIRED: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Credential {
    X509,
    Jwt,
}

struct Setup {
    stack: TestStack,
    identities: Vec<String>,
    csrs: Arc<HashMap<String, Vec<u8>>>,
    clients: Vec<Client>,
}

async fn setup() -> anyhow::Result<Setup> {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let mut identities = Vec::new();
    let mut csrs = HashMap::new();
    for i in 0..IDENTITIES {
        let identity = stack
            .workload_identity(&format!("bench-{i}"), "production")
            .await;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        csrs.insert(
            identity.id.clone(),
            csr(&key, &[&identity.spiffe_id], false),
        );
        identities.push(identity.id);
    }
    let source = stack.pki.client(
        "soar-bench",
        &steward_integration_tests::spiffe_id(SOAR).to_string(),
    );
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(CredentialBrokerClient::new(
            stack.service("credential-broker").channel(&source).await,
        ));
    }
    Ok(Setup {
        stack,
        identities,
        csrs: Arc::new(csrs),
        clients,
    })
}

async fn issue(
    client: &mut Client,
    kind: Credential,
    identity: &str,
    csrs: &HashMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    match kind {
        Credential::X509 => {
            client
                .issue_x509_svid(pb::IssueX509SvidRequest {
                    identity_id: identity.to_owned(),
                    csr: csrs[identity].clone(),
                    ttl_seconds: 0,
                    task: task("INC-BENCH"),
                })
                .await?;
        }
        Credential::Jwt => {
            client
                .issue_jwt_svid(pb::IssueJwtSvidRequest {
                    identity_id: identity.to_owned(),
                    audience: vec!["bench".into()],
                    ttl_seconds: 0,
                    task: task("INC-BENCH"),
                })
                .await?;
        }
    }
    Ok(())
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> anyhow::Result<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let duration = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(duration(usage.user_time()) + duration(usage.system_time()))
}

/// One round's outcome.
struct Round {
    /// Issuances per second.
    rate: f64,
    /// The process's CPU time (every service and the callers) per issuance.
    cpu_per_issue: Duration,
    latencies: Histogram<u64>,
}

/// One round: `callers` callers issuing for `window`.
async fn round(
    setup: &Setup,
    kind: Credential,
    window: Duration,
    callers: usize,
) -> anyhow::Result<Round> {
    let cpu_before = cpu_time()?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = setup.clients[c % setup.clients.len()].clone();
        let identities = setup.identities.clone();
        let csrs = setup.csrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut n = 0usize;
            while started.elapsed() < window {
                let identity = &identities[(n * callers + c) % identities.len()];
                let sent = Instant::now();
                issue(&mut client, kind, identity, &csrs).await?;
                h.record(u64::try_from(sent.elapsed().as_micros())?)?;
                n += 1;
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut total = 0;
    let mut h = Histogram::<u64>::new(3)?;
    for t in tasks {
        let (n, th) = t.await??;
        total += n;
        h.add(th)?;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_time()?.saturating_sub(cpu_before);
    Ok(Round {
        rate: total as f64 / elapsed.as_secs_f64(),
        cpu_per_issue: cpu / u32::try_from(total.max(1)).unwrap_or(u32::MAX),
        latencies: h,
    })
}

/// Three rounds at `callers`; the median by throughput.
async fn issuance(
    setup: &Setup,
    kind: Credential,
    name: &str,
    callers: usize,
) -> anyhow::Result<Figure> {
    // Warm up: authority's facts cache, connections, the writer.
    round(setup, kind, Duration::from_millis(700), callers).await?;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(round(setup, kind, Duration::from_secs(3), callers).await?);
    }
    rounds.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let all: Vec<String> = rounds.iter().map(|r| format!("{:.0}", r.rate)).collect();
    let median = &rounds[1];
    let h = &median.latencies;
    Ok(Figure {
        name: format!(
            "broker {name}, {callers} callers (median of 3 rounds: {}/s; {} µs CPU per issuance)",
            all.join(" / "),
            median.cpu_per_issue.as_micros()
        ),
        value: median.rate,
        unit: "issue/s",
        p50_us: Some(h.value_at_quantile(0.5) as f64),
        p99_us: Some(h.value_at_quantile(0.99) as f64),
    })
}

/// Revokes API tokens one at a time and times each revocation from the
/// call to its arrival on every one of `WATCHERS` streams.
async fn revocation_visibility(setup: &Setup) -> anyhow::Result<Figure> {
    let mut client = setup.clients[0].clone();
    let mut leases = Vec::new();
    for i in 0..REVOCATIONS {
        let issued = client
            .issue_api_token(pb::IssueApiTokenRequest {
                identity_id: setup.identities[i % setup.identities.len()].clone(),
                scopes: vec!["bench".into()],
                ttl_seconds: 0,
                task: task("INC-WATCH"),
            })
            .await?
            .into_inner();
        leases.push(issued.lease.map(|l| l.lease_id).unwrap_or_default());
    }
    let watcher = setup
        .stack
        .pki
        .client("watcher-bench", "spiffe://steward.test/workload/watcher");
    let channel = setup
        .stack
        .service("credential-broker")
        .channel(&watcher)
        .await;
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..WATCHERS {
        let mut client = CredentialBrokerClient::new(channel.clone());
        let mut stream = client
            .watch_revocations(pb::WatchRevocationsRequest {
                after_sequence: None,
            })
            .await?
            .into_inner();
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3)?;
            let mut seen = 0;
            while seen < REVOCATIONS {
                let Some(event) = stream.next().await else {
                    anyhow::bail!("the stream ended");
                };
                let event = event?;
                let at = sent
                    .lock()
                    .ok()
                    .and_then(|s| s.get(&event.lease_id).copied());
                if let Some(at) = at {
                    h.record(u64::try_from(at.elapsed().as_micros())?)?;
                    seen += 1;
                }
            }
            anyhow::Ok(h)
        }));
    }
    for lease_id in &leases {
        if let Ok(mut s) = sent.lock() {
            s.insert(lease_id.clone(), Instant::now());
        }
        client
            .revoke_lease(pb::RevokeLeaseRequest {
                lease_id: lease_id.clone(),
                reason: "bench".into(),
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut h = Histogram::<u64>::new(3)?;
    for t in tasks {
        h.add(tokio::time::timeout(Duration::from_secs(60), t).await???)?;
    }
    Ok(Figure {
        name: format!(
            "broker revocation seen on {WATCHERS} WatchRevocations streams ({REVOCATIONS} revocations, from the RevokeLease call)"
        ),
        value: h.value_at_quantile(0.99) as f64 / 1000.0,
        unit: "ms p99",
        p50_us: Some(h.value_at_quantile(0.5) as f64),
        p99_us: Some(h.value_at_quantile(0.99) as f64),
    })
}

fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// Seeds `EXPIRED` already-expired leases straight into the broker's
/// database (stopped), restarts it, and issues X.509-SVIDs while the
/// reaper ends them all.
async fn reaping(mut setup: Setup) -> anyhow::Result<Vec<Figure>> {
    let config = setup.stack.configs["credential-broker"].clone();
    setup.stack.stop("credential-broker").await;
    let db = steward_db::Database::connect(&config.database).await?;
    let now = now_ns();
    let identity = setup.identities[0].clone();
    on_backend!(&db, pool, Db => {
        for chunk in 0..EXPIRED / 500 {
            let mut sql = String::from(
                "INSERT INTO leases (lease_id, identity_id, kind, holder, spiffe_id, incident_ref, \
                 window_start_ns, window_end_ns, issued_at_ns, expires_at_ns, max_expires_at_ns, \
                 ttl_seconds, renewable, state, credential_ref, token_hash, audience, scopes, \
                 decision_id, grant_id) VALUES ",
            );
            for i in 0..500 {
                let n = chunk * 500 + i;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "('{}', '{identity}', 3, 'spiffe://steward.test/automation/soar', '', 'INC-OLD', \
                     {s}, {e}, {s}, {x}, {x}, 60, 1, 1, 'stw_{n:08}', NULL, '', '', '', '')",
                    uuid::Uuid::now_v7(),
                    s = now - 120_000_000_000,
                    e = i64::MAX,
                    x = now - 60_000_000_000,
                ));
            }
            sqlx::query::<Db>(sqlx::AssertSqlSafe(sql)).execute(pool).await?;
        }
    });
    setup.stack.restart_stopped("credential-broker").await;
    let source = setup.stack.pki.client(
        "soar-bench-2",
        &steward_integration_tests::spiffe_id(SOAR).to_string(),
    );
    setup.clients.clear();
    for _ in 0..4 {
        setup.clients.push(CredentialBrokerClient::new(
            setup
                .stack
                .service("credential-broker")
                .channel(&source)
                .await,
        ));
    }
    let started = Instant::now();
    let mut h = Histogram::<u64>::new(3)?;
    let mut issued = 0.0;
    let mut reaped_in = None;
    while reaped_in.is_none() && started.elapsed() < Duration::from_secs(300) {
        let r = round(&setup, Credential::X509, Duration::from_secs(1), LIGHT).await?;
        issued += r.rate;
        h.add(r.latencies)?;
        let left: i64 = on_backend!(&db, pool, Db => {
            sqlx::query_scalar::<Db, i64>(
                "SELECT COUNT(*) FROM leases WHERE state = 1 AND expires_at_ns <= $1",
            )
            .bind(now)
            .fetch_one(pool)
            .await?
        });
        if left == 0 {
            reaped_in = Some(started.elapsed());
        }
    }
    db.close().await;
    let reaped_in =
        reaped_in.ok_or_else(|| anyhow::anyhow!("the reaper did not finish in 300 s"))?;
    let seconds = reaped_in.as_secs_f64();
    Ok(vec![
        Figure {
            name: format!(
                "broker X.509-SVID issuance while reaping {EXPIRED} expired leases, {LIGHT} callers"
            ),
            value: issued / seconds.ceil(),
            unit: "issue/s",
            p50_us: Some(h.value_at_quantile(0.5) as f64),
            p99_us: Some(h.value_at_quantile(0.99) as f64),
        },
        Figure {
            name: format!(
                "broker reaper: {EXPIRED} expired leases ended (with evidence) under load"
            ),
            value: EXPIRED as f64 / seconds,
            unit: "lease/s",
            p50_us: None,
            p99_us: None,
        },
    ])
}

/// JWT-SVID issuance at `callers` (median of three rounds), on a stack of
/// its own: the telemetry bench's figure.
pub async fn jwt(callers: usize) -> anyhow::Result<Figure> {
    let setup = setup().await?;
    issuance(&setup, Credential::Jwt, "JWT-SVID", callers).await
}

/// Every broker figure, or only `x509`, `jwt`, `watch` or `reap`.
pub async fn run(only: Option<&str>) -> anyhow::Result<Vec<Figure>> {
    let setup = setup().await?;
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let mut figures = Vec::new();
    for (kind, key, name) in [
        (
            Credential::X509,
            "x509",
            "X.509-SVID from a CSR (authorize + sign + lease + evidence)",
        ),
        (
            Credential::Jwt,
            "jwt",
            "JWT-SVID (authorize + ES256 + lease + evidence)",
        ),
    ] {
        if wanted(key) {
            for callers in [CALLERS, LIGHT] {
                figures.push(issuance(&setup, kind, name, callers).await?);
            }
        }
    }
    if wanted("watch") {
        figures.push(revocation_visibility(&setup).await?);
    }
    if wanted("reap") {
        figures.extend(reaping(setup).await?);
    }
    Ok(figures)
}
