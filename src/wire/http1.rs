//! HTTP/1.1 message heads as a proxy forwards them (RFC 9112, RFC 9110 section 7.6): how a
//! parsed head frames its body, which fields are hop-by-hop, and the head written for the next
//! hop, straight from the parsed slices into a byte buffer. Pure: no I/O, no routes.
//!
//! Request framing is judged strictly (one `Content-Length` of digits, or one
//! `Transfer-Encoding: chunked`, never both): whatever else a request carries is not for the
//! lean path to interpret, and is left to the full parser and the hygiene rules. Response
//! framing follows RFC 9112 section 6.3 in its order.

use httparse::Header;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Read until the connection closes (responses only).
    UntilClose,
}

/// Why a response's framing cannot be trusted (RFC 9112 section 6.3, item 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFraming;

/// The longest `Content-Length` taken: 18 digits cannot overflow a u64.
const LENGTH_DIGITS_MAX: usize = 18;

fn is(name: &str, field: &str) -> bool {
    name.eq_ignore_ascii_case(field)
}

fn length_value(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > LENGTH_DIGITS_MAX || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// A request's framing when it is one the lean path may forward: no framing field, one
/// `Content-Length` of digits, or one `Transfer-Encoding: chunked` alone. None otherwise
/// (duplicates, lists, other codings, both together): such a head is judged elsewhere.
pub fn request_framing(headers: &[Header]) -> Option<Framing> {
    let mut framing = Framing::Empty;
    let mut seen = false;
    for h in headers {
        let f = if is(h.name, "content-length") {
            match length_value(h.value)? {
                0 => Framing::Empty,
                n => Framing::Length(n),
            }
        } else if is(h.name, "transfer-encoding") {
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            Framing::Chunked
        } else {
            continue;
        };
        if seen {
            return None;
        }
        seen = true;
        framing = f;
    }
    Some(framing)
}

/// A response's framing (RFC 9112 section 6.3): none for a `HEAD`, 1xx, 204 and 304;
/// `Transfer-Encoding` ending in chunked wins over any `Content-Length`; another coding, or no
/// length at all, reads until close. Content-Length values that differ or are not digits are
/// an error: the upstream connection cannot be trusted after it.
pub fn response_framing(
    status: u16,
    head_request: bool,
    headers: &[Header],
) -> Result<Framing, BadFraming> {
    if head_request || status < 200 || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let mut te_last_chunked = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if is(h.name, "transfer-encoding") {
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            te_last_chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if is(h.name, "content-length") {
            // A list of equal values ("5, 5") is one length (section 6.3, item 5).
            for v in h.value.split(|b| *b == b',') {
                let n = length_value(v).ok_or(BadFraming)?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadFraming);
                }
                length = Some(n);
            }
        }
    }
    Ok(match (te_last_chunked, length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => Framing::UntilClose,
        (None, Some(0)) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
        (None, None) => Framing::UntilClose,
    })
}

/// True when a `Connection` field among `headers` lists `token` (`close`, or a field name that
/// is then hop-by-hop).
pub fn connection_has(headers: &[Header], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| is(h.name, "connection"))
        .any(|h| {
            h.value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
}

/// Hop-by-hop fields (RFC 9110 section 7.6.1) that are never forwarded; `Transfer-Encoding`
/// is handled with the framing, `Upgrade` belongs to tunnels only. `Expect: 100-continue` is
/// answered by the proxy, which reads the body before the upstream is chosen (as nginx does),
/// so the upstream is not asked to answer it again.
fn always_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "expect",
    ]
    .iter()
    .any(|f| is(name, f))
}

/// True for the fields that frame a message's body. A proxy forwards the body as these framed
/// it, so they go on with it even when `Connection` lists them: dropped, they would leave the
/// next hop reading the body as the start of the next message (request smuggling toward an
/// upstream connection other clients share; a desynchronised answer toward the client).
fn frames_body(name: &str) -> bool {
    is(name, "content-length") || is(name, "transfer-encoding")
}

/// Writes an answer's status line for `status`, with its canonical reason.
pub fn status_line(out: &mut Vec<u8>, status: http::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Status").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes one head field.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the edge adds to a request on its way up: `X-Forwarded-For`, `-Proto` and `-Host`, in
/// place of any the client sent (the edge trusts no client's claim).
pub struct Forwarded<'a> {
    pub client_ip: Option<std::net::IpAddr>,
    pub tls: bool,
    pub host: Option<&'a [u8]>,
}

