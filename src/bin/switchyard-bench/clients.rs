//! The clients a scenario opens, each over one connection it is handed or opens itself:
//! SSE, WebSocket and long-poll subscribers (switchyard's cursor protocol or Nchan's) that hand
//! every message's payload to a callback, and WebSocket echo clients that time round trips.
//!
//! The subscribers speak raw HTTP/1.1 on a `TcpStream` (SSE bodies de-chunked, WebSocket frames
//! read by a small reader of their own) so that 10,000 of them cost the generator little and the
//! latency measured is the server's; the echo clients use tokio-tungstenite. Also here: the
//! client-side helpers the publishers share (`split_url`, `read_response`).

use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

pub async fn connect_from(source: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from(([127, 0, 0, source], 0)))?;
    let s = sock.connect(to).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// `http://host:port/path` or `ws://...` -> (address, path).
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .expect("a host:port address")
        .next()
        .expect("an address");
    (addr, format!("/{path}"))
}

/// One SSE subscriber over a raw socket: reads `data:` lines and hands each payload to `on`.
pub async fn sse_client(stream: TcpStream, host: &str, path: &str, mut on: impl FnMut(&str)) {
    let mut s = stream;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut body = Body::default();
    let mut pending = Vec::new();
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // The body's end may come in the same read as its last events: they are read first.
        let going = body.feed(&buf[..n], &mut pending);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..=end);
            if let Some(data) = line.trim_end_matches('\r').strip_prefix("data: ") {
                on(data);
            }
        }
        if !going {
            return;
        }
    }
}

/// What a WebSocket subscriber reports as it goes.
pub trait WsSeen {
    /// The handshake succeeded (with compression, when it was asked for).
    fn open(&mut self) {}
    /// `n` bytes read from the socket.
    fn read(&mut self, _n: usize) {}
    /// A text message's payload (inflated, when it came compressed).
    fn text(&mut self, t: &str);
}

/// One WebSocket subscriber over a raw socket: a hand-written handshake and frame reader, so
/// that 10,000 of them cost the load generator no more than SSE subscribers do (with
/// tokio-tungstenite they took the generator's whole core before the server's). Pings are
/// answered. With `deflate` it offers permessage-deflate (as browsers do), refuses an answer
/// without it, and inflates compressed messages (each on its own: the server keeps no context).
pub async fn ws_client(
    stream: TcpStream,
    host: &str,
    path: &str,
    deflate: bool,
    seen: &mut impl WsSeen,
) -> bool {
    ws_client_as(stream, host, path, deflate, false, seen).await
}

/// A client written to send: `text` masked with the zero key (which leaves it as is).
fn masked_text(text: &str) -> Vec<u8> {
    let mut f = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(text.as_bytes());
    f
}

/// A Socket.IO client's view of a WebSocket text message (Engine.IO 4, Socket.IO 5, as
/// socket.io-client 4 speaks them): the open packet is answered with a CONNECT to `/`, pings
/// with pongs; an event `42["message","TEXT"]` is TEXT; anything else is none of the feed's.
enum SocketIo {
    Reply(&'static str),
    Message(String),
    Nothing,
}

fn socketio_frame(t: &str) -> SocketIo {
    if t.starts_with("0{") {
        return SocketIo::Reply("40");
    }
    if t == "2" {
        return SocketIo::Reply("3");
    }
    let Some(event) = t.strip_prefix("42") else {
        return SocketIo::Nothing;
    };
    match serde_json::from_str::<(String, String)>(event) {
        Ok((name, text)) if name == "message" => SocketIo::Message(text),
        _ => SocketIo::Nothing,
    }
}

/// [`ws_client`], or with `socketio` a Socket.IO client over that WebSocket (see
/// [`socketio_frame`]): `seen` opens once the CONNECT is answered and sees the events' text.
pub async fn ws_client_as(
    stream: TcpStream,
    host: &str,
    path: &str,
    deflate: bool,
    socketio: bool,
    seen: &mut impl WsSeen,
) -> bool {
    let mut s = stream;
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames {
        deflate,
        ..Frames::default()
    };
    let mut opened = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return opened,
            Ok(n) => n,
        };
        seen.read(n);
        frames.raw.extend_from_slice(&buf[..n]);
        loop {
            match frames.next() {
                Ok(None) => break,
                Ok(Some(WsEvent::Open)) => {
                    opened = true;
                    if !socketio {
                        seen.open();
                    }
                }
                Ok(Some(WsEvent::Text(t))) if socketio => match socketio_frame(&t) {
                    SocketIo::Reply(r) => {
                        if s.write_all(&masked_text(r)).await.is_err() {
                            return opened;
                        }
                    }
                    SocketIo::Message(m) => seen.text(&m),
                    // The CONNECT's answer: joined.
                    SocketIo::Nothing if t.starts_with("40") => seen.open(),
                    SocketIo::Nothing => {}
                },
                Ok(Some(WsEvent::Text(t))) => seen.text(&t),
                Ok(Some(WsEvent::Ping(payload))) => {
                    // A masked pong (RFC 6455 §5.5.3); the zero key leaves the payload as is.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    if s.write_all(&pong).await.is_err() {
                        return opened;
                    }
                }
                Ok(Some(WsEvent::Close(_))) | Err(_) => return opened,
            }
        }
    }
}

