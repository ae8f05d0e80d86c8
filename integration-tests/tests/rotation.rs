//! SVID files rotated on disk are used by the next connection, no restart.

use std::sync::Arc;

use steward_identity::{ServerAuthorizer, TrustDomain};
use steward_integration_tests::echo::start_echo;
use steward_integration_tests::{TRUST_DOMAIN, TestPki, spiffe_id};
use steward_pki::LeafSpec;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Opens a TLS connection as `client` and returns the server's leaf (DER).
async fn presented_leaf(client: &Arc<steward_identity::SvidSource>, addr: &str) -> Vec<u8> {
    let td = TrustDomain::parse(TRUST_DOMAIN).unwrap();
    let config = client
        .client_config(ServerAuthorizer::MemberOf(td))
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_connection_presents_the_rotated_certificate() {
    let pki = TestPki::new();
    let server = start_echo(&pki, &[]).await;
    let client = pki.client("client", &spiffe_id("/workload/client").to_string());
    let addr = server.address();

    let before = presented_leaf(&client, &addr).await;
    assert_eq!(
        presented_leaf(&client, &addr).await,
        before,
        "unchanged files, same certificate"
    );

    let rotated = pki
        .ca
        .issue(&LeafSpec::svid(
            &spiffe_id("/service/echo").to_string(),
            time::Duration::hours(2),
        ))
        .unwrap();
    pki.write_leaf("echo", &rotated);

    let after = presented_leaf(&client, &addr).await;
    assert_ne!(after, before, "server still presents the old certificate");
    assert_eq!(after, rotated.cert_der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_rotation_keeps_the_previous_certificate_in_service() {
    let pki = TestPki::new();
    let server = start_echo(&pki, &[]).await;
    let client = pki.client("client", &spiffe_id("/workload/client").to_string());
    let addr = server.address();
    let before = presented_leaf(&client, &addr).await;

    // A certificate whose key is not the one on disk: half a rotation.
    let other = pki
        .ca
        .issue(&LeafSpec::svid(
            &spiffe_id("/service/echo").to_string(),
            time::Duration::hours(2),
        ))
        .unwrap();
    std::fs::write(pki.path().join("echo.crt"), &other.cert_pem).unwrap();

    assert_eq!(presented_leaf(&client, &addr).await, before);
}
