//! Approval requests, grants and break-glass post-action reviews: the
//! records, their states, and the evidence each change writes.
//!
//! Times are Unix seconds. The store (`store::approvals`) keeps them; the
//! server decides who may change them.

use std::collections::BTreeMap;

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{MAX_ATTRIBUTE_VALUE, MAX_IDS, MAX_REASON, truncate_utf8};

use crate::SERVICE;

/// A pending approval request lapses after this long unless its window
/// ends sooner.
pub const APPROVAL_TTL_SECS: i64 = 4 * 3600;
/// A grant whose task window was left open lasts this long.
pub const DEFAULT_GRANT_SECS: i64 = 3600;
/// Break-glass grants: default and longest duration.
pub const BREAK_GLASS_DEFAULT_SECS: i64 = 3600;
pub const BREAK_GLASS_MAX_SECS: i64 = 4 * 3600;

steward_vocab::names!(
    /// pending → approved / denied / expired / cancelled.
    ApprovalState {
        Pending => "pending",
        Approved => "approved",
        Denied => "denied",
        Expired => "expired",
        Cancelled => "cancelled",
    }
);

steward_vocab::names!(Verdict {
    Approve => "approve",
    Deny => "deny"
});

steward_vocab::names!(
    /// active → used (single-use) / expired / revoked / incident_closed.
    GrantState {
        Active => "active",
        Used => "used",
        Expired => "expired",
        Revoked => "revoked",
        IncidentClosed => "incident_closed",
    }
);

steward_vocab::names!(ReviewState {
    Open => "open",
    Completed => "completed"
});

/// Who did something: the workload that carried the call and, when a
/// bearer token named one, the human.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    pub workload: String,
    pub human_subject: String,
    pub human_issuer: String,
}

