//! `steward dev up`, `steward health` and `steward dev reset`, as a newcomer
//! runs them: real binaries, real processes, real signals.

use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use steward_integration_tests::dev::{
    children_of, dev_up, dev_up_args, dev_up_with, free_base_port, free_base_port_for_replicas,
    interrupt_and_wait, steward,
};

#[test]
fn dev_up_serves_four_healthy_services_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let (child, lines) = dev_up(dir.path(), base);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("spiffe://steward.local/service/audit")),
        "{lines:?}"
    );

    let pki = dir.path().join(".steward/dev/pki");
    for file in [
        "bundle.pem",
        "ca.key",
        "operator.crt",
        "operator.key",
        "inventory.crt",
        "audit.key",
    ] {
        assert!(pki.join(file).exists(), "{file} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pki.join("operator.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "keys must be 0600");

    let health = steward(dir.path())
        .args(["health", "--base-port", &base.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&health.stdout);
    assert!(
        health.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&health.stderr)
    );
    assert_eq!(table.matches("SERVING").count(), 4, "{table}");
    // Each service's plain-HTTP probes answer without a client certificate
    // (the broker and authority once their needed peer's first check has
    // answered: within a second or so of start).
    for offset in 0..4 {
        let port = base + 10 + offset;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            std::io::Write::write_all(
                &mut tcp,
                b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
            let mut answer = String::new();
            std::io::Read::read_to_string(&mut tcp, &mut answer).unwrap();
            if answer.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "port {port}: {answer}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    // Any program of this user gets the dev workload's SVID from the
    // Workload API, with a SPIFFE client we did not write.
    let socket = dir.path().join(".steward/dev/run/workload.sock");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("SPIFFE_ENDPOINT_SOCKET=unix:{}", socket.display()))),
        "{lines:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (x509, jwt) = runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
            .await
            .unwrap();
        let x509 = client.fetch_x509_svid().await.unwrap();
        let jwt = client.fetch_jwt_svid(["demo"], None).await.unwrap();
        (x509.spiffe_id().to_string(), jwt.spiffe_id().to_string())
    });
    assert_eq!(x509, "spiffe://steward.local/dev/workload");
    assert_eq!(jwt, x509);
    // And so does py-spiffe, whose gRPC core sends the socket's path as
    // the HTTP/2 authority.
    let python = std::process::Command::new(steward_integration_tests::python())
        .arg(
            steward_integration_tests::workspace_root()
                .join("integration-tests/python/workload_clients.py"),
        )
        .args([x509.as_str(), "steward.local"])
        .env(
            "SPIFFE_ENDPOINT_SOCKET",
            format!("unix:{}", socket.display()),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&python.stdout);
    assert!(
        python.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(said.matches("ok ").count(), 8, "{said}");

    let services = children_of(child.id());
    assert_eq!(
        services.len(),
        4,
        "expected four service processes: {services:?}"
    );
    let status = interrupt_and_wait(child);
    assert!(status.success(), "dev up exited with {status}");
    for pid in services {
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "service process {pid} outlived dev up"
        );
    }

    // A second run reuses the PKI, the broker's CA (same key-encryption
    // key) and the dev workload's registration; reset wipes it.
    let ca_before = std::fs::read(pki.join("ca.crt")).unwrap();
    let (child, _) = dev_up(dir.path(), base);
    let again = runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
            .await
            .unwrap();
        client
            .fetch_x509_svid()
            .await
            .unwrap()
            .spiffe_id()
            .to_string()
    });
    assert_eq!(again, x509);
    assert!(interrupt_and_wait(child).success());
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).unwrap(),
        ca_before,
        "dev up replaced the ca"
    );
    let reset = steward(dir.path()).args(["dev", "reset"]).output().unwrap();
    assert!(reset.status.success());
    assert!(!dir.path().join(".steward/dev").exists());
}

