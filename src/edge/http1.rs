//! The gateway's own HTTP/1.1 server side, for the requests that become long-lived streams.
//!
//! pingora keeps a full per-request state machine (its boxed proxy future, the HTTP session
//! with its buffers, the connection task sized for a TLS handshake) alive for as long as a
//! request lasts. For a proxied request that is a few milliseconds; for an SSE or WebSocket
//! client it is hours, and it made an idle client cost about 50 KiB. The listener therefore reads
//! each request head itself ([`read_head`]); a bridged GET that asks for a stream is served over
//! a [`Conn`] (head parsed once, then only the socket and what the transport holds), and
//! everything else is handed to pingora with the head replayed, unchanged.
//!
//! [`Conn`] speaks just what those answers need: a response head, a body framed by
//! `Content-Length` or `chunked`, a `101` after which the socket carries WebSocket frames, and
//! keep-alive back to the listener when the answer was complete.

use super::HeadDeadline;
use crate::access_log::Notes;
use crate::policy::cors::CorsHeaders;
use crate::policy::hygiene;
use crate::transport::Downstream;
use crate::wire;
pub use crate::wire::http1::Framing;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, OrErr};
use std::future::Future;
use std::io::{IoSlice, Write};
use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Heads longer than this, or with more fields than [`HEAD_FIELDS_MAX`], are left to pingora
/// (which answers them, `431` included). Both are pingora's own caps, so every head pingora
/// would take is read here too (a WebSocket handshake with large cookies must still reach the
/// lean path: pingora's never carries a tunnel); a route's `max_header_bytes` is enforced by
/// admission. The buffer grows only as bytes arrive.
pub const HEAD_MAX: usize = 1 << 20;
/// Fields parsed on the stack; a head with more is parsed again with [`HEAD_FIELDS_MAX`] on the
/// heap.
const HEAD_FIELDS: usize = 48;
const HEAD_FIELDS_MAX: usize = 256;

/// The first read of a head, on the stack; when it fills, up to [`FIRST_READ_MORE`] bytes that
/// are already there are taken with it.
const FIRST_READ: usize = 2048;
const FIRST_READ_MORE: usize = 32 * 1024;
/// A streaming client's reads after a `101` start with this many bytes, read on the stack.
const CLIENT_READ: usize = 512;
/// What [`Connection::read_pending`] asks for beyond what the caller wants.
const READ_SLACK: usize = 1024;

/// A request head read by the listener.
pub enum Head {
    /// A complete HTTP/1.1 head without a body: the request, and every byte read (the head is
    /// the first `len`).
    Parsed {
        req: Box<RequestHeader>,
        bytes: BytesMut,
        len: usize,
        shape: Shape,
    },
    /// A head the gateway may pass through without building a request value (see
    /// [`PlainHead`]): every byte read (the head is the first `len`) and where its parts are.
    Plain {
        bytes: BytesMut,
        len: usize,
        shape: Shape,
        plain: PlainHead,
    },
    /// Anything else (HTTP/1.0, a body, a head too large, bytes that do not parse): every byte
    /// read so far, for pingora to read again and answer.
    Other(BytesMut),
    /// The client closed (or never spoke) before a head began.
    Closed,
}

/// What a parsed head asks of the path that serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// How its body is framed (a lean head has one `Content-Length`, one chunked coding, or
    /// neither).
    pub body: Framing,
    /// A bodiless GET, or a POST whose only framing is `Content-Length: 0`: a head a long-lived
    /// stream may answer. Every other lean head is for pass-through.
    pub stream: bool,
}

/// Where the parts of a plain head are, as byte ranges of its buffer. A plain head is one whose
/// admission on a pass-through route needs nothing a request value would give: HTTP/1.1, not
/// `OPTIONS` (so no preflight), a target in origin form, exactly one `Host`, no `Origin` (so
/// no CORS and no origin rule applies) and no `Upgrade`; its framing judged as every lean
/// head's is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainHead {
    pub host: (usize, usize),
    /// The target's path, without its query.
    pub path: (usize, usize),
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// The head's size as `max_header_bytes` counts it (request line and fields).
    pub size: usize,
}

impl PlainHead {
    pub fn host<'b>(&self, bytes: &'b [u8]) -> &'b str {
        std::str::from_utf8(&bytes[self.host.0..self.host.1]).unwrap_or("")
    }

    pub fn path<'b>(&self, bytes: &'b [u8]) -> &'b str {
        std::str::from_utf8(&bytes[self.path.0..self.path.1]).unwrap_or("/")
    }
}

/// Whether pingora will refuse `bytes` outright as a request head (`400` before any hook): they
/// do not parse as HTTP/1, or its method or target cannot be a request's. Returns the method's
/// bytes (for the log) when so. A head cut short is not refused here: the client left.
pub fn malformed(bytes: &[u8]) -> Option<&[u8]> {
    let mut fields = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut fields);
    let end = bytes
        .iter()
        .position(|c| *c == b' ')
        .unwrap_or(bytes.len().min(16));
    let method = &bytes[..end];
    match req.parse(bytes) {
        Err(httparse::Error::TooManyHeaders) => None,
        Err(_) => Some(method),
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(_)) => {
            let method_ok = req
                .method
                .is_some_and(|m| http::Method::from_bytes(m.as_bytes()).is_ok());
            let target_ok = req
                .path
                .is_some_and(|p| http::Uri::try_from(p.as_bytes()).is_ok());
            (!method_ok || !target_ok).then_some(method)
        }
    }
}

/// Parses a plain head again into a request value (for a path that needs one).
pub fn full_head(bytes: BytesMut) -> Head {
    match parse(&bytes, true) {
        Parse::Complete(req, len, shape) => Head::Parsed {
            req,
            bytes,
            len,
            shape,
        },
        _ => Head::Other(bytes),
    }
}

