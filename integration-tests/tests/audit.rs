//! The evidence log through the public gRPC API, checked with independent
//! signed-note and Merkle-proof verifiers.

use steward_evidence::{EvidenceRecord, leaf_hash};
use steward_integration_tests::TestStack;
use steward_integration_tests::evidence::{append_many, record};
use steward_proto::steward::audit::v1 as pb;
use tonic::Code;

/// The canonical leaf of a logged entry, recomputed from the API's fields as
/// an independent verifier would (docs/evidence-encoding.md).
fn recomputed_leaf(entry: &pb::LogEntry) -> Vec<u8> {
    let record = entry.record.clone().unwrap();
    let domain = steward_audit::server::record_from_proto(record).unwrap();
    domain.canonical_leaf(&entry.appended_by)
}

async fn all_entries(
    client: &mut pb::audit_service_client::AuditServiceClient<tonic::transport::Channel>,
    end: u64,
) -> Vec<pb::LogEntry> {
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_entries(pb::GetEntriesRequest {
                start_index: 0,
                end_index: end,
                page_size: 7,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_idempotent_by_record_id_and_conflicts_are_refused() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    let first = record(1, "INC-1");
    let a = writer
        .append(pb::AppendRequest {
            record: Some(first.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    let b = writer
        .append(pb::AppendRequest {
            record: Some(first.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.index, a.duplicate), (0, false));
    assert_eq!((b.index, b.duplicate, b.leaf_hash), (0, true, a.leaf_hash));

    let mut changed = first.clone();
    changed.action = "identity.revoke".into();
    let conflict = writer
        .append(pb::AppendRequest {
            record: Some(changed),
        })
        .await
        .unwrap_err();
    assert_eq!(
        conflict.code(),
        Code::AlreadyExists,
        "{}",
        conflict.message()
    );

    let second = writer
        .append(pb::AppendRequest {
            record: Some(record(2, "INC-1")),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.index, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_service_identities_may_append() {
    let stack = TestStack::audit_only().await;
    let mut operator = stack.audit_reader().await;
    let denied = operator
        .append(pb::AppendRequest {
            record: Some(record(1, "INC-1")),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut stranger = stack.audit_as_service("soar").await;
    let denied = stranger
        .append(pb::AppendRequest {
            record: Some(record(1, "INC-1")),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Writers cannot read the evidence back.
    let mut writer = stack.audit_as_service("authority").await;
    let denied = writer
        .get_entries(pb::GetEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_status_and_writes_nothing() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("credential-broker").await;
    let mut reader = stack.audit_reader().await;
    append_many(&mut writer, 3, "INC-7").await;

    let cases: Vec<(pb::EvidenceRecord, &str)> = vec![
        (
            {
                let mut r = record(9, "INC-7");
                r.record_id = uuid::Uuid::new_v4().to_string();
                r
            },
            "record.record_id",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.record_id = "nope".into();
                r
            },
            "record.record_id",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.time = None;
                r
            },
            "record.time",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.decision.as_mut().unwrap().effect = 42;
                r
            },
            "record.decision.effect",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.outcome = None;
                r
            },
            "record.outcome.status",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.actor = None;
                r
            },
            "record.actor.workload_spiffe_id",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.action = "DROP TABLE".into();
                r
            },
            "record.action",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.attributes.insert("big".into(), "x".repeat(2000));
                r
            },
            "record.attributes",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                for i in 0..40 {
                    r.attributes.insert(format!("k{i}"), "v".into());
                }
                r
            },
            "record.attributes",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.trace = Some(pb::Trace {
                    trace_id: "0".repeat(32),
                    span_id: "00f067aa0ba902b7".into(),
                });
                r
            },
            "record.trace.trace_id",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.trace = Some(pb::Trace {
                    trace_id: "4BF92F3577B34DA6A3CE929D0E0E4736".into(),
                    span_id: "00f067aa0ba902b7".into(),
                });
                r
            },
            "record.trace.trace_id",
        ),
        (
            {
                let mut r = record(9, "INC-7");
                r.trace = Some(pb::Trace {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    span_id: "00f067aa".into(),
                });
                r
            },
            "record.trace.span_id",
        ),
    ];
    for (bad, field) in cases {
        let status = writer
            .append(pb::AppendRequest { record: Some(bad) })
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{field}: {}",
            status.message()
        );
        assert!(
            status.message().starts_with(field),
            "expected {field}, got {}",
            status.message()
        );
    }
    let missing = writer
        .append(pb::AppendRequest { record: None })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);

    // A batch: the invalid record is reported in place, the valid ones land.
    let mut invalid = record(10, "INC-7");
    invalid.action = String::new();
    let batch = vec![record(11, "INC-7"), invalid, record(12, "INC-7")];
    let results = writer
        .append_batch(pb::AppendBatchRequest { records: batch })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    let index_of = |r: &pb::AppendBatchResult| match r.result.as_ref().unwrap() {
        pb::append_batch_result::Result::Appended(a) => Some(a.index),
        pb::append_batch_result::Result::Error(e) => {
            assert_eq!(e.code, Code::InvalidArgument as i32);
            assert!(e.message.starts_with("records[1].action"), "{}", e.message);
            None
        }
    };
    assert_eq!(
        results.iter().map(index_of).collect::<Vec<_>>(),
        vec![Some(3), None, Some(4)]
    );
    let oversized = (0..1001).map(|n| record(n, "INC-7")).collect();
    let too_many = writer
        .append_batch(pb::AppendBatchRequest { records: oversized })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);

    // Nothing but the five valid records was written.
    let checkpoint = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, 5);

    // Sizes beyond the tree and reversed ranges.
    let status = reader
        .get_entries(pb::GetEntriesRequest {
            start_index: 0,
            end_index: 6,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let status = reader
        .get_entries(pb::GetEntriesRequest {
            start_index: 4,
            end_index: 2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = reader
        .get_entries(pb::GetEntriesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let leaf = Some(pb::get_inclusion_proof_request::Leaf::Index(0));
    let status = reader
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: leaf.clone(),
            tree_size: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let late = Some(pb::get_inclusion_proof_request::Leaf::Index(5));
    let status = reader
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: late,
            tree_size: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let status = reader
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: 4,
            second_size: 3,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = reader
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: 1,
            second_size: 9,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    let status = reader
        .subscribe(pb::SubscribeRequest {
            from_index: 6,
            filter: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_proofs_satisfy_independent_verifiers() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("authority").await;
    let mut reader = stack.audit_reader().await;
    append_many(&mut writer, 13, "INC-9").await;

    let vkey = reader
        .get_verifier_key(pb::GetVerifierKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(vkey.origin, "steward.test/audit");
    let checkpoint = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, 13);

    // C2SP signed-note, verified by an implementation we did not write.
    let verifier = signed_note::StandardVerifier::new(&vkey.verifier_key).unwrap();
    let note = signed_note::Note::from_bytes(checkpoint.signed_note.as_bytes()).unwrap();
    let verifiers = signed_note::VerifierList::new(vec![Box::new(verifier)]);
    note.verify(&verifiers).unwrap();
    // C2SP tlog-checkpoint body, parsed by the same independent library.
    let parsed = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    assert_eq!(parsed.origin(), "steward.test/audit");
    assert_eq!(parsed.size(), 13);
    assert_eq!(parsed.hash().0.to_vec(), checkpoint.root_hash);

    // Every entry's leaf is reproducible from the API's fields, and its
    // inclusion proof verifies with an independent RFC 6962 implementation.
    let entries = all_entries(&mut reader, 13).await;
    assert_eq!(entries.len(), 13);
    let root = tlog_tiles::Hash(checkpoint.root_hash.clone().try_into().unwrap());
    for entry in &entries {
        let leaf = recomputed_leaf(entry);
        assert_eq!(
            leaf_hash(&leaf).to_vec(),
            entry.leaf_hash,
            "entry {}",
            entry.index
        );
        assert_eq!(tlog_tiles::record_hash(&leaf).0.to_vec(), entry.leaf_hash);
        let proof = reader
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(pb::get_inclusion_proof_request::Leaf::Index(entry.index)),
                tree_size: 13,
            })
            .await
            .unwrap()
            .into_inner();
        let hashes: Vec<tlog_tiles::Hash> = proof
            .hashes
            .iter()
            .map(|h| tlog_tiles::Hash(h.clone().try_into().unwrap()))
            .collect();
        let leaf = tlog_tiles::Hash(entry.leaf_hash.clone().try_into().unwrap());
        tlog_tiles::check_record(&hashes, 13, root, entry.index, leaf).unwrap();
    }
    // By leaf hash, too.
    let by_hash = reader
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: Some(pb::get_inclusion_proof_request::Leaf::LeafHash(
                entries[5].leaf_hash.clone(),
            )),
            tree_size: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((by_hash.index, by_hash.tree_size), (5, 13));
    // A hash the log does not hold, and one it holds only beyond the size
    // asked for, are not found.
    for (hash, size) in [(vec![7u8; 32], 0), (entries[12].leaf_hash.clone(), 12)] {
        let missing = reader
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(pb::get_inclusion_proof_request::Leaf::LeafHash(hash)),
                tree_size: size,
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
        assert!(missing.message().starts_with("leaf_hash:"), "{missing:?}");
    }

    // The log grows; every earlier size is consistent with the new head.
    append_many(&mut writer, 8, "INC-9").await;
    let newer = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(newer.tree_size, 21);
    let new_root = tlog_tiles::Hash(newer.root_hash.clone().try_into().unwrap());
    let proof = reader
        .get_consistency_proof(pb::GetConsistencyProofRequest {
            first_size: 13,
            second_size: 21,
        })
        .await
        .unwrap()
        .into_inner();
    let hashes: Vec<tlog_tiles::Hash> = proof
        .hashes
        .iter()
        .map(|h| tlog_tiles::Hash(h.clone().try_into().unwrap()))
        .collect();
    tlog_tiles::check_tree(&hashes, 21, new_root, 13, root).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_finds_entries_by_incident_actor_action_and_time_with_paging() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    let mut reader = stack.audit_reader().await;
    append_many(&mut writer, 10, "INC-1").await;
    append_many(&mut writer, 6, "INC-2").await;

    let query = |filter: pb::EntryFilter, token: String| pb::QueryRequest {
        filter: Some(filter),
        page_size: 4,
        page_token: token,
        ..Default::default()
    };
    let mut found = Vec::new();
    let mut token = String::new();
    loop {
        let page = reader
            .query(query(
                pb::EntryFilter {
                    incident_ref: "INC-2".into(),
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        found.extend(page.entries.into_iter().map(|e| e.index));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(found, (10..16).collect::<Vec<_>>());

    let by_human = reader
        .query(pb::QueryRequest {
            filter: Some(pb::EntryFilter {
                actor: "alice".into(),
                incident_ref: "INC-1".into(),
                ..Default::default()
            }),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_human.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![0, 2, 4, 6, 8]
    );

    let rotations = reader
        .query(pb::QueryRequest {
            filter: Some(pb::EntryFilter {
                action: "credential.rotate".into(),
                ..Default::default()
            }),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotations.entries.len(), 4 + 2);

    let future = prost_types::Timestamp {
        seconds: 4_000_000_000,
        nanos: 0,
    };
    let none = reader
        .query(pb::QueryRequest {
            since: Some(future),
            page_size: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(none.entries.is_empty());
    let reversed = reader
        .query(pb::QueryRequest {
            since: Some(future),
            until: Some(prost_types::Timestamp {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(reversed.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_reconnects_misses_nothing_and_sees_nothing_twice() {
    let stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    let mut reader = stack.audit_reader().await;
    append_many(&mut writer, 5, "INC-5").await;

    // Replay 0..5, then follow live appends.
    let mut stream = reader
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    let mut cursor = 0;
    while seen.len() < 5 {
        let message = stream.message().await.unwrap().unwrap();
        seen.extend(message.entries.iter().map(|e| e.index));
        cursor = message.next_index;
    }
    append_many(&mut writer, 3, "INC-5").await;
    while seen.len() < 8 {
        let message = stream.message().await.unwrap().unwrap();
        seen.extend(message.entries.iter().map(|e| e.index));
        cursor = message.next_index;
    }
    assert_eq!(cursor, 8);
    drop(stream);

    // Appends while disconnected; reconnect with the cursor.
    append_many(&mut writer, 4, "INC-5").await;
    let mut stream = reader
        .subscribe(pb::SubscribeRequest {
            from_index: cursor,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    while seen.len() < 12 {
        let message = stream.message().await.unwrap().unwrap();
        seen.extend(message.entries.iter().map(|e| e.index));
    }
    assert_eq!(seen, (0..12).collect::<Vec<_>>());

    // A filtered subscription sees only its incident, and the cursor still
    // advances past what it skipped.
    append_many(&mut writer, 2, "INC-other").await;
    let filter = pb::EntryFilter {
        incident_ref: "INC-other".into(),
        ..Default::default()
    };
    let mut filtered = reader
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: Some(filter),
        })
        .await
        .unwrap()
        .into_inner();
    let mut mine = Vec::new();
    while mine.len() < 2 {
        let message = filtered.message().await.unwrap().unwrap();
        mine.extend(message.entries.iter().map(|e| e.index));
    }
    assert_eq!(mine, vec![12, 13]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_told_it_fell_behind_and_resumes_without_gaps() {
    let stack = TestStack::audit_only_with_log(|log| log.subscriber_buffer = 64).await;
    let mut writer = stack.audit_as_service("inventory").await;
    // Each subscriber on its own connection, as separate consumers would be.
    let mut slow_client = stack.audit_reader().await;
    let mut fast_client = stack.audit_reader().await;
    // The slow one subscribes and then reads nothing while many batches
    // commit: its transport buffers fill, then its place in the broadcast.
    let mut slow = slow_client
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast = fast_client
        .subscribe(pb::SubscribeRequest {
            from_index: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let batches = 1000u64;
    let total = batches * 4;
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while (seen.len() as u64) < total {
            let message = fast.message().await.unwrap().unwrap();
            assert!(
                message.fell_behind.is_none(),
                "the fast subscriber was held back"
            );
            seen.extend(message.entries.iter().map(|e| e.index));
        }
        seen
    });
    let padding = "p".repeat(1000);
    for chunk in 0..batches {
        let records = (0..4)
            .map(|n| {
                let mut r = record(chunk * 4 + n, "INC-slow");
                r.attributes.insert("padding".into(), padding.clone());
                r
            })
            .collect();
        writer
            .append_batch(pb::AppendBatchRequest { records })
            .await
            .unwrap();
    }
    let deadline = std::time::Duration::from_secs(60);
    let fast_seen = tokio::time::timeout(deadline, fast_reader)
        .await
        .expect("fast subscriber stalled")
        .unwrap();
    assert_eq!(fast_seen, (0..total).collect::<Vec<_>>());

    let read_slow = async {
        let mut seen = Vec::new();
        loop {
            let message = slow
                .message()
                .await
                .unwrap()
                .expect("the stream ended without saying it fell behind");
            seen.extend(message.entries.iter().map(|e| e.index));
            if let Some(behind) = message.fell_behind {
                return (seen, behind.resume_from);
            }
            assert!(
                (seen.len() as u64) < total,
                "the slow subscriber never fell behind"
            );
        }
    };
    let (mut seen, resume_from) = tokio::time::timeout(deadline, read_slow)
        .await
        .expect("slow subscriber stalled");
    assert!(resume_from < total);
    assert_eq!(seen, (0..resume_from).collect::<Vec<_>>());
    let mut resumed = slow_client
        .subscribe(pb::SubscribeRequest {
            from_index: resume_from,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let catch_up = async {
        while (seen.len() as u64) < total {
            let message = resumed.message().await.unwrap().unwrap();
            seen.extend(message.entries.iter().map(|e| e.index));
        }
        seen
    };
    let seen = tokio::time::timeout(deadline, catch_up)
        .await
        .expect("resumed subscriber stalled");
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_survives_a_restart_and_refuses_to_start_on_tampered_hashes() {
    let mut stack = TestStack::audit_only().await;
    let mut writer = stack.audit_as_service("inventory").await;
    append_many(&mut writer, 6, "INC-3").await;
    let mut reader = stack.audit_reader().await;
    let before = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    drop((writer, reader));

    let config = stack.restart("audit").await;
    let mut reader = stack.audit_reader().await;
    let after = reader
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.tree_size, after.root_hash.clone()),
        (before.tree_size, before.root_hash.clone())
    );
    let entries = all_entries(&mut reader, 6).await;
    let (record, _) = EvidenceRecord::from_canonical_leaf(&recomputed_leaf(&entries[2])).unwrap();
    assert_eq!(record.incident_ref, "INC-3");
    drop(reader);

    // Someone rewrites a stored leaf hash: the log no longer matches its own
    // signed checkpoint and refuses to serve.
    stack.stop("audit").await;
    steward_integration_tests::execute_sql(
        &config.database,
        "UPDATE entries SET leaf_hash = (SELECT leaf_hash FROM entries WHERE idx = 3) WHERE idx = 2",
    )
    .await;
    let refused = steward_integration_tests::build_service("audit", config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("do not reproduce the signed root"),
        "{refused}"
    );
}
