//! One table of who may call what: each RPC's `Callers:` comment in the
//! protos and the allowlist its service enforces by default are the same
//! list. The comment is the contract readers see; the allowlist is what
//! the server does; this test keeps them one.
//! The form of a `Callers:` line: [`steward_integration_tests::protos`].

use std::collections::{BTreeMap, BTreeSet};

use steward_integration_tests::protos::{
    APIS, Shape, admits, callers_of, documented, instance, shapes,
};

/// `rpc → callers` a service enforces by default, as paths of its trust
/// domain.
fn enforced(spec: &steward_server::ServiceSpec) -> BTreeMap<String, BTreeSet<String>> {
    spec.default_authz
        .iter()
        .map(|(rpc, callers)| {
            let paths = callers
                .iter()
                .map(|c| {
                    c.strip_prefix("spiffe://{td}/")
                        .unwrap_or_else(|| {
                            panic!("{rpc}: {c} is not in the service's own trust domain")
                        })
                        .to_owned()
                })
                .collect();
            ((*rpc).to_owned(), paths)
        })
        .collect()
}

#[test]
fn every_rpcs_callers_comment_is_the_allowlist_its_service_enforces() {
    for spec in [
        steward_inventory::SPEC,
        steward_authority::SPEC,
        steward_credential_broker::SPEC,
        steward_audit::SPEC,
    ] {
        let mut listed = BTreeMap::new();
        for (proto, service) in APIS {
            if service == spec.name {
                let own = documented(proto);
                assert!(!own.is_empty(), "{proto}: no RPCs found");
                listed.extend(own);
            }
        }
        let enforced = enforced(&spec);
        for (rpc, callers) in &listed {
            assert_eq!(
                Some(callers),
                enforced.get(rpc),
                "{rpc}: the proto's Callers line and {}'s allowlist differ",
                spec.name
            );
        }
        for rpc in enforced.keys() {
            assert!(
                listed.contains_key(rpc),
                "{rpc} is allowlisted by {} but in none of its protos",
                spec.name
            );
        }
    }
}

