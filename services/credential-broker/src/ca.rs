//! The broker's certificate authority for one trust domain: a root that
//! signs intermediates, and the current intermediate that signs
//! X.509-SVIDs from callers' CSRs, per the SPIFFE X.509-SVID specification.
//!
//! - The root and intermediate are CA certificates whose only URI SAN is
//!   the trust domain's SPIFFE ID (`spiffe://<td>`), with keyCertSign and
//!   cRLSign. The trust bundle is the root(s); the intermediate travels in
//!   each SVID's chain.
//! - A leaf has exactly one URI SAN (the SPIFFE ID), CA=false,
//!   digitalSignature, no keyCertSign or cRLSign, serverAuth and
//!   clientAuth, a random 128-bit serial, and never outlives its issuer.
//! - The caller's private key never leaves the caller: the leaf certifies
//!   the public key of a CSR whose signature verifies, and whose key is
//!   ECDSA P-256 or P-384, Ed25519, or RSA of at least 2,048 bits.
//!
//! Private keys are kept sealed ([`crate::keys`]) whenever they are stored.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};
use x509_parser::public_key::PublicKey;

use crate::keys::{KeyEncryption, KeyError};

/// Why a CSR was refused. Each message starts with the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    #[error("csr: is not a DER-encoded PKCS#10 certification request")]
    Malformed,
    #[error("csr: its signature does not verify with its own public key")]
    BadSignature,
    #[error("csr: {0}")]
    WeakKey(String),
    #[error("csr: requests a CA certificate; SVIDs are never CAs")]
    CaRequested,
    #[error("csr: {0}")]
    WrongIdentity(String),
    #[error("csr: {0}")]
    Unsupported(String),
}

/// Why the CA could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("stored CA material is invalid: {0}")]
    Stored(String),
}

/// One CA certificate and its key.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
    not_after: OffsetDateTime,
}

/// A CA's certificate and its key sealed for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCert {
    pub cert_pem: String,
    pub sealed_key: Vec<u8>,
    pub kek_id: String,
}

/// The whole hierarchy, sealed for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedCa {
    pub root: SealedCert,
    pub intermediate: SealedCert,
}

/// An issued X.509-SVID.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    /// The leaf, DER.
    pub cert_der: Vec<u8>,
    /// Leaf then intermediate, DER: what the holder presents.
    pub chain_der: Vec<Vec<u8>>,
    /// Lowercase hex, as recorded on the lease and in evidence.
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A trust domain's root and current intermediate.
pub struct CaHierarchy {
    trust_domain: String,
    root: Signer,
    intermediate: Signer,
}

impl std::fmt::Debug for CaHierarchy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaHierarchy")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn uri(text: &str) -> Result<SanType, CaError> {
    Ok(SanType::URI(text.to_owned().try_into()?))
}

fn ca_params(
    trust_domain: &str,
    name: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: Option<u8>,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Steward");
    dn.push(
        DnType::CommonName,
        format!("Steward {name} for {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![uri(&format!("spiffe://{trust_domain}"))?];
    params.serial_number = Some(random_serial()?.0);
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    Ok(params)
}

/// A positive random 128-bit serial, and its hex.
fn random_serial() -> Result<(SerialNumber, String), CaError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CaError::Key(KeyError::Random))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x40;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok((SerialNumber::from_slice(&bytes), hex))
}

fn not_after_of(cert_der: &[u8]) -> Result<OffsetDateTime, CaError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| CaError::Stored(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

impl Signer {
    fn seal(&self, kek: &dyn KeyEncryption, purpose: &str) -> Result<SealedCert, CaError> {
        Ok(SealedCert {
            cert_pem: self.cert_pem.clone(),
            sealed_key: kek.seal(purpose, self.issuer.key().serialize_der().as_slice())?,
            kek_id: kek.kek_id().to_owned(),
        })
    }

    fn open(sealed: &SealedCert, kek: &dyn KeyEncryption, purpose: &str) -> Result<Self, CaError> {
        let der = kek.open(purpose, &sealed.sealed_key)?;
        let key = KeyPair::try_from(der.as_slice())
            .map_err(|e| CaError::Stored(format!("{purpose} key: {e}")))?;
        let issuer = Issuer::from_ca_cert_pem(&sealed.cert_pem, key)?;
        let cert_der = pem_to_der(&sealed.cert_pem)?;
        Ok(Self {
            issuer,
            not_after: not_after_of(&cert_der)?,
            cert_der,
            cert_pem: sealed.cert_pem.clone(),
        })
    }
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::Stored(e.to_string()))?;
    Ok(parsed.contents)
}