/// Writes a request head for the upstream: the request line as the client sent it (in HTTP/1.1),
/// its fields less the hop-by-hop ones and any `X-Forwarded-*`, then the edge's forwarded
/// fields. `Host`, field order and case are kept; a chunked body keeps its
/// `Transfer-Encoding` (it is forwarded as it came), a length its `Content-Length`.
pub fn write_request_head(
    out: &mut Vec<u8>,
    method: &str,
    target: &str,
    headers: &[Header],
    fwd: &Forwarded,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let lists = headers.iter().any(|h| is(h.name, "connection"));
    for h in headers {
        let n = h.name;
        if always_hop(n)
            || (n.len() > 12 && n[..12].eq_ignore_ascii_case("x-forwarded-"))
            || (lists && !frames_body(n) && connection_has(headers, n))
        {
            continue;
        }
        field(out, n.as_bytes(), h.value);
    }
    if let Some(ip) = fwd.client_ip {
        use std::io::Write;
        out.extend_from_slice(b"x-forwarded-for: ");
        let _ = write!(out, "{ip}");
        out.extend_from_slice(b"\r\n");
    }
    field(
        out,
        b"x-forwarded-proto",
        if fwd.tls { b"https" } else { b"http" },
    );
    if let Some(host) = fwd.host {
        field(out, b"x-forwarded-host", host);
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a response head for the client: the upstream's status and reason in HTTP/1.1, its
/// fields less the hop-by-hop ones and its own CORS fields (CORS is the edge's policy), then
/// `extra` (the route's CORS fields), and `Connection: close` when the client's connection
/// ends after this answer. A `Transfer-Encoding` goes along when the body is forwarded
/// chunked or read until close, never beside a length.
pub fn write_response_head(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    headers: &[Header],
    framing: Framing,
    extra: &[(http::HeaderName, http::HeaderValue)],
    close: bool,
) {
    use std::io::Write;
    let _ = write!(out, "HTTP/1.1 {code:03} ");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let lists = headers.iter().any(|h| is(h.name, "connection"));
    for h in headers {
        let n = h.name;
        if always_hop(n)
            || (n.len() > 15 && n[..15].eq_ignore_ascii_case("access-control-"))
            || (framing == Framing::Chunked && is(n, "content-length"))
            || (lists && !frames_body(n) && connection_has(headers, n))
        {
            continue;
        }
        field(out, n.as_bytes(), h.value);
    }
    for (name, value) in extra {
        // The route's own CORS fields replace nothing the upstream could set (its were dropped);
        // `Vary` is added beside the upstream's.
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(name: &'a str, value: &'a str) -> Header<'a> {
        Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn request_framing_takes_one_plain_length_or_one_chunked() {
        assert_eq!(request_framing(&[h("Host", "a")]), Some(Framing::Empty));
        assert_eq!(
            request_framing(&[h("content-length", " 12 ")]),
            Some(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&[h("Content-Length", "0")]),
            Some(Framing::Empty)
        );
        assert_eq!(
            request_framing(&[h("Transfer-Encoding", "Chunked")]),
            Some(Framing::Chunked)
        );
        for bad in [
            vec![h("content-length", "1"), h("content-length", "1")],
            vec![h("content-length", "1, 1")],
            vec![h("content-length", "+1")],
            vec![h("content-length", "0x1")],
            vec![h("content-length", "")],
            vec![h("content-length", "1234567890123456789")],
            vec![h("transfer-encoding", "gzip, chunked")],
            vec![h("transfer-encoding", "chunked"), h("content-length", "3")],
            vec![
                h("transfer-encoding", "chunked"),
                h("transfer-encoding", "chunked"),
            ],
        ] {
            assert_eq!(request_framing(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112_section_6_3() {
        let cl = [h("Content-Length", "5")];
        assert_eq!(response_framing(200, true, &cl), Ok(Framing::Empty));
        assert_eq!(response_framing(204, false, &cl), Ok(Framing::Empty));
        assert_eq!(response_framing(304, false, &cl), Ok(Framing::Empty));
        assert_eq!(response_framing(200, false, &cl), Ok(Framing::Length(5)));
        assert_eq!(
            response_framing(200, false, &[h("content-length", "5, 5")]),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            response_framing(200, false, &[h("content-length", "5, 6")]),
            Err(BadFraming)
        );
        assert_eq!(
            response_framing(
                200,
                false,
                &[h("content-length", "5"), h("content-length", "x")]
            ),
            Err(BadFraming)
        );
        assert_eq!(
            response_framing(
                200,
                false,
                &[
                    h("transfer-encoding", "gzip, chunked"),
                    h("content-length", "5")
                ]
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            response_framing(200, false, &[h("transfer-encoding", "gzip")]),
            Ok(Framing::UntilClose)
        );
        assert_eq!(response_framing(200, false, &[]), Ok(Framing::UntilClose));
        assert_eq!(
            response_framing(200, false, &[h("content-length", "0")]),
            Ok(Framing::Empty)
        );
    }

    #[test]
    fn hop_by_hop_fields_stay_behind_and_forwarded_ones_are_the_edges() {
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "POST",
            "/a?b=1",
            &[
                h("Host", "example.com"),
                h("Connection", "keep-alive, X-Secret"),
                h("X-Secret", "1"),
                h("Keep-Alive", "timeout=5"),
                h("TE", "trailers"),
                h("X-Forwarded-For", "6.6.6.6"),
                h("Transfer-Encoding", "chunked"),
                h("User-Agent", "t"),
            ],
            &Forwarded {
                client_ip: Some([10, 0, 0, 1].into()),
                tls: true,
                host: Some(b"example.com"),
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\
             User-Agent: t\r\nx-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: example.com\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            200,
            "OK",
            &[
                h("Content-Length", "2"),
                h("Connection", "close, X-Hop"),
                h("X-Hop", "1"),
                h("Access-Control-Allow-Origin", "*"),
                h("Server", "up"),
            ],
            Framing::Length(2),
            &[(http::header::VARY, http::HeaderValue::from_static("Origin"))],
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: up\r\nvary: Origin\r\n\
             connection: close\r\n\r\n"
        );
    }

    /// Found by the `http1_framing` fuzz target: a `Connection` that lists the body's framing
    /// field made the forwarded head lose it, while the body was still forwarded as framed.
    #[test]
    fn framing_fields_stay_whatever_connection_lists() {
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "POST",
            "/",
            &[
                h("Host", "a"),
                h("Connection", "content-length, X-Hop"),
                h("X-Hop", "1"),
                h("Content-Length", "5"),
            ],
            &Forwarded {
                client_ip: None,
                tls: false,
                host: None,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
             x-forwarded-proto: http\r\n\r\n"
        );
        let mut out = Vec::new();
        write_request_head(
            &mut out,
            "POST",
            "/",
            &[
                h("Connection", "Transfer-Encoding"),
                h("Transfer-Encoding", "chunked"),
            ],
            &Forwarded {
                client_ip: None,
                tls: false,
                host: None,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nx-forwarded-proto: http\r\n\r\n"
        );
        for (fields, framing) in [
            (
                [h("Connection", "content-length"), h("Content-Length", "2")],
                Framing::Length(2),
            ),
            (
                [
                    h("Connection", "transfer-encoding"),
                    h("Transfer-Encoding", "chunked"),
                ],
                Framing::Chunked,
            ),
        ] {
            let mut out = Vec::new();
            write_response_head(&mut out, 200, "OK", &fields, framing, &[], false);
            let mut parsed = [httparse::EMPTY_HEADER; 4];
            let mut resp = httparse::Response::new(&mut parsed);
            assert!(resp.parse(&out).unwrap().is_complete());
            assert_eq!(response_framing(200, false, resp.headers), Ok(framing));
        }
    }

    #[test]
    fn a_chunked_answer_drops_a_stray_length() {
        let mut out = Vec::new();
        write_response_head(
            &mut out,
            200,
            "OK",
            &[h("Transfer-Encoding", "chunked"), h("Content-Length", "9")],
            Framing::Chunked,
            &[],
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert!(connection_has(
            &[h("connection", "Keep-Alive, close")],
            "close"
        ));
    }
}
