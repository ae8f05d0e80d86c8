//! Refusals never carry the caller's payload back: an oversized value is
//! named by its field and quoted bounded, and a value that looks like a
//! secret is never quoted at all (`steward_errors::shown`). A value over
//! the wire bound (`steward_server::bounds`) is refused by its size alone.

use steward_integration_tests::TestStack;
use steward_integration_tests::inventory::{create, spec};
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::Code;

/// The largest message a refusal may carry.
const SMALL: usize = 1024;

fn start(message: &str) -> &str {
    &message[..message.len().min(80)]
}

#[tokio::test]
async fn a_megabyte_value_is_refused_by_field_in_a_short_message() {
    let stack = TestStack::start().await;
    let mut inv = stack.inventory().await;
    let nhi = create(&mut inv, spec("refusals")).await.id;
    let huge = "x".repeat(1 << 20);
    let long = "x".repeat(3000);

    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let err = broker
        .authorize(authority::AuthorizeRequest {
            principal: Some(authority::Principal {
                kind: Some(authority::principal::Kind::Workload(
                    "spiffe://steward.test/service/credential-broker".into(),
                )),
            }),
            action: huge.clone(),
            resource_id: nhi.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    // Over the wire bound: refused before authority's handler runs.
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .starts_with("`action` is 1048576 bytes long; at most 4096"),
        "{}",
        start(err.message())
    );
    assert!(err.message().len() < SMALL, "{} bytes", err.message().len());
    // Under it but over the handler's own limit: quoted bounded.
    let err = broker
        .authorize(authority::AuthorizeRequest {
            principal: Some(authority::Principal {
                kind: Some(authority::principal::Kind::Workload(
                    "spiffe://steward.test/service/credential-broker".into(),
                )),
            }),
            action: long.clone(),
            resource_id: nhi.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("action: "),
        "{}",
        start(err.message())
    );
    assert!(err.message().len() < SMALL, "{} bytes", err.message().len());
    assert!(err.message().contains("3000"), "{}", err.message());

    let mut leases = stack.broker_caller("/automation/soar").await;
    let err = leases
        .get_lease(broker::GetLeaseRequest {
            lease_id: long.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("lease_id: "),
        "{}",
        start(err.message())
    );
    assert!(err.message().len() < SMALL, "{} bytes", err.message().len());

    // A CSV whose header is one 1 MB column: the row error names it bounded.
    let header = format!("{huge}\nvalue\n");
    let imported = inv
        .import_identities(inventory::ImportIdentitiesRequest {
            format: inventory::ImportFormat::Csv as i32,
            content: header.into_bytes(),
            source_system: "github".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let error = &imported.errors[0];
    assert!(error.field.len() < 128, "{} bytes", error.field.len());
    assert!(error.reason.len() < SMALL, "{} bytes", error.reason.len());
}

#[tokio::test]
async fn a_secret_in_the_wrong_field_is_never_echoed() {
    let stack = TestStack::start().await;
    let mut leases = stack.broker_caller("/automation/soar").await;
    let token = "stw_5f2b9c1e8a7d6c4b3a29180f7e6d5c4b3a291807";
    let err = leases
        .get_lease(broker::GetLeaseRequest {
            lease_id: token.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains(&token[4..]), "{}", err.message());
    assert!(err.message().contains("not shown"), "{}", err.message());

    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmUifQ.c2lnbmF0dXJlc2lnbmF0dXJl";
    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let err = broker
        .authorize(authority::AuthorizeRequest {
            principal: Some(authority::Principal {
                kind: Some(authority::principal::Kind::Workload(
                    "spiffe://steward.test/service/credential-broker".into(),
                )),
            }),
            action: jwt.into(),
            resource_id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("eyJzdWIi"), "{}", err.message());
}
