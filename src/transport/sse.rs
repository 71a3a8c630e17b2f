//! The client side of Server-Sent Events (WHATWG HTML, "Server-sent events"): a
//! `text/event-stream` response written one event per flushed chunk, with `retry:` on connect,
//! an `id:` on every event, heartbeat comments, and resume from `Last-Event-ID`.
//!
//! Event ids are `EPOCH-SEQ`: the epoch changes when the feed starts over, so an id from an older
//! feed is never mistaken for a position in the current one.
//!
//! Binary messages (which SSE cannot carry) are sent base64-encoded as `event: binary`, or
//! dropped with `binary: drop`. Event names from an SSE backend are kept (`event:`).
//! When a resume position is older than the replay window, an `event: gap` comes first, so a
//! client can tell that messages were missed; `drop_oldest` uses the same marker.
//!
//! When the backend connection ends, the stream gets a comment and a fresh `retry:` and is
//! closed: EventSource reconnects by itself and resumes with `Last-Event-ID` from the replay
//! ring. `retry:` values are jittered so reconnects spread out.
//!
//! On a `per_client` route each stream is a session: `event: session` first, ids `SESSION-SEQ`,
//! and a reconnect with `Last-Event-ID` reattaches to the session while it lives.

use super::{Burst, Downstream};
use crate::access_log::{Closer, StreamEnd};
use crate::bridge::session::{EndReason, Session, Sessions};
use crate::bridge::{write_deadline, Bridge, Consumer, Delivery, Elsewhere, Joined, Message};
use crate::config::BinaryPolicy;
use crate::metrics;
use crate::wire::sse::resume_position;
use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// How long browsers wait before reconnecting, sent on connect.
pub const RETRY_MS: u64 = 2000;

pub async fn serve<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    if let Some(sessions) = bridge.sessions() {
        return serve_session(down, bridge, sessions).await;
    }
    let hub = bridge
        .hub()
        .expect("SSE clients of a route without sessions read its hub");
    let last_id = last_event_id(down);
    bridge.ready().await;
    // An id from another epoch means the feed restarted: replay all that is held, with a gap mark.
    // So is a position ahead of the feed's head (a forged or corrupted id).
    let resumed = last_id
        .as_deref()
        .map(|id| resume_position(id, &hub.epoch).filter(|seq| hub.plausible(*seq)));
    let foreign_id = matches!(resumed, Some(None));
    let after = resumed.map(|p| p.unwrap_or(0));
    let Joined {
        backlog,
        gap,
        consumer,
    } = bridge.join(after, "sse");

    let mut first = BytesMut::new();
    first.put_slice(retry_field().as_bytes());
    first.put_u8(b'\n');
    if gap || foreign_id {
        first.put_slice(GAP_EVENT);
    }
    if last_id.is_some() {
        bridge.count_replay(gap || foreign_id);
    }
    stream(down, bridge, &hub.epoch, first, &backlog, consumer, None).await
}

const GAP_EVENT: &[u8] = b"event: gap\ndata: messages before this point were missed\n\n";

