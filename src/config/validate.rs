//! Checks the [`super::raw`] mirror and builds the typed [`super::model::Config`] from it,
//! collecting every problem with the YAML path it came from.

use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_size};
use super::ConfigError;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn shared_feed_backend(b: &BackendSpec) -> bool {
    matches!(
        b,
        BackendSpec::WebSocket(_) | BackendSpec::Sse(_) | BackendSpec::Builtin(Builtin::Clock)
    )
}

/// The route keys that only mean something for a route with a feed.
fn feed_keys(raw: &RawRoute) -> [(&'static str, bool); 6] {
    [
        ("replay", raw.replay.is_some()),
        ("session_ttl", raw.session_ttl.is_some()),
        ("fanout", raw.fanout.is_some()),
        ("backend_linger", raw.backend_linger.is_some()),
        ("slow_consumer", raw.slow_consumer.is_some()),
        ("binary", raw.binary.is_some()),
    ]
}

const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_THREADS: usize = 256;
/// Client headers never passed on: hop-by-hop, about the gateway's own request, or claims about
/// the client that only the edge may make.
const NOT_FORWARDED: [&str; 9] = [
    "content-type",
    "forwarded",
    "x-real-ip",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "expect",
    "trailer",
    "via",
];
/// Request headers the gateway writes itself on backend requests.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "upgrade",
    "content-length",
    "transfer-encoding",
    "te",
    "last-event-id",
    "accept",
    "cache-control",
];
const MAX_MESSAGE_CAP: u64 = 64 << 20;
const MAX_SEND_QUEUE: usize = 1 << 20;
const MAX_REPLAY: usize = 1 << 20;

/// Parsed sections, each `None` when it failed structurally (its errors are already recorded).
pub struct RawParts {
    pub server: Option<RawServer>,
    pub defaults: RawPolicy,
    pub routes: Vec<Option<RawRoute>>,
}

