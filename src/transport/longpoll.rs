//! HTTP long-poll for clients that can do nothing but plain requests.
//!
//! `GET path?transport=poll&cursor=N` answers at once with every held message after N, or waits
//! up to `poll_timeout` for the next one, and returns
//! `200 application/json {"cursor": M, "messages": [...]}`; polling again with M misses nothing
//! still in the replay window. Without `cursor` the poll waits for the next message. When N is
//! older than the window, the answer carries `"missed": true` with everything still held.
//! Text messages are JSON strings; binary ones `{"binary": "<base64>"}` (or left out with
//! `binary: drop`); named events from an SSE backend `{"event": NAME, "data": TEXT}`. Each
//! message's JSON is encoded once and shared by every poll that returns it.
//! When the backend connection ends, waiting polls are answered at once with what they have.
//!
//! On a `per_client` route a poll belongs to a session (see [`crate::bridge::session`]): the
//! first poll opens it, later ones carry `session=ID&cursor=N` and acknowledge up to N, and
//! the answer names the session. An unknown or ended session is 410.

use super::Downstream;
use super::Respond;
use crate::access_log::{Closer, StreamEnd};
use crate::bridge::hub::Gone;
use crate::bridge::session::{EndReason, Sessions};
use crate::bridge::{Bridge, Elsewhere, Event, Message, PollAnswer};
use crate::config::BinaryPolicy;
use crate::metrics;
use crate::policy::reject::Reject;
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// A poll answers with at most this many messages; the client polls again for the rest.
const MAX_BATCH: usize = 1000;

/// The `cursor` query parameter: None when absent, Err when it is not a number.
fn cursor_param<D: Downstream>(down: &D) -> Result<Option<u64>, Reject> {
    match super::query_param(down.req_header(), "cursor") {
        None => Ok(None),
        Some(c) => c.parse::<u64>().map(Some).map_err(|_| {
            Reject::new(
                400,
                "bad_cursor",
                format!("cursor {c:?} is not a number: use the `cursor` of the previous answer"),
            )
        }),
    }
}

