//! Client-side endpoints the gateway terminates itself: [`ws`], [`sse`], [`longpoll`], and
//! [`sockjs`] and [`engineio`] for the fallback libraries legacy clients use.
//! [`serve`] picks one per request on the route's single path:
//! `Upgrade: websocket` -> WebSocket; `Accept: text/event-stream` or `?transport=sse` -> SSE;
//! `?transport=poll` -> long-poll. A transport the route does not list gets 406 naming the ones
//! it does. On two-way routes, SSE and long-poll clients send with POST and end their session
//! with DELETE ([`inbound`]).

pub mod downstream;
pub mod engineio;
pub mod hixie;
pub mod inbound;
pub mod longpoll;
pub mod sockjs;
pub mod sse;
pub mod tunnel;
pub mod ws;

use crate::bridge::{Bridge, ClientInfo, Consumer, Message, OpenError, Source};
use crate::metrics;
use crate::policy::reject::Reject;
pub use crate::wire::http::query_param;
use bytes::Bytes;
pub use downstream::{Downstream, Respond, WithNotes};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    WebSocket,
    Sse,
    LongPoll,
}

impl ClientTransport {
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Sse => "sse",
            Self::LongPoll => "long_poll",
        }
    }
}

/// Which transport the request asks for, if any.
pub fn requested(req: &RequestHeader) -> Option<ClientTransport> {
    if crate::wire::ws::is_upgrade(req) {
        return Some(ClientTransport::WebSocket);
    }
    match query_param(req, "transport").as_deref() {
        Some("sse") => return Some(ClientTransport::Sse),
        Some("poll") => return Some(ClientTransport::LongPoll),
        Some("websocket") => return Some(ClientTransport::WebSocket),
        _ => {}
    }
    let accepts_sse = req
        .headers
        .get_all("accept")
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("text/event-stream")));
    accepts_sse.then_some(ClientTransport::Sse)
}

/// Messages already queued for a client are sent together, up to about this many bytes (and
/// [`BURST_PARTS`] messages) per write: one syscall for a burst instead of one per message.
pub const BURST_BYTES: usize = 32 * 1024;
pub const BURST_PARTS: usize = 64;

/// What one write to a streaming client carries: a lone message's shared encoding, or a burst
/// of them. Either way the parts are the messages' shared `Bytes`, written with one vectored
/// write: nothing is copied per client.
pub enum Burst {
    One(Bytes),
    Many(Vec<Bytes>),
}

impl Burst {
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Self::One(b) => std::slice::from_ref(b),
            Self::Many(v) => v,
        }
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.parts().iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(self, next: Bytes) -> Self {
        match self {
            Self::One(first) => {
                let mut v = Vec::with_capacity(8);
                v.push(first);
                v.push(next);
                Self::Many(v)
            }
            Self::Many(mut v) => {
                v.push(next);
                Self::Many(v)
            }
        }
    }
}

/// Gathers what to write for a message and any others already queued behind it. `frame` gives
/// a message's encoding, or None to skip it. Each message gathered is tallied in `delivered`
/// with its delivery latency (the caller counts the bytes it writes). None when every message
/// was skipped.
pub fn gather_burst(
    first: &Message,
    consumer: &mut Consumer,
    delivered: &mut metrics::Delivered,
    mut frame: impl FnMut(&Message) -> Option<Bytes>,
) -> Option<Burst> {
    let now = std::time::Instant::now();
    let mut take = |m: &Message| {
        let f = frame(m)?;
        delivered.message(now.saturating_duration_since(m.received));
        Some(f)
    };
    let mut burst = take(first).map(Burst::One);
    let mut len = burst.as_ref().map_or(0, |b| b.parts()[0].len());
    let mut parts = usize::from(burst.is_some());
    while len < BURST_BYTES && parts < BURST_PARTS {
        let Some(m) = consumer.ready() else { break };
        let Some(f) = take(&m) else { continue };
        len += f.len();
        parts += 1;
        burst = Some(match burst {
            None => Burst::One(f),
            Some(b) => b.push(f),
        });
    }
    delivered.tick(now);
    burst
}