/// The bytes after a head, in a buffer of their own (so the head's can be freed).
pub fn after_head(bytes: &BytesMut, len: usize) -> BytesMut {
    if bytes.len() > len {
        BytesMut::from(&bytes[len..])
    } else {
        BytesMut::new()
    }
}

/// Waits for a request's first bytes and reads them, on the stack, then copied out: a
/// connection that has sent nothing (or keeps a kept-alive connection idle) holds no buffer.
/// When the stack was filled a body may be right behind the head: what is there already is
/// taken in the same turn (up to 32 KiB), so head and body travel on together. None when the
/// connection closed or failed.
pub async fn read_first<S: AsyncRead + Unpin>(io: &mut S) -> Option<BytesMut> {
    let first = std::future::poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
        std::pin::Pin::new(&mut *io)
            .poll_read(cx, &mut rb)
            .map_ok(|()| {
                let filled = rb.filled();
                let room = if filled.len() == FIRST_READ {
                    FIRST_READ_MORE
                } else {
                    filled.len()
                };
                let mut b = BytesMut::with_capacity(room);
                b.extend_from_slice(filled);
                b
            })
    })
    .await;
    let mut buf = match first {
        Ok(b) if !b.is_empty() => b,
        _ => return None,
    };
    if buf.len() == FIRST_READ {
        use futures_util::FutureExt;
        // A read that leaves room found the socket drained: asking again would only be told
        // so (one wasted syscall per request with a body).
        while buf.len() < buf.capacity() {
            let room = buf.capacity() - buf.len();
            match io.read_buf(&mut buf).now_or_never() {
                Some(Ok(n)) if n == room => {}
                _ => break,
            }
        }
    }
    Some(buf)
}

/// Reads one request head. `buf` holds bytes already read (pipelined after the last request).
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S, mut buf: BytesMut) -> Head {
    // Past the first 8 KiB, a head is parsed again only when its end may have arrived, so a
    // head trickled up to HEAD_MAX is not parsed once per read (quadratic work).
    let mut seen: usize = 0;
    loop {
        let may_end = buf.len() <= 8 * 1024
            || buf[seen.saturating_sub(3)..]
                .windows(2)
                .any(|w| w == b"\n\n" || w == b"\n\r");
        seen = buf.len();
        let parsed = if may_end {
            parse(&buf, false)
        } else {
            Parse::Partial
        };
        match parsed {
            Parse::Plain(len, shape, plain) => {
                return Head::Plain {
                    bytes: buf,
                    len,
                    shape,
                    plain,
                }
            }
            Parse::Complete(req, len, shape) => {
                return Head::Parsed {
                    req,
                    bytes: buf,
                    len,
                    shape,
                }
            }
            Parse::Other => return Head::Other(buf),
            Parse::Partial if buf.len() >= HEAD_MAX => return Head::Other(buf),
            Parse::Partial => {}
        }
        if buf.is_empty() {
            match read_first(io).await {
                Some(b) => buf = b,
                None => return Head::Closed,
            }
            continue;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(2048);
        }
        match io.read_buf(&mut buf).await {
            Ok(0) | Err(_) if buf.iter().all(|b| b.is_ascii_whitespace()) => return Head::Closed,
            // Closed mid-head, or the head deadline passed: pingora gets what came and answers.
            Ok(0) | Err(_) => return Head::Other(buf),
            Ok(_) => {}
        }
    }
}

enum Parse {
    Complete(Box<RequestHeader>, usize, Shape),
    Plain(usize, Shape, PlainHead),
    Partial,
    Other,
}

/// Parses a head that this path may serve: HTTP/1.1, any method but CONNECT, a body framed by
/// one `Content-Length` or one `Transfer-Encoding: chunked` (or neither), no `Expect`, no
/// upgrade other than WebSocket. Kept out of the async reader so the field array lives on the
/// stack only.
/// `full`: always build the request value, even for a plain head.
fn parse(buf: &[u8], full: bool) -> Parse {
    let mut fields = [httparse::EMPTY_HEADER; HEAD_FIELDS];
    match parse_with(buf, &mut fields, full) {
        Err(httparse::Error::TooManyHeaders) => {
            let mut fields = vec![httparse::EMPTY_HEADER; HEAD_FIELDS_MAX];
            parse_with(buf, &mut fields, full).unwrap_or(Parse::Other)
        }
        parsed => parsed.unwrap_or(Parse::Other),
    }
}

fn parse_with<'b>(
    buf: &'b [u8],
    fields: &mut [httparse::Header<'b>],
    full: bool,
) -> Result<Parse, httparse::Error> {
    let mut req = httparse::Request::new(fields);
    let len = match req.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(Parse::Partial),
    };
    Ok(judge(&req, buf, len, full))
}

/// The plain parts of a head ([`PlainHead`]), when it is one.
fn plain(req: &httparse::Request, buf: &[u8]) -> Option<PlainHead> {
    let (method, target) = (req.method?, req.path?);
    if method == "OPTIONS" || !target.starts_with('/') {
        return None;
    }
    // Only what the full parse would take unchanged passes raw: a target that is no URI, or
    // carries a fragment (which the full parse drops, and which would route differently), is
    // judged there, as pingora's path does.
    if !plain_target(target.as_bytes()) {
        return None;
    }
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        (start, start + s.len())
    };
    let mut host = None;
    let mut close = false;
    let mut size = method.len() + target.len() + 12;
    for h in req.headers.iter() {
        size += h.name.len() + h.value.len() + 4;
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            // A Host with userinfo, or that is no authority at all, is judged on the full path.
            if host.is_some() || !plain_host(h.value) {
                return None;
            }
            host = Some(at(h.value));
        } else if name.eq_ignore_ascii_case("origin") || name.eq_ignore_ascii_case("upgrade") {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= h
                .value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(PlainHead {
        host: host?,
        path: at(path.as_bytes()),
        close,
        size,
    })
}

