//! The approval, grant, incident and break-glass handlers.

use steward_proto::steward::authority::v1 as pb;
use tonic::{Request, Status};
use uuid::Uuid;

use super::{AuthorityServer, caller, now_ns, store_status};
use crate::approvals::{
    Actor, ApprovalRequest, ApprovalState, BREAK_GLASS_DEFAULT_SECS, BREAK_GLASS_MAX_SECS, Grant,
    GrantState, PostActionReview, Review, ReviewState, Verdict, grant_record, review_record,
};
use crate::engine::{Decision, DecisionRequest, Effect, NhiFacts, Principal, RequestContext};
use crate::store::{Closure, ListFilter, StoreError};

pub fn now_s() -> i64 {
    now_ns() / 1_000_000_000
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    (seconds != 0 && seconds != i64::MAX).then_some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// A required id field: a UUID.
pub fn uuid_field(field: &str, value: &str) -> Result<String, Status> {
    Uuid::try_parse(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Status::invalid_argument(format!("{field}: is not an id (UUID)")))
}

/// A required free-text reason.
pub fn reason_field(field: &str, value: &str) -> Result<String, Status> {
    let trimmed = value.trim();
    if trimmed.is_empty()
        || value.len() > 1024
        || value.chars().any(|c| c.is_control() && c != '\n')
    {
        return Err(Status::invalid_argument(format!(
            "{field}: is required (at most 1024 bytes, no control characters)"
        )));
    }
    Ok(trimmed.to_owned())
}

fn optional_text(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{field}: at most 256 bytes, no control characters"
        )));
    }
    Ok(())
}

/// A page size: 50 when unset, at most 500.
pub fn page(size: u32) -> usize {
    match size {
        0 => 50,
        n => n.min(500) as usize,
    }
}

fn page_token(token: &str) -> Result<String, Status> {
    if token.is_empty() {
        return Ok(String::new());
    }
    uuid_field("page_token", token)
        .map_err(|_| Status::invalid_argument("page_token: not a token from a previous response"))
}

