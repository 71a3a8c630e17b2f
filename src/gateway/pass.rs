//! Plain HTTP/1.1 pass-through on the edge's lean connection: a `proxy:` route's request
//! relayed to a member over a kept-alive connection of this thread's pool, and the answer
//! relayed back, both streamed in their own framing. After admission:
//!
//! ```text
//! the raw head parsed again (slices, no owned fields) -> the upstream head (hop-by-hop out,
//!   X-Forwarded-* the edge's) -> member (balance, health) -> idle connection or connect
//!   (another member when connecting fails) -> head + body bytes at hand in one write,
//!   then the rest of the body as it comes (Content-Length or chunked, scanned, forwarded as is)
//! -> answer head (1xx skipped; bad framing 502; none in time 504) -> client head + body
//!   bytes at hand in one write -> the rest of the body (length, chunked, or until close)
//! -> the upstream connection back to the pool when both messages were complete
//! ```
//!
//! pingora's proxy path serves what this one does not take: HTTP/2, HTTP/1.0, expectations
//! other than `100-continue` (which is answered here), framing the edge's reader does not
//! judge (left to the hygiene rules), TLS upstreams.
//!
//! A request is tried again on a fresh connection only when it failed on a reused one before
//! any byte of an answer came, has no body, and its method is idempotent (RFC 9110 section
//! 9.2.2): the usual case is an upstream that closed an idle connection as it was taken.

use super::state::RouteRuntime;
use crate::edge::http1::{write_all_vectored, Connection, Framing};
use crate::metrics;
use crate::policy::reject::Reject;
use crate::transport::{Downstream, Respond};
use crate::upstream::http1::{checkin, checkout, connect, UpstreamConn};
use crate::upstream::pool::UpstreamSet;
use crate::wire::chunked::{Chunked, Scanned};
use crate::wire::http1::{self as h1, Forwarded};
use bytes::Buf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The longest wait for each read of a request body from the client (nginx's
/// `client_body_timeout`). The upstream side waits `proxy.read_timeout`.
pub const CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest answer head taken from an upstream.
const ANSWER_HEAD_MAX: usize = 64 * 1024;
const ANSWER_FIELDS: usize = 64;
const ANSWER_FIELDS_MAX: usize = 256;
/// How much of a request body is read from the client before it is written upstream.
const BODY_READ: usize = 64 * 1024;
/// How much of a request body is read before an upstream connection is taken: bodies up to
/// this size (most API and form posts) are whole before the upstream sees a byte, so a client
/// that sends slowly costs the upstream nothing; a larger body streams once this much is in.
/// 64 KiB keeps 10,000 such clients within 640 MiB, charged to `server.limits.memory`.
pub const BODY_BUFFER: usize = 64 * 1024;

/// How an exchange with one upstream connection went wrong.
enum Failed {
    /// Nothing of an answer came: the request may be tried again where that is safe.
    BeforeAnswer(String),
    /// The answer (or the request's body) broke: nothing can be tried again.
    Broken(Reject),
    /// The answer's head went out already: the client's connection just ends.
    Cut(String),
}

/// What goes upstream for a judged head: its rewritten head, and what serving it needs.
struct Outgoing<'h> {
    head: Vec<u8>,
    method: &'h str,
    framing: Framing,
    /// It asks for `100 Continue` (and has a body).
    expects: bool,
}

