//! Held sessions, the one session layer of the polling protocols (SockJS and Engine.IO): a
//! session outlives the HTTP requests that carry it (a poll, a stream that hit its limit, a
//! send), so it is kept here, per route, between them. What differs per protocol (framing,
//! heartbeats, how an upgrade hands the session over) is its own, in `P`, the session's
//! protocol state, and in its transport module.
//!
//! ```text
//! receiver request --attach--> HeldSession { consumer, link } --detach--> (waits for the next)
//!                                   |                                  disconnect_delay without a
//!                                   +-- per_client: its own Session    receiver: closed, removed
//!                                   +-- shared: a Consumer of the hub
//! ```
//!
//! A session id (a SockJS one is chosen by the client) proves nothing: a session is bound to the
//! address that opened it (the /64 for IPv6) and to its `Origin` when the request carries one,
//! and a request from elsewhere is answered as for an unknown session. One receiver at a time
//! holds the session's [`Consumer`]; a second one is told `2010` and the first goes on.

use super::session::{Busy, Driver, EndReason, Outgoing, Session};
use super::{write_deadline, Bridge, ClientInfo, Consumer, Elsewhere, OpenError, Source};
use crate::policy::limits::{AddressSlot, PerAddress};
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

/// Who opened a session: requests from another address or another origin do not reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    net: Option<IpAddr>,
    origin: Option<String>,
}

