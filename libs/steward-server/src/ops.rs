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
//!   database takes writes and it does not hold itself back) and every
//!   peer it cannot work without answers ([`crate::readiness`]), else 503.
//! - `/metrics`: Prometheus text exposition (`docs/metrics.md`) when the
//!   service's `telemetry.metrics` is on, else 404. Gauges read from the
//!   database are refreshed by the scrape ([`crate::ServiceContext::on_scrape`]),
//!   one scrape at a time, so nothing is counted while nobody scrapes. The
//!   listener is unauthenticated: bind it where only the scraper reaches.

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
/// How long a scrape waits for the gauges to refresh before it answers
/// with what it has.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets gauges from the service's state just before a scrape answers.
pub type Refresh = Arc<dyn Fn() -> BoxFuture + Send + Sync>;
type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
/// The service's refreshers, registered while it builds.
#[derive(Clone, Default)]
pub(crate) struct Refreshers(Arc<std::sync::Mutex<Vec<Refresh>>>);

impl Refreshers {
    pub(crate) fn add(&self, refresh: Refresh) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(refresh);
    }

    fn start_all(&self) -> Vec<BoxFuture> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.iter().map(|refresh| refresh()).collect()
    }
}

impl std::fmt::Debug for Refreshers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map_or(0, |all| all.len());
        write!(f, "Refreshers({n})")
    }
}

/// Serves the probes on `listener` until `stopped` turns true; `ready`
/// is the service's overall SERVING state.
pub(crate) async fn serve(
    listener: TcpListener,
    ready: watch::Receiver<bool>,
    needed: crate::readiness::NeededPeers,
    refreshers: Refreshers,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let scraping = Arc::new(tokio::sync::Mutex::new(()));
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
        let needed = needed.clone();
        let refreshers = refreshers.clone();
        let scraping = scraping.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let ready = *ready.borrow() && needed.all_up();
                let refreshers = refreshers.clone();
                let scraping = scraping.clone();
                async move {
                    if request.method() == Method::GET && request.uri().path() == "/metrics" {
                        return Ok::<_, Infallible>(metrics(&refreshers, &scraping).await);
                    }
                    Ok(answer(&request, ready))
                }
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

/// The metrics, the database's gauges refreshed first; 404 when metrics
/// are off.
async fn metrics(
    refreshers: &Refreshers,
    scraping: &tokio::sync::Mutex<()>,
) -> Response<Full<Bytes>> {
    if steward_telemetry::metrics::render().is_none() {
        return text(StatusCode::NOT_FOUND, "metrics are off\n");
    }
    let _one_at_a_time = scraping.lock().await;
    let refreshes = refreshers.start_all();
    if tokio::time::timeout(REFRESH_TIMEOUT, futures_util::future::join_all(refreshes))
        .await
        .is_err()
    {
        tracing::warn!("gauges did not refresh in time; answering the scrape with older values");
    }
    let body = steward_telemetry::metrics::render().unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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
    text(status, body)
}
