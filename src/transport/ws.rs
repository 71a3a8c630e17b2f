//! The client side of a terminated WebSocket (RFC 6455) on a bridged route: the handshake
//! answered here, then the endpoint loop with keepalive, close codes, backpressure on the
//! uplink, and deliveries from the feed. Framing is [`crate::wire::ws`]'s.

use super::{Downstream, Respond};
use crate::access_log::{Closer, StreamEnd};
use crate::bridge::hub::Gone;
use crate::bridge::session::{
    EndReason, Outgoing, Session, UplinkError, BYTE_BUDGET_MESSAGES, UPLINK_QUEUE,
};
use crate::bridge::{write_deadline, Bridge, Consumer, Delivery, Source};
use crate::config::{BackendSpec, Compression};
use crate::metrics;
use crate::policy::reject::Reject;
use crate::wire::deflate;
use crate::wire::sockjs as sockjs_frame;
use crate::wire::ws::{
    accept_key, choose_subprotocol, close, encode_close, encode_frame, encode_message, Decoder,
    Incoming, OP_BINARY, OP_PING, OP_PONG, OP_TEXT,
};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

/// Serves one WebSocket client of a bridged route until either side ends it.
pub async fn serve<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    serve_framed(down, bridge, None).await
}

/// A SockJS client over WebSocket (`base/S/ID/websocket`): the same endpoint, with SockJS
/// frames inside the WebSocket's text messages (`o` first, `a[...]` messages, `h` every
/// `heartbeat`, `c[code,"reason"]` before the close; the client sends JSON arrays of strings).
pub async fn serve_sockjs<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &crate::config::SockJs,
) -> pingora::Result<()> {
    serve_framed(down, bridge, Some(opts.heartbeat)).await
}

/// `sockjs`: the heartbeat of SockJS framing, None for plain messages.
async fn serve_framed<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sockjs: Option<Duration>,
) -> pingora::Result<()> {
    let label = if sockjs.is_some() {
        "sockjs-websocket"
    } else {
        "websocket"
    };
    let route = bridge.route.name.as_str();
    let accept = match accept_key(down.req_header()) {
        Ok(a) => a,
        Err(h) => return Box::pin(Reject::from(h).send(down, route)).await,
    };
    let configured: &[String] = match &bridge.spec.backend {
        BackendSpec::WebSocket(f) => &f.subprotocols,
        _ => &[],
    };
    // A per-client route opens the client's own backend connection before the 101, so an
    // unreachable backend is an HTTP 502 the client can see.
    let conv = match bridge.sessions() {
        Some(_) => {
            let client = super::client_info(down);
            // Boxed, as every step taken once before the loop: the connection's future is
            // sized by its largest state, and these would otherwise be carried for hours.
            match Box::pin(bridge.open_session(down.req_header(), &client, label, false)).await {
                Ok(c) => Some(c),
                Err(why) => return Box::pin(super::session_refused(down, route, why)).await,
            }
        }
        None => None,
    };
    let backend_protocol = match &conv {
        Some(c) => c.backend_protocol.clone(),
        None => bridge.hub().and_then(|h| h.backend_protocol()),
    };
    // SockJS clients speak no subprotocol of their own.
    let protocol = match sockjs {
        None => choose_subprotocol(down.req_header(), configured, backend_protocol.as_deref()),
        Some(_) => None,
    };
    let deflate = match bridge.spec.compression {
        Compression::Auto => deflate::negotiate(
            down.req_header()
                .headers
                .get_all("sec-websocket-extensions")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
        Compression::Off => None,
    };
    let mut resp = ResponseHeader::build(101, Some(6))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "Upgrade")?;
    resp.insert_header("sec-websocket-accept", accept)?;
    if let Some(p) = protocol {
        resp.insert_header("sec-websocket-protocol", p)?;
    }
    if let Some(a) = deflate {
        resp.insert_header("sec-websocket-extensions", a.response())?;
    }
    // Subscribed before the 101 goes out: a client that saw the handshake misses nothing after it.
    let mut consumer = match (&bridge.source, &conv) {
        (_, Some(c)) => Some(Consumer::for_session(
            c.clone(),
            c.attach(),
            label,
            0,
            write_deadline(&bridge.route.keepalive),
        )),
        (Source::Shared(_), None) => Some(bridge.join(None, label).consumer),
        _ => None,
    };
    // Where this client's messages go: its session's backend, or `post:` for an SSE feed.
    let uplink = match &conv {
        Some(c) => c.uplink(),
        None => bridge.client_poster(down.req_header(), &super::client_info(down)),
    };
    // The session lives as long as this connection: it never expires under it.
    let busy = conv.as_ref().map(|c| c.busy());
    let result = async {
        Box::pin(down.write_response_header(Box::new(resp), false)).await?;
        let _open = metrics::OpenConnection::new(route, label);
        // The endpoint runs its own keepalive; pingora's per-read timeout would cut idle clients.
        down.set_read_timeout(None);
        down.release_request();
        if sockjs.is_some() {
            let open = encode_frame(OP_TEXT, sockjs_frame::OPEN);
            Box::pin(down.write_response_body(Some(open), false)).await?;
        }
        let end = Endpoint::new(down, bridge, uplink, conv.as_ref(), label, sockjs, deflate)
            .run(consumer.as_mut())
            .await;
        down.stream_ended(end);
        Ok(())
    }
    .await;
    drop(busy);
    if let Some(c) = conv {
        c.close(EndReason::Client);
    }
    result
}

