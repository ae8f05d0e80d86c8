//! What tracing and metrics cost: the broker's JWT-SVID issuance at 64
//! callers with both off and with both on, alternated (off, on, off, on)
//! in child processes of this run, since a process has one tracing
//! subscriber and one metrics recorder for good.
//!
//! Both sides log as a service does (JSON, `info`, to a discarded
//! stderr). "On" adds span export over OTLP/gRPC to a collector that
//! counts what it is sent, and the Prometheus recorder, scraped once a
//! second as Prometheus would.

use std::process::{Command, Stdio};

use steward_integration_tests::otlp::Receiver;
use steward_telemetry::{LogFormat, TelemetryConfig};

use super::Figure;

const CALLERS: usize = 64;
/// The child's environment variable: `off` or `on`.
const MODE: &str = "STEWARD_BENCH_TELEMETRY";

/// The figures of four alternated children, the overhead of "on", and
/// tracing and metrics each alone.
pub fn run() -> anyhow::Result<Vec<Figure>> {
    let mut off = Vec::new();
    let mut on = Vec::new();
    let mut alone = Vec::new();
    // The pair twice, then each half alone: where the cost is.
    for mode in ["off", "on", "off", "on", "tracing", "metrics"] {
        let out = Command::new(std::env::current_exe()?)
            .arg("telemetry-child")
            .env(MODE, mode)
            .stderr(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "the {mode} child failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let rate: f64 = String::from_utf8(out.stdout)?
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .parse()?;
        println!("  telemetry {mode}: {rate:.0} JWT-SVID/s");
        match mode {
            "on" => on.push(rate),
            "off" => off.push(rate),
            _ => alone.push((mode, rate)),
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (off, on) = (mean(&off), mean(&on));
    let overhead = 100.0 * (1.0 - on / off);
    let mut figures: Vec<Figure> = alone
        .into_iter()
        .map(|(mode, rate)| Figure {
            name: format!(
                "broker JWT-SVID, {CALLERS} callers, {mode} only (one run; {:.1}% below off)",
                100.0 * (1.0 - rate / off)
            ),
            value: rate,
            unit: "issue/s",
            p50_us: None,
            p99_us: None,
        })
        .collect();
    figures.extend([
        Figure {
            name: format!(
                "broker JWT-SVID, {CALLERS} callers, tracing and metrics off (mean of 2)"
            ),
            value: off,
            unit: "issue/s",
            p50_us: None,
            p99_us: None,
        },
        Figure {
            name: format!("broker JWT-SVID, {CALLERS} callers, tracing and metrics on (mean of 2)"),
            value: on,
            unit: "issue/s",
            p50_us: None,
            p99_us: None,
        },
        Figure {
            name: "cost of tracing and metrics on JWT-SVID issuance (target < 10%)".into(),
            value: overhead,
            unit: "%",
            p50_us: None,
            p99_us: None,
        },
    ]);
    Ok(figures)
}

/// One child: the figure with telemetry as `STEWARD_BENCH_TELEMETRY` says,
/// its rate alone on the last line of stdout.
pub fn child(runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let mode = std::env::var(MODE).unwrap_or_default();
    let tracing = matches!(mode.as_str(), "on" | "tracing");
    let on = matches!(mode.as_str(), "on" | "metrics");
    let receiver = tracing.then(Receiver::counting);
    let config = TelemetryConfig {
        format: LogFormat::Json,
        filter: "info".into(),
        otlp_endpoint: receiver.as_ref().map(Receiver::endpoint),
        metrics: on,
    };
    let figure = runtime.block_on(async {
        let _guard = steward_telemetry::init("bench", &config)?;
        let scraper = on.then(|| {
            tokio::spawn(async {
                loop {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    std::hint::black_box(steward_telemetry::metrics::render());
                }
            })
        });
        let figure = super::broker::jwt(CALLERS).await;
        if let Some(scraper) = scraper {
            scraper.abort();
        }
        figure
    })?;
    if let Some(receiver) = &receiver {
        anyhow::ensure!(receiver.counted() > 0, "the collector received no spans");
    }
    println!("{}", figure.value);
    Ok(())
}
