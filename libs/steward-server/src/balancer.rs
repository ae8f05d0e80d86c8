//! A TCP balancer for running a service's replicas on one machine: `steward
//! dev up --postgres` puts one in front of each service's replicas, and the
//! failover test does the same. Each connection goes to the next backend in
//! turn that accepts it, and its bytes are copied both ways, so TLS passes
//! through and callers stay known by their certificates, as with HAProxy
//! in TCP mode or a Kubernetes Service.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A listening balancer; it stops when dropped.
pub struct Balancer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Listens on `listen` (port 0: any) for `backends`.
    pub async fn bind(listen: SocketAddr, backends: Vec<SocketAddr>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let backends: Arc<[SocketAddr]> = backends.into();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let start = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(relay(inbound, Arc::clone(&backends), start));
            }
        });
        Ok(Self { addr, task })
    }
}

/// Copies `inbound` to the first backend, from `start` on, that accepts.
async fn relay(mut inbound: TcpStream, backends: Arc<[SocketAddr]>, start: usize) {
    for i in 0..backends.len() {
        let backend = backends[(start + i) % backends.len()];
        let connected = tokio::time::timeout(CONNECT, TcpStream::connect(backend)).await;
        if let Ok(Ok(mut outbound)) = connected {
            let _ = outbound.set_nodelay(true);
            let _ = inbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}

/// How long a backend may take to accept before the next is tried.
const CONNECT: Duration = Duration::from_secs(1);

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