/// Parses a judged head again and writes the head that goes upstream. Kept out of the async
/// `serve` so the field array lives on the stack only: in `serve`'s state it would be carried
/// by every connection's task, however idle.
fn outgoing(
    raw_head: &[u8],
    client_ip: Option<std::net::IpAddr>,
    tls: bool,
) -> Result<Outgoing<'_>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut heap;
    let mut req = httparse::Request::new(&mut fields);
    let parsed = match req.parse(raw_head) {
        Err(httparse::Error::TooManyHeaders) => {
            heap = vec![httparse::EMPTY_HEADER; 256];
            req = httparse::Request::new(&mut heap);
            req.parse(raw_head)
        }
        p => p,
    };
    let (Ok(httparse::Status::Complete(_)), Some(method), Some(target)) =
        (parsed, req.method, req.path)
    else {
        return Err("a judged head no longer parses");
    };
    let framing = h1::request_framing(req.headers).ok_or("a judged head lost its framing")?;
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let mut head = Vec::with_capacity(raw_head.len() + 96);
    let forwarded = Forwarded {
        client_ip,
        tls,
        host,
    };
    h1::write_request_head(&mut head, method, target, req.headers, &forwarded);
    let expects = framing != Framing::Empty
        && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("expect"));
    Ok(Outgoing {
        head,
        method,
        framing,
        expects,
    })
}

pub async fn serve(
    conn: &mut Connection,
    rt: &RouteRuntime,
    set: &Arc<UpstreamSet>,
    raw_head: &[u8],
) -> pingora::Result<()> {
    let route = rt.route.name.as_str();
    let Outgoing {
        head,
        method,
        framing,
        expects,
    } = match outgoing(raw_head, conn.client_ip(), conn.is_tls()) {
        Ok(o) => o,
        Err(why) => return pingora::Error::e_explain(pingora::ErrorType::InternalError, why),
    };
    // A client that waits for `100 Continue` before its body gets it now (its expectation is
    // the edge's to answer: the body is read here first).
    if expects && conn.pending_mut().is_empty() {
        conn.write_passed(&[b"HTTP/1.1 100 Continue\r\n\r\n", b""])
            .await?;
    }
    // The body first, up to a bound, before any upstream connection is taken: a client that
    // trickles its body holds a buffer, not an upstream connection (nginx's
    // `proxy_request_buffering`).
    let _charge = match buffer_body(conn, framing).await {
        Ok(charge) => charge,
        Err(reject) => {
            conn.set_keepalive(None);
            return reject.send(conn, route).await;
        }
    };
    let head_request = method == "HEAD";
    let retryable = framing == Framing::Empty
        && matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        );
    let mut tried: Vec<usize> = Vec::new();
    let mut fresh_only = false;
    loop {
        let Some(lease) = set.select(conn.client_ip(), &tried) else {
            return Reject::new(
                502,
                "no_upstream",
                format!("502 Bad Gateway: no upstream of route {route} is reachable"),
            )
            .send(conn, route)
            .await;
        };
        let member = &set.members[lease.index];
        let addr = member.upstream.addr;
        let pooled = if fresh_only { None } else { checkout(addr) };
        let mut up = match pooled {
            Some(c) => c,
            None => match connect(addr, set.spec.connect_timeout).await {
                Ok(c) => c,
                Err(e) => {
                    log::debug!(
                        "route {route}: upstream {} refused a connection: {e}",
                        member.upstream.name
                    );
                    metrics::UPSTREAM_CONNECT_FAILURES
                        .with_label_values(&[route, &member.upstream.name])
                        .inc();
                    tried.push(lease.index);
                    fresh_only = false;
                    continue;
                }
            },
        };
        let reused = up.reused;
        let wait = set.spec.read_timeout;
        match exchange(conn, &mut up, &head, framing, head_request, wait).await {
            Ok(reusable) => {
                if reusable {
                    checkin(addr, up);
                }
                return Ok(());
            }
            Err(Failed::BeforeAnswer(why)) if reused && retryable => {
                log::debug!("route {route}: a kept-alive upstream connection failed ({why}); trying a fresh one");
                fresh_only = true;
            }
            Err(Failed::BeforeAnswer(why)) => {
                log::warn!(
                    "route {route}: upstream {} failed: {why}",
                    member.upstream.name
                );
                let reject = if why.contains("timed out") {
                    Reject::new(
                        504,
                        "upstream_timeout",
                        format!("504 Gateway Timeout: the upstream of route {route} did not answer in time"),
                    )
                } else {
                    Reject::new(
                        502,
                        "upstream_error",
                        format!("502 Bad Gateway: the upstream of route {route} failed"),
                    )
                };
                conn.set_keepalive(None);
                return reject.send(conn, route).await;
            }
            Err(Failed::Broken(reject)) => {
                conn.set_keepalive(None);
                return reject.send(conn, route).await;
            }
            Err(Failed::Cut(why)) => {
                conn.set_keepalive(None);
                return pingora::Error::e_explain(pingora::ErrorType::ReadError, why);
            }
        }
    }
}

