//! SockJS (protocol 0.3.3) on a bridged route, for the fallback library legacy clients use:
//! its base URL is the route's path. Framing is [`crate::wire::sockjs`]'s; sessions live in
//! [`crate::bridge::held`], one per SockJS session id, between the requests that carry them.
//!
//! ```text
//! GET  base[/]                          greeting
//! GET  base/info  (OPTIONS)             {"websocket", "cookie_needed", "origins", "entropy"}
//! GET  base/iframe[-ver].html           page that hosts sockjs-client (cached, ETag, 304)
//! GET  base/websocket                   plain WebSocket (the route's own WebSocket transport)
//! GET  base/S/ID/websocket              WebSocket with SockJS frames
//! POST base/S/ID/xhr | xhr_streaming    one frame | frames until response_limit
//! GET  base/S/ID/eventsource | htmlfile frames until response_limit
//! GET  base/S/ID/jsonp?c=CB             one frame, as a call of CB
//! POST base/S/ID/xhr_send | jsonp_send  client messages (a JSON array of strings)
//! ```
//!
//! A receiving request opens the session when it is new (its first frame is `o`), then gets
//! `a[...]` messages, `h` heartbeats and finally `c[code,"reason"]`. One receiver at a time:
//! a second gets `c[2010,...]`. A receiver whose client leaves before its answer is complete
//! closes the session (`c[1002,...]`): what it was given may be lost.

use super::{Downstream, Respond};
use crate::access_log::{Closer as EndedBy, StreamEnd};
use crate::bridge::held::{
    Attach, Closer, HeldSession, Owner, RemoteAttach, RemoteCloser, RemoteHeld,
};
use crate::bridge::session::EndReason;
use crate::bridge::{write_deadline, Bridge, Consumer, Delivery, Elsewhere};
use crate::config::{BinaryPolicy, Fanout, SockJs};
use crate::metrics;
use crate::policy::reject::Reject;
use crate::wire::sockjs::{self as frame, Resource, Transport};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// `Cache-Control` of every answer that must not be cached.
const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
/// A year, in seconds: how long cacheable answers (iframe.html, preflights) live.
const YEAR: u64 = 31_536_000;

/// True when the request is for the route's SockJS endpoint rather than its native transports:
/// any path under the base, or the base itself when it asks for no native transport.
pub fn requested(bridge: &Bridge, req: &pingora::http::RequestHeader) -> bool {
    if bridge.spec.sockjs.is_none() {
        return false;
    }
    let path = req.uri.path();
    let base = bridge.base(path).trim_end_matches('/');
    let at_base = path == base || path.len() == base.len() + 1 && path.ends_with('/');
    !at_base || super::requested(req).is_none()
}

/// Whether `req` is a SockJS request that a browser makes as a `<script>`, iframe or form load
/// (JSONP, its sends, htmlfile): one that may carry no `Origin`.
pub fn script_load(bridge: &Bridge, req: &pingora::http::RequestHeader) -> bool {
    let path = req.uri.path();
    matches!(
        frame::resource(bridge.base(path), path),
        Some(Resource::Session {
            transport: frame::Transport::HtmlFile
                | frame::Transport::Jsonp
                | frame::Transport::JsonpSend,
            ..
        })
    )
}

