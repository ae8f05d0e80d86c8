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
    let backend = TestBackend::from_env();
    if backend == TestBackend::Sqlite {
        eprintln!(
            "{DATABASE_URL_ENV} is not set: replicas need PostgreSQL; not exercised in this run"
        );
        return;
    }
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
