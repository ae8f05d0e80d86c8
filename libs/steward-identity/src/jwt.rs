//! Compact JWS tokens (RFC 7515/7519) signed with ES256 or RS256 and
//! verified against a JSON Web Key Set (RFC 7517): humans' OIDC bearer
//! tokens, and later JWT-SVIDs.
//!
//! Signing is ES256 with ring (tens of thousands per second per core).
//! Verification accepts ES256 and RS256 — the algorithms OIDC issuers use —
//! and nothing else: `none`, HMAC and any algorithm a key was not published
//! for are rejected, so a token cannot choose how it is checked.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a token was not accepted. The messages name the failing part and
/// never echo the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the token is not a compact JWS (header.payload.signature)")]
    Malformed,
    #[error("the token's {0} is not valid base64url JSON")]
    Encoding(&'static str),
    #[error("algorithm {0:?} is not accepted (ES256 and RS256 are)")]
    Algorithm(String),
    #[error("no published key has id {0:?}")]
    UnknownKey(String),
    #[error("the signature does not verify")]
    Signature,
    #[error("claim {0}: {1}")]
    Claim(&'static str, String),
    #[error("key: {0}")]
    Key(String),
}

/// One JSON Web Key, as published in a JWKS document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub alg: String,
    #[serde(default, rename = "use", skip_serializing_if = "String::is_empty")]
    pub use_: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crv: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub y: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub n: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub e: String,
}

/// A JWKS document: `{"keys": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

#[derive(Debug, Clone)]
enum PublicKey {
    Es256(Vec<u8>),
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

/// The keys tokens are checked against, by key id.
#[derive(Debug, Clone, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, PublicKey>,
}

fn b64(part: &'static str, text: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| JwtError::Encoding(part))
}

impl VerifyingKeys {
    /// The signature-capable EC P-256 and RSA keys of a JWKS. Keys of other
    /// types or curves, and encryption keys, are skipped; a key with a
    /// malformed body is an error (a half-read key set fails closed).
    pub fn from_jwks(set: &JwkSet) -> Result<Self, JwtError> {
        let mut keys = HashMap::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            if jwk.use_ == "enc" {
                continue;
            }
            let key = match (jwk.kty.as_str(), jwk.crv.as_str()) {
                ("EC", "P-256") => {
                    let x = b64("x", &jwk.x)?;
                    let y = b64("y", &jwk.y)?;
                    if x.len() != 32 || y.len() != 32 {
                        return Err(JwtError::Key(format!(
                            "keys[{index}]: P-256 coordinates are 32 bytes each"
                        )));
                    }
                    let mut point = Vec::with_capacity(65);
                    point.push(0x04);
                    point.extend_from_slice(&x);
                    point.extend_from_slice(&y);
                    PublicKey::Es256(point)
                }
                ("RSA", _) => {
                    let n = b64("n", &jwk.n)?;
                    let e = b64("e", &jwk.e)?;
                    if n.len() < 256 {
                        return Err(JwtError::Key(format!(
                            "keys[{index}]: RSA keys shorter than 2048 bits are not accepted"
                        )));
                    }
                    PublicKey::Rs256 { n, e }
                }
                _ => continue,
            };
            keys.insert(jwk.kid.clone(), key);
        }
        Ok(Self { keys })
    }

    /// Parses a JWKS document.
    pub fn from_json(json: &str) -> Result<Self, JwtError> {
        let set: JwkSet =
            serde_json::from_str(json).map_err(|e| JwtError::Key(format!("JWKS: {e}")))?;
        Self::from_jwks(&set)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a verified token must say.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The exact `iss`; empty accepts a token without one (JWT-SVIDs carry
    /// none) and refuses one with any.
    pub issuer: String,
    /// One of the token's `aud` values.
    pub audience: String,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
    pub leeway_secs: i64,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub subject: String,
    pub issuer: String,
    pub audience: Vec<String>,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    pub jwt_id: String,
    /// Everything the token carried, as sent.
    pub all: Map<String, Value>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: String,
}

fn string_claim(all: &Map<String, Value>, name: &'static str) -> Result<String, JwtError> {
    match all.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(JwtError::Claim(name, "is not a non-empty string".into())),
        None => Err(JwtError::Claim(name, "is required".into())),
    }
}

fn time_claim(all: &Map<String, Value>, name: &'static str) -> Result<Option<i64>, JwtError> {
    match all.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| JwtError::Claim(name, "is not a NumericDate".into())),
    }
}

