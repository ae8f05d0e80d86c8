//! The `steward.broker.v1.CredentialBroker` gRPC adapter.
//!
//! Every issue, renewal and revocation asks authority first, with the
//! caller as principal and the request's incident and task window, and
//! obeys the decision: DENY is PERMISSION_DENIED, APPROVAL_REQUIRED is
//! FAILED_PRECONDITION naming the approval request, and an unreachable
//! authority is UNAVAILABLE with nothing issued. The decision also carries
//! inventory's view of the identity: a suspended, revoked or decommissioned
//! identity gets nothing, whatever the policies say.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use steward_evidence::EvidenceRecord;
use steward_evidence::record::{
    Effect as EvidenceEffect, MAX_REASON, OutcomeStatus, truncate_utf8,
};
use steward_identity::{PeerIdentity, SpiffeId};
use steward_proto::steward::authority::v1 as authority_pb;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_server::CredentialBroker;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use tokio_stream::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::authorities::Authorities;
use crate::backends::{BackendCredential, BackendError, CredentialBackend};
use crate::ca::IssuedSvid;
use crate::config::TtlConfig;
use crate::keys::KeyEncryption;
use crate::store::writer::{Applied, Change, RevocationEvidence, Writer};
use crate::store::{Kind, Lease, LeaseFilter, LeaseState, Store, StoreError};
use crate::{now_ns, watch};

/// Most leases one `RevokeLeases` call ends.
const MAX_BULK_REVOKE: usize = 10_000;
/// The prefix of every API token (so scanners can recognise a leaked one).
pub const TOKEN_PREFIX: &str = "stw_";
/// Characters of a token kept, after the prefix, as its public reference.
const TOKEN_REF_CHARS: usize = 8;
const NS: i64 = 1_000_000_000;

/// What the broker shares between requests.
pub struct Shared {
    pub own: SpiffeId,
    pub store: Store,
    pub writer: Writer,
    /// The signing authorities; replaced whole by a CA rotation.
    pub authorities: std::sync::RwLock<Arc<Authorities>>,
    /// How generated CA certificates live (for rotations).
    pub ca_config: crate::config::CaConfig,
    /// Counts CA rotations: the Workload API's streams resend bundles and
    /// SVIDs when it moves.
    pub rotated: tokio::sync::watch::Sender<u64>,
    /// Decisions, batched.
    pub authority: crate::authorizer::Authorizer,
    /// For risk signals (a rotation whose revocation was not confirmed).
    pub inventory: InventoryServiceClient<Channel>,
    /// The external credential backend, if one is configured.
    pub backend: Option<Arc<dyn CredentialBackend>>,
    /// Seals backend secrets at rest.
    pub kek: Arc<dyn KeyEncryption>,
    pub ttl: TtlConfig,
    pub random: SystemRandom,
}

#[derive(Clone)]
pub struct BrokerServer {
    pub(crate) shared: Arc<Shared>,
}

impl BrokerServer {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The broker's own SPIFFE ID.
    pub fn own(&self) -> &SpiffeId {
        &self.shared.own
    }

    /// The CA and JWT signing key.
    pub fn authorities(&self) -> Arc<Authorities> {
        self.shared
            .authorities
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// How long replaced CA and JWT keys stay published: the longest a
    /// credential they signed can live.
    pub fn overlap(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.shared.ttl.max).unwrap_or(i64::MAX))
    }

    /// Changes whenever the CA is rotated.
    pub fn ca_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.rotated.subscribe()
    }

    /// The lease writer (and its live revocation feed).
    pub fn writer(&self) -> &Writer {
        &self.shared.writer
    }
}

pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::Storage(detail) => {
            tracing::error!(error = %detail, "broker storage error");
            Status::unavailable("the broker's storage is unavailable; nothing was changed; retry")
        }
    }
}

pub(crate) fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::of(request)
        .map(|p| p.spiffe_id.to_string())
        .ok_or_else(|| Status::unauthenticated("no verified peer identity"))
}

pub(crate) fn timestamp(ns: i64) -> Option<prost_types::Timestamp> {
    (ns != 0 && ns != i64::MAX).then(|| prost_types::Timestamp {
        seconds: ns.div_euclid(NS),
        nanos: i32::try_from(ns.rem_euclid(NS)).unwrap_or(0),
    })
}

fn ts_ns(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) || ts.seconds < 0 || ts.seconds > 253_402_300_799 {
        return Err(Status::invalid_argument(format!(
            "{field}: is not a valid timestamp between 1970 and 9999"
        )));
    }
    Ok(Some(ts.seconds * NS + i64::from(ts.nanos)))
}

pub(crate) fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Status> {
    if required && value.trim().is_empty() {
        return Err(Status::invalid_argument(format!("{field}: is required")));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {max} bytes, no control characters"
        )));
    }
    Ok(())
}

pub(crate) fn uuid(field: &str, value: &str) -> Result<Uuid, Status> {
    Uuid::try_parse(value).map_err(|_| {
        Status::invalid_argument(format!(
            "{field}: {} is not a UUID",
            steward_errors::shown(value)
        ))
    })
}

pub(crate) fn kind_to_pb(kind: Kind) -> i32 {
    match kind {
        Kind::X509Svid => pb::CredentialKind::X509Svid as i32,
        Kind::JwtSvid => pb::CredentialKind::JwtSvid as i32,
        Kind::ApiToken => pb::CredentialKind::ApiToken as i32,
        Kind::DatabaseRole => pb::CredentialKind::DatabaseRole as i32,
    }
}

fn state_to_pb(state: LeaseState) -> i32 {
    match state {
        LeaseState::Active => pb::LeaseState::Active as i32,
        LeaseState::Revoked => pb::LeaseState::Revoked as i32,
        LeaseState::Expired => pb::LeaseState::Expired as i32,
    }
}

