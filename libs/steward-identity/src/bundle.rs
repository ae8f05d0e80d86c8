//! SPIFFE bundles in the format of the SPIFFE Trust Domain and Bundle
//! specification (section 4): a JWK Set with `spiffe_sequence` and
//! `spiffe_refresh_hint`, whose `x509-svid` keys each carry one CA
//! certificate in `x5c` (the X.509-SVID specification, section 6) and
//! whose `jwt-svid` keys each carry a `kid` (the JWT-SVID specification).
//!
//! Reading follows the specification's rule for what it does not know: a
//! key of an unknown `kty` or `use` is ignored, not refused. A key of a
//! known use that breaks its rules (no certificate, two certificates, a
//! certificate whose key is not the JWK's, a JWT key without `kid`) is
//! refused with its index, because a bundle is trust: half a bundle is
//! never installed.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::jwt::Jwk;
use crate::spiffe_id::TrustDomain;

/// The `use` of a key that authenticates X.509-SVIDs.
pub const X509_SVID_USE: &str = "x509-svid";
/// The `use` of a key that authenticates JWT-SVIDs.
pub const JWT_SVID_USE: &str = "jwt-svid";

/// A bundle document larger than this is refused before it is parsed.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// One trust domain's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeBundle {
    pub trust_domain: TrustDomain,
    /// CA certificates, DER.
    pub x509_authorities: Vec<Vec<u8>>,
    /// JWT-SVID signing keys (each with its `kid` and `use` `jwt-svid`).
    pub jwt_authorities: Vec<Jwk>,
    /// `spiffe_sequence`: 0 when the document has none.
    pub sequence: u64,
    /// `spiffe_refresh_hint`, in seconds.
    pub refresh_hint: Option<u64>,
}

/// Why a bundle document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("the bundle is not a JWK Set: {0}")]
    NotJwks(String),
    #[error("keys[{index}]: {reason}")]
    Key { index: usize, reason: String },
    #[error("x509 authority: {0}")]
    Authority(String),
}

#[derive(Serialize, Deserialize)]
struct Document {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
    keys: Vec<Value>,
}

/// A certificate's public key as JWK parameters: `kty` with `crv`, `x`,
/// `y` (EC) or `n`, `e` (RSA). `None` for a key type JWK cannot name here.
fn key_parameters(der: &[u8]) -> Result<Option<Jwk>, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| "x5c[0] is not a DER certificate".to_owned())?;
    let spki = cert.public_key();
    let parsed = spki
        .parsed()
        .map_err(|_| "the certificate's public key cannot be read".to_owned())?;
    Ok(match parsed {
        PublicKey::EC(point) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let (crv, size) = match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("P-256", 32),
                Some("1.3.132.0.34") => ("P-384", 48),
                _ => return Ok(None),
            };
            let data = point.data();
            if data.len() != 1 + 2 * size || data[0] != 4 {
                return Err("the certificate's EC key is not an uncompressed point".to_owned());
            }
            Some(Jwk {
                kty: "EC".to_owned(),
                crv: crv.to_owned(),
                x: URL_SAFE_NO_PAD.encode(&data[1..=size]),
                y: URL_SAFE_NO_PAD.encode(&data[1 + size..]),
                ..Jwk::default()
            })
        }
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| {
                let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                URL_SAFE_NO_PAD.encode(&b[start..])
            };
            Some(Jwk {
                kty: "RSA".to_owned(),
                n: trim(rsa.modulus),
                e: trim(rsa.exponent),
                ..Jwk::default()
            })
        }
        _ => None,
    })
}

fn same_key(a: &Jwk, b: &Jwk) -> bool {
    a.kty == b.kty && a.crv == b.crv && a.x == b.x && a.y == b.y && a.n == b.n && a.e == b.e
}

impl SpiffeBundle {
    /// The bundle as its trust domain publishes it.
    pub fn to_document(&self) -> Result<Vec<u8>, BundleError> {
        let mut keys = Vec::with_capacity(self.x509_authorities.len() + self.jwt_authorities.len());
        for der in &self.x509_authorities {
            let jwk = key_parameters(der)
                .map_err(BundleError::Authority)?
                .ok_or_else(|| BundleError::Authority("a key type JWK cannot carry".into()))?;
            let mut value = serde_json::to_value(Jwk {
                use_: X509_SVID_USE.to_owned(),
                ..jwk
            })
            .map_err(|e| BundleError::NotJwks(e.to_string()))?;
            value["x5c"] = Value::Array(vec![Value::String(STANDARD.encode(der))]);
            keys.push(value);
        }
        for jwk in &self.jwt_authorities {
            let jwk = Jwk {
                use_: JWT_SVID_USE.to_owned(),
                ..jwk.clone()
            };
            keys.push(serde_json::to_value(jwk).map_err(|e| BundleError::NotJwks(e.to_string()))?);
        }
        serde_json::to_vec(&Document {
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint,
            keys,
        })
        .map_err(|e| BundleError::NotJwks(e.to_string()))
    }

