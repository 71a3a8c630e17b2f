//! A pass-through WebSocket tunnel, once the upstream's `101` went to the client: bytes move
//! both ways as they come, and the frame headers on the way are read (never the payloads:
//! nothing is unmasked or buffered whole) by [`crate::wire::frames::Scanner`]. That lets the
//! tunnel:
//!
//! - count messages and bytes per route and direction for the metrics;
//! - cap a message at `max_message` when the route sets it: the frame that would pass it is not
//!   forwarded, the sender gets close `1009`, the other side `1001`;
//! - on a drain (and on `idle_timeout`), put close `1001` to each side at that direction's next
//!   frame boundary, then wait briefly for the peers' own closes, instead of cutting TCP
//!   connections mid-frame when the process goes.
//!
//! Memory: a read goes from the socket into a buffer on the stack of the poll that reads it,
//! and is written on at once; only what the other side does not take at once is kept
//! (`pending`, at most one read, and nothing more is read from that side until it has gone:
//! TCP backpressure). An idle tunnel holds no buffer at all.

use crate::metrics;
use crate::wire::frames::{masked_close, Scanner};
use crate::wire::ws::{close, encode_close};
use bytes::{Buf, BytesMut};
use prometheus::IntCounter;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The largest read; it lives on the stack of one poll, never in the tunnel.
const READ_CHUNK: usize = 16 * 1024;

/// How long the tunnel waits for the peers' closes after sending its own.
pub const LINGER: Duration = Duration::from_secs(2);

pub struct Settings<'a> {
    pub route: &'a str,
    /// Zero: no idle limit.
    pub idle_timeout: Duration,
    pub max_message: Option<u64>,
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed their ends (a close handshake passed through, or TCP closes).
    Closed,
    /// The gateway drained: close 1001 went to both sides.
    Drained,
    /// No byte either way for `idle_timeout`.
    Idle,
    /// A message over `max_message`; true when the client sent it.
    TooBig { from_client: bool },
}

/// What passed through a tunnel, for the access log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Messages and bytes the client sent, and those it was sent.
    pub from_client: (u64, u64),
    pub to_client: (u64, u64),
    /// The side that closed first (a close frame, or else the end of its stream): true for
    /// the client; with the code of its close frame.
    pub first_close: Option<(bool, Option<u16>)>,
}