/// Verifies `token`'s signature against `keys` and its claims against
/// `validation` at `now` (Unix seconds).
pub fn verify(
    token: &str,
    keys: &VerifyingKeys,
    validation: &Validation,
    now: i64,
) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_json = b64("header", header_b64)?;
    let header: Header =
        serde_json::from_slice(&header_json).map_err(|_| JwtError::Encoding("header"))?;
    if header.alg != "ES256" && header.alg != "RS256" {
        return Err(JwtError::Algorithm(header.alg));
    }
    let Some(key) = keys.keys.get(&header.kid) else {
        return Err(JwtError::UnknownKey(header.kid));
    };
    let signature = b64("signature", sig)?;
    let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    let ok = match (header.alg.as_str(), key) {
        ("ES256", PublicKey::Es256(point)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(signed, &signature)
                .is_ok()
        }
        ("RS256", PublicKey::Rs256 { n, e }) => RsaPublicKeyComponents { n, e }
            .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &signature)
            .is_ok(),
        (alg, _) => return Err(JwtError::Algorithm(alg.to_owned())),
    };
    if !ok {
        return Err(JwtError::Signature);
    }
    let payload = b64("payload", payload_b64)?;
    let all: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::Encoding("payload"))?;
    let issuer = if validation.issuer.is_empty() && !all.contains_key("iss") {
        String::new()
    } else {
        string_claim(&all, "iss")?
    };
    if issuer != validation.issuer {
        return Err(JwtError::Claim(
            "iss",
            format!("{issuer:?} is not the configured issuer"),
        ));
    }
    let subject = string_claim(&all, "sub")?;
    let audience: Vec<String> = match all.get("aud") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(values)) => values
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => return Err(JwtError::Claim("aud", "is required".into())),
    };
    if !audience.iter().any(|a| a == &validation.audience) {
        return Err(JwtError::Claim(
            "aud",
            format!("does not include {:?}", validation.audience),
        ));
    }
    let expires_at =
        time_claim(&all, "exp")?.ok_or_else(|| JwtError::Claim("exp", "is required".into()))?;
    if now > expires_at.saturating_add(validation.leeway_secs) {
        return Err(JwtError::Claim("exp", "the token has expired".into()));
    }
    if let Some(nbf) = time_claim(&all, "nbf")?
        && now.saturating_add(validation.leeway_secs) < nbf
    {
        return Err(JwtError::Claim("nbf", "the token is not valid yet".into()));
    }
    let issued_at = time_claim(&all, "iat")?;
    if issued_at.is_some_and(|iat| iat > now.saturating_add(validation.leeway_secs)) {
        return Err(JwtError::Claim("iat", "is in the future".into()));
    }
    let jwt_id = all
        .get("jti")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(Claims {
        subject,
        issuer,
        audience,
        expires_at,
        issued_at,
        jwt_id,
        all,
    })
}

