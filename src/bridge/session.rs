//! Per-client sessions (`fanout: per_client`): each client gets its own backend connection,
//! opened with its own forwarded headers, and a [`Session`] that outlives any one request.
//!
//! ```text
//!              POST / WS message -> uplink (bounded, ordered) ------------> backend
//! client  <--  poll / SSE / WS   <- outbox (held until acknowledged)  <---- backend
//! ```
//!
//! The outbox numbers backend messages from 1 and holds them until the client acknowledges
//! them: a long-poll cursor acknowledges everything up to it, a streaming client everything
//! written to its socket. Acknowledged messages stay while there is room, so a poll retried with
//! its old cursor gets the same answer. When `limits.send_queue` unacknowledged messages are
//! held, the session stops reading its backend (TCP backpressure) instead of dropping any.
//!
//! A session ends when its client says so (DELETE, WebSocket close), when nobody polled or
//! listened for `session_ttl`, or when its backend connection ends; the backend socket closes
//! with it. Session ids carry 144 random bits and live in their route's registry only.

use super::hub::{Gone, Message};
use super::OpenError;
use crate::metrics;
use crate::policy::limits::{AddressSlot, PerAddress};
use base64::Engine;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

/// One client message on its way to the backend. `done` (when set) hears whether the backend
/// took it: written to its WebSocket, or answered 2xx to the POST.
pub struct Outgoing {
    pub payload: Bytes,
    pub binary: bool,
    pub done: Option<oneshot::Sender<Result<(), UplinkError>>>,
}

/// Why a client message did not reach the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkError {
    /// The session or its backend connection has ended.
    Ended,
    /// The backend refused the message (an HTTP status from a `post:` endpoint).
    Refused(u16),
    /// The backend could not be reached.
    Unreachable(String),
}

/// How many client messages may wait for the backend before senders wait.
pub const UPLINK_QUEUE: usize = 256;

/// A session's messages in either direction may hold at most this many times `max_message`
/// bytes (besides the one being assembled): beyond it, the side that sends is not read and TCP
/// holds the rest. Bounds in messages alone let one client pin `send_queue` x `max_message`.
pub const BYTE_BUDGET_MESSAGES: usize = 2;

/// The longest a backend may take to answer one POSTed client message.
pub const POST_DEADLINE: Duration = Duration::from_secs(30);

/// Why a session ended, as told to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The client closed it (DELETE, a WebSocket close, a stream that went away).
    Client,
    /// No poll and no attached client for `session_ttl`.
    Expired,
    /// The backend closed its connection.
    Backend,
    /// The gateway is shutting down.
    Shutdown,
}

impl EndReason {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client_closed",
            Self::Expired => "expired",
            Self::Backend => "backend_closed",
            Self::Shutdown => "shutdown",
        }
    }
}

struct State {
    held: VecDeque<Arc<Message>>,
    /// Payload bytes of `held`.
    held_bytes: usize,
    next_seq: u64,
    acked: u64,
    ended: Option<Arc<Gone>>,
}

/// A copy of a session's messages kept outside this process (the cluster's session stream),
/// so a poll that lands on another instance is answered there. Told of every message, of
/// the end, and of client activity; it must never wait.
pub trait Mirror: Send + Sync {
    fn pushed(&self, m: &Arc<Message>);
    /// The session's messages ended after `head` with `gone`.
    fn ended(&self, gone: &Gone, head: u64);
    /// A client used the session (keeps its cluster record alive).
    fn touched(&self);
}

/// A session that lives on another instance of the cluster, as a request here sees it.
#[async_trait::async_trait]
pub trait Remote: Send + Sync {
    /// Acknowledges everything up to `cursor` and answers up to `max` messages after it,
    /// waiting up to `wait` when there are none yet.
    async fn poll(&self, cursor: u64, max: usize, wait: Duration) -> Batch;
    /// Hands client messages to the session's backend, in order; Err carries how many were
    /// delivered before the one that was not, and why.
    async fn send(&self, messages: Vec<(Bytes, bool)>) -> Result<(), (usize, UplinkError)>;
    /// Ends the session (DELETE, or the client has read its end).
    async fn close(&self);
}

