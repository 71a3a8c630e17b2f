//! The first stage of the pipeline: every accepted connection, before pingora parses a byte.
//!
//! pingora's own limit on reading a request head is per read (60 s each), so a client that
//! trickles one header byte at a time (slowloris) could hold a connection, a task and its buffers
//! for as long as it likes. [`Edge`] wraps each accepted stream in [`HeaderDeadline`]: the
//! first request head must be complete (up to its blank line) within `server.header_timeout`,
//! or the connection is dropped. Once the head is in, the wrapper only passes reads through.
//!
//! Slow TLS handshakes happen before this stage (in pingora's listener) and are not covered.

use crate::proxy::{self, Gateway, Live};
use crate::transport::conn;
use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The listener's app: every connection gets a request-head deadline, and each request head
/// is read here first. A bridged GET asking for a stream is served over the gateway's own lean
/// connection ([`crate::transport::conn`]), in a task of its own; anything else is replayed to
/// pingora's proxy unchanged. HTTP/2 (TLS with ALPN `h2`) goes to pingora directly.
pub struct Edge {
    pub proxy: Arc<HttpProxy<Gateway>>,
    pub state: Arc<Live>,
    pub header_timeout: Duration,
}

/// How long a kept-alive connection may wait for its next request (pingora's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

#[async_trait]
impl ServerApp for Edge {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = OpenConnection::new();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let stream: Stream = Box::new(HeaderDeadline::new(stream, self.header_timeout));
            let _open = open;
            return self.proxy.process_new(stream, shutdown).await;
        }
        let client = Client {
            ip: stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip())),
            tls: stream.get_ssl_digest().is_some(),
        };
        let io = Box::new(HeaderDeadline::new(stream, self.header_timeout));
        self.serve_connection(io, BytesMut::new(), client, open, shutdown.clone(), false)
            .await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.cleanup().await
    }
}

#[derive(Clone, Copy)]
struct Client {
    ip: Option<std::net::IpAddr>,
    tls: bool,
}

impl Edge {
    /// [`Self::serve_connection`] as a task of its own. The boxed, named future type breaks the
    /// cycle (the connection loop spawns itself) that would keep the compiler from seeing the
    /// loop is `Send`.
    fn in_own_task(
        self: Arc<Self>,
        io: Box<HeaderDeadline>,
        bytes: BytesMut,
        client: Client,
        open: OpenConnection,
        shutdown: ShutdownWatch,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            self.serve_connection(io, bytes, client, open, shutdown, true)
                .await
        })
    }

    /// Serves the requests of one HTTP/1 connection, each over the lean path or pingora's.
    /// `own_task`: this runs in a task of its own, not in pingora's connection task.
    async fn serve_connection(
        self: &Arc<Self>,
        mut io: Box<HeaderDeadline>,
        mut carry: BytesMut,
        client: Client,
        open: OpenConnection,
        shutdown: ShutdownWatch,
        own_task: bool,
    ) {
        let mut first = true;
        loop {
            if !first {
                if carry.iter().all(u8::is_ascii_whitespace) {
                    // Idle between requests: the next head's deadline starts at its first
                    // byte; the wait for that byte is bounded by the keep-alive limit and
                    // ended by a drain.
                    io.next_request();
                    while carry.iter().all(u8::is_ascii_whitespace) {
                        carry.reserve(1024);
                        let mut down = shutdown.clone();
                        let more = tokio::select! {
                            r = tokio::time::timeout(KEEPALIVE_IDLE, io.read_buf(&mut carry)) => {
                                matches!(r, Ok(Ok(n)) if n > 0)
                            }
                            _ = down.wait_for(|s| *s) => false,
                        };
                        if !more {
                            return;
                        }
                    }
                } else {
                    // Pipelined: the next head began already.
                    io.arm_now(&carry);
                }
            }
            let head = conn::read_head(&mut io, carry).await;
            carry = BytesMut::new();
            first = false;
            let route = match &head {
                conn::Head::Parsed { req, .. } => proxy::stream_route(&self.state.load(), req),
                _ => None,
            };
            match (head, route) {
                (conn::Head::Closed, _) => return,
                (conn::Head::Parsed { bytes, .. }, Some(_)) if !own_task => {
                    // Leave pingora's connection task (sized for a TLS handshake and its HTTP
                    // machinery) behind: a stream may last hours. The new task reads the head
                    // again from `bytes`.
                    tokio::spawn(self.clone().in_own_task(io, bytes, client, open, shutdown));
                    return;
                }
                (conn::Head::Parsed { req, bytes, len }, Some(rt)) => {
                    let rest = conn::after_head(&bytes, len);
                    drop(bytes);
                    let draining = *shutdown.borrow();
                    let mut conn = conn::Conn::new(io, req, rest, client.ip, client.tls, draining);
                    proxy::serve_stream(&mut conn, &rt).await;
                    match conn.into_reusable() {
                        Some((next, rest)) => {
                            io = next;
                            carry = rest;
                            continue;
                        }
                        None => return,
                    }
                }
                // pingora reads the head again and answers it as it would have; bytes after a
                // bodiless head are the next request's, kept here for after pingora is done.
                (conn::Head::Parsed { mut bytes, len, .. }, None) => {
                    carry = conn::after_head(&bytes, len);
                    bytes.truncate(len);
                    io.replay(bytes.freeze());
                }
                (conn::Head::Other(bytes), _) => io.replay(bytes.freeze()),
            }
            let mut session = ServerSession::new_http1(io);
            if *shutdown.borrow() {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(KEEPALIVE_IDLE.as_secs()));
            }
            let Some(reused) = self.proxy.process_new_http(session, &shutdown).await else {
                return;
            };
            // Its settings hold the keep-alive timeout set above and pipelined bytes, which
            // stay off (pingora's default), so there is nothing to carry over.
            let (stream, _) = reused.consume();
            io = match stream.into_any().downcast::<HeaderDeadline>() {
                Ok(io) => io,
                Err(_) => return,
            };
        }
    }
}
/// Client connections accepted and not yet closed, whatever stage they are at (a request
/// still arriving included): what a drain waits for before the process may exit.
static OPEN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub fn open_connections() -> usize {
    OPEN.load(Ordering::SeqCst)
}

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

