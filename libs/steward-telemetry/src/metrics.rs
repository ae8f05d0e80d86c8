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

/// The labels of one RPC, built once per call.
pub(crate) struct Method(Vec<Label>);

impl Method {
    pub(crate) fn new(service: &str, method: &str) -> Self {
        Self(vec![
            Label::new("grpc_service", service.to_owned()),
            Label::new("grpc_method", method.to_owned()),
        ])
    }
}

pub(crate) fn started(side: Side, service: &str, method: &str) {
    if HANDLE.get().is_none() {
        return;
    }
    let labels = Method::new(service, method).0;
    match side {
        Side::Server => counter!("grpc_server_started_total", labels).increment(1),
        Side::Client => counter!("grpc_client_started_total", labels).increment(1),
    }
}

pub(crate) fn finished(side: Side, method: &Method, code: i32, took: Duration) {
    if HANDLE.get().is_none() {
        return;
    }
    let mut labels = method.0.clone();
    let seconds = took.as_secs_f64();
    match side {
        Side::Server => {
            histogram!("grpc_server_handling_seconds", labels.clone()).record(seconds);
            labels.push(Label::new("grpc_code", code_name(code)));
            counter!("grpc_server_handled_total", labels).increment(1);
        }
        Side::Client => {
            histogram!("grpc_client_handling_seconds", labels.clone()).record(seconds);
            labels.push(Label::new("grpc_code", code_name(code)));
            counter!("grpc_client_handled_total", labels).increment(1);
        }
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
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(3), "InvalidArgument");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
    }
}
