//! The cloud and SaaS sources beside AWS and Kubernetes, each from its
//! documented export (`deploy/samples/`): GCP service accounts and keys,
//! Microsoft Entra applications and service principals, GitHub app
//! installations, deploy keys and fine-grained tokens. Each is read as a
//! security engineer would on the day of import, and re-imports, vanished
//! and drift behave as for every other format.

use steward_integration_tests::TestStack;
use steward_integration_tests::imports::{entitlements, identity, import, reasons, report, sample};
use steward_proto::steward::inventory::v1 as pb;

use pb::PostureReport as R;

/// The display names on a report.
fn names(found: &[(String, Vec<String>)]) -> Vec<&str> {
    let mut names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    names
}

#[tokio::test]
async fn gcp_service_accounts_and_their_user_managed_keys() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let content = sample("gcp-service-accounts.json");
    let imported = import(
        &mut client,
        pb::ImportFormat::GcpServiceAccounts,
        content.clone(),
        "",
    )
    .await;
    // Three accounts and three user-managed keys; the Google-managed key
    // is not a credential anyone holds.
    assert_eq!(
        (imported.rows, imported.created, imported.rejected),
        (6, 6, 0),
        "{imported:?}"
    );
    assert!(
        imported
            .drift
            .iter()
            .all(|d| d.source_system == "gcp:acme-prod")
    );

    let source = "gcp:acme-prod";
    let exporter = identity(
        &mut client,
        source,
        "billing-exporter@acme-prod.iam.gserviceaccount.com",
    )
    .await;
    assert_eq!(exporter.kind, pb::IdentityKind::ServiceAccount as i32);
    assert_eq!(exporter.display_name, "Billing exporter");
    assert_eq!(exporter.purpose, "exports invoices to BigQuery");
    let old = identity(
        &mut client,
        source,
        "old-ci@acme-prod.iam.gserviceaccount.com",
    )
    .await;
    assert_eq!(old.state, pb::LifecycleState::Suspended as i32);
    let old_key = identity(
        &mut client,
        source,
        "projects/acme-prod/serviceAccounts/old-ci@acme-prod.iam.gserviceaccount.com/keys/5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e",
    )
    .await;
    assert_eq!(old_key.state, pb::LifecycleState::Suspended as i32);
    assert_eq!(old_key.labels["gcp/key-origin"], "USER_PROVIDED");

    let old_name = "billing-exporter@acme-prod.iam.gserviceaccount.com key 3f1a9c0d2e7b";
    let new_name = "billing-exporter@acme-prod.iam.gserviceaccount.com key 9b8a7c6d5e4f";
    // The 2021 key never expires and was never rotated; the new one
    // expires on 2027-01-01; both are live, so the account holds two.
    assert!(reasons(&report(&mut client, R::NoExpiry).await, old_name).is_some());
    let long = report(&mut client, R::LongLivedSecret).await;
    let why = reasons(&long, old_name).expect("long-lived");
    assert!(why[0].ends_with("(last rotated 2021-03-01)"), "{why:?}");
    assert!(reasons(&long, new_name).is_none());
    let expiring = report(&mut client, R::Expiring).await;
    assert!(reasons(&expiring, new_name).is_some(), "{expiring:?}");
    let multiple = report(&mut client, R::MultipleActiveKeys).await;
    assert_eq!(names(&multiple), vec![old_name, new_name]);

    // The same export again changes nothing; without the new key, it has
    // vanished.
    let again = import(
        &mut client,
        pb::ImportFormat::GcpServiceAccounts,
        content.clone(),
        "",
    )
    .await;
    assert_eq!(
        (
            again.created,
            again.changed,
            again.unchanged,
            again.vanished
        ),
        (0, 0, 6, 0)
    );
    let text = String::from_utf8(content).unwrap();
    let start = text.find("  {\n    \"keyAlgorithm\": \"KEY_ALG_RSA_2048\",\n    \"keyOrigin\": \"GOOGLE_PROVIDED\",\n    \"keyType\": \"USER_MANAGED\",\n    \"name\": \"projects/acme-prod/serviceAccounts/billing-exporter@acme-prod.iam.gserviceaccount.com/keys/9b8a").unwrap();
    let end = start + text[start..].find("},\n").unwrap() + 3;
    let without = format!("{}{}", &text[..start], &text[end..]);
    let next = import(
        &mut client,
        pb::ImportFormat::GcpServiceAccounts,
        without.into_bytes(),
        "",
    )
    .await;
    assert_eq!((next.unchanged, next.vanished), (5, 1), "{next:?}");
}

