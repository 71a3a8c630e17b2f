//! Every metric switchyard exports, in one place. All live in prometheus' default registry, the
//! same one pingora-prometheus serves, so `/metrics` shows pingora's and ours together.
//!
//! Label values are bounded: `route` comes from the config, `transport`, `reason` and
//! `direction` from fixed sets in the code, `upstream` from the config's upstream list.

use crate::config::{Compression, Config, Fanout, Route, RouteKind, SlowConsumer};
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_http_requests_total",
        "Requests answered, by route and HTTP status class",
        &["route", "class"]
    )
    .expect("metric registers once")
});

pub static CLIENT_CONNECTIONS_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_client_connections_open",
        "Client connections the gateway terminates, open now",
        &["route", "transport"]
    )
    .expect("metric registers once")
});

pub static CLIENT_CONNECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_client_connections_total",
        "Client connections accepted by the gateway's own transports",
        &["route", "transport"]
    )
    .expect("metric registers once")
});

pub static MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_messages_total",
        "Messages through bridged routes; direction is in (from clients) or out (to clients)",
        &["route", "transport", "direction"]
    )
    .expect("metric registers once")
});

pub static SESSIONS_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_sessions_open",
        "Per-client sessions (fanout: per_client) open now, by the transport that opened them",
        &["route", "transport"]
    )
    .expect("metric registers once")
});

pub static SOCKJS_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_sockjs_sessions_open",
        "SockJS sessions held now (between their clients' requests too), by route",
        &["route"]
    )
    .expect("metric registers once")
});

pub static ENGINEIO_SESSIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_engineio_sessions_open",
        "Engine.IO sessions held now (polling, between their polls, or on a WebSocket), by route",
        &["route"]
    )
    .expect("metric registers once")
});

pub static SESSIONS_ENDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_sessions_ended_total",
        "Per-client sessions ended, by reason (client_closed, expired, backend_closed, shutdown)",
        &["route", "reason"]
    )
    .expect("metric registers once")
});

pub static BACKEND_POSTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_backend_posts_total",
        "Client messages POSTed to an sse backend's post URL, by outcome (ok, refused, failed)",
        &["route", "outcome"]
    )
    .expect("metric registers once")
});

pub static CHANNELS_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_channels_open",
        "Channels open on a route whose path captures them (/rooms/{room}): each with its feed and replay ring",
        &["route"]
    )
    .expect("metric registers once")
});

pub static CHANNEL_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_channel_events_total",
        "Channels opened, closed (backend_linger after their last client or publish) and refused (max_channels), per route",
        &["route", "event"]
    )
    .expect("metric registers once")
});

pub static ADMIN_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_admin_refusals_total",
        "Requests the admin listener refused under server.admin_auth, by reason (address, token)",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static PUBLISHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_publishes_total",
        "HTTP publishes on the admin listener, by outcome (accepted, unauthorized, invalid, refused)",
        &["route", "outcome"]
    )
    .expect("metric registers once")
});

pub static PUBLISHED_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_published_messages_total",
        "Messages that accepted HTTP publishes put into a route's feeds",
        &["route"]
    )
    .expect("metric registers once")
});

pub static AUTH_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_auth_requests_total",
        "Authorization subrequests (auth:) by outcome: allowed (2xx), denied (401/403), error (anything else, unreachable, timed out: the client gets 503)",
        &["route", "outcome"]
    )
    .expect("metric registers once")
});

pub static AUTH_CACHE_HITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_auth_cache_hits_total",
        "Clients admitted by a cached authorization answer, without a subrequest",
        &["route"]
    )
    .expect("metric registers once")
});

pub static AUTH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchyard_auth_request_seconds",
        "How long authorization subrequests took (a timed-out one counts its timeout)",
        &["route"],
        vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
    )
    .expect("metric registers once")
});

pub static ACCEPTS_PACED: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "switchyard_accepts_paced_total",
        "Connections whose accept waited for server.accept_rate (reconnect storms)"
    )
    .expect("metric registers once")
});

pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_rejections_total",
        "Requests and frames refused at the edge, by reason",
        &["route", "reason"]
    )
    .expect("metric registers once")
});

/// Counts one refusal: in `switchyard_rejections_total` and in [`RECENT_REFUSALS`]. Every
/// refusal goes through here, so the status page's last minute agrees with the counter.
pub fn refused(route: &str, reason: &'static str) {
    REJECTIONS.with_label_values(&[route, reason]).inc();
    RECENT_REFUSALS.record(reason);
}

/// Refusals of the last minute by reason, for the admin status page (a counter's rate needs
/// two scrapes and a Prometheus; this answers from one look).
pub static RECENT_REFUSALS: LazyLock<RecentCounts> = LazyLock::new(RecentCounts::new);

