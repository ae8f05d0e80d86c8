//! The gRPC adapter: requests checked and turned into engine requests, NHI
//! facts read from inventory, decisions recorded as evidence.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{
    Decision as EvidenceDecision, Effect as EvidenceEffect, MAX_ATTRIBUTE_VALUE, MAX_IDS,
    MAX_REASON, truncate_utf8,
};
use steward_identity::{PeerIdentity, SpiffeId};
use steward_outbox::Batcher;
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_server::AuthorityService;
use steward_proto::steward::inventory::v1 as inventory;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

mod approvals;
mod responder;
mod rules;

use crate::approvals::{APPROVAL_TTL_SECS, Actor, ApprovalRequest, ApprovalState, Grant};
use crate::config::AuthorityConfig;
use crate::engine::{
    CompiledSet, Decision, DecisionRequest, Effect, Engine, NHI_ACTIONS, NhiFacts, PolicyError,
    Principal, RequestContext, Resource,
};
use crate::facts::{FactsCache, Lookup};
use crate::humans::Humans;
use crate::store::{NewVersion, SetKind, Store, StoreError, StoredSet};

/// The emitting service's name in every record.
const SERVICE: &str = "authority";
/// Most requests one `AuthorizeBatch` decides.
pub const MAX_AUTHORIZE_BATCH: usize = 256;

/// The active policy set, compiled.
#[derive(Debug)]
pub struct Active {
    pub version: u64,
    pub set: Arc<CompiledSet>,
}

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    pub engine: Engine,
    pub store: Store,
    pub active: RwLock<Arc<Active>>,
    /// Compiled versions other than the active one (DryRun, Explain).
    pub compiled: RwLock<HashMap<u64, Arc<CompiledSet>>>,
    pub config: AuthorityConfig,
    /// Verifies humans' bearer tokens.
    pub humans: Humans,
    /// This service's own SPIFFE ID (the actor of its sweeps).
    pub own: SpiffeId,
    /// The principals that hold an active grant: decisions for anyone else
    /// skip the grants query. Grants issued here are added at once; the
    /// set is re-read every two seconds for grants issued by other
    /// replicas (until then those principals are asked to get approval).
    pub grant_holders: RwLock<std::collections::HashSet<String>>,
    /// NHIs' facts, kept coherent with inventory (ADR 0008).
    pub facts: Arc<FactsCache>,
    /// Closed incidents the broker must revoke the leases of.
    pub closures: Arc<crate::closures::Closures>,
}

impl Shared {
    /// The service itself, as the actor of its background changes.
    pub fn own_actor(&self) -> Actor {
        Actor {
            workload: self.own.to_string(),
            ..Actor::default()
        }
    }

    /// Whether `principal` may hold an active grant.
    pub fn may_hold_grant(&self, principal: &str) -> bool {
        self.grant_holders
            .read()
            .map_or(true, |holders| holders.contains(principal))
    }

    /// Notes a grant issued to `principal`.
    pub fn holds_grant(&self, principal: &str) {
        if let Ok(mut holders) = self.grant_holders.write() {
            holders.insert(principal.to_owned());
        }
    }

    /// Re-reads the grant holders from the database.
    pub async fn refresh_grant_holders(&self) -> Result<(), StoreError> {
        let holders = self.store.grant_holders().await?;
        if let Ok(mut slot) = self.grant_holders.write() {
            *slot = holders;
        }
        Ok(())
    }

    pub fn active(&self) -> Arc<Active> {
        self.active
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn set_active(&self, active: Active) {
        let mut slot = self.active.write().unwrap_or_else(|p| p.into_inner());
        *slot = Arc::new(active);
    }

    /// Compiles a stored version (cached).
    pub async fn compiled(&self, version: u64) -> Result<(u64, Arc<CompiledSet>), Status> {
        let active = self.active();
        if version == 0 || version == active.version {
            return Ok((active.version, active.set.clone()));
        }
        if let Some(set) = self
            .compiled
            .read()
            .ok()
            .and_then(|c| c.get(&version).cloned())
        {
            return Ok((version, set));
        }
        let stored = self
            .store
            .get(SetKind::Policies, version)
            .await
            .map_err(store_status)?;
        let set = CompiledSet::compile(&self.engine, &stored.policies).map_err(|e| {
            Status::internal(format!(
                "stored policy set {version} no longer compiles: {:?}",
                e.first()
            ))
        })?;
        let set = Arc::new(set);
        if let Ok(mut cache) = self.compiled.write() {
            cache.insert(version, set.clone());
        }
        Ok((version, set))
    }
}

#[derive(Debug, Clone)]
pub struct AuthorityServer {
    shared: Arc<Shared>,
    inventory: InventoryServiceClient<Channel>,
    evidence: Batcher,
}

impl AuthorityServer {
    pub fn new(shared: Arc<Shared>, inventory: Channel, evidence: Batcher) -> Self {
        Self {
            shared,
            inventory: InventoryServiceClient::new(inventory),
            evidence,
        }
    }

    fn own_trust_domain(&self) -> &steward_identity::TrustDomain {
        self.shared.own.trust_domain()
    }