impl Actor {
    /// The name roles are checked against: the human when there is one.
    pub fn name(&self) -> &str {
        if self.human_subject.is_empty() {
            &self.workload
        } else {
            &self.human_subject
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub reviewer: String,
    pub reviewer_issuer: String,
    pub carried_by: String,
    pub verdict: Verdict,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    pub id: String,
    pub principal: String,
    /// The OIDC issuer when the principal is a human; empty for a workload.
    pub principal_issuer: String,
    pub action: String,
    pub resource_id: String,
    pub incident_ref: String,
    pub requester: String,
    pub reason: String,
    pub approvals_required: u32,
    pub approver: String,
    pub suggested_reviewers: Vec<String>,
    pub window_start: i64,
    pub window_end: i64,
    pub claim_by: i64,
    pub policy_set_version: u64,
    pub decision_id: String,
    pub correlation_id: String,
    pub state: ApprovalState,
    pub created_at: i64,
    pub expires_at: i64,
    pub decided_at: i64,
    pub grant_id: String,
    pub reviews: Vec<Review>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: String,
    pub principal: String,
    pub action: String,
    pub resource_id: String,
    pub incident_ref: String,
    pub approval_request_id: String,
    pub approvers: Vec<String>,
    pub break_glass: bool,
    pub window_start: i64,
    pub window_end: i64,
    pub claim_by: i64,
    pub single_use: bool,
    pub state: GrantState,
    pub claimed_at: i64,
    pub ended_at: i64,
    pub end_reason: String,
    pub created_at: i64,
    pub correlation_id: String,
}

impl Grant {
    /// Whether it may be used at `now` (state aside).
    pub fn usable_at(&self, now: i64) -> bool {
        now >= self.window_start
            && now <= self.window_end
            && (self.claimed_at != 0 || now <= self.claim_by)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostActionReview {
    pub id: String,
    pub grant_id: String,
    pub principal: String,
    pub action: String,
    pub resource_id: String,
    pub incident_ref: String,
    pub reason: String,
    pub assignees: Vec<String>,
    pub state: ReviewState,
    pub due_at: i64,
    pub flagged_at: i64,
    pub completed_by: String,
    pub completion_note: String,
    pub completed_at: i64,
    pub created_at: i64,
}

impl PostActionReview {
    pub fn overdue_at(&self, now: i64) -> bool {
        self.state == ReviewState::Open && now > self.due_at
    }
}

fn attributes(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                truncate_utf8(v.clone(), MAX_ATTRIBUTE_VALUE),
            )
        })
        .collect()
}

fn base(
    actor: &Actor,
    action: &str,
    resource_id: &str,
    incident_ref: &str,
    reason: &str,
) -> EvidenceRecord {
    let mut record = EvidenceRecord::new(&actor.workload, action, SERVICE);
    record.actor.human_subject = actor.human_subject.clone();
    record.actor.human_issuer = actor.human_issuer.clone();
    record.target.nhi_id = resource_id.to_owned();
    record.incident_ref = incident_ref.to_owned();
    record.outcome.reason = truncate_utf8(reason.to_owned(), MAX_REASON);
    record
}

/// `approval.requested`, `approval.reviewed`, `approval.approved`, … about `a`.
pub fn approval_record(
    actor: &Actor,
    event: &str,
    a: &ApprovalRequest,
    reason: &str,
) -> EvidenceRecord {
    let mut record = base(actor, event, &a.resource_id, &a.incident_ref, reason);
    record.correlation_id = a.correlation_id.clone();
    record.decision.policy_set_version = a.policy_set_version.to_string();
    record.decision.approval_ids = vec![a.id.clone()];
    record.attributes = attributes(&[
        ("approval_request_id", a.id.clone()),
        ("principal", a.principal.clone()),
        ("requested_action", a.action.clone()),
        ("requester", a.requester.clone()),
        ("state", a.state.as_str().to_owned()),
        ("approvals_required", a.approvals_required.to_string()),
        ("approver", a.approver.clone()),
        ("decision_id", a.decision_id.clone()),
        ("grant_id", a.grant_id.clone()),
    ]);
    record
}

/// `grant.issued`, `grant.used`, `grant.revoked`, … about `g`.
pub fn grant_record(actor: &Actor, event: &str, g: &Grant, reason: &str) -> EvidenceRecord {
    let mut record = base(actor, event, &g.resource_id, &g.incident_ref, reason);
    record.correlation_id = g.correlation_id.clone();
    if !g.approval_request_id.is_empty() {
        record.decision.approval_ids = vec![g.approval_request_id.clone()];
    }
    record.attributes = attributes(&[
        ("grant_id", g.id.clone()),
        ("principal", g.principal.clone()),
        ("granted_action", g.action.clone()),
        ("state", g.state.as_str().to_owned()),
        (
            "approvers",
            g.approvers
                .iter()
                .take(MAX_IDS)
                .cloned()
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "break_glass",
            if g.break_glass {
                "true".into()
            } else {
                String::new()
            },
        ),
        ("window_start", g.window_start.to_string()),
        ("window_end", g.window_end.to_string()),
        ("claim_by", g.claim_by.to_string()),
        ("single_use", g.single_use.to_string()),
    ]);
    record
}

/// `incident.closed`: what closing it ended.
pub fn incident_record(
    actor: &Actor,
    incident: &str,
    reason: &str,
    correlation_id: &str,
    grants_ended: usize,
    approvals_cancelled: usize,
) -> EvidenceRecord {
    let mut record = base(actor, "incident.closed", "", incident, reason);
    record.correlation_id = correlation_id.to_owned();
    record.attributes = attributes(&[
        ("grants_ended", grants_ended.to_string()),
        ("approvals_cancelled", approvals_cancelled.to_string()),
    ]);
    record
}

/// `breakglass.review_opened`, `…_overdue`, `…_completed` about `r`.
pub fn review_record(
    actor: &Actor,
    event: &str,
    r: &PostActionReview,
    reason: &str,
) -> EvidenceRecord {
    let mut record = base(actor, event, &r.resource_id, &r.incident_ref, reason);
    record.attributes = attributes(&[
        ("review_id", r.id.clone()),
        ("grant_id", r.grant_id.clone()),
        ("principal", r.principal.clone()),
        ("reviewed_action", r.action.clone()),
        ("assignees", r.assignees.join(",")),
        ("due_at", r.due_at.to_string()),
        ("state", r.state.as_str().to_owned()),
        ("completed_by", r.completed_by.clone()),
    ]);
    record
}

/// The owners an approval's approver predicate points at.
pub fn suggested_reviewers(approver: &str, facts: &crate::engine::NhiFacts) -> Vec<String> {
    let names = match approver {
        "technical_owner" => vec![facts.technical_owner.clone()],
        "business_owner" => vec![facts.business_owner.clone()],
        "" => vec![facts.technical_owner.clone(), facts.business_owner.clone()],
        _ => Vec::new(),
    };
    let mut out: Vec<String> = Vec::new();
    for name in names {
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
    }
    out
}