/// Whether the full parse takes `target` as it is (a URI's path and query, no fragment). The
/// usual target is checked byte by byte against a set both the path and the query allow;
/// anything else is asked of `http` (which copies it).
fn plain_target(target: &[u8]) -> bool {
    let usual = |b: &u8| b.is_ascii_alphanumeric() || b"-._~/%?&=+:,;!$'()*@".contains(b);
    if target.iter().all(usual) {
        return true;
    }
    !target.contains(&b'#') && http::uri::PathAndQuery::try_from(target).is_ok()
}

/// Whether a `Host` value is an authority without userinfo, as the full parse requires.
fn plain_host(host: &[u8]) -> bool {
    // The usual `name[:port]`: a name of letters, digits, dots and dashes that starts with a
    // letter or digit, and a port of one to five digits.
    let (name, port) = match host.iter().rposition(|b| *b == b':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    };
    let usual = name.first().is_some_and(u8::is_ascii_alphanumeric)
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    usual || (!host.contains(&b'@') && http::uri::Authority::try_from(host).is_ok())
}

/// Builds the head of a parsed request this path may serve.
fn judge(req: &httparse::Request, buf: &[u8], len: usize, full: bool) -> Parse {
    let Some(method) = req.method else {
        return Parse::Other;
    };
    if req.version != Some(1) || method == "CONNECT" {
        return Parse::Other;
    }
    let Some(body) = wire::http1::request_framing(req.headers) else {
        return Parse::Other;
    };
    // h2c offers are removed on pingora's path, and any expectation but one `100-continue`
    // on a request with a body is answered there (417). A `100-continue` is the lean path's
    // to answer (`gateway::pass`), as nginx does: it reads the body itself.
    let mut expects = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("http2-settings") {
            return Parse::Other;
        }
        if h.name.eq_ignore_ascii_case("expect") {
            expects += 1;
            if expects > 1
                || body == Framing::Empty
                || !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            {
                return Parse::Other;
            }
        }
    }
    // A POST whose only framing is one `Content-Length: 0` has no body either (SockJS's XHR
    // receivers are such POSTs, held open for minutes).
    let empty_post =
        method == "POST" && hygiene::empty_body(req.headers.iter().map(|h| (h.name, h.value)));
    let stream = (method == "GET"
        && !req
            .headers
            .iter()
            .any(|h| hygiene::needs_full_parser(h.name)))
        || empty_post;
    if !full {
        if let Some(p) = plain(req, buf) {
            return Parse::Plain(len, Shape { body, stream }, p);
        }
    }
    // Without a map of the fields' original case: nothing on this path writes the head on as
    // received (a pass-through forwards the raw head, a tunnel writes names in lower case).
    let Ok(mut head) = RequestHeader::build_no_case(
        method,
        req.path.unwrap_or("/").as_bytes(),
        Some(req.headers.len()),
    ) else {
        return Parse::Other;
    };
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return Parse::Other;
        };
        if head.append_header(name, value).is_err() {
            return Parse::Other;
        }
    }
    if head.headers.contains_key(http::header::UPGRADE) && !(stream && wire::ws::is_upgrade(&head))
    {
        return Parse::Other;
    }
    // The same authority checks pingora makes (one Host, no userinfo, an absolute-form target
    // that agrees with Host): a head it refuses is left to it to refuse.
    if pingora::protocols::http::authority::validate_request_authority(&head).is_err() {
        return Parse::Other;
    }
    Parse::Complete(Box::new(head), len, Shape { body, stream })
}

/// What a connection without a request value answers to `req_header`: `GET /`.
static BARE: std::sync::LazyLock<RequestHeader> = std::sync::LazyLock::new(bare_request);

fn bare_request() -> RequestHeader {
    RequestHeader::build_no_case("GET", b"/", Some(0)).expect("a valid head")
}

/// How the body of the answer being written is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// No head written yet.
    Pending,
    Length(u64),
    Chunked,
    /// Delimited by closing the connection.
    UntilClose,
    /// After a `101`: the socket is the client's WebSocket.
    Upgraded,
    Done,
}

/// One request on a connection the listener serves itself. See the module docs.
pub struct Connection {
    io: Box<HeadDeadline>,
    /// None for a plain head passed through without a request value.
    req: Option<Box<RequestHeader>>,
    /// Bytes read past what was consumed: the start of the next request, or early frames.
    pending: BytesMut,
    client_ip: Option<IpAddr>,
    tls: bool,
    /// The CORS headers (and `Vary`) every answer to this request carries, set by the policy.
    pub cors: CorsHeaders,
    body: Body,
    keepalive: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    /// The status answered, for the request metric.
    pub status: Option<u16>,
    /// Body bytes of a whole answer ([`Downstream::write_answer`]), for the access log; a
    /// stream tells its own counts in `notes`.
    pub answered_bytes: u64,
    /// For the access log: a refusal's reason, what a stream carried.
    pub notes: Notes,
}

impl Connection {
    pub fn new(
        io: Box<HeadDeadline>,
        req: Box<RequestHeader>,
        pending: BytesMut,
        client_ip: Option<IpAddr>,
        tls: bool,
        draining: bool,
    ) -> Self {
        // A draining gateway answers and closes, so the client does not reuse a connection
        // that is about to go.
        let keepalive = !draining && !wire::http::header_has_token(&req, "connection", "close");
        Self {
            io,
            req: Some(req),
            pending,
            client_ip,
            tls,
            cors: CorsHeaders::default(),
            body: Body::Pending,
            keepalive,
            read_timeout: None,
            write_timeout: None,
            status: None,
            answered_bytes: 0,
            notes: Notes::default(),
        }
    }

    /// The connection and any bytes read past this request, when the answer is complete and
    /// the connection may carry another request; `None` when it must close.
    pub fn req_header_mut(&mut self) -> &mut RequestHeader {
        self.req.get_or_insert_with(|| Box::new(bare_request()))
    }

