//! A bridged route (`backend:`): which backend, which client transports, and the feed keys
//! (`replay`, `fanout`, `session_ttl`, `backend_linger`, `slow_consumer`, `binary`) with the
//! routes each of them applies to.

use super::Validator;
use crate::config::model::{
    Auth, BackendSpec, BinaryPolicy, BridgeRoute, Builtin, ClientTransports, Compression, Fanout,
    Publish, SlowConsumer, SockJs, SockJsTransports, SocketIo, DEFAULT_FORWARD_HEADERS,
    DEFAULT_LINGER, DEFAULT_REPLAY, DEFAULT_SESSION_TTL, DEFAULT_SOCKJS_CLIENT_URL,
};
use crate::config::raw::{RawBackend, RawRoute};

const MAX_REPLAY: usize = 1 << 20;
const DEFAULT_AUTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

fn shared_feed_backend(b: &BackendSpec) -> bool {
    matches!(
        b,
        BackendSpec::WebSocket(_)
            | BackendSpec::Sse(_)
            | BackendSpec::Builtin(Builtin::Clock)
            | BackendSpec::Published
    )
}

/// The route keys that only mean something for a route with a feed.
pub(super) fn feed_keys(raw: &RawRoute) -> [(&'static str, bool); 6] {
    [
        ("replay", raw.replay.is_some()),
        ("session_ttl", raw.session_ttl.is_some()),
        ("fanout", raw.fanout.is_some()),
        ("backend_linger", raw.backend_linger.is_some()),
        ("slow_consumer", raw.slow_consumer.is_some()),
        ("binary", raw.binary.is_some()),
    ]
}

impl Validator<'_> {
    pub(super) fn bridge(
        &mut self,
        at: &str,
        b: &RawBackend,
        raw: &RawRoute,
    ) -> Option<BridgeRoute> {
        let kinds = [b.builtin.is_some(), b.websocket.is_some(), b.sse.is_some()];
        let count = kinds.iter().filter(|k| **k).count();
        if count > 1 || (count == 0 && b.publish.is_none()) {
            self.err(
                format!("{at}.backend"),
                "a backend has exactly one of `builtin: clock|echo|demo`, `websocket: ws://..` or `sse: http://..`, or only `publish:` (a feed of HTTP publishes)",
            );
            return None;
        }
        let publish = b
            .publish
            .as_ref()
            .map(|p| self.publish(&format!("{at}.backend.publish"), p));
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
            BackendSpec::Published
        };
        if publish.is_some() && matches!(backend, BackendSpec::Builtin(_)) {
            self.err(
                format!("{at}.backend.publish"),
                "`publish` feeds a `websocket:` or `sse:` backend's clients, or a feed of its own (`backend: { publish: {} }`); a builtin takes no publishes",
            );
        }
        if let BackendSpec::Builtin(_) | BackendSpec::Published = backend {
            self.misplaced(
                &format!("{at}.backend"),
                &[
                    ("subprotocols", b.subprotocols.is_some()),
                    ("headers", b.headers.is_some()),
                    ("connect_timeout", b.connect_timeout.is_some()),
                    ("reconnect", b.reconnect.is_some()),
                    ("post", b.post.is_some()),
                    ("forward_headers", b.forward_headers.is_some()),
                    ("tls", b.tls.is_some()),
                ],
                "applies to `websocket:` and `sse:` backends, not to builtins or a feed of publishes",
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
                | BackendSpec::Sse(_)
                | BackendSpec::Published => ClientTransports {
                    websocket: true,
                    sse: true,
                    long_poll: true,
                    sockjs: false,
                    engineio: false,
                    socketio: false,
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
                        "clients is empty: list at least one of sse, websocket, long_poll, sockjs, engineio, socketio",
                    );
                }
                for (i, name) in list.iter().enumerate() {
                    let slot = match name.as_str() {
                        "websocket" => &mut c.websocket,
                        "sse" => &mut c.sse,
                        "long_poll" => &mut c.long_poll,
                        "sockjs" => &mut c.sockjs,
                        "engineio" => &mut c.engineio,
                        "socketio" => &mut c.socketio,
                        other => {
                            self.err(format!("{at}.clients[{i}]"), format!("unknown client transport {other:?}: use sse, websocket, long_poll, sockjs, engineio or socketio"));
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
                "builtin echo answers what a client sends, so it needs a two-way client: list websocket, sockjs or engineio",
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
            Some("per_client") if publish.is_some() => {
                self.err(
                    format!("{at}.fanout"),
                    "fanout: per_client gives each client its own backend connection, so there is no shared feed to publish to: remove `publish` or use fanout: shared",
                );
                Fanout::Shared
            }
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
        let auth = raw
            .auth
            .as_ref()
            .and_then(|a| self.auth(&format!("{at}.auth"), a));
        let sockjs = self.sockjs(at, raw, &clients, &backend, fanout, auth.as_ref());
        let socketio = self.socketio(at, raw, &clients, &backend, fanout);
        let compression = self.compression(at, raw, &clients, sockjs.as_ref());
        Some(BridgeRoute {
            backend,
            clients,
            replay,
            fanout,
            linger,
            slow_consumer,
            binary,
            session_ttl,
            sockjs,
            socketio,
            compression,
            publish,
            auth,
        })
    }

    /// `auth: { url, forward_headers, timeout, cache, tls }`.
    fn auth(&mut self, at: &str, raw: &crate::config::raw::RawAuth) -> Option<Auth> {
        let tls = self.backend_tls(&format!("{at}.tls"), raw.tls.as_ref());
        let endpoint = self.endpoint(at, "url", &raw.url, ("http", "https"), &tls);
        let names: Vec<String> = match &raw.forward_headers {
            Some(list) => list.clone(),
            None => DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let forward_headers = self.forwarded(at, &names);
        let timeout = self.duration(format!("{at}.timeout"), &raw.timeout, DEFAULT_AUTH_TIMEOUT);
        if timeout.is_zero() {
            self.err(format!("{at}.timeout"), "timeout must be above 0s");
        }
        let cache = self.duration(format!("{at}.cache"), &raw.cache, std::time::Duration::ZERO);
        Some(Auth {
            endpoint: endpoint?,
            forward_headers,
            timeout,
            cache,
        })
    }

    /// `publish: { token }`: the token may come from the environment (`${VAR}`).
    fn publish(&mut self, at: &str, raw: &crate::config::raw::RawPublish) -> Publish {
        let token = raw
            .token
            .as_deref()
            .and_then(|t| self.bearer_token(format!("{at}.token"), t));
        Publish { token }
    }

    /// `compression: auto | off`, for a route with WebSocket clients (native or SockJS's).
    fn compression(
        &mut self,
        at: &str,
        raw: &RawRoute,
        clients: &ClientTransports,
        sockjs: Option<&SockJs>,
    ) -> Compression {
        let Some(value) = raw.compression.as_deref() else {
            return Compression::Auto;
        };
        let mode = match value {
            "auto" => Compression::Auto,
            "off" => Compression::Off,
            other => {
                self.err(
                    format!("{at}.compression"),
                    format!("unknown compression {other:?}: use auto (permessage-deflate when the client offers it) or off"),
                );
                return Compression::Auto;
            }
        };
        let websockets = clients.websocket || sockjs.is_some_and(|s| s.websocket);
        if !websockets {
            self.err(
                format!("{at}.compression"),
                "`compression` applies to WebSocket clients, and this route has none (`clients` lists neither websocket nor sockjs with its websocket transport)",
            );
        }
        mode
    }
}

/// The SockJS keys, with their defaults.
/// Where `PATH/socket.io.js` sends pages for socket.io-client by default.
pub const DEFAULT_SOCKETIO_CLIENT_URL: &str = "https://cdn.socket.io/4.8.1/socket.io.min.js";
/// socket.io's own `connectTimeout`.
pub const DEFAULT_SOCKETIO_CONNECT_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(45);
pub const DEFAULT_SOCKJS_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(25);
pub const DEFAULT_SOCKJS_DISCONNECT_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
pub const DEFAULT_SOCKJS_RESPONSE_LIMIT: usize = 128 * 1024;

impl Validator<'_> {
    /// A URL a page loads a client library from: http(s) or a path, nothing that could leave
    /// the attribute it is written in.
    fn client_url(&mut self, at: String, url: &str, what: &str) {
        let ok =
            (url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/'))
                && !url.bytes().any(|b| {
                    b.is_ascii_whitespace() || b.is_ascii_control() || b"\"<>'`".contains(&b)
                });
        if !ok {
            self.err(
                at,
                format!("client_url {url:?} is not a URL: give an http(s):// URL or a path where {what}"),
            );
        }
    }

    /// `socketio:` settings for a route whose `clients` lists `socketio`.
    fn socketio(
        &mut self,
        at: &str,
        raw: &RawRoute,
        clients: &ClientTransports,
        backend: &BackendSpec,
        fanout: Fanout,
    ) -> Option<SocketIo> {
        if !clients.socketio {
            if raw.socketio.is_some() {
                self.err(
                    format!("{at}.socketio"),
                    "`socketio` settings need `socketio` in the route's `clients`",
                );
            }
            return None;
        }
        if clients.engineio {
            self.err(
                format!("{at}.clients"),
                "engineio and socketio are two uses of one Engine.IO endpoint at the route's path: list one of them",
            );
        }
        let per_client = fanout == Fanout::PerClient;
        if per_client && !matches!(backend, BackendSpec::WebSocket(_)) {
            self.err(
                format!("{at}.clients"),
                "socketio on a per_client route maps each namespace a client joins to a backend WebSocket session of its own: it needs a `websocket:` backend",
            );
        }
        if !per_client && !shared_feed_backend(backend) {
            self.err(
                format!("{at}.clients"),
                "socketio needs a backend: a `websocket:` one with `fanout: per_client`, or a shared feed (websocket, sse, publish, clock)",
            );
        }
        let r = raw.socketio.as_ref();
        let here = |k: &str| format!("{at}.socketio.{k}");
        let namespaces = r
            .and_then(|r| r.namespaces.clone())
            .unwrap_or_else(|| vec!["/".to_owned()]);
        if !per_client && namespaces != ["/"] {
            self.err(
                here("namespaces"),
                "a shared feed reaches its Socket.IO clients on the main namespace only: leave `namespaces` out (or [\"/\"])",
            );
        }
        if namespaces.is_empty() {
            self.err(
                here("namespaces"),
                "list at least one namespace (\"/\" is the main one)",
            );
        }
        for (i, n) in namespaces.iter().enumerate() {
            let ok = n.starts_with('/')
                && n.len() <= 128
                && n[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./~".contains(&b))
                && !n.contains("//")
                && !n.split('/').any(|s| s == "." || s == "..");
            if !ok {
                self.err(
                    format!("{at}.socketio.namespaces[{i}]"),
                    format!("{n:?} is not a namespace: it starts with / and holds letters, digits, - _ . ~ and / (it is added to the backend URL's path)"),
                );
            }
            if namespaces[..i].contains(n) {
                self.err(
                    format!("{at}.socketio.namespaces[{i}]"),
                    format!("{n} is listed twice"),
                );
            }
        }
        let connect_timeout = self.duration(
            here("connect_timeout"),
            &r.and_then(|r| r.connect_timeout.clone()),
            DEFAULT_SOCKETIO_CONNECT_TIMEOUT,
        );
        if connect_timeout.is_zero() {
            self.err(
                here("connect_timeout"),
                "connect_timeout must be above 0s: it is how long a client has to join a namespace",
            );
        }
        let client_url = r
            .and_then(|r| r.client_url.clone())
            .unwrap_or_else(|| DEFAULT_SOCKETIO_CLIENT_URL.to_owned());
        self.client_url(
            here("client_url"),
            &client_url,
            "PATH/socket.io.js sends pages for socket.io-client",
        );
        Some(SocketIo {
            namespaces,
            connect_timeout,
            client_url,
        })
    }

    /// `sockjs:` settings for a route whose `clients` lists `sockjs`.
    fn sockjs(
        &mut self,
        at: &str,
        raw: &RawRoute,
        clients: &ClientTransports,
        backend: &BackendSpec,
        fanout: Fanout,
        auth: Option<&Auth>,
    ) -> Option<SockJs> {
        if !clients.sockjs {
            if raw.sockjs.is_some() {
                self.err(
                    format!("{at}.sockjs"),
                    "`sockjs` settings need `sockjs` in the route's `clients`",
                );
            }
            return None;
        }
        let r = raw.sockjs.as_ref();
        let here = |k: &str| format!("{at}.sockjs.{k}");
        let websocket = r.and_then(|r| r.websocket).unwrap_or(true);
        let heartbeat = self.duration(
            here("heartbeat"),
            &r.and_then(|r| r.heartbeat.clone()),
            DEFAULT_SOCKJS_HEARTBEAT,
        );
        if heartbeat.is_zero() {
            self.err(here("heartbeat"), "heartbeat must be above 0s: an idle receiver gets an `h` frame this often, and proxies cut silent streams");
        }
        let disconnect_delay = self.duration(
            here("disconnect_delay"),
            &r.and_then(|r| r.disconnect_delay.clone()),
            DEFAULT_SOCKJS_DISCONNECT_DELAY,
        );
        if disconnect_delay.is_zero() {
            self.err(here("disconnect_delay"), "disconnect_delay must be above 0s: it is how long a session waits for its client's next request");
        }
        let response_limit = match r.and_then(|r| r.response_limit.as_ref()) {
            None => DEFAULT_SOCKJS_RESPONSE_LIMIT,
            Some(s) => match crate::config::units::parse_size(&s.0) {
                Ok(n) if (1024..=(1 << 30)).contains(&n) => n as usize,
                Ok(_) => {
                    self.err(here("response_limit"), "response_limit must be between 1KiB and 1GiB: a streaming answer ends after that many bytes and the client opens another");
                    DEFAULT_SOCKJS_RESPONSE_LIMIT
                }
                Err(e) => {
                    self.err(here("response_limit"), e);
                    DEFAULT_SOCKJS_RESPONSE_LIMIT
                }
            },
        };
        let client_url = r
            .and_then(|r| r.client_url.clone())
            .unwrap_or_else(|| DEFAULT_SOCKJS_CLIENT_URL.to_owned());
        self.client_url(
            here("client_url"),
            &client_url,
            "iframe.html loads sockjs-client from",
        );
        // Routes that hand the client's credentials to the backend keep the transports that
        // cannot show their origin (JSONP's <script>, htmlfile's iframe) off unless listed.
        let credentials = crate::config::model::forwards_credentials(backend, fanout, auth);
        let mut transports = SockJsTransports {
            websocket,
            xhr: true,
            xhr_streaming: true,
            eventsource: true,
            htmlfile: !credentials,
            jsonp: !credentials,
        };
        if let Some(list) = r.and_then(|r| r.transports.as_ref()) {
            transports = SockJsTransports {
                websocket: false,
                xhr: false,
                xhr_streaming: false,
                eventsource: false,
                htmlfile: false,
                jsonp: false,
            };
            if list.is_empty() {
                self.err(here("transports"), "transports is empty: list at least one of websocket, xhr, xhr_streaming, eventsource, htmlfile, jsonp");
            }
            for (i, name) in list.iter().enumerate() {
                if transports.offers(name) {
                    self.err(
                        format!("{at}.sockjs.transports[{i}]"),
                        format!("{name} is listed twice"),
                    );
                } else if !transports.set(name, true) {
                    self.err(
                        format!("{at}.sockjs.transports[{i}]"),
                        format!("unknown SockJS transport {name:?}: use websocket, xhr, xhr_streaming, eventsource, htmlfile or jsonp"),
                    );
                }
            }
            if transports.websocket && !websocket {
                self.err(
                    here("transports"),
                    "websocket is listed but `sockjs.websocket` is false",
                );
            }
        }
        Some(SockJs {
            websocket: websocket && transports.websocket,
            cookie_needed: r.and_then(|r| r.cookie_needed).unwrap_or(false),
            heartbeat,
            disconnect_delay,
            response_limit,
            client_url,
            transports,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, BackendSpec, Config, ConfigErrors, RouteKind, SlowConsumer};
    use std::path::Path;

    fn route(body: &str) -> Result<Config, ConfigErrors> {
        let yaml = format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\nroutes:\n  - name: feed\n    path: /feed\n{body}"
        );
        load_str(&yaml, Path::new("."), "t.yaml")
    }

    fn errors(body: &str) -> String {
        route(body).unwrap_err().to_string()
    }

    #[test]
    fn websocket_and_sse_backends_with_their_settings() {
        let c = route("    backend: { websocket: \"ws://feed.internal:9000/v1/stream?x=1\", subprotocols: [v1], headers: { Authorization: \"Bearer t\" }, reconnect: { initial: 200ms, max: 5s } }\n    backend_linger: 1m\n    slow_consumer: drop_oldest\n    binary: drop\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        let BackendSpec::WebSocket(f) = &b.backend else {
            panic!("a websocket backend")
        };
        assert_eq!((f.host.as_str(), f.port), ("feed.internal", 9000));
        assert_eq!(f.path, "/v1/stream?x=1");
        assert_eq!(f.authority, "feed.internal:9000");
        assert_eq!(f.subprotocols, ["v1"]);
        assert_eq!(f.headers[0].0, "authorization");
        assert_eq!(f.reconnect.max, std::time::Duration::from_secs(5));
        assert_eq!(b.linger, std::time::Duration::from_secs(60));
        assert_eq!(b.slow_consumer, SlowConsumer::DropOldest);
        assert!(b.clients.websocket && b.clients.sse && b.clients.long_poll);
        assert!(
            route("    backend: { websocket: \"WS://x/\" }\n").is_ok(),
            "schemes ignore case"
        );
        let c = route("    backend: { sse: \"http://[::1]/events\" }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!()
        };
        let BackendSpec::Sse(f) = &b.backend else {
            panic!()
        };
        assert_eq!(
            (f.host.as_str(), f.port, f.path.as_str()),
            ("::1", 80, "/events")
        );
        assert_eq!(b.slow_consumer, SlowConsumer::Disconnect, "the default");
        assert_eq!(
            b.compression,
            crate::config::Compression::Auto,
            "the default"
        );
        let c = route("    backend: { builtin: echo }\n    compression: off\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!()
        };
        assert_eq!(b.compression, crate::config::Compression::Off);
    }

    #[test]
    fn per_client_sessions_and_post() {
        let c = route("    fanout: per_client\n    origins: [\"https://app.example\"]\n    session_ttl: 2m\n    backend: { websocket: \"ws://chat:9000/c\", forward_headers: [Cookie, X-Tenant] }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        assert_eq!(b.fanout, crate::config::Fanout::PerClient);
        assert_eq!(b.session_ttl, std::time::Duration::from_secs(120));
        assert!(b.two_way());
        let f = b.remote().unwrap();
        assert_eq!(f.forward_headers, ["cookie", "x-tenant"]);
        let c = route(
            "    origins: [\"https://app.example\"]\n    backend: { sse: \"http://feed/events\", post: \"http://feed:8080/send?x=1\" }\n",
        )
        .unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!()
        };
        let f = b.remote().unwrap();
        let post = f.post.as_ref().unwrap();
        assert_eq!(
            (post.authority.as_str(), post.path.as_str()),
            ("feed:8080", "/send?x=1")
        );
        assert_eq!(
            f.forward_headers,
            ["cookie", "authorization"],
            "the default list"
        );
        assert!(
            b.two_way(),
            "a shared SSE feed with post takes client messages"
        );
        let c = route("    backend: { sse: \"http://feed/events\" }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!()
        };
        assert!(!b.two_way());
        assert!(b.remote().unwrap().tls.is_none());
        // TLS: port 443 by default, verified against the system's roots, SNI from the URL;
        // a plain `post:` beside it stays plain.
        let c = route("    backend: { sse: \"https://feed.example/events\", post: \"http://feed:8080/send\" }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!()
        };
        let f = b.remote().unwrap();
        assert_eq!(f.port, 443);
        let tls = f.tls.as_ref().expect("https:// is TLS");
        assert!(tls.verify && tls.ca.is_empty() && tls.client.is_none());
        assert_eq!(tls.server_name(&f.host), "feed.example");
        assert!(f.post.as_ref().unwrap().tls.is_none());
    }

    #[test]
    fn socketio_and_engineio_settings() {
        let c = route("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    clients: [socketio]\n    socketio: { namespaces: [\"/\", \"/admin\"], connect_timeout: 5s }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        let s = b.socketio.as_ref().expect("socketio is listed");
        assert_eq!(s.namespaces, ["/", "/admin"]);
        assert_eq!(s.connect_timeout, std::time::Duration::from_secs(5));
        assert!(b.clients.engine() && !b.clients.engineio);
        // Defaults: the main namespace, socket.io's own connect timeout.
        let c =
            route("    backend: { websocket: \"ws://x/\" }\n    clients: [socketio]\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        assert_eq!(b.socketio.as_ref().unwrap().namespaces, ["/"]);
        assert_eq!(
            b.socketio.as_ref().unwrap().connect_timeout,
            super::DEFAULT_SOCKETIO_CONNECT_TIMEOUT
        );
        // Refused, each with its path.
        let e = errors("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    clients: [socketio]\n    socketio: { namespaces: [admin, \"/a/../b\", \"/ok\", \"/ok\"], connect_timeout: 0s }\n");
        assert!(e.contains("routes[0].socketio.namespaces[0]"), "{e}");
        assert!(e.contains("routes[0].socketio.namespaces[1]"), "{e}");
        assert!(
            e.contains("routes[0].socketio.namespaces[3]: /ok is listed twice"),
            "{e}"
        );
        assert!(e.contains("routes[0].socketio.connect_timeout"), "{e}");
        let e = errors("    backend: { websocket: \"ws://x/\" }\n    clients: [socketio]\n    socketio: { namespaces: [\"/\", \"/admin\"] }\n");
        assert!(e.contains("main namespace only"), "{e}");
        let e = errors("    backend: { builtin: echo }\n    clients: [socketio]\n");
        assert!(e.contains("socketio needs a backend"), "{e}");
        let e = errors("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    clients: [engineio, socketio]\n");
        assert!(e.contains("list one of them"), "{e}");
        let e = errors(
            "    backend: { websocket: \"ws://x/\" }\n    clients: [websocket]\n    socketio: {}\n",
        );
        assert!(e.contains("`socketio` settings need `socketio`"), "{e}");
        let e = errors("    backend: { websocket: \"ws://x/\" }\n    clients: [engineio]\n    keepalive: { ping_interval: 0s }\n");
        assert!(
            e.contains("routes[0].keepalive.ping_interval: Engine.IO clients need heartbeats"),
            "{e}"
        );
    }

    #[test]
    fn sockjs_settings_and_their_defaults() {
        let c = route("    backend: { websocket: \"ws://x/\", forward_headers: [] }\n    fanout: per_client\n    clients: [websocket, sockjs]\n    sockjs: { heartbeat: 10s, disconnect_delay: 2s, response_limit: 4KiB, cookie_needed: true, client_url: /js/sockjs.min.js }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        let s = b.sockjs.as_ref().expect("sockjs is listed");
        assert!(b.clients.sockjs && b.clients.websocket && !b.clients.sse);
        assert_eq!(s.heartbeat, std::time::Duration::from_secs(10));
        assert_eq!(s.disconnect_delay, std::time::Duration::from_secs(2));
        assert_eq!(s.response_limit, 4096);
        assert!(s.cookie_needed && s.websocket);
        assert_eq!(s.client_url, "/js/sockjs.min.js");
        // No credentials forwarded: every transport.
        assert!(s.transports.jsonp && s.transports.htmlfile && s.transports.xhr);
        // Cookies forwarded (the default): JSONP and htmlfile only when listed.
        let c = route("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    origins: [\"https://a.example\"]\n    clients: [sockjs]\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        let s = b.sockjs.as_ref().unwrap();
        assert!(!s.transports.jsonp && !s.transports.htmlfile && s.transports.eventsource);
        assert_eq!(s.response_limit, 128 * 1024);
        assert_eq!(s.heartbeat, std::time::Duration::from_secs(25));
        let c = route("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    origins: [\"https://a.example\"]\n    clients: [sockjs]\n    sockjs: { transports: [xhr, jsonp] }\n").unwrap();
        let RouteKind::Bridge(b) = &c.routes[0].kind else {
            panic!("a bridged route")
        };
        let s = b.sockjs.as_ref().unwrap();
        assert!(s.transports.jsonp && s.transports.xhr && !s.transports.eventsource);
        assert!(!s.websocket, "websocket is not listed");
        // The builtin echo and clock serve SockJS too.
        assert!(
            route("    backend: { builtin: echo }\n    clients: [websocket, sockjs]\n").is_ok()
        );
        assert!(route("    backend: { builtin: clock }\n    clients: [sockjs]\n").is_ok());
    }

    #[test]
    fn bad_sockjs_settings_are_named_with_their_path() {
        let ws = "    backend: { websocket: \"ws://x/\" }\n";
        let cases = [
            (format!("{ws}    sockjs: {{ heartbeat: 1s }}\n"), "routes[0].sockjs: `sockjs` settings need `sockjs` in the route's `clients`"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ heartbeat: 0s }}\n"), "routes[0].sockjs.heartbeat: heartbeat must be above 0s"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ disconnect_delay: 0s }}\n"), "routes[0].sockjs.disconnect_delay: disconnect_delay must be above 0s"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ response_limit: 100B }}\n"), "routes[0].sockjs.response_limit: response_limit must be between 1KiB and 1GiB"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ response_limit: lots }}\n"), "routes[0].sockjs.response_limit: invalid size"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ client_url: \"javascript:alert(1)\" }}\n"), "routes[0].sockjs.client_url: client_url \"javascript:alert(1)\" is not a URL"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ client_url: \"/a\\\"b.js\" }}\n"), "routes[0].sockjs.client_url: "),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ transports: [xhr, xhr] }}\n"), "routes[0].sockjs.transports[1]: xhr is listed twice"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ transports: [flash] }}\n"), "routes[0].sockjs.transports[0]: unknown SockJS transport \"flash\""),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ transports: [] }}\n"), "routes[0].sockjs.transports: transports is empty"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ websocket: false, transports: [websocket] }}\n"), "routes[0].sockjs.transports: websocket is listed but `sockjs.websocket` is false"),
            (format!("{ws}    clients: [sockjs]\n    sockjs: {{ polling: yes }}\n"), "routes[0].sockjs.polling: unknown field `polling`"),
            ("    backend: { builtin: echo }\n    clients: [sse, sockjs]\n".to_owned(), "routes[0].clients: builtin echo answers what a client sends"),
        ];
        for (body, want) in cases {
            let e = errors(&body);
            assert!(e.contains(want), "{body}\nwant: {want}\ngot: {e}");
        }
    }

    #[test]
    fn bad_backend_settings_are_named_with_their_path() {
        let cases = [
            ("    backend: { websocket: \"http://x/\" }\n", "routes[0].backend.websocket: \"http://x/\" must start with ws:// or wss://"),
            ("    backend: { websocket: \"wss://x/\", tls: { ca: missing.pem } }\n", "routes[0].backend.tls.ca: cannot read \"missing.pem\""),
            ("    backend: { websocket: \"ws://x/\", tls: {} }\n", "routes[0].backend.tls: `tls` applies to wss:// and https:// URLs; this backend's are plain"),
            ("    backend: { websocket: \"wss://x/\", tls: { client_cert: c.pem } }\n", "routes[0].backend.tls.client_key: client_cert needs its client_key (mTLS)"),
            ("    backend: { websocket: \"wss://x/\", tls: { sni: \"not a name\" } }\n", "routes[0].backend.tls.sni: \"not a name\" is not a DNS name or IP address"),
            ("    backend: { websocket: \"wss://x/\", tls: { verify: maybe } }\n", "routes[0].backend.tls.verify"),
            ("    backend: { builtin: clock, tls: {} }\n", "routes[0].backend.tls: `tls` applies to `websocket:` and `sse:` backends"),
            ("    proxy: { upstreams: [\"127.0.0.1:1\"], tls: { ca: missing.pem } }\n", "routes[0].proxy.tls.ca: cannot read \"missing.pem\""),
            ("    proxy: { upstreams: [\"127.0.0.1:1\", \"localhost:1\"], tls: {}, health_check: { interval: 1s, path: /h } }\n", "routes[0].proxy.tls.sni: the upstreams have different host names"),
            ("    backend: { sse: \"ws://x/\" }\n", "routes[0].backend.sse: \"ws://x/\" must start with http:// or https://"),
            ("    backend: { websocket: \"ws://x/\", headers: { Host: y } }\n", "routes[0].backend.headers.Host: Host is set by the gateway"),
            ("    backend: { websocket: \"ws://x/\", subprotocols: [\"a b\"] }\n", "routes[0].backend.subprotocols[0]: \"a b\" is not a valid subprotocol"),
            ("    backend: { sse: \"http://x/\", subprotocols: [a] }\n", "routes[0].backend.subprotocols: subprotocols are a WebSocket feature"),
            ("    backend: { websocket: \"ws://x/\", reconnect: { initial: 5s, max: 1s } }\n", "routes[0].backend.reconnect: reconnect.initial must be above 0s and at most reconnect.max"),
            ("    backend: { builtin: clock, connect_timeout: 1s }\n", "routes[0].backend.connect_timeout: `connect_timeout` applies to `websocket:` and `sse:` backends"),
            ("    backend: { builtin: clock }\n    fanout: per_client\n", "routes[0].fanout: fanout: per_client opens one backend connection per client"),
            ("    backend: { websocket: \"ws://x/\" }\n    fanout: everyone\n", "routes[0].fanout: unknown fanout \"everyone\": use shared or per_client"),
            ("    backend: { websocket: \"ws://x/\", post: \"http://x/\" }\n", "routes[0].backend.post: `post` gives an `sse:` backend"),
            ("    backend: { sse: \"http://x/\", post: \"ftp://x/\" }\n", "routes[0].backend.post: \"ftp://x/\" must start with http:// or https://"),
            ("    backend: { sse: \"http://x/\", forward_headers: [cookie] }\n", "routes[0].backend.forward_headers: a shared feed is one connection for every client"),
            ("    backend: { websocket: \"ws://x/\", forward_headers: [host] }\n    fanout: per_client\n", "routes[0].backend.forward_headers[0]: host is hop-by-hop or written by the gateway"),
            ("    backend: { websocket: \"ws://x/\", forward_headers: [X-Forwarded-For] }\n    fanout: per_client\n", "forward_headers[0]: X-Forwarded-For is hop-by-hop or written by the gateway"),
            ("    backend: { websocket: \"ws://x/\", headers: { authorization: t }, forward_headers: [authorization] }\n    fanout: per_client\n", "routes[0].backend.forward_headers: authorization is both set in `headers` and forwarded"),
            ("    backend: { websocket: \"ws://x/\" }\n    session_ttl: 1m\n", "routes[0].session_ttl: `session_ttl` applies to `fanout: per_client` routes"),
            ("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    session_ttl: 0s\n", "routes[0].session_ttl: session_ttl must be above 0s"),
            ("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    replay: 10\n", "routes[0].replay: `replay` applies to shared feeds"),
            ("    backend: { websocket: \"ws://x/\", reconnect: { max: 1s } }\n    fanout: per_client\n", "routes[0].backend.reconnect: `reconnect` applies to shared feeds"),
            ("    backend: { websocket: \"ws://x/\" }\n    fanout: per_client\n    origins: [\"*\"]\n", "routes[0].origins: this route forwards client cookies to its backend, so `origins: [\"*\"]` would let any web page act as your users"),
            ("    backend: { builtin: clock }\n    origins: [\"https://*example.com\"]\n", "routes[0].origins[0]: invalid origin"),
            ("    backend: { builtin: clock }\n    origins: [\"https://app.*.com\"]\n", "routes[0].origins[0]: invalid origin"),
            ("    backend: { builtin: clock }\n    origins: [\"https://*.\"]\n", "routes[0].origins[0]: invalid origin"),
            ("    backend: { builtin: clock }\n    origins: [\"*\"]\n    cors: { credentials: true }\n", "routes[0].cors.credentials: cors.credentials: true with origins: [\"*\"]"),
            ("    backend: { builtin: clock }\n    cors: { expose_headers: [\"bad header\"] }\n", "routes[0].cors.expose_headers[0]: \"bad header\" is not a valid header name"),
            ("    proxy: { upstreams: [\"127.0.0.1:1\"] }\n    session_ttl: 1s\n", "routes[0].session_ttl: `session_ttl` applies to bridged routes"),
            ("    backend: { websocket: \"ws://x/\" }\n    slow_consumer: wait\n", "routes[0].slow_consumer: unknown slow_consumer policy \"wait\""),
            ("    backend: { websocket: \"ws://x/\" }\n    binary: hex\n", "routes[0].binary: unknown binary policy \"hex\""),
            ("    backend: { websocket: \"ws://x/\" }\n    compression: gzip\n", "routes[0].compression: unknown compression \"gzip\": use auto"),
            ("    backend: { websocket: \"ws://x/\" }\n    clients: [sse]\n    compression: auto\n", "routes[0].compression: `compression` applies to WebSocket clients"),
            ("    proxy: { upstreams: [\"127.0.0.1:1\"] }\n    compression: off\n", "routes[0].compression: `compression` applies to bridged routes"),
            ("    backend: { websocket: \"ws://x/\" }\n    backend_linger: soon\n", "routes[0].backend_linger: "),
            ("    backend: { builtin: echo }\n    slow_consumer: disconnect\n", "routes[0].slow_consumer: `slow_consumer` applies to routes with a feed"),
            ("    proxy: { upstreams: [\"127.0.0.1:1\"] }\n    backend_linger: 1s\n", "routes[0].backend_linger: `backend_linger` applies to bridged routes"),
            ("    backend: { websocket: \"ws://x:0/\" }\n", "routes[0].backend.websocket: \"ws://x:0/\": port 0"),
            ("    backend: { sse: \"http://x/\", headers: { Accept: a } }\n", "routes[0].backend.headers.Accept: Accept is set by the gateway"),
            ("    backend: { sse: \"http://x/\", headers: { X-A: a, x-a: b } }\n", "is listed twice"),
            ("    backend: { sse: \"http://x/\" }\n    backend_linger: 0s\n", "routes[0].backend_linger: backend_linger: 0s drops the backend"),
            ("    backend: { sse: \"http://x/\" }\n    backend_linger: 9999h\n", "above the 30-day cap"),
        ];
        for (body, want) in cases {
            let text = errors(body);
            assert!(text.contains(want), "{body}\nwanted {want:?} in:\n{text}");
        }
    }
}
