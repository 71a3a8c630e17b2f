//! The typed config: what the rest of the gateway reads, as `crate::config::Config`, `Route`,
//! `BackendSpec` and so on. Every value here has been checked by [`super::validate`]: durations
//! and sizes are parsed, addresses resolved, defaults filled in, so the code that uses it never
//! looks at the YAML again.
//!
//! This is the buffer between the stable UI ([`super::raw`], the shape of `gateway.yaml`) and the
//! gateway's internals: a field can be renamed or reshaped here without touching a config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    /// `cluster:`; None runs the instance on its own.
    pub cluster: Option<ClusterConfig>,
    pub routes: Vec<Route>,
}

/// `cluster:`: the Redis that joins instances into one gateway (the `cluster` module runs it).
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// Where Redis is: a URL, or a master Sentinel names.
    pub redis: RedisAt,
    /// `cluster.tls`: a CA to trust instead of the system's, and a client certificate.
    pub tls: Option<RedisTls>,
    /// This instance's name in the cluster (metrics, logs, lease values).
    pub node: String,
    /// Prefix of every key, so several gateways can share one Redis.
    pub prefix: String,
    /// How long a feed's lease outlives its holder; failover takes at most about this long.
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    /// The Redis URL is shown without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis.describe())
            .field("node", &self.node)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .finish()
    }
}

/// Where the cluster's Redis is.
#[derive(Clone, PartialEq)]
pub enum RedisAt {
    /// `redis://` or `rediss://`, with `${VAR}` already expanded (may hold a password).
    Url(String),
    /// The master Redis Sentinel names, followed through failovers.
    Sentinel(SentinelConfig),
}

impl RedisAt {
    /// For logs and the status page: no password.
    pub fn describe(&self) -> String {
        match self {
            Self::Url(url) => redact_url(url),
            Self::Sentinel(s) => format!(
                "master {:?} of Sentinel {}{}",
                s.master,
                s.addrs
                    .iter()
                    .map(|(h, p)| format!("{h}:{p}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if s.tls { " (TLS)" } else { "" }
            ),
        }
    }
}

/// `cluster.tls`, its files read (PEM).
#[derive(Clone, PartialEq)]
pub struct RedisTls {
    pub ca: Option<Vec<u8>>,
    /// Certificate chain and key, for Redis's `tls-auth-clients`.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// `cluster.sentinel`.
#[derive(Clone, PartialEq)]
pub struct SentinelConfig {
    pub master: String,
    /// `host:port` of each Sentinel.
    pub addrs: Vec<(String, u16)>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_password: Option<String>,
    pub tls: bool,
    pub db: i64,
}

/// `url` with the password (what follows `user:` before `@`) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((auth, host)) => match auth.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<Listener>,
    pub admin: Option<SocketAddr>,
    /// `server.admin_auth`: applies at once on reload.
    pub admin_auth: AdminAuth,
    pub threads: usize,
    pub shutdown_grace: Duration,
    /// A connection's first request head must be complete within this (slowloris).
    pub header_timeout: Duration,
    /// Accepts per second once `accept_burst` is spent (reconnect storms wait in the backlog).
    pub accept_rate: u32,
    pub accept_burst: u32,
    /// The process-wide budget for message buffers, in bytes (`server.limits.memory`).
    pub memory: usize,
    /// Reload when the config file's content changes (`server.watch_config`).
    pub watch_config: bool,
    /// `server.access_log`; None when it is off (the default).
    pub access_log: Option<AccessLogConfig>,
    /// `server.client_send_buffer`: `SO_SNDBUF` of accepted client connections; None leaves
    /// the kernel's autotuning (up to `net.ipv4.tcp_wmem`'s maximum, 4 MiB by default).
    pub client_send_buffer: Option<usize>,
}

/// Who may use the admin listener beyond `/healthz` and `/readyz` (`server.admin_auth`).
/// The default lets everyone in: the listener's address is then what keeps it private.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AdminAuth {
    /// `Authorization: Bearer <token>` is required (with `${VAR}` already expanded).
    pub token: Option<String>,
    /// The peer must be in one of these networks; empty is any peer.
    pub allow: Vec<Cidr>,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("allow", &self.allow)
            .finish()
    }
}

impl AdminAuth {
    /// Whether a peer at `ip` may be served (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn allows(&self, ip: Option<std::net::IpAddr>) -> bool {
        self.allow.is_empty() || ip.is_some_and(|ip| self.allow.iter().any(|c| c.contains(ip)))
    }
}