    /// A connection for a plain head (see [`PlainHead`]), passed through without a request
    /// value; `close`: the client asked to close after it.
    pub fn plain(
        io: Box<HeadDeadline>,
        pending: BytesMut,
        client_ip: Option<IpAddr>,
        tls: bool,
        draining: bool,
        close: bool,
    ) -> Self {
        Self {
            io,
            req: None,
            pending,
            client_ip,
            tls,
            cors: CorsHeaders::default(),
            body: Body::Pending,
            keepalive: !draining && !close,
            read_timeout: None,
            write_timeout: None,
            status: None,
            answered_bytes: 0,
            notes: Notes::default(),
        }
    }

    /// After a `101`: the client's socket and the bytes it sent that were read already (the
    /// start of its stream), for a tunnel that moves bytes itself. The request head is freed:
    /// a tunnel may last hours. None before an upgrade.
    pub fn upgraded(&mut self) -> Option<(&mut HeadDeadline, BytesMut)> {
        if self.body != Body::Upgraded {
            return None;
        }
        self.release_request();
        Some((&mut self.io, std::mem::take(&mut self.pending)))
    }

    /// Whether the client's connection may carry another request after this one (the client
    /// did not ask to close, the gateway is not draining, nothing broke its framing).
    pub fn keeps_alive(&self) -> bool {
        self.keepalive
    }

    /// Bytes the client sent past the head and not yet taken: the start of the request's body,
    /// or of the next request.
    pub fn pending_mut(&mut self) -> &mut BytesMut {
        &mut self.pending
    }

    /// Reads more of the client's bytes into [`Self::pending_mut`], at most `room` more plus
    /// [`READ_SLACK`] (so what a slow reader upstream leaves there stays bounded); 0 when the
    /// client closed. `limit` bounds the wait (an idle client gets `TimedOut`).
    ///
    /// The slack lets a read that takes the last of a body ask for more than there is: a
    /// short read tells the runtime the socket is drained, where an exact one leaves it to
    /// find out with a read that fails (a wasted syscall per request). Bytes past the body
    /// are the next request's, kept here for it.
    pub async fn read_pending(&mut self, room: usize, limit: Duration) -> std::io::Result<usize> {
        let room = room + READ_SLACK;
        self.pending.reserve(room);
        let io = &mut self.io;
        let pending = &mut self.pending;
        timed(Some(limit), async move {
            let mut lim = (&mut **io).take(room as u64);
            lim.read_buf(pending).await
        })
        .await
    }

    /// Writes bytes of an answer the gateway passes through from an upstream, framed by the
    /// caller (its head from [`Self::passed_head`] on). Flushed; a failure leaves the
    /// connection unusable.
    pub async fn write_passed(&mut self, parts: &[&[u8]]) -> pingora::Result<()> {
        self.write_parts(parts, "writing a passed-through answer")
            .await
    }

    /// Reads a request body of `len` bytes (its `Content-Length`) whole, within `deadline`,
    /// after a `100 Continue` when the client waits for one; bytes past it stay pending (the
    /// next request). The caller bounds `len`. On an error the connection is not reused.
    pub async fn read_whole_body(
        &mut self,
        len: usize,
        deadline: Duration,
    ) -> pingora::Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let keepalive = std::mem::replace(&mut self.keepalive, false);
        let waits = self.pending.len() < len
            && self.req.as_ref().is_some_and(|r| {
                r.headers
                    .get(http::header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
            });
        if waits {
            self.write_parts(&[b"HTTP/1.1 100 Continue\r\n\r\n"], "writing 100 Continue")
                .await?;
        }
        let (io, pending) = (&mut self.io, &mut self.pending);
        let read = async {
            while pending.len() < len {
                pending.reserve(len - pending.len());
                if io.read_buf(pending).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
            }
            Ok(())
        };
        timed(Some(deadline), read)
            .await
            .or_err(ErrorType::ReadError, "reading the request body")?;
        self.keepalive = keepalive;
        // A copy of its own: a body may be kept for long (a replay ring), and must not keep
        // alive the buffer it was read into, which may hold the next request too.
        let body = Bytes::copy_from_slice(&self.pending[..len]);
        bytes::Buf::advance(&mut self.pending, len);
        Ok(body)
    }

    /// Notes that a passed-through answer's head with `status` is being written, and whether
    /// the client's connection ends after it.
    pub fn passed_head(&mut self, status: u16, close: bool) {
        self.status = Some(status);
        if close {
            self.keepalive = false;
        }
        self.body = Body::UntilClose;
    }

    /// Notes that a passed-through answer is complete, `body_bytes` of body written (the
    /// request's own body went up whole before it): the connection may then carry the next
    /// request, unless [`Self::passed_head`] said it closes.
    pub fn passed_done(&mut self, body_bytes: u64) {
        self.answered_bytes += body_bytes;
        self.body = Body::Done;
    }

    pub fn into_reusable(self) -> Option<(Box<HeadDeadline>, BytesMut)> {
        (self.keepalive && self.body == Body::Done).then_some((self.io, self.pending))
    }

    /// Writes and flushes `parts`. Until that completes the connection counts as not
    /// reusable, so a write that fails, times out or is cancelled half-way (leaving the
    /// client's framing broken) is never followed by another request.
    async fn write_parts(&mut self, parts: &[&[u8]], what: &'static str) -> pingora::Result<()> {
        let keepalive = std::mem::replace(&mut self.keepalive, false);
        timed(self.write_timeout, write_all_vectored(&mut self.io, parts))
            .await
            .or_err(ErrorType::WriteError, what)?;
        self.keepalive = keepalive;
        Ok(())
    }