/// Asks authority to review a request that does not exist, as the human of
/// `token`: NOT_FOUND means the token was accepted.
fn review_as(dir: &Path, base: u16, token: &str) -> tonic::Status {
    use steward_proto::steward::authority::v1 as pb;
    let pki = dir.join(".steward/dev/pki");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let source = steward_identity::SvidSource::load(
            steward_identity::SvidPaths {
                cert: pki.join("operator.crt"),
                key: pki.join("operator.key"),
                bundle: pki.join("bundle.pem"),
            },
            Vec::new(),
        )
        .unwrap();
        let channel = steward_identity::connector::connect(
            source,
            &format!("127.0.0.1:{}", base + 1),
            steward_identity::ServerAuthorizer::Exact(
                steward_identity::SpiffeId::parse("spiffe://steward.local/service/authority")
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
        let mut client = pb::authority_service_client::AuthorityServiceClient::new(channel);
        client
            .review_approval_request(steward_integration_tests::bearer(
                pb::ReviewApprovalRequestRequest {
                    id: uuid::Uuid::now_v7().to_string(),
                    verdict: pb::Verdict::Approve as i32,
                    reason: "checking the login".into(),
                },
                token,
            ))
            .await
            .unwrap_err()
    })
}

#[test]
fn login_dev_gives_a_token_that_authority_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let (child, lines) = dev_up(dir.path(), base);
    assert!(
        lines.iter().any(|l| l.contains("oidc.steward.local/dev")),
        "{lines:?}"
    );
    let token_file = dir.path().join("home/token");
    let login = steward(dir.path())
        .args(["login", "--dev", "--as", "alice", "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&login.stdout);
    assert!(
        login.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(said.starts_with("logged in as alice"), "{said}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token must be 0600");

    let token = std::fs::read_to_string(&token_file).unwrap();
    let accepted = review_as(dir.path(), base, token.trim());
    assert_eq!(accepted.code(), tonic::Code::NotFound, "{accepted:?}");
    let mut forged = token.trim().to_owned();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let refused = review_as(dir.path(), base, &forged);
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let whoami = steward(dir.path())
        .args(["whoami", "--base-port", &base.to_string(), "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&whoami.stdout);
    assert!(said.contains("as human    alice"), "{said}");

    // Without a source the CLI says what to do; logout forgets the token.
    let bare = steward(dir.path()).args(["login"]).output().unwrap();
    assert!(!bare.status.success());
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--dev"));
    let logout = steward(dir.path())
        .args(["logout", "--token-file"])
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(logout.status.success());
    assert!(!token_file.exists());
    assert!(interrupt_and_wait(child).success());
}

/// A JSON value that refuses an object repeating a key, at any depth.
struct Unrepeated;

impl<'de> serde::Deserialize<'de> for Unrepeated {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Unrepeated;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Unrepeated, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!("key {key:?} repeated")));
                    }
                    map.next_value::<Unrepeated>()?;
                }
                Ok(Unrepeated)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Unrepeated, A::Error> {
                while seq.next_element::<Unrepeated>()?.is_some() {}
                Ok(Unrepeated)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
            fn visit_str<E>(self, _: &str) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
            fn visit_unit<E>(self) -> Result<Unrepeated, E> {
                Ok(Unrepeated)
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The service logs as a machine and a file see them: every JSON line is
/// one object with its event text under `message` and no key twice (the
/// broker's warning about an unreachable inventory, whose gRPC message
/// is a field of its own, included); the compact format written to a
/// file carries no colour codes.
#[test]
fn logs_parse_without_repeated_keys_and_carry_no_colour_off_a_terminal() {
    // JSON, with inventory killed so the broker warns about it.
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port();
    let log = dir.path().join("services.log");
    let file = std::fs::File::create(&log).unwrap();
    let (child, _) = dev_up_with(
        dir.path(),
        base,
        &[("STEWARD_TELEMETRY__FORMAT", "json")],
        Stdio::from(file),
    );
    let inventory = children_of(child.id())
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.contains("steward-inventory"))
        })
        .expect("no inventory process under dev up");
    kill(Pid::from_raw(inventory), Signal::SIGKILL).unwrap();
    let socket = dir.path().join(".steward/dev/run/workload.sock");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display()))
            .await
            .unwrap();
        assert!(client.fetch_x509_svid().await.is_err());
    });
    interrupt_and_wait(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\x1b'), "escape codes in JSON logs:\n{text}");
    let events: Vec<&str> = text.lines().filter(|l| l.starts_with('{')).collect();
    assert!(events.len() >= 10, "{text}");
    for line in &events {
        serde_json::from_str::<Unrepeated>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value["message"].is_string(), "{line}");
    }
    let warned = events
        .iter()
        .find(|l| {
            l.contains("inventory cannot match selectors") && l.contains("\"status_message\"")
        })
        .unwrap_or_else(|| panic!("{text}"));
    // A line about a request names the request's trace.
    let warned: serde_json::Value = serde_json::from_str(warned).unwrap();
    let trace_id = warned["span"]["trace_id"].as_str().unwrap_or_default();
    assert!(
        trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{warned}"
    );

    // Compact, into a file: no escape sequences.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("services.log");
    let file = std::fs::File::create(&log).unwrap();
    let (child, _) = dev_up_with(
        dir.path(),
        free_base_port(),
        &[("STEWARD_TELEMETRY__FORMAT", "compact")],
        Stdio::from(file),
    );
    interrupt_and_wait(child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().count() >= 10, "{text}");
    assert!(!text.contains('\x1b'), "colour codes in a file:\n{text}");
}

