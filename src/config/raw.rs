//! The serde mirror of `gateway.yaml`: the stable, user-facing shape.
//!
//! Every struct denies unknown keys. Durations and sizes stay text here and are parsed in
//! [`super::validate`], so one bad value is reported with its path instead of aborting the parse.

use serde::{Deserialize, Deserializer};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Vec<RawListen>,
    #[serde(default)]
    pub admin: Option<String>,
    /// Who may use the admin listener beyond `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin_auth: Option<RawAdminAuth>,
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default)]
    pub shutdown_grace: Option<Scalar>,
    #[serde(default)]
    pub header_timeout: Option<Scalar>,
    /// New connections accepted per second, after a burst of `accept_burst`.
    #[serde(default)]
    pub accept_rate: Option<u32>,
    #[serde(default)]
    pub accept_burst: Option<u32>,
    #[serde(default)]
    pub limits: Option<RawServerLimits>,
    /// Reload when the config file changes (as SIGHUP does).
    #[serde(default)]
    pub watch_config: Option<bool>,
    /// One line per request and per finished stream; off when absent.
    #[serde(default)]
    pub access_log: Option<RawAccessLog>,
    /// The kernel send buffer of each client connection (`SO_SNDBUF`).
    #[serde(default)]
    pub client_send_buffer: Option<Scalar>,
}

/// `server.admin_auth:`: `{ token, allow: [CIDR, ...] }`, either or both.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminAuth {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub allow: Option<Vec<String>>,
}

/// `server.access_log:`: `{ format: json | combined, to: stdout | FILE }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
}

/// `cluster.tls:`: PEM files, relative to the config file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedisTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
}

/// `cluster.sentinel:`: the master's name and the Sentinels that know where it is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSentinel {
    pub master: String,
    pub addrs: Vec<String>,
    /// ACL user and password of the Redis master and replicas.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// The Sentinels' own password (`requirepass` in their config).
    #[serde(default)]
    pub sentinel_password: Option<String>,
    /// TLS toward the Sentinels and Redis.
    #[serde(default)]
    pub tls: Option<bool>,
    #[serde(default)]
    pub db: Option<i64>,
}

/// `cluster:`: several instances as one gateway, on Redis Streams.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// One Redis, by URL; or `sentinel`, which names the master to follow.
    #[serde(default)]
    pub redis: Option<String>,
    #[serde(default)]
    pub sentinel: Option<RawSentinel>,
    /// What TLS toward Redis (`rediss://`, or a Sentinel with `tls: true`) trusts and shows.
    #[serde(default)]
    pub tls: Option<RawRedisTls>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub lease_ttl: Option<Scalar>,
}

/// Limits of the whole process (a route's own are under its `limits:`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerLimits {
    /// The budget for message buffers, e.g. `1GiB`.
    #[serde(default)]
    pub memory: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    pub addr: String,
    #[serde(default)]
    pub tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

