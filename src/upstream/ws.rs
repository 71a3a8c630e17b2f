//! The WebSocket backend connector: a tokio-tungstenite client that opens the route's backend
//! URL, offers the configured subprotocols and headers, and publishes every text or binary
//! message into the route's hub until the connection ends or nobody needs it.
//!
//! Keepalive toward the backend uses the route's `ping_interval` and `pong_timeout`: a backend
//! that sends nothing at all, not even a pong, for that long is dropped and reconnected.

use super::feed::{connect_io, Connected, Link, Outcome};
use super::per_client::SessionEnd;
use crate::bridge::hub::Gone;
use crate::bridge::session::{EndReason, Outgoing, Session, UplinkError};
use crate::config::{Keepalive, RemoteBackend};
use crate::metrics;
use crate::wire::ws::close;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, Utf8Bytes};

/// The close code clients get for the backend's close. Application codes (3000-4999) are the
/// backend talking to its clients and are passed on; the RFC 6455 codes below 3000 describe the
/// gateway-to-backend link (and 1000 would tell clients the feed is finished while the gateway
/// reconnects), so clients get 1012, Service Restart, with the backend's code in the reason.
fn client_code(backend: Option<&CloseFrame>) -> (u16, String) {
    relayed_close(backend, |code| (3000..=4999).contains(&code))
}

/// The backend's close code and reason when `passes(code)`, else 1012 (Service Restart) with
/// the backend's code in the reason; 1012 too when it closed without a close frame.
fn relayed_close(backend: Option<&CloseFrame>, passes: fn(u16) -> bool) -> (u16, String) {
    match backend {
        Some(f) if passes(u16::from(f.code)) => (u16::from(f.code), f.reason.to_string()),
        Some(f) => (
            close::SERVICE_RESTART,
            format!("backend closed with {}: {}", u16::from(f.code), f.reason),
        ),
        None => (
            close::SERVICE_RESTART,
            "backend closed the connection".into(),
        ),
    }
}

/// How much tungstenite reads from a backend at once. Its default (128 KiB) is zero-filled
/// before every read, so each backend connection held 128 KiB of resident memory however
/// small its messages: with `fanout: per_client`, 150 KiB per session. A larger frame still
/// gets a buffer of its own size (read in steps of this).
const READ_BUFFER: usize = 8 * 1024;

/// A connected backend WebSocket.
pub type Stream = tokio_tungstenite::WebSocketStream<super::tls::BackendIo>;

/// Opens the backend WebSocket with the configured headers plus `extra` (a client's forwarded
/// headers), within `connect_timeout`. Returns the stream and the subprotocol it chose.
pub async fn connect(
    feed: &RemoteBackend,
    extra: &[(HeaderName, HeaderValue)],
    max_message: usize,
) -> Result<(Stream, Option<String>), Outcome> {
    let scheme = if feed.tls.is_some() { "wss" } else { "ws" };
    let mut request =
        match format!("{scheme}://{}{}", feed.authority, feed.path).into_client_request() {
            Ok(r) => r,
            Err(e) => return Err(Outcome::ConnectFailed(format!("bad request: {e}"))),
        };
    for (name, value) in feed.headers.iter().chain(extra) {
        request.headers_mut().append(name.clone(), value.clone());
    }
    if !feed.subprotocols.is_empty() {
        match feed.subprotocols.join(", ").parse() {
            Ok(v) => {
                request.headers_mut().insert("sec-websocket-protocol", v);
            }
            Err(_) => return Err(Outcome::ConnectFailed("invalid subprotocol list".into())),
        }
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let connect = async {
        let tcp = connect_io(feed).await.map_err(Outcome::ConnectFailed)?;
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(answer) => {
                    Outcome::Refused(answer.status().as_u16())
                }
                e => Outcome::ConnectFailed(format!("handshake: {e}")),
            })
    };
    let (stream, response) = match tokio::time::timeout(feed.connect_timeout, connect).await {
        Err(_) => {
            return Err(Outcome::ConnectFailed(format!(
                "no answer within connect_timeout {:?}",
                feed.connect_timeout
            )))
        }
        Ok(r) => r?,
    };
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((stream, protocol))
}

