//! Authority through its public gRPC API over mTLS: versioned policy sets
//! validated against the schema, decisions on facts read from inventory,
//! every decision in the evidence log.

use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TEST_ISSUER, TestStack, bearer};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use tonic::Code;
use tonic::transport::Channel;

async fn authority(stack: &TestStack) -> AuthorityServiceClient<Channel> {
    AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await)
}

const SITE: &str = r#"
@id("soar-rotates-connectors")
@reason("SOAR rotates connector secrets during incidents once the technical owner approves")
@approvals("1")
@approver("technical_owner")
@max_ttl("1800")
@obligations("revoke_old_secret,post_action_review")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"rotate", resource)
when { context.has_incident && resource.kind == "connector" };

@id("broker-issues")
@max_ttl("3600")
permit (principal == Steward::Workload::"spiffe://steward.test/service/credential-broker", action == Steward::Action::"issue", resource)
when { resource.environment == "production" };

@id("owners-approve")
permit (principal, action == Steward::Action::"approve", resource)
when { principal is Steward::Human && principal.id == resource.technical_owner };
"#;

fn ask(
    principal: pb::principal::Kind,
    action: &str,
    resource: &str,
    context: pb::RequestContext,
) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(principal),
        }),
        action: action.into(),
        resource_id: resource.into(),
        context: Some(context),
        ..Default::default()
    }
}

fn workload(path: &str) -> pb::principal::Kind {
    pb::principal::Kind::Workload(format!("spiffe://steward.test{path}"))
}

async fn site(client: &mut AuthorityServiceClient<Channel>) -> u64 {
    let text = format!("{}\n{SITE}", steward_authority::engine::DEFAULT_POLICIES);
    let uploaded = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: text,
            description: "site policies".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    client
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: uploaded.version,
            reason: "go live".into(),
        })
        .await
        .unwrap();
    uploaded.version
}

