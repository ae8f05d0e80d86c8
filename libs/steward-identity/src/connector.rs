//! tonic channels that speak mTLS with an SVID from disk and authenticate the
//! server by SPIFFE ID rather than host name.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{ServerAuthorizer, SvidSource};

/// Why a channel could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid endpoint address {0:?}: {1}")]
    Address(String, String),
    #[error("cannot connect to {0}: {1}")]
    Transport(String, String),
}

/// Opens a channel to `addr`, presenting the SVID from `source`
/// and accepting only a server the authorizer approves. The TLS config is
/// taken from `source` on every (re)connect, so rotated SVIDs are picked up.
///
/// `addr` is `host:port`, or several separated by commas: the replicas of
/// one service. Each (re)connect resolves every entry (a DNS name may stand
/// for several replicas) and takes the next address in turn, from a random
/// start, trying the others when one does not answer: connections spread
/// over the replicas, and a connection lost to a replica that died is
/// made again to a live one. Any replica will do, since the server is
/// authenticated by its SPIFFE ID, not by which address answered.
pub async fn connect(
    source: Arc<SvidSource>,
    addr: &str,
    authorizer: ServerAuthorizer,
) -> Result<Channel, ConnectError> {
    let replicas = Replicas::parse(addr)?;
    endpoint(replicas.first())?
        .connect_with_connector(connector(source, authorizer, replicas))
        .await
        .map_err(|e| ConnectError::Transport(addr.to_owned(), error_chain(&e)))
}

/// Opens a channel with a caller-built rustls configuration. For tools and
/// tests that need a certificate an [`SvidSource`] would refuse to load.
pub async fn connect_with_config(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
) -> Result<Channel, ConnectError> {
    let connector = tower::service_fn(move |uri: Uri| {
        let config = config.clone();
        async move {
            let (host, port) = host_port_of(&uri)?;
            let addr = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| std::io::Error::other("the endpoint did not resolve"))?;
            tls_connect(&host, addr, config).await
        }
    });
    endpoint(addr)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Transport(addr.to_owned(), error_chain(&e)))
}

/// Like [`connect`], but connects on first use.
pub fn connect_lazy(
    source: Arc<SvidSource>,
    addr: &str,
    authorizer: ServerAuthorizer,
) -> Result<Channel, ConnectError> {
    let replicas = Replicas::parse(addr)?;
    Ok(endpoint(replicas.first())?
        .connect_with_connector_lazy(connector(source, authorizer, replicas)))
}

/// The addresses a peer may be reached at, and whose turn is next.
#[derive(Debug, Clone)]
struct Replicas {
    entries: Arc<[String]>,
    next: Arc<AtomicUsize>,
}

impl Replicas {
    fn parse(addr: &str) -> Result<Self, ConnectError> {
        let entries: Vec<String> = addr
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(str::to_owned)
            .collect();
        if entries.is_empty() {
            return Err(ConnectError::Address(
                addr.to_owned(),
                "no host:port in it".to_owned(),
            ));
        }
        for entry in &entries {
            endpoint(entry)?;
            if Uri::try_from(format!("http://{entry}"))
                .ok()
                .and_then(|uri| uri.port_u16())
                .is_none()
            {
                return Err(ConnectError::Address(
                    entry.clone(),
                    "a peer address needs a port".to_owned(),
                ));
            }
        }
        // A random start, so that the clients of one service do not all
        // begin with its first replica.
        let start = RandomState::new().build_hasher().finish() as usize;
        Ok(Self {
            entries: entries.into(),
            next: Arc::new(AtomicUsize::new(start)),
        })
    }

    fn first(&self) -> &str {
        &self.entries[0]
    }

    /// Connects to the next replica in turn that answers. Every entry is
    /// resolved afresh, so a DNS name follows its replicas as they change.
    async fn connect(
        &self,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
        let mut candidates = Vec::new();
        let mut last_error = None;
        for entry in self.entries.iter() {
            let (host, port) = host_and_port(entry)?;
            match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(found) => candidates.extend(found.map(|addr| (host.clone(), addr))),
                Err(error) => last_error = Some(error),
            }
        }
        if candidates.is_empty() {
            return Err(last_error.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no peer address resolved")
            }));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        candidates.rotate_left(start);
        for (host, addr) in candidates {
            match tls_connect(&host, addr, config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(error) => {
                    tracing::debug!(%addr, %error, "peer replica did not answer; trying the next");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("no peer replica answered")))
    }
}

/// An entry's host (without IPv6 brackets) and port.
fn host_and_port(entry: &str) -> Result<(String, u16), std::io::Error> {
    let uri = Uri::try_from(format!("http://{entry}"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    host_port_of(&uri)
}

fn endpoint(addr: &str) -> Result<Endpoint, ConnectError> {
    // The scheme is http because TLS is done by our connector, not tonic.
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ConnectError::Address(addr.to_owned(), e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

fn connector(
    source: Arc<SvidSource>,
    authorizer: ServerAuthorizer,
    replicas: Replicas,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let source = source.clone();
        let authorizer = authorizer.clone();
        let replicas = replicas.clone();
        async move {
            let config = source
                .client_config(authorizer)
                .map_err(std::io::Error::other)?;
            replicas.connect(Arc::new(config)).await
        }
    })
}

/// The endpoint's host (without IPv6 brackets) and port.
fn host_port_of(uri: &Uri) -> Result<(String, u16), std::io::Error> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let host = uri.host().ok_or_else(|| invalid("endpoint has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri
        .port_u16()
        .ok_or_else(|| invalid("endpoint has no port"))?;
    Ok((host, port))
}

/// TLS over TCP to `addr`, naming `host` in the handshake.
async fn tls_connect(
    host: &str,
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "endpoint host is not a valid name",
        )
    })?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    Ok(TokioIo::new(tls))
}

/// How long one replica may take to accept a connection before the next
/// is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Flattens an error and its sources into one line, for CLI output.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_address_is_one_or_more_host_ports() {
        let one = Replicas::parse("127.0.0.1:50054").unwrap();
        assert_eq!(&*one.entries, ["127.0.0.1:50054"]);
        let several = Replicas::parse(" a.example:1, b.example:2 ,,[::1]:3").unwrap();
        assert_eq!(&*several.entries, ["a.example:1", "b.example:2", "[::1]:3"]);
        assert_eq!(several.first(), "a.example:1");
        for refused in ["", " , ", "no-port", "a:1,no-port", "a:1,b:x"] {
            assert!(
                matches!(Replicas::parse(refused), Err(ConnectError::Address(..))),
                "{refused:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_replica_that_refuses_is_passed_over_for_one_that_answers() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let dead_addr = {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            closed.local_addr().unwrap()
        };
        let accepted = tokio::spawn(async move {
            let mut count = 0;
            while let Ok(Ok((_, _))) =
                tokio::time::timeout(Duration::from_secs(2), live.accept()).await
            {
                count += 1;
            }
            count
        });
        let replicas = Replicas::parse(&format!("{dead_addr},{live_addr}")).unwrap();
        let provider = crate::tls::crypto_provider();
        let config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        // Whichever replica's turn it is, each attempt reaches the live one
        // once (the handshake then fails: the listener speaks no TLS, which
        // is beside the point here).
        for _ in 0..4 {
            let attempt =
                tokio::time::timeout(Duration::from_secs(1), replicas.connect(config.clone()))
                    .await;
            assert!(matches!(attempt, Ok(Err(_))), "{attempt:?}");
        }
        assert_eq!(accepted.await.unwrap(), 4);
    }
}
