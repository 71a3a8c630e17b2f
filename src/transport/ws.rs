//! The client side of a terminated WebSocket (RFC 6455): handshake checks, a frame decoder fed
//! straight from the pingora session's body reads (no pipe, no extra task), and the endpoint
//! loop with keepalive and close codes.
//!
//! Frame headers are parsed and written with tungstenite's `FrameHeader`; this module adds what
//! a server must enforce on top: masking, reserved bits, control-frame rules, fragmentation
//! order, UTF-8 of text, and the message size cap, each mapped to its close code.

use super::Downstream;
use crate::bridge::hub::Gone;
use crate::bridge::session::{
    EndReason, Outgoing, Session as BridgeSession, UplinkError, UPLINK_QUEUE,
};
use crate::bridge::{write_deadline, Bridge, Consumer, Delivery, Feed};
use crate::config::BackendSpec;
use crate::error::Reject;
use crate::metrics;
use crate::upstream::private;
use bytes::{Buf, Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The backend restarted or went away; the client may reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
}

/// Encodes one unfragmented, unmasked (server-to-client) frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode: OpCode::from(opcode),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 10);
    header
        .format(payload.len() as u64, &mut out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // A control frame carries at most 125 bytes.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(OP_CLOSE, &payload)
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<u16>),
}

/// Why the client's stream was refused, with the close code to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation { code, reason }
}

pub struct Decoder {
    buf: BytesMut,
    max_message: usize,
    /// Opcode and payload of a fragmented data message in progress.
    partial: Option<(u8, BytesMut)>,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_message,
            partial: None,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            let mut cur = Cursor::new(&self.buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cur)
                .map_err(|_| violation(close::PROTOCOL_ERROR, "malformed frame header"))?
            else {
                return Ok(None);
            };
            let header_len = cur.position() as usize;
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(violation(
                    close::PROTOCOL_ERROR,
                    "reserved bits set without an extension",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(violation(
                    close::PROTOCOL_ERROR,
                    "client frames must be masked",
                ));
            };
            let len = match header.opcode {
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(violation(close::PROTOCOL_ERROR, "reserved opcode"));
                }
                OpCode::Control(_) => {
                    if !header.is_final || len > 125 {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "control frames must be final and at most 125 bytes",
                        ));
                    }
                    len as usize
                }
                OpCode::Data(_) => {
                    let held = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
                    if held.saturating_add(len) > self.max_message as u64 {
                        return Err(violation(close::TOO_BIG, "message exceeds max_message"));
                    }
                    len as usize
                }
            };
            if self.buf.len() < header_len + len {
                self.buf.reserve(header_len + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(header_len);
            let mut payload = self.buf.split_to(len);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Close) => return parse_close(&payload).map(Some),
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(Incoming::Ping(payload.freeze())))
                }
                OpCode::Control(Control::Pong) => {
                    return Ok(Some(Incoming::Pong(payload.freeze())))
                }
                OpCode::Data(Data::Continue) => {
                    let Some((_, held)) = self.partial.as_mut() else {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "continuation without a message",
                        ));
                    };
                    held.extend_from_slice(&payload);
                    if header.is_final {
                        let (op, data) = self.partial.take().expect("checked above");
                        return finish(op, data).map(Some);
                    }
                }
                OpCode::Data(data) => {
                    if self.partial.is_some() {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "new message inside a fragmented one",
                        ));
                    }
                    let op = if data == Data::Text {
                        OP_TEXT
                    } else {
                        OP_BINARY
                    };
                    if header.is_final {
                        return finish(op, payload).map(Some);
                    }
                    self.partial = Some((op, payload));
                }
                OpCode::Control(Control::Reserved(_)) => unreachable!("refused above"),
            }
        }
    }
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

fn finish(op: u8, data: BytesMut) -> Result<Incoming, Violation> {
    if op == OP_TEXT {
        if std::str::from_utf8(&data).is_err() {
            return Err(violation(
                close::INVALID_PAYLOAD,
                "text message is not valid UTF-8",
            ));
        }
        Ok(Incoming::Text(data.freeze()))
    } else {
        Ok(Incoming::Binary(data.freeze()))
    }
}

