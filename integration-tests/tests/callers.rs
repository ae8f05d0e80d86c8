//! One table of who may call what: each RPC's `Callers:` comment in the
//! protos and the allowlist its service enforces by default are the same
//! list. The comment is the contract readers see; the allowlist is what
//! the server does; this test keeps them one.
//!
//! A comment names SPIFFE ID paths of the service's own trust domain,
//! comma-separated, ending with a period: `Callers: operator/*,
//! service/authority.`; `*` is every SVID of the trust domain.

use std::collections::{BTreeMap, BTreeSet};

use steward_integration_tests::workspace_root;

/// `rpc name → callers` from one proto file's services, as written.
fn documented(proto: &str) -> BTreeMap<String, BTreeSet<String>> {
    let text = std::fs::read_to_string(workspace_root().join(proto)).unwrap();
    let mut out = BTreeMap::new();
    let mut service = String::new();
    let mut comment = String::new();
    // RPCs listed together under one comment share its callers.
    let mut shared: Option<BTreeSet<String>> = None;
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').to_owned())
        .unwrap_or_default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches('{').trim().to_owned();
            comment.clear();
        } else if let Some(c) = line.strip_prefix("//") {
            comment.push(' ');
            comment.push_str(c.trim());
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim();
            let path = format!("/{package}.{service}/{name}");
            let callers = callers_of(&comment)
                .or_else(|| comment.is_empty().then(|| shared.clone()).flatten())
                .unwrap_or_else(|| panic!("{proto}: {path} has no `Callers:` line"));
            shared = Some(callers.clone());
            out.insert(path, callers);
            comment.clear();
        } else if line.is_empty() {
            comment.clear();
            shared = None;
        }
    }
    out
}

/// The list after `Callers:`, up to the period that ends it.
fn callers_of(comment: &str) -> Option<BTreeSet<String>> {
    let (_, rest) = comment.split_once("Callers:")?;
    let list = rest.trim().split_once('.').map_or(rest, |(l, _)| l);
    Some(
        list.split(',')
            // A parenthesised note may follow a path: `* (every SVID …)`.
            .map(|c| {
                c.split(" (")
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches('`')
                    .to_owned()
            })
            .filter(|c| !c.is_empty())
            .inspect(|c| {
                assert!(
                    c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"/*-_".contains(&b)),
                    "`{c}` in {comment:?} is not a SPIFFE ID path"
                );
            })
            .collect(),
    )
}

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
    for (proto, spec) in [
        (
            "proto/steward/inventory/v1/inventory.proto",
            steward_inventory::SPEC,
        ),
        (
            "proto/steward/authority/v1/authority.proto",
            steward_authority::SPEC,
        ),
        (
            "proto/steward/broker/v1/broker.proto",
            steward_credential_broker::SPEC,
        ),
        ("proto/steward/audit/v1/audit.proto", steward_audit::SPEC),
    ] {
        let documented = documented(proto);
        let enforced = enforced(&spec);
        assert!(!documented.is_empty(), "{proto}: no RPCs found");
        for (rpc, callers) in &documented {
            assert_eq!(
                Some(callers),
                enforced.get(rpc),
                "{rpc}: the proto's Callers line and {}'s allowlist differ",
                spec.name
            );
        }
        for rpc in enforced.keys() {
            assert!(
                documented.contains_key(rpc),
                "{rpc} is allowlisted by {} but not in {proto}",
                spec.name
            );
        }
    }
}

/// How an RPC streams, from its line in the proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Unary,
    ServerStream,
    BidiStream,
}

/// `rpc path → shape` for one proto file.
fn shapes(proto: &str) -> BTreeMap<String, Shape> {
    let text = std::fs::read_to_string(workspace_root().join(proto)).unwrap();
    let package = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').to_owned())
        .unwrap_or_default();
    let mut service = String::new();
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.trim_end_matches('{').trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim();
            let shape = if rest.contains("(stream ") {
                Shape::BidiStream
            } else if rest.contains("returns (stream ") {
                Shape::ServerStream
            } else {
                Shape::Unary
            };
            out.insert(format!("/{package}.{service}/{name}"), shape);
        }
    }
    out
}

/// A caller's SPIFFE ID path for an allowlist pattern: `operator/*` →
/// `operator/table`, `*` → `workload/table`.
fn instance(pattern: &str) -> String {
    match pattern.strip_suffix('*') {
        Some("") => "workload/table".to_owned(),
        Some(prefix) => format!("{prefix}table"),
        None => pattern.to_owned(),
    }
}