/// What an event means for the connection.
enum Step {
    /// Go on.
    Go,
    /// End with this close frame to the client.
    Close(u16, String),
    /// End without a close frame (the client's side ended first).
    Finish,
    /// End now: the client is gone or was dropped (nothing more can be written).
    Gone,
}

/// Keepalive deadlines: the next ping, the pong awaited, and the idle cut.
struct Keepalive {
    ping_every: Duration,
    pong_timeout: Duration,
    idle_for: Duration,
    next_ping: Instant,
    pong_due: Option<Instant>,
    idle_at: Instant,
    /// SockJS framing: an `h` frame this often.
    heartbeat: Option<(Duration, Instant)>,
}

impl Keepalive {
    fn new(k: &crate::config::Keepalive, heartbeat: Option<Duration>) -> Self {
        let far = Duration::from_secs(86_400 * 365);
        let every = |d: Duration| if d.is_zero() { far } else { d };
        let now = Instant::now();
        Self {
            ping_every: every(k.ping_interval),
            pong_timeout: k.pong_timeout,
            idle_for: every(k.idle_timeout),
            next_ping: now + every(k.ping_interval),
            pong_due: None,
            idle_at: now + every(k.idle_timeout),
            heartbeat: heartbeat.map(|h| (h, now + h)),
        }
    }

    /// When the timer must next wake.
    fn wake(&self) -> Instant {
        let at = self
            .pong_due
            .map_or(self.next_ping, |p| p.min(self.next_ping))
            .min(self.idle_at);
        self.heartbeat.map_or(at, |(_, h)| at.min(h))
    }
}

/// One terminated WebSocket client, between its `101` and its close. Each event the loop in
/// [`Endpoint::run`] waits for has a method of its own.
struct Endpoint<'a, D> {
    down: &'a mut D,
    bridge: &'a Bridge,
    route: &'a str,
    uplink: Option<mpsc::Sender<Outgoing>>,
    conv: Option<&'a Arc<Session>>,
    decoder: Decoder,
    /// The route is the builtin echo: client messages come back.
    echo: bool,
    /// Messages on their way to the backend (their size, and the news of whether they got
    /// there). While UPLINK_QUEUE of them or `uplink_budget` bytes are in flight, no more is
    /// decoded and the client is not read: backpressure, not buffering.
    in_flight: VecDeque<(usize, oneshot::Receiver<Result<(), UplinkError>>)>,
    in_flight_bytes: usize,
    uplink_budget: usize,
    /// What this client makes the gateway hold, charged to the process's memory budget: the
    /// decoder's bytes, and the messages in flight.
    held: crate::memory::Charge,
    in_flight_charge: crate::memory::Charge,
    /// The decoder may hold complete frames that were left for want of room in the uplink.
    undecoded: bool,
    /// Decoded client messages not yet handed to the uplink (it may be full); never awaited
    /// while reading, so a full uplink cannot stop deliveries to this client.
    queued: VecDeque<Outgoing>,
    client_closed: bool,
    keepalive: Keepalive,
    messages_in: prometheus::IntCounter,
    bytes_in: prometheus::IntCounter,
    /// What `messages_in` and `bytes_in` were given on this connection (the access log).
    received: (u64, u64),
    delivered: metrics::Delivered,
    /// Who ended the connection, where the cause tells (otherwise the side that sent the
    /// first close).
    closed_by: Option<Closer>,
    label: &'static str,
    /// SockJS framing: client messages are JSON arrays of strings, deliveries `a[...]`.
    sockjs: bool,
    /// Under SockJS framing, the close is told in a `c[...]` frame first.
    sockjs_close_frame: bool,
    /// After the gateway's close, wait (briefly) for the client's.
    await_close: bool,
    /// permessage-deflate, when the client agreed to it; with its inbound counters (plain and
    /// wire).
    deflate: Option<deflate::Agreed>,
    inflated: Option<Box<[prometheus::IntCounter; 2]>>,
}

