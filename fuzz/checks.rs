//! The fuzz checks, one `pub fn <target>(data: &[u8])` per target. Each runs a parser of the
//! switchyard library on the bytes and asserts what the parser promises: a round trip (what was
//! decoded, encoded again, decodes to the same value), a bound on what it holds or produces, or
//! that the same bytes give the same answer however they are cut into reads.
//!
//! Compiled twice: by each `fuzz/fuzz_targets/<target>.rs` (cargo fuzz, nightly) and by
//! `tests/suite/fuzz_corpus.rs`, which replays `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` through the same functions on stable.
//!
//! Where a check needs parameters (a size cap, how the input is cut into reads), they come from
//! the input's first byte, so the fuzzer explores them too.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use switchyard::wire;

/// A check: one input, a panic when it breaks what the parser promises.
pub type Check = fn(&[u8]);

/// Every target, by name: what the corpus replay walks.
pub const TARGETS: &[(&str, Check)] = &[
    ("ws_frames", ws_frames),
    ("ws_deflate", ws_deflate),
    ("sse", sse),
    ("http1_head", http1_head),
    ("http1_framing", http1_framing),
    ("chunked", chunked),
    ("tunnel_frames", tunnel_frames),
    ("sockjs", sockjs),
    ("longpoll_body", longpoll_body),
    ("config", config),
    ("redis_stream", redis_stream),
    ("engineio", engineio),
    ("socketio", socketio),
];

/// The first byte as parameters, and the rest.
fn params(data: &[u8]) -> Option<(u8, &[u8])> {
    data.split_first().map(|(c, rest)| (*c, rest))
}

/// `data` cut into reads of `step` bytes (the last one shorter).
fn pieces(data: &[u8], step: usize) -> impl Iterator<Item = &[u8]> {
    data.chunks(step.max(1))
}

// ---------------------------------------------------------------------------------------------
// WebSocket: the client-frame decoder (src/wire/ws.rs), with and without permessage-deflate.

/// What a decoder made of a stream: its messages, and the violation that ended it, if any.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    messages: Vec<wire::ws::Incoming>,
    refused: Option<wire::ws::Violation>,
}

fn ws_decode(data: &[u8], max: usize, deflate: bool, step: usize) -> Decoded {
    let mut d = if deflate {
        wire::ws::Decoder::with_deflate(max)
    } else {
        wire::ws::Decoder::new(max)
    };
    let mut messages = Vec::new();
    let mut pushed = 0;
    for piece in pieces(data, step) {
        d.push(piece);
        pushed += piece.len();
        loop {
            match d.next_message() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(v) => {
                    return Decoded {
                        messages,
                        refused: Some(v),
                    }
                }
            }
            // What the decoder holds is what came and was not returned yet, with the slack
            // of a growing buffer: never more than a small multiple of the bytes pushed.
            assert!(
                d.held() <= 4 * pushed + 4096,
                "decoder holds {} bytes after {pushed} pushed",
                d.held()
            );
        }
        assert!(
            d.held() <= 4 * pushed + 4096,
            "decoder holds {} bytes after {pushed} pushed",
            d.held()
        );
    }
    Decoded {
        messages,
        refused: None,
    }
}

