//! The Workload API connection as h2 sees it: a percent-encoded
//! `:authority` made acceptable, nothing else changed.
//!
//! # Why
//!
//! Over a Unix socket the `:authority` pseudo-header names nothing the server
//! uses: the socket is the address. gRPC's C core (grpcio, hence py-spiffe)
//! sends the socket path percent-encoded as a reg-name
//! (`tmp%2Fspire%2Fworkload.sock`), which RFC 3986 §3.2.2 allows
//! (`reg-name = *( unreserved / pct-encoded / sub-delims )`). The `http`
//! crate's `Authority` refuses `%` in a host, and h2 turns that refusal into
//! a `PROTOCOL_ERROR` stream reset, logged at debug level only (hyperium/h2
//! #487, grpc/grpc#38142); SPIRE's Go agent accepts the same request.
//!
//! h2 parses the pseudo-headers before any tower layer or tonic interceptor
//! exists, and neither h2 nor hyper has an option to relax the check. So the
//! fix sits on the byte stream, between the Unix socket and h2: this wrapper
//! parses the frames the client sends and decodes every header block with a
//! mirror of the client's HPACK state ([`crate::hpack`]).
//!
//! # What is changed, exactly
//!
//! Only a `:authority` sent as a literal whose value (1) is a syntactically
//! valid RFC 3986 authority, (2) is refused by `http::uri::Authority`, and
//! (3) is accepted once every `%` of its host is replaced by `-`. That
//! replacement keeps the value's length, so the entry it may add to the HPACK
//! dynamic table has the same size on both sides: the client's encoder and
//! h2's decoder evict the same entries and every later index resolves alike.
//! The block is then re-framed (HEADERS + CONTINUATION, at most 16 384 bytes
//! each, the size every HTTP/2 peer must accept) without padding.
//!
//! Everything else passes byte for byte: every other frame, every block
//! without such a field, and any value that is not a valid authority (h2
//! still refuses those). Whenever this wrapper meets something it does not
//! understand (a bad preface, an undecodable block, a frame bigger than h2
//! accepts, a header block larger than [`MAX_BLOCK`], a CONTINUATION out of
//! place, a PUSH_PROMISE from a client), it stops normalising and forwards
//! the rest of the connection verbatim, so h2 takes exactly the decision it
//! would have taken without it. The Rust clients (tonic with
//! `http://localhost`, the `spiffe` crate) send a valid authority and their
//! blocks are never touched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tracing::debug;

use crate::hpack::{self, DEFAULT_TABLE_SIZE, Decoder};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame header.
const FRAME_HEADER: usize = 9;

/// Largest frame payload handled here: the `SETTINGS_MAX_FRAME_SIZE` every
/// peer accepts and the one tonic's h2 server keeps.
const MAX_FRAME: usize = 16_384;

/// Largest header block (all its frames) buffered while it is decoded.
pub(crate) const MAX_BLOCK: usize = 64 * 1024;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// Bytes read at once from the socket.
const READ_CHUNK: usize = 8192;

/// A client connection whose `:authority` fields h2 can parse.
#[derive(Debug)]
pub(crate) struct Normalised<IO> {
    inner: IO,
    /// Bytes read from the client and not yet processed.
    raw: Vec<u8>,
    /// Bytes ready for h2.
    out: Vec<u8>,
    /// How far `out` has been handed to h2.
    out_pos: usize,
    state: State,
    decoder: Decoder,
    block: Option<Block>,
    eof: bool,
}

/// Where the parser stands in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preface,
    FrameHeader,
    /// Forwarding the payload of a frame that is passed unchanged.
    Forward(usize),
    /// Not normalising any more: everything passes as it is.
    Verbatim,
}

/// A header block being collected (HEADERS, then CONTINUATIONs).
#[derive(Debug)]
struct Block {
    stream_id: u32,
    /// END_STREAM and PRIORITY of the HEADERS frame.
    flags: u8,
    /// The priority fields, when PRIORITY is set.
    priority: Vec<u8>,
    fragment: Vec<u8>,
    /// The frames exactly as received.
    original: Vec<u8>,
}

