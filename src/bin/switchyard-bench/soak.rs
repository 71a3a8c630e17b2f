//! `soak`: thousands of clients held against a cluster for a long time, with churn, while
//! `bench/soak.sh` kills the backend, reloads the config and restarts Redis around them.
//!
//! Every client checks what it receives, on the feed the backend logs (`serve --seq-log`):
//! - SSE and long-poll clients keep their place across reconnects (`Last-Event-ID`, the
//!   cursor), alternating between the instances, so their whole life is one chain;
//! - WebSocket and SockJS clients have no resume, so each connection (each SockJS session) is
//!   a chain of its own.
//!
//! Within a chain a seq must be larger than the one before (else a duplicate or a reordering).
//! A step that skips seqs (a *jump*) is kept; at the end every jump is checked against the
//! backend's log: a seq the backend logged as written to the gateway, inside a jump, is a lost
//! message. A loss is *explained* when the gateway announced it (`event: gap`, `"missed"`) or
//! when the message was sent while Redis was down (the README's failure table: what a
//! non-holder misses then is documented), and *unexplained* otherwise. A duplicate is never
//! explained, except on a chain that resumed on the other instance while Redis was down: each
//! instance then stamps what its own connection brings, and resume across instances is off
//! (documented too).
//!
//! Beside the subscribers: pass-through WebSocket tunnels doing echo round trips, and
//! per-client long-poll sessions opened and abandoned.

use crate::clients::{connect_from, ws_client, Body, WsSeen};
use crate::feed::parse;
use crate::stats::report;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a soak run is given.
pub struct SoakRun {
    /// The instances' client listeners.
    pub gateways: Vec<SocketAddr>,
    pub sse: usize,
    pub ws: usize,
    pub poll: usize,
    pub sockjs: usize,
    pub tunnels: usize,
    /// Per-client long-poll sessions opened (and abandoned) per second.
    pub sessions_per_sec: u32,
    pub seconds: u64,
    /// A client leaves after a random time in this range (seconds), and comes back.
    pub lifetime: (u64, u64),
    pub sources: u8,
    /// The backend's log of what it wrote (`serve --seq-log`).
    pub seq_log: PathBuf,
    /// The driver's log of faults: lines `UNIX_MS EVENT`, where `redis-down` and `redis-up`
    /// bound the Redis outage.
    pub events: Option<PathBuf>,
}

/// A chain's step over seqs it never saw: `(after, to)`, and whether the gateway said so.
#[derive(Clone, Copy)]
struct Jump {
    after: u64,
    to: u64,
    announced: bool,
}

/// What one transport's clients did.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    failed_connects: AtomicU64,
    /// Answers other than a 200 (a 503 while the cluster cannot be asked).
    refused: AtomicU64,
    /// Connections the client ended itself (churn).
    left: AtomicU64,
    /// Connections the server ended (a backend restart, a slow-consumer rule, ...).
    ended: AtomicU64,
    messages: AtomicU64,
    /// A seq not above the one before it in its chain.
    duplicates: AtomicU64,
    reordered: AtomicU64,
    /// What did not parse as the feed's.
    garbled: AtomicU64,
    jumps: Mutex<Vec<Jump>>,
    /// The first few duplicates and reorderings: when (Unix ms), and the seqs.
    odd: Mutex<Vec<String>>,
    /// When each duplicate or reordering was seen (Unix ns).
    odd_at: Mutex<Vec<u64>>,
}

impl Tally {
    fn odd(&self, what: &str, last: u64, seq: u64, via: u16) {
        self.odd_at.lock().unwrap().push(crate::feed::now_ns());
        let mut odd = self.odd.lock().unwrap();
        if odd.len() < 5 {
            odd.push(format!(
                "{} {what}: {seq} after {last}, through :{via}",
                crate::feed::now_ns() / 1_000_000
            ));
        }
    }
}

/// One chain's place: the last seq seen, and whether the gateway announced a gap since.
#[derive(Default)]
struct Chain {
    last: Option<u64>,
    announced: bool,
    /// The instance (its port) the last message came through.
    via: u16,
}

