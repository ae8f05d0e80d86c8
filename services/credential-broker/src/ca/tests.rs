use rcgen::{CertificateParams, KeyPair, SanType};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::keys::LocalKek;

const ID: &str = "spiffe://steward.test/w/payments";

fn hierarchy() -> CaHierarchy {
    CaHierarchy::generate(
        "steward.test",
        OffsetDateTime::now_utc(),
        Duration::days(365),
        Duration::days(30),
    )
    .unwrap()
}

fn csr(key: &KeyPair, sans: &[&str], ca: bool) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI(s.to_string().try_into().unwrap()))
        .collect();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

fn pem_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

#[test]
fn an_svid_follows_the_x509_svid_spec_and_chains_to_the_bundle() {
    let ca = hierarchy();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = OffsetDateTime::now_utc();
    let svid = ca
        .issue_x509_svid(&csr(&key, &[ID], false), ID, &[], Duration::hours(1), now)
        .unwrap();
    let (_, leaf) = X509Certificate::from_der(&svid.cert_der).unwrap();

    let sans = leaf.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<_> = sans
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [ID]);
    assert!(!leaf.is_ca());
    let usage = leaf.key_usage().unwrap().unwrap().value;
    assert!(usage.digital_signature());
    assert!(!usage.key_cert_sign() && !usage.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(leaf.raw_serial_as_string().replace(':', ""), svid.serial);
    assert_eq!(svid.serial.len(), 32);
    let life = leaf.validity().not_after.to_datetime() - now;
    assert!(life <= Duration::hours(1) && life > Duration::minutes(59));
    // The leaf certifies the CSR's key, never one of the broker's.
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
    );

    // Leaf ← intermediate ← root, and the bundle is the root.
    let (_, intermediate) = X509Certificate::from_der(&svid.chain_der[1]).unwrap();
    let bundle = ca.bundle_der();
    let (_, root) = X509Certificate::from_der(&bundle[0]).unwrap();
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();
    root.verify_signature(None).unwrap();
    assert!(intermediate.is_ca() && root.is_ca());
    assert_eq!(pem_der(ca.root_pem()), bundle[0]);
}

#[test]
fn an_svid_never_outlives_its_intermediate() {
    let ca = hierarchy();
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let svid = ca
        .issue_x509_svid(
            &csr(&key, &[ID], false),
            ID,
            &[],
            Duration::days(400),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    assert_eq!(svid.not_after, ca.intermediate_not_after());
}

#[test]
fn bad_csrs_are_refused_precisely() {
    let ca = hierarchy();
    let now = OffsetDateTime::now_utc();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issue = |der: &[u8]| {
        ca.issue_x509_svid(der, ID, &[], Duration::hours(1), now)
            .unwrap_err()
    };

    assert_eq!(issue(b"not a csr"), CsrError::Malformed);
    assert!(matches!(
        issue(&csr(&key, &["spiffe://steward.test/w/other"], false)),
        CsrError::WrongIdentity(m) if m.contains("may have only")
    ));
    assert!(matches!(
        issue(&csr(&key, &[ID, "spiffe://steward.test/w/b"], false)),
        CsrError::WrongIdentity(m) if m.contains("exactly one")
    ));
    assert!(matches!(
        issue(&csr(&key, &[], false)),
        CsrError::WrongIdentity(_)
    ));
    assert_eq!(issue(&csr(&key, &[ID], true)), CsrError::CaRequested);

    // A CSR whose signature does not match its content.
    let mut tampered = csr(&key, &[ID], false);
    let at = tampered.len() - 5;
    tampered[at] ^= 0x01;
    assert_eq!(issue(&tampered), CsrError::BadSignature);

    // RSA: 2048 bits are accepted, 1024 are not (CSRs made with openssl).
    let weak = pem_der(include_str!("rsa1024.csr.pem"));
    assert!(matches!(
        ca.issue_x509_svid(&weak, "spiffe://steward.test/w/weak", &[], Duration::hours(1), now),
        Err(CsrError::WeakKey(m)) if m.contains("1024")
    ));
    let rsa = pem_der(include_str!("rsa2048.csr.pem"));
    let svid = ca
        .issue_x509_svid(
            &rsa,
            "spiffe://steward.test/w/rsa",
            &[],
            Duration::hours(1),
            now,
        )
        .unwrap();
    assert!(!svid.cert_der.is_empty());
    for e in [
        CsrError::Malformed,
        CsrError::BadSignature,
        CsrError::CaRequested,
        CsrError::WeakKey("x".into()),
    ] {
        assert!(e.to_string().starts_with("csr: "), "{e}");
    }
}

#[test]
fn the_hierarchy_is_stored_sealed_and_opens_only_with_its_kek() {
    let ca = hierarchy();
    let (kek, _) = LocalKek::generate().unwrap();
    let sealed = ca.seal(&kek).unwrap();
    let root_key = ca.root.issuer.key().serialize_der();
    assert!(
        !sealed
            .root
            .sealed_key
            .windows(root_key.len())
            .any(|w| w == root_key.as_slice()),
        "the root key is stored in the clear"
    );
    let opened = CaHierarchy::open("steward.test", &sealed, &kek).unwrap();
    assert_eq!(opened.bundle_der(), ca.bundle_der());
    // The reopened CA issues SVIDs that chain to the same root.
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let svid = opened
        .issue_x509_svid(
            &csr(&key, &[ID], false),
            ID,
            &[],
            Duration::hours(1),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let (_, intermediate) = X509Certificate::from_der(&svid.chain_der[1]).unwrap();
    let bundle = ca.bundle_der();
    let (_, root) = X509Certificate::from_der(&bundle[0]).unwrap();
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();

    let (other, _) = LocalKek::generate().unwrap();
    assert!(matches!(
        CaHierarchy::open("steward.test", &sealed, &other),
        Err(CaError::Key(KeyError::WrongKek { .. }))
    ));
    let mut swapped = sealed.clone();
    swapped.root.sealed_key = sealed.intermediate.sealed_key.clone();
    assert!(CaHierarchy::open("steward.test", &swapped, &kek).is_err());
}

#[test]
fn a_key_the_broker_made_is_certified_as_a_csr_key_would_be() {
    let ca = hierarchy();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let now = OffsetDateTime::now_utc();
    let from_key = ca
        .issue_x509_svid_for_key(&key, ID, &[], Duration::hours(1), now)
        .unwrap();
    let from_csr = ca
        .issue_x509_svid(&csr(&key, &[ID], false), ID, &[], Duration::hours(1), now)
        .unwrap();
    let (_, a) = X509Certificate::from_der(&from_key.cert_der).unwrap();
    let (_, b) = X509Certificate::from_der(&from_csr.cert_der).unwrap();
    // The same key, the same SPIFFE ID, the same extensions and issuer.
    assert_eq!(
        a.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    assert_eq!(a.public_key().raw, b.public_key().raw);
    assert_eq!(a.issuer(), b.issuer());
    let names = |c: &X509Certificate<'_>| {
        c.extensions()
            .iter()
            .map(|e| (e.oid.to_id_string(), e.critical, e.value.to_vec()))
            .filter(|(oid, ..)| oid != "2.5.29.14")
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(from_key.chain_der[1], from_csr.chain_der[1]);
}
