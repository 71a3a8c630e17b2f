//! The edge: the first stage of the pipeline, every accepted connection before pingora parses a
//! byte.
//!
//! ```text
//! accept (pacer) -> own task: HeadDeadline -> read_head (http1) -+-> lean stream: http1::Connection,
//!                                                                |     served by the gateway (LeanStreams)
//!                                                                +-> anything else: the head replayed to
//!                                                                      pingora (HttpServerApp), unchanged
//! ```
//!
//! Each HTTP/1 connection leaves pingora's connection task at once for a task of its own, sized
//! by what its own loop needs: a connection waiting for a head holds the head's buffer, not
//! pingora's machinery. The admin listener's connections are read the same way
//! ([`AdminConnections`]): a request with a small body of known length is read whole and
//! answered here (pipelined requests in order, `100 Continue` before a body), anything else on
//! pingora's path.
//!
//! - [`pacer`]: accepts paced to `accept_rate` (reconnect storms).
//! - [`deadline`]: the request-head deadline (slowloris), and the replay of bytes read ahead.
//! - [`http1`]: the head reader, and the lean HTTP/1.1 connection long-lived streams run on.
//!
//! The edge reaches the gateway only through [`LeanStreams`], which the gateway implements (the
//! way pingora-proxy implements pingora-core's `ServerApp`), and pingora through its
//! `HttpServerApp`: it imports neither. It also counts the connections it holds, which is what
//! a drain waits for ([`open_connections`]).
//!
//! Slow TLS handshakes happen before this stage (in pingora's listener) and are not covered.

pub mod deadline;
pub mod http1;
pub mod pacer;

pub use deadline::HeadDeadline;
pub use pacer::AcceptPacer;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

use crate::transport::Downstream;

/// What the edge needs from the layer above it: which requests it serves over its own lean
/// connection, and serving them (admission included).
pub trait LeanStreams: Send + Sync + 'static {
    /// What serving a taken request needs (its route, in the generation that took it).
    type Route: Send;

    /// Some when the request is one the edge should serve itself (a long-lived stream, a
    /// tunnel, a pass-through HTTP request), given what its head asks (`shape`).
    fn stream_route(&self, req: &RequestHeader, shape: http1::Shape) -> Option<Self::Route>;

    /// Some when a plain head (see [`http1::PlainHead`]) for `host` and `path` is one the
    /// gateway passes through as it is, with no request value built.
    fn plain_route(&self, host: &str, path: &str) -> Option<Self::Route>;

    /// Serves a plain head [`Self::plain_route`] took on `conn`; `raw_head` is its head as
    /// the client sent it, `size` its size as `max_header_bytes` counts it.
    fn serve_plain(
        &self,
        conn: &mut http1::Connection,
        route: Self::Route,
        raw_head: BytesMut,
        size: usize,
    ) -> impl Future<Output = ()> + Send;

    /// Serves one request on `conn`; `raw_head` is its head as the client sent it, to be
    /// dropped as soon as it has been judged (a stream may last hours).
    fn serve_stream(
        &self,
        conn: &mut http1::Connection,
        route: Self::Route,
        raw_head: BytesMut,
    ) -> impl Future<Output = ()> + Send;
}

/// The listener's app: every connection gets a request-head deadline, and each request head
/// is read here first. A GET the gateway takes as a stream is served over the edge's own lean
/// connection ([`http1::Connection`]), in a task of its own; anything else is replayed to
/// pingora's app `P` unchanged. HTTP/2 (TLS with ALPN `h2`) goes to pingora directly.
pub struct Edge<P, G> {
    pub pingora: Arc<P>,
    pub gateway: Arc<G>,
    pub header_timeout: Duration,
    /// The admin listener, served on the same threads as clients (see [`AdminListener`]).
    pub admin: Option<AdminListener>,
}

/// The admin listener's app (the server's), as the edge serves it: requests it reads whole
/// (a head and a `Content-Length` body of at most [`ADMIN_LEAN_BODY`] bytes) on its lean
/// connection, anything else on pingora's path, through the app's `HttpServerApp`.
pub trait AdminConnections: Send + Sync {
    /// The answer to one request whose whole body has been read.
    fn answer<'a>(
        &'a self,
        req: &'a RequestHeader,
        peer: Option<std::net::IpAddr>,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<Vec<u8>>> + Send + 'a>>;

