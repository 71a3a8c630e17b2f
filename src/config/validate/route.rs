//! One route: its name, host and path, the policy keys it overrides, and its kind (`proxy:` or
//! `backend:`), checked against each other.

use super::bridge::feed_keys;
use super::Validator;
use crate::config::model::{Fanout, HostPattern, Keepalive, Limits, Route, RouteKind};
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
            origins,
            keepalive,
            limits,
            kind,
        })
    }
}
