//! Engine.IO (revisions 3 and 4) on a bridged route, for engine.io-client and socket.io-client
//! 1 to 4: the route's path is the Engine.IO path. Framing is [`crate::wire::engineio`]'s;
//! sessions are [`crate::bridge::engineio`]'s held sessions.
//!
//! ```text
//! GET  path/?EIO=4&transport=polling               handshake: the open packet, a new session
//! GET  path/?EIO=4&transport=polling&sid=S         a poll: messages and the gateway's packets
//! POST path/?EIO=4&transport=polling&sid=S         packets: messages to the backend in order
//! GET  path/?EIO=4&transport=websocket             a session on a WebSocket from the start
//! GET  path/?EIO=4&transport=websocket&sid=S       the upgrade: 2probe/3probe, noop to polls, 5
//! (&j=N with EIO=3: JSONP polling; &b64=1: binary as base64)
//! ```
//!
//! Each message packet is one backend message (text or binary), both ways. A missing or other
//! `EIO`, an unknown transport, an unknown or ended session, a second poll or POST while one is
//! pending, a poll after the upgrade and any malformed packet get engine.io's 400 with its JSON
//! error; the last three also end the session, as engine.io does.

use super::{Downstream, Respond};
use crate::access_log::{Closer as EndedBy, StreamEnd};
use crate::bridge::engineio::{self as eio, Eio, EioSession, Phase};
use crate::bridge::held::{Attach, Owner, Terms};
use crate::bridge::session::{EndReason, Outgoing, BYTE_BUDGET_MESSAGES};
use crate::bridge::{Bridge, Consumer, Delivery, Elsewhere, Message};
use crate::config::Fanout;
use crate::metrics;
use crate::policy::reject::Reject;
use crate::wire::engineio::{self as frame, ErrorCode, Packet, Version};
use crate::wire::ws;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// The transport labels of a route's Engine.IO clients (plain, or carrying Socket.IO).
fn polling(bridge: &Bridge) -> &'static str {
    if bridge.spec.clients.socketio {
        "socketio-polling"
    } else {
        "engineio-polling"
    }
}

fn websocket_label(bridge: &Bridge) -> &'static str {
    if bridge.spec.clients.socketio {
        "socketio-websocket"
    } else {
        "engineio-websocket"
    }
}

/// A poll that found a message answers once no other followed it for this long: what a
/// backend sends in a burst (the echo of a POST's several packets) goes in one answer.
const POLL_GATHER: Duration = Duration::from_millis(10);

/// The longest a poll's answer is held gathering messages.
const POLL_GATHER_MAX: Duration = Duration::from_millis(100);

/// How long an upgrading WebSocket may take from its `101` to the client's `5` (engine.io's
/// `upgradeTimeout`); the session stays on polling if it does not finish.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a session may go without a receiver however its heartbeat goes.
const IDLE_BACKSTOP: Duration = Duration::from_secs(3600);

/// How long a poll that arrives during an upgrade waits to see whether it completes.
const PROBING_GRACE: Duration = Duration::from_millis(50);

/// A poll refused for a session that moved to its WebSocket less than this ago is answered
/// only this long after the move.
const UPGRADE_SETTLE: Duration = Duration::from_millis(30);

/// How long the upgraded WebSocket waits for the poll that holds the session to answer its
/// noop and leave.
const HANDOVER: Duration = Duration::from_secs(2);

/// True when the request is Engine.IO's: at the route's path (or with a trailing slash), with
/// an `EIO` parameter, or any request there when the route offers no other transport at its
/// path (so that engine.io's own errors answer a client that sent no `EIO`).
pub fn requested(bridge: &Bridge, req: &RequestHeader) -> bool {
    let c = bridge.spec.clients;
    if !c.engine() {
        return false;
    }
    let path = req.uri.path();
    let base = bridge.base(path).trim_end_matches('/');
    let at_base = path == base || path.len() == base.len() + 1 && path.ends_with('/');
    at_base
        && (super::query_param(req, "EIO").is_some()
            || !(c.websocket || c.sse || c.long_poll || c.sockjs))
}

/// Where socket.io-client is for a page that asks a `socketio` route for it
/// (`PATH/socket.io.js` or `PATH/socket.io.min.js`, where a socket.io server serves it).
pub fn client_script<'b>(bridge: &'b Bridge, req: &RequestHeader) -> Option<&'b str> {
    let opts = bridge.spec.socketio.as_ref()?;
    let path = req.uri.path();
    let base = bridge.base(path).trim_end_matches('/');
    let name = path.strip_prefix(base)?;
    let get = req.method == http::Method::GET || req.method == http::Method::HEAD;
    (get && matches!(name, "/socket.io.js" | "/socket.io.min.js"))
        .then_some(opts.client_url.as_str())
}

/// Sends a page to `url` for socket.io-client.
pub async fn client_redirect<D: Downstream>(down: &mut D, url: &str) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(302, Some(3))?;
    resp.insert_header("location", url)?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("content-length", "0")?;
    down.write_response_header(Box::new(resp), true).await
}