    /// Serves one request on pingora's path, for every other request (see [`to_pingora`]).
    fn to_pingora<'a>(
        &'a self,
        io: Box<HeadDeadline>,
        replay: bytes::Bytes,
        shutdown: &'a ShutdownWatch,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Box<HeadDeadline>>> + Send + 'a>>;
}

/// The largest request body the admin listener reads whole on its lean path (a publish's,
/// usually); a larger one, or a chunked one, is read by pingora's path, which streams it.
pub const ADMIN_LEAN_BODY: u64 = 256 * 1024;

/// How long a request body on the admin listener's lean path may take to arrive.
const ADMIN_BODY_DEADLINE: Duration = Duration::from_secs(30);

/// The admin listener's address and app. It is a listener of the client-serving service, so
/// that its work runs on the threads clients are served on: a publish (`server::publish`)
/// then wakes its subscribers where they live, in the same turn of the event loop that read
/// it, rather than handing each wake-up from another thread.
pub struct AdminListener {
    pub addr: std::net::SocketAddr,
    pub app: Arc<dyn AdminConnections>,
}

impl AdminListener {
    /// Whether `stream` came in on the admin address.
    fn takes(&self, stream: &Stream) -> bool {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        local.is_some_and(|l| {
            l.port() == self.addr.port()
                && (self.addr.ip().is_unspecified() || l.ip() == self.addr.ip())
        })
    }
}

/// How long a kept-alive connection may wait for its next request (pingora's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

/// Whitespace a client may send between two requests on a kept-alive connection (RFC 9112
/// section 2.2 asks servers to skip at least one empty line); more closes the connection.
pub const KEEPALIVE_WHITESPACE_MAX: usize = 1024;

#[async_trait]
impl<P, G> ServerApp for Edge<P, G>
where
    P: HttpServerApp + Send + Sync + 'static,
    G: LeanStreams,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if let Some(admin) = self.admin.as_ref().filter(|a| a.takes(&stream)) {
            // Not a client: not counted among the connections a drain waits for.
            let (admin, shutdown) = (admin.app.clone(), shutdown.clone());
            let ip = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            let io = Box::new(HeadDeadline::new(stream, self.header_timeout));
            tokio::spawn(async move { serve_admin(&*admin, io, ip, shutdown).await });
            return None;
        }
        let open = OpenConnection::new();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream: Stream = Box::new(HeadDeadline::new(stream, self.header_timeout));
            let _open = open;
            return self.pingora.process_new(stream, shutdown).await;
        }
        let client = Client {
            ip: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            tls: stream.get_ssl_digest().is_some(),
        };
        let io = Box::new(HeadDeadline::new(stream, self.header_timeout));
        // The connection leaves pingora's task at once: that task is sized for a TLS handshake
        // and pingora's HTTP machinery, and a connection waiting for its first head (or
        // streaming for hours) should hold only what its own loop needs.
        let (edge, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            edge.serve_own_task(io, BytesMut::new(), client, open, shutdown)
                .await
        });
        None
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.pingora).await
    }
}

#[derive(Clone, Copy)]
struct Client {
    ip: Option<std::net::IpAddr>,
    tls: bool,
}