    /// Whether `workload` is in this trust domain under `/<role>/`.
    fn has_role(&self, workload: &str, role: &str) -> bool {
        SpiffeId::parse(workload).is_ok_and(|id| {
            id.trust_domain() == self.own_trust_domain()
                && id
                    .path()
                    .strip_prefix('/')
                    .and_then(|p| p.strip_prefix(role))
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

pub fn store_status(error: StoreError) -> Status {
    match error {
        StoreError::NotFound(m) => Status::not_found(m),
        StoreError::FailedPrecondition(m) => Status::failed_precondition(m),
        StoreError::AlreadyExists(m) => Status::already_exists(m),
        StoreError::PermissionDenied(m) => Status::permission_denied(m),
        StoreError::Storage(detail) => {
            tracing::error!(error = %detail, "authority storage error");
            Status::unavailable("authority storage is unavailable; retry")
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::of(request)
        .map(|p| p.spiffe_id.to_string())
        .ok_or_else(|| Status::unauthenticated("no verified peer identity"))
}

fn now_ns() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

fn timestamp(ns: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ns.div_euclid(1_000_000_000),
        nanos: i32::try_from(ns.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

fn errors_to_pb(errors: &[PolicyError]) -> Vec<pb::PolicyError> {
    errors
        .iter()
        .map(|e| pb::PolicyError {
            line: e.line,
            column: e.column,
            policy_id: e.policy_id.clone(),
            message: e.message.clone(),
        })
        .collect()
}

fn set_to_pb(s: &StoredSet, active: u64, with_text: bool) -> pb::PolicySet {
    pb::PolicySet {
        version: s.version,
        description: s.description.clone(),
        uploaded_by: s.uploaded_by.clone(),
        create_time: Some(timestamp(s.created_at_ns)),
        policy_ids: s.policy_ids.clone(),
        active: s.version == active,
        policies: if with_text {
            s.policies.clone()
        } else {
            String::new()
        },
    }
}

/// An evidence record of a change `actor` made (its person too), under
/// `decision`.
pub(crate) fn actor_record(
    actor: &Actor,
    action: &str,
    reason: &str,
    attributes: BTreeMap<String, String>,
    decision: &EvidenceDecision,
) -> EvidenceRecord {
    let mut record = record(&actor.workload, action, reason, attributes);
    record.actor.human_subject = actor.human_subject.clone();
    record.actor.human_issuer = actor.human_issuer.clone();
    record.decision = decision.clone();
    record
}

/// An evidence record by `actor` about the authority itself.
pub fn record(
    actor: &str,
    action: &str,
    reason: &str,
    attributes: BTreeMap<String, String>,
) -> EvidenceRecord {
    let mut record = EvidenceRecord::new(actor, action, SERVICE);
    record.outcome.reason = truncate_utf8(reason.to_owned(), MAX_REASON);
    record.attributes = attributes
        .into_iter()
        .map(|(k, v)| (k, truncate_utf8(v, MAX_ATTRIBUTE_VALUE)))
        .collect();
    record
}

fn effect_to_pb(effect: Effect) -> i32 {
    match effect {
        Effect::Allow => pb::Effect::Allow as i32,
        Effect::Deny => pb::Effect::Deny as i32,
        Effect::ApprovalRequired => pb::Effect::ApprovalRequired as i32,
    }
}

fn seconds(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    match ts {
        None => Ok(None),
        Some(t) if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 => Err(
            Status::invalid_argument(format!("{field}: is not a valid time")),
        ),
        Some(t) => Ok(Some(t.seconds)),
    }
}

/// A checked request, before facts.
/// What a request asked beyond the decision itself.
struct Extras {
    correlation_id: String,
    reason: String,
    /// Unix seconds; `i64::MAX` when unset.
    claim_by: i64,
    standing: Standing,
}

struct Asked {
    principal: Principal,
    standing: Standing,
    action: String,
    resource: AskedResource,
    context: RequestContext,
    correlation_id: String,
    reason: String,
    /// Unix seconds; `i64::MAX` when unset.
    claim_by: i64,
}

/// What an `Authorize` is about, checked.
#[derive(Debug, Clone)]
enum AskedResource {
    Nhi(Uuid),
    /// This trust domain, for `rotate_ca`.
    TrustDomain(String),
}

/// Why the caller may ask about the request's principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
    /// It is the caller: the person of its bearer token, else its SPIFFE ID.
    Own,
    /// A Steward service carrying its own caller's request (ADR 0015).
    Service,
    /// A caller that a policy permits to act for the principal (`act_for`).
    Delegate {
        policy_ids: Vec<String>,
        version: u64,
    },
    /// DryRun and Explain: a question about anyone, which changes nothing.
    WhatIf,
}

/// Whether a request may ask about principals other than its caller
/// without a delegation: only questions that change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asking {
    /// Authorize: a decision that is recorded, spends grants and opens
    /// approval requests.
    ForReal,
    /// DryRun, Explain.
    WhatIf,
}

/// The Steward services that may ask on behalf of their own callers
/// without a policy: they authenticated that caller themselves.
const DELEGATING_SERVICES: &[&str] = &["/service/credential-broker", "/service/inventory"];

/// The context of a decision about what `actor` itself is doing now, for
/// `incident_ref` (no task window beyond the moment).
fn own_context(actor: &Actor, incident_ref: &str) -> RequestContext {
    let now = now_ns() / 1_000_000_000;
    RequestContext {
        incident_ref: incident_ref.to_owned(),
        now,
        window_start: now,
        window_end: now,
        requester: actor.name().to_owned(),
        acting_workload: actor.workload.clone(),
        acting_human: actor.human_subject.clone(),
        ..RequestContext::default()
    }
}

/// Whether two principals are the same one.
fn same_principal(a: &Principal, b: &Principal) -> bool {
    match (a, b) {
        (Principal::Workload { spiffe_id: x, .. }, Principal::Workload { spiffe_id: y, .. }) => {
            x == y
        }
        (
            Principal::Human {
                subject: x,
                issuer: xi,
                ..
            },
            Principal::Human {
                subject: y,
                issuer: yi,
                ..
            },
        ) => x == y && xi == yi,
        _ => false,
    }
}

impl AuthorityServer {
    /// Whether `workload` is one of the services in [`DELEGATING_SERVICES`]
    /// of this trust domain.
    pub(crate) fn is_delegating_service(&self, workload: &str) -> bool {
        SpiffeId::parse(workload).is_ok_and(|id| {
            id.trust_domain() == self.own_trust_domain() && DELEGATING_SERVICES.contains(&id.path())
        })
    }

    /// The request's principal, as written (not yet bound to the caller).
    fn named_principal(
        &self,
        r: &pb::AuthorizeRequest,
        actor: &Actor,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Principal, Status> {
        match r.principal.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(pb::principal::Kind::Caller(true)) => self.principal_of(actor),
            Some(pb::principal::Kind::Caller(false)) => Err(Status::invalid_argument(format!(
                "{}: is false; set it to ask for the caller, or name a principal",
                field("principal.caller")
            ))),
            Some(pb::principal::Kind::Workload(id)) => {
                let id = SpiffeId::parse(id).map_err(|e| {
                    Status::invalid_argument(format!("{}: {e}", field("principal.workload")))
                })?;
                let spiffe_id = id.to_string();
                Ok(Principal::Workload {
                    groups: self.shared.config.groups_of(&spiffe_id),
                    trust_domain: id.trust_domain().name().to_owned(),
                    spiffe_id,
                })
            }
            Some(pb::principal::Kind::Human(h)) => {
                for (name, value) in [("subject", &h.subject), ("issuer", &h.issuer)] {
                    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control)
                    {
                        return Err(Status::invalid_argument(format!(
                            "{}: is required (at most 256 bytes, no control characters)",
                            field(&format!("principal.human.{name}"))
                        )));
                    }
                }
                Ok(Principal::Human {
                    groups: self
                        .shared
                        .config
                        .groups_of(&format!("human:{}", h.subject)),
                    subject: h.subject.clone(),
                    issuer: h.issuer.clone(),
                })
            }
            None => Err(Status::invalid_argument(format!(
                "{}: is required",
                field("principal")
            ))),
        }
    }

    /// Binds `principal` to the verified caller: it is the caller, or the
    /// caller is a delegating Steward service, or a policy permits the
    /// caller to `act_for` it. Anything else is PERMISSION_DENIED.
    fn standing(
        &self,
        principal: &Principal,
        actor: &Actor,
        asking: Asking,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Standing, Status> {
        let own = self.principal_of(actor)?;
        if same_principal(principal, &own) {
            return Ok(Standing::Own);
        }
        if self.is_delegating_service(&actor.workload) {
            return Ok(Standing::Service);
        }
        if asking == Asking::WhatIf {
            return Ok(Standing::WhatIf);
        }
        let resource = self
            .shared
            .engine
            .principal_resource(principal)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (decision, version) = self.decide_now(&DecisionRequest {
            principal: own,
            action: "act_for".to_owned(),
            resource,
            context: own_context(actor, ""),
        })?;
        if decision.effect != Effect::Allow {
            return Err(Status::permission_denied(format!(
                "{}: {} may not act for {}: {}",
                field("principal"),
                steward_errors::shown(actor.name()),
                steward_errors::shown(principal.id()),
                decision.reason
            )));
        }
        Ok(Standing::Delegate {
            policy_ids: decision.policy_ids,
            version,
        })
    }

    fn check(
        &self,
        r: &pb::AuthorizeRequest,
        prefix: &str,
        actor: &Actor,
        asking: Asking,
    ) -> Result<Asked, Status> {
        let field = |f: &str| format!("{prefix}{f}");
        let principal = self.named_principal(r, actor, &field)?;
        let resource = match pb::ResourceKind::try_from(r.resource_kind) {
            Ok(pb::ResourceKind::Unspecified | pb::ResourceKind::Nhi) => {
                if !NHI_ACTIONS.contains(&r.action.as_str()) {
                    return Err(Status::invalid_argument(format!(
                        "{}: {} is not one of {}",
                        field("action"),
                        steward_errors::shown(&r.action),
                        NHI_ACTIONS.join(", ")
                    )));
                }
                AskedResource::Nhi(Uuid::try_parse(&r.resource_id).map_err(|_| {
                    Status::invalid_argument(format!(
                        "{}: is not an identity id (UUID)",
                        field("resource_id")
                    ))
                })?)
            }
            Ok(pb::ResourceKind::TrustDomain) => {
                if r.action != "rotate_ca" {
                    return Err(Status::invalid_argument(format!(
                        "{}: {} is not an action on a trust domain (rotate_ca)",
                        field("action"),
                        steward_errors::shown(&r.action)
                    )));
                }
                if r.resource_id != self.own_trust_domain().name() {
                    return Err(Status::invalid_argument(format!(
                        "{}: {} is not this trust domain",
                        field("resource_id"),
                        steward_errors::shown(&r.resource_id)
                    )));
                }
                AskedResource::TrustDomain(r.resource_id.clone())
            }
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "{}: {} is not a resource kind",
                    field("resource_kind"),
                    r.resource_kind
                )));
            }
        };
        let c = r.context.clone().unwrap_or_default();
        for (name, value) in [
            ("incident_ref", &c.incident_ref),
            ("requester", &c.requester),
            ("acting_human", &c.acting_human),
            ("correlation_id", &c.correlation_id),
        ] {
            if value.len() > 256 || value.chars().any(char::is_control) {
                return Err(Status::invalid_argument(format!(
                    "{}: at most 256 bytes, no control characters",
                    field(&format!("context.{name}"))
                )));
            }
        }
        if c.reason.len() > 1024 || c.reason.chars().any(|ch| ch.is_control() && ch != '\n') {
            return Err(Status::invalid_argument(format!(
                "{}: at most 1024 bytes, no control characters",
                field("context.reason")
            )));
        }
        let now = now_ns() / 1_000_000_000;
        let window_start =
            seconds(&field("context.window_start"), c.window_start.as_ref())?.unwrap_or(now);
        let window_end =
            seconds(&field("context.window_end"), c.window_end.as_ref())?.unwrap_or(i64::MAX);
        if window_end < window_start {
            return Err(Status::invalid_argument(format!(
                "{}: ends before the window starts",
                field("context.window_end")
            )));
        }
        // For an approval, "who asked" is someone else's request: it must be
        // stated, or the no-self-approval rule could not be checked.
        if r.action == "approve" && c.requester.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{}: is required for approve (the principal that made the request being approved)",
                field("context.requester")
            )));
        }
        let standing = self.standing(&principal, actor, asking, &field)?;
        // Who asked, and the person behind the call, are the verified
        // caller's: only a delegating service names them for its caller.
        let (requester, acting_human) = match standing {
            Standing::Service | Standing::WhatIf => (
                if c.requester.is_empty() {
                    principal.id().to_owned()
                } else {
                    c.requester
                },
                c.acting_human,
            ),
            Standing::Own | Standing::Delegate { .. } => {
                let requester = if r.action == "approve" {
                    // The request being approved: the forbid on
                    // self-approval reads it, so it cannot help a caller.
                    c.requester
                } else if c.requester.is_empty() || c.requester == actor.name() {
                    actor.name().to_owned()
                } else {
                    return Err(Status::permission_denied(format!(
                        "{}: the requester is the verified caller ({}); only Steward services name another",
                        field("context.requester"),
                        steward_errors::shown(actor.name())
                    )));
                };
                if !(c.acting_human.is_empty() || c.acting_human == actor.human_subject) {
                    return Err(Status::permission_denied(format!(
                        "{}: the acting human is the one of this call's bearer token; only Steward services name another",
                        field("context.acting_human")
                    )));
                }
                (requester, actor.human_subject.clone())
            }
        };
        // Checked against the clock only when it opens an approval request.
        let claim_by =
            seconds(&field("context.claim_by"), c.claim_by.as_ref())?.unwrap_or(i64::MAX);
        Ok(Asked {
            reason: c.reason.trim().to_owned(),
            claim_by,
            context: RequestContext {
                incident_ref: c.incident_ref,
                now,
                window_start,
                window_end,
                // Only a grant supplies these (see `authorize`).
                approvers: Default::default(),
                break_glass: false,
                requester,
                acting_workload: actor.workload.clone(),
                acting_human,
                requested_ttl: i64::from(c.requested_ttl_seconds),
            },
            principal,
            standing,
            action: r.action.clone(),
            resource,
            correlation_id: c.correlation_id,
        })
    }

    /// The NHI's facts with their Cedar entity: from the facts cache while
    /// it holds inventory's lease, else from inventory. Fails closed.
    pub(crate) async fn facts(&self, id: &Uuid) -> Result<Arc<Resource>, Status> {
        let cache = &self.shared.facts;
        match cache.get(id) {
            Lookup::Hit(resource) => return Ok(resource),
            Lookup::Refresh(resource, token) => {
                let this = self.clone();
                let id = *id;
                tokio::spawn(async move {
                    let cache = &this.shared.facts;
                    match this
                        .read_facts(&id)
                        .await
                        .map(|f| this.shared.engine.resource(f))
                    {
                        Ok(Ok(fresh)) => cache.fill(&id, token, fresh),
                        _ => cache.refresh_failed(&id, token),
                    }
                });
                return Ok(resource);
            }
            Lookup::Miss => {}
        }
        let token = cache.reserve(id);
        let resource = self
            .shared
            .engine
            .resource(self.read_facts(id).await?)
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Some(token) = token {
            cache.fill(id, token, Arc::clone(&resource));
        }
        Ok(resource)
    }

    /// The NHI's facts, read from inventory.
    async fn read_facts(&self, id: &Uuid) -> Result<NhiFacts, Status> {
        let mut client = self.inventory.clone();
        let identity = match client
            .get_identity(inventory::GetIdentityRequest {
                id: id.hyphenated().to_string(),
            })
            .await
        {
            Ok(r) => r
                .into_inner()
                .identity
                .ok_or_else(|| Status::unavailable("inventory returned no identity"))?,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Err(Status::not_found(format!(
                    "resource_id: identity {id} does not exist in inventory"
                )));
            }
            Err(s) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "inventory unreachable; refusing to decide");
                return Err(Status::unavailable(
                    "inventory is unreachable; authority does not decide without the identity's facts",
                ));
            }
        };
        let state = inventory::LifecycleState::try_from(identity.state)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("LIFECYCLE_STATE_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let kind = inventory::IdentityKind::try_from(identity.kind)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("IDENTITY_KIND_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        Ok(NhiFacts {
            id: identity.id,
            kind,
            environment: identity.environment,
            state,
            risk_score: i64::from(identity.risk.map_or(0, |r| r.score)),
            business_owner: identity.business_owner.map(|o| o.name).unwrap_or_default(),
            technical_owner: identity.technical_owner.map(|o| o.name).unwrap_or_default(),
            business_service: identity.business_service,
            source_system: identity.source_system,
            spiffe_id: identity.spiffe_id,
            labels: identity.labels.into_iter().collect(),
        })
    }

    /// A checked request with the NHI's facts, and what it asked beyond
    /// the decision.
    async fn prepare(
        &self,
        r: &pb::AuthorizeRequest,
        prefix: &str,
        actor: &Actor,
        asking: Asking,
    ) -> Result<(DecisionRequest, Extras), Status> {
        let asked = self.check(r, prefix, actor, asking)?;
        let facts = match &asked.resource {
            AskedResource::Nhi(id) => self.facts(id).await?,
            AskedResource::TrustDomain(name) => self
                .shared
                .engine
                .trust_domain(name)
                .map_err(|e| Status::internal(e.to_string()))?,
        };
        Ok((
            DecisionRequest {
                principal: asked.principal,
                action: asked.action,
                resource: facts,
                context: asked.context,
            },
            Extras {
                correlation_id: asked.correlation_id,
                reason: asked.reason,
                claim_by: asked.claim_by,
                standing: asked.standing,
            },
        ))
    }

    /// Decides a request with stored `version` (DryRun, Explain).
    async fn decide(
        &self,
        r: &pb::AuthorizeRequest,
        prefix: &str,
        actor: &Actor,
        version: u64,
    ) -> Result<(DecisionRequest, Decision, u64, Arc<CompiledSet>), Status> {
        let (request, _) = self.prepare(r, prefix, actor, Asking::WhatIf).await?;
        let (version, set) = self.shared.compiled(version).await?;
        let decision = set
            .decide(&self.shared.engine, &request)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((request, decision, version, set))
    }
}