impl Owner {
    /// The client's address (an IPv6 one by its /64, which one host may rotate through) and the
    /// request's `Origin`, if it has one.
    pub fn new(ip: Option<IpAddr>, origin: Option<&str>) -> Self {
        let net = ip.map(|ip| match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        });
        Self {
            net,
            origin: origin.map(|o| o.trim().to_ascii_lowercase()),
        }
    }

    /// The owner as two strings (address, origin; empty when unknown), to keep in the
    /// cluster's record of the session.
    pub fn to_record(&self) -> (String, String) {
        (
            self.net.map(|n| n.to_string()).unwrap_or_default(),
            self.origin.clone().unwrap_or_default(),
        )
    }

    /// The owner kept by [`Self::to_record`].
    pub fn from_record(net: &str, origin: &str) -> Self {
        Self {
            net: net.parse().ok(),
            origin: (!origin.is_empty()).then(|| origin.to_owned()),
        }
    }

    /// A request from `other` may use a session `self` opened: same address, and no other
    /// origin (requests that carry none, such as same-origin GETs, are judged by address).
    pub fn admits(&self, other: &Owner) -> bool {
        self.net == other.net
            && match (&self.origin, &other.origin) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// Ending a session from a receiver (a stall, the backend's close, a drain): the local session,
/// or one another instance owns (told when the receiver detaches).
pub trait Closer: Send + Sync {
    fn close(&self, code: u16, reason: &str, why: EndReason);
}

impl<P: Send + Sync> Closer for HeldSession<P> {
    fn close(&self, code: u16, reason: &str, why: EndReason) {
        HeldSession::close(self, code, reason, why)
    }
}

/// The cluster's side of SockJS sessions (implemented by `cluster`, handed over by
/// [`super::Backends::sockjs_cluster`]): sessions opened here are made reachable from the other
/// instances, and sessions they own are found.
#[async_trait::async_trait]
pub trait SessionCluster<P = ()>: Send + Sync {
    /// Session `s` of `route` opened here; `inner` is its own backend (or echo) session, whose
    /// messages other instances then read. `keep` is how long its record outlives a use. The
    /// record is written before this returns (before the client has the session's `o`).
    async fn opened(
        &self,
        route: &str,
        s: &Arc<HeldSession<P>>,
        inner: Option<&Arc<Session>>,
        cap: usize,
        keep: Duration,
    );
    /// The session is gone here; its record says so for `linger` more.
    fn gone(&self, route: &str, s: &HeldSession<P>, linger: Duration);
    /// Session `id` of `route` when another instance owns it.
    async fn find(&self, route: &str, id: &str) -> Elsewhere<RemoteHeld>;
}

/// A SockJS session another instance owns.
pub struct RemoteHeld {
    pub owner: Owner,
    pub ops: Box<dyn RemoteHeldOps>,
}

/// What a receiver elsewhere finds when it attaches to a remote session.
pub enum RemoteAttach {
    /// Attached; the session's first receiver sends `o`. `after` is where the session's
    /// messages resume; `inner` reads them when they come from its own session (else from
    /// this instance's copy of the shared feed).
    Attached {
        opened: bool,
        after: u64,
        inner: Option<Box<dyn super::session::Remote>>,
    },
    Busy,
    Closed(u16, String),
}

/// Operations on a remote SockJS session.
#[async_trait::async_trait]
pub trait RemoteHeldOps: Send + Sync {
    async fn attach(&self) -> RemoteAttach;
    /// The receiver is done: delivered up to `after`; `interrupted` as for [`HeldSession::detach`];
    /// `close` when the receiver ended the session.
    async fn detach(&self, after: u64, interrupted: bool, close: Option<(u16, String)>);
    /// The receiver went without saying how far it got (its request was dropped): detached as
    /// interrupted, if it was attached. Never waits.
    fn abandon(&self);
    /// Client messages, to the session's backend in order.
    async fn send(
        &self,
        messages: Vec<(bytes::Bytes, bool)>,
    ) -> Result<(), (usize, super::session::UplinkError)>;
}

/// Remembers how a receiver of a remote session ended it, for its detach.
#[derive(Default)]
pub struct RemoteCloser(Mutex<Option<(u16, String)>>);

impl RemoteCloser {
    pub fn take(&self) -> Option<(u16, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Closer for RemoteCloser {
    fn close(&self, code: u16, reason: &str, _why: EndReason) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            *c = Some((code, reason.to_owned()));
        }
    }
}

/// What a receiving request finds when it attaches.
pub enum Attach {
    /// The session's first receiver: it sends the open frame (and, polling, nothing else).
    Opened(Consumer),
    /// A later receiver: it takes the messages.
    Resumed(Consumer),
    /// Another receiver holds the session (`c[2010,...]`).
    Busy,
    /// The session is closed: its close frame again.
    Closed(u16, String),
}

struct State {
    opened: bool,
    /// Held here between receivers; taken by the one attached.
    consumer: Option<Consumer>,
    receiving: bool,
    closed: Option<(u16, String)>,
    /// When the last receiver left (or the session opened).
    last_seen: Instant,
}

pub struct HeldSession<P = ()> {
    pub id: Box<str>,
    owner: Owner,
    state: Mutex<State>,
    /// Where the client's messages go, and its backend session.
    pub link: Link,
    _slot: Slot,
    /// Wakes the reaper when a receiver leaves.
    wake: Notify,
    /// Wakes requests waiting for the receiver to leave (see [`Self::attach_within`]).
    detached: Notify,
    /// The protocol's own state of the session.
    pub proto: P,
}

impl<P> HeldSession<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// Attaches a receiver (see [`Attach`]).
    pub fn attach(&self) -> Attach {
        let mut st = self.lock();
        if let Some((code, reason)) = &st.closed {
            return Attach::Closed(*code, reason.clone());
        }
        if st.receiving {
            return Attach::Busy;
        }
        let Some(consumer) = st.consumer.take() else {
            return Attach::Busy;
        };
        st.receiving = true;
        if st.opened {
            Attach::Resumed(consumer)
        } else {
            st.opened = true;
            Attach::Opened(consumer)
        }
    }

    /// The receiver is done; the consumer waits for the next one. `interrupted`: its client went
    /// away before the answer was complete, which closes the session (`c[1002,...]`), as the
    /// reference server does: the messages it was given may not have arrived.
    pub fn detach(&self, consumer: Consumer, interrupted: bool) {
        {
            let mut st = self.lock();
            st.consumer = Some(consumer);
            st.receiving = false;
            st.last_seen = Instant::now();
        }
        if interrupted {
            self.close(1002, "Connection interrupted", EndReason::Client);
        }
        self.wake.notify_one();
        self.detached.notify_waiters();
    }

    /// [`Self::attach`], giving a receiver that holds the session up to `grace` to leave
    /// first: a client that dropped its request and sent the next at once is seen as the one
    /// it is, not as a second receiver (its first connection's end may be noticed a moment
    /// after the new request arrives).
    pub async fn attach_within(&self, grace: Duration) -> Attach {
        let left = self.detached.notified();
        tokio::pin!(left);
        left.as_mut().enable();
        match self.attach() {
            Attach::Busy => {
                let _ = tokio::time::timeout(grace, left).await;
                self.attach()
            }
            other => other,
        }
    }

    /// Closes the session: every later receiver gets `c[code,"reason"]`, and the per-client
    /// backend connection is closed. The session stays (to say so) until `disconnect_delay`
    /// passes without a receiver.
    pub fn close(&self, code: u16, reason: &str, why: EndReason) {
        {
            let mut st = self.lock();
            if st.closed.is_none() {
                st.closed = Some((code, reason.to_owned()));
            }
        }
        self.link.close(why);
        self.wake.notify_one();
    }

    pub fn closed(&self) -> Option<(u16, String)> {
        self.lock().closed.clone()
    }
}