pub fn lease_to_pb(l: &Lease) -> pb::Lease {
    pb::Lease {
        lease_id: l.lease_id.clone(),
        identity_id: l.identity_id.clone(),
        kind: kind_to_pb(l.kind),
        holder: l.holder.clone(),
        spiffe_id: l.spiffe_id.clone(),
        incident_ref: l.incident_ref.clone(),
        window_start: timestamp(l.window_start_ns),
        window_end: timestamp(l.window_end_ns),
        issue_time: timestamp(l.issued_at_ns),
        expire_time: timestamp(l.expires_at_ns),
        max_expire_time: timestamp(l.max_expires_at_ns),
        renewable: l.renewable,
        state: state_to_pb(l.state),
        credential_ref: l.credential_ref.clone(),
        decision_id: l.decision_id.clone(),
        grant_id: l.grant_id.clone(),
        revoke_time: timestamp(l.revoked_at_ns),
        revoked_by: l.revoked_by.clone(),
        revoke_reason: l.revoke_reason.clone(),
        audience: l.audience.clone(),
        scopes: l.scopes.clone(),
    }
}

/// A checked task: the incident and window a credential serves.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub(crate) incident_ref: String,
    pub(crate) window_start_ns: i64,
    pub(crate) window_end_ns: i64,
    pub(crate) reason: String,
    pub(crate) correlation_id: String,
}

pub(crate) fn check_task(task: Option<&pb::Task>, now: i64) -> Result<Task, Status> {
    let task = task.ok_or_else(|| {
        Status::invalid_argument("task: is required (the incident and task window)")
    })?;
    text("task.incident_ref", &task.incident_ref, 256, true)?;
    text("task.correlation_id", &task.correlation_id, 256, false)?;
    if task.reason.len() > 1024 || task.reason.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Status::invalid_argument(
            "task.reason: at most 1024 bytes, no control characters",
        ));
    }
    let start = ts_ns("task.window_start", task.window_start.as_ref())?.unwrap_or(now);
    let end = ts_ns("task.window_end", task.window_end.as_ref())?.unwrap_or(i64::MAX);
    if end <= start {
        return Err(Status::invalid_argument(
            "task.window_end: ends before the window starts",
        ));
    }
    if end <= now {
        return Err(Status::invalid_argument(
            "task.window_end: the task window has already ended",
        ));
    }
    Ok(Task {
        incident_ref: task.incident_ref.clone(),
        window_start_ns: start,
        window_end_ns: end,
        reason: task.reason.trim().to_owned(),
        correlation_id: task.correlation_id.clone(),
    })
}

/// What to issue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Make<'a> {
    /// An X.509-SVID certifying the CSR's key.
    X509 { csr: &'a [u8] },
    /// A JWT-SVID for these audiences.
    Jwt { audience: &'a [String] },
    /// An opaque API token with these scopes.
    Token { scopes: &'a [String] },
    /// A login role in the configured backend, from a template.
    DatabaseRole { template: &'a str },
}

/// What was issued.
#[derive(Debug)]
pub(crate) enum Made {
    X509(IssuedSvid),
    Jwt(String),
    Token(String),
    DatabaseRole(BackendCredential),
}

impl Made {
    /// The X.509-SVID's chain, leaf first (empty for other kinds).
    pub(crate) fn x509_chain(self) -> Vec<Vec<u8>> {
        match self {
            Self::X509(issued) => issued.chain_der,
            _ => Vec::new(),
        }
    }

    /// The JWT or API token (empty for an X.509-SVID).
    pub(crate) fn secret(self) -> String {
        match self {
            Self::Jwt(token) | Self::Token(token) => token,
            Self::X509(_) | Self::DatabaseRole(_) => String::new(),
        }
    }
}

/// What authority allowed.
#[derive(Debug)]
pub(crate) struct Allowed {
    pub(crate) decision: authority_pb::Decision,
    pub(crate) facts: authority_pb::ResourceFacts,
}

impl Allowed {
    /// Puts the decision into the evidence record of its outcome. When
    /// authority left the decision to this record, the record takes the
    /// decision's id and what authority's own record would have said.
    fn carry(&self, record: &mut EvidenceRecord, task: &Task) {
        let d = &self.decision;
        record.target.nhi_kind = truncate_utf8(self.facts.kind.clone(), 256);
        record.decision.policy_set_version = d.policy_set_version.to_string();
        record.decision.effect = EvidenceEffect::Allow;
        record.decision.policy_ids = d.policy_ids.iter().take(64).cloned().collect();
        if !d.grant_id.is_empty() {
            record.decision.approval_ids = vec![d.grant_id.clone()];
        }
        record.correlation_id = truncate_utf8(task.correlation_id.clone(), 256);
        record.outcome.reason = truncate_utf8(task.reason.clone(), MAX_REASON);
        if d.recorded_with_outcome
            && let Ok(id) = Uuid::parse_str(&d.decision_id)
        {
            record.record_id = id;
            let a = &mut record.attributes;
            a.insert("decision_id".into(), d.decision_id.clone());
            a.insert(
                "decision_reason".into(),
                truncate_utf8(d.reason.clone(), 1024),
            );
            if let Some(ttl) = self.max_ttl() {
                a.insert("max_ttl_seconds".into(), ttl.to_string());
            }
            if let Some(o) = d.obligations.as_ref().filter(|o| !o.duties.is_empty()) {
                a.insert("duties".into(), truncate_utf8(o.duties.join(","), 1024));
            }
        }
    }

    fn max_ttl(&self) -> Option<u64> {
        self.decision
            .obligations
            .as_ref()
            .map(|o| o.max_ttl_seconds)
            .filter(|t| *t > 0)
    }
}

impl BrokerServer {
    /// Asks authority `rotate_ca` on this trust domain for the caller of
    /// `request`: the person of its bearer token (forwarded), else its
    /// SPIFFE ID. Anything but ALLOW refuses the rotation; an unreachable
    /// authority rotates nothing (fail closed).
    async fn authorize_ca_rotation<T>(
        &self,
        request: &Request<T>,
        caller: &str,
        reason: &str,
    ) -> Result<steward_evidence::record::Decision, Status> {
        let token = request.metadata().get("authorization").cloned();
        let mut ask = Request::new(authority_pb::AuthorizeRequest {
            principal: Some(authority_pb::Principal {
                kind: Some(if token.is_some() {
                    authority_pb::principal::Kind::Caller(true)
                } else {
                    authority_pb::principal::Kind::Workload(caller.to_owned())
                }),
            }),
            action: "rotate_ca".to_owned(),
            resource_id: self.shared.own.trust_domain().name().to_owned(),
            resource_kind: authority_pb::ResourceKind::TrustDomain as i32,
            context: Some(authority_pb::RequestContext {
                reason: reason.to_owned(),
                ..Default::default()
            }),
            decision_evidence: authority_pb::DecisionEvidence::Unspecified as i32,
        });
        if let Some(token) = token {
            ask.metadata_mut().insert("authorization", token);
        }
        let decision = match self.shared.authority.decide_alone(ask).await {
            Ok(decision) => decision,
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::Unauthenticated
                    | tonic::Code::InvalidArgument
                    | tonic::Code::PermissionDenied => {
                        Status::new(status.code(), format!("authority: {}", status.message()))
                    }
                    code => {
                        tracing::warn!(?code, "authority unreachable; refusing the CA rotation");
                        Status::unavailable(
                            "authority cannot be reached; the CA was not rotated (fail closed); retry",
                        )
                    }
                });
            }
        };
        if authority_pb::Effect::try_from(decision.effect) != Ok(authority_pb::Effect::Allow) {
            return Err(Status::permission_denied(format!(
                "authority denied rotate_ca (decision {}): {}",
                decision.decision_id, decision.reason
            )));
        }
        Ok(steward_evidence::record::Decision {
            policy_set_version: decision.policy_set_version.to_string(),
            effect: steward_evidence::record::Effect::Allow,
            policy_ids: decision.policy_ids,
            approval_ids: Vec::new(),
        })
    }
}

