//! The broker's core: credentials issued, renewed, rotated and revoked as
//! leases, each under a decision of authority's and with its evidence.
//!
//! Every operation asks [`Decide`] first, with the verified caller as
//! principal and the incident and task window the credential serves, and
//! obeys the answer: DENY refuses, APPROVAL_REQUIRED refuses naming the
//! approval request, and an ask nobody answered refuses with nothing done
//! (fail closed). The decision also carries inventory's view of the
//! identity: a suspended, revoked or decommissioned one gets nothing,
//! whatever the policies say. A credential exists only with its lease and
//! its evidence, committed together by the lease writer.
//!
//! Nothing here speaks gRPC: `grpc` parses requests into these types and
//! maps [`Error`] to a status; `peers` asks authority and tells inventory.

mod decide;
mod error;
mod evidence;
mod lifetime;
mod mint;
pub(crate) use mint::sha256_hex;
pub mod rotation;
#[cfg(test)]
mod tests;

use std::sync::{Arc, PoisonError, RwLock};

use ring::rand::SystemRandom;
use steward_identity::SpiffeId;
use steward_vocab::Action;

pub use decide::{Allowed, Ask, Decide, Decision, Effect, Facts, Principal, Resource};
pub use error::Error;
pub use evidence::lease_record;
pub use rotation::Signals;

use crate::authorities::{Authorities, CaRotation, RotationOrder};
use crate::backends::{BackendCredential, CredentialBackend};
use crate::ca::IssuedSvid;
use crate::config::{CaConfig, TtlConfig};
use crate::keys::KeyEncryption;
use crate::now_ns;
use crate::store::writer::Writer;
use crate::store::{Lease, LeaseState, Store, StoreError};

/// The prefix of every API token (so scanners can recognise a leaked one).
pub const TOKEN_PREFIX: &str = "stw_";
/// Characters of a token kept, after the prefix, as its public reference.
const TOKEN_REF_CHARS: usize = 8;
const NS: i64 = steward_evidence::clock::NANOS_PER_SECOND;

/// The incident and window a credential serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub incident_ref: String,
    pub window_start_ns: i64,
    pub window_end_ns: i64,
    pub reason: String,
    pub correlation_id: String,
}

impl Task {
    /// A lease's own incident and window, for acting on it again.
    pub fn of_lease(lease: &Lease, reason: String) -> Self {
        Self {
            incident_ref: lease.incident_ref.clone(),
            window_start_ns: lease.window_start_ns,
            window_end_ns: lease.window_end_ns,
            reason,
            correlation_id: String::new(),
        }
    }
}

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub enum Make<'a> {
    /// An X.509-SVID certifying `subject`'s key.
    /// `dns_names`: DNS SANs beside the SPIFFE ID, from a registration
    /// entry (never from the caller's CSR).
    X509 {
        subject: Subject<'a>,
        dns_names: &'a [String],
    },
    /// A JWT-SVID for these audiences.
    Jwt { audience: &'a [String] },
    /// An opaque API token with these scopes.
    Token { scopes: &'a [String] },
    /// A login role in the configured backend, from a template.
    DatabaseRole { template: &'a str },
}

/// Whose key an X.509-SVID certifies.
#[derive(Clone, Copy)]
pub enum Subject<'a> {
    /// A caller's CSR (DER): its signature proves the caller holds the
    /// key, and every CSR rule applies.
    Csr(&'a [u8]),
    /// A key the broker generated for the caller (the Workload API's).
    Generated(&'a rcgen::KeyPair),
}

impl std::fmt::Debug for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Csr(der) => write!(f, "Csr({} bytes)", der.len()),
            Self::Generated(_) => f.write_str("Generated"),
        }
    }
}

/// What was issued.
#[derive(Debug)]
pub enum Made {
    X509(IssuedSvid),
    Jwt(String),
    Token(String),
    DatabaseRole(BackendCredential),
}

impl Made {
    /// The X.509-SVID's chain, leaf first (empty for other kinds).
    pub fn x509_chain(self) -> Vec<Vec<u8>> {
        match self {
            Self::X509(issued) => issued.chain_der,
            _ => Vec::new(),
        }
    }