impl<P, G> Edge<P, G>
where
    P: HttpServerApp + Send + Sync + 'static,
    G: LeanStreams,
{
    /// Serves the requests of one HTTP/1 connection in a task of its own: each head is read
    /// here; lean streams are served here, anything else goes to pingora with its head
    /// replayed, and the connection comes back when pingora may reuse it.
    async fn serve_own_task(
        self: &Arc<Self>,
        mut io: Box<HeadDeadline>,
        mut carry: BytesMut,
        client: Client,
        _open: OpenConnection,
        shutdown: ShutdownWatch,
    ) {
        let mut first = true;
        loop {
            let Some(head) = next_head(&mut io, carry, first, &shutdown).await else {
                return;
            };
            first = false;
            match self.route_of(head) {
                Next::Plain {
                    mut bytes,
                    len,
                    route,
                    plain,
                } => {
                    // Shared, not copied: a pass-through request is short-lived, and the body
                    // bytes that came with its head go upstream with it.
                    let rest = bytes.split_off(len);
                    let draining = *shutdown.borrow();
                    let mut conn = http1::Connection::plain(
                        io,
                        rest,
                        client.ip,
                        client.tls,
                        draining,
                        plain.close,
                    );
                    self.gateway
                        .serve_plain(&mut conn, route, bytes, plain.size)
                        .await;
                    match conn.into_reusable() {
                        Some((next, rest)) => {
                            io = next;
                            carry = rest;
                        }
                        None => return,
                    }
                }
                Next::Lean {
                    req,
                    mut bytes,
                    len,
                    route,
                } => {
                    let rest = http1::after_head(&bytes, len);
                    bytes.truncate(len);
                    let draining = *shutdown.borrow();
                    let mut conn =
                        http1::Connection::new(io, req, rest, client.ip, client.tls, draining);
                    self.gateway.serve_stream(&mut conn, route, bytes).await;
                    match conn.into_reusable() {
                        Some((next, rest)) => {
                            io = next;
                            carry = rest;
                        }
                        None => return,
                    }
                }
                Next::Pingora { replay, rest } => {
                    carry = rest;
                    if crate::access_log::enabled() {
                        if let Some(method) = http1::malformed(&replay) {
                            let now = (std::time::SystemTime::now(), std::time::Instant::now());
                            crate::access_log::refused_head(client.ip, now, method);
                        }
                    }
                    let Some(back) =
                        Box::pin(to_pingora(&self.pingora, io, replay, &shutdown)).await
                    else {
                        return;
                    };
                    io = back;
                }
            }
        }
    }

    /// Which path serves a head: the gateway's lean one, or pingora's (with the head to replay
    /// and any bytes after a bodiless head, which are the next request's).
    fn route_of(&self, head: http1::Head) -> Next<G::Route> {
        match head {
            http1::Head::Plain {
                bytes, len, plain, ..
            } => {
                let taken = self
                    .gateway
                    .plain_route(plain.host(&bytes), plain.path(&bytes));
                match taken {
                    Some(route) => Next::Plain {
                        bytes,
                        len,
                        route,
                        plain,
                    },
                    // Another path serves it, with a request value.
                    None => self.route_of(http1::full_head(bytes)),
                }
            }
            http1::Head::Parsed {
                req,
                bytes,
                len,
                shape,
            } => match self.gateway.stream_route(&req, shape) {
                Some(route) => Next::Lean {
                    req,
                    bytes,
                    len,
                    route,
                },
                None => {
                    let (replay, rest) = for_pingora(bytes, len, shape.body);
                    Next::Pingora { replay, rest }
                }
            },
            http1::Head::Other(bytes) => Next::Pingora {
                replay: bytes.freeze(),
                rest: BytesMut::new(),
            },
            http1::Head::Closed => unreachable!("next_head returns no closed head"),
        }
    }
}

/// What pingora reads again of a parsed head it is handed (`replay`), and the bytes after it
/// that are the next request's (`rest`). A head with a body: every byte read is pingora's.
fn for_pingora(mut bytes: BytesMut, len: usize, body: http1::Framing) -> (bytes::Bytes, BytesMut) {
    if body != http1::Framing::Empty {
        return (bytes.freeze(), BytesMut::new());
    }
    let rest = http1::after_head(&bytes, len);
    bytes.truncate(len);
    (bytes.freeze(), rest)
}

/// Hands the connection to `app` on pingora's path with the bytes read so far (`replay`), so
/// it reads the head again and answers it as it would have; the connection comes back when
/// pingora may reuse it.
pub async fn to_pingora(
    app: &Arc<impl HttpServerApp + Send + Sync + 'static>,
    mut io: Box<HeadDeadline>,
    replay: bytes::Bytes,
    shutdown: &ShutdownWatch,
) -> Option<Box<HeadDeadline>> {
    io.replay(replay);
    let mut session = ServerSession::new_http1(io);
    if *shutdown.borrow() {
        session.set_keepalive(None);
    } else {
        session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
    }
    let reused = app.process_new_http(session, shutdown).await?;
    // Its settings hold the keep-alive timeout set above and pipelined bytes, which stay off
    // (pingora's default), so there is nothing to carry over.
    let (stream, _) = reused.consume();
    stream.into_any().downcast::<HeadDeadline>().ok()
}

