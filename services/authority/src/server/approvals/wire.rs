//! Wire checks and conversions of the approval, grant and review handlers.

use super::*;

pub fn now_s() -> i64 {
    steward_evidence::clock::now_secs()
}

pub(super) fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    (seconds != 0 && seconds != i64::MAX).then_some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// A required id field: a UUID.
pub fn uuid_field(field: &str, value: &str) -> Result<String, Status> {
    Uuid::try_parse(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| steward_errors::invalid(field, "is not an id (UUID)").into())
}

/// A required free-text reason.
pub fn reason_field(field: &str, value: &str) -> Result<String, Status> {
    const RULE: &str = "is required (at most 1024 bytes, no control characters)";
    match steward_errors::wire::reason(field, value, 1024) {
        Ok(reason) if !reason.is_empty() => Ok(reason),
        _ => Err(steward_errors::invalid(field, RULE).into()),
    }
}

pub(super) fn optional_text(field: &str, value: &str) -> Result<(), Status> {
    Ok(steward_errors::wire::text(field, value, 256, false)?)
}

pub(super) fn page_token(token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    uuid_field("page_token", token).map_err(|_| {
        steward_errors::invalid("page_token", "not a token from a previous response").into()
    })
}

/// The filter a list request's page starts: rows before its token, one
/// more than the page holds (so the page knows whether another follows),
/// and that page's size.
pub(super) fn paging(token: &str, size: u32) -> Result<(ListFilter, usize), Status> {
    let limit = page(size)?;
    let filter = ListFilter {
        before_id: page_token(token)?,
        limit: limit + 1,
        ..ListFilter::default()
    };
    Ok((filter, limit))
}

/// The stored name of a list's state filter: `None` for UNSPECIFIED (every
/// state), an error naming `state` for a number the wire enum lacks.
/// `wire` is the enum's protobuf name for the number (`APPROVAL_STATE_…`),
/// `prefix` the part before the state's own name.
pub(super) fn state_filter<S: steward_vocab::Named>(
    value: i32,
    wire: Option<&str>,
    prefix: &str,
    what: &str,
) -> Result<Option<&'static str>, Status> {
    let unknown = || steward_errors::invalid("state", format!("{value} is not {what}"));
    let name = wire
        .and_then(|w| w.strip_prefix(prefix))
        .ok_or_else(unknown)?;
    if name == "UNSPECIFIED" {
        return Ok(None);
    }
    let state = S::parse(&name.to_ascii_lowercase()).ok_or_else(unknown)?;
    Ok(Some(state.as_str()))
}

pub use steward_errors::wire::{next_page as paged, page_size as page};

pub(super) fn approval_state_to_pb(s: ApprovalState) -> i32 {
    (match s {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Cancelled => pb::ApprovalState::Cancelled,
    }) as i32
}

pub(super) fn grant_state_to_pb(s: GrantState) -> i32 {
    (match s {
        GrantState::Active => pb::GrantState::Active,
        GrantState::Used => pb::GrantState::Used,
        GrantState::Expired => pb::GrantState::Expired,
        GrantState::Revoked => pb::GrantState::Revoked,
        GrantState::IncidentClosed => pb::GrantState::IncidentClosed,
    }) as i32
}

pub fn approval_to_pb(a: &ApprovalRequest) -> pb::ApprovalRequest {
    pb::ApprovalRequest {
        id: a.id.clone(),
        principal: a.principal.clone(),
        action: a.action.clone(),
        resource_id: a.resource_id.clone(),
        incident_ref: a.incident_ref.clone(),
        requester: a.requester.clone(),
        reason: a.reason.clone(),
        approvals_required: a.approvals_required,
        approver: a.approver.clone(),
        suggested_reviewers: a.suggested_reviewers.clone(),
        state: approval_state_to_pb(a.state),
        reviews: a
            .reviews
            .iter()
            .map(|r| pb::Review {
                reviewer: r.reviewer.clone(),
                reviewer_issuer: r.reviewer_issuer.clone(),
                carried_by: r.carried_by.clone(),
                verdict: match r.verdict {
                    Verdict::Approve => pb::Verdict::Approve as i32,
                    Verdict::Deny => pb::Verdict::Deny as i32,
                },
                reason: r.reason.clone(),
                review_time: ts(r.at),
            })
            .collect(),
        window_start: ts(a.window_start),
        window_end: ts(a.window_end),
        claim_by: ts(a.claim_by),
        create_time: ts(a.created_at),
        expire_time: ts(a.expires_at),
        decide_time: ts(a.decided_at),
        grant_id: a.grant_id.clone(),
        policy_set_version: a.policy_set_version,
        decision_id: a.decision_id.clone(),
        correlation_id: a.correlation_id.clone(),
    }
}

pub fn grant_to_pb(g: &Grant) -> pb::Grant {
    pb::Grant {
        id: g.id.clone(),
        principal: g.principal.clone(),
        action: g.action.clone(),
        resource_id: g.resource_id.clone(),
        incident_ref: g.incident_ref.clone(),
        approval_request_id: g.approval_request_id.clone(),
        approvers: g.approvers.clone(),
        break_glass: g.break_glass,
        window_start: ts(g.window_start),
        window_end: ts(g.window_end),
        claim_by: ts(g.claim_by),
        single_use: g.single_use,
        state: grant_state_to_pb(g.state),
        claim_time: ts(g.claimed_at),
        end_time: ts(g.ended_at),
        end_reason: g.end_reason.clone(),
        create_time: ts(g.created_at),
        correlation_id: g.correlation_id.clone(),
    }
}

pub(super) fn review_to_pb(r: &PostActionReview, now: i64) -> pb::PostActionReview {
    pb::PostActionReview {
        id: r.id.clone(),
        grant_id: r.grant_id.clone(),
        principal: r.principal.clone(),
        action: r.action.clone(),
        resource_id: r.resource_id.clone(),
        incident_ref: r.incident_ref.clone(),
        reason: r.reason.clone(),
        assignees: r.assignees.clone(),
        state: match r.state {
            ReviewState::Open => pb::ReviewState::Open as i32,
            ReviewState::Completed => pb::ReviewState::Completed as i32,
        },
        due_time: ts(r.due_at),
        overdue: r.overdue_at(now),
        completed_by: r.completed_by.clone(),
        completion_note: r.completion_note.clone(),
        complete_time: ts(r.completed_at),
        create_time: ts(r.created_at),
    }
}
