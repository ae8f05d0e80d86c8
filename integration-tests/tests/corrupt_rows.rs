//! A stored value this version cannot read is an error, never a default:
//! a lease whose kind or state code is unknown, or an identity whose state
//! is not a state, is DATA_LOSS through the public API (an unknown kind
//! used to read as an API token, an unknown state as expired). Once the
//! row is mended the same call answers again.

use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TestStack, execute_sql};
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::Code;

fn data_loss(status: tonic::Status, code: &str) {
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    assert!(status.message().contains("cannot read"), "{status:?}");
    assert!(!status.message().contains(code), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_unknown_kind_or_state_is_data_loss_not_a_default() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack
        .workload_identity("corrupt-ledger", "production")
        .await;
    let mut soar = stack.broker_caller(SOAR).await;
    let lease = soar
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: identity.id.clone(),
            scopes: vec!["ledger:read".into()],
            ttl_seconds: 0,
            task: task("INC-CORRUPT"),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    let database = &stack.configs["credential-broker"].database;
    let get = broker::GetLeaseRequest {
        lease_id: lease.lease_id.clone(),
    };
    let at = format!("WHERE lease_id = '{}'", lease.lease_id);

    execute_sql(database, &format!("UPDATE leases SET kind = 97 {at}")).await;
    data_loss(soar.get_lease(get.clone()).await.unwrap_err(), "97");
    execute_sql(
        database,
        &format!("UPDATE leases SET kind = 3, state = 98 {at}"),
    )
    .await;
    let listed = soar
        .list_leases(broker::ListLeasesRequest {
            identity_id: identity.id.clone(),
            ..Default::default()
        })
        .await;
    data_loss(listed.unwrap_err(), "98");

    execute_sql(database, &format!("UPDATE leases SET state = 1 {at}")).await;
    let mended = soar
        .get_lease(get)
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    assert_eq!(mended.kind, broker::CredentialKind::ApiToken as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_in_no_known_state_is_data_loss_not_a_default() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let identity = create(&mut client, spec("corrupt-state")).await;
    let database = &stack.configs["inventory"].database;
    let get = inventory::GetIdentityRequest {
        id: identity.id.clone(),
    };
    let at = format!("WHERE id = '{}'", identity.id);

    execute_sql(
        database,
        &format!("UPDATE identities SET state = 'exploded' {at}"),
    )
    .await;
    data_loss(
        client.get_identity(get.clone()).await.unwrap_err(),
        "exploded",
    );

    execute_sql(
        database,
        &format!("UPDATE identities SET state = 'active' {at}"),
    )
    .await;
    client.get_identity(get).await.unwrap();
}
