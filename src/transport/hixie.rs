//! SockJS's WebSocket transport over the 2010 draft (Hixie-76), for the clients that still send
//! its handshake (framing in [`crate::wire::hixie76`]). The same session as the RFC 6455
//! transport: `o` first, `a[...]` messages, `h` heartbeats, `c[code,"reason"]` and the closing
//! frame at the end; the client sends JSON arrays of strings.
//!
//! The `101` goes out before the client's 8-byte `key3` is read (proxies such as HAProxy hold
//! it back until they see the answer), then the 16-byte challenge answer.

use super::Downstream;
use crate::access_log::{Closer, StreamEnd};
use crate::bridge::session::{EndReason, Outgoing, BYTE_BUDGET_MESSAGES};
use crate::bridge::{held as sessions, Bridge, Delivery};
use crate::config::{Fanout, SockJs};
use crate::metrics;
use crate::wire::hixie76::{self, Decoder, Incoming};
use crate::wire::sockjs as frame;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use std::collections::VecDeque;
use std::time::Duration;

const LABEL: &str = "sockjs-websocket";

/// How long the client has to send its `key3` after the `101`.
const KEY3_DEADLINE: Duration = Duration::from_secs(10);

pub async fn serve<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
) -> pingora::Result<()> {
    let route = bridge.route.name.as_str();
    let req = down.req_header();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (key1, key2) = (header("sec-websocket-key1"), header("sec-websocket-key2"));
    let origin = header("origin");
    let scheme = if down.is_tls() { "wss" } else { "ws" };
    let host = crate::wire::http::request_host(req)
        .unwrap_or("")
        .to_owned();
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let client = super::client_info(down);
    let feed = sessions::feed(bridge, req, &client, LABEL, opts.disconnect_delay).await;
    let mut feed = match feed {
        Ok(f) => f,
        Err(why) => return Box::pin(super::session_refused(down, route, why)).await,
    };
    let mut resp = ResponseHeader::build(101, Some(5))?;
    resp.insert_header("upgrade", "WebSocket")?;
    resp.insert_header("connection", "Upgrade")?;
    if !origin.is_empty() {
        resp.insert_header("sec-websocket-origin", origin)?;
    }
    resp.insert_header(
        "sec-websocket-location",
        format!("{scheme}://{host}{target}"),
    )?;
    Box::pin(down.write_response_header(Box::new(resp), false)).await?;
    down.set_read_timeout(None);
    down.release_request();
    let max = bridge.route.limits.max_message as usize;
    let mut decoder = Decoder::new(max);
    let mut key3 = Vec::with_capacity(8);
    while key3.len() < 8 {
        match tokio::time::timeout(KEY3_DEADLINE, down.read_request_body()).await {
            Ok(Ok(Some(b))) => {
                let take = (8 - key3.len()).min(b.len());
                key3.extend_from_slice(&b[..take]);
                decoder.push(&b[take..]);
            }
            _ => {
                feed.link.close(EndReason::Client);
                return Ok(());
            }
        }
    }
    let key3: [u8; 8] = key3.try_into().expect("eight bytes read");
    let Some(answer) = hixie76::challenge(&key1, &key2, &key3) else {
        metrics::refused(route, "ws_handshake");
        feed.link.close(EndReason::Client);
        return Ok(());
    };
    down.write_response_body(Some(Bytes::copy_from_slice(&answer)), false)
        .await?;
    let _open = metrics::OpenConnection::new(route, LABEL);
    let mut tally = Tally::default();
    let (end, by) = Box::pin(run(down, bridge, opts, &mut feed, decoder, &mut tally)).await;
    down.stream_ended(StreamEnd {
        transport: "sockjs-hixie76",
        messages_in: tally.messages_in,
        bytes_in: tally.bytes_in,
        messages_out: tally.messages_out,
        bytes_out: tally.bytes_out,
        // The 2010 draft has no close codes: SockJS's `c[code, ...]` frame carries one.
        close_code: end.as_ref().map(|(code, _)| *code),
        closed_by: Some(by),
    });
    if let Some((code, reason)) = end {
        down.set_write_timeout(Some(Duration::from_secs(5)));
        let c = hixie76::text_frame(&frame::close_frame(code, &reason));
        let _ = down.write_response_body(Some(c), false).await;
        let sent = down
            .write_response_body(Some(Bytes::from_static(hixie76::CLOSE)), false)
            .await;
        // The client answers with its own closing frame, then the connection goes: read until
        // then (bounded), so that it reads a close, not a reset.
        if sent.is_ok() {
            let drained = async { while let Ok(Some(_)) = down.read_request_body().await {} };
            let _ = tokio::time::timeout(Duration::from_secs(2), drained).await;
        }
    }
    feed.link.close(EndReason::Client);
    Ok(())
}

