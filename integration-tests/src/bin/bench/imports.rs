//! Imports at scale: 100,000 rows of every format, one ImportIdentities
//! call each, into an inventory already holding 1,000,000 identities. The
//! target is 10 s a format; the figure is the call's wall time, and the
//! rows it made per second beside it. Each starts once audit holds the
//! previous one's evidence, so no import pays for the one before.

use std::time::{Duration, Instant};

use steward_integration_tests::inventory::Client;
use steward_proto::steward::audit::v1::GetCheckpointRequest;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use steward_proto::steward::inventory::v1 as pb;
use tonic::transport::Channel;

use super::Figure;

/// Rows (input items) a format.
const ROWS: usize = 100_000;

/// `ROWS` items of `format`, and how many identities they make.
fn content(format: pb::ImportFormat) -> (Vec<u8>, u64) {
    use pb::ImportFormat as F;
    let rows = 0..ROWS;
    let made = ROWS as u64;
    let text = match format {
        F::Csv => {
            let mut csv = String::from(
                "kind,display_name,source_system,external_id,environment,purpose,business_owner,business_owner_contact,technical_owner,technical_owner_contact,labels,expire_time,last_rotate_time,last_use_time\n",
            );
            for n in rows {
                csv.push_str(&format!(
                    "api_key,import key {n},bench-csv,key-{n},production,imported for the benchmark,team-{t},#team-{t},person-{p},person-{p}@example.test,source=bench;batch={b},2027-01-01T00:00:00Z,2026-06-01T00:00:00Z,2026-11-01T00:00:00Z\n",
                    t = n % 200,
                    p = n % 2000,
                    b = n / 1000
                ));
            }
            csv
        }
        F::Json => {
            let items: Vec<serde_json::Value> = rows
                .map(|n| {
                    serde_json::json!({
                        "kind": "service_account", "source_system": "bench-json",
                        "external_id": format!("sa-{n}"), "purpose": "imported for the benchmark",
                        "technical_owner": {"name": format!("person-{}", n % 2000), "contact": "ops@example.test"},
                        "labels": {"batch": (n / 1000).to_string()},
                        "last_use_time": "2026-11-01T00:00:00Z"
                    })
                })
                .collect();
            serde_json::json!({ "identities": items }).to_string()
        }
        F::AwsIamCredentialReport => {
            let mut csv = String::from(
                "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,cert_1_last_rotated,cert_2_active,cert_2_last_rotated\n",
            );
            for n in rows {
                csv.push_str(&format!(
                    "svc-{n},arn:aws:iam::111122223333:user/svc/svc-{n},2021-01-01T00:00:00+00:00,false,N/A,N/A,N/A,false,true,2021-01-01T00:05:00+00:00,2026-11-01T00:00:00+00:00,us-east-1,s3,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A\n"
                ));
            }
            csv
        }
        F::AwsIamAuthorizationDetails => {
            let roles: Vec<serde_json::Value> = rows
                .map(|n| {
                    serde_json::json!({
                        "Path": "/", "RoleName": format!("role-{n}"), "RoleId": format!("AROA{n:016}"),
                        "Arn": format!("arn:aws:iam::111122223333:role/role-{n}"),
                        "CreateDate": "2023-01-01T00:00:00+00:00",
                        "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
                        "RolePolicyList": [{"PolicyName": "work", "PolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"], "Resource": format!("arn:aws:s3:::bucket-{}/*", n % 500)}]}}],
                        "AttachedManagedPolicies": [], "Tags": [{"Key": "owner", "Value": format!("team-{}", n % 200)}],
                        "RoleLastUsed": {"LastUsedDate": "2026-11-01T00:00:00+00:00", "Region": "us-east-1"}
                    })
                })
                .collect();
            serde_json::json!({ "UserDetailList": [], "GroupDetailList": [], "RoleDetailList": roles, "Policies": [] }).to_string()
        }
        F::KubernetesServiceAccounts => {
            let items: Vec<serde_json::Value> = rows
                .map(|n| {
                    serde_json::json!({
                        "apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {
                            "name": format!("sa-{n}"), "namespace": format!("ns-{}", n % 1000),
                            "creationTimestamp": "2024-01-01T00:00:00Z", "uid": format!("00000000-0000-4000-8000-{n:012}"),
                            "labels": {"app.kubernetes.io/name": format!("app-{}", n % 5000)},
                            "annotations": {"owner": format!("team-{}", n % 200), "eks.amazonaws.com/role-arn": format!("arn:aws:iam::111122223333:role/role-{n}")}
                        }
                    })
                })
                .collect();
            serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string()
        }
        F::GcpServiceAccounts => {
            let items: Vec<serde_json::Value> = rows
                .map(|n| {
                    let email = format!("sa-{}@bench.iam.gserviceaccount.com", n / 2);
                    if n % 2 == 0 {
                        serde_json::json!({"email": email, "displayName": format!("account {}", n / 2), "projectId": "bench",
                            "name": format!("projects/bench/serviceAccounts/{email}"), "uniqueId": format!("{n}")})
                    } else {
                        serde_json::json!({"keyAlgorithm": "KEY_ALG_RSA_2048", "keyOrigin": "GOOGLE_PROVIDED", "keyType": "USER_MANAGED",
                            "name": format!("projects/bench/serviceAccounts/{email}/keys/{n:040x}"),
                            "validAfterTime": "2025-01-01T00:00:00Z", "validBeforeTime": "9999-12-31T23:59:59Z"})
                    }
                })
                .collect();
            serde_json::Value::Array(items).to_string()
        }
        F::EntraApplications => {
            let items: Vec<serde_json::Value> = rows
                .map(|n| {
                    serde_json::json!({
                        "id": format!("{n:08}-0000-4000-8000-000000000000"), "appId": format!("{n:08}-1111-4000-8000-000000000000"),
                        "displayName": format!("app-{n}"), "createdDateTime": "2022-01-01T00:00:00Z",
                        "passwordCredentials": [{"displayName": "secret", "keyId": format!("{n:08}-2222-4000-8000-000000000000"),
                            "startDateTime": "2025-01-01T00:00:00Z", "endDateTime": "2027-01-01T00:00:00Z", "hint": "abc"}],
                        "keyCredentials": []
                    })
                })
                .collect();
            return (
                serde_json::json!({ "value": items })
                    .to_string()
                    .into_bytes(),
                made * 2,
            );
        }
        F::GithubCredentials => {
            let items: Vec<serde_json::Value> = rows
                .map(|n| {
                    serde_json::json!({
                        "id": n, "key": "ssh-ed25519 AAAA", "url": format!("https://api.github.com/repos/bench/repo-{}/keys/{n}", n % 1000),
                        "title": format!("key {n}"), "verified": true, "created_at": "2024-01-01T00:00:00Z",
                        "read_only": n % 3 != 0, "added_by": "admin", "last_used": "2026-11-01T00:00:00Z", "enabled": true
                    })
                })
                .collect();
            serde_json::Value::Array(items).to_string()
        }
        F::Unspecified => String::new(),
    };
    (text.into_bytes(), made)
}