/// One client frame: masked, with `rsv1` for a compressed message's first frame.
fn client_frame(out: &mut Vec<u8>, fin: bool, rsv1: bool, op: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(u8::from(fin) << 7 | u8::from(rsv1) << 6 | op);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

fn ws_check(data: &[u8], deflate: bool) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let max = [0usize, 1, 125, 126, 1000, 65_536, 1 << 20, 7][usize::from(cfg & 7)];
    let step = 1 + usize::from(cfg >> 3);
    let whole = ws_decode(data, max, deflate, data.len());
    // However the stream is cut into reads: the same messages and the same refusal.
    assert_eq!(
        whole,
        ws_decode(data, max, deflate, step),
        "cut into {step}-byte reads"
    );
    use wire::ws::Incoming;
    for m in &whole.messages {
        match m {
            Incoming::Text(t) => {
                assert!(t.len() <= max, "a {}-byte text over max {max}", t.len());
                assert!(std::str::from_utf8(t).is_ok(), "a text message not UTF-8");
            }
            Incoming::Binary(b) => assert!(b.len() <= max, "a {}-byte binary over {max}", b.len()),
            Incoming::Ping(p) | Incoming::Pong(p) => assert!(p.len() <= 125),
            Incoming::Close(c) => {
                assert!(c.is_none_or(|c| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)))
            }
        }
    }
    if !deflate {
        // Nothing inflates: the messages are made of the input's bytes.
        let total: usize = whole.messages.iter().map(ws_len).sum();
        assert!(total <= data.len());
    }
    // Round trip: the messages as client frames (data messages in two fragments, compressed
    // when the decoder takes compression and it makes them smaller) decode to the same.
    let mut again = Vec::new();
    let mask = [cfg, 0x5a, cfg.wrapping_mul(7), 0xa5];
    for m in &whole.messages {
        let (op, payload): (u8, &[u8]) = match m {
            Incoming::Text(t) => (wire::ws::OP_TEXT, t),
            Incoming::Binary(b) => (wire::ws::OP_BINARY, b),
            Incoming::Ping(p) => (wire::ws::OP_PING, p),
            Incoming::Pong(p) => (wire::ws::OP_PONG, p),
            Incoming::Close(None) => (wire::ws::OP_CLOSE, &[]),
            Incoming::Close(Some(c)) => {
                client_frame(
                    &mut again,
                    true,
                    false,
                    wire::ws::OP_CLOSE,
                    &c.to_be_bytes(),
                    mask,
                );
                continue;
            }
        };
        if op >= wire::ws::OP_CLOSE {
            client_frame(&mut again, true, false, op, payload, mask);
            continue;
        }
        let compressed = deflate
            .then(|| {
                wire::deflate::compress(
                    payload,
                    wire::deflate::Agreed {
                        server_bits: 9 + cfg % 7,
                    },
                )
            })
            .flatten();
        let (body, rsv1) = match &compressed {
            Some(c) => (&c[..], true),
            None => (payload, false),
        };
        let cut = body.len() / 2;
        client_frame(&mut again, false, rsv1, op, &body[..cut], mask);
        client_frame(&mut again, true, false, 0, &body[cut..], mask);
    }
    let redecoded = ws_decode(&again, max, deflate, again.len());
    assert_eq!(redecoded.refused, None, "re-encoded messages refused");
    assert_eq!(redecoded.messages, whole.messages, "round trip");
}

fn ws_len(m: &wire::ws::Incoming) -> usize {
    use wire::ws::Incoming;
    match m {
        Incoming::Text(b) | Incoming::Binary(b) | Incoming::Ping(b) | Incoming::Pong(b) => b.len(),
        Incoming::Close(_) => 0,
    }
}

/// The WebSocket decoder without extensions.
pub fn ws_frames(data: &[u8]) {
    ws_check(data, false);
}