/// Reads the request's body into the connection's pending bytes until it is whole or
/// [`BODY_BUFFER`] bytes are in hand, each read within [`CLIENT_BODY_TIMEOUT`]; the buffer is charged
/// to `server.limits.memory` while the request lives.
async fn buffer_body(
    conn: &mut Connection,
    framing: Framing,
) -> Result<crate::memory::Charge, Reject> {
    // A chunked body is scanned once, as it arrives (a trickled body is not scanned again
    // per byte).
    let mut chunked = Chunked::new();
    let mut scanned = 0;
    let mut whole = |conn: &mut Connection| -> Result<bool, Reject> {
        let pending = conn.pending_mut();
        Ok(match framing {
            Framing::Empty | Framing::UntilClose => true,
            Framing::Length(n) => pending.len() as u64 >= n,
            Framing::Chunked if chunked.is_done() => true,
            Framing::Chunked => match chunked.scan(&pending[scanned..]) {
                Ok(Scanned::End(_)) => true,
                Ok(Scanned::More) => {
                    scanned = pending.len();
                    false
                }
                Err(e) => {
                    return Err(Reject::new(
                        400,
                        "bad_request",
                        format!("400 Bad Request: {e}"),
                    ))
                }
            },
        })
    };
    if whole(conn)? || conn.pending_mut().len() >= BODY_BUFFER {
        return Ok(crate::memory::Charge::none());
    }
    let want = match framing {
        Framing::Length(n) => (n as usize).min(BODY_BUFFER),
        _ => BODY_BUFFER,
    };
    let Some(charge) = crate::memory::Charge::take(want, "proxy_body") else {
        return Err(Reject::new(
            503,
            "memory_budget",
            "the gateway's memory budget is spent; try again shortly",
        )
        .header("retry-after", "1"));
    };
    loop {
        let room = want.saturating_sub(conn.pending_mut().len()).max(1);
        match conn.read_pending(room, CLIENT_BODY_TIMEOUT).await {
            Ok(0) => {
                return Err(Reject::new(
                    400,
                    "bad_request",
                    "400 Bad Request: the request body ended early",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Reject::new(
                    408,
                    "body_timeout",
                    "408 Request Timeout: the request body stopped arriving",
                ))
            }
            Err(e) => {
                return Err(Reject::new(
                    400,
                    "bad_request",
                    format!("400 Bad Request: reading the body: {e}"),
                ))
            }
        }
        if whole(conn)? || conn.pending_mut().len() >= want {
            return Ok(charge);
        }
    }
}

/// One request and its answer over `up`. Ok(true) when the upstream connection may be reused.
async fn exchange(
    conn: &mut Connection,
    up: &mut UpstreamConn,
    head: &[u8],
    framing: Framing,
    head_request: bool,
    wait: Duration,
) -> Result<bool, Failed> {
    send_request(conn, up, head, framing).await?;
    // The answer's head, past any 1xx.
    let (framing_out, reusable, head_len, out_head) = loop {
        let head_len = read_answer_head(up, wait).await?;
        let mut fields = [httparse::EMPTY_HEADER; ANSWER_FIELDS];
        let mut heap;
        let mut resp = httparse::Response::new(&mut fields);
        let parsed = match resp.parse(&up.buf[..head_len]) {
            Err(httparse::Error::TooManyHeaders) => {
                heap = vec![httparse::EMPTY_HEADER; ANSWER_FIELDS_MAX];
                resp = httparse::Response::new(&mut heap);
                resp.parse(&up.buf[..head_len])
            }
            p => p,
        };
        if !matches!(parsed, Ok(httparse::Status::Complete(_))) {
            return Err(bad_answer("the upstream's answer head does not parse"));
        }
        let code = resp.code.unwrap_or(0);
        if code == 101 {
            return Err(bad_answer("the upstream switched protocols unasked"));
        }
        if (100..200).contains(&code) {
            // Interim answers (100, 103) are not relayed: the final one follows.
            up.buf.advance(head_len);
            continue;
        }
        let Ok(framing_out) = h1::response_framing(code, head_request, resp.headers) else {
            return Err(bad_answer("the upstream's answer has a bad Content-Length"));
        };
        let reusable = resp.version == Some(1)
            && framing_out != Framing::UntilClose
            && !h1::connection_has(resp.headers, "close");
        let close = !conn.keeps_alive() || framing_out == Framing::UntilClose;
        // A plain head's admission set no fields: its answer varies by Origin all the same.
        let extra = if conn.cors.headers.is_empty() {
            &super::admission::VARY_ORIGIN[..]
        } else {
            &conn.cors.headers[..]
        };
        let mut out = Vec::with_capacity(head_len + 64);
        h1::write_response_head(
            &mut out,
            code,
            resp.reason.unwrap_or(""),
            resp.headers,
            framing_out,
            extra,
            close,
        );
        conn.passed_head(code, close);
        break (framing_out, reusable, head_len, out);
    };
    up.buf.advance(head_len);
    relay_answer(conn, up, &out_head, framing_out, wait).await?;
    Ok(reusable && up.buf.is_empty())
}

fn bad_answer(why: &str) -> Failed {
    Failed::Broken(Reject::new(
        502,
        "upstream_error",
        format!("502 Bad Gateway: {why}"),
    ))
}

/// Sends the head and the request's body, as it comes from the client.
async fn send_request(
    conn: &mut Connection,
    up: &mut UpstreamConn,
    head: &[u8],
    framing: Framing,
) -> Result<(), Failed> {
    let write_failed =
        |e: std::io::Error| Failed::BeforeAnswer(format!("writing the request: {e}"));
    let client_failed = |e: std::io::Error| {
        Failed::Broken(Reject::new(
            400,
            "bad_request",
            format!("400 Bad Request: the request body did not arrive: {e}"),
        ))
    };
    let mut first = Some(head);
    let mut chunked = Chunked::new();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // The body bytes at hand that belong to this request.
        let take = match framing {
            Framing::Empty | Framing::UntilClose => 0,
            Framing::Length(_) => (left as usize).min(conn.pending_mut().len()),
            Framing::Chunked => match chunked.scan(conn.pending_mut()) {
                Ok(Scanned::End(n)) => n,
                Ok(Scanned::More) => conn.pending_mut().len(),
                Err(e) => {
                    return Err(Failed::Broken(Reject::new(
                        400,
                        "bad_request",
                        format!("400 Bad Request: {e}"),
                    )))
                }
            },
        };
        let body = conn.pending_mut().split_to(take);
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
        let done = match framing {
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunked.is_done(),
            _ => true,
        };
        let parts: [&[u8]; 2] = [first.take().unwrap_or_default(), &body];
        write_all_vectored(&mut up.stream, &parts)
            .await
            .map_err(write_failed)?;
        if done {
            return Ok(());
        }
        // The body goes on: read the next piece (the pending buffer is empty now).
        match conn.read_pending(BODY_READ, CLIENT_BODY_TIMEOUT).await {
            Ok(0) => {
                return Err(client_failed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(e) => return Err(client_failed(e)),
        }
    }
}

/// Reads until `up.buf` holds a whole answer head (up to its empty line); its length. The head
/// is parsed once, by the caller: here only its end is looked for, in the bytes each read adds.
async fn read_answer_head(up: &mut UpstreamConn, wait: Duration) -> Result<usize, Failed> {
    let mut seen: usize = 0;
    loop {
        let first_byte = up.buf.is_empty();
        if let Some(end) = head_end(&up.buf, seen.saturating_sub(2)) {
            return Ok(end);
        }
        seen = up.buf.len();
        if up.buf.len() >= ANSWER_HEAD_MAX {
            return Err(bad_answer("the upstream's answer head is too large"));
        }
        if up.buf.capacity() - up.buf.len() < 4096 {
            up.buf.reserve(16 * 1024);
        }
        let read = tokio::time::timeout(wait, up.stream.read_buf(&mut up.buf)).await;
        match read {
            Ok(Ok(0)) if first_byte => {
                return Err(Failed::BeforeAnswer("closed before answering".into()))
            }
            Ok(Ok(0)) => return Err(bad_answer("the upstream closed inside its answer head")),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if first_byte => {
                return Err(Failed::BeforeAnswer(format!("reading the answer: {e}")))
            }
            Ok(Err(e)) => return Err(bad_answer(&format!("reading the answer: {e}"))),
            Err(_) => return Err(Failed::BeforeAnswer("the answer timed out".into())),
        }
    }
}

/// Where a head ends in `buf` (after its empty line, CRLF or bare LF as httparse reads them),
/// looking from `from` on.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(at) = buf.get(i..)?.iter().position(|b| *b == b'\n') {
        let lf = i + at;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// Writes the answer's head with the body bytes at hand, then the rest of the body as it comes.
async fn relay_answer(
    conn: &mut Connection,
    up: &mut UpstreamConn,
    head: &[u8],
    framing: Framing,
    wait: Duration,
) -> Result<(), Failed> {
    let cut = |why: String| Failed::Cut(why);
    let mut chunked = Chunked::new();
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut first = Some(head);
    let mut sent: u64 = 0;
    loop {
        let take = match framing {
            Framing::Empty => 0,
            Framing::Length(_) => (left as usize).min(up.buf.len()),
            Framing::UntilClose => up.buf.len(),
            Framing::Chunked => match chunked.scan(&up.buf) {
                Ok(Scanned::End(n)) => n,
                Ok(Scanned::More) => up.buf.len(),
                Err(e) => return Err(cut(format!("the upstream's chunked answer broke: {e}"))),
            },
        };
        let body = up.buf.split_to(take);
        if let Framing::Length(_) = framing {
            left -= take as u64;
        }
        sent += take as u64;
        let done = match framing {
            Framing::Empty => true,
            Framing::Length(_) => left == 0,
            Framing::Chunked => chunked.is_done(),
            Framing::UntilClose => false,
        };
        let parts: [&[u8]; 2] = [first.take().unwrap_or_default(), &body];
        if parts.iter().any(|p| !p.is_empty()) {
            conn.write_passed(&parts)
                .await
                .map_err(|e| cut(format!("writing to the client: {e}")))?;
        }
        if done {
            conn.passed_done(sent);
            return Ok(());
        }
        // The buffer is empty (its bytes went out): read the next piece into it.
        up.buf.clear();
        if up.buf.capacity() < 4096 {
            up.buf.reserve(16 * 1024);
        }
        let read = tokio::time::timeout(wait, up.stream.read_buf(&mut up.buf)).await;
        match read {
            Ok(Ok(0)) if framing == Framing::UntilClose => {
                // `passed_head` closed the client's connection after this answer already.
                conn.passed_done(sent);
                return Ok(());
            }
            Ok(Ok(0)) => return Err(cut("the upstream closed inside its answer".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(cut(format!("reading the answer: {e}"))),
            Err(_) => return Err(cut("the answer's body timed out".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head_end;

    #[test]
    fn a_heads_end_is_found_after_crlf_or_bare_lf_lines() {
        let head = b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody";
        assert_eq!(head_end(head, 0), Some(head.len() - 4));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\nA: b\n\nx", 0), Some(22));
        assert_eq!(head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n", 0), None);
        // Looked for from where the last read ended, less the two bytes a split end needs.
        assert_eq!(head_end(head, 21), Some(head.len() - 4));
    }
}
