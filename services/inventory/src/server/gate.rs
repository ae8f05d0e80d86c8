//! Lifecycle transitions are decided by authority before inventory makes
//! them (ADR 0015): the same answer through this gRPC API as through the
//! CLI. Inventory asks as a delegating Steward service, for its caller:
//! the person of the call's bearer token (forwarded to authority, which
//! verifies it), else the caller's SPIFFE ID. Authority's own transitions
//! (its responder, which its rules decided) are not asked again. An
//! unreachable authority changes nothing (fail closed).

use steward_evidence::record::{Decision as EvidenceDecision, Effect as EvidenceEffect};
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_telemetry::TracedChannel;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::domain::{Allowed, ChangeContext, State};

/// Why a change was not let through; the gate's one error mapping.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("authorization: an attestation is a person's answer; call with their bearer token")]
    AttestationWithoutPerson,
    #[error("inventory has no authority to ask (peers.authority); lifecycle changes fail closed")]
    NoAuthority,
    #[error("authority answered without a decision")]
    NoDecision,
    #[error(
        "approval required: authority opened approval request {request_id} ({reason}); retry once it is approved"
    )]
    ApprovalRequired { request_id: String, reason: String },
    #[error("authority denied {action} on identity {id} (decision {decision_id}): {reason}")]
    Denied {
        action: String,
        id: Uuid,
        decision_id: String,
        reason: String,
    },
}

impl steward_errors::ServiceError for Refused {
    fn code(&self) -> tonic::Code {
        match self {
            Self::AttestationWithoutPerson | Self::Denied { .. } => tonic::Code::PermissionDenied,
            Self::NoAuthority | Self::NoDecision => tonic::Code::Unavailable,
            Self::ApprovalRequired { .. } => tonic::Code::FailedPrecondition,
        }
    }
}

impl From<Refused> for Status {
    /// An approval's id also travels as `steward-approval-request-id`, so
    /// a client can follow it without parsing the message.
    fn from(refused: Refused) -> Self {
        let mut status = steward_errors::to_status(&refused);
        if let Refused::ApprovalRequired { request_id, .. } = &refused
            && let Ok(value) = request_id.parse()
        {
            status
                .metadata_mut()
                .insert("steward-approval-request-id", value);
        }
        status
    }
}

/// Inventory's client of authority's decisions.
#[derive(Debug, Clone)]
pub struct LifecycleGate {
    authority: Option<AuthorityServiceClient<TracedChannel>>,
    /// `spiffe://<td>/service/authority`: its transitions are its own
    /// decisions.
    authority_id: String,
}

impl LifecycleGate {
    pub fn new(authority: Option<TracedChannel>, authority_id: String) -> Self {
        Self {
            authority: authority.map(AuthorityServiceClient::new),
            authority_id,
        }
    }

    /// Asks authority whether the person of `request`'s bearer token may
    /// answer identity `id`'s access review (`attest`), and returns that
    /// person's name as authority verified it: an attestation's reviewer
    /// is never taken from the request.
    pub async fn attester<T>(
        &self,
        request: &Request<T>,
        id: &Uuid,
        reason: &str,
        context: &ChangeContext,
    ) -> Result<(String, Allowed), Status> {
        if request.metadata().get("authorization").is_none() {
            return Err(Refused::AttestationWithoutPerson.into());
        }
        let (allowed, principal) = self.ask(request, id, "attest", reason, context).await?;
        Ok((principal, allowed))
    }

    /// Asks authority whether the caller of `request` may move identity
    /// `id` to `target`. `Ok(None)`: authority itself is the caller.
    pub async fn decide<T>(
        &self,
        request: &Request<T>,
        id: &Uuid,
        target: State,
        reason: &str,
        context: &ChangeContext,
    ) -> Result<Option<Allowed>, Status> {
        if context.actor == self.authority_id {
            return Ok(None);
        }
        let (allowed, _) = self
            .ask(request, id, target.entered_by().as_str(), reason, context)
            .await?;
        Ok(Some(allowed))
    }

    /// Authority's ALLOW of `action` on `id` for the caller of `request`,
    /// with the principal it decided for; anything else is the caller's
    /// error.
    async fn ask<T>(
        &self,
        request: &Request<T>,
        id: &Uuid,
        action: &str,
        reason: &str,
        context: &ChangeContext,
    ) -> Result<(Allowed, String), Status> {
        let Some(client) = &self.authority else {
            return Err(Refused::NoAuthority.into());
        };
        let token = request.metadata().get("authorization").cloned();
        let principal = if token.is_some() {
            authority::principal::Kind::Caller(true)
        } else {
            authority::principal::Kind::Workload(context.actor.clone())
        };
        let mut ask = Request::new(authority::AuthorizeRequest {
            principal: Some(authority::Principal {
                kind: Some(principal),
            }),
            action: action.to_owned(),
            resource_id: id.hyphenated().to_string(),
            context: Some(authority::RequestContext {
                incident_ref: context.incident_ref.clone(),
                correlation_id: context.correlation_id.clone(),
                reason: reason.to_owned(),
                ..Default::default()
            }),
            decision_evidence: authority::DecisionEvidence::Unspecified as i32,
            resource_kind: authority::ResourceKind::Nhi as i32,
        });
        if let Some(token) = token {
            ask.metadata_mut().insert("authorization", token);
        }
        let decision = match client.clone().authorize(ask).await {
            Ok(answer) => answer.into_inner().decision.ok_or(Refused::NoDecision)?,
            Err(status) => {
                return Err(steward_errors::from_peer(
                    "authority",
                    &status,
                    "nothing was changed",
                ));
            }
        };
        match authority::Effect::try_from(decision.effect) {
            Ok(authority::Effect::Allow) => Ok((
                Allowed {
                    decision: EvidenceDecision {
                        policy_set_version: decision.policy_set_version.to_string(),
                        effect: EvidenceEffect::Allow,
                        policy_ids: decision.policy_ids,
                        approval_ids: Vec::new(),
                    },
                    decision_id: decision.decision_id,
                },
                decision.principal,
            )),
            Ok(authority::Effect::ApprovalRequired) => Err(Refused::ApprovalRequired {
                request_id: decision.approval_request_id,
                reason: decision.reason,
            }
            .into()),
            _ => Err(Refused::Denied {
                action: action.to_owned(),
                id: *id,
                decision_id: decision.decision_id,
                reason: decision.reason,
            }
            .into()),
        }
    }
}