/// The held sessions of one route and protocol.
pub struct HeldSessions<P = ()> {
    map: Mutex<HashMap<Box<str>, Arc<HeldSession<P>>>>,
    live: Arc<AtomicUsize>,
    /// Sessions per client address, against `max_sessions_per_ip`.
    per_ip: Arc<PerAddress>,
}

/// A place among a route's held sessions (and its address's), given back when the session is
/// gone.
struct Slot {
    live: Arc<AtomicUsize>,
    _address: Option<AddressSlot>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session's place in `switchyard_sockjs_sessions_open`. (A drain does not wait for SockJS
/// sessions: their receivers are streams the edge counts, and their backend sessions are
/// counted where those live.)
struct Counted(prometheus::IntGauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl<P> Default for HeldSessions<P> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            live: Arc::default(),
            per_ip: Arc::default(),
        }
    }
}

/// What a protocol asks of the sessions it holds.
pub struct Terms<P> {
    /// How long a session lasts without a receiver (SockJS's `disconnect_delay`).
    pub idle: Duration,
    /// How long a closed session stays, to tell its next receiver so (SockJS: as `idle`; an
    /// Engine.IO session is gone at once, its id unknown).
    pub closed_linger: Duration,
    /// The gauge of the sessions open on the route.
    pub gauge: prometheus::IntGauge,
    /// The cluster's side, when sessions are reachable from every instance.
    pub cluster: Option<Arc<dyn SessionCluster<P>>>,
}

