//! The evidence records inventory writes: one per change, queued in the
//! same transaction as the change (see `steward-outbox`).

use steward_evidence::EvidenceRecord;
use steward_evidence::record::{MAX_ATTRIBUTE_VALUE, MAX_REASON, truncate_utf8};
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
    let mut record = EvidenceRecord::new(&context.actor, action, SERVICE);
    if let Some((id, kind)) = target {
        record.target.nhi_id = id.hyphenated().to_string();
        record.target.nhi_kind = kind.as_str().to_owned();
    }
    record.outcome.reason = truncate_utf8(reason.to_owned(), MAX_REASON);
    record.incident_ref = context.incident_ref.clone();
    record.correlation_id = context.correlation_id.clone();
    record.attributes = attributes
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), truncate_utf8(v, MAX_ATTRIBUTE_VALUE)))
        .collect();
    record
}