/// Events of the last [`RecentCounts::WINDOW`] seconds, by a label from a fixed set in the
/// code: per label a ring of one-second buckets, each an atomic holding the second it counts
/// (high half) and its count (low half). Recording takes a shared read lock and one
/// compare-and-swap; nothing is allocated after a label's first event, and at most
/// [`RecentCounts::MAX_LABELS`] labels are kept (the rest count as `other`).
pub struct RecentCounts {
    epoch: std::time::Instant,
    labels: std::sync::RwLock<Vec<(&'static str, Box<SecondsRing>)>>,
}

struct SecondsRing([std::sync::atomic::AtomicU64; RecentCounts::WINDOW as usize]);

impl RecentCounts {
    pub const WINDOW: u64 = 60;
    pub const MAX_LABELS: usize = 64;

    pub fn new() -> Self {
        Self {
            epoch: std::time::Instant::now(),
            labels: Default::default(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    pub fn record(&self, label: &'static str) {
        self.record_at(label, self.now());
    }

    fn record_at(&self, label: &'static str, second: u64) {
        use std::sync::atomic::Ordering;
        let add = |ring: &SecondsRing| {
            let slot = &ring.0[(second % Self::WINDOW) as usize];
            let stamp = (second & 0xffff_ffff) << 32;
            let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some(if cur & !0xffff_ffff == stamp {
                    cur.saturating_add(1)
                } else {
                    stamp | 1
                })
            });
        };
        let find = |list: &[(&'static str, Box<SecondsRing>)], label: &str| {
            list.iter().position(|(l, _)| *l == label)
        };
        {
            let list = self.labels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = find(&list, label) {
                return add(&list[i].1);
            }
        }
        let mut list = self.labels.write().unwrap_or_else(|p| p.into_inner());
        let label = if find(&list, label).is_some() || list.len() < Self::MAX_LABELS - 1 {
            label
        } else {
            "other"
        };
        let i = match find(&list, label) {
            Some(i) => i,
            None => {
                let ring = SecondsRing(std::array::from_fn(|_| Default::default()));
                list.push((label, Box::new(ring)));
                list.len() - 1
            }
        };
        add(&list[i].1);
    }

    /// Each label's count over the last [`Self::WINDOW`] seconds (this second included), largest
    /// first; labels with none in the window are left out.
    pub fn last_window(&self) -> Vec<(&'static str, u64)> {
        self.window_at(self.now())
    }

    fn window_at(&self, now: u64) -> Vec<(&'static str, u64)> {
        let list = self.labels.read().unwrap_or_else(|p| p.into_inner());
        let now = now & 0xffff_ffff;
        let mut counts: Vec<(&'static str, u64)> = list
            .iter()
            .map(|(label, ring)| {
                let n = ring
                    .0
                    .iter()
                    .map(|slot| slot.load(std::sync::atomic::Ordering::Relaxed))
                    .filter(|v| now.wrapping_sub(v >> 32) & 0xffff_ffff < Self::WINDOW)
                    .map(|v| v & 0xffff_ffff)
                    .sum();
                (*label, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts
    }
}

impl Default for RecentCounts {
    fn default() -> Self {
        Self::new()
    }
}

pub static UPSTREAM_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_upstream_healthy",
        "1 when the upstream passes its health check (or has none), 0 when marked down",
        &["route", "upstream"]
    )
    .expect("metric registers once")
});

pub static UPSTREAM_CONNECT_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_upstream_connect_failures_total",
        "Failed connection attempts to proxy upstreams",
        &["route", "upstream"]
    )
    .expect("metric registers once")
});

pub static BACKEND_CONNECTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_backend_connections_open",
        "Streaming backend connections open now (a shared route holds at most one)",
        &["route"]
    )
    .expect("metric registers once")
});

pub static BACKEND_CONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_backend_connect_attempts_total",
        "Connection attempts to streaming backends, by outcome (ok or failed)",
        &["route", "outcome"]
    )
    .expect("metric registers once")
});

pub static BACKEND_TLS_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_backend_tls_failures_total",
        "TLS failures toward backends and upstreams (host:port as configured), by what failed: certificate (verification), handshake or config",
        &["backend", "reason"]
    )
    .expect("metric registers once")
});

pub static BACKEND_RECONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_backend_reconnects_total",
        "Connection attempts to a shared streaming backend that follow a lost or failed connection (a feed's first attempt is not counted)",
        &["route"]
    )
    .expect("metric registers once")
});

pub static BACKEND_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_backend_messages_total",
        "Messages received from streaming backends",
        &["route"]
    )
    .expect("metric registers once")
});

pub static SLOW_CONSUMERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_slow_consumer_total",
        "Clients that fell more than send_queue messages behind, by the action taken (disconnect or drop)",
        &["route", "transport", "action"]
    )
    .expect("metric registers once")
});

pub static DROPPED_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_dropped_messages_total",
        "Messages not delivered to a client, by reason (slow_consumer or binary_policy)",
        &["route", "transport", "reason"]
    )
    .expect("metric registers once")
});

pub static CONNECTION_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchyard_client_connection_duration_seconds",
        "How long terminated client connections stayed open",
        &["route", "transport"],
        vec![0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 14400.0]
    )
    .expect("metric registers once")
});