impl<'a, D: Downstream> Endpoint<'a, D> {
    fn new(
        down: &'a mut D,
        bridge: &'a Bridge,
        uplink: Option<mpsc::Sender<Outgoing>>,
        conv: Option<&'a Arc<Session>>,
        label: &'static str,
        sockjs: Option<Duration>,
        deflate: Option<deflate::Agreed>,
    ) -> Self {
        let route = bridge.route.name.as_str();
        let max_message = bridge.route.limits.max_message as usize;
        let delivered = metrics::Delivered::new(route, label);
        Self {
            down,
            bridge,
            route,
            uplink,
            conv,
            decoder: match deflate {
                Some(_) => Decoder::with_deflate(max_message),
                None => Decoder::new(max_message),
            },
            echo: matches!(bridge.source, Source::Echo),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            uplink_budget: BYTE_BUDGET_MESSAGES * bridge.route.limits.max_message as usize,
            held: crate::memory::Charge::none(),
            in_flight_charge: crate::memory::Charge::none(),
            undecoded: false,
            queued: VecDeque::new(),
            client_closed: false,
            keepalive: Keepalive::new(&bridge.route.keepalive, sockjs),
            messages_in: metrics::MESSAGES.with_label_values(&[route, label, "in"]),
            bytes_in: metrics::BYTES.with_label_values(&[route, label, "in"]),
            received: (0, 0),
            closed_by: None,
            label,
            delivered: match deflate {
                Some(_) => delivered.with_compression(route, label),
                None => delivered,
            },
            sockjs: sockjs.is_some(),
            sockjs_close_frame: sockjs.is_some(),
            await_close: true,
            deflate,
            inflated: deflate.map(|_| {
                let c = |stage| {
                    metrics::COMPRESSION_BYTES.with_label_values(&[route, label, "in", stage])
                };
                Box::new([c("plain"), c("wire")])
            }),
        }
    }