pub async fn serve<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let path = down.req_header().uri.path().to_owned();
    let resource = frame::resource(bridge.base(&path), &path).unwrap_or(Resource::NotFound);
    let method = down.req_header().method.clone();
    let get = method == http::Method::GET || method == http::Method::HEAD;
    match resource {
        Resource::Greeting if get => {
            let resp = head(down, 200, "text/plain; charset=UTF-8", Cache::Unsaid, false)?;
            answer(down, resp, Bytes::from_static(frame::GREETING.as_bytes())).await
        }
        Resource::Info if get => {
            let mut entropy = [0u8; 4];
            getrandom::fill(&mut entropy).expect("the operating system's random source works");
            let body = frame::info(
                opts.websocket,
                opts.cookie_needed,
                u32::from_le_bytes(entropy),
            );
            let resp = head(
                down,
                200,
                "application/json; charset=UTF-8",
                Cache::No,
                true,
            )?;
            answer(down, resp, Bytes::from(body)).await
        }
        Resource::Info if method == http::Method::OPTIONS => {
            options(down, "OPTIONS, GET", opts).await
        }
        Resource::Iframe if get => iframe(down, opts).await,
        Resource::Greeting | Resource::Iframe => not_allowed(down, route, "GET, HEAD").await,
        Resource::Info => not_allowed(down, route, "OPTIONS, GET").await,
        Resource::RawWebSocket if opts.websocket && method != http::Method::GET => {
            not_allowed(down, route, "GET").await
        }
        Resource::RawWebSocket if opts.websocket => {
            if let Err(r) = websocket_rules(down) {
                return r.send(down, route).await;
            }
            if let Some(r) = super::authorized(down, bridge).await {
                return r.send(down, route).await;
            }
            Box::pin(super::ws::serve(down, bridge)).await
        }
        Resource::Session { session, transport } => {
            let session = session.to_owned();
            if !offered(opts, transport) {
                return not_found(down, route).await;
            }
            if method == http::Method::OPTIONS && transport.method() == "POST" {
                return options(down, "OPTIONS, POST", opts).await;
            }
            if method.as_str() != transport.method() {
                return not_allowed(down, route, transport.method()).await;
            }
            match transport {
                Transport::WebSocket => {
                    if let Err(r) = websocket_rules(down) {
                        return r.send(down, route).await;
                    }
                    if let Some(r) = super::authorized(down, bridge).await {
                        return r.send(down, route).await;
                    }
                    if crate::wire::hixie76::is_handshake(down.req_header()) {
                        return Box::pin(super::hixie::serve(down, bridge, opts)).await;
                    }
                    Box::pin(super::ws::serve_sockjs(down, bridge, opts)).await
                }
                Transport::XhrSend | Transport::JsonpSend => {
                    Box::pin(send(down, bridge, opts, &session, transport)).await
                }
                _ => Box::pin(receive(down, bridge, opts, &session, transport)).await,
            }
        }
        Resource::RawWebSocket | Resource::NotFound => not_found(down, route).await,
    }
}

fn offered(opts: &SockJs, t: Transport) -> bool {
    opts.transports.offers(t.receiver().name())
}

/// The reference server's checks on a WebSocket handshake, with its words.
fn websocket_rules<D: Downstream>(down: &D) -> Result<(), Reject> {
    let req = down.req_header();
    if !crate::wire::http::header_has_token(req, "upgrade", "websocket") {
        return Err(Reject::new(
            400,
            "sockjs_websocket_upgrade",
            "Can \"Upgrade\" only to \"WebSocket\".",
        ));
    }
    if !crate::wire::http::header_has_token(req, "connection", "upgrade") {
        return Err(Reject::new(
            400,
            "sockjs_websocket_upgrade",
            "\"Connection\" must be \"Upgrade\".",
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// Nothing said (the greeting).
    Unsaid,
    No,
    Year,
}

/// A response head with the spec's caching headers and, for the XHR-family answers (`cors`),
/// the CORS answer for the request's origin (already admitted by the route's allowlist).
fn head<D: Downstream>(
    down: &D,
    status: u16,
    content_type: &str,
    cache: Cache,
    cors: bool,
) -> pingora::Result<ResponseHeader> {
    let req = down.req_header();
    let mut resp = ResponseHeader::build(status, Some(8))?;
    if !content_type.is_empty() {
        resp.insert_header("content-type", content_type)?;
    }
    match cache {
        Cache::Unsaid => {}
        Cache::No => resp.insert_header("cache-control", NO_CACHE)?,
        Cache::Year => {
            resp.insert_header("cache-control", format!("public, max-age={YEAR}"))?;
            let expires = SystemTime::now() + Duration::from_secs(YEAR);
            resp.insert_header("expires", httpdate::fmt_http_date(expires))?;
        }
    }
    if cors {
        // The origin is echoed ("null" too: a file: page), with credentials; without one, `*`.
        match req.headers.get(http::header::ORIGIN) {
            Some(o) => {
                resp.insert_header("access-control-allow-origin", o.clone())?;
                resp.insert_header("access-control-allow-credentials", "true")?;
            }
            None => resp.insert_header("access-control-allow-origin", "*")?,
        }
        if let Some(h) = req
            .headers
            .get(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|h| !h.is_empty())
        {
            resp.insert_header("access-control-allow-headers", h.clone())?;
        }
    }
    Ok(resp)
}

/// The transports whose answers carry CORS headers (JSONP and htmlfile are read as a script
/// and a frame).
fn xhr_family(t: Transport) -> bool {
    matches!(
        t,
        Transport::Xhr | Transport::XhrSend | Transport::XhrStreaming | Transport::EventSource
    )
}

/// Adds `Set-Cookie: JSESSIONID=...; path=/` (the client's own value, else `dummy`).
fn with_cookie<D: Downstream>(down: &D, opts: &SockJs, resp: &mut ResponseHeader) {
    if !opts.cookie_needed {
        return;
    }
    let value = down
        .req_header()
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == "JSESSIONID").then(|| v.to_owned())
        })
        .filter(|v| {
            v.bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        })
        .unwrap_or_else(|| "dummy".into());
    let _ = resp.insert_header("set-cookie", format!("JSESSIONID={value}; path=/"));
}

