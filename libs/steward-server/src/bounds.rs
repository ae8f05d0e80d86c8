//! The wire bound: every request message is checked against the protos
//! before any handler decodes it. A string or bytes field longer than its
//! bound, a string that is not UTF-8, a message that is not well-formed or
//! a request larger than the service accepts is refused here, with a
//! status naming the field (`principal.id`) and the sizes, never the value.
//!
//! The bounds are generous outer limits (4 KiB for text, 64 KiB for bytes,
//! more where a service names a field in
//! [`crate::ServiceSpec::field_limits`]);
//! handlers still apply their own, tighter rules. What this layer adds is
//! that no field, however deep and whichever RPC, reaches a handler, a log
//! line or an error message at a size nobody planned for, and that the
//! answer is INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for a message over the
//! service's limit) rather than whatever the decoder or a handler would say.
//!
//! Only requests whose client sends one message are checked; streaming
//! requests are validated message by message by their handlers.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use http_body_util::BodyExt as _;
use prost::bytes::{Buf as _, Bytes, BytesMut};
use prost_types::field_descriptor_proto::Type;
use tonic::body::Body;

/// The bound of a string field nobody named.
pub const DEFAULT_TEXT_BYTES: usize = 4 * 1024;
/// The bound of a bytes field nobody named.
pub const DEFAULT_BYTES_BYTES: usize = 64 * 1024;
/// The largest request message a service accepts unless its spec says
/// otherwise: gRPC's usual 4 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// How deep messages may nest (prost's own recursion limit).
const MAX_DEPTH: usize = 100;
/// How much of an oversized request is read to name the field that made it
/// so.
const OVERSIZED_PREFIX: usize = 64 * 1024;

/// What one field holds, as far as the bound cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Bytes,
    Message(usize),
    Other,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    kind: Kind,
    limit: usize,
}

#[derive(Debug, Clone, Default)]
struct Shape {
    /// The message's full name, without the leading dot.
    name: String,
    fields: HashMap<u32, Field>,
}

/// Every request message's shape and each field's bound, from the
/// descriptors.
#[derive(Debug)]
pub struct Bounds {
    /// `/package.Service/Method` → its input message, for methods whose
    /// client sends one message.
    methods: HashMap<String, usize>,
    shapes: Vec<Shape>,
    max_request: usize,
}

/// Why a message was refused: the field path (innermost last) and what is
/// wrong with it.
#[derive(Debug, PartialEq, Eq)]
struct Refusal {
    path: Vec<String>,
    problem: Problem,
}

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    TooLong { len: usize, limit: usize },
    NotUtf8,
    Malformed,
    TooDeep,
}

impl Refusal {
    fn new(problem: Problem) -> Self {
        Self {
            path: Vec::new(),
            problem,
        }
    }

    fn within(mut self, field: &str) -> Self {
        self.path.push(field.to_owned());
        self
    }

    fn field(&self) -> String {
        let mut path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        path.reverse();
        path.join(".")
    }

    fn status(&self, message: &str) -> tonic::Status {
        let field = self.field();
        let text = match self.problem {
            Problem::TooLong { len, limit } => {
                format!("`{field}` is {len} bytes long; at most {limit} are accepted")
            }
            Problem::NotUtf8 => format!("`{field}` is not valid UTF-8"),
            Problem::TooDeep => {
                format!("`{field}` nests messages more than {MAX_DEPTH} deep")
            }
            Problem::Malformed if field.is_empty() => {
                format!("the request is not a well-formed {message}")
            }
            Problem::Malformed => {
                format!(
                    "the request is not a well-formed {message}: `{field}` is cut short or of the wrong wire type"
                )
            }
        };
        tonic::Status::invalid_argument(text)
    }
}

