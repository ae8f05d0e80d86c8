//! Principal binding (ADR 0015): whom a request's principal may be, given
//! the verified caller.

use steward_identity::SpiffeId;
use steward_vocab::Action;

use super::{AskContext, Decider};
use crate::approvals::Actor;
use crate::engine::{DecisionRequest, Effect, Principal, RequestContext};
use crate::error::Error;

/// Why the caller may ask about the request's principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It is the caller: the person of its bearer token, else its SPIFFE ID.
    Own,
    /// A Steward service carrying its own caller's request (ADR 0015).
    Service,
    /// A caller that a policy permits to act for the principal (`act_for`).
    Delegate {
        policy_ids: Vec<String>,
        version: u64,
    },
    /// DryRun and Explain: a question about anyone, which changes nothing.
    WhatIf,
}

/// Whether a request may ask about principals other than its caller
/// without a delegation: only questions that change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asking {
    /// Authorize: a decision that is recorded, spends grants and opens
    /// approval requests.
    ForReal,
    /// DryRun, Explain.
    WhatIf,
}

/// The Steward services that may ask on behalf of their own callers
/// without a policy: they authenticated that caller themselves.
pub const DELEGATING_SERVICES: &[&str] = &["credential-broker", "inventory"];

/// The context of a decision about what `actor` itself is doing now, for
/// `incident_ref` (no task window beyond the moment).
pub fn own_context(actor: &Actor, incident_ref: &str) -> RequestContext {
    let now = steward_evidence::clock::now_secs();
    RequestContext {
        incident_ref: incident_ref.to_owned(),
        now,
        window_start: now,
        window_end: now,
        requester: actor.name().to_owned(),
        acting_workload: actor.workload.clone(),
        acting_human: actor.human_subject.clone(),
        ..RequestContext::default()
    }
}

/// Whether two principals are the same one.
fn same_principal(a: &Principal, b: &Principal) -> bool {
    match (a, b) {
        (Principal::Workload { spiffe_id: x, .. }, Principal::Workload { spiffe_id: y, .. }) => {
            x == y
        }
        (
            Principal::Human {
                subject: x,
                issuer: xi,
                ..
            },
            Principal::Human {
                subject: y,
                issuer: yi,
                ..
            },
        ) => x == y && xi == yi,
        _ => false,
    }
}

impl Decider {
    /// Whether `workload` is one of the services in [`DELEGATING_SERVICES`]
    /// of this trust domain.
    pub fn is_delegating_service(&self, workload: &str) -> bool {
        SpiffeId::parse(workload).is_ok_and(|id| {
            DELEGATING_SERVICES
                .iter()
                .any(|name| id.is_service(self.shared.own.trust_domain(), name))
        })
    }

    /// Binds `principal` to the verified caller: it is the caller, or the
    /// caller is a delegating Steward service, or a policy permits the
    /// caller to `act_for` it. Anything else is PERMISSION_DENIED.
    pub(super) fn standing(
        &self,
        principal: &Principal,
        actor: &Actor,
        asking: Asking,
    ) -> Result<Standing, Error> {
        // The broker's every issuance comes this way: checked first.
        if self.is_delegating_service(&actor.workload) {
            return Ok(Standing::Service);
        }
        let own = self.principal_of(actor)?;
        if same_principal(principal, &own) {
            return Ok(Standing::Own);
        }
        if asking == Asking::WhatIf {
            return Ok(Standing::WhatIf);
        }
        let resource = self
            .shared
            .engine
            .principal_resource(principal)
            .map_err(|e| Error::Policy(e.to_string()))?;
        let (decision, version) = self.decide_now(&DecisionRequest {
            principal: own,
            action: "act_for".to_owned(),
            resource,
            context: own_context(actor, ""),
        })?;
        if decision.effect != Effect::Allow {
            return Err(Error::denied_on(
                "principal",
                format!(
                    "{} may not act for {}: {}",
                    steward_errors::shown(actor.name()),
                    steward_errors::shown(principal.id()),
                    decision.reason
                ),
            ));
        }
        Ok(Standing::Delegate {
            policy_ids: decision.policy_ids,
            version,
        })
    }
}

/// Who asked, and the person behind the call: the verified caller's. Only
/// a delegating service (or a what-if question) names them for its caller.
pub(super) fn who_asked(
    standing: &Standing,
    principal: &Principal,
    actor: &Actor,
    action: Action,
    c: &AskContext,
) -> Result<(String, String), Error> {
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
            let requester = if action == Action::Approve {
                // The request being approved: the forbid on
                // self-approval reads it, so it cannot help a caller.
                c.requester.clone()
            } else if c.requester.is_empty() || c.requester == actor.name() {
                actor.name().to_owned()
            } else {
                return Err(Error::denied_on(
                    "context.requester",
                    format!(
                        "the requester is the verified caller ({}); only Steward services name another",
                        steward_errors::shown(actor.name())
                    ),
                ));
            };
            if !(c.acting_human.is_empty() || c.acting_human == actor.human_subject) {
                return Err(Error::denied_on(
                    "context.acting_human",
                    "the acting human is the one of this call's bearer token; only Steward services name another",
                ));
            }
            (requester, actor.human_subject.clone())
        }
    })
}
