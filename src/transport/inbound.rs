//! Client-to-backend messages over plain HTTP, for clients that cannot hold a WebSocket.
//!
//! `POST path?transport=poll|sse&session=ID` sends to the session's backend (on a shared `sse:`
//! route with `post:`, no session is needed: the POST is relayed with the client's headers). The
//! body is one message, or several:
//! - `application/json`: an array whose items are strings (text messages) or
//!   `{"binary": "<base64>"}`; a single JSON string is one message;
//! - `application/octet-stream`: one binary message;
//! - anything else (`text/plain`, or no type for clients that cannot set one): one text message,
//!   which must be UTF-8.
//!
//! The answer comes once the backend took every message (written to its WebSocket, or 2xx from
//! `post:`): 204. Messages of one POST keep their order, and so do sequential POSTs. A body over
//! `max_message` (or of more than [`MAX_MESSAGES_PER_POST`] messages) is 413; a malformed one 400; an unknown session 410; a backend that refused a
//! message passes its 4xx on, and one that could not be reached is 502.
//!
//! `DELETE path?transport=poll|sse&session=ID` ends a session and closes its backend socket: 204.

use super::longpoll::session_gone;
use super::Downstream;
use super::Respond;
use crate::bridge::session::POST_DEADLINE;
use crate::bridge::session::{EndReason, Outgoing, UplinkError};
use crate::bridge::{Bridge, Elsewhere};
use crate::metrics;
use crate::policy::reject::Reject;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::oneshot;

/// One message a client sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Inbound {
    pub payload: Bytes,
    pub binary: bool,
}

/// At most this many messages in one POST body: a 1 MiB array of empty strings would otherwise
/// become hundreds of thousands of queued messages, each with its own bookkeeping.
pub const MAX_MESSAGES_PER_POST: usize = 1000;

/// Why a POST body was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Malformed for its content type (400).
    Malformed(String),
    /// More than [`MAX_MESSAGES_PER_POST`] messages (413).
    TooMany,
}

/// A JSON body's items, counted as they are read: parsing stops at the first item past
/// [`MAX_MESSAGES_PER_POST`], before the rest is built.
struct Items;

impl<'de> serde::de::Visitor<'de> for Items {
    type Value = Vec<serde_json::Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of messages (or one string)")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<serde_json::Value>()? {
            if items.len() == MAX_MESSAGES_PER_POST {
                return Err(serde::de::Error::custom(TOO_MANY));
            }
            items.push(item);
        }
        Ok(items)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(vec![serde_json::Value::String(s.to_owned())])
    }
}

const TOO_MANY: &str = "too many messages in one body";

/// Splits a POST body into messages by its content type (see the module docs).
pub fn parse_body(content_type: &str, body: Bytes) -> Result<Vec<Inbound>, BodyError> {
    parse_messages(content_type, body).map_err(|why| {
        if why.contains(TOO_MANY) {
            BodyError::TooMany
        } else {
            BodyError::Malformed(why)
        }
    })
}

fn parse_messages(content_type: &str, body: Bytes) -> Result<Vec<Inbound>, String> {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => {
            let mut de = serde_json::Deserializer::from_slice(&body);
            let items = serde::Deserializer::deserialize_any(&mut de, Items)
                .and_then(|items| de.end().map(|()| items))
                .map_err(|e| {
                    if e.is_data() && !e.to_string().contains(TOO_MANY) {
                        "a JSON body is an array of messages (or one string)".to_owned()
                    } else {
                        format!("body is not JSON: {e}")
                    }
                })?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    serde_json::Value::String(s) => Ok(Inbound {
                        payload: Bytes::from(s),
                        binary: false,
                    }),
                    serde_json::Value::Object(o) => match o.get("binary") {
                        Some(serde_json::Value::String(b64)) if o.len() == 1 => {
                            base64::engine::general_purpose::STANDARD
                                .decode(b64)
                                .map(|b| Inbound {
                                    payload: Bytes::from(b),
                                    binary: true,
                                })
                                .map_err(|e| format!("message {i}: invalid base64: {e}"))
                        }
                        _ => Err(format!(
                            "message {i}: an object message is {{\"binary\": \"<base64>\"}}"
                        )),
                    },
                    _ => Err(format!(
                        "message {i}: messages are strings or {{\"binary\": \"<base64>\"}}"
                    )),
                })
                .collect()
        }
        "application/octet-stream" => Ok(vec![Inbound {
            payload: body,
            binary: true,
        }]),
        _ => match std::str::from_utf8(&body) {
            Ok(_) => Ok(vec![Inbound {
                payload: body,
                binary: false,
            }]),
            Err(_) => {
                Err("a text body must be UTF-8 (send binary as application/octet-stream)".into())
            }
        },
    }
}