impl Bounds {
    /// The bounds of every method in `descriptors` (an encoded
    /// `FileDescriptorSet`), with a service's own field limits (`(full
    /// field name, bytes)`) and largest request. An override naming no
    /// field is an error: a typo must not silently leave a field at its
    /// default.
    pub fn new(
        descriptors: &[u8],
        field_limits: &[(&str, usize)],
        max_request: usize,
    ) -> Result<Self, String> {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(descriptors)
            .map_err(|e| format!("the proto descriptors do not decode: {e}"))?;
        let mut index = HashMap::new();
        let mut pending = Vec::new();
        for file in &set.file {
            let mut stack: Vec<(String, &prost_types::DescriptorProto)> = file
                .message_type
                .iter()
                .map(|m| (format!("{}.{}", file.package(), m.name()), m))
                .collect();
            while let Some((name, message)) = stack.pop() {
                for nested in &message.nested_type {
                    stack.push((format!("{name}.{}", nested.name()), nested));
                }
                index.insert(format!(".{name}"), pending.len());
                pending.push((name, message));
            }
        }
        let mut overrides: HashMap<&str, usize> = field_limits.iter().copied().collect();
        let mut shapes = Vec::with_capacity(pending.len());
        for (name, message) in &pending {
            let mut fields = HashMap::new();
            for field in &message.field {
                let full = format!("{name}.{}", field.name());
                let (kind, default) = match field.r#type() {
                    Type::String => (Kind::Text, DEFAULT_TEXT_BYTES),
                    Type::Bytes => (Kind::Bytes, DEFAULT_BYTES_BYTES),
                    Type::Message => match index.get(field.type_name()) {
                        Some(&i) => (Kind::Message(i), usize::MAX),
                        None => (Kind::Other, usize::MAX),
                    },
                    _ => (Kind::Other, usize::MAX),
                };
                let limit = overrides.remove(full.as_str()).unwrap_or(default);
                let number = u32::try_from(field.number()).unwrap_or(0);
                fields.insert(
                    number,
                    Field {
                        name: field.name().to_owned(),
                        kind,
                        limit,
                    },
                );
            }
            shapes.push(Shape {
                name: name.clone(),
                fields,
            });
        }
        if let Some(unknown) = overrides.keys().next() {
            return Err(format!("field_limits names {unknown}, which no proto has"));
        }
        let mut methods = HashMap::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    if method.client_streaming() {
                        continue;
                    }
                    if let Some(&input) = index.get(method.input_type()) {
                        methods.insert(
                            format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                            input,
                        );
                    }
                }
            }
        }
        Ok(Self {
            methods,
            shapes,
            max_request,
        })
    }

    /// Checks one encoded message of shape `shape`, recursing into the
    /// messages it holds.
    fn check(&self, shape: usize, mut buf: &[u8], depth: usize) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(Refusal::new(Problem::TooDeep));
        }
        let fields = &self.shapes[shape].fields;
        while !buf.is_empty() {
            let (number, wire) = tag(&mut buf).ok_or(Refusal::new(Problem::Malformed))?;
            let field = fields.get(&number);
            let named = |r: Refusal| match field {
                Some(f) => r.within(&f.name),
                None => r,
            };
            if wire != WIRE_LEN {
                if matches!(field, Some(f) if f.kind != Kind::Other) {
                    return Err(named(Refusal::new(Problem::Malformed)));
                }
                skip(&mut buf, number, wire, 0).ok_or(Refusal::new(Problem::Malformed))?;
                continue;
            }
            let len = varint(&mut buf)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n <= buf.len())
                .ok_or_else(|| named(Refusal::new(Problem::Malformed)))?;
            let (value, rest) = buf.split_at(len);
            buf = rest;
            let Some(field) = field else { continue };
            match field.kind {
                Kind::Text | Kind::Bytes if len > field.limit => {
                    return Err(named(Refusal::new(Problem::TooLong {
                        len,
                        limit: field.limit,
                    })));
                }
                Kind::Text if std::str::from_utf8(value).is_err() => {
                    return Err(named(Refusal::new(Problem::NotUtf8)));
                }
                Kind::Message(inner) => self.check(inner, value, depth + 1).map_err(named)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// The field that makes an oversized message so, found in the part of
    /// it that was read (`prefix`): the first whose stated length is over
    /// its bound, or a message holding one.
    fn oversized_field(&self, shape: usize, mut prefix: &[u8], depth: usize) -> Option<Refusal> {
        if depth > MAX_DEPTH {
            return None;
        }
        let fields = &self.shapes[shape].fields;
        while !prefix.is_empty() {
            let (number, wire) = tag(&mut prefix)?;
            if wire != WIRE_LEN {
                skip(&mut prefix, number, wire, 0)?;
                continue;
            }
            let len = usize::try_from(varint(&mut prefix)?).ok()?;
            let field = fields.get(&number);
            let available = len.min(prefix.len());
            let (value, rest) = prefix.split_at(available);
            match field.map(|f| (f, f.kind)) {
                Some((f, Kind::Text | Kind::Bytes)) if len > f.limit => {
                    return Some(
                        Refusal::new(Problem::TooLong {
                            len,
                            limit: f.limit,
                        })
                        .within(&f.name),
                    );
                }
                Some((f, Kind::Message(inner))) if len > self.max_request => {
                    return Some(
                        self.oversized_field(inner, value, depth + 1)
                            .unwrap_or_else(|| {
                                Refusal::new(Problem::TooLong {
                                    len,
                                    limit: self.max_request,
                                })
                            })
                            .within(&f.name),
                    );
                }
                _ => {}
            }
            if available < len {
                return None;
            }
            prefix = rest;
        }
        None
    }
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_GROUP_START: u8 = 3;
const WIRE_GROUP_END: u8 = 4;
const WIRE_FIXED32: u8 = 5;

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// A field's number and wire type; `None` when the tag is not valid.
fn tag(buf: &mut &[u8]) -> Option<(u32, u8)> {
    let key = varint(buf)?;
    let number = u32::try_from(key >> 3).ok().filter(|&n| n > 0)?;
    Some((number, (key & 7) as u8))
}

/// Skips one field's value; `None` when the message ends inside it.
fn skip(buf: &mut &[u8], number: u32, wire: u8, depth: usize) -> Option<()> {
    let take = |buf: &mut &[u8], n: usize| (buf.len() >= n).then(|| buf.advance(n));
    match wire {
        WIRE_VARINT => varint(buf).map(drop),
        WIRE_FIXED64 => take(buf, 8),
        WIRE_FIXED32 => take(buf, 4),
        WIRE_LEN => {
            let len = usize::try_from(varint(buf)?).ok()?;
            take(buf, len)
        }
        WIRE_GROUP_START if depth < MAX_DEPTH => loop {
            let (inner, inner_wire) = tag(buf)?;
            if inner_wire == WIRE_GROUP_END {
                return (inner == number).then_some(());
            }
            skip(buf, inner, inner_wire, depth + 1)?;
        },
        _ => None,
    }
}

/// The layer that applies [`Bounds`] to every request.
#[derive(Debug, Clone)]
pub struct BoundsLayer {
    bounds: Arc<Bounds>,
}

impl BoundsLayer {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds: Arc::new(bounds),
        }
    }
}