/// A stream whose request heads must arrive within a deadline: the first one counted from
/// the accept, each later one (keep-alive) from its first byte, so an idle keep-alive
/// connection is left to pingora's keep-alive timeout while a trickled head is not.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    /// Running until the end of the current head is seen.
    deadline: Option<Pin<Box<Sleep>>>,
    end: HeadEnd,
    /// Set when a request finished on a connection that stays open: the next bytes start a
    /// new head.
    rearm: AtomicBool,
    timed_out: bool,
    /// Bytes the listener read and handed back, served before the socket's.
    replay: Bytes,
}

/// Finds the empty line that ends a request head, across reads. Like the HTTP parser, it
/// skips empty lines before the request line and takes LF or CRLF as a line end.
#[derive(Debug, Default)]
struct HeadEnd {
    /// The request line has begun.
    started: bool,
    /// Bytes other than CR in the current line.
    line_len: usize,
}

impl HeaderDeadline {
    pub fn new(inner: Stream, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            end: HeadEnd::default(),
            rearm: AtomicBool::new(false),
            timed_out: false,
            replay: Bytes::new(),
        }
    }

    /// Puts bytes already read back in front of the stream (they were seen by the deadline
    /// already, so they do not count again).
    pub fn replay(&mut self, bytes: Bytes) {
        self.replay = bytes;
    }

    /// A head has begun in bytes already read (`started`): its deadline runs from now.
    pub fn arm_now(&mut self, started: &[u8]) {
        self.rearm.store(false, Ordering::Relaxed);
        self.end = HeadEnd::default();
        self.deadline = (!self.end.scan(started)).then(|| Box::pin(tokio::time::sleep(self.limit)));
    }

    /// The request on this connection is done and the connection stays open: the next request
    /// head gets its own deadline, from its first byte.
    pub fn next_request(&self) {
        self.rearm.store(true, Ordering::Relaxed);
    }
}

impl HeadEnd {
    /// Feeds bytes to the matcher; true once the empty line after the head went by.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\r' => {}
                b'\n' if !self.started => {}
                b'\n' if self.line_len == 0 => return true,
                b'\n' => self.line_len = 0,
                _ => {
                    self.started = true;
                    self.line_len += 1;
                }
            }
        }
        false
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let too_slow = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "request head not complete within header_timeout",
            )
        };
        if this.timed_out {
            return Poll::Ready(Err(too_slow()));
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                this.timed_out = true;
                this.deadline = None;
                crate::metrics::REJECTIONS
                    .with_label_values(&["-", "header_timeout"])
                    .inc();
                crate::error::log_refusal(
                    "-",
                    "header_timeout",
                    408,
                    "request head not complete within header_timeout; connection dropped",
                );
                return Poll::Ready(Err(too_slow()));
            }
        }
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &result {
            let fresh = &buf.filled()[before..];
            if !fresh.is_empty()
                && this.deadline.is_none()
                && this.rearm.swap(false, Ordering::Relaxed)
            {
                this.deadline = Some(Box::pin(tokio::time::sleep(this.limit)));
                this.end = HeadEnd::default();
            }
            if this.deadline.is_some() && this.end.scan(fresh) {
                this.deadline = None;
            }
        }
        result
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

/// Paces accepts to `rate` per second with bursts of `burst` (a token bucket), so a reconnect
/// storm waits in the kernel's accept queue instead of landing all at once. It runs inside
/// pingora's accept loop, before TLS: sleeping here slows accepting, it drops nothing.
#[derive(Debug)]
pub struct AcceptPacer {
    rate: f64,
    burst: f64,
    bucket: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl AcceptPacer {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            bucket: std::sync::Mutex::new((f64::from(burst.max(1)), tokio::time::Instant::now())),
        }
    }

    /// How long the next accept must wait (zero when a token is there); takes the token.
    fn wait(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let tokens = tokens - 1.0;
        *b = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }
}

#[async_trait]
impl pingora::listeners::ConnectionFilter for AcceptPacer {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        let wait = self.wait();
        if !wait.is_zero() {
            crate::metrics::ACCEPTS_PACED.inc();
            tokio::time::sleep(wait).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let p = AcceptPacer::new(100, 3);
        assert!(p.wait().is_zero());
        assert!(p.wait().is_zero());
        assert!(p.wait().is_zero());
        let w = p.wait();
        assert!(
            w > Duration::from_millis(5) && w <= Duration::from_millis(11),
            "{w:?}"
        );
        let w2 = p.wait();
        assert!(w2 > w, "each waiter queues behind the last: {w2:?}");
    }

    #[test]
    fn the_end_of_a_head_is_found_across_reads() {
        let mut e = HeadEnd::default();
        assert!(!e.scan(b"GET / HTTP/1.1\r\nHost: a\r"));
        assert!(!e.scan(b"\n\r"));
        assert!(e.scan(b"\n"));
        let mut e = HeadEnd::default();
        assert!(
            !e.scan(b"\r\n\r\n\r\n"),
            "empty lines before the request line do not count"
        );
        assert!(!e.scan(b"GET / HTTP/1.1\r\n"));
        assert!(e.scan(b"\r\n"));
        let mut e = HeadEnd::default();
        assert!(e.scan(b"GET / HTTP/1.1\nHost: a\n\n"), "bare LF line ends");
    }
}
