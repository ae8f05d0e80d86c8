//! The gRPC adapter: protobuf in, validated domain types to the log, protobuf
//! out. Every error becomes a precise status here and nowhere else.

use std::pin::Pin;

use steward_errors::wire::page_size;
use steward_evidence::record::FieldError;
use steward_evidence::wire::time_from;
pub use steward_evidence::wire::{record_from_proto, record_to_proto};
use steward_identity::PeerIdentity;
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::audit::v1::audit_service_server::AuditService;
use time::OffsetDateTime;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::convert::entry_to_proto;
use crate::log::{Log, LogError, LoggedEntry, Pending};
use crate::store::QueryFilter;
use crate::subscribe;

/// Largest AppendBatch.
pub const MAX_BATCH: usize = steward_batch::limits::APPEND_BATCH;

#[derive(Debug, Clone)]
pub struct AuditServer {
    log: Log,
}

impl AuditServer {
    pub fn new(log: Log) -> Self {
        Self { log }
    }
}

/// A refused field: named in the message and in a `google.rpc.BadRequest`.
fn invalid(error: FieldError) -> Status {
    steward_errors::invalid(error.field, error.reason).into()
}

/// OUT_OF_RANGE: `field`'s `value` is past the tree's `size`.
fn beyond(field: &'static str, value: u64, size: u64) -> Status {
    status(LogError::Beyond { field, value, size })
}

fn status(error: LogError) -> Status {
    Status::from(error)
}

fn appended_by<T>(request: &Request<T>) -> Result<String, Status> {
    PeerIdentity::caller(request)
}