/// A network, `10.0.0.0/8` or `2001:db8::/32` (a bare address is its own /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub net: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR[/PREFIX]`; the address must have no bits set past the prefix.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        use std::net::IpAddr;
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| {
            format!("{text:?} is not an IP address or network, e.g. \"10.0.0.0/8\"")
        })?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("{text:?}: the prefix length must be 0 to {max}")),
            },
        };
        let cidr = Cidr { net, prefix };
        if !cidr.contains(net) || cidr.masked(net) != net {
            return Err(format!(
                "{text:?} has address bits past its /{prefix}: write {}/{prefix}",
                cidr.masked(net)
            ));
        }
        Ok(cidr)
    }

    fn masked(&self, ip: std::net::IpAddr) -> std::net::IpAddr {
        use std::net::IpAddr;
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                IpAddr::V4((bits & mask).into())
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                IpAddr::V6((bits & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address is taken as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        ip.is_ipv4() == self.net.is_ipv4() && self.masked(ip) == self.net
    }
}

/// Where and how the access log is written (the `access_log` module writes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    pub to: AccessLogTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Apache's combined format, the extra fields appended as `key=value`.
    Combined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// A file opened in append mode (reopened on SIGUSR1, for logrotate).
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// WebSocket ping period; zero disables pings.
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// SSE comment period; zero disables heartbeats.
    pub sse_heartbeat: Duration,
    pub poll_timeout: Duration,
    /// Close a connection with no traffic at all for this long; zero disables.
    pub idle_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            sse_heartbeat: Duration::from_secs(15),
            poll_timeout: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_message: u64,
    /// `max_message` was set in the config (a pass-through tunnel applies it only then).
    pub max_message_explicit: bool,
    pub send_queue: usize,
    pub max_clients: usize,
    /// Zero means no per-IP cap.
    pub max_clients_per_ip: usize,
    /// Sessions that outlive their requests (long-poll, SSE, SockJS, Engine.IO) one address
    /// may hold on the route; zero means no cap.
    pub max_sessions_per_ip: usize,
    /// The largest request head (request line and headers) accepted; 431 above.
    pub max_header_bytes: usize,
    /// Channels a route with captures in its path keeps open at once; 503 past it.
    pub max_channels: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 1 << 20,
            max_message_explicit: false,
            send_queue: 1024,
            max_clients: 10_000,
            max_clients_per_ip: 0,
            max_sessions_per_ip: 0,
            max_header_bytes: 32 << 10,
            max_channels: 10_000,
        }
    }
}

/// Which `Host` values a route answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches one or more labels in front.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub host: HostPattern,
    /// Normalised: starts with `/`, no trailing `/` except the root itself. May hold captures
    /// (`/rooms/{room}`), described by `channels`.
    pub path: String,
    /// Set when `path` captures segments: the route is many feeds, one per channel key.
    pub channels: Option<ChannelPath>,
    /// Allowed browser origins; empty means the gateway's own origin only.
    pub origins: Vec<String>,
    /// Whether requests without `Origin` (non-browser clients) are let in.
    pub allow_no_origin: bool,
    pub cors: Cors,
    pub keepalive: Keepalive,
    pub limits: Limits,
    pub kind: RouteKind,
}

/// What a captured channel name must match unless the route says otherwise (`channel_pattern`).
pub const DEFAULT_CHANNEL_PATTERN: &str = "[A-Za-z0-9._~-]{1,128}";

/// A route path with captures: its segments, and what a captured value must match.
#[derive(Debug, Clone)]
pub struct ChannelPath {
    pub segments: Vec<PathSegment>,
    /// Anchored at both ends; a captured value is checked after one percent-decoding.
    pub pattern: regex::Regex,
}

impl PartialEq for ChannelPath {
    fn eq(&self, other: &Self) -> bool {
        self.segments == other.segments && self.pattern.as_str() == other.pattern.as_str()
    }
}

impl ChannelPath {
    /// The names of the captures, in path order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            PathSegment::Capture(n) => Some(n.as_str()),
            PathSegment::Literal(_) => None,
        })
    }
}

/// `{name}` placeholders in `text` (names are letters, digits and `_`, not starting with a
/// digit), with their byte ranges; a `{` that starts no such name is left alone.
pub fn placeholders(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find('{').map(|i| i + from) {
        let rest = &text[open + 1..];
        match rest.find('}') {
            Some(close) if is_capture_name(&rest[..close]) => {
                found.push((open..open + close + 2, &rest[..close]));
                from = open + close + 2;
            }
            _ => from = open + 1,
        }
    }
    found
}

fn is_capture_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One segment of a route path with captures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSegment {
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Capture(String),
}

