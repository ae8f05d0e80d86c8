//! The evidence record of a decision.

use std::collections::BTreeMap;

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{
    Decision as EvidenceDecision, Effect as EvidenceEffect, MAX_ATTRIBUTE_VALUE, MAX_IDS,
    MAX_REASON, truncate_utf8,
};
use uuid::Uuid;

use super::Standing;
use crate::SERVICE;
use crate::approvals::{Actor, Grant};
use crate::engine::{Decision, DecisionRequest, Effect, Principal};

/// Notes in a decision's record how its caller stood to its principal:
/// a delegate's record names the delegation and the policies that
/// permitted it (the principal is already in `principal`, the delegate is
/// the record's actor).
pub(super) fn note_standing(record: &mut EvidenceRecord, standing: &Standing) {
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
pub fn decision_record(
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
