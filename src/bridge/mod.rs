//! The middle of a bridged route: a [`Bridge`] ties a route to its backend feed. A shared feed
//! is a [`hub::Hub`] that fans each backend message out to every client transport and keeps a
//! replay window for resume; a [`consumer::Consumer`] is one client's position in it, under the
//! route's slow-consumer policy.
//!
//! ```text
//! backend (ws / sse / clock) --> upstream::feed --> Hub --ring--> Consumer --> transport --> client
//!                                  one per route     |                        (ws, sse, poll)
//!                                                    +-- replay ring (resume, long-poll cursors)
//! ```
//!
//! The bridge does not know how backends are reached: the gateway injects a [`Backends`] (the
//! `upstream` layer implements it) when it builds a bridge, and the bridge calls it to start a
//! shared feed's producer or to open a client's own session. Transports reach backends only
//! through the bridge.

pub mod channels;
pub mod consumer;
pub mod engineio;
pub mod held;
pub mod hub;
pub mod session;
pub mod socketio;

pub use consumer::{Consumer, Delivery};
pub use hub::{Event, Hub, Message, Subscription};

use crate::config::{BackendSpec, BridgeRoute, Builtin, Fanout, Keepalive, Route};
use pingora::http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Who the client is, as a backend should learn it (forwarded headers).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub tls: bool,
}

/// Why a per-client session could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The route already has `max_clients` sessions.
    Full(usize),
    /// The client's address already holds `max_sessions_per_ip` sessions on the route.
    PerAddress(usize),
    /// The backend could not be reached.
    Unreachable(String),
    /// The backend answered the handshake with this status instead of taking the session.
    Refused(u16),
}

/// Where a session this instance does not hold lives, as the cluster tells it.
pub enum Elsewhere<T> {
    /// Another instance holds it.
    Found(T),
    /// No instance does, or there is no cluster.
    Nowhere,
    /// The cluster cannot be asked now (Redis is down or failed the lookup): the session may
    /// still live on its owner, so the client is asked to try again rather than told it is
    /// gone, and no new session takes its id.
    Unknown,
}

/// Where a session opened for a Socket.IO namespace goes: the backend URL with `suffix` added
/// to its path, with `headers` besides the client's forwarded ones.
#[derive(Debug, Clone, Default)]
pub struct SessionTarget {
    pub suffix: String,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What opening a client's own backend session needs of a `per_client` bridge, owned: a task
/// that opens sessions later (a Socket.IO connection, one per namespace) keeps this.
#[derive(Clone)]
pub struct SessionSite {
    pub route: Arc<Route>,
    pub spec: Arc<BridgeRoute>,
    pub sessions: Arc<session::Sessions>,
    backends: Arc<dyn Backends>,
}

impl SessionSite {
    /// See [`Backends::open_session`].
    pub async fn open(
        &self,
        req: &RequestHeader,
        client: &ClientInfo,
        transport: &'static str,
        listed: bool,
        at: Option<&SessionTarget>,
    ) -> Result<Arc<session::Session>, OpenError> {
        self.backends
            .open_session(self, req, client, transport, listed, at)
            .await
    }
}

/// What an authorization check (`auth:`) answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 401 or 403, passed to the client, with the endpoint's `WWW-Authenticate` if it sent one.
    Denied {
        status: u16,
        challenge: Option<String>,
    },
    /// No usable answer (unreachable, timed out, another status): the client is refused.
    Failed(String),
}

/// A client asking to subscribe, as an authorization endpoint learns of it.
pub struct AuthAsk<'a> {
    pub req: &'a RequestHeader,
    pub client: &'a ClientInfo,
    /// The channel key, on a route with channels.
    pub channel: Option<&'a str>,
}