impl Chain {
    fn see(&mut self, tally: &Tally, text: &str) {
        let Some((seq, _)) = parse(text) else {
            tally.garbled.fetch_add(1, Ordering::Relaxed);
            return;
        };
        tally.messages.fetch_add(1, Ordering::Relaxed);
        match self.last {
            Some(last) if seq == last => {
                tally.duplicates.fetch_add(1, Ordering::Relaxed);
                tally.odd("duplicate", last, seq, self.via);
                return;
            }
            Some(last) if seq < last => {
                tally.reordered.fetch_add(1, Ordering::Relaxed);
                tally.odd("reordered", last, seq, self.via);
                return;
            }
            Some(last) if seq > last + 1 => tally.jumps.lock().unwrap().push(Jump {
                after: last,
                to: seq,
                announced: self.announced,
            }),
            _ => {}
        }
        self.announced = false;
        self.last = Some(seq);
    }
}

/// The run's shared state: one tally per transport, the tunnels' and sessions' counts.
#[derive(Default)]
struct Soak {
    sse: Tally,
    ws: Tally,
    poll: Tally,
    sockjs: Tally,
    tunnel_round_trips: AtomicU64,
    tunnel_connects: AtomicU64,
    tunnel_failed_connects: AtomicU64,
    /// A tunnel that answered something other than what was sent.
    tunnel_wrong: AtomicU64,
    /// A tunnel cut while a round trip was outstanding (the backend died under it).
    tunnel_cut: AtomicU64,
    sessions_opened: AtomicU64,
    sessions_refused: AtomicU64,
}

/// A small deterministic generator per client (xorshift), for lifetimes and pauses.
struct Dice(u64);