pub async fn serve<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let req = down.req_header();
    let Some(v) = Version::parse(super::query_param(req, "EIO").as_deref()) else {
        return fail(down, route, ErrorCode::UnsupportedProtocolVersion).await;
    };
    let sid = super::query_param(req, "sid").map(String::from);
    let method = req.method.clone();
    match super::query_param(req, "transport").as_deref() {
        Some("polling") => {}
        Some("websocket") if ws::is_upgrade(req) && method == http::Method::GET => {
            return match sid {
                None => Box::pin(websocket(down, bridge, v, None)).await,
                Some(sid) => Box::pin(websocket(down, bridge, v, Some(&sid))).await,
            };
        }
        Some("websocket") => return fail(down, route, ErrorCode::BadRequest).await,
        _ => return fail(down, route, ErrorCode::UnknownTransport).await,
    }
    let jsonp = super::query_param(req, "j").map(String::from);
    if jsonp.as_deref().is_some_and(|j| !frame::jsonp_index_ok(j)) {
        return fail(down, route, ErrorCode::BadRequest).await;
    }
    if jsonp.is_some() && bridge.spec.forwards_credentials() {
        // A JSONP poll is a `<script>` any page may load in a visitor's name, its answer read
        // by that page: not on a route that hands the visitor's cookies to its backend (as
        // SockJS's JSONP is off there unless listed).
        return fail(down, route, ErrorCode::Forbidden).await;
    }
    match (sid, method) {
        (None, http::Method::GET) => Box::pin(handshake(down, bridge, v, jsonp)).await,
        (None, _) => fail(down, route, ErrorCode::BadHandshakeMethod).await,
        (Some(sid), http::Method::GET) => Box::pin(poll(down, bridge, &sid, jsonp)).await,
        (Some(sid), http::Method::POST) => Box::pin(post(down, bridge, &sid, jsonp)).await,
        (Some(_), _) => fail(down, route, ErrorCode::BadRequest).await,
    }
}

/// engine.io's 400 (403 for `Forbidden`) with its JSON error, counted as a refusal.
async fn fail<D: Downstream>(down: &mut D, route: &str, code: ErrorCode) -> pingora::Result<()> {
    let reason = match code {
        ErrorCode::UnknownTransport => "engineio_transport",
        ErrorCode::UnknownSid => "engineio_unknown_sid",
        ErrorCode::BadHandshakeMethod => "engineio_handshake_method",
        ErrorCode::BadRequest => "engineio_bad_request",
        ErrorCode::Forbidden => "engineio_forbidden",
        ErrorCode::UnsupportedProtocolVersion => "engineio_version",
    };
    // engine.io answers its `Forbidden` with 403, every other refusal with 400.
    let status = if code == ErrorCode::Forbidden {
        403
    } else {
        400
    };
    Reject::new(status, reason, code.message()).count(route);
    let body = code.body();
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("content-length", body.len().to_string())?;
    down.write_answer(Box::new(resp), body).await
}

/// The settings a route gives its Engine.IO sessions.
struct Settings {
    interval: Duration,
    timeout: Duration,
    max_payload: u64,
}

fn settings(bridge: &Bridge) -> Settings {
    let k = &bridge.route.keepalive;
    Settings {
        interval: k.ping_interval,
        timeout: k.pong_timeout,
        max_payload: bridge.route.limits.max_message,
    }
}

fn owner<D: Downstream>(down: &D) -> Owner {
    let origin = down
        .req_header()
        .headers
        .get(http::header::ORIGIN)
        .and_then(|o| o.to_str().ok());
    Owner::new(down.client_ip(), origin)
}

/// Opens a session for a handshake (polling, or a WebSocket without a sid), with its
/// heartbeat; the refusal was answered when it is None.
async fn open<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    v: Version,
    label: &'static str,
    phase: Phase,
) -> pingora::Result<Option<(Arc<EioSession>, frame::Packet)>> {
    let route = bridge.route.name.as_str();
    if let Some(r) = super::authorized(down, bridge).await {
        r.send(down, route).await?;
        return Ok(None);
    }
    let set = settings(bridge);
    let req = down.req_header();
    let binary_ok = v == Version::V3
        && super::query_param(req, "b64").is_none()
        && super::query_param(req, "j").is_none();
    let terms = Terms {
        // The heartbeat decides when a session is gone (a v3 client may ping by POST and
        // never poll); this is only the backstop.
        idle: IDLE_BACKSTOP,
        closed_linger: eio::CLOSED_LINGER,
        gauge: metrics::ENGINEIO_SESSIONS.with_label_values(&[route]),
        cluster: None,
    };
    let sid = eio::new_sid();
    let client = super::client_info(down);
    // A Socket.IO connection's feed is its engine, which opens a backend session per
    // namespace the client joins.
    let own_feed = (bridge.spec.clients.socketio && !mapped(bridge)).then(|| {
        let protocol = match v {
            Version::V3 => crate::wire::socketio::Protocol::V4,
            Version::V4 => crate::wire::socketio::Protocol::V5,
        };
        let engine =
            crate::bridge::socketio::open(bridge, req, &client, label, protocol, IDLE_BACKSTOP);
        crate::bridge::held::Feed::of_session(
            engine,
            label,
            crate::bridge::write_deadline(&bridge.route.keepalive),
        )
    });
    let opened = bridge
        .engineio
        .open(
            bridge,
            &sid,
            owner(down),
            req,
            &client,
            label,
            &terms,
            Eio::new(v, binary_ok, phase, set.interval, set.timeout),
            own_feed,
        )
        .await;
    let s = match opened {
        Ok(s) => s,
        Err(why) => {
            super::session_refused(down, route, why).await?;
            return Ok(None);
        }
    };
    eio::heartbeat(&s, route.to_owned());
    if let Some(c) = bridge.engine_cluster() {
        // Reachable from every instance: a poll or send that lands elsewhere is relayed here.
        let held = Arc::downgrade(&s);
        let alive = move || held.upgrade().is_some_and(|s| s.closed().is_none());
        c.opened(route, &sid, Box::new(alive)).await;
    }
    if mapped(bridge) && v == Version::V3 {
        // Socket.IO 2 clients are joined to `/` by the server.
        let joined = crate::wire::socketio::connected(protocol(v), "/", "");
        s.proto.push(Packet::text(Bytes::from(joined)));
    }
    let open = frame::open_packet(
        &sid,
        phase == Phase::Polling,
        set.interval.as_millis(),
        set.timeout.as_millis(),
        set.max_payload,
    );
    Ok(Some((s, open)))
}