fn decision_to_pb(
    decision: &Decision,
    request: &DecisionRequest,
    version: u64,
    id: &Uuid,
) -> pb::Decision {
    pb::Decision {
        decision_id: id.hyphenated().to_string(),
        effect: effect_to_pb(decision.effect),
        policy_ids: decision.policy_ids.clone(),
        reason: decision.reason.clone(),
        obligations: Some(pb::Obligations {
            max_ttl_seconds: decision.obligations.max_ttl.unwrap_or(0),
            duties: decision.obligations.duties.iter().cloned().collect(),
        }),
        approval: decision.approval.as_ref().map(|a| pb::ApprovalRequirement {
            approvals: a.approvals,
            approver: a.approver.clone(),
            suggested_reviewers: approvals::suggested_reviewers(&a.approver, &request.resource),
        }),
        policy_set_version: version,
        errors: decision.errors.clone(),
        approval_request_id: String::new(),
        grant_id: String::new(),
        approvers: request.context.approvers.iter().cloned().collect(),
        break_glass: request.context.break_glass,
        resource: Some(pb::ResourceFacts {
            state: request.resource.state.clone(),
            spiffe_id: request.resource.spiffe_id.clone(),
            kind: request.resource.kind.clone(),
        }),
        recorded_with_outcome: false,
        principal: request.principal.id().to_owned(),
    }
}

