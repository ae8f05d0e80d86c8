//! The broker's signing authorities: the CA hierarchy that signs
//! X.509-SVIDs and the key that signs JWT-SVIDs. Generated on first start
//! (with evidence), then loaded from the database and opened with the
//! key-encryption key on every start. A wrong key-encryption key, or an
//! altered sealed key, stops the start.

use steward_evidence::EvidenceRecord;
use steward_identity::jwt::{Jwk, JwkSet, SigningKey};
use time::{Duration, OffsetDateTime};

use crate::ca::{CaHierarchy, SealedCa, SealedCert};
use crate::config::CaConfig;
use crate::keys::KeyEncryption;
use crate::store::{Store, StoredKey};

const JWT_PURPOSE: &str = "jwt/signing";

/// Everything that signs, opened.
pub struct Authorities {
    pub ca: CaHierarchy,
    pub jwt: SigningKey,
    /// The JWT-SVID keys as a SPIFFE bundle publishes them (`use` is
    /// `jwt-svid`).
    pub jwks: JwkSet,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field("ca", &self.ca)
            .field("jwt_kid", &self.jwt.kid())
            .finish()
    }
}

/// The public JWK of a JWT-SVID signing key.
fn jwt_svid_jwk(key: &SigningKey) -> Jwk {
    Jwk {
        use_: "jwt-svid".to_owned(),
        ..key.jwk()
    }
}

fn ns(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn current<'a>(keys: &'a [StoredKey], kind: &str) -> Option<&'a StoredKey> {
    keys.iter()
        .rev()
        .find(|k| k.kind == kind && k.retired_at_ns == 0)
}

fn sealed(key: &StoredKey) -> SealedCert {
    SealedCert {
        cert_pem: key.public.clone(),
        sealed_key: key.sealed_key.clone(),
        kek_id: key.kek_id.clone(),
    }
}

impl Authorities {
    /// Loads the stored authorities, generating (and storing, with
    /// evidence by `actor`) whatever is missing.
    pub async fn load_or_generate(
        store: &Store,
        kek: &dyn KeyEncryption,
        trust_domain: &str,
        config: &CaConfig,
        actor: &str,
    ) -> Result<Self, String> {
        let keys = store.keys().await.map_err(|e| e.to_string())?;
        let now = OffsetDateTime::now_utc();
        let mut new = Vec::new();
        let mut evidence = Vec::new();
        let ca = match (current(&keys, "root"), current(&keys, "intermediate")) {
            (Some(root), Some(intermediate)) => CaHierarchy::open(
                trust_domain,
                &SealedCa {
                    root: sealed(root),
                    intermediate: sealed(intermediate),
                },
                kek,
            )
            .map_err(|e| format!("cannot open the stored CA: {e}"))?,
            (None, None) => {
                let ca = CaHierarchy::generate(
                    trust_domain,
                    now,
                    Duration::seconds(i64::try_from(config.root_validity_secs).unwrap_or(i64::MAX)),
                    Duration::seconds(
                        i64::try_from(config.intermediate_validity_secs).unwrap_or(i64::MAX),
                    ),
                )
                .map_err(|e| format!("cannot generate the CA: {e}"))?;
                let sealed = ca.seal(kek).map_err(|e| e.to_string())?;
                for (kind, cert, not_after) in [
                    ("root", sealed.root, ca.root_not_after()),
                    (
                        "intermediate",
                        sealed.intermediate,
                        ca.intermediate_not_after(),
                    ),
                ] {
                    new.push(StoredKey {
                        id: 0,
                        kind: kind.to_owned(),
                        public: cert.cert_pem,
                        sealed_key: cert.sealed_key,
                        kek_id: cert.kek_id,
                        not_after_ns: ns(not_after),
                        created_at_ns: ns(now),
                        retired_at_ns: 0,
                    });
                }
                let mut record = EvidenceRecord::new(actor, "ca.generate", crate::SPEC.name);
                record.outcome.reason = format!("first start: a new CA for {trust_domain}");
                record
                    .attributes
                    .insert("trust_domain".into(), trust_domain.to_owned());
                record
                    .attributes
                    .insert("root_not_after".into(), ca.root_not_after().to_string());
                record.attributes.insert(
                    "intermediate_not_after".into(),
                    ca.intermediate_not_after().to_string(),
                );
                evidence.push(record);
                ca
            }
            _ => {
                return Err(
                    "the stored CA is incomplete (a root without an intermediate, or the reverse)"
                        .into(),
                );
            }
        };
        let jwt = match current(&keys, "jwt") {
            Some(stored) => {
                let der = kek
                    .open(JWT_PURPOSE, &stored.sealed_key)
                    .map_err(|e| format!("cannot open the stored JWT signing key: {e}"))?;
                SigningKey::from_pkcs8(&der).map_err(|e| e.to_string())?
            }
            None => {
                let der = SigningKey::generate_pkcs8().map_err(|e| e.to_string())?;
                let key = SigningKey::from_pkcs8(&der).map_err(|e| e.to_string())?;
                new.push(StoredKey {
                    id: 0,
                    kind: "jwt".to_owned(),
                    public: serde_json::to_string(&jwt_svid_jwk(&key))
                        .map_err(|e| e.to_string())?,
                    sealed_key: kek.seal(JWT_PURPOSE, &der).map_err(|e| e.to_string())?,
                    kek_id: kek.kek_id().to_owned(),
                    not_after_ns: i64::MAX,
                    created_at_ns: ns(now),
                    retired_at_ns: 0,
                });
                let mut record = EvidenceRecord::new(actor, "jwt_key.generate", crate::SPEC.name);
                record.outcome.reason = "first start: a new JWT-SVID signing key".to_owned();
                record.attributes.insert("kid".into(), key.kid().to_owned());
                evidence.push(record);
                key
            }
        };
        if !new.is_empty() {
            store
                .add_keys(&new, &[], ns(now), &evidence)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                trust_domain,
                kid = jwt.kid(),
                "generated the broker's signing authorities"
            );
        }
        let jwks = JwkSet {
            keys: vec![jwt_svid_jwk(&jwt)],
        };
        Ok(Self { ca, jwt, jwks })
    }
}