fn admits(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
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

/// Every RPC of the four APIs, through the real servers: a caller the
/// table leaves out is refused before any handler runs (so nothing it
/// asked can change), and a caller the table names gets past the
/// allowlist (so "everything refused" cannot pass).
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
    let mut checked = 0;
    for (proto, service) in [
        ("proto/steward/inventory/v1/inventory.proto", "inventory"),
        ("proto/steward/authority/v1/authority.proto", "authority"),
        ("proto/steward/broker/v1/broker.proto", "credential-broker"),
        ("proto/steward/audit/v1/audit.proto", "audit"),
    ] {
        let shapes = shapes(proto);
        for (rpc, callers) in documented(proto) {
            let shape = shapes[&rpc];
            let allowed = callers.iter().next().unwrap();
            let status = call(&stack, service, &rpc, shape, &instance(allowed)).await;
            assert!(
                !refused_by_the_allowlist(&status),
                "{rpc}: {allowed} is on its list, yet refused: {status:?}"
            );
            // A caller of this trust domain that no pattern admits (none
            // exists for `*`).
            if let Some(outsider) = candidates
                .iter()
                .find(|c| !callers.iter().any(|p| admits(p, c)))
            {
                let status = call(&stack, service, &rpc, shape, outsider).await;
                assert!(
                    refused_by_the_allowlist(&status),
                    "{rpc}: {outsider} is off its list, yet got {status:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 70, "only {checked} RPCs");
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

/// A message already encoded: what the payload sweep sends.
#[derive(Debug, Clone, Default, PartialEq)]
struct Raw(Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One string field set to `value`, on the wire.
fn one_string_field(number: i32, value: &[u8]) -> Raw {
    let mut out = Vec::with_capacity(value.len() + 16);
    let varint = |mut v: u64, out: &mut Vec<u8>| {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    };
    varint(((number as u64) << 3) | 2, &mut out);
    varint(value.len() as u64, &mut out);
    out.extend_from_slice(value);
    Raw(out)
}

/// `rpc path → (input message's top-level string fields, streams in?)`,
/// from the descriptors every server also serves by reflection.
fn string_fields() -> BTreeMap<String, Vec<(String, i32)>> {
    use prost::Message as _;
    use prost_types::field_descriptor_proto::Type;
    let set = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = BTreeMap::new();
    for file in &set.file {
        let package = file.package();
        for m in &file.message_type {
            messages.insert(format!(".{package}.{}", m.name()), m.clone());
        }
    }
    let mut out = BTreeMap::new();
    for file in &set.file {
        let package = file.package();
        if !package.starts_with("steward.") || package.starts_with("steward.testing") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                if method.client_streaming() {
                    continue;
                }
                let input = &messages[method.input_type()];
                let fields = input
                    .field
                    .iter()
                    .filter(|f| f.r#type() == Type::String)
                    .map(|f| (f.name().to_owned(), f.number()))
                    .collect();
                out.insert(
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    fields,
                );
            }
        }
    }
    out
}

/// Every top-level string field of every RPC, sent 1 MB and 10 MB long
/// by a caller the RPC admits: whatever the answer, it is short and never
/// carries the value back (a status message over grpcio's 16 KiB metadata
/// limit turns a refusal into RESOURCE_EXHAUSTED, and an echoed secret
/// ends up in every log). A 10 MB value over a server's message limit is
/// RESOURCE_EXHAUSTED, never a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_carries_a_huge_value_back() {
    let stack = steward_integration_tests::TestStack::start().await;
    let fields = string_fields();
    let mut sent = 0;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (proto, service) in [
        ("proto/steward/inventory/v1/inventory.proto", "inventory"),
        ("proto/steward/authority/v1/authority.proto", "authority"),
        ("proto/steward/broker/v1/broker.proto", "credential-broker"),
        ("proto/steward/audit/v1/audit.proto", "audit"),
    ] {
        let shapes = shapes(proto);
        for (rpc, callers) in documented(proto) {
            let Some(strings) = fields.get(&rpc) else {
                continue;
            };
            let caller = instance(callers.iter().next().unwrap());
            let file = format!("sweep-{}", caller.replace('/', "-"));
            let source = stack
                .pki
                .client(&file, &format!("spiffe://steward.test/{caller}"));
            let channel = stack.service(service).channel(&source).await;
            for (name, number) in strings {
                for size in [1usize << 20, 10 << 20] {
                    let value = vec![b'q'; size];
                    let mut grpc = tonic::client::Grpc::new(channel.clone())
                        .max_encoding_message_size(64 << 20)
                        .max_decoding_message_size(64 << 20);
                    grpc.ready().await.unwrap();
                    let path = http::uri::PathAndQuery::try_from(rpc.as_str()).unwrap();
                    let codec = tonic_prost::ProstCodec::<Raw, Raw>::default();
                    let request = tonic::Request::new(one_string_field(*number, &value));
                    let answer = async {
                        match shapes[&rpc] {
                            Shape::Unary => grpc.unary(request, path, codec).await.err(),
                            _ => match grpc.server_streaming(request, path, codec).await {
                                Err(status) => Some(status),
                                Ok(mut stream) => stream.get_mut().message().await.err(),
                            },
                        }
                    };
                    let status = tokio::time::timeout(std::time::Duration::from_secs(10), answer)
                        .await
                        .unwrap_or(None);
                    *seen
                        .entry(
                            status
                                .as_ref()
                                .map_or(format!("answered {rpc} {name}"), |s| {
                                    format!("{:?}", s.code())
                                }),
                        )
                        .or_insert(0) += 1;
                    if let Some(status) = status {
                        let message = status.message();
                        assert!(
                            message.len() < 1024,
                            "{rpc} {name} ({size} bytes): {} a {}-byte message: {}…",
                            status.code(),
                            message.len(),
                            &message[..message.len().min(120)]
                        );
                        assert!(
                            !message.contains(&"q".repeat(100)),
                            "{rpc} {name}: the value came back: {message}"
                        );
                        assert!(
                            status.code() != tonic::Code::Unknown
                                && status.code() != tonic::Code::Internal,
                            "{rpc} {name} ({size} bytes): {status:?}"
                        );
                    }
                    sent += 1;
                }
            }
        }
    }
    eprintln!("answers to {sent} huge values: {seen:?}");
    assert!(sent > 100, "only {sent} values sent");
}