/// Serves the admin listener's requests on one connection: each head is read here, and a
/// request whose whole body is small and has a length is answered here
/// ([`AdminConnections::answer`]); anything else goes to pingora with its head replayed.
async fn serve_admin(
    admin: &dyn AdminConnections,
    mut io: Box<HeadDeadline>,
    ip: Option<std::net::IpAddr>,
    shutdown: ShutdownWatch,
) {
    let mut carry = BytesMut::new();
    let mut first = true;
    loop {
        let Some(head) = next_head(&mut io, carry, first, &shutdown).await else {
            return;
        };
        first = false;
        let head = match head {
            http1::Head::Plain { bytes, .. } => http1::full_head(bytes),
            head => head,
        };
        let (replay, rest) = match head {
            http1::Head::Parsed {
                req,
                bytes,
                len,
                shape,
            } if admin_lean(&req, shape.body) => {
                let rest = http1::after_head(&bytes, len);
                let draining = *shutdown.borrow();
                let mut conn = http1::Connection::new(io, req, rest, ip, false, draining);
                let body_len = match shape.body {
                    http1::Framing::Length(n) => n as usize,
                    _ => 0,
                };
                let Ok(body) = conn.read_whole_body(body_len, ADMIN_BODY_DEADLINE).await else {
                    return;
                };
                let (parts, body) = admin.answer(conn.req_header(), ip, body).await.into_parts();
                if conn
                    .write_answer(Box::new(parts.into()), bytes::Bytes::from(body))
                    .await
                    .is_err()
                {
                    return;
                }
                match conn.into_reusable() {
                    Some((next, rest)) => {
                        io = next;
                        carry = rest;
                    }
                    None => return,
                }
                continue;
            }
            http1::Head::Parsed {
                bytes, len, shape, ..
            } => for_pingora(bytes, len, shape.body),
            http1::Head::Other(bytes) => (bytes.freeze(), BytesMut::new()),
            http1::Head::Plain { .. } | http1::Head::Closed => return,
        };
        carry = rest;
        let Some(back) = admin.to_pingora(io, replay, &shutdown).await else {
            return;
        };
        io = back;
    }
}

/// Whether the admin listener answers a request on its lean path: a body of known, small
/// length (or none), and no upgrade (the admin app serves none).
fn admin_lean(req: &RequestHeader, body: http1::Framing) -> bool {
    let small = match body {
        http1::Framing::Empty => true,
        http1::Framing::Length(n) => n <= ADMIN_LEAN_BODY,
        _ => false,
    };
    small && !req.headers.contains_key(http::header::UPGRADE)
}

/// What serves the next request of a connection.
enum Next<R> {
    Plain {
        bytes: BytesMut,
        len: usize,
        route: R,
        plain: http1::PlainHead,
    },
    Lean {
        req: Box<RequestHeader>,
        bytes: BytesMut,
        len: usize,
        route: R,
    },
    Pingora {
        replay: bytes::Bytes,
        rest: BytesMut,
    },
}

/// Waits for and reads the next request head. Between requests (not `first`), the wait for
/// its first byte is bounded by the keep-alive limit, ended by a drain, and the whitespace
/// before it capped; the head's own deadline starts at that byte. None when the connection is
/// done.
async fn next_head(
    io: &mut Box<HeadDeadline>,
    mut carry: BytesMut,
    first: bool,
    shutdown: &ShutdownWatch,
) -> Option<http1::Head> {
    if !first {
        // The usual case: nothing pipelined. The next request's first bytes are awaited with
        // no buffer held (an idle kept-alive connection holds none), and read with room for a
        // body behind its head.
        let waited = carry.is_empty();
        if waited {
            io.next_request();
            let mut down = shutdown.clone();
            carry = tokio::select! {
                r = tokio::time::timeout(KEEPALIVE_IDLE, http1::read_first(&mut **io)) => match r {
                    Ok(Some(first)) => first,
                    _ => return None,
                },
                _ = down.wait_for(|s| *s) => return None,
            };
        }
        if carry.iter().all(u8::is_ascii_whitespace) {
            io.next_request();
            while carry.iter().all(u8::is_ascii_whitespace) {
                if carry.len() > KEEPALIVE_WHITESPACE_MAX {
                    return None;
                }
                carry.reserve(1024);
                let mut down = shutdown.clone();
                let more = tokio::select! {
                    r = tokio::time::timeout(KEEPALIVE_IDLE, io.read_buf(&mut carry)) => {
                        matches!(r, Ok(Ok(n)) if n > 0)
                    }
                    _ = down.wait_for(|s| *s) => false,
                };
                if !more {
                    return None;
                }
            }
        } else if !waited {
            // Pipelined: the next head began already.
            io.arm_now(&carry);
        }
    }
    match http1::read_head(io, carry).await {
        http1::Head::Closed => None,
        head => Some(head),
    }
}

/// Client connections accepted and not yet closed, whatever stage they are at (a request
/// still arriving included): what a drain waits for before the process may exit.
static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn open_connections() -> usize {
    OPEN.load(Ordering::SeqCst)
}

/// One accepted connection, counted while it lives.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        OPEN.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}
