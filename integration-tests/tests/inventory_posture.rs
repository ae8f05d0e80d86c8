//! Entitlements, observed usage, owners and the posture reports, through
//! the public API: each report finds what it should, with its reasons.

use steward_integration_tests::TestStack;
use steward_integration_tests::inventory::{Client, create, days_from_now, spec};
use steward_proto::steward::inventory::v1 as pb;
use tonic::Code;

async fn report(
    client: &mut Client,
    report: pb::PostureReport,
    days: u32,
    as_of: Option<i64>,
) -> pb::GetPostureReportResponse {
    client
        .get_posture_report(pb::GetPostureReportRequest {
            report: report as i32,
            days,
            as_of: as_of.map(days_from_now),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

fn ids(r: &pb::GetPostureReportResponse) -> Vec<String> {
    r.findings.iter().map(|f| f.identity_id.clone()).collect()
}

#[tokio::test]
async fn entitlements_record_grants_and_observed_use() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let id = create(&mut client, spec("tok-ent")).await.id;

    let grant = |system: &str, permission: &str, resource: &str| pb::GrantEntitlementRequest {
        identity_id: id.clone(),
        system: system.into(),
        permission: permission.into(),
        resource: resource.into(),
        context: None,
    };
    let first = client
        .grant_entitlement(grant("github", "contents:write", "acme/ledger"))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let again = client
        .grant_entitlement(grant("github", "contents:write", "acme/ledger"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.created);
    client
        .grant_entitlement(grant("github", "admin:org", ""))
        .await
        .unwrap();
    let err = client
        .grant_entitlement(grant("", "x", "y"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "system: is required")
    );

    // A use of a granted permission, and of one that was never granted.
    let mut bot = stack.inventory_caller("/automation/usage-collector").await;
    let used = bot
        .record_usage(pb::RecordUsageRequest {
            identity_id: id.clone(),
            system: "github".into(),
            permission: "contents:write".into(),
            resource: "acme/ledger".into(),
            consumer: "billing-sync".into(),
            use_time: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entitlement
        .unwrap();
    assert!(used.granted);
    assert_eq!(used.use_count, 1);
    let observed = bot
        .record_usage(pb::RecordUsageRequest {
            identity_id: id.clone(),
            system: "github".into(),
            permission: "issues:write".into(),
            resource: "acme/ledger".into(),
            consumer: "billing-sync".into(),
            use_time: None,
        })
        .await
        .unwrap()
        .into_inner()
        .entitlement
        .unwrap();
    assert!(!observed.granted);

    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_entitlements(pb::ListEntitlementsRequest {
                identity_id: id.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.entitlements);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let names: Vec<String> = all
        .iter()
        .map(|e| format!("{}:{}:{}", e.system, e.permission, e.resource))
        .collect();
    assert_eq!(
        names,
        vec![
            "github:admin:org:*",
            "github:contents:write:acme/ledger",
            "github:issues:write:acme/ledger"
        ]
    );

    // The never-used admin grant is what makes the identity over-privileged
    // a year from now; the used one is not listed.
    let over = report(
        &mut client,
        pb::PostureReport::OverPrivileged,
        90,
        Some(365),
    )
    .await;
    assert_eq!(ids(&over), vec![id.clone()]);
    let reason = &over.findings[0].reasons[0];
    assert!(
        reason.starts_with("2 granted permissions unused"),
        "{reason}"
    );
    assert!(reason.contains("github:admin:org on *"), "{reason}");
    assert!(
        report(&mut client, pb::PostureReport::OverPrivileged, 90, None)
            .await
            .findings
            .is_empty()
    );

    client
        .remove_entitlement(pb::RemoveEntitlementRequest {
            identity_id: id.clone(),
            system: "github".into(),
            permission: "admin:org".into(),
            resource: String::new(),
            reason: "least privilege".into(),
            context: None,
        })
        .await
        .unwrap();
    let err = client
        .remove_entitlement(pb::RemoveEntitlementRequest {
            identity_id: id.clone(),
            system: "github".into(),
            permission: "admin:org".into(),
            resource: String::new(),
            reason: "twice".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let evidence = stack.evidence_for(&id, 6).await;
    let actions: Vec<&str> = evidence
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.as_str())
        .collect();
    assert_eq!(actions.len(), 6, "{actions:?}");
    assert_eq!(
        actions,
        vec![
            "identity.create",
            "entitlement.grant",
            "entitlement.grant",
            "identity.use",
            "identity.use",
            "entitlement.remove"
        ]
    );
}

#[tokio::test]
async fn posture_reports_find_what_they_name_with_reasons() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;

    let mut s = spec("stale");
    s.last_use_time = Some(days_from_now(-200));
    s.expire_time = Some(days_from_now(400));
    s.last_rotate_time = Some(days_from_now(-10));
    let stale = create(&mut client, s).await.id;

    let mut s = spec("expiring");
    s.expire_time = Some(days_from_now(10));
    s.last_use_time = Some(days_from_now(-1));
    s.last_rotate_time = Some(days_from_now(-1));
    let expiring = create(&mut client, s).await.id;

    let mut s = spec("expired");
    s.expire_time = Some(days_from_now(-3));
    s.last_use_time = Some(days_from_now(-1));
    s.last_rotate_time = Some(days_from_now(-1));
    let expired = create(&mut client, s).await.id;

    let mut s = spec("forever");
    s.last_rotate_time = Some(days_from_now(-400));
    s.last_use_time = Some(days_from_now(-1));
    let forever = create(&mut client, s).await.id;

    let stale_report = report(&mut client, pb::PostureReport::Stale, 90, None).await;
    assert_eq!(ids(&stale_report), vec![stale.clone()]);
    assert!(
        stale_report.findings[0].reasons[0].starts_with("unused for 200 days"),
        "{:?}",
        stale_report.findings[0].reasons
    );
    assert_eq!(stale_report.total, 1);

    let soon = report(&mut client, pb::PostureReport::Expiring, 30, None).await;
    assert_eq!(ids(&soon), vec![expiring.clone()]);
    assert!(
        soon.findings[0].reasons[0].starts_with("expires in 9 days")
            || soon.findings[0].reasons[0].starts_with("expires in 10 days")
    );

    let past = report(&mut client, pb::PostureReport::ExpiredButActive, 0, None).await;
    assert_eq!(ids(&past), vec![expired.clone()]);
    assert!(past.findings[0].reasons[0].contains("and is still active"));
    // Suspended identities cannot act, so they are not "expired but active".
    client
        .transition_state(pb::TransitionStateRequest {
            id: expired.clone(),
            target_state: pb::LifecycleState::Suspended as i32,
            reason: "expired".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        report(&mut client, pb::PostureReport::ExpiredButActive, 0, None)
            .await
            .findings
            .is_empty()
    );

    let never = report(&mut client, pb::PostureReport::NoExpiry, 0, None).await;
    assert_eq!(ids(&never), vec![forever.clone()]);
    let old = report(&mut client, pb::PostureReport::LongLivedSecret, 90, None).await;
    assert_eq!(ids(&old), vec![forever.clone()]);
    assert!(old.findings[0].reasons[0].starts_with("not rotated for 400 days"));

    // A year from now, everything not used since is stale, most stale first.
    let later = report(&mut client, pb::PostureReport::Stale, 90, Some(365)).await;
    assert_eq!(
        later.findings.first().map(|f| f.identity_id.clone()),
        Some(stale.clone())
    );
    assert_eq!(later.total, 4);

    // Shared: one credential used by two unrelated consumers.
    for consumer in ["billing-sync", "marketing-export"] {
        client
            .record_usage(pb::RecordUsageRequest {
                identity_id: forever.clone(),
                consumer: consumer.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let shared = report(&mut client, pb::PostureReport::Shared, 0, None).await;
    assert_eq!(ids(&shared), vec![forever.clone()]);
    assert_eq!(
        shared.findings[0].reasons,
        vec!["used by 2 consumers: billing-sync, marketing-export"]
    );

    // Orphaned: alice leaves; every identity she owns is orphaned.
    let owned = client
        .set_owner_status(pb::SetOwnerStatusRequest {
            owner: "alice".into(),
            departed: true,
            reason: "left the company".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner()
        .owned_identities;
    assert_eq!(owned, 4);
    let orphans = report(&mut client, pb::PostureReport::Orphaned, 0, None).await;
    assert_eq!(orphans.total, 4);
    assert!(
        orphans.findings[0]
            .reasons
            .contains(&"technical owner alice has departed".to_owned())
    );
    let risk = client
        .get_identity(pb::GetIdentityRequest { id: stale.clone() })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap()
        .risk
        .unwrap();
    assert!(
        risk.reasons.contains(&"an owner has departed".to_owned()),
        "{risk:?}"
    );
    client
        .set_owner_status(pb::SetOwnerStatusRequest {
            owner: "alice".into(),
            departed: false,
            reason: "returned".into(),
            context: None,
        })
        .await
        .unwrap();
    assert_eq!(
        report(&mut client, pb::PostureReport::Orphaned, 0, None)
            .await
            .total,
        0
    );

    // Paging through a keyed report yields each finding once.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_posture_report(pb::GetPostureReportRequest {
                report: pb::PostureReport::Stale as i32,
                days: 90,
                as_of: Some(days_from_now(365)),
                page_size: 1,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(ids(&page));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 4);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 4);

    let err = client
        .get_posture_report(pb::GetPostureReportRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.message(), "report: is required");
    let err = client
        .get_posture_report(pb::GetPostureReportRequest {
            report: 1,
            page_token: "1.nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("page_token"));
}
