//! rustls configurations built from an SVID on disk, rebuilt when the files
//! change so certificates rotate without a restart.
//!
//! [`SvidSource`] stats the three files on every new connection (three
//! `stat` calls, microseconds) and reloads when any of them changed. A
//! half-written rotation (key and certificate that do not match, a bundle
//! that does not parse) is logged and the previous material kept, so a
//! rotation can never take a server off the air.

mod verify;

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};

pub use verify::{ServerAuthorizer, SpiffeClientVerifier, SpiffeServerVerifier};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{SvidError, SvidMaterial, SvidPaths};

/// The ALPN protocol every Steward endpoint speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Svid(#[from] SvidError),
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("tls configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The process-wide crypto provider: ring, and nothing else.
///
/// rustls 0.23.48 deprecates ring's provider because ring has no
/// post-quantum key exchange; that needs aws-lc-rs, which would put a
/// second provider (and a C toolchain's build) in the graph. The one
/// provider stays ring until the key-exchange move is made deliberately.
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

type Stamp = [Option<(SystemTime, u64)>; 3];

fn stamp(paths: &SvidPaths) -> Stamp {
    let one = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    [one(&paths.cert), one(&paths.key), one(&paths.bundle)]
}

struct Cached {
    stamp: Stamp,
    material: Arc<SvidMaterial>,
    server: Option<Arc<ServerConfig>>,
}

/// An SVID and bundle on disk, reloaded when the files change.
pub struct SvidSource {
    paths: SvidPaths,
    provider: Arc<CryptoProvider>,
    accepted: Vec<TrustDomain>,
    cached: Mutex<Cached>,
}

impl std::fmt::Debug for SvidSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SvidSource")
            .field("paths", &self.paths)
            .field("accepted", &self.accepted)
            .finish_non_exhaustive()
    }
}

impl SvidSource {
    /// Loads the SVID now; fails if it is unusable. Peers are accepted from
    /// the SVID's own trust domain plus `extra_trust_domains`.
    pub fn load(
        paths: SvidPaths,
        extra_trust_domains: Vec<TrustDomain>,
    ) -> Result<Arc<Self>, TlsError> {
        let provider = crypto_provider();
        let stamp = stamp(&paths);
        let material = Arc::new(SvidMaterial::load(&paths, &provider)?);
        let mut accepted = vec![material.id.trust_domain().clone()];
        accepted.extend(extra_trust_domains);
        accepted.dedup();
        Ok(Arc::new(Self {
            paths,
            provider,
            accepted,
            cached: Mutex::new(Cached {
                stamp,
                material,
                server: None,
            }),
        }))
    }

    /// The trust domains whose clients servers accept.
    pub fn accepted_trust_domains(&self) -> &[TrustDomain] {
        &self.accepted
    }

    /// The current SVID material, reloaded first if the files changed.
    pub fn material(&self) -> Arc<SvidMaterial> {
        let mut cached = self.lock();
        self.refresh(&mut cached);
        cached.material.clone()
    }

    /// The server configuration for the next accepted connection, and the
    /// SPIFFE ID it presents.
    pub fn server_config(&self) -> Result<(Arc<ServerConfig>, SpiffeId), TlsError> {
        let mut cached = self.lock();
        self.refresh(&mut cached);
        let id = cached.material.id.clone();
        if let Some(config) = &cached.server {
            return Ok((config.clone(), id));
        }
        let config = Arc::new(self.build_server_config(&cached.material)?);
        cached.server = Some(config.clone());
        Ok((config, id))
    }

    /// A client configuration that presents this SVID and accepts servers
    /// the authorizer approves.
    pub fn client_config(&self, authorizer: ServerAuthorizer) -> Result<ClientConfig, TlsError> {
        let material = self.material();
        let verifier =
            SpiffeServerVerifier::new(material.roots.clone(), authorizer, &self.provider);
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(FixedCert(material.certified_key.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    fn build_server_config(&self, material: &SvidMaterial) -> Result<ServerConfig, TlsError> {
        let verifier = SpiffeClientVerifier::new(
            material.roots.clone(),
            self.accepted.clone(),
            self.provider.clone(),
        )?;
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(FixedCert(material.certified_key.clone())));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn refresh(&self, cached: &mut Cached) {
        let now = stamp(&self.paths);
        if now == cached.stamp {
            return;
        }
        match SvidMaterial::load(&self.paths, &self.provider) {
            Ok(material) => {
                tracing::info!(spiffe_id = %material.id, cert = %self.paths.cert.display(), "svid reloaded");
                cached.material = Arc::new(material);
                cached.server = None;
                cached.stamp = now;
            }
            Err(error) => {
                // Keep serving with the previous SVID; try again next time.
                tracing::warn!(%error, cert = %self.paths.cert.display(), "svid changed on disk but cannot be loaded; keeping the previous one");
            }
        }
    }
}

/// Presents one certificate whatever the client hello says (SNI is not used
/// to pick an identity: a Steward server has exactly one).
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
