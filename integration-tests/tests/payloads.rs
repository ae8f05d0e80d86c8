//! Huge values in every text field of every RPC, sent by a default grpcio
//! (Python) channel: each is refused with INVALID_ARGUMENT, or
//! RESOURCE_EXHAUSTED when the message is over the service's limit, in a
//! status that names the field, stays under 1 KiB and never carries the
//! value back. A status over grpcio's 16 KiB metadata limit would reach
//! such a client as RESOURCE_EXHAUSTED about metadata instead, and an
//! echoed value ends up in every log on the way.

use std::process::Command;

use steward_integration_tests::protos::{APIS, Shape, documented, instance, shapes, text_fields};
use steward_integration_tests::{TestStack, python, workspace_root};

/// Fields whose refusal is, by design, an answer listing what was wrong:
/// an import reports a bad file in its errors (docs/inventory-import.md).
/// Such an answer must be short and show no more of the value than
/// [`steward_errors::shown`] does.
const REPORTED_IN_THE_ANSWER: &[(&str, &str)] = &[(
    "/steward.inventory.v1.InventoryService/ImportIdentities",
    "content",
)];

/// `(rpc, field path, [(field number, integer)])`.
type Beside = (&'static str, &'static str, &'static [(u32, u64)]);

/// Scalar fields set beside a swept value, `(rpc, field path, [(field
/// number, integer)])`, where a request without them is refused for them
/// before the value is looked at: an import names its format (CSV), as a
/// dry run.
const BESIDE: &[Beside] = &[(
    "/steward.inventory.v1.InventoryService/ImportIdentities",
    "content",
    &[(1, 3), (5, 1)],
)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_field_of_every_rpc_refuses_a_huge_value_by_name() {
    let stack = TestStack::start().await;
    let python = python();
    let fields = text_fields(3);
    let mut calls = Vec::new();
    for (proto, service) in APIS {
        let shapes = shapes(proto);
        let target = format!("localhost:{}", stack.service(service).addr.port());
        for (rpc, callers) in documented(proto) {
            let Some(texts) = fields.get(&rpc) else {
                continue; // the client streams: checked message by message
            };
            let caller = instance(callers.iter().next().unwrap());
            let file = format!("sweep-{}", caller.replace('/', "-"));
            let svid = stack
                .pki
                .svid(&file, &format!("spiffe://steward.test/{caller}"));
            for text in texts {
                let beside = BESIDE
                    .iter()
                    .find(|(r, p, _)| *r == rpc && *p == text.path)
                    .map_or(&[][..], |(_, _, with)| *with);
                calls.push(serde_json::json!({
                    "target": target,
                    "cert": svid.cert,
                    "key": svid.key,
                    "rpc": rpc,
                    "stream": shapes[&rpc] == Shape::ServerStream,
                    "path": text.path,
                    "numbers": text.numbers,
                    "with": beside,
                }));
            }
        }
    }
    let planned = calls.len();
    let plan = stack.pki.path().join("sweep.json");
    let sizes = [1usize << 20, 10 << 20];
    std::fs::write(
        &plan,
        serde_json::json!({
            "bundle": stack.pki.path().join("bundle.pem"),
            "sizes": sizes,
            "shown": steward_errors::SHOWN_CHARS,
            "calls": calls,
        })
        .to_string(),
    )
    .unwrap();
    let script = workspace_root().join("integration-tests/python/payload_sweep.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python).arg(script).arg(plan).output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the sweep failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut wrong = Vec::new();
    let mut answers = 0;
    for line in stdout.lines() {
        let answer: serde_json::Value = serde_json::from_str(line).unwrap();
        let (rpc, path, size, code, details) = (
            answer["rpc"].as_str().unwrap(),
            answer["path"].as_str().unwrap(),
            answer["size"].as_u64().unwrap(),
            answer["code"].as_str().unwrap(),
            answer["details"].as_str().unwrap(),
        );
        answers += 1;
        let refused = matches!(code, "INVALID_ARGUMENT" | "RESOURCE_EXHAUSTED")
            && details.len() < 1024
            && details.contains(path)
            && !details.contains(&"q".repeat(steward_errors::SHOWN_CHARS + 1));
        let reported = code == "OK"
            && REPORTED_IN_THE_ANSWER.contains(&(rpc, path))
            && answer["answer_bytes"].as_u64().unwrap() < 1024
            && answer["answer_echoes"] == false;
        let fine = refused || reported;
        if !fine {
            wrong.push(format!(
                "{rpc} {path} ({size} bytes): {code} {} (answer: {} bytes{})",
                &details[..details.len().min(200)],
                answer["answer_bytes"],
                if answer["answer_echoes"] == true {
                    ", holding the value"
                } else {
                    ""
                }
            ));
        }
    }
    assert_eq!(answers, planned * sizes.len(), "{stdout}");
    assert!(
        wrong.is_empty(),
        "{} of {answers} answers are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(planned > 200, "only {planned} fields swept");
}