/// The RFC 6455 §1.3 sample key, and the accept value a server must answer it with.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[derive(Debug, PartialEq)]
enum WsEvent {
    /// The server answered the handshake with 101 and the right accept value.
    Open,
    Text(String),
    Ping(Vec<u8>),
    /// A close frame, with its code when it has one.
    Close(Option<u16>),
}

/// A server's side of a WebSocket connection as it arrives: the handshake answer, then frames
/// (RFC 6455 §5.2: unmasked, text possibly fragmented).
#[derive(Default)]
struct Frames {
    raw: Vec<u8>,
    open: bool,
    /// permessage-deflate was offered: the answer must agree, and RSV1 marks a compressed message.
    deflate: bool,
    /// A fragmented message so far, and whether it came compressed.
    message: Vec<u8>,
    compressed: bool,
}

thread_local! {
    /// One inflater per thread, reset per message: without context takeover every message
    /// stands alone, so 10,000 subscribers need no inflater each.
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// One compressed message, inflated (RFC 7692 section 7.2.2: the sync flush's tail restored).
fn inflate(data: &[u8]) -> Result<Vec<u8>, String> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut input = Vec::with_capacity(data.len() + 4);
        input.extend_from_slice(data);
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(data.len() * 4 + 64);
        let start = d.total_in();
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            let taken = (d.total_in() - start) as usize;
            d.decompress_vec(&input[taken..], &mut out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("inflate: {e}"))?;
            if (d.total_in() - start) as usize == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    })
}

impl Frames {
    /// The next complete event in `raw`, None until more bytes arrive, or why the stream is
    /// not a WebSocket one.
    fn next(&mut self) -> Result<Option<WsEvent>, String> {
        if !self.open {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(None);
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            let accepted = head.starts_with("http/1.1 101")
                && head.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.trim() == "sec-websocket-accept"
                            && v.trim() == WS_ACCEPT.to_ascii_lowercase()
                    })
                });
            if !accepted {
                return Err(format!(
                    "handshake refused: {}",
                    head.lines().next().unwrap_or("")
                ));
            }
            let agreed = head.lines().any(|l| {
                l.split_once(':').is_some_and(|(k, v)| {
                    k.trim() == "sec-websocket-extensions"
                        && v.trim().starts_with("permessage-deflate")
                })
            });
            if agreed != self.deflate {
                return Err(format!(
                    "permessage-deflate offered: {}, agreed: {agreed}",
                    self.deflate
                ));
            }
            self.raw.drain(..end + 4);
            self.open = true;
            return Ok(Some(WsEvent::Open));
        }
        loop {
            if self.raw.len() < 2 {
                return Ok(None);
            }
            let (fin, rsv1, op) = (
                self.raw[0] & 0x80 != 0,
                self.raw[0] & 0x40 != 0,
                self.raw[0] & 0x0f,
            );
            if rsv1 && !(self.deflate && matches!(op, 1 | 2)) {
                return Err("RSV1 where no compressed message may start".into());
            }
            if self.raw[1] & 0x80 != 0 {
                return Err("a masked frame from the server".into());
            }
            let (head, len) = match self.raw[1] & 0x7f {
                126 if self.raw.len() >= 4 => {
                    (4, u16::from_be_bytes([self.raw[2], self.raw[3]]) as usize)
                }
                127 if self.raw.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.raw[2..10]);
                    (10, u64::from_be_bytes(b) as usize)
                }
                126 | 127 => return Ok(None),
                n => (2, n as usize),
            };
            if self.raw.len() < head + len {
                return Ok(None);
            }
            let payload: Vec<u8> = self.raw.drain(..head + len).skip(head).collect();
            match op {
                0..=2 => {
                    self.compressed |= rsv1;
                    self.message.extend_from_slice(&payload);
                    if fin {
                        let mut m = std::mem::take(&mut self.message);
                        if std::mem::take(&mut self.compressed) {
                            m = inflate(&m)?;
                        }
                        return Ok(Some(WsEvent::Text(
                            String::from_utf8_lossy(&m).into_owned(),
                        )));
                    }
                }
                8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return Ok(Some(WsEvent::Close(code)));
                }
                9 => return Ok(Some(WsEvent::Ping(payload))),
                10 => {}
                op => return Err(format!("opcode {op}")),
            }
        }
    }
}

