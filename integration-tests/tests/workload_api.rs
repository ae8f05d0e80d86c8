//! The broker's SPIFFE Workload API, checked by a client we did not write:
//! the `spiffe` crate connects over the Unix socket as SPIFFE-aware
//! programs do, and this test process is attested by its own uid.

use std::time::Duration;

use spiffe::{TrustDomain, WorkloadApiClient};
use steward_integration_tests::TestStack;
use steward_proto::spiffe_workload as raw;
use steward_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tokio_stream::StreamExt;
use tonic::Code;

async fn socket_ready(path: &std::path::Path) {
    for _ in 0..100 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} never appeared", path.display());
}

fn endpoint(path: &std::path::Path) -> String {
    format!("unix:{}", path.display())
}

/// Runs `integration-tests/python/<script>` with `args` against `socket`;
/// its stdout, once it exited 0.
fn python_client(
    script: &str,
    socket: &std::path::Path,
    args: Vec<String>,
) -> tokio::task::JoinHandle<String> {
    let python = steward_integration_tests::python();
    let script = steward_integration_tests::workspace_root()
        .join("integration-tests/python")
        .join(script);
    let socket = endpoint(socket);
    tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new(python)
            .arg(&script)
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", socket)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{} failed:\n{stdout}\n{stderr}",
            script.display()
        );
        stdout
    })
}

