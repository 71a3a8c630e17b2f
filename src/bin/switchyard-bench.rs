//! switchyard-bench: the load generator and benchmark backend behind `bench/compare.sh`.
//!
//! - `serve`: a WebSocket backend. `/feed` publishes numbered, timestamped messages at `--rate`
//!   to every connection; `/echo` echoes.
//!   With `--grip-listen`, also a GRIP origin for Pushpin: every request is answered with
//!   `Grip-Hold: stream` on channel `test`.
//! - `publish`: the same feed to a publish endpoint: a `ws://` URL as a WebSocket client
//!   (Nchan), an `http://` URL as Pushpin's HTTP publish API (one POST per message, SSE
//!   format, over a kept-alive connection).
//! - `fanout`: N SSE, WebSocket or long-poll subscribers from several 127.0.0.x source
//!   addresses; every client checks what it gets (one feed, in order, no duplicates, no gaps)
//!   and delivery latency is measured from the timestamp in each message. Long-poll speaks
//!   switchyard's protocol (`poll`: `?transport=poll&cursor=N`, JSON batches) or Nchan's
//!   (`nchan-poll`: one message per answer, the next asked for with `If-Modified-Since` and
//!   `If-None-Match`); completed polls per second are reported too.
//! - `echo`: N WebSocket clients doing round trips as fast as they can.
//! - `idle`: N idle clients held open while the server's RSS (`/proc/PID/smaps_rollup`, every
//!   process given) and CPU time are measured.
//!
//! Every command prints a table line and, with `--json`, one JSON object.

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(version, about = "switchyard's load generator and benchmark backend")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Print the result as one JSON object too.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// WebSocket backend: /feed publishes at --rate, /echo echoes.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Message size in bytes (padded).
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Also serve a GRIP origin here (for Pushpin).
        #[arg(long)]
        grip_listen: Option<SocketAddr>,
    },
    /// Publish the feed to Nchan's WebSocket publisher (`ws://`) or Pushpin's HTTP API (`http://`).
    Publish {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 100)]
        size: usize,
    },
    /// Subscribers that verify and time every message.
    Fanout {
        #[arg(long)]
        url: String,
        /// sse, ws, poll (switchyard's long-poll) or nchan-poll (Nchan's)
        #[arg(long, default_value = "sse")]
        transport: String,
        #[arg(long, default_value_t = 1000)]
        clients: usize,
        /// Seconds to measure after everyone is connected.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Source addresses 127.0.0.1 .. 127.0.0.N.
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// The publish rate, to report the expected deliveries.
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// Clients opened between 20 ms pauses.
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
    /// WebSocket echo round trips.
    Echo {
        #[arg(long)]
        url: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Idle clients held while the server's memory and CPU are measured.
    Idle {
        #[arg(long)]
        url: String,
        /// sse, ws, poll, or raw (connected, nothing sent)
        #[arg(long, default_value = "sse")]
        transport: String,
        #[arg(long, default_value_t = 10000)]
        clients: usize,
        /// The server's process ids (comma-separated): RSS is summed over them.
        #[arg(long)]
        pids: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 4)]
        sources: u8,
        /// Clients opened between 20 ms pauses.
        #[arg(long, default_value_t = 200)]
        batch: usize,
    },
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A message: `SEQ TS_NS` padded with `.` to `size` bytes.
fn message(seq: u64, size: usize) -> String {
    let mut m = format!("{seq} {}", now_ns());
    while m.len() < size {
        m.push('.');
    }
    m
}

fn parse(m: &str) -> Option<(u64, u64)> {
    let mut it = m.split([' ', '.']);
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}

/// A latency histogram with about 5% resolution, in microseconds.
struct Histogram {
    buckets: Vec<AtomicU64>,
    max: AtomicU64,
}

const GROWTH: f64 = 1.05;

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..600).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
    fn record(&self, us: u64) {
        let i = if us <= 1 {
            0
        } else {
            ((us as f64).ln() / GROWTH.ln()) as usize
        };
        self.buckets[i.min(599)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }
    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return GROWTH.powi(i as i32 + 1) / 1000.0;
            }
        }
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Default)]
struct Verdict {
    received: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    connected: AtomicU64,
    failed: AtomicU64,
    /// Long-poll answers received while measuring.
    polls: AtomicU64,
}