/// A streamed response body as it arrives: the head is skipped, and a chunked body is
/// de-chunked (a server may cut chunks anywhere, mid-line included).
#[derive(Default)]
pub struct Body {
    raw: Vec<u8>,
    head_done: bool,
    chunked: bool,
    /// Bytes left in the current chunk; None while a size line is due.
    left: Option<usize>,
    /// The CRLF after a chunk's data is still to be skipped.
    crlf: bool,
}

impl Body {
    /// Adds received bytes; appends the body bytes they complete to `out`. False once the
    /// body has ended or cannot be parsed.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        self.raw.extend_from_slice(bytes);
        if !self.head_done {
            let Some(end) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                return true;
            };
            let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
            self.chunked = head
                .lines()
                .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
            self.raw.drain(..end + 4);
            self.head_done = true;
        }
        if !self.chunked {
            out.append(&mut self.raw);
            return true;
        }
        loop {
            if self.crlf {
                if self.raw.len() < 2 {
                    return true;
                }
                self.raw.drain(..2);
                self.crlf = false;
            }
            match self.left {
                None => {
                    let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return true;
                    };
                    let line = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                    let Ok(size) =
                        usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    else {
                        return false;
                    };
                    self.raw.drain(..end + 2);
                    if size == 0 {
                        return false;
                    }
                    self.left = Some(size);
                }
                Some(left) => {
                    if self.raw.is_empty() {
                        return true;
                    }
                    let n = left.min(self.raw.len());
                    out.extend(self.raw.drain(..n));
                    if n == left {
                        self.left = None;
                        self.crlf = true;
                    } else {
                        self.left = Some(left - n);
                    }
                }
            }
        }
    }
}

/// Reads one HTTP/1.1 response (`Content-Length` or chunked body): status, headers, body.
pub async fn read_response(
    s: &mut tokio::io::BufReader<TcpStream>,
) -> Option<(u16, Vec<(String, String)>, Vec<u8>)> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    if s.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let get = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        s.read_exact(&mut body).await.ok()?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            line.clear();
            s.read_line(&mut line).await.ok()?;
            let len = usize::from_str_radix(line.trim().split(';').next()?, 16).ok()?;
            let start = body.len();
            body.resize(start + len + 2, 0);
            s.read_exact(&mut body[start..]).await.ok()?;
            body.truncate(start + len);
            if len == 0 {
                break;
            }
        }
    }
    Some((status, headers, body))
}

/// A switchyard poll's answer, as far as the bench reads it.
#[derive(serde::Deserialize)]
struct PollAnswer<'a> {
    cursor: u64,
    #[serde(borrow)]
    messages: Vec<std::borrow::Cow<'a, str>>,
}