/// The WebSocket decoder with permessage-deflate, and `inflate` on its own.
pub fn ws_deflate(data: &[u8]) {
    ws_check(data, true);
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let limit = [0usize, 1, 64, 1000, 65_536, 1 << 20][usize::from(cfg % 6)];
    let first = wire::deflate::inflate(data, limit);
    // The inflater is per thread and reused: an earlier message leaves nothing behind.
    assert_eq!(first, wire::deflate::inflate(data, limit), "inflate twice");
    if let Ok(plain) = first {
        assert!(
            plain.len() <= limit,
            "inflated {} over {limit}",
            plain.len()
        );
        let agreed = wire::deflate::Agreed {
            server_bits: 9 + (cfg >> 4) % 7,
        };
        if let Some(c) = wire::deflate::compress(&plain, agreed) {
            assert!(c.len() < plain.len());
            assert_eq!(
                wire::deflate::inflate(&c, limit),
                Ok(plain),
                "compress, inflate"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SSE: the WHATWG stream parser (src/wire/sse.rs).

struct SseRun {
    events: Vec<wire::sse::ParsedEvent>,
    last_id: String,
    retry: Option<u64>,
    oversized: u64,
}

fn sse_parse(data: &[u8], max: usize, step: usize) -> SseRun {
    let mut p = wire::sse::SseParser::new(max);
    let mut events = Vec::new();
    for piece in pieces(data, step) {
        p.push(piece, &mut events);
    }
    SseRun {
        events,
        last_id: p.last_event_id().to_owned(),
        retry: p.retry,
        oversized: p.oversized,
    }
}

pub fn sse(data: &[u8]) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let max = [1usize, 16, 64, 1024, 1 << 20][usize::from(cfg % 5)];
    let step = 1 + usize::from(cfg / 5 % 23);
    let whole = sse_parse(data, max, data.len().max(1));
    let cut = sse_parse(data, max, step);
    assert_eq!(whole.events, cut.events, "cut into {step}-byte reads");
    assert_eq!(whole.last_id, cut.last_id);
    assert_eq!(whole.retry, cut.retry);
    assert_eq!(whole.oversized, cut.oversized);
    let mut total = 0;
    for e in &whole.events {
        assert!(
            e.data.len() <= max,
            "an event of {} bytes over {max}",
            e.data.len()
        );
        assert!(e.event.as_deref() != Some("message") && e.event.as_deref() != Some(""));
        total += e.data.len();
    }
    // Every data byte came from the input (an invalid byte becomes U+FFFD, three bytes).
    assert!(total <= 3 * data.len());
    // Round trip through the gateway's own encoder. Event names may have grown (U+FFFD), so
    // the second parse gets room for them.
    let mut encoded = BytesMut::new();
    for (i, e) in whole.events.iter().enumerate() {
        encoded.extend_from_slice(&wire::sse::encode_event(
            "e",
            i as u64,
            e.event.as_deref(),
            e.data.as_bytes(),
            false,
        ));
    }
    let again = sse_parse(&encoded, 4 * max + 64, encoded.len().max(1));
    assert_eq!(again.events, whole.events, "round trip");
    assert_eq!(again.oversized, 0);
    if let Some(n) = whole.events.len().checked_sub(1) {
        assert_eq!(
            wire::sse::resume_position(&again.last_id, "e"),
            Some(n as u64)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1: the edge's head reader (src/edge/http1.rs) and the hygiene rules
// (src/policy/hygiene.rs) on what it takes.

/// A reader that hands out `step` bytes per read and never waits.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl tokio::io::AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// Runs a future over a reader that never waits: it is ready on its first poll.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("waited on a reader that never waits"),
    }
}

/// A head as the reader returned it, without the bytes read past it (how many depends on how
/// the input was cut).
#[derive(Debug, PartialEq, Eq)]
enum HeadSeen {
    Parsed {
        head: Vec<u8>,
        shape: switchyard::edge::http1::Shape,
        req: String,
    },
    Plain {
        head: Vec<u8>,
        shape: switchyard::edge::http1::Shape,
        plain: switchyard::edge::http1::PlainHead,
    },
    Other,
    Closed,
}

fn read_head(data: &[u8], step: usize) -> HeadSeen {
    use switchyard::edge::http1::{read_head, Head};
    let mut io = Trickle { data, step };
    match ready(read_head(&mut io, BytesMut::new())) {
        Head::Parsed {
            req,
            bytes,
            len,
            shape,
        } => {
            assert!(len <= bytes.len() && data.starts_with(&bytes));
            head_checks(&req, &bytes[..len], shape);
            HeadSeen::Parsed {
                head: bytes[..len].to_vec(),
                shape,
                req: format!("{:?} {:?} {:?}", req.method, req.uri, req.headers),
            }
        }
        Head::Plain {
            bytes,
            len,
            shape,
            plain,
        } => {
            assert!(len <= bytes.len() && data.starts_with(&bytes));
            // A plain head parsed again in full is the same head.
            match switchyard::edge::http1::full_head(bytes.clone()) {
                Head::Parsed {
                    req,
                    len: full_len,
                    shape: full_shape,
                    ..
                } => {
                    assert_eq!((full_len, full_shape), (len, shape), "plain, then full");
                    head_checks(&req, &bytes[..len], shape);
                    // The full parse keeps a plain head's target as it came (a head whose
                    // target it would change is not plain), and its size is the one admission
                    // counts on a parsed head.
                    use switchyard::policy::hygiene::head_size;
                    assert_eq!(
                        Some(req.uri.to_string()),
                        raw_target(&bytes),
                        "target changed"
                    );
                    assert!(head_size(&req, plain.size).is_ok(), "plain size too small");
                    assert!(
                        head_size(&req, plain.size - 1).is_err(),
                        "plain size too large"
                    );
                }
                // A head the plain path passes on raw is one the full parse takes: before the
                // fix (see fuzz/README.md, "Findings") a target that was no URI or had a
                // fragment, or a Host with userinfo, passed raw while pingora's path refused or
                // rewrote it.
                _ => panic!("a plain head does not parse in full"),
            }
            let _ = (plain.host(&bytes), plain.path(&bytes));
            HeadSeen::Plain {
                head: bytes[..len].to_vec(),
                shape,
                plain,
            }
        }
        Head::Other(bytes) => {
            // Every byte read goes to pingora, unchanged.
            assert!(data.starts_with(&bytes), "bytes lost before the replay");
            HeadSeen::Other
        }
        Head::Closed => {
            assert!(
                data.iter().all(u8::is_ascii_whitespace),
                "closed on a stream with a request in it"
            );
            HeadSeen::Closed
        }
    }
}

/// A head's request target, as it came.
fn raw_target(head: &[u8]) -> Option<String> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    let _ = req.parse(head);
    req.path.map(str::to_owned)
}

/// What holds of every head the lean reader parsed: the hygiene rules take its framing, and
/// its body framing is the one its fields say.
fn head_checks(
    req: &pingora::http::RequestHeader,
    head: &[u8],
    shape: switchyard::edge::http1::Shape,
) {
    use switchyard::edge::http1::Framing;
    use switchyard::policy::hygiene;
    let fields = hygiene::raw_fields(head);
    assert!(
        hygiene::framing(&fields, req.version).is_ok(),
        "a lean head the hygiene rules refuse"
    );
    let lengths: Vec<&[u8]> = fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"content-length"))
        .map(|(_, v)| *v)
        .collect();
    match shape.body {
        Framing::Length(n) => {
            assert_eq!(lengths.len(), 1);
            let v = std::str::from_utf8(lengths[0]).ok();
            assert_eq!(v.and_then(|v| v.parse::<u64>().ok()), Some(n));
        }
        Framing::Empty => assert!(lengths.iter().all(|v| v.iter().all(|b| *b == b'0'))),
        Framing::Chunked => assert!(lengths.is_empty()),
        Framing::UntilClose => panic!("a request read until close"),
    }
    if shape.stream {
        assert!(matches!(shape.body, Framing::Empty));
    }
}

/// The edge's head reader, and the hygiene rules on what it parsed.
pub fn http1_head(data: &[u8]) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let step = [1usize, 7, 64, 2048, 9000][usize::from(cfg % 5)];
    let whole = read_head(data, data.len().max(1));
    let cut = read_head(data, step);
    assert_eq!(whole, cut, "read in {step}-byte reads");
    // The hygiene rules on any head: deterministic, and never a panic.
    let fields = switchyard::policy::hygiene::raw_fields(data);
    for (k, v) in &fields {
        assert!(!k.contains(&b'\n') && !v.contains(&b'\n'));
    }
    let _ = switchyard::policy::hygiene::framing(&fields, http::Version::HTTP_11);
}