/// Calls `rpc` with an empty request as `caller`; the status it ended with
/// (`None`: it answered, or a stream stayed open).
async fn call(
    stack: &steward_integration_tests::TestStack,
    service: &str,
    rpc: &str,
    shape: Shape,
    caller: &str,
) -> Option<tonic::Status> {
    let file = format!("table-{}", caller.replace('/', "-"));
    let source = stack
        .pki
        .client(&file, &format!("spiffe://steward.test/{caller}"));
    let channel = stack.service(service).channel(&source).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(rpc).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let answered = async {
        match shape {
            Shape::Unary => grpc.unary(tonic::Request::new(()), path, codec).await.err(),
            Shape::ServerStream => {
                match grpc
                    .server_streaming(tonic::Request::new(()), path, codec)
                    .await
                {
                    Err(status) => Some(status),
                    Ok(mut stream) => stream.get_mut().message().await.err(),
                }
            }
            Shape::BidiStream => {
                let requests = tokio_stream::iter(Vec::<()>::new());
                match grpc
                    .streaming(tonic::Request::new(requests), path, codec)
                    .await
                {
                    Err(status) => Some(status),
                    Ok(mut stream) => stream.get_mut().message().await.err(),
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), answered)
        .await
        .unwrap_or(None)
}

/// Whether the allowlist (not the handler) refused the call.
fn refused_by_the_allowlist(status: &Option<tonic::Status>) -> bool {
    status.as_ref().is_some_and(|s| {
        s.code() == tonic::Code::PermissionDenied && s.message().contains("is not allowed to call")
    })
}

/// What the four services hold, read back through their APIs by an
/// operator: the log's size and root, and every list an operator reads.
async fn state(stack: &steward_integration_tests::TestStack) -> Vec<String> {
    use steward_proto::steward::audit::v1 as audit;
    use steward_proto::steward::authority::v1 as authority;
    use steward_proto::steward::broker::v1 as broker;
    use steward_proto::steward::inventory::v1 as inventory;
    let source = stack
        .pki
        .client("table-reader", "spiffe://steward.test/operator/reader");
    let mut log = audit::audit_service_client::AuditServiceClient::new(
        stack.service("audit").channel(&source).await,
    );
    let mut nhis = inventory::inventory_service_client::InventoryServiceClient::new(
        stack.service("inventory").channel(&source).await,
    );
    let mut policy = authority::authority_service_client::AuthorityServiceClient::new(
        stack.service("authority").channel(&source).await,
    );
    let mut leases = broker::credential_broker_client::CredentialBrokerClient::new(
        stack.service("credential-broker").channel(&source).await,
    );
    let checkpoint = log
        .get_checkpoint(audit::GetCheckpointRequest::default())
        .await
        .unwrap()
        .into_inner();
    vec![
        format!("log {} {:?}", checkpoint.tree_size, checkpoint.root_hash),
        shown(
            nhis.list_identities(inventory::ListIdentitiesRequest {
                page_size: 1000,
                ..Default::default()
            })
            .await,
        ),
        shown(
            policy
                .list_policy_sets(authority::ListPolicySetsRequest::default())
                .await,
        ),
        shown(
            policy
                .list_response_rules(authority::ListResponseRulesRequest::default())
                .await,
        ),
        shown(
            policy
                .list_approval_requests(authority::ListApprovalRequestsRequest::default())
                .await,
        ),
        shown(
            policy
                .list_grants(authority::ListGrantsRequest::default())
                .await,
        ),
        shown(
            leases
                .list_leases(broker::ListLeasesRequest::default())
                .await,
        ),
        shown(
            leases
                .get_trust_bundle(broker::GetTrustBundleRequest::default())
                .await,
        ),
    ]
}

/// An answer as the state comparison keeps it.
fn shown<T: std::fmt::Debug>(answer: Result<tonic::Response<T>, tonic::Status>) -> String {
    format!("{:?}", answer.unwrap().into_inner())
}

/// Every RPC of the four APIs, through the real servers: a caller the
/// table leaves out is refused before any handler runs, and nothing the
/// services hold changed (read back through their APIs); a caller the
/// table names gets past the allowlist. `callers_admitted.rs` sends each
/// RPC that changes state a valid request and checks it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_callers_off_its_list_and_admits_those_on_it() {
    let stack = steward_integration_tests::TestStack::start().await;
    let candidates = [
        "workload/intruder",
        "auditor/eve",
        "automation/intruder",
        "service/intruder",
        "operator/intruder",
    ];
    let table: Vec<_> = APIS
        .iter()
        .flat_map(|(proto, service)| {
            let shapes = shapes(proto);
            documented(proto)
                .into_iter()
                .map(move |(rpc, callers)| (*service, shapes[&rpc], rpc, callers))
        })
        .collect();
    // Start-up records (the default policies, say) reach the log through
    // outboxes: wait until what the services hold stops moving.
    let mut before = state(&stack).await;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let now = state(&stack).await;
        if now == before {
            break;
        }
        before = now;
    }
    let mut refused = 0;
    for (service, shape, rpc, callers) in &table {
        // A caller of this trust domain that no pattern admits (none
        // exists for `*`).
        if let Some(outsider) = candidates
            .iter()
            .find(|c| !callers.iter().any(|p| admits(p, c)))
        {
            let status = call(&stack, service, rpc, *shape, outsider).await;
            assert!(
                refused_by_the_allowlist(&status),
                "{rpc}: {outsider} is off its list, yet got {status:?}"
            );
            refused += 1;
        }
    }
    // Anything a refused call changed would have reached the log by now.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = state(&stack).await;
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| b != a)
        .map(|(b, a)| {
            format!(
                "{}…\n  became {}…",
                &b[..b.len().min(160)],
                &a[..a.len().min(160)]
            )
        })
        .collect();
    assert!(
        changed.is_empty(),
        "refused calls changed what the services hold:\n{}",
        changed.join("\n")
    );
    for (service, shape, rpc, callers) in &table {
        let allowed = callers.iter().next().unwrap();
        let status = call(&stack, service, rpc, *shape, &instance(allowed)).await;
        assert!(
            !refused_by_the_allowlist(&status),
            "{rpc}: {allowed} is on its list, yet refused: {status:?}"
        );
    }
    assert!(table.len() >= 70, "only {} RPCs", table.len());
    assert!(refused >= 60, "only {refused} RPCs refused anyone");
}

#[test]
fn the_parser_reads_the_house_form() {
    assert_eq!(
        callers_of(" Lists things. Callers: operator/*, service/authority. More text."),
        Some(BTreeSet::from([
            "operator/*".to_owned(),
            "service/authority".to_owned()
        ]))
    );
    assert_eq!(callers_of(" no callers here"), None);
}
