//! Trust-domain federation between two Steward trust domains in one test:
//! `steward.test` publishes its bundle at its bundle endpoint
//! (`https_spiffe`), `other.test` fetches it on schedule, and a workload of
//! `other.test` then verifies `steward.test`'s X.509-SVIDs and JWT-SVIDs
//! through its own Workload API. The endpoint is also read by a client we
//! did not write (Python's standard library).

use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use steward_credential_broker::config::{EndpointProfile, ForeignTrustDomain};
use steward_identity::bundle::SpiffeBundle;
use steward_identity::{ServerAuthorizer, TrustDomain};
use steward_integration_tests::workload::{
    entry_for_uid, first, first_x509, with_header, workload_client,
};
use steward_integration_tests::{TestStack, reserve_port};
use steward_proto::spiffe_workload as raw;
use steward_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use steward_proto::steward::broker::v1 as broker;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

const ENDPOINT_ID: &str = "spiffe://steward.test/service/credential-broker";

/// The Workload API of `stack`, with this process registered (by uid) as
/// a workload of its trust domain.
async fn workload_api(stack: &TestStack, name: &str) -> SpiffeWorkloadApiClient<Channel> {
    let identity = stack.workload_identity(name, "production").await;
    stack
        .inventory()
        .await
        .create_registration_entry(entry_for_uid(stack, &identity))
        .await
        .unwrap();
    workload_client(stack).await
}

/// `steward.test`'s bundle as an operator hands it over out of band.
async fn bundle_of(stack: &TestStack) -> SpiffeBundle {
    let bundle = stack
        .broker_as(&stack.operator.clone())
        .await
        .get_trust_bundle(broker::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwks: steward_identity::jwt::JwkSet =
        serde_json::from_slice(&bundle.jwt_authorities).unwrap();
    SpiffeBundle {
        trust_domain: TrustDomain::parse(&bundle.trust_domain).unwrap(),
        x509_authorities: bundle.x509_authorities,
        jwt_authorities: jwks.keys,
        sequence: 1,
        refresh_hint: None,
    }
}

/// Whether `chain` (leaf first) verifies as an X.509-SVID of `td` against
/// `roots` (concatenated DER, as the Workload API gives bundles).
fn verifies(chain: &[u8], roots: &[u8], td: &str) -> bool {
    let certs = |der: &[u8]| -> Vec<CertificateDer<'static>> {
        split_der(der)
            .into_iter()
            .map(CertificateDer::from)
            .collect()
    };
    let mut store = rustls::RootCertStore::empty();
    for root in certs(roots) {
        store.add(root).unwrap();
    }
    let chain = certs(chain);
    let verifier = steward_identity::tls::SpiffeServerVerifier::new(
        std::sync::Arc::new(store),
        ServerAuthorizer::MemberOf(TrustDomain::parse(td).unwrap()),
        &steward_identity::tls::crypto_provider(),
    );
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from("unused").unwrap(),
            &[],
            UnixTime::now(),
        )
        .is_ok()
}

/// Concatenated DER certificates, one by one.
fn split_der(mut der: &[u8]) -> Vec<Vec<u8>> {
    use x509_parser::prelude::FromDer;
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::certificate::X509Certificate::from_der(der).unwrap();
        certs.push(der[..der.len() - rest.len()].to_vec());
        der = rest;
    }
    certs
}

/// The CA certificates (DER) of each SDS validation context `names` asks
/// for, from `stack`'s Workload API socket, as Envoy would ask.
async fn sds_bundles(
    stack: &TestStack,
    names: &[&str],
) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let socket = stack.pki.path().join("workload.sock");
    let endpoint =
        spiffe::transport::Endpoint::parse(&format!("unix:{}", socket.display())).unwrap();
    let mut sds =
        SecretDiscoveryServiceClient::new(spiffe::transport::connect(&endpoint).await.unwrap());
    let response = sds
        .fetch_secrets(DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    response
        .resources
        .iter()
        .map(|any| {
            let secret: Secret = prost::Message::decode(any.value.as_slice()).unwrap();
            let Some(secret::Type::ValidationContext(context)) = secret.r#type else {
                panic!("{} is not a validation context", secret.name);
            };
            let Some(Specifier::InlineBytes(pem)) = context.trusted_ca.unwrap().specifier else {
                panic!("{} has no inline CA", secret.name);
            };
            let ders = rustls_pki_types::pem::PemObject::pem_slice_iter(&pem)
                .map(|c: Result<CertificateDer<'static>, _>| c.unwrap().to_vec())
                .collect();
            (secret.name, ders)
        })
        .collect()
}

