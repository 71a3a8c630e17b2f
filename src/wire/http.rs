//! HTTP/1 helpers shared by every layer that reads a request head: header tokens, the query
//! string, the request's host. Pure: no I/O, no routes.

use pingora::http::RequestHeader;
use std::borrow::Cow;

/// True when a comma-separated header `name` carries `token` (case-insensitive), in any of its
/// instances.
pub fn header_has_token(req: &RequestHeader, name: &str, token: &str) -> bool {
    req.headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// True when an HTTP/1.1 request asks to switch protocols (any `Upgrade`), as pingora judges it.
pub fn asks_upgrade(req: &RequestHeader) -> bool {
    req.version == ::http::Version::HTTP_11 && req.headers.contains_key(::http::header::UPGRADE)
}

/// The authority the request names: `Host`, else the host of an absolute-form target.
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

/// The value of query parameter `name`, percent-decoded (borrowed from the request when there
/// is nothing to decode, as for the numbers and names a poll carries).
pub fn query_param<'r>(req: &'r RequestHeader, name: &str) -> Option<Cow<'r, str>> {
    let query = req.uri.query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    if !bytes.iter().any(|b| matches!(b, b'%' | b'+')) {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The value of field `name` in an `application/x-www-form-urlencoded` body, decoded (`+` is
/// a space, `%XX` a byte).
pub fn form_field(body: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    body.split(|b| *b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (k == name).then(|| form_decode(v))
    })
}

/// `application/x-www-form-urlencoded` decoding of one value.
pub fn form_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < v.len() => match (hex(v[i + 1]), hex(v[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str) -> RequestHeader {
        RequestHeader::build("GET", uri.as_bytes(), None).unwrap()
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let r = req("/c?lastEventId=ab%2D12&x=%zz&y=a+b&z=%4&u=%\u{e9}\u{e9}");
        assert_eq!(query_param(&r, "lastEventId").as_deref(), Some("ab-12"));
        assert_eq!(query_param(&r, "x").as_deref(), Some("%zz"));
        assert_eq!(query_param(&r, "y").as_deref(), Some("a b"));
        assert_eq!(query_param(&r, "z").as_deref(), Some("%4"));
        assert_eq!(query_param(&r, "u").as_deref(), Some("%\u{e9}\u{e9}"));
        assert_eq!(query_param(&r, "missing"), None);
    }
}