#[tokio::test]
async fn policy_sets_are_validated_versioned_activated_and_rolled_back() {
    let stack = TestStack::start().await;
    let mut client = authority(&stack).await;

    // A fresh authority runs Steward's defaults as version 1.
    let active = client
        .get_policy_set(pb::GetPolicySetRequest { version: 0 })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    assert_eq!((active.version, active.active), (1, true));
    assert!(
        active
            .policy_ids
            .contains(&"steward-no-self-approval".to_owned())
    );

    let broken = "@id(\"ok\")\npermit (principal, action, resource);\n@id(\"bad\")\npermit (principal, action == Steward::Action::\"issue\", resource)\nwhen { resource.colour == \"blue\" };\n";
    let report = client
        .validate_policy_set(pb::ValidatePolicySetRequest {
            policies: broken.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.valid);
    assert_eq!(
        (report.errors[0].line, report.errors[0].policy_id.as_str()),
        (5, "bad")
    );
    let err = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: broken.into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("policies: line 5, column"),
        "{}",
        err.message()
    );
    let err = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: "permit (principal, action resource);".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("policies: line 1, column"),
        "{}",
        err.message()
    );
    // Nothing was stored by the refused uploads.
    let listed = client
        .list_policy_sets(pb::ListPolicySetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_sets;
    assert_eq!(listed.len(), 1);

    let v2 = site(&mut client).await;
    assert_eq!(v2, 2);
    let err = client
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: 2,
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: 9,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .activate_policy_set(pb::ActivatePolicySetRequest {
            version: 1,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("reason"));

    let back = client
        .rollback_policy_set(pb::RollbackPolicySetRequest {
            reason: "bad rollout".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.policy_set.unwrap().version, back.previous_version),
        (1, 2)
    );
    let err = client
        .rollback_policy_set(pb::RollbackPolicySetRequest {
            reason: "further".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Only operators manage policy.
    let mut bot = stack.authority_caller("/automation/soar").await;
    let err = bot
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: SITE.into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn decisions_use_inventory_facts_and_reach_audit() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("billing-sync-token")).await.id;
    let mut client = authority(&stack).await;
    let version = site(&mut client).await;

    let mut soar = stack.authority_caller("/automation/soar").await;
    let incident = pb::RequestContext {
        incident_ref: "INC-42".into(),
        correlation_id: "corr-42".into(),
        reason: "the token leaked in a public repository".into(),
        ..Default::default()
    };
    let first = soar
        .authorize(ask(
            workload("/automation/soar"),
            "rotate",
            &nhi,
            incident.clone(),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(first.effect, pb::Effect::ApprovalRequired as i32);
    assert_eq!(first.policy_set_version, version);
    let approval = first.approval.unwrap();
    assert_eq!(
        (approval.approvals, approval.approver.as_str()),
        (1, "technical_owner")
    );
    assert_eq!(approval.suggested_reviewers, vec!["alice"]);
    let request_id = first.approval_request_id.clone();
    assert!(!request_id.is_empty());

    // May Alice approve? The owner from inventory may; the requester may not.
    let alice_token = stack.token("alice");
    let mut alice = ask(
        pb::principal::Kind::Human(pb::Human {
            subject: "alice".into(),
            issuer: TEST_ISSUER.into(),
        }),
        "approve",
        &nhi,
        incident.clone(),
    );
    let err = client
        .authorize(bearer(alice.clone(), &alice_token))
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("context.requester"),
        "{}",
        err.message()
    );
    alice.context.as_mut().unwrap().requester = "spiffe://steward.test/automation/soar".into();
    let approve = client
        .authorize(bearer(alice.clone(), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(approve.effect, pb::Effect::Allow as i32);
    alice.context.as_mut().unwrap().requester = "alice".into();
    let own = client
        .authorize(bearer(alice.clone(), &alice_token))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (own.effect, own.policy_ids.clone()),
        (
            pb::Effect::Deny as i32,
            vec!["steward-no-self-approval".to_owned()]
        )
    );

    // Without her token, the operator cannot name Alice as the principal.
    let err = client.authorize(alice).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // Alice approves the request; the grant lets SOAR rotate once.
    let reviewed = client
        .review_approval_request(bearer(
            pb::ReviewApprovalRequestRequest {
                id: request_id.clone(),
                verdict: pb::Verdict::Approve as i32,
                reason: "rotate it".into(),
            },
            &alice_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(reviewed.state, pb::ApprovalState::Approved as i32);
    let allowed = soar
        .authorize(ask(
            workload("/automation/soar"),
            "rotate",
            &nhi,
            incident.clone(),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(allowed.effect, pb::Effect::Allow as i32);
    assert_eq!(allowed.grant_id, reviewed.grant_id);
    assert_eq!(allowed.approvers, vec!["alice"]);
    let obligations = allowed.obligations.unwrap();
    assert_eq!(obligations.max_ttl_seconds, 1800);
    assert_eq!(
        obligations.duties,
        vec!["post_action_review", "revoke_old_secret"]
    );

    // The facts are read at decision time: a suspended identity is denied.
    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let issue = ask(
        workload("/service/credential-broker"),
        "issue",
        &nhi,
        incident.clone(),
    );
    assert_eq!(
        broker
            .authorize(issue.clone())
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .effect,
        pb::Effect::Allow as i32
    );
    inventory
        .transition_state(
            steward_proto::steward::inventory::v1::TransitionStateRequest {
                id: nhi.clone(),
                target_state: steward_proto::steward::inventory::v1::LifecycleState::Suspended
                    as i32,
                reason: "leaked".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let denied = broker
        .authorize(issue)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(denied.effect, pb::Effect::Deny as i32);
    assert_eq!(
        denied.policy_ids,
        vec!["steward-no-credentials-for-dead-identities"]
    );

    // Explain names the deciding policy and why, and the slice it used.
    let explained = client
        .explain(pb::ExplainRequest {
            version: 0,
            request: Some(ask(
                workload("/automation/soar"),
                "rotate",
                &nhi,
                incident.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.deciding[0].policy_id, "soar-rotates-connectors");
    assert_eq!(explained.deciding[0].effect, "permit");
    assert!(explained.deciding[0].reason.starts_with("SOAR rotates"));
    assert!(explained.policies_in_slice < explained.policies_in_set);

    // Dry run against version 1 (defaults only): nothing permits rotation.
    let dry = client
        .dry_run(pb::DryRunRequest {
            version: 1,
            request: Some(ask(
                workload("/automation/soar"),
                "rotate",
                &nhi,
                incident.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (dry.effect, dry.policy_set_version),
        (pb::Effect::Deny as i32, 1)
    );

    // Every Authorize is in the log, with the version and deciding policies.
    // Creation, the suspension and six decisions, from two services'
    // outboxes; and the approval's request, review, approval, grant and use;
    // and the decision inventory asked for before the suspension.
    let evidence = stack.evidence_for(&nhi, 14).await;
    let inventory_id = "spiffe://steward.test/service/inventory";
    let asked_by = |r: &&steward_proto::steward::audit::v1::EvidenceRecord| {
        r.actor.as_ref().unwrap().workload_spiffe_id.clone()
    };
    let decisions: Vec<_> = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.action == "decision.authorize" && asked_by(r) != inventory_id)
        .collect();
    assert_eq!(decisions.len(), 6, "{evidence:?}");
    let for_the_suspension: Vec<_> = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.action == "decision.authorize" && asked_by(r) == inventory_id)
        .collect();
    assert_eq!(for_the_suspension.len(), 1, "{evidence:?}");
    assert_eq!(
        for_the_suspension[0].attributes["requested_action"],
        "suspend"
    );
    let first = decisions[0];
    assert_eq!(first.incident_ref, "INC-42");
    assert_eq!(first.correlation_id, "corr-42");
    assert_eq!(first.emitting_service, "authority");
    assert_eq!(
        first.actor.as_ref().unwrap().workload_spiffe_id,
        "spiffe://steward.test/automation/soar"
    );
    let d = first.decision.as_ref().unwrap();
    assert_eq!(
        (d.policy_set_version.as_str(), d.effect),
        (
            "2",
            steward_proto::steward::audit::v1::Effect::ApprovalRequired as i32
        )
    );
    assert_eq!(d.policy_ids, vec!["soar-rotates-connectors"]);
    assert_eq!(d.approval_ids, vec![request_id]);
    let human = decisions[1].actor.as_ref().unwrap();
    assert_eq!(human.human_subject, "alice");
}

#[tokio::test]
async fn bad_requests_are_refused_precisely_and_inventory_down_fails_closed() {
    let mut stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("tok-closed")).await.id;
    // The broker asks for its callers: any principal is its to name.
    let mut client = stack.authority_caller("/service/credential-broker").await;
    for (request, field) in [
        (
            ask(workload("/a"), "explode", &nhi, Default::default()),
            "action",
        ),
        (
            ask(workload("/a"), "issue", "not-a-uuid", Default::default()),
            "resource_id",
        ),
        (
            ask(
                pb::principal::Kind::Workload("http://nope".into()),
                "issue",
                &nhi,
                Default::default(),
            ),
            "principal.workload",
        ),
        (
            pb::AuthorizeRequest {
                principal: None,
                action: "issue".into(),
                resource_id: nhi.clone(),
                context: None,
                ..Default::default()
            },
            "principal",
        ),
        (
            ask(
                pb::principal::Kind::Human(pb::Human {
                    subject: "a".into(),
                    issuer: String::new(),
                }),
                "issue",
                &nhi,
                Default::default(),
            ),
            "principal.human.issuer",
        ),
    ] {
        let err = client.authorize(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = client
        .authorize(ask(
            workload("/a"),
            "issue",
            &uuid::Uuid::now_v7().to_string(),
            Default::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    stack.stop("inventory").await;
    let err = client
        .authorize(ask(workload("/a"), "issue", &nhi, Default::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("inventory"), "{}", err.message());
}

#[tokio::test]
async fn group_membership_comes_from_config_and_long_reasons_are_recorded_whole_characters() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("tok-groups")).await.id;

    // A second authority, configured with a group of bots.
    let mut config = TestStack::config_for(&stack.pki, &stack.backend, "authority").await;
    config.peers = stack.configs["authority"].peers.clone();
    let mut groups = std::collections::BTreeMap::new();
    groups.insert(
        "bots".to_owned(),
        vec!["spiffe://steward.test/automation/*".to_owned()],
    );
    let mut settings = steward_integration_tests::test_authority_config(config);
    settings.groups = groups;
    let app = steward_authority::build_with(settings).await.unwrap();
    let grouped = steward_integration_tests::RunningService::start("authority", app);
    let mut client = AuthorityServiceClient::new(grouped.channel(&stack.operator).await);
    let broker = stack.pki.client(
        "service-credential-broker",
        "spiffe://steward.test/service/credential-broker",
    );
    let mut delegate = AuthorityServiceClient::new(grouped.channel(&broker).await);

    // A reason of 1,200 bytes in 3-byte characters: the record keeps whole
    // characters within its 1,024-byte limit.
    let reason = "€".repeat(400);
    let policies = format!(
        "@id(\"bots-watchlist\") @reason(\"{reason}\")\npermit (principal in Steward::Group::\"bots\", action == Steward::Action::\"watchlist\", resource);\n@id(\"operators-manage-policy\")\npermit (principal is Steward::Workload, action == Steward::Action::\"manage_policy\", resource) when {{ principal.role == \"operator\" }};"
    );
    let version = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies,
            description: "groups".into(),
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
            reason: "test".into(),
        })
        .await
        .unwrap();

    let bot = delegate
        .authorize(ask(
            workload("/automation/soar"),
            "watchlist",
            &nhi,
            Default::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(bot.effect, pb::Effect::Allow as i32);
    assert_eq!(bot.reason, reason);
    let outsider = delegate
        .authorize(ask(
            workload("/workload/payments"),
            "watchlist",
            &nhi,
            Default::default(),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(outsider.effect, pb::Effect::Deny as i32);

    let evidence = stack.evidence_for(&nhi, 3).await;
    let recorded = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| {
            r.action == "decision.authorize"
                && r.decision.as_ref().is_some_and(|d| {
                    d.effect == steward_proto::steward::audit::v1::Effect::Allow as i32
                })
        })
        .unwrap();
    let kept = &recorded.outcome.as_ref().unwrap().reason;
    assert!(
        kept.len() <= 1024 && reason.starts_with(kept.as_str()) && kept.chars().all(|c| c == '€'),
        "{} bytes",
        kept.len()
    );
    grouped.shutdown().await;
}

/// Authority caches facts under inventory's invalidation lease (ADR 0008):
/// a write that has returned is never hidden by a cached read, however
/// soon the next decision comes and however warm the cache is.
#[tokio::test]
async fn cached_facts_never_hide_a_write_that_returned() {
    use prost_types::FieldMask;
    use steward_proto::steward::inventory::v1 as inv;

    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("cache-coherence")).await.id;
    site(&mut authority(&stack).await).await;
    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let issue = ask(
        workload("/service/credential-broker"),
        "issue",
        &nhi,
        pb::RequestContext::default(),
    );
    let effect = async |broker: &mut AuthorityServiceClient<Channel>| {
        broker
            .authorize(issue.clone())
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .effect
    };
    // Warm: the cache takes its lease and keeps the facts.
    for _ in 0..10 {
        assert_eq!(effect(&mut broker).await, pb::Effect::Allow as i32);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // `broker-issues` permits production only: flip the environment and ask
    // at once, then again (from the refilled cache).
    let mut identity = spec("cache-coherence");
    for round in 0..24 {
        let production = round % 2 == 1;
        identity.environment = if production { "production" } else { "staging" }.into();
        inventory
            .update_identity(inv::UpdateIdentityRequest {
                id: nhi.clone(),
                identity: Some(identity.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["environment".into()],
                }),
                expected_version: 0,
                context: None,
            })
            .await
            .unwrap();
        let want = if production {
            pb::Effect::Allow
        } else {
            pb::Effect::Deny
        } as i32;
        assert_eq!(effect(&mut broker).await, want, "round {round}, at once");
        assert_eq!(effect(&mut broker).await, want, "round {round}, cached");
    }
    // A transition is a write like any other.
    inventory
        .transition_state(inv::TransitionStateRequest {
            id: nhi.clone(),
            target_state: inv::LifecycleState::Suspended as i32,
            reason: "leaked".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(effect(&mut broker).await, pb::Effect::Deny as i32);
}

/// ADR 0012: the credential broker may leave an ALLOW to the record of its
/// outcome; any other caller asking for that still gets its decision
/// recorded by authority, and so does a DENY the broker asks for.
#[tokio::test]
async fn only_the_broker_records_an_allow_with_its_outcome() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("ledger-export-token")).await.id;
    let mut client = authority(&stack).await;
    site(&mut client).await;
    let with_outcome = |principal: &str| pb::AuthorizeRequest {
        decision_evidence: pb::DecisionEvidence::WithOutcome as i32,
        ..ask(
            workload(principal),
            "issue",
            &nhi,
            pb::RequestContext {
                incident_ref: "INC-7".into(),
                ..Default::default()
            },
        )
    };
    let decide = |mut caller: AuthorityServiceClient<Channel>, request: pb::AuthorizeRequest| async move {
        caller
            .authorize(request)
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
    };

    let broker = stack.authority_caller("/service/credential-broker").await;
    let left = decide(broker.clone(), with_outcome("/service/credential-broker")).await;
    assert_eq!(left.effect, pb::Effect::Allow as i32);
    assert!(left.recorded_with_outcome, "{left:?}");
    // The broker acting for a human: the human's decision is authority's to record.
    let for_alice = broker
        .clone()
        .authorize(bearer(
            with_outcome("/service/credential-broker"),
            &stack.token("alice"),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(for_alice.effect, pb::Effect::Allow as i32);
    assert!(!for_alice.recorded_with_outcome);
    let denied = decide(broker, with_outcome("/automation/soar")).await;
    assert_eq!(denied.effect, pb::Effect::Deny as i32);
    assert!(!denied.recorded_with_outcome);
    let inventory = stack.authority_caller("/service/inventory").await;
    let by_another = decide(inventory, with_outcome("/service/credential-broker")).await;
    assert_eq!(by_another.effect, pb::Effect::Allow as i32);
    assert!(!by_another.recorded_with_outcome);

    // Authority's outbox delivers in order: once the last decision is in
    // the log, the first would be too had authority recorded it.
    let evidence = stack.evidence_of(&nhi, "decision.authorize", 3).await;
    let recorded: Vec<&str> = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.action == "decision.authorize")
        .map(|r| r.record_id.as_str())
        .collect();
    assert_eq!(
        recorded,
        vec![
            for_alice.decision_id.as_str(),
            denied.decision_id.as_str(),
            by_another.decision_id.as_str()
        ]
    );
}

#[tokio::test]
async fn a_batch_answers_each_request_as_authorize_would() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("batch-token")).await.id;
    let mut client = authority(&stack).await;
    site(&mut client).await;
    let incident = pb::RequestContext {
        incident_ref: "INC-7".into(),
        reason: "the token leaked".into(),
        ..Default::default()
    };
    let requests = vec![
        ask(
            workload("/service/credential-broker"),
            "issue",
            &nhi,
            Default::default(),
        ),
        ask(workload("/a"), "issue", &nhi, Default::default()),
        ask(workload("/a"), "issue", "not-a-uuid", Default::default()),
        ask(
            workload("/a"),
            "issue",
            &uuid::Uuid::now_v7().to_string(),
            Default::default(),
        ),
        ask(workload("/automation/soar"), "rotate", &nhi, incident),
    ];
    let mut delegate = stack.authority_caller("/service/credential-broker").await;
    let results = delegate
        .authorize_batch(pb::AuthorizeBatchRequest {
            requests: requests.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), requests.len());
    let decision = |i: usize| match &results[i].result {
        Some(pb::authorize_result::Result::Decision(d)) => d.clone(),
        other => panic!("request {i}: {other:?}"),
    };
    let error = |i: usize| match &results[i].result {
        Some(pb::authorize_result::Result::Error(e)) => (Code::from(e.code), e.message.clone()),
        other => panic!("request {i}: {other:?}"),
    };
    let allowed = decision(0);
    assert_eq!(allowed.effect, pb::Effect::Allow as i32);
    assert_eq!(allowed.policy_ids, vec!["broker-issues"]);
    assert_eq!(allowed.resource.unwrap().state, "active");
    assert_eq!(decision(1).effect, pb::Effect::Deny as i32);
    let (code, message) = error(2);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.starts_with("resource_id"), "{message}");
    assert_eq!(error(3).0, Code::NotFound);
    let approval = decision(4);
    assert_eq!(approval.effect, pb::Effect::ApprovalRequired as i32);
    let opened = client
        .get_approval_request(pb::GetApprovalRequestRequest {
            id: approval.approval_request_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(opened.incident_ref, "INC-7");
    // Each decision is its own, with its own id, as single calls give.
    let single = delegate
        .authorize(requests[1].clone())
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(single.effect, pb::Effect::Deny as i32);
    assert_eq!(single.reason, decision(1).reason);
    assert_ne!(single.decision_id, decision(1).decision_id);

    for (requests, what) in [
        (vec![], "is required"),
        (vec![requests[0].clone(); 257], "at most 256"),
    ] {
        let err = delegate
            .authorize_batch(pb::AuthorizeBatchRequest { requests })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with("requests") && err.message().contains(what),
            "{}",
            err.message()
        );
    }
    let err = stack
        .authority_caller("/auditor/eve")
        .await
        .authorize_batch(pb::AuthorizeBatchRequest {
            requests: vec![requests[0].clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

async fn active_policy_set(stack: &TestStack) -> pb::PolicySet {
    authority(stack)
        .await
        .get_policy_set(pb::GetPolicySetRequest { version: 0 })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap()
}

/// An earlier release's defaults, as a site that never changed them has.
const EARLIER_DEFAULTS: &str = r#"@id("steward-no-self-approval")
forbid (principal, action == Steward::Action::"approve", resource) when { false };"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untouched_defaults_of_an_earlier_release_are_upgraded_on_start_a_sites_own_set_is_not() {
    let mut stack = TestStack::start().await;
    assert_eq!(active_policy_set(&stack).await.version, 1);
    let database = stack.configs["authority"].database.clone();

    // A site's own set (its description is the site's): left alone.
    stack.stop("authority").await;
    steward_integration_tests::execute_sql(
        &database,
        "UPDATE policy_sets SET description = 'our policies' WHERE version = 1",
    )
    .await;
    stack.restart_stopped("authority").await;
    let set = active_policy_set(&stack).await;
    assert_eq!((set.version, set.description.as_str()), (1, "our policies"));

    // Steward's own defaults of an earlier release: replaced by this
    // release's, as a new version, on start.
    stack.stop("authority").await;
    steward_integration_tests::execute_sql(
        &database,
        "UPDATE policy_sets SET description = 'Steward''s default policies' WHERE version = 1",
    )
    .await;
    steward_integration_tests::execute_sql(
        &database,
        &format!(
            "UPDATE policy_sets SET policies = '{}' WHERE version = 1",
            EARLIER_DEFAULTS.replace('\'', "''")
        ),
    )
    .await;
    stack.restart_stopped("authority").await;
    let set = active_policy_set(&stack).await;
    assert_eq!(set.version, 2);
    assert_eq!(set.description, "Steward's default policies");
    assert!(
        set.policy_ids
            .iter()
            .any(|id| id == "steward-operators-rotate-the-ca"),
        "{:?}",
        set.policy_ids
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trust_domain_is_asked_about_only_for_rotate_ca_and_only_this_one() {
    let stack = TestStack::start().await;
    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let ask = |action: &str, resource: &str| pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(pb::principal::Kind::Caller(true)),
        }),
        action: action.into(),
        resource_id: resource.into(),
        resource_kind: pb::ResourceKind::TrustDomain as i32,
        ..Default::default()
    };
    let err = broker
        .authorize(ask("rotate_ca", "other.example"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("resource_id: "),
        "{}",
        err.message()
    );
    let err = broker
        .authorize(ask("issue", "steward.test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("action: "), "{}", err.message());
    // This trust domain, rotate_ca: a decision (the broker is no operator).
    let decision = broker
        .authorize(ask("rotate_ca", "steward.test"))
        .await
        .unwrap()
        .into_inner();
    assert!(decision.decision.is_some());
}
