//! The life of a shared backend connection: opened by the first client of a route, kept while
//! anyone is subscribed, closed `backend_linger` after the last one left, and reconnected with
//! exponential backoff and jitter whenever it fails or ends. A backend that is down costs one
//! task and a timer, never the gateway.
//!
//! When an open connection ends, every client is told ([`crate::bridge::Event::BackendGone`]);
//! the feed's sequence goes on across reconnects, so clients that resume (SSE `Last-Event-ID`,
//! long-poll cursors) lose nothing still in the replay window.

use super::tls::BackendIo;
use super::{sse, ws};
use crate::bridge::hub::OwnConnection;
use crate::bridge::Hub;
use crate::config::{BackendSpec, BridgeRoute, Reconnect, RemoteBackend, Route};
use crate::metrics;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A connection that stayed up this long counts as working: the next failure starts the
/// backoff from `reconnect.initial` again.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);

/// How an attempt at the backend went.
pub enum Outcome {
    /// No stream was established (connect, handshake or status failed).
    ConnectFailed(String),
    /// The backend answered a WebSocket handshake with this status.
    Refused(u16),
    /// A stream was open and ended; clients are closed with `code` and `reason`.
    Ended {
        code: u16,
        reason: String,
        messages: u64,
    },
    /// Nobody was subscribed for `backend_linger`: the connection was closed on purpose.
    Idle,
    /// The gateway dropped a connection that went quiet and reconnects; the stream resumes
    /// where it was (SSE `Last-Event-ID`), so clients are not disturbed.
    Recycled(String),
}

/// Everything a connector needs, shared by the connection task.
pub struct Link {
    pub route: Arc<Route>,
    pub spec: BridgeRoute,
    pub hub: Arc<Hub>,
    /// On a clustered feed: where the lease holder appends what it publishes.
    pub relay: Option<crate::cluster::stream::Relay>,
    /// On a clustered feed: the connection runs while this says so (the cluster controller
    /// decides, see [`super::clustered`]), instead of while local clients are subscribed.
    pub hold: Option<tokio::sync::watch::Receiver<bool>>,
    /// An SSE backend's event id to resume from on the first connect (a new lease holder
    /// continues where the previous one was).
    pub resume_id: String,
}

impl Link {
    pub fn new(route: &Arc<Route>, spec: &BridgeRoute, hub: &Arc<Hub>) -> Self {
        Self {
            route: route.clone(),
            spec: spec.clone(),
            hub: hub.clone(),
            relay: None,
            hold: None,
            resume_id: String::new(),
        }
    }

    pub fn route_name(&self) -> &str {
        &self.route.name
    }

    /// Publishes one backend message to this instance's clients, and to the cluster's stream
    /// when this instance holds the feed's lease. `origin_id` is an SSE backend's own id.
    pub fn publish(
        &self,
        event: Option<Box<str>>,
        payload: bytes::Bytes,
        binary: bool,
        origin_id: Option<&str>,
    ) {
        let Some(msg) = self.hub.publish_backend(event, payload, binary) else {
            return;
        };
        if let Some(relay) = &self.relay {
            relay.offer(&msg, origin_id);
        }
    }

    /// Tells every client (on every instance, when clustered) that the connection ended.
    fn backend_gone(&self, code: u16, reason: String) {
        if let Some(relay) = &self.relay {
            relay.gone(self.hub.head(), code, &reason);
        }
        self.hub.backend_gone(code, reason);
    }

    /// How often an open connection checks whether it still has clients.
    pub fn linger_check(&self) -> Duration {
        (self.spec.linger / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// True (and the feed marked stopped) when nobody has been subscribed for `backend_linger`;
    /// on a clustered feed, when the cluster controller lets go of the connection.
    pub fn should_close(&self) -> bool {
        match &self.hold {
            Some(hold) => !*hold.borrow(),
            None => self.hub.producer_should_stop(self.spec.linger),
        }
    }
}

/// Starts the route's backend connection task unless it is running.
pub fn ensure_running(hub: &Arc<Hub>, route: &Arc<Route>, spec: &BridgeRoute) {
    if !hub.claim_producer() {
        return;
    }
    tokio::spawn(run(Link::new(route, spec, hub)));
}

/// Marks the feed stopped if its task unwinds, so the next client starts a new one.
pub struct ReleaseOnPanic(pub Arc<Hub>);

impl Drop for ReleaseOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.release_producer();
        }
    }
}

