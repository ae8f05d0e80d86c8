//! What an operator's tools read from a running Steward: one trace per
//! request across the services, sent to a real OTLP/gRPC receiver; the
//! evidence record naming that trace; Prometheus metrics parsed by a
//! Prometheus text-format parser. Real binaries in real processes
//! (`steward dev up`), since tracing and metrics are per process.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use steward_integration_tests::dev::{dev_up_with, free_base_port, interrupt_and_wait, steward};
use steward_integration_tests::otlp::{Received, Receiver, resource_attribute};
use steward_integration_tests::workspace_root;

/// `steward` as one of the dev PKI's identities (`operator`, `soar`, …).
fn steward_as(dir: &Path, base: u16, who: &str) -> Command {
    let pki = dir.join(".steward/dev/pki");
    let mut command = steward(dir);
    command
        .arg("--cert")
        .arg(pki.join(format!("{who}.crt")))
        .arg("--key")
        .arg(pki.join(format!("{who}.key")))
        .args(["--base-port", &base.to_string()]);
    command
}

fn succeeded(output: Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The demo's policies active and its sample identities imported; the id
/// of the GitHub token `soar` may issue under a change ticket.
fn seed(dir: &Path, base: u16) -> String {
    let root = workspace_root();
    let policies = dir.join("policies.cedar");
    let text = [
        std::fs::read_to_string(root.join("services/authority/policy/default.cedar")).unwrap(),
        std::fs::read_to_string(root.join("deploy/demo/site.cedar")).unwrap(),
    ]
    .join("\n");
    std::fs::write(&policies, text).unwrap();
    succeeded(
        steward_as(dir, base, "operator")
            .args(["policy", "upload"])
            .arg(&policies)
            .args(["--description", "site", "--activate", "--reason", "test"])
            .output()
            .unwrap(),
    );
    let imported = steward_as(dir, base, "operator")
        .args(["identity", "import"])
        .arg(root.join("deploy/samples/identities.csv"))
        .args(["--format", "csv"])
        .output()
        .unwrap();
    // 2: some rows were refused and reported, the others applied.
    assert!(
        matches!(imported.status.code(), Some(0 | 2)),
        "{imported:?}"
    );
    let listed = succeeded(
        steward_as(dir, base, "operator")
            .args([
                "identity",
                "list",
                "--text",
                "billing-sync GitHub",
                "-o",
                "json",
            ])
            .output()
            .unwrap(),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    listed[0]["id"].as_str().unwrap().to_owned()
}

/// `soar` issues a token for `identity`, continuing `traceparent`.
fn issue(dir: &Path, base: u16, identity: &str, traceparent: &str) -> serde_json::Value {
    let out = succeeded(
        steward_as(dir, base, "soar")
            .env("TRACEPARENT", traceparent)
            .args(["credential", "issue", "--identity", identity])
            .args(["--incident", "CHG-7", "--window-minutes", "60"])
            .args(["--scope", "repo:write", "--reason", "traced", "-o", "json"])
            .output()
            .unwrap(),
    );
    serde_json::from_str(&out).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(spans: &[Received]) -> String {
    spans
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} span={} parent={}",
                r.service,
                r.span.name,
                r.kind(),
                hex(&r.span.span_id),
                hex(&r.span.parent_span_id)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn find<'a>(
    spans: &'a [Received],
    service: &str,
    name: &str,
    kind: SpanKind,
) -> Option<&'a Received> {
    spans
        .iter()
        .find(|r| r.service == service && r.span.name == name && r.kind() == kind)
}

const ISSUE: &str = "steward.broker.v1.CredentialBroker/IssueApiToken";
const AUTHORIZE_BATCH: &str = "steward.authority.v1.AuthorityService/AuthorizeBatch";
const APPEND_BATCH: &str = "steward.audit.v1.AuditService/AppendBatch";

/// Whether the trace has reached audit: the broker's issue, its batch to
/// authority on both sides, and its evidence appended on both sides.
fn complete(spans: &[Received]) -> bool {
    find(spans, "steward-credential-broker", ISSUE, SpanKind::Server).is_some()
        && find(
            spans,
            "steward-authority",
            AUTHORIZE_BATCH,
            SpanKind::Server,
        )
        .is_some()
        && find(spans, "steward-audit", APPEND_BATCH, SpanKind::Server).is_some()
        && find(
            spans,
            "steward-credential-broker",
            APPEND_BATCH,
            SpanKind::Client,
        )
        .is_some()
}

#[test]
fn one_issuance_is_one_trace_from_the_caller_through_authority_to_audit() {
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let endpoint = receiver.endpoint();
    let (child, _) = dev_up_with(
        dir.path(),
        base,
        &[
            ("STEWARD_TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
            // Export within a tenth of a second, not the default five.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
        Stdio::null(),
    );
    let identity = seed(dir.path(), base);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let issued = issue(
        dir.path(),
        base,
        &identity,
        &format!("00-{trace_id}-{caller_span}-01"),
    );
    let lease_id = issued["lease"]["lease_id"].as_str().unwrap().to_owned();

    let wanted = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>();
    let spans = receiver.wait_for(&wanted, Duration::from_secs(20), complete);
    let all = describe(&spans);
    assert!(complete(&spans), "the trace did not reach audit:\n{all}");

    // The broker continued the caller's trace: its SERVER span's parent is
    // the caller's span, and it names the caller and the RPC.
    let served = find(&spans, "steward-credential-broker", ISSUE, SpanKind::Server).unwrap();
    assert_eq!(hex(&served.span.parent_span_id), caller_span, "{all}");
    assert_eq!(served.attribute("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        served.attribute("rpc.service").as_deref(),
        Some("steward.broker.v1.CredentialBroker")
    );
    assert_eq!(
        served.attribute("rpc.method").as_deref(),
        Some("IssueApiToken")
    );
    assert_eq!(served.int_attribute("rpc.grpc.status_code"), Some(0));
    assert_eq!(
        served.attribute("steward.caller").as_deref(),
        Some("spiffe://steward.local/automation/soar")
    );

    // The broker's batch to authority: a CLIENT span under the issue (it
    // was the only request in its batch) that links to it, and
    // authority's SERVER span under that.
    let asked = find(
        &spans,
        "steward-credential-broker",
        AUTHORIZE_BATCH,
        SpanKind::Client,
    )
    .expect(&all);
    assert_eq!(asked.span.parent_span_id, served.span.span_id, "{all}");
    assert!(
        asked
            .span
            .links
            .iter()
            .any(|l| l.span_id == served.span.span_id && l.trace_id == wanted),
        "the batch does not link to the request it decided:\n{all}"
    );
    let decided = find(
        &spans,
        "steward-authority",
        AUTHORIZE_BATCH,
        SpanKind::Server,
    )
    .unwrap();
    assert_eq!(decided.span.parent_span_id, asked.span.span_id, "{all}");

    // The evidence went later, from the outbox, and still joins the
    // trace: the forwarder's call is a child of the span that wrote the
    // record, and audit's SERVER span a child of that call.
    let forwarded = find(
        &spans,
        "steward-credential-broker",
        APPEND_BATCH,
        SpanKind::Client,
    )
    .unwrap();
    let writer = spans
        .iter()
        .find(|r| r.span.span_id == forwarded.span.parent_span_id)
        .expect(&all);
    assert_eq!(writer.service, "steward-credential-broker", "{all}");
    let appended = find(&spans, "steward-audit", APPEND_BATCH, SpanKind::Server).unwrap();
    assert_eq!(
        appended.span.parent_span_id, forwarded.span.span_id,
        "{all}"
    );

    // No header value reached a span: the caller's SVID is named, its
    // bearer metadata (none here) and the token issued are not.
    let token = issued["token"].as_str().unwrap_or_default();
    assert!(!token.is_empty());
    for received in &spans {
        let text = format!("{:?}", received.span);
        assert!(!text.contains(token), "a span carries the token");
    }

    // Every resource says what it is: name, version and an instance id.
    for resource in receiver.resources() {
        let name = resource_attribute(&resource, "service.name").unwrap();
        assert!(name.starts_with("steward-"), "{name}");
        assert!(resource_attribute(&resource, "service.version").is_some());
        let instance = resource_attribute(&resource, "service.instance.id").unwrap();
        assert!(uuid::Uuid::parse_str(&instance).is_ok(), "{instance}");
    }

    // The evidence record names the trace, and `steward audit` shows it.
    let mut found = None;
    for _ in 0..40 {
        let out = succeeded(
            steward_as(dir.path(), base, "auditor")
                .args(["audit", "follow", "--incident", "CHG-7"])
                .args(["--idle-seconds", "1", "-o", "json"])
                .output()
                .unwrap(),
        );
        found = out
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| {
                l["entry"]["action"] == "credential.issue"
                    && l["entry"]["target"]["lease_id"] == lease_id.as_str()
            });
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let entry = found.expect("no credential.issue record for the lease");
    assert_eq!(entry["entry"]["trace"]["trace_id"], trace_id, "{entry}");
    assert_eq!(
        entry["entry"]["trace"]["span_id"],
        hex(&writer.span.span_id),
        "{entry}"
    );
    let table = succeeded(
        steward_as(dir.path(), base, "auditor")
            .args([
                "audit",
                "follow",
                "--incident",
                "CHG-7",
                "--idle-seconds",
                "1",
            ])
            .output()
            .unwrap(),
    );
    assert!(table.contains(trace_id), "{table}");

    assert!(interrupt_and_wait(child).success());
}

/// One scrape of `/metrics` on a service's ops port, parsed by a
/// Prometheus text-format parser.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

/// The sum of `metric`'s samples whose labels include `labels`: a counter's
/// or gauge's value, a histogram's count of observations.
fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.iter().map(|b| b.count).fold(0.0, f64::max)
            }
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[test]
fn every_service_serves_prometheus_metrics_that_move_with_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let (child, _) = dev_up_with(dir.path(), base, &[], Stdio::null());
    let identity = seed(dir.path(), base);
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    issue(dir.path(), base, &identity, parent);

    // inventory, authority, credential-broker, audit: ops 10 above gRPC.
    let ports = [base + 10, base + 11, base + 12, base + 13];
    let before: Vec<_> = ports.iter().map(|p| scrape(*p)).collect();
    issue(dir.path(), base, &identity, parent);
    // The evidence reaches audit through the outbox.
    std::thread::sleep(Duration::from_secs(1));
    let after: Vec<_> = ports.iter().map(|p| scrape(*p)).collect();

    let moved = |i: usize, metric: &str, labels: &[(&str, &str)]| {
        let was = value(&before[i], metric, labels).unwrap_or(0.0);
        let is = value(&after[i], metric, labels)
            .unwrap_or_else(|| panic!("service {i} has no {metric} {labels:?}"));
        assert!(is > was, "service {i}: {metric} {labels:?} stayed at {was}");
    };
    let present = |i: usize, metric: &str, labels: &[(&str, &str)]| {
        value(&after[i], metric, labels)
            .unwrap_or_else(|| panic!("service {i} has no {metric} {labels:?}"))
    };

    // Per RPC, on every service: calls, codes and latency.
    let broker_issue = [
        ("grpc_service", "steward.broker.v1.CredentialBroker"),
        ("grpc_method", "IssueApiToken"),
    ];
    moved(2, "grpc_server_started_total", &broker_issue);
    moved(
        2,
        "grpc_server_handled_total",
        &[broker_issue[0], broker_issue[1], ("grpc_code", "OK")],
    );
    moved(2, "grpc_server_handling_seconds", &broker_issue);
    let batch = [
        ("grpc_service", "steward.authority.v1.AuthorityService"),
        ("grpc_method", "AuthorizeBatch"),
    ];
    moved(
        1,
        "grpc_server_handled_total",
        &[batch[0], batch[1], ("grpc_code", "OK")],
    );
    moved(
        2,
        "grpc_client_handled_total",
        &[batch[0], batch[1], ("grpc_code", "OK")],
    );
    moved(
        3,
        "grpc_server_handled_total",
        &[("grpc_method", "AppendBatch"), ("grpc_code", "OK")],
    );
    for i in 0..4 {
        present(i, "grpc_server_handling_seconds", &[]);
    }

    // Each service's own.
    assert!(present(0, "steward_inventory_identities", &[("state", "active")]) > 0.0);
    present(0, "steward_inventory_identities", &[("state", "revoked")]);
    moved(
        1,
        "steward_authority_decisions_total",
        &[("effect", "allow")],
    );
    let cache = [
        "steward_authority_facts_cache_hits_total",
        "steward_authority_facts_cache_misses_total",
    ]
    .iter()
    .map(|m| value(&after[1], m, &[]).unwrap_or(0.0))
    .sum::<f64>();
    assert!(cache > 0.0);
    present(1, "steward_authority_pending_approval_requests", &[]);
    moved(
        2,
        "steward_broker_credentials_issued_total",
        &[("kind", "api_token")],
    );
    moved(2, "steward_broker_active_leases", &[("kind", "api_token")]);
    present(2, "steward_broker_active_leases", &[("kind", "x509_svid")]);
    present(2, "steward_broker_reaper_backlog_leases", &[]);
    moved(3, "steward_audit_tree_size", &[]);
    moved(3, "steward_audit_append_seconds", &[]);
    assert_eq!(present(3, "steward_audit_sequencer", &[]), 1.0);
    // One process per service: it holds every once-only role.
    assert_eq!(
        present(2, "steward_role_held", &[("role", "broker.reaper")]),
        1.0
    );
    assert_eq!(
        present(1, "steward_role_held", &[("role", "authority.responder")]),
        1.0
    );
    for i in 0..3 {
        assert_eq!(present(i, "steward_role_held", &[("role", "outbox")]), 1.0);
        present(i, "steward_outbox_pending_records", &[]);
        present(i, "steward_outbox_parked_records", &[]);
        present(i, "steward_outbox_oldest_pending_age_seconds", &[]);
    }

    assert!(interrupt_and_wait(child).success());
}

/// Polls `service`'s `/readyz` until it answers `status` (within 15 s).
async fn ready_turns(stack: &steward_integration_tests::TestStack, service: &str, status: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (now, _) = stack.service(service).probe("/readyz").await;
        if now == status {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{service} /readyz stayed {now}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The broker cannot issue without authority, so it is not ready without
/// it; inventory serves reads without authority, so it stays ready; both
/// are ready again once authority is back, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_counts_only_the_peers_a_service_cannot_work_without() {
    let mut stack = steward_integration_tests::TestStack::start().await;
    ready_turns(&stack, "credential-broker", 200).await;
    ready_turns(&stack, "authority", 200).await;
    let authority: std::net::SocketAddr = stack.service("authority").address().parse().unwrap();

    stack.stop("authority").await;
    ready_turns(&stack, "credential-broker", 503).await;
    assert_eq!(stack.service("inventory").probe("/readyz").await.0, 200);
    assert_eq!(stack.service("audit").probe("/readyz").await.0, 200);
    // Liveness is the process alone.
    assert_eq!(
        stack.service("credential-broker").probe("/healthz").await.0,
        200
    );

    stack.restart_on("authority", authority).await;
    ready_turns(&stack, "credential-broker", 200).await;

    // Authority, likewise, needs inventory.
    let inventory: std::net::SocketAddr = stack.service("inventory").address().parse().unwrap();
    stack.stop("inventory").await;
    ready_turns(&stack, "authority", 503).await;
    stack.restart_on("inventory", inventory).await;
    ready_turns(&stack, "authority", 200).await;
}
