//! The callers table's admitted half: every RPC of the four APIs that
//! changes state is called once, with a valid request, by a caller its
//! `Callers:` line names, and succeeds through the real services. Beside
//! `callers.rs` (every caller off a list is refused and nothing changes),
//! this keeps "everything refused" from passing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use steward_identity::SvidSource;
use steward_integration_tests::broker::{BROKER_POLICIES, csr, task};
use steward_integration_tests::inventory::{days_from_now, spec};
use steward_integration_tests::protos::{APIS, admits, documented};
use steward_integration_tests::{TestStack, bearer, spiffe_id, workspace_root};
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::common::v1 as common;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::Code;
use tonic::transport::Channel;

use audit::audit_service_client::AuditServiceClient;
use authority::authority_service_client::AuthorityServiceClient;
use broker::credential_broker_client::CredentialBrokerClient;
use common::evidence_outbox_client::EvidenceOutboxClient;
use inventory::inventory_service_client::InventoryServiceClient;

/// Methods that only read, by the verb their name starts with.
const READS: &[&str] = &[
    "Get",
    "List",
    "Watch",
    "Validate",
    "DryRun",
    "Explain",
    "Introspect",
    "MatchSelectors",
    "Query",
    "Subscribe",
];

/// What the site allows on top of Steward's defaults: the broker tests'
/// SOAR rules (production outright, staging with the technical owner's
/// approval) and on-call's break-glass.
fn site() -> String {
    format!(
        "{}\n{BROKER_POLICIES}\n{}",
        steward_authority::engine::DEFAULT_POLICIES,
        r#"@id("oncall-may-break-glass")
permit (principal == Steward::Human::"oncall", action == Steward::Action::"break_glass", resource);"#
    )
}

/// The table, and which of its changing RPCs have been called.
struct Admitted<'a> {
    stack: &'a TestStack,
    callers: BTreeMap<(String, String), BTreeSet<String>>,
    sources: BTreeMap<String, Arc<SvidSource>>,
    called: BTreeSet<(String, String)>,
}

impl<'a> Admitted<'a> {
    fn new(stack: &'a TestStack) -> Self {
        let callers = APIS
            .iter()
            .flat_map(|(proto, service)| {
                documented(proto)
                    .into_iter()
                    .map(move |(rpc, callers)| ((service.to_string(), rpc), callers))
            })
            .collect();
        Self {
            stack,
            callers,
            sources: BTreeMap::new(),
            called: BTreeSet::new(),
        }
    }

    /// A channel to `service` as `spiffe://steward.test/<caller>` for
    /// `rpc` (`Service/Method`), once the table is seen to admit that
    /// caller; the RPC counts as called.
    async fn channel(&mut self, service: &str, rpc: &str, caller: &str) -> Channel {
        let key = self
            .callers
            .keys()
            .find(|(s, path)| s == service && path.ends_with(&format!(".{rpc}")))
            .unwrap_or_else(|| panic!("{service} serves no {rpc}"))
            .clone();
        let listed = &self.callers[&key];
        assert!(
            listed.iter().any(|p| admits(p, caller)),
            "{rpc}: {caller} is not on its list {listed:?}"
        );
        self.called.insert(key);
        let stack = self.stack;
        let source = self.sources.entry(caller.to_owned()).or_insert_with(|| {
            let file = format!("admitted-{}", caller.replace('/', "-"));
            stack
                .pki
                .client(&file, &spiffe_id(&format!("/{caller}")).to_string())
        });
        let source = source.clone();
        stack.service(service).channel(&source).await
    }

    async fn inventory(&mut self, rpc: &str, caller: &str) -> InventoryServiceClient<Channel> {
        let rpc = format!("InventoryService/{rpc}");
        InventoryServiceClient::new(self.channel("inventory", &rpc, caller).await)
    }

    async fn authority(&mut self, rpc: &str, caller: &str) -> AuthorityServiceClient<Channel> {
        let rpc = format!("AuthorityService/{rpc}");
        AuthorityServiceClient::new(self.channel("authority", &rpc, caller).await)
    }

    async fn broker(&mut self, rpc: &str, caller: &str) -> CredentialBrokerClient<Channel> {
        let rpc = format!("CredentialBroker/{rpc}");
        CredentialBrokerClient::new(self.channel("credential-broker", &rpc, caller).await)
    }

    async fn audit(&mut self, rpc: &str, caller: &str) -> AuditServiceClient<Channel> {
        let rpc = format!("AuditService/{rpc}");
        AuditServiceClient::new(self.channel("audit", &rpc, caller).await)
    }

