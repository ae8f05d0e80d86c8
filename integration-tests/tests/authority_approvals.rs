//! Approvals, grants, incidents and break-glass through authority's public
//! gRPC API over mTLS, with humans authenticated by OIDC bearer tokens.

use std::time::Duration;

use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TEST_ISSUER, TestStack, bearer};
use steward_proto::steward::authority::v1 as pb;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = AuthorityServiceClient<Channel>;

const SOAR: &str = "spiffe://steward.test/automation/soar";

const SITE: &str = r#"
@id("soar-rotates-with-owner-approval")
@approvals("1")
@approver("technical_owner")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"rotate", resource);

@id("soar-revokes-with-two-from-security")
@approvals("2")
@approver("group:security")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"revoke", resource);

@id("security-approves")
permit (principal in Steward::Group::"security", action == Steward::Action::"approve", resource);

@id("oncall-may-break-glass")
permit (principal == Steward::Human::"oncall", action == Steward::Action::"break_glass", resource);
"#;

async fn operator(stack: &TestStack) -> Client {
    AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await)
}

async fn soar(stack: &TestStack) -> Client {
    let source = stack.pki.client("soar", SOAR);
    AuthorityServiceClient::new(stack.service("authority").channel(&source).await)
}

async fn install_site(client: &mut Client) {
    let text = format!("{}\n{SITE}", steward_authority::engine::DEFAULT_POLICIES);
    let version = client
        .upload_policy_set(pb::UploadPolicySetRequest {
            policies: text,
            description: "approvals".into(),
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
            reason: "approvals test".into(),
        })
        .await
        .unwrap();
}

fn context(incident: &str) -> pb::RequestContext {
    pb::RequestContext {
        incident_ref: incident.into(),
        reason: "the token leaked".into(),
        correlation_id: format!("corr-{incident}"),
        ..Default::default()
    }
}

fn ask(action: &str, resource: &str, context: pb::RequestContext) -> pb::AuthorizeRequest {
    pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(pb::principal::Kind::Workload(SOAR.into())),
        }),
        action: action.into(),
        resource_id: resource.into(),
        context: Some(context),
        ..Default::default()
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

fn review(id: &str, verdict: pb::Verdict, reason: &str) -> pb::ReviewApprovalRequestRequest {
    pb::ReviewApprovalRequestRequest {
        id: id.into(),
        verdict: verdict as i32,
        reason: reason.into(),
    }
}