/// Per-client order check: after the first message, each one must be the next seq.
struct Order {
    last: Option<u64>,
}

impl Order {
    fn see(&mut self, seq: u64, v: &Verdict) {
        if let Some(last) = self.last {
            if seq <= last {
                v.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if seq > last + 1 {
                v.gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
            }
        }
        self.last = Some(seq);
    }
}

async fn connect_from(source: u8, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from(([127, 0, 0, source], 0)))?;
    let s = sock.connect(to).await?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// `http://host:port/path` or `ws://...` -> (address, path).
fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .expect("a host:port address")
        .next()
        .expect("an address");
    (addr, format!("/{path}"))
}

/// One SSE subscriber over a raw socket: reads `data:` lines and hands each payload to `on`.
async fn sse_client(stream: TcpStream, host: &str, path: &str, mut on: impl FnMut(&str)) {
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
        if !body.feed(&buf[..n], &mut pending) {
            return;
        }
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..=end);
            if let Some(data) = line.trim_end_matches('\r').strip_prefix("data: ") {
                on(data);
            }
        }
    }
}

/// One WebSocket subscriber over a raw socket: a hand-written handshake and frame reader, so
/// that 10,000 of them cost the load generator no more than SSE subscribers do (with
/// tokio-tungstenite they took the generator's whole core before the server's). Pings are
/// answered; each text message's payload goes to `on`.
async fn ws_client(stream: TcpStream, host: &str, path: &str, mut on: impl FnMut(&str)) -> bool {
    let mut s = stream;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut frames = Frames::default();
    let mut opened = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return opened,
            Ok(n) => n,
        };
        frames.raw.extend_from_slice(&buf[..n]);
        loop {
            match frames.next() {
                Ok(None) => break,
                Ok(Some(WsEvent::Open)) => opened = true,
                Ok(Some(WsEvent::Text(t))) => on(&t),
                Ok(Some(WsEvent::Ping(payload))) => {
                    // A masked pong (RFC 6455 §5.5.3); the zero key leaves the payload as is.
                    let mut pong = vec![0x8A, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(&payload);
                    if s.write_all(&pong).await.is_err() {
                        return opened;
                    }
                }
                Ok(Some(WsEvent::Close)) | Err(_) => return opened,
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
    Close,
}

/// A server's side of a WebSocket connection as it arrives: the handshake answer, then frames
/// (RFC 6455 §5.2: unmasked, text possibly fragmented).
#[derive(Default)]
struct Frames {
    raw: Vec<u8>,
    open: bool,
    /// A fragmented message so far.
    message: Vec<u8>,
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
            self.raw.drain(..end + 4);
            self.open = true;
            return Ok(Some(WsEvent::Open));
        }
        loop {
            if self.raw.len() < 2 {
                return Ok(None);
            }
            let (fin, op) = (self.raw[0] & 0x80 != 0, self.raw[0] & 0x0f);
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
                    self.message.extend_from_slice(&payload);
                    if fin {
                        let m = std::mem::take(&mut self.message);
                        return Ok(Some(WsEvent::Text(
                            String::from_utf8_lossy(&m).into_owned(),
                        )));
                    }
                }
                8 => return Ok(Some(WsEvent::Close)),
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
struct Body {
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
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
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
async fn read_response(
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

/// One long-poll subscriber over a kept-alive connection; each message goes to `on`, and
/// `polls` counts answers.
async fn poll_client(
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
            let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return;
            };
            cursor = answer["cursor"].as_u64();
            for m in answer["messages"].as_array().into_iter().flatten() {
                if let Some(text) = m.as_str() {
                    on(text);
                }
            }
        }
    }
}

async fn serve(listen: SocketAddr, rate: u32, size: usize) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<str>>(65536);
    let publisher = tx.clone();
    // Rate 0: a quiet feed (idle-density runs).
    let quiet = rate == 0;
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let mut seq = 0u64;
        let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            tick.tick().await;
            seq += 1;
            let _ = publisher.send(message(seq, size).into());
        }
    });
    eprintln!("serving /feed at {rate} msg/s and /echo on {listen}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let mut rx = tx.subscribe();
        tokio::spawn(async move {
            let path = Arc::new(std::sync::Mutex::new(String::new()));
            let p = path.clone();
            #[allow(clippy::result_large_err)]
            let record = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                               resp| {
                *p.lock().unwrap() = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
                return;
            };
            let path = path.lock().unwrap().clone();
            if path.starts_with("/echo") {
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
                return;
            }
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Ok(m) => if ws.send(Message::text(&*m)).await.is_err() { return },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                    r = ws.next() => if !matches!(r, Some(Ok(_))) { return },
                }
            }
        });
    }
}

