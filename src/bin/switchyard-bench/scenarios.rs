//! The measuring commands: `fanout` (subscribers that check and time every message), `echo`
//! (round trips as fast as they go), `hold` (WebSockets held until the server ends them, and
//! how it did) and `idle` (clients held open while the server's RSS and CPU time are read from
//! `/proc`). Each opens its clients, lets them settle, measures for the
//! given seconds, and reports one result.

use crate::clients::{
    connect_from, echo_client, hold_client, poll_client, read_response, split_url, sse_client,
    ws_client, ws_client_as, EchoFailure, HoldEnd, WsSeen,
};
use crate::feed::{now_ns, parse};
use crate::stats::{report, Latencies, Order, Verdict};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a run's clients are opened: how many, from how many source addresses, how many
/// between 20 ms pauses.
#[derive(Clone, Copy)]
pub struct Shape {
    pub clients: usize,
    pub sources: u8,
    pub batch: usize,
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

/// `shape.clients` subscribers to `url` over `transport`, each checking and timing every
/// message; once all are connected and have settled for 2 s, `seconds` are measured. `rate`
/// (the publish rate) gives the expected deliveries.
/// A WebSocket subscriber's report: payloads to `on`, bytes read to the verdict while measuring.
struct Subscriber<'a, F> {
    on: F,
    verdict: &'a Verdict,
    measuring: &'a AtomicBool,
}

impl<F: FnMut(&str)> WsSeen for Subscriber<'_, F> {
    fn read(&mut self, n: usize) {
        if self.measuring.load(Ordering::Relaxed) {
            self.verdict
                .wire_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn text(&mut self, t: &str) {
        (self.on)(t)
    }
}

/// Counts a WebSocket as open once its handshake (compression included) succeeded.
struct Opened(Arc<AtomicU64>);

impl WsSeen for Opened {
    fn open(&mut self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn text(&mut self, _: &str) {}
}

/// A subscriber's check of each feed message: before the measurement it only follows the
/// order; during it, it counts the message, checks order (gaps, duplicates) and times it
/// from its send time.
fn checker<'a>(v: &'a Verdict, h: &'a Latencies, m: &'a AtomicBool) -> impl FnMut(&str) + 'a {
    let mut order = Order { last: None };
    move |data: &str| {
        let Some((seq, ts)) = parse(data) else { return };
        if !m.load(Ordering::Relaxed) {
            order.last = Some(seq);
            return;
        }
        v.received.fetch_add(1, Ordering::Relaxed);
        order.see(seq, v);
        h.record(now_ns().saturating_sub(ts) / 1000);
    }
}

