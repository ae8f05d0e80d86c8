//! Log entries as `steward.audit.v1` messages, for every RPC that serves
//! them (queries, entries, subscriptions).

use steward_evidence::wire::record_to_proto;
use steward_proto::steward::audit::v1 as pb;

use crate::log::LoggedEntry;

pub fn entry_to_proto(e: &LoggedEntry) -> pb::LogEntry {
    pb::LogEntry {
        index: e.index,
        record: Some(record_to_proto(&e.record)),
        appended_by: e.appended_by.clone(),
        leaf_hash: e.leaf_hash.to_vec(),
    }
}
