//! Response rules through the public gRPC API: a versioned rule set, a
//! scanner's signal in inventory, the proportionate reaction (reversible
//! at once, irreversible after an owner approves), each step recorded with
//! the signal that caused it.

use std::time::{Duration, Instant};

use steward_integration_tests::inventory::{Client as Inventory, create, spec, state_of};
use steward_integration_tests::{TestStack, bearer};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::inventory::v1 as inv;
use tonic::Code;
use tonic::transport::Channel;

type Client = AuthorityServiceClient<Channel>;

const RULES: &str = r#"{"rules": [
  {"id": "contain-exposed-secrets", "signal_kind": "secret_exposed", "min_severity": "high",
   "actions": ["watchlist", "restrict", "open_ticket"],
   "reason": "an exposed secret is contained at once"},
  {"id": "revoke-on-critical-exposure", "signal_kind": "secret_exposed", "min_severity": "critical",
   "actions": ["revoke"], "approver": "technical_owner"}
]}"#;

async fn signal(
    scanner: &mut Inventory,
    identity: &str,
    severity: inv::Severity,
    summary: &str,
) -> String {
    scanner
        .add_signal(inv::AddSignalRequest {
            identity_id: identity.into(),
            kind: inv::SignalKind::SecretExposed as i32,
            severity: severity as i32,
            source: "secret-scanner".into(),
            summary: summary.into(),
            evidence_ref: "https://scanner.example.test/findings/1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signal
        .unwrap()
        .id
}

/// Waits (up to 20 s) until the responder has recorded `count` actions
/// for `signal_id`.
async fn actions_for(
    client: &mut Client,
    signal_id: &str,
    count: usize,
) -> Vec<pb::ResponseAction> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut actions = client
            .list_response_actions(pb::ListResponseActionsRequest {
                signal_id: signal_id.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .actions;
        if actions.len() >= count || Instant::now() > deadline {
            actions.sort_by(|a, b| a.id.cmp(&b.id));
            return actions;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn summary(actions: &[pb::ResponseAction]) -> Vec<(String, String)> {
    actions
        .iter()
        .map(|a| (a.action.clone(), a.outcome.clone()))
        .collect()
}

fn pair(action: &str, outcome: &str) -> (String, String) {
    (action.to_owned(), outcome.to_owned())
}

#[tokio::test]
async fn a_signal_triggers_proportionate_recorded_responses() {
    let stack = TestStack::start().await;
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let mut inventory = stack.inventory().await;
    let mut scanner = stack.inventory_caller("/automation/secret-scanner").await;

    // Invalid rules are refused with the path of the problem; Validate
    // lists every problem.
    let broken = r#"{"rules": [{"id": "x", "signal_kind": "secret_exposed", "actions": ["revoke"], "approval": "auto"}]}"#;
    let err = ops
        .upload_response_rules(pb::UploadResponseRulesRequest {
            document: broken.into(),
            description: "broken".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("document: rules[0].approval"),
        "{}",
        err.message()
    );
    let report = ops
        .validate_response_rules(pb::ValidateResponseRulesRequest {
            document: r#"{"rules": [{"id": "", "signal_kind": "leak", "actions": []}]}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!report.valid);
    assert_eq!(report.errors.len(), 3, "{:?}", report.errors);

    // Version 1 is uploaded and activated; it applies to new signals.
    let v1 = ops
        .upload_response_rules(pb::UploadResponseRulesRequest {
            document: RULES.into(),
            description: "contain leaks".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!((v1.version, v1.active, v1.rule_ids.len()), (1, false, 2));
    ops.activate_response_rules(pb::ActivateResponseRulesRequest {
        version: 1,
        reason: "go live".into(),
    })
    .await
    .unwrap();

    let nhi = create(&mut inventory, spec("billing-sync-github-token"))
        .await
        .id;

    // A low-severity finding matches no rule: recorded as handled, nothing done.
    let low = signal(&mut scanner, &nhi, inv::Severity::Low, "test fixture").await;
    // A high one: watchlist, restrict and a ticket, at once.
    let high = signal(
        &mut scanner,
        &nhi,
        inv::Severity::High,
        "token in a public gist",
    )
    .await;
    let contained = actions_for(&mut ops, &high, 3).await;
    assert_eq!(
        summary(&contained),
        vec![
            pair("watchlist", "applied"),
            pair("restrict", "applied"),
            pair("open_ticket", "ticket_requested"),
        ]
    );
    assert!(
        contained
            .iter()
            .all(|a| a.rule_id == "contain-exposed-secrets" && a.rule_version == 1)
    );
    assert_eq!(
        state_of(&mut inventory, &nhi).await,
        inv::LifecycleState::Restricted as i32
    );
    assert!(actions_for(&mut ops, &low, 0).await.is_empty());

    // A critical one: containment is already in place (never loosened),
    // and revocation waits for the technical owner.
    let critical = signal(
        &mut scanner,
        &nhi,
        inv::Severity::Critical,
        "token used from abroad",
    )
    .await;
    let escalated = actions_for(&mut ops, &critical, 4).await;
    assert_eq!(
        summary(&escalated),
        vec![
            pair("watchlist", "skipped"),
            pair("restrict", "skipped"),
            pair("open_ticket", "ticket_requested"),
            pair("revoke", "approval_requested"),
        ]
    );
    let approval_id = escalated[3].approval_request_id.clone();
    let request = ops
        .get_approval_request(pb::GetApprovalRequestRequest {
            id: approval_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(
        (
            request.principal.as_str(),
            request.action.as_str(),
            request.suggested_reviewers.clone(),
            request.correlation_id.as_str()
        ),
        (
            "spiffe://steward.test/service/authority",
            "revoke",
            vec!["alice".to_owned()],
            critical.as_str()
        )
    );
    assert_eq!(
        state_of(&mut inventory, &nhi).await,
        inv::LifecycleState::Restricted as i32
    );

    // Alice approves; the responder carries the revocation out.
    ops.review_approval_request(bearer(
        pb::ReviewApprovalRequestRequest {
            id: approval_id.clone(),
            verdict: pb::Verdict::Approve as i32,
            reason: "confirmed leak".into(),
        },
        &stack.token("alice"),
    ))
    .await
    .unwrap();
    let carried = actions_for(&mut ops, &critical, 5).await;
    assert_eq!(carried[4].outcome, "applied_after_approval", "{carried:?}");
    assert_eq!(
        state_of(&mut inventory, &nhi).await,
        inv::LifecycleState::Revoked as i32
    );

    // Every step is evidence, tied to the signal by correlation id: the
    // signal itself, the transitions inventory made and the responses
    // authority recorded.
    let evidence = stack.evidence_for(&nhi, 20).await;
    let by_signal: Vec<(String, String)> = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.correlation_id == high)
        .map(|r| (r.emitting_service.clone(), r.action.clone()))
        .collect();
    for expected in [
        ("inventory", "signal.add"),
        ("authority", "response.watchlist"),
        ("authority", "response.restrict"),
        ("authority", "response.open_ticket"),
    ] {
        assert!(
            by_signal.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} in {by_signal:?}"
        );
    }
    assert_eq!(
        by_signal
            .iter()
            .filter(|(service, action)| service == "inventory" && action != "signal.add")
            .count(),
        2,
        "two transitions by inventory: {by_signal:?}"
    );

    // Versions: a second set, then a rollback to the first.
    let v2 = ops
        .upload_response_rules(pb::UploadResponseRulesRequest {
            document: r#"{"rules": []}"#.into(),
            description: "quiet".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    ops.activate_response_rules(pb::ActivateResponseRulesRequest {
        version: v2.version,
        reason: "pause".into(),
    })
    .await
    .unwrap();
    let back = ops
        .rollback_response_rules(pb::RollbackResponseRulesRequest {
            reason: "resume".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.rule_set.unwrap().version, back.previous_version),
        (1, 2)
    );
    let active = ops
        .get_response_rules(pb::GetResponseRulesRequest { version: 0 })
        .await
        .unwrap()
        .into_inner()
        .rule_set
        .unwrap();
    assert_eq!(active.document, RULES);
    let err = ops
        .list_response_actions(pb::ListResponseActionsRequest {
            identity_id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("identity_id"),
        "{}",
        err.message()
    );
}