/// Reads the whole request body, refusing it past `max` bytes, or when the process's memory
/// budget cannot hold it (503); the body's charge is held until its messages are delivered.
async fn read_body<D: Downstream>(
    down: &mut D,
    max: usize,
) -> Result<(Bytes, crate::memory::Charge), Reject> {
    let too_big = || {
        Reject::new(
            413,
            "body_too_large",
            format!("the body exceeds max_message ({max} bytes)"),
        )
    };
    let declared = down
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let over_budget = || {
        Reject::new(
            503,
            "memory_budget",
            "the gateway's memory budget is spent; try again shortly",
        )
        .header("retry-after", "1")
    };
    // A body that cannot fit now is refused before it is sent; one that could is charged as it
    // arrives (a slow sender holds only what it sent).
    if declared.is_some_and(|n| !crate::memory::would_fit(n as usize, "post_body")) {
        return Err(over_budget());
    }
    let mut body = BytesMut::new();
    let mut charge = crate::memory::Charge::none();
    loop {
        let chunk = tokio::time::timeout(POST_DEADLINE, down.read_request_body()).await;
        match chunk {
            Err(_) => {
                return Err(Reject::new(
                    408,
                    "body_timeout",
                    "the request body did not arrive in time",
                ))
            }
            Ok(Err(_)) => return Err(Reject::new(400, "bad_body", "the request body was cut")),
            Ok(Ok(None)) => return Ok((body.freeze(), charge)),
            Ok(Ok(Some(data))) => {
                if body.len() + data.len() > max {
                    return Err(too_big());
                }
                if !charge.resize(body.len() + data.len(), "post_body") {
                    return Err(over_budget());
                }
                body.extend_from_slice(&data);
            }
        }
    }
}

/// A client's message body (at most the route's `max_message`), counted in
/// `switchyard_bytes_total` under `transport`, with its content type. Its charge to the memory
/// budget is held until the caller drops it.
pub(super) async fn read_message_body<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    transport: &'static str,
) -> Result<(Bytes, crate::memory::Charge, String), Reject> {
    let (body, charge) = read_body(down, bridge.route.limits.max_message as usize).await?;
    metrics::BYTES
        .with_label_values(&[bridge.route.name.as_str(), transport, "in"])
        .inc_by(body.len() as u64);
    let content_type = down
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok((body, charge, content_type))
}

fn session_param<D: Downstream>(down: &D) -> Option<String> {
    super::query_param(down.req_header(), "session").map(String::from)
}

/// Answers a POST: relays its messages to the backend in order.
pub async fn post<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    transport: &'static str,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    match send(down, bridge, transport).await {
        Ok(()) => {
            let mut resp = ResponseHeader::build(204, Some(1))?;
            resp.insert_header("cache-control", "no-store")?;
            down.write_response_header(Box::new(resp), true).await
        }
        Err(reject) => reject.send(down, route).await,
    }
}

async fn send<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    transport: &'static str,
) -> Result<(), Reject> {
    let route = bridge.route.name.as_str();
    if !bridge.spec.two_way() {
        return Err(one_way(route));
    }
    // The session (or a relay for this request) is found before the body is read, so a bad id
    // costs nothing.
    let (uplink, busy) = match bridge.sessions() {
        Some(sessions) => {
            let Some(id) = session_param(down) else {
                return Err(Reject::new(
                    400,
                    "missing_session",
                    "POST needs `session=ID` (from the first poll's answer or the SSE `session` event)",
                ));
            };
            let Some(conv) = sessions.get(&id) else {
                let remote = match bridge.remote_session(&id).await {
                    Elsewhere::Found(remote) => remote,
                    Elsewhere::Nowhere => return Err(session_gone(route)),
                    Elsewhere::Unknown => return Err(super::session_unknown(route)),
                };
                return send_remote(down, bridge, transport, remote).await;
            };
            let busy = conv.busy();
            (
                conv.uplink().ok_or_else(|| session_gone(route))?,
                Some(busy),
            )
        }
        None => {
            let client = super::client_info(down);
            let relay = bridge
                .client_poster(down.req_header(), &client)
                .expect("two-way shared routes have post");
            (relay, None)
        }
    };
    // The body's charge is held until its messages were delivered (or refused).
    let (messages, _charge) = read_messages(down, bridge, transport).await?;
    let result = deliver(&uplink, messages, route).await;
    drop(busy);
    result
}

