//! Minting: one function per credential kind, each giving the lease, its
//! evidence and what the caller gets, committed together by [`Issuer::make`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom as _;
use steward_evidence::EvidenceRecord;
use steward_evidence::record::truncate_utf8;
use steward_identity::SpiffeId;
use uuid::Uuid;

use super::lifetime::{self, Holder};
use super::{
    Allowed, Error, Issuer, Made, Make, NS, Subject, TOKEN_PREFIX, TOKEN_REF_CHARS, Task, evidence,
};
use crate::backends::BackendError;
use crate::store::{Kind, Lease};

/// One issuance as asked: who for which identity, what, for how long,
/// in which task, at what time.
pub(super) struct Order<'a> {
    pub principal: &'a str,
    pub identity_id: &'a str,
    pub what: Make<'a>,
    pub ttl_seconds: u32,
    pub task: &'a Task,
    pub now: i64,
}

/// What every kind is minted under: the order, its decision, and the
/// lease's lifetime.
struct Minting<'a> {
    order: &'a Order<'a>,
    allowed: &'a Allowed,
    ttl: i64,
    expires: i64,
}

impl Minting<'_> {
    fn holder<'h>(&'h self, kind: Kind, spiffe_id: &'h str) -> Holder<'h> {
        Holder {
            kind,
            identity_id: self.order.identity_id,
            holder: self.order.principal,
            spiffe_id,
            task: self.order.task,
            allowed: self.allowed,
        }
    }
}

/// A minted credential: its lease, its evidence record, and what the
/// caller gets.
type Minted = (Lease, EvidenceRecord, Made);