#[tokio::test]
async fn entra_applications_service_principals_and_their_credentials() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let content = sample("entra-applications.json");
    let imported = import(
        &mut client,
        pb::ImportFormat::EntraApplications,
        content.clone(),
        "",
    )
    .await;
    // Two applications (three and one credentials), three service
    // principals (a managed identity's certificates are Azure's).
    assert_eq!(
        (imported.rows, imported.created, imported.rejected),
        (5, 10, 0),
        "{imported:?}"
    );
    let source = "entra-id";
    let app = "11111111-2222-4333-8444-555555555555";
    let billing = identity(&mut client, source, &format!("application/{app}")).await;
    assert_eq!(billing.kind, pb::IdentityKind::OauthApp as i32);
    assert_eq!(billing.purpose, "syncs invoices from the ledger");
    let owner = billing.technical_owner.clone().unwrap();
    assert_eq!(
        (owner.name.as_str(), owner.contact.as_str()),
        ("erin@acme.example", "erin@acme.example")
    );
    let secret = identity(
        &mut client,
        source,
        &format!("application/{app}/passwordCredentials/f6f6f6f6-0707-4808-9909-0a0a0a0a0a0a"),
    )
    .await;
    assert_eq!(secret.kind, pb::IdentityKind::ApiKey as i32);
    assert_eq!(
        secret.display_name,
        "billing-sync client secret 2025 secret"
    );
    assert_eq!(secret.technical_owner.unwrap().name, "erin@acme.example");
    assert_eq!(secret.labels["azure/secret-hint"], "Qp2");
    let managed = identity(
        &mut client,
        source,
        "servicePrincipal/44444444-5555-4666-8777-888888888888",
    )
    .await;
    assert_eq!(managed.kind, pb::IdentityKind::WorkloadIdentity as i32);
    let disabled = identity(
        &mut client,
        source,
        "servicePrincipal/66666666-7777-4888-8999-000000000000",
    )
    .await;
    assert_eq!(disabled.state, pb::LifecycleState::Suspended as i32);

    // On the day of import: the 2022 secret expired in 2024 and is still
    // there; the certificate expires on 2026-12-20; legacy-reporting's
    // secret never expires and dates from 2019; billing-sync holds two
    // secrets at once.
    let expired = report(&mut client, R::ExpiredButActive).await;
    assert_eq!(
        names(&expired),
        vec!["billing-sync client secret 2022 secret"],
        "the disabled connector's secret is suspended"
    );
    let expiring = report(&mut client, R::Expiring).await;
    assert!(
        reasons(&expiring, "billing-sync certificate CN=billing-sync").is_some(),
        "{expiring:?}"
    );
    let never = "legacy-reporting client secret never expires";
    assert!(reasons(&report(&mut client, R::NoExpiry).await, never).is_some());
    assert!(reasons(&report(&mut client, R::LongLivedSecret).await, never).is_some());
    let multiple = report(&mut client, R::MultipleActiveKeys).await;
    assert_eq!(
        names(&multiple),
        vec![
            "billing-sync client secret 2022 secret",
            "billing-sync client secret 2025 secret"
        ]
    );

    let again = import(
        &mut client,
        pb::ImportFormat::EntraApplications,
        content.clone(),
        "entra-id",
    )
    .await;
    assert_eq!(
        (
            again.created,
            again.changed,
            again.unchanged,
            again.vanished
        ),
        (0, 0, 10, 0)
    );
    // A secret renamed in Entra is a changed identity, named as such.
    let renamed = String::from_utf8(content)
        .unwrap()
        .replace("\"2025 secret\"", "\"current secret\"");
    let drift = import(
        &mut client,
        pb::ImportFormat::EntraApplications,
        renamed.into_bytes(),
        "",
    )
    .await;
    assert_eq!((drift.changed, drift.unchanged), (1, 9));
    assert_eq!(drift.drift[0].fields, vec!["display_name"]);
}