    /// Runs the connection until either side ends it, and tells how it ended. `consumer` is
    /// where backend messages come from (none on the echo route).
    async fn run(mut self, mut consumer: Option<&mut Consumer>) -> StreamEnd {
        // The keepalive timer and the closing signal are made once, not per message: a new
        // timer or signal subscription on every delivery costs more than the delivery's own
        // bookkeeping.
        let timer = sleep_until(self.keepalive.wake());
        tokio::pin!(timer);
        let closing = self.bridge.closing();
        tokio::pin!(closing);
        loop {
            let wake = self.keepalive.wake();
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let step = tokio::select! {
                read = self.down.read_request_body(), if !self.undecoded && self.uplink_room() => {
                    self.on_client_bytes(read).await
                }
                // An owned permit (on a clone of the sender), so the output borrows nothing.
                permit = async { self.uplink.clone().expect("messages are queued only with an uplink").reserve_owned().await }, if !self.queued.is_empty() => {
                    match permit {
                        Ok(permit) => {
                            permit.send(self.queued.pop_front().expect("checked non-empty"));
                        }
                        // The session is over; its end reaches this client through the consumer.
                        Err(_) => self.queued.clear(),
                    }
                    Step::Go
                }
                heard = async { (&mut self.in_flight.front_mut().expect("enabled only with messages in flight").1).await }, if !self.in_flight.is_empty() => {
                    let (len, _) = self.in_flight.pop_front().expect("checked non-empty");
                    self.in_flight_bytes -= len;
                    self.in_flight_charge
                        .resize(2 * self.in_flight_bytes, "ws_message");
                    match Self::on_uplink_heard(heard) {
                        step @ Step::Close(..) => {
                            self.closed_by = Some(Closer::Backend);
                            step
                        }
                        // Room again: what the decoder still holds comes next.
                        Step::Go if self.undecoded => self.decode().await,
                        step => step,
                    }
                }
                delivery = async { consumer.as_mut().expect("enabled only with a feed").next().await }, if consumer.is_some() => {
                    let consumer = consumer.as_mut().expect("checked above");
                    self.on_delivery(delivery, consumer).await
                }
                // Boxed (every ping interval, and at the end): not carried in the loop's state.
                _ = &mut timer => Box::pin(self.on_timer()).await,
                _ = &mut closing => Step::Close(close::GOING_AWAY, "server shutting down or route removed".into()),
            };
            let (code, by) = match &step {
                Step::Go => continue,
                // No close frame either way: 1006 (RFC 6455 section 7.1.5).
                Step::Gone => (close::ABNORMAL, self.closed_by.unwrap_or(Closer::Client)),
                Step::Finish => (close::ABNORMAL, Closer::Client),
                Step::Close(code, _) => (
                    *code,
                    self.closed_by.unwrap_or(if self.client_closed {
                        Closer::Client
                    } else {
                        Closer::Gateway
                    }),
                ),
            };
            let (messages_out, bytes_out) = self.delivered.totals();
            let end = StreamEnd {
                transport: self.label,
                messages_in: self.received.0,
                bytes_in: self.received.1,
                messages_out,
                bytes_out,
                close_code: Some(code),
                closed_by: Some(by),
            };
            match step {
                Step::Go | Step::Gone => {}
                Step::Finish => Box::pin(self.finish(None)).await,
                Step::Close(code, reason) => Box::pin(self.finish(Some((code, reason)))).await,
            }
            return end;
        }
    }

    /// Room for another client message on its way to the backend (always, on a route that
    /// forwards none).
    fn uplink_room(&self) -> bool {
        self.uplink.is_none()
            || (self.in_flight.len() < UPLINK_QUEUE && self.in_flight_bytes < self.uplink_budget)
    }

    /// Bytes from the client, handed to the decoder.
    async fn on_client_bytes(&mut self, read: pingora::Result<Option<Bytes>>) -> Step {
        let Ok(Some(data)) = read else {
            return Step::Finish;
        };
        self.bytes_in.inc_by(data.len() as u64);
        self.received.1 += data.len() as u64;
        if let Some(c) = &self.inflated {
            c[1].inc_by(data.len() as u64);
        }
        self.keepalive.idle_at = Instant::now() + self.keepalive.idle_for;
        self.decoder.push(&data);
        if !self.held.resize(self.decoder.held(), "ws_partial") {
            // A client that outran the budget is not read any further, not even for its close.
            self.await_close = false;
            return over_budget();
        }
        self.decode().await
    }