async fn answer<D: Downstream>(
    down: &mut D,
    mut resp: ResponseHeader,
    body: Bytes,
) -> pingora::Result<()> {
    resp.insert_header("content-length", body.len().to_string())?;
    if down.req_header().method == http::Method::HEAD {
        return down.write_response_header(Box::new(resp), true).await;
    }
    down.write_answer(Box::new(resp), body).await
}

/// A refusal with the spec's text body, counted like every refusal, never cached. (An admitted
/// origin's CORS headers are added to it as to every answer, so a page can read its status.)
async fn fail<D: Downstream>(
    down: &mut D,
    route: &str,
    status: u16,
    reason: &'static str,
    text: &str,
) -> pingora::Result<()> {
    Reject::new(status, reason, text.to_owned()).count(route);
    let mut resp = head(down, status, "text/plain; charset=UTF-8", Cache::No, false)?;
    if status == 404 || status >= 500 {
        resp.insert_header("connection", "close")?;
        down.set_keepalive(None);
    }
    answer(down, resp, Bytes::from(text.to_owned())).await
}

async fn not_found<D: Downstream>(down: &mut D, route: &str) -> pingora::Result<()> {
    fail(
        down,
        route,
        404,
        "sockjs_not_found",
        "404 Error: Page not found\n",
    )
    .await
}

async fn not_allowed<D: Downstream>(down: &mut D, route: &str, allow: &str) -> pingora::Result<()> {
    Reject::new(405, "bad_method", format!("use {allow}")).count(route);
    let mut resp = head(down, 405, "", Cache::Unsaid, false)?;
    resp.insert_header("allow", allow)?;
    answer(down, resp, Bytes::new()).await
}

/// A preflight (or a plain `OPTIONS`) on `info` and the XHR URLs: cached for a year.
async fn options<D: Downstream>(
    down: &mut D,
    methods: &'static str,
    opts: &SockJs,
) -> pingora::Result<()> {
    let mut resp = head(down, 204, "", Cache::Year, true)?;
    resp.insert_header("access-control-allow-methods", methods)?;
    resp.insert_header("access-control-max-age", YEAR.to_string())?;
    with_cookie(down, opts, &mut resp);
    down.write_response_header(Box::new(resp), true).await
}

