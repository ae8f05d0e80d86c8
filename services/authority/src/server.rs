//! The gRPC adapter: requests checked on the wire, the decision path
//! (`crate::decide`) and the stores called, answers and errors mapped.

use std::collections::BTreeMap;
use std::sync::Arc;

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
use steward_telemetry::TracedChannel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

mod admission;
mod approvals;
mod ask;
mod evidence;
mod nhi;
mod policies;
mod responder;
mod rules;

use evidence::decision_to_pb;
use policies::{errors_to_pb, set_to_pb};

use crate::approvals::Actor;
use crate::decide::{Decider, own_context};
use crate::engine::{
    CompiledSet, DecisionRequest, Effect, NHI_ACTIONS, NhiFacts, PolicyError, Resource,
};
use crate::error::Error;
use crate::state::Shared;
use crate::store::{NewVersion, SetKind, StoreError, StoredSet};

/// Most requests one `AuthorizeBatch` decides.
pub const MAX_AUTHORIZE_BATCH: usize = steward_batch::limits::AUTHORIZE_BATCH;

#[derive(Debug, Clone)]
pub struct AuthorityServer {
    shared: Arc<Shared>,
    decider: Decider,
    /// For the responder's signal feed and transitions.
    inventory: InventoryServiceClient<TracedChannel>,
}

impl AuthorityServer {
    pub fn new(shared: Arc<Shared>, inventory: TracedChannel, evidence: Batcher) -> Self {
        let inventory = InventoryServiceClient::new(inventory);
        let facts = nhi::InventoryFacts(inventory.clone());
        Self {
            decider: Decider::new(Arc::clone(&shared), Arc::new(facts), evidence),
            shared,
            inventory,
        }
    }

    /// One `Authorize`: checked, decided, answered.
    async fn authorize_one(
        &self,
        r: &pb::AuthorizeRequest,
        actor: &Actor,
    ) -> Result<pb::Decision, Status> {
        let decided = self.decider.authorize(self.ask(r, "")?, actor).await?;
        let effect = match decided.decision.effect {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::ApprovalRequired => "approval_required",
        };
        metrics::counter!("steward_authority_decisions_total", "effect" => effect).increment(1);
        let mut out = decision_to_pb(
            &decided.decision,
            &decided.request,
            decided.version,
            &decided.id,
        );
        out.grant_id = decided.grant_id.unwrap_or_default();
        out.approval_request_id = decided.approval_request_id.unwrap_or_default();
        out.recorded_with_outcome = decided.recorded_with_outcome;
        Ok(out)
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

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        steward_errors::to_status(&error)
    }
}

pub fn store_status(error: StoreError) -> Status {
    Error::Store(error).into()
}

fn caller<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::caller(request)
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
    let mut record = EvidenceRecord::new(actor, action, crate::SERVICE);
    record.outcome.reason = truncate_utf8(reason.to_owned(), MAX_REASON);
    record.attributes = attributes
        .into_iter()
        .map(|(k, v)| (k, truncate_utf8(v, MAX_ATTRIBUTE_VALUE)))
        .collect();
    record
}

#[tonic::async_trait]
impl AuthorityService for AuthorityServer {
    steward_server::forward_rpcs! {
        upload_policy_set(pb::UploadPolicySetRequest) -> pb::UploadPolicySetResponse
            = upload_policy_set_impl(request);
        get_approval_request(pb::GetApprovalRequestRequest) -> pb::GetApprovalRequestResponse
            = get_approval_request_impl(message);
        list_approval_requests(pb::ListApprovalRequestsRequest) -> pb::ListApprovalRequestsResponse
            = list_approval_requests_impl(message);
        review_approval_request(pb::ReviewApprovalRequestRequest) -> pb::ReviewApprovalRequestResponse
            = review_approval_request_impl(request);
        cancel_approval_request(pb::CancelApprovalRequestRequest) -> pb::CancelApprovalRequestResponse
            = cancel_approval_request_impl(request);
        get_grant(pb::GetGrantRequest) -> pb::GetGrantResponse
            = get_grant_impl(message);
        list_grants(pb::ListGrantsRequest) -> pb::ListGrantsResponse
            = list_grants_impl(message);
        revoke_grant(pb::RevokeGrantRequest) -> pb::RevokeGrantResponse
            = revoke_grant_impl(request);
        close_incident(pb::CloseIncidentRequest) -> pb::CloseIncidentResponse
            = close_incident_impl(request);
        break_glass(pb::BreakGlassRequest) -> pb::BreakGlassResponse
            = break_glass_impl(request);
        list_post_action_reviews(pb::ListPostActionReviewsRequest) -> pb::ListPostActionReviewsResponse
            = list_post_action_reviews_impl(message);
        complete_post_action_review(pb::CompletePostActionReviewRequest) -> pb::CompletePostActionReviewResponse
            = complete_post_action_review_impl(request);
        upload_response_rules(pb::UploadResponseRulesRequest) -> pb::UploadResponseRulesResponse
            = upload_response_rules_impl(request);
        list_response_rules(pb::ListResponseRulesRequest) -> pb::ListResponseRulesResponse
            = list_response_rules_impl(message);
        get_response_rules(pb::GetResponseRulesRequest) -> pb::GetResponseRulesResponse
            = get_response_rules_impl(message);
        list_response_actions(pb::ListResponseActionsRequest) -> pb::ListResponseActionsResponse
            = list_response_actions_impl(message);
    }

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
        let decision = self.authorize_one(request.get_ref(), &actor).await?;
        Ok(Response::new(pb::AuthorizeResponse {
            decision: Some(decision),
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
        let decided =
            futures_util::future::join_all(requests.iter().map(|r| self.authorize_one(r, &actor)))
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
        let ask = self.ask(&asked, "request.")?;
        let considered = self
            .decider
            .what_if(ask, &actor, r.version)
            .await
            .map_err(|e| e.under("request."))?;
        Ok(Response::new(pb::DryRunResponse {
            decision: Some(decision_to_pb(
                &considered.decision,
                &considered.request,
                considered.version,
                &Uuid::nil(),
            )),
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
        let ask = self.ask(&asked, "request.")?;
        let considered = self
            .decider
            .what_if(ask, &actor, r.version)
            .await
            .map_err(|e| e.under("request."))?;
        let (set, req) = (&considered.set, &considered.request);
        let policy_error = |e: crate::engine::EngineError| Error::Policy(e.to_string());
        let whole = set
            .decide_unsliced(&self.shared.engine, req)
            .map_err(policy_error)?;
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
            .slice_len(&self.shared.engine, req)
            .map_err(policy_error)?;
        Ok(Response::new(pb::ExplainResponse {
            decision: Some(decision_to_pb(
                &whole,
                req,
                considered.version,
                &Uuid::nil(),
            )),
            deciding,
            policies_in_set: u32::try_from(set.len()).unwrap_or(u32::MAX),
            policies_in_slice: u32::try_from(slice).unwrap_or(u32::MAX),
        }))
    }

    async fn validate_response_rules(
        &self,
        request: Request<pb::ValidateResponseRulesRequest>,
    ) -> Result<Response<pb::ValidateResponseRulesResponse>, Status> {
        Ok(Response::new(
            self.validate_response_rules_impl(request.get_ref()),
        ))
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
}
