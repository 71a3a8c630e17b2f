//! SockJS over the wire: one-shot requests with a body (from a chosen source address), a
//! reader of a streaming answer chunk by chunk, the routes the SockJS protocol suite expects,
//! and the reference server (the npm package `sockjs`) started beside the gateway.

use super::{parse_response, Response, WsBackend, DEADLINE};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The routes the SockJS suite expects (`/echo` with `response_limit` 4 KiB, `/close`,
/// `/disabled_websocket_echo`, `/cookie_needed_echo`), each a per-client session on `backend`.
pub fn suite_routes(backend: &WsBackend) -> String {
    let b = backend.addr;
    format!(
        r#"  - name: echo
    path: /echo
    fanout: per_client
    clients: [websocket, sockjs]
    sockjs: {{ response_limit: 4KiB, client_url: "/sockjs.min.js" }}
    backend: {{ websocket: "ws://{b}/echo", forward_headers: [] }}
  - name: close
    path: /close
    fanout: per_client
    clients: [sockjs]
    backend: {{ websocket: "ws://{b}/close", forward_headers: [] }}
  - name: disabled_websocket_echo
    path: /disabled_websocket_echo
    fanout: per_client
    clients: [sockjs]
    sockjs: {{ websocket: false }}
    backend: {{ websocket: "ws://{b}/echo", forward_headers: [] }}
  - name: cookie_needed_echo
    path: /cookie_needed_echo
    fanout: per_client
    clients: [sockjs]
    sockjs: {{ cookie_needed: true }}
    backend: {{ websocket: "ws://{b}/echo", forward_headers: [] }}
"#
    )
}

/// The `defaults:` the suite's routes run under: any origin (and `null`, which must be listed).
pub const SUITE_DEFAULTS: &str = "defaults:\n  origins: [\"*\", \"null\"]\n";

/// A fresh session id.
pub fn session_id() -> String {
    let mut raw = [0u8; 12];
    getrandom::fill(&mut raw).unwrap();
    raw.iter().map(|b| format!("{b:02x}")).collect()
}

fn head_text(
    method: &str,
    path: &str,
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req
}

async fn connect_from(from: Option<IpAddr>, addr: SocketAddr) -> TcpStream {
    match from {
        None => TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await.expect("connect")
        }
    }
}

/// One request with `body`, over a fresh connection, read to its end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request_from(None, addr, method, path, headers, body).await
}

/// [`request`] from the source address `from` (127.0.0.x).
pub async fn request_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = connect_from(from, addr).await;
    s.write_all(head_text(method, path, addr, headers, body).as_bytes())
        .await
        .unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("the answer ends within the deadline")
        .expect("read");
    parse_response(&raw)
}

/// A streaming answer read one chunk at a time.
pub struct Stream {
    s: TcpStream,
    buf: Vec<u8>,
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    chunked: bool,
}

impl Stream {
    pub async fn open(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Stream {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(head_text(method, path, addr, headers, b"").as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        let split = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
                .await
                .expect("a head within the deadline")
                .unwrap();
            assert!(
                n > 0,
                "closed before a head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = parse_response(&buf[..split + 4]);
        let rest = buf[split + 4..].to_vec();
        let chunked = head
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"));
        Stream {
            s,
            buf: rest,
            status: head.status,
            headers: head.headers,
            chunked,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(DEADLINE, self.s.read(&mut chunk))
            .await
            .expect("data within the deadline")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next chunk's data; None at the end of the answer.
    pub async fn chunk(&mut self) -> Option<String> {
        assert!(self.chunked, "a streaming answer is chunked");
        loop {
            if let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let size = usize::from_str_radix(
                    std::str::from_utf8(&self.buf[..eol]).unwrap().trim(),
                    16,
                )
                .expect("a chunk size");
                if size == 0 {
                    return None;
                }
                if self.buf.len() >= eol + 2 + size + 2 {
                    let data = self.buf[eol + 2..eol + 2 + size].to_vec();
                    self.buf.drain(..eol + 2 + size + 2);
                    return Some(String::from_utf8(data).expect("UTF-8 frames"));
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Closes the connection from the client's side (an abort).
    pub fn abort(self) {
        drop(self.s);
    }
}

/// The reference SockJS server (sockjs-node, from `$SWITCHYARD_TOOLS/node`, installed by
/// `scripts/install-deps.sh --test`) with the suite's four services, on a free port.
pub struct Reference {
    child: Child,
    pub addr: SocketAddr,
}

impl Reference {
    pub async fn start() -> Reference {
        let tools = std::env::var("SWITCHYARD_TOOLS").unwrap_or_else(|_| {
            format!("{}/.cache/switchyard-tools", std::env::var("HOME").unwrap())
        });
        let modules = format!("{tools}/node/node_modules");
        assert!(
            std::path::Path::new(&format!("{modules}/sockjs/package.json")).exists(),
            "sockjs (npm) is not in {modules}: run scripts/install-deps.sh --test"
        );
        let port = super::free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sockjs/reference.js");
        let child = Command::new("node")
            .arg(script)
            .arg(port.to_string())
            .env("NODE_PATH", &modules)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs (apt-get install nodejs)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(
            super::wait_for_port(addr, DEADLINE).await,
            "the reference server did not listen"
        );
        Reference { child, addr }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it is true.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + DEADLINE;
    while !f().await {
        assert!(Instant::now() < until, "{what} never happened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
