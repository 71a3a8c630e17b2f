//! The SSE backend connector: an HTTP/1.1 client (hyper) that holds a `text/event-stream`
//! request open, parses it incrementally with [`SseParser`], and publishes each event into the
//! route's hub with its `event:` name kept. On reconnect it sends `Last-Event-ID` with the last
//! id the backend gave, so a backend that supports resume fills the gap itself, and it honours
//! the backend's `retry:` as the shortest reconnect delay.

use super::feed::{connect_io, within_connect_timeout, Connected, Link, Outcome};
use super::per_client::SessionEnd;
use crate::bridge::hub::Gone;
use crate::bridge::session::Session;
use crate::config::RemoteBackend;
use crate::metrics;
use crate::wire::sse::SseParser;
use crate::wire::ws::close;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// What survives a reconnect: where the backend's stream was, and how long it asked us to wait.
#[derive(Default)]
pub struct Resume {
    pub last_id: String,
    pub retry: Option<Duration>,
}

/// An open event stream: the response body, and the connection task that ends with it.
pub struct Opened {
    pub body: hyper::body::Incoming,
    _driver: AbortOnDrop<Result<(), hyper::Error>>,
}

/// Opens the backend's event stream with the configured headers plus `extra` (a client's
/// forwarded headers), resuming after `last_id` when it is not empty. Only a 200 with
/// `text/event-stream` counts as open.
pub async fn connect(
    feed: &RemoteBackend,
    extra: &[(HeaderName, HeaderValue)],
    last_id: &str,
) -> Result<Opened, Outcome> {
    let mut request = http::Request::get(feed.path.as_str())
        .header(http::header::HOST, feed.authority.as_str())
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    if !last_id.is_empty() {
        request = request.header("last-event-id", last_id);
    }
    for (name, value) in feed.headers.iter().chain(extra) {
        request = request.header(name, value);
    }
    let request = match request.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return Err(Outcome::ConnectFailed(format!("bad request: {e}"))),
    };
    let connect = async {
        let tcp = connect_io(feed).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request).await;
        Ok::<_, String>((response, driver))
    };
    let (response, driver) = within_connect_timeout(feed, connect).await?;
    // The connection task ends with the stream, whichever way it goes.
    let driver = AbortOnDrop(driver);
    let response = match response {
        Ok(r) => r,
        Err(e) => return Err(Outcome::ConnectFailed(format!("request: {e}"))),
    };
    if response.status() != http::StatusCode::OK {
        return Err(Outcome::ConnectFailed(format!(
            "answered {} instead of 200",
            response.status()
        )));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        return Err(Outcome::ConnectFailed(format!(
            "answered Content-Type {content_type:?}, not text/event-stream"
        )));
    }
    Ok(Opened {
        body: response.into_body(),
        _driver: driver,
    })
}

pub async fn session(link: &Link, feed: &RemoteBackend, resume: &mut Resume) -> Outcome {
    let route = link.route_name();
    let opened = match connect(feed, &[], &resume.last_id).await {
        Ok(o) => o,
        Err(failed) => return failed,
    };
    let _connected = Connected::feed(link);
    log::info!("route {route}: connected to backend {}", feed.url);
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[route]);
    let mut body = opened.body;
    let mut parser = SseParser::resuming(
        link.route.limits.max_message as usize,
        resume.last_id.clone(),
    )
    .with_ids();
    let mut events = Vec::new();
    let mut linger = tokio::time::interval(link.linger_check());
    let idle = link.route.keepalive.idle_timeout;
    let quiet_limit = if idle.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        idle
    };
    let mut quiet = Box::pin(tokio::time::sleep(quiet_limit));
    let mut messages = 0u64;
    let ended = |reason: String, messages| Outcome::Ended {
        code: close::SERVICE_RESTART,
        reason,
        messages,
    };
    loop {
        tokio::select! {
            frame = body.frame() => {
                let data = match frame {
                    None => return ended("backend ended the event stream".into(), messages),
                    Some(Err(e)) => return ended(format!("backend connection lost: {e}"), messages),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                quiet.as_mut().reset(tokio::time::Instant::now() + quiet_limit);
                parser.push(&data, &mut events);
                resume.last_id.clear();
                resume.last_id.push_str(parser.last_event_id());
                if let Some(ms) = parser.retry {
                    resume.retry = Some(Duration::from_millis(ms));
                }
                // Each event goes with its own backend id: a holder that dies between two
                // appends leaves the cluster the id of the last one stored, and the next holder
                // resumes after exactly that event (not after the previous read's last).
                for (e, id) in events.drain(..).zip(parser.take_ids()) {
                    messages += 1;
                    received.inc();
                    let origin = (!id.is_empty()).then_some(id.as_str());
                    link.publish(e.event.map(Into::into), Bytes::from(e.data), false, origin);
                }
                if parser.oversized > 0 {
                    log::warn!("route {route}: dropped {} backend events larger than max_message", parser.oversized);
                    parser.oversized = 0;
                }
            }
            _ = linger.tick() => {
                if link.should_close() {
                    return Outcome::Idle;
                }
            }
            // A half-open connection shows as silence: reconnect, resuming with Last-Event-ID.
            _ = &mut quiet => {
                return Outcome::Recycled(format!("it sent nothing for idle_timeout {idle:?}"));
            }
        }
    }
}

/// Runs one per-client session's event stream: each event into the session's outbox (waiting
/// while the client is behind) until the stream ends or the client side ends the session.
pub async fn drive_session(
    mut opened: Opened,
    session: &Session,
    max_message: usize,
) -> SessionEnd {
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[&session.route]);
    let mut parser = SseParser::new(max_message);
    let mut events = Vec::new();
    let client_end = session.ended_by_client();
    tokio::pin!(client_end);
    loop {
        let frame = tokio::select! {
            frame = opened.body.frame() => frame,
            why = &mut client_end => return SessionEnd::Client(why),
        };
        let data = match frame {
            None => {
                return SessionEnd::Backend(Gone {
                    code: close::NORMAL,
                    reason: "backend ended the event stream".into(),
                })
            }
            Some(Err(e)) => {
                return SessionEnd::Backend(Gone {
                    code: close::SERVICE_RESTART,
                    reason: format!("backend connection lost: {e}"),
                })
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        parser.push(&data, &mut events);
        for e in events.drain(..) {
            received.inc();
            // `session` and `closed` are the gateway's own events on a session's stream.
            let event = e.event.map(|name| match name.as_str() {
                "session" | "closed" => format!("backend.{name}").into(),
                _ => name.into(),
            });
            tokio::select! {
                _ = session.outbox.push(event, Bytes::from(e.data), false) => {}
                why = &mut client_end => return SessionEnd::Client(why),
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
