//! rustls certificate verifiers that authenticate peers by SPIFFE ID.
//!
//! Both sides first run webpki path validation against the trust bundle
//! (signature chain, validity period, key usage purpose, end entity not a
//! CA), then apply the X.509-SVID leaf rules and check the SPIFFE ID. Host
//! names are never consulted: a Steward peer is its SPIFFE ID.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::leaf_spiffe_id;

/// Decides which server SPIFFE IDs a client accepts.
#[derive(Clone)]
pub enum ServerAuthorizer {
    /// Exactly this ID.
    Exact(SpiffeId),
    /// Any ID in this trust domain.
    MemberOf(TrustDomain),
    /// A custom predicate, with a description for error messages.
    Custom(Arc<dyn Fn(&SpiffeId) -> bool + Send + Sync>, String),
}

impl ServerAuthorizer {
    /// Whether `id` is an acceptable server identity.
    pub fn accepts(&self, id: &SpiffeId) -> bool {
        match self {
            Self::Exact(want) => want == id,
            Self::MemberOf(td) => id.trust_domain() == td,
            Self::Custom(f, _) => f(id),
        }
    }
}

impl fmt::Debug for ServerAuthorizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(id) => write!(f, "exactly {id}"),
            Self::MemberOf(td) => write!(f, "any member of {td}"),
            Self::Custom(_, what) => f.write_str(what),
        }
    }
}

/// A rejected peer: wraps the reason so it survives rustls's error type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PeerRejected(String);

fn rejected(reason: impl Into<String>) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRejected(
        reason.into(),
    )))))
}

/// Server side: requires a client X.509-SVID chaining to the bundle whose
/// SPIFFE ID belongs to an accepted trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    accepted: Vec<TrustDomain>,
}

impl SpiffeClientVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        accepted: Vec<TrustDomain>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let webpki = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        Ok(Self { webpki, accepted })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = leaf_spiffe_id(end_entity).map_err(|e| rejected(e.to_string()))?;
        if !self.accepted.iter().any(|td| td == id.trust_domain()) {
            return Err(rejected(format!(
                "client {id} is not in an accepted trust domain"
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Client side: requires the server's X.509-SVID to chain to the bundle and
/// its SPIFFE ID to satisfy the authorizer. The DNS name is ignored.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    authorizer: ServerAuthorizer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(
        roots: Arc<RootCertStore>,
        authorizer: ServerAuthorizer,
        provider: &CryptoProvider,
    ) -> Self {
        Self {
            roots,
            authorizer,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let id = leaf_spiffe_id(end_entity).map_err(|e| rejected(e.to_string()))?;
        if !self.authorizer.accepts(&id) {
            return Err(rejected(format!(
                "server {id} is not the expected identity ({:?})",
                self.authorizer
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
