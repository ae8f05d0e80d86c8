//! A refused field is named twice, the same way in every service: first in
//! the message (`field: reason`, for clients that read only text), then
//! as a `google.rpc.BadRequest` field violation in the status details, so
//! a client can point at the field without parsing the message. Each
//! refusal changes nothing.

use steward_errors::bad_field;
use steward_integration_tests::TestStack;
use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
use steward_proto::steward::audit::v1 as audit;
use steward_proto::steward::authority::v1 as authority;
use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
use steward_proto::steward::broker::v1 as broker;
use steward_proto::steward::inventory::v1 as inventory;
use tonic::Code;
use tonic_types::StatusExt as _;

/// `status` refuses `field` in both places, with the same reason.
fn names(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{status:?}"
    );
    assert_eq!(bad_field(status).as_deref(), Some(field), "{status:?}");
    let details = status.get_error_details();
    let violation = &details
        .bad_request()
        .expect("a BadRequest")
        .field_violations[0];
    assert_eq!(
        format!("{}: {}", violation.field, violation.description),
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_names_a_refused_field_in_a_bad_request() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;

    // Audit: a consistency proof from size 0.
    let mut reader = stack.audit_reader().await;
    let refused = reader
        .get_consistency_proof(audit::GetConsistencyProofRequest {
            first_size: 0,
            second_size: 0,
        })
        .await
        .unwrap_err();
    names(&refused, "first_size");

    // Authority: a policy set with no policies.
    let mut operator =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let mut lister = operator.clone();
    let mut versions = async move || {
        lister
            .list_policy_sets(authority::ListPolicySetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .policy_sets
            .len()
    };
    let before = versions().await;
    let refused = operator
        .upload_policy_set(authority::UploadPolicySetRequest {
            policies: String::new(),
            description: "empty".into(),
        })
        .await
        .unwrap_err();
    names(&refused, "policies");
    let after = versions().await;
    assert_eq!(before, after, "a refused upload stored a version");

    // Inventory: a registration entry update that names no field.
    let mut inventory = stack.inventory().await;
    let refused = inventory
        .update_registration_entry(inventory::UpdateRegistrationEntryRequest {
            entry: None,
            update_mask: None,
            context: None,
        })
        .await
        .unwrap_err();
    names(&refused, "entry");

    // The broker: a lifetime above its maximum, from a caller allowed to ask.
    let identity = stack.workload_identity("field-check", "production").await;
    let mut soar = stack.broker_caller(SOAR).await;
    let refused = soar
        .issue_api_token(broker::IssueApiTokenRequest {
            identity_id: identity.id.clone(),
            scopes: vec!["ledger:read".into()],
            ttl_seconds: u32::MAX,
            task: task("INC-FIELD"),
        })
        .await
        .unwrap_err();
    names(&refused, "ttl_seconds");
    let leases = soar
        .list_leases(broker::ListLeasesRequest {
            identity_id: identity.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(
        leases.is_empty(),
        "a refused issuance left a lease: {leases:?}"
    );
}

/// Every list RPC pages by one rule (`steward_errors::wire::page_size`):
/// 0 is 100 rows, 1,000 is the most, and more is refused by name, never
/// silently cut, in every service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_refuses_a_page_beyond_one_thousand_by_name() {
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let mut reader = stack.audit_reader().await;
    let mut authority =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let mut inventory = stack.inventory().await;
    let mut soar = stack.broker_caller(SOAR).await;
    for page_size in [0, 1000, 1001] {
        let answers: Vec<(&str, Result<(), tonic::Status>)> = vec![
            (
                "audit GetEntries",
                reader
                    .get_entries(audit::GetEntriesRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "audit Query",
                reader
                    .query(audit::QueryRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "authority ListPolicySets",
                authority
                    .list_policy_sets(authority::ListPolicySetsRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "authority ListGrants",
                authority
                    .list_grants(authority::ListGrantsRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "inventory ListIdentities",
                inventory
                    .list_identities(inventory::ListIdentitiesRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "inventory ListSignalFeed",
                inventory
                    .list_signal_feed(inventory::ListSignalFeedRequest {
                        page_size,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            ),
            (
                "broker ListLeases",
                soar.list_leases(broker::ListLeasesRequest {
                    page_size,
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ];
        for (rpc, answer) in answers {
            match (page_size, answer) {
                (1001, Err(status)) => names(&status, "page_size"),
                (1001, Ok(())) => panic!("{rpc} served a page of 1001"),
                (_, Err(status)) => panic!("{rpc} refused page_size {page_size}: {status:?}"),
                (_, Ok(())) => {}
            }
        }
    }
}

/// A list's state filter is a wire enum: a number the enum lacks is
/// refused by name (`state`), each known state filters, and UNSPECIFIED
/// is every state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_grant_and_review_lists_refuse_an_unknown_state_by_name() {
    let stack = TestStack::start().await;
    let mut authority =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    for state in [
        authority::ApprovalState::Unspecified,
        authority::ApprovalState::Pending,
    ] {
        let listed = authority
            .list_approval_requests(authority::ListApprovalRequestsRequest {
                state: state as i32,
                ..Default::default()
            })
            .await;
        assert!(listed.is_ok(), "{state:?}: {listed:?}");
    }
    let refused = [
        authority
            .list_approval_requests(authority::ListApprovalRequestsRequest {
                state: 99,
                ..Default::default()
            })
            .await
            .map(drop),
        authority
            .list_grants(authority::ListGrantsRequest {
                state: 99,
                ..Default::default()
            })
            .await
            .map(drop),
        authority
            .list_post_action_reviews(authority::ListPostActionReviewsRequest {
                state: 99,
                ..Default::default()
            })
            .await
            .map(drop),
    ];
    for (answer, what) in refused
        .into_iter()
        .zip(["an approval", "a grant", "a review"])
    {
        let status = answer.unwrap_err();
        names(&status, "state");
        assert_eq!(status.message(), format!("state: 99 is not {what} state"));
    }
    let grants = authority
        .list_grants(authority::ListGrantsRequest {
            state: authority::GrantState::IncidentClosed as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(grants.grants.is_empty());
}
