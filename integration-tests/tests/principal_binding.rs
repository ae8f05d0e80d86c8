//! Principal binding (ADR 0015), tried as an attacker with a valid SVID
//! would: a workload cannot act as another or spend its grant, a person's
//! request names that person, delegation needs a policy, and the changes
//! authority owns (closing an incident, managing policy) ask its policies.
//! Each refusal is beside the positive control, and each checks through
//! the API that nothing changed.

use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TEST_ISSUER, TestStack, bearer};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = AuthorityServiceClient<Channel>;

const SOAR: &str = "spiffe://steward.test/automation/soar";
const RUNNER: &str = "spiffe://steward.test/automation/runner";

const SITE: &str = r#"
@id("soar-rotates-with-owner-approval")
@approvals("1")
@approver("technical_owner")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"rotate", resource);

@id("soar-issues")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"issue", resource);

@id("alice-rotates-with-owner-approval")
@approvals("1")
@approver("technical_owner")
permit (principal == Steward::Human::"alice", action == Steward::Action::"rotate", resource);

@id("runner-acts-for-soar")
@reason("the runbook runner carries the SOAR bot's requests")
permit (
  principal == Steward::Workload::"spiffe://steward.test/automation/runner",
  action == Steward::Action::"act_for",
  resource == Steward::Workload::"spiffe://steward.test/automation/soar"
);

@id("oncall-may-break-glass")
permit (principal == Steward::Human::"oncall", action == Steward::Action::"break_glass", resource);
"#;

async fn install_site(client: &mut Client) -> u64 {
    let text = format!("{}\n{SITE}", steward_authority::engine::DEFAULT_POLICIES);
    let version = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: text,
            description: "principal binding".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap()
        .version;
    client
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version,
            reason: "principal binding test".into(),
        })
        .await
        .unwrap();
    version
}

/// A stack with one NHI (alice its technical owner, team-billing its
/// business owner) and the site's policies active; an inventory client and
/// an authority client as the operator.
async fn site_stack() -> (
    TestStack,
    steward_integration_tests::inventory::Client,
    String,
    Client,
) {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("billing-sync-token")).await.id;
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    install_site(&mut ops).await;
    (stack, inventory, nhi, ops)
}

fn context(incident: &str) -> pb::RequestContext {
    pb::RequestContext {
        incident_ref: incident.into(),
        reason: "the token leaked".into(),
        correlation_id: format!("corr-{incident}"),
        ..Default::default()
    }
}

fn as_workload(id: &str, action: &str, resource: &str, incident: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(pb::principal::Kind::Workload(id.into())),
        }),
        action: action.into(),
        resource_id: resource.into(),
        context: Some(context(incident)),
        ..Default::default()
    }
}

fn as_human(subject: &str, action: &str, resource: &str, incident: &str) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(pb::principal::Kind::Human(pb::Human {
                subject: subject.into(),
                issuer: TEST_ISSUER.into(),
            })),
        }),
        ..as_workload(SOAR, action, resource, incident)
    }
}

async fn decide(client: &mut Client, request: pb::AuthorizeRequest) -> pb::Decision {
    client
        .authorize(request)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}

fn approve(id: &str) -> pb::ReviewApprovalRequestRequest {
    pb::ReviewApprovalRequestRequest {
        id: id.into(),
        verdict: pb::Verdict::Approve as i32,
        reason: "the rotation is needed".into(),
    }
}

