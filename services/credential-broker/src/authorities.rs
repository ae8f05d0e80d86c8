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

/// Everything that signs, opened, and what is published.
pub struct Authorities {
    pub ca: CaHierarchy,
    pub jwt: SigningKey,
    /// The JWT-SVID keys as a SPIFFE bundle publishes them (`use` is
    /// `jwt-svid`): the current key first, then keys retired by a rotation
    /// less than the overlap ago.
    pub jwks: JwkSet,
    /// The X.509 trust bundle, DER: the current root first, then roots
    /// retired less than the overlap ago.
    pub roots: Vec<Vec<u8>>,
    /// The intermediates that signed SVIDs still within the overlap, DER,
    /// the current one first.
    pub intermediates: Vec<Vec<u8>>,
}

/// Who rotates the CA, what, why, and authority's ALLOW of it.
#[derive(Debug, Clone, Copy)]
pub struct RotationOrder<'a> {
    pub actor: &'a str,
    pub what: CaRotation,
    pub reason: &'a str,
    pub decision: &'a steward_evidence::record::Decision,
}

/// What a CA rotation replaces. The JWT-SVID key is replaced either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaRotation {
    /// A new intermediate under the same root: relying parties change
    /// nothing.
    Intermediate,
    /// A new root and intermediate: both roots are in the bundle for the
    /// overlap.
    Root,
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

fn pem_der(pem: &str) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .map(|(_, p)| p.contents)
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