pub async fn run(link: Link) {
    let _release = link
        .hold
        .is_none()
        .then(|| ReleaseOnPanic(link.hub.clone()));
    let route = link.route_name().to_owned();
    let (kind, feed) = match &link.spec.backend {
        BackendSpec::WebSocket(f) => ("websocket", f.clone()),
        BackendSpec::Sse(f) => ("sse", f.clone()),
        BackendSpec::Builtin(_) | BackendSpec::Published => {
            unreachable!("builtins have their own producers, and publishes need none")
        }
    };
    let mut backoff = Backoff::new(feed.reconnect);
    let mut sse_resume = sse::Resume {
        last_id: link.resume_id.clone(),
        ..sse::Resume::default()
    };
    let mut failing = false;
    let mut first = true;
    loop {
        if link.should_close() {
            log::debug!("route {route}: no clients for backend_linger; feed stopped");
            return;
        }
        if !std::mem::take(&mut first) {
            metrics::BACKEND_RECONNECTS
                .with_label_values(&[&route])
                .inc();
        }
        let started = Instant::now();
        let outcome = match kind {
            "websocket" => ws::session(&link, &feed).await,
            _ => sse::session(&link, &feed, &mut sse_resume).await,
        };
        match outcome {
            Outcome::Idle => {
                log::info!("route {route}: closed the {kind} backend connection: no clients for backend_linger");
                return;
            }
            Outcome::ConnectFailed(_) | Outcome::Refused(_) => {
                let why = match outcome {
                    Outcome::Refused(status) => {
                        format!("the handshake was answered with HTTP {status}")
                    }
                    Outcome::ConnectFailed(why) => why,
                    _ => unreachable!("matched above"),
                };
                metrics::BACKEND_CONNECTS
                    .with_label_values(&[&route, "failed"])
                    .inc();
                if !failing {
                    log::warn!("route {route}: backend {} unreachable: {why}; retrying with backoff up to {:?}", feed.url, feed.reconnect.max);
                } else {
                    log::debug!(
                        "route {route}: backend {} still unreachable: {why}",
                        feed.url
                    );
                }
                failing = true;
            }
            Outcome::Recycled(why) => {
                log::info!("route {route}: reconnecting to backend {}: {why}", feed.url);
                failing = false;
            }
            Outcome::Ended {
                code,
                reason,
                messages,
            } => {
                log::warn!(
                    "route {route}: backend {} connection ended ({reason}) after {messages} messages; reconnecting",
                    feed.url
                );
                link.backend_gone(code, reason);
                failing = false;
                // Only a connection that lasted starts the backoff over: a backend that
                // accepts, sends a message and closes must not be hammered.
                if started.elapsed() >= STABLE_CONNECTION {
                    backoff.reset();
                }
            }
        }
        // The backend's own `retry:` is honoured, within the configured maximum.
        let floor = sse_resume.retry.unwrap_or_default().min(feed.reconnect.max);
        tokio::time::sleep(backoff.next_delay().max(floor)).await;
    }
}

/// Exponential backoff with "equal jitter": each delay is drawn from [d/2, d] while d doubles
/// up to the maximum, so a fleet of gateways does not reconnect in lockstep.
pub struct Backoff {
    cfg: Reconnect,
    current: Duration,
    first: bool,
}

impl Backoff {
    pub fn new(cfg: Reconnect) -> Self {
        Self {
            cfg,
            current: cfg.initial,
            first: true,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.cfg.initial;
        self.first = true;
    }

    /// The next delay. The first retry after a working connection is immediate-ish (jittered
    /// `initial`), later ones grow.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        if !self.first {
            self.current = (self.current * 2).min(self.cfg.max);
        }
        self.first = false;
        let half = d / 2;
        half + Duration::from_nanos(fastrand::u64(0..=half.as_nanos() as u64))
    }
}

/// Opens the TCP connection to a feed backend.
pub async fn connect_io(feed: &RemoteBackend) -> Result<BackendIo, String> {
    let backend = format!("{}:{}", feed.host, feed.port);
    super::tls::connect(&feed.host, feed.port, feed.tls.as_ref(), &backend).await
}

/// Runs a connect-and-handshake future within the backend's `connect_timeout`.
pub async fn within_connect_timeout<T>(
    feed: &RemoteBackend,
    attempt: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, Outcome> {
    match tokio::time::timeout(feed.connect_timeout, attempt).await {
        Err(_) => Err(Outcome::ConnectFailed(format!(
            "no answer within connect_timeout {:?}",
            feed.connect_timeout
        ))),
        Ok(r) => r.map_err(Outcome::ConnectFailed),
    }
}

/// Keeps `switchyard_backend_connections_open` right however a connection ends; a shared
/// feed's also tells its hub that its own connection is open meanwhile (see
/// [`crate::bridge::Hub::own_connection`]).
pub struct Connected(prometheus::IntGauge, Option<OwnConnection>);

impl Connected {
    pub fn new(route: &str) -> Self {
        metrics::BACKEND_CONNECTS
            .with_label_values(&[route, "ok"])
            .inc();
        let gauge = metrics::BACKEND_CONNECTED.with_label_values(&[route]);
        gauge.inc();
        Self(gauge, None)
    }

    /// A shared feed's connection.
    pub fn feed(link: &Link) -> Self {
        let mut c = Self::new(link.route_name());
        c.1 = Some(link.hub.own_connection());
        c
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let cfg = Reconnect {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        };
        let mut b = Backoff::new(cfg);
        let caps = [100, 100, 200, 400, 800, 800, 800];
        for cap in caps {
            let d = b.next_delay();
            let cap = Duration::from_millis(cap);
            assert!(
                d >= cap / 2 && d <= cap,
                "{d:?} outside [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