pub static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_bytes_total",
        "Payload bytes through terminated client connections; direction is in (from clients) or out (to clients), framing included",
        &["route", "transport", "direction"]
    )
    .expect("metric registers once")
});

pub static COMPRESSION_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_ws_compression_bytes_total",
        "WebSocket traffic of clients that agreed to permessage-deflate: stage=plain counts message payloads before compression (after inflation, inbound), stage=wire the bytes on the wire",
        &["route", "transport", "direction", "stage"]
    )
    .expect("metric registers once")
});

pub static REPLAY: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_replay_total",
        "Resumes from a position (SSE Last-Event-ID, long-poll cursor): hit when everything after it was still held, miss when messages were lost",
        &["route", "result"]
    )
    .expect("metric registers once")
});

pub static DELIVERY_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchyard_delivery_latency_seconds",
        "Time from a backend message reaching the gateway to its write to a client (long-poll: to the poll that takes it)",
        &["route", "transport"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    .expect("metric registers once")
});

pub static CONFIG_RELOADS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_config_reloads_total",
        "Config reloads (SIGHUP), by outcome (success or failure)",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static CONFIG_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchyard_config_generation",
        "Generation of the config in force (1 for the one loaded at start)"
    )
    .expect("metric registers once")
});

pub static MEMORY_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchyard_memory_budget_bytes",
        "The process-wide budget for message buffers (server.limits.memory)"
    )
    .expect("metric registers once")
});

pub static MEMORY_USED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "switchyard_memory_used_bytes",
        "Bytes of message buffers held against the budget now"
    )
    .expect("metric registers once")
});

pub static MEMORY_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_memory_refusals_total",
        "Messages or bodies refused because the memory budget was spent; what is ws_message, ws_partial or post_body",
        &["what"]
    )
    .expect("metric registers once")
});

pub static ACCESS_LOG_LINES: LazyLock<IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "switchyard_access_log_lines_total",
        "Access log lines written (server.access_log)"
    )
    .expect("metric registers once")
});

pub static ACCESS_LOG_DROPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "switchyard_access_log_dropped_total",
        "Access log lines dropped because the writer fell behind (its queue was full) or could not write"
    )
    .expect("metric registers once")
});

pub static CLUSTER_MASTER_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "switchyard_cluster_master_changes_total",
        "Times the cluster moved to another Redis master that Sentinel named (only with `cluster.sentinel`)"
    )
    .expect("metric registers once")
});

pub static CLUSTER_UP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_cluster_up",
        "1 while this instance reaches the cluster's Redis, 0 while it serves in local mode (only with `cluster:`)",
        &["node"]
    )
    .expect("metric registers once")
});

pub static CLUSTER_LEASE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_cluster_lease_held",
        "1 while this instance holds the route's feed lease (and its backend connection) for the cluster",
        &["route"]
    )
    .expect("metric registers once")
});

pub static CLUSTER_LOCAL_FEEDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "switchyard_cluster_local_feeds",
        "1 while a clustered feed runs its own backend connection because Redis is unreachable",
        &["route"]
    )
    .expect("metric registers once")
});

pub static CLUSTER_FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_cluster_fallbacks_total",
        "Times a clustered feed fell back to its own backend connection (Redis unreachable)",
        &["route"]
    )
    .expect("metric registers once")
});

pub static CLUSTER_READ_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchyard_cluster_read_lag_seconds",
        "From the lease holder stamping a message to this instance reading it from the stream",
        &["route"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
    )
    .expect("metric registers once")
});

pub static CLUSTER_APPENDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_cluster_appends_total",
        "Messages the lease holder appended to the route's stream (ok) or could not (failed: its own clients still got them)",
        &["route", "outcome"]
    )
    .expect("metric registers once")
});

pub static REDIS_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "switchyard_cluster_redis_errors_total",
        "Redis commands that failed or timed out, by operation",
        &["op"]
    )
    .expect("metric registers once")
});

pub static REDIS_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "switchyard_cluster_redis_seconds",
        "Redis command latency, by operation (blocking reads excluded)",
        &["op"],
        vec![0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0]
    )
    .expect("metric registers once")
});