/// A GRIP origin for Pushpin: every request on every kept-alive connection is answered with
/// an empty `text/event-stream` held open on channel `test`.
async fn grip_origin(listen: SocketAddr) {
    let listener = TcpListener::bind(listen)
        .await
        .expect("bind the GRIP origin");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut s = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            loop {
                // Skip the request head (GETs: no body).
                loop {
                    line.clear();
                    match tokio::io::AsyncBufReadExt::read_line(&mut s, &mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line.trim().is_empty() => break,
                        Ok(_) => {}
                    }
                }
                let answer = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nGrip-Hold: stream\r\nGrip-Channel: test\r\nContent-Length: 0\r\n\r\n";
                if s.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Publishes to Pushpin's HTTP API: one POST per message (an SSE event on channel `test`).
async fn publish_http(url: &str, rate: u32, size: usize) {
    let (addr, path) = split_url(url);
    let connect = || async {
        TcpStream::connect(addr)
            .await
            .map(tokio::io::BufReader::new)
            .expect("connect to the publish endpoint")
    };
    let mut s = connect().await;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0u64;
    eprintln!("publishing to {url} at {rate} msg/s");
    loop {
        tick.tick().await;
        seq += 1;
        let item = serde_json::json!({ "items": [{ "channel": "test", "formats": {
            "http-stream": { "content": format!("data: {}\n\n", message(seq, size)) } } }] });
        let body = item.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // A connection the server closed after its last answer is replaced, and the message
        // sent again on the new one (once).
        let mut answer = None;
        for _ in 0..2 {
            if s.get_mut().write_all(req.as_bytes()).await.is_ok() {
                answer = read_response(&mut s).await;
            }
            let close = answer.as_ref().is_none_or(|(_, headers, _)| {
                headers
                    .iter()
                    .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"))
            });
            if close {
                s = connect().await;
            }
            if answer.is_some() {
                break;
            }
        }
        if !matches!(answer, Some((200, _, _))) {
            eprintln!("publish {seq} failed: {:?}", answer.map(|r| r.0));
        }
    }
}

async fn publish(url: &str, rate: u32, size: usize) {
    if url.starts_with("http://") {
        return publish_http(url, rate, size).await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the publish endpoint");
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0u64;
    eprintln!("publishing to {url} at {rate} msg/s");
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                if ws.send(Message::text(message(seq, size))).await.is_err() {
                    eprintln!("publish connection lost");
                    return;
                }
            }
            m = ws.next() => if !matches!(m, Some(Ok(_))) { eprintln!("publish connection closed"); return },
        }
    }
}

/// How a run's clients are opened: how many, from how many source addresses, how many
/// between 20 ms pauses.
#[derive(Clone, Copy)]
struct Shape {
    clients: usize,
    sources: u8,
    batch: usize,
}

impl Shape {
    /// Client `i`'s source address (127.0.0.1 ..= 127.0.0.N).
    fn source(&self, i: usize) -> u8 {
        1 + (i % self.sources.max(1) as usize) as u8
    }