    /// The JWT or API token (empty for an X.509-SVID).
    pub fn secret(self) -> String {
        match self {
            Self::Jwt(token) | Self::Token(token) => token,
            Self::X509(_) | Self::DatabaseRole(_) => String::new(),
        }
    }
}

/// The broker's issuing state, shared by the gRPC API, the Workload API,
/// the rotation loop and the reaper.
pub struct Issuer {
    pub own: SpiffeId,
    pub store: Store,
    pub writer: Writer,
    /// The signing authorities; replaced whole by a CA rotation.
    pub authorities: RwLock<Arc<Authorities>>,
    /// How generated CA certificates live (for rotations).
    pub ca_config: CaConfig,
    /// Counts CA rotations: the Workload API's streams resend bundles and
    /// SVIDs when it moves.
    pub rotated: tokio::sync::watch::Sender<u64>,
    /// Authority's decisions.
    pub decide: Arc<dyn Decide>,
    /// Where a failed rotation is reported (inventory).
    pub signals: Arc<dyn Signals>,
    /// The external credential backend, if one is configured.
    pub backend: Option<Arc<dyn CredentialBackend>>,
    /// Seals backend secrets at rest.
    pub kek: Arc<dyn KeyEncryption>,
    pub ttl: TtlConfig,
    pub random: SystemRandom,
}