/// Registers every metric at start, so each is on `/metrics` from the first scrape (counters
/// without labels as 0) instead of appearing on first use.
pub fn init() {
    // Both outcomes exist from the start, so increase() sees the first failure.
    for outcome in ["success", "failure"] {
        CONFIG_RELOADS.with_label_values(&[outcome]);
    }
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&CLIENT_CONNECTIONS_OPEN);
    LazyLock::force(&CLIENT_CONNECTIONS);
    LazyLock::force(&MESSAGES);
    LazyLock::force(&SESSIONS_OPEN);
    LazyLock::force(&SESSIONS_ENDED);
    LazyLock::force(&SOCKJS_SESSIONS);
    LazyLock::force(&ENGINEIO_SESSIONS);
    LazyLock::force(&BACKEND_POSTS);
    LazyLock::force(&ACCEPTS_PACED);
    LazyLock::force(&AUTH_REQUESTS);
    LazyLock::force(&AUTH_CACHE_HITS);
    LazyLock::force(&AUTH_SECONDS);
    LazyLock::force(&CHANNELS_OPEN);
    LazyLock::force(&CHANNEL_EVENTS);
    LazyLock::force(&PUBLISHES);
    LazyLock::force(&PUBLISHED_MESSAGES);
    for reason in ["address", "token"] {
        ADMIN_REFUSALS.with_label_values(&[reason]);
    }
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&UPSTREAM_HEALTHY);
    LazyLock::force(&UPSTREAM_CONNECT_FAILURES);
    LazyLock::force(&BACKEND_CONNECTED);
    LazyLock::force(&BACKEND_CONNECTS);
    LazyLock::force(&BACKEND_RECONNECTS);
    LazyLock::force(&BACKEND_MESSAGES);
    LazyLock::force(&BACKEND_TLS_FAILURES);
    LazyLock::force(&SLOW_CONSUMERS);
    LazyLock::force(&DROPPED_MESSAGES);
    LazyLock::force(&CONNECTION_DURATION);
    LazyLock::force(&BYTES);
    LazyLock::force(&COMPRESSION_BYTES);
    LazyLock::force(&REPLAY);
    LazyLock::force(&DELIVERY_LATENCY);
    LazyLock::force(&CONFIG_RELOADS);
    LazyLock::force(&CONFIG_GENERATION);
    LazyLock::force(&MEMORY_LIMIT);
    LazyLock::force(&MEMORY_USED);
    LazyLock::force(&CLUSTER_UP);
    LazyLock::force(&CLUSTER_LEASE);
    LazyLock::force(&CLUSTER_LOCAL_FEEDS);
    LazyLock::force(&CLUSTER_FALLBACKS);
    LazyLock::force(&CLUSTER_READ_LAG);
    LazyLock::force(&CLUSTER_APPENDS);
    LazyLock::force(&REDIS_ERRORS);
    LazyLock::force(&REDIS_SECONDS);
    LazyLock::force(&ACCESS_LOG_LINES);
    LazyLock::force(&ACCESS_LOG_DROPPED);
    for what in ["ws_message", "ws_partial", "post_body", "replay_ring"] {
        MEMORY_REFUSALS.with_label_values(&[what]);
    }
}

/// Reasons of `switchyard_rejections_total` every route exports from the start: the ones a
/// dashboard watches. Others appear when they first happen.
const DECLARED_REFUSALS: [&str; 3] = ["origin_not_allowed", "max_clients", "headers_too_large"];

/// Exports at 0 every series whose labels `config` decides (each route with its transports,
/// directions, outcomes and reasons; each upstream; each TLS backend), so `rate()`, `absent()`
/// and the dashboard work on a quiet gateway, and removes every series of a route `config` no
/// longer has. Called at start and by each reload.
pub fn declare(config: &Config) {
    let routes: std::collections::HashSet<&str> =
        config.routes.iter().map(|r| r.name.as_str()).collect();
    forget_routes(&routes);
    for route in &config.routes {
        declare_route(route);
    }
}

