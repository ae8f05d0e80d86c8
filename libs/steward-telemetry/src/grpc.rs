//! One span per gRPC call, on both sides, named and attributed as the
//! OpenTelemetry semantic conventions for RPC say, with W3C trace context
//! read from the request's headers ([`ServerLayer`]) and written into them
//! ([`Traced`]).
//!
//! A span is `package.Service/Method`, kind SERVER or CLIENT, with
//! `rpc.system`, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`,
//! and error status where the conventions call the code an error. The span
//! ends when the response's last frame has gone (its trailers carry the
//! status), so a streaming call's span lasts the stream's life. The
//! caller's SPIFFE ID is an attribute; no header value, and so no bearer
//! token, ever is.
//!
//! The span carries a `trace_id` field, so every log line written while a
//! call is served names its trace. Without an OTLP exporter (no tracing
//! layer to give spans ids) the field is the caller's trace id, or on the
//! server a fresh one when the caller sent none, so a call's lines still
//! go together.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::{self, Side};

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// gRPC status codes this module sets itself.
const OK: i32 = 0;
const CANCELLED: i32 = 1;
const UNKNOWN: i32 = 2;
const UNAVAILABLE: i32 = 14;

/// Who called, read from a request's extensions (the verified peer).
pub type CallerOf = fn(&http::Extensions) -> Option<String>;

/// The origins a batched call serves, set as an extension on the request
/// that carries the batch ([`Traced`] reads it): the call's span is a child
/// of the first and links to every one, so each request's trace reaches the
/// batch that decided it.
#[derive(Debug, Clone, Default)]
pub struct Batched(pub Vec<SpanContext>);

/// The span context of the current span, to keep with queued work (an
/// evidence record, a request waiting for a batch). Invalid when tracing
/// is off.
pub fn origin() -> SpanContext {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone()
}

/// The current span's trace and span ids, lowercase hex; `None` when
/// tracing is off.
pub fn current_ids() -> Option<(String, String)> {
    let span = origin();
    span.is_valid()
        .then(|| (span.trace_id().to_string(), span.span_id().to_string()))
}

/// The span context that `trace_id` and `span_id` (lowercase hex, as
/// [`current_ids`] gives them) name, as a sampled remote parent; `None`
/// when they do not name one.
pub fn span_context(trace_id: &str, span_id: &str) -> Option<SpanContext> {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let span = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    span.is_valid().then_some(span)
}

/// `span`'s context as a W3C `traceparent` value; `None` when invalid.
pub fn traceparent(span: &SpanContext) -> Option<String> {
    let mut headers = http::HeaderMap::new();
    let cx = opentelemetry::Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut HeadersMut(&mut headers));
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The span context a W3C `traceparent` value names; `None` when it is not
/// one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", http::HeaderValue::from_str(value).ok()?);
    let cx = TraceContextPropagator::new().extract(&Headers(&headers));
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// Serves each call inside its SERVER span, continuing the caller's trace.
#[derive(Debug, Clone, Copy)]
pub struct ServerLayer {
    caller: CallerOf,
}

impl ServerLayer {
    pub fn new(caller: CallerOf) -> Self {
        Self { caller }
    }
}

impl<S> tower::Layer<S> for ServerLayer {
    type Service = TracedServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TracedServer {
            inner,
            caller: self.caller,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TracedServer<S> {
    inner: S,
    caller: CallerOf,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for TracedServer<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<Watched<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(Side::Server, request.uri().path());
        let parent = TraceContextPropagator::new().extract(&Headers(request.headers()));
        let _ = call.span.set_parent(parent.clone());
        if let Some(caller) = (self.caller)(request.extensions()) {
            call.span.record("steward.caller", caller.as_str());
        }
        call.record_trace_id(&parent);
        let future = call.span.in_scope(|| self.inner.call(request));
        call.answer(future)
    }
}

/// A client channel whose every call is a CLIENT span, its context sent
/// as `traceparent`.
#[derive(Debug, Clone)]
pub struct Traced<S> {
    inner: S,
    /// The trace to continue when the caller has no span of its own (the
    /// CLI's `TRACEPARENT`).
    parent: Option<SpanContext>,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            parent: None,
        }
    }

    /// Calls continue `parent` (a `traceparent` value) when there is no
    /// current span to continue.
    pub fn continuing(inner: S, parent: Option<&str>) -> Self {
        Self {
            inner,
            parent: parent.and_then(parse_traceparent),
        }
    }
}

/// A traced mTLS channel to a peer.
pub type TracedChannel = Traced<tonic::transport::Channel>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<Watched<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let call = Call::start(Side::Client, request.uri().path());
        let batched = request.extensions_mut().remove::<Batched>();
        let parent = match (&batched, &self.parent) {
            (Some(Batched(origins)), _) => origins.iter().find(|o| o.is_valid()).cloned(),
            (None, Some(parent)) if !origin().is_valid() => Some(parent.clone()),
            _ => None,
        };
        let parent = parent
            .map(|p| opentelemetry::Context::new().with_remote_span_context(p))
            .unwrap_or_default();
        if parent.has_active_span() {
            let _ = call.span.set_parent(parent.clone());
        }
        for linked in batched.iter().flat_map(|b| b.0.iter()) {
            call.span.add_link(linked.clone());
        }
        let own = call.span.context();
        let sent = if own.span().span_context().is_valid() {
            own
        } else {
            parent.clone()
        };
        TraceContextPropagator::new().inject_context(&sent, &mut HeadersMut(request.headers_mut()));
        call.record_trace_id(&parent);
        let future = self.inner.call(request);
        call.answer(future)
    }
}