async fn handshake<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    v: Version,
    jsonp: Option<String>,
) -> pingora::Result<()> {
    let Some((s, open)) = open(down, bridge, v, polling(bridge), Phase::Polling).await? else {
        return Ok(());
    };
    payload_answer(down, bridge, &s.proto, jsonp.as_deref(), &[open]).await
}

/// The session `sid` if this client may use it (ended or not).
fn find<D: Downstream>(down: &D, bridge: &Bridge, sid: &str) -> Option<Arc<EioSession>> {
    let s = bridge.engineio.get(sid)?;
    if !s.owner().admits(&owner(down)) {
        metrics::refused(&bridge.route.name, "engineio_session_owner");
        return None;
    }
    Some(s)
}

/// The session `sid` if this client may use it and it has not ended (a client that missed
/// its heartbeat ends it now, whether or not the heartbeat's timer ran yet).
fn find_open<D: Downstream>(down: &D, bridge: &Bridge, sid: &str) -> Option<Arc<EioSession>> {
    find(down, bridge, sid).filter(|s| !eio::expired(s, &bridge.route.name))
}

/// Writes a polling answer: the packets as one payload (text, v3's binary form, or a JSONP
/// call).
async fn payload_answer<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    e: &Eio,
    jsonp: Option<&str>,
    packets: &[Packet],
) -> pingora::Result<()> {
    let (body, binary) = frame::encode_payload(e.version, packets, e.binary_ok);
    let (body, ctype) = match jsonp {
        Some(j) => (frame::jsonp(j, &body), "text/javascript; charset=UTF-8"),
        None if binary => (body, "application/octet-stream"),
        None => (body, "text/plain; charset=UTF-8"),
    };
    metrics::BYTES
        .with_label_values(&[bridge.route.name.as_str(), polling(bridge), "out"])
        .inc_by(body.len() as u64);
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header("content-type", ctype)?;
    resp.insert_header("cache-control", "no-store")?;
    if jsonp.is_some() {
        // A JSONP answer is a script only where a page asked for one.
        resp.insert_header("x-content-type-options", "nosniff")?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    down.write_answer(Box::new(resp), body).await
}

fn packet_len(p: &Packet) -> usize {
    match p {
        Packet::Message { data, .. } => data.len(),
        _ => 1,
    }
}

/// A shared feed on a `socketio` route: its messages are Socket.IO events on `/`, mapped here
/// (a per-client route's Socket.IO engine maps its own).
fn mapped(bridge: &Bridge) -> bool {
    bridge.spec.clients.socketio && bridge.sessions().is_none()
}

fn protocol(v: Version) -> crate::wire::socketio::Protocol {
    match v {
        Version::V3 => crate::wire::socketio::Protocol::V4,
        Version::V4 => crate::wire::socketio::Protocol::V5,
    }
}

/// A message as the packets its client gets.
fn packets_of(bridge: &Bridge, m: &Message) -> Vec<Packet> {
    if !mapped(bridge) {
        return vec![Packet::Message {
            data: m.payload.clone(),
            binary: m.binary,
        }];
    }
    let (text, attachment) = crate::bridge::socketio::feed_packet(m);
    let mut out = vec![Packet::text(Bytes::from(text))];
    if let Some(a) = attachment {
        out.push(Packet::Message {
            data: a,
            binary: true,
        });
    }
    out
}

/// A message as its WebSocket client's frames: a text message's encoded once for every
/// client of the feed.
fn frames_of(bridge: &Bridge, v: Version, m: &Message) -> Bytes {
    let encode = |m: &Message| {
        let frames: Vec<Bytes> = packets_of(bridge, m)
            .iter()
            .map(|p| ws_frame(v, p))
            .collect();
        match &frames[..] {
            [one] => one.clone(),
            _ => Bytes::from(frames.concat()),
        }
    };
    if m.binary {
        encode(m)
    } else {
        m.engine_frames(encode)
    }
}

/// What a client's message packet carries to the backend: itself, or on a mapped feed what
/// the Socket.IO mapping makes of it (its CONNECT is answered here, through `s`). Err when
/// the Socket.IO packet is invalid.
fn inbound(
    bridge: &Bridge,
    s: &EioSession,
    data: Bytes,
    binary: bool,
) -> Result<Option<(Bytes, bool)>, ()> {
    if !mapped(bridge) || binary {
        return Ok(Some((data, binary)));
    }
    use crate::bridge::socketio::{feed_client_packet, FromClient};
    let text = std::str::from_utf8(&data).map_err(|_| ())?;
    match feed_client_packet(protocol(s.proto.version), text).map_err(|_| ())? {
        FromClient::ToBackend(t) => Ok(Some((Bytes::from(t), false))),
        FromClient::Answer(a) => {
            s.proto.push(Packet::text(Bytes::from(a)));
            Ok(None)
        }
        FromClient::Nothing => Ok(None),
    }
}

/// A poll: waits for messages or the gateway's own packets, then answers them all at once.
async fn poll<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sid: &str,
    jsonp: Option<String>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let Some(s) = find(down, bridge, sid) else {
        if let Some(relayed) = relay(down, bridge, sid).await {
            return relayed;
        }
        return fail(down, route, ErrorCode::UnknownSid).await;
    };
    if eio::expired(&s, route) {
        // Ended: its last packets, if a poll has not taken them yet (the noop answering a
        // close that overtook this poll), else unknown.
        let last = s.proto.take_control();
        if last.is_empty() {
            return fail(down, route, ErrorCode::UnknownSid).await;
        }
        return payload_answer(down, bridge, &s.proto, jsonp.as_deref(), &last).await;
    }
    if s.proto.phase() == Phase::Probing {
        // A poll sent while the upgrade is under way. The client's `5` may be on its way on
        // the WebSocket, after which polls are refused; else the poll is answered with a noop
        // at once (engine.io's upgrade check does so every 100 ms): a client that polled
        // again before it saw `3probe` waits for this poll to end before it sends `5`, and
        // the messages stay for the WebSocket.
        let until = tokio::time::Instant::now() + PROBING_GRACE;
        while s.proto.phase() == Phase::Probing && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if s.proto.phase() == Phase::Probing {
            let mut packets: Vec<Packet> = s.proto.take_control();
            packets.retain(|p| *p != Packet::Noop);
            packets.push(Packet::Noop);
            return payload_answer(down, bridge, &s.proto, jsonp.as_deref(), &packets).await;
        }
    }
    if s.proto.phase() == Phase::WebSocket {
        // A poll right behind the upgrade (sent with the `5`, as no client does but the
        // protocol's suite): refused once what the WebSocket sent just before (the `3probe`)
        // has had a moment to arrive first.
        if let Some(left) = s
            .proto
            .upgraded_for()
            .and_then(|d| UPGRADE_SETTLE.checked_sub(d))
        {
            tokio::time::sleep(left).await;
        }
        return fail(down, route, ErrorCode::BadRequest).await;
    }
    let mut consumer = match s.attach() {
        Attach::Opened(c) | Attach::Resumed(c) => c,
        Attach::Busy => {
            // Two polls at once: engine.io ends the session, the first poll answered `1`.
            s.proto.push(Packet::Close);
            eio::end(&s, 1002, "overlapping polls", EndReason::Client);
            return fail(down, route, ErrorCode::BadRequest).await;
        }
        Attach::Closed(..) => return fail(down, route, ErrorCode::UnknownSid).await,
    };
    down.set_read_timeout(None);
    let _open = metrics::OpenConnection::new(route, polling(bridge));
    let mut delivered = metrics::Delivered::new(route, polling(bridge));
    let packets = match gather(down, bridge, &s, &mut consumer, &mut delivered).await {
        Some(p) => p,
        None => {
            // The client left before its answer: engine.io ends the session.
            s.detach(consumer, false);
            eio::end(&s, 1002, "poll interrupted", EndReason::Client);
            return Ok(());
        }
    };
    let closes = packets.contains(&Packet::Close);
    let wrote = payload_answer(down, bridge, &s.proto, jsonp.as_deref(), &packets).await;
    s.detach(consumer, false);
    if closes || wrote.is_err() {
        eio::end(&s, 1000, "closed", EndReason::Client);
    }
    let (messages_out, bytes_out) = delivered.totals();
    down.stream_ended(StreamEnd {
        transport: polling(bridge),
        messages_out,
        bytes_out,
        closed_by: Some(EndedBy::Gateway),
        ..StreamEnd::default()
    });
    wrote
}