/// Decides who may subscribe to a route (`auth:`); implemented by `upstream`.
#[async_trait::async_trait]
pub trait Authorize: Send + Sync {
    async fn check(&self, ask: AuthAsk<'_>) -> Verdict;
}

/// The backend side of a bridge, injected by the gateway (implemented by `upstream`), so the
/// bridge layer never imports the connectors.
#[async_trait::async_trait]
pub trait Backends: Send + Sync {
    /// The hub of a new shared feed: one process's own, unless the feed is shared by a
    /// cluster of instances.
    fn shared_hub(&self, route: &Route, spec: &BridgeRoute) -> Hub {
        Hub::new(route.limits.send_queue, spec.replay)
    }

    /// The route's authorization check, when it has `auth:`.
    fn authorizer(&self, _route: &Route, _spec: &BridgeRoute) -> Option<Arc<dyn Authorize>> {
        None
    }

    /// Starts the producer of a shared feed (its backend connection, or the builtin clock)
    /// unless it is running already.
    fn ensure_feed(&self, hub: &Arc<Hub>, route: &Arc<Route>, spec: &BridgeRoute);

    /// Opens a session for a client of a `per_client` route: its own backend connection, with
    /// its forwarded headers, run in a task until either side ends it. With `listed`, the
    /// session is in the route's registry (for polls, POSTs and SSE reattach) until it ends.
    /// `at`: a namespace's own URL and headers.
    async fn open_session(
        &self,
        site: &SessionSite,
        req: &RequestHeader,
        client: &ClientInfo,
        transport: &'static str,
        listed: bool,
        at: Option<&SessionTarget>,
    ) -> Result<Arc<session::Session>, OpenError>;

    /// The session `id` of this route when it lives on another instance of the cluster.
    async fn remote_session(
        &self,
        _bridge: &Bridge,
        _id: &str,
    ) -> Elsewhere<Box<dyn session::Remote>> {
        Elsewhere::Nowhere
    }

    /// The cluster's side of SockJS sessions; None without a cluster.
    fn sockjs_cluster(&self) -> Option<Arc<dyn held::SessionCluster>> {
        None
    }

    /// The cluster's side of Engine.IO sessions; None without a cluster.
    fn engine_cluster(&self) -> Option<Arc<dyn engineio::EngineCluster>> {
        None
    }

    /// Where a client of a shared `sse:` route with `post:` sends its messages; None when the
    /// backend takes none.
    fn client_poster(
        &self,
        bridge: &Bridge,
        req: &RequestHeader,
        client: &ClientInfo,
    ) -> Option<mpsc::Sender<session::Outgoing>>;
}

/// Where a bridged route's messages come from.
pub enum Source {
    /// One backend stream shared by every client of the route.
    Shared(Arc<Hub>),
    /// Each client talks to its own echo.
    Echo,
    /// The built-in demo page: plain HTTP, no stream.
    DemoPage,
    /// `fanout: per_client`: each client has its own session and backend connection.
    PerClient(Arc<session::Sessions>),
    /// The route's path captures channels: each channel is a bridge of its own.
    Channels(Arc<channels::Channels>),
}

pub struct Bridge {
    pub route: Arc<Route>,
    /// Shared by a route's channels when their backend settings are the route's own.
    pub spec: Arc<BridgeRoute>,
    pub source: Source,
    /// Set when a reload removed the route: its clients are asked to go, as on shutdown.
    /// Shared with the bridges a feed was carried to, so clients of every generation hear it.
    retired: Arc<tokio::sync::watch::Sender<bool>>,
    backends: Arc<dyn Backends>,
    /// The route's SockJS sessions (empty unless `clients` lists `sockjs`).
    pub sockjs: Arc<held::HeldSessions>,
    /// The route's Engine.IO sessions (empty unless `clients` lists `engineio`).
    pub engineio: Arc<engineio::EioSessions>,
    /// What long-poll clients of the shared feed share.
    pub polls: Polls,
    /// Set on a channel's own bridge: the channel's name.
    pub channel: Option<Box<str>>,
    /// `auth:`: asked before a client's stream starts (shared by the route's channels).
    auth: Option<Arc<dyn Authorize>>,
}

/// What the long-poll clients of one route share: their metric series, and the last answer
/// encoded. Polls that waited at the same cursor are answered with the same messages when
/// one arrives, so the answer is encoded by the first of them and sent by all.
#[derive(Default)]
pub struct Polls {
    series: std::sync::OnceLock<crate::metrics::ClientSeries>,
    last: std::sync::Mutex<Option<PollAnswer>>,
}

/// One encoded poll answer and what it answered: the messages after `after` from `first` to
/// `last` (the same `Arc`s, so the same messages), `count` of them, `missed` or not.
#[derive(Clone)]
pub struct PollAnswer {
    pub after: u64,
    pub first: Option<Arc<Message>>,
    pub last: Option<Arc<Message>>,
    pub count: usize,
    pub missed: bool,
    pub body: bytes::Bytes,
    /// Messages in the body (binary ones dropped by policy are not).
    pub sent: u64,
}

impl PollAnswer {
    fn answers(&self, after: u64, batch: &[Arc<Message>], missed: bool) -> bool {
        let same = |held: &Option<Arc<Message>>, m: Option<&Arc<Message>>| match (held, m) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        self.after == after
            && self.count == batch.len()
            && self.missed == missed
            && same(&self.first, batch.first())
            && same(&self.last, batch.last())
    }
}

impl Polls {
    pub fn series(&self, route: &str) -> &crate::metrics::ClientSeries {
        self.series
            .get_or_init(|| crate::metrics::ClientSeries::new(route, "long_poll"))
    }