pub async fn session(link: &Link, feed: &RemoteBackend) -> Outcome {
    let route = link.route_name();
    let max = link.route.limits.max_message as usize;
    let (mut stream, protocol) = match connect(feed, &[], max).await {
        Ok(c) => c,
        Err(failed) => return failed,
    };
    link.hub.set_backend_protocol(protocol);
    let _connected = Connected::feed(link);
    log::info!("route {route}: connected to backend {}", feed.url);
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[route]);

    let keepalive = &link.route.keepalive;
    let far = Duration::from_secs(86_400 * 365);
    let ping_every = if keepalive.ping_interval.is_zero() {
        far
    } else {
        keepalive.ping_interval
    };
    let mut next_ping = Instant::now() + ping_every;
    let mut heard_by: Option<Instant> = None;
    let mut linger = tokio::time::interval(link.linger_check());
    let mut messages = 0u64;
    loop {
        let wake = heard_by.map_or(next_ping, |h| h.min(next_ping));
        tokio::select! {
            frame = stream.next() => {
                // Any frame proves the backend alive.
                heard_by = None;
                match frame {
                    Some(Ok(Message::Text(t))) => {
                        messages += 1;
                        received.inc();
                        link.publish(None, Bytes::from(t), false, None);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        messages += 1;
                        received.inc();
                        link.publish(None, b, true, None);
                    }
                    // tungstenite queues the pong; flushing sends it now.
                    Some(Ok(Message::Ping(_))) => {
                        let _ = stream.flush().await;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = client_code(frame.as_ref());
                        return Outcome::Ended { code, reason, messages };
                    }
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        let _ = stream.close(Some(CloseFrame { code: CloseCode::Size, reason: "message too big".into() })).await;
                        return Outcome::Ended { code: close::INTERNAL_ERROR, reason: format!("backend sent {e}"), messages };
                    }
                    Some(Err(e)) if broke_protocol(&e) => {
                        return Outcome::Ended { code: close::INTERNAL_ERROR, reason: format!("backend broke the protocol: {e}"), messages };
                    }
                    Some(Err(e)) => {
                        return Outcome::Ended { code: close::SERVICE_RESTART, reason: format!("backend connection lost: {e}"), messages };
                    }
                    None => {
                        let (code, reason) = client_code(None);
                        return Outcome::Ended { code, reason, messages };
                    }
                }
            }
            _ = linger.tick() => {
                if link.should_close() {
                    let _ = stream.close(Some(CloseFrame { code: CloseCode::Away, reason: "no clients".into() })).await;
                    return Outcome::Idle;
                }
            }
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if heard_by.is_some_and(|h| now >= h) {
                    return Outcome::Ended { code: close::SERVICE_RESTART, reason: "backend stopped answering pings".into(), messages };
                }
                if now >= next_ping {
                    next_ping = now + ping_every;
                    heard_by.get_or_insert(now + keepalive.pong_timeout);
                    if stream.send(Message::Ping(Bytes::new())).await.is_err() {
                        return Outcome::Ended { code: close::SERVICE_RESTART, reason: "backend connection lost".into(), messages };
                    }
                }
            }
        }
    }
}

/// True when a backend's stream failed because the backend broke RFC 6455 (a malformed frame,
/// text that is not UTF-8): clients are closed with `1011`, as for any other internal error,
/// not `1012`, which says the link merely went away.
fn broke_protocol(e: &tungstenite::Error) -> bool {
    use tungstenite::error::ProtocolError as P;
    match e {
        tungstenite::Error::Utf8(_) => true,
        // A connection dropped without a close frame is a lost link, not a broken protocol.
        tungstenite::Error::Protocol(p) => matches!(
            p,
            P::NonZeroReservedBits
                | P::MaskedFrameFromServer
                | P::FragmentedControlFrame
                | P::ControlFrameTooBig
                | P::UnknownControlFrameType(_)
                | P::UnknownDataFrameType(_)
                | P::UnexpectedContinueFrame
                | P::ExpectedFragment(_)
                | P::InvalidOpcode(_)
                | P::InvalidCloseSequence
        ),
        _ => false,
    }
}

/// The close code a per-client session's client gets for its backend's close: the session ends
/// with the connection, so a normal close stays normal and what the backend says about the
/// client's own messages (1003, 1007, 1008, 1009) reaches it; link failures become 1012.
fn session_code(backend: Option<&CloseFrame>) -> (u16, String) {
    relayed_close(
        backend,
        |code| matches!(code, 1000 | 1001 | 1003 | 1007..=1009 | 1011 | 3000..=4999),
    )
}