/// `auth:`: a `GET` to `endpoint` before a client's stream starts; 2xx admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub endpoint: Endpoint,
    /// Client request headers the subrequest carries.
    pub forward_headers: Vec<http::HeaderName>,
    /// The longest the subrequest may take (connecting included); past it the client gets 503.
    pub timeout: Duration,
    /// How long an admitting answer is reused; zero asks every time.
    pub cache: Duration,
}

/// `publish:`: messages sent by HTTP POST on the admin listener.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

impl std::fmt::Debug for Publish {
    /// The token is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publish")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// How cross-origin requests from allowed origins are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// `Access-Control-Allow-Credentials: true` (never with `origins: ["*"]`).
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
    /// Request headers a cross-origin request may carry.
    pub allow_headers: Vec<http::HeaderName>,
    /// Response headers a cross-origin page may read.
    pub expose_headers: Vec<http::HeaderName>,
}

pub const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);
/// Request headers cross-origin clients may send unless `cors.allow_headers` says otherwise.
pub const DEFAULT_CORS_ALLOW_HEADERS: [&str; 3] =
    ["content-type", "last-event-id", "authorization"];

impl AsRef<Route> for Route {
    fn as_ref(&self) -> &Route {
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum RouteKind {
    Proxy(Box<ProxyRoute>),
    Bridge(Box<BridgeRoute>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    HashClientIp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// As written in the config, for logs and metrics.
    pub name: String,
    pub addr: SocketAddr,
}

impl Upstream {
    /// The host part of `name` (`api.internal` of `api.internal:443`, `::1` of `[::1]:443`):
    /// the name TLS asks for and verifies unless `tls.sni` says otherwise.
    pub fn host(&self) -> &str {
        let host = self.name.rsplit_once(':').map_or(&*self.name, |(h, _)| h);
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub interval: Duration,
    /// HTTP GET this path and expect a 2xx; without a path the check is a TCP connect.
    pub path: Option<String>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRoute {
    pub upstreams: Vec<Upstream>,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Duration,
    /// `proxy.read_timeout`: the longest wait for an answer head (504 past it, as nginx's
    /// `proxy_read_timeout`), and between two reads of an answer body (the answer is cut).
    pub read_timeout: Duration,
    /// `proxy.tls`: TLS toward every upstream; None is plain TCP.
    pub tls: Option<BackendTls>,
}

/// TLS toward a backend or upstream, its files already read and parsed. Equal when the
/// material is equal, so a reload after a certificate rotation counts as a change.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BackendTls {
    /// `ca:` certificates (DER) trusted instead of the system's roots; empty: the system's.
    pub ca: Vec<Vec<u8>>,
    /// `sni:`: the name asked for and verified instead of the host the URL or upstream names.
    pub sni: Option<String>,
    /// `client_cert:` (chain, leaf first, DER) and `client_key:` (DER) for mTLS.
    pub client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// `verify: false` accepts any certificate (a lab setting; logged as a warning at load).
    pub verify: bool,
}

impl BackendTls {
    /// The name to ask for and verify when connecting to `host`.
    pub fn server_name<'a>(&'a self, host: &'a str) -> &'a str {
        self.sni.as_deref().unwrap_or(host)
    }
}

impl std::fmt::Debug for BackendTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca_certs", &self.ca.len())
            .field("sni", &self.sni)
            .field("client_cert", &self.client.is_some())
            .field("verify", &self.verify)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// One message a second carrying the current time, shared by every client.
    Clock,
    /// Echoes every message a client sends, per client.
    Echo,
    /// The demo page (HTML) that shows the clock over SSE and the echo over WebSocket.
    DemoPage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    Builtin(Builtin),
    /// A plain WebSocket server; each message it sends is one message to clients.
    WebSocket(RemoteBackend),
    /// A `text/event-stream` endpoint; each event is one message, its `event:` name kept.
    Sse(RemoteBackend),
    /// No backend connection: the feed is what is published by HTTP (`publish:`).
    Published,
}

/// Where and how the gateway connects to a streaming backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBackend {
    /// As written in the config, for logs.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The `Host` header: `host[:port]` as written.
    pub authority: String,
    /// Path and query sent in the request line.
    pub path: String,
    pub subprotocols: Vec<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub connect_timeout: Duration,
    pub reconnect: Reconnect,
    /// For an `sse:` backend: where each client message is POSTed.
    pub post: Option<Endpoint>,
    /// Client request headers passed on to the backend by per-client sessions and `post:`.
    pub forward_headers: Vec<http::HeaderName>,
    /// Set for `wss://` and `https://`: how the backend's certificate is checked.
    pub tls: Option<BackendTls>,
}

/// An HTTP or HTTPS address the gateway sends requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As written in the config, for logs.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The `Host` header: `host[:port]` as written.
    pub authority: String,
    /// Path and query sent in the request line.
    pub path: String,
    /// Set for `https://`.
    pub tls: Option<BackendTls>,
}

/// Exponential backoff between backend connection attempts, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub initial: Duration,
    pub max: Duration,
}