    /// The answer encoded last, when it answers the same poll (`after`, `batch`, `missed`).
    pub fn cached(&self, after: u64, batch: &[Arc<Message>], missed: bool) -> Option<PollAnswer> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|a| a.answers(after, batch, missed))
            .cloned()
    }

    pub fn keep(&self, answer: PollAnswer) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }
}

/// A client that joined a shared feed: what it asked to replay, then its live position.
pub struct Joined {
    pub backlog: Vec<Arc<Message>>,
    /// The resume position was older than the replay window: messages were missed.
    pub gap: bool,
    pub consumer: Consumer,
}

/// How long one write to a streaming client may stay blocked before the client is dropped:
/// the time a WebSocket peer gets to answer a ping, else `idle_timeout`, else a minute.
pub fn write_deadline(k: &Keepalive) -> Duration {
    if !k.ping_interval.is_zero() {
        k.ping_interval + k.pong_timeout
    } else if !k.idle_timeout.is_zero() {
        k.idle_timeout
    } else {
        Duration::from_secs(60)
    }
}

impl Bridge {
    /// The bridge for a changed route: when its feed is the same (backend, fanout, and the
    /// ring sizes), the running feed (hub or sessions) is carried over, so open clients and
    /// sessions go on and new clients join them with the new settings. None when the feed
    /// itself changed: the old bridge must then be retired.
    pub fn carried(
        route: Arc<Route>,
        spec: &BridgeRoute,
        previous: &Bridge,
        backends: Arc<dyn Backends>,
    ) -> Option<Self> {
        let same_feed = previous.spec.backend == spec.backend
            && previous.spec.fanout == spec.fanout
            && previous.spec.replay == spec.replay
            && previous.route.limits.send_queue == route.limits.send_queue;
        if !same_feed {
            return None;
        }
        let source = match &previous.source {
            Source::Shared(h) => Source::Shared(h.clone()),
            Source::PerClient(s) => Source::PerClient(s.clone()),
            Source::Channels(c) => Source::Channels(c.clone()),
            Source::Echo => Source::Echo,
            Source::DemoPage => Source::DemoPage,
        };
        let auth = match previous.spec.auth == spec.auth {
            true => previous.auth.clone(),
            false => backends.authorizer(&route, spec),
        };
        Some(Self {
            route,
            spec: Arc::new(spec.clone()),
            source,
            retired: previous.retired.clone(),
            backends,
            sockjs: previous.sockjs.clone(),
            engineio: previous.engineio.clone(),
            polls: Polls::default(),
            channel: None,
            auth,
        })
    }