#[tokio::test]
async fn github_installations_deploy_keys_and_fine_grained_tokens() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let content = sample("github-credentials.json");
    let imported = import(
        &mut client,
        pb::ImportFormat::GithubCredentials,
        content.clone(),
        "",
    )
    .await;
    assert_eq!(
        (imported.rows, imported.created, imported.rejected),
        (6, 6, 0),
        "{imported:?}"
    );
    let source = "github:acme";
    let bot = identity(&mut client, source, "installation/25381001").await;
    assert_eq!(bot.kind, pb::IdentityKind::OauthApp as i32);
    let scoped = |p: &str| ("github".to_owned(), p.to_owned(), "acme/*".to_owned());
    assert_eq!(
        entitlements(&mut client, &bot.id).await,
        vec![
            scoped("contents:write"),
            scoped("metadata:read"),
            scoped("pull_requests:write")
        ]
    );
    let suspended = identity(&mut client, source, "installation/25381002").await;
    assert_eq!(suspended.state, pb::LifecycleState::Suspended as i32);
    let deployer = identity(&mut client, source, "deploy-key/acme/payments/501").await;
    assert_eq!(deployer.kind, pb::IdentityKind::SshKey as i32);
    assert_eq!(
        entitlements(&mut client, &deployer.id).await,
        vec![(
            "github".to_owned(),
            "contents:write".to_owned(),
            "acme/payments".to_owned()
        )]
    );
    let token = identity(&mut client, source, "fine-grained-pat/98716").await;
    assert_eq!(token.technical_owner.unwrap().name, "erin");
    assert_eq!(token.expire_time.unwrap().seconds, 1_811_721_600);
    let held = entitlements(&mut client, &token.id).await;
    assert!(
        held.contains(&(
            "github".to_owned(),
            "organization/members:read".to_owned(),
            "acme".to_owned()
        )),
        "{held:?}"
    );
    assert!(held.contains(&(
        "github".to_owned(),
        "contents:write".to_owned(),
        "acme (selected repositories)".to_owned()
    )));

    // On the day of import: the 2019 deploy key and frank's token were
    // never used, so they are stale and hold unused permissions; the
    // installations' use is unknown, so they are neither.
    let old_key = "deploy key old-backup on acme/payments";
    let frank = "token repo-admin-script of frank";
    let stale = report(&mut client, R::Stale).await;
    assert_eq!(names(&stale), vec![old_key, frank], "{stale:?}");
    let over = report(&mut client, R::OverPrivileged).await;
    assert_eq!(names(&over), vec![old_key, frank]);
    let why = reasons(&over, frank).unwrap();
    assert!(
        why[0].contains("github:administration:write on acme/*"),
        "{why:?}"
    );
    assert!(reasons(&report(&mut client, R::NoExpiry).await, frank).is_some());

    // Re-import changes nothing; the old key deleted on GitHub vanishes.
    let again = import(
        &mut client,
        pb::ImportFormat::GithubCredentials,
        content.clone(),
        "",
    )
    .await;
    assert_eq!(
        (
            again.created,
            again.changed,
            again.unchanged,
            again.vanished
        ),
        (0, 0, 6, 0)
    );
    let text = String::from_utf8(content).unwrap();
    let start = text.find("  {\n    \"id\": 502,").unwrap();
    let end = start + text[start..].find("  }\n").unwrap() + 4;
    let mut without = format!("{}{}", &text[..start], &text[end..]);
    without = without.replace("\"enabled\": true\n  },\n]", "\"enabled\": true\n  }\n]");
    let next = import(
        &mut client,
        pb::ImportFormat::GithubCredentials,
        without.into_bytes(),
        "",
    )
    .await;
    assert_eq!(
        (next.unchanged, next.vanished, next.rejected),
        (5, 1, 0),
        "{next:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_every_format_and_a_dry_run_shows_the_drift() {
    let stack = TestStack::start().await;
    let run = |extra: &[&str]| {
        let mut args = stack
            .pki
            .cli_args("operator", &stack.service("inventory").address());
        args.extend(extra.iter().map(|s| s.to_string()));
        steward_integration_tests::run_steward(args)
    };
    let path = |name: &str| {
        steward_integration_tests::workspace_root()
            .join("deploy/samples")
            .join(name)
            .display()
            .to_string()
    };
    let github = path("github-credentials.json");
    let dry = run(&[
        "identity",
        "import",
        &github,
        "--format",
        "github",
        "--dry-run",
    ])
    .await;
    assert!(dry.status.success(), "{dry:?}");
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.starts_with("6 rows: 6 created, 0 changed"), "{text}");
    assert!(text.contains("(dry run: nothing changed)"), "{text}");
    for line in [
        "  new      github:acme installation/25381001",
        "  new      github:acme deploy-key/acme/payments/502",
        "  new      github:acme fine-grained-pat/98717",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let mut client = stack.inventory().await;
    let none = client
        .list_identities(pb::ListIdentitiesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.identities.is_empty(), "a dry run changes nothing");

    // Every format by its CLI name, into an estate named by the flag.
    for (format, file, created) in [
        ("aws", "aws-iam-credential-report.csv", 4),
        ("aws-authz", "aws-iam-authorization-details.json", 6),
        ("k8s", "kubernetes-serviceaccounts.json", 5),
        ("gcp", "gcp-service-accounts.json", 6),
        ("azure", "entra-applications.json", 10),
        ("github", "github-credentials.json", 6),
        ("csv", "identities.csv", 4),
        ("json", "identities.json", 2),
    ] {
        let source = format!("cli-{format}");
        let out = run(&[
            "identity",
            "import",
            &path(file),
            "--format",
            format,
            "--source-system",
            &source,
            "-o",
            "json",
        ])
        .await;
        let imported: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{format}: {e}: {out:?}"));
        assert_eq!(imported["created"], created, "{format}: {imported}");
        if !matches!(format, "csv" | "json") {
            // The generic formats' rows name their own source systems.
            let drift = imported["drift"].as_array().unwrap();
            assert!(
                drift.iter().all(|d| d["source_system"] == source.as_str()),
                "{format}"
            );
        }
    }
}