/// A new CA for `trust_domain` on first start: its two keys to store
/// (sealed) in `new`, its `ca.generate` record in `evidence`.
fn first_ca(
    trust_domain: &str,
    kek: &dyn KeyEncryption,
    config: &CaConfig,
    actor: &str,
    now: OffsetDateTime,
    new: &mut Vec<StoredKey>,
    evidence: &mut Vec<EvidenceRecord>,
) -> Result<CaHierarchy, String> {
    let ca = CaHierarchy::generate(
        trust_domain,
        now,
        Duration::seconds(i64::try_from(config.root_validity_secs).unwrap_or(i64::MAX)),
        Duration::seconds(i64::try_from(config.intermediate_validity_secs).unwrap_or(i64::MAX)),
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
        new.push(sealed_row(kind, cert, not_after, now));
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
    Ok(ca)
}

/// The row that keeps a CA certificate and its sealed key.
fn sealed_row(
    kind: &str,
    cert: SealedCert,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> StoredKey {
    StoredKey {
        id: 0,
        kind: kind.to_owned(),
        public: cert.cert_pem,
        sealed_key: cert.sealed_key,
        kek_id: cert.kek_id,
        not_after_ns: ns(not_after),
        created_at_ns: ns(now),
        retired_at_ns: 0,
    }
}

/// A new JWT-SVID signing key, and the row that keeps it sealed.
fn new_jwt_key(
    kek: &dyn KeyEncryption,
    now: OffsetDateTime,
) -> Result<(SigningKey, StoredKey), String> {
    let der = SigningKey::generate_pkcs8().map_err(|e| e.to_string())?;
    let key = SigningKey::from_pkcs8(&der).map_err(|e| e.to_string())?;
    let stored = StoredKey {
        id: 0,
        kind: "jwt".to_owned(),
        public: serde_json::to_string(&jwt_svid_jwk(&key)).map_err(|e| e.to_string())?,
        sealed_key: kek.seal(JWT_PURPOSE, &der).map_err(|e| e.to_string())?,
        kek_id: kek.kek_id().to_owned(),
        not_after_ns: i64::MAX,
        created_at_ns: ns(now),
        retired_at_ns: 0,
    };
    Ok((key, stored))
}

/// A new JWT-SVID signing key on first start: stored (sealed) in `new`,
/// its `jwt_key.generate` record in `evidence`.
fn first_jwt_key(
    kek: &dyn KeyEncryption,
    actor: &str,
    now: OffsetDateTime,
    new: &mut Vec<StoredKey>,
    evidence: &mut Vec<EvidenceRecord>,
) -> Result<SigningKey, String> {
    let (key, stored) = new_jwt_key(kek, now)?;
    new.push(stored);
    let mut record = EvidenceRecord::new(actor, "jwt_key.generate", crate::SPEC.name);
    record.outcome.reason = "first start: a new JWT-SVID signing key".to_owned();
    record.attributes.insert("kid".into(), key.kid().to_owned());
    evidence.push(record);
    Ok(key)
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
        overlap: Duration,
    ) -> Result<Self, String> {
        let mut keys = store.keys().await.map_err(|e| e.to_string())?;
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
            (None, None) => first_ca(
                trust_domain,
                kek,
                config,
                actor,
                now,
                &mut new,
                &mut evidence,
            )?,
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
            None => first_jwt_key(kek, actor, now, &mut new, &mut evidence)?,
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
            keys = store.keys().await.map_err(|e| e.to_string())?;
        }
        // Published: the current material, then what a rotation retired
        // less than `overlap` ago, newest first.
        let cutoff = ns(now - overlap);
        let published = |kind: &str| -> Vec<&StoredKey> {
            let mut found: Vec<&StoredKey> = keys
                .iter()
                .filter(|k| k.kind == kind && (k.retired_at_ns == 0 || k.retired_at_ns > cutoff))
                .collect();
            found.sort_by_key(|k| (k.retired_at_ns != 0, std::cmp::Reverse(k.id)));
            found
        };
        let roots = published("root")
            .into_iter()
            .filter_map(|k| pem_der(&k.public))
            .collect();
        let intermediates = published("intermediate")
            .into_iter()
            .filter_map(|k| pem_der(&k.public))
            .collect();
        let mut jwks = JwkSet {
            keys: vec![jwt_svid_jwk(&jwt)],
        };
        for stored in published("jwt") {
            if let Ok(jwk) = serde_json::from_str::<Jwk>(&stored.public)
                && jwk.kid != jwt.kid()
            {
                jwks.keys.push(jwk);
            }
        }
        Ok(Self {
            ca,
            jwt,
            jwks,
            roots,
            intermediates,
        })
    }

    /// Replaces the signing material (`order.what`, and the JWT key): stores the
    /// new, retires the old (published for the overlap), with evidence.
    /// Load again to use it.
    pub async fn rotate(
        &self,
        store: &Store,
        kek: &dyn KeyEncryption,
        config: &CaConfig,
        order: &RotationOrder<'_>,
    ) -> Result<(), String> {
        let RotationOrder {
            actor,
            what,
            reason,
            decision,
        } = *order;
        let trust_domain = self.ca.trust_domain();
        let keys = store.keys().await.map_err(|e| e.to_string())?;
        let now = OffsetDateTime::now_utc();
        let validity = |secs: u64| Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX));
        let stored = |kind: &str, cert: SealedCert, not_after: OffsetDateTime| {
            sealed_row(kind, cert, not_after, now)
        };
        let mut new = Vec::new();
        let mut retire_kinds = vec!["intermediate", "jwt"];
        match what {
            CaRotation::Intermediate => {
                let (cert, not_after) = self
                    .ca
                    .sealed_new_intermediate(kek, now, validity(config.intermediate_validity_secs))
                    .map_err(|e| e.to_string())?;
                new.push(stored("intermediate", cert, not_after));
            }
            CaRotation::Root => {
                let ca = CaHierarchy::generate(
                    trust_domain,
                    now,
                    validity(config.root_validity_secs),
                    validity(config.intermediate_validity_secs),
                )
                .map_err(|e| e.to_string())?;
                let sealed = ca.seal(kek).map_err(|e| e.to_string())?;
                new.push(stored("root", sealed.root, ca.root_not_after()));
                new.push(stored(
                    "intermediate",
                    sealed.intermediate,
                    ca.intermediate_not_after(),
                ));
                retire_kinds.push("root");
            }
        }
        let (jwt, stored) = new_jwt_key(kek, now)?;
        new.push(stored);
        let retire: Vec<i64> = keys
            .iter()
            .filter(|k| k.retired_at_ns == 0 && retire_kinds.contains(&k.kind.as_str()))
            .map(|k| k.id)
            .collect();
        let mut record = EvidenceRecord::new(actor, "ca.rotate", crate::SPEC.name);
        record.decision = decision.clone();
        record.outcome.reason = steward_evidence::record::truncate_utf8(reason.to_owned(), 1024);
        record.attributes.insert(
            "rotated".into(),
            match what {
                CaRotation::Intermediate => "intermediate, jwt key",
                CaRotation::Root => "root, intermediate, jwt key",
            }
            .into(),
        );
        record
            .attributes
            .insert("new_kid".into(), jwt.kid().to_owned());
        record
            .attributes
            .insert("trust_domain".into(), trust_domain.to_owned());
        store
            .add_keys(&new, &retire, ns(now), &[record])
            .await
            .map_err(|e| e.to_string())
    }
}