fn declare_route(route: &Route) {
    let r = route.name.as_str();
    for class in ["2xx", "3xx", "4xx", "5xx"] {
        HTTP_REQUESTS.with_label_values(&[r, class]);
    }
    for reason in DECLARED_REFUSALS {
        REJECTIONS.with_label_values(&[r, reason]);
    }
    let client = |transport: &str, directions: &[&str]| {
        CLIENT_CONNECTIONS_OPEN.with_label_values(&[r, transport]);
        CLIENT_CONNECTIONS.with_label_values(&[r, transport]);
        CONNECTION_DURATION.with_label_values(&[r, transport]);
        for d in directions {
            MESSAGES.with_label_values(&[r, transport, d]);
            BYTES.with_label_values(&[r, transport, d]);
        }
    };
    let b = match &route.kind {
        RouteKind::Proxy(p) => {
            REJECTIONS.with_label_values(&[r, "no_upstream"]);
            client("tunnel", &["in", "out"]);
            for u in &p.upstreams {
                UPSTREAM_CONNECT_FAILURES.with_label_values(&[r, &u.name]);
                if p.tls.is_some() {
                    declare_tls(&u.name);
                }
            }
            return;
        }
        RouteKind::Bridge(b) => b,
    };
    let shared = b.fanout == Fanout::Shared;
    let mut transports: Vec<&str> = Vec::new();
    let c = &b.clients;
    for (on, name) in [
        (c.websocket, "websocket"),
        (c.sse, "sse"),
        (c.long_poll, "long_poll"),
    ] {
        if on {
            transports.push(name);
        }
    }
    if let Some(sj) = &b.sockjs {
        for (on, name) in [
            (sj.transports.websocket, "sockjs-websocket"),
            (sj.transports.xhr, "sockjs-xhr"),
            (sj.transports.xhr_streaming, "sockjs-xhr_streaming"),
            (sj.transports.eventsource, "sockjs-eventsource"),
            (sj.transports.htmlfile, "sockjs-htmlfile"),
            (sj.transports.jsonp, "sockjs-jsonp"),
        ] {
            if on {
                transports.push(name);
            }
        }
        SOCKJS_SESSIONS.with_label_values(&[r]);
    }
    if b.clients.engineio {
        transports.extend(["engineio-polling", "engineio-websocket"]);
    }
    if b.clients.socketio {
        transports.extend(["socketio-polling", "socketio-websocket"]);
    }
    if b.clients.engine() {
        ENGINEIO_SESSIONS.with_label_values(&[r]);
    }
    let directions: &[&str] = if b.two_way() {
        &["in", "out"]
    } else {
        &["out"]
    };
    for t in &transports {
        client(t, directions);
        DELIVERY_LATENCY.with_label_values(&[r, t]);
        if shared {
            let action = match b.slow_consumer {
                SlowConsumer::Disconnect => "disconnect",
                SlowConsumer::DropOldest => "drop",
            };
            SLOW_CONSUMERS.with_label_values(&[r, t, action]);
            DROPPED_MESSAGES.with_label_values(&[r, t, "slow_consumer"]);
        } else if *t != "websocket" && *t != "sockjs-websocket" {
            SESSIONS_OPEN.with_label_values(&[r, t]);
        }
        if (*t == "websocket" || *t == "sockjs-websocket") && b.compression == Compression::Auto {
            for stage in ["plain", "wire"] {
                COMPRESSION_BYTES.with_label_values(&[r, t, "out", stage]);
            }
        }
    }
    if route.channels.is_some() {
        CHANNELS_OPEN.with_label_values(&[r]);
        for event in ["opened", "closed", "refused"] {
            CHANNEL_EVENTS.with_label_values(&[r, event]);
        }
    }
    if b.auth.is_some() {
        AUTH_CACHE_HITS.with_label_values(&[r]);
        AUTH_SECONDS.with_label_values(&[r]);
        for outcome in ["allowed", "denied", "error"] {
            AUTH_REQUESTS.with_label_values(&[r, outcome]);
        }
    }
    if b.publish.is_some() {
        PUBLISHED_MESSAGES.with_label_values(&[r]);
        for outcome in ["accepted", "unauthorized", "invalid", "refused"] {
            PUBLISHES.with_label_values(&[r, outcome]);
        }
    }
    if shared {
        for result in ["hit", "miss"] {
            REPLAY.with_label_values(&[r, result]);
        }
    } else {
        for reason in ["client_closed", "expired", "backend_closed", "shutdown"] {
            SESSIONS_ENDED.with_label_values(&[r, reason]);
        }
    }
    if let Some(feed) = b.remote() {
        BACKEND_CONNECTED.with_label_values(&[r]);
        BACKEND_MESSAGES.with_label_values(&[r]);
        if shared {
            BACKEND_RECONNECTS.with_label_values(&[r]);
        }
        for outcome in ["ok", "failed"] {
            BACKEND_CONNECTS.with_label_values(&[r, outcome]);
        }
        if feed.post.is_some() {
            for outcome in ["ok", "failed"] {
                BACKEND_POSTS.with_label_values(&[r, outcome]);
            }
        }
        if !shared {
            REJECTIONS.with_label_values(&[r, "backend_unreachable"]);
        }
        if feed.tls.is_some() {
            declare_tls(&format!("{}:{}", feed.host, feed.port));
        }
        if let Some(post) = feed.post.as_ref().filter(|p| p.tls.is_some()) {
            declare_tls(&format!("{}:{}", post.host, post.port));
        }
    }
}

fn declare_tls(backend: &str) {
    for reason in ["certificate", "handshake"] {
        BACKEND_TLS_FAILURES.with_label_values(&[backend, reason]);
    }
}

/// Takes `n` from `route`'s series of `gauge` when it is exported (a removed route's series
/// is not made again).
pub fn sub_if_exported(gauge: &IntGaugeVec, route: &str, n: i64) {
    use prometheus::core::Collector;
    let exported = gauge.collect().iter().any(|family| {
        family.get_metric().iter().any(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "route" && l.value() == route)
        })
    });
    if exported {
        gauge.with_label_values(&[route]).sub(n);
    }
}