/// Reads a POST body and parses its messages (counted); the body's charge comes with them.
async fn read_messages<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    transport: &'static str,
) -> Result<(Vec<Inbound>, crate::memory::Charge), Reject> {
    let (body, charge, content_type) = read_message_body(down, bridge, transport).await?;
    let messages = parse_body(&content_type, body).map_err(|e| match e {
        BodyError::Malformed(why) => Reject::new(400, "bad_body", why),
        BodyError::TooMany => Reject::new(
            413,
            "too_many_messages",
            format!("at most {MAX_MESSAGES_PER_POST} messages in one body"),
        ),
    })?;
    metrics::MESSAGES
        .with_label_values(&[&bridge.route.name, transport, "in"])
        .inc_by(messages.len() as u64);
    Ok((messages, charge))
}

/// A POST for a session another instance of the cluster owns: relayed to the owner, answered
/// as a local one once the owner's backend took every message (or did not).
async fn send_remote<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    transport: &'static str,
    remote: Box<dyn crate::bridge::session::Remote>,
) -> Result<(), Reject> {
    let route = bridge.route.name.as_str();
    let (messages, _charge) = read_messages(down, bridge, transport).await?;
    let count = messages.len();
    let messages = messages
        .into_iter()
        .map(|m| (m.payload, m.binary))
        .collect();
    remote
        .send(messages)
        .await
        .map_err(|(i, e)| refused(i, count, e, route))
}

/// Hands client messages to the backend in order and waits until it took every one (written
/// to its WebSocket, or 2xx from `post:`), within [`POST_DEADLINE`] for queueing and delivery
/// together. A message still queued when it passes is not sent later: the backend task skips
/// messages whose sender stopped waiting.
pub(super) async fn deliver(
    uplink: &tokio::sync::mpsc::Sender<Outgoing>,
    messages: Vec<Inbound>,
    route: &str,
) -> Result<(), Reject> {
    let count = messages.len();
    let delivered = AtomicUsize::new(0);
    let all = async {
        let mut pending = Vec::with_capacity(count);
        for m in messages {
            let (done, heard) = oneshot::channel();
            let out = Outgoing {
                payload: m.payload,
                binary: m.binary,
                done: Some(done),
            };
            if uplink.send(out).await.is_err() {
                return Err((pending.len(), UplinkError::Ended));
            }
            pending.push(heard);
        }
        for (i, heard) in pending.into_iter().enumerate() {
            match heard.await.unwrap_or(Err(UplinkError::Ended)) {
                Ok(()) => delivered.store(i + 1, Ordering::Relaxed),
                Err(e) => return Err((i, e)),
            }
        }
        Ok(())
    };
    let result = tokio::time::timeout(POST_DEADLINE, all).await;
    match result {
        Err(_) => Err(Reject::new(
            504,
            "backend_timeout",
            format!(
                "the backend did not take the messages in time; {} of {count} messages were delivered, the rest were dropped",
                delivered.load(Ordering::Relaxed)
            ),
        )),
        Ok(Ok(())) => Ok(()),
        Ok(Err((i, e))) => Err(refused(i, count, e, route)),
    }
}

/// The answer to messages sent on a route whose backend takes none (a shared feed without
/// `post:`).
pub(super) fn one_way(route: &str) -> Reject {
    Reject::new(
        405,
        "one_way_route",
        format!("route {route} only streams to clients: its backend takes no messages"),
    )
    .header("allow", "GET")
}

