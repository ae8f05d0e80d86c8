//! The SPIFFE Workload API of a test stack, as a workload reaches it: the
//! `spiffe` crate's transport over the broker's Unix socket, with the
//! security header, this test process attested by its own uid.

use std::time::Duration;

use steward_proto::spiffe_workload as raw;
use steward_proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use steward_proto::steward::inventory::v1 as inventory;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

use crate::TestStack;

/// `message` with the Workload API's security header.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    request
}

/// This process's uid, as the Workload API attests it.
pub fn own_uid(stack: &TestStack) -> u32 {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(stack.pki.path()).unwrap())
}

/// A registration entry making this process (by uid) `identity`.
pub fn entry_for_uid(
    stack: &TestStack,
    identity: &inventory::Identity,
) -> inventory::CreateRegistrationEntryRequest {
    inventory::CreateRegistrationEntryRequest {
        entry: Some(inventory::RegistrationEntry {
            spiffe_id: identity.spiffe_id.clone(),
            parent_id: stack
                .pki
                .spiffe_id("/service/credential-broker")
                .to_string(),
            selectors: vec![inventory::Selector {
                r#type: "unix".into(),
                value: format!("uid:{}", own_uid(stack)),
            }],
            identity_id: identity.id.clone(),
            ..Default::default()
        }),
        context: None,
    }
}

/// A Workload API client on `stack`'s socket, once the socket takes
/// connections (a restarted broker binds it again).
pub async fn workload_client(stack: &TestStack) -> SpiffeWorkloadApiClient<Channel> {
    let socket = stack.pki.path().join("workload.sock");
    let endpoint =
        spiffe::transport::Endpoint::parse(&format!("unix:{}", socket.display())).unwrap();
    for _ in 0..200 {
        if let Ok(channel) = spiffe::transport::connect(&endpoint).await {
            return SpiffeWorkloadApiClient::new(channel);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the Workload API at {} takes no connections",
        socket.display()
    );
}

/// The first message of a server stream the call opens.
pub async fn first<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
) -> T {
    call.await
        .unwrap()
        .into_inner()
        .next()
        .await
        .unwrap()
        .unwrap()
}

/// The first answer of `FetchX509SVID`.
pub async fn first_x509(api: &mut SpiffeWorkloadApiClient<Channel>) -> raw::X509svidResponse {
    first(api.fetch_x509svid(with_header(raw::X509svidRequest {}))).await
}
