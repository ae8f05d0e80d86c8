//! `steward workload` against the real inventory: registration entries
//! registered, listed by selector and SPIFFE ID, shown, updated and
//! deleted, as `spire-server entry` keeps them; a bad selector is refused
//! by field, by the CLI or by inventory, with the exit code for a bad
//! argument.

use std::process::Output;

use steward_integration_tests::{TestStack, cli_json, exits, run_steward};

async fn workload(stack: &TestStack, extra: &[&str]) -> Output {
    let mut args = stack
        .pki
        .cli_args("operator", &stack.service("inventory").address());
    args.push("workload".to_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    run_steward(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_register_list_show_update_and_delete_workloads_from_the_cli() {
    let stack = TestStack::start().await;
    let identity = stack.workload_identity("cli-ledger", "production").await;
    let register = |selector: &'static str| {
        [
            "register",
            "--spiffe-id",
            identity.spiffe_id.as_str(),
            "--identity",
            identity.id.as_str(),
            "--selector",
            selector,
            "--selector",
            "unix:path:/usr/bin/ledger",
            "--dns-name",
            "ledger.internal",
            "--x509-ttl",
            "600",
            "--output",
            "json",
        ]
    };

    // Refused by the CLI (no type), then by inventory (not a uid): the
    // field is named either way, and nothing is registered.
    let stderr = exits(&workload(&stack, &register("nocolon")).await, 2);
    assert!(stderr.contains("--selector: "), "{stderr}");
    let stderr = exits(&workload(&stack, &register("unix:uid:alice")).await, 2);
    assert!(stderr.contains("entry.selectors[0]"), "{stderr}");
    let listed = workload(&stack, &["list", "--output", "json"]).await;
    exits(&listed, 0);
    assert_eq!(cli_json(&listed), serde_json::json!([]));

    let registered = workload(&stack, &register("unix:uid:4242")).await;
    exits(&registered, 0);
    let entry = cli_json(&registered);
    let id = entry["id"].as_str().unwrap().to_owned();
    assert_eq!(entry["spiffe_id"], identity.spiffe_id.as_str());
    assert_eq!(
        entry["parent_id"],
        "spiffe://steward.test/service/credential-broker"
    );
    assert_eq!(
        entry["selectors"],
        serde_json::json!(["unix:path:/usr/bin/ledger", "unix:uid:4242"])
    );
    assert_eq!(entry["dns_names"], serde_json::json!(["ledger.internal"]));
    assert_eq!(entry["x509_svid_ttl"], 600);

    for (filter, value, found) in [
        ("--selector", "unix:uid:4242", 1),
        ("--selector", "unix:uid:1", 0),
        ("--spiffe-id", identity.spiffe_id.as_str(), 1),
        ("--spiffe-id", "spiffe://steward.test/workload/other", 0),
        ("--identity", identity.id.as_str(), 1),
    ] {
        let listed = workload(&stack, &["list", filter, value, "--output", "json"]).await;
        exits(&listed, 0);
        let listed = cli_json(&listed);
        assert_eq!(listed.as_array().unwrap().len(), found, "{filter} {value}");
    }
    let table = workload(&stack, &["list"]).await;
    exits(&table, 0);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains(&id) && table.contains("unix:uid:4242"),
        "{table}"
    );

    let shown = workload(&stack, &["show", &id, "--output", "json"]).await;
    exits(&shown, 0);
    assert_eq!(cli_json(&shown)["id"], id.as_str());

    // Update: only what the flags name; refusals name the field.
    let updated = workload(
        &stack,
        &[
            "update",
            &id,
            "--x509-ttl",
            "900",
            "--dns-name",
            "a.internal",
            "--dns-name",
            "b.internal",
            "--output",
            "json",
        ],
    )
    .await;
    exits(&updated, 0);
    let updated = cli_json(&updated);
    assert_eq!(updated["x509_svid_ttl"], 900);
    assert_eq!(
        updated["dns_names"],
        serde_json::json!(["a.internal", "b.internal"])
    );
    assert_eq!(updated["selectors"], entry["selectors"]);
    // The change is recorded, naming what changed.
    let recorded = stack
        .evidence_of(&identity.id, "registration.update", 1)
        .await
        .into_iter()
        .filter_map(|e| e.record)
        .find(|r| r.action == "registration.update")
        .expect("a registration.update record");
    assert_eq!(
        recorded.attributes.get("fields").map(String::as_str),
        Some("x509_svid_ttl,dns_names")
    );
    let stderr = exits(&workload(&stack, &["update", &id]).await, 2);
    assert!(stderr.contains("nothing to change"), "{stderr}");
    let stderr = exits(
        &workload(&stack, &["update", &id, "--selector", "unix:uid:bob"]).await,
        2,
    );
    assert!(stderr.contains("entry.selectors[0]"), "{stderr}");
    let cleared = workload(
        &stack,
        &["update", &id, "--no-dns-names", "--output", "json"],
    )
    .await;
    exits(&cleared, 0);
    assert_eq!(cli_json(&cleared)["dns_names"], serde_json::json!([]));
    let unknown = uuid::Uuid::now_v7().to_string();
    exits(
        &workload(&stack, &["update", &unknown, "--jwt-ttl", "60"]).await,
        4,
    );

    exits(&workload(&stack, &["delete", &id]).await, 0);
    exits(&workload(&stack, &["show", &id]).await, 4);
    exits(&workload(&stack, &["delete", &id]).await, 4);
}
