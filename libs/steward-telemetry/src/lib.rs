//! Tracing for every Steward binary: human-readable logs by default, JSON
//! lines when asked, and OpenTelemetry (OTLP over gRPC) export of spans when
//! an endpoint is configured. W3C trace context is the propagation format.
//!
//! [`grpc`] traces every call, server and client side; [`metrics`] serves
//! Prometheus text when `metrics` is on.
//!
//! Secrets never reach a log line: callers log identifiers and outcomes,
//! never credentials, and the config types that hold secrets do not print
//! them.

pub mod grpc;
pub mod metrics;

pub use grpc::{Batched, ServerLayer, Traced, TracedChannel};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Multi-line, coloured, for a person at a terminal.
    #[default]
    Pretty,
    /// One line per event, for a person tailing a file.
    Compact,
    /// JSON lines, for log pipelines.
    Json,
}

/// Logging and tracing settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `steward=debug,info`.
    /// `RUST_LOG`, when set, wins.
    pub filter: String,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`: spans
    /// are exported there. Unset, no spans are kept (log lines still name
    /// a caller's trace).
    pub otlp_endpoint: Option<String>,
    /// Serve Prometheus metrics at `/metrics` on the service's `ops_addr`.
    pub metrics: bool,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            filter: "info".to_owned(),
            otlp_endpoint: None,
            metrics: false,
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {0:?}: {1}")]
    Filter(String, String),
    #[error("cannot build the otlp exporter: {0}")]
    Otlp(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts the span exporter down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("otlp exporter shutdown failed: {error}");
        }
    }
}

/// Installs the global tracing subscriber for `service`. Must be called
/// inside a tokio runtime when OTLP export is configured.
pub fn init(service: &str, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(&directive)
            .map_err(|e| TelemetryError::Filter(directive.clone(), e.to_string()))?,
        _ => EnvFilter::try_new(&config.filter)
            .map_err(|e| TelemetryError::Filter(config.filter.clone(), e.to_string()))?,
    };

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource(service))
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            Some(provider)
        }
        None => None,
    };
    // No busy/idle timing (a clock read on every poll of every
    // instrumented future), no thread or source-location attributes: the
    // RPC attributes say what a span is, and these cost on every span.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_tracer(p.tracer(format!("steward-{service}")))
    });

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let colour = colour();
    let installed = match config.format {
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .pretty()
                    .with_ansi(colour)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Compact => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .compact()
                    .with_ansi(colour)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
    if config.metrics {
        metrics::install();
    }
    Ok(TelemetryGuard { provider })
}

/// What the spans of this process are from: `service.name`,
/// `service.version` and a `service.instance.id` fresh for each start.
fn resource(service: &str) -> Resource {
    use opentelemetry::KeyValue;
    Resource::builder()
        .with_service_name(format!("steward-{service}"))
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .build()
}

/// Colour codes only for a person at a terminal: never in a file, a pipe
/// or a journal, and never when `NO_COLOR` is set (the convention).
fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
