//! The admin listener's status page: `GET /` renders it as HTML for people, `GET /status.json`
//! gives the same facts to scripts.
//!
//! ```text
//! prometheus::gather() ─┐
//! the live generation ──┼─> collect() -> Status ─┬─> to_html()  (server-rendered, no script)
//! last reload, refusals ┘                        └─> serde_json (field names documented in README)
//! ```
//!
//! Counts come from the metrics in the default registry (so the page and `/metrics` never
//! disagree), read from one gather: reading a labelled metric through its handle would create
//! the series it asks about. The routes, their kinds and upstream members come from the
//! generation in force; refusals of the last minute from [`metrics::RECENT_REFUSALS`]; the last
//! reload from [`super::reload::last_outcome`].
//!
//! [`html`] renders the page; every string that comes from the config (route names, hosts,
//! paths, upstream names, reload errors) goes through [`html::escape`] on its way in.

mod html;

use super::reload;
use crate::bridge::Bridge;
use crate::config::{BackendSpec, Balance, Builtin, Fanout, HostPattern, RouteKind};
use crate::gateway::state::{GatewayState, RouteRuntime, Target};
use crate::metrics;
use crate::upstream::pool::UpstreamSet;
use crate::wire::time::rfc3339;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// How often the HTML page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 5;

/// Everything the status page shows; serialized as `/status.json`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub version: &'static str,
    pub started_at: String,
    pub uptime_seconds: u64,
    /// False once the process drains (`/readyz` answers 503).
    pub ready: bool,
    pub config: ConfigStatus,
    pub routes: Vec<RouteStatus>,
    pub refusals_last_minute: Refusals,
}

#[derive(Debug, Serialize)]
pub struct ConfigStatus {
    /// 1 for the config loaded at start, one more per applied reload.
    pub generation: i64,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// None until the first SIGHUP.
    pub last_reload: Option<LastReload>,
}

#[derive(Debug, Serialize)]
pub struct LastReload {
    pub at: String,
    pub seconds_ago: u64,
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// The generation in force after it.
    pub generation: i64,
    /// The config's errors when it was refused.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RouteStatus {
    pub name: String,
    /// `*` for any host, `*.example.com` for a suffix.
    pub host: String,
    pub path: String,
    /// `proxy` or `bridge`.
    pub kind: &'static str,
    /// The client transports the route serves: `websocket`, `sse`, `long_poll`, `sockjs` for a
    /// bridge; `http` and `tunnel` (WebSocket passed through) for a proxy.
    pub transports: Vec<&'static str>,
    /// Client connections open now, by transport (`switchyard_client_connections_open`).
    pub clients: BTreeMap<String, u64>,
    pub clients_total: u64,
    /// Per-client sessions open now (`fanout: per_client`).
    pub sessions_open: u64,
    /// SockJS sessions held now.
    pub sockjs_sessions_open: u64,
    /// Engine.IO (and Socket.IO) sessions held now.
    pub engineio_sessions_open: u64,
    /// Requests answered since start (`switchyard_http_requests_total`).
    pub requests_total: u64,
    /// Refusals since start (`switchyard_rejections_total`).
    pub refusals_total: u64,
    /// Set for bridge routes.
    pub bridge: Option<BridgeStatus>,
    /// Set for proxy routes.
    pub proxy: Option<ProxyStatus>,
}

#[derive(Debug, Serialize)]
pub struct BridgeStatus {
    /// `websocket`, `sse`, `builtin`, or `publish` (a feed of HTTP publishes only).
    pub backend: &'static str,
    /// `clock`, `echo` or `demo` for a builtin backend.
    pub builtin: Option<&'static str>,
    /// `host:port` of a websocket or sse backend (the path and query, which may carry
    /// credentials, are left out).
    pub backend_addr: Option<String>,
    /// `shared` or `per_client`.
    pub fanout: &'static str,
    /// A backend connection is open (always true for builtins).
    pub connected: bool,
    /// `connected`; `disconnected` (clients wait, no backend connection); `idle` (no clients,
    /// so no connection); `via_cluster` (another instance holds the feed's lease); `builtin`.
    pub state: &'static str,
    pub backend_connections_open: u64,
    pub connects_ok: u64,
    pub connects_failed: u64,
    /// Attempts that followed a lost or failed connection of a shared feed.
    pub reconnects: u64,
    /// The route takes HTTP publishes on the admin listener.
    pub publish: bool,
    /// On a route whose path captures channels: how many are open, and the busiest.
    pub channels: Option<ChannelsStatus>,
}

#[derive(Debug, Serialize)]
pub struct ChannelsStatus {
    pub open: usize,
    pub max: usize,
    /// At most [`BUSIEST`] channels, most subscribers first.
    pub busiest: Vec<ChannelStatus>,
}

