//! X.509-SVIDs and trust bundles loaded from PEM files, and the X.509-SVID
//! leaf rules (`standards/X509-SVID.md`) that every peer certificate is held to.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{SpiffeId, SpiffeIdError};

/// Why an SVID, a key or a bundle could not be loaded or is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("certificate is not valid DER X.509: {0}")]
    BadCertificate(String),
    #[error("the private key does not match the certificate or is unsupported: {0}")]
    BadKey(String),
    #[error("trust bundle {path} is unusable: {reason}")]
    BadBundle { path: PathBuf, reason: String },
    #[error("leaf has {0} URI SANs; an X.509-SVID has exactly one")]
    UriSanCount(usize),
    #[error("leaf URI SAN is not a SPIFFE ID: {0}")]
    BadSpiffeId(#[from] SpiffeIdError),
    #[error("leaf is a CA certificate; an X.509-SVID leaf must have CA=false")]
    LeafIsCa,
    #[error("leaf key usage must include digitalSignature and exclude keyCertSign and cRLSign")]
    LeafKeyUsage,
}

/// The paths of one workload's SVID, its key and the trust bundle it trusts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SvidPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key of the leaf.
    pub key: PathBuf,
    /// PEM trust bundle: the CA certificates peers must chain to.
    pub bundle: PathBuf,
}

/// A loaded X.509-SVID and the trust bundle beside it.
#[derive(Debug)]
pub struct SvidMaterial {
    /// The SPIFFE ID in the leaf.
    pub id: SpiffeId,
    /// The chain and signing key, ready for rustls.
    pub certified_key: Arc<CertifiedKey>,
    /// The trust anchors peers are verified against.
    pub roots: Arc<RootCertStore>,
}

impl SvidMaterial {
    /// Reads and validates the SVID, its key and the bundle.
    pub fn load(paths: &SvidPaths, provider: &CryptoProvider) -> Result<Self, SvidError> {
        let chain = read_certs(&paths.cert)?;
        let key = PrivateKeyDer::from_pem_file(&paths.key).map_err(|source| SvidError::Read {
            path: paths.key.clone(),
            source,
        })?;
        let leaf = chain
            .first()
            .ok_or_else(|| SvidError::NoCertificate(paths.cert.clone()))?;
        let id = leaf_spiffe_id(leaf)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| SvidError::BadKey(e.to_string()))?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        certified_key
            .keys_match()
            .map_err(|e| SvidError::BadKey(e.to_string()))?;
        let roots = load_bundle(&paths.bundle)?;
        Ok(Self {
            id,
            certified_key: Arc::new(certified_key),
            roots: Arc::new(roots),
        })
    }
}

/// Reads a PEM trust bundle into a root store; every certificate must parse.
pub fn load_bundle(path: &Path) -> Result<RootCertStore, SvidError> {
    let certs = read_certs(path)?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| SvidError::BadBundle {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let read_err = |source| SvidError::Read {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    if certs.is_empty() {
        return Err(SvidError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Applies the X.509-SVID leaf rules to `der` and returns its SPIFFE ID:
/// exactly one URI SAN holding a SPIFFE ID (DNS and IP SANs may sit beside
/// it), not a CA, key usage with digitalSignature and without keyCertSign
/// or cRLSign. Chain and validity period are checked by the TLS verifier.
pub fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::BadCertificate(e.to_string()))?;
    let mut uris = Vec::new();
    let mut key_usage_ok = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                uris.extend(san.general_names.iter().filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                }));
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(SvidError::LeafIsCa),
            ParsedExtension::KeyUsage(ku) => {
                key_usage_ok = ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign();
            }
            _ => {}
        }
    }
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    if !key_usage_ok {
        return Err(SvidError::LeafKeyUsage);
    }
    Ok(SpiffeId::parse(uris[0])?)
}