    /// Handles the complete frames the decoder holds, while the uplink has room (what is left
    /// waits there, and the client is not read meanwhile); replies (pongs, echoes) go out before
    /// anything else is read.
    async fn decode(&mut self) -> Step {
        let mut reply: Vec<Bytes> = Vec::new();
        let mut end = None;
        loop {
            if !self.uplink_room() {
                self.undecoded = true;
                break;
            }
            match self.next_message() {
                Ok(None) => {
                    self.undecoded = false;
                    break;
                }
                // On a one-way route, what clients send is counted, not forwarded.
                Ok(Some(m @ (Incoming::Text(_) | Incoming::Binary(_))))
                    if self.uplink.is_some() =>
                {
                    self.count_inflated(&m);
                    let (payload, binary) = match m {
                        Incoming::Binary(b) => (b, true),
                        Incoming::Text(t) => (t, false),
                        _ => unreachable!("matched above"),
                    };
                    let items = match self.items(payload, binary) {
                        Ok(items) => items,
                        Err(close) => {
                            // Broken framing ends the socket at once: no `c[...]` frame first,
                            // as the reference server does.
                            self.sockjs_close_frame = false;
                            end = Some(close);
                            break;
                        }
                    };
                    self.messages_in.inc_by(items.len() as u64);
                    self.received.0 += items.len() as u64;
                    let mut over = false;
                    for (payload, binary) in items {
                        // Charged twice: the message, and its copy in the backend connection's
                        // write buffer while the backend does not take it.
                        if !self
                            .in_flight_charge
                            .resize(2 * (self.in_flight_bytes + payload.len()), "ws_message")
                        {
                            over = true;
                            break;
                        }
                        let (done, heard) = oneshot::channel();
                        self.in_flight_bytes += payload.len();
                        self.in_flight.push_back((payload.len(), heard));
                        self.queued.push_back(Outgoing {
                            payload,
                            binary,
                            done: Some(done),
                        });
                    }
                    if over {
                        self.await_close = false;
                        end = Some(over_budget_close());
                        break;
                    }
                }
                Ok(Some(m @ (Incoming::Text(_) | Incoming::Binary(_)))) => {
                    self.messages_in.inc();
                    self.received.0 += 1;
                    self.count_inflated(&m);
                    if self.echo {
                        let (op, payload) = match &m {
                            Incoming::Text(t) => (OP_TEXT, t),
                            Incoming::Binary(b) => (OP_BINARY, b),
                            _ => unreachable!("matched above"),
                        };
                        let frame = encode_message(op, payload, self.deflate);
                        self.delivered.compressed(payload.len(), frame.len());
                        reply.push(frame);
                    }
                }
                Ok(Some(Incoming::Ping(p))) => reply.push(encode_frame(OP_PONG, &p)),
                Ok(Some(Incoming::Pong(_))) => self.keepalive.pong_due = None,
                Ok(Some(Incoming::Close(code))) => {
                    self.client_closed = true;
                    end = Some((code.unwrap_or(close::NORMAL), String::new()));
                    break;
                }
                // Its inflation did not fit the memory budget (counted as `ws_inflate` there).
                Err(v) if v.code == close::TRY_AGAIN_LATER => {
                    end = Some(over_budget_close());
                    break;
                }
                Err(v) => {
                    metrics::refused(self.route, "ws_protocol");
                    // A client whose (invalid) close this answers sends no other close.
                    self.await_close &= !v.in_close;
                    end = Some((v.code, v.reason.to_owned()));
                    break;
                }
            }
        }
        // What was decoded left the decoder (shrinking a charge always succeeds).
        self.held.resize(self.decoder.held(), "ws_partial");
        for frame in reply {
            if frame[0] & 0x0f != OP_PONG {
                self.delivered.untimed(1);
            }
            self.delivered.bytes(frame.len());
            if self
                .down
                .write_response_body(Some(frame), false)
                .await
                .is_err()
            {
                return Step::Gone;
            }
        }
        match end {
            Some((code, reason)) => Step::Close(code, reason),
            None => Step::Go,
        }
    }

    /// A client message's payload, counted as plain bytes when compression was agreed.
    fn count_inflated(&self, m: &Incoming) {
        if let (Some(c), Incoming::Text(p) | Incoming::Binary(p)) = (&self.inflated, m) {
            c[0].inc_by(p.len() as u64);
        }
    }

    /// The messages one client WebSocket message carries: itself, or under SockJS framing the
    /// strings of its JSON array (anything else closes the connection, as the reference server
    /// does).
    fn items(&self, payload: Bytes, binary: bool) -> Result<Vec<(Bytes, bool)>, (u16, String)> {
        if !self.sockjs {
            return Ok(vec![(payload, binary)]);
        }
        if binary {
            return Err((close::UNSUPPORTED, "SockJS messages are text".into()));
        }
        if payload.is_empty() {
            return Ok(Vec::new());
        }
        match sockjs_frame::parse_ws_messages(&payload, super::inbound::MAX_MESSAGES_PER_POST) {
            Some(list) => Ok(list.into_iter().map(|m| (Bytes::from(m), false)).collect()),
            None => {
                metrics::refused(self.route, "ws_protocol");
                Err((3000, "Broken framing.".into()))
            }
        }
    }

