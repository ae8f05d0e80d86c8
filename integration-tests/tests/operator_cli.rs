//! The operator's `steward` commands against real services over mTLS:
//! `identity` and `signal` (inventory), `lease` (broker), `policy`,
//! `rules`, `approval` and `incident` (authority). Lists with filters, one record, revocation of
//! one lease and of an incident's, an owner's approval, an incident's
//! closure, imports with rejected rows; JSON for scripts, and exit codes a
//! script can tell apart.

use std::path::Path;
use std::process::Output;

use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_integration_tests::{
    TestStack, binary_dir, cli_json as json, exits, run_steward, workspace_root,
};
use steward_proto::steward::broker::v1 as pb;

/// The site's broker policies, plus: operators may revoke any credential.
const POLICIES: &str = r#"
@id("operators-revoke")
@reason("operators revoke credentials from the CLI")
permit (principal == Steward::Workload::"spiffe://steward.test/operator/admin", action == Steward::Action::"revoke", resource);
"#;

/// Runs `steward` with `cert`'s SVID (a file stem in the test PKI) against
/// the broker.
async fn steward(stack: &TestStack, cert: &str, extra: &[&str]) -> Output {
    steward_at(
        stack,
        cert,
        &stack.service("credential-broker").address(),
        extra,
    )
    .await
}

/// Runs `steward` as the operator against `service`.
async fn steward_on(stack: &TestStack, service: &str, extra: &[&str]) -> Output {
    steward_at(stack, "operator", &stack.service(service).address(), extra).await
}

