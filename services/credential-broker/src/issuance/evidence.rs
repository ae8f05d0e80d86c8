//! The evidence each lease event writes.

use std::sync::Arc;

use steward_errors::ServiceError as _;
use steward_evidence::EvidenceRecord;
use steward_evidence::record::{Effect, MAX_REASON, OutcomeStatus, truncate_utf8};
use uuid::Uuid;

use super::{Allowed, Error, Issuer, Task};
use crate::store::Lease;
use crate::store::writer::{RenewalEvidence, RevocationEvidence};

/// A lease event's evidence, with what every one of them records.
pub fn lease_record(lease: &Lease, actor: &str, action: &str) -> EvidenceRecord {
    let mut record = EvidenceRecord::new(actor, action, crate::SPEC.name);
    record.target.nhi_id.clone_from(&lease.identity_id);
    record.target.lease_id.clone_from(&lease.lease_id);
    record.target.credential_serial = truncate_utf8(lease.credential_ref.clone(), 256);
    record.incident_ref = truncate_utf8(lease.incident_ref.clone(), 256);
    let attributes = &mut record.attributes;
    attributes.insert("kind".into(), lease.kind.as_str().into());
    attributes.insert("holder".into(), truncate_utf8(lease.holder.clone(), 1024));
    if !lease.spiffe_id.is_empty() {
        attributes.insert(
            "spiffe_id".into(),
            truncate_utf8(lease.spiffe_id.clone(), 1024),
        );
    }
    attributes.insert("expires_at_ns".into(), lease.expires_at_ns.to_string());
    attributes.insert("state".into(), lease.state.as_str().into());
    if !lease.decision_id.is_empty() {
        attributes.insert("decision_id".into(), lease.decision_id.clone());
    }
    record
}

impl Allowed {
    /// Puts the decision into the evidence record of its outcome. When
    /// authority left the decision to this record, the record takes the
    /// decision's id and what authority's own record would have said.
    pub(super) fn carry(&self, record: &mut EvidenceRecord, task: &Task) {
        let d = &self.decision;
        record.target.nhi_kind = truncate_utf8(d.facts.kind.clone(), 256);
        record.decision.policy_set_version = d.policy_set_version.to_string();
        record.decision.effect = Effect::Allow;
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
            if !d.duties.is_empty() {
                a.insert("duties".into(), truncate_utf8(d.duties.join(","), 1024));
            }
        }
    }
}

/// The evidence of an issued lease.
pub(super) fn issued(
    lease: &Lease,
    allowed: &Allowed,
    task: &Task,
    fingerprint: String,
) -> EvidenceRecord {
    let mut record = lease_record(lease, &lease.holder, "credential.issue");
    record.target.credential_fingerprint = fingerprint;
    allowed.carry(&mut record, task);
    record
}

/// The evidence of a renewal by `caller` under decision `decision_id`.
pub(super) fn renewal(caller: String, decision_id: String) -> RenewalEvidence {
    Box::new(move |lease: &Lease| {
        let mut record = lease_record(lease, &caller, "credential.renew");
        record.decision.effect = Effect::Allow;
        record
            .attributes
            .insert("renew_decision_id".into(), decision_id.clone());
        record
    })
}

/// The evidence of each lease `caller` revokes.
pub(super) fn revocation(caller: &str, reason: &str, correlation_id: &str) -> RevocationEvidence {
    let caller = caller.to_owned();
    let reason = reason.to_owned();
    let correlation_id = correlation_id.to_owned();
    Arc::new(move |lease: &Lease| {
        let mut record = lease_record(lease, &caller, "credential.revoke");
        record.outcome.reason = truncate_utf8(reason.clone(), MAX_REASON);
        record.correlation_id.clone_from(&correlation_id);
        record
    })
}

impl Issuer {
    /// Records that an issuance authority allowed was not carried out, when
    /// this refusal is the only record its decision will have (ADR 0012).
    pub(super) async fn record_refusal(
        &self,
        allowed: &Allowed,
        principal: &str,
        identity_id: &str,
        task: &Task,
        refused: &Error,
    ) {
        if !allowed.decision.recorded_with_outcome {
            return;
        }
        let mut record = EvidenceRecord::new(principal, "credential.issue", crate::SPEC.name);
        record.target.nhi_id = identity_id.to_owned();
        record.incident_ref = truncate_utf8(task.incident_ref.clone(), 256);
        allowed.carry(&mut record, task);
        record.outcome.status = OutcomeStatus::Failed;
        record.outcome.reason =
            truncate_utf8(format!("{:?}: {refused}", refused.code()), MAX_REASON);
        if let Err(e) = self.writer.record(record).await {
            tracing::error!(error = %e, decision = allowed.decision.decision_id, "a refused issuance could not be recorded");
        }
    }
}