impl<S> tower::Layer<S> for BoundsLayer {
    type Service = Bounded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bounded {
            inner,
            bounds: self.bounds.clone(),
        }
    }
}

/// The service built by [`BoundsLayer`].
#[derive(Debug, Clone)]
pub struct Bounded<S> {
    inner: S,
    bounds: Arc<Bounds>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, ResBody> tower::Service<http::Request<Body>> for Bounded<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone took the readiness of `self.inner`; swap so the ready
        // instance serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(&shape) = self.bounds.methods.get(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let bounds = self.bounds.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match read_first_message(&bounds, shape, body).await {
                Ok(body) => inner.call(http::Request::from_parts(parts, body)).await,
                Err(status) => {
                    tracing::warn!(rpc = %parts.uri.path(), code = ?status.code(), refusal = status.message(), "request refused at the wire bound");
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// Reads the request's first gRPC message and checks it; the body to hand
/// on (what was read, then the rest) or the refusal.
async fn read_first_message(
    bounds: &Bounds,
    shape: usize,
    body: Body,
) -> Result<Body, tonic::Status> {
    let message = &bounds.shapes[shape].name;
    let mut reader = Reader {
        body,
        read: BytesMut::new(),
        held: None,
        ended: false,
    };
    reader.fill(5).await?;
    // Compressed (tonic refuses it) or no message at all: tonic's to answer.
    if reader.read.len() < 5 || reader.read[0] != 0 {
        if !reader.read.is_empty() && reader.read.len() < 5 {
            return Err(cut_short(message));
        }
        return Ok(reader.into_body());
    }
    let header = &reader.read[1..5];
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > bounds.max_request {
        reader.fill(5 + OVERSIZED_PREFIX.min(len)).await?;
        let mut text = format!(
            "the request is {len} bytes; at most {} are accepted",
            bounds.max_request
        );
        if let Some(refusal) = bounds.oversized_field(shape, &reader.read[5..], 0)
            && let Problem::TooLong { len, .. } = refusal.problem
        {
            text.push_str(&format!("; `{}` alone is {len} bytes", refusal.field()));
        }
        return Err(tonic::Status::resource_exhausted(text));
    }
    reader.fill(5 + len).await?;
    if reader.read.len() < 5 + len {
        return Err(cut_short(message));
    }
    bounds
        .check(shape, &reader.read[5..5 + len], 0)
        .map_err(|refusal| refusal.status(message))?;
    Ok(reader.into_body())
}

fn cut_short(message: &str) -> tonic::Status {
    tonic::Status::invalid_argument(format!("the request ends inside its {message} message"))
}

/// A request body being read from the start.
struct Reader {
    body: Body,
    read: BytesMut,
    /// A frame other than data (trailers) that ended the reading.
    held: Option<Frame<Bytes>>,
    ended: bool,
}

impl Reader {
    /// Reads until `n` bytes are in or the body ends.
    async fn fill(&mut self, n: usize) -> Result<(), tonic::Status> {
        while self.read.len() < n && !self.ended {
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.read.extend_from_slice(&data),
                    Err(frame) => {
                        self.held = Some(frame);
                        self.ended = true;
                    }
                },
                Some(Err(status)) => return Err(status),
            }
        }
        Ok(())
    }