impl<P: Send + Sync + 'static> HeldSessions<P> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<HeldSession<P>>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<HeldSession<P>>> {
        self.lock().get(id).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Closes every session (the gateway is draining or the route was removed).
    pub fn close_all(&self, code: u16, reason: &str) {
        let all: Vec<_> = self.lock().values().cloned().collect();
        for s in all {
            s.close(code, reason, EndReason::Shutdown);
        }
    }

    /// Removes `s` now (not waiting for its reaper), if it is still the session of its id:
    /// a protocol whose closed sessions are unknown at once.
    pub fn remove(&self, s: &Arc<HeldSession<P>>) {
        let mut map = self.lock();
        if map.get(&*s.id).is_some_and(|held| Arc::ptr_eq(held, s)) {
            map.remove(&*s.id);
        }
    }

    /// Opens session `id` for a receiver: its own backend connection on a `per_client` route,
    /// a place in the shared feed otherwise. At most `max` sessions per route (`max_clients`).
    /// When a concurrent request opened the same id first, that session is returned.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        self: &Arc<Self>,
        bridge: &Bridge,
        id: &str,
        owner: Owner,
        req: &RequestHeader,
        client: &ClientInfo,
        transport: &'static str,
        terms: &Terms<P>,
        proto: P,
        own_feed: Option<Feed>,
    ) -> Result<Arc<HeldSession<P>>, OpenError> {
        let idle = terms.idle;
        let limits = &bridge.route.limits;
        let (max, per_ip) = (limits.max_clients, limits.max_sessions_per_ip);
        let address = match client.ip.filter(|_| per_ip > 0) {
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
        let slot = Slot {
            live: self.live.clone(),
            _address: address,
        };
        let Feed { consumer, link } = match own_feed {
            Some(f) => f,
            None => feed(bridge, req, client, transport, idle).await?,
        };
        let inner = link.backend.clone();
        let session = Arc::new(HeldSession {
            id: id.into(),
            owner,
            state: Mutex::new(State {
                opened: false,
                consumer: Some(consumer),
                receiving: false,
                closed: None,
                last_seen: Instant::now(),
            }),
            link,
            _slot: slot,
            wake: Notify::new(),
            detached: Notify::new(),
            proto,
        });
        {
            let mut map = self.lock();
            if let Some(first) = map.get(id) {
                let first = first.clone();
                drop(map);
                session.close(1000, "superseded", EndReason::Client);
                return Ok(first);
            }
            map.insert(id.into(), session.clone());
        }
        terms.gauge.inc();
        let counted = Counted(terms.gauge.clone());
        let registry = self.clone();
        let reaped = session.clone();
        let cluster = terms.cluster.clone();
        let route = bridge.route.name.clone();
        let closed_linger = terms.closed_linger;
        if let Some(c) = &cluster {
            let keep = idle * 2 + Duration::from_secs(30);
            c.opened(
                &route,
                &session,
                inner.as_ref(),
                bridge.route.limits.send_queue,
                keep,
            )
            .await;
        }
        tokio::spawn(async move {
            let _counted = counted;
            reap(&reaped, idle, closed_linger).await;
            reaped.close(1001, "session expired", EndReason::Expired);
            registry.remove(&reaped);
            if let Some(c) = cluster {
                c.gone(&route, &reaped, idle);
            }
        });
        Ok(session)
    }
}

/// Where a held session's messages come from ([`Consumer`], taken by one receiver at a time)
/// and go ([`Link`]).
pub struct Feed {
    pub consumer: Consumer,
    pub link: Link,
}

impl Feed {
    /// The feed of a session of its own (a backend's, the echo's, a protocol engine's), held
    /// open while this lives.
    pub fn of_session(s: Arc<Session>, transport: &'static str, deadline: Duration) -> Self {
        let consumer = Consumer::for_session(s.clone(), s.attach(), transport, 0, deadline);
        let busy = s.busy();
        Feed {
            consumer,
            link: Link {
                uplink: s.uplink(),
                backend: Some(s),
                _busy: Some(busy),
            },
        }
    }
}

/// The way to a SockJS session's backend, and on a `per_client` route (or the echo) its own
/// session, held open while this lives (its `session_ttl` does not apply: the SockJS session's
/// `disconnect_delay` decides).
pub struct Link {
    /// Where the client's messages go; None on a route whose backend takes none.
    pub uplink: Option<mpsc::Sender<Outgoing>>,
    /// Its own backend (or echo) session, if it has one.
    pub backend: Option<Arc<Session>>,
    _busy: Option<Busy>,
}

impl Link {
    /// Ends the per-client backend session, if there is one.
    pub fn close(&self, why: EndReason) {
        if let Some(b) = &self.backend {
            b.close(why);
        }
    }
}