impl Issuer {
    /// The CA and JWT signing key.
    pub fn authorities(&self) -> Arc<Authorities> {
        self.authorities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How long replaced CA and JWT keys stay published: the longest a
    /// credential they signed can live.
    pub fn overlap(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.ttl.max).unwrap_or(i64::MAX))
    }

    /// Changes whenever the CA is rotated.
    pub fn ca_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.rotated.subscribe()
    }

    /// Refuses a requested TTL above the broker's maximum.
    pub fn check_ttl(&self, requested: u32) -> Result<(), Error> {
        if u64::from(requested) > self.ttl.max {
            return Err(steward_errors::invalid(
                "ttl_seconds",
                format!(
                    "{requested} is above the broker's maximum of {} s",
                    self.ttl.max
                ),
            )
            .into());
        }
        Ok(())
    }

    /// The live lease of API token `token`, if it is one: what
    /// `Introspect` answers.
    pub async fn introspect(&self, token: &str) -> Result<Option<Lease>, StoreError> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        self.introspection(&mint::sha256(token.as_bytes())).await
    }

    /// The live lease of the API token whose SHA-256 is `hash`; a rotation
    /// checks it to confirm an old token is rejected.
    async fn introspection(&self, hash: &[u8]) -> Result<Option<Lease>, StoreError> {
        let lease = self.store.lease_by_token(hash).await?;
        Ok(lease.filter(|l| l.live(now_ns())))
    }

    /// Asks authority to `issue`, then issues (see [`Self::make`]). The
    /// Workload API issues through here too.
    pub async fn issue(
        &self,
        principal: &str,
        identity_id: &str,
        what: Make<'_>,
        ttl_seconds: u32,
        task: &Task,
        now: i64,
    ) -> Result<(Lease, Made), Error> {
        let allowed = self
            .authorize(
                principal,
                Action::Issue,
                identity_id,
                task,
                u64::from(ttl_seconds),
            )
            .await?;
        let made = self
            .make(
                &allowed,
                &mint::Order {
                    principal,
                    identity_id,
                    what,
                    ttl_seconds,
                    task,
                    now,
                },
            )
            .await;
        if let Err(refused) = &made {
            self.record_refusal(&allowed, principal, identity_id, task, refused)
                .await;
        }
        made
    }

    /// Renews an active lease by `ttl_seconds` (its own TTL when 0), as
    /// far as its max and authority's obligation allow.
    pub async fn renew(
        &self,
        caller: &str,
        lease_id: &str,
        ttl_seconds: u32,
    ) -> Result<Lease, Error> {
        self.check_ttl(ttl_seconds)?;
        let lease = self.store.lease(lease_id).await?;
        let now = now_ns();
        let ttl = if ttl_seconds == 0 {
            lease.ttl_seconds
        } else {
            i64::from(ttl_seconds)
        };
        // Refused before authority is asked: a policy cap only shortens it.
        if let Some(why) = lease.renewal_refused(now, now.saturating_add(ttl.saturating_mul(NS))) {
            return Err(Error::precondition(why));
        }
        let task = Task::of_lease(&lease, format!("renew lease {}", lease.lease_id));
        let allowed = self
            .authorize(
                caller,
                Action::Renew,
                &lease.identity_id,
                &task,
                u64::try_from(ttl).unwrap_or(0),
            )
            .await?;
        let ttl = allowed
            .max_ttl()
            .map_or(ttl, |cap| ttl.min(i64::try_from(cap).unwrap_or(i64::MAX)));
        let expires_at_ns = now.saturating_add(ttl.saturating_mul(NS));
        let evidence = evidence::renewal(caller.to_owned(), allowed.decision.decision_id.clone());
        Ok(self
            .writer
            .renew(lease.lease_id, expires_at_ns, evidence)
            .await?)
    }

    /// Revokes the active lease `lease_id`; an ended one is returned as it
    /// is, with nothing recorded.
    pub async fn revoke_one(
        &self,
        caller: &str,
        lease_id: &str,
        reason: &str,
    ) -> Result<Lease, Error> {
        let lease = self.store.lease(lease_id).await?;
        if lease.state != LeaseState::Active {
            return Ok(lease);
        }
        let ended = self
            .revoke(caller, std::slice::from_ref(&lease), reason, "", false)
            .await?;
        match ended.into_iter().next() {
            Some(lease) => Ok(lease),
            // Ended meanwhile (the reaper, another revocation).
            None => Ok(self.store.lease(lease_id).await?),
        }
    }

    /// Revokes `leases`, asking authority once per identity first unless
    /// `decided` (authority itself closing an incident).
    pub async fn revoke(
        &self,
        caller: &str,
        leases: &[Lease],
        reason: &str,
        correlation_id: &str,
        decided: bool,
    ) -> Result<Vec<Lease>, Error> {
        if !decided {
            let now = now_ns();
            let mut seen = std::collections::HashSet::new();
            // The task is the lease's own incident; revoking ends now.
            for lease in leases
                .iter()
                .filter(|l| seen.insert(l.identity_id.as_str()))
            {
                let task = Task {
                    incident_ref: lease.incident_ref.clone(),
                    window_start_ns: now,
                    window_end_ns: i64::MAX,
                    reason: reason.to_owned(),
                    correlation_id: correlation_id.to_owned(),
                };
                self.authorize(caller, Action::Revoke, &lease.identity_id, &task, 0)
                    .await?;
            }
        }
        let evidence = evidence::revocation(caller, reason, correlation_id);
        Ok(self
            .writer
            .revoke(
                leases.iter().map(|l| l.lease_id.clone()).collect(),
                LeaseState::Revoked,
                caller,
                reason,
                evidence,
            )
            .await?)
    }

    /// Replaces the CA's intermediate (or root and intermediate) and the
    /// JWT key once authority allows `rotate_ca` on this trust domain for
    /// `principal`; `caller` is the verified peer, who the record names.
    pub async fn rotate_ca(
        &self,
        principal: Principal,
        caller: &str,
        what: CaRotation,
        reason: &str,
    ) -> Result<(), Error> {
        let decision = self.authorize_ca_rotation(principal, reason).await?;
        let trust_domain = self.own.trust_domain().name().to_owned();
        self.authorities()
            .rotate(
                &self.store,
                self.kek.as_ref(),
                &self.ca_config,
                &RotationOrder {
                    actor: caller,
                    what,
                    reason,
                    decision: &decision,
                },
            )
            .await
            .map_err(|e| Error::unavailable("the CA could not be rotated; nothing changed", e))?;
        let reloaded = Authorities::load_or_generate(
            &self.store,
            self.kek.as_ref(),
            &trust_domain,
            &self.ca_config,
            &self.own.to_string(),
            self.overlap(),
        )
        .await
        .map_err(|e| {
            Error::unavailable("the rotated CA could not be loaded; restart the broker", e)
        })?;
        *self
            .authorities
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(reloaded);
        self.rotated.send_modify(|n| *n += 1);
        Ok(())
    }
}
