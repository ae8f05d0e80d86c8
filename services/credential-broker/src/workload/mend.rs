//! Mends the HTTP/2 `:authority` that gRPC C-core clients (Python, Ruby,
//! C++, PHP: py-spiffe among them) and grpc-java send over a Unix socket.
//! They send the socket's path (percent-encoded, or raw) as the authority,
//! which is no URI authority; the `h2` server the Workload API runs on
//! resets every such stream (RST_STREAM PROTOCOL_ERROR), so those clients
//! could not fetch an SVID at all. SPIRE's agent, a grpc-go server,
//! accepts any authority on its socket.
//!
//! [`Mended`] sits between the socket and the server and rewrites what the
//! client sends: every frame passes unchanged except header blocks, which
//! are decoded (HPACK, mirroring the client's dynamic table), given
//! `:authority: localhost` when theirs is not a valid authority, and
//! encoded again for the server (one HPACK context per direction pair, so
//! the server's decoder always matches what it is sent). What the server
//! sends back is not touched. The authority means nothing on a Unix socket:
//! who the caller is comes from the kernel's peer credentials.
//!
//! A connection that does not start with the HTTP/2 preface, or whose
//! header blocks cannot be decoded, is passed through as it is, for the
//! server to refuse.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value); re-encoded blocks are split to fit it.
const MAX_FRAME: usize = 16_384;
/// The largest header block mended; a larger one is passed on for the
/// server's own limit to refuse.
const MAX_BLOCK: usize = 256 * 1024;
/// The authority given to a stream whose own is not one.
const LOCALHOST: &[u8] = b"localhost";

/// A stream whose inbound HTTP/2 header blocks get a valid `:authority`.
pub struct Mended<S> {
    inner: S,
    /// Bytes read from the client, not yet handled.
    raw: BytesMut,
    /// Bytes ready for the server to read.
    out: BytesMut,
    state: State,
    /// A header block in progress: its stream, the HEADERS frame's flags
    /// and priority fields, and its fragments so far.
    block: Option<Block>,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2 as expected: everything passes unchanged.
    Through,
}

struct Block {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragments: Vec<u8>,
}

impl<S> Mended<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Preface,
            block: None,
            decoder: fluke_hpack::Decoder::new(),
            encoder: fluke_hpack::Encoder::new(),
        }
    }

    /// Moves whatever can be handled from `raw` to `out`.
    fn handle(&mut self) {
        loop {
            match self.state {
                State::Through => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return;
                }
                State::Preface => {
                    let seen = self.raw.len().min(PREFACE.len());
                    if self.raw[..seen] != PREFACE[..seen] {
                        self.state = State::Through;
                        continue;
                    }
                    if seen < PREFACE.len() {
                        return;
                    }
                    let preface = self.raw.split_to(PREFACE.len());
                    self.out.extend_from_slice(&preface);
                    self.state = State::Frames;
                }
                State::Frames => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let length = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    if self.raw.len() < FRAME_HEADER + length {
                        return;
                    }
                    let frame = self.raw.split_to(FRAME_HEADER + length);
                    self.frame(&frame);
                }
            }
        }
    }

    /// One whole frame from the client.
    fn frame(&mut self, frame: &[u8]) {
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        let open = self.block.as_ref().map(|b| b.stream);
        match (kind, open) {
            (HEADERS, None) => match headers_fragment(flags, payload) {
                Some((priority, fragment)) => {
                    self.block = Some(Block {
                        stream,
                        flags,
                        priority,
                        fragments: fragment.to_vec(),
                    });
                    if flags & END_HEADERS != 0 {
                        self.finish_block();
                    }
                }
                None => self.give_up(Some(frame)),
            },
            (CONTINUATION, Some(open)) if open == stream => {
                let Some(block) = self.block.as_mut() else {
                    return;
                };
                block.fragments.extend_from_slice(payload);
                if block.fragments.len() > MAX_BLOCK {
                    self.give_up(None);
                } else if flags & END_HEADERS != 0 {
                    self.finish_block();
                }
            }
            // Anything else inside a header block is the server's to refuse.
            (_, Some(_)) => self.give_up(Some(frame)),
            _ => self.out.extend_from_slice(frame),
        }
    }

    /// The header block is complete: decode, mend, encode, emit.
    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut headers = match self.decoder.decode(&block.fragments) {
            Ok(headers) => headers,
            Err(error) => {
                tracing::debug!(?error, "workload api: a header block does not decode");
                self.state = State::Through;
                self.out.extend_from_slice(&headers_frame(&block));
                return;
            }
        };
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" && !valid_authority(value) {
                *value = LOCALHOST.to_vec();
            }
        }
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.emit(&block, &encoded);
    }

    /// Frames `encoded` as a HEADERS frame (with the original's END_STREAM
    /// and priority) and as many CONTINUATION frames as it needs.
    fn emit(&mut self, block: &Block, encoded: &[u8]) {
        let head_room = MAX_FRAME - if block.priority.is_some() { 5 } else { 0 };
        let first = encoded.len().min(head_room);
        let (now, rest) = encoded.split_at(first);
        let mut flags = block.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut payload = Vec::with_capacity(first + 5);
        if let Some(priority) = block.priority {
            payload.extend_from_slice(&priority);
        }
        payload.extend_from_slice(now);
        self.put_frame(HEADERS, flags, block.stream, &payload);
        let mut chunks = rest.chunks(MAX_FRAME).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                END_HEADERS
            } else {
                0
            };
            self.put_frame(CONTINUATION, flags, block.stream, chunk);
        }
    }

    fn put_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let length = payload.len();
        self.out.reserve(FRAME_HEADER + length);
        self.out.put_u8((length >> 16) as u8);
        self.out.put_u8((length >> 8) as u8);
        self.out.put_u8(length as u8);
        self.out.put_u8(kind);
        self.out.put_u8(flags);
        self.out.put_u32(stream);
        self.out.extend_from_slice(payload);
    }

    /// Stops mending: what was held of a header block, then `frame`, then
    /// everything after goes to the server unchanged.
    fn give_up(&mut self, frame: Option<&[u8]>) {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&headers_frame(&block));
        }
        if let Some(frame) = frame {
            self.out.extend_from_slice(frame);
        }
        self.state = State::Through;
    }
}