async fn iframe<D: Downstream>(down: &mut D, opts: &SockJs) -> pingora::Result<()> {
    let page = frame::iframe_page(&opts.client_url);
    let etag = frame::etag(page.as_bytes());
    let fresh = down
        .req_header()
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = head(down, if fresh { 304 } else { 200 }, "", Cache::Year, false)?;
    resp.insert_header("etag", &etag)?;
    if fresh {
        return down.write_response_header(Box::new(resp), true).await;
    }
    resp.insert_header("content-type", "text/html; charset=UTF-8")?;
    answer(down, resp, Bytes::from(page)).await
}

/// The session a request names, when the request may use it (see [`Owner`]).
fn find<D: Downstream>(down: &D, bridge: &Bridge, id: &str) -> Option<Arc<HeldSession>> {
    let s = bridge.sockjs.get(id)?;
    if s.owner().admits(&owner(down)) {
        return Some(s);
    }
    metrics::refused(&bridge.route.name, "sockjs_session_owner");
    None
}

fn owner<D: Downstream>(down: &D) -> Owner {
    let origin = down
        .req_header()
        .headers
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    Owner::new(down.client_ip(), origin)
}

/// The body of a POST receiver (`xhr`, `xhr_streaming`) carries nothing: it is read and
/// dropped (at most 64 KiB), so the connection can be watched for the client leaving.
async fn skip_body<D: Downstream>(down: &mut D) -> bool {
    if down.req_header().method != http::Method::POST {
        return true;
    }
    let mut seen = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), down.read_request_body()).await {
            Ok(Ok(None)) => return true,
            Ok(Ok(Some(b))) => {
                seen += b.len();
                if seen > 64 * 1024 {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

fn content_type(t: Transport) -> &'static str {
    match t {
        Transport::Xhr | Transport::XhrStreaming | Transport::Jsonp => {
            "application/javascript; charset=UTF-8"
        }
        Transport::EventSource => "text/event-stream",
        Transport::HtmlFile => "text/html; charset=UTF-8",
        _ => "text/plain; charset=UTF-8",
    }
}

/// A receiving request: opens the session when it is new, then writes what it has for the
/// client: one frame (polling) or frames until `response_limit` (streaming).
async fn receive<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    id: &str,
    t: Transport,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let callback = if t.needs_callback() {
        let c = super::query_param(down.req_header(), "c")
            .or_else(|| super::query_param(down.req_header(), "callback"))
            .map(String::from);
        let max = if t == Transport::Jsonp { 32 } else { 256 };
        match c {
            None => {
                return fail(
                    down,
                    route,
                    500,
                    "sockjs_callback",
                    "\"callback\" parameter required",
                )
                .await
            }
            Some(c) if !frame::callback_ok(&c, max) => {
                return fail(
                    down,
                    route,
                    500,
                    "sockjs_callback",
                    "invalid \"callback\" parameter",
                )
                .await
            }
            Some(c) => c,
        }
    } else {
        String::new()
    };
    if !skip_body(down).await {
        return fail(
            down,
            route,
            400,
            "bad_body",
            "A receiving request has no body.",
        )
        .await;
    }
    let s = match bridge.sockjs.get(id) {
        Some(_) => match find(down, bridge, id) {
            Some(s) => Held::Local(s),
            None => return not_found(down, route).await,
        },
        None => match find_remote(down, bridge, id).await {
            Found::Here(s) => Held::Remote(s),
            Found::Refused => return not_found(down, route).await,
            // Not a new session under an id its owner may still hold.
            Found::Unknown => return super::session_unknown(route).send(down, route).await,
            Found::Nowhere => {
                if let Some(r) = super::authorized(down, bridge).await {
                    return r.send(down, route).await;
                }
                let client = super::client_info(down);
                let opened = bridge
                    .sockjs
                    .open(
                        bridge,
                        id,
                        owner(down),
                        down.req_header(),
                        &client,
                        t.label(),
                        &crate::bridge::held::Terms {
                            idle: opts.disconnect_delay,
                            closed_linger: opts.disconnect_delay,
                            gauge: metrics::SOCKJS_SESSIONS.with_label_values(&[route]),
                            cluster: bridge.sockjs_cluster(),
                        },
                        (),
                        None,
                    )
                    .await;
                match opened {
                    // A concurrent request may have opened it first, from elsewhere.
                    Ok(s) if s.owner().admits(&owner(down)) => Held::Local(s),
                    Ok(_) => return not_found(down, route).await,
                    Err(why) => return super::session_refused(down, route, why).await,
                }
            }
        },
    };
    let mut resp = head(down, 200, content_type(t), Cache::No, xhr_family(t))?;
    with_cookie(down, opts, &mut resp);
    super::unbounded_body(down, &mut resp)?;
    resp.insert_header("x-accel-buffering", "no")?;
    if t == Transport::Jsonp {
        // A JSONP answer is a script only where a page asked for one (Rosetta Flash & co.).
        resp.insert_header("x-content-type-options", "nosniff")?;
    }
    Box::pin(down.write_response_header(Box::new(resp), false)).await?;
    down.release_request();
    down.set_read_timeout(None);
    let _open = metrics::OpenConnection::new(route, t.label());
    let bytes_out = metrics::BYTES.with_label_values(&[route, t.label(), "out"]);
    let mut out = Out {
        t,
        callback: &callback,
        sent: 0,
        bytes_out: &bytes_out,
    };
    let prelude = match t {
        Transport::XhrStreaming => Some(frame::xhr_streaming_prelude()),
        Transport::EventSource => Some(Bytes::from_static(frame::EVENTSOURCE_PRELUDE)),
        Transport::HtmlFile => Some(frame::htmlfile_prelude(&callback)),
        _ => None,
    };
    if let Some(p) = prelude {
        // Frames count against response_limit; the prelude does not (as the reference server).
        bytes_out.inc_by(p.len() as u64);
        if down.write_response_body(Some(p), false).await.is_err() {
            return Ok(());
        }
    }
    match s {
        Held::Local(s) => match s.attach_within(RECEIVER_HANDOVER).await {
            Attach::Closed(code, reason) => {
                let _ = out.frame(down, &frame::close_frame(code, &reason)).await;
            }
            Attach::Busy => {
                let _ = out.frame(down, &busy_frame()).await;
            }
            Attach::Opened(mut consumer) => {
                let ok = out.frame(down, frame::OPEN).await.is_ok();
                if ok && t.streaming() {
                    let interrupted =
                        stream(down, bridge, opts, &*s, &mut consumer, &mut out).await;
                    s.detach(consumer, interrupted);
                } else {
                    s.detach(consumer, !ok);
                }
            }
            Attach::Resumed(mut consumer) => {
                let interrupted = stream(down, bridge, opts, &*s, &mut consumer, &mut out).await;
                s.detach(consumer, interrupted);
            }
        },
        Held::Remote(r) => receive_remote(down, bridge, opts, t, &r, &mut out).await,
    }
    down.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = down.write_response_body(None, true).await;
    Ok(())
}

fn busy_frame() -> Bytes {
    frame::close_frame(2010, "Another connection still open")
}

/// The session a receiver serves: here, or on another instance of the cluster.
enum Held {
    Local(Arc<HeldSession>),
    Remote(RemoteHeld),
}

/// What looking for a session on the other instances found.
enum Found {
    Here(RemoteHeld),
    /// It exists elsewhere but is bound to another client (address or origin).
    Refused,
    Nowhere,
    /// The cluster cannot be asked now.
    Unknown,
}

async fn find_remote<D: Downstream>(down: &D, bridge: &Bridge, id: &str) -> Found {
    let Some(cluster) = bridge.sockjs_cluster() else {
        return Found::Nowhere;
    };
    match cluster.find(&bridge.route.name, id).await {
        Elsewhere::Found(r) if r.owner.admits(&owner(down)) => Found::Here(r),
        Elsewhere::Found(_) => {
            metrics::refused(&bridge.route.name, "sockjs_session_owner");
            Found::Refused
        }
        Elsewhere::Nowhere => Found::Nowhere,
        Elsewhere::Unknown => Found::Unknown,
    }
}

/// A receiver for a session another instance owns: attached there (which decides `o`, `2010`
/// and close frames as for a local one), its messages read here (from the session's stream,
/// or from this instance's copy of the shared feed), and detached there with how far it got.
async fn receive_remote<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    t: Transport,
    r: &RemoteHeld,
    out: &mut Out<'_>,
) {
    // However this request ends, the owner hears that the receiver is gone.
    struct Abandon<'a>(&'a dyn crate::bridge::held::RemoteHeldOps);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            self.0.abandon();
        }
    }
    let _abandon = Abandon(&*r.ops);
    let (opened, after, inner) = match r.ops.attach().await {
        RemoteAttach::Closed(code, reason) => {
            let _ = out.frame(down, &frame::close_frame(code, &reason)).await;
            return;
        }
        RemoteAttach::Busy => {
            let _ = out.frame(down, &busy_frame()).await;
            return;
        }
        RemoteAttach::Attached {
            opened,
            after,
            inner,
        } => (opened, after, inner),
    };
    if opened {
        let ok = out.frame(down, frame::OPEN).await.is_ok();
        if !ok || !t.streaming() {
            r.ops.detach(after, !ok, None).await;
            return;
        }
    }
    let deadline = write_deadline(&bridge.route.keepalive);
    let mut consumer = match inner {
        Some(remote) => Consumer::remote(remote, &bridge.route.name, t.label(), after, deadline),
        None => {
            // This instance's copy of the feed knows what the cluster holds first.
            bridge.ready().await;
            let joined = bridge.join(Some(after), t.label());
            let mut c = joined.consumer;
            c.last_seq = after;
            c.queue_first(joined.backlog);
            c
        }
    };
    let closer = RemoteCloser::default();
    let interrupted = stream(down, bridge, opts, &closer, &mut consumer, out).await;
    r.ops
        .detach(consumer.last_seq, interrupted, closer.take())
        .await;
}

