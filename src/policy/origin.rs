//! The `Origin` allowlist of a route. Browsers send `Origin` on WebSocket handshakes and
//! cross-origin requests; a page from an origin the route does not list must not reach the
//! backend with the user's cookies (Cross-Site WebSocket Hijacking, RFC 6455 section 10.2).
//!
//! Entries: `"*"` (any origin), an exact `scheme://host[:port]`, a subdomain wildcard
//! `https://*.example.com` (any subdomain, not the bare domain), or `"null"` (opaque origins:
//! sandboxed frames, `file:`), which is refused unless listed. Scheme and host compare without
//! case; a port is part of the origin, so `https://*.example.com` does not cover
//! `https://a.example.com:8443`.
//!
//! Requests without `Origin` are mostly non-browser clients and pass. A browser's cross-site
//! request that carries no `Origin` (an `<img>` or `<script>` GET) still says
//! `Sec-Fetch-Site: cross-site`, and is refused unless the route allows `"*"`.

use crate::error::Reject;
use pingora::http::RequestHeader;

/// True when `origin` (the header's value) is allowed by `allowlist`.
pub fn allowed(allowlist: &[String], origin: &str) -> bool {
    let origin = origin.trim();
    if origin.eq_ignore_ascii_case("null") {
        return allowlist.iter().any(|a| a == "null");
    }
    allowlist.iter().any(|a| {
        if a == "*" {
            return true;
        }
        if a == "null" {
            return false;
        }
        match a.split_once("://*.") {
            Some((scheme, domain)) => origin.split_once("://").is_some_and(|(s, host)| {
                let (host, domain) = (host.as_bytes(), domain.as_bytes());
                s.eq_ignore_ascii_case(scheme)
                    && host.len() > domain.len() + 1
                    && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                    && host[host.len() - domain.len() - 1] == b'.'
            }),
            None => a.eq_ignore_ascii_case(origin),
        }
    })
}

/// Refuses a request whose `Origin` the route does not allow: 403, before any backend is
/// contacted.
pub fn check(req: &RequestHeader, allowlist: &[String]) -> Result<(), Reject> {
    let Some(origin) = req.headers.get(http::header::ORIGIN) else {
        let cross_site = req
            .headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
        if cross_site && !allowlist.iter().any(|a| a == "*") {
            return Err(Reject::new(
                403,
                "origin_not_allowed",
                "a cross-site request without Origin is not allowed on this route",
            ));
        }
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    if allowed(allowlist, origin) {
        return Ok(());
    }
    Err(Reject::new(
        403,
        "origin_not_allowed",
        format!("origin {origin:?} is not allowed on this route"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_wildcard_any_and_null() {
        let l = list(&[
            "https://app.example.com",
            "https://*.example.org",
            "http://localhost:8080",
        ]);
        assert!(allowed(&l, "https://app.example.com"));
        assert!(allowed(&l, "HTTPS://App.Example.com"));
        assert!(!allowed(&l, "http://app.example.com"), "scheme counts");
        assert!(!allowed(&l, "https://app.example.com.evil.net"));
        assert!(allowed(&l, "https://a.example.org"));
        assert!(allowed(&l, "https://a.b.example.org"));
        assert!(
            !allowed(&l, "https://example.org"),
            "a wildcard is for subdomains"
        );
        assert!(!allowed(&l, "https://badexample.org"));
        assert!(!allowed(&l, "http://a.example.org"));
        assert!(allowed(&l, "http://localhost:8080"));
        assert!(!allowed(&l, "http://localhost:8081"));
        assert!(!allowed(&l, "null"));
        assert!(
            !allowed(&list(&["*"]), "null"),
            "null is never covered by *"
        );
        assert!(allowed(&list(&["*", "null"]), "null"));
        assert!(allowed(&list(&["*"]), "https://anything.example"));
        assert!(
            !allowed(&l, "https://a.example.org:8443"),
            "ports are part of an origin"
        );
        assert!(
            !allowed(&l, "https://\u{e9}.example.org\u{e9}"),
            "no panic on non-ASCII"
        );
    }
}
