//! Mutual TLS through the real gRPC API: who gets in and who does not.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use steward_identity::connector::connect_with_config;
use steward_identity::tls::{SpiffeServerVerifier, crypto_provider};
use steward_identity::{ServerAuthorizer, TrustDomain};
use steward_integration_tests::echo::start_echo;
use steward_integration_tests::{SERVICE_NAMES, TRUST_DOMAIN, TestPki, TestStack, spiffe_id};
use steward_pki::{IssuedLeaf, LeafSpec};
use steward_proto::steward::common::v1::WhoAmIRequest;
use steward_proto::steward::common::v1::identity_service_client::IdentityServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_svid_reaches_health_and_whoami_on_every_service() {
    let stack = TestStack::start().await;
    for name in SERVICE_NAMES {
        let service = stack.service(name);
        let channel = service.channel(&stack.operator).await;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(health.status(), ServingStatus::Serving, "{name}");

        let me = IdentityServiceClient::new(channel)
            .who_am_i(WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            me.caller_spiffe_id,
            format!("spiffe://{TRUST_DOMAIN}/operator/admin")
        );
        assert_eq!(
            me.server_spiffe_id,
            format!("spiffe://{TRUST_DOMAIN}/service/{name}")
        );
        assert_eq!(me.service, *name);
    }
}

/// A client config presenting `leaf` (or no certificate) that trusts the
/// server's bundle: it exercises only the server's verification of clients.
fn raw_client(pki: &TestPki, leaf: Option<&IssuedLeaf>) -> Arc<ClientConfig> {
    let provider = crypto_provider();
    let roots = Arc::new(steward_identity::svid::load_bundle(&pki.bundle).unwrap());
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let verifier = SpiffeServerVerifier::new(roots, ServerAuthorizer::MemberOf(td), &provider);
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match leaf {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = vec![CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Whether a health check over `config` succeeds.
async fn health_ok(config: Arc<ClientConfig>, addr: &str) -> bool {
    let Ok(channel) = connect_with_config(config, addr).await else {
        return false;
    };
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_rejects_every_certificate_that_is_not_a_valid_svid_of_its_trust_domain() {
    let pki = TestPki::new();
    let server = start_echo(&pki, &[]).await;
    let addr = server.address();
    let id = spiffe_id("/workload/client").to_string();

    // The control: a compliant SVID from the server's CA gets in.
    let good = pki
        .ca
        .issue(&LeafSpec::svid(&id, time::Duration::hours(1)))
        .unwrap();
    assert!(
        health_ok(raw_client(&pki, Some(&good)), &addr).await,
        "valid svid refused"
    );

    let other_pki = TestPki::new();
    let foreign = other_pki
        .ca
        .issue(&LeafSpec::svid(&id, time::Duration::hours(1)))
        .unwrap();

    let mut no_uri = LeafSpec::svid(&id, time::Duration::hours(1));
    no_uri.uri_sans.clear();
    no_uri.dns_sans.push("client.example".into());

    let mut two_uris = LeafSpec::svid(&id, time::Duration::hours(1));
    two_uris
        .uri_sans
        .push(spiffe_id("/workload/other").to_string());

    let mut ca_leaf = LeafSpec::svid(&id, time::Duration::hours(1));
    ca_leaf.ca = true;

    let mut expired = LeafSpec::svid(&id, time::Duration::hours(1));
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(3);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::hours(1);

    let other_td = LeafSpec::svid(
        "spiffe://elsewhere.test/workload/client",
        time::Duration::hours(1),
    );

    let mut not_spiffe = LeafSpec::svid(&id, time::Duration::hours(1));
    not_spiffe.uri_sans = vec!["https://client.example/".into()];

    let cases: Vec<(&str, Option<IssuedLeaf>)> = vec![
        ("no client certificate", None),
        ("a certificate from another ca", Some(foreign)),
        (
            "a leaf with zero uri sans",
            Some(pki.ca.issue(&no_uri).unwrap()),
        ),
        (
            "a leaf with two uri sans",
            Some(pki.ca.issue(&two_uris).unwrap()),
        ),
        (
            "a ca certificate as leaf",
            Some(pki.ca.issue(&ca_leaf).unwrap()),
        ),
        ("an expired leaf", Some(pki.ca.issue(&expired).unwrap())),
        (
            "a leaf of another trust domain",
            Some(pki.ca.issue(&other_td).unwrap()),
        ),
        (
            "a uri san that is not a spiffe id",
            Some(pki.ca.issue(&not_spiffe).unwrap()),
        ),
    ];
    for (what, leaf) in cases {
        assert!(
            !health_ok(raw_client(&pki, leaf.as_ref()), &addr).await,
            "server accepted {what}"
        );
    }
    // The refusals did not disturb the server.
    assert!(health_ok(raw_client(&pki, Some(&good)), &addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refuses_a_server_with_an_unexpected_spiffe_id() {
    let pki = TestPki::new();
    let server = start_echo(&pki, &[]).await;
    let client = pki.client("client", &spiffe_id("/workload/client").to_string());

    let wrong = ServerAuthorizer::Exact(spiffe_id("/service/audit"));
    let result =
        steward_identity::connector::connect(client.clone(), &server.address(), wrong).await;
    assert!(
        result.is_err(),
        "client accepted a server with the wrong spiffe id"
    );

    let right = ServerAuthorizer::Exact(spiffe_id("/service/echo"));
    assert!(
        steward_identity::connector::connect(client, &server.address(), right)
            .await
            .is_ok()
    );
}
