//! Inventory test helpers: clients as each kind of caller, a valid identity
//! spec, and waiting for evidence to reach audit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use steward_identity::SvidSource;
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::inventory::v1 as pb;
use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;
use tonic::transport::Channel;

use crate::{TestStack, spiffe_id};

pub type Client = InventoryServiceClient<Channel>;

/// An identity's lifecycle state, as inventory has it now.
pub async fn state_of(client: &mut Client, id: &str) -> i32 {
    client
        .get_identity(pb::GetIdentityRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap()
        .state
}

impl TestStack {
    /// An inventory client with `source`'s SVID.
    pub async fn inventory_as(&self, source: &Arc<SvidSource>) -> Client {
        InventoryServiceClient::new(self.service("inventory").channel(source).await)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// An inventory client as the operator.
    pub async fn inventory(&self) -> Client {
        self.inventory_as(&self.operator.clone()).await
    }

    /// An inventory client as `spiffe://steward.test/<path>`.
    pub async fn inventory_caller(&self, path: &str) -> Client {
        let file = path.replace('/', "-");
        let source = self.pki.client(&file, &spiffe_id(path).to_string());
        self.inventory_as(&source).await
    }

    /// Waits (up to 20 s) until audit holds at least `count` entries for
    /// `nhi_id`, and returns them.
    pub async fn evidence_for(&self, nhi_id: &str, count: usize) -> Vec<audit::LogEntry> {
        let mut client = self.audit_reader().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let entries = client
                .query(audit::QueryRequest {
                    filter: Some(audit::EntryFilter {
                        nhi_id: nhi_id.to_owned(),
                        ..Default::default()
                    }),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .entries;
            if entries.len() >= count || Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestStack {
    /// Waits (up to 20 s) until audit holds at least `count` records of
    /// `action` for `nhi_id`, and returns every entry for it.
    pub async fn evidence_of(
        &self,
        nhi_id: &str,
        action: &str,
        count: usize,
    ) -> Vec<audit::LogEntry> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let entries = self.evidence_for(nhi_id, 1).await;
            let seen = entries
                .iter()
                .filter(|e| e.record.as_ref().is_some_and(|r| r.action == action))
                .count();
            if seen >= count || Instant::now() > deadline {
                return entries;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A complete, valid identity spec; `external_id` makes it unique.
pub fn spec(external_id: &str) -> pb::IdentitySpec {
    pb::IdentitySpec {
        kind: pb::IdentityKind::Connector as i32,
        display_name: format!("{external_id} connector"),
        source_system: "github".into(),
        external_id: external_id.into(),
        environment: "production".into(),
        business_service: "billing".into(),
        workload: "billing-sync".into(),
        classification: pb::Classification::MachineToMachine as i32,
        purpose: "pushes invoices to the ledger".into(),
        business_owner: Some(pb::Owner {
            kind: pb::OwnerKind::Team as i32,
            name: "team-billing".into(),
            contact: "#billing".into(),
        }),
        technical_owner: Some(pb::Owner {
            kind: pb::OwnerKind::Person as i32,
            name: "alice".into(),
            contact: "alice@example.test".into(),
        }),
        ..Default::default()
    }
}

/// Creates an identity from `spec` and returns it.
pub async fn create(client: &mut Client, spec: pb::IdentitySpec) -> pb::Identity {
    client
        .create_identity(pb::CreateIdentityRequest {
            identity: Some(spec),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap()
}

/// A timestamp `days` from now (negative: in the past).
pub fn days_from_now(days: i64) -> prost_types::Timestamp {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    prost_types::Timestamp {
        seconds: now + days * 86_400,
        nanos: 0,
    }
}