impl<IO> Normalised<IO> {
    /// Wraps a freshly accepted connection.
    pub(crate) fn new(inner: IO) -> Self {
        Self {
            inner,
            raw: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            state: State::Preface,
            decoder: Decoder::new(DEFAULT_TABLE_SIZE),
            block: None,
            eof: false,
        }
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) {
        loop {
            match self.state {
                State::Verbatim => {
                    self.out.append(&mut self.raw);
                    return;
                }
                State::Preface => {
                    if self.raw.len() < PREFACE.len() {
                        return;
                    }
                    if self.raw[..PREFACE.len()] != PREFACE[..] {
                        self.give_up("not an http/2 client preface");
                        continue;
                    }
                    self.out.extend(self.raw.drain(..PREFACE.len()));
                    self.state = State::FrameHeader;
                }
                State::Forward(left) => {
                    let n = left.min(self.raw.len());
                    self.out.extend(self.raw.drain(..n));
                    if n == left {
                        self.state = State::FrameHeader;
                    } else {
                        self.state = State::Forward(left - n);
                        return;
                    }
                }
                State::FrameHeader => {
                    if self.raw.len() < FRAME_HEADER {
                        return;
                    }
                    let len = usize::from(self.raw[0]) << 16
                        | usize::from(self.raw[1]) << 8
                        | usize::from(self.raw[2]);
                    let kind = self.raw[3];
                    let stream_id = u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]])
                        & 0x7fff_ffff;
                    let in_block = self.block.as_ref().map(|b| b.stream_id);
                    match (kind, in_block) {
                        (CONTINUATION, Some(id)) if id == stream_id => {}
                        (HEADERS, None) => {}
                        (_, Some(_)) => {
                            self.give_up("a frame interleaved in a header block");
                            continue;
                        }
                        (CONTINUATION | PUSH_PROMISE, None) => {
                            self.give_up("continuation or push_promise out of place");
                            continue;
                        }
                        (_, None) => {
                            self.out.extend(self.raw.drain(..FRAME_HEADER));
                            self.state = State::Forward(len);
                            continue;
                        }
                    }
                    let collected = self.block.as_ref().map_or(0, |b| b.original.len());
                    if len > MAX_FRAME || collected + FRAME_HEADER + len > MAX_BLOCK {
                        self.give_up("header frame or block too large to normalise");
                        continue;
                    }
                    if self.raw.len() < FRAME_HEADER + len {
                        return;
                    }
                    let frame: Vec<u8> = self.raw.drain(..FRAME_HEADER + len).collect();
                    if !self.take_header_frame(frame) {
                        continue;
                    }
                }
            }
        }
    }

    /// Adds a HEADERS or CONTINUATION frame to the current block, and
    /// finishes the block on END_HEADERS. False if it gave up.
    fn take_header_frame(&mut self, frame: Vec<u8>) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER..];
        let (priority, fragment) = if kind == HEADERS {
            let mut body = payload;
            let mut pad = 0;
            if flags & PADDED != 0 {
                let Some((&p, rest)) = body.split_first() else {
                    return self.give_up_with(frame, "padded headers frame without pad length");
                };
                pad = usize::from(p);
                body = rest;
            }
            let mut priority: &[u8] = &[];
            if flags & PRIORITY != 0 {
                if body.len() < 5 {
                    return self.give_up_with(frame, "headers frame too short for its priority");
                }
                (priority, body) = body.split_at(5);
            }
            if pad > body.len() {
                return self.give_up_with(frame, "headers frame padding longer than the frame");
            }
            (priority.to_vec(), body[..body.len() - pad].to_vec())
        } else {
            (Vec::new(), payload.to_vec())
        };
        let block = self.block.get_or_insert_with(|| Block {
            stream_id,
            flags: flags & (END_STREAM | PRIORITY),
            priority,
            fragment: Vec::new(),
            original: Vec::new(),
        });
        block.fragment.extend_from_slice(&fragment);
        block.original.extend_from_slice(&frame);
        if flags & END_HEADERS != 0 {
            self.finish_block();
        }
        true
    }

    /// Decodes the collected block and emits it, rewritten if needed.
    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let fields = match self.decoder.decode(&block.fragment) {
            Ok(fields) => fields,
            Err(e) => {
                self.out.extend_from_slice(&block.original);
                self.give_up(&format!("undecodable header block: {e:?}"));
                return;
            }
        };
        let mut edits = Vec::new();
        for field in &fields {
            if field.name != b":authority" {
                continue;
            }
            let Some(range) = &field.literal_value else {
                continue;
            };
            if let Some(value) = normalised_authority(&field.value) {
                debug!(
                    stream_id = block.stream_id,
                    authority = %String::from_utf8_lossy(&field.value),
                    normalised = %String::from_utf8_lossy(&value),
                    "percent-encoded :authority normalised"
                );
                edits.push((range.clone(), value));
            }
        }
        if edits.is_empty() {
            self.out.extend_from_slice(&block.original);
            return;
        }
        let mut fragment = Vec::with_capacity(block.fragment.len());
        let mut at = 0;
        for (range, value) in edits {
            fragment.extend_from_slice(&block.fragment[at..range.start]);
            hpack::raw_string(&value, &mut fragment);
            at = range.end;
        }
        fragment.extend_from_slice(&block.fragment[at..]);
        self.emit_block(&block, &fragment);
    }

    /// Frames `fragment` as HEADERS (+ CONTINUATION) for `block`'s stream.
    fn emit_block(&mut self, block: &Block, fragment: &[u8]) {
        let first_room = MAX_FRAME - block.priority.len();
        let (first, mut rest) = fragment.split_at(fragment.len().min(first_room));
        let end = if rest.is_empty() { END_HEADERS } else { 0 };
        let mut payload = block.priority.clone();
        payload.extend_from_slice(first);
        self.push_frame(HEADERS, block.flags | end, block.stream_id, &payload);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let end = if rest.is_empty() { END_HEADERS } else { 0 };
            self.push_frame(CONTINUATION, end, block.stream_id, chunk);
        }
    }

    fn push_frame(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
        let len = payload.len().to_be_bytes();
        self.out.extend_from_slice(&len[len.len() - 3..]);
        self.out.push(kind);
        self.out.push(flags);
        self.out.extend_from_slice(&stream_id.to_be_bytes());
        self.out.extend_from_slice(payload);
    }

    /// Forwards `frame` as received, then everything after it.
    fn give_up_with(&mut self, frame: Vec<u8>, why: &str) -> bool {
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.original);
        }
        self.out.extend_from_slice(&frame);
        self.give_up(why);
        false
    }

    /// Stops normalising: what is buffered and all that follows pass as is.
    fn give_up(&mut self, why: &str) {
        debug!(
            reason = why,
            "workload api connection passed to h2 unchanged from here on"
        );
        if let Some(block) = self.block.take() {
            self.out.extend_from_slice(&block.original);
        }
        self.state = State::Verbatim;
    }
}

