//! What replicas cost, and how fast a role moves: JWT-SVID issuance
//! through a TCP balancer with one and with two replicas of the broker
//! and authority (inventory and audit one each), every service a process
//! of its own on a private PostgreSQL server; then, with two replicas of
//! every service, how long after its holder's SIGKILL each once-only role
//! is held again.
//!
//! On two cores, two replicas share the same CPUs: the figure is the
//! overhead of running as replicas (balancer hops, role contention, the
//! policy follower), not a speed-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use steward_integration_tests::TestBackend;
use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, activate_on, task};
use steward_integration_tests::cluster::Cluster;
use steward_integration_tests::faults::PrivatePostgres;
use steward_integration_tests::inventory::spec;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
use steward_proto::steward::inventory::v1 as inv;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;

use super::Figure;

const CALLERS: usize = 64;
const WARMUP: Duration = Duration::from_secs(2);
const MEASURE: Duration = Duration::from_secs(6);

/// The roles whose takeover is timed, by service.
/// One per service: each kill leaves that service one replica.
const ROLES: [(&str, &str); 4] = [
    ("audit", "audit.sequencer"),
    ("credential-broker", "broker.reaper"),
    ("authority", "authority.responder"),
    ("inventory", "outbox"),
];

pub async fn run() -> anyhow::Result<Vec<Figure>> {
    let Some(server) = PrivatePostgres::start() else {
        println!("  replicas: no PostgreSQL installed; skipped");
        return Ok(Vec::new());
    };
    let backend = TestBackend::Postgres(server.admin_url());
    let mut figures = Vec::new();
    let mut rates = Vec::new();
    for replicas in [1, 2] {
        let cluster = Cluster::start_with(&backend, |name| match name {
            "credential-broker" | "authority" => replicas,
            _ => 1,
        })
        .await;
        let rate = issuance(&cluster).await?;
        println!("  replicas: {replicas} broker + authority: {rate:.0} JWT-SVID/s");
        rates.push(rate);
        figures.push(Figure {
            name: format!(
                "JWT-SVID via a TCP balancer on PostgreSQL, {CALLERS} callers, {replicas} broker + {replicas} authority"
            ),
            value: rate,
            unit: "issue/s",
            p50_us: None,
            p99_us: None,
        });
    }
    println!(
        "  replicas: 2 replicas at {:.2}x of 1 (same 2 cores)",
        rates[1] / rates[0]
    );

    let mut cluster = Cluster::start(&backend, 2).await;
    for (service, role) in ROLES {
        let taken = takeover(&mut cluster, service, role).await?;
        println!(
            "  replicas: {role} held again {:.2} s after its holder's SIGKILL",
            taken.as_secs_f64()
        );
        figures.push(Figure {
            name: format!("{role} taken over after SIGKILL of its holder"),
            value: taken.as_secs_f64() * 1000.0,
            unit: "ms",
            p50_us: None,
            p99_us: None,
        });
    }
    drop(cluster);
    drop(server);
    Ok(figures)
}

/// Issuances per second at [`CALLERS`] callers through the broker's
/// balancer.
async fn issuance(cluster: &Cluster) -> anyhow::Result<f64> {
    let mut admin =
        AuthorityServiceClient::new(cluster.channel("authority", &cluster.operator).await);
    activate_on(&mut admin, BROKER_POLICIES, true).await;
    let mut inventory =
        InventoryServiceClient::new(cluster.channel("inventory", &cluster.operator).await);
    let mut workload = spec("bench-replicas");
    workload.spiffe_id = "spiffe://steward.test/workload/bench".into();
    let identity = inventory
        .create_identity(inv::CreateIdentityRequest {
            identity: Some(workload),
            context: None,
        })
        .await?
        .into_inner()
        .identity
        .unwrap_or_default()
        .id;
    let soar = cluster.caller(SOAR);
    // A few connections, as several automation clients would open: the
    // balancer spreads connections, not calls.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(CredentialBrokerClient::new(
            cluster.channel("credential-broker", &soar).await,
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let mut client = clients[caller % clients.len()].clone();
        let request = pb::IssueJwtSvidRequest {
            identity_id: identity.clone(),
            audience: vec!["ledger".into()],
            ttl_seconds: 0,
            task: task("INC-bench"),
        };
        let (stop, counting, issued) = (stop.clone(), counting.clone(), issued.clone());
        callers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if client.issue_jwt_svid(request.clone()).await.is_ok()
                    && counting.load(Ordering::Relaxed)
                {
                    issued.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let began = Instant::now();
    tokio::time::sleep(MEASURE).await;
    counting.store(false, Ordering::Relaxed);
    let elapsed = began.elapsed();
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        caller.await?;
    }
    Ok(issued.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64())
}

/// Kills the holder of `role` and times until another replica holds it.
async fn takeover(cluster: &mut Cluster, service: &str, role: &str) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        if let Some(n) = cluster.holder(service, role).await {
            break n;
        }
        anyhow::ensure!(Instant::now() < deadline, "nobody holds {role}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let killed = Instant::now();
    cluster
        .replicas
        .get_mut(service)
        .unwrap_or_else(|| unreachable!())[holder]
        .kill()
        .await;
    loop {
        if cluster.holder(service, role).await.is_some() {
            return Ok(killed.elapsed());
        }
        anyhow::ensure!(
            killed.elapsed() < Duration::from_secs(30),
            "{role} was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