/// What a poll answers: the gateway's packets queued, and the messages that arrived (with
/// those right behind them); a close when the session ends. None when the client left first.
async fn gather<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    s: &Arc<EioSession>,
    consumer: &mut Consumer,
    delivered: &mut metrics::Delivered,
) -> Option<Vec<Packet>> {
    let closing = bridge.closing();
    tokio::pin!(closing);
    let mut watching = true;
    loop {
        let signal = s.proto.signal.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        let mut packets = s.proto.take_control();
        if !packets.is_empty() {
            packets.extend(ready(bridge, consumer, delivered));
            return Some(packets);
        }
        if s.closed().is_some() {
            return Some(vec![Packet::Close]);
        }
        tokio::select! {
            _ = &mut signal => {}
            d = consumer.next() => match d {
                Delivery::Message(m) => {
                    delivered.message(m.received.elapsed());
                    let mut packets = packets_of(bridge, &m);
                    // More may be right behind it (the echo of a POST's other packets): gather
                    // until the feed is quiet for a moment, within a bound.
                    let until = tokio::time::Instant::now() + POLL_GATHER_MAX;
                    let mut bytes = m.payload.len();
                    while bytes < super::BURST_BYTES && tokio::time::Instant::now() < until {
                        tokio::time::sleep(POLL_GATHER).await;
                        let more = ready(bridge, consumer, delivered);
                        if more.is_empty() {
                            break;
                        }
                        bytes += more.iter().map(packet_len).sum::<usize>();
                        packets.extend(more);
                    }
                    packets.extend(s.proto.take_control());
                    return Some(packets);
                }
                Delivery::Dropped(_) => {}
                Delivery::BackendGone(_) if bridge.spec.fanout == Fanout::Shared => {}
                Delivery::BackendGone(_) if s.closed().is_some() => {
                    return Some(s.proto.take_control());
                }
                Delivery::BackendGone(_) | Delivery::TooSlow | Delivery::Closed => {
                    return Some(vec![Packet::Close]);
                }
            },
            idle = down.read_body_or_idle(true), if watching => match idle {
                Err(_) => return None,
                Ok(_) => watching = false,
            },
            _ = &mut closing => return Some(vec![Packet::Close]),
        }
    }
}