/// How a route's clients share backend connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// One backend connection per route, opened on the first client.
    Shared,
    /// One backend connection per client session, opened with the client's own headers.
    PerClient,
}

/// What happens to a client that falls more than `send_queue` messages behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close it (WS 1008, SSE end of stream); SSE and long-poll clients resume from the replay ring.
    Disconnect,
    /// Skip the oldest undelivered messages and tell the client how many it missed.
    DropOldest,
}

/// How binary backend messages reach text-only clients (SSE, long-poll).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryPolicy {
    /// SSE `event: binary` with base64 data; long-poll `{"binary": "<base64>"}`.
    Base64,
    /// Not delivered to text-only clients; counted in metrics.
    Drop,
}

/// The client transports a bridged route terminates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientTransports {
    pub websocket: bool,
    pub sse: bool,
    pub long_poll: bool,
    /// The SockJS protocol under the route's path (its settings are `BridgeRoute::sockjs`).
    pub sockjs: bool,
    /// The Engine.IO protocol (3 and 4) at the route's path: its `pingInterval` and
    /// `pingTimeout` are `keepalive`'s `ping_interval` and `pong_timeout`, its `maxPayload`
    /// `limits.max_message`.
    pub engineio: bool,
    /// Socket.IO (its protocols 4 and 5) over that Engine.IO: each namespace a backend session
    /// (settings in `BridgeRoute::socketio`).
    pub socketio: bool,
}

impl ClientTransports {
    /// The route's path is an Engine.IO endpoint (plain, or carrying Socket.IO).
    pub fn engine(&self) -> bool {
        self.engineio || self.socketio
    }
}

/// The SockJS receiving transports a route offers (each send URL follows its receiver:
/// `xhr_send` with `xhr`, `jsonp_send` with `jsonp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockJsTransports {
    pub websocket: bool,
    pub xhr: bool,
    pub xhr_streaming: bool,
    pub eventsource: bool,
    pub htmlfile: bool,
    pub jsonp: bool,
}

impl SockJsTransports {
    pub const NAMES: [&'static str; 6] = [
        "websocket",
        "xhr",
        "xhr_streaming",
        "eventsource",
        "htmlfile",
        "jsonp",
    ];

    /// Whether the receiving transport `name` (one of [`Self::NAMES`]) is offered.
    pub fn offers(&self, name: &str) -> bool {
        match name {
            "websocket" => self.websocket,
            "xhr" => self.xhr,
            "xhr_streaming" => self.xhr_streaming,
            "eventsource" => self.eventsource,
            "htmlfile" => self.htmlfile,
            "jsonp" => self.jsonp,
            _ => false,
        }
    }

    pub fn set(&mut self, name: &str, on: bool) -> bool {
        let slot = match name {
            "websocket" => &mut self.websocket,
            "xhr" => &mut self.xhr,
            "xhr_streaming" => &mut self.xhr_streaming,
            "eventsource" => &mut self.eventsource,
            "htmlfile" => &mut self.htmlfile,
            "jsonp" => &mut self.jsonp,
            _ => return false,
        };
        *slot = on;
        true
    }
}

/// A route's SockJS endpoint (`clients: [.., sockjs]`, settings under `sockjs:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockJs {
    /// Offer the WebSocket transports (`/info` says so; off: 404 on them).
    pub websocket: bool,
    /// Clients must carry a `JSESSIONID` cookie (for load balancers that stick on it).
    pub cookie_needed: bool,
    /// How often an idle receiver gets an `h` frame.
    pub heartbeat: Duration,
    /// How long a session lives without a receiver before it is closed.
    pub disconnect_delay: Duration,
    /// A streaming answer ends after this many bytes; the client opens the next one.
    pub response_limit: usize,
    /// Where `iframe.html` loads sockjs-client from.
    pub client_url: String,
    pub transports: SockJsTransports,
}

/// A route's Socket.IO endpoint (`clients: [socketio]`, settings under `socketio:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketIo {
    /// The namespaces clients may join; each is a backend session at the backend URL with
    /// the namespace added to its path (`/` is the URL itself).
    pub namespaces: Vec<String>,
    /// How long a protocol 5 client has to join a namespace before it is disconnected.
    pub connect_timeout: Duration,
    /// Where `PATH/socket.io.js` sends pages for socket.io-client (a socket.io server serves
    /// the client there itself).
    pub client_url: String,
}