/// Moves bytes between `client` and `upstream` until both are done (see the module docs).
/// `client_early` and `upstream_early` are bytes each side sent that were read already.
/// `seen` is filled in whatever the outcome.
pub async fn relay<C, U>(
    client: &mut C,
    client_early: BytesMut,
    upstream: &mut U,
    upstream_early: BytesMut,
    settings: &Settings<'_>,
    seen: &mut Seen,
) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Half::new(settings, Toward::Upstream, client_early);
    let mut down = Half::new(settings, Toward::Client, upstream_early);
    let drain = crate::drain::wait();
    tokio::pin!(drain);
    let idle = settings.idle_timeout;
    let idle_sleep = tokio::time::sleep(if idle.is_zero() {
        Duration::from_secs(86400 * 365)
    } else {
        idle
    });
    tokio::pin!(idle_sleep);
    let mut ended: Option<Ended> = None;
    // The drain future is polled once to register this task, then only once the drain began
    // (re-polling it on every wake-up costs a lock and a waker registration per read).
    let mut drain_registered = false;
    let result = poll_fn(|cx| {
        // Not zeroed: a read only exposes what it filled.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        loop {
            if ended.is_none() {
                let check = !drain_registered || crate::drain::draining();
                drain_registered = true;
                if check && drain.as_mut().poll(cx).is_ready() {
                    ended = Some(Ended::Drained);
                    up.close_with(close::GOING_AWAY, "the gateway is restarting");
                    down.close_with(close::GOING_AWAY, "the gateway is restarting");
                } else if !idle.is_zero() && idle_sleep.as_mut().poll(cx).is_ready() {
                    let last = up.last_read.max(down.last_read);
                    if last + idle > Instant::now() {
                        idle_sleep.as_mut().reset(last + idle);
                        continue;
                    }
                    ended = Some(Ended::Idle);
                    up.close_with(close::GOING_AWAY, "idle timeout");
                    down.close_with(close::GOING_AWAY, "idle timeout");
                }
            }
            let a = up.poll_move(client, upstream, cx, &mut buf);
            let b = down.poll_move(upstream, client, cx, &mut buf);
            if seen.first_close.is_none() {
                for (half, from_client) in [(&up, true), (&down, false)] {
                    let code = half.scanner.close_code();
                    if code.is_some() || half.eof {
                        seen.first_close = Some((from_client, code));
                        break;
                    }
                }
            }
            if ended.is_none() && (up.oversize || down.oversize) {
                // The half that saw it already closes toward the receiver (1001); the sender
                // gets 1009 at its own direction's next frame boundary.
                ended = Some(Ended::TooBig {
                    from_client: up.oversize,
                });
                let sender = if up.oversize { &mut down } else { &mut up };
                sender.close_with(close::TOO_BIG, "message over max_message");
                continue;
            }
            return match (a, b) {
                (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
                (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
                _ => Poll::Pending,
            };
        }
    })
    .await;
    up.tally.flush();
    down.tally.flush();
    seen.from_client = up.tally.total;
    seen.to_client = down.tally.total;
    result?;
    let Some(ended) = ended else {
        return Ok(Ended::Closed);
    };
    // The gateway closed: the peers answer with their closes and then close; what they still
    // send is read and dropped (closing a socket with unread bytes would reset it, and a reset
    // can destroy the close frame before the peer reads it).
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = vec![0u8; 4096];
        let (one, other) = sink.split_at_mut(2048);
        let (mut a, mut b) = (false, false);
        while !(a && b) {
            tokio::select! {
                r = client.read(one), if !a => a = !matches!(r, Ok(n) if n > 0),
                r = upstream.read(other), if !b => b = !matches!(r, Ok(n) if n > 0),
            }
        }
    })
    .await;
    Ok(ended)
}

/// One direction of a tunnel: bytes read from `src` and written to `dst`.
struct Half {
    toward: Toward,
    scanner: Scanner,
    /// Read and not yet taken by `dst` (at most one read).
    pending: BytesMut,
    /// Written since the last flush.
    unflushed: bool,
    /// `src` ended.
    eof: bool,
    /// Nothing more goes to `dst`.
    done: bool,
    /// A close frame of the gateway's own, to go to `dst` at the next frame boundary.
    close: Option<Vec<u8>>,
    /// Nothing more is read from `src` (a message over the cap, or the gateway's close went).
    stop: bool,
    /// `src` sent a message over the cap.
    oversize: bool,
    /// The stream toward `dst` stopped mid-frame: no frame of ours can follow; it is cut.
    cut: bool,
    last_read: Instant,
    tally: Tally,
}

/// Which peer a half writes to (frames toward an upstream are masked, RFC 6455 section 5.3).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Toward {
    Upstream,
    Client,
}

impl Half {
    fn new(settings: &Settings<'_>, toward: Toward, early: BytesMut) -> Self {
        let direction = match toward {
            Toward::Upstream => "in",
            Toward::Client => "out",
        };
        let mut half = Self {
            toward,
            scanner: Scanner::new(settings.max_message),
            pending: BytesMut::new(),
            unflushed: false,
            eof: false,
            done: false,
            close: None,
            stop: false,
            oversize: false,
            cut: false,
            last_read: Instant::now(),
            tally: Tally::new(settings.route, direction),
        };
        if !early.is_empty() {
            let n = half.scan(&early);
            half.pending = early;
            half.pending.truncate(n);
        }
        half
    }

    /// Sends close `code` to this half's receiver at the next frame boundary (unless it is
    /// done, cut, or a close is on its way already).
    fn close_with(&mut self, code: u16, reason: &str) {
        if self.done || self.cut || self.close.is_some() {
            return;
        }
        self.close = Some(match self.toward {
            Toward::Upstream => masked_close(code, reason),
            Toward::Client => encode_close(code, reason).to_vec(),
        });
    }