    /// The backend's word on a client message: an ended session is told by the consumer, with
    /// the backend's own close; a refusal ends the connection.
    fn on_uplink_heard(heard: Result<Result<(), UplinkError>, oneshot::error::RecvError>) -> Step {
        match heard {
            Ok(Ok(())) | Ok(Err(UplinkError::Ended)) | Err(_) => Step::Go,
            Ok(Err(UplinkError::Refused(status))) if (400..500).contains(&status) => Step::Close(
                close::POLICY,
                format!("the backend refused a message (HTTP {status})"),
            ),
            Ok(Err(UplinkError::Refused(status))) => Step::Close(
                close::INTERNAL_ERROR,
                format!("the backend failed a message (HTTP {status})"),
            ),
            Ok(Err(UplinkError::Unreachable(why))) => Step::Close(
                close::INTERNAL_ERROR,
                format!("the backend could not be reached: {why}"),
            ),
        }
    }

    /// Something from the feed or the session: messages (with any queued behind them, in one
    /// write), a skip, or the end.
    async fn on_delivery(&mut self, delivery: Delivery, consumer: &mut Consumer) -> Step {
        match delivery {
            Delivery::Message(m) if self.sockjs => {
                let drop_binary = self.bridge.spec.binary == crate::config::BinaryPolicy::Drop;
                let Some(burst) = super::gather_burst(&m, consumer, &mut self.delivered, |m| {
                    (!(m.binary && drop_binary)).then(|| m.sockjs())
                }) else {
                    return Step::Go;
                };
                let items = sockjs_frame::array_frame(burst.parts().iter().map(|b| &b[..]));
                let f = encode_message(OP_TEXT, &items, self.deflate);
                self.delivered.bytes(f.len());
                self.delivered.compressed(items.len(), f.len());
                if super::write_burst(self.down, &super::Burst::One(f), consumer)
                    .await
                    .is_err()
                {
                    super::abandon(self.down);
                    return Step::Gone;
                }
                Step::Go
            }
            Delivery::Message(m) => {
                let deflate = self.deflate;
                let mut plain = 0;
                let burst = super::gather_burst(&m, consumer, &mut self.delivered, |m| {
                    plain += m.payload.len();
                    Some(m.ws_frame_for(deflate))
                })
                .expect("WebSocket clients take every message");
                self.delivered.bytes(burst.len());
                self.delivered.compressed(plain, burst.len());
                if super::write_burst(self.down, &burst, consumer)
                    .await
                    .is_err()
                {
                    super::abandon(self.down);
                    return Step::Gone;
                }
                Step::Go
            }
            // drop_oldest: WebSocket messages carry no ids, so the skip is only counted.
            Delivery::Dropped(_) => Step::Go,
            Delivery::TooSlow => {
                self.closed_by = Some(Closer::Gateway);
                super::abandon(self.down);
                // Delivered only if there is room; the client is cut either way.
                let bye = encode_close(close::POLICY, "too slow: fell behind the feed");
                let _ = self.down.write_response_body(Some(bye), false).await;
                Step::Gone
            }
            Delivery::BackendGone(g) => {
                self.closed_by = Some(Closer::Backend);
                Step::Close(g.code, g.reason.clone())
            }
            Delivery::Closed => {
                self.closed_by = Some(Closer::Gateway);
                Step::Close(close::SERVICE_RESTART, "route removed".into())
            }
        }
    }

