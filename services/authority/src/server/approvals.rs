//! The approval, grant, incident and break-glass handlers.

use steward_proto::steward::authority::v1 as pb;
use tonic::{Request, Status};
use uuid::Uuid;

use super::{AuthorityServer, caller, store_status};
use crate::approvals::{
    Actor, ApprovalRequest, ApprovalState, BREAK_GLASS_DEFAULT_SECS, BREAK_GLASS_MAX_SECS, Grant,
    GrantState, PostActionReview, Review, ReviewState, Verdict, grant_record, review_record,
    suggested_reviewers,
};
use crate::engine::{DecisionRequest, Effect, NhiFacts, RequestContext};
use crate::error::Error;
use crate::store::{Closure, ListFilter, StoreError};

mod breakglass;
mod wire;

pub use wire::*;

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

    /// Checks that `actor` may review `a`: never their own request, a
    /// member of its approver predicate, and allowed to `approve` the
    /// resource by the active policies.
    async fn check_reviewer(&self, actor: &Actor, a: &ApprovalRequest) -> Result<(), Error> {
        let name = actor.name();
        if name == a.requester || name == a.principal {
            return Err(Error::denied(format!(
                "{name} may not review approval request {}: it is their own request (requester {}, principal {})",
                a.id, a.requester, a.principal
            )));
        }
        let resource = Uuid::try_parse(&a.resource_id).map_err(|e| {
            Error::internal("stored approval request has an unreadable resource id", e)
        })?;
        let facts = self.decider.facts(&resource).await?;
        let eligible = match a.approver.as_str() {
            "technical_owner" => self.is_or_belongs_to(actor, &facts.technical_owner),
            "business_owner" => self.is_or_belongs_to(actor, &facts.business_owner),
            "" => true,
            group => group
                .strip_prefix("group:")
                .is_some_and(|g| self.groups_of_actor(actor).iter().any(|m| m == g)),
        };
        if !eligible {
            return Err(Error::denied(format!(
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
        let (decision, _) = self.decider.decide_now(&DecisionRequest {
            principal: self.decider.principal_of(actor)?,
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
            return Err(Error::denied(format!(
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
        let state = state_filter::<ApprovalState>(
            r.state,
            pb::ApprovalState::try_from(r.state)
                .ok()
                .map(|s| s.as_str_name()),
            "APPROVAL_STATE_",
            "an approval state",
        )?;
        if !r.resource_id.is_empty() {
            uuid_field("resource_id", &r.resource_id)?;
        }
        optional_text("incident_ref", &r.incident_ref)?;
        let (filter, limit) = paging(&r.page_token, r.page_size)?;
        let rows = self
            .shared
            .store
            .approvals(&ListFilter {
                state,
                resource_id: r.resource_id,
                incident_ref: r.incident_ref,
                ..filter
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
                return Err(steward_errors::invalid(
                    "verdict",
                    "must be VERDICT_APPROVE or VERDICT_DENY",
                )
                .into());
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
            return Err(store_status(StoreError::FailedPrecondition(format!(
                "id: approval request {id} is already {}",
                current.state.as_str()
            ))));
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
        let state = state_filter::<GrantState>(
            r.state,
            pb::GrantState::try_from(r.state)
                .ok()
                .map(|s| s.as_str_name()),
            "GRANT_STATE_",
            "a grant state",
        )?;
        if !r.resource_id.is_empty() {
            uuid_field("resource_id", &r.resource_id)?;
        }
        optional_text("principal", &r.principal)?;
        optional_text("incident_ref", &r.incident_ref)?;
        let (filter, limit) = paging(&r.page_token, r.page_size)?;
        let rows = self
            .shared
            .store
            .grants(&ListFilter {
                state,
                principal: r.principal,
                resource_id: r.resource_id,
                incident_ref: r.incident_ref,
                ..filter
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
        // Anyone else ending a grant would deny its principal the work it
        // was approved for.
        let operator = self.has_role(&actor.workload, "operator");
        let g = self
            .shared
            .store
            .revoke_grant(&id, &actor, &reason, now_s(), |g| {
                if operator || actor.name() == g.principal {
                    Ok(())
                } else {
                    Err(StoreError::PermissionDenied(format!(
                        "only the principal ({}) or an operator may revoke grant {}",
                        g.principal, g.id
                    )))
                }
            })
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
            return Err(steward_errors::invalid("incident_ref", "is required").into());
        }
        optional_text("incident_ref", &r.incident_ref)?;
        let reason = reason_field("reason", &r.reason)?;
        optional_text("correlation_id", &r.correlation_id)?;
        let incident = self
            .shared
            .engine
            .incident(&r.incident_ref)
            .map_err(|e| Error::internal("the incident makes no policy entity", e))?;
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
}