/// Notes in a decision's record how its caller stood to its principal:
/// a delegate's record names the delegation and the policies that
/// permitted it (the principal is already in `principal`, the delegate is
/// the record's actor).
fn note_standing(record: &mut EvidenceRecord, standing: &Standing) {
    if let Standing::Delegate {
        policy_ids,
        version,
    } = standing
    {
        record
            .attributes
            .insert("delegated".to_owned(), "act_for".to_owned());
        record.attributes.insert(
            "delegation_policy_ids".to_owned(),
            truncate_utf8(policy_ids.join(","), MAX_ATTRIBUTE_VALUE),
        );
        record.attributes.insert(
            "delegation_policy_set_version".to_owned(),
            version.to_string(),
        );
    }
}

/// The evidence record of one decision.
fn decision_record(
    id: Uuid,
    actor: &Actor,
    request: &DecisionRequest,
    decision: &Decision,
    version: u64,
    correlation_id: &str,
    used: Option<&Grant>,
) -> EvidenceRecord {
    let (human_subject, human_issuer) = match &request.principal {
        Principal::Human {
            subject, issuer, ..
        } => (subject.clone(), issuer.clone()),
        Principal::Workload { .. } => (String::new(), String::new()),
    };
    let mut attributes = BTreeMap::new();
    attributes.insert("principal".to_owned(), request.principal.id().to_owned());
    attributes.insert("requested_action".to_owned(), request.action.clone());
    attributes.insert("requester".to_owned(), request.context.requester.clone());
    if !request.context.acting_human.is_empty() {
        attributes.insert(
            "acting_human".to_owned(),
            request.context.acting_human.clone(),
        );
    }
    if request.context.break_glass {
        attributes.insert("break_glass".to_owned(), "true".to_owned());
    }
    if let Some(ttl) = decision.obligations.max_ttl {
        attributes.insert("max_ttl_seconds".to_owned(), ttl.to_string());
    }
    if !decision.obligations.duties.is_empty() {
        attributes.insert(
            "duties".to_owned(),
            decision
                .obligations
                .duties
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        );
    }
    if let Some(a) = &decision.approval {
        attributes.insert("approvals_required".to_owned(), a.approvals.to_string());
    }
    if let Some(g) = used {
        attributes.insert("grant_id".to_owned(), g.id.clone());
        if !g.approvers.is_empty() {
            attributes.insert("approvers".to_owned(), g.approvers.join(","));
        }
    }
    if !actor.human_subject.is_empty() {
        attributes.insert("caller_human".to_owned(), actor.human_subject.clone());
    }
    let mut record = EvidenceRecord::new(&actor.workload, "decision.authorize", SERVICE);
    record.record_id = id;
    record.actor.human_subject = human_subject;
    record.actor.human_issuer = human_issuer;
    if request.resource.is_nhi() {
        record.target.nhi_id = request.resource.id.clone();
        record.target.nhi_kind = request.resource.kind.clone();
    } else {
        record.attributes.insert(
            "resource".to_owned(),
            truncate_utf8(
                format!("{:?}:{}", request.resource.kind(), request.resource.id),
                MAX_ATTRIBUTE_VALUE,
            ),
        );
    }
    record.decision = EvidenceDecision {
        policy_set_version: version.to_string(),
        effect: match decision.effect {
            Effect::Allow => EvidenceEffect::Allow,
            Effect::Deny => EvidenceEffect::Deny,
            Effect::ApprovalRequired => EvidenceEffect::ApprovalRequired,
        },
        policy_ids: decision.policy_ids.iter().take(MAX_IDS).cloned().collect(),
        approval_ids: used
            .map(|g| g.approval_request_id.clone())
            .filter(|id| !id.is_empty())
            .into_iter()
            .collect(),
    };
    // Reasons quote policy annotations: site text of any length.
    record.outcome.reason = truncate_utf8(decision.reason.clone(), MAX_REASON);
    record.incident_ref = request.context.incident_ref.clone();
    record.correlation_id = correlation_id.to_owned();
    record.attributes.extend(
        attributes
            .into_iter()
            .map(|(k, v)| (k, truncate_utf8(v, MAX_ATTRIBUTE_VALUE))),
    );
    record
}