/// Waits until audit's log has stopped growing for a second: the evidence
/// of the previous import has been delivered, so it does not compete with
/// the next one for the machine.
async fn settled(audit: &mut AuditServiceClient<Channel>) -> anyhow::Result<u64> {
    let size = |audit: &mut AuditServiceClient<Channel>| {
        let mut audit = audit.clone();
        async move {
            anyhow::Ok(
                audit
                    .get_checkpoint(GetCheckpointRequest { fresh: true })
                    .await?
                    .into_inner()
                    .tree_size,
            )
        }
    };
    let mut last = size(audit).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = size(audit).await?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
}

/// One figure a format: seconds for 100,000 rows, with identities a
/// second in the name. Each import starts once the previous one's
/// evidence is in audit.
pub async fn run(
    mut client: Client,
    mut audit: AuditServiceClient<Channel>,
) -> anyhow::Result<Vec<Figure>> {
    use pb::ImportFormat as F;
    let mut figures = Vec::new();
    for (name, format) in [
        ("CSV", F::Csv),
        ("JSON", F::Json),
        ("AWS credential report", F::AwsIamCredentialReport),
        ("AWS authorization details", F::AwsIamAuthorizationDetails),
        ("Kubernetes", F::KubernetesServiceAccounts),
        ("GCP", F::GcpServiceAccounts),
        ("Entra ID", F::EntraApplications),
        ("GitHub", F::GithubCredentials),
    ] {
        let waited = Instant::now();
        let log = settled(&mut audit).await?;
        eprintln!(
            "import {name}: audit settled at {log} entries after {:.0} s",
            waited.elapsed().as_secs_f64()
        );
        let (bytes, identities) = content(format);
        let size = bytes.len();
        let started = Instant::now();
        let result = client
            .import_identities(pb::ImportIdentitiesRequest {
                format: format as i32,
                content: bytes,
                ..Default::default()
            })
            .await?
            .into_inner();
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            result.created == identities && result.rejected == 0,
            "{name}: created {} of {identities} ({} rejected: {:?})",
            result.created,
            result.rejected,
            result.errors.first()
        );
        eprintln!("import {name}: {size} bytes, {identities} identities in {elapsed:.1} s");
        figures.push(Figure {
            name: format!(
                "inventory import of 100,000 {name} rows at 1M ({:.0} identities/s; target 10 s)",
                identities as f64 / elapsed
            ),
            value: elapsed,
            unit: "s",
            p50_us: None,
            p99_us: None,
        });
    }
    Ok(figures)
}
