//! Engine.IO sessions: [`held`](super::held) sessions (one receiver at a time, bound to their
//! owner, a backend session or a place in the feed) with Engine.IO's own state beside them:
//! the protocol revision, the packets the gateway itself sends (pings, pongs, noops, the close),
//! the heartbeat, and where an upgrade to WebSocket stands.
//!
//! ```text
//! handshake --open--> HeldSession<Eio> --> polls (GET) take messages and control packets
//!                        |                  sends (POST) go to the backend in order
//!                        |                  a WebSocket with the sid probes, then takes over
//!                        +-- heartbeat: v4 pings every ping_interval, a pong due within
//!                            pong_timeout; v3 waits for the client's pings (interval + timeout)
//! ```
//!
//! A session that ends (the client's close, a missed heartbeat, an overlapping poll, the
//! backend's close) is unknown from then on, but for the last packets a poll may still take.

use super::held::{HeldSession, HeldSessions};
use super::session::EndReason;
use crate::wire::engineio::{Packet, Version};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

pub type EioSession = HeldSession<Eio>;
pub type EioSessions = HeldSessions<Eio>;

/// Where a session's transport stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Polling (GET receives, POST sends).
    Polling,
    /// A WebSocket with the session's id has been probed; polls still carry the session until
    /// the client's `5`.
    Probing,
    /// The session is on a WebSocket: polls for it are refused.
    WebSocket,
}

/// Engine.IO's state of one session.
pub struct Eio {
    pub version: Version,
    /// The client takes v3's binary payloads (it did not ask for `b64=1`).
    pub binary_ok: bool,
    /// `pingInterval` and `pingTimeout`.
    interval: Duration,
    timeout: Duration,
    state: Mutex<State>,
    /// Wakes the receiver when a control packet is queued or the session ends.
    pub signal: Notify,
    /// Wakes the heartbeat when the client is heard.
    heard: Notify,
}

struct State {
    /// Packets of the gateway's own, sent before the next messages.
    control: VecDeque<Packet>,
    phase: Phase,
    /// A POST is being read (one at a time).
    posting: bool,
    /// When the session moved to its WebSocket.
    upgraded_at: Option<Instant>,
    /// v3: when the client was last heard.
    heard_at: Instant,
    /// v4: when the ping now awaited was due (a pong moves it an interval past the pong). The
    /// schedule is kept here, not in a timer's wake-up: a request that finds the pong overdue
    /// knows it, however late the heartbeat's timer runs.
    ping_at: Instant,
}