impl CaHierarchy {
    /// Generates a root (valid `root_validity`) and an intermediate (valid
    /// `intermediate_validity`, within the root's life) for `trust_domain`,
    /// both ECDSA P-256.
    pub fn generate(
        trust_domain: &str,
        now: OffsetDateTime,
        root_validity: Duration,
        intermediate_validity: Duration,
    ) -> Result<Self, CaError> {
        let not_before = now - Duration::minutes(1);
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(
            trust_domain,
            "root CA",
            not_before,
            now + root_validity,
            None,
        )?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root = Signer {
            cert_der: root_cert.der().to_vec(),
            cert_pem: root_cert.pem(),
            not_after: root_params.not_after,
            issuer: Issuer::new(root_params, root_key),
        };
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            intermediate: Self::new_intermediate(trust_domain, &root, now, intermediate_validity)?,
            root,
        })
    }

    fn new_intermediate(
        trust_domain: &str,
        root: &Signer,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<Signer, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let not_after = (now + validity).min(root.not_after);
        let params = ca_params(
            trust_domain,
            "intermediate CA",
            now - Duration::minutes(1),
            not_after,
            Some(0),
        )?;
        let cert = params.signed_by(&key, &root.issuer)?;
        Ok(Signer {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// A new intermediate signed by this root, sealed under `kek`, and when
    /// it expires: what an intermediate rotation stores.
    pub fn sealed_new_intermediate(
        &self,
        kek: &dyn KeyEncryption,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<(SealedCert, OffsetDateTime), CaError> {
        let signer = Self::new_intermediate(&self.trust_domain, &self.root, now, validity)?;
        Ok((signer.seal(kek, "ca/intermediate")?, signer.not_after))
    }

    /// The hierarchy with its keys sealed under `kek`, for storage.
    pub fn seal(&self, kek: &dyn KeyEncryption) -> Result<SealedCa, CaError> {
        Ok(SealedCa {
            root: self.root.seal(kek, "ca/root")?,
            intermediate: self.intermediate.seal(kek, "ca/intermediate")?,
        })
    }

    /// Opens stored material; a wrong KEK or altered key is an error.
    pub fn open(
        trust_domain: &str,
        sealed: &SealedCa,
        kek: &dyn KeyEncryption,
    ) -> Result<Self, CaError> {
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            root: Signer::open(&sealed.root, kek, "ca/root")?,
            intermediate: Signer::open(&sealed.intermediate, kek, "ca/intermediate")?,
        })
    }

    /// The trust bundle: the root certificate, DER.
    pub fn bundle_der(&self) -> Vec<Vec<u8>> {
        vec![self.root.cert_der.clone()]
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> &str {
        &self.root.cert_pem
    }

    /// The trust domain it serves.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When the root expires.
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root.not_after
    }

    /// When the current intermediate expires.
    pub fn intermediate_not_after(&self) -> OffsetDateTime {
        self.intermediate.not_after
    }

    /// Issues an X.509-SVID for `spiffe_id` certifying the CSR's key, valid
    /// from now for `ttl` (never beyond the intermediate).
    pub fn issue_x509_svid(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CsrError> {
        let requested = check_csr(csr_der, spiffe_id)?;
        let issued = self.certify(
            &requested.params.public_key,
            requested.rsa,
            spiffe_id,
            dns_names,
            ttl,
            now,
        )?;
        // The leaf must certify exactly the key the CSR proved it holds.
        let (_, leaf) =
            X509Certificate::from_der(&issued.cert_der).map_err(|_| CsrError::Malformed)?;
        if leaf.public_key().raw != requested.spki.as_slice() {
            return Err(CsrError::Unsupported(
                "its key algorithm and signature algorithm do not match".to_owned(),
            ));
        }
        Ok(issued)
    }

    /// Issues an X.509-SVID certifying `key`, an EC key the broker made
    /// itself (the Workload API's and the bundle endpoint's): there is no
    /// CSR to check, so neither a signature made only to be verified nor a
    /// request to parse is paid for.
    pub fn issue_x509_svid_for_key(
        &self,
        key: &rcgen::KeyPair,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CsrError> {
        self.certify(key, false, spiffe_id, dns_names, ttl, now)
    }

    /// The leaf for `public_key`: the SPIFFE ID its one URI SAN, from now
    /// for `ttl` (never beyond the intermediate).
    fn certify(
        &self,
        public_key: &impl rcgen::PublicKeyData,
        rsa: bool,
        spiffe_id: &str,
        dns_names: &[String],
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, CsrError> {
        let (serial_number, serial) =
            random_serial().map_err(|e| CsrError::Unsupported(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Steward");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            uri(spiffe_id)
                .map_err(|_| CsrError::WrongIdentity(format!("{spiffe_id:?} is not a URI")))?,
        ];
        // The SPIFFE ID stays the one URI SAN (the X.509-SVID spec); DNS
        // names may stand beside it.
        for name in dns_names {
            let name = rcgen::string::Ia5String::try_from(name.as_str())
                .map_err(|_| CsrError::Unsupported(format!("{name:?} is not a DNS name")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if rsa {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(serial_number);
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::seconds(30);
        let not_after = (now + ttl).min(self.intermediate.not_after);
        params.not_after = not_after;
        let cert = params
            .signed_by(public_key, &self.intermediate.issuer)
            .map_err(|e| CsrError::Unsupported(e.to_string()))?;
        let cert_der = cert.der().to_vec();
        Ok(IssuedSvid {
            chain_der: vec![cert_der.clone(), self.intermediate.cert_der.clone()],
            cert_der,
            serial,
            not_after,
        })
    }
}

/// A CSR that passed every check.
struct Requested {
    params: CertificateSigningRequestParams,
    /// Its SubjectPublicKeyInfo, DER.
    spki: Vec<u8>,
    rsa: bool,
}

fn check_csr(csr_der: &[u8], spiffe_id: &str) -> Result<Requested, CsrError> {
    let (rest, csr) =
        X509CertificationRequest::from_der(csr_der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let spki = info.subject_pki.raw.to_vec();
    let rsa = match info.subject_pki.parsed() {
        Ok(PublicKey::RSA(key)) => {
            let bits = key.key_size();
            if bits < 2048 {
                return Err(CsrError::WeakKey(format!(
                    "RSA keys must have at least 2048 bits; this one has {bits}"
                )));
            }
            true
        }
        Ok(PublicKey::EC(point)) => {
            let bits = point.key_size();
            if bits != 256 && bits != 384 {
                return Err(CsrError::WeakKey(format!(
                    "EC keys must be P-256 or P-384; this one has {bits} bits"
                )));
            }
            false
        }
        Ok(PublicKey::Unknown(_))
            if info.subject_pki.algorithm.algorithm.to_id_string() == "1.3.101.112" =>
        {
            false
        }
        _ => {
            return Err(CsrError::WeakKey(
                "the key must be ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more"
                    .to_owned(),
            ));
        }
    };
    let params = CertificateSigningRequestParams::from_der(&csr_der.to_vec().into()).map_err(
        |e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
            rcgen::Error::UnsupportedExtension => {
                CsrError::Unsupported("requests an extension Steward does not issue".to_owned())
            }
            rcgen::Error::UnsupportedSignatureAlgorithm => {
                CsrError::Unsupported("its signature algorithm is not supported".to_owned())
            }
            _ => CsrError::Malformed,
        },
    )?;
    if matches!(params.params.is_ca, IsCa::Ca(_)) {
        return Err(CsrError::CaRequested);
    }
    let sans = &params.params.subject_alt_names;
    let uris: Vec<&str> = sans
        .iter()
        .filter_map(|s| match s {
            SanType::URI(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => {
            return Err(CsrError::WrongIdentity(format!(
                "has no URI SAN; it must have exactly one, {spiffe_id}"
            )));
        }
        [one] if *one == spiffe_id => {}
        [one] => {
            return Err(CsrError::WrongIdentity(format!(
                "asks for {one}, but this caller may have only {spiffe_id}"
            )));
        }
        _ => {
            return Err(CsrError::WrongIdentity(format!(
                "has {} URI SANs; an X.509-SVID has exactly one",
                uris.len()
            )));
        }
    }
    Ok(Requested { params, spki, rsa })
}

#[cfg(test)]
mod tests;
