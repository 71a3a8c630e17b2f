//! Test harness: the real `switchyard` binary started on free loopback ports with a YAML string,
//! real backends (hyper HTTP, tokio-tungstenite WebSocket) on ephemeral ports, and readiness
//! by connect loop with a deadline. No fixed ports, no fixed sleeps.
#![allow(dead_code)]

use bytes::Bytes;
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
            let yaml = format!(
                "server:\n  listen:\n    - addr: \"{addr}\"\n{extra_listen}  admin: \"{admin}\"\n  threads: 2\n  shutdown_grace: 1s\n{defaults_yaml}\nroutes:\n{routes_yaml}\n"
            );
            let dir = tempfile::tempdir().unwrap();
            let config_path = dir.path().join("gateway.yaml");
            std::fs::write(&config_path, &yaml).unwrap();
            let log_path = dir.path().join("gateway.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
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
                                });
                                Ok(hyper::Response::builder()
                                    .header("content-type", "application/json")
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
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
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

/// Reads SSE events from a streaming response until `count` events with data arrived.
pub struct SseReader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Body text already taken out of its chunks, not yet split into events.
    text: String,
    pub head: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
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
        let mut r = SseReader {
            stream,
            buf: Vec::new(),
            text: String::new(),
            head: String::new(),
        };
        let end = r.fill_until(b"\r\n\r\n").await;
        r.head = String::from_utf8_lossy(&r.buf[..end]).into_owned();
        r.buf.drain(..end + 4);
        r
    }

    async fn fill_until(&mut self, pat: &[u8]) -> usize {
        loop {
            if let Some(p) = self.buf.windows(pat.len()).position(|w| w == pat) {
                return p;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                .await
                .expect("SSE data within the deadline")
                .unwrap();
            assert!(
                n > 0,
                "SSE stream closed early; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next event block (up to a blank line) of the body, without chunk framing.
    async fn next_block(&mut self) -> String {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block = self.text[..end + 2].to_owned();
                self.text.drain(..end + 2);
                return block;
            }
            // Chunked framing: "<hex>\r\n<data>\r\n".
            let eol = self.fill_until(b"\r\n").await;
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.buf[..eol]).unwrap().trim(), 16)
                    .unwrap();
            assert!(size > 0, "SSE stream ended; pending text {:?}", self.text);
            self.buf.drain(..eol + 2);
            while self.buf.len() < size + 2 {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk))
                    .await
                    .unwrap()
                    .unwrap();
                assert!(n > 0, "SSE stream closed mid-chunk");
                self.buf.extend_from_slice(&chunk[..n]);
            }
            self.text
                .push_str(&String::from_utf8_lossy(&self.buf[..size]));
            self.buf.drain(..size + 2);
        }
    }

    /// The next event (blocks of only comments or `retry:` are returned too, with empty data).
    pub async fn next_event(&mut self) -> SseEvent {
        let block = self.next_block().await;
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
            }
        }
        ev.data = data.join("\n");
        ev
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
}
