//! The decision path, behind the gRPC adapter: a request checked and bound
//! to its verified caller, its resource's facts, grants tried and spent,
//! an approval request opened when one is needed, and the decision
//! recorded. It knows neither tonic's `Status` nor prost; it fails with
//! [`Error`] and reaches inventory through [`Inventory`].

use std::fmt;
use std::sync::Arc;

use steward_evidence::EvidenceRecord;
use steward_identity::SpiffeId;
use steward_outbox::Batcher;
use steward_vocab::{Action, IdentityId};
use uuid::Uuid;

use crate::approvals::{APPROVAL_TTL_SECS, Actor, ApprovalRequest, ApprovalState, Grant};
use crate::engine::{
    ApprovalRequirement, CompiledSet, Decision, DecisionRequest, Effect, Principal, RequestContext,
    Resource,
};
use crate::error::Error;
use crate::state::Shared;

mod binding;
mod facts;
mod record;
#[cfg(test)]
mod tests;

pub use binding::{Asking, DELEGATING_SERVICES, Standing, own_context};
pub use facts::Inventory;
pub use record::decision_record;

/// The principal a request names, as written: not yet bound to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// The verified caller itself.
    Caller,
    Workload(SpiffeId),
    Human {
        subject: String,
        issuer: String,
    },
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskedResource {
    Nhi(IdentityId),
    /// This trust domain, for `rotate_ca`.
    TrustDomain(String),
}

/// A request's context as written; times in Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AskContext {
    pub incident_ref: String,
    pub requester: String,
    pub acting_human: String,
    pub correlation_id: String,
    pub reason: String,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    /// The latest time a grant from an approval may still be claimed.
    pub claim_by: Option<i64>,
    pub requested_ttl: i64,
}

/// One question, its values each checked on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub principal: Named,
    pub action: Action,
    pub resource: AskedResource,
    pub context: AskContext,
    /// The caller records an ALLOW in its outcome's record (ADR 0012).
    pub with_outcome: bool,
}

/// What a request asked beyond the decision itself.
struct Extras {
    correlation_id: String,
    reason: String,
    /// Unix seconds; `i64::MAX` when unset.
    claim_by: i64,
    standing: Standing,
}

/// A decision made and recorded.
#[derive(Debug, Clone)]
pub struct Decided {
    pub id: Uuid,
    /// The request as decided: with the grant's approvers when one was used.
    pub request: DecisionRequest,
    pub decision: Decision,
    pub version: u64,
    /// The grant an ALLOW spent, if one did.
    pub grant_id: Option<String>,
    /// The approval request an APPROVAL_REQUIRED opened, if one did.
    pub approval_request_id: Option<String>,
    /// The ALLOW's record is left to the caller's outcome (ADR 0012).
    pub recorded_with_outcome: bool,
}

/// A what-if decision (DryRun, Explain): recorded nowhere.
pub struct Considered {
    pub request: DecisionRequest,
    pub decision: Decision,
    pub version: u64,
    pub set: Arc<CompiledSet>,
}

/// The decision path.
#[derive(Clone)]
pub struct Decider {
    shared: Arc<Shared>,
    inventory: Arc<dyn Inventory>,
    evidence: Batcher,
}

impl fmt::Debug for Decider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decider").finish_non_exhaustive()
    }
}

impl Decider {
    pub fn new(shared: Arc<Shared>, inventory: Arc<dyn Inventory>, evidence: Batcher) -> Self {
        Self {
            shared,
            inventory,
            evidence,
        }
    }

    /// The actor as a policy principal.
    pub fn principal_of(&self, actor: &Actor) -> Result<Principal, Error> {
        if actor.human_subject.is_empty() {
            let id = SpiffeId::parse(&actor.workload)
                .map_err(|e| Error::Unauthenticated(e.to_string()))?;
            Ok(self.workload(&id))
        } else {
            Ok(self.human(&actor.human_subject, &actor.human_issuer))
        }
    }

    fn workload(&self, id: &SpiffeId) -> Principal {
        let spiffe_id = id.to_string();
        Principal::Workload {
            groups: self.shared.config.groups_of(&spiffe_id),
            trust_domain: id.trust_domain().name().to_owned(),
            spiffe_id,
        }
    }

    fn human(&self, subject: &str, issuer: &str) -> Principal {
        Principal::Human {
            groups: self.shared.config.groups_of(&format!("human:{subject}")),
            subject: subject.to_owned(),
            issuer: issuer.to_owned(),
        }
    }

    /// The active policies' answer outside any grant, with their version.
    pub fn decide_now(&self, request: &DecisionRequest) -> Result<(Decision, u64), Error> {
        let active = self.shared.deciding()?;
        let decision = decide_with(&active.set, &self.shared, request)?;
        Ok((decision, active.version))
    }

