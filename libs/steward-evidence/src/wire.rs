//! Conversions between evidence records and their protobuf form
//! (`steward.audit.v1.EvidenceRecord`), shared by the audit service's gRPC
//! adapter and by clients that recompute leaves (`steward audit verify`).

use std::collections::BTreeMap;

use prost_types::Timestamp;
use steward_proto::steward::audit::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::record::{
    Actor, Decision, Effect, EvidenceRecord, FieldError, Outcome, OutcomeStatus, Target, Trace,
};

/// Converts a wire timestamp; `field` names it in errors.
pub fn time_from(ts: Option<Timestamp>, field: &str) -> Result<OffsetDateTime, FieldError> {
    let ts = ts.ok_or_else(|| FieldError {
        field: field.into(),
        reason: "is required".into(),
    })?;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(FieldError {
            field: field.into(),
            reason: "nanos must be in 0..1e9".into(),
        });
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| FieldError {
        field: field.into(),
        reason: "is out of range".into(),
    })
}

/// A wire timestamp.
pub fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

fn field(field: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Converts and validates a wire record.
pub fn record_from_proto(r: pb::EvidenceRecord) -> Result<EvidenceRecord, FieldError> {
    let record_id =
        Uuid::parse_str(&r.record_id).map_err(|_| field("record.record_id", "is not a UUID"))?;
    let time = time_from(r.time, "record.time")?;
    let actor = r.actor.unwrap_or_default();
    let decision = r.decision.unwrap_or_default();
    let effect = match pb::Effect::try_from(decision.effect) {
        Ok(pb::Effect::NotEvaluated) => Effect::NotEvaluated,
        Ok(pb::Effect::Allow) => Effect::Allow,
        Ok(pb::Effect::Deny) => Effect::Deny,
        Ok(pb::Effect::ApprovalRequired) => Effect::ApprovalRequired,
        Ok(pb::Effect::Unspecified) => return Err(field("record.decision.effect", "must be set")),
        Err(_) => {
            return Err(field(
                "record.decision.effect",
                format!("unknown enum value {}", decision.effect),
            ));
        }
    };
    let outcome = r.outcome.unwrap_or_default();
    let status = match pb::OutcomeStatus::try_from(outcome.status) {
        Ok(pb::OutcomeStatus::Succeeded) => OutcomeStatus::Succeeded,
        Ok(pb::OutcomeStatus::Failed) => OutcomeStatus::Failed,
        Ok(pb::OutcomeStatus::Unspecified) => {
            return Err(field("record.outcome.status", "must be set"));
        }
        Err(_) => {
            return Err(field(
                "record.outcome.status",
                format!("unknown enum value {}", outcome.status),
            ));
        }
    };
    let target = r.target.unwrap_or_default();
    let record = EvidenceRecord {
        record_id,
        time,
        actor: Actor {
            workload_spiffe_id: actor.workload_spiffe_id,
            human_subject: actor.human_subject,
            human_issuer: actor.human_issuer,
        },
        action: r.action,
        target: Target {
            nhi_id: target.nhi_id,
            nhi_kind: target.nhi_kind,
            lease_id: target.lease_id,
            credential_serial: target.credential_serial,
            credential_fingerprint: target.credential_fingerprint,
        },
        decision: Decision {
            policy_set_version: decision.policy_set_version,
            effect,
            policy_ids: decision.policy_ids,
            approval_ids: decision.approval_ids,
        },
        outcome: Outcome {
            status,
            reason: outcome.reason,
        },
        incident_ref: r.incident_ref,
        correlation_id: r.correlation_id,
        emitting_service: r.emitting_service,
        attributes: r.attributes.into_iter().collect::<BTreeMap<_, _>>(),
        trace: r.trace.map(|t| Trace {
            trace_id: t.trace_id,
            span_id: t.span_id,
        }),
    };
    record.validate()?;
    Ok(record)
}

/// The wire form of a domain record.
pub fn record_to_proto(r: &EvidenceRecord) -> pb::EvidenceRecord {
    let effect = match r.decision.effect {
        Effect::NotEvaluated => pb::Effect::NotEvaluated,
        Effect::Allow => pb::Effect::Allow,
        Effect::Deny => pb::Effect::Deny,
        Effect::ApprovalRequired => pb::Effect::ApprovalRequired,
    };
    let status = match r.outcome.status {
        OutcomeStatus::Succeeded => pb::OutcomeStatus::Succeeded,
        OutcomeStatus::Failed => pb::OutcomeStatus::Failed,
    };
    pb::EvidenceRecord {
        record_id: r.record_id.hyphenated().to_string(),
        time: Some(timestamp(r.time)),
        actor: Some(pb::Actor {
            workload_spiffe_id: r.actor.workload_spiffe_id.clone(),
            human_subject: r.actor.human_subject.clone(),
            human_issuer: r.actor.human_issuer.clone(),
        }),
        action: r.action.clone(),
        target: Some(pb::Target {
            nhi_id: r.target.nhi_id.clone(),
            nhi_kind: r.target.nhi_kind.clone(),
            lease_id: r.target.lease_id.clone(),
            credential_serial: r.target.credential_serial.clone(),
            credential_fingerprint: r.target.credential_fingerprint.clone(),
        }),
        decision: Some(pb::Decision {
            policy_set_version: r.decision.policy_set_version.clone(),
            effect: effect as i32,
            policy_ids: r.decision.policy_ids.clone(),
            approval_ids: r.decision.approval_ids.clone(),
        }),
        outcome: Some(pb::Outcome {
            status: status as i32,
            reason: r.outcome.reason.clone(),
        }),
        incident_ref: r.incident_ref.clone(),
        correlation_id: r.correlation_id.clone(),
        emitting_service: r.emitting_service.clone(),
        attributes: r
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        trace: r.trace.as_ref().map(|t| pb::Trace {
            trace_id: t.trace_id.clone(),
            span_id: t.span_id.clone(),
        }),
    }
}
