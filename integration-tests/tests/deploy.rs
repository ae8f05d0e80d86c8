//! The deployment artefacts are what they claim: the Kubernetes manifests
//! validate against the Kubernetes schemas (the `kubernetes-validate`
//! package, offline, strict) and run every service as replicas with
//! probes, a disruption budget and a network policy that admits only its
//! callers; the container recipe puts every binary in a non-root image;
//! the systemd unit creates the paths the example configs name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use steward_integration_tests::{python, workspace_root};

/// The Kubernetes release the manifests are checked against.
const KUBERNETES: &str = "1.31.0";

/// Who calls each service over gRPC, besides operators' and automation's
/// clients (the services' allowlists and peer channels say the same).
const CALLERS: [(&str, &[&str]); 4] = [
    ("inventory", &["authority", "credential-broker"]),
    ("authority", &["credential-broker", "inventory"]),
    ("credential-broker", &["authority"]),
    ("audit", &["authority", "credential-broker", "inventory"]),
];

fn kubernetes_dir() -> PathBuf {
    workspace_root().join("deploy/kubernetes")
}

/// Every manifest file (the kustomization is a tool's file, not a
/// resource).
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(kubernetes_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// `kubernetes-validate --strict` on `files`: its exit status and output.
fn validate(files: &[PathBuf]) -> (bool, String) {
    let output = Command::new(python())
        .args(["-m", "kubernetes_validate", "--strict", "-k", KUBERNETES])
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every document in `files`, parsed by PyYAML (which the validator
/// brings) and handed over as JSON.
fn documents(files: &[PathBuf]) -> Vec<Value> {
    let output = Command::new(python())
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             print(json.dumps(docs))",
        ])
        .args(files)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let files = manifests();
    assert!(files.len() >= 6, "{files:?}");
    let (valid, output) = validate(&files);
    assert!(valid, "{output}");
    assert!(!output.contains("WARN"), "{output}");

    // The validator can fail: a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(kubernetes_dir().join("inventory.yaml")).unwrap();
    let bad = dir.path().join("inventory.yaml");
    std::fs::write(&bad, text.replacen("  replicas: 2", "  replicaz: 2", 1)).unwrap();
    let (valid, output) = validate(&[bad]);
    assert!(!valid, "a misspelt field passed: {output}");
}

#[test]
fn the_kustomization_names_every_manifest() {
    let text = std::fs::read_to_string(kubernetes_dir().join("kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- "))
        .map(str::to_owned)
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);
}

/// The one resource of `kind` named `name`.
fn resource<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{kind} {name}");
    found[0]
}

fn labels_select(selector: &Value, name: &str) -> bool {
    selector["matchLabels"]["app.kubernetes.io/name"] == name
}

#[test]
fn every_service_runs_as_replicas_with_probes_a_budget_and_a_policy_that_admits_its_callers() {
    let docs = documents(&manifests());
    let config = resource(&docs, "ConfigMap", "steward-config");
    for (name, callers) in CALLERS {
        let deployment = resource(&docs, "Deployment", name);
        let spec = &deployment["spec"];
        assert!(spec["replicas"].as_u64().unwrap() >= 2, "{name}");
        assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        assert!(labels_select(&spec["selector"], name));
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_ne!(pod["securityContext"]["runAsUser"], 0, "{name}");
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let containers = pod["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        // The image names no registry: where it is pushed is the
        // operator's choice.
        let image = container["image"].as_str().unwrap();
        assert!(!image.contains('/'), "{image}");
        let command: Vec<&str> = container["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            command,
            [
                format!("/usr/local/bin/steward-{name}").as_str(),
                "--config",
                format!("/etc/steward/config/{name}.toml").as_str(),
            ]
        );
        assert!(
            config["data"][format!("{name}.toml")].is_string(),
            "{name}'s config is in the ConfigMap"
        );
        let security = &container["securityContext"];
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        // The database URL and every key come from Secrets, never the
        // ConfigMap.
        let env = container["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e["name"] == "STEWARD_DATABASE__URL"
            && e["valueFrom"]["secretKeyRef"]["name"] == format!("steward-{name}-database")));
        let svid = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "svid")
            .unwrap();
        assert_eq!(svid["secret"]["secretName"], format!("steward-{name}-svid"));
        let grpc_port = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "grpc")
            .unwrap()["containerPort"]
            .clone();

        let service = resource(&docs, "Service", name);
        assert_eq!(service["spec"]["clusterIP"], "None", "{name}: headless");
        assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"], name);
        assert!(
            service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"] == grpc_port)
        );

        let budget = resource(&docs, "PodDisruptionBudget", name);
        assert_eq!(budget["spec"]["minAvailable"], 1);
        assert!(labels_select(&budget["spec"]["selector"], name));

        let policy = resource(&docs, "NetworkPolicy", name);
        assert!(labels_select(&policy["spec"]["podSelector"], name));
        assert_eq!(policy["spec"]["policyTypes"][0], "Ingress");
        let grpc_rule = policy["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .find(|rule| rule["ports"][0]["port"] == "grpc")
            .unwrap();
        let admitted: BTreeSet<&str> = grpc_rule["from"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|peer| {
                peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
            })
            .collect();
        assert_eq!(admitted, callers.iter().copied().collect(), "{name}");
    }
    // Nothing beyond what is checked above.
    let kinds: BTreeMap<&str, usize> = docs.iter().fold(BTreeMap::new(), |mut kinds, d| {
        *kinds.entry(d["kind"].as_str().unwrap()).or_default() += 1;
        kinds
    });
    let expected: BTreeMap<&str, usize> = [
        ("ConfigMap", 1),
        ("Deployment", 4),
        ("Namespace", 1),
        ("NetworkPolicy", 4),
        ("PodDisruptionBudget", 4),
        ("Service", 4),
    ]
    .into();
    assert_eq!(kinds, expected);
}