impl Dice {
    fn new(i: usize) -> Self {
        Self((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi.saturating_sub(lo) + 1)
    }
}

struct Ctx {
    soak: Arc<Soak>,
    gateways: Vec<SocketAddr>,
    sources: u8,
    lifetime: (u64, u64),
    until: Instant,
}

impl Ctx {
    fn gateway(&self, n: usize) -> SocketAddr {
        self.gateways[n % self.gateways.len()]
    }
    fn source(&self, i: usize) -> u8 {
        1 + (i % self.sources.max(1) as usize) as u8
    }
    fn done(&self) -> bool {
        Instant::now() >= self.until
    }
    /// How long this connection lives before the client leaves (never past the run's end).
    fn life(&self, dice: &mut Dice) -> Instant {
        let life = Duration::from_secs(dice.between(self.lifetime.0, self.lifetime.1));
        (Instant::now() + life).min(self.until)
    }
}

/// Client `i`'s next connection to `to`, counted in `tally`; after a failed one, a second's
/// pause and None.
async fn connect_counted(ctx: &Ctx, i: usize, to: SocketAddr, tally: &Tally) -> Option<TcpStream> {
    match connect_from(ctx.source(i), to).await {
        Ok(s) => {
            tally.connects.fetch_add(1, Ordering::Relaxed);
            Some(s)
        }
        Err(_) => {
            tally.failed_connects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

/// How a connection ended: the client left, or the server (or the network) ended it.
enum End {
    Left,
    Ended,
}

fn count_end(t: &Tally, end: End) {
    match end {
        End::Left => t.left.fetch_add(1, Ordering::Relaxed),
        End::Ended => t.ended.fetch_add(1, Ordering::Relaxed),
    };
}

/// An SSE subscriber for the whole run: resumes with `Last-Event-ID` on the other instance.
async fn sse(ctx: Arc<Ctx>, i: usize) {
    let mut dice = Dice::new(i);
    let mut chain = Chain::default();
    let mut last_id: Option<String> = None;
    let mut n = i;
    while !ctx.done() {
        let to = ctx.gateway(n);
        n += 1;
        let Some(s) = connect_counted(&ctx, i, to, &ctx.soak.sse).await else {
            continue;
        };
        chain.via = to.port();
        let until = ctx.life(&mut dice);
        let end = tokio::time::timeout_at(
            until.into(),
            sse_stream(s, to, &mut chain, &mut last_id, &ctx.soak.sse),
        )
        .await
        .map_or(End::Left, |()| End::Ended);
        count_end(&ctx.soak.sse, end);
        tokio::time::sleep(Duration::from_millis(dice.between(50, 500))).await;
    }
}

async fn sse_stream(
    mut s: TcpStream,
    to: SocketAddr,
    chain: &mut Chain,
    last_id: &mut Option<String>,
    tally: &Tally,
) {
    let resume = last_id
        .as_ref()
        .map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let req =
        format!("GET /feed HTTP/1.1\r\nHost: {to}\r\nAccept: text/event-stream\r\n{resume}\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut body = Body::default();
    let mut pending = Vec::new();
    let (mut id, mut event) = (None::<String>, String::new());
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
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                // An event ends: its id is where a resume starts.
                if event == "gap" {
                    chain.announced = true;
                }
                if let Some(id) = id.take() {
                    *last_id = Some(id);
                }
                event.clear();
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ") {
                if event.is_empty() || event == "message" {
                    chain.see(tally, data);
                }
            }
        }
        if !going {
            return;
        }
    }
}

/// A poll answer, as far as the soak reads it.
#[derive(serde::Deserialize)]
struct PollAnswer {
    cursor: u64,
    messages: Vec<String>,
    #[serde(default)]
    missed: bool,
}

/// A long-poll subscriber for the whole run: its cursor goes with it to the other instance.
async fn poll(ctx: Arc<Ctx>, i: usize) {
    let mut dice = Dice::new(i);
    let mut chain = Chain::default();
    let mut cursor: Option<u64> = None;
    let mut n = i;
    let tally = &ctx.soak.poll;
    while !ctx.done() {
        let to = ctx.gateway(n);
        n += 1;
        let Some(s) = connect_counted(&ctx, i, to, tally).await else {
            continue;
        };
        chain.via = to.port();
        let until = ctx.life(&mut dice);
        let polls = async {
            let mut s = tokio::io::BufReader::new(s);
            loop {
                let at = cursor.map_or(String::new(), |c| format!("&cursor={c}"));
                let req = format!("GET /feed?transport=poll{at} HTTP/1.1\r\nHost: {to}\r\n\r\n");
                if s.get_mut().write_all(req.as_bytes()).await.is_err() {
                    return;
                }
                let Some((status, _, body)) = crate::clients::read_response(&mut s).await else {
                    return;
                };
                if status != 200 {
                    // 503 while an instance cannot answer for the cluster: ask again shortly.
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let Ok(answer) = serde_json::from_slice::<PollAnswer>(&body) else {
                    tally.garbled.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if answer.missed {
                    chain.announced = true;
                }
                for m in &answer.messages {
                    chain.see(tally, m);
                }
                cursor = Some(answer.cursor);
            }
        };
        let end = tokio::time::timeout_at(until.into(), polls)
            .await
            .map_or(End::Left, |()| End::Ended);
        count_end(tally, end);
        tokio::time::sleep(Duration::from_millis(dice.between(50, 500))).await;
    }
}

/// A WebSocket connection's check: a chain of its own.
struct WsCheck<'a> {
    chain: Chain,
    tally: &'a Tally,
}

impl WsSeen for WsCheck<'_> {
    fn text(&mut self, t: &str) {
        self.chain.see(self.tally, t);
    }
}

/// A WebSocket subscriber: a new connection (and chain) after each one ends.
async fn ws(ctx: Arc<Ctx>, i: usize) {
    let mut dice = Dice::new(i);
    let mut n = i;
    let tally = &ctx.soak.ws;
    while !ctx.done() {
        let to = ctx.gateway(n);
        n += 1;
        let Some(s) = connect_counted(&ctx, i, to, tally).await else {
            continue;
        };
        let until = ctx.life(&mut dice);
        let mut check = WsCheck {
            chain: Chain {
                via: to.port(),
                ..Chain::default()
            },
            tally,
        };
        let host = to.to_string();
        let end = tokio::time::timeout_at(
            until.into(),
            ws_client(s, &host, "/feed", false, &mut check),
        )
        .await
        .map_or(End::Left, |_| End::Ended);
        count_end(tally, end);
        tokio::time::sleep(Duration::from_millis(dice.between(50, 500))).await;
    }
}

/// A SockJS client on xhr_streaming: one session per chain, on one instance; a streaming
/// answer that ends without a close frame (its `response_limit`) is followed by the next.
async fn sockjs(ctx: Arc<Ctx>, i: usize) {
    let mut dice = Dice::new(i);
    let mut n = i;
    let mut sessions = 0u64;
    let tally = &ctx.soak.sockjs;
    while !ctx.done() {
        let to = ctx.gateway(n);
        n += 1;
        sessions += 1;
        let session = format!("s{i}x{sessions}x{}", dice.next() % 1_000_000);
        let until = ctx.life(&mut dice);
        let mut chain = Chain {
            via: to.port(),
            ..Chain::default()
        };
        let run = async {
            loop {
                let Ok(mut s) = connect_from(ctx.source(i), to).await else {
                    tally.failed_connects.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                tally.connects.fetch_add(1, Ordering::Relaxed);
                let req = format!(
                    "POST /feed/000/{session}/xhr_streaming HTTP/1.1\r\nHost: {to}\r\nContent-Length: 0\r\n\r\n"
                );
                if s.write_all(req.as_bytes()).await.is_err() {
                    return;
                }
                match sockjs_stream(s, &mut chain, tally).await {
                    // The session is closed (or the answer unreadable): a new session.
                    Stream::Closed => return,
                    Stream::Again => continue,
                    // Refused (503 while the cluster cannot say who owns the session): again
                    // after the Retry-After.
                    Stream::Refused => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        };
        let end = tokio::time::timeout_at(until.into(), run)
            .await
            .map_or(End::Left, |()| End::Ended);
        count_end(tally, end);
        tokio::time::sleep(Duration::from_millis(dice.between(50, 500))).await;
    }
}

/// How an xhr_streaming answer ended.
enum Stream {
    /// The session ended (`c[...]`), or the answer could not be read.
    Closed,
    /// The answer ended (its response limit, or the connection): the session goes on.
    Again,
    /// Not a 200.
    Refused,
}

/// Reads one xhr_streaming answer.
async fn sockjs_stream(mut s: TcpStream, chain: &mut Chain, tally: &Tally) -> Stream {
    let mut buf = vec![0u8; 16 * 1024];
    let mut body = Body::default();
    let mut pending = Vec::new();
    let mut status_seen = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Stream::Again,
            Ok(n) => n,
        };
        if !status_seen {
            if !buf[..n].starts_with(b"HTTP/1.1 200 ") {
                return Stream::Refused;
            }
            status_seen = true;
        }
        // The answer's end may come in the same read as its last frames: they are read first.
        let going = body.feed(&buf[..n], &mut pending);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..=end);
            if line.starts_with('c') {
                return Stream::Closed;
            }
            if let Some(array) = line.strip_prefix('a') {
                let Ok(messages) = serde_json::from_str::<Vec<String>>(array) else {
                    tally.garbled.fetch_add(1, Ordering::Relaxed);
                    return Stream::Closed;
                };
                for m in &messages {
                    chain.see(tally, m);
                }
            }
        }
        if !going {
            return Stream::Again;
        }
    }
}

/// A pass-through WebSocket tunnel to the backend's echo: a round trip every 2 s.
async fn tunnel(ctx: Arc<Ctx>, i: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut dice = Dice::new(i);
    let mut n = i;
    let soak = &ctx.soak;
    while !ctx.done() {
        let to = ctx.gateway(n);
        n += 1;
        let Ok(s) = connect_from(ctx.source(i), to).await else {
            soak.tunnel_failed_connects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let url = format!("ws://{to}/echo");
        let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, s).await else {
            // The backend is down: the gateway answers 502.
            soak.tunnel_failed_connects.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        soak.tunnel_connects.fetch_add(1, Ordering::Relaxed);
        let until = ctx.life(&mut dice);
        let mut k = 0u64;
        while Instant::now() + Duration::from_secs(2) < until {
            tokio::time::sleep(Duration::from_secs(2)).await;
            k += 1;
            let text = format!("t{i}.{k}");
            let trip = async {
                ws.send(Message::text(text.clone())).await.ok()?;
                loop {
                    match ws.next().await? {
                        Ok(Message::Text(t)) => return Some(t.as_str() == text),
                        Ok(_) => continue,
                        Err(_) => return None,
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), trip).await {
                Ok(Some(true)) => soak.tunnel_round_trips.fetch_add(1, Ordering::Relaxed),
                Ok(Some(false)) => soak.tunnel_wrong.fetch_add(1, Ordering::Relaxed),
                Ok(None) | Err(_) => {
                    soak.tunnel_cut.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
        }
        let _ = ws.close(None).await;
    }
}

/// Per-client long-poll sessions, opened and abandoned: each asks once for a session and
/// never comes back, so the gateway must reap it after `session_ttl`.
async fn abandoned_sessions(ctx: Arc<Ctx>, per_sec: u32) {
    if per_sec == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_sec)));
    let mut n = 0usize;
    while !ctx.done() {
        tick.tick().await;
        n += 1;
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let to = ctx.gateway(n);
            let Ok(s) = connect_from(ctx.source(n), to).await else {
                ctx.soak.sessions_refused.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut s = tokio::io::BufReader::new(s);
            let req = format!("GET /session?transport=poll HTTP/1.1\r\nHost: {to}\r\n\r\n");
            if s.get_mut().write_all(req.as_bytes()).await.is_err() {
                return;
            }
            let answer = tokio::time::timeout(
                Duration::from_secs(10),
                crate::clients::read_response(&mut s),
            )
            .await;
            match answer {
                Ok(Some((200, _, body))) if body.starts_with(b"{\"session\"") => {
                    ctx.soak.sessions_opened.fetch_add(1, Ordering::Relaxed)
                }
                _ => ctx.soak.sessions_refused.fetch_add(1, Ordering::Relaxed),
            };
        });
    }
}

/// The backend's log: seq -> send time (ns).
fn read_seq_log(path: &PathBuf) -> BTreeMap<u64, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (seq, ts) = l.split_once(' ')?;
            Some((seq.parse().ok()?, ts.parse().ok()?))
        })
        .collect()
}