    /// Writes `data` as one piece of the body, framed as the response head said (one chunk
    /// for all of it when chunked), with one vectored write where the socket takes it.
    async fn write_body(&mut self, data: &[Bytes], end: bool) -> pingora::Result<()> {
        let total: usize = data.iter().map(Bytes::len).sum();
        let framing = self.body;
        // A lone piece (once per message per streaming client) is framed on the stack; a
        // burst of several gets its slice list on the heap, freed after the write.
        let mut chunk_head = [0u8; 20];
        let mut small: [&[u8]; 4] = [&[]; 4];
        let mut many: Vec<&[u8]> = Vec::new();
        let parts: &[&[u8]] = {
            match framing {
                Body::Pending => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "body before the response head",
                    )
                }
                Body::Done if total == 0 => return Ok(()),
                Body::Done => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "body after the answer ended",
                    )
                }
                Body::Length(left) if total as u64 > left => {
                    return Error::e_explain(
                        ErrorType::InternalError,
                        "body longer than its length",
                    )
                }
                Body::Length(left) => self.body = Body::Length(left - total as u64),
                Body::Chunked | Body::UntilClose | Body::Upgraded => {}
            }
            let chunked = framing == Body::Chunked;
            let head_len = if chunked && total > 0 {
                let mut line = &mut chunk_head[..];
                let _ = write!(line, "{total:x}\r\n");
                20 - line.len()
            } else {
                0
            };
            let tail: &[u8] = match (chunked, total > 0, end) {
                (true, true, true) => b"\r\n0\r\n\r\n",
                (true, true, false) => b"\r\n",
                (true, false, true) => b"0\r\n\r\n",
                _ => b"",
            };
            if data.len() <= 1 {
                let body = data.first().map_or(&[][..], |d| &d[..]);
                small[..3].copy_from_slice(&[&chunk_head[..head_len], body, tail]);
                &small[..3]
            } else {
                many.reserve_exact(data.len() + 2);
                many.push(&chunk_head[..head_len]);
                many.extend(data.iter().map(|d| &d[..]));
                many.push(tail);
                &many
            }
        };
        if end && framing != Body::Upgraded {
            if matches!(self.body, Body::Length(n) if n > 0) {
                self.keepalive = false;
            }
            self.body = Body::Done;
        }
        if parts.iter().all(|p| p.is_empty()) {
            return Ok(());
        }
        self.write_parts(parts, "writing the response body").await
    }

    /// Decides how the answer's body is framed (and whether the connection can carry another
    /// request after it), and returns the head's bytes.
    fn prepare_head(
        &mut self,
        mut resp: Box<ResponseHeader>,
        end: bool,
    ) -> pingora::Result<Vec<u8>> {
        if self.body != Body::Pending {
            return Error::e_explain(ErrorType::InternalError, "response head already written");
        }
        self.cors.apply(&mut resp)?;
        let status = resp.status.as_u16();
        let has_token = |name: http::HeaderName, token: &str| {
            resp.headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        self.body = if status == 101 {
            Body::Upgraded
        } else if end || status < 200 || status == 204 || status == 304 {
            Body::Done
        } else if has_token(http::header::TRANSFER_ENCODING, "chunked") {
            Body::Chunked
        } else if let Some(len) = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            Body::Length(len)
        } else {
            self.keepalive = false;
            Body::UntilClose
        };
        if has_token(http::header::CONNECTION, "close") {
            self.keepalive = false;
        }
        if !self.keepalive && status != 101 && !has_token(http::header::CONNECTION, "close") {
            resp.insert_header(http::header::CONNECTION, "close")?;
        }
        resp.insert_header(
            http::header::DATE,
            pingora::protocols::http::date::get_cached_date(),
        )?;
        self.status = Some(status);
        Ok(self.head_bytes(&resp))
    }

    fn head_bytes(&self, resp: &ResponseHeader) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        wire::http1::status_line(&mut out, resp.status);
        for (name, value) in resp.headers.iter() {
            wire::http1::field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// Runs an I/O step under an optional deadline; running out is a `TimedOut` error.
async fn timed<T>(
    limit: Option<Duration>,
    step: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        Some(t) => tokio::time::timeout(t, step)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?,
        None => step.await,
    }
}

/// Writes all of `parts` with as few writes as the stream allows, then flushes.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    parts: &[&[u8]],
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        // Up to four slices a call, on the stack (this array lives in every streaming client's
        // task while a write waits); the loop goes on with the rest.
        let mut slices = [IoSlice::new(&[]); 4];
        let rest =
            std::iter::once(&parts[index][offset..]).chain(parts[index + 1..].iter().copied());
        let mut used = 0;
        for (slot, part) in slices.iter_mut().zip(rest) {
            *slot = IoSlice::new(part);
            used += 1;
        }
        let mut n = io.write_vectored(&slices[..used]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < parts.len() && n >= parts[index].len() - offset {
            n -= parts[index].len() - offset;
            index += 1;
            offset = 0;
        }
        offset += n;
    }
    io.flush().await
}

impl Downstream for Connection {
    fn req_header(&self) -> &RequestHeader {
        match &self.req {
            Some(r) => r,
            None => &BARE,
        }
    }

    fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    fn is_tls(&self) -> bool {
        self.tls
    }

    fn is_http2(&self) -> bool {
        false
    }

    async fn write_response_header(
        &mut self,
        resp: Box<ResponseHeader>,
        end: bool,
    ) -> pingora::Result<()> {
        let head = self.prepare_head(resp, end)?;
        self.write_parts(&[&head], "writing the response head")
            .await
    }

    async fn write_answer(
        &mut self,
        resp: Box<ResponseHeader>,
        body: Bytes,
    ) -> pingora::Result<()> {
        let head = self.prepare_head(resp, false)?;
        self.answered_bytes += body.len() as u64;
        match self.body {
            // The usual case (a poll's answer, a refusal): head and body in one write.
            Body::Length(len) if len == body.len() as u64 => {
                self.body = Body::Done;
                self.write_parts(&[&head, &body], "writing the response")
                    .await
            }
            _ => {
                self.write_parts(&[&head], "writing the response head")
                    .await?;
                self.write_body(std::slice::from_ref(&body), true).await
            }
        }
    }