pub struct Validator<'a> {
    base_dir: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub fn new(base_dir: &'a Path, errors: Vec<ConfigError>) -> Self {
        Self { base_dir, errors }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Reports every key of `keys` that is set, for the same reason.
    fn misplaced(&mut self, at: &str, keys: &[(&str, bool)], why: &str) {
        for (key, set) in keys {
            if *set {
                self.err(format!("{at}.{key}"), format!("`{key}` {why}"));
            }
        }
    }

    fn duration(&mut self, path: String, v: &Option<Scalar>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(&s.0).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    /// Checks every section; returns the config only when nothing at all was wrong.
    pub fn validate(mut self, parts: RawParts) -> Result<Config, Vec<ConfigError>> {
        let server = parts.server.as_ref().map(|s| self.server(s));
        let defaults_origins = parts.defaults.origins.clone().unwrap_or_default();
        self.origins("defaults.origins", &defaults_origins);
        let defaults_keepalive = self.keepalive(
            "defaults.keepalive",
            parts.defaults.keepalive.as_ref(),
            &Keepalive::default(),
        );
        let defaults_limits = self.limits(
            "defaults.limits",
            parts.defaults.limits.as_ref(),
            &Limits::default(),
        );

        let mut routes = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut places: HashMap<(HostPattern, String), usize> = HashMap::new();
        for (i, raw) in parts.routes.iter().enumerate() {
            let Some(raw) = raw else { continue };
            let at = format!("routes[{i}]");
            if let Some(first) = names.insert(raw.name.clone(), i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "duplicate route name {:?} (already used by routes[{first}]); names must be unique",
                        raw.name
                    ),
                );
            }
            let Some(route) = self.route(
                &at,
                raw,
                &defaults_origins,
                &defaults_keepalive,
                &defaults_limits,
            ) else {
                continue;
            };
            let key = (route.host.clone(), route.path.clone());
            if let Some(first) = places.insert(key, i) {
                self.err(
                    format!("{at}.path"),
                    format!(
                        "duplicate route: host {:?} path {:?} is already served by routes[{first}]; give one of them another path or host",
                        raw.host.as_deref().unwrap_or("*"),
                        route.path
                    ),
                );
            }
            routes.push(route);
        }
        if self.errors.is_empty() {
            if let Some(server) = server {
                return Ok(Config { server, routes });
            }
        }
        Err(self.errors)
    }

    fn server(&mut self, s: &RawServer) -> ServerConfig {
        let mut listen = Vec::new();
        if s.listen.is_empty() {
            self.err(
                "server.listen",
                "no listener: add at least one `- addr: \"127.0.0.1:8080\"`",
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in s.listen.iter().enumerate() {
            let at = format!("server.listen[{i}]");
            let Ok(addr) = l.addr.parse::<SocketAddr>() else {
                self.err(
                    format!("{at}.addr"),
                    format!(
                        "invalid listen address {:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\"",
                        l.addr
                    ),
                );
                continue;
            };
            if let Some(first) = seen.insert(addr, i) {
                self.err(
                    format!("{at}.addr"),
                    format!("listening address {addr} is already used by server.listen[{first}]"),
                );
            }
            let tls = l.tls.as_ref().map(|t| TlsFiles {
                cert: self.existing_file(format!("{at}.tls.cert"), &t.cert),
                key: self.existing_file(format!("{at}.tls.key"), &t.key),
            });
            listen.push(Listener { addr, tls });
        }
        let admin = s.admin.as_ref().and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(i) = seen.get(&addr) {
                    self.err(
                        "server.admin",
                        format!("admin address {addr} is already used by server.listen[{i}]"),
                    );
                }
                Some(addr)
            }
            Err(_) => {
                self.err(
                    "server.admin",
                    format!("invalid admin address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:9100\""),
                );
                None
            }
        });
        let threads = s.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 || threads > MAX_THREADS {
            self.err(
                "server.threads",
                format!("threads must be between 1 and {MAX_THREADS}, got {threads}"),
            );
        }
        let shutdown_grace = self.duration(
            "server.shutdown_grace".into(),
            &s.shutdown_grace,
            Duration::from_secs(10),
        );
        let header_timeout = self.duration(
            "server.header_timeout".into(),
            &s.header_timeout,
            Duration::from_secs(10),
        );
        if header_timeout.is_zero() || header_timeout > Duration::from_secs(300) {
            self.err(
                "server.header_timeout",
                "header_timeout must be above 0s and at most 5m",
            );
        }
        let accept_rate = s.accept_rate.unwrap_or(2000);
        let accept_burst = s.accept_burst.unwrap_or(500);
        if accept_rate == 0 || accept_burst == 0 {
            self.err(
                "server.accept_rate",
                "accept_rate and accept_burst must be above 0",
            );
        }
        ServerConfig {
            listen,
            admin,
            threads,
            shutdown_grace,
            header_timeout,
            accept_rate,
            accept_burst,
        }
    }

    fn existing_file(&mut self, path: String, file: &str) -> PathBuf {
        let p = self.base_dir.join(file);
        if !p.is_file() {
            self.err(
                path,
                format!(
                    "file {file:?} not found (relative paths are resolved from the config file's folder; scripts/dev-cert.sh makes a dev pair)"
                ),
            );
        }
        p
    }

    fn origins(&mut self, at: &str, origins: &[String]) {
        for (i, o) in origins.iter().enumerate() {
            let host = o.split_once("://").map_or("", |(_, h)| h);
            // `*` only as a whole leading label: `https://*.example.com`.
            let wildcard_ok = match host.strip_prefix("*.") {
                Some(domain) => {
                    !domain.is_empty() && !domain.contains('*') && !domain.ends_with('.')
                }
                None => !host.contains('*'),
            };
            let ok = o == "*"
                || o == "null"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !host.is_empty()
                    && !o.ends_with('/')
                    && !host.contains('/')
                    && wildcard_ok);
            if !ok {
                self.err(
                    format!("{at}[{i}]"),
                    format!("invalid origin {o:?}: expected \"*\", \"null\" or scheme://host[:port] such as \"https://app.example.com\" or \"https://*.example.com\" (no path, no trailing slash)"),
                );
            }
        }
    }

    fn cors(&mut self, at: &str, raw: Option<&RawCors>, origins: &[String]) -> Cors {
        let mut headers = |key: &str, list: Option<&Vec<String>>, default: &[&str]| {
            let names: Vec<String> = match list {
                Some(l) => l.clone(),
                None => default.iter().map(|s| s.to_string()).collect(),
            };
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match http::HeaderName::from_bytes(n.as_bytes()) {
                    Ok(h) => out.push(h),
                    Err(_) => self.err(
                        format!("{at}.{key}[{i}]"),
                        format!("{n:?} is not a valid header name"),
                    ),
                }
            }
            out
        };
        let allow_headers = headers(
            "allow_headers",
            raw.and_then(|r| r.allow_headers.as_ref()),
            &DEFAULT_CORS_ALLOW_HEADERS,
        );
        let expose_headers = headers(
            "expose_headers",
            raw.and_then(|r| r.expose_headers.as_ref()),
            &[],
        );
        let credentials = raw.and_then(|r| r.credentials).unwrap_or(false);
        if credentials && origins.iter().any(|o| o == "*") {
            self.err(
                format!("{at}.credentials"),
                "cors.credentials: true with origins: [\"*\"] would let every web page read answers made with your users' cookies: list the origins instead",
            );
        }
        let max_age = self.duration(
            format!("{at}.max_age"),
            &raw.and_then(|r| r.max_age.clone()),
            DEFAULT_CORS_MAX_AGE,
        );
        Cors {
            credentials,
            max_age,
            allow_headers,
            expose_headers,
        }
    }

    fn keepalive(&mut self, at: &str, raw: Option<&RawKeepalive>, base: &Keepalive) -> Keepalive {
        let Some(raw) = raw else { return base.clone() };
        let k = Keepalive {
            ping_interval: self.duration(
                format!("{at}.ping_interval"),
                &raw.ping_interval,
                base.ping_interval,
            ),
            pong_timeout: self.duration(
                format!("{at}.pong_timeout"),
                &raw.pong_timeout,
                base.pong_timeout,
            ),
            sse_heartbeat: self.duration(
                format!("{at}.sse_heartbeat"),
                &raw.sse_heartbeat,
                base.sse_heartbeat,
            ),
            poll_timeout: self.duration(
                format!("{at}.poll_timeout"),
                &raw.poll_timeout,
                base.poll_timeout,
            ),
            idle_timeout: self.duration(
                format!("{at}.idle_timeout"),
                &raw.idle_timeout,
                base.idle_timeout,
            ),
        };
        if !k.ping_interval.is_zero() && k.pong_timeout.is_zero() {
            self.err(
                format!("{at}.pong_timeout"),
                "pong_timeout must be above 0s while ping_interval is on (set ping_interval: 0s to turn pings off)",
            );
        }
        if k.poll_timeout.is_zero() || k.poll_timeout > Duration::from_secs(300) {
            self.err(
                format!("{at}.poll_timeout"),
                "poll_timeout must be between 1ms and 5m (clients and proxies on the way cut longer requests)",
            );
        }
        k
    }

    fn limits(&mut self, at: &str, raw: Option<&RawLimits>, base: &Limits) -> Limits {
        let Some(raw) = raw else { return base.clone() };
        let max_message = match &raw.max_message {
            None => base.max_message,
            Some(s) => match parse_size(&s.0) {
                Ok(0) => {
                    self.err(format!("{at}.max_message"), "max_message must be above 0");
                    base.max_message
                }
                Ok(n) if n > MAX_MESSAGE_CAP => {
                    self.err(
                        format!("{at}.max_message"),
                        format!("max_message {n} is above the 64MiB cap"),
                    );
                    base.max_message
                }
                Ok(n) => n,
                Err(e) => {
                    self.err(format!("{at}.max_message"), e);
                    base.max_message
                }
            },
        };
        let max_header_bytes = match &raw.max_header_bytes {
            None => base.max_header_bytes,
            Some(v) => match parse_size(&v.0) {
                Ok(n) if (1024..=(1 << 20)).contains(&n) => n as usize,
                Ok(n) => {
                    self.err(
                        format!("{at}.max_header_bytes"),
                        format!("max_header_bytes must be between 1KiB and 1MiB (pingora's own cap), got {n}"),
                    );
                    base.max_header_bytes
                }
                Err(e) => {
                    self.err(format!("{at}.max_header_bytes"), e);
                    base.max_header_bytes
                }
            },
        };
        let send_queue = raw.send_queue.unwrap_or(base.send_queue);
        if send_queue == 0 || send_queue > MAX_SEND_QUEUE {
            self.err(
                format!("{at}.send_queue"),
                format!("send_queue must be between 1 and {MAX_SEND_QUEUE}, got {send_queue}"),
            );
        }
        let max_clients = raw.max_clients.unwrap_or(base.max_clients);
        if max_clients == 0 {
            self.err(format!("{at}.max_clients"), "max_clients must be above 0");
        }
        Limits {
            max_message,
            send_queue,
            max_clients,
            max_clients_per_ip: raw.max_clients_per_ip.unwrap_or(base.max_clients_per_ip),
            max_header_bytes,
        }
    }

    fn host(&mut self, at: &str, host: Option<&str>) -> HostPattern {
        let Some(h) = host else {
            return HostPattern::Any;
        };
        let h = h.trim().to_ascii_lowercase();
        if h == "*" {
            return HostPattern::Any;
        }
        let (suffix, name) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h.as_str()),
        };
        let valid = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            self.err(
                format!("{at}.host"),
                format!("invalid host {h:?}: expected \"*\", an exact name like \"api.example.com\" or a wildcard like \"*.example.com\" (no port)"),
            );
        }
        if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        }
    }

    fn path(&mut self, at: &str, path: &str) -> String {
        if !path.starts_with('/')
            || path.contains(['?', '#', ' '])
            || path.split('/').any(|s| s == ".." || s == ".")
        {
            self.err(
                format!("{at}.path"),
                format!("invalid path {path:?}: expected an absolute path prefix like \"/api\" (no query, fragment, spaces or dot segments)"),
            );
        }
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() {
            "/".into()
        } else {
            trimmed.to_owned()
        }
    }

    fn route(
        &mut self,
        at: &str,
        raw: &RawRoute,
        origins: &[String],
        keepalive: &Keepalive,
        limits: &Limits,
    ) -> Option<Route> {
        if raw.name.is_empty()
            || !raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.err(
                format!("{at}.name"),
                format!("invalid route name {:?}: use letters, digits, '-' and '_' (it becomes a metric label)", raw.name),
            );
        }
        let host = self.host(at, raw.host.as_deref());
        let path = self.path(at, &raw.path);
        let origins = match &raw.origins {
            Some(o) => {
                self.origins(&format!("{at}.origins"), o);
                o.clone()
            }
            None => origins.to_vec(),
        };
        let cors = self.cors(&format!("{at}.cors"), raw.cors.as_ref(), &origins);
        let keepalive = self.keepalive(
            &format!("{at}.keepalive"),
            raw.keepalive.as_ref(),
            keepalive,
        );
        let limits = self.limits(&format!("{at}.limits"), raw.limits.as_ref(), limits);
        let kind = match (&raw.proxy, &raw.backend) {
            (Some(p), None) => {
                let mut keys = vec![("clients", raw.clients.is_some())];
                keys.extend(feed_keys(raw));
                self.misplaced(
                    at,
                    &keys,
                    "applies to bridged routes (with `backend:`), not to `proxy:` routes",
                );
                RouteKind::Proxy(self.proxy(&format!("{at}.proxy"), p)?)
            }
            (None, Some(b)) => RouteKind::Bridge(Box::new(self.bridge(at, b, raw)?)),
            (Some(_), Some(_)) => {
                self.err(at, "a route has exactly one of `proxy:` (pass-through) or `backend:` (bridged); this one has both");
                return None;
            }
            (None, None) => {
                self.err(at, "a route needs exactly one of `proxy:` (pass-through) or `backend:` (bridged); this one has neither");
                return None;
            }
        };
        if let RouteKind::Bridge(b) = &kind {
            let forwards_cookies = b.feed().is_some_and(|f| {
                (b.fanout == Fanout::PerClient || f.post.is_some())
                    && f.forward_headers.contains(&http::header::COOKIE)
            });
            if forwards_cookies && origins.iter().any(|o| o == "*") {
                self.err(
                    format!("{at}.origins"),
                    "this route forwards client cookies to its backend, so `origins: [\"*\"]` would let any web page act as your users (Cross-Site WebSocket Hijacking): list the origins of your pages, or leave `cookie` out of `backend.forward_headers`",
                );
            }
        }
        Some(Route {
            allow_no_origin: raw.allow_no_origin.unwrap_or(true),
            cors,
            name: raw.name.clone(),
            host,
            path,
            origins,
            keepalive,
            limits,
            kind,
        })
    }

    fn proxy(&mut self, at: &str, p: &RawProxy) -> Option<ProxyRoute> {
        if p.upstreams.is_empty() {
            self.err(
                format!("{at}.upstreams"),
                "no upstreams: list at least one \"host:port\"",
            );
        }
        let mut upstreams = Vec::new();
        for (i, u) in p.upstreams.iter().enumerate() {
            match u.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                Some(addr) => upstreams.push(Upstream {
                    name: u.clone(),
                    addr,
                }),
                None => self.err(
                    format!("{at}.upstreams[{i}]"),
                    format!("invalid upstream {u:?}: expected host:port that resolves, e.g. \"127.0.0.1:3000\""),
                ),
            }
        }
        let balance = match p.balance.as_deref().unwrap_or("round_robin") {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "hash_client_ip" => Balance::HashClientIp,
            other => {
                self.err(
                    format!("{at}.balance"),
                    format!(
                        "unknown balance {other:?}: use round_robin, least_conn or hash_client_ip"
                    ),
                );
                Balance::RoundRobin
            }
        };
        let health_check = p.health_check.as_ref().map(|h| {
            let interval = self.duration(
                format!("{at}.health_check.interval"),
                &Some(h.interval.clone()),
                Duration::from_secs(5),
            );
            if interval < Duration::from_millis(100) {
                self.err(
                    format!("{at}.health_check.interval"),
                    "health_check.interval must be at least 100ms",
                );
            }
            if let Some(path) = &h.path {
                if !path.starts_with('/') {
                    self.err(
                        format!("{at}.health_check.path"),
                        format!("health check path {path:?} must start with '/'"),
                    );
                }
            }
            let timeout = self.duration(
                format!("{at}.health_check.timeout"),
                &h.timeout,
                Duration::from_secs(1).min(interval),
            );
            HealthCheck {
                interval,
                path: h.path.clone(),
                timeout,
            }
        });
        let connect_timeout = self.duration(
            format!("{at}.connect_timeout"),
            &p.connect_timeout,
            Duration::from_secs(3),
        );
        Some(ProxyRoute {
            upstreams,
            balance,
            health_check,
            connect_timeout,
        })
    }

    fn bridge(&mut self, at: &str, b: &RawBackend, raw: &RawRoute) -> Option<BridgeRoute> {
        let kinds = [b.builtin.is_some(), b.websocket.is_some(), b.sse.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            self.err(
                format!("{at}.backend"),
                "a backend has exactly one of `builtin: clock|echo|demo`, `websocket: ws://..` or `sse: http://..`",
            );
            return None;
        }
        let backend = if let Some(name) = &b.builtin {
            match name.as_str() {
                "clock" => BackendSpec::Builtin(Builtin::Clock),
                "echo" => BackendSpec::Builtin(Builtin::Echo),
                "demo" => BackendSpec::Builtin(Builtin::DemoPage),
                other => {
                    self.err(
                        format!("{at}.backend.builtin"),
                        format!("unknown builtin {other:?}: use clock, echo or demo"),
                    );
                    return None;
                }
            }
        } else if let Some(url) = &b.websocket {
            BackendSpec::WebSocket(self.backend_feed(
                &format!("{at}.backend"),
                "websocket",
                url,
                b,
            )?)
        } else if let Some(url) = &b.sse {
            BackendSpec::Sse(self.backend_feed(&format!("{at}.backend"), "sse", url, b)?)
        } else {
            unreachable!("exactly one backend kind is set")
        };
        if let BackendSpec::Builtin(_) = backend {
            self.misplaced(
                &format!("{at}.backend"),
                &[
                    ("subprotocols", b.subprotocols.is_some()),
                    ("headers", b.headers.is_some()),
                    ("connect_timeout", b.connect_timeout.is_some()),
                    ("reconnect", b.reconnect.is_some()),
                    ("post", b.post.is_some()),
                    ("forward_headers", b.forward_headers.is_some()),
                ],
                "applies to `websocket:` and `sse:` backends, not to builtins",
            );
        }
        if let (BackendSpec::Sse(_), Some(_)) = (&backend, &b.subprotocols) {
            self.err(
                format!("{at}.backend.subprotocols"),
                "subprotocols are a WebSocket feature; an `sse:` backend has none",
            );
        }
        let clients = match &raw.clients {
            None => match backend {
                BackendSpec::Builtin(Builtin::Echo) => ClientTransports {
                    websocket: true,
                    ..Default::default()
                },
                BackendSpec::Builtin(Builtin::Clock)
                | BackendSpec::WebSocket(_)
                | BackendSpec::Sse(_) => ClientTransports {
                    websocket: true,
                    sse: true,
                    long_poll: true,
                },
                BackendSpec::Builtin(Builtin::DemoPage) => ClientTransports::default(),
            },
            Some(_) if backend == BackendSpec::Builtin(Builtin::DemoPage) => {
                self.err(
                    format!("{at}.clients"),
                    "builtin demo is a plain HTML page: remove `clients`",
                );
                ClientTransports::default()
            }
            Some(list) => {
                let mut c = ClientTransports::default();
                if list.is_empty() {
                    self.err(
                        format!("{at}.clients"),
                        "clients is empty: list at least one of sse, websocket, long_poll",
                    );
                }
                for (i, name) in list.iter().enumerate() {
                    let slot = match name.as_str() {
                        "websocket" => &mut c.websocket,
                        "sse" => &mut c.sse,
                        "long_poll" => &mut c.long_poll,
                        other => {
                            self.err(format!("{at}.clients[{i}]"), format!("unknown client transport {other:?}: use sse, websocket or long_poll"));
                            continue;
                        }
                    };
                    if *slot {
                        self.err(
                            format!("{at}.clients[{i}]"),
                            format!("{name} is listed twice"),
                        );
                    }
                    *slot = true;
                }
                c
            }
        };
        if backend == BackendSpec::Builtin(Builtin::Echo) && (clients.sse || clients.long_poll) {
            self.err(
                format!("{at}.clients"),
                "builtin echo answers what a client sends, so it needs a two-way client: list only websocket",
            );
        }
        let replay = raw.replay.unwrap_or(DEFAULT_REPLAY);
        if replay > MAX_REPLAY {
            self.err(
                format!("{at}.replay"),
                format!("replay must be at most {MAX_REPLAY}"),
            );
        }
        let fanout = match raw.fanout.as_deref() {
            None | Some("shared") => Fanout::Shared,
            Some("per_client") if matches!(backend, BackendSpec::Builtin(_)) => {
                self.err(
                    format!("{at}.fanout"),
                    "fanout: per_client opens one backend connection per client: it needs a `websocket:` or `sse:` backend",
                );
                Fanout::Shared
            }
            Some("per_client") => Fanout::PerClient,
            Some(other) => {
                self.err(
                    format!("{at}.fanout"),
                    format!("unknown fanout {other:?}: use shared or per_client"),
                );
                Fanout::Shared
            }
        };
        let session_ttl = self.duration(
            format!("{at}.session_ttl"),
            &raw.session_ttl,
            DEFAULT_SESSION_TTL,
        );
        if fanout == Fanout::PerClient {
            if session_ttl.is_zero() {
                self.err(
                    format!("{at}.session_ttl"),
                    "session_ttl must be above 0s: it is how long a session waits for its next poll",
                );
            }
            self.misplaced(
                at,
                &[
                    ("replay", raw.replay.is_some()),
                    ("backend_linger", raw.backend_linger.is_some()),
                    ("slow_consumer", raw.slow_consumer.is_some()),
                ],
                "applies to shared feeds; a per_client session holds up to limits.send_queue unacknowledged messages and then stops reading its backend",
            );
            self.misplaced(
                &format!("{at}.backend"),
                &[("reconnect", b.reconnect.is_some())],
                "applies to shared feeds; a per_client session ends with its backend connection",
            );
        } else {
            self.misplaced(
                at,
                &[("session_ttl", raw.session_ttl.is_some())],
                "applies to `fanout: per_client` routes",
            );
            if b.forward_headers.is_some() && b.post.is_none() {
                self.err(
                    format!("{at}.backend.forward_headers"),
                    "a shared feed is one connection for every client, so no client's headers are forwarded: use `fanout: per_client`, or `post:` for client messages",
                );
            }
        }
        let linger = self.duration(
            format!("{at}.backend_linger"),
            &raw.backend_linger,
            DEFAULT_LINGER,
        );
        if linger.is_zero()
            && clients.long_poll
            && shared_feed_backend(&backend)
            && fanout == Fanout::Shared
        {
            self.err(
                format!("{at}.backend_linger"),
                "backend_linger: 0s drops the backend between two polls of a long-poll client; give it at least a few seconds",
            );
        }
        let slow_consumer = match raw.slow_consumer.as_deref() {
            None | Some("disconnect") => SlowConsumer::Disconnect,
            Some("drop_oldest") => SlowConsumer::DropOldest,
            Some(other) => {
                self.err(
                    format!("{at}.slow_consumer"),
                    format!(
                        "unknown slow_consumer policy {other:?}: use disconnect or drop_oldest"
                    ),
                );
                SlowConsumer::Disconnect
            }
        };
        let binary = match raw.binary.as_deref() {
            None | Some("base64") => BinaryPolicy::Base64,
            Some("drop") => BinaryPolicy::Drop,
            Some(other) => {
                self.err(
                    format!("{at}.binary"),
                    format!("unknown binary policy {other:?}: use base64 or drop"),
                );
                BinaryPolicy::Base64
            }
        };
        if !shared_feed_backend(&backend) {
            self.misplaced(
                at,
                &feed_keys(raw),
                "applies to routes with a feed (websocket, sse or clock backends)",
            );
        }
        Some(BridgeRoute {
            backend,
            clients,
            replay,
            fanout,
            linger,
            slow_consumer,
            binary,
            session_ttl,
        })
    }

    /// Checks a backend URL: `plain://host[:port]/path`, no TLS yet, no credentials.
    fn endpoint(
        &mut self,
        at: &str,
        key: &str,
        url: &str,
        plain: &str,
        tls: &str,
    ) -> Option<Endpoint> {
        let uri = match url.parse::<http::Uri>() {
            Ok(u) => u,
            Err(e) => {
                self.err(
                    format!("{at}.{key}"),
                    format!("invalid URL {url:?}: {e}; expected {plain}://host:port/path"),
                );
                return None;
            }
        };
        let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
        match scheme.as_deref() {
            Some(s) if s == plain => {}
            Some(s) if s == tls => {
                self.err(
                    format!("{at}.{key}"),
                    format!("{tls}:// backends (TLS toward the backend) are not supported yet; use {plain}:// on a trusted network"),
                );
                return None;
            }
            _ => {
                self.err(
                    format!("{at}.{key}"),
                    format!("{url:?} must start with {plain}://"),
                );
                return None;
            }
        }
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            self.err(format!("{at}.{key}"), format!("{url:?} has no host"));
            return None;
        };
        if authority.as_str().contains('@') {
            self.err(
                format!("{at}.{key}"),
                "credentials in the URL are not supported: send them with `headers:`",
            );
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        if port == 0 {
            self.err(
                format!("{at}.{key}"),
                format!("{url:?}: port 0 is not a port to connect to"),
            );
        }
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let path = if path.is_empty() { "/".into() } else { path };
        Some(Endpoint {
            url: url.to_owned(),
            host,
            port,
            authority: authority.as_str().to_owned(),
            path,
        })
    }

    /// Checks a `websocket:` or `sse:` backend URL and its connection settings.
    fn backend_feed(
        &mut self,
        at: &str,
        key: &str,
        url: &str,
        b: &RawBackend,
    ) -> Option<BackendFeed> {
        let (plain, tls) = if key == "websocket" {
            ("ws", "wss")
        } else {
            ("http", "https")
        };
        let Endpoint {
            url,
            host,
            port,
            authority,
            path,
        } = self.endpoint(at, key, url, plain, tls)?;
        let post = match &b.post {
            Some(p) if key == "sse" => self.endpoint(at, "post", p, "http", "https"),
            Some(_) => {
                self.err(
                    format!("{at}.post"),
                    "`post` gives an `sse:` backend a way to receive client messages; a WebSocket backend receives them on its own connection",
                );
                None
            }
            None => None,
        };
        let mut forward_headers = Vec::new();
        let names: Vec<String> = match &b.forward_headers {
            Some(list) => list.clone(),
            None => DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        for (i, name) in names.iter().enumerate() {
            let here = format!("{at}.forward_headers[{i}]");
            let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.err(here, format!("{name:?} is not a valid header name"));
                continue;
            };
            if RESERVED_HEADERS.contains(&n.as_str())
                || NOT_FORWARDED.contains(&n.as_str())
                || n.as_str().starts_with("sec-websocket-")
                || n.as_str().starts_with("x-forwarded-")
            {
                self.err(
                    here,
                    format!("{name} is hop-by-hop or written by the gateway itself: it is never forwarded"),
                );
                continue;
            }
            if forward_headers.contains(&n) {
                self.err(
                    here,
                    format!("{name} is listed twice (header names ignore case)"),
                );
                continue;
            }
            forward_headers.push(n);
        }
        let configured = |n: &http::HeaderName| {
            b.headers
                .iter()
                .flatten()
                .any(|(h, _)| h.eq_ignore_ascii_case(n.as_str()))
        };
        if b.forward_headers.is_some() {
            for n in &forward_headers {
                if configured(n) {
                    self.err(
                        format!("{at}.forward_headers"),
                        format!("{n} is both set in `headers` and forwarded from clients: keep it in one of them"),
                    );
                }
            }
        } else {
            // The default list gives way to a header the operator set: theirs is sent, alone.
            forward_headers.retain(|n| !configured(n));
        }

        let mut subprotocols = Vec::new();
        for (i, p) in b.subprotocols.iter().flatten().enumerate() {
            let token = !p.is_empty()
                && p.bytes()
                    .all(|c| c.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&c));
            if !token {
                self.err(
                    format!("{at}.subprotocols[{i}]"),
                    format!("{p:?} is not a valid subprotocol token (RFC 6455 section 4.1)"),
                );
            }
            subprotocols.push(p.clone());
        }
        let mut headers = Vec::new();
        for (name, value) in b.headers.iter().flatten() {
            let here = format!("{at}.headers.{name}");
            let Ok(n) = http::HeaderName::from_bytes(name.as_bytes()) else {
                self.err(here, format!("{name:?} is not a valid header name"));
                continue;
            };
            if RESERVED_HEADERS.contains(&n.as_str()) || n.as_str().starts_with("sec-websocket-") {
                self.err(
                    here,
                    format!("{name} is set by the gateway itself and cannot be configured"),
                );
                continue;
            }
            if headers.iter().any(|(seen, _)| *seen == n) {
                self.err(
                    here,
                    format!("{name} is listed twice (header names ignore case)"),
                );
                continue;
            }
            match http::HeaderValue::from_str(value) {
                Ok(v) => headers.push((n, v)),
                Err(_) => self.err(here, "header values are visible ASCII text"),
            }
        }
        let connect_timeout = self.duration(
            format!("{at}.connect_timeout"),
            &b.connect_timeout,
            DEFAULT_BACKEND_CONNECT_TIMEOUT,
        );
        if connect_timeout.is_zero() {
            self.err(
                format!("{at}.connect_timeout"),
                "connect_timeout must be above 0s",
            );
        }
        let reconnect = match &b.reconnect {
            None => DEFAULT_RECONNECT,
            Some(r) => Reconnect {
                initial: self.duration(
                    format!("{at}.reconnect.initial"),
                    &r.initial,
                    DEFAULT_RECONNECT.initial,
                ),
                max: self.duration(format!("{at}.reconnect.max"), &r.max, DEFAULT_RECONNECT.max),
            },
        };
        if reconnect.initial.is_zero() || reconnect.initial > reconnect.max {
            self.err(
                format!("{at}.reconnect"),
                "reconnect.initial must be above 0s and at most reconnect.max",
            );
        }
        Some(BackendFeed {
            url,
            host,
            port,
            authority,
            path,
            subprotocols,
            headers,
            connect_timeout,
            reconnect,
            post,
            forward_headers,
        })
    }
}
