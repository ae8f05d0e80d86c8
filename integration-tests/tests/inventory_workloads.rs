//! Registration entries and access reviews through the public API.

use std::time::Duration;

use steward_integration_tests::TestStack;
use steward_integration_tests::inventory::{create, days_from_now, spec};
use steward_proto::steward::inventory::v1 as pb;
use tonic::Code;

fn selector(t: &str, v: &str) -> pb::Selector {
    pb::Selector {
        r#type: t.into(),
        value: v.into(),
    }
}

fn entry(
    identity_id: &str,
    path: &str,
    selectors: Vec<pb::Selector>,
) -> pb::CreateRegistrationEntryRequest {
    pb::CreateRegistrationEntryRequest {
        entry: Some(pb::RegistrationEntry {
            spiffe_id: format!("spiffe://steward.test{path}"),
            parent_id: "spiffe://steward.test/service/credential-broker".into(),
            selectors,
            x509_svid_ttl: 3600,
            jwt_svid_ttl: 300,
            identity_id: identity_id.into(),
            ..Default::default()
        }),
        context: None,
    }
}

#[tokio::test]
async fn registration_entries_match_when_all_their_selectors_are_attested() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let mut s = spec("wl-1");
    s.kind = pb::IdentityKind::WorkloadIdentity as i32;
    let id = create(&mut client, s).await.id;

    let uid_only = client
        .create_registration_entry(entry(
            &id,
            "/dev/workload",
            vec![selector("unix", "uid:1000")],
        ))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    let uid_and_path = client
        .create_registration_entry(entry(
            &id,
            "/billing/sync",
            vec![
                selector("unix", "path:/usr/bin/billing-sync"),
                selector("unix", "uid:1000"),
            ],
        ))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    // Selectors come back sorted.
    assert_eq!(
        uid_and_path.selectors[0].value,
        "path:/usr/bin/billing-sync"
    );

    let err = client
        .create_registration_entry(entry(
            &id,
            "/dev/workload",
            vec![selector("unix", "uid:1000")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    for (request, field) in [
        (
            entry(&id, "/x", vec![selector("unix", "uid:alice")]),
            "entry.selectors[0].value",
        ),
        (
            entry(&id, "/x", vec![selector("", "uid:1")]),
            "entry.selectors[0].type",
        ),
        (entry(&id, "/x", vec![]), "entry.selectors"),
        (
            entry(&id, "/x/../y", vec![selector("unix", "uid:1")]),
            "entry.spiffe_id",
        ),
        (
            entry("nope", "/x", vec![selector("unix", "uid:1")]),
            "entry.identity_id",
        ),
    ] {
        let err = client.create_registration_entry(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let mut foreign = entry(&id, "/x", vec![selector("unix", "uid:1")]);
    foreign.entry.as_mut().unwrap().spiffe_id = "spiffe://elsewhere.test/x".into();
    assert!(
        client
            .create_registration_entry(foreign)
            .await
            .unwrap_err()
            .message()
            .contains("this trust domain")
    );
    let err = client
        .create_registration_entry(entry(
            &uuid::Uuid::now_v7().to_string(),
            "/x",
            vec![selector("unix", "uid:1")],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Only the credential broker (and operators) may match.
    let mut broker = stack.inventory_caller("/service/credential-broker").await;
    let matched = |attested: Vec<pb::Selector>| pb::MatchSelectorsRequest {
        selectors: attested,
    };
    let found = broker
        .match_selectors(matched(vec![
            selector("unix", "uid:1000"),
            selector("unix", "gid:1000"),
            selector("unix", "path:/usr/bin/billing-sync"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let mut got: Vec<String> = found.iter().map(|e| e.id.clone()).collect();
    got.sort();
    let mut want = vec![uid_only.id.clone(), uid_and_path.id.clone()];
    want.sort();
    assert_eq!(got, want);
    let found = broker
        .match_selectors(matched(vec![
            selector("unix", "uid:1000"),
            selector("unix", "path:/usr/bin/other"),
        ]))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(
        found.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        vec![uid_only.id.clone()]
    );
    assert!(
        broker
            .match_selectors(matched(vec![selector("unix", "uid:0")]))
            .await
            .unwrap()
            .into_inner()
            .entries
            .is_empty()
    );
    let mut bot = stack.inventory_caller("/automation/soar").await;
    assert_eq!(
        bot.match_selectors(matched(vec![]))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    client
        .delete_registration_entry(pb::DeleteRegistrationEntryRequest {
            id: uid_only.id.clone(),
            context: None,
        })
        .await
        .unwrap();
    let left = client
        .list_registration_entries(pb::ListRegistrationEntriesRequest {
            identity_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(left.len(), 1);
    let evidence = stack.evidence_for(&id, 4).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec![
            "identity.create",
            "registration.create",
            "registration.create",
            "registration.delete"
        ]
    );
}

#[tokio::test]
async fn access_reviews_apply_attestations_and_flag_what_was_not_attested() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let keep = create(&mut client, spec("rv-keep")).await.id;
    let drop = create(&mut client, spec("rv-drop")).await.id;
    let silent = create(&mut client, spec("rv-silent")).await.id;
    let mut other = spec("rv-other");
    other.environment = "staging".into();
    create(&mut client, other).await;

    let deadline = prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 3,
        nanos: 0,
    };
    let campaign = client
        .start_review_campaign(pb::StartReviewCampaignRequest {
            name: "Q4 production connectors".into(),
            filter: Some(pb::IdentityFilter {
                environment: "production".into(),
                ..Default::default()
            }),
            deadline: Some(deadline),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(campaign.pending, 3);

    // A reviewer is the person of the call's bearer token, as authority
    // verified it; the request names nobody.
    let attest = |identity: &str,
                  reviewer: &str,
                  decision: pb::ReviewDecision,
                  expiry: Option<prost_types::Timestamp>| {
        steward_integration_tests::bearer(
            pb::AttestReviewRequest {
                campaign_id: campaign.id.clone(),
                identity_id: identity.into(),
                reviewer: String::new(),
                decision: decision as i32,
                reason: "reviewed".into(),
                new_expire_time: expiry,
                context: None,
            },
            &stack.token(reviewer),
        )
    };
    // Without a person's token, nobody attests; naming another reviewer
    // than the token's person is refused.
    let mut anonymous = attest(
        &keep,
        "alice",
        pb::ReviewDecision::StillNeeded,
        Some(days_from_now(90)),
    )
    .into_inner();
    let err = client.attest_review(anonymous.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("authorization"),
        "{}",
        err.message()
    );
    anonymous.reviewer = "alice".into();
    let err = client
        .attest_review(steward_integration_tests::bearer(
            anonymous,
            &stack.token("mallory"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Only an owner may attest.
    let err = client
        .attest_review(attest(
            &keep,
            "mallory",
            pb::ReviewDecision::StillNeeded,
            Some(days_from_now(90)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("attest"), "{}", err.message());
    let err = client
        .attest_review(attest(
            &keep,
            "alice",
            pb::ReviewDecision::StillNeeded,
            None,
        ))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("new_expire_time"));
    let err = client
        .attest_review(attest(&keep, "alice", pb::ReviewDecision::Flagged, None))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("decision"));

    let new_expiry = days_from_now(90);
    let kept = client
        .attest_review(attest(
            &keep,
            "alice",
            pb::ReviewDecision::StillNeeded,
            Some(new_expiry),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        kept.identity.unwrap().expire_time.unwrap().seconds,
        new_expiry.seconds
    );
    let err = client
        .attest_review(attest(&keep, "alice", pb::ReviewDecision::Revoke, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let dropped = client
        .attest_review(attest(
            // bea answers for team-billing, the owning team she is in.
            &drop,
            "bea",
            pb::ReviewDecision::Revoke,
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dropped.identity.unwrap().state,
        pb::LifecycleState::Revoked as i32
    );

    // The deadline passes with one identity unanswered.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let closed = client
        .get_review_campaign(pb::GetReviewCampaignRequest {
            id: campaign.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .campaign
        .unwrap();
    assert_eq!(closed.state, pb::CampaignState::Closed as i32);
    assert_eq!(
        (
            closed.pending,
            closed.still_needed,
            closed.revoked,
            closed.flagged
        ),
        (0, 1, 1, 1)
    );
    let flagged = client
        .list_review_items(pb::ListReviewItemsRequest {
            campaign_id: campaign.id.clone(),
            decision: pb::ReviewDecision::Flagged as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(
        flagged
            .iter()
            .map(|i| i.identity_id.clone())
            .collect::<Vec<_>>(),
        vec![silent.clone()]
    );
    let risk = client
        .get_identity(pb::GetIdentityRequest { id: silent.clone() })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap()
        .risk
        .unwrap();
    assert!(
        risk.reasons.iter().any(|r| r.contains("policy_violation")),
        "{risk:?}"
    );
    let err = client
        .attest_review(attest(
            &silent,
            "alice",
            pb::ReviewDecision::StillNeeded,
            Some(days_from_now(30)),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Inventory's own records (authority keeps its record of each
    // attestation's decision beside them).
    let own = |entries: Vec<steward_proto::steward::audit::v1::LogEntry>| -> Vec<String> {
        entries
            .into_iter()
            .filter_map(|e| e.record)
            .filter(|r| r.emitting_service == "inventory")
            .map(|r| r.action)
            .collect()
    };
    let actions = own(stack.evidence_of(&silent, "review.flag", 1).await);
    assert_eq!(actions, vec!["identity.create", "review.flag"]);
    let entries = stack.evidence_of(&drop, "identity.revoke", 1).await;
    let attested = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.action == "review.attest")
        .unwrap();
    assert_eq!(attested.attributes["reviewer"], "bea");
    assert_eq!(
        attested.decision.as_ref().unwrap().policy_ids,
        vec!["steward-owners-attest"]
    );
    assert_eq!(
        own(entries),
        vec!["identity.create", "review.attest", "identity.revoke"]
    );
}

/// UpdateRegistrationEntry changes only what its mask names; a path it
/// cannot change, an empty selector list, or selectors another entry of
/// the same SPIFFE ID already has are refused by field and change
/// nothing; only operators may call it.
#[tokio::test]
async fn registration_entries_update_by_mask_and_refuse_what_they_cannot_change() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let mut s = spec("wl-update");
    s.kind = pb::IdentityKind::WorkloadIdentity as i32;
    let id = create(&mut client, s).await.id;
    let first = client
        .create_registration_entry(entry(
            &id,
            "/billing/sync",
            vec![selector("unix", "uid:1000")],
        ))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    client
        .create_registration_entry(entry(
            &id,
            "/billing/sync",
            vec![selector("unix", "uid:2000")],
        ))
        .await
        .unwrap();
    let update =
        |entry: pb::RegistrationEntry, paths: &[&str]| pb::UpdateRegistrationEntryRequest {
            entry: Some(entry),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            context: None,
        };
    let with = |change: fn(&mut pb::RegistrationEntry)| {
        let mut e = pb::RegistrationEntry {
            id: first.id.clone(),
            ..Default::default()
        };
        change(&mut e);
        e
    };
    for (request, code, field) in [
        (
            update(with(|_| {}), &[]),
            Code::InvalidArgument,
            "update_mask",
        ),
        (
            update(
                with(|e| e.spiffe_id = "spiffe://steward.test/x".into()),
                &["spiffe_id"],
            ),
            Code::InvalidArgument,
            "update_mask",
        ),
        (
            update(with(|_| {}), &["selectors"]),
            Code::InvalidArgument,
            "entry.selectors",
        ),
        (
            update(
                with(|e| e.selectors = vec![selector("unix", "uid:2000")]),
                &["selectors"],
            ),
            Code::AlreadyExists,
            "entry.selectors",
        ),
    ] {
        let err = client.update_registration_entry(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{field}: {err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let get = pb::GetRegistrationEntryRequest {
        id: first.id.clone(),
    };
    let kept = client.get_registration_entry(get.clone()).await.unwrap();
    assert_eq!(kept.into_inner().entry.unwrap(), first);

    // Not an operator: refused before anything is read.
    let mut scanner = stack.inventory_caller("/automation/scanner").await;
    let err = scanner
        .update_registration_entry(update(with(|e| e.x509_svid_ttl = 60), &["x509_svid_ttl"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let kept = client.get_registration_entry(get.clone()).await.unwrap();
    assert_eq!(kept.into_inner().entry.unwrap(), first);

    // The operator changes the TTL alone.
    let changed = client
        .update_registration_entry(update(with(|e| e.x509_svid_ttl = 60), &["x509_svid_ttl"]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(changed.x509_svid_ttl, 60);
    assert_eq!(
        (changed.selectors, changed.jwt_svid_ttl, changed.dns_names),
        (first.selectors, first.jwt_svid_ttl, first.dns_names)
    );
}
