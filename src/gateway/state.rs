//! Everything built from one config generation: the router over the routes' runtimes (a
//! bridge, or an upstream set), and [`Live`], the generation in force, swapped whole by a
//! reload. A reload rebuilds from the previous generation so that unchanged routes keep their
//! runtime (see [`GatewayState::rebuild`]).

use crate::bridge::{Backends, Bridge};
use crate::config::{Config, Route, RouteKind};
use crate::metrics;
use crate::policy;
use crate::router::Router;
use crate::upstream::pool::UpstreamSet;
use crate::upstream::Connectors;
use arc_swap::ArcSwap;
use std::sync::Arc;

pub enum Target {
    Proxy(Arc<UpstreamSet>),
    Bridge(Box<Bridge>),
}

/// A route with the runtime state it needs (its upstream set or its bridge).
pub struct RouteRuntime {
    pub route: Arc<Route>,
    pub target: Target,
    /// Clients the route serves now, against `max_clients` and `max_clients_per_ip`.
    pub occupancy: Arc<policy::limits::Occupancy>,
    /// Its answered requests by status class.
    pub requests: super::admission::RequestCounts,
}

impl RouteRuntime {
    /// Counts an answered request of this route by its status class.
    pub fn count_request(&self, status: Option<u16>) {
        self.requests.count(status);
    }

    /// The methods the route takes, as a preflight answer lists them.
    pub fn methods(&self) -> &'static str {
        match &self.target {
            Target::Proxy(_) => "GET, HEAD, POST, PUT, PATCH, DELETE",
            Target::Bridge(b) => b.methods(),
        }
    }
}

impl AsRef<Route> for RouteRuntime {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

/// Everything built from one config generation.
pub struct GatewayState {
    /// 1 for the config loaded at start, one more per applied reload.
    pub generation: i64,
    pub router: Router<RouteRuntime>,
    pub routes: Vec<Arc<RouteRuntime>>,
    pub upstream_sets: Vec<Arc<UpstreamSet>>,
}

/// What a reload changed.
#[derive(Default)]
pub struct Changes {
    pub kept: usize,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Upstream sets that are new in this generation (their health checks must start).
    pub new_sets: Vec<Arc<UpstreamSet>>,
    /// What the previous generation leaves behind, retired by [`Changes::retire_replaced`]
    /// once this generation is in force (never before: a request that found the old route
    /// in the meantime would subscribe to a feed that is already gone, and wait on it).
    retiring: Vec<Arc<RouteRuntime>>,
}

impl Changes {
    /// Retires the previous generation's bridges and upstream sets this one replaced or
    /// removed: their streaming clients are told to go (and reconnect to what serves the path
    /// now), their feeds and health checks stop. Call it after the new generation is stored.
    pub fn retire_replaced(&mut self) {
        for rt in std::mem::take(&mut self.retiring) {
            match &rt.target {
                Target::Proxy(set) => set
                    .retired
                    .store(true, std::sync::atomic::Ordering::Relaxed),
                Target::Bridge(b) => b.retire(),
            }
        }
    }
}

impl GatewayState {
    pub fn new(config: &Config) -> Self {
        Self::rebuild(config, None).0
    }