/// One call: its span and when it began, finished once with its status.
struct Call {
    span: tracing::Span,
    side: Side,
    /// Its series, while metrics are on.
    method: Option<std::sync::Arc<metrics::Method>>,
    started: Instant,
    finished: bool,
}

impl Call {
    fn start(side: Side, path: &str) -> Self {
        let name = path.strip_prefix('/').unwrap_or(path);
        let (service, method) = name.split_once('/').unwrap_or((name, ""));
        let kind = match side {
            Side::Server => "server",
            Side::Client => "client",
        };
        let span = tracing::info_span!(
            "grpc",
            otel.name = name,
            otel.kind = kind,
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = Empty,
            steward.caller = Empty,
            trace_id = Empty,
        );
        let series = metrics::method(side, path);
        if let Some(series) = &series {
            series.started();
        }
        Self {
            span,
            side,
            method: series,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Names the trace in the span's `trace_id` field: the span's own, or
    /// (tracing off) the caller's, or a fresh one for a server call.
    fn record_trace_id(&self, parent: &opentelemetry::Context) {
        use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
        let own = self.span.context();
        let id = if own.span().span_context().is_valid() {
            own.span().span_context().trace_id()
        } else if parent.span().span_context().is_valid() {
            parent.span().span_context().trace_id()
        } else if self.side == Side::Server {
            RandomIdGenerator::default().new_trace_id()
        } else {
            return;
        };
        self.span.record("trace_id", id.to_string().as_str());
    }

    /// `future`'s response inside the call's span, watched; a transport
    /// failure is UNAVAILABLE, as gRPC reports it.
    fn answer<B, E>(
        self,
        future: impl std::future::Future<Output = Result<http::Response<B>, E>> + Send + 'static,
    ) -> BoxFuture<Result<http::Response<Watched<B>>, E>>
    where
        B: Send + 'static,
        E: Send + 'static,
    {
        let span = self.span.clone();
        let mut call = self;
        Box::pin(async move {
            match future.instrument(span).await {
                Ok(response) => Ok(call.watch(response)),
                Err(error) => {
                    call.finish(UNAVAILABLE);
                    Err(error)
                }
            }
        })
    }

    /// The response, its body watched for the status (already here when
    /// the answer is trailers-only).
    fn watch<B>(mut self, response: http::Response<B>) -> http::Response<Watched<B>> {
        let call = match status_of(response.headers()) {
            Some(code) => {
                self.finish(code);
                None
            }
            None => Some(self),
        };
        response.map(|inner| Watched { inner, call })
    }

    fn finish(&mut self, code: i32) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.span.record("rpc.grpc.status_code", code);
        if is_error(self.side, code) {
            self.span.record("otel.status_code", "error");
        }
        if let Some(series) = &self.method {
            series.finished(code, self.started.elapsed());
        }
    }
}

impl Drop for Call {
    /// A call whose body was dropped before its status: the peer went away
    /// (CANCELLED), as gRPC reports it.
    fn drop(&mut self) {
        self.finish(CANCELLED);
    }
}

/// Whether the conventions mark `code` an error: every non-OK code on the
/// client; on the server only the codes that say the server failed
/// (a refused request is the caller's error, not the server's).
fn is_error(side: Side, code: i32) -> bool {
    match side {
        Side::Client => code != OK,
        // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
        // UNAVAILABLE, DATA_LOSS.
        Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pin_project_lite::pin_project! {
    /// A response body that finishes its call's span at the trailers.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }
}

impl<B: Body> Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let code = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|t| status_of(t).unwrap_or(UNKNOWN)),
            // UNKNOWN: the body failed, or ended with no status.
            Poll::Ready(Some(Err(_)) | None) => Some(UNKNOWN),
            Poll::Pending => None,
        };
        if let Some(code) = code
            && let Some(mut call) = this.call.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_reads_back_as_written() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = parse_traceparent(value).unwrap();
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(traceparent(&span).as_deref(), Some(value));
    }

    #[test]
    fn what_is_not_a_traceparent_is_none() {
        for value in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-zz-01",
            "not a header\n",
        ] {
            assert!(parse_traceparent(value).is_none(), "{value:?}");
        }
    }

    #[test]
    fn only_server_faults_are_server_errors() {
        assert!(!is_error(Side::Server, 3));
        assert!(!is_error(Side::Server, 7));
        assert!(is_error(Side::Server, 13));
        assert!(is_error(Side::Client, 3));
        assert!(!is_error(Side::Client, OK));
    }
}