/// The value h2 will accept in place of `value`, if `value` is a valid RFC
/// 3986 authority that the `http` crate refuses only for the `%` of its
/// host; `None` when `value` is to be left as it is.
pub(crate) fn normalised_authority(value: &[u8]) -> Option<Vec<u8>> {
    if http::uri::Authority::try_from(value).is_ok() || !is_rfc3986_reg_name_authority(value) {
        return None;
    }
    let host_start = value.iter().rposition(|&b| b == b'@').map_or(0, |at| at + 1);
    let mut out = value.to_vec();
    for b in &mut out[host_start..] {
        if *b == b'%' {
            *b = b'-';
        }
    }
    http::uri::Authority::try_from(out.as_slice())
        .is_ok()
        .then_some(out)
}

/// `[ userinfo "@" ] reg-name [ ":" port ]` (RFC 3986 §3.2). IP literals
/// are left to the `http` crate, which accepts the valid ones.
fn is_rfc3986_reg_name_authority(value: &[u8]) -> bool {
    let (userinfo, host_port) = match value.iter().rposition(|&b| b == b'@') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (&value[..0], value),
    };
    let (host, port) = match host_port.iter().rposition(|&b| b == b':') {
        Some(colon) => (&host_port[..colon], &host_port[colon + 1..]),
        None => (host_port, &host_port[..0]),
    };
    !host.is_empty()
        && pct_encoded_of(userinfo, |b| is_unreserved_or_sub_delim(b) || b == b':')
        && pct_encoded_of(host, is_unreserved_or_sub_delim)
        && port.iter().all(u8::is_ascii_digit)
}

