//! The decision path of `Authorize`: a request checked, its resource's
//! facts, grants tried and spent, an approval request opened when one is
//! needed, and the decision recorded.

use super::*;

/// What a request asked beyond the decision itself.
pub(super) struct Extras {
    correlation_id: String,
    reason: String,
    /// Unix seconds; `i64::MAX` when unset.
    claim_by: i64,
    standing: Standing,
}

/// A checked request, before facts.
pub(super) struct Asked {
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
pub(super) enum AskedResource {
    Nhi(Uuid),
    /// This trust domain, for `rotate_ca`.
    TrustDomain(String),
}

impl AuthorityServer {
    pub(super) fn check(
        &self,
        r: &pb::AuthorizeRequest,
        prefix: &str,
        actor: &Actor,
        asking: Asking,
    ) -> Result<Asked, Status> {
        let field = |f: &str| format!("{prefix}{f}");
        let principal = self.named_principal(r, actor, &field)?;
        let resource = self.asked_resource(r, &field)?;
        let c = r.context.clone().unwrap_or_default();
        context_text(&c, &field)?;
        let now = steward_evidence::clock::now_secs();
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
        let (requester, acting_human) =
            who_asked(&standing, &principal, actor, &r.action, &c, &field)?;
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

    /// What an `Authorize` is about: an identity for its actions, or this
    /// trust domain for `rotate_ca`.
    fn asked_resource(
        &self,
        r: &pb::AuthorizeRequest,
        field: &dyn Fn(&str) -> String,
    ) -> Result<AskedResource, Status> {
        Ok(match pb::ResourceKind::try_from(r.resource_kind) {
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
        })
    }

    /// A checked request with the NHI's facts, and what it asked beyond
    /// the decision.
    pub(super) async fn prepare(
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
    pub(super) async fn decide(
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

    /// Records a decision's evidence; answers only once it is durable.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_decision(
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

    /// Whether the caller records an ALLOW in its outcome's evidence
    /// record instead of authority recording it (ADR 0012): only when it
    /// asks, and only Steward's own credential broker, acting for no human.
    pub(super) fn records_with_outcome(&self, r: &pb::AuthorizeRequest, actor: &Actor) -> bool {
        r.decision_evidence == pb::DecisionEvidence::WithOutcome as i32
            && actor.human_subject.is_empty()
            && SpiffeId::parse(&actor.workload)
                .is_ok_and(|id| id.is_service(self.own_trust_domain(), "credential-broker"))
    }

    /// Authorize: decide with each grant that covers the request (its
    /// approvals, or break-glass) and spend the one an ALLOW used; with no
    /// grant, decide bare, and open an approval request when one is needed.
    /// The grants `request`'s principal holds that could allow it (none
    /// without a store read, for a principal known to hold none).
    async fn usable_grants(&self, request: &DecisionRequest) -> Result<Vec<Grant>, Status> {
        if !self.shared.may_hold_grant(request.principal.id()) {
            return Ok(Vec::new());
        }
        self.shared
            .store
            .usable_grants(
                request.principal.id(),
                &request.action,
                &request.resource.id,
                &request.context.incident_ref,
                request.context.now,
            )
            .await
            .map_err(store_status)
    }

    pub(super) async fn authorize_with_grants(
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
        let grants = self.usable_grants(&request).await?;
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
            let opened = approval_request(&request, &asked, needed, active.version, &id)?;
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
}

/// The context's free text: bounded, no control characters.
fn context_text(c: &pb::RequestContext, field: &dyn Fn(&str) -> String) -> Result<(), Status> {
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
    Ok(())
}

/// Who asked, and the person behind the call: the verified caller's. Only
/// a delegating service (or a what-if question) names them for its caller.
fn who_asked(
    standing: &Standing,
    principal: &Principal,
    actor: &Actor,
    action: &str,
    c: &pb::RequestContext,
    field: &dyn Fn(&str) -> String,
) -> Result<(String, String), Status> {
    Ok(match standing {
        Standing::Service | Standing::WhatIf => (
            if c.requester.is_empty() {
                principal.id().to_owned()
            } else {
                c.requester.clone()
            },
            c.acting_human.clone(),
        ),
        Standing::Own | Standing::Delegate { .. } => {
            let requester = if action == "approve" {
                // The request being approved: the forbid on
                // self-approval reads it, so it cannot help a caller.
                c.requester.clone()
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
    })
}

/// The approval request a decision that needs `needed` opens: checked
/// that it says why and that its grant could still be claimed.
fn approval_request(
    request: &DecisionRequest,
    asked: &Extras,
    needed: &crate::engine::ApprovalRequirement,
    version: u64,
    decision_id: &Uuid,
) -> Result<ApprovalRequest, Status> {
    let now = request.context.now;
    if asked.reason.is_empty() {
        return Err(steward_errors::invalid(
            "context.reason",
            "is required: this action needs approval, and the approval request states why",
        )
        .into());
    }
    if asked.claim_by < now {
        return Err(steward_errors::invalid(
            "context.claim_by",
            "is in the past; a grant could never be claimed",
        )
        .into());
    }
    let window_end = request.context.window_end;
    Ok(ApprovalRequest {
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
        suggested_reviewers: approvals::suggested_reviewers(&needed.approver, &request.resource),
        window_start: request.context.window_start,
        window_end,
        claim_by: asked.claim_by.min(window_end),
        policy_set_version: version,
        decision_id: decision_id.hyphenated().to_string(),
        correlation_id: asked.correlation_id.clone(),
        state: ApprovalState::Pending,
        created_at: now,
        expires_at: (now + APPROVAL_TTL_SECS).min(window_end),
        decided_at: 0,
        grant_id: String::new(),
        reviews: Vec::new(),
    })
}
