//! The test OIDC issuer: tokens for the humans of the tests (alice, bea,
//! pat, sam…), as authority verifies them, and requests that carry one.

use std::path::{Path, PathBuf};

use crate::write_atomic;

/// The OIDC issuer tests' humans get tokens from.
pub const TEST_ISSUER: &str = "https://oidc.steward.test";

/// The test issuer's signing key, beside the SVIDs in `pki_dir` (made on
/// first use), and its JWKS file.
pub(crate) fn test_issuer_key(pki_dir: &Path) -> (steward_identity::jwt::SigningKey, PathBuf) {
    let key_path = pki_dir.join("oidc-issuer.p8");
    let jwks_path = pki_dir.join("oidc-jwks.json");
    if !key_path.exists() {
        let der = steward_identity::jwt::SigningKey::generate_pkcs8().unwrap();
        write_atomic(&key_path, &der);
    }
    let key =
        steward_identity::jwt::SigningKey::from_pkcs8(&std::fs::read(&key_path).unwrap()).unwrap();
    if !jwks_path.exists() {
        let jwks = steward_identity::jwt::JwkSet {
            keys: vec![key.jwk()],
        };
        write_atomic(&jwks_path, serde_json::to_string(&jwks).unwrap().as_bytes());
    }
    (key, jwks_path)
}

/// An OIDC token for `subject` from the test issuer, valid for ten minutes.
pub fn human_token(pki_dir: &Path, subject: &str) -> String {
    let (key, _) = test_issuer_key(pki_dir);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = serde_json::json!({
        "iss": TEST_ISSUER,
        "sub": subject,
        "aud": "steward",
        "iat": now,
        "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    key.sign("JWT", claims.as_object().unwrap()).unwrap()
}

/// `message` carrying `token` as its bearer token.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}