/// What a stream carried, for its access log line.
#[derive(Default)]
struct Tally {
    messages_in: u64,
    bytes_in: u64,
    messages_out: u64,
    bytes_out: u64,
}

/// The session until either side ends it: the close to tell the client, if any, and who ended
/// it.
async fn run<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    feed: &mut sessions::Feed,
    decoder: Decoder,
    tally: &mut Tally,
) -> (Option<(u16, String)>, Closer) {
    let mut delivered = metrics::Delivered::new(&bridge.route.name, LABEL);
    let ended = pump(down, bridge, opts, feed, decoder, tally, &mut delivered).await;
    (tally.messages_out, tally.bytes_out) = delivered.totals();
    ended
}

async fn pump<D: Downstream>(
    down: &mut D,
    bridge: &Bridge,
    opts: &SockJs,
    feed: &mut sessions::Feed,
    mut decoder: Decoder,
    tally: &mut Tally,
    delivered: &mut metrics::Delivered,
) -> (Option<(u16, String)>, Closer) {
    let route = bridge.route.name.as_str();
    let budget = BYTE_BUDGET_MESSAGES * bridge.route.limits.max_message as usize;
    let messages_in = metrics::MESSAGES.with_label_values(&[route, LABEL, "in"]);
    let mut queued: VecDeque<Outgoing> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut beat = tokio::time::interval(opts.heartbeat);
    beat.reset();
    let closing = bridge.closing();
    tokio::pin!(closing);
    if down
        .write_response_body(Some(hixie76::text_frame(frame::OPEN)), false)
        .await
        .is_err()
    {
        return (None, Closer::Client);
    }
    // What the decoder holds already (sent right behind key3) is read first.
    let mut pending = true;
    loop {
        let out: Bytes = tokio::select! {
            read = down.read_request_body(), if !pending && queued_bytes < budget => match read {
                Ok(Some(b)) => {
                    decoder.push(&b);
                    pending = true;
                    continue;
                }
                _ => return (None, Closer::Client),
            },
            _ = std::future::ready(()), if pending => {
                pending = false;
                loop {
                    match decoder.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Incoming::Text(t))) => {
                            // Broken framing ends the socket at once, as the reference does.
                            let Some(list) = frame::parse_ws_messages(&t, super::inbound::MAX_MESSAGES_PER_POST) else {
                                return (None, Closer::Gateway);
                            };
                            tally.messages_in += list.len() as u64;
                            tally.bytes_in += list.iter().map(|m| m.len() as u64).sum::<u64>();
                            if feed.link.uplink.is_none() {
                                messages_in.inc_by(list.len() as u64);
                                continue;
                            }
                            for m in list {
                                messages_in.inc();
                                queued_bytes += m.len();
                                queued.push_back(Outgoing { payload: Bytes::from(m), binary: false, done: None });
                            }
                        }
                        Ok(Some(Incoming::Close)) => return (None, Closer::Client),
                        Err(hixie76::Violation::TooBig) => return (Some((1009, "Message too big".into())), Closer::Gateway),
                        Err(hixie76::Violation::Malformed) => return (None, Closer::Gateway),
                    }
                }
                continue;
            }
            permit = async { feed.link.uplink.clone().expect("queued only with an uplink").reserve_owned().await }, if !queued.is_empty() => {
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
            d = feed.consumer.next() => match d {
                Delivery::Message(m) => {
                    let drop_binary = bridge.spec.binary == crate::config::BinaryPolicy::Drop;
                    let Some(burst) = super::gather_burst(&m, &mut feed.consumer, delivered, |m| {
                        (!(m.binary && drop_binary)).then(|| m.sockjs())
                    }) else {
                        continue;
                    };
                    hixie76::text_frame(&frame::array_frame(burst.parts().iter().map(|b| &b[..])))
                }
                Delivery::Dropped(_) => continue,
                Delivery::TooSlow => return (Some((1008, "Too slow: fell behind the feed".into())), Closer::Gateway),
                Delivery::BackendGone(_) if bridge.spec.fanout == Fanout::Shared => continue,
                Delivery::BackendGone(g) => return (Some((g.code, g.reason.clone())), Closer::Backend),
                Delivery::Closed => return (Some((1001, "Route removed".into())), Closer::Gateway),
            },
            _ = beat.tick() => hixie76::text_frame(frame::HEARTBEAT),
            _ = &mut closing => return (Some((1001, "Server shutting down".into())), Closer::Gateway),
        };
        delivered.bytes(out.len());
        if down.write_response_body(Some(out), false).await.is_err() {
            return (None, Closer::Client);
        }
    }
}
