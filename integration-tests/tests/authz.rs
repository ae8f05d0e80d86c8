//! The caller authorisation layer through the real gRPC API.

use steward_integration_tests::echo::start_echo;
use steward_integration_tests::{TestPki, spiffe_id};
use steward_proto::steward::common::v1::WhoAmIRequest;
use steward_proto::steward::common::v1::identity_service_client::IdentityServiceClient;
use steward_proto::steward::testing::v1::EchoRequest;
use steward_proto::steward::testing::v1::echo_service_client::EchoServiceClient;
use tonic::Code;

const ECHO: &str = "/steward.testing.v1.EchoService/Echo";

async fn echo_as(
    pki: &TestPki,
    server: &steward_integration_tests::RunningService,
    path: &str,
) -> Result<String, tonic::Status> {
    let file = path.replace('/', "_");
    let client = pki.client(&file, &spiffe_id(path).to_string());
    let channel = server.channel(&client).await;
    EchoServiceClient::new(channel)
        .echo(EchoRequest {
            message: "hi".into(),
        })
        .await
        .map(|r| r.into_inner().message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_svid_not_on_the_allowlist_gets_permission_denied_naming_the_rpc() {
    let pki = TestPki::new();
    let soar = spiffe_id("/service/soar").to_string();
    let server = start_echo(&pki, &[(ECHO, &[soar.as_str()])]).await;

    assert_eq!(echo_as(&pki, &server, "/service/soar").await.unwrap(), "hi");

    let denied = echo_as(&pki, &server, "/service/intruder")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains(ECHO), "{}", denied.message());
    assert!(
        denied
            .message()
            .contains("spiffe://steward.test/service/intruder"),
        "{}",
        denied.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_wide_rules_admit_callers_below_a_path_prefix_only() {
    let pki = TestPki::new();
    let server = start_echo(
        &pki,
        &[(
            "/steward.testing.v1.EchoService/*",
            &["spiffe://steward.test/ops/*"],
        )],
    )
    .await;
    assert!(echo_as(&pki, &server, "/ops/oncall").await.is_ok());
    assert!(echo_as(&pki, &server, "/ops/team/alice").await.is_ok());
    let sibling = echo_as(&pki, &server, "/opsx/oncall").await.unwrap_err();
    assert_eq!(sibling.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpcs_are_denied_by_default_while_whoami_stays_open_to_the_trust_domain() {
    let pki = TestPki::new();
    let server = start_echo(&pki, &[]).await;
    let denied = echo_as(&pki, &server, "/service/anyone").await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let client = pki.client("anyone", &spiffe_id("/service/anyone").to_string());
    let me = IdentityServiceClient::new(server.channel(&client).await)
        .who_am_i(WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.caller_spiffe_id, "spiffe://steward.test/service/anyone");
}