/// Lifecycle states in which an identity gets no credentials.
const DEAD_STATES: &[&str] = &["suspended", "revoked", "decommissioned"];

impl BrokerServer {
    /// Asks authority whether `principal` may `action` on `identity_id`
    /// for `task`; anything but ALLOW is the caller's error.
    pub(crate) async fn authorize(
        &self,
        principal: &str,
        action: &str,
        identity_id: &str,
        task: &Task,
        requested_ttl: u64,
    ) -> Result<Allowed, Status> {
        let request = authority_pb::AuthorizeRequest {
            principal: Some(authority_pb::Principal {
                kind: Some(authority_pb::principal::Kind::Workload(
                    principal.to_owned(),
                )),
            }),
            action: action.to_owned(),
            resource_id: identity_id.to_owned(),
            // An issuance's outcome is always recorded here (the credential
            // with its lease, or the refusal), so its decision goes into
            // that record rather than a record of its own (ADR 0012).
            decision_evidence: if action == "issue" {
                authority_pb::DecisionEvidence::WithOutcome as i32
            } else {
                authority_pb::DecisionEvidence::Unspecified as i32
            },
            context: Some(authority_pb::RequestContext {
                incident_ref: task.incident_ref.clone(),
                window_start: timestamp(task.window_start_ns),
                window_end: timestamp(task.window_end_ns),
                requester: principal.to_owned(),
                acting_human: String::new(),
                requested_ttl_seconds: u32::try_from(requested_ttl).unwrap_or(u32::MAX),
                correlation_id: task.correlation_id.clone(),
                reason: task.reason.clone(),
                claim_by: None,
            }),
            resource_kind: authority_pb::ResourceKind::Nhi as i32,
        };
        let decision = match self.shared.authority.decide(request).await {
            Ok(decision) => decision,
            Err(status) => {
                return Err(match status.code() {
                    tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::PermissionDenied
                    | tonic::Code::FailedPrecondition => {
                        Status::new(status.code(), format!("authority: {}", status.message()))
                    }
                    _ => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "authority unreachable");
                        Status::unavailable(
                            "authority cannot be reached; nothing was issued or changed (fail closed); retry",
                        )
                    }
                });
            }
        };
        match authority_pb::Effect::try_from(decision.effect) {
            Ok(authority_pb::Effect::Allow) => {}
            Ok(authority_pb::Effect::ApprovalRequired) => {
                let mut status = Status::failed_precondition(format!(
                    "approval required: authority opened approval request {} ({}); retry once it is approved",
                    decision.approval_request_id, decision.reason
                ));
                if let Ok(value) = decision.approval_request_id.parse() {
                    status
                        .metadata_mut()
                        .insert("steward-approval-request-id", value);
                }
                return Err(status);
            }
            _ => {
                return Err(Status::permission_denied(format!(
                    "authority denied {action} on identity {identity_id} (decision {}): {}",
                    decision.decision_id, decision.reason
                )));
            }
        }
        let facts = decision.resource.clone().unwrap_or_default();
        let allowed = Allowed { decision, facts };
        if DEAD_STATES.contains(&allowed.facts.state.as_str()) && action != "revoke" {
            let refused = Status::failed_precondition(format!(
                "identity_id: identity {identity_id} is {} in inventory; it gets no credentials",
                allowed.facts.state
            ));
            self.record_refusal(&allowed, principal, identity_id, task, &refused)
                .await;
            return Err(refused);
        }
        Ok(allowed)
    }

    /// The lifetime to issue for: the request's (or `default`), within the
    /// broker's max and authority's obligation, and never beyond the
    /// window. Returns (ttl seconds, expiry ns).
    fn lifetime(
        &self,
        requested: u32,
        default: u64,
        allowed: &Allowed,
        task: &Task,
        now: i64,
    ) -> Result<(i64, i64), Status> {
        let mut ttl = if requested == 0 {
            default
        } else {
            u64::from(requested)
        };
        if let Some(cap) = allowed.max_ttl() {
            if requested != 0 && u64::from(requested) > cap {
                return Err(Status::failed_precondition(format!(
                    "ttl_seconds: {requested} is above the {cap} s the policy allows (decision {})",
                    allowed.decision.decision_id
                )));
            }
            ttl = ttl.min(cap);
        }
        let ttl = i64::try_from(ttl.min(self.shared.ttl.max)).unwrap_or(i64::MAX);
        let expires = now
            .saturating_add(ttl.saturating_mul(NS))
            .min(task.window_end_ns);
        Ok(((expires - now) / NS, expires))
    }

    pub(crate) fn check_ttl(&self, requested: u32) -> Result<(), Status> {
        if u64::from(requested) > self.shared.ttl.max {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: {requested} is above the broker's maximum of {} s",
                self.shared.ttl.max
            )));
        }
        Ok(())
    }

    /// The checks every issuance makes first: the identity, the TTL and
    /// the task. Returns the task and the time of the request.
    pub(crate) fn checked(
        &self,
        identity_id: &str,
        ttl_seconds: u32,
        task: Option<&pb::Task>,
    ) -> Result<(Task, i64), Status> {
        let now = now_ns();
        uuid("identity_id", identity_id)?;
        self.check_ttl(ttl_seconds)?;
        Ok((check_task(task, now)?, now))
    }

    /// Refuses a task window that has not started yet.
    fn started(task: &Task, now: i64) -> Result<(), Status> {
        if task.window_start_ns > now + NS {
            return Err(Status::failed_precondition(
                "task.window_start: the task window has not started; credentials are issued inside it",
            ));
        }
        Ok(())
    }

    /// The live lease of the API token whose SHA-256 is `hash`: what
    /// `Introspect` answers, and what a rotation checks to confirm an old
    /// token is rejected.
    pub(crate) async fn introspection(&self, hash: &[u8]) -> Result<Option<Lease>, StoreError> {
        let lease = self.shared.store.lease_by_token(hash).await?;
        Ok(lease.filter(|l| l.live(now_ns())))
    }

    /// The lease for a credential issued under `allowed`.
    #[allow(clippy::too_many_arguments)]
    fn lease(
        &self,
        kind: Kind,
        identity_id: &str,
        holder: &str,
        spiffe_id: &str,
        task: &Task,
        allowed: &Allowed,
        (ttl, expires): (i64, i64),
        now: i64,
        credential_ref: String,
    ) -> Lease {
        let renewable = kind == Kind::ApiToken;
        let max_ttl = i64::try_from(
            allowed
                .max_ttl()
                .unwrap_or(self.shared.ttl.max)
                .min(self.shared.ttl.max),
        )
        .unwrap_or(i64::MAX);
        let max_expires = if renewable {
            now.saturating_add(max_ttl.saturating_mul(NS))
                .min(task.window_end_ns)
                .max(expires)
        } else {
            expires
        };
        Lease {
            lease_id: Uuid::now_v7().hyphenated().to_string(),
            identity_id: identity_id.to_owned(),
            kind,
            holder: holder.to_owned(),
            spiffe_id: spiffe_id.to_owned(),
            incident_ref: task.incident_ref.clone(),
            window_start_ns: task.window_start_ns,
            window_end_ns: task.window_end_ns,
            issued_at_ns: now,
            expires_at_ns: expires,
            max_expires_at_ns: max_expires,
            ttl_seconds: ttl,
            renewable,
            state: LeaseState::Active,
            credential_ref,
            token_hash: None,
            audience: Vec::new(),
            scopes: Vec::new(),
            decision_id: allowed.decision.decision_id.clone(),
            grant_id: allowed.decision.grant_id.clone(),
            revoked_at_ns: 0,
            revoked_by: String::new(),
            revoke_reason: String::new(),
            backend: String::new(),
            sealed_secret: None,
        }
    }

    /// The evidence of an issued lease.
    fn issue_record(
        &self,
        lease: &Lease,
        allowed: &Allowed,
        task: &Task,
        fingerprint: String,
    ) -> EvidenceRecord {
        let mut record = lease_record(lease, &lease.holder, "credential.issue");
        record.target.credential_fingerprint = fingerprint;
        allowed.carry(&mut record, task);
        record
    }

    /// Records that an issuance authority allowed was not carried out, when
    /// this refusal is the only record its decision will have (ADR 0012).
    async fn record_refusal(
        &self,
        allowed: &Allowed,
        principal: &str,
        identity_id: &str,
        task: &Task,
        refused: &Status,
    ) {
        if !allowed.decision.recorded_with_outcome {
            return;
        }
        let mut record = EvidenceRecord::new(principal, "credential.issue", crate::SPEC.name);
        record.target.nhi_id = identity_id.to_owned();
        record.incident_ref = truncate_utf8(task.incident_ref.clone(), 256);
        allowed.carry(&mut record, task);
        record.outcome.status = OutcomeStatus::Failed;
        record.outcome.reason = truncate_utf8(
            format!("{:?}: {}", refused.code(), refused.message()),
            MAX_REASON,
        );
        if let Err(e) = self
            .shared
            .writer
            .submit(Change::Record {
                evidence: Box::new(record),
            })
            .await
        {
            tracing::error!(error = %e, decision = allowed.decision.decision_id, "a refused issuance could not be recorded");
        }
    }

    /// The identity's SPIFFE ID from the decision's facts, required for an
    /// SVID and required to be in the broker's trust domain.
    fn svid_id(&self, identity_id: &str, allowed: &Allowed) -> Result<SpiffeId, Status> {
        let id = &allowed.facts.spiffe_id;
        if id.is_empty() {
            return Err(Status::failed_precondition(format!(
                "identity_id: identity {identity_id} has no SPIFFE ID in inventory; SVIDs name one"
            )));
        }
        let parsed = SpiffeId::parse(id).map_err(|e| {
            Status::failed_precondition(format!(
                "identity_id: inventory's SPIFFE ID for {identity_id} is invalid: {e}"
            ))
        })?;
        if parsed.trust_domain() != self.shared.own.trust_domain() {
            return Err(Status::failed_precondition(format!(
                "identity_id: {id} is not in the broker's trust domain {}",
                self.shared.own.trust_domain()
            )));
        }
        Ok(parsed)
    }

    /// Asks authority to `issue`, then issues (see [`Self::make`]). The
    /// Workload API issues through here too.
    pub(crate) async fn issue(
        &self,
        principal: &str,
        identity_id: &str,
        what: Make<'_>,
        ttl_seconds: u32,
        task: &Task,
        now: i64,
    ) -> Result<(Lease, Made), Status> {
        let allowed = self
            .authorize(
                principal,
                "issue",
                identity_id,
                task,
                u64::from(ttl_seconds),
            )
            .await?;
        let made = self
            .make(
                &allowed,
                principal,
                identity_id,
                what,
                ttl_seconds,
                task,
                now,
            )
            .await;
        if let Err(refused) = &made {
            self.record_refusal(&allowed, principal, identity_id, task, refused)
                .await;
        }
        made
    }

    /// Issues a credential under a decision already allowed: the
    /// credential, its lease and the evidence, committed together.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn make(
        &self,
        allowed: &Allowed,
        principal: &str,
        identity_id: &str,
        what: Make<'_>,
        ttl_seconds: u32,
        task: &Task,
        now: i64,
    ) -> Result<(Lease, Made), Status> {
        Self::started(task, now)?;
        let ttl = &self.shared.ttl;
        let default = match what {
            Make::X509 { .. } => ttl.x509_svid_default,
            Make::Jwt { .. } => ttl.jwt_svid_default,
            Make::Token { .. } | Make::DatabaseRole { .. } => ttl.api_token_default,
        };
        let (ttl, expires) = self.lifetime(ttl_seconds, default, allowed, task, now)?;
        let (lease, record, made) = match what {
            Make::X509 { csr } => {
                let spiffe_id = self.svid_id(identity_id, allowed)?.to_string();
                let issued = self
                    .authorities()
                    .ca
                    .issue_x509_svid(
                        csr,
                        &spiffe_id,
                        time::Duration::seconds(ttl),
                        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(now))
                            .map_err(|e| Status::internal(e.to_string()))?,
                    )
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let expires = expires.min(
                    i64::try_from(issued.not_after.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                );
                let lease = self.lease(
                    Kind::X509Svid,
                    identity_id,
                    principal,
                    &spiffe_id,
                    task,
                    allowed,
                    (ttl, expires),
                    now,
                    issued.serial.clone(),
                );
                let record =
                    self.issue_record(&lease, allowed, task, hex(&sha256(&issued.cert_der)));
                (lease, record, Made::X509(issued))
            }
            Make::Jwt { audience } => {
                let spiffe_id = self.svid_id(identity_id, allowed)?.to_string();
                let jti = Uuid::new_v4().hyphenated().to_string();
                let mut lease = self.lease(
                    Kind::JwtSvid,
                    identity_id,
                    principal,
                    &spiffe_id,
                    task,
                    allowed,
                    (ttl, expires),
                    now,
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
                claims.insert("iat".into(), (now / NS).into());
                claims.insert("jti".into(), jti.into());
                let token = self
                    .authorities()
                    .jwt
                    .sign("JWT", &claims)
                    .map_err(|e| Status::internal(e.to_string()))?;
                let mut record = self.issue_record(&lease, allowed, task, String::new());
                record
                    .attributes
                    .insert("audience".into(), truncate_utf8(audience.join(" "), 1024));
                (lease, record, Made::Jwt(token))
            }
            Make::Token { scopes } => {
                let mut secret = [0u8; 32];
                self.shared
                    .random
                    .fill(&mut secret)
                    .map_err(|_| Status::internal("no randomness available"))?;
                let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
                let reference = token[..TOKEN_PREFIX.len() + TOKEN_REF_CHARS].to_owned();
                let mut lease = self.lease(
                    Kind::ApiToken,
                    identity_id,
                    principal,
                    &allowed.facts.spiffe_id,
                    task,
                    allowed,
                    (ttl, expires),
                    now,
                    reference,
                );
                lease.token_hash = Some(sha256(token.as_bytes()));
                lease.scopes = scopes.to_vec();
                let mut record = self.issue_record(&lease, allowed, task, String::new());
                record
                    .attributes
                    .insert("scopes".into(), truncate_utf8(scopes.join(" "), 1024));
                (lease, record, Made::Token(token))
            }
            Make::DatabaseRole { template } => {
                let backend = self.shared.backend.clone().ok_or_else(|| {
                    Status::failed_precondition(
                        "template: no database backend is configured (postgres_backend)",
                    )
                })?;
                let credential = backend
                    .create(template, expires)
                    .await
                    .map_err(|e| match e {
                        BackendError::UnknownTemplate(m) => {
                            Status::invalid_argument(format!("template: {m}"))
                        }
                        BackendError::Refused(m) => Status::failed_precondition(m),
                        BackendError::Unavailable(m) => {
                            tracing::warn!(error = m, "database backend unavailable");
                            Status::unavailable(
                                "the database backend cannot be reached; nothing was issued",
                            )
                        }
                    })?;
                let mut lease = self.lease(
                    Kind::DatabaseRole,
                    identity_id,
                    principal,
                    &allowed.facts.spiffe_id,
                    task,
                    allowed,
                    (ttl, expires),
                    now,
                    credential.username.clone(),
                );
                lease.backend = backend.name().to_owned();
                lease.scopes = vec![template.to_owned()];
                lease.sealed_secret = Some(
                    crate::backends::seal(
                        self.shared.kek.as_ref(),
                        &lease.lease_id,
                        &credential.password,
                    )
                    .map_err(Status::internal)?,
                );
                let mut record = self.issue_record(&lease, allowed, task, String::new());
                record
                    .attributes
                    .insert("backend".into(), lease.backend.clone());
                record
                    .attributes
                    .insert("template".into(), truncate_utf8(template.to_owned(), 256));
                (lease, record, Made::DatabaseRole(credential))
            }
        };
        let lease = match self.commit_issue(lease.clone(), record).await {
            Ok(lease) => lease,
            Err(status) => {
                // The credential exists in the backend but no lease does:
                // take it back.
                if let (Made::DatabaseRole(c), Some(backend)) = (&made, &self.shared.backend)
                    && let Err(e) = backend.revoke(&c.username).await
                {
                    tracing::error!(lease = lease.lease_id, error = %e, "an unrecorded database role could not be revoked");
                }
                return Err(status);
            }
        };
        Ok((lease, made))
    }

    async fn commit_issue(&self, lease: Lease, record: EvidenceRecord) -> Result<Lease, Status> {
        match self
            .shared
            .writer
            .submit(Change::Issue {
                lease: Box::new(lease),
                evidence: Box::new(record),
            })
            .await
            .map_err(store_status)?
        {
            Applied::Issued(lease) => Ok(lease),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }

    /// Revokes `leases`, asking authority once per identity first unless
    /// `decided` (authority itself closing an incident).
    pub(crate) async fn revoke(
        &self,
        caller: &str,
        leases: &[Lease],
        reason: &str,
        correlation_id: &str,
        decided: bool,
    ) -> Result<Vec<Lease>, Status> {
        let mut identities: Vec<&str> = if decided {
            Vec::new()
        } else {
            leases.iter().map(|l| l.identity_id.as_str()).collect()
        };
        identities.sort_unstable();
        identities.dedup();
        let now = now_ns();
        for identity in identities {
            // The task is the lease's own incident; revoking ends now.
            let lease = leases
                .iter()
                .find(|l| l.identity_id == identity)
                .ok_or_else(|| Status::internal("lease vanished"))?;
            let lease_task = Task {
                incident_ref: lease.incident_ref.clone(),
                window_start_ns: now,
                window_end_ns: i64::MAX,
                reason: reason.to_owned(),
                correlation_id: correlation_id.to_owned(),
            };
            self.authorize(caller, "revoke", identity, &lease_task, 0)
                .await?;
        }
        let evidence: RevocationEvidence = {
            let caller = caller.to_owned();
            let reason = reason.to_owned();
            let correlation_id = correlation_id.to_owned();
            Arc::new(move |lease: &Lease| {
                let mut record = lease_record(lease, &caller, "credential.revoke");
                record.outcome.reason = truncate_utf8(reason.clone(), MAX_REASON);
                record.correlation_id.clone_from(&correlation_id);
                record
            })
        };
        match self
            .shared
            .writer
            .submit(Change::Revoke {
                lease_ids: leases.iter().map(|l| l.lease_id.clone()).collect(),
                state: LeaseState::Revoked,
                by: caller.to_owned(),
                reason: reason.to_owned(),
                evidence,
            })
            .await
            .map_err(store_status)?
        {
            Applied::Revoked(ended) => Ok(ended),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }
}

/// A lease event's evidence, with what every one of them records.
pub fn lease_record(lease: &Lease, actor: &str, action: &str) -> EvidenceRecord {
    let mut record = EvidenceRecord::new(actor, action, crate::SPEC.name);
    record.target.nhi_id.clone_from(&lease.identity_id);
    record.target.lease_id.clone_from(&lease.lease_id);
    record.target.credential_serial = truncate_utf8(lease.credential_ref.clone(), 256);
    record.incident_ref = truncate_utf8(lease.incident_ref.clone(), 256);
    let attributes = &mut record.attributes;
    attributes.insert("kind".into(), lease.kind.as_str().into());
    attributes.insert("holder".into(), truncate_utf8(lease.holder.clone(), 1024));
    if !lease.spiffe_id.is_empty() {
        attributes.insert(
            "spiffe_id".into(),
            truncate_utf8(lease.spiffe_id.clone(), 1024),
        );
    }
    attributes.insert("expires_at_ns".into(), lease.expires_at_ns.to_string());
    attributes.insert("state".into(), lease.state.as_str().into());
    if !lease.decision_id.is_empty() {
        attributes.insert("decision_id".into(), lease.decision_id.clone());
    }
    record
}

pub(crate) fn check_audience(audience: &[String]) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument(
            "audience: at least one is required (JWT-SVIDs are always audience-bound)",
        ));
    }
    if audience.len() > 16 {
        return Err(Status::invalid_argument("audience: at most 16"));
    }
    for (i, a) in audience.iter().enumerate() {
        text(&format!("audience[{i}]"), a, 256, true)?;
    }
    Ok(())
}

