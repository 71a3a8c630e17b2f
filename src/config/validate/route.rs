//! One route: its name, host and path, the policy keys it overrides, and its kind (`proxy:` or
//! `backend:`), checked against each other.

use super::bridge::feed_keys;
use super::Validator;
use crate::config::model::{
    placeholders, BackendSpec, ChannelPath, Fanout, HostPattern, Keepalive, Limits, PathSegment,
    Route, RouteKind, DEFAULT_CHANNEL_PATTERN,
};
use crate::config::raw::RawRoute;

impl Validator<'_> {
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

    /// The captures of `path` (`/rooms/{room}`), with `channel_pattern`; None for a path with
    /// none (a `channel_pattern` is then out of place).
    fn channel_path(&mut self, at: &str, path: &str, raw: &RawRoute) -> Option<ChannelPath> {
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for segment in path.split('/').skip(1).filter(|s| !s.is_empty()) {
            let whole = placeholders(segment)
                .first()
                .is_some_and(|(r, _)| *r == (0..segment.len()));
            if whole {
                let name = &segment[1..segment.len() - 1];
                if names.contains(&name) {
                    self.err(
                        format!("{at}.path"),
                        format!("{{{name}}} is captured twice in {path:?}: give each capture its own name"),
                    );
                }
                names.push(name);
                segments.push(PathSegment::Capture(name.to_owned()));
            } else if segment.contains(['{', '}']) {
                self.err(
                    format!("{at}.path"),
                    format!("{path:?}: a capture is a whole path segment named with letters, digits and `_`, like /rooms/{{room}}"),
                );
            } else {
                segments.push(PathSegment::Literal(segment.to_owned()));
            }
        }
        if names.is_empty() {
            if raw.channel_pattern.is_some() {
                self.err(
                    format!("{at}.channel_pattern"),
                    "channel_pattern applies to routes whose path captures a channel, like /rooms/{room}",
                );
            }
            return None;
        }
        let source = raw
            .channel_pattern
            .as_deref()
            .unwrap_or(DEFAULT_CHANNEL_PATTERN);
        let pattern = match regex::Regex::new(&format!("^(?:{source})$")) {
            Ok(p) => p,
            Err(e) => {
                self.err(
                    format!("{at}.channel_pattern"),
                    format!("invalid regular expression {source:?}: {e}"),
                );
                return None;
            }
        };
        Some(ChannelPath { segments, pattern })
    }

    /// Every `{name}` a bridged route's backend uses (its URL's path and query, `post:`, header
    /// values) must be one its path captures; none may be in a host.
    fn templates(
        &mut self,
        at: &str,
        channels: Option<&ChannelPath>,
        spec: &BackendSpec,
        raw: &RawRoute,
    ) {
        let (key, remote) = match spec {
            BackendSpec::WebSocket(r) => ("websocket", r),
            BackendSpec::Sse(r) => ("sse", r),
            _ => return,
        };
        let captured = |name: &str| channels.is_some_and(|c| c.names().any(|n| n == name));
        let mut places: Vec<(String, &str, bool)> = vec![
            (
                format!("{at}.backend.{key}"),
                remote.authority.as_str(),
                true,
            ),
            (format!("{at}.backend.{key}"), remote.path.as_str(), false),
        ];
        if let Some(p) = &remote.post {
            places.push((format!("{at}.backend.post"), p.authority.as_str(), true));
            places.push((format!("{at}.backend.post"), p.path.as_str(), false));
        }
        for (name, value) in &remote.headers {
            // Named as the YAML has it.
            let key = raw
                .backend
                .as_ref()
                .and_then(|b| b.headers.as_ref())
                .and_then(|h| h.keys().find(|k| k.eq_ignore_ascii_case(name.as_str())))
                .map_or(name.as_str(), |k| k.as_str());
            if let Ok(v) = value.to_str() {
                places.push((format!("{at}.backend.headers.{key}"), v, false));
            }
        }
        for (here, text, host) in places {
            for (_, name) in placeholders(text) {
                if host {
                    self.err(
                        here.clone(),
                        format!("{{{name}}} in a backend's host: a capture may only be used in the URL's path and query, and in header values"),
                    );
                } else if !captured(name) {
                    self.err(
                        here.clone(),
                        format!("{{{name}}} is not captured by the route's path; capture it there, like /rooms/{{{name}}}"),
                    );
                }
            }
        }
    }

    pub(super) fn route(
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
        let channels = self.channel_path(at, &path, raw);
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
                let mut keys = vec![
                    ("clients", raw.clients.is_some()),
                    ("sockjs", raw.sockjs.is_some()),
                    // A tunnel passes the backend's own Sec-WebSocket-Extensions through.
                    ("compression", raw.compression.is_some()),
                ];
                keys.extend(feed_keys(raw));
                keys.push(("channel_pattern", raw.channel_pattern.is_some()));
                keys.push(("auth", raw.auth.is_some()));
                self.misplaced(
                    at,
                    &keys,
                    "applies to bridged routes (with `backend:`), not to `proxy:` routes",
                );
                if channels.is_some() {
                    self.err(
                        format!("{at}.path"),
                        "captures like {room} make a route one feed per channel: they apply to bridged routes (with `backend:`), not to `proxy:` routes",
                    );
                }
                RouteKind::Proxy(Box::new(self.proxy(&format!("{at}.proxy"), p)?))
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
            self.templates(at, channels.as_ref(), &b.backend, raw);
            if b.clients.engine() && keepalive.ping_interval.is_zero() {
                self.err(
                    format!("{at}.keepalive.ping_interval"),
                    "Engine.IO clients need heartbeats: its pingInterval is `ping_interval`, so it cannot be 0 on a route that lists `engineio` or `socketio`",
                );
            }
            let forwards_cookies = b.remote().is_some_and(|f| {
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
            channels,
            origins,
            keepalive,
            limits,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, BackendSpec, Config, ConfigErrors, PathSegment, RouteKind};
    use std::path::Path;

    fn config(routes: &str) -> Result<Config, ConfigErrors> {
        let yaml = format!("server:\n  listen:\n    - addr: \"127.0.0.1:0\"\nroutes:\n{routes}");
        load_str(&yaml, Path::new("."), "t.yaml")
    }

    fn errors(routes: &str) -> String {
        config(routes).unwrap_err().to_string()
    }

    #[test]
    fn captures_template_the_backend_and_publish_may_stand_alone_or_beside_it() {
        let c = config("  - name: rooms\n    path: \"/t/{tenant}/rooms/{room}/\"\n    channel_pattern: \"[a-z0-9]{1,16}\"\n    limits: { max_channels: 5 }\n    backend: { websocket: \"ws://feeds:9001/{tenant}/rooms/{room}?r={room}\", headers: { X-Room: \"{room}\" }, publish: { token: s3cret } }\n  - name: news\n    path: \"/news/{topic}\"\n    backend: { publish: {} }\n    auth: { url: \"http://app:8000/authorize\", cache: 30s }\n").unwrap();
        let r = &c.routes[0];
        assert_eq!(r.path, "/t/{tenant}/rooms/{room}");
        let ch = r.channels.as_ref().unwrap();
        assert_eq!(ch.names().collect::<Vec<_>>(), ["tenant", "room"]);
        assert_eq!(ch.segments[0], PathSegment::Literal("t".into()));
        assert!(ch.pattern.is_match("abc") && !ch.pattern.is_match("ABC"));
        assert_eq!(r.limits.max_channels, 5);
        let RouteKind::Bridge(b) = &r.kind else {
            panic!("a bridged route")
        };
        let BackendSpec::WebSocket(f) = &b.backend else {
            panic!("a websocket backend")
        };
        assert_eq!(f.path, "/{tenant}/rooms/{room}?r={room}");
        assert_eq!(b.publish.as_ref().unwrap().token.as_deref(), Some("s3cret"));
        assert!(
            !format!("{b:?}").contains("s3cret"),
            "the token is never shown"
        );
        let RouteKind::Bridge(b) = &c.routes[1].kind else {
            panic!("a bridged route")
        };
        assert_eq!(b.backend, BackendSpec::Published);
        let auth = b.auth.as_ref().expect("auth");
        assert_eq!(auth.endpoint.path, "/authorize");
        assert_eq!(auth.forward_headers, ["cookie", "authorization"]);
        assert_eq!(auth.timeout, std::time::Duration::from_secs(2));
        assert_eq!(auth.cache, std::time::Duration::from_secs(30));
        assert!(b.clients.sse && b.clients.websocket && b.clients.long_poll);
        assert_eq!(c.routes[1].limits.max_channels, 10_000);
        assert!(
            config("  - { name: plain, path: /plain, backend: { builtin: clock } }\n")
                .unwrap()
                .routes[0]
                .channels
                .is_none()
        );
    }

    #[test]
    fn channel_mistakes_are_refused_at_their_yaml_path() {
        let cases = [
            (
                "  - { name: r, path: \"/rooms/{room}\", backend: { websocket: \"ws://f/{other}\" } }\n",
                "routes[0].backend.websocket: {other} is not captured",
            ),
            (
                "  - { name: r, path: /rooms, backend: { websocket: \"ws://f/{room}\" } }\n",
                "routes[0].backend.websocket: {room} is not captured",
            ),
            (
                "  - { name: r, path: \"/rooms/{room}\", backend: { websocket: \"ws://f/x\", headers: { X-A: \"{nope}\" } } }\n",
                "routes[0].backend.headers.X-A: {nope} is not captured",
            ),
            (
                "  - { name: r, path: \"/rooms/x{room}\", backend: { publish: {} } }\n",
                "routes[0].path: \"/rooms/x{room}\": a capture is a whole path segment",
            ),
            (
                "  - { name: r, path: \"/{a}/{a}\", backend: { publish: {} } }\n",
                "routes[0].path: {a} is captured twice",
            ),
            (
                "  - { name: r, path: \"/rooms/{room}\", channel_pattern: \"[a-\", backend: { publish: {} } }\n",
                "routes[0].channel_pattern: invalid regular expression",
            ),
            (
                "  - { name: r, path: /rooms, channel_pattern: \"[a-z]+\", backend: { publish: {} } }\n",
                "routes[0].channel_pattern: channel_pattern applies to routes whose path captures",
            ),
            (
                "  - { name: r, path: \"/rooms/{room}\", fanout: per_client, backend: { websocket: \"ws://f/{room}\", publish: {} } }\n",
                "routes[0].fanout: fanout: per_client gives each client its own backend connection",
            ),
            (
                "  - { name: r, path: \"/rooms/{room}\", proxy: { upstreams: [\"127.0.0.1:1\"] } }\n",
                "routes[0].path: captures like {room}",
            ),
            (
                "  - { name: r, path: /x, backend: { builtin: clock, publish: {} } }\n",
                "routes[0].backend.publish: `publish` feeds",
            ),
            (
                "  - { name: r, path: /x, backend: { publish: { token: \"\" } } }\n",
                "routes[0].backend.publish.token: the token is empty",
            ),
            (
                "  - { name: r, path: /x, backend: { publish: {}, headers: { X-A: b } } }\n",
                "routes[0].backend.headers: `headers` applies to `websocket:` and `sse:` backends",
            ),
            (
                "  - { name: r, path: \"/rooms/{room}\", limits: { max_channels: 0 }, backend: { publish: {} } }\n",
                "routes[0].limits.max_channels: max_channels must be above 0",
            ),
            (
                "  - { name: a, path: \"/rooms/{room}\", backend: { publish: {} } }\n  - { name: b, path: \"/rooms/{id}\", backend: { publish: {} } }\n",
                "routes[1].path: duplicate route",
            ),
            (
                "  - { name: r, path: /x, auth: { url: \"http://a/\" }, proxy: { upstreams: [\"127.0.0.1:1\"] } }\n",
                "routes[0].auth: `auth` applies to bridged routes",
            ),
            (
                "  - { name: r, path: /x, auth: { url: \"ftp://a/\" }, backend: { publish: {} } }\n",
                "routes[0].auth.url: \"ftp://a/\" must start with http:// or https://",
            ),
            (
                "  - { name: r, path: /x, auth: { url: \"http://a/\", timeout: 0s, forward_headers: [host] }, backend: { publish: {} } }\n",
                "routes[0].auth.timeout: timeout must be above 0s",
            ),
            (
                "  - { name: r, path: /x, auth: { url: \"http://a/\", forward_headers: [host] }, backend: { publish: {} } }\n",
                "routes[0].auth.forward_headers[0]: host is hop-by-hop or written by the gateway",
            ),
        ];
        for (routes, expected) in cases {
            let e = errors(routes);
            assert!(
                e.contains(expected),
                "{routes}\nexpected {expected:?} in:\n{e}"
            );
        }
    }
}