/// The messages already queued, as packets (up to a burst's bytes).
fn ready(
    bridge: &Bridge,
    consumer: &mut Consumer,
    delivered: &mut metrics::Delivered,
) -> Vec<Packet> {
    let mut out = Vec::new();
    let mut len = 0;
    while len < super::BURST_BYTES {
        let Some(m) = consumer.ready() else { break };
        delivered.message(m.received.elapsed());
        len += m.payload.len();
        out.extend(packets_of(bridge, &m));
    }
    out
}

/// Gives back the session's POST slot however the POST ends.
struct Posting<'a>(&'a Eio);

impl Drop for Posting<'_> {
    fn drop(&mut self) {
        self.0.end_post();
    }
}

/// A POST: the client's packets, its messages to the backend in order; `ok` once the backend
/// took them.
async fn post<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sid: &str,
    jsonp: Option<String>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let Some(s) = find_open(down, bridge, sid) else {
        if bridge.engineio.get(sid).is_none() {
            if let Some(relayed) = relay(down, bridge, sid).await {
                return relayed;
            }
        }
        return fail(down, route, ErrorCode::UnknownSid).await;
    };
    if s.proto.phase() == Phase::WebSocket {
        return fail(down, route, ErrorCode::BadRequest).await;
    }
    if !s.proto.start_post() {
        eio::end(&s, 1002, "overlapping posts", EndReason::Client);
        return fail(down, route, ErrorCode::BadRequest).await;
    }
    // The slot is given back before the answer goes out: the client's next POST may follow
    // the answer at once.
    let sent = {
        let _posting = Posting(&s.proto);
        take_post(down, bridge, &s, jsonp).await
    };
    match sent {
        Sent::Ok => sent_ok(down).await,
        Sent::Refused(r) => r.send(down, route).await,
    }
}

/// How a POST is answered.
enum Sent {
    Ok,
    Refused(Reject),
}

/// A POST's packets, read and handled while the session's POST slot is held.
async fn take_post<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    s: &Arc<EioSession>,
    jsonp: Option<String>,
) -> Sent {
    let route = bridge.route.name.as_str();
    let (body, _charge, ctype) =
        match super::inbound::read_message_body(down, bridge, polling(bridge)).await {
            Ok(b) => b,
            Err(r) => return Sent::Refused(r),
        };
    let media = ctype.split(';').next().unwrap_or("").trim();
    // JSONP sends are forms (`d=`); other bodies are the payload, whatever their type says.
    let payload = match jsonp {
        Some(_) => frame::jsonp_send_payload(&body),
        None => Some(body),
    };
    let binary_body = media.eq_ignore_ascii_case("application/octet-stream");
    let v = s.proto.version;
    let packets = payload
        .ok_or(frame::Invalid::Malformed(
            "a JSONP send without its d field",
        ))
        .and_then(|p| {
            frame::decode_payload(v, p, binary_body, super::inbound::MAX_MESSAGES_PER_POST)
        });
    let packets = match packets {
        Ok(p) => p,
        Err(frame::Invalid::TooMany) => {
            return Sent::Refused(Reject::new(
                413,
                "body_too_large",
                "more packets than a POST may carry",
            ));
        }
        Err(frame::Invalid::Malformed(_)) => {
            // engine.io's answer: the send is taken (`ok`) and the session closed.
            metrics::refused(route, "engineio_invalid_packet");
            eio::end(s, 1002, "invalid packet", EndReason::Client);
            return Sent::Ok;
        }
    };
    let mut messages = Vec::new();
    let mut closed = false;
    for p in packets {
        if v == Version::V3 {
            s.proto.heard(false);
        }
        match (v, p) {
            (_, Packet::Message { data, binary }) => match inbound(bridge, s, data, binary) {
                Ok(Some((payload, binary))) => {
                    messages.push(super::inbound::Inbound { payload, binary })
                }
                Ok(None) => {}
                Err(()) => {
                    metrics::refused(route, "socketio_invalid_packet");
                    eio::end(s, 1002, "invalid packet", EndReason::Client);
                    return Sent::Ok;
                }
            },
            (Version::V3, Packet::Ping(d)) => s.proto.push(Packet::Pong(d)),
            (Version::V4, Packet::Pong(_)) => s.proto.heard(true),
            (_, Packet::Close) => {
                closed = true;
                break;
            }
            (_, Packet::Noop) => {}
            // A ping in the wrong direction, an upgrade on polling: as a malformed packet.
            _ => {
                metrics::refused(route, "engineio_invalid_packet");
                eio::end(s, 1002, "invalid packet", EndReason::Client);
                return Sent::Ok;
            }
        }
    }
    if !messages.is_empty() {
        metrics::MESSAGES
            .with_label_values(&[route, polling(bridge), "in"])
            .inc_by(messages.len() as u64);
        let Some(uplink) = s.link.uplink.clone() else {
            return Sent::Refused(super::inbound::one_way(route));
        };
        if let Err(r) = super::inbound::deliver(&uplink, messages, route).await {
            return Sent::Refused(r);
        }
    }
    if closed {
        // The client's close: a pending poll is answered with a noop, the session ends.
        s.proto.push(Packet::Noop);
        eio::end(s, 1000, "closed by the client", EndReason::Client);
    }
    Sent::Ok
}