    /// Every RPC of the table whose name does not say it only reads.
    fn changing(&self) -> BTreeSet<(String, String)> {
        self.callers
            .keys()
            .filter(|(_, path)| {
                let method = path.rsplit('/').next().unwrap();
                !READS.iter().any(|verb| method.starts_with(verb))
            })
            .cloned()
            .collect()
    }
}

const OPERATOR: &str = "operator/admin";
const SOAR: &str = "automation/soar";
const SCANNER: &str = "automation/scanner";

/// The PostgreSQL credential backend, when the suite has a server for it.
const BACKEND_ENV: &str = "STEWARD_TEST_POSTGRES_BACKEND_URL";

fn identity(spec: inventory::IdentitySpec) -> inventory::CreateIdentityRequest {
    inventory::CreateIdentityRequest {
        identity: Some(spec),
        context: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_changing_rpc_succeeds_for_a_caller_on_its_list() {
    let mut stack = TestStack::start().await;
    let backend = std::env::var(BACKEND_ENV).ok();
    if let Some(url) = backend.clone() {
        let database = url.rsplit('/').next().unwrap().to_owned();
        stack
            .restart_broker_with(move |config| {
                config.postgres_backend =
                    Some(steward_credential_broker::backends::PostgresBackendConfig {
                        url,
                        role_prefix: "steward_admitted_".into(),
                        templates: BTreeMap::from([(
                            "connect".to_owned(),
                            vec![format!("GRANT CONNECT ON DATABASE {database} TO {{role}}")],
                        )]),
                    });
            })
            .await;
    }
    let mut t = Admitted::new(&stack);
    let alice = stack.token("alice");

    // Inventory.
    let mut c = t.inventory("CreateIdentity", OPERATOR).await;
    let nhi = c
        .create_identity(identity(spec("admitted-a")))
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    let mut departing = spec("admitted-b");
    departing.technical_owner.as_mut().unwrap().name = "dave".into();
    let watched = c
        .create_identity(identity(departing))
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    let mut staging = spec("admitted-c");
    staging.environment = "staging".into();
    let staged = c.create_identity(identity(staging)).await.unwrap();
    let staged = staged.into_inner().identity.unwrap();
    let mut workload = spec("admitted-w");
    workload.kind = inventory::IdentityKind::WorkloadIdentity as i32;
    workload.spiffe_id = spiffe_id("/workload/ledger").to_string();
    let workload = c.create_identity(identity(workload)).await.unwrap();
    let workload = workload.into_inner().identity.unwrap();

    let mut change = spec("admitted-a");
    change.purpose = "reconciles invoices nightly".into();
    let updated = t
        .inventory("UpdateIdentity", OPERATOR)
        .await
        .update_identity(inventory::UpdateIdentityRequest {
            id: nhi.id.clone(),
            identity: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["purpose".into()],
            }),
            expected_version: nhi.version,
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(updated.purpose, "reconciles invoices nightly");

    let grant = inventory::GrantEntitlementRequest {
        identity_id: nhi.id.clone(),
        system: "github".into(),
        permission: "repo:write".into(),
        resource: "billing".into(),
        context: None,
    };
    t.inventory("GrantEntitlement", OPERATOR)
        .await
        .grant_entitlement(grant.clone())
        .await
        .unwrap();
    t.inventory("RecordUsage", SCANNER)
        .await
        .record_usage(inventory::RecordUsageRequest {
            identity_id: nhi.id.clone(),
            system: grant.system.clone(),
            permission: grant.permission.clone(),
            resource: grant.resource.clone(),
            consumer: "billing-sync".into(),
            use_time: Some(days_from_now(0)),
        })
        .await
        .unwrap();
    t.inventory("RemoveEntitlement", OPERATOR)
        .await
        .remove_entitlement(inventory::RemoveEntitlementRequest {
            identity_id: nhi.id.clone(),
            system: grant.system,
            permission: grant.permission,
            resource: grant.resource,
            reason: "no longer pushes to the repository".into(),
            context: None,
        })
        .await
        .unwrap();

    let signal = t
        .inventory("AddSignal", SCANNER)
        .await
        .add_signal(inventory::AddSignalRequest {
            identity_id: nhi.id.clone(),
            kind: inventory::SignalKind::Dormant as i32,
            severity: inventory::Severity::Low as i32,
            source: "scanner".into(),
            summary: "unused for 90 days".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signal
        .unwrap();
    t.inventory("ResolveSignal", OPERATOR)
        .await
        .resolve_signal(inventory::ResolveSignalRequest {
            signal_id: signal.id,
            resolution: "used monthly, on purpose".into(),
            context: None,
        })
        .await
        .unwrap();
    t.inventory("SetOwnerStatus", OPERATOR)
        .await
        .set_owner_status(inventory::SetOwnerStatusRequest {
            owner: "dave".into(),
            departed: true,
            reason: "left the company".into(),
            context: None,
        })
        .await
        .unwrap();
    let moved = t
        .inventory("TransitionState", OPERATOR)
        .await
        .transition_state(inventory::TransitionStateRequest {
            id: watched.id.clone(),
            target_state: inventory::LifecycleState::Watchlisted as i32,
            reason: "its owner left".into(),
            expected_version: 0,
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(moved.state, inventory::LifecycleState::Watchlisted as i32);

    let entry = t
        .inventory("CreateRegistrationEntry", OPERATOR)
        .await
        .create_registration_entry(inventory::CreateRegistrationEntryRequest {
            entry: Some(inventory::RegistrationEntry {
                spiffe_id: workload.spiffe_id.clone(),
                parent_id: spiffe_id("/service/credential-broker").to_string(),
                selectors: vec![inventory::Selector {
                    r#type: "unix".into(),
                    value: "uid:1000".into(),
                }],
                x509_svid_ttl: 3600,
                jwt_svid_ttl: 300,
                identity_id: workload.id.clone(),
                ..Default::default()
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    let updated = t
        .inventory("UpdateRegistrationEntry", OPERATOR)
        .await
        .update_registration_entry(inventory::UpdateRegistrationEntryRequest {
            entry: Some(inventory::RegistrationEntry {
                id: entry.id.clone(),
                x509_svid_ttl: 900,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["x509_svid_ttl".into()],
            }),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(updated.x509_svid_ttl, 900);
    t.inventory("DeleteRegistrationEntry", OPERATOR)
        .await
        .delete_registration_entry(inventory::DeleteRegistrationEntryRequest {
            id: entry.id,
            context: None,
        })
        .await
        .unwrap();

    let campaign = t
        .inventory("StartReviewCampaign", OPERATOR)
        .await
        .start_review_campaign(inventory::StartReviewCampaignRequest {
            name: "admitted".into(),
            filter: Some(inventory::IdentityFilter {
                text: "admitted-a".into(),
                ..Default::default()
            }),
            deadline: Some(days_from_now(7)),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    t.inventory("AttestReview", OPERATOR)
        .await
        .attest_review(bearer(
            inventory::AttestReviewRequest {
                campaign_id: campaign.id,
                identity_id: nhi.id.clone(),
                decision: inventory::ReviewDecision::StillNeeded as i32,
                reason: "still pushes invoices".into(),
                new_expire_time: Some(days_from_now(90)),
                ..Default::default()
            },
            &alice,
        ))
        .await
        .unwrap();
    let content = std::fs::read(workspace_root().join("deploy/samples/identities.csv")).unwrap();
    let imported = t
        .inventory("ImportIdentities", OPERATOR)
        .await
        .import_identities(inventory::ImportIdentitiesRequest {
            format: inventory::ImportFormat::Csv as i32,
            content,
            environment: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(imported.created > 0, "{imported:?}");

    authority_calls(&mut t, &stack, &nhi, &staged).await;
    broker_calls(&mut t, &workload, backend.is_some()).await;

    // Audit: the three writers append.
    let record = steward_integration_tests::evidence::record(1, "INC-ADM");
    t.audit("Append", "service/inventory")
        .await
        .append(audit::AppendRequest {
            record: Some(record),
        })
        .await
        .unwrap();
    let records = (2..5)
        .map(|n| steward_integration_tests::evidence::record(n, "INC-ADM"))
        .collect();
    let appended = t
        .audit("AppendBatch", "service/authority")
        .await
        .append_batch(audit::AppendBatchRequest { records })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(appended.results.len(), 3);

    // Each outbox takes a retry with nothing parked.
    for service in ["inventory", "authority", "credential-broker"] {
        let channel = t
            .channel(service, "EvidenceOutbox/RetryParked", OPERATOR)
            .await;
        let retried = EvidenceOutboxClient::new(channel)
            .retry_parked(common::RetryParkedRequest {
                seqs: vec![],
                all: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(retried.requeued, 0, "{service}");
    }

    let mut missing = t.changing();
    for called in &t.called {
        missing.remove(called);
    }
    if backend.is_none() {
        eprintln!("IssueDatabaseCredential not called: set {BACKEND_ENV} to call it");
        missing.retain(|(_, rpc)| !rpc.ends_with("/IssueDatabaseCredential"));
    }
    assert!(
        missing.is_empty(),
        "changing RPCs never called as an admitted caller: {missing:?}"
    );
    assert!(t.called.len() >= 40, "only {} RPCs called", t.called.len());
}

/// Authority's changing RPCs: policy and rule versions, decisions that
/// open and spend approvals, grants, incidents and break-glass.
async fn authority_calls(
    t: &mut Admitted<'_>,
    stack: &TestStack,
    nhi: &inventory::Identity,
    staged: &inventory::Identity,
) {
    let mut versions = Vec::new();
    for description in ["the site", "the site again"] {
        let uploaded = t
            .authority("UploadPolicySet", OPERATOR)
            .await
            .upload_policy_set(authority::UploadPolicySetRequest {
                policies: site(),
                description: description.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let version = uploaded.policy_set.unwrap().version;
        t.authority("ActivatePolicySet", OPERATOR)
            .await
            .activate_policy_set(authority::ActivatePolicySetRequest {
                version,
                reason: description.into(),
            })
            .await
            .unwrap();
        versions.push(version);
    }
    let back = t
        .authority("RollbackPolicySet", OPERATOR)
        .await
        .rollback_policy_set(authority::RollbackPolicySetRequest {
            reason: "one version back".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.policy_set.unwrap().version, versions[0]);

    let ask = |action: &str, resource: &str, incident: &str| authority::AuthorizeRequest {
        principal: Some(authority::Principal {
            kind: Some(authority::principal::Kind::Workload(
                spiffe_id(&format!("/{SOAR}")).to_string(),
            )),
        }),
        action: action.into(),
        resource_id: resource.into(),
        context: Some(authority::RequestContext {
            incident_ref: incident.into(),
            reason: "the token leaked".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let batch = t
        .authority("AuthorizeBatch", SOAR)
        .await
        .authorize_batch(authority::AuthorizeBatchRequest {
            requests: vec![ask("issue", &nhi.id, "INC-ADM")],
        })
        .await
        .unwrap()
        .into_inner();
    let Some(authority::authorize_result::Result::Decision(decision)) = &batch.results[0].result
    else {
        panic!("{batch:?}");
    };
    assert_eq!(decision.effect, authority::Effect::Allow as i32);
    let mut soar = t.authority("Authorize", SOAR).await;
    let mut pending = Vec::new();
    for incident in ["INC-ADM", "INC-ADM-2"] {
        let asked = soar.authorize(ask("issue", &staged.id, incident)).await;
        let decision = asked.unwrap().into_inner().decision.unwrap();
        assert_eq!(decision.effect, authority::Effect::ApprovalRequired as i32);
        pending.push(decision.approval_request_id);
    }
    let approved = t
        .authority("ReviewApprovalRequest", OPERATOR)
        .await
        .review_approval_request(bearer(
            authority::ReviewApprovalRequestRequest {
                id: pending[0].clone(),
                verdict: authority::Verdict::Approve as i32,
                reason: "contain it".into(),
            },
            &stack.token("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(approved.state, authority::ApprovalState::Approved as i32);
    t.authority("CancelApprovalRequest", SOAR)
        .await
        .cancel_approval_request(authority::CancelApprovalRequestRequest {
            id: pending[1].clone(),
            reason: "asked twice".into(),
        })
        .await
        .unwrap();

    // Another workload cannot end the SOAR bot's grant; the bot can.
    let revoke = authority::RevokeGrantRequest {
        id: approved.grant_id.clone(),
        reason: "done without it".into(),
    };
    let err = t
        .authority("RevokeGrant", SCANNER)
        .await
        .revoke_grant(revoke.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let state = |g: authority::GetGrantResponse| g.grant.unwrap().state;
    let grant = authority::GetGrantRequest {
        id: approved.grant_id.clone(),
    };
    let kept = soar.get_grant(grant.clone()).await.unwrap().into_inner();
    assert_eq!(state(kept), authority::GrantState::Active as i32);
    t.authority("RevokeGrant", SOAR)
        .await
        .revoke_grant(revoke)
        .await
        .unwrap();
    let ended = soar.get_grant(grant).await.unwrap().into_inner();
    assert_eq!(state(ended), authority::GrantState::Revoked as i32);

    t.authority("CloseIncident", OPERATOR)
        .await
        .close_incident(authority::CloseIncidentRequest {
            incident_ref: "INC-ADM".into(),
            reason: "contained".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let glass = t
        .authority("BreakGlass", OPERATOR)
        .await
        .break_glass(bearer(
            authority::BreakGlassRequest {
                action: "suspend".into(),
                resource_id: nhi.id.clone(),
                incident_ref: "INC-GLASS".into(),
                reason: "the webhook secret is being abused".into(),
                ..Default::default()
            },
            &stack.token("oncall"),
        ))
        .await
        .unwrap()
        .into_inner();
    t.authority("CompletePostActionReview", OPERATOR)
        .await
        .complete_post_action_review(bearer(
            authority::CompletePostActionReviewRequest {
                id: glass.review.unwrap().id,
                note: "the suspension was right".into(),
            },
            &stack.token("bea"),
        ))
        .await
        .unwrap();

    for document in [r#"{"rules": []}"#, r#"{"rules": []}"#] {
        let uploaded = t
            .authority("UploadResponseRules", OPERATOR)
            .await
            .upload_response_rules(authority::UploadResponseRulesRequest {
                document: document.into(),
                description: "quiet".into(),
            })
            .await
            .unwrap()
            .into_inner();
        t.authority("ActivateResponseRules", OPERATOR)
            .await
            .activate_response_rules(authority::ActivateResponseRulesRequest {
                version: uploaded.rule_set.unwrap().version,
                reason: "quiet".into(),
            })
            .await
            .unwrap();
    }
    t.authority("RollbackResponseRules", OPERATOR)
        .await
        .rollback_response_rules(authority::RollbackResponseRulesRequest {
            reason: "one version back".into(),
        })
        .await
        .unwrap();
}

/// The broker's changing RPCs, as the SOAR bot under the site's rules.
async fn broker_calls(t: &mut Admitted<'_>, workload: &inventory::Identity, backend: bool) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    t.broker("IssueX509Svid", SOAR)
        .await
        .issue_x509_svid(broker::IssueX509SvidRequest {
            identity_id: workload.id.clone(),
            csr: csr(&key, &[&workload.spiffe_id], false),
            ttl_seconds: 0,
            task: task("INC-B"),
        })
        .await
        .unwrap();
    let jwt = t
        .broker("IssueJwtSvid", SOAR)
        .await
        .issue_jwt_svid(broker::IssueJwtSvidRequest {
            identity_id: workload.id.clone(),
            audience: vec!["ledger".into()],
            ttl_seconds: 0,
            task: task("INC-B"),
        })
        .await
        .unwrap()
        .into_inner();
    let token = t
        .broker("IssueApiToken", SOAR)
        .await
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: workload.id.clone(),
            scopes: vec!["ledger:read".into()],
            ttl_seconds: 60,
            task: task("INC-B"),
        })
        .await
        .unwrap()
        .into_inner();
    if backend {
        let role = t
            .broker("IssueDatabaseCredential", SOAR)
            .await
            .issue_database_credential(broker::IssueDatabaseCredentialRequest {
                identity_id: workload.id.clone(),
                template: "connect".into(),
                ttl_seconds: 0,
                task: task("INC-B"),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!role.password.is_empty());
    }
    t.broker("RenewLease", SOAR)
        .await
        .renew_lease(broker::RenewLeaseRequest {
            lease_id: token.lease.unwrap().lease_id,
            ttl_seconds: 120,
        })
        .await
        .unwrap();
    t.broker("RevokeLease", SOAR)
        .await
        .revoke_lease(broker::RevokeLeaseRequest {
            lease_id: jwt.lease.unwrap().lease_id,
            reason: "the job finished".into(),
        })
        .await
        .unwrap();
    let revoked = t
        .broker("RevokeLeases", SOAR)
        .await
        .revoke_leases(broker::RevokeLeasesRequest {
            selector: Some(broker::revoke_leases_request::Selector::IncidentRef(
                "INC-B".into(),
            )),
            reason: "incident contained".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!revoked.lease_ids.is_empty(), "{revoked:?}");
    t.broker("Rotate", SOAR)
        .await
        .rotate(broker::RotateRequest {
            identity_id: workload.id.clone(),
            kind: broker::CredentialKind::ApiToken as i32,
            task: task("INC-R"),
            ..Default::default()
        })
        .await
        .unwrap();
    t.broker("RotateCa", OPERATOR)
        .await
        .rotate_ca(broker::RotateCaRequest {
            rotate_root: false,
            reason: "yearly rotation".into(),
        })
        .await
        .unwrap();
}