    async fn write_simple_answer(
        &mut self,
        status: u16,
        fields: &[(&'static str, &'static str)],
        body: Bytes,
    ) -> pingora::Result<()> {
        if self.body != Body::Pending {
            return Error::e_explain(ErrorType::InternalError, "response head already written");
        }
        let status = http::StatusCode::from_u16(status)
            .or_err(ErrorType::InternalError, "an answer's status")?;
        let mut head = Vec::with_capacity(256);
        wire::http1::status_line(&mut head, status);
        let mut field = |name: &[u8], value: &[u8]| wire::http1::field(&mut head, name, value);
        for (name, value) in fields {
            field(name.as_bytes(), value.as_bytes());
        }
        for (name, value) in &self.cors.headers {
            field(name.as_str().as_bytes(), value.as_bytes());
        }
        let mut digits = [0u8; 20];
        let digits_len = {
            let mut at = &mut digits[..];
            let _ = write!(at, "{}", body.len());
            20 - at.len()
        };
        field(b"content-length", &digits[..digits_len]);
        if !self.keepalive {
            field(b"connection", b"close");
        }
        field(
            b"date",
            pingora::protocols::http::date::get_cached_date().as_bytes(),
        );
        head.extend_from_slice(b"\r\n");
        self.status = Some(status.as_u16());
        self.answered_bytes += body.len() as u64;
        self.body = Body::Done;
        self.write_parts(&[&head, &body], "writing the response")
            .await
    }

    async fn write_response_body(&mut self, body: Option<Bytes>, end: bool) -> pingora::Result<()> {
        let data = body.unwrap_or_default();
        self.write_body(std::slice::from_ref(&data), end).await
    }

    async fn write_body_parts(&mut self, parts: &[Bytes]) -> pingora::Result<()> {
        self.write_body(parts, false).await
    }

    async fn read_request_body(&mut self) -> pingora::Result<Option<Bytes>> {
        // Only bodiless GETs come this way; after a 101 the "body" is the WebSocket stream.
        if self.body != Body::Upgraded {
            return Ok(None);
        }
        if !self.pending.is_empty() {
            return Ok(Some(self.pending.split().freeze()));
        }
        // Waiting costs no buffer: a streaming client's loop asks for its next bytes after
        // every delivery, and most of those asks find nothing. The first bytes are read on
        // the stack; once they arrive, whatever else is already there is taken in the same
        // turn.
        let io = &mut self.io;
        let first = std::future::poll_fn(|cx| {
            let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); CLIENT_READ];
            let mut rb = tokio::io::ReadBuf::uninit(&mut stack);
            std::pin::Pin::new(&mut **io)
                .poll_read(cx, &mut rb)
                .map_ok(|()| BytesMut::from(rb.filled()))
        });
        let mut buf = timed(self.read_timeout, first)
            .await
            .or_err(ErrorType::ReadError, "reading from the client")?;
        if buf.is_empty() {
            return Ok(None);
        }
        if buf.len() == CLIENT_READ {
            buf.reserve(16 * 1024);
            use futures_util::FutureExt;
            while buf.len() < 64 * 1024 {
                match self.io.read_buf(&mut buf).now_or_never() {
                    Some(Ok(n)) if n > 0 && buf.len() == buf.capacity() => buf.reserve(16 * 1024),
                    _ => break,
                }
            }
        }
        Ok(Some(buf.freeze()))
    }

    async fn read_body_or_idle(
        &mut self,
        no_body_expected: bool,
    ) -> pingora::Result<Option<Bytes>> {
        if !no_body_expected || self.body == Body::Upgraded {
            return self.read_request_body().await;
        }
        let mut probe = [0u8; 1];
        match self.io.read(&mut probe).await {
            Ok(0) => Error::e_explain(ErrorType::ConnectionClosed, "client closed the connection"),
            Ok(_) => {
                // Not ours to interpret (pipelined bytes): keep them for whatever reads next.
                self.pending.extend_from_slice(&probe);
                self.keepalive = false;
                Ok(Some(Bytes::new()))
            }
            Err(e) => Err(e).or_err(ErrorType::ReadError, "waiting on the client"),
        }
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    fn release_request(&mut self) {
        self.req = None;
    }

    fn set_keepalive(&mut self, seconds: Option<u64>) {
        if seconds.is_none() {
            self.keepalive = false;
        }
    }

    fn notes(&mut self) -> Option<&mut Notes> {
        Some(&mut self.notes)
    }
}

/// The head reader and the lean connection over in-memory I/O: a parsing or framing bug shows
/// here without a gateway process.
#[cfg(test)]
mod tests {
    use super::*;

    /// Reads a head as the listener does, a plain one parsed again into a request value.
    async fn read_full<S: AsyncRead + Unpin>(io: &mut S, buf: BytesMut) -> Head {
        match read_head(io, buf).await {
            Head::Plain { bytes, .. } => full_head(bytes),
            head => head,
        }
    }