    /// Authorize: decide with each grant that covers the request (its
    /// approvals, or break-glass) and spend the one an ALLOW used; with no
    /// grant, decide bare, and open an approval request when one is needed.
    /// Answers once the decision's record is durable (or queued, when the
    /// service is configured so), unless the caller records it.
    pub async fn authorize(&self, ask: Ask, actor: &Actor) -> Result<Decided, Error> {
        let with_outcome_asked = ask.with_outcome;
        let (mut request, extras) = self.prepare(ask, actor, Asking::ForReal).await?;
        let active = self.shared.deciding()?;
        let now = request.context.now;
        for grant in &self.usable_grants(&request).await? {
            let mut with = request.clone();
            with.context.approvers = grant.approvers.iter().cloned().collect();
            with.context.break_glass = grant.break_glass;
            let decision = decide_with(&active.set, &self.shared, &with)?;
            if decision.effect != Effect::Allow {
                continue;
            }
            let id = Uuid::now_v7();
            let id_text = id.hyphenated().to_string();
            if !self
                .shared
                .store
                .claim_grant(&grant.id, actor, &id_text, now)
                .await?
            {
                // Spent by a concurrent decision.
                continue;
            }
            let mut evidence = decision_record(
                id,
                actor,
                &with,
                &decision,
                active.version,
                &extras.correlation_id,
                Some(grant),
            );
            record::note_standing(&mut evidence, &extras.standing);
            self.record(evidence, true).await?;
            return Ok(Decided {
                id,
                request: with,
                decision,
                version: active.version,
                grant_id: Some(grant.id.clone()),
                approval_request_id: None,
                recorded_with_outcome: false,
            });
        }
        request.context.approvers.clear();
        request.context.break_glass = false;
        let decision = decide_with(&active.set, &self.shared, &request)?;
        let id = Uuid::now_v7();
        let mut approval_request_id = None;
        // Approval requests and grants are about NHIs; a policy asking
        // approval for anything else leaves the decision APPROVAL_REQUIRED
        // with no request opened, which callers refuse.
        if let (Effect::ApprovalRequired, Some(needed), true) = (
            decision.effect,
            &decision.approval,
            request.resource.is_nhi(),
        ) {
            let opened = approval_request(&request, &extras, needed, active.version, &id)?;
            let (row, _) = self.shared.store.open_approval(opened, actor, now).await?;
            approval_request_id = Some(row.id);
        }
        let mut evidence = decision_record(
            id,
            actor,
            &request,
            &decision,
            active.version,
            &extras.correlation_id,
            None,
        );
        evidence.decision.approval_ids = approval_request_id.iter().cloned().collect();
        record::note_standing(&mut evidence, &extras.standing);
        let recorded_with_outcome = decision.effect == Effect::Allow
            && with_outcome_asked
            && self.records_with_outcome(actor);
        if !recorded_with_outcome {
            self.record(evidence, self.shared.config.durable_decisions)
                .await?;
        }
        Ok(Decided {
            id,
            request,
            decision,
            version: active.version,
            grant_id: None,
            approval_request_id,
            recorded_with_outcome,
        })
    }

    /// Decides with stored `version` (0: the active one) and records
    /// nothing: DryRun and Explain.
    pub async fn what_if(
        &self,
        ask: Ask,
        actor: &Actor,
        version: u64,
    ) -> Result<Considered, Error> {
        let (request, _) = self.prepare(ask, actor, Asking::WhatIf).await?;
        let (version, set) = self.shared.compiled(version).await?;
        let decision = decide_with(&set, &self.shared, &request)?;
        Ok(Considered {
            request,
            decision,
            version,
            set,
        })
    }

    /// Decides whether the verified caller may `action` `resource`, for a
    /// change this service is about to make. A refusal is recorded as a
    /// decision of its own and answered PERMISSION_DENIED; an ALLOW is
    /// returned, with its version, for the change's own evidence record.
    pub async fn admit(
        &self,
        actor: &Actor,
        action: &str,
        resource: Arc<Resource>,
        incident_ref: &str,
        correlation_id: &str,
    ) -> Result<(Decision, u64), Error> {
        let request = DecisionRequest {
            principal: self.principal_of(actor)?,
            action: action.to_owned(),
            resource,
            context: own_context(actor, incident_ref),
        };
        let (decision, version) = self.decide_now(&request)?;
        if decision.effect == Effect::Allow {
            return Ok((decision, version));
        }
        let record = decision_record(
            Uuid::now_v7(),
            actor,
            &request,
            &decision,
            version,
            correlation_id,
            None,
        );
        self.record(record, true).await?;
        Err(Error::denied(format!(
            "{} may not {action} {}: {}",
            steward_errors::shown(actor.name()),
            steward_errors::shown(&request.resource.id),
            if decision.effect == Effect::ApprovalRequired {
                "a policy asks for approval, and this action is not taken under a grant"
            } else {
                &decision.reason
            }
        )))
    }

