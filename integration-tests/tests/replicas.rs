//! Several replicas of every service on one PostgreSQL database each.
//! Replicas that start at once on an empty database take turns (the start
//! lock): every one starts, and the broker ends with one CA and one JWT
//! key, not one per replica.

use std::collections::BTreeMap;

use steward_integration_tests::{
    DATABASE_URL_ENV, TestBackend, TestPki, TestStack, build_service, test_broker_config,
};
use steward_server::{Application, Peers, ServiceConfig};

const SERVICES: [&str; 4] = ["audit", "inventory", "authority", "credential-broker"];
const REPLICAS: usize = 3;

/// SQLite has one process by construction: these tests need PostgreSQL,
/// which CI's second pass sets.
fn on_sqlite() -> bool {
    let sqlite = TestBackend::from_env() == TestBackend::Sqlite;
    if sqlite {
        eprintln!(
            "{DATABASE_URL_ENV} is not set: replicas need PostgreSQL; not exercised in this run"
        );
    }
    sqlite
}

/// Replica `n` of `name`: its own ports (and Workload API socket), the
/// service's one database.
async fn replica(name: &'static str, config: &ServiceConfig, n: usize) -> Application {
    let mut config = config.clone();
    config.listen_addr = "127.0.0.1:0".parse().unwrap();
    config.ops_addr = Some("127.0.0.1:0".parse().unwrap());
    let built = if name == "credential-broker" {
        let mut broker = test_broker_config(config);
        let dir = broker.service.tls.svid.cert.parent().unwrap().to_owned();
        broker.workload_api_socket = Some(dir.join(format!("workload-{n}.sock")));
        steward_credential_broker::build_with(broker).await
    } else {
        build_service(name, config).await
    };
    built.unwrap_or_else(|e| panic!("{name} replica {n} did not start: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_an_empty_database_take_turns() {
    if on_sqlite() {
        return;
    }
    let backend = TestBackend::from_env();
    let pki = TestPki::new();
    // Peers nobody answers at: starting needs none of them.
    let nowhere = "127.0.0.1:9".to_owned();
    let peers = Peers {
        audit: nowhere.clone(),
        inventory: nowhere.clone(),
        authority: nowhere.clone(),
        credential_broker: nowhere,
    };
    let mut configs = BTreeMap::new();
    for name in SERVICES {
        let mut config = TestStack::config_for(&pki, &backend, name).await;
        config.peers = peers.clone();
        configs.insert(name, config);
    }
    // The broker's key-encryption key is made once, before the race.
    drop(test_broker_config(configs["credential-broker"].clone()));

    let mut starts = tokio::task::JoinSet::new();
    for name in SERVICES {
        for n in 0..REPLICAS {
            let config = configs[name].clone();
            starts.spawn(async move { replica(name, &config, n).await });
        }
    }
    let apps = starts.join_all().await;
    assert_eq!(apps.len(), SERVICES.len() * REPLICAS);

    let broker = steward_db::Database::connect(&configs["credential-broker"].database)
        .await
        .unwrap();
    let steward_db::Database::Postgres(pool) = &broker else {
        unreachable!("the backend is PostgreSQL");
    };
    let keys: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, COUNT(*) FROM authority_keys WHERE retired_at_ns = 0 \
         GROUP BY kind ORDER BY kind",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!keys.is_empty(), "the broker made no keys");
    for (kind, count) in &keys {
        assert_eq!(
            *count, 1,
            "{count} live {kind} keys: each replica made its own"
        );
    }
    broker.close().await;
    drop(apps);
}

/// Permits the broker to issue for production identities only, so that
/// flipping an identity's environment flips the decision.
const BROKER_ISSUES: &str = r#"
@id("broker-issues")
permit (principal == Steward::Workload::"spiffe://steward.test/service/credential-broker", action == Steward::Action::"issue", resource)
when { resource.environment == "production" };
"#;

/// ADR 0008's promise across replicas: authority's facts cache follows one
/// inventory replica, and a write that returned from the *other* replica
/// is never hidden from its next decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_inventory_replica_is_never_hidden_from_a_cache_that_follows_another() {
    use prost_types::FieldMask;
    use steward_integration_tests::RunningService;
    use steward_integration_tests::inventory::{create, spec};
    use steward_proto::steward::authority::v1 as authz;
    use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
    use steward_proto::steward::inventory::v1 as inv;
    use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;

    if on_sqlite() {
        return;
    }
    // Authority follows replica A (the stack's inventory); B is a second
    // replica on the same database that authority knows nothing of.
    let stack = TestStack::start().await;
    let mut b_config = stack.configs["inventory"].clone();
    b_config.listen_addr = "127.0.0.1:0".parse().unwrap();
    b_config.ops_addr = Some("127.0.0.1:0".parse().unwrap());
    let b = RunningService::start(
        "inventory",
        build_service("inventory", b_config).await.unwrap(),
    );
    let mut through_a = stack.inventory().await;
    let mut through_b = InventoryServiceClient::new(b.channel(&stack.operator).await);

    let mut admin =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let text = format!(
        "{}\n{BROKER_ISSUES}",
        steward_authority::engine::DEFAULT_POLICIES
    );
    let uploaded = admin
        .upload_policy_set(authz::UploadPolicySetRequest {
            policies: text,
            description: "broker issues for production".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policy_set
        .unwrap();
    admin
        .activate_policy_set(authz::ActivatePolicySetRequest {
            version: uploaded.version,
            reason: "go live".into(),
        })
        .await
        .unwrap();

    let nhi = create(&mut through_a, spec("across-replicas")).await.id;
    let mut broker = stack.authority_caller("/service/credential-broker").await;
    let issue = authz::AuthorizeRequest {
        principal: Some(authz::Principal {
            kind: Some(authz::principal::Kind::Workload(
                "spiffe://steward.test/service/credential-broker".into(),
            )),
        }),
        action: "issue".into(),
        resource_id: nhi.clone(),
        context: Some(authz::RequestContext::default()),
        ..Default::default()
    };
    let mut effect = async || {
        broker
            .authorize(issue.clone())
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .effect
    };
    // Warm: the cache takes its lease from A and keeps the facts.
    for _ in 0..10 {
        assert_eq!(effect().await, authz::Effect::Allow as i32);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    const ROUNDS: usize = 100;
    let mut identity = spec("across-replicas");
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        let production = round % 2 == 1;
        identity.environment = if production { "production" } else { "staging" }.into();
        // Mostly through B, the replica the cache does not follow.
        let writer = if round % 4 == 3 {
            &mut through_a
        } else {
            &mut through_b
        };
        writer
            .update_identity(inv::UpdateIdentityRequest {
                id: nhi.clone(),
                identity: Some(identity.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["environment".into()],
                }),
                expected_version: 0,
                context: None,
            })
            .await
            .unwrap();
        let want = if production {
            authz::Effect::Allow
        } else {
            authz::Effect::Deny
        } as i32;
        if effect().await != want {
            stale.push(round);
        }
    }
    eprintln!(
        "stale decisions across replicas: {} of {ROUNDS}",
        stale.len()
    );
    assert!(stale.is_empty(), "stale decisions in rounds {stale:?}");

    // The relays lose their connections (notifications in between are
    // lost): no lease is granted until each listens again and has told its
    // watchers to start empty, so nothing stale is served meanwhile.
    let database = steward_db::Database::connect(&stack.configs["inventory"].database)
        .await
        .unwrap();
    let steward_db::Database::Postgres(pool) = &database else {
        unreachable!("the backend is PostgreSQL");
    };
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!ended.is_empty(), "no relay was listening");
    let started = std::time::Instant::now();
    for round in 0..20 {
        let production = round % 2 == 1;
        identity.environment = if production { "production" } else { "staging" }.into();
        through_b
            .update_identity(inv::UpdateIdentityRequest {
                id: nhi.clone(),
                identity: Some(identity.clone()),
                update_mask: Some(FieldMask {
                    paths: vec!["environment".into()],
                }),
                expected_version: 0,
                context: None,
            })
            .await
            .unwrap();
        let want = if production {
            authz::Effect::Allow
        } else {
            authz::Effect::Deny
        } as i32;
        assert_eq!(
            effect().await,
            want,
            "round {round} after the relays' connections ended"
        );
    }
    eprintln!(
        "20 rounds while the relays reconnected: {:?}",
        started.elapsed()
    );
    database.close().await;

    // Suspension through B, then at once: DENY.
    through_b
        .transition_state(inv::TransitionStateRequest {
            id: nhi.clone(),
            target_state: inv::LifecycleState::Suspended as i32,
            reason: "leaked".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(effect().await, authz::Effect::Deny as i32);
    b.shutdown().await;
}

/// Two brokers on one database append to one revocation log: revocations
/// through both at once never clash on a number, and a watcher of one
/// sees the other's, each once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_replicas_number_one_revocation_log_and_watchers_see_each_others() {
    use steward_integration_tests::RunningService;
    use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
    use steward_proto::steward::broker::v1 as pb;
    use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;
    use tokio_stream::StreamExt as _;

    if on_sqlite() {
        return;
    }
    const LEASES: usize = 30;
    let stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let second = RunningService::start(
        "credential-broker",
        replica("credential-broker", &stack.configs["credential-broker"], 1).await,
    );
    let soar = stack.pki.client(
        "soar-replicas",
        &steward_integration_tests::spiffe_id(SOAR).to_string(),
    );
    let mut through_a = stack.broker_as(&soar).await;
    let mut through_b = CredentialBrokerClient::new(second.channel(&soar).await);

    let mut watcher = stack.broker_caller("/workload/ledger").await;
    let mut live = watcher
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();

    let mut lease_ids = Vec::new();
    for n in 0..LEASES {
        let client = if n % 2 == 0 {
            &mut through_a
        } else {
            &mut through_b
        };
        let issued = client
            .issue_api_token(pb::IssueApiTokenRequest {
                identity_id: identity.id.clone(),
                scopes: vec!["ledger:read".into()],
                ttl_seconds: 600,
                task: task("INC-replicas"),
            })
            .await
            .unwrap()
            .into_inner();
        lease_ids.push(issued.lease.unwrap().lease_id);
    }
    // Both replicas revoke at the same time.
    let revoke_all = async |client: &mut CredentialBrokerClient<tonic::transport::Channel>,
                            ids: Vec<String>| {
        let mut failed = 0;
        for lease_id in ids {
            let revoked = client
                .revoke_lease(pb::RevokeLeaseRequest {
                    lease_id,
                    reason: "rotating everything".into(),
                })
                .await;
            if let Err(status) = revoked {
                eprintln!("revocation failed: {status:?}");
                failed += 1;
            }
        }
        failed
    };
    let (evens, odds): (Vec<_>, Vec<_>) = lease_ids
        .iter()
        .cloned()
        .enumerate()
        .partition(|(n, _)| n % 2 == 0);
    let (failed_a, failed_b) = tokio::join!(
        revoke_all(
            &mut through_a,
            evens.into_iter().map(|(_, id)| id).collect()
        ),
        revoke_all(&mut through_b, odds.into_iter().map(|(_, id)| id).collect()),
    );
    assert_eq!(failed_a + failed_b, 0, "revocations failed");

    let mut seen = Vec::new();
    while seen.len() < LEASES {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), live.next())
            .await
            .expect("the watcher missed revocations made through the other replica")
            .unwrap()
            .unwrap();
        seen.push(event);
    }
    let sequences: Vec<u64> = seen.iter().map(|r| r.sequence).collect();
    let first = sequences[0];
    assert_eq!(
        sequences,
        (first..first + LEASES as u64).collect::<Vec<_>>(),
        "one log, numbered without gaps, seen in order"
    );
    let mut revoked: Vec<String> = seen.into_iter().map(|r| r.lease_id).collect();
    revoked.sort();
    lease_ids.sort();
    assert_eq!(revoked, lease_ids);
    second.shutdown().await;
}