/// Turns a client message into a frame; None (and the sender told) for text that is not UTF-8.
fn outgoing_frame(out: &mut Outgoing) -> Option<Message> {
    if out.binary {
        return Some(Message::Binary(out.payload.clone()));
    }
    match Utf8Bytes::try_from(out.payload.clone()) {
        Ok(t) => Some(Message::Text(t)),
        Err(_) => {
            if let Some(done) = out.done.take() {
                let _ = done.send(Err(UplinkError::Refused(400)));
            }
            None
        }
    }
}

/// Runs one per-client session's backend WebSocket until either side ends it. Reading and
/// writing are separate halves: while the client is behind (its outbox full), the reader waits
/// for room and the backend is not read (TCP backpressure), but client messages still go out,
/// so a backend that answers each message cannot wedge the session.
///
/// The writer only stops between messages: when the client side ends the session, the outbox
/// is ended first (so the reader drains the backend instead of waiting for room), then what the
/// client already sent goes out, then the close frame, and the reader waits for the backend's
/// close reply. All of that within [`CLOSE_WITHIN`].
pub async fn drive_session(
    stream: Stream,
    session: &Session,
    mut uplink: mpsc::Receiver<Outgoing>,
    keepalive: &Keepalive,
) -> SessionEnd {
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[&session.route]);
    let ping_every = (!keepalive.ping_interval.is_zero()).then_some(keepalive.ping_interval);
    // A write the backend does not take within this long ends the session.
    let write_limit = crate::bridge::write_deadline(keepalive);
    let (mut sink, mut source) = stream.split();
    // When the backend was last heard from (ms since `start`), and whether the reader is
    // waiting for room; shared by the two halves of this one task.
    let start = Instant::now();
    let since_start = || start.elapsed().as_millis() as u64;
    let heard = AtomicU64::new(0);
    let paused = AtomicBool::new(false);
    let too_big = AtomicBool::new(false);
    let lost = |reason: String| {
        SessionEnd::Backend(Gone {
            code: close::SERVICE_RESTART,
            reason,
        })
    };
    let reader = async {
        loop {
            let frame = source.next().await;
            heard.store(since_start(), Ordering::Relaxed);
            let (payload, binary) = match frame {
                Some(Ok(Message::Text(t))) => (Bytes::from(t), false),
                Some(Ok(Message::Binary(b))) => (b, true),
                // tungstenite answers pings itself, on this half's next read.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = session_code(frame.as_ref());
                    return SessionEnd::Backend(Gone { code, reason });
                }
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    too_big.store(true, Ordering::Relaxed);
                    return SessionEnd::Backend(Gone {
                        code: close::INTERNAL_ERROR,
                        reason: format!("backend sent {e}"),
                    });
                }
                Some(Err(e)) if broke_protocol(&e) => {
                    return SessionEnd::Backend(Gone {
                        code: close::INTERNAL_ERROR,
                        reason: format!("backend broke the protocol: {e}"),
                    });
                }
                Some(Err(e)) => return lost(format!("backend connection lost: {e}")),
                None => {
                    let (code, reason) = session_code(None);
                    return SessionEnd::Backend(Gone { code, reason });
                }
            };
            received.inc();
            // Once the session is ending the outbox is ended too, and this drops the message.
            if let Err(back) = session.outbox.try_push((None, payload, binary)) {
                paused.store(true, Ordering::Relaxed);
                session.outbox.push(back.0, back.1, back.2).await;
                paused.store(false, Ordering::Relaxed);
                heard.store(since_start(), Ordering::Relaxed);
            }
        }
    };
    let writer = async {
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        let mut next_ping = ping_every.map_or(far, |p| Instant::now() + p);
        // When the unanswered ping was sent (ms since start) and when its answer is due.
        let mut ping_out: Option<(u64, Instant)> = None;
        let client_end = session.ended_by_client();
        tokio::pin!(client_end);
        loop {
            tokio::select! {
                out = uplink.recv() => {
                    let Some(mut out) = out else {
                        std::future::pending::<()>().await;
                        continue;
                    };
                    // Its sender stopped waiting (a POST that timed out): not sent late.
                    if out.done.as_ref().is_some_and(|d| d.is_closed()) {
                        continue;
                    }
                    let Some(msg) = outgoing_frame(&mut out) else { continue };
                    let sent = tokio::time::timeout(write_limit, sink.send(msg)).await;
                    let result = match &sent {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(_)) => Err(UplinkError::Ended),
                        Err(_) => Err(UplinkError::Unreachable("the backend stopped reading".into())),
                    };
                    if let Some(done) = out.done {
                        let _ = done.send(result);
                    }
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return lost(format!("backend connection lost while sending: {e}")),
                        Err(_) => return SessionEnd::Backend(Gone {
                            code: close::INTERNAL_ERROR,
                            reason: format!("the backend took no message for {write_limit:?}"),
                        }),
                    }
                }
                why = &mut client_end => {
                    let close = close_frame(why);
                    session.outbox.end(Gone { code: u16::from(close.code), reason: close.reason.to_string() });
                    let finish = async {
                        while let Ok(mut out) = uplink.try_recv() {
                            if out.done.as_ref().is_some_and(|d| d.is_closed()) {
                                continue;
                            }
                            let Some(msg) = outgoing_frame(&mut out) else { continue };
                            let sent = sink.send(msg).await.map_err(|_| UplinkError::Ended);
                            if let Some(done) = out.done {
                                let _ = done.send(sent);
                            }
                        }
                        let _ = sink.send(Message::Close(Some(close))).await;
                    };
                    let _ = tokio::time::timeout(CLOSE_WITHIN, finish).await;
                    return SessionEnd::Client(why);
                }
                _ = sleep_until(next_ping), if ping_every.is_some() => {
                    next_ping = Instant::now() + ping_every.expect("branch enabled only with pings");
                    if ping_out.is_none() {
                        let ping = tokio::time::timeout(write_limit, sink.send(Message::Ping(Bytes::new())));
                        if !matches!(ping.await, Ok(Ok(()))) {
                            return lost("backend connection lost".into());
                        }
                        ping_out = Some((since_start(), Instant::now() + keepalive.pong_timeout));
                    }
                }
                _ = async { sleep_until(ping_out.expect("branch enabled only with a ping out").1).await }, if ping_out.is_some() => {
                    let (sent_at, _) = ping_out.take().expect("checked above");
                    // Anything heard since the ping proves the backend alive; a paused reader
                    // cannot hear, so it gets no verdict.
                    if heard.load(Ordering::Relaxed) < sent_at && !paused.load(Ordering::Relaxed) {
                        return lost("backend stopped answering pings".into());
                    }
                }
            }
        }
    };
    let (mut reader, mut writer) = (Box::pin(reader), Box::pin(writer));
    let end = tokio::select! {
        end = &mut reader => end,
        end = &mut writer => match end {
            SessionEnd::Client(why) => {
                // Read (and drop) until the backend's close reply, so the close completes.
                let _ = tokio::time::timeout(CLOSE_WITHIN, &mut reader).await;
                return SessionEnd::Client(why);
            }
            backend => backend,
        },
    };
    drop((reader, writer));
    // The backend ended it: send tungstenite's close reply (or our 1009 for an oversized
    // message) before the socket goes.
    let closing = async {
        if too_big.load(Ordering::Relaxed) {
            let frame = CloseFrame {
                code: CloseCode::Size,
                reason: "message too big".into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let _ = sink.close().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
    end
}

/// How long closing a session's backend connection may take.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

/// The close frame the backend gets when the client side ends a session.
fn close_frame(why: EndReason) -> CloseFrame {
    let (code, reason) = match why {
        EndReason::Client | EndReason::Backend => (CloseCode::Normal, "client closed the session"),
        EndReason::Expired => (CloseCode::Away, "session expired"),
        EndReason::Shutdown => (CloseCode::Away, "gateway shutting down"),
    };
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_close_codes_are_passed_on_when_sendable() {
        let frame = |code: u16| CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        };
        assert_eq!(client_code(Some(&frame(4001))).0, 4001);
        assert_eq!(client_code(Some(&frame(1000))).0, close::SERVICE_RESTART);
        assert!(client_code(Some(&frame(1000))).1.contains("1000: bye"));
        assert_eq!(client_code(Some(&frame(1002))).0, close::SERVICE_RESTART);
        assert_eq!(client_code(Some(&frame(1006))).0, close::SERVICE_RESTART);
        assert_eq!(client_code(None).0, close::SERVICE_RESTART);
        // A session ends with its backend: a normal close stays normal.
        assert_eq!(session_code(Some(&frame(1000))).0, 1000);
        assert_eq!(session_code(Some(&frame(1008))).0, 1008);
        assert_eq!(session_code(Some(&frame(4001))).0, 4001);
        assert_eq!(session_code(Some(&frame(1002))).0, close::SERVICE_RESTART);
    }
}