async fn x509_bundles(api: &mut SpiffeWorkloadApiClient<Channel>) -> raw::X509BundlesResponse {
    first(api.fetch_x509_bundles(with_header(raw::X509BundlesRequest {}))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_of_one_trust_domain_verifies_the_svids_of_a_federated_one() {
    // steward.test serves its bundle endpoint.
    let mut home = TestStack::start().await;
    let endpoint = reserve_port();
    home.restart_broker_with(|c| c.federation.bundle_endpoint = Some(endpoint))
        .await;
    let out_of_band = bundle_of(&home).await;

    // An independent client: TLS to the roots, the SPIFFE ID, the format.
    let roots_pem = home.pki.path().join("steward.test.roots.pem");
    let pem: String = out_of_band
        .x509_authorities
        .iter()
        .map(|der| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            )
        })
        .collect();
    std::fs::write(&roots_pem, pem).unwrap();
    let url = format!("https://127.0.0.1:{}/", endpoint.port());
    let python = steward_integration_tests::python();
    let script = steward_integration_tests::workspace_root()
        .join("integration-tests/python/bundle_endpoint.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .args([&url, roots_pem.to_str().unwrap(), ENDPOINT_ID])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout.matches("ok ").count(), 4, "{stdout}");

    // A workload of steward.test, with an X.509-SVID and a JWT-SVID.
    let mut home_api = workload_api(&home, "payments").await;
    let home_svid = first_x509(&mut home_api).await.svids.remove(0);
    let home_jwt = home_api
        .fetch_jwtsvid(with_header(raw::JwtsvidRequest {
            audience: vec!["ledger".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0);

    // other.test, before it federates: steward.test is a stranger.
    let mut away = TestStack::start_in("other.test").await;
    let mut away_api = workload_api(&away, "ledger").await;
    let bundles = x509_bundles(&mut away_api).await;
    assert_eq!(
        bundles.bundles.keys().collect::<Vec<_>>(),
        ["spiffe://other.test"]
    );
    assert!(!verifies(
        &home_svid.x509_svid,
        &bundles.bundles["spiffe://other.test"],
        "steward.test"
    ));
    let err = away_api
        .validate_jwtsvid(with_header(raw::ValidateJwtsvidRequest {
            audience: "ledger".into(),
            svid: home_jwt.svid.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A bad federation config stops the broker from starting.
    let bootstrap = away.pki.path().join("steward.test.bundle.json");
    std::fs::write(&bootstrap, out_of_band.to_document().unwrap()).unwrap();
    let foreign = ForeignTrustDomain {
        trust_domain: "steward.test".into(),
        bundle_endpoint_url: url.clone(),
        profile: EndpointProfile::HttpsSpiffe,
        endpoint_spiffe_id: Some(ENDPOINT_ID.into()),
        bundle_file: Some(bootstrap.clone()),
        ca_file: None,
        refresh_secs: Some(1),
    };
    let mut wrong =
        steward_integration_tests::test_broker_config(away.configs["credential-broker"].clone());
    wrong.service.listen_addr = reserve_port();
    wrong.federation.trust_domains = vec![ForeignTrustDomain {
        endpoint_spiffe_id: Some("spiffe://other.test/service/credential-broker".into()),
        ..foreign.clone()
    }];
    let refused = steward_credential_broker::build_with(wrong)
        .await
        .err()
        .unwrap();
    assert!(
        refused
            .to_string()
            .contains("endpoint_spiffe_id is not in steward.test"),
        "{refused}"
    );

    // other.test federates with steward.test over https_spiffe.
    away.restart_broker_with(|c| c.federation.trust_domains = vec![foreign.clone()])
        .await;
    let mut away_api = workload_client(&away).await;
    let mut stream = away_api
        .fetch_x509_bundles(with_header(raw::X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let bundles = stream.next().await.unwrap().unwrap();
    let federated = &bundles.bundles["spiffe://steward.test"];
    assert!(verifies(&home_svid.x509_svid, federated, "steward.test"));
    // A federated bundle vouches for its own trust domain only.
    assert!(!verifies(
        &home_svid.x509_svid,
        &bundles.bundles["spiffe://other.test"],
        "steward.test"
    ));

    // The X.509-SVID answer carries it too, and JWT-SVIDs of steward.test
    // now validate here.
    let answer = first_x509(&mut away_api).await;
    assert_eq!(
        answer.federated_bundles.keys().collect::<Vec<_>>(),
        ["spiffe://steward.test"]
    );
    assert!(
        answer.svids[0]
            .spiffe_id
            .starts_with("spiffe://other.test/")
    );
    let jwt_bundles =
        first(away_api.fetch_jwt_bundles(with_header(raw::JwtBundlesRequest {}))).await;
    let mut names: Vec<&String> = jwt_bundles.bundles.keys().collect();
    names.sort();
    assert_eq!(names, ["spiffe://other.test", "spiffe://steward.test"]);
    let validated = away_api
        .validate_jwtsvid(with_header(raw::ValidateJwtsvidRequest {
            audience: "ledger".into(),
            svid: home_jwt.svid.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(validated.spiffe_id, home_jwt.spiffe_id);

    // Envoy's SDS on the same socket: the federated trust domain by name,
    // and ALL with both.
    let sds = sds_bundles(&away, &["spiffe://steward.test", "ALL", "ROOTCA"]).await;
    let home_roots = split_der(federated);
    let away_roots = split_der(&bundles.bundles["spiffe://other.test"]);
    assert_eq!(sds["spiffe://steward.test"], home_roots);
    assert_eq!(sds["ROOTCA"], away_roots);
    assert_eq!(
        sds["ALL"],
        [away_roots.clone(), home_roots.clone()].concat()
    );

    // steward.test rotates its root: the endpoint's next bundle (a new
    // sequence, both roots) reaches other.test, authenticated by the one
    // it holds, and the open bundle stream pushes it.
    home.broker_as(&home.operator.clone())
        .await
        .rotate_ca(broker::RotateCaRequest {
            rotate_root: true,
            reason: "scheduled".into(),
        })
        .await
        .unwrap();
    let rotated = bundle_of(&home).await;
    assert_eq!(rotated.x509_authorities.len(), 2);
    let pushed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let next = stream.next().await.unwrap().unwrap();
            if next.bundles["spiffe://steward.test"] == rotated.x509_authorities.concat() {
                return next;
            }
        }
    })
    .await
    .expect("the rotated bundle never reached other.test");
    let fresh = first_x509(&mut home_api).await.svids.remove(0);
    assert!(verifies(
        &fresh.x509_svid,
        &pushed.bundles["spiffe://steward.test"],
        "steward.test"
    ));
}

/// The `https_web` profile against an endpoint we did not write (Python's
/// standard library, a host-name certificate): with the endpoint's CA in
/// `ca_file` the bundle is fetched and served; with the public roots alone
/// the endpoint is not trusted and nothing is installed. An older bundle
/// (a lower `spiffe_sequence`) published later never replaces the one
/// held; a newer one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_pki_bundle_endpoint_is_trusted_only_through_its_roots() {
    use std::io::BufRead as _;

    let mut stack = TestStack::start_in("other.test").await;
    let home = TestStack::start().await;
    let document = stack.pki.path().join("web.test.bundle.json");
    let mut bundle = bundle_of(&home).await;
    bundle.trust_domain = TrustDomain::parse("web.test").unwrap();
    bundle.sequence = 5;
    std::fs::write(&document, bundle.to_document().unwrap()).unwrap();
    let server_cert = stack
        .pki
        .svid("bundle-web", "spiffe://other.test/bundle-web");
    let script = steward_integration_tests::workspace_root()
        .join("integration-tests/python/bundle_server.py");
    let mut server = std::process::Command::new(steward_integration_tests::python())
        .arg(&script)
        .arg(&server_cert.cert)
        .arg(&server_cert.key)
        .arg(&document)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("https://127.0.0.1:{}/", port.trim());
    let web = |trust_domain: &str, ca_file: Option<std::path::PathBuf>| ForeignTrustDomain {
        trust_domain: trust_domain.into(),
        bundle_endpoint_url: url.clone(),
        profile: EndpointProfile::HttpsWeb,
        endpoint_spiffe_id: None,
        bundle_file: None,
        ca_file,
        refresh_secs: Some(1),
    };
    let ca_file = Some(stack.pki.bundle.clone());
    stack
        .restart_broker_with(|c| {
            c.federation.trust_domains = vec![web("web.test", ca_file), web("public.test", None)];
        })
        .await;
    let mut api = workload_api(&stack, "ledger").await;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let bundles = x509_bundles(&mut api).await;
            if bundles.bundles.contains_key("spiffe://web.test") {
                return bundles;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the web.test bundle never arrived");
    assert_eq!(
        found.bundles["spiffe://web.test"],
        bundle.x509_authorities.concat()
    );
    // Fetched a few times over by now (every second), never trusted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bundles = x509_bundles(&mut api).await;
    assert!(
        !bundles.bundles.contains_key("spiffe://public.test"),
        "{:?}",
        bundles.bundles.keys()
    );

    // A replayed older bundle with other keys: kept out.
    let other_roots = bundles.bundles["spiffe://other.test"].clone();
    let mut older = bundle.clone();
    older.x509_authorities = split_der(&other_roots);
    older.sequence = 3;
    std::fs::write(&document, older.to_document().unwrap()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = x509_bundles(&mut api).await;
    assert_eq!(
        held.bundles["spiffe://web.test"],
        bundle.x509_authorities.concat()
    );
    // The same keys under a newer sequence: installed.
    let newer = SpiffeBundle {
        sequence: 6,
        ..older
    };
    std::fs::write(&document, newer.to_document().unwrap()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while x509_bundles(&mut api).await.bundles["spiffe://web.test"] != other_roots {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the newer bundle never arrived");
    drop(server.stdin.take());
    server.wait().unwrap();
}