/// Removes every series whose `route` label is not in `keep`.
fn forget_routes(keep: &std::collections::HashSet<&str>) {
    // Series are about to be removed and made anew: threads' shared latency histograms are
    // not joined again by new clients (they would flush into removed series).
    GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    fn forget<T: prometheus::core::MetricVecBuilder>(
        vec: &prometheus::core::MetricVec<T>,
        keep: &std::collections::HashSet<&str>,
    ) {
        use prometheus::core::Collector;
        for family in vec.collect() {
            for m in family.get_metric() {
                let labels: std::collections::HashMap<&str, &str> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                if labels.get("route").is_some_and(|r| !keep.contains(r)) {
                    let _ = vec.remove(&labels);
                }
            }
        }
    }
    forget(&HTTP_REQUESTS, keep);
    forget(&CLIENT_CONNECTIONS_OPEN, keep);
    forget(&CLIENT_CONNECTIONS, keep);
    forget(&MESSAGES, keep);
    forget(&SESSIONS_OPEN, keep);
    forget(&SOCKJS_SESSIONS, keep);
    forget(&SESSIONS_ENDED, keep);
    forget(&BACKEND_POSTS, keep);
    forget(&AUTH_REQUESTS, keep);
    forget(&AUTH_CACHE_HITS, keep);
    forget(&AUTH_SECONDS, keep);
    forget(&CHANNELS_OPEN, keep);
    forget(&CHANNEL_EVENTS, keep);
    forget(&PUBLISHES, keep);
    forget(&PUBLISHED_MESSAGES, keep);
    forget(&REJECTIONS, keep);
    forget(&UPSTREAM_HEALTHY, keep);
    forget(&UPSTREAM_CONNECT_FAILURES, keep);
    forget(&BACKEND_CONNECTED, keep);
    forget(&BACKEND_CONNECTS, keep);
    forget(&BACKEND_MESSAGES, keep);
    forget(&BACKEND_RECONNECTS, keep);
    forget(&SLOW_CONSUMERS, keep);
    forget(&DROPPED_MESSAGES, keep);
    forget(&CONNECTION_DURATION, keep);
    forget(&BYTES, keep);
    forget(&COMPRESSION_BYTES, keep);
    forget(&REPLAY, keep);
    forget(&DELIVERY_LATENCY, keep);
    forget(&CLUSTER_LEASE, keep);
    forget(&CLUSTER_LOCAL_FEEDS, keep);
    forget(&CLUSTER_FALLBACKS, keep);
    forget(&CLUSTER_READ_LAG, keep);
    forget(&CLUSTER_APPENDS, keep);
}

/// Counts one open client connection for its lifetime.
pub struct OpenConnection {
    /// Held, not looked up again at the end: a route removed by a reload meanwhile has its
    /// series removed, and this connection's end must not bring them back.
    open: IntGauge,
    duration: Histogram,
    since: std::time::Instant,
}

/// A transport's series on one route, looked up once and kept: what clients that live for one
/// request each (polls) count, without a label lookup (a hash and a lock) per request.
pub struct ClientSeries {
    connections: IntCounter,
    open: IntGauge,
    duration: Histogram,
    pub messages_out: IntCounter,
    pub bytes_out: IntCounter,
    pub latency: Histogram,
}

impl ClientSeries {
    pub fn new(route: &str, transport: &'static str) -> Self {
        Self {
            connections: CLIENT_CONNECTIONS.with_label_values(&[route, transport]),
            open: CLIENT_CONNECTIONS_OPEN.with_label_values(&[route, transport]),
            duration: CONNECTION_DURATION.with_label_values(&[route, transport]),
            messages_out: MESSAGES.with_label_values(&[route, transport, "out"]),
            bytes_out: BYTES.with_label_values(&[route, transport, "out"]),
            latency: DELIVERY_LATENCY.with_label_values(&[route, transport]),
        }
    }
}

impl OpenConnection {
    /// Counts a connection in series looked up before.
    pub fn of(series: &ClientSeries) -> Self {
        series.connections.inc();
        series.open.inc();
        Self {
            open: series.open.clone(),
            duration: series.duration.clone(),
            since: std::time::Instant::now(),
        }
    }