/// The per-route policy block; `defaults:` has the same shape and every route may override
/// any key of it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub origins: Option<Vec<String>>,
    #[serde(default)]
    pub keepalive: Option<RawKeepalive>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub credentials: Option<bool>,
    #[serde(default)]
    pub max_age: Option<Scalar>,
    #[serde(default)]
    pub allow_headers: Option<Vec<String>>,
    #[serde(default)]
    pub expose_headers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub ping_interval: Option<Scalar>,
    pub pong_timeout: Option<Scalar>,
    pub sse_heartbeat: Option<Scalar>,
    pub poll_timeout: Option<Scalar>,
    pub idle_timeout: Option<Scalar>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_message: Option<Scalar>,
    pub max_header_bytes: Option<Scalar>,
    pub send_queue: Option<usize>,
    pub max_clients: Option<usize>,
    pub max_clients_per_ip: Option<usize>,
    pub max_sessions_per_ip: Option<usize>,
    /// Channels a route with captures in its path may have open at once.
    pub max_channels: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(default)]
    pub host: Option<String>,
    pub path: String,
    /// What a captured path segment (`{room}`) must match: a regular expression.
    #[serde(default)]
    pub channel_pattern: Option<String>,
    #[serde(default)]
    pub proxy: Option<RawProxy>,
    #[serde(default)]
    pub backend: Option<RawBackend>,
    #[serde(default)]
    pub clients: Option<Vec<String>>,
    #[serde(default)]
    pub replay: Option<usize>,
    #[serde(default)]
    pub fanout: Option<String>,
    #[serde(default)]
    pub backend_linger: Option<Scalar>,
    #[serde(default)]
    pub slow_consumer: Option<String>,
    #[serde(default)]
    pub binary: Option<String>,
    #[serde(default)]
    pub session_ttl: Option<Scalar>,
    #[serde(default)]
    pub sockjs: Option<RawSockJs>,
    #[serde(default)]
    pub socketio: Option<RawSocketIo>,
    #[serde(default)]
    pub compression: Option<String>,
    /// Who may subscribe: a subrequest to an authorization endpoint before a stream starts.
    #[serde(default)]
    pub auth: Option<RawAuth>,
    /// Whether requests without `Origin` (non-browser clients) are let in.
    #[serde(default)]
    pub allow_no_origin: Option<bool>,
    #[serde(default)]
    pub cors: Option<RawCors>,
    #[serde(default)]
    pub origins: Option<Vec<String>>,
    #[serde(default)]
    pub keepalive: Option<RawKeepalive>,
    #[serde(default)]
    pub limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSockJs {
    #[serde(default)]
    pub websocket: Option<bool>,
    #[serde(default)]
    pub cookie_needed: Option<bool>,
    #[serde(default)]
    pub heartbeat: Option<Scalar>,
    #[serde(default)]
    pub disconnect_delay: Option<Scalar>,
    #[serde(default)]
    pub response_limit: Option<Scalar>,
    #[serde(default)]
    pub client_url: Option<String>,
    #[serde(default)]
    pub transports: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSocketIo {
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    #[serde(default)]
    pub client_url: Option<String>,
    #[serde(default)]
    pub connect_timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub upstreams: Vec<String>,
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    #[serde(default)]
    pub connect_timeout: Option<Scalar>,
    /// The longest wait for an upstream's answer head, and between reads of its body.
    #[serde(default)]
    pub read_timeout: Option<Scalar>,
    /// TLS toward every upstream of the route.
    #[serde(default)]
    pub tls: Option<RawBackendTls>,
}

/// `tls:` toward a backend or upstream: what to trust, the name to ask for, a client
/// certificate for mTLS. Every key is optional: `tls: {}` verifies against the system's roots.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackendTls {
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub client_cert: Option<String>,
    #[serde(default)]
    pub client_key: Option<String>,
    #[serde(default)]
    pub verify: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub interval: Scalar,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    #[serde(default)]
    pub builtin: Option<String>,
    #[serde(default)]
    pub websocket: Option<String>,
    #[serde(default)]
    pub sse: Option<String>,
    /// Messages published by HTTP POST on the admin listener: the whole feed, or beside a
    /// `websocket:`/`sse:` backend.
    #[serde(default)]
    pub publish: Option<RawPublish>,
    /// Where client messages go for an `sse:` backend: each one is POSTed there.
    #[serde(default)]
    pub post: Option<String>,
    /// Client request headers passed to the backend (per-client sessions and `post:`).
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    /// Offered to a WebSocket backend in `Sec-WebSocket-Protocol`, and to clients.
    #[serde(default)]
    pub subprotocols: Option<Vec<String>>,
    /// Extra request headers sent to the backend (e.g. a token the feed needs).
    #[serde(default)]
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    pub connect_timeout: Option<Scalar>,
    #[serde(default)]
    pub reconnect: Option<RawReconnect>,
    /// How `wss://` and `https://` URLs (the feed and `post:`) are verified.
    #[serde(default)]
    pub tls: Option<RawBackendTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub url: String,
    /// Client request headers the subrequest carries (default: cookie, authorization).
    #[serde(default)]
    pub forward_headers: Option<Vec<String>>,
    #[serde(default)]
    pub timeout: Option<Scalar>,
    /// How long an admitting answer is reused for the same route, channel and headers.
    #[serde(default)]
    pub cache: Option<Scalar>,
    #[serde(default)]
    pub tls: Option<RawBackendTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPublish {
    /// The bearer token a publish must carry; `${VAR}` takes it from the environment.
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconnect {
    #[serde(default)]
    pub initial: Option<Scalar>,
    #[serde(default)]
    pub max: Option<Scalar>,
}

/// A YAML scalar kept as text: `20s`, `1MiB` or a bare number all arrive here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration like 20s or a size like 1MiB")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
