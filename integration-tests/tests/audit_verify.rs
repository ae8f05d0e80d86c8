//! `steward audit verify` and `steward audit export` against a real audit
//! service, including a tampered and a truncated log.

use std::path::{Path, PathBuf};
use std::process::Output;

use steward_integration_tests::evidence::append_many;
use steward_integration_tests::{TestStack, execute_sql, run_steward};

struct Cli {
    args: Vec<String>,
    vkey: PathBuf,
    state: PathBuf,
}

impl Cli {
    fn new(stack: &TestStack) -> Self {
        let pki = stack.pki.path();
        let vkey = stack.pki.log_verifier_key();
        let args = stack
            .pki
            .cli_args("operator", &stack.service("audit").address());
        Self {
            args,
            vkey,
            state: pki.join("verify-state/trusted"),
        }
    }

    fn set_addr(&mut self, addr: String) {
        let last = self.args.len() - 1;
        self.args[last] = addr;
    }

    async fn run(&self, extra: &[&str]) -> Output {
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        run_steward(args).await
    }

    async fn verify(&self) -> (i32, String) {
        let vkey = self.vkey.display().to_string();
        let state = self.state.display().to_string();
        let out = self
            .run(&["audit", "verify", "--vkey", &vkey, "--state", &state])
            .await;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }
}

fn assert_exists(path: &Path) {
    assert!(path.exists(), "{} missing", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_an_honest_log_and_follows_it_as_it_grows() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 25, "INC-42").await;
    let cli = Cli::new(&stack);

    let (code, out) = cli.verify().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified 25 entries"), "{out}");
    assert!(out.contains("first run"), "{out}");
    assert_exists(&cli.state);

    append_many(&mut writer, 10, "INC-42").await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified 35 entries"), "{out}");
    assert!(out.contains("trusted before (size 25)"), "{out}");

    // Export: one JSON object per line whose leaf hashes to the logged hash.
    let file = stack.pki.path().join("export.jsonl");
    let out = cli
        .run(&["audit", "export", "--file", &file.display().to_string()])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 35);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], i as u64);
        let leaf = serde_json::to_vec(&line["entry"]).unwrap();
        let hash: String = steward_evidence::leaf_hash(&leaf)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(line["leaf_hash"], hash.as_str(), "line {i}");
        assert_eq!(line["entry"]["incident_ref"], "INC-42");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_accepts_an_empty_log_and_then_its_growth() {
    let stack = TestStack::audit_only().await;
    let cli = Cli::new(&stack);
    for run in 0..2 {
        let (code, out) = cli.verify().await;
        assert_eq!(code, 0, "run {run}: {out}");
        assert!(out.contains("verified 0 entries"), "{out}");
    }
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 3, "INC-1").await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified 3 entries"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_the_first_bad_index_when_a_stored_record_is_edited() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 12, "INC-42").await;
    let cli = Cli::new(&stack);
    assert_eq!(cli.verify().await.0, 0);

    // Someone with database access rewrites the action of entry 4.
    execute_sql(
        &stack.configs["audit"].database,
        "UPDATE entries SET leaf = replace(leaf, '\"action\":\"identity.watchlist\"', '\"action\":\"identity.restore\"') WHERE idx = 4",
    )
    .await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("first bad index: entry 4 "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_a_truncated_log_by_its_consistency_check() {
    let mut stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 9, "INC-42").await;
    let mut cli = Cli::new(&stack);
    assert_eq!(cli.verify().await.0, 0);
    drop(writer);

    // The log is cut back to 5 entries (and its checkpoints with it), the
    // service restarted, and new records appended past the old size.
    stack.stop("audit").await;
    let config = stack.configs["audit"].database.clone();
    execute_sql(&config, "DELETE FROM entries WHERE idx >= 5").await;
    execute_sql(&config, "DELETE FROM checkpoints WHERE tree_size > 5").await;
    let addr = stack.restart_stopped("audit").await;
    cli.set_addr(addr);

    let mut writer = stack.audit_as_service("inventory").await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("shrank"), "{out}");

    append_many(&mut writer, 7, "INC-43").await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("not consistent with the checkpoint trusted before (size 9)"),
        "{out}"
    );
}

/// Audit's health as the operator sees it.
async fn audit_health(stack: &TestStack) -> i32 {
    let channel = stack.service("audit").channel(&stack.operator).await;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blanked_index_column_is_found_at_start_and_the_log_is_not_vouched_for() {
    let mut stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 11, "INC-42").await;
    let mut cli = Cli::new(&stack);
    assert_eq!(cli.verify().await.0, 0);
    drop(writer);

    // Someone with database access hides entry 3 from Query(incident_ref)
    // by blanking its copy column; the leaf and its hash are untouched.
    stack.stop("audit").await;
    execute_sql(
        &stack.configs["audit"].database,
        "UPDATE entries SET incident_ref = '' WHERE idx = 3",
    )
    .await;
    cli.set_addr(stack.restart_stopped("audit").await);

    // Audit found it at start: NOT_SERVING, no checkpoint, no append.
    assert_eq!(
        audit_health(&stack).await,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
    let mut reader = stack.audit_reader().await;
    let err = reader
        .get_checkpoint(steward_proto::steward::audit::v1::GetCheckpointRequest { fresh: true })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss);
    assert!(
        err.message()
            .contains("entry 3: its incident_ref column differs from its leaf"),
        "{}",
        err.message()
    );
    let mut writer = stack.audit_as_service("inventory").await;
    let err = writer
        .append(steward_proto::steward::audit::v1::AppendRequest {
            record: Some(steward_integration_tests::evidence::record(99, "INC-42")),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DataLoss, "{}", err.message());

    // And `verify` says why, as a failed verification.
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("entry 3: its incident_ref column differs"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_leaf_text_is_found_at_start() {
    let mut stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 6, "INC-42").await;
    drop(writer);
    let mut cli = Cli::new(&stack);
    stack.stop("audit").await;
    execute_sql(
        &stack.configs["audit"].database,
        "UPDATE entries SET leaf = replace(leaf, 'INC-42', 'INC-43') WHERE idx = 4",
    )
    .await;
    cli.set_addr(stack.restart_stopped("audit").await);
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("entry 4: its leaf text does not hash to its leaf hash"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_with_3_on_an_entry_audit_cannot_read() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 5, "INC-42").await;
    let cli = Cli::new(&stack);
    assert_eq!(cli.verify().await.0, 0);
    execute_sql(
        &stack.configs["audit"].database,
        "UPDATE entries SET leaf = 'not a record' WHERE idx = 2",
    )
    .await;
    let (code, out) = cli.verify().await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("entry 2"), "{out}");
}
