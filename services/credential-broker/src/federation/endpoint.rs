//! This trust domain's SPIFFE bundle endpoint: `GET /` over HTTPS answers
//! the bundle document (`application/json`). The profile is
//! `https_spiffe`: the server presents an X.509-SVID for the broker's own
//! SPIFFE ID, minted from the very CA the bundle publishes, so a federated
//! peer authenticates the endpoint with the bundle it last fetched from it.
//! It is re-minted at half its lifetime, not at a CA rotation: the
//! certificate from the old CA keeps serving while peers fetch the bundle
//! that announces the new one (both roots are published for the overlap),
//! so a peer is never shut out by the rotation it is about to learn of.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::issuance::Issuer;

/// How long the endpoint's own SVID lives.
const SVID_TTL: time::Duration = time::Duration::hours(1);
/// At most this many connections are served at once; more wait.
const MAX_CONNECTIONS: usize = 64;
/// A connection that has not finished its handshake and request by then
/// is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The endpoint's current certificate, swapped when it is re-minted.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// An X.509-SVID for the broker's own SPIFFE ID from the current CA, and
/// when it expires.
fn mint(issuer: &Issuer) -> Result<(Arc<CertifiedKey>, time::OffsetDateTime), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let uri = issuer.own.to_string();
    let issued = issuer
        .authorities()
        .ca
        .issue_x509_svid_for_key(&key, &uri, &[], SVID_TTL, time::OffsetDateTime::now_utc())
        .map_err(|e| e.to_string())?;
    let chain = issued
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let certified = CertifiedKey::from_der(chain, key, &steward_identity::tls::crypto_provider())
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(certified), issued.not_after))
}

/// The endpoint's listener: bound at start, so a taken port stops the
/// broker from starting instead of leaving federation silently down.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("federation: cannot serve the bundle endpoint on {addr}: {e}"))
}

/// Serves the bundle endpoint on `listener` until `shutdown`.
pub async fn serve(
    issuer: Arc<Issuer>,
    listener: TcpListener,
    refresh_hint_secs: u64,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let (first, mut not_after) = mint(&issuer)?;
    let current = Arc::new(Current(RwLock::new(first)));
    let mut tls =
        rustls::ServerConfig::builder_with_provider(steward_identity::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tracing::info!(%addr, "serving the SPIFFE bundle endpoint (https_spiffe)");
    tokio::pin!(shutdown);
    loop {
        let renew_in = (not_after - time::OffsetDateTime::now_utc()) / 2;
        let renew_in = Duration::try_from(renew_in).unwrap_or(Duration::ZERO);
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = tokio::time::sleep(renew_in) => {}
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let Ok(slot) = slots.clone().acquire_owned().await else { return Ok(()) };
                let (acceptor, issuer) = (acceptor.clone(), issuer.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let answered = tokio::time::timeout(REQUEST_TIMEOUT, async {
                        let stream = acceptor.accept(tcp).await?;
                        let service = hyper::service::service_fn(move |request| {
                            answer(request, issuer.clone(), refresh_hint_secs)
                        });
                        hyper::server::conn::http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(REQUEST_TIMEOUT)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                            .map_err(std::io::Error::other)
                    })
                    .await;
                    if let Ok(Err(error)) = answered {
                        tracing::debug!(%error, "a bundle endpoint connection failed");
                    }
                });
                continue;
            }
        }
        match mint(&issuer) {
            Ok((next, expires)) => {
                *current.0.write().unwrap_or_else(PoisonError::into_inner) = next;
                not_after = expires;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot renew the bundle endpoint's certificate");
                not_after = time::OffsetDateTime::now_utc() + time::Duration::seconds(60);
            }
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    issuer: Arc<Issuer>,
    refresh_hint_secs: u64,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if request.method() != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET"),
        );
        return Ok(response);
    }
    if request.uri().path() != "/" {
        return Ok(reply(StatusCode::NOT_FOUND, "the bundle is at /\n"));
    }
    let document = match super::own_bundle(&issuer, refresh_hint_secs).await {
        Ok(bundle) => bundle.to_document().map_err(|e| e.to_string()),
        Err(error) => Err(error),
    };
    Ok(match document {
        Ok(document) => {
            let mut response = Response::new(Full::new(Bytes::from(document)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => {
            tracing::warn!(%error, "cannot publish the bundle");
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "the bundle is unavailable; retry\n",
            )
        }
    })
}