/// A HEADERS frame's priority fields and header block fragment, or `None`
/// when its padding or priority do not fit.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        pad = usize::from(*rest.first()?);
        rest = &rest[1..];
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        priority = Some(<[u8; 5]>::try_from(rest.get(..5)?).ok()?);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad)?;
    Some((priority, &rest[..end]))
}

/// The held block as one unmended HEADERS frame (only for passing on what
/// cannot be mended; the server then refuses it).
fn headers_frame(block: &Block) -> Vec<u8> {
    let mut out = Vec::new();
    let length = block.fragments.len() + if block.priority.is_some() { 5 } else { 0 };
    out.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8]);
    out.push(HEADERS);
    out.push(block.flags & !PADDED);
    out.extend_from_slice(&block.stream.to_be_bytes());
    if let Some(priority) = block.priority {
        out.extend_from_slice(&priority);
    }
    out.extend_from_slice(&block.fragments);
    out
}

/// Whether `value` is an authority the server accepts as it is.
fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

impl<S: AsyncRead + Unpin> AsyncRead for Mended<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: whatever is left goes as it is.
                let left = this.raw.split();
                if left.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.out.extend_from_slice(&left);
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.handle();
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Mended<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Mended<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        let length = payload.len();
        out.put_u8((length >> 16) as u8);
        out.put_u8((length >> 8) as u8);
        out.put_u8(length as u8);
        out.put_u8(kind);
        out.put_u8(flags);
        out.put_u32(stream);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    /// What the server side reads after `client` wrote `bytes`.
    async fn through(bytes: Vec<u8>) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&bytes).await.unwrap();
        drop(client);
        let mut mended = Mended::new(server);
        let mut out = Vec::new();
        mended.read_to_end(&mut out).await.unwrap();
        out
    }

    type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

    /// Every header block in `bytes` (after the preface), as the server
    /// decodes it: its stream, its HEADERS frame's flags, its headers.
    fn header_lists(bytes: &[u8]) -> Vec<(u32, u8, HeaderList)> {
        let mut decoder = fluke_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE.len()..];
        let mut lists = Vec::new();
        let mut block: Option<(u32, u8, Vec<u8>)> = None;
        while rest.len() >= FRAME_HEADER {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + length];
            match kind {
                HEADERS => {
                    let (_, fragment) = headers_fragment(flags, payload).unwrap();
                    block = Some((stream, flags, fragment.to_vec()));
                }
                CONTINUATION => block.as_mut().unwrap().2.extend_from_slice(payload),
                _ => {}
            }
            if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
                let (stream, first_flags, fragments) = block.take().unwrap();
                lists.push((stream, first_flags, decoder.decode(&fragments).unwrap()));
            }
            rest = &rest[FRAME_HEADER + length..];
        }
        lists
    }

    fn request(authority: &[u8], extra: usize) -> HeaderList {
        let mut headers = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
        ];
        if extra > 0 {
            headers.push((b"x-padding".to_vec(), vec![b'a'; extra]));
        }
        headers
    }

    fn encoded(encoder: &mut fluke_hpack::Encoder, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())))
    }

    #[tokio::test]
    async fn a_socket_path_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut encoder = fluke_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = request(b"%2Frun%2Fspire%2Fagent.sock", 0);
        // Padded, with priority, in two fragments.
        let block = encoded(&mut encoder, &first);
        let (a, b) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        bytes.extend(frame(HEADERS, PADDED | PRIORITY, 1, &payload));
        bytes.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        bytes.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
        // The second request leans on the client's dynamic table.
        let second = request(b"/run/spire/agent.sock", 0);
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &encoded(&mut encoder, &second),
        ));
        // A valid authority is left alone; a big block is split to fit.
        let third = request(b"localhost:8081", 40_000);
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            5,
            &encoded(&mut encoder, &third),
        ));

        let out = through(bytes.clone()).await;
        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let lists = header_lists(&out);
        let mut want = first.clone();
        want[3].1 = LOCALHOST.to_vec();
        assert_eq!(lists[0].0, 1);
        assert_eq!(lists[0].1 & PRIORITY, PRIORITY);
        assert_eq!(lists[0].2, want);
        let mut want = second.clone();
        want[3].1 = LOCALHOST.to_vec();
        assert_eq!((lists[1].0, lists[1].1 & END_STREAM), (3, END_STREAM));
        assert_eq!(lists[1].2, want);
        assert_eq!((lists[2].0, &lists[2].2), (5, &third));
        // The DATA frame passed unchanged.
        let data = frame(0x0, END_STREAM, 1, b"\0\0\0\0\0");
        assert!(out.windows(data.len()).any(|w| w == data.as_slice()));
    }

    #[tokio::test]
    async fn what_is_not_http2_passes_as_it_is() {
        let bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(through(bytes.clone()).await, bytes);
        // A block that does not decode is passed on for the server to refuse.
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff]));
        bytes.extend(frame(0x0, 0, 1, b"rest"));
        assert_eq!(through(bytes.clone()).await, bytes);
    }
}
