//! tonic channels that speak mTLS with an SVID from disk and authenticate the
//! server by SPIFFE ID rather than host name.

use std::sync::Arc;
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

/// Opens a channel to `addr` (`host:port`), presenting the SVID from `source`
/// and accepting only a server the authorizer approves. The TLS config is
/// taken from `source` on every (re)connect, so rotated SVIDs are picked up.
pub async fn connect(
    source: Arc<SvidSource>,
    addr: &str,
    authorizer: ServerAuthorizer,
) -> Result<Channel, ConnectError> {
    endpoint(addr)?
        .connect_with_connector(connector(source, authorizer))
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
        async move { tls_connect(&uri, config).await }
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
    Ok(endpoint(addr)?.connect_with_connector_lazy(connector(source, authorizer)))
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
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |uri: Uri| {
        let source = source.clone();
        let authorizer = authorizer.clone();
        async move {
            let config = source
                .client_config(authorizer)
                .map_err(std::io::Error::other)?;
            tls_connect(&uri, Arc::new(config)).await
        }
    })
}

async fn tls_connect(
    uri: &Uri,
    config: Arc<rustls::ClientConfig>,
) -> Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
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
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| invalid("endpoint host is not a valid name"))?;
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(config).connect(server_name, tcp).await?;
    Ok(TokioIo::new(tls))
}

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