/// A poll or send for a session another instance of the cluster holds: relayed to it whole
/// and answered with its answer (see `cluster::engine`). None when no other instance holds it.
async fn relay<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sid: &str,
) -> Option<pingora::Result<()>> {
    let c = bridge.engine_cluster()?;
    let route = bridge.route.name.as_str();
    let node = match c.owner_of(route, sid).await {
        Elsewhere::Found(node) => node,
        Elsewhere::Nowhere => return None,
        Elsewhere::Unknown => return Some(super::session_unknown(route).send(down, route).await),
    };
    let post = down.req_header().method == http::Method::POST;
    let body = if post {
        match super::inbound::read_message_body(down, bridge, polling(bridge)).await {
            Ok((body, _charge, _)) => body,
            Err(r) => return Some(r.send(down, route).await),
        }
    } else {
        Bytes::new()
    };
    let req = down.req_header();
    let headers = ["origin", "content-type", "referer"]
        .iter()
        .filter_map(|name| {
            let v = req.headers.get(*name)?.to_str().ok()?;
            Some((name.to_string(), v.to_owned()))
        })
        .collect();
    let relayed = eio::Relayed {
        route: route.to_owned(),
        method: req.method.as_str().to_owned(),
        uri: req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned(),
        headers,
        client_ip: down.client_ip(),
        tls: down.is_tls(),
        body,
    };
    // A poll is held up to a ping interval (the owner's ping or the client's answers it).
    let set = settings(bridge);
    let wait = set.interval + set.timeout + Duration::from_secs(5);
    down.set_read_timeout(None);
    let Some(answer) = c.relay(&node, relayed, wait).await else {
        return Some(fail(down, route, ErrorCode::UnknownSid).await);
    };
    Some(relayed_answer(down, answer).await)
}

async fn relayed_answer<D: Downstream>(down: &mut D, a: eio::RelayAnswer) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(a.status, Some(a.headers.len() + 1))?;
    for (k, v) in a.headers {
        if !k.eq_ignore_ascii_case("content-length") {
            resp.insert_header(k, v)?;
        }
    }
    resp.insert_header("content-length", a.body.len().to_string())?;
    down.write_answer(Box::new(resp), a.body).await
}

/// Serves a request another instance relayed here (see [`relay`]) through the route's usual
/// entry, and gives its answer.
pub async fn serve_relayed(bridge: &Bridge, r: eio::Relayed) -> eio::RelayAnswer {
    let failed = || eio::RelayAnswer {
        status: 400,
        headers: vec![("content-type".into(), "application/json".into())],
        body: ErrorCode::UnknownSid.body(),
    };
    let Ok(mut req) = RequestHeader::build(r.method.as_str(), r.uri.as_bytes(), None) else {
        return failed();
    };
    for (k, v) in r.headers {
        let _ = req.insert_header(k, v);
    }
    let mut down = super::downstream::Relayed::new(req, r.client_ip, r.tls, r.body);
    if super::serve(&mut down, bridge).await.is_err() {
        return failed();
    }
    let Some(head) = down.head.take() else {
        return failed();
    };
    let headers = head
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    eio::RelayAnswer {
        status: head.status.as_u16(),
        headers,
        body: down.out.freeze(),
    }
}

/// The answer to a send.
async fn sent_ok<D: Downstream>(down: &mut D) -> pingora::Result<()> {
    let body = Bytes::from_static(b"ok");
    let mut resp = ResponseHeader::build(200, Some(3))?;
    // engine.io's own answer to a send.
    resp.insert_header("content-type", "text/html")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("content-length", "2")?;
    down.write_answer(Box::new(resp), body).await
}

/// What ended a WebSocket session's loop, and what the client is told.
enum WsEnd {
    /// The client's side ended (its close, its `1`, a broken stream): answer its close.
    Client,
    /// The gateway ends it: a `1` packet, then a close frame with this code.
    Close(u16, &'static str),
    /// The session ended elsewhere (a missed heartbeat): a close frame only.
    Ended,
    /// The client broke the protocol: a close frame with this code.
    Violation(u16, &'static str),
}

/// A WebSocket: a new session (`sid` None), or the upgrade of a polling one.
async fn websocket<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    v: Version,
    sid: Option<&str>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let accept = match ws::accept_key(down.req_header()) {
        Ok(a) => a,
        Err(h) => return Box::pin(Reject::from(h).send(down, route)).await,
    };
    let (s, open) = match sid {
        None => match open(down, bridge, v, websocket_label(bridge), Phase::WebSocket).await? {
            Some((s, open)) => (s, Some(open)),
            None => return Ok(()),
        },
        Some(sid) => {
            let Some(s) = find_open(down, bridge, sid) else {
                return fail(down, route, ErrorCode::UnknownSid).await;
            };
            if s.proto.version != v {
                return fail(down, route, ErrorCode::BadRequest).await;
            }
            if !s.proto.advance(Phase::Polling, Phase::Probing) {
                // Upgrading or upgraded already: as engine.io, the WebSocket is accepted and
                // closed at once.
                metrics::refused(route, "engineio_second_upgrade");
                Box::pin(down.write_response_header(switching(accept)?, false)).await?;
                close_ws(down, WsEnd::Ended).await;
                return Ok(());
            }
            (s, None)
        }
    };
    if let Err(e) = Box::pin(down.write_response_header(switching(accept)?, false)).await {
        s.proto.advance(Phase::Probing, Phase::Polling);
        return Err(e);
    }
    down.set_read_timeout(None);
    down.release_request();
    let _open = metrics::OpenConnection::new(route, websocket_label(bridge));
    let mut decoder = ws::Decoder::new(bridge.route.limits.max_message as usize);
    let consumer = match open {
        Some(open) => {
            let first = write_packet(down, v, &open).await;
            match (first, s.attach()) {
                (Ok(()), Attach::Opened(c) | Attach::Resumed(c)) => Some(c),
                _ => None,
            }
        }
        None => match Box::pin(probe(down, bridge, &s, &mut decoder)).await {
            Ok(()) => match s.attach_within(HANDOVER).await {
                Attach::Opened(c) | Attach::Resumed(c) => Some(c),
                _ => None,
            },
            Err(end) => {
                // The client stays on polling.
                s.proto.advance(Phase::Probing, Phase::Polling);
                close_ws(down, end).await;
                return Ok(());
            }
        },
    };
    let Some(mut consumer) = consumer else {
        eio::end(&s, 1011, "upgrade failed", EndReason::Client);
        close_ws(down, WsEnd::Ended).await;
        return Ok(());
    };
    let mut delivered = metrics::Delivered::new(route, websocket_label(bridge));
    let end = Box::pin(run(
        down,
        bridge,
        &s,
        &mut consumer,
        decoder,
        &mut delivered,
    ))
    .await;
    s.detach(consumer, false);
    let (by, code) = match &end {
        WsEnd::Client => (EndedBy::Client, None),
        WsEnd::Close(code, _) | WsEnd::Violation(code, _) => (EndedBy::Gateway, Some(*code)),
        WsEnd::Ended => (EndedBy::Gateway, Some(1000)),
    };
    eio::end(&s, 1000, "closed", EndReason::Client);
    let (messages_out, bytes_out) = delivered.totals();
    down.stream_ended(StreamEnd {
        transport: websocket_label(bridge),
        messages_out,
        bytes_out,
        close_code: code,
        closed_by: Some(by),
        ..StreamEnd::default()
    });
    close_ws(down, end).await;
    Ok(())
}

fn switching(accept: String) -> pingora::Result<Box<ResponseHeader>> {
    let mut resp = ResponseHeader::build(101, Some(3))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "Upgrade")?;
    resp.insert_header("sec-websocket-accept", accept)?;
    Ok(Box::new(resp))
}

