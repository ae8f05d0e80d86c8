//! Imports of real estates, as a security engineer reads them on the day of
//! import: source creation dates make never-used credentials stale and
//! long-lived at once, estates of two accounts or clusters never collide,
//! Kubernetes annotations carry owners, purpose and the cloud role a
//! ServiceAccount may assume, and a principal holding two live keys is
//! reported. Run on both engines with the rest of the suite.

use steward_integration_tests::TestStack;
use steward_integration_tests::imports::{entitlements, identity, import, reasons, report, sample};
use steward_proto::steward::inventory::v1 as pb;

/// The sample report's account.
const ACCOUNT: &str = "aws-iam:123456789012";

#[tokio::test]
async fn the_aws_report_is_right_on_the_day_of_import_and_accounts_never_collide() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let first = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        sample("aws-iam-credential-report.csv"),
        "",
    )
    .await;
    assert_eq!(first.created, 4, "{first:?}");
    assert!(first.drift.iter().all(|d| d.source_system == ACCOUNT));

    // legacy-backup's key was created in 2018 and never used: stale and
    // long-lived today, counted from the key's creation, not the import.
    let legacy = identity(
        &mut client,
        ACCOUNT,
        "arn:aws:iam::123456789012:user/svc/legacy-backup#access_key_1",
    )
    .await;
    assert_eq!(legacy.source_create_time.unwrap().seconds, 1_542_732_600);
    let stale = report(&mut client, pb::PostureReport::Stale).await;
    let why = reasons(&stale, "legacy-backup access key 1").expect("stale");
    assert!(
        why[0].starts_with("never used; created") && why[0].ends_with("(2018-11-20)"),
        "{why:?}"
    );
    // ci-deployer's second key was last used in April 2025.
    assert!(reasons(&stale, "ci-deployer access key 2").is_some());
    assert!(
        reasons(&stale, "billing-sync access key 1").is_none(),
        "used 2026-11-27"
    );
    let long_lived = report(&mut client, pb::PostureReport::LongLivedSecret).await;
    for name in [
        "legacy-backup access key 1",
        "billing-sync access key 1",
        "ci-deployer access key 2",
    ] {
        assert!(
            reasons(&long_lived, name).is_some(),
            "{name}: {long_lived:?}"
        );
    }

    // ci-deployer holds two active keys: each is on the report, naming
    // the other.
    let multiple = report(&mut client, pb::PostureReport::MultipleActiveKeys).await;
    assert_eq!(multiple.len(), 2, "{multiple:?}");
    let why = reasons(&multiple, "ci-deployer access key 1").expect("listed");
    assert!(
        why[0].contains("1 other active api_key")
            && why[0].contains("user/svc/ci-deployer")
            && why[0].contains("ci-deployer access key 2"),
        "{why:?}"
    );

    // Once one of the two is suspended, neither is reported.
    let second = identity(
        &mut client,
        ACCOUNT,
        "arn:aws:iam::123456789012:user/svc/ci-deployer#access_key_2",
    )
    .await;
    client
        .transition_state(pb::TransitionStateRequest {
            id: second.id.clone(),
            target_state: pb::LifecycleState::Suspended as i32,
            reason: "rotation finished; old key kept for a week".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        report(&mut client, pb::PostureReport::MultipleActiveKeys)
            .await
            .is_empty()
    );

    // A second account's report is its own estate: nothing of the first
    // vanishes, and the same user name is another identity.
    let other = String::from_utf8(sample("aws-iam-credential-report.csv"))
        .unwrap()
        .replace("123456789012", "210987654321");
    let second_account = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        other.into_bytes(),
        "",
    )
    .await;
    assert_eq!((second_account.created, second_account.vanished), (4, 0));
    let again = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        sample("aws-iam-credential-report.csv"),
        "",
    )
    .await;
    assert_eq!((again.created, again.unchanged, again.vanished), (0, 4, 0));

    // The flag names the estate outright.
    let named = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        sample("aws-iam-credential-report.csv"),
        "aws-prod",
    )
    .await;
    assert_eq!(named.created, 4);
    assert!(named.drift.iter().all(|d| d.source_system == "aws-prod"));
}

