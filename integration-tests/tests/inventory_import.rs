//! Importers through the public API, on the sample files shipped in
//! `deploy/samples/`: idempotent upserts, drift, and bad rows reported by line.

use steward_integration_tests::TestStack;
use steward_integration_tests::imports::sample;
use steward_integration_tests::inventory::Client;
use steward_proto::steward::inventory::v1 as pb;
use tonic::Code;

async fn import(
    client: &mut Client,
    format: pb::ImportFormat,
    content: Vec<u8>,
    dry_run: bool,
) -> pb::ImportIdentitiesResponse {
    client
        .import_identities(pb::ImportIdentitiesRequest {
            format: format as i32,
            content,
            environment: "production".into(),
            dry_run,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

async fn by_external_id(client: &mut Client, source: &str, text: &str) -> pb::Identity {
    let found = client
        .list_identities(pb::ListIdentitiesRequest {
            filter: Some(pb::IdentityFilter {
                source_system: source.into(),
                text: text.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .identities;
    assert_eq!(found.len(), 1, "{text}: {found:?}");
    found.into_iter().next().unwrap()
}

#[tokio::test]
async fn aws_credential_report_imports_keys_idempotently_with_drift() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let content = sample("aws-iam-credential-report.csv");

    let dry = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        content.clone(),
        true,
    )
    .await;
    assert_eq!(dry.created, 4);
    assert!(
        client
            .list_identities(pb::ListIdentitiesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .identities
            .is_empty()
    );

    let first = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        content.clone(),
        false,
    )
    .await;
    assert_eq!(first.rows, 6);
    // billing-sync 1 key, ci-deployer 2 keys, legacy-backup 1 key; root and
    // alice have none; report-bot's date is bad.
    assert_eq!(
        (
            first.created,
            first.changed,
            first.unchanged,
            first.vanished
        ),
        (4, 0, 0, 0)
    );
    assert_eq!(first.rejected, 1);
    assert_eq!(first.errors[0].line, 7);
    assert_eq!(first.errors[0].field, "access_key_1_last_rotated");

    let legacy = by_external_id(
        &mut client,
        "aws-iam:123456789012",
        "legacy-backup#access_key_1",
    )
    .await;
    assert_eq!(legacy.kind, pb::IdentityKind::ApiKey as i32);
    assert!(
        legacy.unowned,
        "imported keys have no owner until someone claims them"
    );
    assert!(legacy.last_use_time.is_none());
    assert_eq!(legacy.last_rotate_time.unwrap().seconds, 1_542_732_600);
    assert_eq!(
        legacy.labels.get("aws/user").map(String::as_str),
        Some("legacy-backup")
    );
    let ci = by_external_id(
        &mut client,
        "aws-iam:123456789012",
        "ci-deployer#access_key_2",
    )
    .await;
    assert_eq!(
        ci.labels.get("aws/last-used-service").map(String::as_str),
        Some("sts")
    );

    // Owners assigned in Steward survive a re-import, which changes nothing.
    client
        .update_identity(pb::UpdateIdentityRequest {
            id: legacy.id.clone(),
            identity: Some(pb::IdentitySpec {
                technical_owner: Some(pb::Owner {
                    kind: 1,
                    name: "erin".into(),
                    contact: "erin@example.test".into(),
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["technical_owner".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let again = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        content.clone(),
        false,
    )
    .await;
    assert_eq!(
        (
            again.created,
            again.changed,
            again.unchanged,
            again.vanished
        ),
        (0, 0, 4, 0)
    );

    // Next month's report: ci-deployer's second key rotated, legacy-backup gone.
    let text = String::from_utf8(content).unwrap();
    let next: String = text
        .lines()
        .filter(|l| !l.starts_with("legacy-backup"))
        .map(|l| l.replace("2025-03-15T14:22:10+00:00", "2026-11-20T09:00:00+00:00"))
        .collect::<Vec<_>>()
        .join("\n");
    let drift = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        next.into_bytes(),
        false,
    )
    .await;
    assert_eq!(
        (
            drift.created,
            drift.changed,
            drift.unchanged,
            drift.vanished
        ),
        (0, 1, 2, 1)
    );
    let changed = drift
        .drift
        .iter()
        .find(|d| d.kind == pb::DriftKind::Changed as i32)
        .unwrap();
    // A rotated key is a new key: its rotation and its creation move.
    assert_eq!(
        changed.fields,
        vec!["last_rotate_time", "source_create_time"]
    );
    let vanished = drift
        .drift
        .iter()
        .find(|d| d.kind == pb::DriftKind::Vanished as i32)
        .unwrap();
    assert_eq!(vanished.identity_id, legacy.id);
    let kept = client
        .get_identity(pb::GetIdentityRequest {
            id: legacy.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .identity
        .unwrap();
    assert_eq!(kept.technical_owner.unwrap().name, "erin");

    let evidence = stack.evidence_for(&ci.id, 2).await;
    let record = evidence[1].record.as_ref().unwrap();
    assert_eq!(record.action, "identity.import");
    assert_eq!(
        record.attributes.get("drift").map(String::as_str),
        Some("changed")
    );
}

#[tokio::test]
async fn kubernetes_service_accounts_import_with_spiffe_ids_and_owners() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let result = import(
        &mut client,
        pb::ImportFormat::KubernetesServiceAccounts,
        sample("kubernetes-serviceaccounts.json"),
        false,
    )
    .await;
    assert_eq!((result.rows, result.created, result.rejected), (6, 5, 1));
    assert_eq!(
        (result.errors[0].line, result.errors[0].field.as_str()),
        (4, "metadata.namespace")
    );

    let settlement = by_external_id(&mut client, "kubernetes", "payments/settlement").await;
    assert_eq!(
        settlement.spiffe_id,
        "spiffe://steward.test/ns/payments/sa/settlement"
    );
    assert!(!settlement.unowned);
    assert_eq!(settlement.technical_owner.unwrap().name, "bob");
    assert_eq!(
        settlement.purpose,
        "settles card payments with the acquirer"
    );
    assert_eq!(
        settlement.labels.get("tier").map(String::as_str),
        Some("backend")
    );
    let bot = by_external_id(&mut client, "kubernetes", "ops/incident-bot").await;
    assert!(bot.unowned);
}

#[tokio::test]
async fn generic_csv_and_json_report_bad_rows_and_import_the_rest() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let csv = import(
        &mut client,
        pb::ImportFormat::Csv,
        sample("identities.csv"),
        false,
    )
    .await;
    assert_eq!((csv.rows, csv.created, csv.rejected), (6, 4, 2));
    let errors: Vec<(u64, &str)> = csv
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(errors, vec![(6, "expire_time"), (7, "kind")]);
    let token = by_external_id(&mut client, "github", "tok_billing_sync").await;
    assert_eq!(token.kind, pb::IdentityKind::Connector as i32);
    assert_eq!(token.labels.get("tier").map(String::as_str), Some("1"));
    assert_eq!(
        token.business_owner.unwrap().kind,
        pb::OwnerKind::Team as i32
    );
    let ssh = by_external_id(&mut client, "bastion", "ssh-legacy-7").await;
    assert!(ssh.unowned);

    let json = import(
        &mut client,
        pb::ImportFormat::Json,
        sample("identities.json"),
        false,
    )
    .await;
    assert_eq!((json.rows, json.created, json.rejected), (4, 2, 2));
    let errors: Vec<(u64, &str)> = json
        .errors
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(errors, vec![(3, "external_id"), (4, "colour")]);

    // A repeated identity in one file is reported, not imported twice.
    let twice = b"kind,display_name,source_system,external_id\napi_key,a,internal,k-1\napi_key,b,internal,k-1\n".to_vec();
    let result = import(&mut client, pb::ImportFormat::Csv, twice, false).await;
    assert_eq!((result.created, result.rejected), (1, 1));
    assert!(
        result.errors[0].reason.contains("line 2"),
        "{:?}",
        result.errors
    );

    let err = client
        .import_identities(pb::ImportIdentitiesRequest {
            format: 0,
            content: b"x".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "format: is required")
    );
    let bad_header = import(
        &mut client,
        pb::ImportFormat::Csv,
        b"kind,colour\napi_key,blue\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(bad_header.errors[0].field, "colour");
}

/// The sample report with two more users, one whose signing certificate is
/// active and one whose access key is not, in the JSON `aws iam
/// get-credential-report` prints.
fn cli_json_with_a_certificate() -> Vec<u8> {
    use base64::Engine as _;
    let mut csv = String::from_utf8(sample("aws-iam-credential-report.csv")).unwrap();
    if !csv.ends_with('\n') {
        csv.push('\n');
    }
    csv.push_str(
        "saml-signer,arn:aws:iam::123456789012:user/svc/saml-signer,2020-01-15T10:00:00+00:00,\
         false,N/A,N/A,N/A,false,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,\
         true,2024-05-01T09:30:00+00:00,false,N/A\n\
         old-sync,arn:aws:iam::123456789012:user/svc/old-sync,2023-02-01T00:00:00+00:00,\
         false,N/A,N/A,N/A,false,false,2023-02-01T00:05:00+00:00,N/A,N/A,N/A,\
         false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n",
    );
    let content = base64::engine::general_purpose::STANDARD.encode(csv);
    format!(
        "{{\n    \"Content\": \"{content}\",\n    \"ReportFormat\": \"text/csv\",\n    \
         \"GeneratedTime\": \"2026-12-01T08:00:00+00:00\"\n}}\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn the_aws_clis_json_imports_as_its_csv_does_and_certificates_become_identities() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let imported = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        cli_json_with_a_certificate(),
        false,
    )
    .await;
    // The four keys of the CSV sample, the certificate and the inactive key.
    assert_eq!((imported.rows, imported.created), (8, 6), "{imported:?}");
    assert_eq!(
        imported.rejected, 1,
        "the sample's bad date, as from the CSV"
    );
    let certificate =
        by_external_id(&mut client, "aws-iam:123456789012", "saml-signer#cert_1").await;
    assert_eq!(certificate.kind, pb::IdentityKind::Certificate as i32);
    assert_eq!(
        certificate.display_name,
        "saml-signer signing certificate 1"
    );
    assert_eq!(
        certificate.last_rotate_time.unwrap().seconds,
        1_714_555_800,
        "2024-05-01T09:30:00Z"
    );
    assert_eq!(
        certificate
            .labels
            .get("aws/cert-active")
            .map(String::as_str),
        Some("true")
    );
    let key = by_external_id(
        &mut client,
        "aws-iam:123456789012",
        "legacy-backup#access_key_1",
    )
    .await;
    assert_eq!(key.kind, pb::IdentityKind::ApiKey as i32);
    assert_eq!(key.state, pb::LifecycleState::Active as i32);
    // An inactive key is there, and suspended: nothing treats it as live.
    let inactive =
        by_external_id(&mut client, "aws-iam:123456789012", "old-sync#access_key_1").await;
    assert_eq!(inactive.state, pb::LifecycleState::Suspended as i32);
    assert_eq!(
        inactive.labels.get("aws/key-active").map(String::as_str),
        Some("false")
    );

    // The same file again changes nothing.
    let again = import(
        &mut client,
        pb::ImportFormat::AwsIamCredentialReport,
        cli_json_with_a_certificate(),
        false,
    )
    .await;
    assert_eq!((again.created, again.changed, again.unchanged), (0, 0, 6));

    // JSON that is not the CLI's report is refused as a whole, without
    // quoting it.
    for (bad, says) in [
        (
            &b"{\"Content\": \"%%% not base64 SECRETVALUE\"}"[..],
            "base64",
        ),
        (
            &b"{\"Content\": \"YQ==\", \"ReportFormat\": \"text/xml\"}"[..],
            "text/csv",
        ),
        (&b"{\"ReportFormat\": \"SECRETVALUE\""[..], "JSON"),
    ] {
        let refused = import(
            &mut client,
            pb::ImportFormat::AwsIamCredentialReport,
            bad.to_vec(),
            true,
        )
        .await;
        assert_eq!(refused.created, 0);
        let error = &refused.errors[0];
        assert_eq!((error.line, error.field.as_str()), (1, "content"));
        assert!(error.reason.contains(says), "{error:?}");
        assert!(!error.reason.contains("SECRETVALUE"), "{error:?}");
    }
}
