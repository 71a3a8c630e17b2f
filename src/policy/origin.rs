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

use super::reject::Reject;
use pingora::http::RequestHeader;

/// True when `origin` is a whole serialized origin (RFC 6454 section 6.1): `null`, or
/// `scheme://host[:port]` with nothing else. A path, query, fragment or userinfo is not part of
/// an origin, and `https://evil.example/.example.com` must not pass for a subdomain of
/// `example.com`.
pub fn well_formed(origin: &str) -> bool {
    if origin.eq_ignore_ascii_case("null") {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    // An IPv6 literal keeps its colons inside brackets; a port follows the last one.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        });
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    scheme_ok && host_ok && port_ok
}

/// True when `origin` (the header's value) is allowed by `allowlist`.
pub fn allowed(allowlist: &[String], origin: &str) -> bool {
    let origin = origin.trim();
    if !well_formed(origin) {
        return false;
    }
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

/// Where a request comes from, as its `Origin` tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// No `Origin`: not a browser, or a browser's same-origin GET.
    Absent,
    /// The gateway's own origin (scheme and `Host` of the request).
    Same,
    /// An origin the route lists: cross-origin answers get CORS headers for it.
    Allowed(http::HeaderValue),
    /// An origin the route does not list.
    Refused(String),
}

/// `scheme://host[:port]` without the scheme's default port, lowercased.
fn normalized(origin: &str) -> String {
    let o = origin.trim().to_ascii_lowercase();
    o.strip_suffix(":80")
        .filter(|_| o.starts_with("http://"))
        .or_else(|| o.strip_suffix(":443").filter(|_| o.starts_with("https://")))
        .unwrap_or(&o)
        .to_owned()
}

/// Classifies the request's `Origin` against the route's allowlist. An empty allowlist (the
/// default) allows only the gateway's own origin.
pub fn classify(req: &RequestHeader, allowlist: &[String], tls: bool) -> Origin {
    let mut values = req.headers.get_all(http::header::ORIGIN).iter();
    let Some(value) = values.next() else {
        return Origin::Absent;
    };
    let origin = value.to_str().unwrap_or("");
    // A request has one origin (RFC 6454 section 7.3): two headers are two claims, refused.
    if values.next().is_some() || !well_formed(origin.trim()) {
        return Origin::Refused(origin.to_owned());
    }
    classify_value(req, value, allowlist, tls)
}

/// Classifies one claimed origin `value` (well formed) for `req`.
fn classify_value(
    req: &RequestHeader,
    value: &http::HeaderValue,
    allowlist: &[String],
    tls: bool,
) -> Origin {
    let origin = value.to_str().unwrap_or("");
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let own = format!("{}://{host}", if tls { "https" } else { "http" });
    if !host.is_empty() && normalized(origin) == normalized(&own) {
        return Origin::Same;
    }
    if allowed(allowlist, origin) {
        Origin::Allowed(value.clone())
    } else {
        Origin::Refused(origin.to_owned())
    }
}

/// The origin of the page that made a request, from its `Referer` (`scheme://host[:port]`),
/// for requests that cannot carry `Origin` (a `<script>` or iframe load): None without one, or
/// when it is not a plain http(s) URL.
pub fn referer_origin(req: &RequestHeader) -> Option<http::HeaderValue> {
    let r = req.headers.get(http::header::REFERER)?.to_str().ok()?;
    let (scheme, rest) = r.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    // Userinfo is not part of the origin: `https://app.example@evil.example/` is a page of
    // evil.example (browsers never send userinfo; a hand-made header is read as a URL is).
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let origin = format!("{scheme}://{host}");
    if !well_formed(&origin) {
        return None;
    }
    http::HeaderValue::from_str(&origin).ok()
}

/// Under a route open to every origin (`"*"`), a SockJS request's `Origin` is answered as sent,
/// whatever its shape (the SockJS suite sends `Origin: test`): with `"*"` nothing is refused
/// anyway, and a header value cannot carry anything but itself. `"null"` still needs listing,
/// and two `Origin` headers are still two claims. None when this does not apply.
pub fn admit_any(req: &RequestHeader, allowlist: &[String]) -> Option<Result<Origin, Reject>> {
    if !allowlist.iter().any(|a| a == "*") {
        return None;
    }
    let mut values = req.headers.get_all(http::header::ORIGIN).iter();
    let value = values.next()?;
    if values.next().is_some() || value.as_bytes().eq_ignore_ascii_case(b"null") {
        return None;
    }
    Some(Ok(Origin::Allowed(value.clone())))
}

/// Judges a request that carries no `Origin` by the page its `Referer` names (SockJS's JSONP
/// and htmlfile transports are `<script>` and iframe loads): `None` when it has no usable
/// `Referer`, else the origin's verdict, refused with 403 when the route does not list it.
pub fn admit_referer(
    req: &RequestHeader,
    allowlist: &[String],
    tls: bool,
) -> Option<Result<Origin, Reject>> {
    if req.headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    let value = referer_origin(req)?;
    Some(match classify_value(req, &value, allowlist, tls) {
        Origin::Refused(o) => Err(Reject::new(
            403,
            "origin_not_allowed",
            format!("the page at {o:?} (its Referer) is not an allowed origin of this route"),
        )),
        // Nothing to answer with CORS: the page reads the answer as a script or a frame.
        _ => Ok(Origin::Absent),
    })
}

/// Admits a request under the route's origin policy, or refuses it with 403 before any backend
/// is contacted. `enforce` is false for plain requests of pass-through routes: those are not
/// refused (CORS decides what a page may read), only classified.
pub fn admit(
    req: &RequestHeader,
    allowlist: &[String],
    allow_no_origin: bool,
    tls: bool,
    enforce: bool,
) -> Result<Origin, Reject> {
    let origin = classify(req, allowlist, tls);
    if !enforce {
        return Ok(origin);
    }
    match &origin {
        Origin::Refused(o) => Err(Reject::new(
            403,
            "origin_not_allowed",
            format!("origin {o:?} is not allowed on this route"),
        )),
        Origin::Absent => {
            let cross_site = req
                .headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
            // A link followed from another site is a navigation, not a hijack.
            let navigation = req
                .headers
                .get("sec-fetch-mode")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"navigate"))
                && req.method == http::Method::GET;
            if cross_site && !navigation && !allowlist.iter().any(|a| a == "*") {
                return Err(Reject::new(
                    403,
                    "origin_not_allowed",
                    "a cross-site request without Origin is not allowed on this route",
                ));
            }
            if !allow_no_origin {
                return Err(Reject::new(
                    403,
                    "origin_required",
                    "this route only admits browser requests with an allowed Origin",
                ));
            }
            Ok(origin)
        }
        _ => Ok(origin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_whole_origins_pass() {
        let l = list(&["https://*.example.com", "https://app.example.org", "*"]);
        for bad in [
            "https://evil.example/.example.com",
            "https://evil.example?.example.com",
            "https://evil.example#.example.com",
            "https://user@a.example.com",
            "https://a.example.com/",
            "https://a.example.com:",
            "https://a.example.com:80x",
            "https:// a.example.com",
            "a.example.com",
            "://a.example.com",
        ] {
            assert!(!well_formed(bad), "{bad}");
            assert!(
                !allowed(&l, bad),
                "{bad} is not an origin, whatever the list"
            );
        }
        for good in [
            "https://a.example.com",
            "http://localhost:8080",
            "http://[::1]:8080",
            "null",
            "chrome-extension://abc",
        ] {
            assert!(well_formed(good), "{good}");
        }
    }

    #[test]
    fn two_origin_headers_are_refused() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("origin", "https://app.example.org")
            .unwrap();
        req.append_header("origin", "https://evil.example").unwrap();
        let l = list(&["https://app.example.org"]);
        assert!(matches!(classify(&req, &l, false), Origin::Refused(_)));
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

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_gateways_own_origin_is_always_allowed() {
        let r = req(&[
            ("host", "gw.example:8080"),
            ("origin", "http://GW.example:8080"),
        ]);
        assert_eq!(classify(&r, &[], false), Origin::Same);
        assert!(
            matches!(classify(&r, &[], true), Origin::Refused(_)),
            "scheme counts"
        );
        let r = req(&[("host", "gw.example"), ("origin", "https://gw.example:443")]);
        assert_eq!(classify(&r, &[], true), Origin::Same, "default port");
        let r = req(&[("host", "gw.example"), ("origin", "https://evil.example")]);
        assert!(admit(&r, &[], true, true, true).is_err());
        assert!(
            admit(&r, &[], true, true, false).is_ok(),
            "classified, not refused"
        );
        let r = req(&[("host", "gw.example")]);
        assert_eq!(admit(&r, &[], true, false, true).unwrap(), Origin::Absent);
        assert_eq!(
            admit(&r, &[], false, false, true).unwrap_err().reason,
            "origin_required"
        );
    }

    #[test]
    fn a_referer_names_its_host_not_its_userinfo() {
        let origin = |referer: &str| {
            referer_origin(&req(&[("referer", referer)])).map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(
            origin("https://app.example.com@evil.example/page").as_deref(),
            Some("https://evil.example")
        );
        assert_eq!(
            origin("https://a:b@app.example.com:8443/x?y#z").as_deref(),
            Some("https://app.example.com:8443")
        );
        assert_eq!(
            origin("https://evil.example/@app.example.com").as_deref(),
            Some("https://evil.example")
        );
        assert_eq!(origin("https://@/"), None);
        assert_eq!(origin("ftp://app.example.com/"), None);
        let allow = vec!["https://app.example.com".to_owned()];
        let r = req(&[("referer", "https://app.example.com@evil.example/")]);
        assert_eq!(
            admit_referer(&r, &allow, true).unwrap().unwrap_err().status,
            403,
            "judged as evil.example's page"
        );
    }
}