/// How a receiver writes frames.
struct Out<'a> {
    t: Transport,
    callback: &'a str,
    /// Bytes written so far (against `response_limit`).
    sent: usize,
    bytes_out: &'a prometheus::IntCounter,
}

impl Out<'_> {
    async fn frame<D: Downstream>(&mut self, down: &mut D, f: &[u8]) -> Result<(), ()> {
        let wrapped = frame::wrap(self.t, self.callback, f);
        self.sent += wrapped.len();
        self.bytes_out.inc_by(wrapped.len() as u64);
        down.write_response_body(Some(wrapped), false)
            .await
            .map_err(|_| ())
    }
}

/// Writes messages (and heartbeats) until the answer is complete: one frame when polling, up
/// to `response_limit` bytes when streaming, or the session's end. True when the client went
/// away before that (the session is then closed by the caller's detach).
async fn stream<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    s: &dyn Closer,
    consumer: &mut Consumer,
    out: &mut Out<'_>,
) -> bool {
    let label = out.t.label();
    let mut delivered = metrics::Delivered::new(&bridge.route.name, label);
    let (interrupted, by, close_code) =
        pump(down, bridge, opts, s, consumer, out, &mut delivered).await;
    let (messages_out, bytes_out) = delivered.totals();
    down.stream_ended(StreamEnd {
        transport: label,
        messages_out,
        bytes_out,
        close_code,
        closed_by: Some(by),
        ..StreamEnd::default()
    });
    interrupted
}

