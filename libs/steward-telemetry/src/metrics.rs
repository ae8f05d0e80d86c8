//! Prometheus metrics: one process-wide recorder behind the `metrics`
//! facade, rendered in the text exposition format by [`render`].
//!
//! Until [`install`] runs (the service's `telemetry.metrics` is off) every
//! recording is a no-op, so a service that exports nothing pays nothing.
//! Names and units follow Prometheus' conventions (`_total` counters,
//! `_seconds` durations); the per-call families are those of
//! go-grpc-prometheus, so existing gRPC dashboards read them. The series
//! each service exports are listed in `docs/metrics.md`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Label, counter, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Which end of a call a metric counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder, once; later calls (several services
/// in one test process) share it. `false` if another recorder was already
/// installed by someone else.
pub fn install() -> bool {
    if HANDLE.get().is_some() {
        return true;
    }
    let built = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map(PrometheusBuilder::install_recorder);
    match built {
        Ok(Ok(handle)) => {
            let _ = HANDLE.set(handle);
            describe();
            true
        }
        _ => HANDLE.get().is_some(),
    }
}

/// Every series in the text exposition format; `None` when metrics are off.
pub fn render() -> Option<String> {
    let handle = HANDLE.get()?;
    handle.run_upkeep();
    Some(handle.render())
}

/// Most distinct RPC paths given series of their own, per side; calls to
/// further paths (a caller trying made-up method names) share one
/// `grpc_method="unknown"` series, so no caller can grow the registry.
const MAX_METHODS: usize = 512;

/// One RPC's series, registered once and kept: a call's recording is an
/// atomic add, not a registry lookup.
pub(crate) struct Method {
    labels: Vec<Label>,
    started: metrics::Counter,
    seconds: metrics::Histogram,
    /// `grpc_server_handled_total` (or the client's) per status code.
    handled: [OnceLock<metrics::Counter>; 17],
    side: Side,
}

type Methods = std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<Method>>>;

static SERVER_METHODS: OnceLock<Methods> = OnceLock::new();
static CLIENT_METHODS: OnceLock<Methods> = OnceLock::new();

/// The series of the RPC at `path` (`/package.Service/Method`); `None`
/// while metrics are off.
pub(crate) fn method(side: Side, path: &str) -> Option<std::sync::Arc<Method>> {
    HANDLE.get()?;
    let methods = match side {
        Side::Server => &SERVER_METHODS,
        Side::Client => &CLIENT_METHODS,
    }
    .get_or_init(Methods::default);
    if let Some(known) = methods.read().ok()?.get(path) {
        return Some(known.clone());
    }
    let mut all = methods.write().ok()?;
    let path = if all.len() >= MAX_METHODS && !all.contains_key(path) {
        "/unknown/unknown"
    } else {
        path
    };
    Some(
        all.entry(path.to_owned())
            .or_insert_with(|| std::sync::Arc::new(Method::new(side, path)))
            .clone(),
    )
}

impl Method {
    fn new(side: Side, path: &str) -> Self {
        let name = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let labels = vec![
            Label::new("grpc_service", service.to_owned()),
            Label::new("grpc_method", method.to_owned()),
        ];
        let (started, seconds) = match side {
            Side::Server => (
                counter!("grpc_server_started_total", labels.clone()),
                histogram!("grpc_server_handling_seconds", labels.clone()),
            ),
            Side::Client => (
                counter!("grpc_client_started_total", labels.clone()),
                histogram!("grpc_client_handling_seconds", labels.clone()),
            ),
        };
        Self {
            labels,
            started,
            seconds,
            handled: Default::default(),
            side,
        }
    }

    pub(crate) fn started(&self) {
        self.started.increment(1);
    }

    pub(crate) fn finished(&self, code: i32, took: Duration) {
        self.seconds.record(took.as_secs_f64());
        let slot = usize::try_from(code).unwrap_or(2).min(16);
        let handled = self.handled[slot].get_or_init(|| {
            let mut labels = self.labels.clone();
            labels.push(Label::new("grpc_code", code_name(code)));
            match self.side {
                Side::Server => counter!("grpc_server_handled_total", labels),
                Side::Client => counter!("grpc_client_handled_total", labels),
            }
        });
        handled.increment(1);
    }
}

/// A status code's name as gRPC's own libraries print it (`OK`,
/// `InvalidArgument`, …), the `grpc_code` label's values.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("Unknown")
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!("grpc_server_started_total", "RPCs started on the server.");
    describe_counter!(
        "grpc_server_handled_total",
        "RPCs completed on the server, by status code."
    );
    describe_histogram!(
        "grpc_server_handling_seconds",
        Unit::Seconds,
        "Time from a call's headers to its status, on the server."
    );
    describe_counter!(
        "grpc_client_started_total",
        "RPCs started to a peer service."
    );
    describe_counter!(
        "grpc_client_handled_total",
        "RPCs to a peer service completed, by status code."
    );
    describe_histogram!(
        "grpc_client_handling_seconds",
        Unit::Seconds,
        "Time from a call's headers to its status, at the caller."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_method_names_cannot_grow_the_registry() {
        assert!(install());
        let first = method(Side::Server, "/made.Up/Method0").unwrap();
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &method(Side::Server, "/made.Up/Method0").unwrap()
        ));
        let past = (1..2 * MAX_METHODS)
            .map(|i| method(Side::Server, &format!("/made.Up/Method{i}")).unwrap())
            .collect::<Vec<_>>();
        let unknown = past.last().unwrap();
        assert!(std::sync::Arc::ptr_eq(unknown, &past[past.len() - 2]));
        assert_eq!(unknown.labels[1].value(), "unknown");
        assert!(SERVER_METHODS.get().unwrap().read().unwrap().len() <= MAX_METHODS + 1);
        unknown.finished(0, Duration::from_millis(1));
        let text = render().unwrap();
        assert!(text.contains("grpc_method=\"unknown\""), "{text}");
        assert!(!text.contains(&format!("Method{}", 2 * MAX_METHODS - 1)));
    }

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "InvalidArgument");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
    }
}