    /// A keepalive deadline: idle cut, a pong that did not come, or the next ping.
    async fn on_timer(&mut self) -> Step {
        let now = Instant::now();
        self.delivered.tick(now.into_std());
        let k = &mut self.keepalive;
        if now >= k.idle_at {
            return Step::Close(close::GOING_AWAY, "idle timeout".into());
        }
        if k.pong_due.is_some_and(|due| now >= due) {
            metrics::refused(self.route, "pong_timeout");
            // A peer that answers no ping will not answer the close either.
            self.await_close = false;
            return Step::Close(close::INTERNAL_ERROR, "keepalive: no pong".into());
        }
        if let Some((every, at)) = k.heartbeat.filter(|(_, at)| now >= *at) {
            k.heartbeat = Some((every, now + every));
            let _ = at;
            let h = encode_frame(OP_TEXT, sockjs_frame::HEARTBEAT);
            if self.down.write_response_body(Some(h), false).await.is_err() {
                return Step::Gone;
            }
        }
        let k = &mut self.keepalive;
        if now >= k.next_ping {
            k.next_ping = now + k.ping_every;
            if k.pong_due.is_none() {
                k.pong_due = Some(now + k.pong_timeout);
            }
            let ping = encode_frame(OP_PING, b"");
            if self
                .down
                .write_response_body(Some(ping), false)
                .await
                .is_err()
            {
                return Step::Gone;
            }
        }
        Step::Go
    }

    /// The end: what the client sent before its close still reaches the backend (bounded
    /// wait), then the close frame, if there is one to send.
    async fn finish(mut self, outcome: Option<(u16, String)>) {
        if self.client_closed {
            // Nothing more goes to this client, so its session stops holding backend messages
            // (a full outbox would stop the backend from reading what follows).
            if let Some(c) = self.conv {
                c.outbox.end(Gone {
                    code: close::NORMAL,
                    reason: "client closed".into(),
                });
            }
            let deliver = async {
                if let Some(up) = &self.uplink {
                    for out in self.queued.drain(..) {
                        if up.send(out).await.is_err() {
                            break;
                        }
                    }
                }
                for (_, heard) in self.in_flight.drain(..) {
                    let _ = heard.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), deliver).await;
        }
        if let Some((code, reason)) = outcome {
            // A client that does not read cannot hold the task on its close frame.
            self.down.set_write_timeout(Some(Duration::from_secs(5)));
            if self.sockjs_close_frame && !self.client_closed {
                let c = encode_frame(OP_TEXT, &sockjs_frame::close_frame(code, &reason));
                let _ = self.down.write_response_body(Some(c), false).await;
            }
            let sent = self
                .down
                .write_response_body(Some(encode_close(code, &reason)), false)
                .await;
            if sent.is_ok() && !self.client_closed && self.await_close {
                Box::pin(self.await_client_close()).await;
            }
        }
    }

    /// The decoder's next message. A compressed one is charged to the memory budget while it
    /// inflates (`ws_inflate`); once it is out, what holds it is charged instead.
    fn next_message(&mut self) -> Result<Option<Incoming>, crate::wire::ws::Violation> {
        let mut inflating = crate::memory::Charge::none();
        self.decoder
            .next_message_within(&mut |n| inflating.resize(n, "ws_inflate"))
    }

    /// After the gateway's close frame, the client's own (RFC 6455 section 7.1.1: the server
    /// closes the TCP connection once the client answered), within [`CLOSE_LINGER`]. Closing at
    /// once would reset a client whose answer or last message is in flight, and it would read a
    /// reset instead of the close. What it sends meanwhile is read and dropped.
    async fn await_client_close(&mut self) {
        let wait = async {
            let mut read = 0usize;
            loop {
                match self.next_message() {
                    Ok(Some(Incoming::Close(_))) | Err(_) => return,
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                }
                // A client that keeps sending is not read for long: the linger is for a close
                // in flight, not for taking more of a flood.
                match self.down.read_request_body().await {
                    Ok(Some(data)) if read + data.len() <= CLOSE_LINGER_BYTES => {
                        read += data.len();
                        self.decoder.push(&data);
                    }
                    _ => return,
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_LINGER, wait).await;
    }
}

/// How long a closed WebSocket waits for its client's close frame, and how much it reads
/// meanwhile at most.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
const CLOSE_LINGER_BYTES: usize = 64 * 1024;

/// The close for a client whose message the process's memory budget cannot hold (counted in
/// `switchyard_memory_refusals_total`): 1013, try again later.
fn over_budget_close() -> (u16, String) {
    (
        close::TRY_AGAIN_LATER,
        "the gateway is over its memory budget".into(),
    )
}

fn over_budget() -> Step {
    let (code, reason) = over_budget_close();
    Step::Close(code, reason)
}