pub const DEFAULT_SOCKJS_CLIENT_URL: &str =
    "https://cdn.jsdelivr.net/npm/sockjs-client@1/dist/sockjs.min.js";

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeRoute {
    pub backend: BackendSpec,
    pub clients: ClientTransports,
    /// How many recent messages are kept for SSE resume and long-poll cursors.
    pub replay: usize,
    pub fanout: Fanout,
    /// How long a shared backend connection stays open after its last client left.
    pub linger: Duration,
    pub slow_consumer: SlowConsumer,
    pub binary: BinaryPolicy,
    /// `per_client`: how long a session lives with no poll and no attached client.
    pub session_ttl: Duration,
    /// Set when `clients` lists `sockjs`.
    pub sockjs: Option<SockJs>,
    /// Set when `clients` lists `socketio`.
    pub socketio: Option<SocketIo>,
    /// permessage-deflate on the WebSockets the gateway terminates for this route.
    pub compression: Compression,
    /// `publish:`: the feed also takes messages published by HTTP on the admin listener.
    pub publish: Option<Publish>,
    /// `auth:`: who may subscribe.
    pub auth: Option<Auth>,
}

/// Whether WebSocket clients may get compressed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Accept a client's permessage-deflate offer (without context takeover either way).
    Auto,
    /// Answer without the extension.
    Off,
}

impl BridgeRoute {
    /// The backend feed behind a `websocket:` or `sse:` route.
    pub fn remote(&self) -> Option<&RemoteBackend> {
        match &self.backend {
            BackendSpec::WebSocket(f) | BackendSpec::Sse(f) => Some(f),
            BackendSpec::Builtin(_) | BackendSpec::Published => None,
        }
    }

    /// The route hands a client's credentials (`Cookie`, `Authorization`) to its backend, on
    /// the client's own session or its `post:`, or to its `auth:` (which then admits a
    /// visitor's stream): the transports that cannot show their origin (JSONP's `<script>`,
    /// htmlfile's iframe) must not reach it in a visitor's name.
    pub fn forwards_credentials(&self) -> bool {
        forwards_credentials(&self.backend, self.fanout, self.auth.as_ref())
    }
}

/// See [`BridgeRoute::forwards_credentials`].
pub fn forwards_credentials(backend: &BackendSpec, fanout: Fanout, auth: Option<&Auth>) -> bool {
    let credential =
        |h: &http::HeaderName| h == http::header::COOKIE || h == http::header::AUTHORIZATION;
    if auth.is_some_and(|a| a.forward_headers.iter().any(credential)) {
        return true;
    }
    let remote = match backend {
        BackendSpec::WebSocket(f) | BackendSpec::Sse(f) => f,
        BackendSpec::Builtin(_) | BackendSpec::Published => return false,
    };
    (fanout == Fanout::PerClient || remote.post.is_some())
        && remote.forward_headers.iter().any(credential)
}

impl BridgeRoute {
    /// True when clients can send messages to the backend: per-client sessions on a WebSocket
    /// backend, echo, or an `sse:` backend with `post:`.
    pub fn two_way(&self) -> bool {
        match &self.backend {
            BackendSpec::WebSocket(_) => self.fanout == Fanout::PerClient,
            BackendSpec::Sse(f) => f.post.is_some(),
            BackendSpec::Builtin(b) => *b == Builtin::Echo,
            BackendSpec::Published => false,
        }
    }
}

pub const DEFAULT_REPLAY: usize = 64;
/// 1 GiB, the default of `server.limits.memory`.
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 30;
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(60);
/// Passed to the backend when `forward_headers` is not set.
pub const DEFAULT_FORWARD_HEADERS: [&str; 2] = ["cookie", "authorization"];
pub const DEFAULT_LINGER: Duration = Duration::from_secs(30);
pub const DEFAULT_RECONNECT: Reconnect = Reconnect {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(10),
};

#[cfg(test)]
mod cidr_tests {
    use super::Cidr;

    #[test]
    fn networks_contain_their_addresses_and_only_theirs() {
        let lan = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(lan.contains("10.200.1.2".parse().unwrap()));
        assert!(lan.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!lan.contains("11.0.0.1".parse().unwrap()));
        assert!(!lan.contains("::1".parse().unwrap()));
        let one = Cidr::parse("::1").unwrap();
        assert_eq!(one.prefix, 128);
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn bad_networks_say_why() {
        assert!(Cidr::parse("10.0.0.1/8")
            .unwrap_err()
            .contains("10.0.0.0/8"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("lan")
            .unwrap_err()
            .contains("not an IP address"));
    }
}
