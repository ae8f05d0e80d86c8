//! gRPC server reflection, as reflection-based tools (grpcurl and friends)
//! use it: list the services, then fetch the descriptor of a symbol.

use prost::Message;
use steward_integration_tests::{SERVICE_NAMES, TestStack};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn ask(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    replies
        .message()
        .await
        .unwrap()
        .unwrap()
        .message_response
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_lists_its_services_and_describes_whoami_by_reflection() {
    let stack = TestStack::start().await;
    for name in SERVICE_NAMES {
        let channel = stack.service(name).channel(&stack.operator).await;
        let mut client = ServerReflectionClient::new(channel);

        let MessageResponse::ListServicesResponse(list) =
            ask(&mut client, MessageRequest::ListServices(String::new())).await
        else {
            panic!("{name}: expected a service list");
        };
        let services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for expected in ["grpc.health.v1.Health", "steward.common.v1.IdentityService"] {
            assert!(
                services.iter().any(|s| s == expected),
                "{name}: {services:?}"
            );
        }

        let symbol = "steward.common.v1.IdentityService".to_owned();
        let MessageResponse::FileDescriptorResponse(files) =
            ask(&mut client, MessageRequest::FileContainingSymbol(symbol)).await
        else {
            panic!("{name}: expected a file descriptor");
        };
        let file =
            prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
                .unwrap();
        assert_eq!(file.package(), "steward.common.v1");
        let service = file
            .service
            .iter()
            .find(|s| s.name() == "IdentityService")
            .unwrap();
        assert!(service.method.iter().any(|m| m.name() == "WhoAmI"));
    }
}