impl Eio {
    pub fn new(
        version: Version,
        binary_ok: bool,
        phase: Phase,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let now = Instant::now();
        Self {
            version,
            binary_ok,
            interval,
            timeout,
            state: Mutex::new(State {
                control: VecDeque::new(),
                phase,
                posting: false,
                upgraded_at: None,
                heard_at: now,
                ping_at: now + interval,
            }),
            signal: Notify::new(),
            heard: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a packet of the gateway's own for the receiver. At most [`CONTROL_MAX`] wait:
    /// past them (a client that sends pings or CONNECTs and never polls), only a close is kept.
    pub fn push(&self, p: Packet) {
        let mut st = self.lock();
        if st.control.len() >= CONTROL_MAX && p != Packet::Close {
            return;
        }
        st.control.push_back(p);
        drop(st);
        self.signal.notify_waiters();
    }

    /// The control packets queued, in order.
    pub fn take_control(&self) -> Vec<Packet> {
        self.lock().control.drain(..).collect()
    }

    /// The client was heard: any packet in v3, a pong in v4 (`pong`).
    pub fn heard(&self, pong: bool) {
        let now = Instant::now();
        let mut st = self.lock();
        st.heard_at = now;
        // A pong answers the ping once it is due (it cannot come before the ping went out).
        if pong && now >= st.ping_at {
            st.ping_at = now + self.interval;
        }
        drop(st);
        self.heard.notify_waiters();
    }

    /// When the session is gone unless the client is heard: the awaited pong's deadline in v4,
    /// the end of the allowed silence in v3.
    fn deadline(&self) -> Instant {
        let st = self.lock();
        match self.version {
            Version::V4 => st.ping_at + self.timeout,
            Version::V3 => st.heard_at + self.interval + self.timeout,
        }
    }

    /// The client missed its heartbeat (whether or not the heartbeat's timer ran yet).
    pub fn overdue(&self) -> bool {
        Instant::now() >= self.deadline()
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// Moves to `to` from `from`; false when the session is elsewhere.
    pub fn advance(&self, from: Phase, to: Phase) -> bool {
        let mut st = self.lock();
        if st.phase != from {
            return false;
        }
        st.phase = to;
        if to == Phase::WebSocket {
            st.upgraded_at = Some(Instant::now());
        }
        true
    }

    /// How long ago the session moved to its WebSocket, if it did.
    pub fn upgraded_for(&self) -> Option<Duration> {
        self.lock().upgraded_at.map(|at| at.elapsed())
    }

    /// Takes the session's one POST slot; false when another POST holds it.
    pub fn start_post(&self) -> bool {
        !std::mem::replace(&mut self.lock().posting, true)
    }

    pub fn end_post(&self) {
        self.lock().posting = false;
    }
}

/// How many of the gateway's own packets may wait for a session's receiver.
pub const CONTROL_MAX: usize = 32;

/// A new session id: 120 random bits, URL-safe (engine.io's are 20 characters too, which
/// the v3 handshake's length prefix shows).
pub fn new_sid() -> String {
    use base64::Engine as _;
    let mut raw = [0u8; 15];
    getrandom::fill(&mut raw).expect("the operating system's random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// How long an ended session stays to hand its last packets (the noop that answers a client's
/// close) to a poll that was sent just before, and arrived just after, the end. Otherwise an
/// ended session's id is unknown.
pub const CLOSED_LINGER: Duration = Duration::from_millis(200);

/// Ends a session: its backend session closed, its receiver woken (to answer what it must).
/// It is removed once it has no receiver for [`CLOSED_LINGER`].
pub fn end(s: &EioSession, code: u16, reason: &str, why: EndReason) {
    s.close(code, reason, why);
    s.proto.signal.notify_waiters();
}

/// Ends `s` if its client missed its heartbeat; true when it did (or the session had ended).
pub fn expired(s: &EioSession, route: &str) -> bool {
    if s.closed().is_some() {
        return true;
    }
    if !s.proto.overdue() {
        return false;
    }
    timed_out(s, route);
    true
}

fn timed_out(s: &EioSession, route: &str) {
    if s.closed().is_some() {
        return;
    }
    crate::metrics::refused(route, "engineio_ping_timeout");
    // The client is gone: what was queued for it (the unanswered ping) goes too.
    s.proto.take_control();
    end(s, 1001, "ping timeout", EndReason::Expired);
}

/// Runs a session's heartbeat until the session ends: v4 sends its pings on schedule; either
/// version ends the session at its deadline.
pub fn heartbeat(s: &Arc<EioSession>, route: String) {
    let weak = Arc::downgrade(s);
    tokio::spawn(async move {
        let mut pinged: Option<Instant> = None;
        loop {
            let Some(s) = live(&weak) else { return };
            let deadline = s.proto.deadline();
            let ping_at = (s.proto.version == Version::V4)
                .then(|| s.proto.lock().ping_at)
                .filter(|at| pinged != Some(*at));
            let now = Instant::now();
            if now >= deadline {
                timed_out(&s, &route);
                return;
            }
            if let Some(at) = ping_at.filter(|at| now >= *at) {
                pinged = Some(at);
                s.proto.push(Packet::Ping(bytes::Bytes::new()));
                continue;
            }
            let wake = ping_at.map_or(deadline, |at| at.min(deadline));
            let heard = s.proto.heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = heard => {}
            }
        }
    });
}

/// The session, while it is open.
fn live(weak: &Weak<EioSession>) -> Option<Arc<EioSession>> {
    weak.upgrade().filter(|s| s.closed().is_none())
}

/// A request for an Engine.IO session another instance of the cluster holds, relayed to it
/// whole: the owner serves it as if it had come there (heartbeats, control packets, the
/// one-poll rule and the session's binding stay the owner's), and its answer comes back.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub route: String,
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The request headers the protocol looks at (`Origin`, `Content-Type`, `Referer`).
    pub headers: Vec<(String, String)>,
    pub client_ip: Option<std::net::IpAddr>,
    pub tls: bool,
    pub body: bytes::Bytes,
}

/// The owner's answer to a [`Relayed`] request.
#[derive(Debug, Clone, Default)]
pub struct RelayAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: bytes::Bytes,
}

/// The cluster's side of Engine.IO sessions (implemented by `cluster`): every instance can
/// tell which one holds a session, and relay a request to it. No sticky sessions needed.
#[async_trait::async_trait]
pub trait EngineCluster: Send + Sync {
    /// Session `sid` of `route` is held here; its record (written before this returns, so
    /// that the client's next request finds it wherever it lands) lives while `alive` says so.
    async fn opened(&self, route: &str, sid: &str, alive: Box<dyn Fn() -> bool + Send + Sync>);
    /// The instance that holds session `sid` of `route`, when it is another one.
    async fn owner_of(&self, route: &str, sid: &str) -> super::Elsewhere<String>;
    /// Serves `req` on instance `node`, waiting up to `wait` for its answer.
    async fn relay(&self, node: &str, req: Relayed, wait: Duration) -> Option<RelayAnswer>;
}

type RelayHandler = dyn Fn(Relayed) -> std::pin::Pin<Box<dyn std::future::Future<Output = RelayAnswer> + Send>>
    + Send
    + Sync;

static RELAY_HANDLER: std::sync::OnceLock<Box<RelayHandler>> = std::sync::OnceLock::new();

/// Who serves relayed requests here (the gateway, which knows the routes): set once at start.
pub fn serve_relayed_with(handler: Box<RelayHandler>) {
    let _ = RELAY_HANDLER.set(handler);
}

/// Serves a request another instance relayed (see [`Relayed`]).
pub async fn serve_relayed(req: Relayed) -> RelayAnswer {
    match RELAY_HANDLER.get() {
        Some(h) => h(req).await,
        None => RelayAnswer {
            status: 503,
            ..RelayAnswer::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_control_queue_is_bounded_but_keeps_a_close() {
        let e = Eio::new(
            Version::V3,
            false,
            Phase::Polling,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        for _ in 0..1000 {
            e.push(Packet::Pong(bytes::Bytes::new()));
        }
        e.push(Packet::Close);
        let queued = e.take_control();
        assert_eq!(queued.len(), CONTROL_MAX + 1);
        assert_eq!(queued.last(), Some(&Packet::Close));
    }
}
