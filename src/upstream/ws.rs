//! The WebSocket backend connector: a tokio-tungstenite client that opens the route's backend
//! URL, offers the configured subprotocols and headers, and publishes every text or binary
//! message into the route's hub until the connection ends or nobody needs it.
//!
//! Keepalive toward the backend uses the route's `ping_interval` and `pong_timeout`: a backend
//! that sends nothing at all, not even a pong, for that long is dropped and reconnected.

use super::feed::{connect_tcp, within_connect_timeout, Connected, Link, Outcome};
use super::private::SessionEnd;
use crate::bridge::hub::Gone;
use crate::bridge::session::{EndReason, Outgoing, Session, UplinkError};
use crate::config::{BackendFeed, Keepalive};
use crate::metrics;
use crate::transport::ws::close;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue};
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
    match backend {
        Some(f) => {
            let code = u16::from(f.code);
            if (3000..=4999).contains(&code) {
                (code, format!("backend closed: {}", f.reason))
            } else {
                (
                    close::SERVICE_RESTART,
                    format!("backend closed with {code}: {}", f.reason),
                )
            }
        }
        None => (
            close::SERVICE_RESTART,
            "backend closed the connection".into(),
        ),
    }
}

/// A connected backend WebSocket.
pub type Stream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens the backend WebSocket with the configured headers plus `extra` (a client's forwarded
/// headers), within `connect_timeout`. Returns the stream and the subprotocol it chose.
pub async fn connect(
    feed: &BackendFeed,
    extra: &[(HeaderName, HeaderValue)],
    max_message: usize,
) -> Result<(Stream, Option<String>), Outcome> {
    let mut request = match format!("ws://{}{}", feed.authority, feed.path).into_client_request() {
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
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let connect = async {
        let tcp = connect_tcp(feed).await?;
        tokio_tungstenite::client_async_with_config(request, tcp, Some(config))
            .await
            .map_err(|e| format!("handshake: {e}"))
    };
    let (stream, response) = within_connect_timeout(feed, connect).await?;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((stream, protocol))
}

pub async fn session(link: &Link, feed: &BackendFeed) -> Outcome {
    let route = link.route_name();
    let max = link.route.limits.max_message as usize;
    let (mut stream, protocol) = match connect(feed, &[], max).await {
        Ok(c) => c,
        Err(failed) => return failed,
    };
    link.hub.set_backend_protocol(protocol);
    let _connected = Connected::new(route);
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
                        link.hub.publish(Bytes::from(t), false);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        messages += 1;
                        received.inc();
                        link.hub.publish(b, true);
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

/// The close code a per-client session's client gets for its backend's close: the session ends
/// with the connection, so a normal close stays normal and what the backend says about the
/// client's own messages (1003, 1007, 1008, 1009) reaches it; link failures become 1012.
fn session_code(backend: Option<&CloseFrame>) -> (u16, String) {
    match backend {
        Some(f) => {
            let code = u16::from(f.code);
            if matches!(code, 1000 | 1001 | 1003 | 1007..=1009 | 1011 | 3000..=4999) {
                (code, f.reason.to_string())
            } else {
                (
                    close::SERVICE_RESTART,
                    format!("backend closed with {code}: {}", f.reason),
                )
            }
        }
        None => (
            close::SERVICE_RESTART,
            "backend closed the connection".into(),
        ),
    }
}

/// Runs one per-client session's backend WebSocket: backend messages into the session's outbox
/// (waiting while the client is behind), client messages out in order, keepalive pings, and the
/// close in whichever direction it comes.
pub async fn drive_session(
    mut stream: Stream,
    session: &Session,
    mut uplink: mpsc::Receiver<Outgoing>,
    keepalive: &Keepalive,
) -> SessionEnd {
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[&session.route]);
    let far = Duration::from_secs(86_400 * 365);
    let ping_every = if keepalive.ping_interval.is_zero() {
        far
    } else {
        keepalive.ping_interval
    };
    let mut next_ping = Instant::now() + ping_every;
    let mut heard_by: Option<Instant> = None;
    let client_end = session.ended_by_client();
    tokio::pin!(client_end);
    // A backend message waiting for room: while it waits, the backend is not read (TCP
    // backpressure), but client messages still go out.
    let mut waiting: Option<(Option<Box<str>>, Bytes, bool)> = None;
    let lost = |reason: String| {
        SessionEnd::Backend(Gone {
            code: close::SERVICE_RESTART,
            reason,
        })
    };
    loop {
        let wake = heard_by.map_or(next_ping, |h| h.min(next_ping));
        tokio::select! {
            frame = stream.next(), if waiting.is_none() => {
                heard_by = None;
                let (payload, binary) = match frame {
                    Some(Ok(Message::Text(t))) => (Bytes::from(t), false),
                    Some(Ok(Message::Binary(b))) => (b, true),
                    Some(Ok(Message::Ping(_))) => {
                        let _ = stream.flush().await;
                        continue;
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Close(frame))) => {
                        let (code, reason) = session_code(frame.as_ref());
                        return SessionEnd::Backend(Gone { code, reason });
                    }
                    Some(Err(tungstenite::Error::Capacity(e))) => {
                        let _ = stream.close(Some(CloseFrame { code: CloseCode::Size, reason: "message too big".into() })).await;
                        return SessionEnd::Backend(Gone { code: close::INTERNAL_ERROR, reason: format!("backend sent {e}") });
                    }
                    Some(Err(e)) => return lost(format!("backend connection lost: {e}")),
                    None => {
                        let (code, reason) = session_code(None);
                        return SessionEnd::Backend(Gone { code, reason });
                    }
                };
                received.inc();
                waiting = session.outbox.try_push((None, payload, binary)).err();
            }
            _ = session.outbox.room(), if waiting.is_some() => {
                let msg = waiting.take().expect("branch enabled only while waiting");
                waiting = session.outbox.try_push(msg).err();
            }
            out = uplink.recv() => {
                let Some(out) = out else { continue };
                let msg = if out.binary {
                    Message::Binary(out.payload)
                } else {
                    match Utf8Bytes::try_from(out.payload) {
                        Ok(t) => Message::Text(t),
                        Err(_) => {
                            if let Some(done) = out.done {
                                let _ = done.send(Err(UplinkError::Refused(400)));
                            }
                            continue;
                        }
                    }
                };
                let sent = stream.send(msg).await;
                let failed = sent.is_err();
                if let Some(done) = out.done {
                    let _ = done.send(sent.map_err(|_| UplinkError::Ended));
                }
                if failed {
                    return lost("backend connection lost while sending".into());
                }
            }
            why = &mut client_end => return close_for_client(&mut stream, why).await,
            _ = sleep_until(wake) => {
                let now = Instant::now();
                if waiting.is_some() {
                    // Not reading the backend, so its pongs cannot be heard: no pings now.
                    heard_by = None;
                    next_ping = now + ping_every;
                    continue;
                }
                if heard_by.is_some_and(|h| now >= h) {
                    return lost("backend stopped answering pings".into());
                }
                if now >= next_ping {
                    next_ping = now + ping_every;
                    heard_by.get_or_insert(now + keepalive.pong_timeout);
                    if stream.send(Message::Ping(Bytes::new())).await.is_err() {
                        return lost("backend connection lost".into());
                    }
                }
            }
        }
    }
}

async fn close_for_client(stream: &mut Stream, why: EndReason) -> SessionEnd {
    let (code, reason) = match why {
        EndReason::Client => (CloseCode::Normal, "client closed the session"),
        EndReason::Expired => (CloseCode::Away, "session expired"),
        EndReason::Shutdown => (CloseCode::Away, "gateway shutting down"),
        EndReason::Backend => (CloseCode::Normal, ""),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        stream.close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
    )
    .await;
    SessionEnd::Client(why)
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
