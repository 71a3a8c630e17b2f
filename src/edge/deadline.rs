//! The request-head deadline (slowloris): pingora's own limit on reading a request head is per
//! read (60 s each), so a client that trickles one header byte at a time could hold a
//! connection, a task and its buffers for as long as it likes. Every accepted stream is wrapped
//! in [`HeadDeadline`]: each request head must be complete (up to its blank line) within
//! `server.header_timeout`, the first counted from the accept, each later one (keep-alive) from
//! its first byte. Once a head is in, the wrapper only passes reads through.
//!
//! It also carries the bytes the edge read ahead of pingora ([`HeadDeadline::replay`]): they are
//! served before the socket's, and freed as soon as they have been read.

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A stream whose request heads must arrive within a deadline: the first one counted from
/// the accept, each later one (keep-alive) from its first byte, so an idle keep-alive
/// connection is left to pingora's keep-alive timeout while a trickled head is not.
#[derive(Debug)]
pub struct HeadDeadline {
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

impl HeadDeadline {
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

impl AsyncRead for HeadDeadline {
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
                crate::metrics::refused("-", "header_timeout");
                crate::policy::reject::log_refusal(
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
            if this.replay.is_empty() {
                // Let go of the buffer the head was read into: a connection handed to pingora
                // keeps no copy of its first head for its lifetime.
                this.replay = Bytes::new();
            }
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

impl AsyncWrite for HeadDeadline {
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
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
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

impl GetTimingDigest for HeadDeadline {
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

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

#[cfg(test)]
mod io_tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Reads from `d` until `want` bytes came or the stream fails.
    async fn read(d: &mut HeadDeadline, want: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; want];
        d.read_exact(&mut out).await?;
        Ok(out)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_is_cut_at_the_deadline() {
        let io = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\n")
            .wait(Duration::from_secs(3))
            .read(b"Host: a\r\n")
            .wait(Duration::from_secs(3))
            .build();
        let mut d = HeadDeadline::new(Box::new(io), Duration::from_secs(5));
        let err = read(&mut d, 64).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_head_stops_the_clock_and_later_heads_get_their_own() {
        let io = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .wait(Duration::from_secs(60))
            .read(b"body")
            .read(b"GET /2 HTTP/1.1\r\n")
            .wait(Duration::from_secs(6))
            .build();
        let mut d = HeadDeadline::new(Box::new(io), Duration::from_secs(5));
        read(&mut d, 27).await.unwrap();
        assert_eq!(
            read(&mut d, 4).await.unwrap(),
            b"body",
            "no deadline after the head"
        );
        d.next_request();
        read(&mut d, 17).await.unwrap();
        let err = read(&mut d, 1).await.unwrap_err();
        assert_eq!(
            err.kind(),
            io::ErrorKind::TimedOut,
            "the next head has its own deadline"
        );
    }

    #[tokio::test]
    async fn replayed_bytes_come_first_and_are_let_go_once_read() {
        let io = tokio_test::io::Builder::new()
            .read(b" and the socket")
            .build();
        let mut d = HeadDeadline::new(Box::new(io), Duration::from_secs(5));
        let head = Bytes::from(b"GET / HTTP/1.1\r\n\r\n".to_vec());
        d.replay(head.clone());
        assert!(!head.is_unique(), "held while not yet read");
        assert_eq!(read(&mut d, 18).await.unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            head.is_unique(),
            "the connection keeps no copy of a replayed head"
        );
        assert_eq!(read(&mut d, 15).await.unwrap(), b" and the socket");
    }
}