pub(crate) fn check_scopes(scopes: &[String]) -> Result<(), Status> {
    if scopes.len() > 32 {
        return Err(Status::invalid_argument("scopes: at most 32"));
    }
    for (i, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ":._/-*".contains(c));
        if !ok {
            return Err(Status::invalid_argument(format!(
                "scopes[{i}]: 1 to 128 of A-Z a-z 0-9 : . _ / - *"
            )));
        }
    }
    Ok(())
}

pub(crate) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Revocation, Status>> + Send>>;

#[tonic::async_trait]
impl CredentialBroker for BrokerServer {
    async fn get_trust_bundle(
        &self,
        _request: Request<pb::GetTrustBundleRequest>,
    ) -> Result<Response<pb::GetTrustBundleResponse>, Status> {
        let authorities = self.authorities();
        Ok(Response::new(pb::GetTrustBundleResponse {
            trust_domain: self.shared.own.trust_domain().name().to_owned(),
            x509_authorities: authorities.roots.clone(),
            jwt_authorities: serde_json::to_vec(&authorities.jwks)
                .map_err(|e| Status::internal(e.to_string()))?,
            x509_intermediates: authorities.intermediates.clone(),
        }))
    }

    async fn rotate_ca(
        &self,
        request: Request<pb::RotateCaRequest>,
    ) -> Result<Response<pb::RotateCaResponse>, Status> {
        let caller = caller(&request)?;
        text("reason", &request.get_ref().reason, 1024, true)?;
        let allowed = self
            .authorize_ca_rotation(&request, &caller, &request.get_ref().reason)
            .await?;
        let r = request.into_inner();
        let what = if r.rotate_root {
            crate::authorities::CaRotation::Root
        } else {
            crate::authorities::CaRotation::Intermediate
        };
        let trust_domain = self.shared.own.trust_domain().name().to_owned();
        let current = self.authorities();
        current
            .rotate(
                &self.shared.store,
                self.shared.kek.as_ref(),
                &self.shared.ca_config,
                &crate::authorities::RotationOrder {
                    actor: &caller,
                    what,
                    reason: &r.reason,
                    decision: &allowed,
                },
            )
            .await
            .map_err(|e| {
                tracing::error!(error = e, "CA rotation failed");
                Status::unavailable("the CA could not be rotated; nothing changed")
            })?;
        let reloaded = Authorities::load_or_generate(
            &self.shared.store,
            self.shared.kek.as_ref(),
            &trust_domain,
            &self.shared.ca_config,
            &self.shared.own.to_string(),
            self.overlap(),
        )
        .await
        .map_err(|e| {
            tracing::error!(error = e, "cannot load the rotated CA");
            Status::unavailable("the rotated CA could not be loaded; restart the broker")
        })?;
        *self
            .shared
            .authorities
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(reloaded);
        self.shared.rotated.send_modify(|n| *n += 1);
        let bundle = self
            .get_trust_bundle(Request::new(pb::GetTrustBundleRequest {}))
            .await?
            .into_inner();
        Ok(Response::new(pb::RotateCaResponse {
            bundle: Some(bundle),
        }))
    }

