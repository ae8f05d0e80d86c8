//! The mTLS listener: accepts TCP connections, runs each TLS handshake on its
//! own task (a slow or hostile client never holds up the accept loop), and
//! yields connections that carry the peer's verified SPIFFE ID.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::spiffe_id::SpiffeId;
use crate::svid::leaf_spiffe_id;
use crate::tls::SvidSource;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified identity of the peer on a connection, inserted into every
/// request's extensions by the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The SPIFFE ID from the peer's verified X.509-SVID.
    pub spiffe_id: SpiffeId,
    /// The SPIFFE ID this server presented on the connection.
    pub server_id: SpiffeId,
    /// The peer's socket address, for logs only: never for authorisation.
    pub remote_addr: SocketAddr,
}

impl PeerIdentity {
    /// The peer identity attached to a tonic request, if the request came
    /// through a Steward mTLS listener.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Self> {
        request.extensions().get::<Self>()
    }

    /// The verified caller's SPIFFE ID, as text: UNAUTHENTICATED for a
    /// request that did not come through a Steward mTLS listener.
    pub fn caller<T>(request: &tonic::Request<T>) -> Result<String, tonic::Status> {
        Self::required(request).map(|p| p.spiffe_id.to_string())
    }

    /// The verified peer, or UNAUTHENTICATED.
    pub fn required<T>(request: &tonic::Request<T>) -> Result<&Self, tonic::Status> {
        Self::of(request).ok_or_else(|| tonic::Status::unauthenticated("no verified peer identity"))
    }
}

/// A server-side TLS connection whose peer has been verified.
#[derive(Debug)]
pub struct SpiffeTlsStream {
    inner: TlsStream<TcpStream>,
    peer: PeerIdentity,
}

impl SpiffeTlsStream {
    /// The peer identity of this connection.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

impl tonic::transport::server::Connected for SpiffeTlsStream {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for SpiffeTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SpiffeTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream of verified connections from [`incoming`].
pub type Incoming = tokio_stream::wrappers::ReceiverStream<Result<SpiffeTlsStream, io::Error>>;

/// Accepts mTLS connections on `listener` until the returned stream is
/// dropped. Failed handshakes are logged with the remote address and
/// dropped; they never surface as stream errors (tonic would stop serving).
/// The handle finishes once the listening socket is closed, so awaiting it
/// after dropping the stream means the port is free again.
pub fn incoming(
    listener: TcpListener,
    source: Arc<SvidSource>,
) -> (Incoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(128);
    let accept_loop = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (config, server_id) = match source.server_config() {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::error!(%error, "no usable server tls configuration");
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = TlsAcceptor::from(config).accept(tcp);
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::info!(%remote_addr, %error, "tls handshake rejected");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote_addr, "tls handshake timed out");
                        return;
                    }
                };
                match peer_identity(&stream, server_id, remote_addr) {
                    Some(peer) => {
                        tracing::debug!(peer = %peer.spiffe_id, %remote_addr, "mtls connection accepted");
                        let _ = tx
                            .send(Ok(SpiffeTlsStream {
                                inner: stream,
                                peer,
                            }))
                            .await;
                    }
                    None => tracing::warn!(%remote_addr, "verified connection without a spiffe id"),
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), accept_loop)
}

fn peer_identity(
    stream: &TlsStream<TcpStream>,
    server_id: SpiffeId,
    remote_addr: SocketAddr,
) -> Option<PeerIdentity> {
    let (_, conn) = stream.get_ref();
    let peer_leaf = conn.peer_certificates()?.first()?;
    let spiffe_id = leaf_spiffe_id(peer_leaf).ok()?;
    Some(PeerIdentity {
        spiffe_id,
        server_id,
        remote_addr,
    })
}
