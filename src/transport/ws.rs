//! The client side of a terminated WebSocket (RFC 6455) on a bridged route: the handshake
//! answered here, then the endpoint loop with keepalive, close codes, backpressure on the
//! uplink, and deliveries from the feed. Framing is [`crate::wire::ws`]'s.

use super::{Downstream, Respond};
use crate::bridge::hub::Gone;
use crate::bridge::session::{
    EndReason, Outgoing, Session as BridgeSession, UplinkError, UPLINK_QUEUE,
};
use crate::bridge::{write_deadline, Bridge, Consumer, Delivery, Feed};
use crate::config::BackendSpec;
use crate::metrics;
use crate::policy::reject::Reject;
use crate::wire::ws::{
    accept_key, choose_subprotocol, close, encode_close, encode_frame, Decoder, Incoming,
    OP_BINARY, OP_PING, OP_PONG, OP_TEXT,
};
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

/// Serves one WebSocket client of a bridged route until either side ends it.
pub async fn serve<D: Downstream>(session: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let accept = match accept_key(session.req_header()) {
        Ok(a) => a,
        Err(h) => return Reject::from(h).send(session, route).await,
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
            match bridge
                .open_session(session.req_header(), &client, "websocket", false)
                .await
            {
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
        None => bridge.client_poster(session.req_header(), &super::client_info(session)),
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
    let mut delivered = metrics::Delivered::new(route, "websocket");
    let bytes_in = metrics::BYTES.with_label_values(&[route, "websocket", "in"]);
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
                        delivered.untimed(1);
                    }
                    delivered.bytes(frame.len());
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
                        let burst = super::gather_burst(&m, consumer, &mut delivered, |m| Some(m.ws_frame()))
                            .expect("WebSocket clients take every message");
                        delivered.bytes(burst.len());
                        if super::write_burst(session, &burst, consumer).await.is_err() {
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
                delivered.tick(now.into_std());
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