/// Which sessions hold role `name`'s advisory lock in `database`.
async fn role_holders(pool: &sqlx::PgPool, name: &str) -> Vec<i32> {
    let key = steward_db::role::role_key(name);
    let (high, low) = ((key >> 32) & 0xffff_ffff, key & 0xffff_ffff);
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(high)
    .bind(low)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The broker's reaper is one replica's work at a time; when that replica
/// stops, another takes the role within seconds and reaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_role_is_held_once_and_taken_over_when_its_holder_stops() {
    use steward_integration_tests::RunningService;
    use steward_integration_tests::broker::{BROKER_POLICIES, SOAR, task};
    use steward_proto::steward::broker::v1 as pb;
    use steward_proto::steward::broker::v1::credential_broker_client::CredentialBrokerClient;

    if on_sqlite() {
        return;
    }
    let mut stack = TestStack::start().await;
    stack.activate_policies(BROKER_POLICIES, true).await;
    let identity = stack.workload_identity("billing-sync", "production").await;
    let database = steward_db::Database::connect(&stack.configs["credential-broker"].database)
        .await
        .unwrap();
    let steward_db::Database::Postgres(pool) = &database else {
        unreachable!("the backend is PostgreSQL");
    };
    // The stack's broker started alone and holds every role.
    for role in ["broker.reaper", "broker.rotation", "outbox"] {
        assert_eq!(role_holders(pool, role).await.len(), 1, "{role}");
    }
    let second = RunningService::start(
        "credential-broker",
        replica("credential-broker", &stack.configs["credential-broker"], 1).await,
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let before = role_holders(pool, "broker.reaper").await;
    assert_eq!(before.len(), 1, "two replicas hold the reaper's role");

    stack.stop("credential-broker").await;
    let stopped = std::time::Instant::now();
    let after = loop {
        let holders = role_holders(pool, "broker.reaper").await;
        if holders.len() == 1 && holders != before {
            break holders;
        }
        assert!(
            stopped.elapsed() < std::time::Duration::from_secs(10),
            "no replica took the reaper's role over"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    eprintln!("reaper role taken over in {:?}", stopped.elapsed());
    assert_ne!(after, before);

    // The new holder reaps.
    let soar = stack.pki.client(
        "soar-roles",
        &steward_integration_tests::spiffe_id(SOAR).to_string(),
    );
    let mut broker = CredentialBrokerClient::new(second.channel(&soar).await);
    let lease = broker
        .issue_api_token(pb::IssueApiTokenRequest {
            identity_id: identity.id.clone(),
            scopes: vec![],
            ttl_seconds: 1,
            task: task("INC-roles"),
        })
        .await
        .unwrap()
        .into_inner()
        .lease
        .unwrap();
    // Stored as expired (state 3) with its revocation row: the reaper's
    // work, not the clock's reading.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let reaped: Option<(i64, i64)> = sqlx::query_as(
            "SELECT l.state, r.state FROM leases l JOIN revocations r ON r.lease_id = l.lease_id \
             WHERE l.lease_id = $1",
        )
        .bind(&lease.lease_id)
        .fetch_optional(pool)
        .await
        .unwrap();
        if reaped == Some((3, 3)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new holder did not reap: {reaped:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    database.close().await;
    second.shutdown().await;
}

/// A forwarder given every audit replica's address reaches whichever is
/// the sequencer: after the one it wrote to dies, its evidence goes to the
/// replica that took the role over, and none is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_reaches_the_new_sequencer_through_the_list_of_audit_replicas() {
    use steward_integration_tests::RunningService;
    use steward_integration_tests::inventory::{create, spec};
    use steward_proto::steward::audit::v1 as audit;
    use steward_proto::steward::inventory::v1::inventory_service_client::InventoryServiceClient;

    if on_sqlite() {
        return;
    }
    let mut stack = TestStack::audit_only().await;
    let sibling =
        RunningService::start("audit", replica("audit", &stack.configs["audit"], 1).await);
    let mut config = TestStack::config_for(&stack.pki, &stack.backend, "inventory").await;
    // The sequencer first, so the first connections are likely to work.
    config.peers.audit = format!("{},{}", stack.service("audit").address(), sibling.address());
    config.peers.authority = String::new();
    let outbox = steward_db::Database::connect(&config.database)
        .await
        .unwrap();
    let steward_db::Database::Postgres(outbox) = &outbox else {
        unreachable!("the backend is PostgreSQL");
    };
    let inventory = RunningService::start(
        "inventory",
        build_service("inventory", config).await.unwrap(),
    );
    let mut client = InventoryServiceClient::new(inventory.channel(&stack.operator).await);
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create(&mut client, spec(&format!("before-{n}"))).await.id);
    }
    stack.stop("audit").await;
    for n in 0..5 {
        created.push(create(&mut client, spec(&format!("after-{n}"))).await.id);
    }

    // Every record is delivered (a delivered record leaves the outbox)...
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM evidence_outbox")
            .fetch_one(outbox)
            .await
            .unwrap();
        if pending == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} records still pending: the forwarder did not find the new sequencer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // ...to the one log the surviving replica now writes, once each.
    let entries = steward_integration_tests::evidence::whole_log(
        &mut audit::audit_service_client::AuditServiceClient::new(
            sibling.channel(&stack.operator).await,
        ),
    )
    .await;
    let size = entries.len() as u64;
    let indices: Vec<u64> = entries.iter().map(|e| e.index).collect();
    assert_eq!(indices, (0..size).collect::<Vec<_>>());
    let mut record_ids: Vec<&str> = entries
        .iter()
        .map(|e| e.record.as_ref().unwrap().record_id.as_str())
        .collect();
    record_ids.sort_unstable();
    record_ids.dedup();
    assert_eq!(record_ids.len() as u64, size, "a record was appended twice");
    for id in &created {
        let creations = entries
            .iter()
            .filter_map(|e| e.record.as_ref())
            .filter(|r| {
                r.action == "identity.create" && r.target.as_ref().is_some_and(|t| &t.nhi_id == id)
            })
            .count();
        assert_eq!(creations, 1, "identity {id}");
    }
    inventory.shutdown().await;
    sibling.shutdown().await;
}