/// Backend-to-client messages of one session, held until acknowledged.
pub struct Outbox {
    mirror: std::sync::OnceLock<Arc<dyn Mirror>>,
    state: Mutex<State>,
    cap: usize,
    /// At most this many payload bytes are held (one message more, when it alone is larger).
    max_bytes: usize,
    /// Bumped on every change readers may wait for: a message, the end, a new attachment.
    version: watch::Sender<u64>,
    /// Wakes a producer waiting for room.
    room: Notify,
}

/// What a reader finds after its position.
pub struct Batch {
    pub messages: Vec<Arc<Message>>,
    /// The position was older than anything still held: messages were missed.
    pub gap: bool,
    /// The session ended and nothing is left after the position.
    pub ended: Option<Arc<Gone>>,
}

impl Outbox {
    fn new(cap: usize, max_bytes: usize) -> Self {
        Self {
            mirror: std::sync::OnceLock::new(),
            state: Mutex::new(State {
                held: VecDeque::with_capacity(cap.min(64)),
                held_bytes: 0,
                next_seq: 1,
                acked: 0,
                ended: None,
            }),
            cap: cap.max(1),
            max_bytes,
            version: watch::Sender::new(0),
            room: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Adds a backend message, waiting while `cap` unacknowledged messages (or `max_bytes` of
    /// them) are held.
    pub async fn push(&self, event: Option<Box<str>>, payload: Bytes, binary: bool) {
        let mut msg = (event, payload, binary);
        loop {
            let room = self.room.notified();
            match self.try_push(msg) {
                Ok(()) => return,
                Err(back) => msg = back,
            }
            room.await;
        }
    }

    /// Adds a backend message if there is room (or the session ended, which drops it); gives
    /// it back while `cap` unacknowledged messages are held.
    #[allow(clippy::type_complexity)]
    pub fn try_push(
        &self,
        (event, payload, binary): (Option<Box<str>>, Bytes, bool),
    ) -> Result<(), (Option<Box<str>>, Bytes, bool)> {
        let mut st = self.lock();
        if st.ended.is_some() {
            return Ok(());
        }
        // Acknowledged messages stay while there is room (a poll retried with its old cursor
        // gets the same answer); they make way, oldest first, for a new one.
        let full = |st: &State| {
            !st.held.is_empty()
                && (st.held.len() >= self.cap || st.held_bytes + payload.len() > self.max_bytes)
        };
        while full(&st) && st.held.front().is_some_and(|m| m.seq <= st.acked) {
            let gone = st.held.pop_front().expect("checked non-empty");
            st.held_bytes -= gone.payload.len();
        }
        if full(&st) {
            return Err((event, payload, binary));
        }
        st.held_bytes += payload.len();
        let seq = st.next_seq;
        st.next_seq += 1;
        let msg = Arc::new(Message::named(seq, event, payload, binary));
        st.held.push_back(msg.clone());
        // Mirrored under the lock, so the copy keeps the outbox's order.
        if let Some(m) = self.mirror.get() {
            m.pushed(&msg);
        }
        drop(st);
        self.bump();
        Ok(())
    }

    /// Mirrors every message (see [`Mirror`]): those held already, then each new one. Set once.
    pub fn set_mirror(&self, mirror: Arc<dyn Mirror>) {
        let st = self.lock();
        if self.mirror.set(mirror.clone()).is_err() {
            return;
        }
        for m in &st.held {
            mirror.pushed(m);
        }
        if let Some(gone) = &st.ended {
            mirror.ended(gone, st.next_seq - 1);
        }
    }

    /// Resolves when an acknowledgement (or the end) may have made room.
    pub async fn room(&self) {
        self.room.notified().await;
    }

    /// Acknowledges every message up to `seq`; they may now make room for new ones.
    pub fn ack(&self, seq: u64) {
        let mut st = self.lock();
        let seq = seq.min(st.next_seq - 1);
        if seq > st.acked {
            st.acked = seq;
            drop(st);
            self.room.notify_one();
        }
    }

    /// Marks the end of the session's messages; readers drain what is held, then see `gone`.
    pub fn end(&self, gone: Gone) {
        let mut st = self.lock();
        if st.ended.is_none() {
            if let Some(m) = self.mirror.get() {
                m.ended(&gone, st.next_seq - 1);
            }
            st.ended = Some(Arc::new(gone));
        }
        drop(st);
        self.bump();
        // A producer blocked for room gives up once the session ended.
        self.room.notify_one();
    }

    pub fn is_ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// The seq of the newest message (0 before the first).
    pub fn head(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// The held message right after `after`, if there is one (no waiting, no allocation).
    pub fn next_after(&self, after: u64) -> Option<Arc<Message>> {
        let st = self.lock();
        let first = st.held.front()?.seq;
        let index = (after + 1).checked_sub(first)?;
        st.held.get(index as usize).cloned()
    }

    /// Up to `max` held messages after `after`, without waiting.
    pub fn after(&self, after: u64, max: usize) -> Batch {
        let st = self.lock();
        let first = st.held.front().map_or(st.next_seq, |m| m.seq);
        let gap = after + 1 < first;
        let skip = after.saturating_sub(first - 1).min(st.held.len() as u64) as usize;
        let messages: Vec<_> = st.held.iter().skip(skip).take(max).cloned().collect();
        let ended = if messages.is_empty() {
            st.ended.clone()
        } else {
            None
        };
        Batch {
            messages,
            gap,
            ended,
        }
    }

    /// Waits until there is something after `after` (a message or the end), or forever.
    pub async fn wait_after(&self, after: u64) {
        let mut rx = self.version.subscribe();
        loop {
            rx.borrow_and_update();
            {
                let st = self.lock();
                if st.next_seq - 1 > after || st.ended.is_some() {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Resolves when the watch version changes (used by attached readers to notice a takeover).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// When the session was last used and how many requests or streams use it right now.
struct Activity {
    last: Instant,
    busy: usize,
}

pub struct Session {
    pub id: Arc<str>,
    pub route: Arc<str>,
    /// The client transport that opened it, for metrics.
    pub transport: &'static str,
    pub outbox: Outbox,
    uplink: mpsc::Sender<Outgoing>,
    ttl: Duration,
    activity: Mutex<Activity>,
    stop: watch::Sender<Option<EndReason>>,
    /// Changes when a streaming client attaches; an older attachment then lets go.
    attachment: AtomicU64,
    /// The subprotocol the backend chose (WebSocket backends).
    pub backend_protocol: Option<String>,
}

/// A fresh session id: 18 bytes (144 bits) from the operating system's CSPRNG, base64url.
pub fn new_id() -> Arc<str> {
    let mut raw = [0u8; 18];
    getrandom::fill(&mut raw).expect("the operating system's random source is available");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(raw)
        .into()
}

/// True when `s` has the shape of an id [`new_id`] makes; anything else is not looked up.
pub fn plausible_id(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// The parts of a new session the backend connection task keeps.
pub struct Driver {
    pub session: Arc<Session>,
    pub uplink: mpsc::Receiver<Outgoing>,
}

impl Session {
    /// A session the gateway itself answers (the echo, a Socket.IO engine) on `route`, bounded
    /// as the route's backend sessions are.
    pub fn gateway_own(
        route: &crate::config::Route,
        transport: &'static str,
        ttl: Duration,
    ) -> Driver {
        let limits = &route.limits;
        let max_bytes = BYTE_BUDGET_MESSAGES * limits.max_message as usize;
        Self::create(
            &route.name,
            transport,
            limits.send_queue,
            max_bytes,
            ttl,
            None,
        )
    }

    /// A new session and the receiving half its backend task drains.
    pub fn create(
        route: &str,
        transport: &'static str,
        cap: usize,
        max_bytes: usize,
        ttl: Duration,
        backend_protocol: Option<String>,
    ) -> Driver {
        let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
        let session = Arc::new(Self {
            id: new_id(),
            route: route.into(),
            transport,
            outbox: Outbox::new(cap, max_bytes),
            uplink: tx,
            ttl,
            activity: Mutex::new(Activity {
                last: Instant::now(),
                busy: 0,
            }),
            stop: watch::Sender::new(None),
            attachment: AtomicU64::new(0),
            backend_protocol,
        });
        Driver {
            session,
            uplink: rx,
        }
    }

    /// The way to the backend for client messages (kept in order), or None once the session
    /// is ending.
    pub fn uplink(&self) -> Option<mpsc::Sender<Outgoing>> {
        (self.stopping().is_none() && !self.outbox.is_ended() && !self.uplink.is_closed())
            .then(|| self.uplink.clone())
    }

    /// Asks the session to end; its backend task closes the backend connection.
    pub fn close(&self, why: EndReason) {
        self.stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(why);
                true
            } else {
                false
            }
        });
    }

    pub fn stopping(&self) -> Option<EndReason> {
        *self.stop.borrow()
    }

    /// Holds the session open (no expiry) while the guard lives: a waiting poll, a POST, an
    /// attached stream.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.activity.lock().unwrap_or_else(|p| p.into_inner()).busy += 1;
        if let Some(m) = self.outbox.mirror.get() {
            m.touched();
        }
        Busy(self.clone())
    }

    /// Counts as client activity now (a poll or POST that reached it through the cluster).
    pub fn touch(self: &Arc<Self>) {
        drop(self.busy());
    }

    /// Attaches a streaming client; an earlier attached stream sees [`Self::superseded`].
    pub fn attach(&self) -> u64 {
        let n = self.attachment.fetch_add(1, Ordering::SeqCst) + 1;
        self.outbox.bump();
        n
    }

    /// True when another stream attached after attachment `n`.
    pub fn superseded(&self, n: u64) -> bool {
        self.attachment.load(Ordering::SeqCst) != n
    }

    /// Resolves with the reason once the session must end from the client's side: closed by
    /// the client, idle past `session_ttl`, or the gateway shutting down.
    pub async fn ended_by_client(&self) -> EndReason {
        let mut stop = self.stop.subscribe();
        let check = (self.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            if let Some(why) = *stop.borrow_and_update() {
                return why;
            }
            let expired = {
                let a = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                a.busy == 0 && a.last.elapsed() >= self.ttl
            };
            if expired {
                return EndReason::Expired;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(check) => {}
                _ = crate::drain::wait() => return EndReason::Shutdown,
            }
        }
    }
}

/// Keeps a session from expiring while a request or stream uses it; see [`Session::busy`].
pub struct Busy(Arc<Session>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut a = self.0.activity.lock().unwrap_or_else(|p| p.into_inner());
        a.busy -= 1;
        a.last = Instant::now();
    }
}

/// The live sessions of one route. Ids are only ever looked up here, so a session cannot be
/// reached through another route.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    /// Sessions whose backend connection is open or being opened, WebSocket ones included.
    live: AtomicUsize,
    /// Listed sessions per client address, against `max_sessions_per_ip`.
    per_ip: Arc<PerAddress>,
}

/// Sessions live on every route: a drain waits for their backend connections to close.
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// How many sessions (and so per-client backend connections) are live now.
pub fn live() -> usize {
    LIVE.load(Ordering::SeqCst)
}

/// A place among a route's live sessions (and its address's), given back when dropped.
pub struct Slot {
    sessions: Arc<Sessions>,
    _address: Option<AddressSlot>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.sessions.live.fetch_sub(1, Ordering::SeqCst);
        LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sessions {
    /// Takes a place for a new session unless `max` are live (the route's `max_clients`), or
    /// the client's address holds `per_ip` (zero: no cap) already.
    pub fn reserve(
        self: &Arc<Self>,
        max: usize,
        ip: Option<IpAddr>,
        per_ip: usize,
    ) -> Result<Slot, OpenError> {
        let address = match ip.filter(|_| per_ip > 0) {
            Some(ip) => Some(
                self.per_ip
                    .take(ip, per_ip)
                    .ok_or(OpenError::PerAddress(per_ip))?,
            ),
            None => None,
        };
        self.live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| OpenError::Full(max))?;
        LIVE.fetch_add(1, Ordering::SeqCst);
        Ok(Slot {
            sessions: self.clone(),
            _address: address,
        })
    }

    pub fn insert(&self, s: &Arc<Session>) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.id.clone(), s.clone());
    }

    /// The live session `id`; one that is closing is already gone for clients.
    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        if !plausible_id(id) {
            return None;
        }
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|s| s.stopping().is_none())
            .cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    pub fn is_empty(&self) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Ends every listed session (their route was removed).
    pub fn close_all(&self, why: EndReason) {
        let all: Vec<Arc<Session>> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for s in all {
            s.close(why);
        }
    }
}

/// Counts a session in `switchyard_sessions_open` for as long as its backend task runs.
pub struct OpenSession(prometheus::IntGauge);

impl OpenSession {
    pub fn new(route: &Arc<str>, transport: &'static str) -> Self {
        let gauge = metrics::SESSIONS_OPEN.with_label_values(&[route, transport]);
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &[Arc<Message>]) -> Vec<String> {
        m.iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn held_until_acknowledged_then_room_is_made() {
        let o = Arc::new(Outbox::new(2, usize::MAX));
        o.push(None, Bytes::from_static(b"a"), false).await;
        o.push(None, Bytes::from_static(b"b"), false).await;
        // Full of unacknowledged messages: the producer waits.
        let o2 = o.clone();
        let pushed =
            tokio::spawn(async move { o2.push(None, Bytes::from_static(b"c"), false).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!pushed.is_finished());
        assert_eq!(text(&o.after(0, 10).messages), ["a", "b"]);
        // The same position gives the same answer (a retried poll).
        assert_eq!(text(&o.after(0, 10).messages), ["a", "b"]);
        o.ack(1);
        pushed.await.unwrap();
        let b = o.after(1, 10);
        assert_eq!(text(&b.messages), ["b", "c"]);
        assert!(!b.gap);
        // "a" made room; asking from before it is a gap.
        assert!(o.after(0, 10).gap);
    }

    #[tokio::test]
    async fn bytes_bound_what_is_held_as_well_as_messages() {
        // Room for 100 messages but only 10 bytes.
        let o = Arc::new(Outbox::new(100, 10));
        o.push(None, Bytes::from_static(b"123456"), false).await;
        let full = o.try_push((None, Bytes::from_static(b"12345"), false));
        assert!(full.is_err(), "6 + 5 bytes would pass the bound");
        assert!(o
            .try_push((None, Bytes::from_static(b"1234"), false))
            .is_ok());
        // Acknowledged messages make way for a new one.
        o.ack(1);
        assert!(o
            .try_push((None, Bytes::from_static(b"12345"), false))
            .is_ok());
        assert_eq!(text(&o.after(0, 10).messages), ["1234", "12345"]);
        // A message larger than the bound alone still goes through on an empty outbox.
        let big = Outbox::new(100, 10);
        assert!(big
            .try_push((None, Bytes::from(vec![0u8; 64]), false))
            .is_ok());
    }

    #[tokio::test]
    async fn end_is_seen_after_the_last_message() {
        let o = Outbox::new(4, usize::MAX);
        o.push(None, Bytes::from_static(b"a"), false).await;
        o.end(Gone {
            code: 4001,
            reason: "bye".into(),
        });
        let b = o.after(0, 10);
        assert_eq!(text(&b.messages), ["a"]);
        assert!(b.ended.is_none());
        let b = o.after(1, 10);
        assert_eq!(b.ended.unwrap().code, 4001);
        o.wait_after(1).await;
    }

    #[test]
    fn ids_are_long_random_and_checked_for_shape() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(plausible_id(&a));
        assert!(!plausible_id("short"));
        assert!(!plausible_id("aaaaaaaaaaaaaaaaaaaaaaa/"));
    }
}
