//! On PostgreSQL several audit replicas share one database: one holds the
//! sequencer role (an advisory lock), the others serve reads and follow the
//! log, and one of them takes over when the sequencer dies.

use std::time::{Duration, Instant};

use steward_identity::ServerAuthorizer;
use steward_integration_tests::evidence::{append_many, record};
use steward_integration_tests::{
    DATABASE_URL_ENV, RunningService, TestBackend, TestStack, build_service, spiffe_id,
};
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use tonic::Code;

async fn client(
    stack: &TestStack,
    replica: &RunningService,
    writer: bool,
) -> AuditServiceClient<tonic::transport::Channel> {
    let source = if writer {
        stack.pki.client(
            "replica-writer",
            &spiffe_id("/service/inventory").to_string(),
        )
    } else {
        stack.operator.clone()
    };
    let channel = steward_identity::connector::connect(
        source,
        &replica.address(),
        ServerAuthorizer::Exact(spiffe_id("/service/audit")),
    )
    .await
    .unwrap();
    AuditServiceClient::new(channel)
}

async fn size_seen_by(reader: &mut AuditServiceClient<tonic::transport::Channel>, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let checkpoint = reader
            .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
            .await
            .unwrap()
            .into_inner();
        if checkpoint.tree_size >= want {
            assert_eq!(checkpoint.tree_size, want);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica stuck at {} of {want}",
            checkpoint.tree_size
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_reads_and_one_takes_over_when_the_sequencer_dies() {
    if TestBackend::from_env() == TestBackend::Sqlite {
        // SQLite has one writer process by construction; CI sets the URL.
        eprintln!(
            "{DATABASE_URL_ENV} is not set: replicas need PostgreSQL; not exercised in this run"
        );
        return;
    }
    let mut stack = TestStack::audit_only().await;
    let mut replica_config = stack.configs["audit"].clone();
    replica_config.listen_addr = "127.0.0.1:0".parse().unwrap();
    let replica = RunningService::start(
        "audit",
        build_service("audit", replica_config).await.unwrap(),
    );

    // The first instance is the sequencer; the replica refuses appends.
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 6, "INC-r").await;
    let mut replica_writer = client(&stack, &replica, true).await;
    let refused = replica_writer
        .append(pb::AppendRequest {
            record: Some(record(1, "INC-r")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());

    // The replica follows: same size, same root, proofs and subscriptions.
    let mut replica_reader = client(&stack, &replica, false).await;
    size_seen_by(&mut replica_reader, 6).await;
    let primary = stack
        .audit_reader()
        .await
        .get_checkpoint(pb::GetCheckpointRequest { fresh: false })
        .await
        .unwrap()
        .into_inner();
    let mirrored = replica_reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mirrored.signed_note, primary.signed_note);
    let mut stream = replica_reader
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();

    // The sequencer dies; the replica takes the role and continues the log.
    drop(writer);
    stack.stop("audit").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let appended = loop {
        match replica_writer
            .append(pb::AppendRequest {
                record: Some(record(7, "INC-r")),
            })
            .await
        {
            Ok(reply) => break reply.into_inner(),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("the replica never took over: {status}"),
        }
    };
    assert_eq!(
        appended.index, 6,
        "indices continue where the dead sequencer stopped"
    );

    let mut seen = Vec::new();
    while seen.len() < 7 {
        let message = stream.message().await.unwrap().unwrap();
        seen.extend(message.entries.iter().map(|e| e.index));
    }
    assert_eq!(seen, (0..7).collect::<Vec<_>>());
    replica.shutdown().await;
}
