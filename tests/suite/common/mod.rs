//! Test harness: the real `switchyard` binary started on free loopback ports with a YAML string,
//! real backends (hyper HTTP, tokio-tungstenite WebSocket) on ephemeral ports, and readiness
//! by connect loop with a deadline. No fixed ports, no fixed sleeps.
#![allow(dead_code)]

use bytes::Bytes;
pub mod chat;
pub mod cluster;
pub mod raw_http;
pub mod sockjs;
pub mod tls;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const DEADLINE: Duration = Duration::from_secs(15);

/// A port that was free a moment ago (the gateway binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_for_port(addr: SocketAddr, deadline: Duration) -> bool {
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
    /// The config up to `routes:`, kept for [`Self::rewrite_routes`].
    head: String,
}

impl Gateway {
    /// Starts the gateway with `routes_yaml` (the `routes:` list, indented by two spaces) and
    /// optional `defaults:` block. `{ADDR}` and `{ADMIN}` are filled in.
    pub async fn start(routes_yaml: &str) -> Gateway {
        Self::start_with(routes_yaml, "").await
    }

    pub async fn start_with(routes_yaml: &str, defaults_yaml: &str) -> Gateway {
        Self::start_full("", routes_yaml, defaults_yaml).await
    }

    /// Like [`Self::start_with`], with extra `server.listen` items (YAML list items, indented
    /// by four spaces), e.g. a TLS listener.
    pub async fn start_full(extra_listen: &str, routes_yaml: &str, defaults_yaml: &str) -> Gateway {
        let mut last_log = String::new();
        // A free port can be taken by someone else before the gateway binds it: try again.
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let fill = |text: &str| {
                text.replace("{ADDR}", &addr.to_string())
                    .replace("{ADMIN}", &admin.to_string())
            };
            let (routes_yaml, defaults_yaml) = (fill(routes_yaml), fill(defaults_yaml));
            let head = format!(
                "server:\n  listen:\n    - addr: \"{addr}\"\n{extra_listen}  admin: \"{admin}\"\n  threads: 2\n  shutdown_grace: 1s\n{defaults_yaml}\nroutes:\n"
            );
            let yaml = format!("{head}{routes_yaml}\n");
            let dir = tempfile::tempdir().unwrap();
            let config_path = dir.path().join("gateway.yaml");
            std::fs::write(&config_path, &yaml).unwrap();
            let log_path = dir.path().join("gateway.log");
            let log = std::fs::File::create(&log_path).unwrap();
            // SWITCHYARD_BIN runs the same test against another build (an A/B of a fix).
            let bin = std::env::var_os("SWITCHYARD_BIN")
                .unwrap_or_else(|| env!("CARGO_BIN_EXE_switchyard").into());
            let child = Command::new(bin)
                .arg("--config")
                .arg(&config_path)
                .arg("--log-level")
                .arg("info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("the switchyard binary starts");
            let mut gw = Gateway {
                child,
                addr,
                admin,
                _dir: dir,
                config_path,
                log_path,
                head,
            };
            let until = Instant::now() + DEADLINE;
            loop {
                if let Ok(Some(_)) = gw.child.try_wait() {
                    break;
                }
                if TcpStream::connect(addr).await.is_ok() && TcpStream::connect(admin).await.is_ok()
                {
                    return gw;
                }
                if Instant::now() > until {
                    panic!("gateway did not become ready:\n{}", gw.log());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            last_log = gw.log();
        }
        panic!("gateway failed to start three times; last log:\n{last_log}");
    }

    /// Writes a new `routes:` list into the config file, keeping everything else.
    pub fn rewrite_routes(&self, routes_yaml: &str) {
        std::fs::write(&self.config_path, format!("{}{routes_yaml}\n", self.head)).unwrap();
    }

    /// Writes `text` as the whole config file (for a config that must not validate).
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the gateway process.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit; its exit status, or None if it still runs.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub async fn metrics(&self) -> String {
        http_get(self.admin, "/metrics", &[]).await.body_text()
    }

    /// The gateway process's resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Asserts that the metric `series` is exactly `value` now.
    pub async fn expect_metric(&self, series: &str, value: f64) {
        let text = self.metrics().await;
        assert_eq!(metric(&text, series), Some(value), "{series}");
    }

    /// Waits until the metric `series` reaches at least `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let until = Instant::now() + DEADLINE;
        loop {
            let text = self.metrics().await;
            if metric(&text, series).is_some_and(|v| v >= value) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{series} never reached {value}; metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `series` is exactly `value` (a gauge coming down, say).
    pub async fn wait_metric_is(&self, series: &str, value: f64) {
        let until = Instant::now() + DEADLINE;
        loop {
            let text = self.metrics().await;
            if metric(&text, series) == Some(value) {
                return;
            }
            assert!(
                Instant::now() < until,
                "{series} never came to {value}; metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A one-shot HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16384];
        loop {
            let n = s.read(&mut chunk).await.expect("read response");
            raw.extend_from_slice(&chunk[..n]);
            if n == 0 || response_complete(&raw) {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("response within the deadline");
    parse_response(&raw)
}

/// True once the head and a `Content-Length` body are in (other bodies end at EOF).
fn response_complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| raw.len() >= split + 4 + len)
}

pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    http_request(addr, "GET", path, headers).await
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// A real HTTP backend (hyper). `GET /healthz` answers 200 while `healthy`, 503 otherwise; any
/// other request answers `200` with a JSON echo of what it received and this backend's name.
pub struct HttpBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpBackend {
    pub async fn start(name: &'static str) -> HttpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let (h, ok) = (hits.clone(), healthy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, ok) = (h.clone(), ok.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (h, ok) = (h.clone(), ok.clone());
                            async move {
                                if req.uri().path() == "/healthz" {
                                    let status = if ok.load(Ordering::SeqCst) { 200 } else { 503 };
                                    return Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .status(status)
                                            .body(Full::new(Bytes::from_static(b"health")))
                                            .unwrap(),
                                    );
                                }
                                h.fetch_add(1, Ordering::SeqCst);
                                let hdr = |n: &str| {
                                    req.headers()
                                        .get(n)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or("")
                                        .to_owned()
                                };
                                let body = serde_json::json!({
                                    "backend": name,
                                    "path": req.uri().path_and_query().map(|p| p.to_string()),
                                    "host": hdr("host"),
                                    "x-forwarded-for": hdr("x-forwarded-for"),
                                    "x-forwarded-proto": hdr("x-forwarded-proto"),
                                    "upgrade": hdr("upgrade"),
                                    "http2-settings": hdr("http2-settings"),
                                    "connection": hdr("connection"),
                                });
                                // A careless backend's own CORS, which the edge must not pass on.
                                Ok(hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .header("access-control-allow-origin", "*")
                                    .header("access-control-allow-credentials", "true")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap())
                            }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        HttpBackend {
            addr,
            hits,
            healthy,
            task,
        }
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A real WebSocket echo backend (tokio-tungstenite) that counts connections.
/// A WebSocket backend that echoes every text and binary message, except on `/close`, where it
/// closes each connection at once with `3000 Go away!` (the SockJS suite's `close` service).
pub struct WsBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl WsBackend {
    pub async fn start() -> WsBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = c.clone();
                // As WebSocket servers commonly do: an echo is not held back by Nagle's
                // algorithm waiting for the ACK of the one before.
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
                    let path = Arc::new(std::sync::Mutex::new(String::new()));
                    let p = path.clone();
                    #[allow(clippy::result_large_err)]
                    let record = move |req: &Request, resp: Response| {
                        *p.lock().unwrap() = req.uri().path().to_owned();
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    if *path.lock().unwrap() == "/close" {
                        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
                        let bye = CloseFrame {
                            code: 3000.into(),
                            reason: "Go away!".into(),
                        };
                        let _ = ws.close(Some(bye)).await;
                        while let Some(Ok(_)) = ws.next().await {}
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WsBackend {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens: the port stays bound (without `listen`) for as long as
/// the guard lives, so connects are refused and no other socket can take the port meanwhile.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

pub fn dead_port() -> DeadPort {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    DeadPort {
        addr,
        _socket: socket,
    }
}

/// Reads SSE events from a streaming response (HTTP/1.1 chunked) over a raw socket.
pub struct SseReader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Body text already taken out of its chunks, not yet split into events; `pos` is where
    /// the unread part starts.
    text: String,
    pos: usize,
    ended: bool,
    pub head: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    pub comments: Vec<String>,
}

impl SseReader {
    pub async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseReader {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        Self::from_stream(stream).await
    }

    /// Takes over a socket on which an SSE request was already sent.
    pub async fn from_stream(stream: TcpStream) -> SseReader {
        let mut r = SseReader {
            stream,
            buf: Vec::new(),
            text: String::new(),
            pos: 0,
            ended: false,
            head: String::new(),
        };
        let end = r.fill_until(b"\r\n\r\n").await.expect("a response head");
        r.head = String::from_utf8_lossy(&r.buf[..end]).into_owned();
        r.buf.drain(..end + 4);
        r
    }

    /// Reads until `pat` is in the buffer; None when the connection closed first.
    async fn fill_until(&mut self, pat: &[u8]) -> Option<usize> {
        let mut from = 0;
        loop {
            if let Some(p) = self.buf[from..].windows(pat.len()).position(|w| w == pat) {
                return Some(from + p);
            }
            from = self.buf.len().saturating_sub(pat.len() - 1);
            let mut chunk = [0u8; 16384];
            let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                .await
                .expect("SSE data within the deadline")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event block (up to a blank line) of the body; None at the end of the stream.
    async fn next_block_or_end(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.text[self.pos..].find("\n\n") {
                let block = self.text[self.pos..self.pos + end + 2].to_owned();
                self.pos += end + 2;
                if self.pos > 1 << 16 {
                    self.text.drain(..self.pos);
                    self.pos = 0;
                }
                return Some(block);
            }
            if self.ended {
                return None;
            }
            // Chunked framing: "<hex>\r\n<data>\r\n"; a zero-size chunk ends the body.
            let Some(eol) = self.fill_until(b"\r\n").await else {
                self.ended = true;
                continue;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buf[..eol]).unwrap().trim(), 16)
                    .unwrap();
            self.buf.drain(..eol + 2);
            if size == 0 {
                self.ended = true;
                continue;
            }
            while self.buf.len() < size + 2 {
                let mut chunk = [0u8; 16384];
                let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap_or(0);
                assert!(n > 0, "SSE stream closed mid-chunk");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            self.text
                .push_str(&String::from_utf8_lossy(&self.buf[..size]));
            self.buf.drain(..size + 2);
        }
    }

    /// The next event (blocks of only comments or `retry:` are returned too, with empty data);
    /// None when the stream ended.
    pub async fn next_event_or_end(&mut self) -> Option<SseEvent> {
        let block = self.next_block_or_end().await?;
        let mut ev = SseEvent::default();
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                ev.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                ev.event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            } else if let Some(v) = line.strip_prefix("retry: ") {
                ev.retry = v.parse().ok();
            } else if let Some(v) = line.strip_prefix(':') {
                ev.comments.push(v.trim().to_owned());
            }
        }
        ev.data = data.join("\n");
        Some(ev)
    }

    pub async fn next_event(&mut self) -> SseEvent {
        match self.next_event_or_end().await {
            Some(e) => e,
            None => panic!("SSE stream ended"),
        }
    }

    /// The next event that carries data, skipping heartbeats and `retry:` blocks.
    pub async fn next_data_event(&mut self) -> SseEvent {
        loop {
            let ev = self.next_event().await;
            if ev.id.is_some() || ev.event.is_some() {
                return ev;
            }
        }
    }

    /// Like [`Self::next_data_event`], None when the stream ended first.
    pub async fn next_data_event_or_end(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_event_or_end().await?;
            if ev.id.is_some() || ev.event.is_some() {
                return Some(ev);
            }
        }
    }
}

/// The value of one Prometheus series (`name{labels}` exactly as exported), if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// What a [`FeedBackend`] connection is told to do.
#[derive(Clone)]
pub enum FeedCmd {
    /// Send these messages, `batch` at a time with `pause` between batches.
    Send {
        messages: Arc<Vec<tokio_tungstenite::tungstenite::Message>>,
        batch: usize,
        pause: Duration,
    },
    Close(u16, String),
    /// Drop the TCP connection without a close frame.
    Drop,
}

/// A real WebSocket backend (tokio-tungstenite) that publishes what the test tells it to, on
/// every connection it holds, and records each handshake's headers.
pub struct FeedBackend {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
    /// Connections open now.
    pub open: Arc<AtomicUsize>,
    pub handshakes: Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
    cmd: tokio::sync::broadcast::Sender<FeedCmd>,
    task: tokio::task::JoinHandle<()>,
}

impl FeedBackend {
    pub async fn start() -> FeedBackend {
        Self::start_at("127.0.0.1:0".parse().unwrap(), None).await
    }

    /// Listens on `addr`; `protocol` is the subprotocol it picks when a client offers it.
    pub async fn start_at(addr: SocketAddr, protocol: Option<&'static str>) -> FeedBackend {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (cmd, _) = tokio::sync::broadcast::channel::<FeedCmd>(64);
        let (c, o, h, tx) = (
            connections.clone(),
            open.clone(),
            handshakes.clone(),
            cmd.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, o, h) = (c.clone(), o.clone(), h.clone());
                let mut rx = tx.subscribe();
                conns.spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
                    // The signature is tungstenite's handshake callback's.
                    #[allow(clippy::result_large_err)]
                    let record = |req: &Request, mut resp: Response| {
                        h.lock().unwrap().push(req.headers().clone());
                        let offered = req
                            .headers()
                            .get("sec-websocket-protocol")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if let Some(p) = protocol.filter(|p| offered.split(',').any(|o| o.trim() == *p)) {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.parse().unwrap());
                        }
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    o.fetch_add(1, Ordering::SeqCst);
                    let _open = DecOnDrop(o);
                    loop {
                        tokio::select! {
                            cmd = rx.recv() => match cmd {
                                Ok(FeedCmd::Send { messages, batch, pause }) => {
                                    for group in messages.chunks(batch.max(1)) {
                                        for m in group {
                                            if ws.feed(m.clone()).await.is_err() { return; }
                                        }
                                        if ws.flush().await.is_err() { return; }
                                        if !pause.is_zero() { tokio::time::sleep(pause).await; }
                                    }
                                }
                                Ok(FeedCmd::Close(code, reason)) => {
                                    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                        code: code.into(),
                                        reason: reason.into(),
                                    };
                                    let _ = ws.close(Some(frame)).await;
                                    // Wait for the peer's close reply (or its going away).
                                    let _ = tokio::time::timeout(DEADLINE, async { while let Some(Ok(_)) = ws.next().await {} }).await;
                                    return;
                                }
                                Ok(FeedCmd::Drop) | Err(_) => return,
                            },
                            msg = ws.next() => match msg {
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                        }
                    }
                });
            }
        });
        FeedBackend {
            addr,
            connections,
            open,
            handshakes,
            cmd,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Waits until exactly `n` connections are open.
    pub async fn wait_open(&self, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.open.load(Ordering::SeqCst) != n {
            assert!(
                Instant::now() < until,
                "backend has {} open connections, expected {n}",
                self.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` connections were accepted in all.
    pub async fn wait_connections(&self, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.connections.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < until, "backend never saw connection {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn send(&self, cmd: FeedCmd) {
        assert!(self.cmd.send(cmd).is_ok(), "a backend connection is open");
    }

    /// Sends text messages `"<n>:<padding>"` for n in `range`.
    pub fn send_numbered(
        &self,
        range: std::ops::RangeInclusive<u64>,
        pad: usize,
        batch: usize,
        pause: Duration,
    ) {
        let filler = "x".repeat(pad);
        let messages = range
            .map(|n| tokio_tungstenite::tungstenite::Message::text(format!("{n}:{filler}")))
            .collect();
        self.send(FeedCmd::Send {
            messages: Arc::new(messages),
            batch,
            pause,
        });
    }
}

impl Drop for FeedBackend {
    fn drop(&mut self) {
        let _ = self.cmd.send(FeedCmd::Drop);
        self.task.abort();
    }
}

struct DecOnDrop(Arc<AtomicUsize>);

impl Drop for DecOnDrop {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The number in a `"<n>:<padding>"` message.
pub fn number_of(text: &str) -> u64 {
    text.split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered message: {text:?}"))
}

/// A raw `text/event-stream` backend: each GET is answered with a chunked event stream whose
/// chunks the test writes itself (so it can split lines anywhere), and its `Last-Event-ID`
/// header is recorded.
pub struct SseBackend {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub last_event_ids: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    chunks: tokio::sync::broadcast::Sender<Option<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl SseBackend {
    pub async fn start() -> SseBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let last_event_ids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (chunks, _) = tokio::sync::broadcast::channel::<Option<Bytes>>(1024);
        let (c, ids, tx) = (connections.clone(), last_event_ids.clone(), chunks.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (c, ids) = (c.clone(), ids.clone());
                let mut rx = tx.subscribe();
                conns.spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let last_id = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("last-event-id").then(|| v.trim().to_owned())
                    });
                    ids.lock().unwrap().push(last_id);
                    c.fetch_add(1, Ordering::SeqCst);
                    let resp = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
                    if stream.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    while let Ok(Some(chunk)) = rx.recv().await {
                        let mut out = format!("{:x}\r\n", chunk.len()).into_bytes();
                        out.extend_from_slice(&chunk);
                        out.extend_from_slice(b"\r\n");
                        if stream.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    // Ended by the test: finish the body properly.
                    let _ = stream.write_all(b"0\r\n\r\n").await;
                });
            }
        });
        SseBackend {
            addr,
            connections,
            last_event_ids,
            chunks,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Writes one chunk of the event stream to every open connection.
    pub fn write(&self, text: &str) {
        self.chunks
            .send(Some(Bytes::from(text.to_owned())))
            .expect("a backend connection is open");
    }

    /// Ends every open event stream (a complete, proper end of the response body).
    pub fn end_streams(&self) {
        let _ = self.chunks.send(None);
    }

    pub async fn wait_connections(&self, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.connections.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < until, "backend never saw connection {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SseBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request head up to its blank line, a byte at a time (nothing past it is consumed),
/// as a hand-written backend does. None when the peer closed first.
pub async fn read_request_head(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// The value of header `name` in an HTTP head, if it has one.
pub fn head_header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The `101` a WebSocket server answers a handshake `head` with (RFC 6455 section 4.2.2), for
/// hand-written backends that then misbehave on purpose. None when the head has no key.
pub fn ws_switching_protocols(head: &str) -> Option<String> {
    let key = head_header(head, "sec-websocket-key")?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    Some(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// About 1 KiB of JSON (a feed's quotes), different for each `n`: what compression is for.
pub fn json_quotes(n: usize) -> String {
    let items: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "{{\"symbol\":\"SYM{i}\",\"bid\":{}.25,\"ask\":{}.50,\"volume\":{}}}",
                n + i,
                n + i,
                n * 100 + i
            )
        })
        .collect();
    format!(
        "{{\"seq\":{n},\"kind\":\"quotes\",\"items\":[{}]}}",
        items.join(",")
    )
}

/// Opens a WebSocket on `path` offering `extensions` (if any); returns the stream and the value
/// of `Sec-WebSocket-Extensions` in the 101 (empty when none).
pub async fn ws_open_offering(
    addr: SocketAddr,
    path: &str,
    extensions: Option<&str>,
) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let offer = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n").as_bytes()).await.unwrap();
    let head = read_request_head(&mut s).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let ext = head_header(&head, "sec-websocket-extensions").unwrap_or_default();
    (s, ext)
}

/// A masked client frame; `first` is its first byte (FIN, RSV1, opcode).
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x1b, 0x2c, 0x3d, 0x4e];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
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
    out
}

/// One server frame: its first byte and payload.
pub async fn read_server_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut h))
        .await
        .expect("a frame in time")
        .expect("a frame");
    assert_eq!(h[1] & 0x80, 0, "server frames are unmasked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).await.unwrap();
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l).await.unwrap();
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (h[0], payload)
}

/// `$SWITCHYARD_TOOLS/node/node_modules` (installed by `scripts/install-deps.sh --test`), once
/// `package` is there.
pub fn node_modules(package: &str) -> String {
    let tools = std::env::var("SWITCHYARD_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/switchyard-tools", std::env::var("HOME").unwrap()));
    let modules = format!("{tools}/node/node_modules");
    assert!(
        std::path::Path::new(&format!("{modules}/{package}/package.json")).exists(),
        "{package} (npm) is not in {modules}: run scripts/install-deps.sh --test"
    );
    modules
}

/// A node script of the tests (a reference server, a backend) listening on a free port, given
/// as its first argument; killed when dropped.
pub struct NodeServer {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl NodeServer {
    /// `script` under tests/, with `args` after the port; `package` is what it needs from npm.
    pub async fn start(script: &str, package: &str, args: &[&str]) -> NodeServer {
        let port = free_port();
        let child = std::process::Command::new("node")
            .arg(format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR")))
            .arg(port.to_string())
            .args(args)
            .env("NODE_PATH", node_modules(package))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node runs (apt-get install nodejs)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            wait_for_port(addr, Duration::from_secs(10)).await,
            "{script} did not listen"
        );
        NodeServer { child, addr }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