    pub fn new(route: Arc<Route>, spec: &BridgeRoute, backends: Arc<dyn Backends>) -> Self {
        let source = match spec.backend {
            _ if route.channels.is_some() => Source::Channels(channels::Channels::new(&route.name)),
            _ if spec.fanout == Fanout::PerClient => Source::PerClient(Arc::default()),
            BackendSpec::Builtin(Builtin::Clock)
            | BackendSpec::WebSocket(_)
            | BackendSpec::Sse(_)
            | BackendSpec::Published => Source::Shared(Arc::new(backends.shared_hub(&route, spec))),
            BackendSpec::Builtin(Builtin::Echo) => Source::Echo,
            BackendSpec::Builtin(Builtin::DemoPage) => Source::DemoPage,
        };
        Self {
            auth: backends.authorizer(&route, spec),
            route,
            spec: Arc::new(spec.clone()),
            source,
            retired: Arc::new(tokio::sync::watch::Sender::new(false)),
            backends,
            sockjs: Arc::default(),
            engineio: Arc::default(),
            polls: Polls::default(),
            channel: None,
        }
    }

    /// The bridge of one channel of this route: its own feed (or sessions) on `spec`, the
    /// route's backend settings filled in for `key`. Retired with the route.
    fn channel_bridge(&self, spec: Arc<BridgeRoute>, key: &channels::ChannelKey) -> Self {
        let source = match spec.fanout {
            Fanout::PerClient => Source::PerClient(Arc::default()),
            Fanout::Shared => Source::Shared(Arc::new(
                self.backends
                    .shared_hub(&self.route, &spec)
                    .for_channel(&key.name),
            )),
        };
        Self {
            route: self.route.clone(),
            spec,
            source,
            retired: self.retired.clone(),
            backends: self.backends.clone(),
            sockjs: Arc::default(),
            engineio: Arc::default(),
            polls: Polls::default(),
            channel: Some(key.name.clone()),
            auth: self.auth.clone(),
        }
    }

    /// Asks the route's `auth:` whether this client may subscribe (Allowed without one).
    pub async fn authorize(&self, req: &RequestHeader, client: &ClientInfo) -> Verdict {
        self.authorize_for(req, client, self.channel.as_deref())
            .await
    }

    /// [`Self::authorize`] for `channel` of this route (before the channel is opened).
    pub async fn authorize_for(
        &self,
        req: &RequestHeader,
        client: &ClientInfo,
        channel: Option<&str>,
    ) -> Verdict {
        match &self.auth {
            None => Verdict::Allowed,
            Some(a) => {
                a.check(AuthAsk {
                    req,
                    client,
                    channel,
                })
                .await
            }
        }
    }

    /// True when the route asks `auth:` before a stream starts.
    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// The channel `path` names, on a route with channels (None on other routes).
    pub fn channel_key(
        &self,
        path: &str,
    ) -> Result<Option<channels::ChannelKey>, channels::ChannelError> {
        match &self.route.channels {
            Some(captures) => channels::key(captures, path).map(Some),
            None => Ok(None),
        }
    }

    /// The open channel `name` of this route, if any.
    pub fn open_channel_named(&self, name: &str) -> Option<Arc<Bridge>> {
        self.channels()?.get(name)
    }

    /// Channel `key` of this route, opened if it is not (a route with channels only).
    pub fn open_channel(
        &self,
        key: &channels::ChannelKey,
    ) -> Result<Arc<Bridge>, channels::ChannelError> {
        let table = self.channels().expect("a route with channels");
        table.get_or_open(self, key)
    }

    /// The channel of the raw captured `values` (a publish names them in its URL), opened if
    /// it is not; None on a route without channels.
    pub fn channel_of(
        &self,
        values: &[&str],
    ) -> Result<Option<Arc<Bridge>>, channels::ChannelError> {
        let Some(captures) = &self.route.channels else {
            return Ok(None);
        };
        let key = channels::key_of(captures, values)?;
        self.open_channel(&key).map(Some)
    }

