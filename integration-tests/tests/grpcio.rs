//! A plain grpcio (Python) client, given only `bundle.pem`, the operator SVID
//! and `localhost`, reaches health on all four services.

use std::process::Command;

use steward_integration_tests::{SERVICE_NAMES, TestStack, python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_grpcio_client_reaches_health_on_all_four_services() {
    let stack = TestStack::start().await;
    let python = python();
    let pki = stack.pki.path().to_owned();
    let targets: Vec<String> = SERVICE_NAMES
        .iter()
        .map(|name| format!("localhost:{}", stack.service(name).addr.port()))
        .collect();
    let script = workspace_root().join("integration-tests/python/health_check.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(pki.join("bundle.pem"))
            .arg(pki.join("operator.crt"))
            .arg(pki.join("operator.key"))
            .args(&targets)
            .output()
            .unwrap()
    });
    let output = output.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcio client failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(stdout.matches(" SERVING").count(), 4, "{stdout}");
}
