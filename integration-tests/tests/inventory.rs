//! Inventory through its public gRPC API over mTLS: the identity model and
//! its rules, lifecycle, signals and risk, entitlements, who may call what,
//! and every change arriving in audit as evidence.

use prost_types::FieldMask;
use steward_integration_tests::TestStack;
use steward_integration_tests::inventory::{create, days_from_now, spec};
use steward_proto::steward::inventory::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn create_requires_owners_and_purpose_unless_filed_unowned() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;

    for (field, mutate) in [
        (
            "identity.purpose",
            Box::new(|s: &mut pb::IdentitySpec| s.purpose.clear())
                as Box<dyn Fn(&mut pb::IdentitySpec)>,
        ),
        (
            "identity.technical_owner",
            Box::new(|s: &mut pb::IdentitySpec| s.technical_owner = None),
        ),
        (
            "identity.business_owner",
            Box::new(|s: &mut pb::IdentitySpec| s.business_owner = None),
        ),
        (
            "identity.kind",
            Box::new(|s: &mut pb::IdentitySpec| s.kind = 0),
        ),
        (
            "identity.kind",
            Box::new(|s: &mut pb::IdentitySpec| s.kind = 99),
        ),
        (
            "identity.spiffe_id",
            Box::new(|s: &mut pb::IdentitySpec| s.spiffe_id = "spiffe://Bad/x".into()),
        ),
        (
            "identity.display_name",
            Box::new(|s: &mut pb::IdentitySpec| s.display_name = "x".repeat(300)),
        ),
        (
            "identity.labels",
            Box::new(|s: &mut pb::IdentitySpec| {
                s.labels.insert("has space".into(), "v".into());
            }),
        ),
        (
            "identity.technical_owner.contact",
            // A contact is optional, but one given must be one line.
            Box::new(|s: &mut pb::IdentitySpec| {
                s.technical_owner.as_mut().unwrap().contact = "alice@\nexample.test".into()
            }),
        ),
    ] {
        let mut s = spec("tok-invalid");
        mutate(&mut s);
        let err = client
            .create_identity(pb::CreateIdentityRequest {
                identity: Some(s),
                context: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    // Nothing was stored by the rejected requests.
    let listed = client
        .list_identities(pb::ListIdentitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.identities.is_empty());

    // Filed for triage: no owners, no purpose, straight onto the orphaned report.
    let mut triage = spec("tok-found-in-logs");
    triage.business_owner = None;
    triage.technical_owner = None;
    triage.purpose.clear();
    triage.unowned = true;
    let orphan = create(&mut client, triage).await;
    assert!(orphan.unowned);
    assert!(
        orphan
            .risk
            .as_ref()
            .unwrap()
            .reasons
            .iter()
            .any(|r| r.contains("no accountable owner"))
    );
    let report = client
        .get_posture_report(pb::GetPostureReportRequest {
            report: pb::PostureReport::Orphaned as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(report.total, 1);
    assert_eq!(report.findings[0].identity_id, orphan.id);
    assert!(
        report.findings[0]
            .reasons
            .contains(&"filed unowned for triage".to_owned())
    );

    // The same credential twice is ALREADY_EXISTS.
    let first = create(&mut client, spec("tok-1")).await;
    assert_eq!(first.state, pb::LifecycleState::Active as i32);
    assert_eq!(first.version, 1);
    let err = client
        .create_identity(pb::CreateIdentityRequest {
            identity: Some(spec("tok-1")),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn update_applies_the_mask_at_the_expected_version() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let created = create(&mut client, spec("tok-upd")).await;

    let mut change = spec("ignored");
    change.purpose = "reconciles invoices nightly".into();
    change.display_name = "must not change".into();
    change.labels.insert("tier".into(), "1".into());
    let updated = client
        .update_identity(pb::UpdateIdentityRequest {
            id: created.id.clone(),
            identity: Some(change.clone()),
            update_mask: Some(FieldMask {
                paths: vec!["purpose".into(), "labels".into()],
            }),
            expected_version: 1,
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(updated.purpose, "reconciles invoices nightly");
    assert_eq!(updated.display_name, created.display_name);
    assert_eq!(updated.labels.get("tier").map(String::as_str), Some("1"));
    assert_eq!(updated.version, 2);

    // A stale version is ABORTED and changes nothing.
    let err = client
        .update_identity(pb::UpdateIdentityRequest {
            id: created.id.clone(),
            identity: Some(change.clone()),
            update_mask: Some(FieldMask {
                paths: vec!["display_name".into()],
            }),
            expected_version: 1,
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    for (paths, expected) in [
        (vec!["external_id"], "update_mask"),
        (vec!["colour"], "update_mask"),
        (vec![], "update_mask"),
    ] {
        let err = client
            .update_identity(pb::UpdateIdentityRequest {
                id: created.id.clone(),
                identity: Some(change.clone()),
                update_mask: Some(FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
                expected_version: 0,
                context: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(expected), "{}", err.message());
    }
    // Removing the technical owner of an owned identity is refused.
    let err = client
        .update_identity(pb::UpdateIdentityRequest {
            id: created.id.clone(),
            identity: Some(pb::IdentitySpec::default()),
            update_mask: Some(FieldMask {
                paths: vec!["technical_owner".into()],
            }),
            expected_version: 0,
            context: None,
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("identity.technical_owner"),
        "{}",
        err.message()
    );
    let now = client
        .get_identity(pb::GetIdentityRequest {
            id: created.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(now.version, 2);
    assert_eq!(now.technical_owner, created.technical_owner);

    let err = client
        .get_identity(pb::GetIdentityRequest {
            id: "not-a-uuid".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "id: is not a UUID")
    );
    let err = client
        .get_identity(pb::GetIdentityRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_filters_and_pages() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let mut ids = Vec::new();
    for n in 0..7 {
        let mut s = spec(&format!("tok-{n}"));
        if n % 2 == 0 {
            s.kind = pb::IdentityKind::ApiKey as i32;
            s.technical_owner.as_mut().unwrap().name = "bob".into();
        }
        if n == 3 {
            s.labels.insert("tier".into(), "1".into());
            s.display_name = "Ledger Writer".into();
        }
        if n == 5 {
            s.environment = "staging".into();
        }
        ids.push(create(&mut client, s).await.id);
    }
    let list = |filter: pb::IdentityFilter, page_size: u32, page_token: String| {
        pb::ListIdentitiesRequest {
            filter: Some(filter),
            page_size,
            page_token,
        }
    };
    let found =
        |r: pb::ListIdentitiesResponse| r.identities.into_iter().map(|i| i.id).collect::<Vec<_>>();

    let api_keys = client
        .list_identities(list(
            pb::IdentityFilter {
                kinds: vec![pb::IdentityKind::ApiKey as i32],
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        found(api_keys),
        vec![
            ids[0].clone(),
            ids[2].clone(),
            ids[4].clone(),
            ids[6].clone()
        ]
    );

    let bob = client
        .list_identities(list(
            pb::IdentityFilter {
                owner: "bob".into(),
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bob.identities.len(), 4);
    let team = client
        .list_identities(list(
            pb::IdentityFilter {
                owner: "team-billing".into(),
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(team.identities.len(), 7);

    for filter in [
        pb::IdentityFilter {
            label: "tier=1".into(),
            ..Default::default()
        },
        pb::IdentityFilter {
            label: "tier".into(),
            ..Default::default()
        },
        pb::IdentityFilter {
            text: "ledger wri".into(),
            ..Default::default()
        },
    ] {
        let r = client
            .list_identities(list(filter.clone(), 0, String::new()))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found(r), vec![ids[3].clone()], "{filter:?}");
    }
    let staging = client
        .list_identities(list(
            pb::IdentityFilter {
                environment: "staging".into(),
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found(staging), vec![ids[5].clone()]);
    // `%` is matched literally, not as a wildcard.
    let none = client
        .list_identities(list(
            pb::IdentityFilter {
                text: "%".into(),
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(none.identities.is_empty());

    // Paging returns everything once, in creation order.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_identities(list(pb::IdentityFilter::default(), 3, token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.identities.len() <= 3);
        seen.extend(page.identities.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);

    let err = client
        .list_identities(list(
            pb::IdentityFilter {
                states: vec![42],
                ..Default::default()
            },
            0,
            String::new(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("filter.states[0]"),
        "{}",
        err.message()
    );
    let err = client
        .list_identities(list(pb::IdentityFilter::default(), 0, "garbage".into()))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_token"));
}

async fn transition(
    client: &mut steward_integration_tests::inventory::Client,
    id: &str,
    target: pb::LifecycleState,
) -> Result<pb::TransitionStateResponse, tonic::Status> {
    client
        .transition_state(pb::TransitionStateRequest {
            id: id.into(),
            target_state: target as i32,
            reason: format!("test: to {target:?}"),
            expected_version: 0,
            context: Some(pb::ChangeContext {
                incident_ref: "INC-7".into(),
                correlation_id: "corr-7".into(),
            }),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn lifecycle_transitions_follow_the_state_machine_and_reach_audit() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let id = create(&mut client, spec("tok-life")).await.id;
    use pb::LifecycleState::*;

    let watch = transition(&mut client, &id, Watchlisted).await.unwrap();
    assert!(watch.transition.as_ref().unwrap().reversible);
    assert_eq!(
        watch.transition.as_ref().unwrap().actor,
        "spiffe://steward.test/operator/admin"
    );
    transition(&mut client, &id, Restricted).await.unwrap();
    // Reversible: undo back to active.
    transition(&mut client, &id, Active).await.unwrap();
    let err = transition(&mut client, &id, Active).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let revoked = transition(&mut client, &id, Revoked).await.unwrap();
    assert!(!revoked.transition.as_ref().unwrap().reversible);
    for target in [Active, Watchlisted, Suspended] {
        let err = transition(&mut client, &id, target).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{target:?}");
        assert!(
            err.message().contains("cannot be undone"),
            "{}",
            err.message()
        );
    }
    let done = transition(&mut client, &id, Decommissioned).await.unwrap();
    assert_eq!(done.identity.as_ref().unwrap().state, Decommissioned as i32);
    assert_eq!(
        transition(&mut client, &id, Revoked)
            .await
            .unwrap_err()
            .code(),
        Code::FailedPrecondition
    );

    let err = client
        .transition_state(pb::TransitionStateRequest {
            id: id.clone(),
            target_state: Active as i32,
            reason: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.message(), "reason: is required");
    let err = client
        .transition_state(pb::TransitionStateRequest {
            id: id.clone(),
            target_state: 0,
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().starts_with("target_state"),
        "{}",
        err.message()
    );

    let history = client
        .list_transitions(pb::ListTransitionsRequest {
            identity_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .transitions;
    let path: Vec<i32> = history.iter().map(|t| t.to_state).collect();
    assert_eq!(
        path,
        vec![
            Watchlisted as i32,
            Restricted as i32,
            Active as i32,
            Revoked as i32,
            Decommissioned as i32
        ]
    );
    assert!(history.iter().all(|t| t.incident_ref == "INC-7"));

    // Creation plus five transitions, in order, in the evidence log
    // (beside authority's record of each transition's decision).
    let evidence: Vec<_> = stack
        .evidence_of(&id, "identity.decommission", 1)
        .await
        .into_iter()
        .filter(|e| e.record.as_ref().unwrap().emitting_service == "inventory")
        .collect();
    let actions: Vec<String> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.clone())
        .collect();
    assert_eq!(
        actions,
        vec![
            "identity.create",
            "identity.watchlist",
            "identity.restrict",
            "identity.reinstate",
            "identity.revoke",
            "identity.decommission",
        ]
    );
    let revoke = evidence[4].record.as_ref().unwrap();
    assert_eq!(revoke.incident_ref, "INC-7");
    assert_eq!(revoke.correlation_id, "corr-7");
    assert_eq!(revoke.emitting_service, "inventory");
    assert_eq!(
        revoke.attributes.get("reversible").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        evidence[4].appended_by,
        "spiffe://steward.test/service/inventory"
    );
}

#[tokio::test]
async fn concurrent_transitions_are_each_applied_once() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(create(&mut client, spec(&format!("tok-c{n}"))).await.id);
    }
    // Every identity gets watchlist then suspend, all at once; a second
    // watchlist of the same identity in the same burst must fail.
    let mut tasks = Vec::new();
    for id in &ids {
        for target in [
            pb::LifecycleState::Watchlisted,
            pb::LifecycleState::Watchlisted,
        ] {
            let mut c = client.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                transition(&mut c, &id, target).await
            }));
        }
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) if e.code() == Code::FailedPrecondition => refused += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!((ok, refused), (20, 20));
    for id in &ids {
        let i = client
            .get_identity(pb::GetIdentityRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .identity
            .unwrap();
        assert_eq!(i.state, pb::LifecycleState::Watchlisted as i32);
        assert_eq!(i.version, 2);
    }
}

#[tokio::test]
async fn signals_drive_the_risk_score_with_reasons() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let mut s = spec("tok-risk");
    s.expire_time = Some(days_from_now(60));
    let id = create(&mut client, s).await.id;
    let baseline = client
        .get_identity(pb::GetIdentityRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(baseline.risk.unwrap().score, 0);

    let mut scanner = stack.inventory_caller("/automation/secret-scanner").await;
    let added = scanner
        .add_signal(pb::AddSignalRequest {
            identity_id: id.clone(),
            kind: pb::SignalKind::SecretExposed as i32,
            severity: pb::Severity::Critical as i32,
            source: "secret-scanner".into(),
            evidence_ref: "https://scanner.example.test/findings/991".into(),
            summary: "token found in a public repository".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let signal = added.signal.unwrap();
    assert_eq!(
        signal.reported_by,
        "spiffe://steward.test/automation/secret-scanner"
    );
    let risk = added.risk.unwrap();
    assert_eq!(risk.score, 50);
    assert_eq!(risk.reasons, vec!["1 open signal: critical secret_exposed"]);

    for (req, field) in [
        (
            pb::AddSignalRequest {
                identity_id: id.clone(),
                kind: 77,
                severity: 1,
                source: "s".into(),
                ..Default::default()
            },
            "kind",
        ),
        (
            pb::AddSignalRequest {
                identity_id: id.clone(),
                kind: 1,
                severity: 0,
                source: "s".into(),
                ..Default::default()
            },
            "severity",
        ),
        (
            pb::AddSignalRequest {
                identity_id: id.clone(),
                kind: 1,
                severity: 1,
                source: String::new(),
                ..Default::default()
            },
            "source",
        ),
        (
            pb::AddSignalRequest {
                identity_id: id.clone(),
                kind: 1,
                severity: 1,
                source: "s".into(),
                observe_time: Some(days_from_now(2)),
                ..Default::default()
            },
            "observe_time",
        ),
    ] {
        let err = scanner.add_signal(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(field),
            "{field}: {}",
            err.message()
        );
    }
    let err = scanner
        .add_signal(pb::AddSignalRequest {
            identity_id: uuid::Uuid::now_v7().to_string(),
            kind: 1,
            severity: 1,
            source: "s".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let resolved = client
        .resolve_signal(pb::ResolveSignalRequest {
            signal_id: signal.id.clone(),
            resolution: "token rotated and revoked".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resolved.risk.unwrap().score, 0);
    assert_eq!(
        resolved.signal.unwrap().status,
        pb::SignalStatus::Resolved as i32
    );
    let err = client
        .resolve_signal(pb::ResolveSignalRequest {
            signal_id: signal.id.clone(),
            resolution: "again".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let open = client
        .list_signals(pb::ListSignalsRequest {
            identity_id: id.clone(),
            open_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(open.signals.is_empty());
    let all = client
        .list_signals(pb::ListSignalsRequest {
            identity_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.signals.len(), 1);

    let evidence = stack.evidence_for(&id, 3).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.as_str())
        .collect();
    assert_eq!(
        actions,
        vec!["identity.create", "signal.add", "signal.resolve"]
    );
}

#[tokio::test]
async fn callers_are_held_to_their_roles() {
    let stack = TestStack::start().await;
    let mut operator = stack.inventory().await;
    let id = create(&mut operator, spec("tok-authz")).await.id;

    let mut auditor = stack.inventory_caller("/auditor/grc").await;
    auditor
        .get_identity(pb::GetIdentityRequest { id: id.clone() })
        .await
        .unwrap();
    let err = auditor
        .create_identity(pb::CreateIdentityRequest {
            identity: Some(spec("x")),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Automation may report signals but not move the lifecycle; authority may.
    let mut bot = stack.inventory_caller("/automation/soar").await;
    let err = transition(&mut bot, &id, pb::LifecycleState::Suspended)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut authority = stack.inventory_caller("/service/authority").await;
    transition(&mut authority, &id, pb::LifecycleState::Watchlisted)
        .await
        .unwrap();

    // A workload with no role at all reads nothing.
    let mut stranger = stack.inventory_caller("/workload/payments").await;
    let err = stranger
        .get_identity(pb::GetIdentityRequest { id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn changes_commit_while_audit_is_down_and_their_evidence_arrives_later() {
    let mut stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let audit_addr = stack.service("audit").addr;
    stack.stop("audit").await;

    let id = create(&mut client, spec("tok-outage")).await.id;
    transition(&mut client, &id, pb::LifecycleState::Suspended)
        .await
        .unwrap();
    let stored = client
        .get_identity(pb::GetIdentityRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(stored.state, pb::LifecycleState::Suspended as i32);

    stack.restart_on("audit", audit_addr).await;
    let evidence = stack.evidence_of(&id, "identity.suspend", 1).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap())
        .filter(|r| r.emitting_service == "inventory")
        .map(|r| r.action.as_str())
        .collect();
    assert_eq!(actions, vec!["identity.create", "identity.suspend"]);
}