async fn grant(client: &mut Client, id: &str) -> pb::Grant {
    client
        .get_grant(pb::GetGrantRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap()
}

async fn active_version(client: &mut Client) -> u64 {
    client
        .get_policy_set(pb::GetPolicySetRequest { version: 0 })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap()
        .version
}

#[tokio::test]
async fn a_workload_cannot_act_as_another_nor_spend_its_grant() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let mut soar = stack.authority_caller("/automation/soar").await;
    let mut scanner = stack.authority_caller("/automation/secret-scanner").await;

    let asked = decide(&mut soar, as_workload(SOAR, "rotate", &nhi, "INC-1")).await;
    assert_eq!(asked.effect, pb::Effect::ApprovalRequired as i32);
    let reviewed = ops
        .review_approval_request(bearer(
            approve(&asked.approval_request_id),
            &stack.token("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(reviewed.state, pb::ApprovalState::Approved as i32);
    assert_eq!(reviewed.requester, SOAR);

    // The scanner asks as the SOAR bot: refused, naming the field, and the
    // bot's single-use grant is still there.
    for action in ["rotate", "issue"] {
        let err = scanner
            .authorize(as_workload(SOAR, action, &nhi, "INC-1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
        assert!(
            err.message().starts_with("principal: "),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("may not act for"),
            "{}",
            err.message()
        );
    }
    let unspent = grant(&mut ops, &reviewed.grant_id).await;
    assert_eq!(unspent.state, pb::GrantState::Active as i32);
    // In a batch too.
    let batch = scanner
        .authorize_batch(pb::AuthorizeBatchRequest {
            requests: vec![as_workload(SOAR, "rotate", &nhi, "INC-1")],
        })
        .await
        .unwrap()
        .into_inner();
    match &batch.results[0].result {
        Some(pb::authorize_result::Result::Error(e)) => {
            assert_eq!(e.code, Code::PermissionDenied as i32, "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        grant(&mut ops, &reviewed.grant_id).await.state,
        pb::GrantState::Active as i32
    );

    // The SOAR bot itself spends it.
    let allowed = decide(&mut soar, as_workload(SOAR, "rotate", &nhi, "INC-1")).await;
    assert_eq!(allowed.effect, pb::Effect::Allow as i32);
    assert_eq!(allowed.grant_id, reviewed.grant_id);
    assert_eq!(
        grant(&mut ops, &reviewed.grant_id).await.state,
        pb::GrantState::Used as i32
    );

    // A caller cannot name another requester or acting human either.
    let mut named = as_workload(SOAR, "issue", &nhi, "INC-1");
    named.context.as_mut().unwrap().requester = "spiffe://steward.test/automation/other".into();
    let err = soar.authorize(named).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("context.requester"),
        "{}",
        err.message()
    );
    let mut named = as_workload(SOAR, "issue", &nhi, "INC-1");
    named.context.as_mut().unwrap().acting_human = "alice".into();
    let err = soar.authorize(named).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("context.acting_human"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_persons_request_names_that_person_who_cannot_approve_it() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let alice = stack.token("alice");

    // Alice, on the operator's SVID, asks for the SOAR bot: not hers to ask.
    let err = ops
        .authorize(bearer(as_workload(SOAR, "rotate", &nhi, "INC-2"), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().starts_with("principal: "),
        "{}",
        err.message()
    );
    let pending = ops
        .list_approval_requests(pb::ListApprovalRequestsRequest {
            resource_id: nhi.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert!(pending.is_empty(), "{pending:?}");

    // Asking as herself opens a request that names her, and so she (the
    // identity's technical owner) may not approve it; sam may not either
    // (not the owner), and the business owner's team may.
    let mine = ops
        .authorize(bearer(as_human("alice", "rotate", &nhi, "INC-2"), &alice))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(mine.effect, pb::Effect::ApprovalRequired as i32);
    let request = ops
        .get_approval_request(pb::GetApprovalRequestRequest {
            id: mine.approval_request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(
        (request.requester.as_str(), request.principal.as_str()),
        ("alice", "alice")
    );
    let err = ops
        .review_approval_request(bearer(approve(&request.id), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("their own request"),
        "{}",
        err.message()
    );

    // Asking again while it is pending returns the same request.
    let again = ops
        .authorize(bearer(as_human("alice", "rotate", &nhi, "INC-2"), &alice))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(again.approval_request_id, mine.approval_request_id);
}

#[tokio::test]
async fn a_delegate_acts_for_a_principal_only_where_a_policy_says_and_is_recorded() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let mut runner = stack.authority_caller("/automation/runner").await;

    // The runner may act for the SOAR bot, and for no one else.
    let allowed = decide(&mut runner, as_workload(SOAR, "issue", &nhi, "INC-3")).await;
    assert_eq!(
        allowed.effect,
        pb::Effect::Allow as i32,
        "{}",
        allowed.reason
    );
    let err = runner
        .authorize(as_workload(
            "spiffe://steward.test/automation/other",
            "issue",
            &nhi,
            "INC-3",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = runner
        .authorize(as_human("alice", "rotate", &nhi, "INC-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A delegated approval request names the delegate as its requester.
    let asked = decide(&mut runner, as_workload(SOAR, "rotate", &nhi, "INC-3")).await;
    assert_eq!(asked.effect, pb::Effect::ApprovalRequired as i32);
    let request = ops
        .get_approval_request(pb::GetApprovalRequestRequest {
            id: asked.approval_request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(
        (request.principal.as_str(), request.requester.as_str()),
        (SOAR, RUNNER)
    );

    // The evidence names the delegate (the actor), the principal and the
    // policy that permitted the delegation.
    let entries = stack.evidence_of(&nhi, "decision.authorize", 2).await;
    let delegated: Vec<_> = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.action == "decision.authorize")
        .collect();
    assert_eq!(delegated.len(), 2, "{delegated:?}");
    for record in delegated {
        assert_eq!(record.actor.as_ref().unwrap().workload_spiffe_id, RUNNER);
        assert_eq!(record.attributes["principal"], SOAR);
        assert_eq!(record.attributes["delegated"], "act_for");
        assert_eq!(
            record.attributes["delegation_policy_ids"],
            "runner-acts-for-soar"
        );
    }

    // DryRun and Explain answer about anyone: they change nothing.
    let mut scanner = stack.authority_caller("/automation/secret-scanner").await;
    let explained = scanner
        .explain(pb::ExplainRequest {
            version: 0,
            request: Some(as_workload(SOAR, "issue", &nhi, "INC-3")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.decision.unwrap().effect, pb::Effect::Allow as i32);
}

#[tokio::test]
async fn closing_an_incident_is_decided_by_policy() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let mut soar = stack.authority_caller("/automation/soar").await;
    let asked = decide(&mut soar, as_workload(SOAR, "rotate", &nhi, "INC-4")).await;
    let request_id = asked.approval_request_id;

    let close = |who: &str| pb::CloseIncidentRequest {
        incident_ref: "INC-4".into(),
        reason: format!("closed by {who}"),
        correlation_id: "corr-INC-4".into(),
    };
    // Automation may not (no default permits it): nothing changes.
    let mut scanner = stack.authority_caller("/automation/secret-scanner").await;
    let err = scanner
        .close_incident(close("the scanner"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("close_incident"),
        "{}",
        err.message()
    );
    let still = ops
        .get_approval_request(pb::GetApprovalRequestRequest {
            id: request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(still.state, pb::ApprovalState::Pending as i32);

    // A person may.
    let closed = ops
        .close_incident(bearer(close("alice"), &stack.token("alice")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.cancelled_approval_request_ids, vec![request_id]);

    // The closure's record carries its decision; the refusal has its own.
    let mut audit = stack.audit_reader().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let records = loop {
        let records: Vec<_> = audit
            .query(steward_proto::steward::audit::v1::QueryRequest {
                filter: Some(steward_proto::steward::audit::v1::EntryFilter {
                    correlation_id: "corr-INC-4".into(),
                    ..Default::default()
                }),
                page_size: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .filter_map(|e| e.record)
            .collect();
        let done = records.iter().any(|r| r.action == "incident.closed")
            && records.iter().any(|r| {
                r.attributes.get("requested_action").map(String::as_str) == Some("close_incident")
            });
        if done || std::time::Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let closed = records
        .iter()
        .find(|r| r.action == "incident.closed")
        .unwrap();
    let decision = closed.decision.as_ref().unwrap();
    assert_eq!(decision.policy_ids, vec!["steward-people-close-incidents"]);
    assert_eq!(closed.actor.as_ref().unwrap().human_subject, "alice");
    let refused = records
        .iter()
        .find(|r| {
            r.attributes.get("requested_action").map(String::as_str) == Some("close_incident")
        })
        .unwrap();
    assert_eq!(
        refused.decision.as_ref().unwrap().effect,
        steward_proto::steward::audit::v1::Effect::Deny as i32
    );
    assert_eq!(
        refused.actor.as_ref().unwrap().workload_spiffe_id,
        "spiffe://steward.test/automation/secret-scanner"
    );
}

#[tokio::test]
async fn policies_are_managed_only_by_those_a_policy_permits() {
    let stack = TestStack::start().await;
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let before = active_version(&mut ops).await;
    let text = steward_authority::engine::DEFAULT_POLICIES.to_owned();
    let upload = || pb::UploadPolicySetRequest {
        policies: text.clone(),
        description: "an upload".into(),
    };

    // A person outside policy-admins, and a token that does not verify,
    // change nothing, whatever SVID carries them.
    let err = ops
        .upload_policy_set(bearer(upload(), &stack.token("alice")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("manage_policy"), "{}", err.message());
    let err = ops
        .activate_policy_set(bearer(
            pb::ActivatePolicySetRequest {
                version: 1,
                reason: "alice tries".into(),
            },
            &stack.token("alice"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = ops
        .rollback_policy_set(bearer(
            pb::RollbackPolicySetRequest {
                reason: "alice tries".into(),
            },
            "not-a-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    let err = ops
        .upload_response_rules(bearer(
            pb::UploadResponseRulesRequest {
                document: r#"{"rules": []}"#.into(),
                description: "alice tries".into(),
            },
            &stack.token("alice"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Automation is not an operator.
    let mut soar = stack.authority_caller("/automation/soar").await;
    let err = soar
        .validate_policy_set(pb::ValidatePolicySetRequest {
            policies: text.clone(),
        })
        .await
        .map(|_| ());
    assert!(err.is_ok(), "validating changes nothing and stays open");
    let listed = ops
        .list_policy_sets(pb::ListPolicySetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_sets;
    assert_eq!(listed.len(), 1, "nothing was uploaded: {listed:?}");
    assert_eq!(active_version(&mut ops).await, before);

    // A policy admin may, and so may the operator's own SVID.
    let uploaded = ops
        .upload_policy_set(bearer(upload(), &stack.token("pat")))
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    assert_eq!(uploaded.uploaded_by, "pat");
    let activated = ops
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: uploaded.version,
            reason: "the operator activates".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(activated.previous_version, before);
    assert_eq!(active_version(&mut ops).await, uploaded.version);

    // A set that would refuse the operator manage_policy is stored, but
    // activating it would leave no way back: refused, nothing changes.
    let locking = ops
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: "@id(\"only-issue\")\npermit (principal, action == Steward::Action::\"issue\", resource);".into(),
            description: "forgets the defaults".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    let err = ops
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: locking.version,
            reason: "a mistake".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("no way back"), "{}", err.message());
    assert_eq!(active_version(&mut ops).await, uploaded.version);
}

#[tokio::test]
async fn asking_again_before_a_grants_start_returns_the_same_request() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let mut soar = stack.authority_caller("/automation/soar").await;
    let start = time::OffsetDateTime::now_utc().unix_timestamp() + 3600;
    let scheduled = || {
        let mut r = as_workload(SOAR, "rotate", &nhi, "INC-5");
        let c = r.context.as_mut().unwrap();
        c.window_start = Some(prost_types::Timestamp {
            seconds: start,
            nanos: 0,
        });
        c.window_end = Some(prost_types::Timestamp {
            seconds: start + 1800,
            nanos: 0,
        });
        r
    };
    let first = decide(&mut soar, scheduled()).await;
    assert_eq!(first.effect, pb::Effect::ApprovalRequired as i32);
    let approved = ops
        .review_approval_request(bearer(
            approve(&first.approval_request_id),
            &stack.token("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(approved.state, pb::ApprovalState::Approved as i32);

    // Before the window starts, asking again opens nothing new.
    let again = decide(&mut soar, scheduled()).await;
    assert_eq!(again.effect, pb::Effect::ApprovalRequired as i32);
    assert_eq!(again.approval_request_id, first.approval_request_id);
    let requests = ops
        .list_approval_requests(pb::ListApprovalRequestsRequest {
            resource_id: nhi.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(requests.len(), 1, "{requests:?}");
}

#[tokio::test]
async fn every_record_of_a_break_glass_carries_its_correlation_id() {
    let (stack, _, nhi, mut ops) = site_stack().await;
    let glass = ops
        .break_glass(bearer(
            pb::BreakGlassRequest {
                action: "suspend".into(),
                resource_id: nhi.clone(),
                incident_ref: "INC-6".into(),
                reason: "the key is being used from a new region".into(),
                duration_seconds: 600,
                correlation_id: "corr-glass".into(),
            },
            &stack.token("oncall"),
        ))
        .await
        .unwrap()
        .into_inner();
    let review = glass.review.unwrap();
    ops.complete_post_action_review(bearer(
        pb::CompletePostActionReviewRequest {
            id: review.id,
            note: "the suspension was right".into(),
        },
        &stack.token("alice"),
    ))
    .await
    .unwrap();
    let entries = stack
        .evidence_of(&nhi, "breakglass.review_completed", 1)
        .await;
    let glass_records: Vec<_> = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| {
            r.action.starts_with("breakglass.")
                || r.attributes.get("requested_action").map(String::as_str) == Some("break_glass")
        })
        .collect();
    let actions: Vec<&str> = glass_records.iter().map(|r| r.action.as_str()).collect();
    assert!(
        actions.contains(&"breakglass.review_completed"),
        "{actions:?}"
    );
    for record in glass_records {
        assert_eq!(record.correlation_id, "corr-glass", "{}", record.action);
    }
}

#[tokio::test]
async fn a_persons_transition_through_inventory_is_decided_by_authority() {
    use steward_integration_tests::inventory::state_of;
    use steward_proto::steward::inventory::v1 as inv;

    let (stack, mut inventory, nhi, mut ops) = site_stack().await;
    let to = |state: inv::LifecycleState| inv::TransitionStateRequest {
        id: nhi.clone(),
        target_state: state as i32,
        reason: "the key is being used from a new region".into(),
        expected_version: 0,
        context: Some(inv::ChangeContext {
            incident_ref: "INC-8".into(),
            correlation_id: "corr-INC-8".into(),
        }),
    };
    let active = inv::LifecycleState::Active as i32;

    // Alice (an owner, but no policy lets her suspend) and a token that
    // does not verify change nothing, as through the CLI.
    let err = inventory
        .transition_state(bearer(
            to(inv::LifecycleState::Suspended),
            &stack.token("alice"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("authority denied suspend"),
        "{}",
        err.message()
    );
    let err = inventory
        .transition_state(bearer(to(inv::LifecycleState::Suspended), "forged"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert_eq!(state_of(&mut inventory, &nhi).await, active);

    // On call, after breaking glass for it, may.
    ops.break_glass(bearer(
        pb::BreakGlassRequest {
            action: "suspend".into(),
            resource_id: nhi.clone(),
            incident_ref: "INC-8".into(),
            reason: "the key is being used from a new region".into(),
            duration_seconds: 600,
            correlation_id: "corr-INC-8".into(),
        },
        &stack.token("oncall"),
    ))
    .await
    .unwrap();
    let moved = inventory
        .transition_state(bearer(
            to(inv::LifecycleState::Suspended),
            &stack.token("oncall"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        moved.identity.unwrap().state,
        inv::LifecycleState::Suspended as i32
    );
    // The change's record carries authority's decision.
    let entries = stack.evidence_of(&nhi, "identity.suspend", 1).await;
    let suspended = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.action == "identity.suspend")
        .unwrap();
    let decision = suspended.decision.as_ref().unwrap();
    assert_eq!(decision.policy_ids, vec!["steward-break-glass-acts"]);
    assert!(!suspended.attributes["decision_id"].is_empty());

    // Lifting the suspension asks too: the owner may, automation may not
    // even call (the allowlist), and the operator's own SVID may.
    let mut soar = stack.inventory_caller("/automation/soar").await;
    let err = soar
        .transition_state(to(inv::LifecycleState::Active))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let lifted = inventory
        .transition_state(bearer(
            to(inv::LifecycleState::Active),
            &stack.token("alice"),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lifted.identity.unwrap().state, active);
    inventory
        .transition_state(to(inv::LifecycleState::Watchlisted))
        .await
        .unwrap();
}

#[tokio::test]
async fn rotating_the_ca_is_decided_by_authority() {
    use steward_proto::steward::broker::v1 as broker;

    let stack = TestStack::start().await;
    let mut ca = stack.broker_as(&stack.operator.clone()).await;
    let bundle = async |ca: &mut steward_integration_tests::broker::Client| {
        ca.get_trust_bundle(broker::GetTrustBundleRequest {})
            .await
            .unwrap()
            .into_inner()
            .x509_intermediates
    };
    let before = bundle(&mut ca).await;
    let rotate = || broker::RotateCaRequest {
        rotate_root: false,
        reason: "scheduled".into(),
    };

    // A person no policy lets rotate the CA, on the operator's SVID: the
    // CA stays as it was. So does one whose token does not verify.
    let err = ca
        .rotate_ca(bearer(rotate(), &stack.token("alice")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("rotate_ca"), "{}", err.message());
    let err = ca.rotate_ca(bearer(rotate(), "forged")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert_eq!(bundle(&mut ca).await, before);

    // The operator's own SVID may, and the record carries the decision.
    ca.rotate_ca(rotate()).await.unwrap();
    let after = bundle(&mut ca).await;
    assert_ne!(after[0], before[0]);
    let mut audit = stack.audit_reader().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rotated = loop {
        let found = audit
            .query(steward_proto::steward::audit::v1::QueryRequest {
                filter: Some(steward_proto::steward::audit::v1::EntryFilter {
                    action: "ca.rotate".into(),
                    ..Default::default()
                }),
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .find_map(|e| e.record);
        if let Some(record) = found {
            break record;
        }
        assert!(std::time::Instant::now() < deadline, "no ca.rotate record");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        rotated.decision.unwrap().policy_ids,
        vec!["steward-operators-rotate-the-ca"]
    );
}
