//! Per-client backend connections (`fanout: per_client`): [`open`] connects to the backend with
//! the client's forwarded headers before the client gets an answer (so an unreachable backend is
//! a 502, not a dead session), then one task runs the session until either side ends it.

use super::post::Poster;
use super::{sse, ws};
use crate::bridge::hub::Gone;
use crate::bridge::session::{
    Driver, EndReason, OpenSession, Outgoing, Session, BYTE_BUDGET_MESSAGES,
};
use crate::bridge::{ClientInfo, OpenError, SessionSite, SessionTarget};
use crate::config::{BackendSpec, RemoteBackend};
use crate::metrics;
use crate::wire::ws::close;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::sync::Arc;
use tokio::sync::mpsc;

/// How a per-client backend connection ended.
pub enum SessionEnd {
    /// The backend closed (or lost) the connection; the client is told with this close.
    Backend(Gone),
    /// The client side ended the session; the backend was closed.
    Client(EndReason),
}

/// The request headers a backend gets for this client: `names` (a route's `forward_headers`)
/// copied from the client's request (a repeated `Cookie` joined with `; `), then `X-Forwarded-For`,
/// `-Proto` and `-Host` written by the gateway. The client's own `X-Forwarded-*` are not
/// trusted: switchyard is the edge.
pub fn forwarded_headers(
    names: &[HeaderName],
    req: &RequestHeader,
    client: &ClientInfo,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    for name in names {
        let values: Vec<&HeaderValue> = req.headers.get_all(name).iter().collect();
        if name == http::header::COOKIE && values.len() > 1 {
            let joined = values
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                out.push((name.clone(), v));
            }
        } else {
            out.extend(values.into_iter().map(|v| (name.clone(), v.clone())));
        }
    }
    if let Some(ip) = client.ip {
        if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
            out.push((HeaderName::from_static("x-forwarded-for"), v));
        }
    }
    out.push((
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(if client.tls { "https" } else { "http" }),
    ));
    let host = req
        .headers
        .get(http::header::HOST)
        .cloned()
        .or_else(|| req.uri.host().and_then(|h| HeaderValue::from_str(h).ok()));
    if let Some(h) = host {
        out.push((HeaderName::from_static("x-forwarded-host"), h));
    }
    out
}

/// Starts a poster that sends a client's messages (from `rx`) to an `sse:` backend's `post:`
/// URL with the client's forwarded headers; it runs until every sender is gone. False when the
/// backend has no `post:`.
pub fn spawn_poster(
    route: &str,
    feed: &RemoteBackend,
    headers: Vec<(HeaderName, HeaderValue)>,
    rx: mpsc::Receiver<Outgoing>,
) -> bool {
    let Some(endpoint) = feed.post.clone() else {
        return false;
    };
    let poster = Poster {
        route: route.into(),
        endpoint,
        connect_timeout: feed.connect_timeout,
        headers: feed.headers.iter().cloned().chain(headers).collect(),
    };
    tokio::spawn(poster.run(rx));
    true
}