/// Opens what a SockJS session reads and sends through: on a `per_client` route its own
/// backend connection (at most `max_clients`), on the builtin echo its own echo (`ttl` is its
/// idle limit), on a shared feed a place in the ring and the route's `post:` if it has one.
pub async fn feed(
    bridge: &Bridge,
    req: &RequestHeader,
    client: &ClientInfo,
    transport: &'static str,
    ttl: Duration,
) -> Result<Feed, OpenError> {
    let deadline = write_deadline(&bridge.route.keepalive);
    Ok(match &bridge.source {
        Source::PerClient(_) | Source::Echo => {
            let s = match bridge.source {
                Source::Echo => echo_session(bridge, transport, ttl),
                _ => bridge.open_session(req, client, transport, false).await?,
            };
            Feed::of_session(s, transport, deadline)
        }
        Source::Shared(_) => Feed {
            consumer: bridge.join(None, transport).consumer,
            link: Link {
                uplink: bridge.client_poster(req, client),
                backend: None,
                _busy: None,
            },
        },
        Source::DemoPage => unreachable!("the demo page route has no client transports"),
        Source::Channels(_) => unreachable!("a channel route's requests are served by a channel"),
    })
}

/// A session of the builtin echo: what the client sends comes back, through the same outbox a
/// backend session has (so the same bounds hold).
fn echo_session(bridge: &Bridge, transport: &'static str, ttl: Duration) -> Arc<Session> {
    let Driver {
        session,
        mut uplink,
    } = Session::gateway_own(&bridge.route, transport, ttl);
    let echo = session.clone();
    tokio::spawn(async move {
        let ended = echo.ended_by_client();
        tokio::pin!(ended);
        loop {
            tokio::select! {
                m = uplink.recv() => {
                    let Some(out) = m else { break };
                    echo.outbox.push(None, out.payload, out.binary).await;
                    if let Some(done) = out.done {
                        let _ = done.send(Ok(()));
                    }
                }
                _ = &mut ended => break,
            }
        }
        echo.outbox.end(super::hub::Gone {
            code: 1000,
            reason: "Normal closure".into(),
        });
    });
    session
}

/// Waits until `s` has had no receiver for `idle` (for `closed_linger` once it is closed).
async fn reap<P>(s: &HeldSession<P>, idle: Duration, closed_linger: Duration) {
    loop {
        let woken = s.wake.notified();
        let due = {
            let st = s.lock();
            let delay = if st.closed.is_some() {
                closed_linger
            } else {
                idle
            };
            (!st.receiving).then(|| st.last_seen + delay)
        };
        match due {
            None => woken.await,
            Some(at) if Instant::now() >= at => return,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = woken => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_an_address_and_an_origin() {
        let a = Owner::new(
            Some("10.0.0.1".parse().unwrap()),
            Some("https://App.example"),
        );
        assert!(a.admits(&Owner::new(
            Some("10.0.0.1".parse().unwrap()),
            Some("https://app.example")
        )));
        // A request without Origin (a same-origin GET) is judged by its address.
        assert!(a.admits(&Owner::new(Some("10.0.0.1".parse().unwrap()), None)));
        assert!(!a.admits(&Owner::new(
            Some("10.0.0.2".parse().unwrap()),
            Some("https://app.example")
        )));
        assert!(!a.admits(&Owner::new(
            Some("10.0.0.1".parse().unwrap()),
            Some("https://evil.example")
        )));
        // One IPv6 host may move within its /64.
        let v6 = Owner::new(Some("2001:db8:1:2::1".parse().unwrap()), None);
        assert!(v6.admits(&Owner::new(
            Some("2001:db8:1:2:ffff::9".parse().unwrap()),
            None
        )));
        assert!(!v6.admits(&Owner::new(Some("2001:db8:1:3::1".parse().unwrap()), None)));
    }
}