async fn write_packet<D: Downstream>(down: &mut D, v: Version, p: &Packet) -> pingora::Result<()> {
    let (payload, binary) = frame::ws_message(v, p);
    let op = if binary { ws::OP_BINARY } else { ws::OP_TEXT };
    down.write_response_body(Some(ws::encode_frame(op, &payload)), false)
        .await
}

/// The upgrade's probe: the client's `2probe` answered `3probe` (and a pending poll told to
/// end with a noop), then its `5`. Err with how to end the WebSocket otherwise.
async fn probe<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    s: &Arc<EioSession>,
    decoder: &mut ws::Decoder,
) -> Result<(), WsEnd> {
    let v = s.proto.version;
    let steps = async {
        loop {
            let incoming = match decoder.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => match down.read_request_body().await {
                    Ok(Some(b)) => {
                        decoder.push(&b);
                        continue;
                    }
                    _ => return Err(WsEnd::Client),
                },
                Err(violation) => return Err(WsEnd::Violation(violation.code, violation.reason)),
            };
            let text = match incoming {
                ws::Incoming::Text(t) => t,
                ws::Incoming::Close(_) => return Err(WsEnd::Client),
                ws::Incoming::Ping(p) => {
                    let pong = ws::encode_frame(ws::OP_PONG, &p);
                    if down.write_response_body(Some(pong), false).await.is_err() {
                        return Err(WsEnd::Client);
                    }
                    continue;
                }
                _ => continue,
            };
            match frame::decode_text(v, text) {
                Ok(Packet::Ping(d)) if &d[..] == b"probe" => {
                    if write_packet(down, v, &Packet::Pong(d)).await.is_err() {
                        return Err(WsEnd::Client);
                    }
                    // The poll that holds the session answers and leaves.
                    s.proto.push(Packet::Noop);
                }
                Ok(Packet::Upgrade) => {
                    return if s.proto.advance(Phase::Probing, Phase::WebSocket) {
                        Ok(())
                    } else {
                        Err(WsEnd::Ended)
                    };
                }
                _ => {
                    return Err(WsEnd::Violation(
                        1002,
                        "unexpected packet during the upgrade",
                    ))
                }
            }
        }
    };
    let closing = bridge.closing();
    tokio::select! {
        r = tokio::time::timeout(UPGRADE_TIMEOUT, steps) => r.unwrap_or(Err(WsEnd::Ended)),
        _ = closing => Err(WsEnd::Ended),
    }
}