/// [`stream`]'s loop: whether the client went away first, who ended the answer, and the
/// close code it told.
async fn pump<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    s: &dyn Closer,
    consumer: &mut Consumer,
    out: &mut Out<'_>,
    delivered: &mut metrics::Delivered,
) -> (bool, EndedBy, Option<u16>) {
    let route = bridge.route.name.as_str();
    let label = out.t.label();
    // Who ends the answer when it ends by the gateway's choice (a poll answered, the
    // response limit reached) or a close frame.
    let mut ending = (EndedBy::Gateway, None);
    let drop_binary = bridge.spec.binary == BinaryPolicy::Drop;
    let mut beat = tokio::time::interval(opts.heartbeat);
    beat.reset();
    let closing = bridge.closing();
    tokio::pin!(closing);
    let mut watching = true;
    loop {
        let (f, last) = tokio::select! {
            d = consumer.next() => match d {
                Delivery::Message(m) => {
                    let burst = super::gather_burst(&m, consumer, delivered, |m| {
                        if m.binary && drop_binary {
                            metrics::DROPPED_MESSAGES
                                .with_label_values(&[route, label, "binary_policy"])
                                .inc();
                            return None;
                        }
                        Some(m.sockjs())
                    });
                    let Some(burst) = burst else { continue };
                    let mut items = burst.parts().to_vec();
                    if !out.t.streaming() {
                        // A poll answers once: messages arriving just behind the first (an
                        // echo of a burst the client sent) go in the same answer.
                        gather_more(consumer, &mut items, drop_binary, delivered).await;
                    }
                    let f = frame::array_frame(items.iter().map(|b| &b[..]));
                    (f, false)
                }
                Delivery::Dropped(_) => continue,
                Delivery::TooSlow => {
                    ending = (EndedBy::Gateway, Some(1008));
                    s.close(1008, TOO_SLOW, EndReason::Client);
                    (frame::close_frame(1008, TOO_SLOW), true)
                }
                // A shared feed reconnects its backend by itself: the session goes on.
                Delivery::BackendGone(_) if bridge.spec.fanout == Fanout::Shared => continue,
                Delivery::BackendGone(g) => {
                    ending = (EndedBy::Backend, Some(g.code));
                    s.close(g.code, &g.reason, EndReason::Backend);
                    (frame::close_frame(g.code, &g.reason), true)
                }
                Delivery::Closed => {
                    ending = (EndedBy::Gateway, Some(1001));
                    s.close(1001, "Route removed", EndReason::Shutdown);
                    (frame::close_frame(1001, "Route removed"), true)
                }
            },
            _ = beat.tick() => (Bytes::from_static(frame::HEARTBEAT), false),
            idle = down.read_body_or_idle(true), if watching => match idle {
                Err(_) => return (true, EndedBy::Client, None),
                Ok(_) => { watching = false; continue }
            },
            _ = &mut closing => {
                ending = (EndedBy::Gateway, Some(1001));
                s.close(1001, "Server shutting down", EndReason::Shutdown);
                (frame::close_frame(1001, "Server shutting down"), true)
            }
        };
        delivered.bytes(f.len());
        let written = tokio::select! {
            r = out.frame(down, &f) => r.map_err(|()| false),
            _ = consumer.stalled() => Err(true),
        };
        match written {
            Ok(()) => {}
            // A client that stopped reading is let go under the route's slow-consumer rule,
            // as one that fell behind the feed.
            Err(true) => {
                super::abandon(down);
                s.close(1008, TOO_SLOW, EndReason::Client);
                return (false, EndedBy::Gateway, Some(1008));
            }
            Err(false) => {
                super::abandon(down);
                return (true, EndedBy::Client, None);
            }
        }
        if last || !out.t.streaming() || out.sent >= opts.response_limit {
            return (false, ending.0, ending.1);
        }
    }
}