async fn approval(client: &mut Client, id: &str) -> pb::ApprovalRequest {
    client
        .get_approval_request(pb::GetApprovalRequestRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap()
}

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn an_owner_approval_becomes_a_single_use_grant_and_only_eligible_reviewers_count() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("billing-sync-token")).await.id;
    let mut ops = operator(&stack).await;
    install_site(&mut ops).await;
    let mut bot = soar(&stack).await;

    // Needing approval without saying why opens nothing.
    let mut silent = context("INC-7");
    silent.reason.clear();
    let err = bot
        .authorize(ask("rotate", &nhi, silent))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("context.reason"),
        "{}",
        err.message()
    );

    let first = decide(&mut bot, ask("rotate", &nhi, context("INC-7"))).await;
    assert_eq!(first.effect, pb::Effect::ApprovalRequired as i32);
    let id = first.approval_request_id.clone();
    // Asking again returns the same pending request.
    let again = decide(&mut bot, ask("rotate", &nhi, context("INC-7"))).await;
    assert_eq!(again.approval_request_id, id);
    let pending = approval(&mut ops, &id).await;
    assert_eq!(
        (
            pending.state,
            pending.principal.as_str(),
            pending.requester.as_str(),
            pending.approver.as_str(),
            pending.suggested_reviewers.clone(),
            pending.reason.as_str(),
        ),
        (
            pb::ApprovalState::Pending as i32,
            SOAR,
            SOAR,
            "technical_owner",
            vec!["alice".to_owned()],
            "the token leaked",
        )
    );

    // Not the owner; the bot itself; no token at all (the operator's
    // workload is no owner); a forged token. Each refused, nothing recorded.
    let err = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "looks fine"),
            &stack.token("mallory"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("technical_owner"),
        "{}",
        err.message()
    );
    let err = bot
        .review_approval_request(review(&id, pb::Verdict::Approve, "self"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("own request"), "{}", err.message());
    let err = ops
        .review_approval_request(review(&id, pb::Verdict::Approve, "no token"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut forged = stack.token("alice");
    forged.replace_range(forged.len() - 4.., "AAAA");
    let err = ops
        .review_approval_request(bearer(review(&id, pb::Verdict::Approve, "forged"), &forged))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(approval(&mut ops, &id).await.reviews.is_empty());

    // Bad input names the field.
    let alice = stack.token("alice");
    for (request, field) in [
        (review("nope", pb::Verdict::Approve, "x"), "id"),
        (review(&id, pb::Verdict::Unspecified, "x"), "verdict"),
        (review(&id, pb::Verdict::Approve, "  "), "reason"),
    ] {
        let err = ops
            .review_approval_request(bearer(request, &alice))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = ops
        .review_approval_request(bearer(
            review(&uuid::Uuid::now_v7().to_string(), pb::Verdict::Approve, "x"),
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Alice, the technical owner, approves: a single-use grant.
    let approved = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "rotate it"),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(approved.state, pb::ApprovalState::Approved as i32);
    assert_eq!(approved.reviews[0].reviewer, "alice");
    assert_eq!(approved.reviews[0].reviewer_issuer, TEST_ISSUER);
    assert_eq!(
        approved.reviews[0].carried_by,
        "spiffe://steward.test/operator/admin"
    );
    let err = ops
        .review_approval_request(bearer(review(&id, pb::Verdict::Deny, "late"), &alice))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The grant is for this incident only, and is spent by one ALLOW.
    let other = decide(&mut bot, ask("rotate", &nhi, context("INC-8"))).await;
    assert_eq!(other.effect, pb::Effect::ApprovalRequired as i32);
    let used = decide(&mut bot, ask("rotate", &nhi, context("INC-7"))).await;
    assert_eq!(
        (used.effect, used.grant_id.as_str(), used.approvers.clone()),
        (
            pb::Effect::Allow as i32,
            approved.grant_id.as_str(),
            vec!["alice".to_owned()]
        )
    );
    let grant = ops
        .get_grant(pb::GetGrantRequest {
            id: approved.grant_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(
        (grant.state, grant.single_use, grant.incident_ref.as_str()),
        (pb::GrantState::Used as i32, true, "INC-7")
    );
    let after = decide(&mut bot, ask("rotate", &nhi, context("INC-7"))).await;
    assert_eq!(after.effect, pb::Effect::ApprovalRequired as i32);
    assert_ne!(after.approval_request_id, id);

    // A deny denies.
    let denied = ops
        .review_approval_request(bearer(
            review(
                &after.approval_request_id,
                pb::Verdict::Deny,
                "once is enough",
            ),
            &alice,
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(denied.state, pb::ApprovalState::Denied as i32);

    // All of it is evidence: the identity's creation, five decisions, three
    // requests, two reviews, the approval and the denial, the grant issued
    // and used.
    let evidence = stack.evidence_for(&nhi, 15).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.as_str())
        .collect();
    for expected in [
        "approval.requested",
        "approval.review.approve",
        "approval.approved",
        "grant.issued",
        "grant.used",
        "approval.review.deny",
        "approval.denied",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let reviewed = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.action == "approval.review.approve")
        .unwrap();
    let actor = reviewed.actor.as_ref().unwrap();
    assert_eq!(
        (
            actor.human_subject.as_str(),
            actor.workload_spiffe_id.as_str()
        ),
        ("alice", "spiffe://steward.test/operator/admin")
    );
    assert_eq!(reviewed.decision.as_ref().unwrap().approval_ids, vec![id]);
}

#[tokio::test]
async fn two_of_a_group_approve_and_grants_keep_their_window_and_incident() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("ledger-key")).await.id;
    let mut ops = operator(&stack).await;
    install_site(&mut ops).await;
    let mut bot = soar(&stack).await;

    // A scheduled start two seconds out: the grant waits for its window.
    let start = now() + 2;
    let mut scheduled = context("INC-9");
    scheduled.window_start = Some(ts(start));
    scheduled.window_end = Some(ts(start + 600));
    let first = decide(&mut bot, ask("revoke", &nhi, scheduled.clone())).await;
    let id = first.approval_request_id.clone();
    assert_eq!(first.approval.as_ref().unwrap().approver, "group:security");

    // Sam approves: one of two. He cannot approve twice; Bea (not in
    // security) cannot approve at all.
    let one = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "yes"),
            &stack.token("sam"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(
        (one.state, one.reviews.len()),
        (pb::ApprovalState::Pending as i32, 1)
    );
    let err = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "again"),
            &stack.token("sam"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "me too"),
            &stack.token("bea"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let two = ops
        .review_approval_request(bearer(
            review(&id, pb::Verdict::Approve, "agreed"),
            &stack.token("sue"),
        ))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(two.state, pb::ApprovalState::Approved as i32);

    // Before the window opens the grant does not apply.
    let early = decide(&mut bot, ask("revoke", &nhi, scheduled.clone())).await;
    assert_eq!(early.effect, pb::Effect::ApprovalRequired as i32);
    assert!(early.grant_id.is_empty());
    while now() < start {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let inside = decide(&mut bot, ask("revoke", &nhi, scheduled.clone())).await;
    assert_eq!(inside.effect, pb::Effect::Allow as i32);
    assert_eq!(inside.grant_id, two.grant_id);
    assert_eq!(inside.approvers, vec!["sam", "sue"]);

    // Early revocation: a second approved grant, revoked before use.
    let next = decide(&mut bot, ask("revoke", &nhi, context("INC-9"))).await;
    let next_id = next.approval_request_id.clone();
    for human in ["sam", "sue"] {
        ops.review_approval_request(bearer(
            review(&next_id, pb::Verdict::Approve, "ok"),
            &stack.token(human),
        ))
        .await
        .unwrap();
    }
    let grant_id = approval(&mut ops, &next_id).await.grant_id;
    let revoked = ops
        .revoke_grant(pb::RevokeGrantRequest {
            id: grant_id.clone(),
            reason: "changed our mind".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    assert_eq!(revoked.state, pb::GrantState::Revoked as i32);
    let err = ops
        .revoke_grant(pb::RevokeGrantRequest {
            id: grant_id,
            reason: "again".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let after = decide(&mut bot, ask("revoke", &nhi, context("INC-9"))).await;
    assert_eq!(after.effect, pb::Effect::ApprovalRequired as i32);

    // Closing the incident ends its grants and cancels its pending requests.
    let rotate = decide(&mut bot, ask("rotate", &nhi, context("INC-9"))).await;
    ops.review_approval_request(bearer(
        review(&rotate.approval_request_id, pb::Verdict::Approve, "ok"),
        &stack.token("alice"),
    ))
    .await
    .unwrap();
    let live = approval(&mut ops, &rotate.approval_request_id)
        .await
        .grant_id;
    let closed = ops
        .close_incident(pb::CloseIncidentRequest {
            incident_ref: "INC-9".into(),
            reason: "resolved".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.ended_grant_ids, vec![live.clone()]);
    assert_eq!(
        closed.cancelled_approval_request_ids,
        vec![after.approval_request_id.clone()]
    );
    let ended = ops
        .list_grants(pb::ListGrantsRequest {
            incident_ref: "INC-9".into(),
            state: pb::GrantState::IncidentClosed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grants;
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].end_reason, "resolved");
    let gone = decide(&mut bot, ask("rotate", &nhi, context("INC-9"))).await;
    assert_eq!(gone.effect, pb::Effect::ApprovalRequired as i32);
    let err = ops
        .close_incident(pb::CloseIncidentRequest {
            incident_ref: String::new(),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("incident_ref"),
        "{}",
        err.message()
    );

    // Lists page and filter.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops
            .list_approval_requests(pb::ListApprovalRequestsRequest {
                resource_id: nhi.clone(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.approval_requests.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    let cancelled = ops
        .list_approval_requests(pb::ListApprovalRequestsRequest {
            state: pb::ApprovalState::Cancelled as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(cancelled.len(), 1);

    // Only the requester, the principal or an operator withdraws a request.
    let cancel = |reason: &str| pb::CancelApprovalRequestRequest {
        id: gone.approval_request_id.clone(),
        reason: reason.into(),
    };
    let other = stack
        .pki
        .client("other-bot", "spiffe://steward.test/automation/other-bot");
    let mut stranger =
        AuthorityServiceClient::new(stack.service("authority").channel(&other).await);
    let err = stranger
        .cancel_approval_request(cancel("not mine"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = bot.cancel_approval_request(cancel("")).await.unwrap_err();
    assert!(err.message().starts_with("reason"), "{}", err.message());
    assert_eq!(
        approval(&mut ops, &gone.approval_request_id).await.state,
        pb::ApprovalState::Pending as i32
    );
    let withdrawn = bot
        .cancel_approval_request(cancel("handled another way"))
        .await
        .unwrap()
        .into_inner()
        .approval_request
        .unwrap();
    assert_eq!(withdrawn.state, pb::ApprovalState::Cancelled as i32);
    let err = bot
        .cancel_approval_request(cancel("again"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn expired_requests_cannot_be_approved_and_unclaimed_grants_lapse() {
    let stack = TestStack::start().await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("short-lived")).await.id;
    let mut ops = operator(&stack).await;
    install_site(&mut ops).await;
    let mut bot = soar(&stack).await;
    let alice = stack.token("alice");

    // A request whose window closes in two seconds expires with it.
    let mut brief = context("INC-11");
    brief.window_end = Some(ts(now() + 2));
    let lapsing = decide(&mut bot, ask("rotate", &nhi, brief)).await;
    // A grant that must be claimed within two seconds of a long window.
    let mut claim_soon = context("INC-12");
    claim_soon.window_end = Some(ts(now() + 600));
    claim_soon.claim_by = Some(ts(now() + 2));
    let unclaimed = decide(&mut bot, ask("rotate", &nhi, claim_soon.clone())).await;
    ops.review_approval_request(bearer(
        review(&unclaimed.approval_request_id, pb::Verdict::Approve, "ok"),
        &alice,
    ))
    .await
    .unwrap();

    let deadline = now() + 3;
    while now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = ops
        .review_approval_request(bearer(
            review(
                &lapsing.approval_request_id,
                pb::Verdict::Approve,
                "too late",
            ),
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("expired"), "{}", err.message());
    assert!(
        approval(&mut ops, &lapsing.approval_request_id)
            .await
            .reviews
            .is_empty()
    );

    // The grant was never claimed in time: it no longer applies.
    claim_soon.claim_by = None;
    let late = decide(&mut bot, ask("rotate", &nhi, claim_soon)).await;
    assert_eq!(late.effect, pb::Effect::ApprovalRequired as i32);
    assert!(late.grant_id.is_empty());

    // A new request whose claim-by has passed is refused.
    let mut past = context("INC-13");
    past.claim_by = Some(ts(now() - 60));
    let err = bot.authorize(ask("rotate", &nhi, past)).await.unwrap_err();
    assert!(
        err.message().starts_with("context.claim_by"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn break_glass_is_for_named_principals_recorded_and_reviewed_by_owners() {
    let mut stack = TestStack::start().await;
    stack.restart_authority_with_review_time(1).await;
    let mut inventory = stack.inventory().await;
    let nhi = create(&mut inventory, spec("payments-webhook")).await.id;
    let mut ops = operator(&stack).await;
    install_site(&mut ops).await;
    let oncall = stack.token("oncall");
    let glass = |reason: &str| pb::BreakGlassRequest {
        action: "suspend".into(),
        resource_id: nhi.clone(),
        incident_ref: "INC-42".into(),
        reason: reason.into(),
        correlation_id: "corr-glass".into(),
        ..Default::default()
    };

    // Only the principal the policy names; never without a reason.
    let err = ops
        .break_glass(bearer(glass("I want to"), &stack.token("bob")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let err = ops
        .break_glass(bearer(glass(""), &oncall))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("reason"), "{}", err.message());
    let mut bad = glass("x");
    bad.action = "approve".into();
    let err = ops.break_glass(bearer(bad, &oncall)).await.unwrap_err();
    assert!(err.message().starts_with("action"), "{}", err.message());

    let invoked = ops
        .break_glass(bearer(glass("webhook secret is being abused"), &oncall))
        .await
        .unwrap()
        .into_inner();
    let grant = invoked.grant.unwrap();
    let review = invoked.review.unwrap();
    assert!(grant.break_glass);
    assert_eq!(grant.principal, "oncall");
    assert_eq!(review.assignees, vec!["alice", "team-billing"]);
    assert_eq!(review.state, pb::ReviewState::Open as i32);

    // The break-glass grant lets on-call suspend, with the review duty.
    let suspend = pb::AuthorizeRequest {
        principal: Some(pb::Principal {
            kind: Some(pb::principal::Kind::Human(pb::Human {
                subject: "oncall".into(),
                issuer: TEST_ISSUER.into(),
            })),
        }),
        action: "suspend".into(),
        resource_id: nhi.clone(),
        context: Some(context("INC-42")),
        ..Default::default()
    };
    let allowed = ops
        .authorize(bearer(suspend, &oncall))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert_eq!(
        (
            allowed.effect,
            allowed.break_glass,
            allowed.grant_id.as_str()
        ),
        (pb::Effect::Allow as i32, true, grant.id.as_str())
    );
    assert_eq!(
        allowed.obligations.unwrap().duties,
        vec!["post_action_review"]
    );

    // Past due, the review is listed as overdue.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let overdue = ops
        .list_post_action_reviews(pb::ListPostActionReviewsRequest {
            overdue_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reviews;
    assert_eq!(overdue.len(), 1);
    assert!(overdue[0].overdue);

    // Not by the invoker; not by a stranger; by a member of the owning team.
    let complete = |note: &str| pb::CompletePostActionReviewRequest {
        id: review.id.clone(),
        note: note.into(),
    };
    let err = ops
        .complete_post_action_review(bearer(complete("all good"), &oncall))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = ops
        .complete_post_action_review(bearer(complete("fine"), &stack.token("bob")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let done = ops
        .complete_post_action_review(bearer(
            complete("suspension was right; secret rotated"),
            &stack.token("bea"),
        ))
        .await
        .unwrap()
        .into_inner()
        .review
        .unwrap();
    assert_eq!(
        (done.state, done.completed_by.as_str(), done.overdue),
        (pb::ReviewState::Completed as i32, "bea", false)
    );
    let overdue = ops
        .list_post_action_reviews(pb::ListPostActionReviewsRequest {
            overdue_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .reviews;
    assert!(overdue.is_empty());

    // Evidence: the refused and the allowed invocation, the review opened,
    // flagged and completed, the suspend decision and the grant's use.
    let evidence = stack.evidence_for(&nhi, 9).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.as_str())
        .collect();
    for expected in [
        "breakglass.invoked",
        "breakglass.review_opened",
        "breakglass.review_overdue",
        "breakglass.review_completed",
        "grant.used",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let refused = evidence
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.action == "decision.authorize")
        .filter(|r| {
            r.decision.as_ref().unwrap().effect
                == steward_proto::steward::audit::v1::Effect::Deny as i32
        })
        .count();
    assert_eq!(refused, 1, "{actions:?}");
}