pub async fn serve<D: Downstream>(down: &mut D, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    if let Some(sessions) = bridge.sessions() {
        return serve_session(down, bridge, sessions).await;
    }
    let hub = bridge
        .hub()
        .expect("long-poll clients of a route without sessions read its hub");
    let cursor = match cursor_param(down) {
        Ok(c) => c,
        Err(reject) => return reject.send(down, route).await,
    };
    bridge.ready().await;
    let head = hub.head();
    // A cursor ahead of the feed comes from before a restart: start over from what is held.
    let from_before_restart = cursor.is_some_and(|n| !hub.plausible(n));
    let after = match cursor {
        Some(_) if from_before_restart => 0,
        Some(n) => n,
        None => head,
    };
    let series = bridge.polls.series(route);
    let _open = metrics::OpenConnection::of(series);
    let mut sub = bridge.subscribe(Some(after));
    let mut batch: Vec<Arc<Message>> = sub.backlog;
    let mut missed = sub.gap || from_before_restart;
    // A poll that finds messages held for it (or finds them lost) resumed from the ring.
    if cursor.is_some() && (missed || !batch.is_empty()) {
        bridge.count_replay(missed);
    }
    // Delivery latency counts messages that arrive while the poll waits, not held ones
    // (those measure how long the client took to poll again).
    let live_from = batch.len();
    if batch.is_empty() {
        let deadline = tokio::time::sleep(bridge.route.keepalive.poll_timeout);
        tokio::pin!(deadline);
        let closing = bridge.closing();
        tokio::pin!(closing);
        loop {
            tokio::select! {
                event = sub.live.recv() => match event {
                    Ok(Event::Message(m)) if m.seq > after => { batch.push(m); break }
                    Ok(Event::Message(_)) => continue,
                    // The client polls again with its cursor and waits for the backend there.
                    Ok(Event::BackendGone(_)) => break,
                    Err(RecvError::Lagged(_)) => {
                        // What we lagged over is still in the replay ring unless it is tiny.
                        let again = hub.subscribe(Some(after));
                        batch = again.backlog;
                        missed |= again.gap;
                        break;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = &mut deadline => break,
                _ = &mut closing => break,
            }
        }
        // Take whatever else is already queued, without waiting.
        while batch.len() < MAX_BATCH {
            match sub.live.try_recv() {
                Ok(Event::Message(m)) if m.seq > batch.last().map_or(after, |l| l.seq) => {
                    batch.push(m)
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    batch.truncate(MAX_BATCH);
    // Polls that waited at the same cursor get the same messages: the first encodes the
    // answer, the others send it.
    let body = match bridge.polls.cached(after, &batch, missed) {
        Some(cached) => {
            let dropped = cached.count as u64 - cached.sent;
            if dropped > 0 {
                metrics::DROPPED_MESSAGES
                    .with_label_values(&[route, "long_poll", "binary_policy"])
                    .inc_by(dropped);
            }
            Answer {
                body: cached.body,
                messages: cached.sent,
                closed: false,
            }
        }
        None => {
            let next_cursor = batch.last().map_or(after, |m| m.seq);
            let fresh = answer(bridge, None, next_cursor, &batch, missed, None);
            bridge.polls.keep(PollAnswer {
                after,
                first: batch.first().cloned(),
                last: batch.last().cloned(),
                count: batch.len(),
                missed,
                body: fresh.body.clone(),
                sent: fresh.messages,
            });
            fresh
        }
    };
    count_answer(bridge, &body);
    observe_latency(bridge, batch.get(live_from..).unwrap_or_default());
    let sent = respond(down, body).await;
    if live_from == 0 && sent.is_ok() {
        // A message just answered every poll waiting for it: this one steps back until the
        // others are answered too, and tidies up after (its subscription, timers, the next
        // head's read). The last of them is answered that much sooner.
        tokio::task::yield_now().await;
    }
    sent
}

/// A poll's answer, and what the access log says of it.
struct Answer {
    body: Bytes,
    /// Messages in it.
    messages: u64,
    /// It tells the session's end (the backend's close).
    closed: bool,
}

/// Builds a poll answer: `{"session"?, "cursor", "messages", "missed"?, "closed"?}`.
fn answer(
    bridge: &Bridge,
    session_id: Option<&str>,
    next_cursor: u64,
    batch: &[Arc<Message>],
    missed: bool,
    closed: Option<&Gone>,
) -> Answer {
    let route = bridge.route.name.as_str();
    let drop_binary = bridge.spec.binary == BinaryPolicy::Drop;
    let mut body =
        BytesMut::with_capacity(96 + batch.iter().map(|m| m.payload.len() + 8).sum::<usize>());
    body.put_u8(b'{');
    if let Some(id) = session_id {
        // Ids are base64url: nothing to escape.
        body.put_slice(format!("\"session\":\"{id}\",").as_bytes());
    }
    body.put_slice(format!("\"cursor\":{next_cursor},\"messages\":[").as_bytes());
    let mut sent = 0u64;
    for m in batch {
        if m.binary && drop_binary {
            metrics::DROPPED_MESSAGES
                .with_label_values(&[route, "long_poll", "binary_policy"])
                .inc();
            continue;
        }
        if sent > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&m.json());
        sent += 1;
    }
    body.put_u8(b']');
    if missed {
        body.put_slice(b",\"missed\":true");
    }
    if let Some(g) = closed {
        let closed = serde_json::json!({ "code": g.code, "reason": g.reason });
        body.put_slice(format!(",\"closed\":{closed}").as_bytes());
    }
    body.put_u8(b'}');
    Answer {
        body: body.freeze(),
        messages: sent,
        closed: closed.is_some(),
    }
}

/// Counts an answer's messages and bytes.
fn count_answer(bridge: &Bridge, answer: &Answer) {
    let series = bridge.polls.series(&bridge.route.name);
    series.messages_out.inc_by(answer.messages);
    series.bytes_out.inc_by(answer.body.len() as u64);
}

/// Delivery latency of messages a waiting poll took live (binary ones dropped by policy left
/// out).
fn observe_latency(bridge: &Bridge, live: &[Arc<Message>]) {
    if live.is_empty() {
        return;
    }
    let drop_binary = bridge.spec.binary == BinaryPolicy::Drop;
    let now = std::time::Instant::now();
    let latency = &bridge.polls.series(&bridge.route.name).latency;
    for m in live.iter().filter(|m| !(m.binary && drop_binary)) {
        latency.observe(now.saturating_duration_since(m.received).as_secs_f64());
    }
}

async fn respond<D: Downstream>(down: &mut D, answer: Answer) -> pingora::Result<()> {
    let bytes_out = answer.body.len() as u64;
    let sent = down
        .write_simple_answer(
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            answer.body,
        )
        .await;
    down.stream_ended(StreamEnd {
        transport: "long_poll",
        messages_out: answer.messages,
        bytes_out,
        closed_by: Some(if answer.closed {
            Closer::Backend
        } else {
            Closer::Gateway
        }),
        ..StreamEnd::default()
    });
    sent
}

/// A long-poll client of a `per_client` route. Without `session`, opens a session (502 when its
/// backend cannot be reached) and answers `{"session": ID, "cursor": 0, "messages": []}`. With
/// `session=ID&cursor=N`, acknowledges everything up to N and answers what follows, waiting up
/// to `poll_timeout` for it. An unknown or ended session is 410.
async fn serve_session<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    sessions: &Arc<Sessions>,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let cursor = match cursor_param(down) {
        Ok(c) => c.unwrap_or(0),
        Err(reject) => return reject.send(down, route).await,
    };
    let Some(id) = super::query_param(down.req_header(), "session").map(String::from) else {
        let client = super::client_info(down);
        let opened = bridge
            .open_session(down.req_header(), &client, "long_poll", true)
            .await;
        return match opened {
            Ok(conv) => {
                let opened = answer(bridge, Some(&conv.id), 0, &[], false, None);
                count_answer(bridge, &opened);
                respond(down, opened).await
            }
            Err(why) => super::session_refused(down, route, why).await,
        };
    };
    let Some(conv) = sessions.get(&id) else {
        return match bridge.remote_session(&id).await {
            Elsewhere::Found(remote) => serve_remote(down, bridge, &id, remote, cursor).await,
            Elsewhere::Nowhere => session_gone(route).send(down, route).await,
            Elsewhere::Unknown => super::session_unknown(route).send(down, route).await,
        };
    };
    if cursor > conv.outbox.head() {
        return Reject::new(
            400,
            "bad_cursor",
            format!(
                "cursor {cursor} is ahead of this session: use the `cursor` of the previous answer"
            ),
        )
        .send(down, route)
        .await;
    }
    let _open = metrics::OpenConnection::of(bridge.polls.series(route));
    let _busy = conv.busy();
    conv.outbox.ack(cursor);
    let mut batch = conv.outbox.after(cursor, MAX_BATCH);
    let waited = batch.messages.is_empty() && batch.ended.is_none();
    if waited {
        tokio::select! {
            _ = conv.outbox.wait_after(cursor) => {}
            _ = tokio::time::sleep(bridge.route.keepalive.poll_timeout) => {}
            _ = bridge.closing() => {}
        }
        batch = conv.outbox.after(cursor, MAX_BATCH);
    }
    if batch.ended.is_some() {
        // The client has everything: the session can go.
        conv.close(EndReason::Client);
    }
    let next_cursor = batch.messages.last().map_or(cursor, |m| m.seq);
    if waited {
        observe_latency(bridge, &batch.messages);
    }
    let body = answer(
        bridge,
        Some(&conv.id),
        next_cursor,
        &batch.messages,
        batch.gap,
        batch.ended.as_deref(),
    );
    count_answer(bridge, &body);
    respond(down, body).await
}

/// A poll for a session another instance of the cluster owns: answered from the session's
/// stream in Redis, waiting (up to `poll_timeout`) for the owner to say there is more.
async fn serve_remote<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    id: &str,
    remote: Box<dyn crate::bridge::session::Remote>,
    cursor: u64,
) -> pingora::Result<()> {
    let _open = metrics::OpenConnection::of(bridge.polls.series(&bridge.route.name));
    let wait = bridge.route.keepalive.poll_timeout;
    let batch = tokio::select! {
        b = remote.poll(cursor, MAX_BATCH, wait) => b,
        _ = bridge.closing() => crate::bridge::session::Batch { messages: Vec::new(), gap: false, ended: None },
    };
    if batch.ended.is_some() {
        remote.close().await;
    }
    let next_cursor = batch.messages.last().map_or(cursor, |m| m.seq);
    let body = answer(
        bridge,
        Some(id),
        next_cursor,
        &batch.messages,
        batch.gap,
        batch.ended.as_deref(),
    );
    count_answer(bridge, &body);
    respond(down, body).await
}

/// The answer for a session id that is not (or no longer) live on this route.
pub fn session_gone(route: &str) -> Reject {
    Reject::new(
        410,
        "unknown_session",
        format!("no such session on route {route}: it expired, was closed, or never existed; start a new one without `session`"),
    )
}