/// Keeps `limit` rows and the token for the next page.
pub fn paged<T>(mut rows: Vec<T>, limit: usize, id: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(id).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

fn approval_state_to_pb(s: ApprovalState) -> i32 {
    (match s {
        ApprovalState::Pending => pb::ApprovalState::Pending,
        ApprovalState::Approved => pb::ApprovalState::Approved,
        ApprovalState::Denied => pb::ApprovalState::Denied,
        ApprovalState::Expired => pb::ApprovalState::Expired,
        ApprovalState::Cancelled => pb::ApprovalState::Cancelled,
    }) as i32
}

fn grant_state_to_pb(s: GrantState) -> i32 {
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

fn review_to_pb(r: &PostActionReview, now: i64) -> pb::PostActionReview {
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

/// The owners an approval's approver predicate points at.
pub fn suggested_reviewers(approver: &str, facts: &NhiFacts) -> Vec<String> {
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

impl AuthorityServer {
    /// Who is calling: the workload, and the human its bearer token names.
    pub(super) fn actor<T>(&self, request: &Request<T>) -> Result<Actor, Status> {
        let workload = caller(request)?;
        let human = self.shared.humans.of(request.metadata())?;
        Ok(match human {
            Some(h) => Actor {
                workload,
                human_subject: h.subject,
                human_issuer: h.issuer,
            },
            None => Actor {
                workload,
                ..Actor::default()
            },
        })
    }

    /// The actor as a policy principal.
    pub(super) fn principal_of(&self, actor: &Actor) -> Result<Principal, Status> {
        if actor.human_subject.is_empty() {
            let id = steward_identity::SpiffeId::parse(&actor.workload)
                .map_err(|e| Status::unauthenticated(e.to_string()))?;
            Ok(Principal::Workload {
                groups: self.shared.config.groups_of(&actor.workload),
                trust_domain: id.trust_domain().name().to_owned(),
                spiffe_id: actor.workload.clone(),
            })
        } else {
            Ok(Principal::Human {
                groups: self
                    .shared
                    .config
                    .groups_of(&format!("human:{}", actor.human_subject)),
                subject: actor.human_subject.clone(),
                issuer: actor.human_issuer.clone(),
            })
        }
    }

    /// Whether `actor` is `owner` (a person's name or a team) or a member
    /// of the group named after it.
    fn is_or_belongs_to(&self, actor: &Actor, owner: &str) -> bool {
        if owner.is_empty() {
            return false;
        }
        actor.name() == owner || self.groups_of_actor(actor).iter().any(|g| g == owner)
    }

    fn groups_of_actor(&self, actor: &Actor) -> Vec<String> {
        if actor.human_subject.is_empty() {
            self.shared.config.groups_of(&actor.workload)
        } else {
            self.shared
                .config
                .groups_of(&format!("human:{}", actor.human_subject))
        }
    }

    /// The active policies' answer to `principal` doing `action` on
    /// `facts` outside any grant.
    pub(super) fn decide_now(&self, request: &DecisionRequest) -> Result<(Decision, u64), Status> {
        let active = self.shared.active();
        let decision = active
            .set
            .decide(&self.shared.engine, request)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((decision, active.version))
    }

    /// Checks that `actor` may review `a`: never their own request, a
    /// member of its approver predicate, and allowed to `approve` the
    /// resource by the active policies.
    async fn check_reviewer(&self, actor: &Actor, a: &ApprovalRequest) -> Result<(), Status> {
        let name = actor.name();
        if name == a.requester || name == a.principal {
            return Err(Status::permission_denied(format!(
                "{name} may not review approval request {}: it is their own request (requester {}, principal {})",
                a.id, a.requester, a.principal
            )));
        }
        let facts = self
            .facts(&Uuid::try_parse(&a.resource_id).map_err(|_| {
                Status::internal("stored approval request has an unreadable resource id")
            })?)
            .await?;
        let eligible = match a.approver.as_str() {
            "technical_owner" => self.is_or_belongs_to(actor, &facts.technical_owner),
            "business_owner" => self.is_or_belongs_to(actor, &facts.business_owner),
            "" => true,
            group => group
                .strip_prefix("group:")
                .is_some_and(|g| self.groups_of_actor(actor).iter().any(|m| m == g)),
        };
        if !eligible {
            return Err(Status::permission_denied(format!(
                "{name} may not review approval request {}: it needs its {} ({})",
                a.id,
                if a.approver.is_empty() {
                    "approvers"
                } else {
                    &a.approver
                },
                suggested_reviewers(&a.approver, &facts).join(", ")
            )));
        }
        let now = now_s();
        let (decision, _) = self.decide_now(&DecisionRequest {
            principal: self.principal_of(actor)?,
            action: "approve".to_owned(),
            resource: facts,
            context: RequestContext {
                incident_ref: a.incident_ref.clone(),
                now,
                window_start: a.window_start,
                window_end: a.window_end,
                requester: a.requester.clone(),
                acting_workload: actor.workload.clone(),
                acting_human: actor.human_subject.clone(),
                ..RequestContext::default()
            },
        })?;
        if decision.effect != Effect::Allow {
            return Err(Status::permission_denied(format!(
                "{name} may not approve actions on {}: {}",
                a.resource_id, decision.reason
            )));
        }
        Ok(())
    }

    pub(super) async fn get_approval_request_impl(
        &self,
        r: pb::GetApprovalRequestRequest,
    ) -> Result<pb::GetApprovalRequestResponse, Status> {
        let id = uuid_field("id", &r.id)?;
        let a = self
            .shared
            .store
            .approval(&id)
            .await
            .map_err(store_status)?;
        Ok(pb::GetApprovalRequestResponse {
            approval_request: Some(approval_to_pb(&a)),
        })
    }

    pub(super) async fn list_approval_requests_impl(
        &self,
        r: pb::ListApprovalRequestsRequest,
    ) -> Result<pb::ListApprovalRequestsResponse, Status> {
        let state = match pb::ApprovalState::try_from(r.state) {
            Ok(pb::ApprovalState::Unspecified) => None,
            Ok(pb::ApprovalState::Pending) => Some(ApprovalState::Pending),
            Ok(pb::ApprovalState::Approved) => Some(ApprovalState::Approved),
            Ok(pb::ApprovalState::Denied) => Some(ApprovalState::Denied),
            Ok(pb::ApprovalState::Expired) => Some(ApprovalState::Expired),
            Ok(pb::ApprovalState::Cancelled) => Some(ApprovalState::Cancelled),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not an approval state",
                    r.state
                )));
            }
        }
        .map(ApprovalState::as_str);
        if !r.resource_id.is_empty() {
            uuid_field("resource_id", &r.resource_id)?;
        }
        optional_text("incident_ref", &r.incident_ref)?;
        let limit = page(r.page_size);
        let rows = self
            .shared
            .store
            .approvals(&ListFilter {
                state,
                resource_id: r.resource_id,
                incident_ref: r.incident_ref,
                before_id: page_token(&r.page_token)?,
                limit: limit + 1,
                ..ListFilter::default()
            })
            .await
            .map_err(store_status)?;
        let (rows, next) = paged(rows, limit, |a| a.id.clone());
        Ok(pb::ListApprovalRequestsResponse {
            approval_requests: rows.iter().map(approval_to_pb).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn review_approval_request_impl(
        &self,
        request: Request<pb::ReviewApprovalRequestRequest>,
    ) -> Result<pb::ReviewApprovalRequestResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let id = uuid_field("id", &r.id)?;
        let verdict = match pb::Verdict::try_from(r.verdict) {
            Ok(pb::Verdict::Approve) => Verdict::Approve,
            Ok(pb::Verdict::Deny) => Verdict::Deny,
            _ => {
                return Err(Status::invalid_argument(
                    "verdict: must be VERDICT_APPROVE or VERDICT_DENY",
                ));
            }
        };
        let reason = reason_field("reason", &r.reason)?;
        let current = self
            .shared
            .store
            .approval(&id)
            .await
            .map_err(store_status)?;
        if current.state != ApprovalState::Pending {
            return Err(Status::failed_precondition(format!(
                "id: approval request {id} is already {}",
                current.state.as_str()
            )));
        }
        self.check_reviewer(&actor, &current).await?;
        let now = now_s();
        let (a, grant) = self
            .shared
            .store
            .review_approval(
                &id,
                Review {
                    reviewer: actor.name().to_owned(),
                    reviewer_issuer: actor.human_issuer.clone(),
                    carried_by: actor.workload.clone(),
                    verdict,
                    reason,
                    at: now,
                },
                &actor,
                now,
            )
            .await
            .map_err(store_status)?;
        if let Some(g) = &grant {
            self.shared.holds_grant(&g.principal);
        }
        Ok(pb::ReviewApprovalRequestResponse {
            approval_request: Some(approval_to_pb(&a)),
        })
    }

    pub(super) async fn cancel_approval_request_impl(
        &self,
        request: Request<pb::CancelApprovalRequestRequest>,
    ) -> Result<pb::CancelApprovalRequestResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let id = uuid_field("id", &r.id)?;
        let reason = reason_field("reason", &r.reason)?;
        let operator = self.has_role(&actor.workload, "operator");
        let a = self
            .shared
            .store
            .cancel_approval(&id, &actor, &reason, now_s(), |a| {
                let name = actor.name();
                if operator || name == a.requester || name == a.principal {
                    Ok(())
                } else {
                    Err(StoreError::PermissionDenied(format!(
                        "only the requester ({}), the principal ({}) or an operator may cancel approval request {}",
                        a.requester, a.principal, a.id
                    )))
                }
            })
            .await
            .map_err(store_status)?;
        Ok(pb::CancelApprovalRequestResponse {
            approval_request: Some(approval_to_pb(&a)),
        })
    }

    pub(super) async fn get_grant_impl(
        &self,
        r: pb::GetGrantRequest,
    ) -> Result<pb::GetGrantResponse, Status> {
        let id = uuid_field("id", &r.id)?;
        let g = self.shared.store.grant(&id).await.map_err(store_status)?;
        Ok(pb::GetGrantResponse {
            grant: Some(grant_to_pb(&g)),
        })
    }

    pub(super) async fn list_grants_impl(
        &self,
        r: pb::ListGrantsRequest,
    ) -> Result<pb::ListGrantsResponse, Status> {
        let state = match pb::GrantState::try_from(r.state) {
            Ok(pb::GrantState::Unspecified) => None,
            Ok(pb::GrantState::Active) => Some(GrantState::Active),
            Ok(pb::GrantState::Used) => Some(GrantState::Used),
            Ok(pb::GrantState::Expired) => Some(GrantState::Expired),
            Ok(pb::GrantState::Revoked) => Some(GrantState::Revoked),
            Ok(pb::GrantState::IncidentClosed) => Some(GrantState::IncidentClosed),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a grant state",
                    r.state
                )));
            }
        }
        .map(GrantState::as_str);
        if !r.resource_id.is_empty() {
            uuid_field("resource_id", &r.resource_id)?;
        }
        optional_text("principal", &r.principal)?;
        optional_text("incident_ref", &r.incident_ref)?;
        let limit = page(r.page_size);
        let rows = self
            .shared
            .store
            .grants(&ListFilter {
                state,
                principal: r.principal,
                resource_id: r.resource_id,
                incident_ref: r.incident_ref,
                before_id: page_token(&r.page_token)?,
                limit: limit + 1,
                ..ListFilter::default()
            })
            .await
            .map_err(store_status)?;
        let (rows, next) = paged(rows, limit, |g| g.id.clone());
        Ok(pb::ListGrantsResponse {
            grants: rows.iter().map(grant_to_pb).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn revoke_grant_impl(
        &self,
        request: Request<pb::RevokeGrantRequest>,
    ) -> Result<pb::RevokeGrantResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let id = uuid_field("id", &r.id)?;
        let reason = reason_field("reason", &r.reason)?;
        let g = self
            .shared
            .store
            .revoke_grant(&id, &actor, &reason, now_s())
            .await
            .map_err(store_status)?;
        Ok(pb::RevokeGrantResponse {
            grant: Some(grant_to_pb(&g)),
        })
    }

    pub(super) async fn close_incident_impl(
        &self,
        request: Request<pb::CloseIncidentRequest>,
    ) -> Result<pb::CloseIncidentResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        if r.incident_ref.trim().is_empty() {
            return Err(Status::invalid_argument("incident_ref: is required"));
        }
        optional_text("incident_ref", &r.incident_ref)?;
        let reason = reason_field("reason", &r.reason)?;
        optional_text("correlation_id", &r.correlation_id)?;
        let incident = self
            .shared
            .engine
            .incident(&r.incident_ref)
            .map_err(|e| Status::internal(e.to_string()))?;
        let allowed = self
            .admit(
                &actor,
                "close_incident",
                incident,
                &r.incident_ref,
                &r.correlation_id,
            )
            .await?;
        let closed_at = now_s();
        let (grants, requests) = self
            .shared
            .store
            .close_incident(
                &r.incident_ref,
                &actor,
                &reason,
                &r.correlation_id,
                closed_at,
                &allowed,
            )
            .await
            .map_err(store_status)?;
        // The closure stands either way; the broker is told now if it can
        // be, and by the retry loop otherwise.
        let closures = &self.shared.closures;
        let announced = tokio::time::timeout(
            crate::closures::INLINE_WAIT,
            closures.announce(&Closure {
                incident: r.incident_ref.clone(),
                reason,
                closed_at,
                correlation_id: r.correlation_id,
            }),
        )
        .await
        .unwrap_or_else(|_| Err("the broker did not answer in time".to_owned()));
        let (revoked_lease_ids, leases_pending) = match announced {
            Ok(ids) => (ids, false),
            Err(error) => {
                tracing::warn!(incident = r.incident_ref, %error, "incident closed; its leases are revoked once the broker answers");
                closures.wake();
                (Vec::new(), true)
            }
        };
        Ok(pb::CloseIncidentResponse {
            ended_grant_ids: grants.into_iter().map(|g| g.id).collect(),
            cancelled_approval_request_ids: requests.into_iter().map(|a| a.id).collect(),
            revoked_lease_ids,
            leases_pending,
        })
    }

    pub(super) async fn break_glass_impl(
        &self,
        request: Request<pb::BreakGlassRequest>,
    ) -> Result<pb::BreakGlassResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        const ACTIONS: [&str; 8] = [
            "issue",
            "renew",
            "rotate",
            "revoke",
            "suspend",
            "restrict",
            "watchlist",
            "elevate",
        ];
        if !ACTIONS.contains(&r.action.as_str()) {
            return Err(Status::invalid_argument(format!(
                "action: {} cannot be taken under break-glass; one of {}",
                steward_errors::shown(&r.action),
                ACTIONS.join(", ")
            )));
        }
        let resource_id = Uuid::try_parse(&r.resource_id)
            .map_err(|_| Status::invalid_argument("resource_id: is not an identity id (UUID)"))?;
        let resource = resource_id.hyphenated().to_string();
        optional_text("incident_ref", &r.incident_ref)?;
        optional_text("correlation_id", &r.correlation_id)?;
        let reason = reason_field("reason", &r.reason)?;
        let duration = match i64::from(r.duration_seconds) {
            0 => BREAK_GLASS_DEFAULT_SECS,
            d if d > BREAK_GLASS_MAX_SECS => {
                return Err(Status::invalid_argument(format!(
                    "duration_seconds: at most {BREAK_GLASS_MAX_SECS}"
                )));
            }
            d => d,
        };
        let facts = self.facts(&resource_id).await?;
        let now = now_s();
        let decision_request = DecisionRequest {
            principal: self.principal_of(&actor)?,
            action: "break_glass".to_owned(),
            resource: facts,
            context: RequestContext {
                incident_ref: r.incident_ref.clone(),
                now,
                window_start: now,
                window_end: now + duration,
                break_glass: true,
                requester: actor.name().to_owned(),
                acting_workload: actor.workload.clone(),
                acting_human: actor.human_subject.clone(),
                ..RequestContext::default()
            },
        };
        let (decision, version) = self.decide_now(&decision_request)?;
        let decision_id = Uuid::now_v7();
        // Every invocation is recorded, refused or not.
        self.record_decision(
            decision_id,
            &actor,
            &decision_request,
            &decision,
            version,
            &r.correlation_id,
            None,
            &super::Standing::Own,
        )
        .await?;
        if decision.effect != Effect::Allow {
            return Err(Status::permission_denied(format!(
                "{} may not invoke break-glass on {resource}: {}",
                actor.name(),
                decision.reason
            )));
        }
        let grant = Grant {
            id: Uuid::now_v7().hyphenated().to_string(),
            principal: actor.name().to_owned(),
            action: r.action.clone(),
            resource_id: resource.clone(),
            incident_ref: r.incident_ref.clone(),
            approval_request_id: String::new(),
            approvers: Vec::new(),
            break_glass: true,
            window_start: now,
            window_end: now + duration,
            claim_by: now + duration,
            single_use: false,
            state: GrantState::Active,
            claimed_at: 0,
            ended_at: 0,
            end_reason: String::new(),
            created_at: now,
            correlation_id: r.correlation_id.clone(),
        };
        let review = PostActionReview {
            id: Uuid::now_v7().hyphenated().to_string(),
            grant_id: grant.id.clone(),
            principal: grant.principal.clone(),
            action: r.action.clone(),
            resource_id: resource,
            incident_ref: r.incident_ref.clone(),
            reason: reason.clone(),
            assignees: match suggested_reviewers("", &decision_request.resource) {
                owners if owners.is_empty() => vec![self.shared.config.unowned_reviewer.clone()],
                owners => owners,
            },
            state: ReviewState::Open,
            due_at: now
                + i64::try_from(self.shared.config.break_glass_review_seconds)
                    .unwrap_or(i64::MAX / 2),
            flagged_at: 0,
            completed_by: String::new(),
            completion_note: String::new(),
            completed_at: 0,
            created_at: now,
        };
        let mut invoked = grant_record(&actor, "breakglass.invoked", &grant, &reason);
        invoked.decision.policy_set_version = version.to_string();
        invoked.decision.policy_ids = decision.policy_ids.clone();
        invoked.correlation_id = r.correlation_id.clone();
        let mut opened = review_record(&actor, "breakglass.review_opened", &review, &reason);
        opened.correlation_id = r.correlation_id.clone();
        self.shared
            .store
            .break_glass(&grant, &review, vec![invoked, opened])
            .await
            .map_err(store_status)?;
        self.shared.holds_grant(&grant.principal);
        Ok(pb::BreakGlassResponse {
            grant: Some(grant_to_pb(&grant)),
            review: Some(review_to_pb(&review, now)),
            decision: Some(super::decision_to_pb(
                &decision,
                &decision_request,
                version,
                &decision_id,
            )),
        })
    }

    pub(super) async fn list_post_action_reviews_impl(
        &self,
        r: pb::ListPostActionReviewsRequest,
    ) -> Result<pb::ListPostActionReviewsResponse, Status> {
        let state = match pb::ReviewState::try_from(r.state) {
            Ok(pb::ReviewState::Unspecified) => None,
            Ok(pb::ReviewState::Open) => Some(ReviewState::Open.as_str()),
            Ok(pb::ReviewState::Completed) => Some(ReviewState::Completed.as_str()),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a review state",
                    r.state
                )));
            }
        };
        let now = now_s();
        // Flag what fell overdue since the last sweep before answering.
        self.shared
            .store
            .sweep(&self.shared.own_actor(), now)
            .await
            .map_err(store_status)?;
        let limit = page(r.page_size);
        let rows = self
            .shared
            .store
            .post_action_reviews(&ListFilter {
                state,
                due_before: if r.overdue_only { now } else { 0 },
                before_id: page_token(&r.page_token)?,
                limit: limit + 1,
                ..ListFilter::default()
            })
            .await
            .map_err(store_status)?;
        let (rows, next) = paged(rows, limit, |r| r.id.clone());
        Ok(pb::ListPostActionReviewsResponse {
            reviews: rows.iter().map(|r| review_to_pb(r, now)).collect(),
            next_page_token: next,
        })
    }

    pub(super) async fn complete_post_action_review_impl(
        &self,
        request: Request<pb::CompletePostActionReviewRequest>,
    ) -> Result<pb::CompletePostActionReviewResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let id = uuid_field("id", &r.id)?;
        let note = reason_field("note", &r.note)?;
        let assignee = |review: &PostActionReview| {
            review
                .assignees
                .iter()
                .any(|owner| self.is_or_belongs_to(&actor, owner))
        };
        let now = now_s();
        let review = self
            .shared
            .store
            .complete_post_action_review(&id, &actor, &note, now, |review| {
                if actor.name() == review.principal {
                    return Err(StoreError::PermissionDenied(format!(
                        "{} invoked this break-glass and may not review it",
                        review.principal
                    )));
                }
                if !assignee(review) {
                    return Err(StoreError::PermissionDenied(format!(
                        "only the assignees ({}) may complete post-action review {}",
                        review.assignees.join(", "),
                        review.id
                    )));
                }
                Ok(())
            })
            .await
            .map_err(store_status)?;
        Ok(pb::CompletePostActionReviewResponse {
            review: Some(review_to_pb(&review, now)),
        })
    }
}
