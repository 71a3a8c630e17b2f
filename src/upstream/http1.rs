//! Kept-alive HTTP/1.1 connections to the members of pass-through routes, for the edge's lean
//! HTTP path (`gateway::pass`).
//!
//! One idle list per worker thread and upstream address, last in first out: a request takes
//! the connection that was used last (warmest, least likely to have been closed by the
//! upstream's own idle timer) with no lock shared between threads, no task spawned to watch
//! idle connections and no `getpeername`. A connection is checked when it is taken instead: one
//! non-blocking read must find nothing (an upstream that closed or sent stray bytes has it
//! dropped). Each list holds at most [`IDLE_PER_ADDR`] connections, none older than
//! [`IDLE_TIMEOUT`]; a connection goes back only after a complete request and a complete,
//! length-delimited answer without `Connection: close`.
//!
//! The read buffer travels with its connection, so a request on a kept-alive connection
//! allocates nothing here.

use bytes::BytesMut;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections kept per upstream address on each thread: as many as a busy edge has
/// requests in flight to one upstream (nginx's benchmark setup here keeps 1,024; with 128, a
/// thousand clients made most requests open a new upstream connection, and halved the rate).
/// Each is closed after [`IDLE_TIMEOUT`] unused.
pub const IDLE_PER_ADDR: usize = 1024;
/// How long an idle connection is kept; upstreams commonly close after 60 s or more (nginx's
/// `keepalive_timeout` default is 75 s), so this closes first.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// The read buffer a connection starts with; it grows only for a larger answer head.
const READ_BUF: usize = 16 * 1024;

/// A connection to an upstream, with the bytes read past the last answer (none while idle).
pub struct UpstreamConn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    /// True when it came from the idle list (an upstream may have closed it meanwhile, so a
    /// failure before any answer byte may be retried on a fresh one).
    pub reused: bool,
}

struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, VecDeque<Idle>>> = RefCell::new(HashMap::new());
    /// Check-ins since every list was last swept.
    static SINCE_SWEEP: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Every this many check-ins, every list on the thread is swept of connections past their
/// time, and empty lists go: an address no route uses any more (a reload removed it) would
/// otherwise keep its idle connections open, since nothing takes from its list again.
const SWEEP_EVERY: u32 = 1024;

/// Takes an idle connection to `addr` that is still open, if there is one.
pub fn checkout(addr: SocketAddr) -> Option<UpstreamConn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        while let Some(c) = list.pop_back() {
            if c.since.elapsed() >= IDLE_TIMEOUT {
                // The rest are older still.
                list.clear();
                return None;
            }
            let mut probe = [0u8; 1];
            match c.stream.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Some(UpstreamConn {
                        stream: c.stream,
                        buf: c.buf,
                        reused: true,
                    })
                }
                // Closed, reset, or bytes nobody asked for: not reusable.
                _ => continue,
            }
        }
        None
    })
}

/// Puts a connection whose exchange completed back on this thread's idle list.
pub fn checkin(addr: SocketAddr, conn: UpstreamConn) {
    let UpstreamConn {
        stream, mut buf, ..
    } = conn;
    if !buf.is_empty() {
        // Bytes past a complete answer: the connection's framing is broken.
        return;
    }
    buf.clear();
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let sweep = SINCE_SWEEP.with(|n| {
            n.set(n.get() + 1);
            n.get() >= SWEEP_EVERY && {
                n.set(0);
                true
            }
        });
        if sweep {
            idle.retain(|_, list| {
                list.retain(|c| c.since.elapsed() < IDLE_TIMEOUT);
                !list.is_empty()
            });
        }
        let list = idle.entry(addr).or_default();
        // The oldest are at the front: drop those past their time, and the oldest when full.
        let stale = list
            .iter()
            .take_while(|c| c.since.elapsed() >= IDLE_TIMEOUT)
            .count();
        list.drain(..stale);
        if list.len() >= IDLE_PER_ADDR {
            list.pop_front();
        }
        list.push_back(Idle {
            stream,
            buf,
            since: Instant::now(),
        });
    })
}

/// Opens a new connection to `addr` within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<UpstreamConn> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(UpstreamConn {
        stream,
        buf: BytesMut::with_capacity(READ_BUF),
        reused: false,
    })
}

/// Idle connections on this thread.
#[cfg(test)]
fn idle_on_this_thread() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(VecDeque::len).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn an_idle_connection_is_reused_until_its_upstream_closes_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conn = connect(addr, Duration::from_secs(5)).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        checkin(addr, conn);
        assert_eq!(idle_on_this_thread(), 1);
        let again = checkout(addr).expect("an open idle connection is taken");
        assert!(again.reused);
        checkin(addr, again);
        // The upstream closes it: the next checkout finds it closed and drops it.
        server_side.shutdown().await.unwrap();
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(checkout(addr).is_none());
        assert_eq!(idle_on_this_thread(), 0);
    }

    #[tokio::test]
    async fn a_connection_with_unread_bytes_never_goes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = connect(addr, Duration::from_secs(5)).await.unwrap();
        conn.buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        checkin(addr, conn);
        assert!(checkout(addr).is_none());
    }
}