    async fn issue_x509_svid(
        &self,
        request: Request<pb::IssueX509SvidRequest>,
    ) -> Result<Response<pb::IssueX509SvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        if r.csr.is_empty() {
            return Err(Status::invalid_argument(
                "csr: is required (a DER PKCS#10 request; the private key stays with the caller)",
            ));
        }
        if r.csr.len() > 16 * 1024 {
            return Err(Status::invalid_argument("csr: at most 16 KiB"));
        }
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::X509 { csr: &r.csr },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueX509SvidResponse {
            lease: Some(lease_to_pb(&lease)),
            x509_svid: made.x509_chain(),
            bundle: self.authorities().roots.clone(),
        }))
    }

    async fn issue_jwt_svid(
        &self,
        request: Request<pb::IssueJwtSvidRequest>,
    ) -> Result<Response<pb::IssueJwtSvidResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        check_audience(&r.audience)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::Jwt {
                    audience: &r.audience,
                },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueJwtSvidResponse {
            lease: Some(lease_to_pb(&lease)),
            token: made.secret(),
        }))
    }

    async fn issue_api_token(
        &self,
        request: Request<pb::IssueApiTokenRequest>,
    ) -> Result<Response<pb::IssueApiTokenResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        check_scopes(&r.scopes)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::Token { scopes: &r.scopes },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        Ok(Response::new(pb::IssueApiTokenResponse {
            lease: Some(lease_to_pb(&lease)),
            token: made.secret(),
        }))
    }

    async fn issue_database_credential(
        &self,
        request: Request<pb::IssueDatabaseCredentialRequest>,
    ) -> Result<Response<pb::IssueDatabaseCredentialResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        let (task, now) = self.checked(&r.identity_id, r.ttl_seconds, r.task.as_ref())?;
        text("template", &r.template, 64, true)?;
        let (lease, made) = self
            .issue(
                &caller,
                &r.identity_id,
                Make::DatabaseRole {
                    template: &r.template,
                },
                r.ttl_seconds,
                &task,
                now,
            )
            .await?;
        let Made::DatabaseRole(credential) = made else {
            return Err(Status::internal("the backend answered out of kind"));
        };
        Ok(Response::new(pb::IssueDatabaseCredentialResponse {
            lease: Some(lease_to_pb(&lease)),
            username: credential.username,
            password: credential.password,
        }))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let token = request.into_inner().token;
        if token.is_empty() || token.len() > 256 {
            return Err(Status::invalid_argument(
                "token: is required (at most 256 bytes)",
            ));
        }
        let inactive = || Response::new(pb::IntrospectResponse::default());
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(inactive());
        }
        let Some(lease) = self
            .introspection(&sha256(token.as_bytes()))
            .await
            .map_err(store_status)?
        else {
            return Ok(inactive());
        };
        Ok(Response::new(pb::IntrospectResponse {
            active: true,
            lease_id: lease.lease_id,
            identity_id: lease.identity_id,
            subject: lease.spiffe_id,
            scopes: lease.scopes,
            expire_time: timestamp(lease.expires_at_ns),
            issue_time: timestamp(lease.issued_at_ns),
            holder: lease.holder,
            incident_ref: lease.incident_ref,
        }))
    }

    async fn get_lease(
        &self,
        request: Request<pb::GetLeaseRequest>,
    ) -> Result<Response<pb::GetLeaseResponse>, Status> {
        let id = request.into_inner().lease_id;
        uuid("lease_id", &id)?;
        let lease = self.shared.store.lease(&id).await.map_err(store_status)?;
        Ok(Response::new(pb::GetLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let r = request.into_inner();
        let page_size = match r.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(Status::invalid_argument("page_size: at most 1000"));
            }
            n => n as usize,
        };
        if !r.identity_id.is_empty() {
            uuid("identity_id", &r.identity_id)?;
        }
        text("incident_ref", &r.incident_ref, 256, false)?;
        text("holder", &r.holder, 2048, false)?;
        if !r.page_token.is_empty() {
            uuid("page_token", &r.page_token)?;
        }
        let state = match pb::LeaseState::try_from(r.state) {
            Ok(pb::LeaseState::Unspecified) => None,
            Ok(pb::LeaseState::Active) => Some(LeaseState::Active),
            Ok(pb::LeaseState::Revoked) => Some(LeaseState::Revoked),
            Ok(pb::LeaseState::Expired) => Some(LeaseState::Expired),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a LeaseState",
                    r.state
                )));
            }
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = LeaseFilter {
            identity_id: some(r.identity_id),
            incident_ref: some(r.incident_ref),
            holder: some(r.holder),
            state,
        };
        let mut leases = self
            .shared
            .store
            .list(&filter, &r.page_token, page_size + 1)
            .await
            .map_err(store_status)?;
        let more = leases.len() > page_size;
        leases.truncate(page_size);
        let next_page_token = if more {
            leases
                .last()
                .map(|l| l.lease_id.clone())
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListLeasesResponse {
            leases: leases.iter().map(lease_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn renew_lease(
        &self,
        request: Request<pb::RenewLeaseRequest>,
    ) -> Result<Response<pb::RenewLeaseResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        uuid("lease_id", &r.lease_id)?;
        self.check_ttl(r.ttl_seconds)?;
        let lease = self
            .shared
            .store
            .lease(&r.lease_id)
            .await
            .map_err(store_status)?;
        let now = now_ns();
        let ttl = if r.ttl_seconds == 0 {
            lease.ttl_seconds
        } else {
            i64::from(r.ttl_seconds)
        };
        // Refused before authority is asked: a policy cap only shortens it.
        if let Some(why) = lease.renewal_refused(now, now.saturating_add(ttl.saturating_mul(NS))) {
            return Err(Status::failed_precondition(why));
        }
        let task = Task {
            incident_ref: lease.incident_ref.clone(),
            window_start_ns: lease.window_start_ns,
            window_end_ns: lease.window_end_ns,
            reason: format!("renew lease {}", lease.lease_id),
            correlation_id: String::new(),
        };
        let allowed = self
            .authorize(
                &caller,
                "renew",
                &lease.identity_id,
                &task,
                u64::try_from(ttl).unwrap_or(0),
            )
            .await?;
        let ttl = allowed
            .max_ttl()
            .map_or(ttl, |cap| ttl.min(i64::try_from(cap).unwrap_or(i64::MAX)));
        let expires_at_ns = now.saturating_add(ttl.saturating_mul(NS));
        let decision_id = allowed.decision.decision_id.clone();
        let evidence = Box::new(move |lease: &Lease| {
            let mut record = lease_record(lease, &caller, "credential.renew");
            record.decision.effect = EvidenceEffect::Allow;
            record
                .attributes
                .insert("renew_decision_id".into(), decision_id.clone());
            record
        });
        match self
            .shared
            .writer
            .submit(Change::Renew {
                lease_id: lease.lease_id,
                expires_at_ns,
                evidence,
            })
            .await
            .map_err(store_status)?
        {
            Applied::Renewed(lease) => Ok(Response::new(pb::RenewLeaseResponse {
                lease: Some(lease_to_pb(&lease)),
            })),
            _ => Err(Status::internal("the lease writer answered out of kind")),
        }
    }

    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        uuid("lease_id", &r.lease_id)?;
        text("reason", &r.reason, 1024, true)?;
        let lease = self
            .shared
            .store
            .lease(&r.lease_id)
            .await
            .map_err(store_status)?;
        if lease.state != LeaseState::Active {
            // Already ended: nothing to do, and nothing to record.
            return Ok(Response::new(pb::RevokeLeaseResponse {
                lease: Some(lease_to_pb(&lease)),
            }));
        }
        let ended = self
            .revoke(&caller, std::slice::from_ref(&lease), &r.reason, "", false)
            .await?;
        let lease = match ended.into_iter().next() {
            Some(lease) => lease,
            // Ended meanwhile (the reaper, another revocation).
            None => self
                .shared
                .store
                .lease(&r.lease_id)
                .await
                .map_err(store_status)?,
        };
        Ok(Response::new(pb::RevokeLeaseResponse {
            lease: Some(lease_to_pb(&lease)),
        }))
    }

    async fn revoke_leases(
        &self,
        request: Request<pb::RevokeLeasesRequest>,
    ) -> Result<Response<pb::RevokeLeasesResponse>, Status> {
        let caller = caller(&request)?;
        let r = request.into_inner();
        text("reason", &r.reason, 1024, true)?;
        text("correlation_id", &r.correlation_id, 256, false)?;
        // Authority revoking a closed incident's leases has decided already:
        // closing the incident was its decision.
        let decided =
            matches!(
                r.selector,
                Some(pb::revoke_leases_request::Selector::IncidentRef(_))
            ) && SpiffeId::from_parts(self.shared.own.trust_domain(), "/service/authority")
                .is_ok_and(|authority| authority.to_string() == caller);
        let filter = match r.selector {
            Some(pb::revoke_leases_request::Selector::IncidentRef(i)) => {
                text("incident_ref", &i, 256, true)?;
                LeaseFilter {
                    incident_ref: Some(i),
                    ..LeaseFilter::default()
                }
            }
            Some(pb::revoke_leases_request::Selector::IdentityId(i)) => {
                uuid("identity_id", &i)?;
                LeaseFilter {
                    identity_id: Some(i),
                    ..LeaseFilter::default()
                }
            }
            Some(pb::revoke_leases_request::Selector::Holder(h)) => {
                SpiffeId::parse(&h)
                    .map_err(|e| Status::invalid_argument(format!("holder: {e}")))?;
                LeaseFilter {
                    holder: Some(h),
                    ..LeaseFilter::default()
                }
            }
            None => {
                return Err(Status::invalid_argument(
                    "selector: one of incident_ref, identity_id or holder is required",
                ));
            }
        };
        let mut leases = self
            .shared
            .store
            .list(
                &LeaseFilter {
                    state: Some(LeaseState::Active),
                    ..filter
                },
                "",
                MAX_BULK_REVOKE + 1,
            )
            .await
            .map_err(store_status)?;
        let more = leases.len() > MAX_BULK_REVOKE;
        leases.truncate(MAX_BULK_REVOKE);
        if leases.is_empty() {
            return Ok(Response::new(pb::RevokeLeasesResponse::default()));
        }
        let ended = self
            .revoke(&caller, &leases, &r.reason, &r.correlation_id, decided)
            .await?;
        Ok(Response::new(pb::RevokeLeasesResponse {
            lease_ids: ended.into_iter().map(|l| l.lease_id).collect(),
            more,
        }))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        self.rotate_impl(request).await.map(Response::new)
    }

    async fn get_rotation(
        &self,
        request: Request<pb::GetRotationRequest>,
    ) -> Result<Response<pb::GetRotationResponse>, Status> {
        let id = request.into_inner().rotation_id;
        uuid("rotation_id", &id)?;
        let rotation = self
            .shared
            .store
            .rotation(&id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetRotationResponse {
            rotation: Some(crate::rotation::to_pb(&rotation)),
        }))
    }

    type WatchRevocationsStream = WatchStream;

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let after = request.into_inner().after_sequence;
        if let Some(a) = after
            && i64::try_from(a).is_err()
        {
            return Err(Status::invalid_argument("after_sequence: out of range"));
        }
        let stream = watch::stream(
            self.shared.store.clone(),
            &self.shared.writer,
            after.map(|a| i64::try_from(a).unwrap_or(0)),
        )
        .await
        .map_err(store_status)?;
        Ok(Response::new(Box::pin(stream)))
    }
}
