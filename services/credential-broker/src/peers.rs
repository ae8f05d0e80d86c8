//! The core's ports to the other services: authority decides (through the
//! batching [`Authorizer`]) and inventory hears of failed rotations.

use steward_evidence::record::truncate_utf8;
use steward_proto::steward::authority::v1 as authority_pb;
use steward_proto::steward::inventory::v1 as inventory_pb;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use steward_telemetry::TracedChannel;

use crate::authorizer::Authorizer;
use crate::convert::timestamp;
use crate::issuance::{Ask, Decide, Decision, Effect, Error, Facts, Principal, Resource, Signals};
use crate::store::rotations::Rotation;

/// `ask` as authority's `AuthorizeRequest`.
fn request(ask: &Ask) -> authority_pb::AuthorizeRequest {
    use authority_pb::principal::Kind;
    let principal = Some(authority_pb::Principal {
        kind: Some(match &ask.principal {
            Principal::Workload(id) => Kind::Workload(id.clone()),
            Principal::Bearer(_) => Kind::Caller(true),
        }),
    });
    let task = &ask.task;
    let (resource_id, resource_kind, context) = match &ask.resource {
        Resource::Nhi(id) => (
            id.clone(),
            authority_pb::ResourceKind::Nhi,
            authority_pb::RequestContext {
                incident_ref: task.incident_ref.clone(),
                window_start: timestamp(task.window_start_ns),
                window_end: timestamp(task.window_end_ns),
                requester: match &ask.principal {
                    Principal::Workload(id) => id.clone(),
                    Principal::Bearer(_) => String::new(),
                },
                acting_human: String::new(),
                requested_ttl_seconds: u32::try_from(ask.requested_ttl).unwrap_or(u32::MAX),
                correlation_id: task.correlation_id.clone(),
                reason: task.reason.clone(),
                claim_by: None,
            },
        ),
        Resource::TrustDomain(name) => (
            name.clone(),
            authority_pb::ResourceKind::TrustDomain,
            authority_pb::RequestContext {
                reason: task.reason.clone(),
                ..Default::default()
            },
        ),
    };
    authority_pb::AuthorizeRequest {
        principal,
        action: ask.action.as_str().to_owned(),
        resource_id,
        resource_kind: resource_kind as i32,
        context: Some(context),
        decision_evidence: if ask.with_outcome {
            authority_pb::DecisionEvidence::WithOutcome as i32
        } else {
            authority_pb::DecisionEvidence::Unspecified as i32
        },
    }
}

/// Authority's decision as the core reads it.
fn decision(d: authority_pb::Decision) -> Decision {
    let effect = match authority_pb::Effect::try_from(d.effect) {
        Ok(authority_pb::Effect::Allow) => Effect::Allow,
        Ok(authority_pb::Effect::ApprovalRequired) => Effect::ApprovalRequired,
        _ => Effect::Deny,
    };
    let obligations = d.obligations.unwrap_or_default();
    let facts = d.resource.unwrap_or_default();
    Decision {
        decision_id: d.decision_id,
        effect,
        reason: d.reason,
        policy_set_version: d.policy_set_version,
        policy_ids: d.policy_ids,
        grant_id: d.grant_id,
        approval_request_id: d.approval_request_id,
        recorded_with_outcome: d.recorded_with_outcome,
        max_ttl_seconds: Some(obligations.max_ttl_seconds).filter(|t| *t > 0),
        duties: obligations.duties,
        facts: Facts {
            kind: facts.kind,
            spiffe_id: facts.spiffe_id,
            state: steward_vocab::LifecycleState::parse(&facts.state),
        },
    }
}

#[tonic::async_trait]
impl Decide for Authorizer {
    async fn decide(&self, ask: Ask) -> Result<Decision, Error> {
        let nothing_done = match ask.resource {
            Resource::Nhi(_) => "nothing was issued or changed",
            Resource::TrustDomain(_) => "the CA was not rotated",
        };
        let answer = match &ask.principal {
            // A batch carries no per-request metadata: a forwarded token
            // goes alone.
            Principal::Bearer(token) => {
                let mut alone = tonic::Request::new(request(&ask));
                let value = token.parse().map_err(|_| {
                    steward_errors::invalid("authorization", "is not a valid header value")
                })?;
                alone.metadata_mut().insert("authorization", value);
                self.decide_alone(alone).await
            }
            Principal::Workload(_) => Authorizer::decide(self, request(&ask)).await,
        };
        match answer.map_err(tonic::Status::from) {
            Ok(d) => Ok(decision(d)),
            Err(status) => {
                let passed = steward_errors::from_peer("authority", &status, nothing_done);
                Err(Error::Peer {
                    code: passed.code(),
                    message: passed.message().to_owned(),
                })
            }
        }
    }
}

/// Inventory, as the place risk signals go.
pub struct Inventory(pub InventoryServiceClient<TracedChannel>);

#[tonic::async_trait]
impl Signals for Inventory {
    async fn rotation_failed(&self, rotation: &Rotation, detail: &str) {
        let signal = inventory_pb::AddSignalRequest {
            identity_id: rotation.identity_id.clone(),
            kind: inventory_pb::SignalKind::RotationFailed as i32,
            severity: inventory_pb::Severity::High as i32,
            source: "credential-broker".into(),
            observe_time: None,
            evidence_ref: format!("rotation:{}", rotation.rotation_id),
            summary: truncate_utf8(format!("rotation not confirmed: {detail}"), 512),
            context: None,
        };
        if let Err(status) = self.0.clone().add_signal(signal).await {
            tracing::error!(
                rotation = rotation.rotation_id,
                code = ?status.code(),
                status_message = status.message(),
                "cannot report a failed rotation to inventory"
            );
        }
    }
}
