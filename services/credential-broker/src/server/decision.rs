//! Authority's decisions for the broker: what an ALLOW lets it do, and
//! the calls that ask (fail closed).

use super::*;

/// What authority allowed.
#[derive(Debug)]
pub(crate) struct Allowed {
    pub(crate) decision: authority_pb::Decision,
    pub(crate) facts: authority_pb::ResourceFacts,
}

impl Allowed {
    /// Puts the decision into the evidence record of its outcome. When
    /// authority left the decision to this record, the record takes the
    /// decision's id and what authority's own record would have said.
    pub(super) fn carry(&self, record: &mut EvidenceRecord, task: &Task) {
        let d = &self.decision;
        record.target.nhi_kind = truncate_utf8(self.facts.kind.clone(), 256);
        record.decision.policy_set_version = d.policy_set_version.to_string();
        record.decision.effect = EvidenceEffect::Allow;
        record.decision.policy_ids = d.policy_ids.iter().take(64).cloned().collect();
        if !d.grant_id.is_empty() {
            record.decision.approval_ids = vec![d.grant_id.clone()];
        }
        record.correlation_id = truncate_utf8(task.correlation_id.clone(), 256);
        record.outcome.reason = truncate_utf8(task.reason.clone(), MAX_REASON);
        if d.recorded_with_outcome
            && let Ok(id) = Uuid::parse_str(&d.decision_id)
        {
            record.record_id = id;
            let a = &mut record.attributes;
            a.insert("decision_id".into(), d.decision_id.clone());
            a.insert(
                "decision_reason".into(),
                truncate_utf8(d.reason.clone(), 1024),
            );
            if let Some(ttl) = self.max_ttl() {
                a.insert("max_ttl_seconds".into(), ttl.to_string());
            }
            if let Some(o) = d.obligations.as_ref().filter(|o| !o.duties.is_empty()) {
                a.insert("duties".into(), truncate_utf8(o.duties.join(","), 1024));
            }
        }
    }

    pub(super) fn max_ttl(&self) -> Option<u64> {
        self.decision
            .obligations
            .as_ref()
            .map(|o| o.max_ttl_seconds)
            .filter(|t| *t > 0)
    }
}

/// Lifecycle states in which an identity gets no credentials.
pub(super) const DEAD_STATES: &[&str] = &["suspended", "revoked", "decommissioned"];

impl BrokerServer {
    /// Asks authority `rotate_ca` on this trust domain for the caller of
    /// `request`: the person of its bearer token (forwarded), else its
    /// SPIFFE ID. Anything but ALLOW refuses the rotation; an unreachable
    /// authority rotates nothing (fail closed).
    pub(super) async fn authorize_ca_rotation<T>(
        &self,
        request: &Request<T>,
        caller: &str,
        reason: &str,
    ) -> Result<steward_evidence::record::Decision, Status> {
        let token = request.metadata().get("authorization").cloned();
        let mut ask = Request::new(authority_pb::AuthorizeRequest {
            principal: Some(authority_pb::Principal {
                kind: Some(if token.is_some() {
                    authority_pb::principal::Kind::Caller(true)
                } else {
                    authority_pb::principal::Kind::Workload(caller.to_owned())
                }),
            }),
            action: "rotate_ca".to_owned(),
            resource_id: self.shared.own.trust_domain().name().to_owned(),
            resource_kind: authority_pb::ResourceKind::TrustDomain as i32,
            context: Some(authority_pb::RequestContext {
                reason: reason.to_owned(),
                ..Default::default()
            }),
            decision_evidence: authority_pb::DecisionEvidence::Unspecified as i32,
        });
        if let Some(token) = token {
            ask.metadata_mut().insert("authorization", token);
        }
        let decision = match self.shared.authority.decide_alone(ask).await {
            Ok(decision) => decision,
            Err(status) => {
                return Err(steward_errors::from_peer(
                    "authority",
                    &status,
                    "the CA was not rotated",
                ));
            }
        };
        if authority_pb::Effect::try_from(decision.effect) != Ok(authority_pb::Effect::Allow) {
            return Err(Status::permission_denied(format!(
                "authority denied rotate_ca (decision {}): {}",
                decision.decision_id, decision.reason
            )));
        }
        Ok(steward_evidence::record::Decision {
            policy_set_version: decision.policy_set_version.to_string(),
            effect: steward_evidence::record::Effect::Allow,
            policy_ids: decision.policy_ids,
            approval_ids: Vec::new(),
        })
    }

    /// Asks authority whether `principal` may `action` on `identity_id`
    /// for `task`; anything but ALLOW is the caller's error.
    pub(crate) async fn authorize(
        &self,
        principal: &str,
        action: &str,
        identity_id: &str,
        task: &Task,
        requested_ttl: u64,
    ) -> Result<Allowed, Status> {
        let request = authority_pb::AuthorizeRequest {
            principal: Some(authority_pb::Principal {
                kind: Some(authority_pb::principal::Kind::Workload(
                    principal.to_owned(),
                )),
            }),
            action: action.to_owned(),
            resource_id: identity_id.to_owned(),
            // An issuance's outcome is always recorded here (the credential
            // with its lease, or the refusal), so its decision goes into
            // that record rather than a record of its own (ADR 0012).
            decision_evidence: if action == "issue" {
                authority_pb::DecisionEvidence::WithOutcome as i32
            } else {
                authority_pb::DecisionEvidence::Unspecified as i32
            },
            context: Some(authority_pb::RequestContext {
                incident_ref: task.incident_ref.clone(),
                window_start: timestamp(task.window_start_ns),
                window_end: timestamp(task.window_end_ns),
                requester: principal.to_owned(),
                acting_human: String::new(),
                requested_ttl_seconds: u32::try_from(requested_ttl).unwrap_or(u32::MAX),
                correlation_id: task.correlation_id.clone(),
                reason: task.reason.clone(),
                claim_by: None,
            }),
            resource_kind: authority_pb::ResourceKind::Nhi as i32,
        };
        let decision = match self.shared.authority.decide(request).await {
            Ok(decision) => decision,
            Err(status) => {
                return Err(steward_errors::from_peer(
                    "authority",
                    &status,
                    "nothing was issued or changed",
                ));
            }
        };
        match authority_pb::Effect::try_from(decision.effect) {
            Ok(authority_pb::Effect::Allow) => {}
            Ok(authority_pb::Effect::ApprovalRequired) => {
                let mut status = Status::failed_precondition(format!(
                    "approval required: authority opened approval request {} ({}); retry once it is approved",
                    decision.approval_request_id, decision.reason
                ));
                if let Ok(value) = decision.approval_request_id.parse() {
                    status
                        .metadata_mut()
                        .insert("steward-approval-request-id", value);
                }
                return Err(status);
            }
            _ => {
                return Err(Status::permission_denied(format!(
                    "authority denied {action} on identity {identity_id} (decision {}): {}",
                    decision.decision_id, decision.reason
                )));
            }
        }
        let facts = decision.resource.clone().unwrap_or_default();
        let allowed = Allowed { decision, facts };
        if DEAD_STATES.contains(&allowed.facts.state.as_str()) && action != "revoke" {
            let refused = Status::failed_precondition(format!(
                "identity_id: identity {identity_id} is {} in inventory; it gets no credentials",
                allowed.facts.state
            ));
            self.record_refusal(&allowed, principal, identity_id, task, &refused)
                .await;
            return Err(refused);
        }
        Ok(allowed)
    }
}
