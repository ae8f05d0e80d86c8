//! An `AuthorizeRequest` checked on the wire into the core's [`Ask`]:
//! each value parsed and bounded, each refusal naming its field.

use steward_errors::{Invalid, invalid, shown};

use super::*;
use steward_vocab::{Action, IdentityId};

use crate::decide::{Ask, AskContext, AskedResource, Named};

impl AuthorityServer {
    /// `r` checked; fields are named under `prefix` (`request.` when the
    /// request is nested).
    pub(super) fn ask(&self, r: &pb::AuthorizeRequest, prefix: &str) -> Result<Ask, Status> {
        self.checked(r)
            .map_err(|e| Status::from(invalid(format!("{prefix}{}", e.field), e.reason)))
    }

    fn checked(&self, r: &pb::AuthorizeRequest) -> Result<Ask, Invalid> {
        let principal = named_principal(r)?;
        let (action, resource) = self.asked_resource(r)?;
        let c = r.context.clone().unwrap_or_default();
        context_text(&c)?;
        Ok(Ask {
            principal,
            action,
            resource,
            context: AskContext {
                window_start: seconds("context.window_start", c.window_start.as_ref())?,
                window_end: seconds("context.window_end", c.window_end.as_ref())?,
                claim_by: seconds("context.claim_by", c.claim_by.as_ref())?,
                requested_ttl: i64::from(c.requested_ttl_seconds),
                incident_ref: c.incident_ref,
                requester: c.requester,
                acting_human: c.acting_human,
                correlation_id: c.correlation_id,
                reason: c.reason,
            },
            with_outcome: r.decision_evidence == pb::DecisionEvidence::WithOutcome as i32,
        })
    }

    /// What an `Authorize` is about: an identity for its actions, or this
    /// trust domain for `rotate_ca`.
    fn asked_resource(&self, r: &pb::AuthorizeRequest) -> Result<(Action, AskedResource), Invalid> {
        match pb::ResourceKind::try_from(r.resource_kind) {
            Ok(pb::ResourceKind::Unspecified | pb::ResourceKind::Nhi) => {
                let Some(action) = Action::on_identity(&r.action) else {
                    let known: Vec<&str> = NHI_ACTIONS.iter().map(|a| a.as_str()).collect();
                    return Err(invalid(
                        "action",
                        format!("{} is not one of {}", shown(&r.action), known.join(", ")),
                    ));
                };
                let id = IdentityId::parse("resource_id", &r.resource_id)?;
                Ok((action, AskedResource::Nhi(id)))
            }
            Ok(pb::ResourceKind::TrustDomain) => {
                if r.action != "rotate_ca" {
                    return Err(invalid(
                        "action",
                        format!(
                            "{} is not an action on a trust domain (rotate_ca)",
                            shown(&r.action)
                        ),
                    ));
                }
                if r.resource_id != self.own_trust_domain().name() {
                    return Err(invalid(
                        "resource_id",
                        format!("{} is not this trust domain", shown(&r.resource_id)),
                    ));
                }
                Ok((
                    Action::RotateCa,
                    AskedResource::TrustDomain(r.resource_id.clone()),
                ))
            }
            Err(_) => Err(invalid(
                "resource_kind",
                format!("{} is not a resource kind", r.resource_kind),
            )),
        }
    }
}

/// The request's principal, as written (not yet bound to the caller).
fn named_principal(r: &pb::AuthorizeRequest) -> Result<Named, Invalid> {
    match r.principal.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(pb::principal::Kind::Caller(true)) => Ok(Named::Caller),
        Some(pb::principal::Kind::Caller(false)) => Err(invalid(
            "principal.caller",
            "is false; set it to ask for the caller, or name a principal",
        )),
        Some(pb::principal::Kind::Workload(id)) => SpiffeId::parse(id)
            .map(Named::Workload)
            .map_err(|e| invalid("principal.workload", e.to_string())),
        Some(pb::principal::Kind::Human(h)) => {
            for (name, value) in [("subject", &h.subject), ("issuer", &h.issuer)] {
                if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
                    return Err(invalid(
                        format!("principal.human.{name}"),
                        "is required (at most 256 bytes, no control characters)",
                    ));
                }
            }
            Ok(Named::Human {
                subject: h.subject.clone(),
                issuer: h.issuer.clone(),
            })
        }
        None => Err(invalid("principal", "is required")),
    }
}

/// The context's free text: bounded, no control characters.
fn context_text(c: &pb::RequestContext) -> Result<(), Invalid> {
    for (name, value) in [
        ("incident_ref", &c.incident_ref),
        ("requester", &c.requester),
        ("acting_human", &c.acting_human),
        ("correlation_id", &c.correlation_id),
    ] {
        if value.len() > 256 || value.chars().any(char::is_control) {
            return Err(invalid(
                format!("context.{name}"),
                "at most 256 bytes, no control characters",
            ));
        }
    }
    if c.reason.len() > 1024 || c.reason.chars().any(|ch| ch.is_control() && ch != '\n') {
        return Err(invalid(
            "context.reason",
            "at most 1024 bytes, no control characters",
        ));
    }
    Ok(())
}

/// A time given as a protobuf timestamp, in Unix seconds.
fn seconds(field: &str, ts: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Invalid> {
    match ts {
        None => Ok(None),
        Some(t) if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 => {
            Err(invalid(field, "is not a valid time"))
        }
        Some(t) => Ok(Some(t.seconds)),
    }
}