/// The session on its WebSocket until either side ends it.
async fn run<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    s: &Arc<EioSession>,
    consumer: &mut Consumer,
    mut decoder: ws::Decoder,
    delivered: &mut metrics::Delivered,
) -> WsEnd {
    let route = bridge.route.name.as_str();
    let v = s.proto.version;
    let budget = BYTE_BUDGET_MESSAGES * bridge.route.limits.max_message as usize;
    let messages_in = metrics::MESSAGES.with_label_values(&[route, websocket_label(bridge), "in"]);
    let uplink = s.link.uplink.clone();
    let mut queued: VecDeque<Outgoing> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let closing = bridge.closing();
    tokio::pin!(closing);
    // What the decoder holds already (sent right behind the probe) is read first.
    let mut pending = true;
    loop {
        let signal = s.proto.signal.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        let control = s.proto.take_control();
        if !control.is_empty() {
            let frames: Vec<Bytes> = control
                .iter()
                // A noop was for a poll.
                .filter(|p| **p != Packet::Noop)
                .map(|p| ws_frame(v, p))
                .collect();
            if !frames.is_empty() && down.write_body_parts(&frames).await.is_err() {
                return WsEnd::Client;
            }
            if control.contains(&Packet::Close) {
                return WsEnd::Ended;
            }
            continue;
        }
        if s.closed().is_some() {
            return WsEnd::Ended;
        }
        let out: Vec<Bytes> = tokio::select! {
            _ = &mut signal => continue,
            read = down.read_request_body(), if !pending && queued_bytes < budget => match read {
                Ok(Some(b)) => {
                    decoder.push(&b);
                    pending = true;
                    continue;
                }
                _ => return WsEnd::Client,
            },
            _ = std::future::ready(()), if pending => {
                pending = false;
                let mut replies = Vec::new();
                loop {
                    let packet = match decoder.next_message() {
                        Ok(None) => break,
                        Ok(Some(ws::Incoming::Text(t))) => frame::decode_text(v, t),
                        Ok(Some(ws::Incoming::Binary(b))) => frame::decode_ws_binary(v, b),
                        Ok(Some(ws::Incoming::Ping(p))) => {
                            replies.push(ws::encode_frame(ws::OP_PONG, &p));
                            continue;
                        }
                        Ok(Some(ws::Incoming::Pong(_))) => continue,
                        Ok(Some(ws::Incoming::Close(_))) => return WsEnd::Client,
                        Err(violation) => return WsEnd::Violation(violation.code, violation.reason),
                    };
                    if v == Version::V3 {
                        s.proto.heard(false);
                    }
                    match (v, packet) {
                        (_, Ok(Packet::Message { data, binary })) => {
                            messages_in.inc();
                            let (data, binary) = match inbound(bridge, s, data, binary) {
                                Ok(Some(m)) => m,
                                // Answered here (a CONNECT): its answer is queued.
                                Ok(None) => continue,
                                Err(()) => return WsEnd::Violation(1002, "invalid Socket.IO packet"),
                            };
                            if uplink.is_none() {
                                return WsEnd::Violation(1008, "this route's backend takes no messages");
                            }
                            queued_bytes += data.len();
                            queued.push_back(Outgoing { payload: data, binary, done: None });
                        }
                        (Version::V3, Ok(Packet::Ping(d))) => replies.push(ws_frame(v, &Packet::Pong(d))),
                        (Version::V4, Ok(Packet::Pong(_))) => s.proto.heard(true),
                        (_, Ok(Packet::Close)) => return WsEnd::Client,
                        (_, Ok(Packet::Noop | Packet::Upgrade)) => {}
                        _ => return WsEnd::Violation(1002, "invalid Engine.IO packet"),
                    }
                }
                if replies.is_empty() {
                    continue;
                }
                replies
            }
            permit = async { uplink.clone().expect("queued only with an uplink").reserve_owned().await }, if !queued.is_empty() => {
                match permit {
                    Ok(permit) => {
                        let m = queued.pop_front().expect("checked non-empty");
                        queued_bytes -= m.payload.len();
                        permit.send(m);
                    }
                    Err(_) => {
                        queued.clear();
                        queued_bytes = 0;
                    }
                }
                continue;
            }
            d = consumer.next() => match d {
                Delivery::Message(m) => {
                    delivered.message(m.received.elapsed());
                    let mut frames = vec![frames_of(bridge, v, &m)];
                    let mut len = frames[0].len();
                    while len < super::BURST_BYTES && frames.len() < super::BURST_PARTS {
                        let Some(m) = consumer.ready() else { break };
                        delivered.message(m.received.elapsed());
                        let f = frames_of(bridge, v, &m);
                        len += f.len();
                        frames.push(f);
                    }
                    frames
                }
                Delivery::Dropped(_) => continue,
                Delivery::TooSlow => return WsEnd::Close(1008, "Too slow: fell behind the feed"),
                Delivery::BackendGone(_) if bridge.spec.fanout == Fanout::Shared => continue,
                // Ended here (a missed heartbeat closed its backend session too).
                Delivery::BackendGone(_) if s.closed().is_some() => return WsEnd::Ended,
                Delivery::BackendGone(_) => return WsEnd::Close(1000, "the backend closed"),
                Delivery::Closed => return WsEnd::Close(1001, "Route removed"),
            },
            _ = &mut closing => return WsEnd::Close(1001, "Server shutting down"),
        };
        delivered.bytes(out.iter().map(Bytes::len).sum());
        if down.write_body_parts(&out).await.is_err() {
            return WsEnd::Client;
        }
    }
}

fn ws_frame(v: Version, p: &Packet) -> Bytes {
    let (payload, binary) = frame::ws_message(v, p);
    ws::encode_frame(if binary { ws::OP_BINARY } else { ws::OP_TEXT }, &payload)
}

/// Ends the WebSocket as `end` says: a `1` packet first when the gateway closes the session.
async fn close_ws<D: Downstream>(down: &mut D, end: WsEnd) {
    down.set_write_timeout(Some(Duration::from_secs(5)));
    let (code, reason) = match end {
        WsEnd::Client => (1000, ""),
        WsEnd::Ended => (1000, ""),
        WsEnd::Close(code, reason) => {
            let one = ws::encode_frame(ws::OP_TEXT, b"1");
            let _ = down.write_response_body(Some(one), false).await;
            (code, reason)
        }
        WsEnd::Violation(code, reason) => (code, reason),
    };
    let _ = down
        .write_response_body(Some(ws::encode_close(code, reason)), false)
        .await;
    // The client answers with its own close; read until then (bounded).
    let drained = async { while let Ok(Some(_)) = down.read_request_body().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
}
