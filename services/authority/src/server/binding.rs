//! Principal binding (ADR 0015): whom a request's principal may be, given
//! the verified caller.

use super::*;

/// Why the caller may ask about the request's principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Standing {
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
pub(crate) enum Asking {
    /// Authorize: a decision that is recorded, spends grants and opens
    /// approval requests.
    ForReal,
    /// DryRun, Explain.
    WhatIf,
}

/// The Steward services that may ask on behalf of their own callers
/// without a policy: they authenticated that caller themselves.
pub(super) const DELEGATING_SERVICES: &[&str] = &["credential-broker", "inventory"];

/// The context of a decision about what `actor` itself is doing now, for
/// `incident_ref` (no task window beyond the moment).
pub(super) fn own_context(actor: &Actor, incident_ref: &str) -> RequestContext {
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
pub(super) fn same_principal(a: &Principal, b: &Principal) -> bool {
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

impl AuthorityServer {
    /// Whether `workload` is one of the services in [`DELEGATING_SERVICES`]
    /// of this trust domain.
    pub(crate) fn is_delegating_service(&self, workload: &str) -> bool {
        SpiffeId::parse(workload).is_ok_and(|id| {
            DELEGATING_SERVICES
                .iter()
                .any(|name| id.is_service(self.own_trust_domain(), name))
        })
    }

    /// The request's principal, as written (not yet bound to the caller).
    pub(super) fn named_principal(
        &self,
        r: &pb::AuthorizeRequest,
        actor: &Actor,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Principal, Status> {
        match r.principal.as_ref().and_then(|p| p.kind.as_ref()) {
            Some(pb::principal::Kind::Caller(true)) => self.principal_of(actor),
            Some(pb::principal::Kind::Caller(false)) => Err(Status::invalid_argument(format!(
                "{}: is false; set it to ask for the caller, or name a principal",
                field("principal.caller")
            ))),
            Some(pb::principal::Kind::Workload(id)) => {
                let id = SpiffeId::parse(id).map_err(|e| {
                    Status::invalid_argument(format!("{}: {e}", field("principal.workload")))
                })?;
                let spiffe_id = id.to_string();
                Ok(Principal::Workload {
                    groups: self.shared.config.groups_of(&spiffe_id),
                    trust_domain: id.trust_domain().name().to_owned(),
                    spiffe_id,
                })
            }
            Some(pb::principal::Kind::Human(h)) => {
                for (name, value) in [("subject", &h.subject), ("issuer", &h.issuer)] {
                    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control)
                    {
                        return Err(Status::invalid_argument(format!(
                            "{}: is required (at most 256 bytes, no control characters)",
                            field(&format!("principal.human.{name}"))
                        )));
                    }
                }
                Ok(Principal::Human {
                    groups: self
                        .shared
                        .config
                        .groups_of(&format!("human:{}", h.subject)),
                    subject: h.subject.clone(),
                    issuer: h.issuer.clone(),
                })
            }
            None => Err(Status::invalid_argument(format!(
                "{}: is required",
                field("principal")
            ))),
        }
    }

    /// Binds `principal` to the verified caller: it is the caller, or the
    /// caller is a delegating Steward service, or a policy permits the
    /// caller to `act_for` it. Anything else is PERMISSION_DENIED.
    pub(super) fn standing(
        &self,
        principal: &Principal,
        actor: &Actor,
        asking: Asking,
        field: &dyn Fn(&str) -> String,
    ) -> Result<Standing, Status> {
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
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (decision, version) = self.decide_now(&DecisionRequest {
            principal: own,
            action: "act_for".to_owned(),
            resource,
            context: own_context(actor, ""),
        })?;
        if decision.effect != Effect::Allow {
            return Err(Status::permission_denied(format!(
                "{}: {} may not act for {}: {}",
                field("principal"),
                steward_errors::shown(actor.name()),
                steward_errors::shown(principal.id()),
                decision.reason
            )));
        }
        Ok(Standing::Delegate {
            policy_ids: decision.policy_ids,
            version,
        })
    }
}