/// Serves an SSE client of a `per_client` route. A `Last-Event-ID` (or `?lastEventId=`) of
/// `SESSION-SEQ` reattaches to that session while it lives, after SEQ; otherwise a new session
/// is opened (502 when its backend cannot be reached). Its id comes first, as
/// `event: session`; the client sends with `POST path?transport=sse&session=ID`.
async fn serve_session<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sessions: &Arc<Sessions>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let last_id = last_event_id(down);
    // A session another instance of the cluster owns: its stream is read from there.
    if let Some((sid, seq)) = last_id.as_deref().and_then(|id| {
        let (sid, seq) = id.trim().rsplit_once('-')?;
        let seq: u64 = seq.parse().ok()?;
        sessions.get(sid).is_none().then(|| (sid.to_owned(), seq))
    }) {
        match bridge.remote_session(&sid).await {
            Elsewhere::Found(remote) => return serve_remote(down, bridge, &sid, seq, remote).await,
            // EventSource gives up for good on an answer other than 200, and reconnects
            // after a stream that ends: an empty stream with `retry:` brings it back soon.
            Elsewhere::Unknown => return retry_soon(down, bridge).await,
            Elsewhere::Nowhere => {}
        }
    }
    let resumed = last_id.as_deref().and_then(|id| {
        let (sid, seq) = id.trim().rsplit_once('-')?;
        let s = sessions.get(sid)?;
        let seq: u64 = seq.parse().ok()?;
        (seq <= s.outbox.head() && s.stopping().is_none()).then_some((s, seq))
    });
    let mut first = BytesMut::new();
    first.put_slice(retry_field().as_bytes());
    first.put_u8(b'\n');
    let (conv, after) = match resumed {
        Some((conv, after)) => {
            // No `id:` here: the browser keeps its last event id, and so its place.
            first.put_slice(format!("event: session\ndata: {}\n\n", conv.id).as_bytes());
            if conv.outbox.after(after, 1).gap {
                first.put_slice(GAP_EVENT);
            }
            (conv, after)
        }
        None => {
            let client = super::client_info(down);
            // Boxed, as every step taken once before the stream: the connection's future is
            // sized by its largest state, and these would otherwise be carried for hours.
            let opened =
                Box::pin(bridge.open_session(down.req_header(), &client, "sse", true)).await;
            match opened {
                Ok(conv) => {
                    first.put_slice(
                        format!("id: {0}-0\nevent: session\ndata: {0}\n\n", conv.id).as_bytes(),
                    );
                    (conv, 0)
                }
                Err(why) => return Box::pin(super::session_refused(down, route, why)).await,
            }
        }
    };
    let _busy = conv.busy();
    let consumer = Consumer::for_session(
        conv.clone(),
        conv.attach(),
        "sse",
        after,
        write_deadline(&bridge.route.keepalive),
    );
    stream(down, bridge, &conv.id, first, &[], consumer, Some(&conv)).await
}

/// An SSE client reattaching (with `Last-Event-ID: SESSION-SEQ`) to a session another instance
/// owns: the session's messages after SEQ are read from its stream in Redis, waiting for the
/// owner's wake-up between batches, until the session ends, the client goes or the gateway
/// drains.
async fn serve_remote<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sid: &str,
    mut cursor: u64,
    remote: Box<dyn crate::bridge::session::Remote>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let _open = begin_stream(down, route).await?;
    let mut delivered = metrics::Delivered::new(route, "sse");
    let deadline = write_deadline(&bridge.route.keepalive);
    let heartbeat = bridge.route.keepalive.sse_heartbeat;
    let wait = if heartbeat.is_zero() {
        std::time::Duration::from_secs(15)
    } else {
        heartbeat
    };
    let drop_binary = bridge.spec.binary == BinaryPolicy::Drop;
    let mut chunk = BytesMut::new();
    chunk.put_slice(retry_field().as_bytes());
    chunk.put_slice(format!("\nevent: session\ndata: {sid}\n\n").as_bytes());
    let mut watching_client = true;
    let closing = bridge.closing();
    tokio::pin!(closing);
    let by = loop {
        if !chunk.is_empty() {
            let out = std::mem::take(&mut chunk).freeze();
            delivered.bytes(out.len());
            let wrote = tokio::time::timeout(deadline, down.write_response_body(Some(out), false));
            if !matches!(wrote.await, Ok(Ok(()))) {
                super::abandon(down);
                down.stream_ended(ended(&delivered, Closer::Client));
                return Ok(());
            }
        }
        let batch = tokio::select! {
            b = remote.poll(cursor, 256, wait) => b,
            idle = down.read_body_or_idle(true), if watching_client => match idle {
                Err(_) => {
                    down.stream_ended(ended(&delivered, Closer::Client));
                    return Ok(());
                }
                Ok(_) => { watching_client = false; continue }
            },
            _ = &mut closing => {
                chunk.put_slice((retry_field() + "\n").as_bytes());
                let _ = tokio::time::timeout(deadline, down.write_response_body(Some(chunk.freeze()), false)).await;
                break Closer::Gateway;
            }
        };
        if let Some(gone) = &batch.ended {
            let closed = serde_json::json!({ "code": gone.code, "reason": gone.reason });
            chunk.put_slice(format!("event: closed\ndata: {closed}\n\n").as_bytes());
            let _ = tokio::time::timeout(
                deadline,
                down.write_response_body(Some(chunk.freeze()), false),
            )
            .await;
            remote.close().await;
            break Closer::Backend;
        }
        if batch.gap {
            chunk.put_slice(GAP_EVENT);
        }
        if batch.messages.is_empty() {
            chunk.put_slice(b": heartbeat\n\n");
        }
        for m in &batch.messages {
            cursor = m.seq;
            if m.binary && drop_binary {
                continue;
            }
            chunk.put_slice(&m.sse_frame(sid));
            delivered.untimed(1);
        }
    };
    down.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = down.write_response_body(None, true).await;
    down.stream_ended(ended(&delivered, by));
    Ok(())
}