// ---------------------------------------------------------------------------------------------
// HTTP/1 body framing (src/wire/http1.rs): Content-Length and Transfer-Encoding of requests
// and responses, kept across the head the proxy writes for the next hop.

pub fn http1_framing(data: &[u8]) {
    use wire::http1::{request_framing, response_framing, Forwarded, Framing};
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data) {
        if let Some(framing) = request_framing(req.headers) {
            let lengths: Vec<&[u8]> = req
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| h.value.trim_ascii())
                .collect();
            match framing {
                Framing::Length(n) => {
                    assert_eq!(lengths.len(), 1);
                    let v = std::str::from_utf8(lengths[0]).ok();
                    assert_eq!(v.and_then(|v| v.parse::<u64>().ok()), Some(n));
                }
                Framing::Chunked => assert!(lengths.is_empty()),
                Framing::Empty => assert!(lengths.len() <= 1),
                Framing::UntilClose => panic!("a request read until close"),
            }
            // The hygiene rules agree with the lean framing.
            let raw: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value.trim_ascii()))
                .collect();
            assert!(
                switchyard::policy::hygiene::framing(&raw, http::Version::HTTP_11).is_ok(),
                "lean framing {framing:?} that the hygiene rules refuse"
            );
            // The head written for the upstream frames the body the same way.
            let (Some(method), Some(path)) = (req.method, req.path) else {
                panic!("a complete head without a request line");
            };
            let mut out = Vec::new();
            let fwd = Forwarded {
                client_ip: None,
                tls: cfg & 1 == 1,
                host: None,
            };
            wire::http1::write_request_head(&mut out, method, path, req.headers, &fwd);
            let mut fields2 = [httparse::EMPTY_HEADER; 70];
            let mut req2 = httparse::Request::new(&mut fields2);
            assert_eq!(
                req2.parse(&out).map_err(|e| e.to_string()),
                Ok(httparse::Status::Complete(out.len())),
                "the forwarded head does not parse"
            );
            assert_eq!(
                request_framing(req2.headers),
                Some(framing),
                "the forwarded head frames the body differently"
            );
        }
    }
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    if let Ok(httparse::Status::Complete(_)) = resp.parse(data) {
        let status = resp.code.unwrap_or(0);
        let head_request = cfg & 2 == 2;
        if let Ok(framing) = response_framing(status, head_request, resp.headers) {
            let mut out = Vec::new();
            let close = cfg & 4 == 4;
            wire::http1::write_response_head(
                &mut out,
                status,
                resp.reason.unwrap_or(""),
                resp.headers,
                framing,
                &[],
                close,
            );
            let mut fields2 = [httparse::EMPTY_HEADER; 70];
            let mut resp2 = httparse::Response::new(&mut fields2);
            assert_eq!(
                resp2.parse(&out).map_err(|e| e.to_string()),
                Ok(httparse::Status::Complete(out.len())),
                "the forwarded head does not parse"
            );
            assert_eq!(
                response_framing(status, head_request, resp2.headers),
                Ok(framing),
                "the forwarded answer frames its body differently"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The chunked coding (src/wire/chunked.rs).

#[derive(Debug, PartialEq, Eq)]
struct ChunkedRun {
    outcome: Result<Option<usize>, wire::chunked::ChunkedError>,
    data_bytes: u64,
}

fn chunked_scan(data: &[u8], step: usize) -> ChunkedRun {
    use wire::chunked::{Chunked, Scanned};
    let mut c = Chunked::new();
    let mut at = 0;
    for piece in pieces(data, step) {
        match c.scan(piece) {
            Ok(Scanned::More) => {
                assert!(!c.is_done());
                at += piece.len();
            }
            Ok(Scanned::End(n)) => {
                assert!(n <= piece.len() && c.is_done());
                return ChunkedRun {
                    outcome: Ok(Some(at + n)),
                    data_bytes: c.data_bytes,
                };
            }
            Err(e) => {
                return ChunkedRun {
                    outcome: Err(e),
                    data_bytes: c.data_bytes,
                }
            }
        }
    }
    ChunkedRun {
        outcome: Ok(None),
        data_bytes: c.data_bytes,
    }
}

/// The chunks of a body the scanner accepted, read the simple way: size line, data, CRLF, ...,
/// the last chunk, trailers up to the empty line. Its end, and the chunks' data.
fn chunks_of(body: &[u8]) -> (usize, Vec<&[u8]>) {
    let line = |at: usize| -> (usize, &[u8]) {
        let end = body[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a line ends with CRLF");
        (at + end + 2, &body[at..at + end])
    };
    let mut chunks = Vec::new();
    let mut at = 0;
    loop {
        let (next, size_line) = line(at);
        let digits = size_line
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let size = u64::from_str_radix(std::str::from_utf8(&size_line[..digits]).unwrap(), 16)
            .expect("a chunk size");
        at = next;
        if size == 0 {
            loop {
                let (next, trailer) = line(at);
                at = next;
                if trailer.is_empty() {
                    return (at, chunks);
                }
            }
        }
        let end = at + usize::try_from(size).unwrap();
        chunks.push(&body[at..end]);
        assert_eq!(&body[end..end + 2], b"\r\n");
        at = end + 2;
    }
}

pub fn chunked(data: &[u8]) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let step = 1 + usize::from(cfg);
    let whole = chunked_scan(data, data.len().max(1));
    assert_eq!(
        whole,
        chunked_scan(data, step),
        "cut into {step}-byte reads"
    );
    let consumed = match whole.outcome {
        Ok(Some(end)) => end,
        _ => data.len(),
    };
    assert!(whole.data_bytes <= consumed as u64);
    if let Ok(Some(end)) = whole.outcome {
        // What the scanner accepted is a chunked body that ends where it said.
        let (ends, chunks) = chunks_of(&data[..end]);
        assert_eq!(ends, end);
        let total: usize = chunks.iter().map(|c| c.len()).sum();
        assert_eq!(total as u64, whole.data_bytes);
        // The same data chunked again (as a proxy would write it) scans to the same length.
        let mut again = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            again.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            again.extend_from_slice(c);
            again.extend_from_slice(b"\r\n");
        }
        again.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(
            chunked_scan(&again, again.len()),
            ChunkedRun {
                outcome: Ok(Some(again.len())),
                data_bytes: whole.data_bytes
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The pass-through tunnel's frame scanner (src/wire/frames.rs).

/// Totals of a scan: messages, closes, where a message over the cap was stopped (when its
/// header began in the call that stopped), the first close's code.
#[derive(Debug, PartialEq, Eq, Default)]
struct FrameTotals {
    messages: u64,
    closes: u64,
    oversize_at: Option<Option<usize>>,
    close_code: Option<u16>,
    boundary: bool,
}

fn frames_scan(data: &[u8], max: Option<u64>, step: usize) -> FrameTotals {
    let mut s = wire::frames::Scanner::new(max);
    let mut t = FrameTotals::default();
    let mut at = 0;
    for piece in pieces(data, step) {
        let r = s.feed(piece, false);
        t.messages += r.messages;
        t.closes += r.closes;
        assert!(r.consumed <= piece.len());
        if let Some(o) = r.oversize {
            t.oversize_at = Some(o.clean.then_some(at + r.consumed));
            break;
        }
        assert_eq!(r.consumed, piece.len());
        at += piece.len();
    }
    t.close_code = s.close_code();
    t.boundary = s.at_boundary();
    t
}

/// The same, read the simple way: the whole stream at once, frame by frame.
fn frames_reference(data: &[u8], max: Option<u64>) -> FrameTotals {
    let mut t = FrameTotals::default();
    let mut at = 0;
    let mut message_len: u64 = 0;
    t.boundary = true;
    loop {
        if data.len() < at + 2 {
            t.boundary = at == data.len();
            return t;
        }
        let (b0, b1) = (data[at], data[at + 1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let hlen = 2 + ext + mask;
        if data.len() < at + hlen {
            t.boundary = false;
            return t;
        }
        let len = match ext {
            2 => u64::from(u16::from_be_bytes([data[at + 2], data[at + 3]])),
            8 => u64::from_be_bytes(data[at + 2..at + 10].try_into().unwrap()),
            _ => u64::from(b1 & 0x7f),
        };
        let (fin, op) = (b0 & 0x80 != 0, b0 & 0x0f);
        let control = op & 0x8 != 0;
        if !control {
            if op != 0 {
                message_len = 0;
            }
            message_len = message_len.saturating_add(len);
            if max.is_some_and(|m| message_len > m) {
                t.oversize_at = Some(Some(at));
                t.boundary = true;
                return t;
            }
        }
        let payload = at + hlen;
        if op == 0x8 && t.close_code.is_none() {
            if len < 2 {
                t.close_code = Some(1005);
            } else if data.len() >= payload + 2 {
                let key = if mask == 4 {
                    [data[at + 2 + ext], data[at + 3 + ext]]
                } else {
                    [0, 0]
                };
                t.close_code = Some(u16::from_be_bytes([
                    data[payload] ^ key[0],
                    data[payload + 1] ^ key[1],
                ]));
            }
        }
        let end = (payload as u64).saturating_add(len);
        if end > data.len() as u64 {
            t.boundary = false;
            return t;
        }
        if !control && fin {
            t.messages += 1;
            message_len = 0;
        }
        if op == 0x8 {
            t.closes += 1;
        }
        at = end as usize;
    }
}

pub fn tunnel_frames(data: &[u8]) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let max = [None, Some(0), Some(1), Some(125), Some(126), Some(65_536)][usize::from(cfg % 6)];
    let step = 1 + usize::from(cfg / 6);
    let whole = frames_scan(data, max, data.len().max(1));
    let mut reference = frames_reference(data, max);
    if whole.oversize_at.is_some() {
        // Where the scan stopped, its state is mid-frame or not: nothing is promised.
        reference.boundary = whole.boundary;
    }
    assert_eq!(whole, reference, "scanner and reference disagree");
    let mut cut = frames_scan(data, max, step);
    if let (Some(None), Some(Some(_))) = (cut.oversize_at, whole.oversize_at) {
        // The oversize header began in an earlier read: its place is not known to the call.
        cut.oversize_at = whole.oversize_at;
    }
    cut.boundary = whole.boundary;
    assert_eq!(whole, cut, "cut into {step}-byte reads");
    // Asked to stop at boundaries, the scan stops at each frame's end, one frame at a time.
    // (At a boundary, a scan asked to stop consumes nothing: the first byte of each frame
    // goes alone, as a tunnel's next read would bring it.)
    let mut s = wire::frames::Scanner::new(max);
    let (mut at, mut messages, mut closes) = (0, 0, 0);
    while at < data.len() {
        let r = if s.at_boundary() {
            s.feed(&data[at..at + 1], false)
        } else {
            let r = s.feed(&data[at..], true);
            if r.oversize.is_none() && at + r.consumed < data.len() {
                assert!(s.at_boundary(), "stopped away from a boundary");
            }
            r
        };
        messages += r.messages;
        closes += r.closes;
        assert!(r.messages + r.closes <= 1, "one frame per stop");
        if r.oversize.is_some() {
            break;
        }
        assert!(
            r.consumed > 0,
            "a scan asked to stop consumed nothing mid-frame"
        );
        at += r.consumed;
    }
    assert_eq!((messages, closes), (whole.messages, whole.closes));
}

// ---------------------------------------------------------------------------------------------
// SockJS (src/wire/sockjs.rs): send bodies, WebSocket messages, JSONP forms.

fn sockjs_json(messages: &[String]) -> Vec<u8> {
    let mut out = b"[".to_vec();
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&wire::sockjs::quote(m));
    }
    out.push(b']');
    out
}

pub fn sockjs(data: &[u8]) {
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let max = [0usize, 1, 2, 1000][usize::from(cfg % 4)];
    match wire::sockjs::parse_messages(data, max) {
        Ok(messages) => {
            assert!(messages.len() <= max);
            let total: usize = messages.iter().map(String::len).sum();
            assert!(total <= data.len());
            let again = sockjs_json(&messages);
            assert_eq!(wire::sockjs::parse_messages(&again, max), Ok(messages));
        }
        Err(e) => assert_eq!(wire::sockjs::parse_messages(data, max), Err(e)),
    }
    if let Some(messages) = wire::sockjs::parse_ws_messages(data, max) {
        assert!(messages.len() <= max.max(1));
        let total: usize = messages.iter().map(String::len).sum();
        assert!(total <= data.len());
        if messages.len() == 1 {
            let one = wire::sockjs::quote(&messages[0]);
            assert_eq!(
                wire::sockjs::parse_ws_messages(&one, max),
                Some(messages.clone())
            );
        }
        if messages.len() <= max {
            let again = sockjs_json(&messages);
            assert_eq!(wire::sockjs::parse_ws_messages(&again, max), Some(messages));
        }
    }
    // The `quote` of any text is JSON for that text.
    let text = String::from_utf8_lossy(data);
    let quoted = wire::sockjs::quote(&text);
    assert_eq!(
        serde_json::from_slice::<String>(&quoted).ok().as_deref(),
        Some(&*text)
    );
    // A JSONP send's form: `d` decoded is never longer than the body, and any payload sent as
    // `d=` (percent-encoded) comes back.
    let form = "application/x-www-form-urlencoded; charset=UTF-8";
    assert_eq!(
        wire::sockjs::jsonp_payload("text/plain", data),
        Some(data.to_vec())
    );
    if let Some(d) = wire::sockjs::jsonp_payload(form, data) {
        assert!(d.len() <= data.len());
        let mut body = b"x=1&d=".to_vec();
        for b in &d {
            body.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
        assert_eq!(wire::sockjs::jsonp_payload(form, &body), Some(d));
    }
}

// ---------------------------------------------------------------------------------------------
// The long-poll POST body (src/transport/inbound.rs).

pub fn longpoll_body(data: &[u8]) {
    use switchyard::transport::inbound::{parse_body, BodyError, MAX_MESSAGES_PER_POST};
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let content_type = [
        "application/json",
        "Application/JSON; charset=utf-8",
        "application/octet-stream",
        "text/plain",
    ][usize::from(cfg % 4)];
    let body = Bytes::copy_from_slice(data);
    let parsed = parse_body(content_type, body.clone());
    assert_eq!(parsed, parse_body(content_type, body), "twice");
    match parsed {
        Ok(messages) => {
            assert!(messages.len() <= MAX_MESSAGES_PER_POST);
            let total: usize = messages.iter().map(|m| m.payload.len()).sum();
            assert!(
                total <= data.len(),
                "{total} bytes of messages from {}",
                data.len()
            );
            // Round trip: the messages as the JSON a client sends decode to the same.
            let mut json = b"[".to_vec();
            for (i, m) in messages.iter().enumerate() {
                if i > 0 {
                    json.push(b',');
                }
                if !m.binary {
                    assert!(std::str::from_utf8(&m.payload).is_ok());
                }
                json.extend_from_slice(&wire::longpoll::encode_message(&m.payload, m.binary, None));
            }
            json.push(b']');
            let again = parse_body("application/json", Bytes::from(json));
            match &again {
                Ok(a) => assert_eq!(a, &messages, "round trip"),
                Err(e) => panic!("re-encoded messages refused: {e:?}"),
            }
        }
        Err(BodyError::TooMany) => assert!(content_type.contains("json")),
        Err(BodyError::Malformed(_)) => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The config loader (src/config): YAML text to a validated config.

pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let base = std::path::Path::new("fuzz-config-base");
    let first = switchyard::config::load_str(text, base, "fuzz.yaml");
    let second = switchyard::config::load_str(text, base, "fuzz.yaml");
    // YAML breaks lines at LF, CR and CRLF (a lone CR is a line of its own in its errors).
    let lines = 1 + text.matches('\n').count() + text.replace("\r\n", "\n").matches('\r').count();
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "loaded twice");
            // Route names are unique (the loader says so when they are not).
            let mut names: Vec<&str> = a.routes.iter().map(|r| r.name.as_str()).collect();
            names.sort_unstable();
            assert!(
                names.windows(2).all(|w| w[0] != w[1]),
                "two routes named alike"
            );
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.errors, b.errors, "refused twice");
            assert!(!a.errors.is_empty(), "refused without a reason");
            for e in &a.errors {
                assert!(!e.message.is_empty());
                if let Some(l) = e.line {
                    assert!(l >= 1 && l <= lines, "error at line {l} of {lines}: {e:?}");
                }
            }
            let _ = a.to_string();
        }
        _ => panic!("loaded once, refused once"),
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster's stream entries (src/cluster/stream.rs): a Redis reply (RESP) to entries, and
// entries to the hub.

fn entry_value(e: &switchyard::cluster::stream::Entry) -> redis::Value {
    redis::Value::Array(vec![
        redis::Value::BulkString(e.id.clone().into_bytes()),
        redis::Value::Array(
            e.fields
                .iter()
                .flat_map(|(k, v)| {
                    [
                        redis::Value::BulkString(k.clone()),
                        redis::Value::BulkString(v.clone()),
                    ]
                })
                .collect(),
        ),
    ])
}

pub fn redis_stream(data: &[u8]) {
    use switchyard::cluster::stream::{apply, entries_of, streams_entries};
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let Ok(value) = redis::parse_redis_value(data) else {
        return;
    };
    let entries = if cfg & 1 == 0 {
        streams_entries(value)
    } else {
        entries_of(value)
    };
    let total: usize = entries
        .iter()
        .flat_map(|e| e.fields.iter())
        .map(|(k, v)| k.len() + v.len())
        .sum();
    // Integers become their digits: at most 20 bytes from the 4 of `:0\r\n`.
    assert!(
        total <= 8 * data.len(),
        "{total} bytes of fields from {}",
        data.len()
    );
    // Round trip: the entries as an XRANGE answer are the same entries.
    let again = entries_of(redis::Value::Array(
        entries.iter().map(entry_value).collect(),
    ));
    assert_eq!(again.len(), entries.len());
    for (a, b) in again.iter().zip(&entries) {
        assert_eq!((&a.id, &a.fields), (&b.id, &b.fields), "round trip");
    }
    // Applied to a hub: its ring only moves forward, each message is an entry's.
    let hub = switchyard::bridge::hub::Hub::clustered(64, 16, || 1);
    let kinds: Vec<(u64, Option<Vec<u8>>)> = entries
        .iter()
        .filter_map(|e| {
            let (a, b) = e.id.split_once('-')?;
            let (a, b) = (a.parse::<u64>().ok()?, b.parse::<u64>().ok()?);
            (b == 0).then(|| (a, e.field("p").map(<[u8]>::to_vec)))
        })
        .collect();
    let mut head = hub.head();
    for e in entries {
        apply(&hub, e, None, "fuzz-node");
        assert!(hub.head() >= head, "the hub went back");
        head = hub.head();
    }
    let backlog = hub.subscribe(Some(0)).backlog;
    assert!(backlog.len() <= 16);
    for w in backlog.windows(2) {
        assert!(w[0].seq < w[1].seq, "the ring out of order");
    }
    for m in &backlog {
        assert!(
            kinds.iter().any(|(seq, p)| *seq == m.seq
                && p.as_deref().unwrap_or_default() == &m.payload[..]),
            "a message no entry carried"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Engine.IO (src/wire/engineio.rs): packets and payloads, v3 and v4.

pub fn engineio(data: &[u8]) {
    use wire::engineio::{decode_payload, decode_text, encode_payload, Packet, Version};
    let Some((cfg, data)) = params(data) else {
        return;
    };
    let v = if cfg & 1 == 0 {
        Version::V3
    } else {
        Version::V4
    };
    let binary_body = cfg & 2 == 2;
    let max = [1usize, 2, 16, 1000][usize::from(cfg >> 2 & 3)];
    let body = Bytes::copy_from_slice(data);
    let decoded = decode_payload(v, body.clone(), binary_body, max);
    assert_eq!(decoded, decode_payload(v, body, binary_body, max), "twice");
    if let Ok(packets) = &decoded {
        assert!(!packets.is_empty() && packets.len() <= max);
        let total: usize = packets
            .iter()
            .map(|p| match p {
                Packet::Open(d) | Packet::Ping(d) | Packet::Pong(d) => d.len(),
                Packet::Message { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert!(total <= data.len());
        assert!(
            !packets.iter().any(|p| matches!(p, Packet::Open(_))),
            "a client's open"
        );
        // Round trip through the gateway's own payload encoder, binary or not.
        for binary_ok in [false, true] {
            let (encoded, binary) = encode_payload(v, packets, binary_ok);
            assert_eq!(
                decode_payload(v, encoded, binary, max).as_ref(),
                Ok(packets),
                "round trip (binary_ok {binary_ok})"
            );
        }
        // And each packet alone, as a WebSocket message.
        for p in packets {
            let (msg, binary) = wire::engineio::ws_message(v, p);
            let back = if binary {
                wire::engineio::decode_ws_binary(v, msg)
            } else {
                decode_text(v, msg)
            };
            assert_eq!(back.as_ref(), Ok(p), "as a WebSocket message");
        }
    }
    if let Some(p) = wire::engineio::jsonp_send_payload(data) {
        assert!(p.len() <= data.len());
    }
}

// ---------------------------------------------------------------------------------------------
// Socket.IO (src/wire/socketio.rs): packets.

pub fn socketio(data: &[u8]) {
    use wire::socketio::{decode, encode, MAX_ATTACHMENTS};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = decode(text) else {
        return;
    };
    assert!(p.attachments <= MAX_ATTACHMENTS);
    assert!(p.nsp.len() <= 256 && p.nsp.starts_with('/'));
    if let Some(d) = &p.data {
        assert!(serde_json::from_str::<serde_json::Value>(d).is_ok());
    }
    // Round trip: the packet encoded (its query after the namespace, as protocol 4's CONNECT
    // carries it) decodes to the same packet.
    let nsp = match &p.query {
        Some(q) => format!("{}?{q}", p.nsp),
        None => p.nsp.clone(),
    };
    let again = encode(p.kind, p.attachments, &nsp, p.id, p.data.as_deref());
    assert_eq!(decode(&again), Ok(p), "round trip of {again:?}");
}