/// Whether `s` is made of bytes `allowed` accepts and `%XX` escapes.
fn pct_encoded_of(s: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            match s.get(i + 1..i + 3) {
                Some([a, b]) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i += 3,
                _ => return false,
            }
        } else if allowed(s[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

fn is_unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Normalised<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A truncated frame at the end goes to h2 as it is.
                this.out.append(&mut this.raw);
                if this.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process();
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Normalised<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Normalised<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers_frame(flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut n = Normalised::new(());
        n.push_frame(HEADERS, flags, stream, payload);
        n.out
    }

    /// A Huffman-coded percent-encoded authority in a padded HEADERS frame
    /// with priority, split over a CONTINUATION: re-framed without padding,
    /// priority and END_STREAM kept, value rewritten; the next block passes
    /// byte for byte.
    #[test]
    fn huffman_value_in_a_padded_split_block_is_rewritten() {
        let mut block = vec![0x41]; // literal, incremental indexing, name :authority
        hpack::huffman_string(b"tmp%2Fw.sock", &mut block);
        block.push(0x83); // :method POST
        let (head, tail) = block.split_at(4);
        let mut payload = vec![3]; // pad length
        payload.extend([0x80, 0, 0, 0, 7]); // priority
        payload.extend_from_slice(head);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(PADDED | PRIORITY | END_STREAM, 1, &payload));
        let mut continuation = Normalised::new(());
        continuation.push_frame(CONTINUATION, END_HEADERS, 1, tail);
        input.extend(continuation.out);
        let untouched = headers_frame(END_HEADERS, 3, &[0xbe, 0x83]);
        input.extend(&untouched);

        let mut n = Normalised::new(());
        // Byte by byte: every partial state is met.
        for b in input {
            n.raw.push(b);
            n.process();
        }
        assert_eq!(n.state, State::FrameHeader);
        let mut expected_block = vec![0x41];
        hpack::raw_string(b"tmp-2Fw.sock", &mut expected_block);
        expected_block.push(0x83);
        let mut expected_payload = vec![0x80, 0, 0, 0, 7];
        expected_payload.extend(&expected_block);
        let mut expected = PREFACE.to_vec();
        expected.extend(headers_frame(
            PRIORITY | END_STREAM | END_HEADERS,
            1,
            &expected_payload,
        ));
        expected.extend(untouched);
        assert_eq!(n.out, expected);
    }

    #[test]
    fn an_undecodable_block_passes_verbatim_with_all_that_follows() {
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(END_HEADERS, 1, &[0x80])); // index 0
        input.extend(headers_frame(END_HEADERS, 3, &[0x41, 0x03, b'a', b'%', b'b']));
        let mut n = Normalised::new(());
        n.raw = input.clone();
        n.process();
        assert_eq!(n.state, State::Verbatim);
        assert_eq!(n.out, input);
    }

    #[test]
    fn which_authorities_are_normalised() {
        struct Case {
            name: &'static str,
            input: &'static str,
            expected: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "grpcio unix path",
                input: "tmp%2Fwl%2Fworkload.sock",
                expected: Some("tmp-2Fwl-2Fworkload.sock"),
            },
            Case {
                name: "space escaped",
                input: "tmp%2Fa%20b%2Fw.sock",
                expected: Some("tmp-2Fa-20b-2Fw.sock"),
            },
            Case {
                name: "with a port",
                input: "a%2Fb:50051",
                expected: Some("a-2Fb:50051"),
            },
            Case {
                name: "userinfo kept",
                input: "u%40x@a%2Fb",
                expected: Some("u%40x@a-2Fb"),
            },
            Case {
                name: "already valid: localhost",
                input: "localhost",
                expected: None,
            },
            Case {
                name: "already valid: tonic default",
                input: "[::]:50051",
                expected: None,
            },
            Case {
                name: "already valid: ipv6 zone",
                input: "[fe80::1%25eth0]:1",
                expected: None,
            },
            Case {
                name: "bad escape",
                input: "a%2",
                expected: None,
            },
            Case {
                name: "bad escape digits",
                input: "a%zzb",
                expected: None,
            },
            Case {
                name: "raw slash",
                input: "/tmp/workload.sock",
                expected: None,
            },
            Case {
                name: "space",
                input: "a b",
                expected: None,
            },
            Case {
                name: "non-digit port",
                input: "a%2Fb:http",
                expected: None,
            },
            Case {
                name: "empty host",
                input: ":80",
                expected: None,
            },
            Case {
                name: "empty",
                input: "",
                expected: None,
            },
            Case {
                name: "two colons",
                input: "a%2F:1:2",
                expected: None,
            },
        ];
        for case in cases {
            let got = normalised_authority(case.input.as_bytes());
            assert_eq!(got.as_deref(), case.expected.map(str::as_bytes), "{}", case.name);
        }
    }
}
