//! The plain-HTTP operations listener (`ops_addr`): `GET /healthz` and
//! `GET /readyz`, for probes that carry no client certificate
//! (Kubernetes' HTTP probes, systemd, a load balancer's health check).
//! The mTLS gRPC health service stays the authoritative one; this
//! listener tells only whether the process answers and whether it is
//! ready, never why not (the reason is in the service's log), so it gives
//! an unauthenticated caller nothing to learn.
//!
//! - `/healthz` (liveness): 200 while the process serves at all.
//! - `/readyz` (readiness): 200 while the service reports SERVING (its
//!   database takes writes and it does not hold itself back), else 503.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// At most this many probe connections at once; more wait.
const MAX_CONNECTIONS: usize = 32;
/// A probe that has not sent its request by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the probes on `listener` until `stopped` turns true; `ready`
/// is the service's overall SERVING state.
pub(crate) async fn serve(
    listener: TcpListener,
    ready: watch::Receiver<bool>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let ready = ready.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let ready = *ready.borrow();
                async move { Ok::<_, Infallible>(answer(&request, ready)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(error) = served.await {
                tracing::debug!(%error, "a probe connection failed");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, ready: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if ready => (StatusCode::OK, "ready\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "not found\n"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "only GET\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