    /// Reads `document` as the bundle of `trust_domain` (the caller knows
    /// which trust domain it asked: a document does not say).
    pub fn parse(trust_domain: TrustDomain, document: &[u8]) -> Result<Self, BundleError> {
        if document.len() > MAX_DOCUMENT_BYTES {
            return Err(BundleError::TooLarge);
        }
        let document: Document = serde_json::from_slice(document).map_err(|e| {
            // serde's message names the place, never the payload.
            BundleError::NotJwks(format!("line {} column {}", e.line(), e.column()))
        })?;
        let mut bundle = Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: document.spiffe_sequence.unwrap_or(0),
            refresh_hint: document.spiffe_refresh_hint,
        };
        for (index, key) in document.keys.iter().enumerate() {
            let bad = |reason: &str| BundleError::Key {
                index,
                reason: reason.to_owned(),
            };
            let Some(object) = key.as_object() else {
                return Err(bad("is not an object"));
            };
            let text = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or("");
            if !matches!(text("kty"), "EC" | "RSA") {
                continue;
            }
            match text("use") {
                X509_SVID_USE => {
                    let der = match object.get("x5c").and_then(Value::as_array) {
                        Some(certs) if certs.len() == 1 => certs[0]
                            .as_str()
                            .and_then(|c| STANDARD.decode(c).ok())
                            .ok_or_else(|| bad("x5c[0] is not base64"))?,
                        _ => return Err(bad("x5c must hold exactly one certificate")),
                    };
                    let wire: Jwk = serde_json::from_value(key.clone())
                        .map_err(|_| bad("is not a JSON Web Key"))?;
                    let from_cert = key_parameters(&der)
                        .map_err(|reason| bad(&reason))?
                        .ok_or_else(|| bad("the certificate's key type is not supported"))?;
                    if !same_key(&wire, &from_cert) {
                        return Err(bad("the key parameters are not the certificate's key"));
                    }
                    bundle.x509_authorities.push(der);
                }
                JWT_SVID_USE => {
                    let jwk: Jwk = serde_json::from_value(key.clone())
                        .map_err(|_| bad("is not a JSON Web Key"))?;
                    if jwk.kid.is_empty() {
                        return Err(bad("a jwt-svid key must have a kid"));
                    }
                    bundle.jwt_authorities.push(jwk);
                }
                _ => continue,
            }
        }
        Ok(bundle)
    }

    /// The JWT-SVID keys as a JWKS document (what the Workload API's
    /// `FetchJWTBundles` sends for a trust domain).
    pub fn jwks(&self) -> crate::jwt::JwkSet {
        crate::jwt::JwkSet {
            keys: self.jwt_authorities.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ca_der() -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn jwt_key(kid: &str) -> Jwk {
        Jwk {
            kty: "EC".into(),
            kid: kid.into(),
            use_: JWT_SVID_USE.into(),
            crv: "P-256".into(),
            x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU".into(),
            y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0".into(),
            ..Jwk::default()
        }
    }

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn a_bundle_survives_its_document_and_carries_the_spec_fields() {
        let bundle = SpiffeBundle {
            trust_domain: td(),
            x509_authorities: vec![ca_der(), ca_der()],
            jwt_authorities: vec![jwt_key("k1")],
            sequence: 7,
            refresh_hint: Some(300),
        };
        let document = bundle.to_document().unwrap();
        let json: Value = serde_json::from_slice(&document).unwrap();
        assert_eq!(json["spiffe_sequence"], 7);
        assert_eq!(json["spiffe_refresh_hint"], 300);
        assert_eq!(json["keys"][0]["use"], "x509-svid");
        assert_eq!(json["keys"][0]["kty"], "EC");
        assert_eq!(json["keys"][0]["crv"], "P-256");
        assert_eq!(json["keys"][0]["x5c"].as_array().unwrap().len(), 1);
        assert!(json["keys"][0].get("kid").is_none());
        assert_eq!(json["keys"][2]["use"], "jwt-svid");
        assert_eq!(json["keys"][2]["kid"], "k1");
        assert_eq!(SpiffeBundle::parse(td(), &document).unwrap(), bundle);
    }

    #[test]
    fn unknown_uses_and_key_types_are_ignored_and_broken_known_keys_refused() {
        let der = STANDARD.encode(ca_der());
        let doc = |key: Value| serde_json::to_vec(&serde_json::json!({ "keys": [key] })).unwrap();
        let ignored = [
            serde_json::json!({"kty": "EC", "use": "sig", "kid": "a"}),
            serde_json::json!({"kty": "OKP", "use": "jwt-svid", "kid": "a"}),
        ];
        for key in ignored {
            let bundle = SpiffeBundle::parse(td(), &doc(key)).unwrap();
            assert!(bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty());
        }
        let refused = [
            (
                serde_json::json!({"kty": "EC", "use": "x509-svid"}),
                "exactly one",
            ),
            (
                serde_json::json!({"kty": "EC", "use": "x509-svid", "x5c": [der, der]}),
                "exactly one",
            ),
            (
                serde_json::json!({"kty": "EC", "use": "x509-svid", "crv": "P-256", "x": "AA", "y": "AA", "x5c": [der]}),
                "not the certificate's key",
            ),
            (serde_json::json!({"kty": "EC", "use": "jwt-svid"}), "kid"),
            (serde_json::json!("a string"), "not an object"),
        ];
        for (key, reason) in refused {
            let error = SpiffeBundle::parse(td(), &doc(key)).unwrap_err();
            assert!(
                matches!(&error, BundleError::Key { index: 0, reason: r } if r.contains(reason)),
                "{error}"
            );
        }
        assert!(matches!(
            SpiffeBundle::parse(td(), b"{\"keys\": 1, \"secret\": \"s3cr3t\"}"),
            Err(BundleError::NotJwks(m)) if !m.contains("s3cr3t")
        ));
        assert_eq!(
            SpiffeBundle::parse(td(), &vec![b' '; MAX_DOCUMENT_BYTES + 1]),
            Err(BundleError::TooLarge)
        );
    }
}