/// Why a write to a streaming client did not complete.
#[derive(Debug)]
pub enum WriteFailed {
    /// The client went away.
    Gone,
    /// The client is stuck behind under the `disconnect` slow-consumer policy.
    TooSlow,
}

/// Writes one chunk to a streaming client. A client that stops reading is let go, per the
/// route's slow-consumer policy, instead of being waited for.
pub async fn write_chunk<D: Downstream>(
    down: &mut D,
    chunk: Bytes,
    consumer: &Consumer,
) -> Result<(), WriteFailed> {
    write_burst(down, &Burst::One(chunk), consumer).await
}

/// [`write_chunk`] for a burst: its parts go out as one piece of the body.
pub async fn write_burst<D: Downstream>(
    down: &mut D,
    burst: &Burst,
    consumer: &Consumer,
) -> Result<(), WriteFailed> {
    tokio::select! {
        biased;
        r = down.write_body_parts(burst.parts()) => r.map_err(|_| WriteFailed::Gone),
        _ = consumer.stalled() => Err(WriteFailed::TooSlow),
    }
}

/// Frames a streaming answer whose length is not known: chunked for HTTP/1.1; for an HTTP/1.0
/// client (which knows no chunks) the body ends when the connection closes. HTTP/2 frames it
/// itself.
pub fn unbounded_body<D: Downstream>(
    down: &mut D,
    resp: &mut ResponseHeader,
) -> pingora::Result<()> {
    if down.is_http2() {
        return Ok(());
    }
    if down.req_header().version == http::Version::HTTP_10 {
        down.set_keepalive(None);
        resp.insert_header("connection", "close")?;
        return Ok(());
    }
    resp.insert_header("transfer-encoding", "chunked")?;
    Ok(())
}

/// Prepares a streaming answer that is being dropped mid-body: pingora's finish step would
/// otherwise wait for a client that does not read to take the last chunk.
pub fn abandon<D: Downstream>(down: &mut D) {
    down.set_keepalive(None);
    down.set_write_timeout(Some(Duration::from_millis(1)));
}

/// Who the client is, for the headers a per-client backend connection carries.
pub fn client_info<D: Downstream>(down: &D) -> ClientInfo {
    ClientInfo {
        ip: down.client_ip(),
        tls: down.is_tls(),
    }
}

/// The answer while the cluster cannot say where a session this instance does not hold lives
/// (Redis is down): the owner may still serve it, so the client is asked to try again (on
/// another instance, behind a balancer) instead of being told the session is gone.
pub fn session_unknown(route: &str) -> Reject {
    Reject::new(
        503,
        "cluster_unavailable",
        format!("route {route}: the session may live on another instance, and the cluster cannot be asked now; try again"),
    )
    .header("retry-after", "1")
}

/// The answer for a client whose session could not be opened: 503 with `Retry-After` when the
/// route is at `max_clients` sessions, 429 when the client's address is at
/// `max_sessions_per_ip`, 502 when its backend could not be reached.
pub async fn session_refused<D: Downstream>(
    down: &mut D,
    route: &str,
    why: OpenError,
) -> pingora::Result<()> {
    let reject = match why {
        OpenError::Full(max) => Reject::new(
            503,
            "too_many_sessions",
            format!(
                "route {route} has its maximum of {max} sessions (max_clients); try again later"
            ),
        )
        .header("retry-after", "5"),
        OpenError::PerAddress(max) => Reject::new(
            429,
            "too_many_sessions_per_ip",
            format!(
                "at most {max} sessions per address on route {route} (max_sessions_per_ip); try again later"
            ),
        )
        .header("retry-after", "5"),
        OpenError::Unreachable(why) => Reject::new(
            502,
            "backend_unreachable",
            format!("route {route}: the backend could not be reached: {why}"),
        ),
        OpenError::Refused(status) => Reject::new(
            502,
            "backend_refused",
            format!("route {route}: the backend refused the session (HTTP {status})"),
        ),
    };
    reject.send(down, route).await
}

