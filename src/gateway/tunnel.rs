//! Pass-through WebSocket tunnels, served on the edge's lean connection (plain HTTP of
//! `proxy:` routes goes through pingora). After admission:
//!
//! ```text
//! upstream::tunnel::open (member, connect_timeout, retry, X-Forwarded-*, 101 checked)
//!   -> 101: relayed (edge CORS, Date), then transport::tunnel::relay until both sides end
//!   -> another answer: relayed as it is, head and body
//!   -> no member / failed exchange / bad 101: 502 naming the route
//! ```
//!
//! pingora's proxy path never carries a tunnel: its HTTP/1 upgrade handling (pingora-proxy
//! 0.9.1, `proxy_handle_upstream`) ends the tunnel right after the `101` when the upstream's
//! answer is read before the request's own empty body (cloudflare/pingora#946), which reset
//! about one fresh tunnel in a few hundred on a fast upstream. See `hooks.rs`.

use super::state::RouteRuntime;
use crate::access_log::{Closer, StreamEnd};
use crate::edge::http1;
use crate::metrics;
use crate::policy::reject::Reject;
use crate::transport::{tunnel, Downstream, Respond};
use crate::upstream::pool::UpstreamSet;
use crate::upstream::tunnel::{open, Forwarded, OpenError, Opened};
use crate::wire::ws::close;
use std::sync::Arc;
use std::time::Duration;

/// The longest wait for the upstream's answer to the handshake.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(
    conn: &mut http1::Connection,
    rt: &RouteRuntime,
    set: &Arc<UpstreamSet>,
) -> pingora::Result<()> {
    let route = rt.route.name.as_str();
    let fwd = Forwarded {
        client_ip: conn.client_ip(),
        tls: conn.is_tls(),
    };
    let idle = rt.route.keepalive.idle_timeout;
    let answer_timeout = if idle.is_zero() {
        ANSWER_TIMEOUT
    } else {
        idle.min(ANSWER_TIMEOUT)
    };
    // Boxed: what opening needs is freed once open, not carried in the tunnel's task.
    let opened = Box::pin(open(set, conn.req_header(), &fwd, answer_timeout)).await;
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            let reject = match e {
                OpenError::NoUpstream => Reject::new(
                    502,
                    "no_upstream",
                    format!("502 Bad Gateway: no upstream of route {route} is reachable"),
                ),
                OpenError::BadUpgrade => Reject::new(
                    502,
                    "bad_upgrade_answer",
                    format!("502 Bad Gateway: the upstream of route {route} answered the WebSocket handshake wrongly"),
                ),
                OpenError::Failed(why) => {
                    log::warn!("route {route}: upstream failed the handshake: {why}");
                    Reject::new(
                        502,
                        "upstream_error",
                        format!("502 Bad Gateway: the upstream of route {route} failed"),
                    )
                }
            };
            return reject.send(conn, route).await;
        }
    };
    if opened.answer.status.as_u16() != 101 {
        return Box::pin(relay_answer(conn, opened)).await;
    }
    let (answer, mut upstream, early, _lease) = opened.into_tunnel();
    conn.write_response_header(answer, false).await?;
    let _open = metrics::OpenConnection::new(route, "tunnel");
    let settings = tunnel::Settings {
        route,
        idle_timeout: idle,
        max_message: rt
            .route
            .limits
            .max_message_explicit
            .then_some(rt.route.limits.max_message),
    };
    let Some((client, client_early)) = conn.upgraded() else {
        return Ok(());
    };
    let mut seen = tunnel::Seen::default();
    let relayed = tunnel::relay(
        client,
        client_early,
        &mut upstream,
        early,
        &settings,
        &mut seen,
    )
    .await;
    let by_peer = |(from_client, code): (bool, Option<u16>)| {
        let by = if from_client {
            Closer::Client
        } else {
            Closer::Backend
        };
        (code.unwrap_or(close::ABNORMAL), by)
    };
    let (close_code, closed_by) = match &relayed {
        Ok(tunnel::Ended::Drained | tunnel::Ended::Idle) => {
            (Some(close::GOING_AWAY), Some(Closer::Gateway))
        }
        Ok(tunnel::Ended::TooBig { .. }) => (Some(close::TOO_BIG), Some(Closer::Gateway)),
        Ok(tunnel::Ended::Closed) | Err(_) => match seen.first_close.map(by_peer) {
            Some((code, by)) => (Some(code), Some(by)),
            None => (Some(close::ABNORMAL), None),
        },
    };
    match relayed {
        Ok(ended) => log::debug!("route {route}: tunnel ended: {ended:?}"),
        Err(e) => log::debug!("route {route}: tunnel broken: {e}"),
    }
    conn.stream_ended(StreamEnd {
        transport: "tunnel",
        messages_in: seen.from_client.0,
        bytes_in: seen.from_client.1,
        messages_out: seen.to_client.0,
        bytes_out: seen.to_client.1,
        close_code,
        closed_by,
    });
    Ok(())
}

/// An answer other than `101` (a refusal, a redirect): relayed to the client as it is.
async fn relay_answer(conn: &mut http1::Connection, mut opened: Opened) -> pingora::Result<()> {
    let answer = opened.answer.clone();
    conn.write_response_header(answer, false).await?;
    loop {
        match opened.next_body().await {
            Ok(Some(piece)) => conn.write_response_body(Some(piece), false).await?,
            Ok(None) => return conn.write_response_body(None, true).await,
            Err(e) => {
                // The answer is cut: so is the client's connection (never reused).
                conn.set_keepalive(None);
                return pingora::Error::e_explain(
                    pingora::ErrorType::ReadError,
                    format!("reading the upstream's answer: {e}"),
                );
            }
        }
    }
}