/// `GET path` on a local port: the whole answer, status line first.
fn http_get(port: u16, path: &str) -> String {
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut tcp, request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = std::io::Read::read_to_string(&mut tcp, &mut answer);
    answer
}

/// The child of `dev up` started with `config` (`inventory-1.toml`).
fn child_with_config(dev_up: u32, config: &str) -> i32 {
    children_of(dev_up)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(config))
        })
        .unwrap_or_else(|| panic!("no child runs {config}"))
}

#[test]
fn dev_up_postgres_runs_two_replicas_of_each_service_behind_balancers() {
    let Some(server) = steward_integration_tests::faults::PrivatePostgres::start() else {
        eprintln!("no PostgreSQL installed: dev up --postgres not exercised in this run");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port_for_replicas();
    let admin = server.admin_url();
    let (child, lines) = dev_up_args(
        dir.path(),
        base,
        &["--postgres", &admin],
        &[],
        Stdio::null(),
    );
    let probes: Vec<u16> = lines
        .iter()
        .filter_map(|line| line.split("probes http://127.0.0.1:").nth(1))
        .filter_map(|rest| rest.split('/').next()?.parse().ok())
        .collect();
    assert_eq!(probes.len(), 8, "two replicas of each service: {lines:?}");
    assert!(lines.iter().any(|l| l.contains("inventory-1")), "{lines:?}");
    // The server's address is shown, its user is not.
    assert!(!lines.iter().any(|l| l.contains("postgres@")), "{lines:?}");

    // The services answer through their balancers on the usual ports, and
    // every replica is ready.
    let health = steward(dir.path())
        .args(["health", "--base-port", &base.to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&health.stdout);
    assert_eq!(table.matches("SERVING").count(), 4, "{table}");
    for port in &probes {
        assert!(
            http_get(*port, "/readyz").starts_with("HTTP/1.1 200"),
            "probe {port}"
        );
    }
    // Once-only work runs on one replica of each pair: inventory's outbox.
    let holders = probes[..2]
        .iter()
        .filter(|port| {
            http_get(**port, "/metrics").contains("steward_role_held{role=\"outbox\"} 1")
        })
        .count();
    assert_eq!(holders, 1, "one inventory replica forwards evidence");

    // One inventory replica dies; dev up carries on, and so does inventory.
    let victim = child_with_config(child.id(), "inventory-1.toml");
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    // Gone once its probes' port refuses (the listing is second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !http_get(probes[1], "/healthz").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed replica still answers"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let list = |dir: &Path| {
        steward(dir)
            .args(["identity", "list", "--base-port", &base.to_string()])
            .output()
            .unwrap()
    };
    for _ in 0..3 {
        let listed = list(dir.path());
        assert!(
            listed.status.success(),
            "{}",
            String::from_utf8_lossy(&listed.stderr)
        );
    }
    let mut child = child;
    assert!(
        child.try_wait().unwrap().is_none(),
        "dev up stopped with one replica gone"
    );

    let pid = child.id();
    assert!(interrupt_and_wait(child).success());
    assert!(children_of(pid).is_empty(), "orphaned replicas");
    drop(server);
}
