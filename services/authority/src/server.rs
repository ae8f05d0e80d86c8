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

mod admission;
mod approvals;
mod binding;
mod decide;
mod evidence;
mod nhi;
mod policies;
mod responder;
mod rules;

pub(crate) use binding::Standing;
use binding::{Asking, own_context};
use evidence::{decision_record, decision_to_pb, note_standing};
use policies::{errors_to_pb, set_to_pb};

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
pub const MAX_AUTHORIZE_BATCH: usize = steward_batch::limits::AUTHORIZE_BATCH;

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
        StoreError::StorageFull(detail) => {
            tracing::error!(error = %detail, "authority storage is full");
            Status::resource_exhausted(steward_db::FULL)
        }
        StoreError::Corrupt(detail) => {
            tracing::error!(error = %detail, "authority storage holds a value it cannot read");
            Status::data_loss(
                "authority's storage holds a value it cannot read; nothing was changed",
            )
        }
    }
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::of(request)
        .map(|p| p.spiffe_id.to_string())
        .ok_or_else(|| Status::unauthenticated("no verified peer identity"))
}

use steward_evidence::clock::now_ns;

fn timestamp(ns: i64) -> prost_types::Timestamp {
    steward_evidence::clock::timestamp_of_ns(ns)
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

fn seconds(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    match ts {
        None => Ok(None),
        Some(t) if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 => Err(
            Status::invalid_argument(format!("{field}: is not a valid time")),
        ),
        Some(t) => Ok(Some(t.seconds)),
    }
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
        self.upload_policy_set_impl(request)
            .await
            .map(Response::new)
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
            return Err(steward_errors::invalid("version", "is required").into());
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
            return Err(steward_errors::invalid("requests", "is required").into());
        }
        if requests.len() > MAX_AUTHORIZE_BATCH {
            return Err(steward_errors::invalid(
                "requests",
                format!(
                    "{} requests; at most {MAX_AUTHORIZE_BATCH} in one batch",
                    requests.len()
                ),
            )
            .into());
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
            return Err(steward_errors::invalid("version", "is required").into());
        }
        let asked = r
            .request
            .ok_or_else(|| steward_errors::invalid("request", "is required"))?;
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
            .ok_or_else(|| steward_errors::invalid("request", "is required"))?;
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
            return Err(steward_errors::invalid("version", "is required").into());
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
