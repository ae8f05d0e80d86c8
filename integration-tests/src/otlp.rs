//! An OTLP/gRPC trace receiver, as an operator's collector is one: the
//! collector's `TraceService` (from `opentelemetry-proto`, not our code)
//! served in plain gRPC on `127.0.0.1`, keeping every span it is sent with
//! the `service.name` of the resource that sent it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
pub use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::sync::oneshot;

/// One span as received, with the service that exported it.
#[derive(Debug, Clone)]
pub struct Received {
    pub service: String,
    pub span: Span,
}

impl Received {
    pub fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }

    /// A string attribute of the span.
    pub fn attribute(&self, key: &str) -> Option<String> {
        string_value(&self.span.attributes, key)
    }

    /// An integer attribute of the span.
    pub fn int_attribute(&self, key: &str) -> Option<i64> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::IntValue(i) => Some(*i),
                _ => None,
            })
    }
}

fn string_value(attributes: &[KeyValue], key: &str) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    resources: Arc<Mutex<Vec<Vec<KeyValue>>>>,
    /// Only count what arrives (a benchmark's collector).
    counting: bool,
    received: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        if self.counting {
            let n: usize = request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum();
            self.received
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            return Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }));
        }
        for resource_spans in request.resource_spans {
            let attributes = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            let service = string_value(&attributes, "service.name").unwrap_or_default();
            self.resources.lock().unwrap().push(attributes);
            let mut spans = self.spans.lock().unwrap();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver, on a thread and runtime of its own (so a test driving
/// real processes may block); it stops when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    collector: Collector,
    _stop: oneshot::Sender<()>,
}

impl Receiver {
    pub fn start() -> Self {
        Self::start_with(Collector::default())
    }

    /// A receiver that only counts the spans it is sent.
    pub fn counting() -> Self {
        Self::start_with(Collector {
            counting: true,
            ..Collector::default()
        })
    }

    /// How many spans a counting receiver has been sent.
    pub fn counted(&self) -> u64 {
        self.collector
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn start_with(collector: Collector) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(collector.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let _ = tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self {
            addr,
            collector,
            _stop: stop,
        }
    }

    /// What to set as a service's `telemetry.otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far in trace `trace_id`.
    pub fn trace(&self, trace_id: &[u8]) -> Vec<Received> {
        self.collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.span.trace_id == trace_id)
            .cloned()
            .collect()
    }

    /// The attributes of every resource that exported to this receiver.
    pub fn resources(&self) -> Vec<Vec<KeyValue>> {
        self.collector.resources.lock().unwrap().clone()
    }

    /// Trace `trace_id` once `complete` says it is, or what had arrived
    /// when `within` ran out.
    pub fn wait_for(
        &self,
        trace_id: &[u8],
        within: Duration,
        complete: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let spans = self.trace(trace_id);
            if complete(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A string attribute of a resource.
pub fn resource_attribute(resource: &[KeyValue], key: &str) -> Option<String> {
    string_value(resource, key)
}