/// An event stream that says only `retry:` and ends: the client reconnects (with its
/// `Last-Event-ID`) in about a second, when the cluster may know again where its session is.
async fn retry_soon<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    super::session_unknown(route).count(route);
    let _open = begin_stream(down, route).await?;
    let mut body = BytesMut::new();
    body.put_slice(retry_field().as_bytes());
    body.put_u8(b'\n');
    down.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = down.write_response_body(Some(body.freeze()), true).await;
    Ok(())
}

/// Sends an event stream's response head and turns the request into a stream; the stream is
/// counted as an open connection while the guard lives.
async fn begin_stream<D: Downstream>(
    down: &mut D,
    route: &str,
) -> pingora::Result<metrics::OpenConnection> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header("content-type", "text/event-stream")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    super::unbounded_body(down, &mut resp)?;
    Box::pin(down.write_response_header(Box::new(resp), false)).await?;
    down.release_request();
    let open = metrics::OpenConnection::new(route, "sse");
    down.set_read_timeout(None);
    Ok(open)
}

fn last_event_id<D: Downstream>(down: &D) -> Option<String> {
    down.req_header()
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| super::query_param(down.req_header(), "lastEventId").map(String::from))
}

/// Writes the event stream: headers, `first`, the backlog, then live messages with heartbeats
/// until the client, the backend or the gateway ends it. `conv` is the client's own session on a
/// per-client route: its end is told as `event: closed` and closes the session.
async fn stream<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    epoch: &str,
    first: BytesMut,
    backlog: &[Arc<Message>],
    consumer: Consumer,
    conv: Option<&Arc<Session>>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let _open = begin_stream(down, route).await?;
    let mut delivered = metrics::Delivered::new(route, "sse");
    let by = pump(
        down,
        bridge,
        epoch,
        first,
        backlog,
        consumer,
        conv,
        &mut delivered,
    )
    .await;
    down.stream_ended(ended(&delivered, by));
    Ok(())
}

/// The access log's account of an SSE stream.
fn ended(delivered: &metrics::Delivered, by: Closer) -> StreamEnd {
    let (messages_out, bytes_out) = delivered.totals();
    StreamEnd {
        transport: "sse",
        messages_out,
        bytes_out,
        closed_by: Some(by),
        ..StreamEnd::default()
    }
}

