//! Decisions as the API returns them and as evidence records them.

use super::*;
use crate::engine::Decision;

pub(super) fn effect_to_pb(effect: Effect) -> i32 {
    match effect {
        Effect::Allow => pb::Effect::Allow as i32,
        Effect::Deny => pb::Effect::Deny as i32,
        Effect::ApprovalRequired => pb::Effect::ApprovalRequired as i32,
    }
}

pub(super) fn decision_to_pb(
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
            suggested_reviewers: crate::approvals::suggested_reviewers(
                &a.approver,
                &request.resource,
            ),
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