#[tonic::async_trait]
impl AuthorityService for AuthorityServer {
    async fn validate_policy_set(
        &self,
        request: Request<pb::ValidatePolicySetRequest>,
    ) -> Result<Response<pb::ValidatePolicySetResponse>, Status> {
        let text = &request.get_ref().policies;
        Ok(Response::new(
            match CompiledSet::compile(&self.shared.engine, text) {
                Ok(set) => pb::ValidatePolicySetResponse {
                    valid: true,
                    errors: Vec::new(),
                    policy_ids: set.policy_ids(),
                },
                Err(errors) => pb::ValidatePolicySetResponse {
                    valid: false,
                    errors: errors_to_pb(&errors),
                    policy_ids: Vec::new(),
                },
            },
        ))
    }

    async fn upload_policy_set(
        &self,
        request: Request<pb::UploadPolicySetRequest>,
    ) -> Result<Response<pb::UploadPolicySetResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let allowed = self.admit_document(&actor, SetKind::Policies).await?;
        let by = actor.name().to_owned();
        if r.policies.trim().is_empty() {
            return Err(Status::invalid_argument("policies: is required"));
        }
        if r.policies.len() > 4 * 1024 * 1024 {
            return Err(Status::invalid_argument("policies: at most 4 MiB"));
        }
        if r.description.len() > 1024 {
            return Err(Status::invalid_argument("description: at most 1024 bytes"));
        }
        let set = CompiledSet::compile(&self.shared.engine, &r.policies).map_err(|errors| {
            let first = &errors[0];
            Status::invalid_argument(format!(
                "policies: line {}, column {}{}: {}{}",
                first.line,
                first.column,
                if first.policy_id.is_empty() {
                    String::new()
                } else {
                    format!(" (policy {})", first.policy_id)
                },
                first.message,
                if errors.len() > 1 {
                    format!(
                        " (and {} more; ValidatePolicySet lists them all)",
                        errors.len() - 1
                    )
                } else {
                    String::new()
                }
            ))
        })?;
        let ids = set.policy_ids();
        let now = now_ns();
        let version = self
            .shared
            .store
            .upload(
                SetKind::Policies,
                NewVersion {
                    text: &r.policies,
                    description: &r.description,
                    ids: &ids,
                    uploaded_by: &by,
                    now_ns: now,
                },
                |v| {
                    let mut a = BTreeMap::new();
                    a.insert("version".to_owned(), v.to_string());
                    a.insert("policies".to_owned(), ids.len().to_string());
                    actor_record(&actor, "policy.upload", &r.description, a, &allowed)
                },
            )
            .await
            .map_err(store_status)?;
        if let Ok(mut cache) = self.shared.compiled.write() {
            cache.insert(version, Arc::new(set));
        }
        let stored = self
            .shared
            .store
            .get(SetKind::Policies, version)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::UploadPolicySetResponse {
            policy_set: Some(set_to_pb(&stored, self.shared.active().version, false)),
        }))
    }

    async fn list_policy_sets(
        &self,
        request: Request<pb::ListPolicySetsRequest>,
    ) -> Result<Response<pb::ListPolicySetsResponse>, Status> {
        let r = request.into_inner();
        let (sets, next) = self
            .list_versions(SetKind::Policies, &r.page_token, r.page_size)
            .await?;
        let active = self.shared.active().version;
        Ok(Response::new(pb::ListPolicySetsResponse {
            policy_sets: sets.iter().map(|s| set_to_pb(s, active, false)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_policy_set(
        &self,
        request: Request<pb::GetPolicySetRequest>,
    ) -> Result<Response<pb::GetPolicySetResponse>, Status> {
        let stored = self
            .shared
            .store
            .get(SetKind::Policies, request.get_ref().version)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::GetPolicySetResponse {
            policy_set: Some(set_to_pb(&stored, self.shared.active().version, true)),
        }))
    }

    async fn activate_policy_set(
        &self,
        request: Request<pb::ActivatePolicySetRequest>,
    ) -> Result<Response<pb::ActivatePolicySetResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument("version: is required"));
        }
        let (set, previous) = self.switch(Some(r.version), &actor, &r.reason).await?;
        Ok(Response::new(pb::ActivatePolicySetResponse {
            policy_set: Some(set),
            previous_version: previous,
        }))
    }

    async fn rollback_policy_set(
        &self,
        request: Request<pb::RollbackPolicySetRequest>,
    ) -> Result<Response<pb::RollbackPolicySetResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let (set, previous) = self.switch(None, &actor, &r.reason).await?;
        Ok(Response::new(pb::RollbackPolicySetResponse {
            policy_set: Some(set),
            previous_version: previous,
        }))
    }

    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        Ok(Response::new(pb::AuthorizeResponse {
            decision: Some(self.authorize_with_grants(&r, &actor).await?),
        }))
    }

    async fn authorize_batch(
        &self,
        request: Request<pb::AuthorizeBatchRequest>,
    ) -> Result<Response<pb::AuthorizeBatchResponse>, Status> {
        let actor = self.actor(&request)?;
        let requests = request.into_inner().requests;
        if requests.is_empty() {
            return Err(Status::invalid_argument("requests: is required"));
        }
        if requests.len() > MAX_AUTHORIZE_BATCH {
            return Err(Status::invalid_argument(format!(
                "requests: {} requests; at most {MAX_AUTHORIZE_BATCH} in one batch",
                requests.len()
            )));
        }
        // Concurrently, as separate calls would be: one request waiting
        // for inventory's facts does not hold up the rest.
        let decided = futures_util::future::join_all(
            requests
                .iter()
                .map(|r| self.authorize_with_grants(r, &actor)),
        )
        .await;
        let results = decided
            .into_iter()
            .map(|decided| pb::AuthorizeResult {
                result: Some(match decided {
                    Ok(decision) => pb::authorize_result::Result::Decision(decision),
                    Err(status) => pb::authorize_result::Result::Error(pb::AuthorizeError {
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }),
                }),
            })
            .collect();
        Ok(Response::new(pb::AuthorizeBatchResponse { results }))
    }

    async fn dry_run(
        &self,
        request: Request<pb::DryRunRequest>,
    ) -> Result<Response<pb::DryRunResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument("version: is required"));
        }
        let asked = r
            .request
            .ok_or_else(|| Status::invalid_argument("request: is required"))?;
        let (req, decision, version, _) =
            self.decide(&asked, "request.", &actor, r.version).await?;
        Ok(Response::new(pb::DryRunResponse {
            decision: Some(decision_to_pb(&decision, &req, version, &Uuid::nil())),
        }))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let asked = r
            .request
            .ok_or_else(|| Status::invalid_argument("request: is required"))?;
        let version = if r.version == 0 {
            self.shared.active().version
        } else {
            r.version
        };
        let (req, _, version, set) = self.decide(&asked, "request.", &actor, version).await?;
        let whole = set
            .decide_unsliced(&self.shared.engine, &req)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let deciding = whole
            .policy_ids
            .iter()
            .map(|id| {
                let meta = set.meta(id).cloned().unwrap_or_default();
                pb::PolicyExplanation {
                    policy_id: id.clone(),
                    effect: meta.effect,
                    reason: meta.reason,
                    annotations: meta.annotations.into_iter().collect(),
                }
            })
            .collect();
        let slice = set
            .slice_len(&self.shared.engine, &req)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::ExplainResponse {
            decision: Some(decision_to_pb(&whole, &req, version, &Uuid::nil())),
            deciding,
            policies_in_set: u32::try_from(set.len()).unwrap_or(u32::MAX),
            policies_in_slice: u32::try_from(slice).unwrap_or(u32::MAX),
        }))
    }

    async fn get_approval_request(
        &self,
        request: Request<pb::GetApprovalRequestRequest>,
    ) -> Result<Response<pb::GetApprovalRequestResponse>, Status> {
        self.get_approval_request_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_approval_requests(
        &self,
        request: Request<pb::ListApprovalRequestsRequest>,
    ) -> Result<Response<pb::ListApprovalRequestsResponse>, Status> {
        self.list_approval_requests_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn review_approval_request(
        &self,
        request: Request<pb::ReviewApprovalRequestRequest>,
    ) -> Result<Response<pb::ReviewApprovalRequestResponse>, Status> {
        self.review_approval_request_impl(request)
            .await
            .map(Response::new)
    }

    async fn cancel_approval_request(
        &self,
        request: Request<pb::CancelApprovalRequestRequest>,
    ) -> Result<Response<pb::CancelApprovalRequestResponse>, Status> {
        self.cancel_approval_request_impl(request)
            .await
            .map(Response::new)
    }

    async fn get_grant(
        &self,
        request: Request<pb::GetGrantRequest>,
    ) -> Result<Response<pb::GetGrantResponse>, Status> {
        self.get_grant_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.list_grants_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke_grant(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<Response<pb::RevokeGrantResponse>, Status> {
        self.revoke_grant_impl(request).await.map(Response::new)
    }

    async fn close_incident(
        &self,
        request: Request<pb::CloseIncidentRequest>,
    ) -> Result<Response<pb::CloseIncidentResponse>, Status> {
        self.close_incident_impl(request).await.map(Response::new)
    }

    async fn break_glass(
        &self,
        request: Request<pb::BreakGlassRequest>,
    ) -> Result<Response<pb::BreakGlassResponse>, Status> {
        self.break_glass_impl(request).await.map(Response::new)
    }

    async fn list_post_action_reviews(
        &self,
        request: Request<pb::ListPostActionReviewsRequest>,
    ) -> Result<Response<pb::ListPostActionReviewsResponse>, Status> {
        self.list_post_action_reviews_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn complete_post_action_review(
        &self,
        request: Request<pb::CompletePostActionReviewRequest>,
    ) -> Result<Response<pb::CompletePostActionReviewResponse>, Status> {
        self.complete_post_action_review_impl(request)
            .await
            .map(Response::new)
    }

    async fn validate_response_rules(
        &self,
        request: Request<pb::ValidateResponseRulesRequest>,
    ) -> Result<Response<pb::ValidateResponseRulesResponse>, Status> {
        Ok(Response::new(
            self.validate_response_rules_impl(request.get_ref()),
        ))
    }

    async fn upload_response_rules(
        &self,
        request: Request<pb::UploadResponseRulesRequest>,
    ) -> Result<Response<pb::UploadResponseRulesResponse>, Status> {
        self.upload_response_rules_impl(request)
            .await
            .map(Response::new)
    }

    async fn list_response_rules(
        &self,
        request: Request<pb::ListResponseRulesRequest>,
    ) -> Result<Response<pb::ListResponseRulesResponse>, Status> {
        self.list_response_rules_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_response_rules(
        &self,
        request: Request<pb::GetResponseRulesRequest>,
    ) -> Result<Response<pb::GetResponseRulesResponse>, Status> {
        self.get_response_rules_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn activate_response_rules(
        &self,
        request: Request<pb::ActivateResponseRulesRequest>,
    ) -> Result<Response<pb::ActivateResponseRulesResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        if r.version == 0 {
            return Err(Status::invalid_argument("version: is required"));
        }
        let (rule_set, previous_version) = self
            .switch_rules(&actor, Some(r.version), &r.reason)
            .await?;
        Ok(Response::new(pb::ActivateResponseRulesResponse {
            rule_set: Some(rule_set),
            previous_version,
        }))
    }

    async fn rollback_response_rules(
        &self,
        request: Request<pb::RollbackResponseRulesRequest>,
    ) -> Result<Response<pb::RollbackResponseRulesResponse>, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let (rule_set, previous_version) = self.switch_rules(&actor, None, &r.reason).await?;
        Ok(Response::new(pb::RollbackResponseRulesResponse {
            rule_set: Some(rule_set),
            previous_version,
        }))
    }

    async fn list_response_actions(
        &self,
        request: Request<pb::ListResponseActionsRequest>,
    ) -> Result<Response<pb::ListResponseActionsResponse>, Status> {
        self.list_response_actions_impl(request.into_inner())
            .await
            .map(Response::new)
    }
}

impl AuthorityServer {
    /// A page of stored versions of `kind`, newest first, and the next
    /// page's token.
    async fn list_versions(
        &self,
        kind: SetKind,
        page_token: &str,
        page_size: u32,
    ) -> Result<(Vec<StoredSet>, String), Status> {
        let before = if page_token.is_empty() {
            0
        } else {
            page_token.parse::<u64>().map_err(|_| {
                Status::invalid_argument("page_token: not a token from a previous response")
            })?
        };
        let limit = approvals::page(page_size);
        let rows = self
            .shared
            .store
            .list(kind, before, limit + 1)
            .await
            .map_err(store_status)?;
        Ok(approvals::paged(rows, limit, |s| s.version.to_string()))
    }

    /// Records a decision's evidence; answers only once it is durable.
    #[allow(clippy::too_many_arguments)]
    async fn record_decision(
        &self,
        id: Uuid,
        actor: &Actor,
        request: &DecisionRequest,
        decision: &Decision,
        version: u64,
        correlation_id: &str,
        used: Option<&Grant>,
        standing: &Standing,
    ) -> Result<(), Status> {
        let mut evidence =
            decision_record(id, actor, request, decision, version, correlation_id, used);
        note_standing(&mut evidence, standing);
        self.evidence.record(evidence).await.map_err(|e| {
            tracing::error!(error = %e, "decision evidence not recorded");
            Status::unavailable("the decision could not be recorded; retry")
        })
    }

    /// Decides whether the verified caller may `action` `resource`, for a
    /// change this service is about to make. A refusal is recorded as a
    /// decision of its own and answered PERMISSION_DENIED, and nothing
    /// changes; an ALLOW is returned for the change's own evidence record.
    pub(crate) async fn admit(
        &self,
        actor: &Actor,
        action: &str,
        resource: Arc<Resource>,
        incident_ref: &str,
        correlation_id: &str,
    ) -> Result<EvidenceDecision, Status> {
        let request = DecisionRequest {
            principal: self.principal_of(actor)?,
            action: action.to_owned(),
            resource,
            context: own_context(actor, incident_ref),
        };
        let (decision, version) = self.decide_now(&request)?;
        if decision.effect != Effect::Allow {
            self.record_decision(
                Uuid::now_v7(),
                actor,
                &request,
                &decision,
                version,
                correlation_id,
                None,
                &Standing::Own,
            )
            .await?;
            return Err(Status::permission_denied(format!(
                "{} may not {action} {}: {}",
                steward_errors::shown(actor.name()),
                steward_errors::shown(&request.resource.id),
                if decision.effect == Effect::ApprovalRequired {
                    "a policy asks for approval, and this action is not taken under a grant"
                } else {
                    &decision.reason
                }
            )));
        }
        Ok(EvidenceDecision {
            policy_set_version: version.to_string(),
            effect: EvidenceEffect::Allow,
            policy_ids: decision.policy_ids.iter().take(MAX_IDS).cloned().collect(),
            approval_ids: Vec::new(),
        })
    }

    /// [`Self::admit`] for `manage_policy` on one of the two documents.
    pub(crate) async fn admit_document(
        &self,
        actor: &Actor,
        kind: SetKind,
    ) -> Result<EvidenceDecision, Status> {
        let name = match kind {
            SetKind::Policies => "policies",
            SetKind::ResponseRules => "response_rules",
        };
        let resource = self
            .shared
            .engine
            .document(name)
            .map_err(|e| Status::internal(e.to_string()))?;
        self.admit(actor, "manage_policy", resource, "", "").await
    }

    /// Refuses to activate (or roll back to) a policy set under which the
    /// caller could no longer manage policy: it would have no way back.
    async fn check_no_lockout(&self, actor: &Actor, version: Option<u64>) -> Result<(), Status> {
        let target = match version {
            Some(v) => v,
            None => match self
                .shared
                .store
                .rollback_target(SetKind::Policies)
                .await
                .map_err(store_status)?
            {
                // Nothing to roll back to: the store says so.
                0 => return Ok(()),
                v => v,
            },
        };
        let (target, set) = match self.shared.compiled(target).await {
            Ok(found) => found,
            // An unknown version is the store's to refuse, by name.
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(()),
            Err(status) => return Err(status),
        };
        let request = DecisionRequest {
            principal: self.principal_of(actor)?,
            action: "manage_policy".to_owned(),
            resource: self
                .shared
                .engine
                .document("policies")
                .map_err(|e| Status::internal(e.to_string()))?,
            context: own_context(actor, ""),
        };
        let decision = set
            .decide(&self.shared.engine, &request)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if decision.effect != Effect::Allow {
            return Err(Status::failed_precondition(format!(
                "version: policy set {target} would refuse {} manage_policy ({}), leaving no way back; add a manage_policy permit to it (Steward's defaults have one)",
                steward_errors::shown(actor.name()),
                decision.reason
            )));
        }
        Ok(())
    }

    /// Whether the caller records an ALLOW in its outcome's evidence
    /// record instead of authority recording it (ADR 0012): only when it
    /// asks, and only Steward's own credential broker, acting for no human.
    fn records_with_outcome(&self, r: &pb::AuthorizeRequest, actor: &Actor) -> bool {
        r.decision_evidence == pb::DecisionEvidence::WithOutcome as i32
            && actor.human_subject.is_empty()
            && SpiffeId::parse(&actor.workload).is_ok_and(|id| {
                id.trust_domain() == self.own_trust_domain()
                    && id.path() == "/service/credential-broker"
            })
    }

    /// Authorize: decide with each grant that covers the request (its
    /// approvals, or break-glass) and spend the one an ALLOW used; with no
    /// grant, decide bare, and open an approval request when one is needed.
    async fn authorize_with_grants(
        &self,
        r: &pb::AuthorizeRequest,
        actor: &Actor,
    ) -> Result<pb::Decision, Status> {
        let (mut request, asked) = self.prepare(r, "", actor, Asking::ForReal).await?;
        let active = self.shared.active();
        let decide = |request: &DecisionRequest| {
            active
                .set
                .decide(&self.shared.engine, request)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        };
        let now = request.context.now;
        let grants = if self.shared.may_hold_grant(request.principal.id()) {
            self.shared
                .store
                .usable_grants(
                    request.principal.id(),
                    &request.action,
                    &request.resource.id,
                    &request.context.incident_ref,
                    now,
                )
                .await
                .map_err(store_status)?
        } else {
            Vec::new()
        };
        for grant in &grants {
            let mut with = request.clone();
            with.context.approvers = grant.approvers.iter().cloned().collect();
            with.context.break_glass = grant.break_glass;
            let decision = decide(&with)?;
            if decision.effect != Effect::Allow {
                continue;
            }
            let id = Uuid::now_v7();
            let id_text = id.hyphenated().to_string();
            if !self
                .shared
                .store
                .claim_grant(&grant.id, actor, &id_text, now)
                .await
                .map_err(store_status)?
            {
                // Spent by a concurrent decision.
                continue;
            }
            self.record_decision(
                id,
                actor,
                &with,
                &decision,
                active.version,
                &asked.correlation_id,
                Some(grant),
                &asked.standing,
            )
            .await?;
            let mut out = decision_to_pb(&decision, &with, active.version, &id);
            out.grant_id = grant.id.clone();
            return Ok(out);
        }
        request.context.approvers.clear();
        request.context.break_glass = false;
        let decision = decide(&request)?;
        let id = Uuid::now_v7();
        let mut approval_request_id = String::new();
        // Approval requests and grants are about NHIs; a policy asking
        // approval for anything else leaves the decision APPROVAL_REQUIRED
        // with no request opened, which callers refuse.
        if let (Effect::ApprovalRequired, Some(needed), true) = (
            decision.effect,
            &decision.approval,
            request.resource.is_nhi(),
        ) {
            if asked.reason.is_empty() {
                return Err(Status::invalid_argument(
                    "context.reason: is required: this action needs approval, and the approval request states why",
                ));
            }
            if asked.claim_by < now {
                return Err(Status::invalid_argument(
                    "context.claim_by: is in the past; a grant could never be claimed",
                ));
            }
            let window_end = request.context.window_end;
            let opened = ApprovalRequest {
                id: Uuid::now_v7().hyphenated().to_string(),
                principal: request.principal.id().to_owned(),
                principal_issuer: match &request.principal {
                    Principal::Human { issuer, .. } => issuer.clone(),
                    Principal::Workload { .. } => String::new(),
                },
                action: request.action.clone(),
                resource_id: request.resource.id.clone(),
                incident_ref: request.context.incident_ref.clone(),
                requester: request.context.requester.clone(),
                reason: asked.reason.clone(),
                approvals_required: needed.approvals,
                approver: needed.approver.clone(),
                suggested_reviewers: approvals::suggested_reviewers(
                    &needed.approver,
                    &request.resource,
                ),
                window_start: request.context.window_start,
                window_end,
                claim_by: asked.claim_by.min(window_end),
                policy_set_version: active.version,
                decision_id: id.hyphenated().to_string(),
                correlation_id: asked.correlation_id.clone(),
                state: ApprovalState::Pending,
                created_at: now,
                expires_at: (now + APPROVAL_TTL_SECS).min(window_end),
                decided_at: 0,
                grant_id: String::new(),
                reviews: Vec::new(),
            };
            let (request_row, _) = self
                .shared
                .store
                .open_approval(opened, actor, now)
                .await
                .map_err(store_status)?;
            approval_request_id = request_row.id;
        }
        let mut evidence = decision_record(
            id,
            actor,
            &request,
            &decision,
            active.version,
            &asked.correlation_id,
            None,
        );
        if !approval_request_id.is_empty() {
            evidence.decision.approval_ids = vec![approval_request_id.clone()];
        }
        note_standing(&mut evidence, &asked.standing);
        let with_outcome = decision.effect == Effect::Allow && self.records_with_outcome(r, actor);
        if !with_outcome {
            let recorded = if self.shared.config.durable_decisions {
                self.evidence.record(evidence).await
            } else {
                self.evidence.record_queued(evidence).await
            };
            recorded.map_err(|e| {
                tracing::error!(error = %e, "decision evidence not recorded");
                Status::unavailable("the decision could not be recorded; retry")
            })?;
        }
        let mut out = decision_to_pb(&decision, &request, active.version, &id);
        out.approval_request_id = approval_request_id;
        out.recorded_with_outcome = with_outcome;
        Ok(out)
    }

    /// Activates a version (or rolls back) and makes it the one decisions use.
    /// Activates a stored version of `kind` (`None`: rolls back), with its
    /// evidence; returns it and the version active before.
    async fn activate_version(
        &self,
        kind: SetKind,
        version: Option<u64>,
        actor: &Actor,
        reason: &str,
    ) -> Result<(StoredSet, u64), Status> {
        let reason = approvals::reason_field("reason", reason)?;
        let allowed = self.admit_document(actor, kind).await?;
        if kind == SetKind::Policies {
            self.check_no_lockout(actor, version).await?;
        }
        let by = actor.name();
        let event = format!(
            "{}.{}",
            kind.event_prefix(),
            if version.is_none() {
                "rollback"
            } else {
                "activate"
            }
        );
        let (target, previous) = self
            .shared
            .store
            .activate(kind, version, by, &reason, now_ns(), |target, previous| {
                let mut a = BTreeMap::new();
                a.insert("version".to_owned(), target.to_string());
                a.insert("previous_version".to_owned(), previous.to_string());
                actor_record(actor, &event, &reason, a, &allowed)
            })
            .await
            .map_err(store_status)?;
        let stored = self
            .shared
            .store
            .get(kind, target)
            .await
            .map_err(store_status)?;
        Ok((stored, previous))
    }

    /// Activates a policy set version (or rolls back) and makes it the one
    /// decisions use.
    async fn switch(
        &self,
        version: Option<u64>,
        actor: &Actor,
        reason: &str,
    ) -> Result<(pb::PolicySet, u64), Status> {
        let (stored, previous) = self
            .activate_version(SetKind::Policies, version, actor, reason)
            .await?;
        let (_, set) = self.shared.compiled(stored.version).await?;
        self.shared.set_active(Active {
            version: stored.version,
            set,
        });
        Ok((set_to_pb(&stored, stored.version, false), previous))
    }
}