/// The answer for a message the backend did not take; messages before it were delivered.
pub(super) fn refused(i: usize, count: usize, e: UplinkError, route: &str) -> Reject {
    let delivered = format!("{i} of {count} messages were delivered");
    match e {
        UplinkError::Ended => Reject::new(
            410,
            "unknown_session",
            format!("the session on route {route} ended; {delivered}"),
        ),
        UplinkError::Refused(status) if (400..500).contains(&status) => Reject::new(
            status,
            "backend_refused",
            format!("the backend refused message {i} with HTTP {status}; {delivered}"),
        ),
        UplinkError::Refused(status) => Reject::new(
            502,
            "backend_refused",
            format!("the backend answered message {i} with HTTP {status}; {delivered}"),
        ),
        UplinkError::Unreachable(why) => Reject::new(
            502,
            "backend_unreachable",
            format!("the backend could not be reached: {why}; {delivered}"),
        ),
    }
}

/// Answers a DELETE: ends the session and closes its backend connection.
pub async fn delete<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let Some(sessions) = bridge.sessions() else {
        return Reject::new(
            405,
            "bad_method",
            format!("route {route} has no sessions to end"),
        )
        .header("allow", "GET")
        .send(down, route)
        .await;
    };
    let Some(id) = session_param(down) else {
        return session_gone(route).send(down, route).await;
    };
    match sessions.get(&id) {
        Some(conv) => conv.close(EndReason::Client),
        None => match bridge.remote_session(&id).await {
            Elsewhere::Found(remote) => remote.close().await,
            Elsewhere::Nowhere => return session_gone(route).send(down, route).await,
            Elsewhere::Unknown => return super::session_unknown(route).send(down, route).await,
        },
    }
    let mut resp = ResponseHeader::build(204, Some(1))?;
    resp.insert_header("cache-control", "no-store")?;
    down.write_response_header(Box::new(resp), true).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(v: &[Inbound]) -> Vec<(&[u8], bool)> {
        v.iter().map(|m| (&m.payload[..], m.binary)).collect()
    }

    #[test]
    fn bodies_split_by_content_type() {
        let json = parse_body(
            "application/json; charset=utf-8",
            Bytes::from_static(br#"["a", {"binary": "AAE="}, "c"]"#),
        )
        .unwrap();
        assert_eq!(
            texts(&json),
            [
                (&b"a"[..], false),
                (&[0u8, 1][..], true),
                (&b"c"[..], false)
            ]
        );
        let one = parse_body("application/json", Bytes::from_static(br#""x""#)).unwrap();
        assert_eq!(texts(&one), [(&b"x"[..], false)]);
        let plain = parse_body("", Bytes::from_static(b"[not json]")).unwrap();
        assert_eq!(texts(&plain), [(&b"[not json]"[..], false)]);
        let bin = parse_body("application/octet-stream", Bytes::from_static(b"\xff")).unwrap();
        assert_eq!(texts(&bin), [(&b"\xff"[..], true)]);
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        assert!(parse_body("application/json", Bytes::from_static(b"{")).is_err());
        assert!(parse_body("application/json", Bytes::from_static(b"{\"a\":1}")).is_err());
        assert!(parse_body("application/json", Bytes::from_static(b"[1]")).is_err());
        assert!(parse_body(
            "application/json",
            Bytes::from_static(br#"[{"binary":"!"}]"#)
        )
        .is_err());
        assert!(parse_body("text/plain", Bytes::from_static(b"\xff")).is_err());
        assert!(matches!(
            parse_body("application/json", Bytes::from_static(b"[\"a\"] trailing")),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn a_body_holds_a_bounded_number_of_messages() {
        let array = |n: usize| Bytes::from(format!("[{}]", vec!["\"\""; n].join(",")));
        let most = parse_body("application/json", array(MAX_MESSAGES_PER_POST)).unwrap();
        assert_eq!(most.len(), MAX_MESSAGES_PER_POST);
        assert_eq!(
            parse_body("application/json", array(MAX_MESSAGES_PER_POST + 1)),
            Err(BodyError::TooMany)
        );
        // A megabyte of empty strings is refused at the first item too many.
        assert_eq!(
            parse_body("application/json", array(300_000)),
            Err(BodyError::TooMany)
        );
    }
}