    pub fn new(route: &str, transport: &'static str) -> Self {
        CLIENT_CONNECTIONS
            .with_label_values(&[route, transport])
            .inc();
        let open = CLIENT_CONNECTIONS_OPEN.with_label_values(&[route, transport]);
        open.inc();
        Self {
            open,
            duration: CONNECTION_DURATION.with_label_values(&[route, transport]),
            since: std::time::Instant::now(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.dec();
        self.duration.observe(self.since.elapsed().as_secs_f64());
    }
}

/// Bumped when route series are forgotten (a reload), so [`thread_latency`] slots made before
/// are not joined after.
static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Delivery latency, kept per thread: one local histogram per series, shared by every client
/// the thread serves, flushed to the series about once a second. A fan-out of one message to
/// thousands of clients then observes into one histogram that stays in cache, not into one
/// per client (a cache miss or two per delivery, 5% of a WebSocket fan-out's CPU).
mod thread_latency {
    use prometheus::local::LocalHistogram;
    use prometheus::Histogram;
    use std::cell::RefCell;
    use std::time::{Duration, Instant};

    struct Slot {
        route: Box<str>,
        transport: &'static str,
        generation: u64,
        local: LocalHistogram,
        users: usize,
        flushed: Instant,
    }

    thread_local! {
        static SLOTS: RefCell<Vec<Option<Slot>>> = const { RefCell::new(Vec::new()) };
    }

    /// This thread's token: a client's slot is used only on the thread that joined it.
    fn token() -> usize {
        SLOTS.with(|s| s as *const _ as usize)
    }

    /// Joins (or opens) this thread's slot for the series; (slot, thread token).
    pub fn join(
        route: &str,
        transport: &'static str,
        series: &Histogram,
    ) -> Option<(usize, usize)> {
        let generation = super::GENERATION.load(std::sync::atomic::Ordering::Relaxed);
        SLOTS
            .try_with(|slots| {
                let mut slots = slots.borrow_mut();
                let found = slots.iter().position(|s| {
                    s.as_ref().is_some_and(|s| {
                        s.generation == generation && s.transport == transport && &*s.route == route
                    })
                });
                let at = match found {
                    Some(at) => at,
                    None => {
                        let slot = Slot {
                            route: route.into(),
                            transport,
                            generation,
                            local: series.local(),
                            users: 0,
                            flushed: Instant::now(),
                        };
                        match slots.iter().position(Option::is_none) {
                            Some(free) => {
                                slots[free] = Some(slot);
                                free
                            }
                            None => {
                                slots.push(Some(slot));
                                slots.len() - 1
                            }
                        }
                    }
                };
                if let Some(s) = slots[at].as_mut() {
                    s.users += 1;
                }
                (at, token())
            })
            .ok()
    }

    /// Observes into the slot; false when called on another thread than the one that joined.
    pub fn observe(at: (usize, usize), seconds: f64) -> bool {
        at.1 == token()
            && SLOTS.with(|slots| match slots.borrow().get(at.0) {
                Some(Some(s)) => {
                    s.local.observe(seconds);
                    true
                }
                _ => false,
            })
    }

    /// Flushes the slot when its last flush is `every` old.
    pub fn tick(at: (usize, usize), now: Instant, every: Duration) {
        if at.1 != token() {
            return;
        }
        SLOTS.with(|slots| {
            if let Some(Some(s)) = slots.borrow_mut().get_mut(at.0) {
                if now.saturating_duration_since(s.flushed) >= every {
                    s.local.flush();
                    s.flushed = now;
                }
            }
        });
    }

    /// A client leaves its slot; the last one flushes and frees it.
    pub fn leave(at: (usize, usize)) {
        if at.1 != token() {
            return;
        }
        let _ = SLOTS.try_with(|slots| {
            let mut slots = slots.borrow_mut();
            if let Some(entry) = slots.get_mut(at.0) {
                if let Some(s) = entry.as_mut() {
                    s.users -= 1;
                    if s.users == 0 {
                        s.local.flush();
                        *entry = None;
                    }
                }
            }
        });
    }
}

/// What one streaming client was sent, tallied on the connection and added to the shared
/// families (messages and bytes out, delivery latency) at most once per [`Self::EVERY`] and
/// when the connection ends: a fan-out of one message to many clients does not touch the same
/// atomics and histogram buckets once per client.
pub struct Delivered {
    messages: IntCounter,
    bytes: IntCounter,
    latency: Histogram,
    /// This thread's shared latency histogram for the series (see [`thread_latency`]).
    shared: Option<(usize, usize)>,
    /// Latency observations not yet flushed, when the shared one cannot be used (another
    /// thread); made at the first such delivery, so an idle client holds none.
    local: Option<Box<prometheus::local::LocalHistogram>>,
    pending_messages: u64,
    pending_bytes: u64,
    /// What was flushed so far, so the connection's totals can be told at its end (the
    /// access log).
    flushed_messages: u64,
    flushed_bytes: u64,
    /// For a client that agreed to compression: its `plain` and `wire` counters, and what is
    /// pending of each.
    compression: Option<Box<Compressed>>,
    last_flush: std::time::Instant,
}

struct Compressed {
    plain: IntCounter,
    wire: IntCounter,
    pending_plain: u64,
    pending_wire: u64,
}

impl Delivered {
    /// How stale the shared families may be, at most, for a client that is being delivered to.
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(route: &str, transport: &'static str) -> Self {
        let latency = DELIVERY_LATENCY.with_label_values(&[route, transport]);
        Self {
            messages: MESSAGES.with_label_values(&[route, transport, "out"]),
            bytes: BYTES.with_label_values(&[route, transport, "out"]),
            shared: thread_latency::join(route, transport, &latency),
            latency,
            local: None,
            pending_messages: 0,
            pending_bytes: 0,
            flushed_messages: 0,
            flushed_bytes: 0,
            compression: None,
            last_flush: std::time::Instant::now(),
        }
    }

    /// Also tallies the client's compression (`switchyard_ws_compression_bytes_total`, out).
    pub fn with_compression(mut self, route: &str, transport: &'static str) -> Self {
        let c = |stage| COMPRESSION_BYTES.with_label_values(&[route, transport, "out", stage]);
        self.compression = Some(Box::new(Compressed {
            plain: c("plain"),
            wire: c("wire"),
            pending_plain: 0,
            pending_wire: 0,
        }));
        self
    }

    /// Messages of `plain` payload bytes sent as `wire` bytes (when compression was agreed).
    pub fn compressed(&mut self, plain: usize, wire: usize) {
        if let Some(c) = &mut self.compression {
            c.pending_plain += plain as u64;
            c.pending_wire += wire as u64;
        }
    }

    /// A message delivered `latency` after the gateway received it.
    pub fn message(&mut self, latency: std::time::Duration) {
        self.pending_messages += 1;
        if let Some(at) = self.shared {
            if thread_latency::observe(at, latency.as_secs_f64()) {
                return;
            }
        }
        self.local
            .get_or_insert_with(|| Box::new(self.latency.local()))
            .observe(latency.as_secs_f64());
    }

    /// Messages sent that carry no delivery latency (pings' answers, an echo).
    pub fn untimed(&mut self, messages: u64) {
        self.pending_messages += messages;
    }

    pub fn bytes(&mut self, n: usize) {
        self.pending_bytes += n as u64;
    }

    /// Flushes when the last flush is [`Self::EVERY`] old.
    pub fn tick(&mut self, now: std::time::Instant) {
        if let Some(at) = self.shared {
            thread_latency::tick(at, now, Self::EVERY);
        }
        if now.saturating_duration_since(self.last_flush) >= Self::EVERY {
            self.flush();
            self.last_flush = now;
        }
    }

    /// Messages and bytes sent so far, flushed or not.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.flushed_messages + self.pending_messages,
            self.flushed_bytes + self.pending_bytes,
        )
    }