/// The Redis outages in the driver's event log, as Unix-ns ranges (`redis-down` .. `redis-up`,
/// widened by the time the instances take to notice and rejoin: two heartbeats and a lease).
fn redis_outages(path: Option<&PathBuf>) -> Vec<(u64, u64)> {
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut down = None;
    for line in text.lines() {
        let Some((ms, what)) = line.split_once(' ') else {
            continue;
        };
        let Ok(ms) = ms.parse::<u64>() else { continue };
        match what.trim() {
            "redis-down" => down = Some(ms),
            "redis-up" => {
                if let Some(d) = down.take() {
                    out.push((d.saturating_sub(1000) * 1_000_000, (ms + 5000) * 1_000_000));
                }
            }
            _ => {}
        }
    }
    out
}

/// Duplicates and reorderings of a transport whose chains resume, seen while Redis was
/// down: resume across instances is off then (the README's failure table), since each
/// instance stamps the messages its own connection brings.
fn odd_in_outage(tally: &Tally, outages: &[(u64, u64)]) -> u64 {
    let at = tally.odd_at.lock().unwrap();
    at.iter()
        .filter(|t| outages.iter().any(|(a, b)| (*a..=*b).contains(*t)))
        .count() as u64
}

/// A transport's jumps checked against the log: (lost, explained by an announcement,
/// explained by the Redis outage), with the first few unexplained ones described.
fn verify(
    tally: &Tally,
    sent: &BTreeMap<u64, u64>,
    outages: &[(u64, u64)],
    examples: &mut Vec<String>,
) -> (u64, u64, u64) {
    let (mut lost, mut announced, mut redis) = (0, 0, 0);
    for j in tally.jumps.lock().unwrap().iter() {
        let missing: Vec<(u64, u64)> = sent
            .range(j.after + 1..j.to)
            .map(|(s, t)| (*s, *t))
            .collect();
        if missing.is_empty() {
            continue;
        }
        let in_outage = |ts: u64| outages.iter().any(|(a, b)| (*a..=*b).contains(&ts));
        if j.announced {
            announced += missing.len() as u64;
        } else if missing.iter().all(|(_, ts)| in_outage(*ts)) {
            redis += missing.len() as u64;
        } else {
            lost += missing.len() as u64;
            if examples.len() < 8 {
                examples.push(format!(
                    "after {} came {}: {} logged seqs missing (first {})",
                    j.after,
                    j.to,
                    missing.len(),
                    missing[0].0
                ));
            }
        }
    }
    (lost, announced, redis)
}

