//! Two-way backends for per-client session tests, and a keep-alive HTTP client.
//!
//! - [`ChatBackend`]: a plain WebSocket server (tokio-tungstenite) that answers each text
//!   message with `CONN:N:TEXT` (its own connection number and a per-connection counter), closes
//!   with code C on `close:C`, and records each connection's handshake headers and the close
//!   code the gateway sent it.
//! - [`SsePostBackend`]: a hyper server with `GET /events` (an event stream) and `POST /send`:
//!   each POST body comes back as `data: echo:BODY` on the event streams opened with the same
//!   `Cookie`, and on streams opened without one (a shared feed); a body of `forbidden` is answered 403.

use super::DEADLINE;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// One backend connection as the chat backend saw it.
#[derive(Debug, Clone, Default)]
pub struct ChatConn {
    pub headers: http::HeaderMap,
    /// The close code the gateway sent, once it closed.
    pub closed_with: Option<u16>,
    /// True once the connection is gone (closed or dropped).
    pub ended: bool,
    /// Text messages received, in order.
    pub received: Vec<String>,
}

pub struct ChatBackend {
    pub addr: SocketAddr,
    pub conns: Arc<Mutex<Vec<ChatConn>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ChatBackend {
    pub async fn start() -> ChatBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<ChatConn>>> = Arc::default();
        let all = conns.clone();
        let task = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let all = all.clone();
                tasks.spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
                    let headers = Arc::new(Mutex::new(http::HeaderMap::new()));
                    let h = headers.clone();
                    #[allow(clippy::result_large_err)]
                    let record = move |req: &Request, resp: Response| {
                        *h.lock().unwrap() = req.headers().clone();
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    let me = {
                        let mut all = all.lock().unwrap();
                        all.push(ChatConn {
                            headers: headers.lock().unwrap().clone(),
                            ..Default::default()
                        });
                        all.len()
                    };
                    let mut count = 0u64;
                    while let Some(Ok(msg)) = ws.next().await {
                        match msg {
                            Message::Text(t) => {
                                all.lock().unwrap()[me - 1].received.push(t.to_string());
                                if let Some(code) = t.strip_prefix("close:") {
                                    let frame = CloseFrame {
                                        code: code.parse::<u16>().unwrap().into(),
                                        reason: "closed by the backend".into(),
                                    };
                                    let _ = ws.close(Some(frame)).await;
                                    continue;
                                }
                                count += 1;
                                let reply = format!("{me}:{count}:{t}");
                                if ws.send(Message::text(reply)).await.is_err() {
                                    break;
                                }
                            }
                            Message::Close(frame) => {
                                all.lock().unwrap()[me - 1].closed_with =
                                    frame.map(|f| u16::from(f.code));
                            }
                            _ => {}
                        }
                    }
                    all.lock().unwrap()[me - 1].ended = true;
                });
            }
        });
        ChatBackend { addr, conns, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn conns(&self) -> Vec<ChatConn> {
        self.conns.lock().unwrap().clone()
    }

    /// Waits until connection `n` (1-based) has ended and returns it.
    pub async fn wait_ended(&self, n: usize) -> ChatConn {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(c) = self.conns().get(n - 1).filter(|c| c.ended) {
                return c.clone();
            }
            assert!(Instant::now() < until, "backend connection {n} never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A POST the SSE backend received.
#[derive(Debug, Clone)]
pub struct Posted {
    pub headers: http::HeaderMap,
    pub body: String,
}

type Streams = Arc<Mutex<Vec<(String, tokio::sync::mpsc::UnboundedSender<Bytes>)>>>;

pub struct SsePostBackend {
    pub addr: SocketAddr,
    /// Headers of each `GET /events`.
    pub subscriptions: Arc<Mutex<Vec<http::HeaderMap>>>,
    pub posts: Arc<Mutex<Vec<Posted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SsePostBackend {
    pub async fn start() -> SsePostBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let subscriptions: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let posts: Arc<Mutex<Vec<Posted>>> = Arc::default();
        let streams: Streams = Arc::default();
        let (subs, ps) = (subscriptions.clone(), posts.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (subs, ps, streams) = (subs.clone(), ps.clone(), streams.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (subs, ps, streams) = (subs.clone(), ps.clone(), streams.clone());
                            async move { Ok::<_, hyper::Error>(sse_post(req, subs, ps, streams).await) }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        SsePostBackend {
            addr,
            subscriptions,
            posts,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn posts(&self) -> Vec<Posted> {
        self.posts.lock().unwrap().clone()
    }

    pub async fn wait_subscriptions(&self, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.subscriptions.lock().unwrap().len() < n {
            assert!(Instant::now() < until, "backend never saw subscription {n}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SsePostBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn sse_post(
    req: hyper::Request<hyper::body::Incoming>,
    subs: Arc<Mutex<Vec<http::HeaderMap>>>,
    posts: Arc<Mutex<Vec<Posted>>>,
    streams: Streams,
) -> hyper::Response<BoxBody> {
    let cookie = req
        .headers()
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/events") => {
            subs.lock().unwrap().push(req.headers().clone());
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
            streams.lock().unwrap().push((cookie, tx));
            let body = futures_util::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((
                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
                    rx,
                ))
            });
            hyper::Response::builder()
                .header("content-type", "text/event-stream")
                .body(BodyExt::boxed(http_body_util::StreamBody::new(body)))
                .unwrap()
        }
        ("POST", "/send") => {
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8_lossy(&body).into_owned();
            posts.lock().unwrap().push(Posted {
                headers,
                body: body.clone(),
            });
            if body == "forbidden" {
                return hyper::Response::builder()
                    .status(403)
                    .body(BodyExt::boxed(Full::new(Bytes::from_static(b"no"))))
                    .unwrap();
            }
            let event = Bytes::from(format!("data: echo:{body}\n\n"));
            for (c, tx) in streams.lock().unwrap().iter() {
                if cookie.is_empty() || c.is_empty() || *c == cookie {
                    let _ = tx.send(event.clone());
                }
            }
            hyper::Response::builder()
                .status(204)
                .body(BodyExt::boxed(Full::new(Bytes::new())))
                .unwrap()
        }
        _ => hyper::Response::builder()
            .status(404)
            .body(BodyExt::boxed(Full::new(Bytes::new())))
            .unwrap(),
    }
}

/// A keep-alive HTTP/1.1 client (hyper) on one connection to the gateway.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

/// An answer: status, headers, body text.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        Client { sender, addr }
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        if self.sender.ready().await.is_err() {
            // The gateway closed the connection after an error answer: open a new one.
            *self = Client::connect(self.addr).await;
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let call = async {
            let resp = self.sender.send_request(req).await.expect("response");
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            }
        };
        tokio::time::timeout(DEADLINE, call)
            .await
            .expect("answer within the deadline")
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request("GET", path, headers, "").await
    }
}