#[derive(Debug, Serialize)]
pub struct ChannelStatus {
    pub name: String,
    /// Clients subscribed to its shared feed here.
    pub subscribers: usize,
}

/// How many channels of a route the status page names.
const BUSIEST: usize = 5;

#[derive(Debug, Serialize)]
pub struct ProxyStatus {
    /// `round_robin`, `least_conn` or `hash_client_ip`.
    pub balance: &'static str,
    pub health_checked: bool,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub addr: String,
    /// Passes its health check (or has none).
    pub healthy: bool,
    pub in_flight: u64,
    pub connect_failures: u64,
}

#[derive(Debug, Serialize)]
pub struct Refusals {
    pub total: u64,
    /// Reason (the `reason` label of `switchyard_rejections_total`) to count.
    pub by_reason: BTreeMap<&'static str, u64>,
}

/// One series: its labels and value.
type Series = (Vec<(String, String)>, f64);

/// The samples of one `prometheus::gather()`, by metric name.
struct Samples(HashMap<String, Vec<Series>>);

impl Samples {
    fn gather() -> Self {
        use prometheus::proto::MetricType;
        let mut by_name = HashMap::new();
        for family in prometheus::gather() {
            let kind = family.get_field_type();
            let samples: Vec<_> = family
                .get_metric()
                .iter()
                .filter_map(|m| {
                    let value = match kind {
                        MetricType::COUNTER => m.get_counter().value(),
                        MetricType::GAUGE => m.get_gauge().value(),
                        _ => return None,
                    };
                    let labels = m
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect();
                    Some((labels, value))
                })
                .collect();
            by_name.insert(family.name().to_owned(), samples);
        }
        Self(by_name)
    }

    /// The series of `name` whose labels include all of `want`.
    fn matching<'a>(
        &'a self,
        name: &str,
        want: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .filter(move |(labels, _)| {
                want.iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
    }

    /// The sum over the series of `name` that carry `want`; 0 when there are none.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> u64 {
        let total: f64 = self.matching(name, want).map(|(_, v)| v).sum();
        total.max(0.0) as u64
    }

    fn exists(&self, name: &str, want: &[(&str, &str)]) -> bool {
        self.matching(name, want).next().is_some()
    }

    /// The value of label `key` of each series of `name` carrying `want`, with the series' value.
    fn by_label(&self, name: &str, want: &[(&str, &str)], key: &str) -> Vec<(String, u64)> {
        self.matching(name, want)
            .filter_map(|(labels, v)| {
                let l = labels.iter().find(|(k, _)| k == key)?;
                Some((l.1.clone(), v.max(0.0) as u64))
            })
            .collect()
    }
}

/// When the process started, for uptime.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Started {
    pub fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Gathers the facts now.
pub fn collect(state: &GatewayState, started: Started) -> Status {
    // The last reload is read before the counters: a reload records its outcome after it
    // counts it, so counters gathered after show it too (gathered first, a reload landing in
    // between showed as the last one with a count that left it out).
    let last = reload::last_outcome();
    let samples = Samples::gather();
    let reloads = |outcome| samples.sum("switchyard_config_reloads_total", &[("outcome", outcome)]);
    let last_reload = last.map(|r| LastReload {
        at: rfc3339(unix(r.at)),
        seconds_ago: SystemTime::now()
            .duration_since(r.at)
            .map_or(0, |d| d.as_secs()),
        outcome: if r.error.is_none() {
            "success"
        } else {
            "failure"
        },
        generation: r.generation,
        error: r.error,
    });
    let by_reason: BTreeMap<&'static str, u64> =
        metrics::RECENT_REFUSALS.last_window().into_iter().collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        started_at: rfc3339(unix(started.wall)),
        uptime_seconds: started.mono.elapsed().as_secs(),
        ready: !crate::drain::draining(),
        config: ConfigStatus {
            generation: state.generation,
            reloads_succeeded: reloads("success"),
            reloads_failed: reloads("failure"),
            last_reload,
        },
        routes: state
            .routes
            .iter()
            .map(|rt| route_status(rt, &samples))
            .collect(),
        refusals_last_minute: Refusals {
            total: by_reason.values().sum(),
            by_reason,
        },
    }
}