/// One long-poll subscriber over a kept-alive connection; each message goes to `on`, and
/// `polls` counts answers.
pub async fn poll_client(
    stream: TcpStream,
    host: &str,
    path: &str,
    nchan: bool,
    polls: impl Fn(),
    mut on: impl FnMut(&str),
) {
    let mut s = tokio::io::BufReader::new(stream);
    let mut cursor: Option<u64> = None;
    let mut since: Option<(String, String)> = None;
    loop {
        let req = if nchan {
            let cond = since.as_ref().map_or(String::new(), |(lm, etag)| {
                format!("If-Modified-Since: {lm}\r\nIf-None-Match: {etag}\r\n")
            });
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{cond}\r\n")
        } else {
            let sep = if path.contains('?') { '&' } else { '?' };
            let at = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
            format!("GET {path}{sep}transport=poll{at} HTTP/1.1\r\nHost: {host}\r\n\r\n")
        };
        if s.get_mut().write_all(req.as_bytes()).await.is_err() {
            return;
        }
        let Some((status, headers, body)) = read_response(&mut s).await else {
            return;
        };
        polls();
        if status != 200 {
            // Nchan answers a poll that timed out with 304/408: ask again.
            continue;
        }
        if nchan {
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            since = Some((get("last-modified"), get("etag")));
            on(&String::from_utf8_lossy(&body));
        } else {
            // Typed and borrowed: the bench's feed sends text only, and a client that built a
            // JSON tree per answer would measure itself as much as the server.
            let Ok(answer) = serde_json::from_slice::<PollAnswer>(&body) else {
                return;
            };
            cursor = Some(answer.cursor);
            for m in &answer.messages {
                on(m);
            }
        }
    }
}

/// How a held WebSocket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The handshake failed.
    Refused,
    /// Closed by the server with a close frame (its code, 1005 when it had none).
    Closed(u16),
    /// The connection ended without a close frame (a cut, or a reset).
    Cut,
}

/// A WebSocket opened and held, reading until the server ends it; a close frame is answered
/// (masked, as a client's must be).
pub async fn hold_client(stream: TcpStream, host: &str, path: &str) -> HoldEnd {
    let mut s = stream;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return HoldEnd::Refused;
    }
    let mut buf = vec![0u8; 4096];
    let mut frames = Frames::default();
    let mut opened = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ if opened => return HoldEnd::Cut,
            _ => return HoldEnd::Refused,
        };
        frames.raw.extend_from_slice(&buf[..n]);
        loop {
            match frames.next() {
                Ok(None) => break,
                Ok(Some(WsEvent::Open)) => opened = true,
                Ok(Some(WsEvent::Close(code))) => {
                    let code = code.unwrap_or(1005);
                    let mut answer = vec![0x88, 0x82, 0, 0, 0, 0];
                    answer.extend_from_slice(&code.to_be_bytes());
                    let _ = s.write_all(&answer).await;
                    return HoldEnd::Closed(code);
                }
                Ok(Some(_)) => {}
                Err(_) if opened => return HoldEnd::Cut,
                Err(_) => return HoldEnd::Refused,
            }
        }
    }
}

/// How an echo client failed.
#[derive(Debug, Clone, Copy)]
pub enum EchoFailure {
    Handshake = 0,
    Send = 1,
    Read = 2,
    Wrong = 3,
}

#[derive(Debug)]
pub struct EchoError {
    pub kind: EchoFailure,
    pub why: String,
}

impl std::fmt::Display for EchoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.why)
    }
}