pub(super) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes` in lowercase hex: a certificate's fingerprint as
/// evidence records it, a published bundle's digest.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

impl Issuer {
    /// Issues a credential under a decision already allowed: the
    /// credential, its lease and the evidence, committed together.
    pub(super) async fn make(
        &self,
        allowed: &Allowed,
        order: &Order<'_>,
    ) -> Result<(Lease, Made), Error> {
        lifetime::started(order.task, order.now)?;
        let default = match order.what {
            Make::X509 { .. } => self.ttl.x509_svid_default,
            Make::Jwt { .. } => self.ttl.jwt_svid_default,
            Make::Token { .. } | Make::DatabaseRole { .. } => self.ttl.api_token_default,
        };
        let (ttl, expires) = lifetime::lifetime(
            order.ttl_seconds,
            default,
            self.ttl.max,
            allowed,
            order.task,
            order.now,
        )?;
        let m = Minting {
            order,
            allowed,
            ttl,
            expires,
        };
        let (lease, record, made) = match order.what {
            Make::X509 { subject, dns_names } => self.mint_x509(&m, subject, dns_names)?,
            Make::Jwt { audience } => self.mint_jwt(&m, audience)?,
            Make::Token { scopes } => self.mint_token(&m, scopes)?,
            Make::DatabaseRole { template } => self.mint_database_role(&m, template).await?,
        };
        let lease_id = lease.lease_id.clone();
        match self.writer.issue(lease, record).await {
            Ok(lease) => Ok((lease, made)),
            Err(error) => {
                // The credential exists in the backend but no lease does:
                // take it back.
                if let (Made::DatabaseRole(c), Some(backend)) = (&made, &self.backend)
                    && let Err(e) = backend.revoke(&c.username).await
                {
                    tracing::error!(lease = lease_id, error = %e, "an unrecorded database role could not be revoked");
                }
                Err(error.into())
            }
        }
    }

    /// The identity's SPIFFE ID from the decision's facts, required for an
    /// SVID and required to be in the broker's trust domain.
    fn svid_id(&self, identity_id: &str, allowed: &Allowed) -> Result<SpiffeId, Error> {
        let id = &allowed.facts().spiffe_id;
        if id.is_empty() {
            return Err(Error::precondition_on(
                "identity_id",
                format!("identity {identity_id} has no SPIFFE ID in inventory; SVIDs name one"),
            ));
        }
        let parsed = SpiffeId::parse(id).map_err(|e| {
            Error::precondition_on(
                "identity_id",
                format!("inventory's SPIFFE ID for {identity_id} is invalid: {e}"),
            )
        })?;
        if parsed.trust_domain() != self.own.trust_domain() {
            return Err(Error::precondition_on(
                "identity_id",
                format!(
                    "{id} is not in the broker's trust domain {}",
                    self.own.trust_domain()
                ),
            ));
        }
        Ok(parsed)
    }

    /// An X.509-SVID for the identity's SPIFFE ID, certifying `subject`.
    fn mint_x509(
        &self,
        m: &Minting<'_>,
        subject: Subject<'_>,
        dns_names: &[String],
    ) -> Result<Minted, Error> {
        let spiffe_id = self.svid_id(m.order.identity_id, m.allowed)?.to_string();
        let now = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(m.order.now))
            .map_err(|e| Error::internal("the broker's clock is out of range", e))?;
        let ttl = time::Duration::seconds(m.ttl);
        let ca = &self.authorities().ca;
        let issued = match subject {
            Subject::Csr(csr) => ca.issue_x509_svid(csr, &spiffe_id, dns_names, ttl, now),
            Subject::Generated(key) => {
                ca.issue_x509_svid_for_key(key, &spiffe_id, dns_names, ttl, now)
            }
        }
        .map_err(Error::Csr)?;
        let expires = m
            .expires
            .min(i64::try_from(issued.not_after.unix_timestamp_nanos()).unwrap_or(i64::MAX));
        let lease = lifetime::lease(
            &m.holder(Kind::X509Svid, &spiffe_id),
            (m.ttl, expires),
            m.order.now,
            self.ttl.max,
            issued.serial.clone(),
        );
        let record = evidence::issued(
            &lease,
            m.allowed,
            m.order.task,
            sha256_hex(&issued.cert_der),
        );
        Ok((lease, record, Made::X509(issued)))
    }

    /// A JWT-SVID for `audience`, signed with the current key.
    fn mint_jwt(&self, m: &Minting<'_>, audience: &[String]) -> Result<Minted, Error> {
        let spiffe_id = self.svid_id(m.order.identity_id, m.allowed)?.to_string();
        let jti = Uuid::new_v4().hyphenated().to_string();
        let mut lease = lifetime::lease(
            &m.holder(Kind::JwtSvid, &spiffe_id),
            (m.ttl, m.expires),
            m.order.now,
            self.ttl.max,
            jti.clone(),
        );
        lease.audience = audience.to_vec();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), spiffe_id.into());
        claims.insert(
            "aud".into(),
            match audience {
                [one] => one.clone().into(),
                many => many.to_vec().into(),
            },
        );
        claims.insert("exp".into(), (lease.expires_at_ns / NS).into());
        claims.insert("iat".into(), (m.order.now / NS).into());
        claims.insert("jti".into(), jti.into());
        let token = self
            .authorities()
            .jwt
            .sign("JWT", &claims)
            .map_err(|e| Error::internal("the JWT-SVID could not be signed", e))?;
        let mut record = evidence::issued(&lease, m.allowed, m.order.task, String::new());
        record
            .attributes
            .insert("audience".into(), truncate_utf8(audience.join(" "), 1024));
        Ok((lease, record, Made::Jwt(token)))
    }

    /// An opaque API token: only its hash and reference are kept.
    fn mint_token(&self, m: &Minting<'_>, scopes: &[String]) -> Result<Minted, Error> {
        let mut secret = [0u8; 32];
        self.random
            .fill(&mut secret)
            .map_err(|_| Error::internal("no randomness available", "SystemRandom failed"))?;
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let reference = token[..TOKEN_PREFIX.len() + TOKEN_REF_CHARS].to_owned();
        let mut lease = lifetime::lease(
            &m.holder(Kind::ApiToken, &m.allowed.facts().spiffe_id),
            (m.ttl, m.expires),
            m.order.now,
            self.ttl.max,
            reference,
        );
        lease.token_hash = Some(sha256(token.as_bytes()));
        lease.scopes = scopes.to_vec();
        let mut record = evidence::issued(&lease, m.allowed, m.order.task, String::new());
        record
            .attributes
            .insert("scopes".into(), truncate_utf8(scopes.join(" "), 1024));
        Ok((lease, record, Made::Token(token)))
    }

    /// A login role from the database backend's `template`; its password
    /// is kept sealed.
    async fn mint_database_role(&self, m: &Minting<'_>, template: &str) -> Result<Minted, Error> {
        let backend = self.backend.clone().ok_or_else(|| {
            Error::precondition_on(
                "template",
                "no database backend is configured (postgres_backend)",
            )
        })?;
        let credential = backend
            .create(template, m.expires)
            .await
            .map_err(|e| match e {
                BackendError::UnknownTemplate(m) => steward_errors::invalid("template", m).into(),
                BackendError::Refused(m) => Error::precondition(m),
                BackendError::Unavailable(m) => Error::unavailable(
                    "the database backend cannot be reached; nothing was issued",
                    m,
                ),
            })?;
        let mut lease = lifetime::lease(
            &m.holder(Kind::DatabaseRole, &m.allowed.facts().spiffe_id),
            (m.ttl, m.expires),
            m.order.now,
            self.ttl.max,
            credential.username.clone(),
        );
        lease.backend = backend.name().to_owned();
        lease.scopes = vec![template.to_owned()];
        lease.sealed_secret = Some(
            crate::backends::seal(self.kek.as_ref(), &lease.lease_id, &credential.password)
                .map_err(|e| Error::internal("the role's password could not be sealed", e))?,
        );
        let mut record = evidence::issued(&lease, m.allowed, m.order.task, String::new());
        record
            .attributes
            .insert("backend".into(), lease.backend.clone());
        record
            .attributes
            .insert("template".into(), truncate_utf8(template.to_owned(), 256));
        Ok((lease, record, Made::DatabaseRole(credential)))
    }
}
