//! The incident story end to end, the product's acceptance test: a leaked
//! token → watchlist → approval → rotation with confirmed revocation →
//! incident close → verified evidence. Only the public gRPC APIs and the
//! `steward` CLI, with all four services on real mTLS, on SQLite or
//! PostgreSQL as the suite runs.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use steward_evidence::merkle::{Hash, leaf_hash, verify_inclusion};
use steward_integration_tests::broker::{approval_request_of, in_seconds};
use steward_integration_tests::inventory::state_of;
use steward_integration_tests::{TestStack, bearer, cli_json as json, run_steward, workspace_root};
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tokio_stream::StreamExt;
use tonic::Code;

/// The site's policies, after Steward's defaults.
const POLICIES: &str = r#"
@id("soar-rotates-connectors")
@reason("revoking a connector's old secret needs its technical owner")
@approvals("1")
@approver("technical_owner")
@max_ttl("1800")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"rotate", resource)
when { context.has_incident && resource.kind == "connector" };

@id("soar-issues-connector-tokens")
@max_ttl("3600")
permit (principal == Steward::Workload::"spiffe://steward.test/automation/soar", action == Steward::Action::"issue", resource)
when { context.has_incident && resource.kind == "connector" };

@id("oncall-may-break-glass")
permit (principal == Steward::Human::"oncall", action == Steward::Action::"break_glass", resource);
"#;

/// What a scanner's exposed-secret signal sets off.
const RULES: &str = r#"{"rules": [
  {"id": "contain-exposed-secrets", "signal_kind": "secret_exposed", "min_severity": "high",
   "actions": ["watchlist", "restrict"],
   "reason": "an exposed secret is contained at once"}
]}"#;

const SOAR: &str = "/automation/soar";