    /// Paces opening: a short pause after every `batch` clients.
    async fn pace(&self, i: usize) {
        if self.batch > 0 && i % self.batch == self.batch - 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn fanout(url: &str, transport: &str, shape: Shape, seconds: u64, rate: u32, json: bool) {
    let clients = shape.clients;
    let (addr, path) = split_url(url);
    let host = addr.to_string();
    let verdict = Arc::new(Verdict::default());
    let hist = Arc::new(Histogram::new());
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let source = shape.source(i);
        let (v, h, m) = (verdict.clone(), hist.clone(), measuring.clone());
        let (host, path, transport) = (host.clone(), path.clone(), transport.to_owned());
        tasks.push(tokio::spawn(async move {
            let stream = match connect_from(source, addr).await {
                Ok(s) => s,
                Err(_) => {
                    v.failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            v.connected.fetch_add(1, Ordering::Relaxed);
            let mut order = Order { last: None };
            let on = |data: &str| {
                let Some((seq, ts)) = parse(data) else { return };
                if !m.load(Ordering::Relaxed) {
                    order.last = Some(seq);
                    return;
                }
                v.received.fetch_add(1, Ordering::Relaxed);
                order.see(seq, &v);
                h.record(now_ns().saturating_sub(ts) / 1000);
            };
            if transport == "ws" {
                if !ws_client(stream, &host, &path, on).await {
                    v.failed.fetch_add(1, Ordering::Relaxed);
                }
            } else if transport == "poll" || transport == "nchan-poll" {
                let polls = || {
                    if m.load(Ordering::Relaxed) {
                        v.polls.fetch_add(1, Ordering::Relaxed);
                    }
                };
                poll_client(stream, &host, &path, transport == "nchan-poll", polls, on).await;
            } else {
                sse_client(stream, &host, &path, on).await;
            }
        }));
        shape.pace(i).await;
    }
    // Let everyone connect and settle, then measure.
    let until = Instant::now() + Duration::from_secs(30);
    while verdict.connected.load(Ordering::Relaxed) + verdict.failed.load(Ordering::Relaxed)
        < clients as u64
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let took = started.elapsed().as_secs_f64();
    let received = verdict.received.load(Ordering::Relaxed);
    let expected = f64::from(rate) * took * clients as f64;
    let result = serde_json::json!({
        "scenario": "fanout",
        "url": url,
        "transport": transport,
        "clients": clients,
        "connected": verdict.connected.load(Ordering::Relaxed),
        "failed": verdict.failed.load(Ordering::Relaxed),
        "rate": rate,
        "deliveries_per_s": (received as f64 / took).round(),
        "polls_per_s": (verdict.polls.load(Ordering::Relaxed) as f64 / took).round(),
        "delivered_ratio": if expected > 0.0 { received as f64 / expected } else { 0.0 },
        "gaps": verdict.gaps.load(Ordering::Relaxed),
        "duplicates": verdict.duplicates.load(Ordering::Relaxed),
        "p50_ms": hist.quantile_ms(0.5),
        "p99_ms": hist.quantile_ms(0.99),
        "max_ms": hist.max.load(Ordering::Relaxed) as f64 / 1000.0,
    });
    report(&result, json);
    for t in tasks {
        t.abort();
    }
}

async fn echo(url: &str, clients: usize, seconds: u64, json: bool) {
    let hist = Arc::new(Histogram::new());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wrong = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (h, s, w, url) = (hist.clone(), stop.clone(), wrong.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut ws = match tokio_tungstenite::connect_async(url).await {
                Ok((ws, _)) => ws,
                Err(e) => {
                    eprintln!("echo client: handshake failed: {e}");
                    w.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let mut seq = 0u64;
            while !s.load(Ordering::Relaxed) {
                seq += 1;
                let sent = Instant::now();
                let text = format!("{seq} echo");
                if ws.send(Message::text(text.clone())).await.is_err() {
                    return;
                }
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if *t == *text => {
                        h.record(sent.elapsed().as_micros() as u64)
                    }
                    other => {
                        eprintln!("echo client: sent {text:?}, got {other:?}");
                        w.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = hist.count();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let trips = hist.count() - before;
    let took = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let result = serde_json::json!({
        "scenario": "echo",
        "url": url,
        "clients": clients,
        "round_trips_per_s": (trips as f64 / took).round(),
        "wrong_or_failed": wrong.load(Ordering::Relaxed),
        "p50_ms": hist.quantile_ms(0.5),
        "p99_ms": hist.quantile_ms(0.99),
    });
    report(&result, json);
    for t in tasks {
        t.abort();
    }
}

/// Summed `Rss` (KiB) of `/proc/PID/smaps_rollup` over `pids`.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Rss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// Summed user+system CPU ticks of `pids`.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|t| {
            let after = t.rsplit_once(')')?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

#[allow(clippy::too_many_arguments)]
async fn idle(url: &str, transport: &str, shape: Shape, pids: &str, seconds: u64, json: bool) {
    let clients = shape.clients;
    let pids: Vec<u32> = pids
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let (addr, path) = split_url(url);
    let host = addr.to_string();
    let before = rss_kib(&pids);
    let open = Arc::new(AtomicU64::new(0));
    let mut held = Vec::new();
    for i in 0..clients {
        shape.pace(i).await;
        let Ok(mut s) = connect_from(shape.source(i), addr).await else {
            continue;
        };
        match transport {
            // Connected, nothing sent: the server's cost of an accepted connection alone.
            "raw" => {
                let open = open.clone();
                held.push(tokio::spawn(async move {
                    open.fetch_add(1, Ordering::Relaxed);
                    let mut buf = [0u8; 64];
                    let _ = s.read(&mut buf).await;
                }));
            }
            "ws" => {
                let open = open.clone();
                let url = url.to_owned();
                held.push(tokio::spawn(async move {
                    if let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, s).await {
                        open.fetch_add(1, Ordering::Relaxed);
                        // Reading answers the server's pings.
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }));
            }
            _ => {
                let query = if transport == "poll" {
                    "?transport=poll"
                } else {
                    ""
                };
                let accept = if transport == "poll" {
                    "*/*"
                } else {
                    "text/event-stream"
                };
                let req = format!(
                    "GET {path}{query} HTTP/1.1\r\nHost: {host}\r\nAccept: {accept}\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    continue;
                }
                let open = open.clone();
                held.push(tokio::spawn(async move {
                    open.fetch_add(1, Ordering::Relaxed);
                    let mut buf = vec![0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }));
            }
        }
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_before = cpu_ticks(&pids);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = (cpu_ticks(&pids) - cpu_before) as f64 / 100.0 / started.elapsed().as_secs_f64();
    let after = rss_kib(&pids);
    let n = open.load(Ordering::Relaxed).max(1);
    let result = serde_json::json!({
        "scenario": "idle",
        "url": url,
        "transport": transport,
        "clients": open.load(Ordering::Relaxed),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_client": (after.saturating_sub(before) as f64 / n as f64 * 10.0).round() / 10.0,
        "cpu_share_of_one_core": (cpu * 1000.0).round() / 1000.0,
    });
    report(&result, json);
    for t in held {
        t.abort();
    }
}

fn report(result: &serde_json::Value, json: bool) {
    let fields: Vec<String> = result
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("{}", fields.join(" "));
    if json {
        println!("{result}");
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            listen,
            rate,
            size,
            grip_listen,
        } => {
            if let Some(addr) = grip_listen {
                tokio::spawn(grip_origin(addr));
            }
            serve(listen, rate, size).await
        }
        Cmd::Publish { url, rate, size } => publish(&url, rate, size).await,
        Cmd::Fanout {
            url,
            transport,
            clients,
            seconds,
            sources,
            rate,
            batch,
        } => {
            let shape = Shape {
                clients,
                sources,
                batch,
            };
            fanout(&url, &transport, shape, seconds, rate, cli.json).await
        }
        Cmd::Echo {
            url,
            clients,
            seconds,
        } => echo(&url, clients, seconds, cli.json).await,
        Cmd::Idle {
            url,
            transport,
            clients,
            pids,
            seconds,
            sources,
            batch,
        } => {
            let shape = Shape {
                clients,
                sources,
                batch,
            };
            idle(&url, &transport, shape, &pids, seconds, cli.json).await
        }
    }
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
                WsEvent::Close,
            ]
        );
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
