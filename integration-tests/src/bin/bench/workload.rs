//! The Workload API under load: with 1,000 registration entries in
//! inventory, 100 workloads connect at once and each waits for its first
//! X.509-SVID, over and over. Each fetch attests the caller, matches its
//! selectors, asks authority and commits a lease with its evidence.
//!
//! The first round meets a broker that has served nothing yet (its peer
//! connections, caches and memory are cold, as after a restart); it is
//! reported on its own, and the rounds after it, a running broker's
//! steady state, make the p50 and p99.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use steward_integration_tests::TestStack;
use steward_proto::spiffe_workload as raw;
use steward_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use steward_proto::steward::inventory::v1 as inventory;
use tokio_stream::StreamExt as _;

use crate::Figure;

const ENTRIES: u32 = 1_000;
const WORKLOADS: usize = 100;
const ROUNDS: usize = 5;

pub async fn run() -> anyhow::Result<Vec<Figure>> {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        anyhow::ensure!(Instant::now() < deadline, "no workload api socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let identity = stack
        .workload_identity("bench-workload", "production")
        .await;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path())?);
    let mut ops = stack.inventory().await;
    // One entry matches this process; the rest are other uids' entries.
    for n in 0..ENTRIES {
        let value = if n == 0 {
            format!("uid:{uid}")
        } else {
            format!("uid:{}", 100_000 + n)
        };
        ops.create_registration_entry(inventory::CreateRegistrationEntryRequest {
            entry: Some(inventory::RegistrationEntry {
                spiffe_id: identity.spiffe_id.clone(),
                parent_id: "spiffe://steward.test/service/credential-broker".into(),
                selectors: vec![inventory::Selector {
                    r#type: "unix".into(),
                    value,
                }],
                x509_svid_ttl: 3600,
                identity_id: identity.id.clone(),
                ..Default::default()
            }),
            context: None,
        })
        .await?;
    }
    let endpoint = spiffe::transport::Endpoint::parse(&format!("unix:{}", socket.display()))?;
    let mut latency = Histogram::<u64>::new(3)?;
    let mut cold = Histogram::<u64>::new(3)?;
    let mut started = Instant::now();
    for round in 0..=ROUNDS {
        if round == 1 {
            started = Instant::now();
        }
        let mut fetches = tokio::task::JoinSet::new();
        for _ in 0..WORKLOADS {
            let endpoint = endpoint.clone();
            fetches.spawn(async move {
                let connected = Instant::now();
                let channel = spiffe::transport::connect(&endpoint).await?;
                let mut request = tonic::Request::new(raw::X509svidRequest {});
                request
                    .metadata_mut()
                    .insert("workload.spiffe.io", "true".parse()?);
                let mut stream = SpiffeWorkloadApiClient::new(channel)
                    .fetch_x509svid(request)
                    .await?
                    .into_inner();
                let first = stream
                    .next()
                    .await
                    .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
                anyhow::ensure!(first.svids.len() == 1, "{} svids", first.svids.len());
                anyhow::Ok(connected.elapsed())
            });
        }
        let histogram = if round == 0 { &mut cold } else { &mut latency };
        while let Some(fetch) = fetches.join_next().await {
            histogram.record(u64::try_from(fetch??.as_micros())?)?;
        }
    }
    let total = (ROUNDS * WORKLOADS) as f64;
    Ok(vec![
        Figure {
            name: format!(
                "Workload API first X.509-SVID, {ENTRIES} entries, {WORKLOADS} workloads at once"
            ),
            value: total / started.elapsed().as_secs_f64(),
            unit: "svid/s",
            p50_us: Some(latency.value_at_quantile(0.50) as f64),
            p99_us: Some(latency.value_at_quantile(0.99) as f64),
        },
        Figure {
            name: format!(
                "Workload API cold start: the first {WORKLOADS} workloads a freshly started broker serves (slowest)"
            ),
            value: cold.max() as f64 / 1000.0,
            unit: "ms",
            p50_us: Some(cold.value_at_quantile(0.50) as f64),
            p99_us: Some(cold.max() as f64),
        },
    ])
}
