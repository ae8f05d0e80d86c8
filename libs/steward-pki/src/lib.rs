//! A small certificate authority for development and tests: a root CA that
//! issues X.509-SVIDs following the SPIFFE X.509-SVID specification.
//!
//! Production issuance (intermediates, keys encrypted at rest, rotation) is
//! the credential broker's job; this crate gives `steward dev up` and the
//! test suites real certificates without any external tool.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid subject alternative name {0:?}")]
    BadSan(String),
}

/// What to put in a leaf certificate. [`LeafSpec::svid`] gives a compliant
/// X.509-SVID; tests change fields to make non-compliant ones on purpose.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub uri_sans: Vec<String>,
    pub dns_sans: Vec<String>,
    pub ip_sans: Vec<IpAddr>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// Mark the leaf as a CA (never valid for an SVID; for negative tests).
    pub ca: bool,
}

impl LeafSpec {
    /// A compliant X.509-SVID for `spiffe_id`, valid from a minute ago (clock
    /// skew) for `ttl`.
    pub fn svid(spiffe_id: &str, ttl: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            uri_sans: vec![spiffe_id.to_owned()],
            dns_sans: Vec::new(),
            ip_sans: Vec::new(),
            not_before: now - Duration::minutes(1),
            not_after: now + ttl,
            ca: false,
        }
    }

    /// Adds DNS and IP SANs so standard gRPC clients can verify the server
    /// by host name (the X.509-SVID spec allows SANs of other types).
    pub fn with_hosts(mut self, hosts: &[String]) -> Self {
        for host in hosts {
            match host.parse::<IpAddr>() {
                Ok(ip) => self.ip_sans.push(ip),
                Err(_) => self.dns_sans.push(host.clone()),
            }
        }
        self
    }
}

/// A leaf certificate and its freshly generated PKCS#8 key.
#[derive(Debug, Clone)]
pub struct IssuedLeaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// A self-signed root CA for one trust domain.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a root CA (ECDSA P-256) for `trust_domain`, valid for
    /// `validity`. Its URI SAN is the trust domain ID, as the X.509-SVID spec
    /// recommends for signing certificates.
    pub fn generate(trust_domain: &str, validity: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Steward");
        dn.push(
            DnType::CommonName,
            format!("Steward root CA for {trust_domain}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(1);
        params.not_after = now + validity;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// Loads a CA from its PEM certificate and PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// The CA certificate, PEM: this is the trust bundle.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM PKCS#8.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf with a new ECDSA P-256 key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<IssuedLeaf, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Steward");
        params.distinguished_name = dn;
        params.subject_alt_names = spec
            .uri_sans
            .iter()
            .map(|u| uri_san(u))
            .chain(spec.dns_sans.iter().map(|d| {
                d.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| PkiError::BadSan(d.clone()))
            }))
            .chain(spec.ip_sans.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, _>>()?;
        if spec.ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
        } else {
            params.is_ca = IsCa::ExplicitNoCa;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::KeyAgreement,
            ];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
        }
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedLeaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, PkiError> {
    uri.to_owned()
        .try_into()
        .map(SanType::URI)
        .map_err(|_| PkiError::BadSan(uri.to_owned()))
}