#[tokio::test]
async fn kubernetes_annotations_carry_owners_purpose_and_cloud_roles() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let imported = import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        sample("kubernetes-serviceaccounts.json"),
        "kubernetes:prod-eu",
    )
    .await;
    assert_eq!(
        (imported.rows, imported.created, imported.rejected),
        (6, 5, 1)
    );

    let exporter = identity(&mut client, "kubernetes:prod-eu", "billing/exporter").await;
    assert_eq!(exporter.technical_owner.as_ref().unwrap().name, "dana");
    assert_eq!(exporter.purpose, "exports invoices to the data lake");
    assert!(exporter.unowned, "no business owner yet");
    assert_eq!(exporter.source_create_time.unwrap().seconds, 1_678_780_800);
    let label = |i: &pb::Identity, k: &str| i.labels.get(k).cloned();
    assert_eq!(
        label(&exporter, "k8s/automount-token").as_deref(),
        Some("false")
    );
    assert_eq!(label(&exporter, "k8s/token-secrets").as_deref(), Some("1"));
    assert_eq!(
        label(&exporter, "eks.amazonaws.com/role-arn").as_deref(),
        Some("arn:aws:iam::123456789012:role/billing-exporter")
    );
    assert_eq!(
        label(
            &exporter,
            "kubectl.kubernetes.io/last-applied-configuration"
        ),
        None,
        "kubectl's copy of the object is not a label"
    );
    let role = (
        "aws".to_owned(),
        "sts:AssumeRoleWithWebIdentity".to_owned(),
        "arn:aws:iam::123456789012:role/billing-exporter".to_owned(),
    );
    assert_eq!(
        entitlements(&mut client, &exporter.id).await,
        vec![role.clone()]
    );

    let reporter = identity(&mut client, "kubernetes:prod-eu", "analytics/reporter").await;
    let owner = reporter.technical_owner.clone().unwrap();
    assert_eq!(
        (owner.name.as_str(), owner.kind, owner.contact.as_str()),
        ("team-analytics", pb::OwnerKind::Team as i32, "#analytics")
    );
    assert_eq!(
        label(&reporter, "k8s/automount-token").as_deref(),
        Some("true")
    );
    assert_eq!(
        entitlements(&mut client, &reporter.id).await,
        vec![(
            "gcp".to_owned(),
            "roles/iam.workloadIdentityUser".to_owned(),
            "reporting@acme-analytics.iam.gserviceaccount.com".to_owned()
        )]
    );

    // Created in 2023 and never seen used: stale on the day of import.
    let stale = report(&mut client, pb::PostureReport::Stale).await;
    let why = reasons(&stale, "billing/exporter").expect("stale");
    assert!(why[0].ends_with("(2023-03-14)"), "{why:?}");

    // An operator grants the exporter something by hand; the next export
    // drops the IRSA annotation. The import withdraws only its own grant.
    client
        .grant_entitlement(pb::GrantEntitlementRequest {
            identity_id: exporter.id.clone(),
            system: "aws".into(),
            permission: "s3:PutObject".into(),
            resource: "arn:aws:s3:::invoices/*".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let without_role = String::from_utf8(sample("kubernetes-serviceaccounts.json"))
        .unwrap()
        .replace(
            "\"eks.amazonaws.com/role-arn\": \"arn:aws:iam::123456789012:role/billing-exporter\",",
            "",
        );
    let next = import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        without_role.into_bytes(),
        "kubernetes:prod-eu",
    )
    .await;
    let changed = next
        .drift
        .iter()
        .find(|d| d.external_id == "billing/exporter")
        .expect("drift");
    assert!(
        changed.fields.contains(&"entitlements".to_owned()),
        "{changed:?}"
    );
    assert_eq!(
        entitlements(&mut client, &exporter.id).await,
        vec![(
            "aws".to_owned(),
            "s3:PutObject".to_owned(),
            "arn:aws:s3:::invoices/*".to_owned()
        )]
    );

    // Nothing is granted to a revoked account: a later export naming a
    // role for it changes its labels, never its entitlements.
    let reporter = identity(&mut client, "kubernetes:prod-eu", "analytics/reporter").await;
    client
        .transition_state(pb::TransitionStateRequest {
            id: reporter.id.clone(),
            target_state: pb::LifecycleState::Revoked as i32,
            reason: "the reporting job was retired".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let relinked = String::from_utf8(sample("kubernetes-serviceaccounts.json"))
        .unwrap()
        .replace(
            "\"team\": \"team-analytics\",",
            "\"team\": \"team-analytics\", \"eks.amazonaws.com/role-arn\": \"arn:aws:iam::123456789012:role/admin\",",
        );
    import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        relinked.into_bytes(),
        "kubernetes:prod-eu",
    )
    .await;
    let held = entitlements(&mut client, &reporter.id).await;
    assert!(
        held.iter()
            .all(|(_, _, resource)| !resource.ends_with("role/admin")),
        "{held:?}"
    );

    // A second cluster's default/default is another identity, and the
    // first cluster's accounts do not vanish.
    let other = import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        sample("kubernetes-serviceaccounts.json"),
        "kubernetes:prod-us",
    )
    .await;
    assert_eq!((other.created, other.vanished), (5, 0));

    // Owner annotations are configurable: here `owner` is not one.
    let custom = client
        .import_identities(pb::ImportIdentitiesRequest {
            format: pb::ImportFormat::KubernetesServiceAccounts as i32,
            content: sample("kubernetes-serviceaccounts.json"),
            source_system: "kubernetes:staging".into(),
            owner_annotations: vec!["team".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(custom.created, 5);
    let exporter = identity(&mut client, "kubernetes:staging", "billing/exporter").await;
    assert!(exporter.technical_owner.is_none());
    let refused = client
        .import_identities(pb::ImportIdentitiesRequest {
            format: pb::ImportFormat::KubernetesServiceAccounts as i32,
            content: sample("kubernetes-serviceaccounts.json"),
            owner_annotations: vec!["bad key\u{7}".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("owner_annotations[0]:"),
        "{}",
        refused.message()
    );
    assert!(!refused.message().contains('\u{7}'));
}

#[tokio::test]
async fn what_the_import_doc_promises_holds() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;

    // Owners without contacts import (contacts are optional).
    let csv = b"kind,external_id,purpose,business_owner,technical_owner\n\
        api_key,key-1,nightly export,team-data,erin\n"
        .to_vec();
    let imported = import(&mut client, pb::ImportFormat::Csv, csv, "vault").await;
    assert_eq!(
        (imported.created, imported.rejected),
        (1, 0),
        "{imported:?}"
    );
    let key = identity(&mut client, "vault", "key-1").await;
    assert!(!key.unowned);
    assert_eq!(key.business_owner.unwrap().contact, "");

    // An identity filed unowned leaves the orphaned report once an update
    // supplies both owners and a purpose.
    let bare = import(
        &mut client,
        pb::ImportFormat::Csv,
        b"kind,external_id\napi_key,key-2\n".to_vec(),
        "vault",
    )
    .await;
    assert_eq!(bare.created, 1);
    let key = identity(&mut client, "vault", "key-2").await;
    assert!(key.unowned);
    let orphaned = report(&mut client, pb::PostureReport::Orphaned).await;
    assert!(reasons(&orphaned, "key-2").is_some());
    let owner = |name: &str| pb::Owner {
        kind: pb::OwnerKind::Person as i32,
        name: name.into(),
        contact: String::new(),
    };
    let updated = client
        .update_identity(pb::UpdateIdentityRequest {
            id: key.id.clone(),
            identity: Some(pb::IdentitySpec {
                business_owner: Some(owner("frank")),
                technical_owner: Some(owner("gita")),
                purpose: "signs release artefacts".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec![
                    "business_owner".into(),
                    "technical_owner".into(),
                    "purpose".into(),
                ],
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert!(!updated.unowned);
    let orphaned = report(&mut client, pb::PostureReport::Orphaned).await;
    assert!(reasons(&orphaned, "key-2").is_none(), "{orphaned:?}");
    let evidence = stack.evidence_for(&key.id, 2).await;
    let fields = &evidence[1].record.as_ref().unwrap().attributes["fields"];
    assert!(fields.ends_with(",unowned"), "{fields}");

    // A truncated Kubernetes list names the item that broke.
    let whole = sample("kubernetes-serviceaccounts.json");
    let cut = whole[..whole.len() / 2].to_vec();
    let truncated = import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        cut,
        "k",
    )
    .await;
    assert_eq!(truncated.created, 0);
    let error = &truncated.errors[0];
    assert_eq!(error.field, "content");
    assert!((2..=4).contains(&error.line), "{error:?}");
    assert!(
        error.reason.contains(&format!("item {}", error.line)),
        "{error:?}"
    );

    // A binary file is refused in every format without its bytes coming
    // back.
    let mut binary =
        b"\x00\x01\x02kind\x1b[31m,\x07external_id\n\x7f\x00api_key,\x1b]0;x\x07\n".to_vec();
    binary.extend((0u8..=255).collect::<Vec<_>>());
    for format in [
        pb::ImportFormat::AwsIamCredentialReport,
        pb::ImportFormat::KubernetesServiceAccounts,
        pb::ImportFormat::Csv,
        pb::ImportFormat::Json,
    ] {
        let refused = import(&mut client, format, binary.clone(), "binary").await;
        assert_eq!(refused.created, 0, "{format:?}");
        assert!(!refused.errors.is_empty(), "{format:?}");
        for e in &refused.errors {
            for text in [&e.field, &e.reason] {
                assert!(
                    !text.chars().any(|c| c.is_control()),
                    "{format:?} echoed a control character: {e:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn authorization_details_make_roles_nhis_with_their_policies_as_entitlements() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let authz = sample("aws-iam-authorization-details.json");
    let imported = import(
        &mut client,
        pb::ImportFormat::AwsIamAuthorizationDetails,
        authz.clone(),
        "",
    )
    .await;
    // Three users and four roles; one role's CreateDate is not a date.
    assert_eq!(
        (imported.rows, imported.created, imported.rejected),
        (7, 6, 1)
    );
    let error = &imported.errors[0];
    assert_eq!(
        (error.line, error.field.as_str()),
        (4, "RoleDetailList[3].CreateDate")
    );
    assert!(error.reason.contains("RFC 3339"), "{error:?}");

    let arn = |path: &str| format!("arn:aws:iam::123456789012:{path}");
    let exporter = identity(&mut client, ACCOUNT, &arn("role/billing-exporter")).await;
    assert_eq!(exporter.kind, pb::IdentityKind::WorkloadIdentity as i32);
    assert!(!exporter.unowned, "owners and purpose come from the tags");
    assert_eq!(exporter.technical_owner.as_ref().unwrap().name, "dana");
    assert_eq!(
        exporter.last_use_time.as_ref().unwrap().seconds,
        1_796_076_604
    );
    assert!(exporter.labels["aws/trusted-by"].contains(":oidc-provider/oidc.eks."));
    assert_eq!(
        entitlements(&mut client, &exporter.id).await,
        vec![(
            "aws".to_owned(),
            "s3:PutObject".to_owned(),
            "arn:aws:s3:::acme-lake/invoices/*".to_owned()
        )]
    );
    // Group policies are the user's; a managed policy the export does not
    // carry is held whole; a policy's default version is the one read.
    let ci = identity(&mut client, ACCOUNT, &arn("user/svc/ci-deployer")).await;
    assert_eq!(ci.kind, pb::IdentityKind::ServiceAccount as i32);
    let held: Vec<(String, String)> = entitlements(&mut client, &ci.id)
        .await
        .into_iter()
        .map(|(_, p, r)| (p, r))
        .collect();
    assert_eq!(
        held,
        vec![
            (
                "cloudformation:CreateStack".to_owned(),
                "arn:aws:cloudformation:*:123456789012:stack/app-*/*".to_owned()
            ),
            (
                "cloudformation:UpdateStack".to_owned(),
                "arn:aws:cloudformation:*:123456789012:stack/app-*/*".to_owned()
            ),
            (
                "iam:PassRole".to_owned(),
                "arn:aws:iam::123456789012:role/app-*".to_owned()
            ),
            (
                "policy/PowerUserAccess".to_owned(),
                "arn:aws:iam::aws:policy/PowerUserAccess".to_owned()
            ),
        ]
    );
    let etl = identity(&mut client, ACCOUNT, &arn("role/nightly-etl")).await;
    assert_eq!(
        etl.labels["aws/trusted-by"], "glue.amazonaws.com",
        "URL-encoded trust policy"
    );
    let support = identity(
        &mut client,
        ACCOUNT,
        &arn("role/aws-service-role/support.amazonaws.com/AWSServiceRoleForSupport"),
    )
    .await;
    assert_eq!(support.labels["aws/service-linked"], "true");

    // On the day of import: nightly-etl holds AdministratorAccess, was
    // made in 2022 and never used: over-privileged and stale. The roles
    // used within 90 days are neither; users have no use in this export,
    // so nothing says their permissions are unused.
    let over = report(&mut client, pb::PostureReport::OverPrivileged).await;
    assert_eq!(over.len(), 1, "{over:?}");
    let why = reasons(&over, "IAM role nightly-etl").expect("over-privileged");
    assert!(why[0].contains("aws:* on *"), "{why:?}");
    let stale = report(&mut client, pb::PostureReport::Stale).await;
    let why = reasons(&stale, "IAM role nightly-etl").expect("stale");
    assert!(why[0].ends_with("(2022-05-20)"), "{why:?}");
    for fresh in [
        "IAM role billing-exporter",
        "IAM role AWSServiceRoleForSupport",
    ] {
        assert!(reasons(&stale, fresh).is_none(), "{fresh}: {stale:?}");
        assert!(reasons(&over, fresh).is_none(), "{fresh}");
    }

    // The credential report is the same estate: neither export reports
    // the other's identities as vanished.
    let keys = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        sample("aws-iam-credential-report.csv"),
        "",
    )
    .await;
    assert_eq!((keys.created, keys.vanished), (4, 0));

    // Next export: nightly-etl's admin policy is detached and the role was
    // used; the same file otherwise. The detached policy is withdrawn.
    let next = String::from_utf8(authz)
        .unwrap()
        .replace(
            "\"AttachedManagedPolicies\": [\n                { \"PolicyName\": \"AdministratorAccess\", \"PolicyArn\": \"arn:aws:iam::aws:policy/AdministratorAccess\" }\n            ],\n            \"Tags\": [],\n            \"RoleLastUsed\": {}",
            "\"AttachedManagedPolicies\": [],\n            \"Tags\": [],\n            \"RoleLastUsed\": { \"LastUsedDate\": \"2026-12-06T01:00:00+00:00\" }",
        );
    let again = import(
        &mut client,
        pb::ImportFormat::AwsIamAuthorizationDetails,
        next.into_bytes(),
        "",
    )
    .await;
    assert_eq!(
        (again.created, again.changed, again.vanished),
        (0, 1, 0),
        "{again:?}"
    );
    assert_eq!(again.drift[0].fields, vec!["last_use_time", "entitlements"]);
    assert!(entitlements(&mut client, &etl.id).await.is_empty());
    assert!(
        report(&mut client, pb::PostureReport::OverPrivileged)
            .await
            .is_empty()
    );
    let evidence = stack.evidence_for(&etl.id, 2).await;
    let attributes = &evidence[1].record.as_ref().unwrap().attributes;
    assert_eq!(attributes["entitlements_withdrawn"], "1");

    // A JSON file that is not the export is refused on line 1.
    let refused = import(
        &mut client,
        pb::ImportFormat::AwsIamAuthorizationDetails,
        b"{\"Users\": [\"SECRETVALUE\"]}".to_vec(),
        "",
    )
    .await;
    assert_eq!(
        (refused.errors[0].line, refused.errors[0].field.as_str()),
        (1, "content")
    );
    assert!(!refused.errors[0].reason.contains("SECRETVALUE"));
}