const TOO_SLOW: &str = "Too slow: fell behind the feed";

/// How long a new receiver waits for the one holding its session to leave before it is told
/// `2010` (see [`HeldSession::attach_within`]).
const RECEIVER_HANDOVER: Duration = Duration::from_millis(100);

/// How long a poll that found a message waits for more before it answers.
const POLL_GATHER: Duration = Duration::from_millis(10);

/// Adds the messages that arrive within [`POLL_GATHER`] to a poll's answer (up to a burst's
/// bytes). Anything but a message stays in the consumer for the next receiver.
async fn gather_more(
    consumer: &mut Consumer,
    items: &mut Vec<Bytes>,
    drop_binary: bool,
    delivered: &mut metrics::Delivered,
) {
    let until = tokio::time::Instant::now() + POLL_GATHER;
    let mut len: usize = items.iter().map(Bytes::len).sum();
    while len < super::BURST_BYTES && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
        while let Some(m) = consumer.ready() {
            if m.binary && drop_binary {
                continue;
            }
            delivered.message(m.received.elapsed());
            let q = m.sockjs();
            len += q.len();
            items.push(q);
        }
    }
}

/// `xhr_send` / `jsonp_send`: the client's messages, to the backend in order; answered once
/// the backend took them all.
async fn send<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    id: &str,
    t: Transport,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let (body, _charge, ctype) =
        match super::inbound::read_message_body(down, bridge, t.label()).await {
            Ok(b) => b,
            Err(r) => return r.send(down, route).await,
        };
    let payload = if t == Transport::JsonpSend {
        frame::jsonp_payload(&ctype, &body).unwrap_or_default()
    } else {
        body.to_vec()
    };
    // Checked before the session, as the reference server does.
    let messages = match frame::parse_messages(&payload, super::inbound::MAX_MESSAGES_PER_POST) {
        Ok(m) => m,
        Err(e @ frame::BodyError::TooMany) => {
            return fail(down, route, 413, "too_many_messages", e.message()).await
        }
        Err(e) => return fail(down, route, 500, "bad_body", e.message()).await,
    };
    let Some(s) = find(down, bridge, id).filter(|s| s.closed().is_none()) else {
        if bridge.sockjs.get(id).is_none() {
            match find_remote(down, bridge, id).await {
                Found::Here(r) => return send_remote(down, bridge, opts, t, r, messages).await,
                Found::Unknown => return super::session_unknown(route).send(down, route).await,
                Found::Refused | Found::Nowhere => {}
            }
        }
        return not_found(down, route).await;
    };
    let Some(uplink) = s.link.uplink.clone() else {
        return super::inbound::one_way(route).send(down, route).await;
    };
    metrics::MESSAGES
        .with_label_values(&[route, t.label(), "in"])
        .inc_by(messages.len() as u64);
    let messages = messages
        .into_iter()
        .map(|m| super::inbound::Inbound {
            payload: Bytes::from(m),
            binary: false,
        })
        .collect();
    if let Err(r) = super::inbound::deliver(&uplink, messages, route).await {
        return r.send(down, route).await;
    }
    sent(down, opts, t).await
}

