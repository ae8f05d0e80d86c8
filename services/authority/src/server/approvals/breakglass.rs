//! Break-glass and its post-action reviews.

use super::*;

impl AuthorityServer {
    pub(in crate::server) async fn break_glass_impl(
        &self,
        request: Request<pb::BreakGlassRequest>,
    ) -> Result<pb::BreakGlassResponse, Status> {
        let actor = self.actor(&request)?;
        let r = request.into_inner();
        let (resource_id, reason, duration) = checked(&r)?;
        let resource = resource_id.hyphenated().to_string();
        let facts = self.decider.facts(&resource_id).await?;
        let now = now_s();
        let decision_request = DecisionRequest {
            principal: self.decider.principal_of(&actor)?,
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
        let (decision, version) = self.decider.decide_now(&decision_request)?;
        let decision_id = Uuid::now_v7();
        // Every invocation is recorded, refused or not.
        self.decider
            .record_decision(
                decision_id,
                &actor,
                &decision_request,
                (&decision, version),
                &r.correlation_id,
            )
            .await?;
        if decision.effect != Effect::Allow {
            return Err(Error::denied(format!(
                "{} may not invoke break-glass on {resource}: {}",
                actor.name(),
                decision.reason
            ))
            .into());
        }
        let grant = break_glass_grant(&actor, &r, &resource, now, duration);
        let review = self.review_of(&grant, &r, &reason, &decision_request.resource, now);
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
            decision: Some(crate::server::evidence::decision_to_pb(
                &decision,
                &decision_request,
                version,
                &decision_id,
            )),
        })
    }

    /// The review a break-glass opens: its owners (or the configured
    /// reviewer of unowned identities) must complete it by the due time.
    fn review_of(
        &self,
        grant: &Grant,
        r: &pb::BreakGlassRequest,
        reason: &str,
        facts: &NhiFacts,
        now: i64,
    ) -> PostActionReview {
        PostActionReview {
            id: Uuid::now_v7().hyphenated().to_string(),
            grant_id: grant.id.clone(),
            principal: grant.principal.clone(),
            action: r.action.clone(),
            resource_id: grant.resource_id.clone(),
            incident_ref: r.incident_ref.clone(),
            reason: reason.to_owned(),
            assignees: match suggested_reviewers("", facts) {
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
        }
    }

    pub(in crate::server) async fn list_post_action_reviews_impl(
        &self,
        r: pb::ListPostActionReviewsRequest,
    ) -> Result<pb::ListPostActionReviewsResponse, Status> {
        let state = state_filter::<ReviewState>(
            r.state,
            pb::ReviewState::try_from(r.state)
                .ok()
                .map(|s| s.as_str_name()),
            "REVIEW_STATE_",
            "a review state",
        )?;
        let now = now_s();
        // Flag what fell overdue since the last sweep before answering.
        self.shared
            .store
            .sweep(&self.shared.own_actor(), now)
            .await
            .map_err(store_status)?;
        let (filter, limit) = paging(&r.page_token, r.page_size)?;
        let rows = self
            .shared
            .store
            .post_action_reviews(&ListFilter {
                state,
                due_before: if r.overdue_only { now } else { 0 },
                ..filter
            })
            .await
            .map_err(store_status)?;
        let (rows, next) = paged(rows, limit, |r| r.id.clone());
        Ok(pb::ListPostActionReviewsResponse {
            reviews: rows.iter().map(|r| review_to_pb(r, now)).collect(),
            next_page_token: next,
        })
    }

    pub(in crate::server) async fn complete_post_action_review_impl(
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

/// A break-glass request's checked fields: the identity, the reason and
/// how long the grant lasts.
fn checked(r: &pb::BreakGlassRequest) -> Result<(Uuid, String, i64), Status> {
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
        return Err(steward_errors::invalid(
            "action",
            format!(
                "{} cannot be taken under break-glass; one of {}",
                steward_errors::shown(&r.action),
                ACTIONS.join(", ")
            ),
        )
        .into());
    }
    let resource_id = Uuid::try_parse(&r.resource_id)
        .map_err(|_| steward_errors::invalid("resource_id", "is not an identity id (UUID)"))?;
    optional_text("incident_ref", &r.incident_ref)?;
    optional_text("correlation_id", &r.correlation_id)?;
    let reason = reason_field("reason", &r.reason)?;
    let duration = match i64::from(r.duration_seconds) {
        0 => BREAK_GLASS_DEFAULT_SECS,
        d if d > BREAK_GLASS_MAX_SECS => {
            return Err(steward_errors::invalid(
                "duration_seconds",
                format!("at most {BREAK_GLASS_MAX_SECS}"),
            )
            .into());
        }
        d => d,
    };
    Ok((resource_id, reason, duration))
}

/// The grant a break-glass gives its invoker: `r.action` on `resource`
/// for `duration`, not single use.
fn break_glass_grant(
    actor: &Actor,
    r: &pb::BreakGlassRequest,
    resource: &str,
    now: i64,
    duration: i64,
) -> Grant {
    Grant {
        id: Uuid::now_v7().hyphenated().to_string(),
        principal: actor.name().to_owned(),
        action: r.action.clone(),
        resource_id: resource.to_owned(),
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
    }
}