    fn into_body(self) -> Body {
        Body::new(Replayed {
            read: Some(self.read.freeze()),
            held: self.held,
            rest: (!self.ended).then_some(self.body),
        })
    }
}

/// A request body whose start was already read: that part, then whatever
/// frame ended the reading, then the rest.
struct Replayed {
    read: Option<Bytes>,
    held: Option<Frame<Bytes>>,
    rest: Option<Body>,
}

impl http_body::Body for Replayed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(read) = self.read.take().filter(|b| !b.is_empty()) {
            return Poll::Ready(Some(Ok(Frame::data(read))));
        }
        if let Some(frame) = self.held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.as_ref().is_none_or(Bytes::is_empty)
            && self.held.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn bounds() -> Bounds {
        Bounds::new(
            steward_proto::FILE_DESCRIPTOR_SET,
            &[],
            DEFAULT_MAX_REQUEST_BYTES,
        )
        .unwrap()
    }

    fn key(number: u32, wire: u8, out: &mut Vec<u8>) {
        put_varint(u64::from(number) << 3 | u64::from(wire), out);
    }

    fn put_varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn len_field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        key(number, WIRE_LEN, &mut out);
        put_varint(value.len() as u64, &mut out);
        out.extend_from_slice(value);
        out
    }

    fn refusal(rpc: &str, message: &[u8]) -> Option<String> {
        let b = bounds();
        let shape = b.methods[rpc];
        b.check(shape, message, 0)
            .err()
            .map(|r| r.status(&b.shapes[shape].name).message().to_owned())
    }

    const AUTHORIZE: &str = "/steward.authority.v1.AuthorityService/Authorize";
    const GET_LEASE: &str = "/steward.broker.v1.CredentialBroker/GetLease";

    #[test]
    fn a_long_field_is_named_however_deep() {
        // AuthorizeRequest.principal (1) → Principal.workload (1).
        let inner = len_field(1, &vec![b'q'; 5000]);
        let message = len_field(1, &inner);
        let text = refusal(AUTHORIZE, &message).unwrap();
        assert!(
            text.contains("`principal.workload` is 5000 bytes long"),
            "{text}"
        );
        assert!(!text.contains("qqq"), "{text}");
    }

    #[test]
    fn short_fields_unknown_fields_and_scalars_pass() {
        let mut message = len_field(1, b"lease-1");
        key(99, WIRE_VARINT, &mut message);
        put_varint(7, &mut message);
        key(98, WIRE_FIXED32, &mut message);
        message.extend_from_slice(&[0; 4]);
        message.extend(len_field(97, &vec![0; 100_000]));
        assert_eq!(refusal(GET_LEASE, &message), None);
    }

    #[test]
    fn text_that_is_not_utf8_and_cut_messages_are_refused() {
        let text = refusal(GET_LEASE, &len_field(1, &[0xff, 0xfe])).unwrap();
        assert!(text.contains("`lease_id` is not valid UTF-8"), "{text}");
        let mut cut = len_field(1, b"lease");
        cut.truncate(4);
        let text = refusal(GET_LEASE, &cut).unwrap();
        assert!(
            text.contains("not a well-formed steward.broker.v1.GetLeaseRequest"),
            "{text}"
        );
        let mut wrong = Vec::new();
        key(1, WIRE_VARINT, &mut wrong);
        put_varint(1, &mut wrong);
        let text = refusal(GET_LEASE, &wrong).unwrap();
        assert!(text.contains("`lease_id`"), "{text}");
    }

    #[test]
    fn a_named_field_gets_its_own_limit_and_a_typo_is_refused() {
        const NAMED: &[(&str, usize)] = &[("steward.broker.v1.GetLeaseRequest.lease_id", 10_000)];
        let b = Bounds::new(
            steward_proto::FILE_DESCRIPTOR_SET,
            NAMED,
            DEFAULT_MAX_REQUEST_BYTES,
        )
        .unwrap();
        let shape = b.methods[GET_LEASE];
        assert!(b.check(shape, &len_field(1, &[b'a'; 9000]), 0).is_ok());
        const TYPO: &[(&str, usize)] = &[("steward.broker.v1.GetLeaseRequest.leaseid", 1)];
        let error = Bounds::new(
            steward_proto::FILE_DESCRIPTOR_SET,
            TYPO,
            DEFAULT_MAX_REQUEST_BYTES,
        )
        .unwrap_err();
        assert!(error.contains("leaseid"), "{error}");
    }

    #[test]
    fn an_oversized_message_names_the_field_from_its_start() {
        let b = bounds();
        let shape = b.methods[AUTHORIZE];
        let mut prefix = Vec::new();
        key(1, WIRE_LEN, &mut prefix);
        put_varint(10 << 20, &mut prefix);
        key(1, WIRE_LEN, &mut prefix);
        put_varint((10 << 20) - 8, &mut prefix);
        prefix.extend_from_slice(b"qqqq");
        let refusal = b.oversized_field(shape, &prefix, 0).unwrap();
        assert_eq!(refusal.field(), "principal.workload");
    }

    #[test]
    fn streaming_requests_are_left_to_their_handlers() {
        let b = bounds();
        assert!(
            !b.methods
                .contains_key("/steward.inventory.v1.InventoryService/WatchIdentityChanges")
        );
        assert!(
            b.methods
                .contains_key("/steward.audit.v1.AuditService/Subscribe")
        );
        assert!(b.methods.contains_key(GET_LEASE));
    }
}