#[tokio::test]
async fn spiffe_clients_get_svids_bundles_and_jwts_for_their_kernel_identity() {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let identity = stack.workload_identity("local", "production").await;
    let client = WorkloadApiClient::connect_to(endpoint(&socket))
        .await
        .unwrap();

    // Nothing is registered for this uid yet.
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(format!("{err:?}").contains("PermissionDenied"), "{err:?}");

    // Without the security header, the API refuses before attesting.
    let channel = spiffe::transport::connect(
        &spiffe::transport::Endpoint::parse(&endpoint(&socket)).unwrap(),
    )
    .await
    .unwrap();
    let mut bare = SpiffeWorkloadApiClient::new(channel);
    let err = bare
        .fetch_jwtsvid(raw::JwtsvidRequest {
            audience: vec!["ledger".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("security header"), "{err:?}");

    // Register this process's uid as the identity, with short SVIDs.
    // The owner of a directory this process made is its uid.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let mut ops = stack.inventory().await;
    let mut short = entry_for(&identity, uid);
    let entry = short.entry.as_mut().unwrap();
    (entry.x509_svid_ttl, entry.jwt_svid_ttl) = (4, 60);
    ops.create_registration_entry(short).await.unwrap();

    // X.509: the SVID names the identity and chains to the broker's bundle.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), identity.spiffe_id);
    let mut broker_client = stack.broker_caller("/workload/ledger").await;
    let bundle = broker_client
        .get_trust_bundle(broker::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let trust_domain = TrustDomain::new("steward.test").unwrap();
    let ours = bundles
        .get(&trust_domain)
        .expect("a bundle for steward.test");
    let roots: Vec<Vec<u8>> = ours
        .authorities()
        .iter()
        .map(|c| c.as_bytes().to_vec())
        .collect();
    assert_eq!(roots, bundle.x509_authorities);
    {
        use rustls::pki_types::{CertificateDer, UnixTime};
        let mut store = rustls::RootCertStore::empty();
        for root in &roots {
            store.add(CertificateDer::from(root.clone())).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(store),
            steward_identity::tls::crypto_provider(),
        )
        .build()
        .unwrap();
        let chain = svid.cert_chain();
        let intermediates: Vec<CertificateDer> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        verifier
            .verify_client_cert(
                &CertificateDer::from(chain[0].as_bytes().to_vec()),
                &intermediates,
                UnixTime::now(),
            )
            .unwrap();
    }

    // JWT: issued for the audience, validated by the API, and the JWT
    // bundle holds its key.
    let jwt = client.fetch_jwt_svid(["ledger"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), identity.spiffe_id);
    assert_eq!(jwt.audience(), ["ledger"]);
    let validated = client
        .validate_jwt_token("ledger", jwt.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id().to_string(), identity.spiffe_id);
    assert!(
        client
            .validate_jwt_token("payments", jwt.token())
            .await
            .is_err()
    );
    let mut forged = jwt.token().to_owned();
    forged.pop();
    forged.push(if jwt.token().ends_with('A') { 'B' } else { 'A' });
    assert!(client.validate_jwt_token("ledger", &forged).await.is_err());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    let jwt_bundle = jwt_bundles.get(&trust_domain).expect("a JWT bundle");
    assert!(jwt_bundle.find_jwt_authority(jwt.key_id()).is_some());

    // The stream rotates the SVID before it expires (4 s: at half-life).
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a rotated SVID within its lifetime")
        .unwrap()
        .unwrap();
    assert_eq!(second.spiffe_id(), first.spiffe_id());
    assert_ne!(second.leaf().as_bytes(), first.leaf().as_bytes());

    // A CA rotation reaches the bundle stream: both roots for the overlap.
    let mut bundle_stream = client.stream_x509_bundles().await.unwrap();
    let before = bundle_stream.next().await.unwrap().unwrap();
    assert_eq!(before.get(&trust_domain).unwrap().authorities().len(), 1);
    let mut operator = stack.broker_as(&stack.operator.clone()).await;
    operator
        .rotate_ca(broker::RotateCaRequest {
            rotate_root: true,
            reason: "drill".into(),
        })
        .await
        .unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), bundle_stream.next())
        .await
        .expect("a new bundle after the rotation")
        .unwrap()
        .unwrap();
    assert_eq!(after.get(&trust_domain).unwrap().authorities().len(), 2);

    // Every SVID is a lease held by the identity itself, with evidence.
    let leases = operator
        .list_leases(broker::ListLeasesRequest {
            identity_id: identity.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(leases.len() >= 4, "{leases:?}");
    assert!(leases.iter().all(|l| l.holder == identity.spiffe_id));
    // Each lease's issue reaches the evidence log.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let entries = stack.evidence_for(&identity.id, 1).await;
        let issues = entries
            .iter()
            .filter(|e| e.record.as_ref().unwrap().action == "credential.issue")
            .count();
        if issues >= leases.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{issues} of {} issues recorded",
            leases.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// py-spiffe (WorkloadApiClient, X509Source) and a default grpcio channel
/// get SVIDs, bundles and JWTs over the socket, unchanged: gRPC C-core
/// sends the socket's path as the HTTP/2 authority, which the server side
/// mends (`workload/mend.rs`) instead of resetting the stream. As the
/// spec says, a bare call without the security header is INVALID_ARGUMENT
/// and a process no entry matches is PERMISSION_DENIED; an X509Source
/// sees its SVID rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_and_a_default_grpcio_channel_get_their_svids() {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let identity = stack.workload_identity("python", "production").await;
    let run = |args: Vec<String>| python_client("workload_clients.py", &socket, args);
    let refused = run(vec!["unregistered".into()]).await.unwrap();
    assert_eq!(refused.matches("ok ").count(), 1, "{refused}");

    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let mut entry = entry_for(&identity, uid);
    // Short-lived, so that a watching source sees a rotation.
    entry.entry.as_mut().unwrap().x509_svid_ttl = 6;
    stack
        .inventory()
        .await
        .create_registration_entry(entry)
        .await
        .unwrap();

    let stdout = run(vec![
        identity.spiffe_id.clone(),
        "steward.test".into(),
        "--rotation".into(),
    ])
    .await
    .unwrap();
    assert_eq!(stdout.matches("ok ").count(), 9, "{stdout}");
}

/// Envoy SDS on the same socket, seen by a client Steward did not write
/// (the Envoy protos from xds-protos over a default grpcio channel): a
/// process no entry matches is PERMISSION_DENIED; a registered one gets its
/// certificate (the chain verifies to the bundle, the key is the leaf's)
/// and the bundle, ACKs, and is pushed a new version with a new
/// certificate when the short-lived SVID is renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_sds_client_gets_certificate_and_bundle_and_renewals() {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let identity = stack.workload_identity("envoy", "production").await;
    let run = |args: Vec<String>| python_client("sds_client.py", &socket, args);
    let refused = run(vec!["unregistered".into()]).await.unwrap();
    assert_eq!(refused.matches("ok ").count(), 1, "{refused}");

    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let mut entry = entry_for(&identity, uid);
    entry.entry.as_mut().unwrap().x509_svid_ttl = 6;
    stack
        .inventory()
        .await
        .create_registration_entry(entry)
        .await
        .unwrap();
    let stdout = run(vec![
        identity.spiffe_id.clone(),
        "spiffe://steward.test".into(),
    ])
    .await
    .unwrap();
    assert_eq!(stdout.matches("ok ").count(), 12, "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

/// `message` with the Workload API's security header.
fn header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// An entry for this uid as `identity`.
fn entry_for(
    identity: &inventory::Identity,
    uid: u32,
) -> inventory::CreateRegistrationEntryRequest {
    inventory::CreateRegistrationEntryRequest {
        entry: Some(inventory::RegistrationEntry {
            spiffe_id: identity.spiffe_id.clone(),
            parent_id: "spiffe://steward.test/service/credential-broker".into(),
            selectors: vec![inventory::Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            x509_svid_ttl: 3600,
            jwt_svid_ttl: 300,
            identity_id: identity.id.clone(),
            ..Default::default()
        }),
        context: None,
    }
}

/// One entry whose SVIDs are refused (its identity suspended) leaves the
/// workload's other SVIDs served, as the spec asks; only when nothing can
/// be issued is the call refused. An entry cannot name another SPIFFE ID
/// than its identity acts as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_leaves_the_workloads_other_svids_served() {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let kept = stack.workload_identity("kept", "production").await;
    let suspended = stack.workload_identity("suspended", "production").await;
    let mut ops = stack.inventory().await;

    // Naming another identity's SPIFFE ID is refused, and nothing is made.
    let mut wrong = entry_for(&kept, uid);
    wrong.entry.as_mut().unwrap().spiffe_id = suspended.spiffe_id.clone();
    let err = ops.create_registration_entry(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("entry.spiffe_id: "), "{err:?}");
    let listed = ops
        .list_registration_entries(inventory::ListRegistrationEntriesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(listed.is_empty(), "{listed:?}");

    for identity in [&kept, &suspended] {
        ops.create_registration_entry(entry_for(identity, uid))
            .await
            .unwrap();
    }
    ops.transition_state(inventory::TransitionStateRequest {
        id: suspended.id.clone(),
        target_state: inventory::LifecycleState::Suspended as i32,
        reason: "the key leaked".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    let channel = spiffe::transport::connect(
        &spiffe::transport::Endpoint::parse(&endpoint(&socket)).unwrap(),
    )
    .await
    .unwrap();
    let mut api = SpiffeWorkloadApiClient::new(channel);
    let mut stream = api
        .fetch_x509svid(header(raw::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [kept.spiffe_id.as_str()]);
    let jwts = api
        .fetch_jwtsvid(header(raw::JwtsvidRequest {
            audience: vec!["ledger".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids;
    let ids: Vec<&str> = jwts.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, [kept.spiffe_id.as_str()]);

    // Asking for the suspended one alone: nothing can be served.
    let err = api
        .fetch_jwtsvid(header(raw::JwtsvidRequest {
            audience: vec!["ledger".into()],
            spiffe_id: suspended.spiffe_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
}

/// An entry's DNS names are DNS SANs of its X.509-SVIDs, beside the one
/// URI SAN, so a stock TLS client checking host names verifies a service
/// that presents one; a bad name is refused by field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entrys_dns_names_let_host_name_checks_verify_its_svids() {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};

    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let identity = stack.workload_identity("ledger", "production").await;
    let mut ops = stack.inventory().await;
    let with = |names: &[&str]| {
        let mut request = entry_for(&identity, uid);
        request.entry.as_mut().unwrap().dns_names = names.iter().map(|n| n.to_string()).collect();
        request
    };
    for (names, field) in [
        (&["bad_name"][..], "entry.dns_names[0]"),
        (
            &["ok.internal", "-leading.internal"][..],
            "entry.dns_names[1]",
        ),
        (&["a..b"][..], "entry.dns_names[0]"),
    ] {
        let err = ops
            .create_registration_entry(with(names))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{err:?}");
    }
    let created = ops
        .create_registration_entry(with(&[
            "Ledger.Internal",
            "ledger.internal",
            "*.svc.internal",
        ]))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(created.dns_names, ["ledger.internal", "*.svc.internal"]);

    let client = WorkloadApiClient::connect_to(endpoint(&socket))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    let chain: Vec<CertificateDer> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let dns: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [identity.spiffe_id.as_str()]);
    assert_eq!(dns, ["ledger.internal", "*.svc.internal"]);

    // As a TLS client checking host names would: webpki, the broker's
    // roots as the only anchors.
    let mut roots = rustls::RootCertStore::empty();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let ours = bundles
        .get(&TrustDomain::new("steward.test").unwrap())
        .unwrap();
    for root in ours.authorities() {
        roots
            .add(CertificateDer::from(root.as_bytes().to_vec()))
            .unwrap();
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        steward_identity::tls::crypto_provider(),
    )
    .build()
    .unwrap();
    let check = |host: &str| {
        verifier.verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(host.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
    };
    check("ledger.internal").unwrap();
    check("api.svc.internal").unwrap();
    assert!(check("other.internal").is_err());
}

/// Each SVID rotates on its own schedule: a workload with a short-lived
/// and a long-lived entry gets the short one re-issued at its half-life
/// while the long one is served unchanged (before, the shortest lifetime
/// re-issued every SVID, each a lease and a record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_svid_rotates_on_its_own_schedule() {
    let stack = TestStack::start().await;
    let socket = stack.pki.path().join("workload.sock");
    socket_ready(&socket).await;
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap());
    let short = stack.workload_identity("short", "production").await;
    let long = stack.workload_identity("long", "production").await;
    let mut ops = stack.inventory().await;
    let mut brief = entry_for(&short, uid);
    brief.entry.as_mut().unwrap().x509_svid_ttl = 4;
    ops.create_registration_entry(brief).await.unwrap();
    ops.create_registration_entry(entry_for(&long, uid))
        .await
        .unwrap();

    let channel = spiffe::transport::connect(
        &spiffe::transport::Endpoint::parse(&endpoint(&socket)).unwrap(),
    )
    .await
    .unwrap();
    let mut stream = SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(header(raw::X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<Vec<u8>>> =
        Default::default();
    let mut responses = 0;
    let started = std::time::Instant::now();
    while responses < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "{seen:?}");
        let response = stream.next().await.unwrap().unwrap();
        responses += 1;
        assert_eq!(response.svids.len(), 2);
        for svid in response.svids {
            seen.entry(svid.spiffe_id)
                .or_default()
                .insert(svid.x509_svid);
        }
    }
    assert_eq!(seen[&short.spiffe_id].len(), 3, "the short SVID rotates");
    assert_eq!(seen[&long.spiffe_id].len(), 1, "the long SVID is kept");
    // One lease for the long entry, however many the short one took.
    let leases = stack
        .broker_caller("/operator/admin")
        .await
        .list_leases(broker::ListLeasesRequest {
            identity_id: long.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "{leases:?}");
}

/// An entry's TTL below `ttl.svid_min` is raised to it: the SVID the
/// Workload API serves lives `svid_min`, not the entry's 2 seconds, so one
/// entry cannot have its stream re-issue (a lease and an evidence record)
/// every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_ttl_below_the_minimum_is_raised_to_it() {
    use steward_integration_tests::workload::{entry_for_uid, first_x509, workload_client};
    use x509_parser::prelude::FromDer;

    let mut stack = TestStack::start().await;
    stack.restart_broker_with(|c| c.ttl.svid_min = 120).await;
    let brief = stack.workload_identity("brief", "production").await;
    let mut entry = entry_for_uid(&stack, &brief);
    entry.entry.as_mut().unwrap().x509_svid_ttl = 2;
    stack
        .inventory()
        .await
        .create_registration_entry(entry)
        .await
        .unwrap();
    let first = first_x509(&mut workload_client(&stack).await).await;
    let (_, leaf) =
        x509_parser::certificate::X509Certificate::from_der(&first.svids[0].x509_svid).unwrap();
    let lives =
        leaf.validity().not_after.timestamp() - time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (110..=121).contains(&lives),
        "the SVID lives {lives} s more"
    );
}