    /// Scans bytes read from `src`; returns how many of them are to be forwarded.
    fn scan(&mut self, data: &[u8]) -> usize {
        let s = self.scanner.feed(data, self.close.is_some());
        self.tally.add(s.messages, s.consumed, self.last_read);
        if let Some(o) = s.oversize {
            self.oversize = true;
            self.stop = true;
            self.cut = !o.clean;
            let who = match self.toward {
                Toward::Upstream => "the client sent a message over max_message",
                Toward::Client => "the upstream sent a message over max_message",
            };
            self.close_with(close::GOING_AWAY, who);
        }
        s.consumed
    }

    /// Moves what it can; Ready(Ok) once this direction is done.
    fn poll_move<S, D>(
        &mut self,
        src: &mut S,
        dst: &mut D,
        cx: &mut Context<'_>,
        buf: &mut [std::mem::MaybeUninit<u8>],
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        // Bounded work per poll, so one busy direction does not starve the task's others.
        for _ in 0..32 {
            while !self.pending.is_empty() {
                let n = ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.advance(n);
                self.unflushed = true;
            }
            if self.pending.capacity() > 0 {
                // An idle tunnel holds no buffer.
                self.pending = BytesMut::new();
            }
            if self.unflushed {
                ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                self.unflushed = false;
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.close.is_some() && self.scanner.at_boundary() && !self.cut {
                let frame = self.close.take().expect("checked");
                self.pending.extend_from_slice(&frame);
                self.stop = true;
                self.done = true;
                continue;
            }
            if self.eof || (self.stop && self.close.is_none()) {
                // The source ended (or the stream toward `dst` cannot take a frame of ours
                // any more): the write side is shut, which the peer reads as the end.
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let mut rb = ReadBuf::uninit(&mut *buf);
            ready!(Pin::new(&mut *src).poll_read(cx, &mut rb))?;
            let read = rb.filled();
            if read.is_empty() {
                self.eof = true;
                continue;
            }
            self.last_read = Instant::now();
            let fwd = self.scan(read);
            // Bytes past a boundary where the gateway's close is due are dropped with the rest
            // of what that peer sends.
            let data = &read[..fwd];
            if data.is_empty() {
                continue;
            }
            match Pin::new(&mut *dst).poll_write(cx, data) {
                Poll::Ready(Ok(k)) => {
                    self.unflushed = true;
                    if k < data.len() {
                        self.pending.extend_from_slice(&data[k..]);
                    }
                }
                Poll::Pending => self.pending.extend_from_slice(data),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Messages and bytes of one direction, added to the shared counters at most once a second
/// and at the end.
struct Tally {
    messages: IntCounter,
    bytes: IntCounter,
    pending_messages: u64,
    pending_bytes: u64,
    /// Messages and bytes flushed so far.
    total: (u64, u64),
    last_flush: Instant,
}

impl Tally {
    fn new(route: &str, direction: &str) -> Self {
        Self {
            messages: metrics::MESSAGES.with_label_values(&[route, "tunnel", direction]),
            bytes: metrics::BYTES.with_label_values(&[route, "tunnel", direction]),
            pending_messages: 0,
            pending_bytes: 0,
            total: (0, 0),
            last_flush: Instant::now(),
        }
    }

    fn add(&mut self, messages: u64, bytes: usize, now: Instant) {
        self.pending_messages += messages;
        self.pending_bytes += bytes as u64;
        if now.saturating_duration_since(self.last_flush) >= metrics::Delivered::EVERY {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.last_flush = Instant::now();
        self.total.0 += self.pending_messages;
        self.total.1 += self.pending_bytes;
        if self.pending_messages > 0 {
            self.messages
                .inc_by(std::mem::take(&mut self.pending_messages));
        }
        if self.pending_bytes > 0 {
            self.bytes.inc_by(std::mem::take(&mut self.pending_bytes));
        }
    }
}
