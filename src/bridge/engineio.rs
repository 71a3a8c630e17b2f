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
    /// When the client was last heard (v3: any packet; v4: a pong).
    heard_at: Instant,
    /// v4: a ping went out and its pong is awaited.
    ping_out: bool,
}

impl Eio {
    pub fn new(version: Version, binary_ok: bool, phase: Phase) -> Self {
        Self {
            version,
            binary_ok,
            state: Mutex::new(State {
                control: VecDeque::new(),
                phase,
                posting: false,
                heard_at: Instant::now(),
                ping_out: false,
            }),
            signal: Notify::new(),
            heard: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a packet of the gateway's own for the receiver.
    pub fn push(&self, p: Packet) {
        self.lock().control.push_back(p);
        self.signal.notify_waiters();
    }

    /// The control packets queued, in order.
    pub fn take_control(&self) -> Vec<Packet> {
        self.lock().control.drain(..).collect()
    }

    pub fn has_control(&self) -> bool {
        !self.lock().control.is_empty()
    }

    /// The client was heard: any packet in v3, a pong in v4 (`pong`).
    pub fn heard(&self, pong: bool) {
        let mut st = self.lock();
        st.heard_at = Instant::now();
        if pong {
            st.ping_out = false;
        }
        drop(st);
        self.heard.notify_waiters();
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
        true
    }

    /// Takes the session's one POST slot; false when another POST holds it.
    pub fn start_post(&self) -> bool {
        !std::mem::replace(&mut self.lock().posting, true)
    }

    pub fn end_post(&self) {
        self.lock().posting = false;
    }
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

/// Runs a session's heartbeat until the session ends: a missed one ends it.
pub fn heartbeat(s: &Arc<EioSession>, route: String, interval: Duration, timeout: Duration) {
    let weak = Arc::downgrade(s);
    tokio::spawn(async move {
        let missed = match weak.upgrade().map(|s| s.proto.version) {
            Some(Version::V4) => pings(&weak, interval, timeout).await,
            Some(Version::V3) => silence(&weak, interval + timeout).await,
            None => None,
        };
        if let Some(s) = missed {
            crate::metrics::refused(&route, "engineio_ping_timeout");
            // The client is gone: what was queued for it (the unanswered ping) goes too.
            s.proto.take_control();
            end(&s, 1001, "ping timeout", EndReason::Expired);
        }
    });
}

/// v4: a ping every `interval`, its pong due within `timeout`. The session when it missed one,
/// None once it is gone.
async fn pings(
    weak: &Weak<EioSession>,
    interval: Duration,
    timeout: Duration,
) -> Option<Arc<EioSession>> {
    loop {
        tokio::time::sleep(interval).await;
        {
            let s = live(weak)?;
            s.proto.lock().ping_out = true;
            s.proto.push(Packet::Ping(bytes::Bytes::new()));
        }
        let due = Instant::now() + timeout;
        loop {
            let s = live(weak)?;
            let heard = s.proto.heard.notified();
            tokio::pin!(heard);
            heard.as_mut().enable();
            if !s.proto.lock().ping_out {
                break;
            }
            if Instant::now() >= due {
                return Some(s.clone());
            }
            tokio::select! {
                _ = heard => {}
                _ = tokio::time::sleep_until(due) => {}
            }
        }
    }
}

/// v3: the client pings; nothing heard from it for `limit` ends the session.
async fn silence(weak: &Weak<EioSession>, limit: Duration) -> Option<Arc<EioSession>> {
    loop {
        let due = live(weak)?.proto.lock().heard_at + limit;
        if Instant::now() >= due {
            return live(weak);
        }
        tokio::time::sleep_until(due).await;
    }
}

/// The session, while it is open.
fn live(weak: &Weak<EioSession>) -> Option<Arc<EioSession>> {
    weak.upgrade().filter(|s| s.closed().is_none())
}
