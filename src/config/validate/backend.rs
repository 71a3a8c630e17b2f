//! `backend: { websocket: .. }` and `backend: { sse: .. }`: the URL and `post:`, the headers set
//! and forwarded, subprotocols, the connect timeout and the reconnect backoff.

use super::Validator;
use crate::config::model::{
    BackendTls, Endpoint, Reconnect, RemoteBackend, DEFAULT_FORWARD_HEADERS, DEFAULT_RECONNECT,
};
use crate::config::raw::RawBackend;
use std::time::Duration;

const DEFAULT_BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
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

impl Validator<'_> {
    /// Checks a backend URL: `plain://host[:port]/path` or `tls://...`, no credentials. The
    /// endpoint's `tls` is set (from `tls_settings`) for the TLS scheme.
    pub(super) fn endpoint(
        &mut self,
        at: &str,
        key: &str,
        url: &str,
        (plain, tls): (&str, &str),
        tls_settings: &BackendTls,
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
        let secure = match scheme.as_deref() {
            Some(s) if s == plain => false,
            Some(s) if s == tls => true,
            _ => {
                self.err(
                    format!("{at}.{key}"),
                    format!("{url:?} must start with {plain}:// or {tls}://"),
                );
                return None;
            }
        };
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
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
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
            tls: secure.then(|| tls_settings.clone()),
        })
    }

    /// Checks a `websocket:` or `sse:` backend URL and its connection settings.
    pub(super) fn backend_feed(
        &mut self,
        at: &str,
        key: &str,
        url: &str,
        b: &RawBackend,
    ) -> Option<RemoteBackend> {
        let schemes = if key == "websocket" {
            ("ws", "wss")
        } else {
            ("http", "https")
        };
        let tls_settings = self.backend_tls(&format!("{at}.tls"), b.tls.as_ref());
        let Endpoint {
            url,
            host,
            port,
            authority,
            path,
            tls,
        } = self.endpoint(at, key, url, schemes, &tls_settings)?;
        let post = match &b.post {
            Some(p) if key == "sse" => {
                self.endpoint(at, "post", p, ("http", "https"), &tls_settings)
            }
            Some(_) => {
                self.err(
                    format!("{at}.post"),
                    "`post` gives an `sse:` backend a way to receive client messages; a WebSocket backend receives them on its own connection",
                );
                None
            }
            None => None,
        };
        let names: Vec<String> = match &b.forward_headers {
            Some(list) => list.clone(),
            None => DEFAULT_FORWARD_HEADERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut forward_headers = self.forwarded(at, &names);
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
        if b.tls.is_some() && tls.is_none() && post.as_ref().is_none_or(|p| p.tls.is_none()) {
            self.err(
                format!("{at}.tls"),
                format!(
                    "`tls` applies to {}:// and https:// URLs; this backend's are plain",
                    schemes.1
                ),
            );
        }
        Some(RemoteBackend {
            tls,
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

    /// Checks a `forward_headers` list (at `at.forward_headers`): valid names a client may
    /// pass on, each once.
    pub(super) fn forwarded(&mut self, at: &str, names: &[String]) -> Vec<http::HeaderName> {
        let mut forward_headers = Vec::new();
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
        forward_headers
    }
}
