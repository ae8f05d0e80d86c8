//! A stored value this version cannot read is an error, never a default:
//! a lease whose kind or state code is unknown, an identity whose state
//! is not a state, an open signal of no known kind, or a policy set whose
//! version is negative is DATA_LOSS through the public API (an unknown
//! kind used to read as an API token, an unknown state as expired, an
//! unknown signal was skipped from the risk score, a negative version read
//! as 0). Once the row is mended the same call answers again.

use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_integration_tests::inventory::{create, spec};
use steward_integration_tests::{TestStack, execute_sql};
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_signal_of_no_known_kind_is_data_loss_not_skipped_from_the_score() {
    let stack = TestStack::start().await;
    let mut client = stack.inventory().await;
    let identity = create(&mut client, spec("corrupt-signal")).await;
    let signal = |summary: &str| inventory::AddSignalRequest {
        identity_id: identity.id.clone(),
        kind: inventory::SignalKind::Dormant as i32,
        severity: inventory::Severity::High as i32,
        source: "scanner".into(),
        summary: summary.into(),
        ..Default::default()
    };
    let first = client
        .add_signal(signal("unused for 90 days"))
        .await
        .unwrap()
        .into_inner()
        .signal
        .unwrap();
    let database = &stack.configs["inventory"].database;
    let at = format!("WHERE id = '{}'", first.id);
    execute_sql(
        database,
        &format!("UPDATE signals SET kind = 'haunted' {at}"),
    )
    .await;

    // Scoring reads every open signal: the unreadable one fails the call,
    // and the second signal is not stored.
    data_loss(
        client.add_signal(signal("still unused")).await.unwrap_err(),
        "haunted",
    );
    let listed = |client: &mut steward_integration_tests::inventory::Client| {
        let request = inventory::ListSignalsRequest {
            identity_id: identity.id.clone(),
            ..Default::default()
        };
        let mut client = client.clone();
        async move { client.list_signals(request).await }
    };
    data_loss(listed(&mut client).await.unwrap_err(), "haunted");

    execute_sql(
        database,
        &format!("UPDATE signals SET kind = 'dormant' {at}"),
    )
    .await;
    let signals = listed(&mut client).await.unwrap().into_inner().signals;
    assert_eq!(
        signals.len(),
        1,
        "the refused signal was stored: {signals:?}"
    );
    client.add_signal(signal("still unused")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_with_a_negative_version_is_data_loss_not_version_zero() {
    let stack = TestStack::start().await;
    let version = stack.activate_policies("", true).await;
    let mut client =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let database = &stack.configs["authority"].database;
    execute_sql(
        database,
        &format!("UPDATE policy_sets SET version = -7 WHERE version = {version}"),
    )
    .await;
    let listed = client
        .list_policy_sets(authority::ListPolicySetsRequest::default())
        .await;
    data_loss(listed.unwrap_err(), "-7");

    execute_sql(
        database,
        &format!("UPDATE policy_sets SET version = {version} WHERE version = -7"),
    )
    .await;
    let sets = client
        .list_policy_sets(authority::ListPolicySetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policy_sets;
    assert!(sets.iter().any(|s| s.version == version), "{sets:?}");
}
