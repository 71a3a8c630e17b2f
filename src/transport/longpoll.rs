//! HTTP long-poll for clients that can do nothing but plain requests.
//!
//! `GET path?transport=poll&cursor=N` answers at once with every held message after N, or waits
//! up to `poll_timeout` for the next one, and returns
//! `200 application/json {"cursor": M, "messages": [...]}`; polling again with M misses nothing
//! still in the replay window. Without `cursor` the poll waits for the next message. When N is
//! older than the window, the answer carries `"missed": true` with everything still held.
//! Text messages are JSON strings; binary ones `{"binary": "<base64>"}`.

use crate::bridge::{Bridge, Message};
use crate::error::Reject;
use crate::metrics;
use crate::shutdown;
use base64::Engine;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::sync::Arc;
use tokio::sync::broadcast::error::RecvError;

/// A poll answers with at most this many messages; the client polls again for the rest.
const MAX_BATCH: usize = 1000;

fn message_json(m: &Message) -> serde_json::Value {
    if m.binary {
        serde_json::json!({ "binary": base64::engine::general_purpose::STANDARD.encode(&m.payload) })
    } else {
        serde_json::Value::String(String::from_utf8_lossy(&m.payload).into_owned())
    }
}

pub async fn serve(session: &mut Session, bridge: &Bridge) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let hub = bridge
        .hub()
        .expect("long-poll is only offered on shared feeds");
    let cursor = match super::query_param(session.req_header(), "cursor") {
        None => None,
        Some(c) => match c.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return Reject::new(
                    400,
                    "bad_cursor",
                    format!(
                        "cursor {c:?} is not a number: use the `cursor` of the previous answer"
                    ),
                )
                .send(session, route)
                .await
            }
        },
    };
    let head = hub.head();
    // A cursor ahead of the feed comes from before a restart: start over from what is held.
    let from_before_restart = cursor.is_some_and(|n| n > head);
    let after = match cursor {
        Some(n) if n > head => 0,
        Some(n) => n,
        None => head,
    };
    let _open = metrics::OpenConnection::new(route, "long_poll");
    let mut sub = bridge.subscribe(Some(after));
    let mut batch: Vec<Arc<Message>> = sub.backlog;
    if batch.is_empty() {
        let deadline = tokio::time::sleep(bridge.route.keepalive.poll_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                msg = sub.live.recv() => match msg {
                    Ok(m) if m.seq > after => { batch.push(m); break }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(_)) => {
                        // Everything we lagged over is still in the replay ring: take it from there.
                        batch = hub.subscribe(Some(after)).backlog;
                        break;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = &mut deadline => break,
                _ = shutdown::wait() => break,
            }
        }
        // Take whatever else is already queued, without waiting.
        while batch.len() < MAX_BATCH {
            match sub.live.try_recv() {
                Ok(m) if m.seq > batch.last().map_or(after, |l| l.seq) => batch.push(m),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    batch.truncate(MAX_BATCH);
    let next_cursor = batch.last().map_or(after, |m| m.seq);
    let mut body = serde_json::json!({
        "cursor": next_cursor,
        "messages": batch.iter().map(|m| message_json(m)).collect::<Vec<_>>(),
    });
    if sub.gap || from_before_restart {
        body["missed"] = serde_json::Value::Bool(true);
    }
    metrics::MESSAGES
        .with_label_values(&[route, "long_poll", "out"])
        .inc_by(batch.len() as u64);
    let body = Bytes::from(body.to_string());
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("cache-control", "no-store")?;
    resp.insert_header("content-length", body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}
