//! CA rotation: the replaced intermediate, root and JWT key stay published
//! for the overlap, so credentials issued before keep verifying, and a
//! restart keeps the rotated CA.

use std::sync::Arc;

use steward_integration_tests::TestStack;
use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, csr, task};
use steward_proto::steward::broker::v1 as pb;
use tonic::Code;

/// webpki path validation with `roots` as the only anchors.
fn verifies(chain: &[Vec<u8>], roots: &[Vec<u8>]) -> bool {
    use rustls::pki_types::{CertificateDer, UnixTime};
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(CertificateDer::from(root.clone())).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(store),
        steward_identity::tls::crypto_provider(),
    )
    .build()
    .unwrap();
    let intermediates: Vec<CertificateDer> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(chain[0].clone()),
            &intermediates,
            UnixTime::now(),
        )
        .is_ok()
}

#[tokio::test]
async fn ca_rotation_keeps_what_it_replaced_published_for_the_overlap() {
    let mut stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut operator = stack.broker_as(&stack.operator.clone()).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let request = csr(&key, &[&identity.spiffe_id], false);
    let issue = |soar: &mut steward_integration_tests::broker::Client| {
        let mut soar = soar.clone();
        let request = request.clone();
        let identity = identity.id.clone();
        async move {
            soar.issue_x509_svid(pb::IssueX509SvidRequest {
                identity_id: identity,
                csr: request,
                ttl_seconds: 0,
                task: task("INC-CA"),
            })
            .await
            .unwrap()
            .into_inner()
            .x509_svid
        }
    };
    let jwt = |soar: &mut steward_integration_tests::broker::Client| {
        let mut soar = soar.clone();
        let identity = identity.id.clone();
        async move {
            soar.issue_jwt_svid(pb::IssueJwtSvidRequest {
                identity_id: identity,
                audience: vec!["ledger".into()],
                ttl_seconds: 0,
                task: task("INC-CA"),
            })
            .await
            .unwrap()
            .into_inner()
            .token
        }
    };
    let kid = |token: &str| -> String {
        use base64::Engine as _;
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        header["kid"].as_str().unwrap().to_owned()
    };
    let before = operator
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let old_svid = issue(&mut soar).await;
    let old_jwt = jwt(&mut soar).await;

    // Only operators rotate, and a reason is required.
    let err = soar
        .rotate_ca(pb::RotateCaRequest {
            rotate_root: false,
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = operator
        .rotate_ca(pb::RotateCaRequest {
            rotate_root: false,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // An intermediate rotation: same root, both intermediates published,
    // new SVIDs under the new one, old ones still valid.
    let rotated = operator
        .rotate_ca(pb::RotateCaRequest {
            rotate_root: false,
            reason: "scheduled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle
        .unwrap();
    assert_eq!(rotated.x509_authorities, before.x509_authorities);
    assert_eq!(rotated.x509_intermediates.len(), 2);
    assert_eq!(rotated.x509_intermediates[1], before.x509_intermediates[0]);
    let new_svid = issue(&mut soar).await;
    assert_eq!(new_svid[1], rotated.x509_intermediates[0]);
    assert!(verifies(&new_svid, &rotated.x509_authorities));
    assert!(verifies(&old_svid, &rotated.x509_authorities));
    let jwks: serde_json::Value = serde_json::from_slice(&rotated.jwt_authorities).unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&kid(&old_jwt).as_str()));
    let new_jwt = jwt(&mut soar).await;
    assert_eq!(kids[0], kid(&new_jwt));

    // A root rotation: both roots in the bundle; old and new SVIDs verify
    // against it, and the new one does not verify against the old root.
    let rooted = operator
        .rotate_ca(pb::RotateCaRequest {
            rotate_root: true,
            reason: "root compromise drill".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle
        .unwrap();
    assert_eq!(rooted.x509_authorities.len(), 2);
    assert_eq!(rooted.x509_authorities[1], before.x509_authorities[0]);
    let newest = issue(&mut soar).await;
    assert!(verifies(&newest, &rooted.x509_authorities));
    assert!(!verifies(&newest, &before.x509_authorities));
    assert!(verifies(&old_svid, &rooted.x509_authorities));

    // The rotated CA survives a restart.
    stack.restart("credential-broker").await;
    let mut operator = stack.broker_as(&stack.operator.clone()).await;
    let after = operator
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, rooted);

    // Each rotation is evidence.
    let mut audit = stack.audit_reader().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let entries = audit
            .query(steward_proto::steward::audit::v1::QueryRequest {
                filter: Some(steward_proto::steward::audit::v1::EntryFilter {
                    action: "ca.rotate".into(),
                    ..Default::default()
                }),
                page_size: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .entries;
        if entries.len() == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} ca.rotate records",
            entries.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