/// Runs the soak and reports; the process exits non-zero when anything went unexplained.
pub async fn soak(run: SoakRun, json: bool) -> bool {
    let ctx = Arc::new(Ctx {
        soak: Arc::new(Soak::default()),
        gateways: run.gateways.clone(),
        sources: run.sources,
        lifetime: run.lifetime,
        until: Instant::now() + Duration::from_secs(run.seconds),
    });
    let mut tasks = Vec::new();
    let mut i = 0usize;
    // Opened at about 500 a second, so a reconnect storm is not what the run starts with.
    for (count, kind) in [
        (run.sse, Kind::Sse),
        (run.ws, Kind::Ws),
        (run.poll, Kind::Poll),
        (run.sockjs, Kind::Sockjs),
        (run.tunnels, Kind::Tunnel),
    ] {
        for _ in 0..count {
            i += 1;
            let ctx = ctx.clone();
            tasks.push(match kind {
                Kind::Sse => tokio::spawn(sse(ctx, i)),
                Kind::Ws => tokio::spawn(ws(ctx, i)),
                Kind::Poll => tokio::spawn(poll(ctx, i)),
                Kind::Sockjs => tokio::spawn(sockjs(ctx, i)),
                Kind::Tunnel => tokio::spawn(tunnel(ctx, i)),
            });
            if i.is_multiple_of(100) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    tasks.push(tokio::spawn(abandoned_sessions(
        ctx.clone(),
        run.sessions_per_sec,
    )));
    eprintln!("soak: {i} clients opened; running until the end");
    tokio::time::sleep_until(ctx.until.into()).await;
    // Everyone leaves within a second past the end (a client mid-connect finishes it first).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // The backend logs what it wrote just after writing it: let the last lines land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = read_seq_log(&run.seq_log);
    let outages = redis_outages(run.events.as_ref());
    let soak = &ctx.soak;
    let mut examples = Vec::new();
    let mut unexplained = 0u64;
    let mut per_transport = serde_json::Map::new();
    for (name, t, resumes) in [
        ("sse", &soak.sse, true),
        ("websocket", &soak.ws, false),
        ("long_poll", &soak.poll, true),
        ("sockjs", &soak.sockjs, false),
    ] {
        let (lost, announced, redis) = verify(t, &sent, &outages, &mut examples);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let odd_explained = if resumes {
            odd_in_outage(t, &outages)
        } else {
            0
        };
        let bad =
            lost + load(&t.duplicates) + load(&t.reordered) + load(&t.garbled) - odd_explained;
        unexplained += bad;
        per_transport.insert(
            name.into(),
            serde_json::json!({
                "connects": load(&t.connects),
                "failed_connects": load(&t.failed_connects),
                "refused": load(&t.refused),
                "left": load(&t.left),
                "ended_by_server": load(&t.ended),
                "messages": load(&t.messages),
                "duplicates": load(&t.duplicates),
                "reordered": load(&t.reordered),
                "garbled": load(&t.garbled),
                "lost": lost,
                "missed_announced": announced,
                "missed_in_redis_outage": redis,
                "repeated_on_resume_in_redis_outage": odd_explained,
                "odd": *t.odd.lock().unwrap(),
            }),
        );
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    unexplained += load(&soak.tunnel_wrong);
    let result = serde_json::json!({
        "scenario": "soak",
        "seconds": run.seconds,
        "clients": run.sse + run.ws + run.poll + run.sockjs + run.tunnels,
        "messages_logged_by_backend": sent.len(),
        "redis_outages": outages.len(),
        "transports": per_transport,
        "tunnels": {
            "connects": load(&soak.tunnel_connects),
            "failed_connects": load(&soak.tunnel_failed_connects),
            "round_trips": load(&soak.tunnel_round_trips),
            "wrong_answers": load(&soak.tunnel_wrong),
            "cut_mid_trip": load(&soak.tunnel_cut),
        },
        "sessions": {
            "opened": load(&soak.sessions_opened),
            "refused": load(&soak.sessions_refused),
        },
        "unexplained": unexplained,
        "unexplained_examples": examples,
    });
    report(&result, json);
    unexplained == 0
}

#[derive(Clone, Copy)]
enum Kind {
    Sse,
    Ws,
    Poll,
    Sockjs,
    Tunnel,
}