/// `xhr_send` / `jsonp_send` for a session another instance owns: the messages are relayed
/// to it and answered as a local send once its backend took them (an ended session is 404).
async fn send_remote<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    t: Transport,
    r: RemoteHeld,
    messages: Vec<String>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let count = messages.len();
    metrics::MESSAGES
        .with_label_values(&[route, t.label(), "in"])
        .inc_by(count as u64);
    let messages = messages
        .into_iter()
        .map(|m| (Bytes::from(m), false))
        .collect();
    match r.ops.send(messages).await {
        Ok(()) => sent(down, opts, t).await,
        Err((0, crate::bridge::session::UplinkError::Ended)) => not_found(down, route).await,
        Err((i, e)) => {
            super::inbound::refused(i, count, e, route)
                .send(down, route)
                .await
        }
    }
}

/// The answer to a send whose messages the backend took.
async fn sent<D: Downstream>(down: &mut D, opts: &SockJs, t: Transport) -> pingora::Result<()> {
    let (status, body) = match t {
        Transport::JsonpSend => (200, Bytes::from_static(b"ok")),
        _ => (204, Bytes::new()),
    };
    let mut resp = head(
        down,
        status,
        "text/plain; charset=UTF-8",
        Cache::No,
        xhr_family(t),
    )?;
    with_cookie(down, opts, &mut resp);
    if status == 204 {
        return down.write_response_header(Box::new(resp), true).await;
    }
    answer(down, resp, body).await
}