/// The `[[bin]]` names of every workspace member that has one.
fn binaries() -> BTreeSet<String> {
    let root = workspace_root();
    let mut found = BTreeSet::new();
    for dir in [
        "services/inventory",
        "services/authority",
        "services/credential-broker",
        "services/audit",
        "cli",
    ] {
        let manifest: toml::Table = std::fs::read_to_string(root.join(dir).join("Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
        for bin in manifest["bin"].as_array().unwrap() {
            found.insert(bin["name"].as_str().unwrap().to_owned());
        }
    }
    found
}

#[test]
fn the_container_image_holds_every_binary_and_runs_as_a_user() {
    let text = read(&workspace_root().join("deploy/container/Dockerfile"));
    let stages: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert_eq!(
        stages[1], "scratch",
        "nothing in the runtime but what is copied"
    );
    for stage in &stages {
        let image = stage.split_whitespace().next().unwrap();
        // Base images by name alone: no registry host in the recipe.
        assert!(!image.split('/').next().unwrap().contains('.'), "{image}");
    }
    for binary in binaries() {
        assert!(
            text.contains(&format!(" {binary} ")) || text.contains(&format!(" {binary};")),
            "{binary} is not in the image"
        );
    }
    let user = text
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER line");
    let uid: u32 = user.split(':').next().unwrap().parse().unwrap();
    assert_ne!(uid, 0);
    let ignored = read(&workspace_root().join(".dockerignore"));
    assert!(
        ignored.lines().any(|l| l == "target/"),
        "the build context leaves target/ out"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `Key=` values of a unit file.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_systemd_unit_creates_the_paths_the_example_configs_write_to() {
    let root = workspace_root();
    let unit = read(&root.join("deploy/systemd/steward@.service"));
    assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
    let user = unit_values(&unit, "User").remove(0);
    let sysusers = read(&root.join("deploy/systemd/steward.sysusers"));
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).eq(["u", user.as_str()])),
        "sysusers creates {user}"
    );
    // Under ProtectSystem=strict only these are writable: each path an
    // example config writes must be in one.
    let writable: Vec<PathBuf> = unit_values(&unit, "RuntimeDirectory")
        .iter()
        .map(|d| Path::new("/run").join(d))
        .chain(
            unit_values(&unit, "StateDirectory")
                .iter()
                .map(|d| Path::new("/var/lib").join(d)),
        )
        .collect();
    assert_eq!(writable.len(), 2, "{writable:?}");
    let broker: toml::Table = read(&root.join("deploy/config/credential-broker.example.toml"))
        .parse()
        .unwrap();
    let socket = Path::new(broker["workload_api_socket"].as_str().unwrap());
    assert!(
        writable.iter().any(|dir| socket.starts_with(dir)),
        "{} is not in a directory the unit creates",
        socket.display()
    );
}