/// Waits until every client connected or failed (at most `limit`), then lets them settle 2 s.
async fn settle(verdict: &Verdict, clients: usize, limit: Duration) {
    let until = Instant::now() + limit;
    while verdict.connected.load(Ordering::Relaxed) + verdict.failed.load(Ordering::Relaxed)
        < clients as u64
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// `shape.clients` subscribers of `url` over `transport` (sse, ws, ws-deflate, poll,
/// nchan-poll), measured for `seconds`. With `pids`, the server's CPU time over the
/// measurement too, per delivery.
pub async fn fanout(
    url: &str,
    transport: &str,
    shape: Shape,
    seconds: u64,
    rate: u32,
    pids: &str,
    json: bool,
) {
    let pids = pid_list(pids);
    let clients = shape.clients;
    let (addr, path) = split_url(url);
    let host = addr.to_string();
    let verdict = Arc::new(Verdict::default());
    let hist = Arc::new(Latencies::new());
    let measuring = Arc::new(AtomicBool::new(false));
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
            let on = checker(&v, &h, &m);
            // A subscriber runs until the run ends and aborts it: any return is a failure.
            if transport == "ws" || transport == "ws-deflate" || transport == "socketio" {
                let mut seen = Subscriber {
                    on,
                    verdict: &v,
                    measuring: &m,
                };
                let deflate = transport == "ws-deflate";
                let socketio = transport == "socketio";
                if ws_client_as(stream, &host, &path, deflate, socketio, &mut seen).await {
                    v.lost.fetch_add(1, Ordering::Relaxed);
                } else {
                    v.failed.fetch_add(1, Ordering::Relaxed);
                }
            } else if transport == "poll" || transport == "nchan-poll" {
                let polls = || {
                    if m.load(Ordering::Relaxed) {
                        v.polls.fetch_add(1, Ordering::Relaxed);
                    }
                };
                poll_client(stream, &host, &path, transport == "nchan-poll", polls, on).await;
                v.lost.fetch_add(1, Ordering::Relaxed);
            } else {
                sse_client(stream, &host, &path, on).await;
                v.lost.fetch_add(1, Ordering::Relaxed);
            }
        }));
        shape.pace(i).await;
    }
    settle(&verdict, clients, Duration::from_secs(30)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let ticks = cpu_ticks(&pids);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    // Clock ticks are 1/100 s on Linux (USER_HZ), as `idle` counts them.
    let cpu_s = (cpu_ticks(&pids) - ticks) as f64 / 100.0;
    let took = started.elapsed().as_secs_f64();
    let received = verdict.received.load(Ordering::Relaxed);
    let per_delivery = |x: f64| {
        if received > 0 {
            x / received as f64
        } else {
            0.0
        }
    };
    let expected = f64::from(rate) * took * clients as f64;
    let result = serde_json::json!({
        "scenario": "fanout",
        "url": url,
        "transport": transport,
        "clients": clients,
        "connected": verdict.connected.load(Ordering::Relaxed),
        "failed": verdict.failed.load(Ordering::Relaxed),
        "lost": verdict.lost.load(Ordering::Relaxed),
        "rate": rate,
        "deliveries_per_s": (received as f64 / took).round(),
        "polls_per_s": (verdict.polls.load(Ordering::Relaxed) as f64 / took).round(),
        "delivered_ratio": if expected > 0.0 { received as f64 / expected } else { 0.0 },
        "gaps": verdict.gaps.load(Ordering::Relaxed),
        "duplicates": verdict.duplicates.load(Ordering::Relaxed),
        "p50_ms": hist.quantile_ms(0.5),
        "p99_ms": hist.quantile_ms(0.99),
        "max_ms": hist.max_ms(),
        "wire_bytes_per_delivery": per_delivery(verdict.wire_bytes.load(Ordering::Relaxed) as f64).round(),
        "server_cpu_us_per_delivery": (per_delivery(cpu_s) * 1e6 * 1000.0).round() / 1000.0,
        "server_cpu_share_of_one_core": cpu_s / took,
    });
    report(&result, json);
    for t in tasks {
        t.abort();
    }
}

/// `clients` WebSocket echo clients on `url`; after a second's warm-up, `seconds` of round
/// trips are counted.
pub async fn echo(url: &str, clients: usize, seconds: u64, json: bool) {
    let hist = Arc::new(Latencies::new());
    let stop = Arc::new(AtomicBool::new(false));
    // Per kind of failure (EchoFailure's order): each one is counted and the first few shown.
    let failures: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (h, s, f, url) = (hist.clone(), stop.clone(), failures.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let trip = |took: Duration| h.record(took.as_micros() as u64);
            if let Err(e) = echo_client(&url, &s, trip).await {
                if f.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>() < 5 {
                    eprintln!("echo client: {e}");
                }
                f[e.kind as usize].fetch_add(1, Ordering::Relaxed);
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
    // Let every client finish the trip it is in, so a failure at the end is seen too.
    let wait = tokio::time::timeout(Duration::from_secs(5), async {
        for t in tasks.iter_mut() {
            let _ = t.await;
        }
    });
    let _ = wait.await;
    let count = |k: EchoFailure| failures[k as usize].load(Ordering::Relaxed);
    let result = serde_json::json!({
        "scenario": "echo",
        "url": url,
        "clients": clients,
        "round_trips_per_s": (trips as f64 / took).round(),
        "handshakes_failed": count(EchoFailure::Handshake),
        "sends_failed": count(EchoFailure::Send),
        "reads_failed": count(EchoFailure::Read),
        "wrong": count(EchoFailure::Wrong),
        "wrong_or_failed": failures.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>(),
        "p50_ms": hist.quantile_ms(0.5),
        "p99_ms": hist.quantile_ms(0.99),
    });
    report(&result, json);
    for t in tasks {
        t.abort();
    }
}

/// `clients` WebSockets held on `url` until the server ends them or `seconds` pass; reports
/// how they ended.
pub async fn hold(url: &str, clients: usize, seconds: u64, json: bool) {
    let (addr, path) = split_url(url);
    let host = addr.to_string();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (host, path) = (host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            match connect_from(1, addr).await {
                Ok(stream) => hold_client(stream, &host, &path).await,
                Err(_) => HoldEnd::Refused,
            }
        }));
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let mut codes: std::collections::BTreeMap<u16, u64> = Default::default();
    let (mut cut, mut refused, mut open) = (0u64, 0u64, 0u64);
    let mut last_end = Duration::ZERO;
    for t in tasks {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, t).await {
            Ok(Ok(end)) => {
                last_end = started.elapsed();
                match end {
                    HoldEnd::Closed(code) => *codes.entry(code).or_default() += 1,
                    HoldEnd::Cut => cut += 1,
                    HoldEnd::Refused => refused += 1,
                }
            }
            _ => open += 1,
        }
    }
    let result = serde_json::json!({
        "scenario": "hold",
        "url": url,
        "clients": clients,
        "closed_with": codes.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
        "closed_1001": codes.get(&1001).copied().unwrap_or(0),
        "cut_without_close": cut,
        "refused": refused,
        "still_open": open,
        "last_end_s": last_end.as_secs_f64(),
    });
    report(&result, json);
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