fn stored_to_proto(stored: &[crate::store::StoredEntry]) -> Result<Vec<pb::LogEntry>, Status> {
    stored
        .iter()
        .map(|s| LoggedEntry::from_stored(s).map(|e| entry_to_proto(&e)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(status)
}

fn appended(a: &crate::log::Appended) -> pb::AppendResponse {
    pb::AppendResponse {
        index: a.index,
        duplicate: a.duplicate,
        leaf_hash: a.leaf_hash.to_vec(),
    }
}

fn page_token(token: &str, floor: u64) -> Result<u64, Status> {
    if token.is_empty() {
        return Ok(floor);
    }
    token
        .parse::<u64>()
        .ok()
        .filter(|t| *t >= floor)
        .ok_or_else(|| {
            steward_errors::invalid(
                "page_token",
                "not a token from a previous response to this request",
            )
            .into()
        })
}

/// The wire filter as the store's filter.
pub fn filter_from_proto(f: Option<pb::EntryFilter>) -> QueryFilter {
    let f = f.unwrap_or_default();
    QueryFilter {
        incident_ref: f.incident_ref,
        nhi_id: f.nhi_id,
        actor: f.actor,
        action: f.action,
        correlation_id: f.correlation_id,
        since_ns: None,
        until_ns: None,
    }
}

#[tonic::async_trait]
impl AuditService for AuditServer {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let by = appended_by(&request)?;
        let record = request
            .into_inner()
            .record
            .ok_or_else(|| steward_errors::invalid("record", "is required"))?;
        let record = record_from_proto(record).map_err(invalid)?;
        let mut results = self
            .log
            .append(vec![Pending::new(record, &by)])
            .await
            .map_err(status)?;
        match results.pop() {
            Some(Ok(a)) => Ok(Response::new(appended(&a))),
            Some(Err(e)) => Err(status(e)),
            // The sequencer answers every record it was given.
            None => Err(status(LogError::Stopped)),
        }
    }

    async fn append_batch(
        &self,
        request: Request<pb::AppendBatchRequest>,
    ) -> Result<Response<pb::AppendBatchResponse>, Status> {
        let by = appended_by(&request)?;
        let records = request.into_inner().records;
        if records.len() > MAX_BATCH {
            return Err(steward_errors::invalid(
                "records",
                format!("at most {MAX_BATCH} per batch"),
            )
            .into());
        }
        // Validate everything first; only valid records reach the sequencer.
        let mut slots: Vec<Result<usize, FieldError>> = Vec::with_capacity(records.len());
        let mut valid = Vec::new();
        for (i, record) in records.into_iter().enumerate() {
            match record_from_proto(record) {
                Ok(r) => {
                    slots.push(Ok(valid.len()));
                    valid.push(Pending::new(r, &by));
                }
                Err(e) => slots.push(Err(FieldError {
                    field: format!("records[{i}].{}", e.field.trim_start_matches("record.")),
                    reason: e.reason,
                })),
            }
        }
        let mut outcomes = if valid.is_empty() {
            Vec::new()
        } else {
            self.log.append(valid).await.map_err(status)?
        };
        // A record audit could not store is not refused: the whole call
        // fails, so the sender retries the batch (records of it already
        // appended are recognised by their ids). Only a real refusal, the
        // same id with other content, is answered record by record.
        if let Some(i) = outcomes
            .iter()
            .position(|o| matches!(o, Err(e) if !matches!(e, LogError::Conflict { .. })))
            && let Err(error) = outcomes.swap_remove(i)
        {
            return Err(status(error));
        }
        let mut outcomes: Vec<Option<Result<crate::log::Appended, LogError>>> =
            outcomes.drain(..).map(Some).collect();
        let results = slots
            .into_iter()
            .map(|slot| {
                let result = match slot {
                    Err(e) => pb::append_batch_result::Result::Error(pb::AppendError {
                        code: tonic::Code::InvalidArgument as i32,
                        message: e.to_string(),
                    }),
                    Ok(i) => match outcomes.get_mut(i).and_then(Option::take) {
                        Some(Ok(a)) => pb::append_batch_result::Result::Appended(appended(&a)),
                        Some(Err(e)) => {
                            let s = status(e);
                            pb::append_batch_result::Result::Error(pb::AppendError {
                                code: s.code() as i32,
                                message: s.message().to_owned(),
                            })
                        }
                        None => pb::append_batch_result::Result::Error(pb::AppendError {
                            code: tonic::Code::Internal as i32,
                            message: "no result".into(),
                        }),
                    },
                };
                pb::AppendBatchResult {
                    result: Some(result),
                }
            })
            .collect();
        Ok(Response::new(pb::AppendBatchResponse { results }))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        let signed = match (request.into_inner().fresh, self.log.latest_checkpoint()) {
            (false, Some(latest)) => latest,
            _ => self.log.publish().await.map_err(status)?,
        };
        Ok(Response::new(pb::GetCheckpointResponse {
            signed_note: signed.note,
            tree_size: signed.checkpoint.tree_size,
            root_hash: signed.checkpoint.root_hash.to_vec(),
            origin: signed.checkpoint.origin,
        }))
    }

    async fn get_verifier_key(
        &self,
        _request: Request<pb::GetVerifierKeyRequest>,
    ) -> Result<Response<pb::GetVerifierKeyResponse>, Status> {
        Ok(Response::new(pb::GetVerifierKeyResponse {
            verifier_key: self.log.verifier_key(),
            origin: self.log.origin().to_owned(),
        }))
    }

    async fn get_inclusion_proof(
        &self,
        request: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::GetInclusionProofResponse>, Status> {
        let request = request.into_inner();
        let tree_size = self.resolve_size(request.tree_size, "tree_size")?;
        let index = match request.leaf {
            Some(pb::get_inclusion_proof_request::Leaf::Index(index)) => index,
            Some(pb::get_inclusion_proof_request::Leaf::LeafHash(hash)) => {
                let Ok(hash) = steward_evidence::Hash::try_from(hash.as_slice()) else {
                    return Err(steward_errors::invalid("leaf_hash", "must be 32 bytes").into());
                };
                self.log
                    .index_of(&hash)
                    .filter(|i| *i < tree_size)
                    .ok_or_else(|| status(LogError::NoSuchLeaf { tree_size }))?
            }
            None => return Err(steward_errors::invalid("leaf", "give index or leaf_hash").into()),
        };
        let hashes = self.log.inclusion_proof(index, tree_size).map_err(status)?;
        let leaf_hash = self.log.leaf(index).map(|h| h.to_vec()).unwrap_or_default();
        Ok(Response::new(pb::GetInclusionProofResponse {
            index,
            tree_size,
            leaf_hash,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let request = request.into_inner();
        let second = self.resolve_size(request.second_size, "second_size")?;
        if request.first_size == 0 {
            return Err(steward_errors::invalid("first_size", "must be at least 1").into());
        }
        if request.first_size > second {
            return Err(steward_errors::invalid(
                "first_size",
                format!("{} is larger than second_size {second}", request.first_size),
            )
            .into());
        }
        let hashes = self
            .log
            .consistency_proof(request.first_size, second)
            .map_err(status)?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            first_size: request.first_size,
            second_size: second,
            hashes: hashes.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn get_entries(
        &self,
        request: Request<pb::GetEntriesRequest>,
    ) -> Result<Response<pb::GetEntriesResponse>, Status> {
        let request = request.into_inner();
        let size = self.log.size();
        let end = if request.end_index == 0 {
            size
        } else {
            request.end_index
        };
        if end > size {
            return Err(beyond("end_index", end, size));
        }
        if request.start_index > end {
            return Err(steward_errors::invalid(
                "start_index",
                format!("{} is after end_index {end}", request.start_index),
            )
            .into());
        }
        let start = page_token(&request.page_token, request.start_index)?;
        // At most MAX_PAGE, which a u32 holds.
        let limit = page_size(request.page_size)? as u32;
        let stored = self
            .log
            .store()
            .entries(start, end, limit)
            .await
            .map_err(|e| status(e.into()))?;
        let entries = stored_to_proto(&stored)?;
        let next = entries.last().map_or(end, |e| e.index + 1);
        let next_page_token = if next < end && !entries.is_empty() {
            next.to_string()
        } else {
            String::new()
        };
        Ok(Response::new(pb::GetEntriesResponse {
            entries,
            next_page_token,
        }))
    }

    async fn query(
        &self,
        request: Request<pb::QueryRequest>,
    ) -> Result<Response<pb::QueryResponse>, Status> {
        let request = request.into_inner();
        let mut filter = filter_from_proto(request.filter);
        let ns = |t: OffsetDateTime| i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX);
        if request.since.is_some() {
            filter.since_ns = Some(ns(time_from(request.since, "since").map_err(invalid)?));
        }
        if request.until.is_some() {
            filter.until_ns = Some(ns(time_from(request.until, "until").map_err(invalid)?));
        }
        if let (Some(since), Some(until)) = (filter.since_ns, filter.until_ns)
            && since > until
        {
            return Err(steward_errors::invalid("since", "is after until").into());
        }
        let after = page_token(&request.page_token, 0)?;
        // At most MAX_PAGE, which a u32 holds.
        let limit = page_size(request.page_size)? as u32;
        let size = self.log.size();
        let stored = self
            .log
            .store()
            .query(&filter, after, size, limit)
            .await
            .map_err(|e| status(e.into()))?;
        let entries = stored_to_proto(&stored)?;
        let next_page_token = match entries.last() {
            Some(last) if entries.len() as u32 == limit => (last.index + 1).to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::QueryResponse {
            entries,
            next_page_token,
        }))
    }

    type SubscribeStream =
        Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let request = request.into_inner();
        let size = self.log.size();
        if request.from_index > size {
            return Err(beyond("from_index", request.from_index, size));
        }
        let stream = subscribe::stream(
            self.log.clone(),
            request.from_index,
            filter_from_proto(request.filter),
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

impl AuditServer {
    fn resolve_size(&self, requested: u64, name: &'static str) -> Result<u64, Status> {
        let size = self.log.size();
        if requested == 0 {
            return Ok(self
                .log
                .latest_checkpoint()
                .map_or(size, |c| c.checkpoint.tree_size));
        }
        if requested > size {
            return Err(beyond(name, requested, size));
        }
        Ok(requested)
    }
}