/// Runs `steward` with `cert`'s SVID against `service`; `token` is the
/// stored human token file, when a person acts.
async fn steward(
    stack: &TestStack,
    cert: &str,
    service: &str,
    token: Option<&Path>,
    extra: &[&str],
) -> Output {
    let mut args = stack.pki.cli_args(cert, &stack.service(service).address());
    if let Some(token) = token {
        args.extend(["--token-file".to_owned(), token.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    run_steward(args).await
}

fn sample(name: &str) -> String {
    workspace_root()
        .join("deploy/samples")
        .join(name)
        .display()
        .to_string()
}

fn task(incident: &str, minutes: i64, correlation: &str) -> Option<broker::Task> {
    Some(broker::Task {
        incident_ref: incident.into(),
        window_start: None,
        window_end: Some(in_seconds(minutes * 60)),
        reason: "billing-sync's GitHub token was exposed in a public repository".into(),
        correlation_id: correlation.into(),
    })
}

/// Waits (up to 20 s) for `check` to hold.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaked_token_is_contained_rotated_and_its_incident_closed_with_verified_evidence() {
    let mut stack = TestStack::start().await;
    // Reviews of break-glass fall due after a second, so the story can
    // show one overdue.
    stack.restart_authority_with_review_time(1).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = |who: &str| -> PathBuf {
        let path = dir.path().join(who);
        std::fs::write(&path, stack.token(who)).unwrap();
        path
    };
    let (alice, oncall) = (token_file("alice"), token_file("oncall"));
    let policies = dir.path().join("site.cedar");
    std::fs::write(
        &policies,
        format!(
            "{}\n{POLICIES}",
            steward_authority::engine::DEFAULT_POLICIES
        ),
    )
    .unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, RULES).unwrap();
    for (kind, file) in [("policy", &policies), ("rules", &rules)] {
        json(
            &steward(
                &stack,
                "operator",
                "authority",
                None,
                &[
                    kind,
                    "upload",
                    &file.display().to_string(),
                    "--activate",
                    "--reason",
                    "the site's incident response",
                    "-o",
                    "json",
                ],
            )
            .await,
        );
    }

    // 1. The sample inventory: an AWS credential report, Kubernetes
    //    ServiceAccounts and the generic CSV, in which billing-sync's
    //    GitHub token has owners.
    for (format, file) in [
        ("aws", "aws-iam-credential-report.csv"),
        ("k8s", "kubernetes-serviceaccounts.json"),
        ("csv", "identities.csv"),
    ] {
        let out = steward(
            &stack,
            "operator",
            "inventory",
            None,
            &[
                "identity",
                "import",
                &sample(file),
                "--format",
                format,
                "--environment",
                "production",
            ],
        )
        .await;
        // Exit 2: the report names rows it rejected (the AWS sample has a
        // bad date on purpose); the others are applied.
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{format}: {:?} {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let found = json(
        &steward(
            &stack,
            "operator",
            "inventory",
            None,
            &[
                "identity",
                "list",
                "--text",
                "billing-sync GitHub",
                "-o",
                "json",
            ],
        )
        .await,
    );
    let token = &found[0];
    assert_eq!(token["technical_owner"], "alice", "{found}");
    let leaked = token["id"].as_str().unwrap().to_owned();
    // billing-sync's AWS access key, from the credential report.
    let aws = json(
        &steward(
            &stack,
            "operator",
            "inventory",
            None,
            &["identity", "list", "--text", "billing-sync", "-o", "json"],
        )
        .await,
    );
    let other = aws
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] != leaked.as_str() && i["kind"] == "api-key")
        .unwrap_or_else(|| panic!("billing-sync's AWS access key in {aws}"))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The connector's current token is a broker lease, issued under a
    // change ticket.
    let mut soar = stack.broker_caller(SOAR).await;
    let old = soar
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: leaked.clone(),
            scopes: vec!["repo:write".into()],
            ttl_seconds: 3600,
            task: task("CHG-7", 60, ""),
        })
        .await
        .unwrap()
        .into_inner();
    let old_token = old.token.clone();
    let old_lease = old.lease.unwrap().lease_id;

    // 2. A scanner reports the token exposed; the response rule
    //    watchlists and restricts it at once.
    let mut scanner = stack.inventory_caller("/automation/secret-scanner").await;
    let signal = scanner
        .add_signal(inventory::AddSignalRequest {
            identity_id: leaked.clone(),
            kind: inventory::SignalKind::SecretExposed as i32,
            severity: inventory::Severity::High as i32,
            source: "secret-scanner".into(),
            summary: "GitHub token of billing-sync found in a public repository".into(),
            evidence_ref: "https://scanner.example.test/findings/42".into(),
            // The scanner's own finding id: kept beside the chain's.
            context: Some(inventory::ChangeContext {
                incident_ref: String::new(),
                correlation_id: "finding-42".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .signal
        .unwrap();
    let chain = signal.id.clone();
    let mut inventory = stack.inventory().await;
    eventually("the response rule to restrict the token", || {
        let mut inventory = inventory.clone();
        let leaked = leaked.clone();
        async move {
            state_of(&mut inventory, &leaked).await == inventory::LifecycleState::Restricted as i32
        }
    })
    .await;

    // Restricted, it gets no new credential without a grant.
    let refused = soar
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: leaked.clone(),
            scopes: vec!["repo:write".into()],
            ttl_seconds: 600,
            task: task("INC-42", 30, &chain),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("restricted"),
        "{}",
        refused.message()
    );

    // 3. The SOAR bot opens INC-42 and asks the broker to rotate the
    //    token for a 30-minute task window: revoking the old one needs
    //    the technical owner.
    let rotate = || broker::RotateRequest {
        identity_id: leaked.clone(),
        kind: broker::CredentialKind::ApiToken as i32,
        task: task("INC-42", 30, &chain),
        overlap_seconds: 0,
        scopes: vec!["repo:write".into()],
        ..Default::default()
    };
    let err = soar.rotate(rotate()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let request_id = approval_request_of(&err);

    // 4. The bot cannot approve its own request; the owner approves from
    //    the CLI.
    let mut bot = stack.authority_caller(SOAR).await;
    let refused = bot
        .review_approval_request(authority::ReviewApprovalRequestRequest {
            id: request_id.clone(),
            verdict: authority::Verdict::Approve as i32,
            reason: "approving myself".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let approved = json(
        &steward(
            &stack,
            "operator",
            "authority",
            Some(&alice),
            &[
                "approval",
                "approve",
                &request_id,
                "--reason",
                "rotate it now",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(approved["state"], "approved", "{approved}");

    // 5. The broker issues the new token, revokes the old one and
    //    confirms introspection rejects it.
    let rotated = soar.rotate(rotate()).await.unwrap().into_inner();
    let rotation = rotated.rotation.unwrap();
    assert_eq!(rotation.state, broker::RotationState::Confirmed as i32);
    assert_eq!(rotation.old_lease_ids, vec![old_lease.clone()]);
    let new_lease = rotated.lease.unwrap().lease_id;
    let checker = soar.clone();
    let introspect = |token: String| {
        let mut soar = checker.clone();
        async move {
            soar.introspect(broker::IntrospectRequest { token })
                .await
                .unwrap()
                .into_inner()
                .active
        }
    };
    assert!(!introspect(old_token).await, "the old token is rejected");
    assert!(introspect(rotated.token.clone()).await);

    // 6. On call breaks glass to suspend a second identity; a post-action
    //    review opens.
    let invoked = json(
        &steward(
            &stack,
            "operator",
            "authority",
            Some(&oncall),
            &[
                "breakglass",
                "invoke",
                "--action",
                "suspend",
                "--identity",
                &other,
                "--incident",
                "INC-42",
                "--reason",
                "the same repository exposed its key",
                "--correlation-id",
                &chain,
                "-o",
                "json",
            ],
        )
        .await,
    );
    let review = invoked["review"]["id"].as_str().unwrap().to_owned();
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let allowed = ops
        .authorize(bearer(
            authority::AuthorizeRequest {
                principal: Some(authority::Principal {
                    kind: Some(authority::principal::Kind::Human(authority::Human {
                        subject: "oncall".into(),
                        issuer: steward_integration_tests::TEST_ISSUER.into(),
                    })),
                }),
                action: "suspend".into(),
                resource_id: other.clone(),
                context: Some(authority::RequestContext {
                    incident_ref: "INC-42".into(),
                    correlation_id: chain.clone(),
                    reason: "the same repository exposed its key".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            &stack.token("oncall"),
        ))
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap();
    assert!(allowed.break_glass, "{allowed:?}");
    inventory
        .transition_state(inventory::TransitionStateRequest {
            id: other.clone(),
            target_state: inventory::LifecycleState::Suspended as i32,
            reason: "break-glass: the same repository exposed its key".into(),
            context: Some(inventory::ChangeContext {
                incident_ref: "INC-42".into(),
                correlation_id: chain.clone(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();

    // 7. The incident closes; every lease tied to INC-42 is revoked, and
    //    the watch stream shows it.
    let mut watch = soar
        .watch_revocations(broker::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    let closed = json(
        &steward(
            &stack,
            "operator",
            "authority",
            Some(&alice),
            &[
                "incident",
                "close",
                "INC-42",
                "--reason",
                "token rotated, key holder suspended",
                "--correlation-id",
                &chain,
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(
        closed["revoked_lease_ids"],
        serde_json::json!([new_lease]),
        "{closed}"
    );
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(revocation) = watch.next().await {
            let revocation = revocation.unwrap();
            if revocation.lease_id == new_lease {
                return revocation;
            }
        }
        panic!("the watch stream ended");
    })
    .await
    .expect("the revocation on the watch stream");
    assert_eq!(seen.state, broker::LeaseState::Revoked as i32);
    assert!(!introspect(rotated.token).await);

    // 8. The auditor streams the log, verifies it with the CLI, and gets
    //    the inclusion proof of every step; the steps form one chain by
    //    the signal's correlation id; the break-glass review is overdue
    //    until it is completed.
    let auditor = stack
        .pki
        .client("auditor", "spiffe://steward.test/auditor/ada");
    let mut log = AuditServiceClient::new(stack.service("audit").channel(&auditor).await);
    let mut stream = log
        .subscribe(audit::SubscribeRequest {
            from_index: 0,
            filter: Some(audit::EntryFilter {
                correlation_id: chain.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut steps: Vec<audit::LogEntry> = Vec::new();
    // Every step of the story, whichever service recorded it. (Services
    // append through their own outboxes, so the order across services is
    // the order of arrival.)
    let wanted = [
        "signal.add",
        "response.watchlist",
        "response.restrict",
        "identity.restrict",
        "approval.requested",
        "approval.approved",
        "grant.used",
        "credential.rotate",
        "credential.rotation_confirmed",
        "breakglass.invoked",
        "breakglass.review_opened",
        "identity.suspend",
        "incident.closed",
    ];
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(page) = stream.next().await {
            steps.extend(page.unwrap().entries);
            let actions: Vec<&str> = steps
                .iter()
                .map(|e| e.record.as_ref().unwrap().action.as_str())
                .collect();
            let revoked = steps.iter().filter(|e| {
                let r = e.record.as_ref().unwrap();
                r.action == "credential.revoke"
            });
            if wanted.iter().all(|w| actions.contains(w)) && revoked.count() >= 2 {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let actions: Vec<String> = steps
            .iter()
            .map(|e| e.record.as_ref().unwrap().action.clone())
            .collect();
        panic!("the chain is missing steps: {actions:?}")
    });
    let actions: Vec<String> = steps
        .iter()
        .map(|e| e.record.as_ref().unwrap().action.clone())
        .collect();
    for w in wanted {
        assert!(actions.iter().any(|a| a == w), "{w} in {actions:?}");
    }
    assert_eq!(actions[0], "signal.add", "the chain starts at the signal");
    let signalled = steps[0].record.as_ref().unwrap();
    assert_eq!(
        signalled.attributes["reporter_correlation_id"],
        "finding-42"
    );
    let revoked: Vec<&str> = steps
        .iter()
        .map(|e| e.record.as_ref().unwrap())
        .filter(|r| r.action == "credential.revoke")
        .map(|r| r.target.as_ref().unwrap().lease_id.as_str())
        .collect();
    assert!(revoked.contains(&old_lease.as_str()), "{revoked:?}");
    assert!(revoked.contains(&new_lease.as_str()), "{revoked:?}");

    let vkey = stack.pki.log_verifier_key();
    let state = dir.path().join("trusted-checkpoint");
    let verified = steward(
        &stack,
        "auditor",
        "audit",
        None,
        &[
            "audit",
            "verify",
            "--vkey",
            &vkey.display().to_string(),
            "--state",
            &state.display().to_string(),
        ],
    )
    .await;
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // The CLI proves one step against the signed checkpoint…
    let closed = steps
        .iter()
        .find(|e| e.record.as_ref().unwrap().action == "incident.closed")
        .unwrap();
    let leaf_hex: String = closed
        .leaf_hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let vkey_arg = vkey.display().to_string();
    let proved = json(
        &steward(
            &stack,
            "auditor",
            "audit",
            None,
            &[
                "audit", "proof", &leaf_hex, "--vkey", &vkey_arg, "-o", "json",
            ],
        )
        .await,
    );
    assert_eq!(proved["verified"], true, "{proved}");
    assert_eq!(proved["action"], "incident.closed");
    assert_eq!(proved["index"], closed.index);
    for (leaf, code) in [("not-a-leaf", 2), (&"0".repeat(64)[..], 4)] {
        let out = steward(
            &stack,
            "auditor",
            "audit",
            None,
            &["audit", "proof", leaf, "--vkey", &vkey_arg],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "{leaf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // …and the test checks every step's proof itself.
    let checkpoint = log
        .get_checkpoint(audit::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    let (size, root) = (checkpoint.tree_size, checkpoint.root_hash.clone());
    for entry in &steps {
        let record =
            steward_evidence::wire::record_from_proto(entry.record.clone().unwrap()).unwrap();
        let leaf = leaf_hash(&record.canonical_leaf(&entry.appended_by));
        assert_eq!(leaf.to_vec(), entry.leaf_hash);
        let proof = log
            .get_inclusion_proof(audit::GetInclusionProofRequest {
                leaf: Some(audit::get_inclusion_proof_request::Leaf::LeafHash(
                    entry.leaf_hash.clone(),
                )),
                tree_size: size,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(proof.index, entry.index);
        let path: Vec<Hash> = proof
            .hashes
            .iter()
            .map(|h| Hash::try_from(h.as_slice()).unwrap())
            .collect();
        assert!(
            verify_inclusion(
                entry.index,
                size,
                &leaf,
                &path,
                &Hash::try_from(root.as_slice()).unwrap(),
            ),
            "{} at {} is not in the tree of {size}",
            record.action,
            entry.index
        );
    }

    // Due a second after it opened, in whole seconds.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let reviews = |token: Option<&Path>, extra: &'static [&'static str]| {
        let stack = &stack;
        let token = token.map(Path::to_path_buf);
        async move { json(&steward(stack, "operator", "authority", token.as_deref(), extra).await) }
    };
    let overdue = reviews(None, &["review", "list", "--overdue", "-o", "json"]).await;
    assert_eq!(overdue[0]["id"], review.as_str(), "{overdue}");
    // The access key has no owners in inventory: the security group
    // reviews it.
    assert_eq!(overdue[0]["assignees"], serde_json::json!(["security"]));
    let sam = token_file("sam");
    let done = json(
        &steward(
            &stack,
            "operator",
            "authority",
            Some(&sam),
            &[
                "review",
                "complete",
                &review,
                "--note",
                "suspension was right",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(done["state"], "completed");
    let overdue = reviews(None, &["review", "list", "--overdue", "-o", "json"]).await;
    assert_eq!(overdue, serde_json::json!([]));
}