fn route_status(rt: &RouteRuntime, samples: &Samples) -> RouteStatus {
    let route = &rt.route;
    let name = route.name.as_str();
    let this = [("route", name)];
    let transports = match &route.kind {
        RouteKind::Proxy(_) => vec!["http", "tunnel"],
        RouteKind::Bridge(b) => {
            let c = b.clients;
            [
                (c.websocket, "websocket"),
                (c.sse, "sse"),
                (c.long_poll, "long_poll"),
                (c.sockjs, "sockjs"),
                (c.engineio, "engineio"),
                (c.socketio, "socketio"),
            ]
            .into_iter()
            .filter_map(|(on, t)| on.then_some(t))
            .collect()
        }
    };
    let mut clients: BTreeMap<String, u64> = transports
        .iter()
        .filter(|t| !matches!(**t, "http" | "sockjs" | "engineio" | "socketio"))
        .map(|t| (t.to_string(), 0))
        .collect();
    for (transport, n) in samples.by_label("switchyard_client_connections_open", &this, "transport")
    {
        *clients.entry(transport).or_default() += n;
    }
    let clients_total = clients.values().sum();
    let (bridge, proxy) = match &rt.target {
        Target::Bridge(b) => (Some(bridge_status(b, samples, clients_total)), None),
        Target::Proxy(set) => (None, Some(proxy_status(set, samples))),
    };
    RouteStatus {
        name: route.name.clone(),
        host: match &route.host {
            HostPattern::Any => "*".into(),
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Suffix(s) => format!("*{s}"),
        },
        path: route.path.clone(),
        kind: match route.kind {
            RouteKind::Proxy(_) => "proxy",
            RouteKind::Bridge(_) => "bridge",
        },
        transports,
        clients,
        clients_total,
        sessions_open: samples.sum("switchyard_sessions_open", &this),
        sockjs_sessions_open: samples.sum("switchyard_sockjs_sessions_open", &this),
        engineio_sessions_open: samples.sum("switchyard_engineio_sessions_open", &this),
        requests_total: samples.sum("switchyard_http_requests_total", &this),
        refusals_total: samples.sum("switchyard_rejections_total", &this),
        bridge,
        proxy,
    }
}

fn bridge_status(b: &Bridge, samples: &Samples, clients: u64) -> BridgeStatus {
    let name = b.route.name.as_str();
    let this = [("route", name)];
    let connects = |outcome| {
        samples.sum(
            "switchyard_backend_connect_attempts_total",
            &[("route", name), ("outcome", outcome)],
        )
    };
    let open = samples.sum("switchyard_backend_connections_open", &this);
    let (backend, builtin, addr) = match &b.spec.backend {
        BackendSpec::WebSocket(f) => ("websocket", None, Some(f.authority.clone())),
        BackendSpec::Sse(f) => ("sse", None, Some(f.authority.clone())),
        BackendSpec::Published => ("publish", None, None),
        BackendSpec::Builtin(k) => (
            "builtin",
            Some(match k {
                Builtin::Clock => "clock",
                Builtin::Echo => "echo",
                Builtin::DemoPage => "demo",
            }),
            None,
        ),
    };
    let clustered = b.hub().is_some_and(|h| h.is_clustered())
        && samples.exists("switchyard_cluster_lease_held", &this);
    let state = match () {
        _ if builtin.is_some() => "builtin",
        _ if open > 0 => "connected",
        _ if clustered => "via_cluster",
        _ if clients > 0 => "disconnected",
        _ => "idle",
    };
    BridgeStatus {
        backend,
        builtin,
        backend_addr: addr,
        fanout: match b.spec.fanout {
            Fanout::Shared => "shared",
            Fanout::PerClient => "per_client",
        },
        connected: builtin.is_some() || open > 0,
        state,
        backend_connections_open: open,
        connects_ok: connects("ok"),
        connects_failed: connects("failed"),
        reconnects: samples.sum("switchyard_backend_reconnects_total", &this),
        publish: b.spec.publish.is_some(),
        channels: b.channels().map(|c| ChannelsStatus {
            open: c.len(),
            max: b.route.limits.max_channels,
            busiest: c
                .busiest(BUSIEST)
                .into_iter()
                .map(|(name, subscribers)| ChannelStatus {
                    name: name.into(),
                    subscribers,
                })
                .collect(),
        }),
    }
}

fn proxy_status(set: &UpstreamSet, samples: &Samples) -> ProxyStatus {
    ProxyStatus {
        balance: match set.spec.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::HashClientIp => "hash_client_ip",
        },
        health_checked: set.spec.health_check.is_some(),
        upstreams: set
            .members
            .iter()
            .map(|m| UpstreamStatus {
                name: m.upstream.name.clone(),
                addr: m.upstream.addr.to_string(),
                healthy: m.is_healthy(),
                in_flight: m.in_flight() as u64,
                connect_failures: samples.sum(
                    "switchyard_upstream_connect_failures_total",
                    &[("route", &set.route), ("upstream", &m.upstream.name)],
                ),
            })
            .collect(),
    }
}