    /// Builds the state for `config`. A route whose name and settings are unchanged from
    /// `previous` keeps its runtime (hub, sessions, upstream health, client counts), so its
    /// connections carry on untouched; a changed route gets a fresh runtime for new clients
    /// while its old clients finish on the old one; a removed route is retired (its streaming
    /// clients are told to go, its health checks stop).
    pub fn rebuild(config: &Config, previous: Option<&GatewayState>) -> (Self, Changes) {
        let mut changes = Changes::default();
        let backends: Arc<dyn Backends> = Arc::new(Connectors);
        let mut upstream_sets = Vec::new();
        let old =
            |name: &str| previous.and_then(|p| p.routes.iter().find(|rt| rt.route.name == name));
        let routes: Vec<Arc<RouteRuntime>> = config
            .routes
            .iter()
            .map(|r| {
                let before = old(&r.name);
                if let Some(rt) = before.filter(|rt| *rt.route == *r) {
                    changes.kept += 1;
                    if let Target::Proxy(set) = &rt.target {
                        upstream_sets.push(set.clone());
                    }
                    return rt.clone();
                }
                match before {
                    Some(_) => changes.changed.push(r.name.clone()),
                    None if previous.is_some() => changes.added.push(r.name.clone()),
                    None => {}
                }
                let route = Arc::new(r.clone());
                let target = match &r.kind {
                    RouteKind::Proxy(p) => {
                        let set = Arc::new(UpstreamSet::new(&r.name, p));
                        upstream_sets.push(set.clone());
                        changes.new_sets.push(set.clone());
                        Target::Proxy(set)
                    }
                    RouteKind::Bridge(b) => {
                        let carried = match before.map(|rt| &rt.target) {
                            Some(Target::Bridge(prev)) => {
                                Bridge::carried(route.clone(), b, prev, backends.clone())
                            }
                            _ => None,
                        };
                        let bridge = carried
                            .unwrap_or_else(|| Bridge::new(route.clone(), b, backends.clone()));
                        Target::Bridge(Box::new(bridge))
                    }
                };
                Arc::new(RouteRuntime {
                    requests: super::admission::RequestCounts::new(&route.name),
                    route,
                    target,
                    // A changed route keeps counting its open clients against its limits.
                    occupancy: before.map_or_else(Arc::default, |rt| rt.occupancy.clone()),
                })
            })
            .collect();
        if let Some(p) = previous {
            for rt in &p.routes {
                let kept = routes.iter().any(|n| Arc::ptr_eq(n, rt));
                if kept {
                    continue;
                }
                let successor = routes.iter().find(|n| n.route.name == rt.route.name);
                match &rt.target {
                    Target::Proxy(set) => {
                        changes.retiring.push(rt.clone());
                        // Gauges of members no live set reports any more are removed.
                        for m in &set.members {
                            let still = routes.iter().any(|n| match &n.target {
                                Target::Proxy(s) => {
                                    s.route == set.route
                                        && s.members
                                            .iter()
                                            .any(|x| x.upstream.name == m.upstream.name)
                                }
                                Target::Bridge(_) => false,
                            });
                            if !still {
                                let _ = metrics::UPSTREAM_HEALTHY
                                    .remove_label_values(&[&set.route, &m.upstream.name]);
                            }
                        }
                    }
                    Target::Bridge(b) => {
                        // Its feed lives on in the successor unless that has a feed of its own.
                        let carried = match successor.map(|n| &n.target) {
                            Some(Target::Bridge(nb)) => b.shares_feed_with(nb),
                            _ => false,
                        };
                        if !carried {
                            changes.retiring.push(rt.clone());
                        }
                    }
                }
                if successor.is_none() {
                    changes.removed.push(rt.route.name.clone());
                }
            }
        }
        // Every series this config decides exists from now on, at 0 until traffic; those of
        // removed routes go.
        metrics::declare(config);
        let state = Self {
            generation: previous.map_or(1, |p| p.generation + 1),
            router: Router::new(&routes),
            routes,
            upstream_sets,
        };
        (state, changes)
    }
}

/// The state in force, swapped whole by a reload. Each request takes the generation current
/// when it arrives and keeps it to the end. Read without a lock: a request costs one atomic
/// load and a reference count, however many threads serve.
pub struct Live {
    current: ArcSwap<GatewayState>,
}

impl Live {
    pub fn new(state: GatewayState) -> Self {
        Self {
            current: ArcSwap::from_pointee(state),
        }
    }

    pub fn load(&self) -> Arc<GatewayState> {
        self.current.load_full()
    }

    pub fn store(&self, state: GatewayState) {
        self.current.store(Arc::new(state));
    }
}
