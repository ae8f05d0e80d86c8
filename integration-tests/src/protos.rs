//! The protos as the tests read them: each RPC's `Callers:` line, how it
//! streams, and the text fields a request can carry.
//!
//! A `Callers:` comment names SPIFFE ID paths of the service's own trust
//! domain, comma-separated, ending with a period: `Callers: operator/*,
//! service/authority.`; `*` is every SVID of the trust domain.

use std::collections::{BTreeMap, BTreeSet};

use crate::workspace_root;

/// The services' APIs: proto file and a service that serves it (the
/// evidence outbox's, by each service that writes evidence).
pub const APIS: [(&str, &str); 7] = [
    ("proto/steward/inventory/v1/inventory.proto", "inventory"),
    ("proto/steward/authority/v1/authority.proto", "authority"),
    ("proto/steward/broker/v1/broker.proto", "credential-broker"),
    ("proto/steward/audit/v1/audit.proto", "audit"),
    (OUTBOX_PROTO, "inventory"),
    (OUTBOX_PROTO, "authority"),
    (OUTBOX_PROTO, "credential-broker"),
];

/// The evidence outbox's API, served beside a service's own.
pub const OUTBOX_PROTO: &str = "proto/steward/common/v1/outbox.proto";

/// `rpc name → callers` from one proto file's services, as written.
pub fn documented(proto: &str) -> BTreeMap<String, BTreeSet<String>> {
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
pub fn callers_of(comment: &str) -> Option<BTreeSet<String>> {
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

/// How an RPC streams, from its line in the proto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Unary,
    ServerStream,
    BidiStream,
}

/// `rpc path → shape` for one proto file.
pub fn shapes(proto: &str) -> BTreeMap<String, Shape> {
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
pub fn instance(pattern: &str) -> String {
    match pattern.strip_suffix('*') {
        Some("") => "workload/table".to_owned(),
        Some(prefix) => format!("{prefix}table"),
        None => pattern.to_owned(),
    }
}

pub fn admits(pattern: &str, path: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A text (string or bytes) field a request can carry, however deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextField {
    /// `principal.workload`, `labels.value`.
    pub path: String,
    /// The field numbers from the request message down to the field.
    pub numbers: Vec<i32>,
}

/// `rpc path → the text fields of its request`, for every RPC whose client
/// sends one message, from the descriptors every server also serves by
/// reflection: top-level fields and those of the messages (and map
/// entries) inside, down to `depth` levels, each message type once per
/// path.
pub fn text_fields(depth: usize) -> BTreeMap<String, Vec<TextField>> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(steward_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages = BTreeMap::new();
    for file in &set.file {
        let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
            .message_type
            .iter()
            .map(|m| (format!(".{}.{}", file.package(), m.name()), m))
            .collect();
        while let Some((name, message)) = stack.pop() {
            for nested in &message.nested_type {
                stack.push((format!("{name}.{}", nested.name()), nested));
            }
            messages.insert(name, message.clone());
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
                let mut fields = Vec::new();
                walk(
                    &messages,
                    method.input_type(),
                    &mut Vec::new(),
                    &mut Vec::new(),
                    &mut vec![method.input_type().to_owned()],
                    depth,
                    &mut fields,
                );
                out.insert(
                    format!("/{package}.{}/{}", service.name(), method.name()),
                    fields,
                );
            }
        }
    }
    out
}

fn walk(
    messages: &BTreeMap<String, prost_types::DescriptorProto>,
    message: &str,
    names: &mut Vec<String>,
    numbers: &mut Vec<i32>,
    inside: &mut Vec<String>,
    depth: usize,
    out: &mut Vec<TextField>,
) {
    use prost_types::field_descriptor_proto::Type;
    let Some(descriptor) = messages.get(message) else {
        return;
    };
    for field in &descriptor.field {
        names.push(field.name().to_owned());
        numbers.push(field.number());
        match field.r#type() {
            Type::String | Type::Bytes => out.push(TextField {
                path: names.join("."),
                numbers: numbers.clone(),
            }),
            // Each message type once per path: recursive types end.
            Type::Message if depth > 1 && !inside.iter().any(|t| t == field.type_name()) => {
                inside.push(field.type_name().to_owned());
                walk(
                    messages,
                    field.type_name(),
                    names,
                    numbers,
                    inside,
                    depth - 1,
                    out,
                );
                inside.pop();
            }
            _ => {}
        }
        names.pop();
        numbers.pop();
    }
}
