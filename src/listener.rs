//! The first stage of the pipeline: every accepted connection, before pingora parses a byte.
//!
//! pingora's own limit on reading a request head is per read (60 s each), so a client that
//! trickles one header byte at a time (slowloris) could hold a connection, a task and its buffers
//! for as long as it likes. [`Edge`] wraps each accepted stream in [`HeaderDeadline`]: the
//! first request head must be complete (up to its blank line) within `server.header_timeout`,
//! or the connection is dropped. Once the head is in, the wrapper only passes reads through.
//!
//! Slow TLS handshakes happen before this stage (in pingora's listener) and are not covered.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Wraps an app (the proxy) so that every connection gets a request-head deadline.
pub struct Edge<A> {
    pub inner: Arc<A>,
    pub header_timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Edge<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = Box::new(HeaderDeadline::new(stream, self.header_timeout));
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// A stream whose first request head must arrive within a deadline.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    /// Running until the end of the first head is seen.
    deadline: Option<Pin<Box<Sleep>>>,
    end: HeadEnd,
}

/// Finds the blank line that ends a request head, across reads.
#[derive(Debug, Default)]
struct HeadEnd {
    /// How much of `\r\n\r\n` the bytes so far end with.
    matched: usize,
}

impl HeaderDeadline {
    pub fn new(inner: Stream, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            end: HeadEnd::default(),
        }
    }
}

impl HeadEnd {
    /// Feeds bytes to the matcher; true once `\r\n\r\n` went by.
    fn scan(&mut self, bytes: &[u8]) -> bool {
        const END: &[u8] = b"\r\n\r\n";
        for &b in bytes {
            self.matched = if b == END[self.matched] {
                self.matched + 1
            } else if b == b'\r' {
                1
            } else {
                0
            };
            if self.matched == END.len() {
                return true;
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
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                crate::metrics::REJECTIONS
                    .with_label_values(&["-", "header_timeout"])
                    .inc();
                crate::error::log_refusal(
                    "-",
                    "header_timeout",
                    408,
                    "request head not complete within header_timeout; connection dropped",
                );
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request head not complete within header_timeout",
                )));
            }
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.deadline.is_some() {
            if let Poll::Ready(Ok(())) = &result {
                if this.end.scan(&buf.filled()[before..]) {
                    this.deadline = None;
                }
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

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
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
        assert!(!e.scan(b"a\r\n\r\r\n"), "a stray CR restarts the match");
    }
}