/// Process ids given comma-separated (empty: none).
fn pid_list(pids: &str) -> Vec<u32> {
    pids.split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect()
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

/// `shape.clients` idle clients held on `url` over `transport`; the summed RSS of `pids`
/// (comma-separated) before and after, and their CPU share over `seconds`.
pub async fn idle(url: &str, transport: &str, shape: Shape, pids: &str, seconds: u64, json: bool) {
    let clients = shape.clients;
    let pids = pid_list(pids);
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
            // A WebSocket that agreed to permessage-deflate (raw client: tungstenite offers none).
            "ws-deflate" => {
                let mut opened = Opened(open.clone());
                let (host, path) = (host.clone(), path.clone());
                held.push(tokio::spawn(async move {
                    ws_client(s, &host, &path, true, &mut opened).await;
                }));
            }
            // A Socket.IO client on a WebSocket (`url`: the Engine.IO URL with its query), joined
            // to `/`.
            "socketio-ws" => {
                let mut opened = Opened(open.clone());
                let (host, path) = (host.clone(), path.clone());
                held.push(tokio::spawn(async move {
                    ws_client_as(s, &host, &path, false, true, &mut opened).await;
                }));
            }
            // A Socket.IO client on polling (`url`: the Engine.IO path): its handshake, its
            // CONNECT to `/` and the answer, then a poll held open.
            "socketio-polling" => {
                let open = open.clone();
                let (host, path) = (host.clone(), path.clone());
                held.push(tokio::spawn(async move {
                    if let Some(mut s) = socketio_polling(s, &host, &path).await {
                        open.fetch_add(1, Ordering::Relaxed);
                        let mut buf = vec![0u8; 4096];
                        while let Ok(n) = s.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
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
            // SockJS sessions held open by a streaming receiver (`url` is the SockJS base).
            "sockjs-xhr_streaming" | "sockjs-eventsource" => {
                let req = if transport == "sockjs-eventsource" {
                    format!("GET {path}/000/b{i}/eventsource HTTP/1.1\r\nHost: {host}\r\n\r\n")
                } else {
                    format!("POST {path}/000/b{i}/xhr_streaming HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n")
                };
                if s.write_all(req.as_bytes()).await.is_err() {
                    continue;
                }
                let open = open.clone();
                held.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut counted = false;
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        // Open once the session's `o` frame came.
                        if !counted && buf[..n].windows(2).any(|w| w == b"o\n" || w == b"o\r") {
                            counted = true;
                            open.fetch_add(1, Ordering::Relaxed);
                        }
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

/// Where a channel's name goes in a URL: `{}` in `template` becomes `c<n>`.
fn channel_url(template: &str, n: usize) -> String {
    template.replacen("{}", &format!("c{n}"), 1)
}

/// `POST`s `body` on a kept-alive connection (made anew when it broke): true on a 2xx.
async fn post(
    conn: &mut Option<tokio::io::BufReader<tokio::net::TcpStream>>,
    addr: std::net::SocketAddr,
    host: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> bool {
    for _ in 0..2 {
        if conn.is_none() {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    *conn = Some(tokio::io::BufReader::new(s));
                }
                Err(_) => return false,
            }
        }
        let s = conn.as_mut().expect("connected above");
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{headers}\r\n{body}",
            body.len()
        );
        if s.get_mut().write_all(req.as_bytes()).await.is_ok() {
            if let Some((status, _, _)) = crate::clients::read_response(s).await {
                return (200..300).contains(&status);
            }
        }
        *conn = None;
    }
    false
}

/// The channels scenario's shape.
pub struct ChannelRun<'a> {
    /// Subscribers' URL, `{}` where the channel goes (`http://host/rooms/{}`).
    pub url: &'a str,
    /// The publish URL, `{}` where the channel goes (`http://admin/publish/rooms/{}`).
    pub publish: &'a str,
    /// Extra request header lines for publishes (`Authorization: Bearer x\r\n`).
    pub publish_headers: String,
    pub channels: usize,
    pub per_channel: usize,
    /// Messages per second published to each channel.
    pub rate: u32,
    pub size: usize,
    pub seconds: u64,
    pub sources: u8,
    pub batch: usize,
    pub pids: &'a str,
}

/// `per_channel` SSE subscribers on each of `channels` channels, each channel published at
/// `rate` msg/s by HTTP POST (8 kept-alive publishing connections); every subscriber checks
/// its channel's order and times each message from its publish. Deliveries, p50/p99 and the
/// server's CPU per delivery over `seconds`.
pub async fn channels(run: ChannelRun<'_>, json: bool) {
    const PUBLISHERS: usize = 8;
    let pids = pid_list(run.pids);
    let clients = run.channels * run.per_channel;
    let shape = Shape {
        clients,
        sources: run.sources,
        batch: run.batch,
    };
    let verdict = Arc::new(Verdict::default());
    let hist = Arc::new(Latencies::new());
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (addr, path) = split_url(&channel_url(run.url, i % run.channels));
        let host = addr.to_string();
        let source = shape.source(i);
        let (v, h, m) = (verdict.clone(), hist.clone(), measuring.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(stream) = connect_from(source, addr).await else {
                v.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            v.connected.fetch_add(1, Ordering::Relaxed);
            sse_client(stream, &host, &path, checker(&v, &h, &m)).await;
            v.lost.fetch_add(1, Ordering::Relaxed);
        }));
        shape.pace(i).await;
    }
    settle(&verdict, clients, Duration::from_secs(60)).await;
    // Publishers: each takes every PUBLISHERS-th channel, one message to each per round.
    let published = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (pub_addr, _) = split_url(&channel_url(run.publish, 0));
    let mut publishers = Vec::new();
    for k in 0..PUBLISHERS.min(run.channels) {
        let mine: Vec<(usize, String)> = (k..run.channels)
            .step_by(PUBLISHERS)
            .map(|c| (c, split_url(&channel_url(run.publish, c)).1))
            .collect();
        let (published, refused) = (published.clone(), refused.clone());
        let (headers, size, rate) = (run.publish_headers.clone(), run.size, run.rate.max(1));
        publishers.push(tokio::spawn(async move {
            let host = pub_addr.to_string();
            let mut conn = None;
            let mut seqs = vec![0u64; mine.len()];
            let every = Duration::from_secs(1) / rate;
            // Spread over the round, so channels are not all published at one instant.
            tokio::time::sleep(every * k as u32 / PUBLISHERS as u32).await;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for (i, (_, path)) in mine.iter().enumerate() {
                    seqs[i] += 1;
                    let body = crate::feed::message(seqs[i], size);
                    if post(&mut conn, pub_addr, &host, path, &headers, &body).await {
                        published.fetch_add(1, Ordering::Relaxed);
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // The first round reaches everyone before measuring starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let ticks = cpu_ticks(&pids);
    let published_before = published.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(run.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let cpu_s = (cpu_ticks(&pids) - ticks) as f64 / 100.0;
    let took = started.elapsed().as_secs_f64();
    let sent = published.load(Ordering::Relaxed) - published_before;
    let received = verdict.received.load(Ordering::Relaxed);
    let expected = sent as f64 * run.per_channel as f64;
    let result = serde_json::json!({
        "scenario": "channels",
        "url": run.url,
        "channels": run.channels,
        "per_channel": run.per_channel,
        "clients": clients,
        "connected": verdict.connected.load(Ordering::Relaxed),
        "failed": verdict.failed.load(Ordering::Relaxed),
        "lost": verdict.lost.load(Ordering::Relaxed),
        "rate_per_channel": run.rate,
        "publishes_per_s": (sent as f64 / took).round(),
        "publish_failures": refused.load(Ordering::Relaxed),
        "deliveries_per_s": (received as f64 / took).round(),
        "delivered_ratio": if expected > 0.0 { received as f64 / expected } else { 0.0 },
        "gaps": verdict.gaps.load(Ordering::Relaxed),
        "duplicates": verdict.duplicates.load(Ordering::Relaxed),
        "p50_ms": hist.quantile_ms(0.5),
        "p99_ms": hist.quantile_ms(0.99),
        "max_ms": hist.max_ms(),
        "server_cpu_us_per_delivery": if received > 0 { (cpu_s / received as f64 * 1e9).round() / 1000.0 } else { 0.0 },
        "server_cpu_share_of_one_core": cpu_s / took,
    });
    report(&result, json);
    for t in publishers.into_iter().chain(tasks) {
        t.abort();
    }
}

/// The server's memory per open channel with no subscriber: one message published to each
/// of `channels` channels (after a warm-up of a tenth as many), the summed RSS of `pids`
/// before and after.
pub async fn channel_memory(publish: &str, headers: &str, channels: usize, pids: &str, json: bool) {
    let pids = pid_list(pids);
    let (addr, _) = split_url(&channel_url(publish, 0));
    let host = addr.to_string();
    let mut conn = None;
    let warm = channels / 10;
    let mut publish_range = async |range: std::ops::Range<usize>| {
        let mut failed = 0u64;
        for c in range {
            let path = split_url(&channel_url(publish, c)).1;
            let body = crate::feed::message(1, 100);
            if !post(&mut conn, addr, &host, &path, headers, &body).await {
                failed += 1;
            }
        }
        failed
    };
    let warm_failed = publish_range(1_000_000..1_000_000 + warm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(&pids);
    let measured_failed = publish_range(0..channels).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(&pids);
    let failed = warm_failed + measured_failed;
    let opened = channels as u64 - measured_failed;
    let result = serde_json::json!({
        "scenario": "channel-memory",
        "url": publish,
        "channels": channels,
        "publish_failures": failed,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "opened": opened,
        "bytes_per_channel": ((after.saturating_sub(before)) as f64 * 1024.0 / opened.max(1) as f64).round(),
    });
    report(&result, json);
}

/// A Socket.IO client's polling start over one kept-alive connection (Engine.IO 4): the
/// handshake, its CONNECT to `/` (a POST), the poll that brings the answer, and the next poll
/// sent (held by the server). None when any step failed.
async fn socketio_polling(
    s: tokio::net::TcpStream,
    host: &str,
    path: &str,
) -> Option<tokio::io::BufReader<tokio::net::TcpStream>> {
    let mut s = tokio::io::BufReader::new(s);
    let base = format!("{path}?EIO=4&transport=polling");
    let get = |q: &str| format!("GET {base}{q} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.get_mut().write_all(get("").as_bytes()).await.ok()?;
    let (_, _, open) = read_response(&mut s).await?;
    let open = String::from_utf8_lossy(&open).into_owned();
    let at = open.find("\"sid\":\"")?;
    let sid: String = open[at + 7..].chars().take_while(|c| *c != '"').collect();
    let post = format!(
        "POST {base}&sid={sid} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 2\r\n\r\n40"
    );
    s.get_mut().write_all(post.as_bytes()).await.ok()?;
    read_response(&mut s).await?;
    s.get_mut()
        .write_all(get(&format!("&sid={sid}")).as_bytes())
        .await
        .ok()?;
    let (_, _, joined) = read_response(&mut s).await?;
    if !joined.starts_with(b"40") {
        return None;
    }
    s.get_mut()
        .write_all(get(&format!("&sid={sid}")).as_bytes())
        .await
        .ok()?;
    Some(s)
}