/// Runs `steward` as the operator against authority, with `token` as the
/// stored human token file when given.
async fn steward_authority(stack: &TestStack, token: Option<&Path>, extra: &[&str]) -> Output {
    let mut args: Vec<String> = Vec::new();
    if let Some(token) = token {
        args.extend(["--token-file".to_owned(), token.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    steward_at(
        stack,
        "operator",
        &stack.service("authority").address(),
        &args,
    )
    .await
}

async fn steward_at(stack: &TestStack, cert: &str, addr: &str, extra: &[&str]) -> Output {
    let mut args = stack.pki.cli_args(cert, addr);
    args.extend(extra.iter().map(|s| s.to_string()));
    run_steward(args).await
}

/// Asserts that the command exited with `code`; returns what it said on
/// standard error.
fn ids(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["lease_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_show_and_revoke_leases_from_the_cli() {
    let stack = TestStack::start().await;
    stack
        .activate_policies(&format!("{BROKER_POLICIES}\n{POLICIES}"), true)
        .await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut issued = Vec::new();
    for incident in ["INC-9", "INC-9", "INC-10"] {
        let lease = soar
            .issue_api_token(pb::IssueApiTokenRequest {
                identity_id: identity.id.clone(),
                scopes: vec!["repo:read".into()],
                ttl_seconds: 0,
                task: task(incident),
            })
            .await
            .unwrap()
            .into_inner()
            .lease
            .unwrap();
        issued.push(lease.lease_id);
    }

    // Lists filter by incident and state; JSON for scripts, a table for people.
    let listed = json(
        &steward(
            &stack,
            "operator",
            &["lease", "list", "--incident", "INC-9", "-o", "json"],
        )
        .await,
    );
    assert_eq!(ids(&listed), issued[..2].to_vec());
    assert_eq!(listed[0]["kind"], "api-token");
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["holder"], "spiffe://steward.test/automation/soar");
    let by_identity = json(
        &steward(
            &stack,
            "operator",
            &[
                "lease",
                "list",
                "--identity",
                &identity.id,
                "--limit",
                "2",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(ids(&by_identity).len(), 2);
    let table = steward(
        &stack,
        "operator",
        &["lease", "list", "--incident", "INC-10"],
    )
    .await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("LEASE"), "{text}");
    assert!(
        text.contains(&issued[2]) && !text.contains(&issued[0]),
        "{text}"
    );

    let shown = json(
        &steward(
            &stack,
            "operator",
            &["lease", "show", &issued[0], "-o", "json"],
        )
        .await,
    );
    assert_eq!(shown["lease_id"], issued[0].as_str());
    assert_eq!(shown["incident_ref"], "INC-9");
    assert!(shown["expires"].as_str().unwrap().ends_with('Z'));

    // One lease, then what is left of the incident.
    let one = json(
        &steward(
            &stack,
            "operator",
            &[
                "lease", "revoke", &issued[0], "--reason", "leaked", "-o", "json",
            ],
        )
        .await,
    );
    assert_eq!(one["revoked"], serde_json::json!([issued[0]]));
    let rest = json(
        &steward(
            &stack,
            "operator",
            &[
                "lease",
                "revoke",
                "--incident",
                "INC-9",
                "--reason",
                "incident over",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(rest["revoked"], serde_json::json!([issued[1]]));
    let active = json(
        &steward(
            &stack,
            "operator",
            &[
                "lease",
                "list",
                "--incident",
                "INC-9",
                "--state",
                "active",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(ids(&active), Vec::<String>::new());
    let revoked = json(
        &steward(
            &stack,
            "operator",
            &["lease", "show", &issued[1], "-o", "json"],
        )
        .await,
    );
    assert_eq!(revoked["state"], "revoked");
    assert_eq!(revoked["revoke_reason"], "incident over");
    assert_eq!(
        revoked["revoked_by"],
        "spiffe://steward.test/operator/admin"
    );

    // Exit codes scripts can rely on, and a line saying what to do.
    let cases: [(&str, Vec<&str>, i32, &str); 4] = [
        (
            "operator",
            vec!["lease", "show", "0190a000-0000-7000-8000-000000000000"],
            4,
            "NotFound",
        ),
        (
            "operator",
            vec!["lease", "show", "not-a-lease"],
            2,
            "lease_id",
        ),
        (
            "operator",
            vec!["lease", "revoke", &issued[2]],
            2,
            "--reason",
        ),
        (
            "sidecar",
            vec!["lease", "revoke", &issued[2], "--reason", "x"],
            5,
            "PermissionDenied",
        ),
    ];
    stack
        .pki
        .svid("sidecar", "spiffe://steward.test/workload/sidecar");
    for (cert, args, code, says) in cases {
        let out = steward(&stack, cert, &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let out = steward_at(&stack, "operator", "127.0.0.1:1", &["lease", "list"]).await;
    exits(&out, 7);

    // Nothing above touched the other incident's lease.
    let untouched = json(
        &steward(
            &stack,
            "operator",
            &["lease", "show", &issued[2], "-o", "json"],
        )
        .await,
    );
    assert_eq!(untouched["state"], "active");

    // The revocation log, replayed: one JSON object a line, in order.
    let out = steward(
        &stack,
        "operator",
        &[
            "lease", "watch", "--after", "0", "--count", "2", "-o", "json",
        ],
    )
    .await;
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seen: Vec<&str> = lines
        .iter()
        .map(|l| l["lease_id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, vec![issued[0].as_str(), issued[1].as_str()]);
    assert_eq!(lines[1]["reason"], "incident over");
    // Resumed after the last one seen, a watcher gets what is revoked next.
    let last = lines[1]["sequence"].as_u64().unwrap().to_string();
    let watcher = {
        let mut args = stack
            .pki
            .cli_args("operator", &stack.service("credential-broker").address());
        args.extend(
            [
                "lease", "watch", "--after", &last, "--count", "1", "-o", "json",
            ]
            .map(String::from),
        );
        std::thread::spawn(move || {
            std::process::Command::new(binary_dir().join("steward"))
                .args(args)
                .output()
                .unwrap()
        })
    };
    json(
        &steward(
            &stack,
            "operator",
            &[
                "lease", "revoke", &issued[2], "--reason", "last one", "-o", "json",
            ],
        )
        .await,
    );
    let out = tokio::task::spawn_blocking(move || watcher.join().unwrap())
        .await
        .unwrap();
    let next: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(next["lease_id"], issued[2].as_str());
    assert_eq!(next["incident_ref"], "INC-10");
    assert_eq!(next["state"], "revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_approves_from_the_cli_and_closing_the_incident_revokes_its_leases() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    // Staging credentials need the technical owner's approval (alice's).
    let identity = stack.workload_identity("staging-sync", "staging").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let ask = || pb::IssueApiTokenRequest {
        identity_id: identity.id.clone(),
        scopes: vec!["repo:read".into()],
        ttl_seconds: 0,
        task: Some(pb::Task {
            reason: "rotate the staging token".into(),
            ..task("INC-11").unwrap()
        }),
    };
    let err = soar.issue_api_token(ask()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let request_id = err
        .metadata()
        .get("steward-approval-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();

    let pending = json(
        &steward_authority(
            &stack,
            None,
            &["approval", "list", "--identity", &identity.id, "-o", "json"],
        )
        .await,
    );
    assert_eq!(pending.as_array().unwrap().len(), 1, "{pending}");
    assert_eq!(pending[0]["id"], request_id.as_str());
    assert_eq!(pending[0]["needs"], "1 of technical_owner");
    assert_eq!(
        pending[0]["suggested_reviewers"],
        serde_json::json!(["alice"])
    );

    // Reviewing is a person's act: without a login, nothing happens.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-token");
    let out = steward_authority(
        &stack,
        Some(&missing),
        &["approval", "approve", &request_id, "--reason", "ok"],
    )
    .await;
    assert!(exits(&out, 1).contains("steward login"));
    // Someone who is not the owner is refused, and the request stays pending.
    let bob = dir.path().join("bob");
    std::fs::write(&bob, stack.token("bob")).unwrap();
    let out = steward_authority(
        &stack,
        Some(&bob),
        &["approval", "approve", &request_id, "--reason", "ok"],
    )
    .await;
    exits(&out, 5);
    let shown = json(
        &steward_authority(
            &stack,
            None,
            &["approval", "show", &request_id, "-o", "json"],
        )
        .await,
    );
    assert_eq!(shown["state"], "pending");

    let alice = dir.path().join("alice");
    std::fs::write(&alice, stack.token("alice")).unwrap();
    let approved = json(
        &steward_authority(
            &stack,
            Some(&alice),
            &[
                "approval",
                "approve",
                &request_id,
                "--reason",
                "the leak is real",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["reviews"][0]["reviewer"], "alice");
    assert_eq!(approved["reviews"][0]["verdict"], "approve");
    assert!(!approved["grant_id"].as_str().unwrap().is_empty());

    // The grant lets SOAR have its credential; closing the incident ends it.
    let lease = soar
        .issue_api_token(ask())
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let closed = json(
        &steward_authority(
            &stack,
            Some(&alice),
            &[
                "incident", "close", "INC-11", "--reason", "rotated", "-o", "json",
            ],
        )
        .await,
    );
    assert_eq!(
        closed["revoked_lease_ids"],
        serde_json::json!([lease.lease_id])
    );
    assert_eq!(closed["leases_pending"], false);
    let revoked = json(
        &steward(
            &stack,
            "operator",
            &["lease", "show", &lease.lease_id, "-o", "json"],
        )
        .await,
    );
    assert_eq!(revoked["state"], "revoked");

    let out = steward_authority(&stack, None, &["incident", "close", "INC-11"]).await;
    assert!(exits(&out, 2).contains("--reason"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_import_and_read_identities_and_post_signals_from_the_cli() {
    let stack = TestStack::start().await;
    let sample = workspace_root().join("deploy/samples/identities.csv");
    let sample = sample.display().to_string();
    let import = [
        "identity", "import", &sample, "--format", "csv", "-o", "json",
    ];
    // The sample holds two bad rows: each is named by line and field, the
    // rest is applied, and the exit code says rows were rejected.
    let out = steward_on(&stack, "inventory", &import).await;
    exits(&out, 2);
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            first["rows"].as_u64(),
            first["created"].as_u64(),
            first["rejected"].as_u64()
        ),
        (Some(6), Some(4), Some(2)),
        "{first}"
    );
    let errors: Vec<(u64, &str)> = first["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["field"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, vec![(6, "expire_time"), (7, "kind")]);
    // Importing again changes nothing; the table for people says so.
    let again = steward_on(&stack, "inventory", &import[..5]).await;
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.starts_with("6 rows: 0 created, 0 changed, 4 unchanged"),
        "{text}"
    );
    assert!(text.contains("line 7: kind:"), "{text}");

    let found = json(
        &steward_on(
            &stack,
            "inventory",
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
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    let token = &found[0];
    assert_eq!(token["kind"], "connector");
    assert_eq!(token["state"], "active");
    assert_eq!(token["technical_owner"], "alice");
    let id = token["id"].as_str().unwrap().to_owned();
    let none = json(
        &steward_on(
            &stack,
            "inventory",
            &["identity", "list", "--state", "suspended", "-o", "json"],
        )
        .await,
    );
    assert_eq!(none, serde_json::json!([]));
    let out = steward_on(
        &stack,
        "inventory",
        &["identity", "list", "--state", "asleep"],
    )
    .await;
    exits(&out, 2); // an unknown state is a usage error

    // The scanner's finding raises the identity's risk, with the reason.
    let posted = json(
        &steward_on(
            &stack,
            "inventory",
            &[
                "signal",
                "post",
                "--identity",
                &id,
                "--kind",
                "secret-exposed",
                "--severity",
                "critical",
                "--source",
                "secret-scanner",
                "--summary",
                "token found in a public repository",
                "--evidence-ref",
                "https://scanner.example.test/findings/1",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert!(!posted["signal_id"].as_str().unwrap().is_empty());
    let score = posted["risk_score"].as_u64().unwrap();
    assert!(score > token["risk_score"].as_u64().unwrap(), "{posted}");
    let shown = json(
        &steward_on(
            &stack,
            "inventory",
            &["identity", "show", &id, "-o", "json"],
        )
        .await,
    );
    assert_eq!(shown["risk_score"].as_u64(), Some(score));
    assert!(
        shown["risk_reasons"].as_array().unwrap().iter().any(|r| r
            .as_str()
            .unwrap()
            .contains("SECRET_EXPOSED")
            || r.as_str().unwrap().contains("secret")),
        "{shown}"
    );
    let out = steward_on(
        &stack,
        "inventory",
        &[
            "signal",
            "post",
            "--identity",
            &id,
            "--kind",
            "leaked",
            "--severity",
            "high",
            "--source",
            "s",
            "--summary",
            "s",
        ],
    )
    .await;
    exits(&out, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_call_breaks_glass_from_the_cli_and_an_owner_completes_the_review() {
    let stack = TestStack::start().await;
    stack
        .activate_policies(
            r#"
@id("oncall-may-break-glass")
permit (principal == Steward::Human::"oncall", action == Steward::Action::"break_glass", resource);
"#,
            true,
        )
        .await;
    let identity = stack
        .workload_identity("payments-webhook", "production")
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token = |who: &str| {
        let path = dir.path().join(who);
        std::fs::write(&path, stack.token(who)).unwrap();
        path
    };
    let (oncall, bob, alice) = (token("oncall"), token("bob"), token("alice"));
    let invoke = [
        "breakglass",
        "invoke",
        "--action",
        "suspend",
        "--identity",
        &identity.id,
        "--incident",
        "INC-42",
        "--reason",
        "webhook secret is being abused",
        "-o",
        "json",
    ];

    // Only the principals a policy names may break glass.
    let out = steward_authority(&stack, Some(&bob), &invoke).await;
    exits(&out, 5);
    let invoked = json(&steward_authority(&stack, Some(&oncall), &invoke).await);
    assert!(
        !invoked["grant_id"].as_str().unwrap().is_empty(),
        "{invoked}"
    );
    let review = &invoked["review"];
    assert_eq!(review["state"], "open");
    assert_eq!(review["principal"], "oncall");
    assert_eq!(review["action"], "suspend");
    assert!(
        review["assignees"]
            .as_array()
            .unwrap()
            .contains(&"alice".into()),
        "{review}"
    );
    let id = review["id"].as_str().unwrap().to_owned();

    let open = json(&steward_authority(&stack, None, &["review", "list", "-o", "json"]).await);
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["overdue"], false);
    let overdue = json(
        &steward_authority(&stack, None, &["review", "list", "--overdue", "-o", "json"]).await,
    );
    assert_eq!(
        overdue,
        serde_json::json!([]),
        "due in the configured time, not yet"
    );

    // The invoker may not review their own break-glass; an owner may.
    let out = steward_authority(
        &stack,
        Some(&oncall),
        &["review", "complete", &id, "--note", "fine"],
    )
    .await;
    exits(&out, 5);
    let done = json(
        &steward_authority(
            &stack,
            Some(&alice),
            &[
                "review",
                "complete",
                &id,
                "--note",
                "suspension was right",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(done["state"], "completed");
    assert_eq!(done["completed_by"], "alice");
    let open = json(&steward_authority(&stack, None, &["review", "list", "-o", "json"]).await);
    assert_eq!(open, serde_json::json!([]));
    let all = json(
        &steward_authority(
            &stack,
            None,
            &["review", "list", "--state", "all", "-o", "json"],
        )
        .await,
    );
    assert_eq!(all[0]["completion_note"], "suspension was right");
}

/// `steward policy` and `steward rules`: a document that is not valid is
/// reported by line (or path), exits 2 and is not uploaded; a valid one is
/// uploaded, activated with a reason, shown, listed and rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_manage_policy_sets_and_response_rules_from_the_cli() {
    let stack = TestStack::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let broken = file("broken.cedar", "permit (principal, action, resource)\n");
    // A site's set starts with Steward's defaults: without their
    // manage_policy permit, activating it would lock the operator out.
    let policies = file(
        "site.cedar",
        &format!(
            "{}\n{BROKER_POLICIES}\n{POLICIES}",
            steward_authority::engine::DEFAULT_POLICIES
        ),
    );
    let bad_rules = file(
        "bad-rules.json",
        r#"{"rules": [{"id": "", "signal_kind": "secret_exposed", "actions": []}]}"#,
    );
    let rules = file(
        "rules.json",
        r#"{"rules": [{"id": "contain-exposed-secrets", "signal_kind": "secret_exposed",
            "min_severity": "high", "actions": ["watchlist", "restrict"],
            "reason": "an exposed secret is contained at once"}]}"#,
    );
    let versions = async |noun: &str| {
        json(&steward_on(&stack, "authority", &["-o", "json", noun, "list"]).await)
            .as_array()
            .unwrap()
            .len()
    };

    // Not valid: said where, exit 2, nothing uploaded.
    let before = versions("policy").await;
    let said = exits(
        &steward_on(&stack, "authority", &["policy", "validate", &broken]).await,
        2,
    );
    assert!(said.contains("broken.cedar: line "), "{said}");
    exits(
        &steward_on(&stack, "authority", &["policy", "upload", &broken]).await,
        2,
    );
    assert_eq!(versions("policy").await, before);
    let said = exits(
        &steward_on(&stack, "authority", &["rules", "upload", &bad_rules]).await,
        2,
    );
    assert!(said.contains("bad-rules.json: rules[0]"), "{said}");
    assert_eq!(versions("rules").await, 0);

    // Valid: uploaded and activated in one step, with the reason recorded.
    let checked = json(
        &steward_on(
            &stack,
            "authority",
            &["-o", "json", "policy", "validate", &policies],
        )
        .await,
    );
    assert!(
        checked["ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|id| id == "operators-revoke"),
        "{checked}"
    );
    let uploaded = json(
        &steward_on(
            &stack,
            "authority",
            &[
                "-o",
                "json",
                "policy",
                "upload",
                &policies,
                "--description",
                "operators may revoke",
                "--activate",
                "--reason",
                "CHG-7",
            ],
        )
        .await,
    );
    let version = uploaded["version"].as_u64().unwrap();
    assert!(uploaded["active"].as_bool().unwrap(), "{uploaded}");
    assert_eq!(
        uploaded["uploaded_by"],
        "spiffe://steward.test/operator/admin"
    );
    let active = json(&steward_on(&stack, "authority", &["-o", "json", "policy", "show"]).await);
    assert_eq!(active["version"].as_u64(), Some(version));
    assert!(
        active["document"]
            .as_str()
            .unwrap()
            .contains("operators-revoke")
    );
    let listed = json(&steward_on(&stack, "authority", &["-o", "json", "policy", "list"]).await);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["version"].as_u64() == Some(version) && v["active"] == true),
        "{listed}"
    );
    // The table says what to do next for a version not yet active.
    let table = steward_on(&stack, "authority", &["rules", "upload", &rules]).await;
    let said = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(said.contains("uploaded response rules version 1"), "{said}");
    assert!(said.contains("steward rules activate 1"), "{said}");
    json(
        &steward_on(
            &stack,
            "authority",
            &["-o", "json", "rules", "activate", "1", "--reason", "CHG-8"],
        )
        .await,
    );
    let shown = json(&steward_on(&stack, "authority", &["-o", "json", "rules", "show", "1"]).await);
    assert!(shown["active"].as_bool().unwrap(), "{shown}");
    assert_eq!(shown["ids"][0], "contain-exposed-secrets");

    // An unknown version is not found; a rollback goes back one version.
    exits(
        &steward_on(
            &stack,
            "authority",
            &["rules", "activate", "99", "--reason", "typo"],
        )
        .await,
        4,
    );
    let again = json(
        &steward_on(
            &stack,
            "authority",
            &[
                "-o",
                "json",
                "policy",
                "upload",
                &policies,
                "--activate",
                "--reason",
                "CHG-9",
            ],
        )
        .await,
    );
    assert_eq!(again["version"].as_u64(), Some(version + 1));
    let back = json(
        &steward_on(
            &stack,
            "authority",
            &["-o", "json", "policy", "rollback", "--reason", "undo CHG-9"],
        )
        .await,
    );
    assert_eq!(back["version"].as_u64(), Some(version), "{back}");
    let active = json(&steward_on(&stack, "authority", &["-o", "json", "policy", "show"]).await);
    assert_eq!(active["version"].as_u64(), Some(version));
}

/// The incident story's other commands: the SOAR bot's `credential issue`
/// and `rotate`, `grant list/show/revoke`, on call's `identity transition`
/// (which authority decides first, with the person's grants) and the
/// auditor's `audit follow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_grants_transitions_and_the_audit_stream_from_the_cli() {
    let stack = TestStack::start().await;
    let policies = format!(
        "{BROKER_POLICIES}\n@id(\"oncall-may-break-glass\")\npermit (principal == Steward::Human::\"oncall\", action == Steward::Action::\"break_glass\", resource);\n"
    );
    stack.activate_policies(&policies, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    stack.pki.client(
        "soar",
        &steward_integration_tests::spiffe_id(SOAR).to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let oncall = dir.path().join("oncall");
    std::fs::write(&oncall, stack.token("oncall")).unwrap();
    let task = [
        "--identity",
        &identity.id,
        "--incident",
        "INC-5",
        "--scope",
        "ledger:write",
        "--correlation-id",
        "chain-5",
    ];

    let issued = json(
        &steward(
            &stack,
            "soar",
            &[&["credential", "issue"][..], &task, &["-o", "json"]].concat(),
        )
        .await,
    );
    assert!(
        issued["token"].as_str().unwrap().starts_with("stw_"),
        "{issued}"
    );
    assert_eq!(issued["lease"]["kind"], "api-token");
    assert_eq!(issued["lease"]["incident_ref"], "INC-5");
    let first = issued["lease"]["lease_id"].as_str().unwrap().to_owned();
    let err = exits(
        &steward(
            &stack,
            "soar",
            &[&["credential", "issue", "--kind", "jwt-svid"][..], &task].concat(),
        )
        .await,
        2,
    );
    assert!(err.contains("audience"), "{err}");
    let rotated = json(
        &steward(
            &stack,
            "soar",
            &[&["credential", "rotate"][..], &task, &["-o", "json"]].concat(),
        )
        .await,
    );
    assert_eq!(rotated["state"], "confirmed", "{rotated}");
    assert_eq!(rotated["old_lease_ids"], serde_json::json!([first]));
    assert_ne!(rotated["token"], issued["token"]);

    // A break-glass grant, read and revoked from the CLI.
    let glass = [
        "breakglass",
        "invoke",
        "--action",
        "suspend",
        "--identity",
        &identity.id,
        "--incident",
        "INC-5",
        "--reason",
        "its key is being abused",
        "-o",
        "json",
    ];
    let invoked = json(&steward_authority(&stack, Some(&oncall), &glass).await);
    let grant = invoked["grant_id"].as_str().unwrap().to_owned();
    let listed = json(
        &steward_authority(
            &stack,
            None,
            &["grant", "list", "--incident", "INC-5", "-o", "json"],
        )
        .await,
    );
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], grant.as_str());
    assert_eq!(listed[0]["break_glass"], true);
    assert_eq!(listed[0]["state"], "active");
    let shown =
        json(&steward_authority(&stack, None, &["grant", "show", &grant, "-o", "json"]).await);
    assert_eq!(shown["principal"], "oncall");
    assert_eq!(shown["action"], "suspend");
    let revoked = json(
        &steward_authority(
            &stack,
            None,
            &[
                "grant",
                "revoke",
                &grant,
                "--reason",
                "not needed",
                "-o",
                "json",
            ],
        )
        .await,
    );
    assert_eq!(revoked["state"], "revoked");

    // Without a grant, authority refuses on call's suspension, and nothing
    // changes; with a fresh break-glass it goes through.
    let suspend = [
        "identity",
        "transition",
        &identity.id,
        "--to",
        "suspended",
        "--incident",
        "INC-5",
        "--reason",
        "its key is being abused",
        "--correlation-id",
        "chain-5",
        "-o",
        "json",
    ];
    let on_inventory = |token: Option<&Path>, extra: &[&str]| {
        // A transition asks authority first: the CLI needs both addresses.
        let mut args: Vec<String> = vec![
            "--service-addr".to_owned(),
            format!("authority={}", stack.service("authority").address()),
        ];
        if let Some(token) = token {
            args.extend(["--token-file".to_owned(), token.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let stack = &stack;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            steward_on(stack, "inventory", &args).await
        }
    };
    let err = exits(&on_inventory(Some(&oncall), &suspend).await, 5);
    assert!(err.contains("denied suspend"), "{err}");
    let unchanged =
        json(&on_inventory(None, &["identity", "show", &identity.id, "-o", "json"]).await);
    assert_eq!(unchanged["state"], "active");
    json(&steward_authority(&stack, Some(&oncall), &glass).await);
    let suspended = json(&on_inventory(Some(&oncall), &suspend).await);
    assert_eq!(suspended["state"], "suspended", "{suspended}");

    // The auditor's stream of the chain.
    let mut seen = Vec::new();
    for _ in 0..20 {
        let out = steward_on(
            &stack,
            "audit",
            &[
                "audit",
                "follow",
                "--correlation-id",
                "chain-5",
                "--idle-seconds",
                "1",
                "-o",
                "json",
            ],
        )
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let line: serde_json::Value = serde_json::from_str(l).unwrap();
                line["entry"]["action"].as_str().unwrap().to_owned()
            })
            .collect();
        if [
            "credential.rotate",
            "credential.rotation_confirmed",
            "identity.suspend",
        ]
        .iter()
        .all(|a| seen.iter().any(|s| s == a))
        {
            return;
        }
    }
    panic!("the chain's records did not all arrive: {seen:?}");
}

/// `~/.config/steward/config.toml` (here `--config`): the SVID, the
/// services' addresses and the output format come from the file, and a
/// flag wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_its_settings_from_a_file_below_its_flags() {
    let stack = TestStack::start().await;
    stack.workload_identity("billing-sync", "production").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = stack.pki.path();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "cert = {:?}\nkey = {:?}\nbundle = {:?}\noutput = \"json\"\n\n[services]\ninventory = {:?}\nauthority = {:?}\n",
            pki.join("operator.crt"),
            pki.join("operator.key"),
            pki.join("bundle.pem"),
            stack.service("inventory").address(),
            stack.service("authority").address(),
        ),
    )
    .unwrap();
    let with = |extra: &[&str]| {
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        run_steward(args)
    };
    let listed = json(&with(&["identity", "list"]).await);
    assert_eq!(
        listed[0]["display_name"], "billing-sync connector",
        "{listed}"
    );
    let table = with(&["-o", "table", "identity", "list"]).await;
    assert!(
        String::from_utf8_lossy(&table.stdout).starts_with("IDENTITY"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    // --addr names the one service to talk to, over the file: authority is
    // not inventory, and the CLI will not talk to it as inventory.
    let wrong = with(&[
        "--addr",
        &stack.service("authority").address(),
        "identity",
        "list",
    ])
    .await;
    exits(&wrong, 7);

    std::fs::write(&config, "colour = \"blue\"\n").unwrap();
    let err = exits(&with(&["identity", "list"]).await, 2);
    assert!(
        err.contains("config.toml") && err.contains("colour"),
        "{err}"
    );
    let missing = dir.path().join("nope.toml");
    let err = exits(
        &run_steward(vec![
            "--config".into(),
            missing.display().to_string(),
            "identity".into(),
            "list".into(),
        ])
        .await,
        2,
    );
    assert!(err.contains("does not exist"), "{err}");
}

/// `steward completions <shell>` prints a script that knows the commands.
#[tokio::test]
async fn the_cli_prints_shell_completions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_steward(vec!["completions".into(), shell.into()]).await;
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for word in ["steward", "credential", "rotate", "breakglass"] {
            assert!(script.contains(word), "{shell}: {word}");
        }
    }
    let out = run_steward(vec!["completions".into(), "cmd.exe".into()]).await;
    assert_eq!(out.status.code(), Some(2));
}

/// `steward … | head` ends quietly when the reader closes the pipe.
#[tokio::test]
async fn a_closed_pipe_ends_the_cli_quietly() {
    let mut child = std::process::Command::new(binary_dir().join("steward"))
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end. The script (over 200 KB) does not fit in the
    // pipe's buffer, so the write fails whenever it starts.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