/// An ES256 signing key with its key id.
#[derive(Debug)]
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// A new P-256 key as PKCS#8 DER (store it; load it with [`Self::from_pkcs8`]).
    pub fn generate_pkcs8() -> Result<Vec<u8>, JwtError> {
        let rng = SystemRandom::new();
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| JwtError::Key("could not generate a P-256 key".into()))
    }

    /// Loads a PKCS#8 P-256 key. The key id is derived from the public key
    /// (base64url of its SHA-256, first 16 bytes), so it is stable.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JwtError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|_| JwtError::Key("not a PKCS#8 P-256 private key".into()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, pair.public_key().as_ref());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Self { kid, pair, rng })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half, as a JWK.
    pub fn jwk(&self) -> Jwk {
        let point = self.pair.public_key().as_ref();
        Jwk {
            kty: "EC".into(),
            kid: self.kid.clone(),
            alg: "ES256".into(),
            use_: "sig".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            ..Jwk::default()
        }
    }

    /// Signs `claims` as a compact JWS with header `{alg: ES256, kid, typ}`.
    pub fn sign(&self, typ: &str, claims: &Map<String, Value>) -> Result<String, JwtError> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": typ});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
        let signature = self
            .pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| JwtError::Key("signing failed".into()))?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn validation() -> Validation {
        Validation {
            issuer: "https://issuer.test".into(),
            audience: "steward".into(),
            leeway_secs: 30,
        }
    }

    fn keys_of(key: &SigningKey) -> VerifyingKeys {
        VerifyingKeys::from_jwks(&JwkSet {
            keys: vec![key.jwk()],
        })
        .unwrap()
    }

    fn good() -> Map<String, Value> {
        claims(
            json!({"iss": "https://issuer.test", "sub": "alice", "aud": ["steward", "x"], "exp": 2_000, "iat": 1_000, "jti": "j1"}),
        )
    }

    #[test]
    fn a_signed_token_verifies_with_its_claims() {
        let key = key();
        let token = key.sign("JWT", &good()).unwrap();
        let c = verify(&token, &keys_of(&key), &validation(), 1_500).unwrap();
        assert_eq!(c.subject, "alice");
        assert_eq!(c.audience, vec!["steward", "x"]);
        assert_eq!(c.expires_at, 2_000);
        assert_eq!(c.jwt_id, "j1");
    }

    #[test]
    fn the_jwks_round_trips_through_json() {
        let key = key();
        let json = serde_json::to_string(&JwkSet {
            keys: vec![key.jwk()],
        })
        .unwrap();
        let keys = VerifyingKeys::from_json(&json).unwrap();
        assert_eq!(keys.len(), 1);
        let token = key.sign("JWT", &good()).unwrap();
        verify(&token, &keys, &validation(), 1_500).unwrap();
    }

    #[test]
    fn claims_are_enforced() {
        let key = key();
        let keys = keys_of(&key);
        let check = |c: Value, now: i64| {
            let token = key.sign("JWT", &claims(c)).unwrap();
            verify(&token, &keys, &validation(), now).unwrap_err()
        };
        assert_eq!(
            check(
                json!({"iss": "https://issuer.test", "sub": "a", "aud": "steward", "exp": 100}),
                200
            ),
            JwtError::Claim("exp", "the token has expired".into())
        );
        assert!(matches!(
            check(
                json!({"iss": "https://other", "sub": "a", "aud": "steward", "exp": 2000}),
                200
            ),
            JwtError::Claim("iss", _)
        ));
        assert!(matches!(
            check(
                json!({"iss": "https://issuer.test", "sub": "a", "aud": "other", "exp": 2000}),
                200
            ),
            JwtError::Claim("aud", _)
        ));
        assert!(matches!(
            check(
                json!({"iss": "https://issuer.test", "aud": "steward", "exp": 2000}),
                200
            ),
            JwtError::Claim("sub", _)
        ));
        assert!(matches!(
            check(
                json!({"iss": "https://issuer.test", "sub": "a", "aud": "steward"}),
                200
            ),
            JwtError::Claim("exp", _)
        ));
        assert!(matches!(
            check(
                json!({"iss": "https://issuer.test", "sub": "a", "aud": "steward", "exp": 2000, "nbf": 1000}),
                200
            ),
            JwtError::Claim("nbf", _)
        ));
    }

    #[test]
    fn tampering_other_keys_and_algorithms_are_refused() {
        let key = key();
        let keys = keys_of(&key);
        let token = key.sign("JWT", &good()).unwrap();
        // A changed payload.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = good();
        forged.insert("sub".into(), json!("mallory"));
        parts[1] = URL_SAFE_NO_PAD.encode(Value::Object(forged).to_string());
        assert_eq!(
            verify(&parts.join("."), &keys, &validation(), 1_500),
            Err(JwtError::Signature)
        );
        // Signed by a key that is not published under that id.
        let other = key_with_kid_of(&key);
        let token = other.sign("JWT", &good()).unwrap();
        assert_eq!(
            verify(&token, &keys, &validation(), 1_500),
            Err(JwtError::Signature)
        );
        // alg none, and HMAC.
        for alg in ["none", "HS256"] {
            let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": key.kid()}).to_string());
            let payload = URL_SAFE_NO_PAD.encode(Value::Object(good()).to_string());
            let token = format!("{header}.{payload}.");
            assert_eq!(
                verify(&token, &keys, &validation(), 1_500),
                Err(JwtError::Algorithm(alg.into()))
            );
        }
        assert_eq!(
            verify("a.b", &keys, &validation(), 1_500),
            Err(JwtError::Malformed)
        );
    }

    /// A different key that claims `key`'s id.
    fn key_with_kid_of(key: &SigningKey) -> SigningKey {
        let mut other = self::key();
        other.kid = key.kid().to_owned();
        other
    }

    #[test]
    fn an_empty_issuer_accepts_only_tokens_without_one() {
        let key = key();
        let keys = keys_of(&key);
        let no_issuer = Validation {
            issuer: String::new(),
            ..validation()
        };
        let mut claims = good();
        claims.remove("iss");
        let token = key.sign("JWT", &claims).unwrap();
        let verified = verify(&token, &keys, &no_issuer, 1_500).unwrap();
        assert_eq!(verified.issuer, "");
        // A token that names an issuer is not a JWT-SVID.
        let token = key.sign("JWT", &good()).unwrap();
        assert!(verify(&token, &keys, &no_issuer, 1_500).is_err());
        // And a configured issuer still requires it.
        let token = key.sign("JWT", &claims).unwrap();
        assert!(verify(&token, &keys, &validation(), 1_500).is_err());
    }
}