/// One WebSocket echo client: numbered round trips, one at a time, until `stop`, then a close
/// handshake; each trip's time goes to `trip`. A refused handshake, a failed send, a failed
/// read (the connection lost, or closed by the server) and a wrong answer are each an error.
pub async fn echo_client(
    url: &str,
    stop: &AtomicBool,
    mut trip: impl FnMut(Duration),
) -> Result<(), EchoError> {
    let fail = |kind: EchoFailure, why: String| EchoError { kind, why };
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(e) => return Err(fail(EchoFailure::Handshake, e.to_string())),
    };
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let sent = Instant::now();
        let text = format!("{seq} echo");
        if let Err(e) = ws.send(Message::text(text.clone())).await {
            return Err(fail(EchoFailure::Send, format!("sending {text:?}: {e}")));
        }
        match ws.next().await {
            Some(Ok(Message::Text(t))) if *t == *text => trip(sent.elapsed()),
            Some(Ok(other)) => {
                return Err(fail(
                    EchoFailure::Wrong,
                    format!("sent {text:?}, got {other:?}"),
                ))
            }
            Some(Err(e)) => return Err(fail(EchoFailure::Read, format!("after {text:?}: {e}"))),
            None => {
                return Err(fail(
                    EchoFailure::Read,
                    format!("after {text:?}: the connection ended"),
                ))
            }
        }
    }
    if let Err(e) = ws.close(None).await {
        return Err(fail(EchoFailure::Send, format!("closing: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_frames_are_read_across_reads_and_fragments() {
        let mut f = Frames::default();
        let mut bytes = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
        )
        .into_bytes();
        bytes.extend_from_slice(&[0x81, 3]);
        bytes.extend_from_slice(b"1 2");
        // "ab" + "cd" as a fragmented text message, a ping between the fragments.
        bytes.extend_from_slice(&[0x01, 2, b'a', b'b', 0x89, 1, b'p', 0x80, 2, b'c', b'd']);
        let long = "x".repeat(300);
        bytes.extend_from_slice(&[0x81, 126, 1, 44]);
        bytes.extend_from_slice(long.as_bytes());
        bytes.extend_from_slice(&[0x88, 0]);
        let mut events = Vec::new();
        // One byte at a time: every cut must be survived.
        for b in bytes {
            f.raw.push(b);
            while let Some(e) = f.next().unwrap() {
                events.push(e);
            }
        }
        assert_eq!(
            events,
            [
                WsEvent::Open,
                WsEvent::Text("1 2".into()),
                WsEvent::Ping(b"p".to_vec()),
                WsEvent::Text("abcd".into()),
                WsEvent::Text(long),
                WsEvent::Close(None),
            ]
        );
    }

    #[test]
    fn compressed_messages_are_inflated_when_compression_was_agreed() {
        let text = "{\"seq\":1,\"ts\":2}".repeat(20);
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut z = Vec::with_capacity(1024);
        c.compress_vec(text.as_bytes(), &mut z, flate2::FlushCompress::Sync)
            .unwrap();
        z.truncate(z.len() - 4);
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        );
        let mut f = Frames {
            raw: head.clone().into_bytes(),
            deflate: true,
            ..Frames::default()
        };
        f.raw.extend_from_slice(&[0xC1, z.len() as u8]);
        f.raw.extend_from_slice(&z);
        assert_eq!(f.next().unwrap(), Some(WsEvent::Open));
        assert_eq!(f.next().unwrap(), Some(WsEvent::Text(text)));
        // Offered and not agreed, or RSV1 without the offer: refused.
        let mut f = Frames {
            raw: format!(
                "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
            )
            .into_bytes(),
            deflate: true,
            ..Frames::default()
        };
        assert!(f.next().is_err());
        let mut f = Frames {
            raw: vec![0xC1, 1, b'x'],
            open: true,
            ..Frames::default()
        };
        assert!(f.next().is_err());
    }

    #[test]
    fn a_websocket_handshake_without_the_right_accept_is_refused() {
        let refused = |raw: &[u8], open: bool| {
            let mut f = Frames {
                raw: raw.to_vec(),
                open,
                ..Frames::default()
            };
            f.next().is_err()
        };
        assert!(refused(
            b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
            false
        ));
        assert!(refused(b"HTTP/1.1 403 Forbidden\r\n\r\n", false));
        assert!(
            refused(&[0x81, 0x81, 0, 0, 0, 0, b'x'], true),
            "servers must not mask"
        );
    }

    #[test]
    fn chunked_bodies_are_dechunked_wherever_the_chunks_are_cut() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\ndata: \r\n4\r\n1 2\n\r\nc\r\n\ndata: 2 3\n\n\r\n0\r\n\r\n";
        // Fed whole, then a byte at a time: the same body.
        for step in [stream.len(), 1] {
            let mut body = Body::default();
            let mut out = Vec::new();
            for piece in stream.chunks(step) {
                if !body.feed(piece, &mut out) {
                    break;
                }
            }
            assert_eq!(String::from_utf8_lossy(&out), "data: 1 2\n\ndata: 2 3\n\n");
        }
    }
}
