//! The credential broker through its public gRPC API over mTLS: X.509-SVIDs
//! from CSRs, JWT-SVIDs and API tokens, each a lease allowed by authority
//! and recorded as evidence; renewal, revocation, the revocation stream and
//! the reaper; fail-closed behaviour.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use steward_integration_tests::TestStack;
use steward_integration_tests::broker::{
    BROKER_POLICIES, SOAR, approval_request_of, csr, in_seconds, task,
};
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::broker::v1 as pb;
use steward_proto::steward::inventory::v1 as inventory;
use tokio_stream::StreamExt;
use tonic::Code;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

fn p256() -> rcgen::KeyPair {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
}

fn x509(
    identity: &str,
    csr: Vec<u8>,
    ttl: u32,
    task: Option<pb::Task>,
) -> pb::IssueX509SvidRequest {
    pb::IssueX509SvidRequest {
        identity_id: identity.into(),
        csr,
        ttl_seconds: ttl,
        task,
    }
}

fn token(identity: &str, scopes: &[&str], ttl: u32, incident: &str) -> pb::IssueApiTokenRequest {
    pb::IssueApiTokenRequest {
        identity_id: identity.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ttl_seconds: ttl,
        task: task(incident),
    }
}

async fn leases(
    client: &mut steward_integration_tests::broker::Client,
    identity: &str,
) -> Vec<pb::Lease> {
    client
        .list_leases(pb::ListLeasesRequest {
            identity_id: identity.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases
}

fn lifetime(lease: &pb::Lease) -> i64 {
    lease.expire_time.unwrap().seconds - lease.issue_time.unwrap().seconds
}

/// Path validation by webpki (rustls' verifier), with the broker's roots as
/// the only trust anchors.
fn verify_chain(chain: &[Vec<u8>], roots: &[Vec<u8>]) {
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
        .unwrap();
}

#[tokio::test]
async fn x509_svids_come_from_csrs_under_policy_as_recorded_leases() {
    let stack = TestStack::start().await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let spiffe_id = identity.spiffe_id.clone();
    let mut soar = stack.broker_caller(SOAR).await;
    let key = p256();
    let good = csr(&key, &[&spiffe_id], false);

    // Nothing permits issuing yet: the default policies only forbid.
    let denied = soar
        .issue_x509_svid(x509(&identity.id, good.clone(), 0, task("INC-1")))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("authority denied issue"),
        "{denied:?}"
    );

    stack.activate_policies(BROKER_POLICIES, true).await;
    let issued = soar
        .issue_x509_svid(x509(&identity.id, good.clone(), 0, task("INC-1")))
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    // The default hour, capped by the policy's @max_ttl of 30 minutes.
    assert_eq!(lifetime(&lease), 1800);
    assert_eq!(lease.kind, pb::CredentialKind::X509Svid as i32);
    assert_eq!(lease.state, pb::LeaseState::Active as i32);
    assert_eq!(lease.spiffe_id, spiffe_id);
    assert_eq!(lease.holder, "spiffe://steward.test/automation/soar");
    assert_eq!(lease.incident_ref, "INC-1");
    assert!(!lease.renewable);
    assert!(!lease.decision_id.is_empty());

    // The SVID chains to the bundle the broker serves and to nothing else,
    // names exactly the identity's SPIFFE ID and certifies the CSR's key.
    let bundle = soar
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bundle.trust_domain, "steward.test");
    assert_eq!(bundle.x509_authorities, issued.bundle);
    verify_chain(&issued.x509_svid, &bundle.x509_authorities);
    let (_, leaf) = X509Certificate::from_der(&issued.x509_svid[0]).unwrap();
    let uris: Vec<_> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, std::slice::from_ref(&spiffe_id));
    assert!(!leaf.is_ca());
    assert_eq!(
        leaf.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    assert_eq!(
        leaf.raw_serial_as_string().replace(':', ""),
        lease.credential_ref
    );

    // Bad input: a precise status, and nothing issued.
    let before = leases(&mut soar, &identity.id).await.len();
    let cases = [
        (
            x509(&identity.id, good.clone(), 3600, task("INC-1")),
            Code::FailedPrecondition,
            "ttl_seconds",
        ),
        (
            x509(&identity.id, good.clone(), 200_000, task("INC-1")),
            Code::InvalidArgument,
            "ttl_seconds",
        ),
        (
            x509(
                &identity.id,
                csr(&key, &["spiffe://steward.test/workload/other"], false),
                0,
                task("INC-1"),
            ),
            Code::InvalidArgument,
            "csr:",
        ),
        (
            x509(
                &identity.id,
                csr(&key, &[&spiffe_id], true),
                0,
                task("INC-1"),
            ),
            Code::InvalidArgument,
            "csr:",
        ),
        (
            x509(&identity.id, b"not a csr".to_vec(), 0, task("INC-1")),
            Code::InvalidArgument,
            "csr:",
        ),
        (
            x509(&identity.id, Vec::new(), 0, task("INC-1")),
            Code::InvalidArgument,
            "csr:",
        ),
        (
            x509(&identity.id, good.clone(), 0, None),
            Code::InvalidArgument,
            "task:",
        ),
        (
            x509(&identity.id, good.clone(), 0, task("")),
            Code::InvalidArgument,
            "task.incident_ref",
        ),
        (
            x509("not-a-uuid", good.clone(), 0, task("INC-1")),
            Code::InvalidArgument,
            "identity_id",
        ),
        (
            x509(
                &identity.id,
                good.clone(),
                0,
                Some(pb::Task {
                    incident_ref: "INC-1".into(),
                    window_end: Some(in_seconds(-60)),
                    ..Default::default()
                }),
            ),
            Code::InvalidArgument,
            "task.window_end",
        ),
    ];
    for (request, code, field) in cases {
        let err = soar.issue_x509_svid(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    assert_eq!(leases(&mut soar, &identity.id).await.len(), before);

    // A credential never outlives its task window.
    let windowed = soar
        .issue_x509_svid(x509(
            &identity.id,
            good.clone(),
            0,
            Some(pb::Task {
                incident_ref: "INC-1".into(),
                window_end: Some(in_seconds(600)),
                ..Default::default()
            }),
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!((598..=600).contains(&lifetime(&windowed)), "{windowed:?}");

    // An SVID carries its own expiry: its lease is not renewable.
    let err = soar
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not renewable"), "{err:?}");

    // A caller outside the issuers' allowlist never reaches the handler.
    let mut workload = stack.broker_caller("/workload/sidecar").await;
    let err = workload
        .issue_x509_svid(x509(&identity.id, good, 0, task("INC-1")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Every issue is in the evidence log with its lease and serial.
    let entries = stack.evidence_of(&identity.id, "credential.issue", 2).await;
    let issue = entries
        .iter()
        .map(|e| e.record.as_ref().unwrap())
        .find(|r| {
            r.action == "credential.issue" && r.target.as_ref().unwrap().lease_id == lease.lease_id
        })
        .expect("the issue's evidence record");
    assert_eq!(
        issue.target.as_ref().unwrap().credential_serial,
        lease.credential_ref
    );
    assert_eq!(issue.incident_ref, "INC-1");
    assert_eq!(
        issue.actor.as_ref().unwrap().workload_spiffe_id,
        "spiffe://steward.test/automation/soar"
    );
}

#[tokio::test]
async fn jwt_svids_are_es256_audience_bound_and_verify_against_the_served_jwks() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("ledger-writer", "production").await;
    let spiffe_id = identity.spiffe_id.clone();
    let mut soar = stack.broker_caller(SOAR).await;

    let err = soar
        .issue_jwt_svid(pb::IssueJwtSvidRequest {
            identity_id: identity.id.clone(),
            audience: vec![],
            ttl_seconds: 0,
            task: task("INC-7"),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("audience:"), "{err:?}");

    let issued = soar
        .issue_jwt_svid(pb::IssueJwtSvidRequest {
            identity_id: identity.id.clone(),
            audience: vec!["ledger".into()],
            ttl_seconds: 0,
            task: task("INC-7"),
        })
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    assert_eq!(
        lifetime(&lease),
        300,
        "the JWT-SVID default is five minutes"
    );

    let parts: Vec<&str> = issued.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["sub"], spiffe_id.as_str());
    assert_eq!(claims["aud"], "ledger");
    assert_eq!(claims["jti"], lease.credential_ref.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap(),
        lease.expire_time.unwrap().seconds
    );

    // The signature verifies (ring, P-256) with the key the JWKS publishes
    // under the token's kid, as a SPIFFE JWT bundle: `use` is `jwt-svid`.
    let bundle = soar
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let jwks: serde_json::Value = serde_json::from_slice(&bundle.jwt_authorities).unwrap();
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the token's kid is in the JWKS");
    assert_eq!(jwk["use"], "jwt-svid");
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point);
    let signed = format!("{}.{}", parts[0], parts[1]);
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    key.verify(signed.as_bytes(), &signature).unwrap();
    let mut tampered = signature.clone();
    tampered[0] ^= 1;
    assert!(key.verify(signed.as_bytes(), &tampered).is_err());
}

#[tokio::test]
async fn api_tokens_are_shown_once_introspected_renewed_and_revoked_as_watchers_see() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut resource_server = stack.broker_caller("/workload/ledger").await;

    // A watcher from now on, before anything is revoked.
    let mut live = resource_server
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();

    let issued = soar
        .issue_api_token(token(&identity.id, &["ledger:write"], 600, "INC-9"))
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    assert!(issued.token.starts_with("stw_") && issued.token.len() > 40);
    assert!(issued.token.starts_with(&lease.credential_ref));
    assert!(lease.renewable);
    assert_eq!(lifetime(&lease), 600);
    // Renewals stay within the policy's 30 minutes.
    assert_eq!(
        lease.max_expire_time.unwrap().seconds - lease.issue_time.unwrap().seconds,
        1800
    );

    let seen = resource_server
        .introspect(pb::IntrospectRequest {
            token: issued.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active);
    assert_eq!(seen.lease_id, lease.lease_id);
    assert_eq!(seen.identity_id, identity.id);
    assert_eq!(seen.scopes, ["ledger:write"]);
    assert_eq!(seen.incident_ref, "INC-9");
    for unknown in [
        "stw_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "ghp_something",
    ] {
        let seen = resource_server
            .introspect(pb::IntrospectRequest {
                token: unknown.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            seen,
            pb::IntrospectResponse::default(),
            "nothing about an unknown token"
        );
    }

    // Only the hash is stored: the secret is nowhere in the database files.
    if stack.backend == steward_integration_tests::TestBackend::Sqlite {
        let dir = stack.pki.path();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("credential-broker.db") {
                let bytes = std::fs::read(&path).unwrap();
                let secret = &issued.token.as_bytes()[4..];
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "{name} holds the token"
                );
            }
        }
    }

    // Renew: within the max TTL only.
    let renewed = soar
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl_seconds: 1200,
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert!(renewed.expire_time.unwrap().seconds > lease.expire_time.unwrap().seconds);
    let err = soar
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl_seconds: 3000,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // Revoke: introspection and the stream agree at once.
    let revoked = soar
        .revoke_lease(pb::RevokeLeaseRequest {
            lease_id: lease.lease_id.clone(),
            reason: "leaked in a log".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(revoked.state, pb::LeaseState::Revoked as i32);
    assert_eq!(revoked.revoked_by, "spiffe://steward.test/automation/soar");
    let seen = resource_server
        .introspect(pb::IntrospectRequest {
            token: issued.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!seen.active);
    let event = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.lease_id, lease.lease_id);
    assert_eq!(event.state, pb::LeaseState::Revoked as i32);
    assert_eq!(event.reason, "leaked in a log");
    assert_eq!(event.credential_ref, lease.credential_ref);

    // A revoked lease cannot be renewed; revoking it again changes nothing.
    let err = soar
        .renew_lease(pb::RenewLeaseRequest {
            lease_id: lease.lease_id.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("revoked"), "{err:?}");
    let again = soar
        .revoke_lease(pb::RevokeLeaseRequest {
            lease_id: lease.lease_id.clone(),
            reason: "again".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(again.revoke_reason, "leaked in a log");
    let err = soar
        .revoke_lease(pb::RevokeLeaseRequest {
            lease_id: uuid::Uuid::now_v7().to_string(),
            reason: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = soar
        .revoke_lease(pb::RevokeLeaseRequest {
            lease_id: lease.lease_id.clone(),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("reason:"));

    // Revoke by incident: every live lease of INC-10 at once.
    let mut tokens = Vec::new();
    for _ in 0..3 {
        tokens.push(
            soar.issue_api_token(token(&identity.id, &["ledger:read"], 0, "INC-10"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let other = soar
        .issue_api_token(token(&identity.id, &["ledger:read"], 0, "INC-11"))
        .await
        .unwrap()
        .into_inner();
    let bulk = soar
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: Some(pb::revoke_leases_request::Selector::IncidentRef(
                "INC-10".into(),
            )),
            reason: "incident contained".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bulk.lease_ids.len(), 3);
    assert!(!bulk.more);
    for t in &tokens {
        let seen = resource_server
            .introspect(pb::IntrospectRequest {
                token: t.token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!seen.active);
    }
    let seen = resource_server
        .introspect(pb::IntrospectRequest {
            token: other.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active, "another incident's token stays live");
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.incident_ref, "INC-10");
    }

    // By identity and by holder too; a bulk revocation needs a selector.
    let err = soar
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: None,
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("selector:"), "{err:?}");
    let err = soar
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: Some(pb::revoke_leases_request::Selector::Holder(
                "not a spiffe id".into(),
            )),
            reason: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("holder:"), "{err:?}");
    let by_holder = soar
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: Some(pb::revoke_leases_request::Selector::Holder(
                "spiffe://steward.test/automation/other".into(),
            )),
            reason: "nothing of theirs".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(by_holder.lease_ids.is_empty());

    // Listing pages through the leases, oldest first; bad filters are named.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = soar
            .list_leases(pb::ListLeasesRequest {
                identity_id: identity.id.clone(),
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.leases.into_iter().map(|l| l.lease_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let active = soar
        .list_leases(pb::ListLeasesRequest {
            identity_id: identity.id.clone(),
            state: pb::LeaseState::Active as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert_eq!(active.len(), 1, "only INC-11's token is live");
    for (request, field) in [
        (
            pb::ListLeasesRequest {
                state: 9,
                ..Default::default()
            },
            "state:",
        ),
        (
            pb::ListLeasesRequest {
                page_size: 5000,
                ..Default::default()
            },
            "page_size:",
        ),
        (
            pb::ListLeasesRequest {
                page_token: "x".into(),
                ..Default::default()
            },
            "page_token:",
        ),
    ] {
        let err = soar.list_leases(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{field}: {err:?}");
    }
    let err = resource_server
        .introspect(pb::IntrospectRequest {
            token: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().starts_with("token:"), "{err:?}");

    // By identity: the last live one.
    let by_identity = soar
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: Some(pb::revoke_leases_request::Selector::IdentityId(
                identity.id.clone(),
            )),
            reason: "identity retired".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_identity.lease_ids,
        [other.lease.as_ref().unwrap().lease_id.clone()]
    );
    assert!(!introspect(&mut resource_server, &other.token).await);

    // A watcher that starts later replays the whole log, in order.
    let replay: Vec<pb::Revocation> = resource_server
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner()
        .take(5)
        .map(Result::unwrap)
        .collect()
        .await;
    let sequences: Vec<u64> = replay.iter().map(|r| r.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5]);
    assert_eq!(replay[0].lease_id, lease.lease_id);

    // Each revocation is evidence.
    let entries = stack
        .evidence_of(&identity.id, "credential.revoke", 5)
        .await;
    let revocations = entries
        .iter()
        .filter(|e| e.record.as_ref().unwrap().action == "credential.revoke")
        .count();
    assert_eq!(revocations, 5);
}

#[tokio::test]
async fn dead_identities_get_nothing_approvals_are_named_and_authority_down_fails_closed() {
    let mut stack = TestStack::start().await;
    // The site's policies alone, without Steward's default forbid: the
    // broker itself still refuses a suspended identity. (The operator's
    // permits keep it managing policy and lifecycle states.)
    stack
        .activate_policies(
            &format!(
                "{BROKER_POLICIES}\n@id(\"operators-manage-policy\")\npermit (principal is Steward::Workload, action in [Steward::Action::\"manage_policy\", Steward::Action::\"suspend\", Steward::Action::\"reinstate\"], resource) when {{ principal.role == \"operator\" }};"
            ),
            false,
        )
        .await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let staging = stack.workload_identity("staging-sync", "staging").await;
    let mut soar = stack.broker_caller(SOAR).await;

    let err = soar
        .issue_api_token(token(&staging.id, &[], 0, "INC-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().starts_with("approval required"), "{err:?}");
    let request_id = err
        .metadata()
        .get("steward-approval-request-id")
        .expect("the approval request's id")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(err.message().contains(&request_id));

    let mut inventory = stack.inventory().await;
    inventory
        .transition_state(inventory::TransitionStateRequest {
            id: identity.id.clone(),
            target_state: inventory::LifecycleState::Suspended as i32,
            reason: "exposed".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let err = soar
        .issue_api_token(token(&identity.id, &[], 0, "INC-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("suspended"), "{err:?}");
    assert!(leases(&mut soar, &identity.id).await.is_empty());
    // Authority allowed it; the broker's refusal is that decision's record.
    let entries = stack.evidence_of(&identity.id, "credential.issue", 1).await;
    let refused = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.action == "credential.issue")
        .expect("the refused issuance's record");
    let outcome = refused.outcome.as_ref().unwrap();
    assert_eq!(outcome.status, audit::OutcomeStatus::Failed as i32);
    assert!(outcome.reason.contains("suspended"), "{outcome:?}");
    assert_eq!(refused.attributes["decision_id"], refused.record_id);

    let live = stack.workload_identity("other-sync", "production").await;
    stack.stop("authority").await;
    let err = soar
        .issue_api_token(token(&live.id, &[], 0, "INC-3"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(leases(&mut soar, &live.id).await.is_empty());
}

#[tokio::test]
async fn expired_leases_are_reaped_recorded_and_streamed() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut watcher = stack.broker_caller("/workload/ledger").await;
    let mut live = watcher
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    let issued = soar
        .issue_api_token(token(&identity.id, &[], 1, "INC-4"))
        .await
        .unwrap()
        .into_inner();
    let lease = issued.lease.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.lease_id, lease.lease_id);
    assert_eq!(event.state, pb::LeaseState::Expired as i32);
    let stored = soar
        .get_lease(pb::GetLeaseRequest {
            lease_id: lease.lease_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(stored.state, pb::LeaseState::Expired as i32);
    assert!(
        !watcher
            .introspect(pb::IntrospectRequest {
                token: issued.token
            })
            .await
            .unwrap()
            .into_inner()
            .active
    );
    let entries = stack
        .evidence_of(&identity.id, "credential.expire", 1)
        .await;
    assert!(
        entries
            .iter()
            .any(|e| e.record.as_ref().unwrap().action == "credential.expire")
    );
}

#[tokio::test]
async fn the_ca_survives_restarts_sealed_and_a_wrong_key_encryption_key_stops_the_start() {
    let mut stack = TestStack::start().await;
    let mut client = stack.broker_caller("/workload/ledger").await;
    let before = client
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.x509_authorities.len(), 1);

    stack.restart("credential-broker").await;
    let mut client = stack.broker_caller("/workload/ledger").await;
    let after = client
        .get_trust_bundle(pb::GetTrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "the same CA and JWT key after a restart");

    let config = stack.configs["credential-broker"].clone();
    stack.stop("credential-broker").await;
    let mut broker = steward_integration_tests::test_broker_config(config);
    let wrong = stack.pki.path().join("wrong.kek");
    std::fs::write(&wrong, "11".repeat(32)).unwrap();
    broker.kek_file = Some(wrong);
    let err = steward_credential_broker::build_with(broker)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("key-encryption key"), "{err}");
}

#[tokio::test]
async fn closing_an_incident_revokes_its_leases_even_after_a_broker_outage() {
    use steward_proto::steward::authority::v1 as authority;
    use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;

    let mut stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut watcher = stack.broker_caller("/workload/ledger").await;
    let mut live = watcher
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut closing = Vec::new();
    for _ in 0..2 {
        closing.push(
            soar.issue_api_token(token(&identity.id, &[], 0, "INC-42"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    let other = soar
        .issue_api_token(token(&identity.id, &[], 0, "INC-43"))
        .await
        .unwrap()
        .into_inner();

    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let closed = ops
        .close_incident(authority::CloseIncidentRequest {
            incident_ref: "INC-42".into(),
            reason: "contained".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!closed.leases_pending);
    let mut revoked = closed.revoked_lease_ids.clone();
    revoked.sort();
    let mut expected: Vec<String> = closing
        .iter()
        .map(|t| t.lease.as_ref().unwrap().lease_id.clone())
        .collect();
    expected.sort();
    assert_eq!(revoked, expected);
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.incident_ref, "INC-42");
        assert!(
            event.reason.starts_with("incident INC-42 closed"),
            "{event:?}"
        );
    }
    for t in &closing {
        let seen = watcher
            .introspect(pb::IntrospectRequest {
                token: t.token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!seen.active);
    }
    let seen = watcher
        .introspect(pb::IntrospectRequest {
            token: other.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(seen.active, "another incident's lease stays live");

    // The broker is down when the next incident closes: the closure stands,
    // the answer says the leases are pending, and they are revoked once the
    // broker is back.
    let pending = soar
        .issue_api_token(token(&identity.id, &[], 0, "INC-44"))
        .await
        .unwrap()
        .into_inner();
    stack.stop("credential-broker").await;
    // A correlation id no service would record changes nothing.
    let err = ops
        .close_incident(authority::CloseIncidentRequest {
            incident_ref: "INC-44".into(),
            reason: "contained".into(),
            correlation_id: "chain\n44".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("correlation_id"), "{err:?}");
    let closed = ops
        .close_incident(authority::CloseIncidentRequest {
            incident_ref: "INC-44".into(),
            reason: "contained".into(),
            correlation_id: "chain-44".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(closed.leases_pending);
    assert!(closed.revoked_lease_ids.is_empty());
    stack.restart_stopped("credential-broker").await;
    let mut watcher = stack.broker_caller("/workload/ledger").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = watcher
            .introspect(pb::IntrospectRequest {
                token: pending.token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if !seen.active {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the closed incident's lease is still live"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The lease records why it ended (the operator reads it; workloads may
    // not read leases).
    let lease_id = pending.lease.unwrap().lease_id;
    let refused = watcher
        .get_lease(pb::GetLeaseRequest {
            lease_id: lease_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut operator = stack.broker_as(&stack.operator.clone()).await;
    let lease = operator
        .get_lease(pb::GetLeaseRequest { lease_id })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(lease.state, pb::LeaseState::Revoked as i32);
    assert_eq!(lease.revoked_by, "spiffe://steward.test/service/authority");
    assert!(
        lease.revoke_reason.starts_with("incident INC-44 closed"),
        "{lease:?}"
    );
    // The retried closure kept its correlation id for the revocation's
    // record.
    let entries = stack
        .evidence_of(&identity.id, "credential.revoke", 1)
        .await;
    let revoked = entries
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| {
            r.action == "credential.revoke"
                && r.target
                    .as_ref()
                    .is_some_and(|t| t.lease_id == lease.lease_id)
        })
        .expect("the revocation's record");
    assert_eq!(revoked.correlation_id, "chain-44");

    // RevokeLeases checks its correlation id before it revokes anything.
    let err = operator
        .revoke_leases(pb::RevokeLeasesRequest {
            selector: Some(pb::revoke_leases_request::Selector::IncidentRef(
                "INC-45".into(),
            )),
            reason: "cleanup".into(),
            correlation_id: "x".repeat(257),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("correlation_id"), "{err:?}");
}

fn rotate(
    identity: &str,
    kind: pb::CredentialKind,
    overlap: u32,
    incident: &str,
) -> pb::RotateRequest {
    pb::RotateRequest {
        identity_id: identity.into(),
        kind: kind as i32,
        task: task(incident),
        overlap_seconds: overlap,
        ttl_seconds: 0,
        csr: Vec::new(),
        audience: Vec::new(),
        scopes: vec!["ledger:write".into()],
        template: String::new(),
    }
}

async fn introspect(client: &mut steward_integration_tests::broker::Client, token: &str) -> bool {
    client
        .introspect(pb::IntrospectRequest {
            token: token.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .active
}

#[tokio::test]
async fn rotation_replaces_credentials_and_confirms_the_old_ones_are_rejected() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let mut ledger = stack.broker_caller("/workload/ledger").await;

    // At once (no overlap): the old token is revoked and introspection
    // confirms it is rejected before Rotate answers.
    let old = soar
        .issue_api_token(token(&identity.id, &["ledger:write"], 0, "INC-5"))
        .await
        .unwrap()
        .into_inner();
    let rotated = soar
        .rotate(rotate(
            &identity.id,
            pb::CredentialKind::ApiToken,
            0,
            "INC-5",
        ))
        .await
        .unwrap()
        .into_inner();
    let rotation = rotated.rotation.unwrap();
    assert_eq!(
        rotation.state,
        pb::RotationState::Confirmed as i32,
        "{rotation:?}"
    );
    assert_eq!(
        rotation.old_lease_ids,
        [old.lease.as_ref().unwrap().lease_id.clone()]
    );
    assert!(rotation.detail.contains("introspection"), "{rotation:?}");
    assert!(!introspect(&mut ledger, &old.token).await);
    assert!(introspect(&mut ledger, &rotated.token).await);
    assert_eq!(rotation.new_lease_id, rotated.lease.unwrap().lease_id);

    // With an overlap, both work until it ends; then the old one is
    // revoked and confirmed by the broker on its own.
    let rotated_again = soar
        .rotate(rotate(
            &identity.id,
            pb::CredentialKind::ApiToken,
            2,
            "INC-5",
        ))
        .await
        .unwrap()
        .into_inner();
    let pending = rotated_again.rotation.unwrap();
    assert_eq!(pending.state, pb::RotationState::Overlap as i32);
    assert!(
        introspect(&mut ledger, &rotated.token).await,
        "valid during the overlap"
    );
    assert!(introspect(&mut ledger, &rotated_again.token).await);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let finished = loop {
        let now = soar
            .get_rotation(pb::GetRotationRequest {
                rotation_id: pending.rotation_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .rotation
            .unwrap();
        if now.state != pb::RotationState::Overlap as i32 {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the overlap never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(finished.state, pb::RotationState::Confirmed as i32);
    assert!(!introspect(&mut ledger, &rotated.token).await);
    assert!(introspect(&mut ledger, &rotated_again.token).await);

    // An X.509-SVID: confirmed through the revocation log.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let request = csr(&key, &[&identity.spiffe_id], false);
    soar.issue_x509_svid(x509(&identity.id, request.clone(), 0, task("INC-5")))
        .await
        .unwrap();
    let mut svid = rotate(&identity.id, pb::CredentialKind::X509Svid, 0, "INC-5");
    svid.csr = request;
    let rotated = soar.rotate(svid).await.unwrap().into_inner();
    let rotation = rotated.rotation.unwrap();
    assert_eq!(rotation.state, pb::RotationState::Confirmed as i32);
    assert!(rotation.detail.contains("revocation log"), "{rotation:?}");
    assert_eq!(rotated.x509_svid.len(), 2);

    // Bad input changes nothing.
    let err = soar
        .get_rotation(pb::GetRotationRequest {
            rotation_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut bad = rotate(&identity.id, pb::CredentialKind::Unspecified, 0, "INC-5");
    let err = soar.rotate(bad.clone()).await.unwrap_err();
    assert!(err.message().starts_with("kind:"), "{err:?}");
    bad.kind = pb::CredentialKind::ApiToken as i32;
    bad.overlap_seconds = 4000;
    let err = soar.rotate(bad.clone()).await.unwrap_err();
    assert!(err.message().starts_with("overlap_seconds:"), "{err:?}");
    bad.kind = pb::CredentialKind::X509Svid as i32;
    bad.overlap_seconds = 0;
    let err = soar.rotate(bad).await.unwrap_err();
    assert!(err.message().starts_with("csr:"), "{err:?}");

    // The evidence log holds the rotation, the revocations and the
    // confirmations.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let entries = stack.evidence_for(&identity.id, 1).await;
        let count = |action: &str| {
            entries
                .iter()
                .filter(|e| e.record.as_ref().unwrap().action == action)
                .count()
        };
        if count("credential.rotate") == 3 && count("credential.rotation_confirmed") == 3 {
            assert_eq!(count("credential.revoke"), 3);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rotation evidence missing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rotation_that_needs_approval_proceeds_once_the_owner_approves() {
    use steward_integration_tests::bearer;
    use steward_proto::steward::authority::v1 as authority;
    use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;

    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("staging-sync", "staging").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let err = soar
        .rotate(rotate(
            &identity.id,
            pb::CredentialKind::ApiToken,
            0,
            "INC-42",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let request_id = approval_request_of(&err);

    // The bot cannot approve its own request; alice, the technical owner,
    // can.
    let mut bot = stack.authority_caller(SOAR).await;
    let refused = bot
        .review_approval_request(authority::ReviewApprovalRequestRequest {
            id: request_id.clone(),
            verdict: authority::Verdict::Approve as i32,
            reason: "self".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    ops.review_approval_request(bearer(
        authority::ReviewApprovalRequestRequest {
            id: request_id,
            verdict: authority::Verdict::Approve as i32,
            reason: "rotate it".into(),
        },
        &stack.token("alice"),
    ))
    .await
    .unwrap();
    let rotated = soar
        .rotate(rotate(
            &identity.id,
            pb::CredentialKind::ApiToken,
            0,
            "INC-42",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rotated.rotation.unwrap().state,
        pb::RotationState::Confirmed as i32
    );
    assert!(
        !rotated.lease.unwrap().grant_id.is_empty(),
        "the approval's grant was used"
    );
}

/// ADR 0012: an issuance's decision and its outcome are one evidence
/// record, whose id is the decision's; an allowed issuance the broker then
/// refuses is recorded as failed, with the decision; other decisions
/// (revocation) stay authority's own records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuance_and_its_decision_are_one_record_and_a_refusal_is_recorded() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("ledger-sync", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let key = p256();
    let lease = soar
        .issue_x509_svid(x509(
            &identity.id,
            csr(&key, &[&identity.spiffe_id], false),
            0,
            task("INC-7"),
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    // Authority allows; the CSR names another SPIFFE ID, so nothing is issued.
    let refused = soar
        .issue_x509_svid(x509(
            &identity.id,
            csr(&key, &["spiffe://steward.test/workload/other"], false),
            0,
            task("INC-7"),
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    soar.revoke_lease(pb::RevokeLeaseRequest {
        lease_id: lease.lease_id.clone(),
        reason: "done".into(),
    })
    .await
    .unwrap();

    // Authority's revocation decision comes after the issuances' decisions
    // in its ordered outbox: once it is in the log, a separate issue
    // decision would be too.
    stack
        .evidence_of(&identity.id, "decision.authorize", 1)
        .await;
    let entries = stack
        .evidence_of(&identity.id, "credential.revoke", 1)
        .await;
    let records: Vec<_> = entries.iter().filter_map(|e| e.record.as_ref()).collect();
    let decisions: Vec<_> = records
        .iter()
        .filter(|r| r.action == "decision.authorize")
        .map(|r| r.attributes["requested_action"].as_str())
        .collect();
    assert_eq!(decisions, vec!["revoke"], "{records:#?}");

    let issues: Vec<_> = records
        .iter()
        .filter(|r| r.action == "credential.issue")
        .collect();
    assert_eq!(issues.len(), 2, "{issues:#?}");
    let issued = issues
        .iter()
        .find(|r| r.record_id == lease.decision_id)
        .expect("the issuance's record carries the decision's id");
    assert_eq!(issued.target.as_ref().unwrap().lease_id, lease.lease_id);
    assert_eq!(issued.attributes["decision_id"], lease.decision_id);
    assert_eq!(issued.attributes["max_ttl_seconds"], "1800");
    let d = issued.decision.as_ref().unwrap();
    assert_eq!(d.effect, audit::Effect::Allow as i32);
    assert!(!d.policy_set_version.is_empty() && !d.policy_ids.is_empty());
    assert_eq!(
        issued.outcome.as_ref().unwrap().status,
        audit::OutcomeStatus::Succeeded as i32
    );

    let failed = issues
        .iter()
        .find(|r| r.record_id != lease.decision_id)
        .unwrap();
    let outcome = failed.outcome.as_ref().unwrap();
    assert_eq!(outcome.status, audit::OutcomeStatus::Failed as i32);
    assert!(outcome.reason.contains("csr"), "{outcome:?}");
    assert_eq!(failed.attributes["decision_id"], failed.record_id);
    assert_eq!(
        failed.decision.as_ref().unwrap().effect,
        audit::Effect::Allow as i32
    );
    assert!(failed.target.as_ref().unwrap().lease_id.is_empty());
    assert_eq!(failed.incident_ref, "INC-7");
}

/// The broker asks authority for concurrent issuances' decisions in
/// batches: each caller still gets the answer to its own request.
#[tokio::test]
async fn concurrent_issuances_each_get_their_own_decision() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let production = stack.workload_identity("billing-sync", "production").await;
    let staging = stack.workload_identity("staging-sync", "staging").await;
    let development = stack.workload_identity("dev-sync", "development").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let soar = stack.broker_caller(SOAR).await;
    let calls = (0..96).map(|i| {
        let mut client = soar.clone();
        let request = match i % 4 {
            0 => token(&production.id, &[], 0, "INC-9"),
            1 => token(&staging.id, &[], 0, "INC-9"),
            2 => token(&unknown, &[], 0, "INC-9"),
            _ => token(&development.id, &[], 0, "INC-9"),
        };
        tokio::spawn(async move { (i, client.issue_api_token(request).await) })
    });
    let mut issued = 0;
    for call in calls.collect::<Vec<_>>() {
        let (i, answer) = call.await.unwrap();
        match (i % 4, answer) {
            (0, Ok(response)) => {
                let lease = response.into_inner().lease.unwrap();
                assert_eq!(lease.identity_id, production.id);
                issued += 1;
            }
            (1, Err(e)) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert!(e.message().starts_with("approval required"), "{e:?}");
            }
            (2, Err(e)) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
            (3, Err(e)) => assert_eq!(e.code(), Code::PermissionDenied, "{e:?}"),
            (kind, answer) => panic!("request {i} (kind {kind}): {answer:?}"),
        }
    }
    assert_eq!(issued, 24);
    let mut soar = soar;
    assert_eq!(leases(&mut soar, &production.id).await.len(), 24);
    assert!(leases(&mut soar, &staging.id).await.is_empty());
}

#[tokio::test]
async fn stopping_ends_open_streams_with_unavailable_instead_of_waiting_out_the_grace() {
    let mut stack = TestStack::start().await;
    // A grace far longer than the stop may take: an open stream that held
    // the server would make it last the full 60 s.
    stack
        .configs
        .get_mut("credential-broker")
        .unwrap()
        .shutdown_grace_secs = 60;
    stack.restart("credential-broker").await;
    let mut watcher = stack.broker_caller("/workload/ledger").await;
    let mut live = watcher
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Nothing to read yet: the stream is open and waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), live.next())
            .await
            .is_err()
    );

    let started = std::time::Instant::now();
    let stopping = tokio::spawn(async move {
        stack.stop("credential-broker").await;
        started.elapsed()
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), live.next())
        .await
        .expect("the stream ends while the service stops");
    let Some(Err(status)) = ended else {
        panic!("the stream should end with a status: {ended:?}");
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("reconnect"), "{status:?}");
    let took = stopping.await.unwrap();
    assert!(
        took < Duration::from_secs(30),
        "the stop waited for the stream: {took:?}"
    );
}