/// [`stream`]'s loop; tells who ended the stream.
#[allow(clippy::too_many_arguments)]
async fn pump<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    epoch: &str,
    mut first: BytesMut,
    backlog: &[Arc<Message>],
    mut consumer: Consumer,
    conv: Option<&Arc<Session>>,
    delivered: &mut metrics::Delivered,
) -> Closer {
    let route = bridge.route.name.as_str();
    let binary = bridge.spec.binary;
    let frame = |m: &Message| -> Option<Bytes> {
        if m.binary && binary == BinaryPolicy::Drop {
            metrics::DROPPED_MESSAGES
                .with_label_values(&[route, "sse", "binary_policy"])
                .inc();
            return None;
        }
        Some(m.sse_frame(epoch))
    };

    // The backlog goes out in bounded writes, not one buffer of the whole replay window.
    let mut backlog = backlog.iter().peekable();
    loop {
        while first.len() < super::BURST_BYTES {
            let Some(m) = backlog.next() else { break };
            if let Some(f) = frame(m) {
                first.put_slice(&f);
                delivered.untimed(1);
            }
        }
        let chunk = std::mem::take(&mut first).freeze();
        delivered.bytes(chunk.len());
        if super::write_chunk(down, chunk, &consumer).await.is_err() {
            super::abandon(down);
            return Closer::Client;
        }
        if backlog.peek().is_none() {
            break;
        }
    }

    let heartbeat = bridge.route.keepalive.sse_heartbeat;
    let mut beat = tokio::time::interval(if heartbeat.is_zero() {
        std::time::Duration::from_secs(86_400)
    } else {
        heartbeat
    });
    beat.reset();
    let mut watching_client = true;
    // Made once, not per message: each making subscribes to the drain and retire signals.
    let closing = bridge.closing();
    tokio::pin!(closing);
    let by = loop {
        // In this order, and no further than the first that is ready: a delivery (the common
        // wake-up) does not poll the heartbeat timer or the client's socket; the drain is
        // never starved by a busy feed.
        let chunk = tokio::select! {
            biased;
            _ = &mut closing => {
                if super::write_chunk(down, Bytes::from(retry_field() + "\n"), &consumer).await.is_err() {
                    super::abandon(down);
                    return Closer::Gateway;
                }
                break Closer::Gateway;
            }
            delivery = consumer.next() => match delivery {
                Delivery::Message(m) => match super::gather_burst(&m, &mut consumer, delivered, frame) {
                    Some(burst) => burst,
                    None => continue,
                },
                Delivery::Dropped(n) => Burst::One(Bytes::from(format!(
                    "event: gap\ndata: {n} messages dropped: this client fell behind\n\n"
                ))),
                Delivery::TooSlow => {
                    super::abandon(down);
                    return Closer::Gateway;
                }
                Delivery::BackendGone(g) if conv.is_some() => {
                    // The session is over: say so in a way a page can act on (close its
                    // EventSource), and let the session go.
                    let closed = serde_json::json!({ "code": g.code, "reason": g.reason });
                    let bye = format!("event: closed\ndata: {closed}\n\n");
                    let _ = super::write_chunk(down, Bytes::from(bye), &consumer).await;
                    if let Some(c) = conv {
                        c.close(EndReason::Client);
                    }
                    break Closer::Backend;
                }
                Delivery::BackendGone(g) => {
                    // EventSource reconnects after `retry:` and resumes with Last-Event-ID.
                    let bye = format!(": backend went away ({}); reconnect to resume\n{}\n", g.reason.replace(['\r', '\n'], " "), retry_field());
                    if super::write_chunk(down, Bytes::from(bye), &consumer).await.is_err() {
                        super::abandon(down);
                        return Closer::Backend;
                    }
                    break Closer::Backend;
                }
                Delivery::Closed => break Closer::Gateway,
            },
            _ = beat.tick(), if !heartbeat.is_zero() => {
                delivered.tick(std::time::Instant::now());
                Burst::One(Bytes::from_static(b": heartbeat\n\n"))
            }
            idle = down.read_body_or_idle(true), if watching_client => match idle {
                // The client closed its side: stop now instead of at the next write.
                Err(_) => return Closer::Client,
                Ok(_) => { watching_client = false; continue }
            },
        };
        delivered.bytes(chunk.len());
        if super::write_burst(down, &chunk, &consumer).await.is_err() {
            super::abandon(down);
            return Closer::Client;
        }
    };
    // The end of the body must not wait on a client that stopped reading.
    down.set_write_timeout(Some(std::time::Duration::from_secs(5)));
    let _ = down.write_response_body(None, true).await;
    by
}

/// `retry:` with jitter (half to one and a half times [`RETRY_MS`]), so that clients told to
/// reconnect at the same moment spread out instead of arriving together.
fn retry_field() -> String {
    let ms = RETRY_MS / 2 + fastrand::u64(0..=RETRY_MS);
    format!("retry: {ms}\n")
}