    pub fn flush(&mut self) {
        if self.pending_messages > 0 {
            self.flushed_messages += self.pending_messages;
            self.messages
                .inc_by(std::mem::take(&mut self.pending_messages));
        }
        if self.pending_bytes > 0 {
            self.flushed_bytes += self.pending_bytes;
            self.bytes.inc_by(std::mem::take(&mut self.pending_bytes));
        }
        if let Some(l) = &self.local {
            l.flush();
        }
        if let Some(c) = &mut self.compression {
            if c.pending_plain > 0 {
                c.plain.inc_by(std::mem::take(&mut c.pending_plain));
                c.wire.inc_by(std::mem::take(&mut c.pending_wire));
            }
        }
    }
}

impl Drop for Delivered {
    fn drop(&mut self) {
        self.flush();
        if let Some(at) = self.shared.take() {
            thread_latency::leave(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RecentCounts;

    #[test]
    fn clients_on_one_thread_share_a_latency_histogram_and_every_observation_lands() {
        let series = super::DELIVERY_LATENCY.with_label_values(&["shared-latency", "sse"]);
        let mut a = super::Delivered::new("shared-latency", "sse");
        let mut b = super::Delivered::new("shared-latency", "sse");
        assert_eq!(
            a.shared.map(|s| s.0),
            b.shared.map(|s| s.0),
            "one slot for the series"
        );
        a.message(std::time::Duration::from_millis(3));
        b.message(std::time::Duration::from_millis(5));
        b.message(std::time::Duration::from_millis(7));
        // Not flushed yet: the tick is under a second old.
        a.tick(std::time::Instant::now());
        assert_eq!(series.get_sample_count(), 0);
        drop(a);
        assert_eq!(series.get_sample_count(), 0, "b still uses the slot");
        drop(b);
        assert_eq!(series.get_sample_count(), 3, "the last to leave flushes");
        assert!((series.get_sample_sum() - 0.015).abs() < 1e-9);
        // On another thread, a client of the same series has a slot of that thread's.
        let other = std::thread::spawn(|| {
            let mut c = super::Delivered::new("shared-latency", "sse");
            c.message(std::time::Duration::from_millis(1));
        });
        other.join().unwrap();
        assert_eq!(series.get_sample_count(), 4);
    }

    #[test]
    fn recent_counts_keep_the_last_minute_only() {
        let c = RecentCounts::new();
        c.record_at("origin_not_allowed", 10);
        c.record_at("origin_not_allowed", 10);
        c.record_at("no_route", 40);
        c.record_at("origin_not_allowed", 69);
        assert_eq!(
            c.window_at(69),
            [("origin_not_allowed", 3), ("no_route", 1)]
        );
        // Second 10 has left the window; second 70 reuses its bucket.
        c.record_at("origin_not_allowed", 70);
        assert_eq!(
            c.window_at(70),
            [("origin_not_allowed", 2), ("no_route", 1)]
        );
        assert_eq!(c.window_at(100), [("origin_not_allowed", 2)]);
        assert!(c.window_at(1000).is_empty());
    }

    #[test]
    fn recent_counts_hold_a_bounded_set_of_labels() {
        let c = RecentCounts::new();
        let names: Vec<&'static str> = (0..100)
            .map(|i| &*Box::leak(format!("r{i}").into_boxed_str()))
            .collect();
        for n in &names {
            c.record_at(n, 5);
        }
        let w = c.window_at(5);
        assert_eq!(w.len(), RecentCounts::MAX_LABELS);
        assert_eq!(w[0], ("other", 100 - (RecentCounts::MAX_LABELS as u64 - 1)));
    }
}