const DEMO_PAGE: &str = include_str!("demo.html");

async fn serve_page<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let req = down.req_header();
    if req.uri.path() != bridge.route.path
        && req.uri.path() != format!("{}/", bridge.route.path.trim_end_matches('/'))
    {
        return Reject::new(404, "no_route", format!("no route for {}", req.uri.path()))
            .send(down, route)
            .await;
    }
    if req.method != http::Method::GET && req.method != http::Method::HEAD {
        return Reject::new(405, "bad_method", "the demo page answers GET")
            .header("allow", "GET, HEAD")
            .send(down, route)
            .await;
    }
    let body = Bytes::from_static(DEMO_PAGE.as_bytes());
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("content-type", "text/html; charset=utf-8")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-cache")?;
    let head = req.method == http::Method::HEAD;
    down.write_response_header(Box::new(resp), head).await?;
    if !head {
        down.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Serves a request on a bridged route with the transport it asks for. Every step but the
/// chosen transport's own loop is boxed: the future of a connection is as large as its largest
/// state, and a streaming client carries it for hours.
pub async fn serve<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    // A route with channels: the channel the path names serves the request.
    let key = match bridge.channel_key(down.req_header().uri.path()) {
        Ok(None) => return serve_feed(down, bridge).await,
        Ok(Some(key)) => key,
        Err(why) => return Box::pin(channel_refused(down, bridge, why)).await,
    };
    if let Some(channel) = bridge.open_channel_named(&key.name) {
        return Box::pin(serve_feed(down, &channel)).await;
    }
    // Only a client the route's `auth:` admits may open a channel (each takes a place among
    // `max_channels`); the transport asks again for its own stream (cached when `cache` is set).
    let client = client_info(down);
    if let Some(reject) = refusal(
        bridge
            .authorize_for(down.req_header(), &client, Some(&key.name))
            .await,
    ) {
        return Box::pin(reject.send(down, &bridge.route.name)).await;
    }
    match bridge.open_channel(&key) {
        Ok(channel) => Box::pin(serve_feed(down, &channel)).await,
        Err(why) => Box::pin(channel_refused(down, bridge, why)).await,
    }
}

/// The refusal to send for an `auth:` verdict; None when the client may go on.
fn refusal(verdict: crate::bridge::Verdict) -> Option<Reject> {
    use crate::bridge::Verdict;
    match verdict {
        Verdict::Allowed => None,
        Verdict::Denied { status, challenge } => {
            let text = if status == 401 { "401 Unauthorized" } else { "403 Forbidden" };
            let reject = Reject::new(status, "auth_denied", format!("{text}: the authorization service refused this client"));
            Some(match challenge {
                Some(c) => reject.header("www-authenticate", c),
                None => reject,
            })
        }
        Verdict::Failed(_) => Some(
            Reject::new(
                503,
                "auth_unavailable",
                "503 Service Unavailable: the authorization service could not be asked; try again later",
            )
            .header("retry-after", "5"),
        ),
    }
}

/// Asks the route's `auth:` about this client before its stream starts: None when it may go
/// on, else the refusal to send.
pub(crate) async fn authorized<D: Downstream>(down: &D, bridge: &Bridge) -> Option<Reject> {
    if !bridge.has_auth() {
        return None;
    }
    let client = client_info(down);
    refusal(bridge.authorize(down.req_header(), &client).await)
}

/// Why a channel route did not serve: a path that names no channel (404), or a new channel
/// past `max_channels` (503, to try again later).
async fn channel_refused<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    why: crate::bridge::channels::ChannelError,
) -> pingora::Result<()> {
    use crate::bridge::channels::ChannelError;
    let route = bridge.route.name.as_str();
    let reject = match why {
        ChannelError::BadName(why) => {
            Reject::new(404, "bad_channel", format!("404 Not Found: {why}"))
        }
        ChannelError::Full(max) => Reject::new(
            503,
            "max_channels",
            format!("route {route} has its max_channels ({max}) open; try again later"),
        )
        .header("retry-after", "5"),
    };
    reject.send(down, route).await
}

