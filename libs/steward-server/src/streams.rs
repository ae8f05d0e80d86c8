//! Server streams end when the service starts stopping: each open
//! response stream of a server-streaming RPC gets UNAVAILABLE ("the
//! service is stopping; reconnect") in its trailers at once, so a client
//! (authority's facts stream, a revocation or audit subscriber) moves to a
//! sibling replica instead of holding this one for the whole grace period.
//! Unary calls in flight are left to finish: only the RPCs the descriptors
//! mark `server_streaming` are cut, and only between two messages.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame};
use prost::Message as _;
use tokio::sync::watch;

/// `/package.Service/Method` of every server-streaming RPC in `descriptors`
/// (an encoded `FileDescriptorSet`).
pub fn streaming_paths(descriptors: &[&[u8]]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for set in descriptors {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    if method.server_streaming.unwrap_or(false) {
                        let method = method.name.unwrap_or_default();
                        let service = if package.is_empty() {
                            name.clone()
                        } else {
                            format!("{package}.{name}")
                        };
                        paths.insert(format!("/{service}/{method}"));
                    }
                }
            }
        }
    }
    paths
}

/// Ends the response streams of [`streaming_paths`] once `stopping` is true.
#[derive(Debug, Clone)]
pub struct EndStreamsLayer {
    paths: Arc<HashSet<String>>,
    stopping: watch::Receiver<bool>,
}

impl EndStreamsLayer {
    pub fn new(paths: HashSet<String>, stopping: watch::Receiver<bool>) -> Self {
        Self {
            paths: Arc::new(paths),
            stopping,
        }
    }
}

impl<S> tower::Layer<S> for EndStreamsLayer {
    type Service = EndStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreams {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`EndStreamsLayer`].
#[derive(Debug, Clone)]
pub struct EndStreams<S> {
    inner: S,
    layer: EndStreamsLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for EndStreams<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<Ending<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let stopping = self
            .layer
            .paths
            .contains(request.uri().path())
            .then(|| self.layer.stopping.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| Ending {
                inner,
                stopped: stopping.map(|mut stopping| -> BoxFuture<()> {
                    Box::pin(async move {
                        let _ = stopping.wait_for(|stopping| *stopping).await;
                    })
                }),
                ended: false,
            }))
        })
    }
}

/// `grpc-status: UNAVAILABLE` with a message made only of printable ASCII,
/// which the spec lets stand without percent-encoding.
fn stopping_trailers() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static(UNAVAILABLE));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("the service is stopping; reconnect"),
    );
    trailers
}

/// `tonic::Code::Unavailable`, as the status trailer spells it.
const UNAVAILABLE: &str = "14";

/// A response body that, for a streaming RPC, ends with UNAVAILABLE
/// trailers when the service starts stopping while it waits for the next
/// message.
pub struct Ending<B> {
    inner: B,
    /// `None` for RPCs that are not cut.
    stopped: Option<BoxFuture<()>>,
    ended: bool,
}

impl<B> Body for Ending<B>
where
    B: Body<Data = prost::bytes::Bytes> + Unpin,
{
    type Data = prost::bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        let Some(stopped) = self.stopped.as_mut() else {
            return Poll::Pending;
        };
        if stopped.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.ended = true;
        Poll::Ready(Some(Ok(Frame::trailers(stopping_trailers()))))
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