    /// The open channels, on a route with channels.
    pub fn channels(&self) -> Option<&Arc<channels::Channels>> {
        match &self.source {
            Source::Channels(c) => Some(c),
            _ => None,
        }
    }

    /// The path the route's resources sit under for a request to `path`: the route's path, or
    /// on a route with channels the part of `path` it matched (`/rooms/lobby`).
    pub fn base<'a>(&'a self, path: &'a str) -> &'a str {
        // Each request's own: clients may spell one channel's name with other escapes.
        match &self.route.channels {
            Some(c) => crate::router::matched_len(c, path).map_or(path, |n| &path[..n]),
            None => &self.route.path,
        }
    }

    /// True when nothing uses this channel any more: no subscriber, no session, nothing
    /// published for `linger`, no backend connection.
    fn finished(&self, linger: Duration) -> bool {
        let feed_done = match &self.source {
            Source::Shared(hub) => hub.finished(linger),
            Source::PerClient(sessions) => sessions.is_empty(),
            _ => true,
        };
        feed_done && self.sockjs.is_empty() && self.engineio.is_empty()
    }

    /// Publishes `messages` (payload, binary) to this bridge's feed, in order: the id of the
    /// last one as an SSE client sees it, and the subscribers here. None without a shared feed.
    pub fn publish(&self, messages: Vec<(bytes::Bytes, bool)>) -> Option<(String, usize)> {
        let hub = self.hub()?;
        let mut last = hub.head();
        for (payload, binary) in messages {
            last = hub.publish(payload, binary).seq;
        }
        // The channel lives backend_linger after its last publish.
        hub.touch();
        Some((format!("{}-{last}", hub.epoch), hub.subscribers()))
    }

    /// The route was removed by a reload: its open clients are closed as on shutdown (WS 1001,
    /// SSE final `retry:`, polls answered), and they reconnect to whatever serves the path now.
    pub fn retire(&self) {
        self.retired.send_replace(true);
        self.sockjs.close_all(1001, "Route removed");
        self.engineio.close_all(1001, "Route removed");
        match &self.source {
            Source::PerClient(sessions) => sessions.close_all(session::EndReason::Shutdown),
            Source::Shared(hub) => hub.retire(),
            Source::Channels(c) => c.retire_all(),
            _ => {}
        }
    }

    /// True when `other` runs on this bridge's feed (carried over by a reload).
    pub fn shares_feed_with(&self, other: &Bridge) -> bool {
        match (&self.source, &other.source) {
            (Source::Shared(a), Source::Shared(b)) => Arc::ptr_eq(a, b),
            (Source::PerClient(a), Source::PerClient(b)) => Arc::ptr_eq(a, b),
            (Source::Channels(a), Source::Channels(b)) => Arc::ptr_eq(a, b),
            (Source::Echo, Source::Echo) | (Source::DemoPage, Source::DemoPage) => true,
            _ => false,
        }
    }

    /// Resolves when this route's clients must go: the gateway is draining or the route was
    /// removed.
    pub async fn closing(&self) {
        let mut retired = self.retired.subscribe();
        tokio::select! {
            _ = crate::drain::wait() => {}
            _ = retired.wait_for(|r| *r) => {}
        }
    }

