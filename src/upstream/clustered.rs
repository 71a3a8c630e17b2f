//! A shared feed in a cluster: one controller per route per instance decides, every third of
//! the lease TTL, whether this instance connects the backend.
//!
//! - Redis reachable: the instance that holds the route's lease connects and appends; the
//!   others only read the stream. An instance takes the lease when it has clients and nobody
//!   holds it (the holder died: within the TTL, plus one tick). A holder whose own clients
//!   left keeps the connection while another instance wants the feed.
//! - Redis unreachable (the heartbeat says so, or a lease tick fails): every instance with
//!   clients connects the backend itself (local mode) and keeps serving; when Redis answers,
//!   the lease decides again and the others let their connections go.
//!
//! The controller ends, releasing the lease, when nobody here or elsewhere wants the feed
//! for `backend_linger`.

use super::feed::{self, Link};
use crate::bridge::Hub;
use crate::cluster::{self, stream, Cluster};
use crate::config::{BridgeRoute, Route};
use crate::metrics;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts the route's controller unless it runs.
pub fn ensure_running(
    cluster: &'static Arc<Cluster>,
    hub: &Arc<Hub>,
    route: &Arc<Route>,
    spec: &BridgeRoute,
) {
    if !hub.claim_producer() {
        return;
    }
    tokio::spawn(control(cluster, hub.clone(), route.clone(), spec.clone()));
}

/// Stops what it holds when the controller ends, however it ends.
struct Running {
    reader: JoinHandle<()>,
    backend: Option<JoinHandle<()>>,
    hold: watch::Sender<bool>,
    route: String,
    /// It runs the route's own feed (not a channel's), whose gauges it set.
    route_feed: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.reader.abort();
        self.hold.send_replace(false);
        if self.route_feed {
            metrics::CLUSTER_LEASE
                .with_label_values(&[&self.route])
                .set(0);
            metrics::CLUSTER_LOCAL_FEEDS
                .with_label_values(&[&self.route])
                .set(0);
        }
    }
}

async fn control(
    cluster: &'static Arc<Cluster>,
    hub: Arc<Hub>,
    route: Arc<Route>,
    spec: BridgeRoute,
) {
    let _release = feed::ReleaseOnPanic(hub.clone());
    let name = route.name.clone();
    let keys = cluster.keys_of(&name, &hub);
    // A channel's controller leaves the route's lease gauges alone: they say whether the
    // route's own feed is held (a route with channels has one lease per channel).
    let route_feed = hub.channel().is_none();
    let holding = Arc::new(AtomicBool::new(false));
    let relay = stream::appender(
        cluster.clone(),
        keys.clone(),
        hub.replay().max(64),
        holding.clone(),
    );
    let mut running = Running {
        reader: tokio::spawn(stream::read_feed(
            cluster.clone(),
            hub.clone(),
            keys.clone(),
        )),
        backend: None,
        hold: watch::Sender::new(false),
        route: name.clone(),
        route_feed,
    };
    let lease_gauge = route_feed.then(|| metrics::CLUSTER_LEASE.with_label_values(&[&name]));
    let local_gauge = route_feed.then(|| metrics::CLUSTER_LOCAL_FEEDS.with_label_values(&[&name]));
    let tick = cluster.cfg.lease_ttl / 3;
    let mut held = false;
    let mut local_mode = false;
    let mut up = cluster.watch_up();
    loop {
        if hub.is_retired() {
            // A reload replaced the feed: the new one's controller (same node) renews the
            // lease where this one leaves it, so the backend moves without a gap in the lease.
            log::debug!("cluster: route {name}: feed replaced by a reload; its controller stops");
            hub.release_producer();
            return;
        }
        let wanted_here = !hub.idle_for(spec.linger);
        let lease = if cluster.is_up() {
            cluster.lease_tick(&keys, wanted_here || held).await.ok()
        } else {
            None
        };
        let wanted_elsewhere = lease.as_ref().is_some_and(|l| l.wanted_elsewhere);
        let now_held = lease.as_ref().is_some_and(|l| l.held);
        if now_held && !held {
            log::info!(
                "cluster: route {name}: node {} holds the feed's lease",
                cluster.node()
            );
        } else if held && !now_held && lease.is_some() {
            log::warn!(
                "cluster: route {name}: node {} lost the feed's lease to another node",
                cluster.node()
            );
        }
        held = now_held;
        holding.store(held, Ordering::Relaxed);
        if let Some(g) = &lease_gauge {
            g.set(i64::from(held));
        }
        let now_local = lease.is_none();
        if now_local && !local_mode {
            metrics::CLUSTER_FALLBACKS.with_label_values(&[&name]).inc();
            log::warn!("cluster: route {name}: Redis unreachable; serving this instance's clients from its own backend connection");
        } else if local_mode && !now_local {
            log::info!(
                "cluster: route {name}: Redis is back; the lease decides who connects the backend"
            );
        }
        local_mode = now_local;
        if let Some(g) = &local_gauge {
            g.set(i64::from(local_mode));
        }

        let needed = wanted_here || (held && wanted_elsewhere);
        if !needed && hub.producer_should_stop(spec.linger) {
            if held {
                cluster.release(&keys).await;
            }
            log::debug!("cluster: route {name}: no clients here or elsewhere for backend_linger; feed stopped");
            return;
        }
        let connect = if local_mode { wanted_here } else { held };
        running.hold.send_replace(connect);
        let alive = running.backend.as_ref().is_some_and(|b| !b.is_finished());
        if connect && !alive {
            let resume_id = if local_mode {
                String::new()
            } else {
                stream::last_origin_id(cluster, &keys)
                    .await
                    .unwrap_or_default()
            };
            let link = Link {
                relay: Some(relay.clone()),
                hold: Some(running.hold.subscribe()),
                resume_id,
                ..Link::new(&route, &spec, &hub)
            };
            running.backend = Some(tokio::spawn(feed::run(link)));
        }
        // Every tick, and at once when Redis goes or comes back.
        up.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = up.changed() => {}
        }
    }
}

/// Runs the stream reader of a feed of publishes (nothing to connect: the stream brings the
/// other instances' publishes) while anyone here wants it, until `backend_linger` after the
/// last.
pub fn ensure_reader(
    cluster: &'static Arc<Cluster>,
    hub: &Arc<Hub>,
    route: &Arc<Route>,
    spec: &BridgeRoute,
) {
    if !hub.claim_producer() {
        return;
    }
    let (hub, linger) = (hub.clone(), spec.linger);
    let keys = cluster.keys_of(&route.name, &hub);
    tokio::spawn(async move {
        let _release = feed::ReleaseOnPanic(hub.clone());
        let reader = tokio::spawn(stream::read_feed(cluster.clone(), hub.clone(), keys));
        let tick = (linger / 4).clamp(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        );
        loop {
            tokio::time::sleep(tick).await;
            if hub.is_retired() {
                hub.release_producer();
                break;
            }
            if hub.producer_should_stop(linger) {
                break;
            }
        }
        reader.abort();
    });
}

/// The hub of a clustered shared feed.
pub fn hub(route: &Route, spec: &BridgeRoute) -> Hub {
    Hub::clustered(route.limits.send_queue, spec.replay, cluster::clock_seq)
}
