//! Credential-broker test helpers: clients as each kind of caller, CSRs,
//! tasks, and the policies that let the SOAR bot obtain credentials.

use std::sync::Arc;

use steward_identity::SvidSource;
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::transport::Channel;

use crate::inventory::{create, spec};
use crate::{TestStack, spiffe_id};

pub type Client = CredentialBrokerClient<Channel>;

/// The SOAR bot, which asks for credentials during incidents.
pub const SOAR: &str = "/automation/soar";

/// What these tests' site allows: the SOAR bot issues, renews, revokes and
/// rotates credentials of production identities during an incident (at
/// most 30 minutes); staging identities need their technical owner's
/// approval.
pub const BROKER_POLICIES: &str = r#"
@id("soar-handles-production-credentials")
@reason("SOAR obtains and revokes credentials of production identities during incidents")
@max_ttl("1800")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action in [Steward::Action::"issue", Steward::Action::"renew", Steward::Action::"revoke", Steward::Action::"rotate"], resource)
when { context.has_incident && resource.environment == "production" };

@id("staging-credentials-need-the-owner")
@reason("credentials of staging identities need the technical owner's approval")
@approvals("1")
@approver("technical_owner")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action in [Steward::Action::"issue", Steward::Action::"rotate"], resource)
when { context.has_incident && resource.environment == "staging" };
"#;

/// The approval request a FAILED_PRECONDITION names in its
/// `steward-approval-request-id` header.
pub fn approval_request_of(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("steward-approval-request-id")
        .expect("the approval request's id")
        .to_str()
        .unwrap()
        .to_owned()
}

impl TestStack {
    /// An authority client as `spiffe://steward.test/<path>`.
    pub async fn authority_caller(&self, path: &str) -> AuthorityServiceClient<Channel> {
        let file = path.replace('/', "-");
        let source = self.pki.client(&file, &spiffe_id(path).to_string());
        AuthorityServiceClient::new(self.service("authority").channel(&source).await)
    }

    /// A broker client with `source`'s SVID.
    pub async fn broker_as(&self, source: &Arc<SvidSource>) -> Client {
        CredentialBrokerClient::new(self.service("credential-broker").channel(source).await)
    }

    /// A broker client as `spiffe://steward.test/<path>`.
    pub async fn broker_caller(&self, path: &str) -> Client {
        let file = path.replace('/', "-");
        let source = self.pki.client(&file, &spiffe_id(path).to_string());
        self.broker_as(&source).await
    }

    /// Activates `policies` (with or without Steward's defaults in front).
    pub async fn activate_policies(&self, policies: &str, with_defaults: bool) -> u64 {
        let mut client =
            AuthorityServiceClient::new(self.service("authority").channel(&self.operator).await);
        activate_on(&mut client, policies, with_defaults).await
    }

    /// Registers a production identity acting as
    /// `spiffe://steward.test/workload/<name>`.
    pub async fn workload_identity(&self, name: &str, environment: &str) -> inventory::Identity {
        let mut client = self.inventory().await;
        let mut spec = spec(name);
        spec.spiffe_id = self.pki.spiffe_id(&format!("/workload/{name}")).to_string();
        spec.environment = environment.into();
        create(&mut client, spec).await
    }
}

/// A task for incident `incident`, open now, with no end.
pub fn task(incident: &str) -> Option<pb::Task> {
    Some(pb::Task {
        incident_ref: incident.into(),
        reason: "contain the incident".into(),
        ..Default::default()
    })
}

/// A DER CSR for `key` naming `sans` as URI SANs, asking for a CA if `ca`.
pub fn csr(key: &rcgen::KeyPair, sans: &[&str], ca: bool) -> Vec<u8> {
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| rcgen::SanType::URI(s.to_string().try_into().unwrap()))
        .collect();
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    }
    params.serialize_request(key).unwrap().der().to_vec()
}

/// A timestamp `seconds` from now.
pub fn in_seconds(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + seconds,
        nanos: 0,
    }
}

/// Uploads `policies` (with or without Steward's defaults in front)
/// through `client` and activates them; returns their version.
pub async fn activate_on(
    client: &mut AuthorityServiceClient<Channel>,
    policies: &str,
    with_defaults: bool,
) -> u64 {
    let text = if with_defaults {
        format!(
            "{}\n{policies}",
            steward_authority::engine::DEFAULT_POLICIES
        )
    } else {
        policies.to_owned()
    };
    let version = client
        .upload_policy_set(authority::UploadPolicySetRequest {
            policies: text,
            description: "test policies".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap()
        .version;
    client
        .activate_policy_set(authority::ActivatePolicySetRequest {
            version,
            reason: "test".into(),
        })
        .await
        .unwrap();
    version
}