    /// The methods the route's clients use: GET to receive, POST to send on two-way routes,
    /// DELETE to end a session on `per_client` ones.
    /// Engine.IO clients POST on every route (pongs, their close).
    pub fn methods(&self) -> &'static str {
        match (self.spec.two_way(), self.sessions().is_some()) {
            (true, true) => "GET, POST, DELETE",
            (true, false) => "GET, POST",
            _ if self.spec.clients.engine() => "GET, POST",
            _ => "GET",
        }
    }

    pub fn sessions(&self) -> Option<&Arc<session::Sessions>> {
        match &self.source {
            Source::PerClient(s) => Some(s),
            _ => None,
        }
    }

    /// Counts a resume from a position the client gave: `missed` when messages were lost.
    pub fn count_replay(&self, missed: bool) {
        crate::metrics::REPLAY
            .with_label_values(&[
                self.route.name.as_str(),
                if missed { "miss" } else { "hit" },
            ])
            .inc();
    }

    pub fn hub(&self) -> Option<&Arc<Hub>> {
        match &self.source {
            Source::Shared(h) => Some(h),
            _ => None,
        }
    }

    /// Subscribes to the shared feed, starting its backend connection if it is not running.
    ///
    /// # Panics
    /// When the route has no shared feed; transports check [`Self::hub`] first.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let hub = self
            .hub()
            .expect("subscribe is only called on shared feeds");
        let sub = hub.subscribe(after);
        if self.channel.is_some() {
            // A channel lives backend_linger after its last client, however short its visit.
            hub.touch();
        }
        self.backends.ensure_feed(hub, &self.route, &self.spec);
        sub
    }

    /// Waits until the shared feed knows what its cluster holds (at once on a local feed), so
    /// a resume position from another instance is judged against the same history. Starts
    /// the feed. Gives up after a few seconds: a client is then served from what is here.
    pub async fn ready(&self) {
        if let Some(hub) = self.hub().filter(|h| h.is_clustered()) {
            self.backends.ensure_feed(hub, &self.route, &self.spec);
            hub.wait_ready(Duration::from_secs(3)).await;
        }
    }

    /// Opens this client's own session (see [`Backends::open_session`]).
    pub async fn open_session(
        &self,
        req: &RequestHeader,
        client: &ClientInfo,
        transport: &'static str,
        listed: bool,
    ) -> Result<Arc<session::Session>, OpenError> {
        let site = self
            .session_site()
            .expect("per_client routes have sessions");
        site.open(req, client, transport, listed, None).await
    }

    /// What opening this `per_client` bridge's sessions needs, owned.
    pub fn session_site(&self) -> Option<SessionSite> {
        Some(SessionSite {
            route: self.route.clone(),
            spec: self.spec.clone(),
            sessions: self.sessions()?.clone(),
            backends: self.backends.clone(),
        })
    }

    /// See [`Backends::remote_session`].
    pub async fn remote_session(&self, id: &str) -> Elsewhere<Box<dyn session::Remote>> {
        if !session::plausible_id(id) {
            return Elsewhere::Nowhere;
        }
        self.backends.remote_session(self, id).await
    }

    /// See [`Backends::sockjs_cluster`].
    pub fn sockjs_cluster(&self) -> Option<Arc<dyn held::SessionCluster>> {
        self.backends.sockjs_cluster()
    }

    /// See [`Backends::engine_cluster`].
    pub fn engine_cluster(&self) -> Option<Arc<dyn engineio::EngineCluster>> {
        self.backends.engine_cluster()
    }

    /// See [`Backends::client_poster`].
    pub fn client_poster(
        &self,
        req: &RequestHeader,
        client: &ClientInfo,
    ) -> Option<mpsc::Sender<session::Outgoing>> {
        self.backends.client_poster(self, req, client)
    }

    /// Subscribes a streaming client (`transport` labels its metrics) after position `after`.
    pub fn join(&self, after: Option<u64>, transport: &'static str) -> Joined {
        let sub = self.subscribe(after);
        let last = sub.backlog.last().map_or(after.unwrap_or(0), |m| m.seq);
        let hub = self.hub().expect("subscribe checked it");
        Joined {
            consumer: Consumer::new(
                sub.live,
                self.spec.slow_consumer,
                hub.queue(),
                &self.route.name,
                transport,
                last,
                write_deadline(&self.route.keepalive),
            ),
            backlog: sub.backlog,
            gap: sub.gap,
        }
    }
}