    #[tokio::test]
    async fn plain_heads_are_read_without_a_request_value() {
        let raw = b"POST /api/x?q=1 HTTP/1.1\r\nHost: gw:8080\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi";
        let mut io = tokio_test::io::Builder::new().read(raw).build();
        let Head::Plain {
            bytes,
            len,
            shape,
            plain,
        } = read_head(&mut io, BytesMut::new()).await
        else {
            panic!("not plain")
        };
        assert_eq!(len, raw.len() - 2);
        assert_eq!(shape.body, Framing::Length(2));
        assert_eq!(plain.host(&bytes), "gw:8080");
        assert_eq!(plain.path(&bytes), "/api/x");
        assert!(plain.close);
        // Anything a request value would change the admission of is not plain.
        for raw in [
            &b"OPTIONS /a HTTP/1.1\r\nHost: gw\r\n\r\n"[..],
            b"GET http://gw/a HTTP/1.1\r\nHost: gw\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: gw\r\nOrigin: https://x\r\n\r\n",
            b"GET /a HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: gw\r\nHost: gw\r\n\r\n",
            b"GET /a HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ] {
            let mut io = tokio_test::io::Builder::new().read(raw).build();
            assert!(
                !matches!(read_head(&mut io, BytesMut::new()).await, Head::Plain { .. }),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
    use tokio::io::DuplexStream;

    fn parsed(head: &Head) -> (&RequestHeader, usize) {
        match head {
            Head::Parsed { req, len, .. } => (req, *len),
            Head::Other(b) => panic!("left to pingora: {:?}", String::from_utf8_lossy(b)),
            Head::Plain { .. } => panic!("plain: read_full parses it again"),
            Head::Closed => panic!("closed"),
        }
    }

    #[tokio::test]
    async fn a_head_split_across_reads_is_parsed_and_what_follows_is_kept() {
        let mut io = tokio_test::io::Builder::new()
            .read(b"GET /feed?transport=sse HT")
            .read(b"TP/1.1\r\nHost: gw\r\n")
            .read(b"Accept: text/event-stream\r\n\r\nGET /next")
            .build();
        let head = read_full(&mut io, BytesMut::new()).await;
        let (req, len) = parsed(&head);
        assert_eq!(req.uri.path(), "/feed");
        assert_eq!(req.headers["accept"], "text/event-stream");
        let Head::Parsed { bytes, .. } = &head else {
            unreachable!()
        };
        assert_eq!(&after_head(bytes, len)[..], b"GET /next");
    }

    #[tokio::test]
    async fn a_post_with_an_empty_body_is_taken() {
        let raw = b"POST /chat/0/s/xhr_streaming HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\nGET /next";
        let mut io = tokio_test::io::Builder::new().read(raw).build();
        let head = read_full(&mut io, BytesMut::new()).await;
        let (req, len) = parsed(&head);
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.uri.path(), "/chat/0/s/xhr_streaming");
        let Head::Parsed { bytes, .. } = &head else {
            unreachable!()
        };
        assert_eq!(&after_head(bytes, len)[..], b"GET /next");
        assert!(shape_of(&head).stream);
    }

    fn shape_of(head: &Head) -> Shape {
        match head {
            Head::Parsed { shape, .. } | Head::Plain { shape, .. } => *shape,
            _ => panic!("not parsed"),
        }
    }

    #[tokio::test]
    async fn heads_with_one_plain_framing_are_taken_for_pass_through_only() {
        let cases: [(&[u8], Framing); 5] = [
            (
                b"POST /c HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\nx",
                Framing::Length(1),
            ),
            (
                b"PUT /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
            ),
            (b"POST /feed HTTP/1.1\r\nHost: gw\r\n\r\n", Framing::Empty),
            (
                b"GET /feed HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
                Framing::Empty,
            ),
            (b"HEAD /feed HTTP/1.1\r\nHost: gw\r\n\r\n", Framing::Empty),
        ];
        for (raw, body) in cases {
            let mut io = tokio_test::io::Builder::new().read(raw).build();
            let head = read_full(&mut io, BytesMut::new()).await;
            assert_eq!(
                shape_of(&head),
                Shape {
                    body,
                    stream: false
                },
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[tokio::test]
    async fn heads_this_path_does_not_judge_are_left_to_pingora_whole() {
        let cases: [&[u8]; 12] = [
            b"GET /feed HTTP/1.0\r\nHost: gw\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: gw\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: gw\r\nHost: other\r\n\r\n",
            b"GET /feed HTTP/1.1\r\nHost: gw\r\nBad Header\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nContent-Length: 00x\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nExpect: something-else\r\n\r\n",
            b"GET /c HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        ];
        for raw in cases {
            let mut io = tokio_test::io::Builder::new().read(raw).build();
            match read_full(&mut io, BytesMut::new()).await {
                Head::Other(bytes) => assert_eq!(&bytes[..], raw, "replayed byte for byte"),
                _ => panic!("taken: {:?}", String::from_utf8_lossy(raw)),
            }
        }
    }

    #[tokio::test]
    async fn eof_before_a_head_is_closed_and_inside_one_is_left_to_pingora() {
        let mut io = tokio_test::io::Builder::new().read(b"\r\n").build();
        assert!(matches!(
            read_full(&mut io, BytesMut::new()).await,
            Head::Closed
        ));
        let mut io = tokio_test::io::Builder::new()
            .read(b"GET / HTTP/1.1\r\nHo")
            .build();
        assert!(
            matches!(read_full(&mut io, BytesMut::new()).await, Head::Other(b) if &b[..] == b"GET / HTTP/1.1\r\nHo")
        );
    }

    #[tokio::test]
    async fn a_head_past_the_lean_bound_is_left_to_pingora() {
        let big = format!("GET / HTTP/1.1\r\nX-Fill: {}\r\n", "a".repeat(HEAD_MAX));
        let (mut io, mut client) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            // The reader stops at the bound: the rest is never taken.
            let _ = client.write_all(big.as_bytes()).await;
            client
        });
        match read_full(&mut io, BytesMut::new()).await {
            Head::Other(b) => assert!(
                b.len() >= HEAD_MAX && b.len() < HEAD_MAX + 64 * 1024,
                "stops reading at the bound"
            ),
            _ => panic!("taken"),
        }
        drop(io);
        let _ = writer.await;
    }

    /// A lean connection for `head`, and the client's end of the socket.
    fn connection(head: &str) -> (Connection, DuplexStream) {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let io = Box::new(HeadDeadline::new(Box::new(server), Duration::from_secs(5)));
        let Parse::Complete(req, _, _) = parse(head.as_bytes(), true) else {
            panic!("head does not parse")
        };
        let conn = Connection::new(io, req, BytesMut::new(), None, false, false);
        (conn, client)
    }

    /// Everything the client received, once the server side is gone.
    async fn received(mut client: DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    fn head(status: u16, fields: &[(&str, &str)]) -> Box<ResponseHeader> {
        let mut resp = ResponseHeader::build(status, None).unwrap();
        for (k, v) in fields {
            resp.insert_header(k.to_string(), *v).unwrap();
        }
        Box::new(resp)
    }

    #[tokio::test]
    async fn a_chunked_stream_frames_each_write_and_a_burst_as_one_chunk() {
        let (mut conn, client) = connection("GET /s HTTP/1.1\r\nHost: gw\r\n\r\n");
        conn.write_response_header(head(200, &[("transfer-encoding", "chunked")]), false)
            .await
            .unwrap();
        conn.write_response_body(Some(Bytes::from_static(b"id: 1\n\n")), false)
            .await
            .unwrap();
        let burst = [
            Bytes::from_static(b"id: 2\n\n"),
            Bytes::from_static(b"id: 3\n\n"),
        ];
        conn.write_body_parts(&burst).await.unwrap();
        conn.write_response_body(None, true).await.unwrap();
        assert_eq!(conn.status, Some(200));
        let reusable = conn.into_reusable();
        assert!(
            reusable.is_some(),
            "a complete chunked answer keeps the connection"
        );
        drop(reusable);
        let text = received(client).await;
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.to_ascii_lowercase().contains("\r\ndate: "), "{head}");
        assert_eq!(
            body,
            "7\r\nid: 1\n\n\r\ne\r\nid: 2\n\nid: 3\n\n\r\n0\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn a_whole_answer_is_framed_by_its_length_and_keeps_the_connection() {
        let (mut conn, mut client) = connection("GET /p HTTP/1.1\r\nHost: gw\r\n\r\n");
        conn.write_answer(
            head(200, &[("content-length", "13")]),
            Bytes::from_static(b"{\"cursor\":1}\n"),
        )
        .await
        .unwrap();
        assert!(
            conn.into_reusable().is_some(),
            "complete: the next request may come"
        );
        let mut got = vec![0u8; 4096];
        let n = client.read(&mut got).await.unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"cursor\":1}\n"),
            "the head, then the body: {text}"
        );
    }

    #[tokio::test]
    async fn a_client_that_asks_to_close_gets_connection_close_and_no_reuse() {
        let (mut conn, client) =
            connection("GET /s HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        conn.write_response_header(head(200, &[("content-length", "2")]), false)
            .await
            .unwrap();
        conn.write_response_body(Some(Bytes::from_static(b"ok")), true)
            .await
            .unwrap();
        assert!(conn.into_reusable().is_none());
        let text = received(client).await;
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nok"), "{text}");
    }

    #[tokio::test]
    async fn a_body_longer_than_its_length_is_refused_and_a_short_one_ends_keep_alive() {
        let (mut conn, _client) = connection("GET /s HTTP/1.1\r\nHost: gw\r\n\r\n");
        conn.write_response_header(head(200, &[("content-length", "3")]), false)
            .await
            .unwrap();
        let too_long = [Bytes::from_static(b"ab"), Bytes::from_static(b"cd")];
        assert!(conn.write_body_parts(&too_long).await.is_err());
        conn.write_response_body(Some(Bytes::from_static(b"a")), true)
            .await
            .unwrap();
        assert!(
            conn.into_reusable().is_none(),
            "the client still waits for 2 bytes"
        );
    }

    #[tokio::test]
    async fn after_a_101_the_socket_carries_the_websocket_both_ways() {
        let (mut conn, mut client) = connection(
            "GET /ws HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        );
        assert_eq!(
            conn.read_request_body().await.unwrap(),
            None,
            "no body before the 101"
        );
        conn.write_response_header(head(101, &[("upgrade", "websocket")]), false)
            .await
            .unwrap();
        client.write_all(b"\x81\x85frame").await.unwrap();
        let got = conn.read_request_body().await.unwrap().unwrap();
        assert_eq!(&got[..], b"\x81\x85frame");
        conn.write_body_parts(&[
            Bytes::from_static(b"\x81\x01a"),
            Bytes::from_static(b"\x81\x01b"),
        ])
        .await
        .unwrap();
        assert!(
            conn.into_reusable().is_none(),
            "an upgraded connection is never reused"
        );
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"),
            "{out:?}"
        );
        assert!(out.ends_with(b"\r\n\r\n\x81\x01a\x81\x01b"), "{out:?}");
    }

    #[test]
    fn plain_targets_and_hosts_are_what_the_full_parse_takes() {
        for t in [
            "/",
            "/api/x",
            "/a?b=c&d=e",
            "/%20x",
            "/a;b",
            "/a:b@c",
            "/x?y=/z?w",
            "/a|b",
            "/a{b}",
            "/a\"b",
            "/ap`i",
            "/a#b",
            "/a?b#c",
            "/a b",
            "/\u{e9}",
        ] {
            let full = !t.contains('#') && http::uri::PathAndQuery::try_from(t).is_ok();
            assert_eq!(plain_target(t.as_bytes()), full, "{t:?}");
        }
        for h in [
            "a.example",
            "a.example:8080",
            "127.0.0.1:80",
            "[::1]:80",
            "x-y",
            "a:",
            ":80",
            "user@a.example",
            "a b",
            "",
            "a:123456",
            ".a",
        ] {
            let full = !h.contains('@') && http::uri::Authority::try_from(h).is_ok();
            assert_eq!(plain_host(h.as_bytes()), full, "{h:?}");
        }
    }
}