/// Two authority replicas, one responder: every critical signal gets its
/// containment and one approval request for revocation, never two (10 of
/// 30 signals opened two when each replica ran its own responder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authority_replicas_answer_each_signal_once() {
    use steward_integration_tests::RunningService;
    use steward_integration_tests::inventory::{create, spec};
    use steward_proto::steward::authority::v1 as authz;
    use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;
    use steward_proto::steward::inventory::v1 as inv;

    const SIGNALS: usize = 30;
    if on_sqlite() {
        return;
    }
    let stack = TestStack::start().await;
    let second = RunningService::start(
        "authority",
        replica("authority", &stack.configs["authority"], 1).await,
    );
    let mut ops =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    ops.upload_response_rules(authz::UploadResponseRulesRequest {
        document: r#"{"rules": [
          {"id": "contain", "signal_kind": "secret_exposed", "min_severity": "high",
           "actions": ["watchlist", "restrict", "open_ticket"], "reason": "contained at once"},
          {"id": "revoke", "signal_kind": "secret_exposed", "min_severity": "critical",
           "actions": ["revoke"], "approver": "technical_owner"}
        ]}"#
        .into(),
        description: "leaks".into(),
    })
    .await
    .unwrap();
    ops.activate_response_rules(authz::ActivateResponseRulesRequest {
        version: 1,
        reason: "go live".into(),
    })
    .await
    .unwrap();
    let mut inventory = stack.inventory().await;
    let scanner = stack.inventory_caller("/automation/secret-scanner").await;
    let mut identities = Vec::new();
    for n in 0..SIGNALS {
        identities.push(create(&mut inventory, spec(&format!("leaky-{n}"))).await.id);
    }
    // The signals arrive at once, as a scanner's sweep sends them: both
    // replicas' passes would find them all.
    let sent = identities.iter().enumerate().map(|(n, nhi)| {
        let mut scanner = scanner.clone();
        let nhi = nhi.clone();
        async move {
            let signal = scanner
                .add_signal(inv::AddSignalRequest {
                    identity_id: nhi.clone(),
                    kind: inv::SignalKind::SecretExposed as i32,
                    severity: inv::Severity::Critical as i32,
                    source: "secret-scanner".into(),
                    summary: format!("leak {n}"),
                    evidence_ref: "https://scanner.example.test/findings/1".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .signal
                .unwrap()
                .id;
            (nhi, signal)
        }
    });
    let sent: Vec<_> = sent.map(tokio::spawn).collect();
    let mut signals = Vec::new();
    for handle in sent {
        signals.push(handle.await.unwrap());
    }

    let mut through_second = AuthorityServiceClient::new(second.channel(&stack.operator).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (nhi, signal) in &signals {
        let actions = loop {
            let actions = through_second
                .list_response_actions(authz::ListResponseActionsRequest {
                    signal_id: signal.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .actions;
            if actions.len() >= 4 || std::time::Instant::now() > deadline {
                break actions;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(actions.len(), 4, "signal {signal}: {actions:?}");
        let requests = ops
            .list_approval_requests(authz::ListApprovalRequestsRequest {
                resource_id: nhi.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .approval_requests;
        assert_eq!(requests.len(), 1, "identity {nhi}: {requests:?}");
    }
    // Nothing more arrives later either.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let all = ops
        .list_approval_requests(authz::ListApprovalRequestsRequest {
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .approval_requests;
    assert_eq!(all.len(), SIGNALS);
    second.shutdown().await;
}

/// A policy set activated through one authority replica is the one every
/// replica decides with once the activation returns (ADR 0026): 20
/// activations alternating between a set that permits issuance and one
/// that does not, each followed at once by a decision on the other
/// replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_through_one_authority_replica_is_in_force_on_every_other_when_it_returns() {
    use steward_integration_tests::RunningService;
    use steward_integration_tests::inventory::{create, spec};
    use steward_proto::steward::authority::v1 as authz;
    use steward_proto::steward::authority::v1::authority_service_client::AuthorityServiceClient;

    if on_sqlite() {
        return;
    }
    let stack = TestStack::start().await;
    let second = RunningService::start(
        "authority",
        replica("authority", &stack.configs["authority"], 1).await,
    );
    let mut admin =
        AuthorityServiceClient::new(stack.service("authority").channel(&stack.operator).await);
    let mut upload = async |policies: String| {
        admin
            .upload_policy_set(authz::UploadPolicySetRequest {
                policies,
                description: "replica test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .policy_set
            .unwrap()
            .version
    };
    let defaults = steward_authority::engine::DEFAULT_POLICIES;
    let permits = upload(format!("{defaults}\n{BROKER_ISSUES}")).await;
    let forbids = upload(defaults.to_owned()).await;
    let nhi = create(&mut stack.inventory().await, spec("policy-replicas"))
        .await
        .id;
    let broker = stack.pki.client(
        "replica-broker",
        "spiffe://steward.test/service/credential-broker",
    );
    let mut on_second = AuthorityServiceClient::new(second.channel(&broker).await);
    let issue = authz::AuthorizeRequest {
        principal: Some(authz::Principal {
            kind: Some(authz::principal::Kind::Workload(
                "spiffe://steward.test/service/credential-broker".into(),
            )),
        }),
        action: "issue".into(),
        resource_id: nhi,
        context: Some(authz::RequestContext::default()),
        ..Default::default()
    };
    let mut stale = 0;
    for round in 0..20 {
        let (version, allowed) = if round % 2 == 0 {
            (permits, true)
        } else {
            (forbids, false)
        };
        admin
            .activate_policy_set(authz::ActivatePolicySetRequest {
                version,
                reason: format!("round {round}"),
            })
            .await
            .unwrap();
        let decision = on_second
            .authorize(issue.clone())
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap();
        let effect_allows = decision.effect == authz::Effect::Allow as i32;
        if effect_allows != allowed {
            stale += 1;
        }
        assert_eq!(decision.policy_set_version, version, "round {round}");
    }
    assert_eq!(stale, 0, "decisions made with a replaced policy set");
    second.shutdown().await;
}
