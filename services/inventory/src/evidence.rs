//! The evidence records inventory writes: one per change, queued in the
//! same transaction as the change (see `steward-outbox`).

use std::collections::BTreeMap;

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{Actor, Decision, Effect, Outcome, OutcomeStatus, Target};
use uuid::Uuid;

use crate::domain::{ChangeContext, Kind};

/// The emitting service's name in every record.
pub const SERVICE: &str = "inventory";

/// A record of `action` by `context.actor` on the identity `target`.
pub fn record(
    context: &ChangeContext,
    action: &str,
    target: Option<(&Uuid, Kind)>,
    reason: &str,
    attributes: impl IntoIterator<Item = (&'static str, String)>,
) -> EvidenceRecord {
    let attributes: BTreeMap<String, String> = attributes
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            (
                k.to_owned(),
                truncate(v, steward_evidence::record::MAX_ATTRIBUTE_VALUE),
            )
        })
        .collect();
    EvidenceRecord {
        record_id: Uuid::now_v7(),
        time: time::OffsetDateTime::now_utc(),
        actor: Actor {
            workload_spiffe_id: context.actor.clone(),
            human_subject: String::new(),
            human_issuer: String::new(),
        },
        action: action.to_owned(),
        target: Target {
            nhi_id: target
                .map(|(id, _)| id.hyphenated().to_string())
                .unwrap_or_default(),
            nhi_kind: target
                .map(|(_, k)| k.as_str().to_owned())
                .unwrap_or_default(),
            ..Target::default()
        },
        decision: Decision {
            policy_set_version: String::new(),
            effect: Effect::NotEvaluated,
            policy_ids: Vec::new(),
            approval_ids: Vec::new(),
        },
        outcome: Outcome {
            status: OutcomeStatus::Succeeded,
            reason: truncate(reason.to_owned(), steward_evidence::record::MAX_REASON),
        },
        incident_ref: context.incident_ref.clone(),
        correlation_id: context.correlation_id.clone(),
        emitting_service: SERVICE.to_owned(),
        attributes,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}
