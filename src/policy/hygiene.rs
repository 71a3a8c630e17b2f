//! Request shapes an edge must not pass on.
//!
//! - Request smuggling (RFC 9112 section 6.3 and 11.2): `Transfer-Encoding` together with
//!   `Content-Length`, more than one `Content-Length`, and any `Transfer-Encoding` other than a
//!   single plain `chunked` (obfuscations such as `chunked, identity`, `xchunked` or repeated
//!   headers) are refused with 400 instead of being normalised, since two parsers that disagree
//!   are the attack.
//! - h2c upgrades (RFC 9113 section 3.1 removed them; "h2c smuggling" tunnels past the edge's
//!   rules): `Upgrade: h2c` and `HTTP2-Settings` are removed before anything else sees the
//!   request.
//! - HTTP/1.1 requests without `Host` (RFC 9112 section 3.2) are 400.
//! - Oversized request heads: more than `limits.max_header_bytes` in all is 431 (RFC 6585
//!   section 5); pingora's own cap is 1 MiB.

use super::reject::Reject;
use pingora::http::RequestHeader;

/// The header fields of a raw HTTP/1 request head, as sent (before pingora drops a
/// `Content-Length` that came with `Transfer-Encoding`).
pub fn raw_fields(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    head.split(|b| *b == b'\n')
        .skip(1)
        .filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':')?;
            let value = &line[colon + 1..];
            let start = value
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(value.len());
            let end = value
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(start, |e| e + 1);
            Some((&line[..colon], &value[start..end.max(start)]))
        })
        .collect()
}

/// Header fields that put a request head out of the edge's lean reader: body framing (judged by
/// [`framing`] and read by pingora's full parser; a POST with an [`empty_body`] aside) and h2c
/// offers (removed by [`strip_h2c`]). A head with none of them has nothing these rules could
/// refuse or change.
pub fn needs_full_parser(name: &str) -> bool {
    ["transfer-encoding", "content-length", "http2-settings"]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f))
}

/// True when `fields` frame an empty body one way only: a single `Content-Length: 0` and no
/// `Transfer-Encoding`. Such a request has nothing to read and nothing to smuggle.
pub fn empty_body<'a>(fields: impl Iterator<Item = (&'a str, &'a [u8])>) -> bool {
    let mut lengths = 0;
    for (name, value) in fields {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return false;
        }
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            if value.trim_ascii() != b"0" {
                return false;
            }
        }
    }
    lengths == 1
}

/// Refuses request-smuggling shapes among `fields` (name, value) of a request of `version`.
pub fn framing(fields: &[(&[u8], &[u8])], version: http::Version) -> Result<(), Reject> {
    let te: Vec<&[u8]> = fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"transfer-encoding"))
        .map(|(_, v)| *v)
        .collect();
    let cl = fields
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(b"content-length"))
        .count();
    if !te.is_empty() && cl > 0 {
        return Err(Reject::new(
            400,
            "smuggling_te_and_cl",
            "Transfer-Encoding and Content-Length together are refused (RFC 9112 section 6.3)",
        ));
    }
    if cl > 1 {
        return Err(Reject::new(
            400,
            "smuggling_double_cl",
            "more than one Content-Length is refused (RFC 9112 section 6.3)",
        ));
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.eq_ignore_ascii_case(b"chunked"))
    {
        return Err(Reject::new(
            400,
            "smuggling_bad_te",
            "only a single `Transfer-Encoding: chunked` is accepted (RFC 9112 section 6.1)",
        ));
    }
    if !te.is_empty() && version < http::Version::HTTP_11 {
        return Err(Reject::new(
            400,
            "smuggling_bad_te",
            "Transfer-Encoding is not HTTP/1.0 (RFC 9112 section 6.1)",
        ));
    }
    Ok(())
}

/// True when `name` lists `token` (comma-separated, any case).
fn lists(req: &RequestHeader, name: http::HeaderName, token: &str) -> bool {
    req.headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes an h2c upgrade offer (and its settings) from the request. True when one was there.
pub fn strip_h2c(req: &mut RequestHeader) -> bool {
    let h2c = lists(req, http::header::UPGRADE, "h2c");
    let settings = req.headers.contains_key("http2-settings");
    if !h2c && !settings {
        return false;
    }
    if h2c {
        req.remove_header(&http::header::UPGRADE);
    }
    req.remove_header("http2-settings");
    // Connection named them as hop-by-hop; without them it keeps its other tokens.
    let kept: Vec<String> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            let dropped = t.is_empty()
                || t.eq_ignore_ascii_case("http2-settings")
                || (h2c && t.eq_ignore_ascii_case("upgrade"));
            !dropped
        })
        .map(str::to_owned)
        .collect();
    req.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        let _ = req.insert_header(http::header::CONNECTION, kept.join(", "));
    }
    true
}

/// Refuses an HTTP/1.1 request without `Host` (RFC 9112 section 3.2: "A server MUST respond with
/// a 400 (Bad Request) status code to any HTTP/1.1 request message that lacks a Host header
/// field"), whatever its target says: a proxy must not make one up from an absolute-form URI.
pub fn host_present(req: &RequestHeader) -> Result<(), Reject> {
    if req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST) {
        return Err(Reject::new(
            400,
            "missing_host",
            "an HTTP/1.1 request must carry Host (RFC 9112 section 3.2)",
        ));
    }
    Ok(())
}

/// Refuses a request head larger than `max` bytes (request line and every header line).
pub fn head_size(req: &RequestHeader, max: usize) -> Result<(), Reject> {
    /// Counts what would be written, without writing it anywhere.
    struct Len(usize);
    impl std::fmt::Write for Len {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut uri = Len(0);
    let _ = std::fmt::Write::write_fmt(&mut uri, format_args!("{}", req.uri));
    let line = req.method.as_str().len() + uri.0 + 12;
    let headers: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    head_size_within(line + headers, max)
}

/// Refuses a head of `size` bytes (request line and fields, as [`head_size`] counts them)
/// over `max`.
pub fn head_size_within(size: usize, max: usize) -> Result<(), Reject> {
    if size > max {
        return Err(Reject::new(
            431,
            "headers_too_large",
            format!("the request head exceeds max_header_bytes ({max} bytes)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let check = |head: &str| framing(&raw_fields(head.as_bytes()), http::Version::HTTP_11);
        assert!(check("POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").is_ok());
        assert!(check("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").is_ok());
        let bad = [
            "Transfer-Encoding: chunked\r\nContent-Length: 3",
            "Content-Length: 3\r\nContent-Length: 3",
            "Transfer-Encoding: chunked, identity",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "transfer-encoding:\tchunked\r\nCONTENT-LENGTH: 1",
        ];
        for h in bad {
            let head = format!("POST / HTTP/1.1\r\n{h}\r\n\r\n");
            assert_eq!(check(&head).unwrap_err().status, 400, "{h:?}");
        }
        let old = raw_fields(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(framing(&old, http::Version::HTTP_10).is_err());
    }

    #[test]
    fn h2c_offers_are_removed_and_other_tokens_kept() {
        let mut r = req(&[
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("connection", "Upgrade, HTTP2-Settings, keep-alive"),
        ]);
        assert!(strip_h2c(&mut r));
        assert!(r.headers.get("upgrade").is_none());
        assert!(r.headers.get("http2-settings").is_none());
        assert_eq!(r.headers["connection"], "keep-alive");
        let mut ws = req(&[("upgrade", "websocket"), ("connection", "Upgrade")]);
        assert!(!strip_h2c(&mut ws));
        assert_eq!(ws.headers["upgrade"], "websocket");
    }
}
