//! Helpers for tests of the evidence log.

use std::sync::Arc;

use steward_identity::SvidSource;
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

use crate::{TestStack, spiffe_id};

/// A valid record, distinguishable by `n`, for incident `incident`.
pub fn record(n: u64, incident: &str) -> pb::EvidenceRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    pb::EvidenceRecord {
        record_id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
        }),
        actor: Some(pb::Actor {
            workload_spiffe_id: spiffe_id("/service/soar").to_string(),
            human_subject: if n.is_multiple_of(2) {
                "alice".into()
            } else {
                String::new()
            },
            human_issuer: if n.is_multiple_of(2) {
                "https://idp.test".into()
            } else {
                String::new()
            },
        }),
        action: if n.is_multiple_of(3) {
            "credential.rotate".into()
        } else {
            "identity.watchlist".into()
        },
        target: Some(pb::Target {
            nhi_id: format!("nhi-{}", n % 5),
            nhi_kind: "API_KEY".into(),
            ..Default::default()
        }),
        decision: Some(pb::Decision {
            policy_set_version: "v1".into(),
            effect: pb::Effect::Allow as i32,
            policy_ids: vec!["allow-rotation".into()],
            approval_ids: vec![],
        }),
        outcome: Some(pb::Outcome {
            status: pb::OutcomeStatus::Succeeded as i32,
            reason: String::new(),
        }),
        incident_ref: incident.to_owned(),
        correlation_id: format!("corr-{incident}"),
        emitting_service: "inventory".into(),
        attributes: [("n".to_owned(), n.to_string())].into_iter().collect(),
        trace: None,
    }
}

impl TestStack {
    /// An audit client with the SVID of service `writer` (e.g. `inventory`).
    pub async fn audit_as_service(&self, writer: &str) -> AuditServiceClient<Channel> {
        let source = self.pki.client(
            &format!("{writer}-client"),
            &spiffe_id(&format!("/service/{writer}")).to_string(),
        );
        self.audit_as(&source).await
    }

    /// An audit client with `source`'s SVID.
    pub async fn audit_as(&self, source: &Arc<SvidSource>) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.service("audit").channel(source).await)
    }

    /// An audit client as the operator (a reader).
    pub async fn audit_reader(&self) -> AuditServiceClient<Channel> {
        self.audit_as(&self.operator.clone()).await
    }
}

/// Appends `count` records for `incident` one RPC each; returns their indices.
pub async fn append_many(
    client: &mut AuditServiceClient<Channel>,
    count: u64,
    incident: &str,
) -> Vec<u64> {
    let mut indices = Vec::new();
    for n in 0..count {
        let reply = client
            .append(pb::AppendRequest {
                record: Some(record(n, incident)),
            })
            .await
            .unwrap()
            .into_inner();
        indices.push(reply.index);
    }
    indices
}

/// Every entry of the log `reader` serves, from index 0 to its fresh
/// checkpoint's size, read through Subscribe.
pub async fn whole_log(reader: &mut AuditServiceClient<Channel>) -> Vec<pb::LogEntry> {
    let size = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner()
        .tree_size;
    let mut stream = reader
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut entries = Vec::new();
    while (entries.len() as u64) < size {
        entries.extend(stream.message().await.unwrap().unwrap().entries);
    }
    entries
}
