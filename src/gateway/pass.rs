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
use crate::edge::http1::{Connection, Framing};
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest wait for an answer's head, and for each read of a body from either side.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
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

static VARY_ORIGIN: [(http::HeaderName, http::HeaderValue); 1] =
    [(http::header::VARY, http::HeaderValue::from_static("Origin"))];

/// How an exchange with one upstream connection went wrong.
enum Failed {
    /// Nothing of an answer came: the request may be tried again where that is safe.
    BeforeAnswer(String),
    /// The answer (or the request's body) broke: nothing can be tried again.
    Broken(Reject),
    /// The answer's head went out already: the client's connection just ends.
    Cut(String),
}

pub async fn serve(
    conn: &mut Connection,
    rt: &RouteRuntime,
    set: &Arc<UpstreamSet>,
    raw_head: &[u8],
) -> pingora::Result<()> {
    let route = rt.route.name.as_str();
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
        return pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "a judged head no longer parses",
        );
    };
    let Some(framing) = h1::request_framing(req.headers) else {
        return pingora::Error::e_explain(
            pingora::ErrorType::InternalError,
            "a judged head lost its framing",
        );
    };
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .map(|h| h.value);
    let mut head = Vec::with_capacity(raw_head.len() + 96);
    h1::write_request_head(
        &mut head,
        method,
        target,
        req.headers,
        &Forwarded {
            client_ip: conn.client_ip(),
            tls: conn.is_tls(),
            host,
        },
    );
    // A client that waits for `100 Continue` before its body gets it now (its expectation is
    // the edge's to answer: the body is read here first).
    let expects = framing != Framing::Empty
        && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("expect"));
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
        match exchange(conn, &mut up, &head, framing, head_request).await {
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
/// [`BODY_BUFFER`] bytes are in hand, each read within [`READ_TIMEOUT`]; the buffer is charged
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
        match conn.read_pending(room, READ_TIMEOUT).await {
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
) -> Result<bool, Failed> {
    send_request(conn, up, head, framing).await?;
    // The answer's head, past any 1xx.
    let (framing_out, reusable, head_len, out_head) = loop {
        let head_len = read_answer_head(up).await?;
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
            &VARY_ORIGIN[..]
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
    relay_answer(conn, up, &out_head, framing_out).await?;
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
        write_all_parts(&mut up.stream, &parts)
            .await
            .map_err(write_failed)?;
        if done {
            return Ok(());
        }
        // The body goes on: read the next piece (the pending buffer is empty now).
        match conn.read_pending(BODY_READ, READ_TIMEOUT).await {
            Ok(0) => {
                return Err(client_failed(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(e) => return Err(client_failed(e)),
        }
    }
}

/// Reads until `up.buf` holds a whole answer head; its length.
async fn read_answer_head(up: &mut UpstreamConn) -> Result<usize, Failed> {
    let mut first_byte = true;
    loop {
        if !up.buf.is_empty() {
            first_byte = false;
            let mut fields = [httparse::EMPTY_HEADER; 0];
            let mut probe = httparse::Response::new(&mut fields);
            match probe.parse(&up.buf) {
                Ok(httparse::Status::Complete(n)) => return Ok(n),
                Err(httparse::Error::TooManyHeaders) => {
                    // Fields there are: find the head's end itself.
                    if let Some(end) = up.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        return Ok(end + 4);
                    }
                }
                Ok(httparse::Status::Partial) => {}
                Err(e) => {
                    return Err(bad_answer(&format!(
                        "the upstream's answer head does not parse: {e}"
                    )))
                }
            }
            if up.buf.len() >= ANSWER_HEAD_MAX {
                return Err(bad_answer("the upstream's answer head is too large"));
            }
        }
        if up.buf.capacity() - up.buf.len() < 4096 {
            up.buf.reserve(16 * 1024);
        }
        let read = tokio::time::timeout(READ_TIMEOUT, up.stream.read_buf(&mut up.buf)).await;
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

/// Writes the answer's head with the body bytes at hand, then the rest of the body as it comes.
async fn relay_answer(
    conn: &mut Connection,
    up: &mut UpstreamConn,
    head: &[u8],
    framing: Framing,
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
            // The request's body went up whole before the answer was read.
            conn.passed_done(sent, true);
            return Ok(());
        }
        // The buffer is empty (its bytes went out): read the next piece into it.
        up.buf.clear();
        if up.buf.capacity() < 4096 {
            up.buf.reserve(16 * 1024);
        }
        let read = tokio::time::timeout(READ_TIMEOUT, up.stream.read_buf(&mut up.buf)).await;
        match read {
            Ok(Ok(0)) if framing == Framing::UntilClose => {
                conn.passed_done(sent, false);
                return Ok(());
            }
            Ok(Ok(0)) => return Err(cut("the upstream closed inside its answer".into())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(cut(format!("reading the answer: {e}"))),
            Err(_) => return Err(cut("the answer's body timed out".into())),
        }
    }
}

/// Writes `parts` in as few writes as the socket takes.
async fn write_all_parts(
    stream: &mut tokio::net::TcpStream,
    parts: &[&[u8]; 2],
) -> std::io::Result<()> {
    let (mut a, mut b) = (parts[0], parts[1]);
    while !a.is_empty() || !b.is_empty() {
        let slices = [std::io::IoSlice::new(a), std::io::IoSlice::new(b)];
        let n = stream.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}