    /// Records a decision of `actor`'s own that `request` describes.
    pub async fn record_decision(
        &self,
        id: Uuid,
        actor: &Actor,
        request: &DecisionRequest,
        (decision, version): (&Decision, u64),
        correlation_id: &str,
    ) -> Result<(), Error> {
        let record = decision_record(id, actor, request, decision, version, correlation_id, None);
        self.record(record, true).await
    }

    /// Records `evidence`: answers once it is durable when `durable`, else
    /// once it is queued.
    async fn record(&self, evidence: EvidenceRecord, durable: bool) -> Result<(), Error> {
        let recorded = if durable {
            self.evidence.record(evidence).await
        } else {
            self.evidence.record_queued(evidence).await
        };
        recorded.map_err(|e| {
            Error::unavailable("the decision could not be recorded; retry", e.to_string())
        })
    }

    /// Whether the caller may record an ALLOW in its outcome's record
    /// (ADR 0012): only Steward's own credential broker, acting for no
    /// human.
    fn records_with_outcome(&self, actor: &Actor) -> bool {
        actor.human_subject.is_empty()
            && SpiffeId::parse(&actor.workload)
                .is_ok_and(|id| id.is_service(self.shared.own.trust_domain(), "credential-broker"))
    }

    /// The grants `request`'s principal holds that could allow it (none
    /// without a store read, for a principal known to hold none).
    async fn usable_grants(&self, request: &DecisionRequest) -> Result<Vec<Grant>, Error> {
        if !self.shared.may_hold_grant(request.principal.id()) {
            return Ok(Vec::new());
        }
        Ok(self
            .shared
            .store
            .usable_grants(
                request.principal.id(),
                &request.action,
                &request.resource.id,
                &request.context.incident_ref,
                request.context.now,
            )
            .await?)
    }

    /// A checked request with its resource's facts, and what it asked
    /// beyond the decision.
    async fn prepare(
        &self,
        ask: Ask,
        actor: &Actor,
        asking: Asking,
    ) -> Result<(DecisionRequest, Extras), Error> {
        let principal = match &ask.principal {
            Named::Caller => self.principal_of(actor)?,
            Named::Workload(id) => self.workload(id),
            Named::Human { subject, issuer } => self.human(subject, issuer),
        };
        let c = ask.context;
        let now = steward_evidence::clock::now_secs();
        let window_start = c.window_start.unwrap_or(now);
        let window_end = c.window_end.unwrap_or(i64::MAX);
        if window_end < window_start {
            return Err(steward_errors::invalid(
                "context.window_end",
                "ends before the window starts",
            )
            .into());
        }
        // For an approval, "who asked" is someone else's request: it must be
        // stated, or the no-self-approval rule could not be checked.
        if ask.action == Action::Approve && c.requester.is_empty() {
            return Err(steward_errors::invalid(
                "context.requester",
                "is required for approve (the principal that made the request being approved)",
            )
            .into());
        }
        let standing = self.standing(&principal, actor, asking)?;
        let (requester, acting_human) =
            binding::who_asked(&standing, &principal, actor, ask.action, &c)?;
        let resource = match &ask.resource {
            AskedResource::Nhi(id) => self.facts(id.uuid()).await?,
            AskedResource::TrustDomain(name) => {
                self.shared.engine.trust_domain(name).map_err(|e| {
                    Error::internal("the trust domain has no policy entity", e.to_string())
                })?
            }
        };
        let request = DecisionRequest {
            principal,
            action: ask.action.as_str().to_owned(),
            resource,
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
                requested_ttl: c.requested_ttl,
            },
        };
        let extras = Extras {
            correlation_id: c.correlation_id,
            reason: c.reason.trim().to_owned(),
            // Checked against the clock only when it opens an approval request.
            claim_by: c.claim_by.unwrap_or(i64::MAX),
            standing,
        };
        Ok((request, extras))
    }
}

/// `set`'s answer to `request`.
fn decide_with(
    set: &CompiledSet,
    shared: &Shared,
    request: &DecisionRequest,
) -> Result<Decision, Error> {
    set.decide(&shared.engine, request)
        .map_err(|e| Error::Policy(e.to_string()))
}

/// The approval request a decision that needs `needed` opens: checked
/// that it says why and that its grant could still be claimed.
fn approval_request(
    request: &DecisionRequest,
    asked: &Extras,
    needed: &ApprovalRequirement,
    version: u64,
    decision_id: &Uuid,
) -> Result<ApprovalRequest, Error> {
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
        suggested_reviewers: crate::approvals::suggested_reviewers(
            &needed.approver,
            &request.resource,
        ),
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