/// Serves a request on a bridge with a feed of its own.
async fn serve_feed<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    if let Source::DemoPage = bridge.source {
        return Box::pin(serve_page(down, bridge)).await;
    }
    if engineio::requested(bridge, down.req_header()) {
        return Box::pin(engineio::serve(down, bridge)).await;
    }
    if let Some(url) = engineio::client_script(bridge, down.req_header()) {
        return Box::pin(engineio::client_redirect(down, url)).await;
    }
    if let Some(opts) = &bridge.spec.sockjs {
        if sockjs::requested(bridge, down.req_header()) {
            return Box::pin(sockjs::serve(down, bridge, opts)).await;
        }
    }
    let route = bridge.route.name.as_str();
    let offered = bridge.spec.clients;
    // Named in refusals only: built when one is sent, not for every request.
    let list = || {
        [
            (
                offered.sse,
                "sse (Accept: text/event-stream or ?transport=sse)",
            ),
            (offered.websocket, "websocket (Upgrade: websocket)"),
            (offered.long_poll, "long_poll (?transport=poll)"),
            (offered.sockjs, "sockjs (under the route's path)"),
            (offered.engineio, "engineio (?EIO=4 or ?EIO=3)"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, s)| *s)
        .collect::<Vec<_>>()
        .join(", ")
    };
    let Some(transport) = requested(down.req_header()) else {
        return Box::pin(
            Reject::new(
                406,
                "no_transport",
                format!("route {route} streams messages; ask for one of: {}", list()),
            )
            .send(down, route),
        )
        .await;
    };
    let allowed = match transport {
        ClientTransport::WebSocket => offered.websocket,
        ClientTransport::Sse => offered.sse,
        ClientTransport::LongPoll => offered.long_poll,
    };
    if !allowed {
        return Box::pin(
            Reject::new(
                406,
                "transport_not_offered",
                format!(
                    "route {route} does not offer {}; it offers: {}",
                    transport.label(),
                    list()
                ),
            )
            .send(down, route),
        )
        .await;
    }
    if transport != ClientTransport::WebSocket {
        let method = down.req_header().method.clone();
        let two_way = bridge.spec.two_way();
        let sessions = bridge.sessions().is_some();
        match method {
            http::Method::GET => {}
            http::Method::POST if two_way => {
                return Box::pin(inbound::post(down, bridge, transport.label())).await
            }
            http::Method::DELETE if sessions => {
                return Box::pin(inbound::delete(down, bridge)).await
            }
            _ => {
                let allow = bridge.methods();
                return Box::pin(
                    Reject::new(
                        405,
                        "bad_method",
                        format!("{} clients of route {route} use {allow}", transport.label()),
                    )
                    .header("allow", allow)
                    .send(down, route),
                )
                .await;
            }
        }
    }
    if let Some(reject) = authorized(down, bridge).await {
        return Box::pin(reject.send(down, route)).await;
    }
    // Each boxed on its own: a client holds the state of its own transport, not of the
    // largest of the three.
    match transport {
        ClientTransport::WebSocket => Box::pin(ws::serve(down, bridge)).await,
        ClientTransport::Sse => Box::pin(sse::serve(down, bridge)).await,
        ClientTransport::LongPoll => Box::pin(longpoll::serve(down, bridge)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn picks_transport_from_headers_and_query() {
        assert_eq!(
            requested(&req("/c", &[("upgrade", "websocket")])),
            Some(ClientTransport::WebSocket)
        );
        assert_eq!(
            requested(&req("/c", &[("accept", "text/event-stream")])),
            Some(ClientTransport::Sse)
        );
        assert_eq!(
            requested(&req("/c?transport=sse", &[])),
            Some(ClientTransport::Sse)
        );
        assert_eq!(
            requested(&req("/c?a=1&transport=poll&cursor=3", &[])),
            Some(ClientTransport::LongPoll)
        );
        assert_eq!(requested(&req("/c", &[("accept", "text/html")])), None);
    }
}