/// Opens a session for a client of a per-client route: connects its own backend connection
/// with its forwarded headers, then runs it in a task. With `listed`, the session is in the
/// route's registry (for polls, POSTs and SSE reattach) until it ends; a WebSocket client holds
/// its session itself. At most `max_clients` sessions per route are live at once.
pub async fn open(
    site: &SessionSite,
    req: &RequestHeader,
    client: &ClientInfo,
    transport: &'static str,
    listed: bool,
    at: Option<&SessionTarget>,
) -> Result<Arc<Session>, OpenError> {
    let route = site.route.name.as_str();
    let spec = &site.spec;
    let sessions = &site.sessions;
    let limits = &site.route.limits;
    // A listed session outlives its requests, so it counts against its address's sessions;
    // a WebSocket's is bound to its connection, which max_clients_per_ip already counts.
    let per_ip = if listed {
        limits.max_sessions_per_ip
    } else {
        0
    };
    let slot = sessions.reserve(limits.max_clients, client.ip, per_ip)?;
    let registry = listed.then(|| sessions.clone());
    let configured = spec
        .remote()
        .expect("per_client routes have a backend feed");
    let mut headers = forwarded_headers(&configured.forward_headers, req, client);
    let targeted;
    let feed = match at {
        None => configured,
        Some(t) => {
            headers.extend(t.headers.iter().cloned());
            let mut f = configured.clone();
            f.path = with_suffix(&f.path, &t.suffix);
            targeted = f;
            &targeted
        }
    };
    let cap = site.route.limits.send_queue;
    let max_message = site.route.limits.max_message as usize;
    let max_bytes = BYTE_BUDGET_MESSAGES * max_message;
    let failed = |why: String| {
        metrics::BACKEND_CONNECTS
            .with_label_values(&[route, "failed"])
            .inc();
        log::debug!(
            "route {route}: per-client backend {} unreachable: {why}",
            feed.url
        );
        OpenError::Unreachable(why)
    };
    let ended_as = |o: super::feed::Outcome| match o {
        super::feed::Outcome::ConnectFailed(why) => why,
        _ => "connection ended during the handshake".into(),
    };
    let (backend, driver) = match &spec.backend {
        BackendSpec::WebSocket(_) => {
            let (stream, protocol) = match ws::connect(feed, &headers, max_message).await {
                Ok(c) => c,
                Err(super::feed::Outcome::Refused(status)) => {
                    failed(format!("the handshake was answered with HTTP {status}"));
                    return Err(OpenError::Refused(status));
                }
                Err(o) => return Err(failed(ended_as(o))),
            };
            let driver =
                Session::create(route, transport, cap, max_bytes, spec.session_ttl, protocol);
            (Backend::WebSocket(Box::new(stream)), driver)
        }
        BackendSpec::Sse(_) => {
            let opened = sse::connect(feed, &headers, "")
                .await
                .map_err(|o| failed(ended_as(o)))?;
            let driver = Session::create(route, transport, cap, max_bytes, spec.session_ttl, None);
            (Backend::Sse(opened), driver)
        }
        BackendSpec::Builtin(_) | BackendSpec::Published => {
            unreachable!("per_client needs a websocket or sse backend")
        }
    };
    let Driver { session, uplink } = driver;
    if let Some(r) = &registry {
        r.insert(&session);
    }
    // In a cluster, a listed session is reachable from every instance (its polls, POSTs and
    // DELETEs may land anywhere); its record outlives a poll and the session's own TTL.
    let cluster = crate::cluster::get().filter(|_| listed);
    if let Some(c) = cluster {
        let keep = spec.session_ttl * 2 + site.route.keepalive.poll_timeout;
        c.own_session(&session, cap, keep).await;
    }
    let linger = spec.session_ttl;
    let uplink = match backend {
        // Client messages to an SSE backend go to its `post:` URL; without one, the route is
        // one-way and transports do not send.
        Backend::Sse(_) => {
            spawn_poster(route, feed, headers, uplink);
            None
        }
        Backend::WebSocket(_) => Some(uplink),
    };
    let keepalive = site.route.keepalive.clone();
    let task_session = session.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let session = task_session;
        let _open = OpenSession::new(&session.route, transport);
        let _connected = super::feed::Connected::new(&session.route);
        let end = match backend {
            Backend::WebSocket(stream) => {
                let uplink = uplink.expect("kept for WebSocket backends");
                ws::drive_session(*stream, &session, uplink, &keepalive).await
            }
            Backend::Sse(opened) => sse::drive_session(opened, &session, max_message).await,
        };
        drop(_connected);
        let why = match end {
            SessionEnd::Client(why) => why,
            SessionEnd::Backend(gone) => {
                log::debug!(
                    "route {}: session backend closed ({} {})",
                    session.route,
                    gone.code,
                    gone.reason
                );
                session.outbox.end(gone);
                // What the backend sent before closing stays until the client has it (its next
                // poll or stream read), the client closes, or session_ttl passes.
                session.ended_by_client().await;
                EndReason::Backend
            }
        };
        session.outbox.end(Gone {
            code: match why {
                EndReason::Expired | EndReason::Shutdown => close::GOING_AWAY,
                _ => close::NORMAL,
            },
            reason: format!("session ended: {}", why.label().replace('_', " ")),
        });
        if let Some(r) = registry {
            r.remove(&session.id);
        }
        if let Some(c) = cluster {
            c.disown_session(&session.id, linger);
        }
        metrics::SESSIONS_ENDED
            .with_label_values(&[&session.route, why.label()])
            .inc();
    });
    Ok(session)
}

/// `path` (with its query, if any) with `suffix` added to its path: `/ws?x=1` and `/admin`
/// make `/ws/admin?x=1`; `/` and `/admin` make `/admin`.
fn with_suffix(path: &str, suffix: &str) -> String {
    let (p, q) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let joined = format!("{}{suffix}", p.trim_end_matches('/'));
    let joined = if joined.is_empty() {
        "/".to_owned()
    } else {
        joined
    };
    match q {
        Some(q) => format!("{joined}?{q}"),
        None => joined,
    }
}

enum Backend {
    WebSocket(Box<ws::Stream>),
    Sse(sse::Opened),
}