fn parse_close(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload.len() {
        0 => Ok(Incoming::Close(None)),
        1 => Err(violation(
            close::PROTOCOL_ERROR,
            "close frame with a 1-byte payload",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(violation(close::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(violation(
                    close::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                ));
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

pub(crate) fn header_has_token(req: &RequestHeader, name: &str, token: &str) -> bool {
    req.headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// True when the request asks for a WebSocket upgrade (its validity is checked by [`accept_key`]).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    header_has_token(req, "upgrade", "websocket")
}

/// Checks the opening handshake (RFC 6455 section 4.2.1) and returns `Sec-WebSocket-Accept`.
pub fn accept_key(req: &RequestHeader) -> Result<String, Reject> {
    if req.method != http::Method::GET {
        return Err(
            Reject::new(405, "ws_bad_method", "a WebSocket handshake must be a GET")
                .header("allow", "GET"),
        );
    }
    if !header_has_token(req, "connection", "upgrade") {
        return Err(Reject::new(
            400,
            "ws_bad_handshake",
            "WebSocket handshake without `Connection: Upgrade`",
        ));
    }
    let version = req
        .headers
        .get("sec-websocket-version")
        .map(|v| v.as_bytes());
    if version != Some(b"13") {
        return Err(Reject::new(
            426,
            "ws_bad_version",
            "unsupported WebSocket version: this server speaks 13",
        )
        .header("sec-websocket-version", "13"));
    }
    let key = req
        .headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let key_ok = key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/');
    if !key_ok {
        return Err(Reject::new(
            400,
            "ws_bad_key",
            "missing or malformed Sec-WebSocket-Key (16 random bytes, base64)",
        ));
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// Picks the subprotocol to answer with: the one the backend chose when the client offers it,
/// else the first of the client's offers that the route's config lists (RFC 6455 section 4.2.2:
/// the server answers with one of the client's values or none).
pub fn choose_subprotocol(
    req: &RequestHeader,
    configured: &[String],
    backend: Option<&str>,
) -> Option<String> {
    let offered: Vec<&str> = req
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(b) = backend.filter(|b| offered.contains(b)) {
        return Some(b.to_owned());
    }
    offered
        .into_iter()
        .find(|o| configured.iter().any(|c| c == o))
        .map(str::to_owned)
}

/// Serves one WebSocket client of a bridged route until either side ends it.
pub async fn serve<D: Downstream>(session: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let accept = match accept_key(session.req_header()) {
        Ok(a) => a,
        Err(reject) => return reject.send(session, route).await,
    };
    let configured: &[String] = match &bridge.spec.backend {
        BackendSpec::WebSocket(f) => &f.subprotocols,
        _ => &[],
    };
    // A per-client route opens the client's own backend connection before the 101, so an
    // unreachable backend is an HTTP 502 the client can see.
    let conv = match bridge.sessions() {
        Some(_) => {
            let client = super::client_info(session);
            match private::open(bridge, session.req_header(), &client, "websocket", false).await {
                Ok(c) => Some(c),
                Err(why) => return super::session_refused(session, route, why).await,
            }
        }
        None => None,
    };
    let backend_protocol = match &conv {
        Some(c) => c.backend_protocol.clone(),
        None => bridge.hub().and_then(|h| h.backend_protocol()),
    };
    let protocol = choose_subprotocol(
        session.req_header(),
        configured,
        backend_protocol.as_deref(),
    );
    let mut resp = ResponseHeader::build(101, Some(5))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "Upgrade")?;
    resp.insert_header("sec-websocket-accept", accept)?;
    if let Some(p) = protocol {
        resp.insert_header("sec-websocket-protocol", p)?;
    }
    // Subscribed before the 101 goes out: a client that saw the handshake misses nothing after it.
    let mut consumer = match (&bridge.feed, &conv) {
        (_, Some(c)) => Some(Consumer::for_session(
            c.clone(),
            c.attach(),
            "websocket",
            0,
            write_deadline(&bridge.route.keepalive),
        )),
        (Feed::Shared(_), None) => Some(bridge.join(None, "websocket").consumer),
        _ => None,
    };
    // Where this client's messages go: its session's backend, or `post:` for an SSE feed.
    let uplink = match &conv {
        Some(c) => c.uplink(),
        None => private::client_poster(bridge, session.req_header(), &super::client_info(session)),
    };
    // The session lives as long as this connection: it never expires under it.
    let busy = conv.as_ref().map(|c| c.busy());
    let result = run(
        session,
        bridge,
        consumer.as_mut(),
        uplink,
        conv.as_ref(),
        Box::new(resp),
    )
    .await;
    drop(busy);
    if let Some(c) = conv {
        c.close(EndReason::Client);
    }
    result
}

async fn run<D: Downstream>(
    session: &mut D,
    bridge: &Bridge,
    mut consumer: Option<&mut Consumer>,
    uplink: Option<mpsc::Sender<Outgoing>>,
    conv: Option<&Arc<BridgeSession>>,
    resp: Box<ResponseHeader>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    session.write_response_header(resp, false).await?;
    let _open = metrics::OpenConnection::new(route, "websocket");
    // The endpoint runs its own keepalive; pingora's per-read timeout would cut idle clients.
    session.set_read_timeout(None);

    let keepalive = &bridge.route.keepalive;
    let mut decoder = Decoder::new(bridge.route.limits.max_message as usize);
    let echo = matches!(bridge.feed, Feed::Echo);
    // Messages on their way to the backend, each with the news of whether it got there. While
    // UPLINK_QUEUE are in flight, the client is not read: backpressure, not buffering.
    let mut in_flight: VecDeque<oneshot::Receiver<Result<(), UplinkError>>> = VecDeque::new();
    // Decoded client messages not yet handed to the uplink (it may be full); never awaited
    // inside the read branch, so a full uplink cannot stop deliveries to this client.
    let mut queued: VecDeque<Outgoing> = VecDeque::new();
    let mut client_closed = false;
    let messages_in = metrics::MESSAGES.with_label_values(&[route, "websocket", "in"]);
    let messages_out = metrics::MESSAGES.with_label_values(&[route, "websocket", "out"]);
    let bytes_in = metrics::BYTES.with_label_values(&[route, "websocket", "in"]);
    let bytes_out = metrics::BYTES.with_label_values(&[route, "websocket", "out"]);
    let latency = metrics::DELIVERY_LATENCY.with_label_values(&[route, "websocket"]);
    let far = Duration::from_secs(86_400 * 365);
    let every = |d: Duration| if d.is_zero() { far } else { d };
    let mut next_ping = Instant::now() + every(keepalive.ping_interval);
    let mut pong_due: Option<Instant> = None;
    let mut idle_at = Instant::now() + every(keepalive.idle_timeout);

    // The keepalive timer and the closing signal are made once, not per message: a new timer
    // or signal subscription on every delivery costs more than the delivery's own bookkeeping.
    let timer = sleep_until(next_ping.min(idle_at));
    tokio::pin!(timer);
    let closing = bridge.closing();
    tokio::pin!(closing);

    let outcome: Option<(u16, String)> = loop {
        let wake = pong_due
            .map_or(next_ping, |p| p.min(next_ping))
            .min(idle_at);
        if timer.deadline() != wake {
            timer.as_mut().reset(wake);
        }
        tokio::select! {
            read = session.read_request_body(), if in_flight.len() < UPLINK_QUEUE => {
                let Ok(Some(data)) = read else { break None };
                bytes_in.inc_by(data.len() as u64);
                idle_at = Instant::now() + every(keepalive.idle_timeout);
                decoder.push(&data);
                let mut reply: Vec<Bytes> = Vec::new();
                let mut end = None;
                loop {
                    match decoder.next_message() {
                        Ok(None) => break,
                        // On a one-way route, what clients send is counted, not forwarded.
                        Ok(Some(m @ (Incoming::Text(_) | Incoming::Binary(_)))) if uplink.is_some() => {
                            messages_in.inc();
                            let (payload, binary) = match m {
                                Incoming::Binary(b) => (b, true),
                                Incoming::Text(t) => (t, false),
                                _ => unreachable!("matched above"),
                            };
                            let (done, heard) = oneshot::channel();
                            queued.push_back(Outgoing { payload, binary, done: Some(done) });
                            in_flight.push_back(heard);
                        }
                        Ok(Some(Incoming::Text(t))) => {
                            messages_in.inc();
                            if echo {
                                reply.push(encode_frame(OP_TEXT, &t));
                            }
                        }
                        Ok(Some(Incoming::Binary(b))) => {
                            messages_in.inc();
                            if echo {
                                reply.push(encode_frame(OP_BINARY, &b));
                            }
                        }
                        Ok(Some(Incoming::Ping(p))) => reply.push(encode_frame(OP_PONG, &p)),
                        Ok(Some(Incoming::Pong(_))) => pong_due = None,
                        Ok(Some(Incoming::Close(code))) => {
                            client_closed = true;
                            end = Some((code.unwrap_or(close::NORMAL), String::new()));
                            break;
                        }
                        Err(v) => {
                            metrics::REJECTIONS.with_label_values(&[route, "ws_protocol"]).inc();
                            end = Some((v.code, v.reason.to_owned()));
                            break;
                        }
                    }
                }
                for frame in reply {
                    if frame[0] & 0x0f != OP_PONG {
                        messages_out.inc();
                    }
                    bytes_out.inc_by(frame.len() as u64);
                    if session.write_response_body(Some(frame), false).await.is_err() {
                        return Ok(());
                    }
                }
                if end.is_some() {
                    break end;
                }
            }
            permit = async { uplink.as_ref().expect("messages are queued only with an uplink").reserve().await }, if !queued.is_empty() => {
                match permit {
                    Ok(permit) => permit.send(queued.pop_front().expect("checked non-empty")),
                    // The session is over; its end reaches this client through the consumer.
                    Err(_) => queued.clear(),
                }
            }
            heard = async { in_flight.front_mut().expect("branch enabled only with messages in flight").await }, if !in_flight.is_empty() => {
                in_flight.pop_front();
                match heard {
                    // An ended session is told by the consumer, with the backend's own close.
                    Ok(Ok(())) | Ok(Err(UplinkError::Ended)) | Err(_) => {}
                    Ok(Err(UplinkError::Refused(status))) if (400..500).contains(&status) => {
                        break Some((close::POLICY, format!("the backend refused a message (HTTP {status})")));
                    }
                    Ok(Err(UplinkError::Refused(status))) => {
                        break Some((close::INTERNAL_ERROR, format!("the backend failed a message (HTTP {status})")));
                    }
                    Ok(Err(UplinkError::Unreachable(why))) => {
                        break Some((close::INTERNAL_ERROR, format!("the backend could not be reached: {why}")));
                    }
                }
            }
            delivery = async { consumer.as_mut().expect("branch enabled only with a feed").next().await }, if consumer.is_some() => {
                let consumer = consumer.as_mut().expect("checked above");
                match delivery {
                    Delivery::Message(m) => {
                        let (bytes, count) = super::gather_burst(&m, consumer, &latency, |m| Some(m.ws_frame()));
                        messages_out.inc_by(count);
                        let bytes = bytes.expect("WebSocket clients take every message");
                        bytes_out.inc_by(bytes.len() as u64);
                        if super::write_chunk(session, bytes, consumer).await.is_err() {
                            super::abandon(session);
                            return Ok(());
                        }
                    }
                    // drop_oldest: WebSocket messages carry no ids, so the skip is only counted.
                    Delivery::Dropped(_) => {}
                    Delivery::TooSlow => {
                        super::abandon(session);
                        // Delivered only if there is room; the client is cut either way.
                        let _ = session.write_response_body(Some(encode_close(close::POLICY, "too slow: fell behind the feed")), false).await;
                        return Ok(());
                    }
                    Delivery::BackendGone(g) => break Some((g.code, g.reason.clone())),
                    Delivery::Closed => break Some((close::SERVICE_RESTART, "route removed".into())),
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if now >= idle_at {
                    break Some((close::GOING_AWAY, "idle timeout".into()));
                }
                if pong_due.is_some_and(|due| now >= due) {
                    metrics::REJECTIONS.with_label_values(&[route, "pong_timeout"]).inc();
                    break Some((close::INTERNAL_ERROR, "keepalive: no pong".into()));
                }
                if now >= next_ping {
                    next_ping = now + every(keepalive.ping_interval);
                    if pong_due.is_none() {
                        pong_due = Some(now + keepalive.pong_timeout);
                    }
                    if session.write_response_body(Some(encode_frame(OP_PING, b"")), false).await.is_err() {
                        return Ok(());
                    }
                }
            }
            _ = &mut closing => break Some((close::GOING_AWAY, "server shutting down or route removed".into())),
        }
    };
    if client_closed {
        // Nothing more goes to this client, so its session stops holding backend messages
        // (a full outbox would stop the backend from reading what follows).
        if let Some(c) = conv {
            c.outbox.end(Gone {
                code: close::NORMAL,
                reason: "client closed".into(),
            });
        }
        // What the client sent before its close still reaches the backend (bounded wait).
        let deliver = async {
            if let Some(up) = &uplink {
                for out in queued.drain(..) {
                    if up.send(out).await.is_err() {
                        break;
                    }
                }
            }
            for heard in in_flight.drain(..) {
                let _ = heard.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), deliver).await;
    }
    if let Some((code, reason)) = outcome {
        // A client that does not read cannot hold the task on its close frame.
        session.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = session
            .write_response_body(Some(encode_close(code, &reason)), false)
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn decodes_fragmented_text_split_across_reads() {
        let mut d = Decoder::new(1024);
        let mut wire = masked(0x01, b"Hel");
        wire.extend(masked(0x89, b"p")); // a ping between fragments is allowed
        wire.extend(masked(0x80, b"lo"));
        for chunk in wire.chunks(3) {
            d.push(chunk);
        }
        assert_eq!(
            d.next_message().unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            d.next_message().unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"Hello")))
        );
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn rfc6455_violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], close::PROTOCOL_ERROR), // unmasked (5.1)
            (masked(0xC1, b"x"), close::PROTOCOL_ERROR),           // RSV1 without extension (5.2)
            (masked(0x83, b"x"), close::PROTOCOL_ERROR),           // reserved opcode (5.2)
            (masked(0x09, b"x"), close::PROTOCOL_ERROR),           // fragmented ping (5.5)
            (masked(0x89, &[0u8; 126]), close::PROTOCOL_ERROR),    // control > 125 bytes (5.5)
            (masked(0x80, b"x"), close::PROTOCOL_ERROR),           // continuation first (5.4)
            (masked(0x81, &[0xff, 0xfe]), close::INVALID_PAYLOAD), // bad UTF-8 (8.1)
            (masked(0x88, &[0x03, 0xed]), close::PROTOCOL_ERROR), // close code 1005 on the wire (7.4.1)
            (masked(0x82, &[0u8; 2000]), close::TOO_BIG),         // over max_message
        ];
        for (wire, code) in cases {
            let mut d = Decoder::new(1024);
            d.push(&wire);
            assert_eq!(d.next_message().unwrap_err().code, code, "{wire:02x?}");
        }
    }

    #[test]
    fn size_cap_applies_before_the_payload_arrives() {
        let mut d = Decoder::new(100);
        // Header announcing 1 MiB, no payload yet: refused at once, nothing buffered.
        d.push(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4]);
        assert_eq!(d.next_message().unwrap_err().code, close::TOO_BIG);
    }

    #[test]
    fn server_frames_are_unmasked() {
        assert_eq!(&encode_frame(OP_TEXT, b"ok")[..], b"\x81\x02ok");
        assert_eq!(encode_frame(OP_BINARY, &[0; 300])[..4], [0x82, 126, 1, 44]);
        assert_eq!(&encode_close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
    }
}
