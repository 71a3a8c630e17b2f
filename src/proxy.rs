//! The pingora `ProxyHttp` hook that ties the pipeline together:
//!
//! ```text
//! request_filter:  router -> 404 | bridged route -> transport::serve (answered here)
//!                                 | proxy route   -> continue to pingora's proxy path
//! upstream_peer:   UpstreamSet::select (healthy, not yet tried) -> HttpPeer
//! fail_to_connect: mark the member tried, retry on another one while any is left
//! upstream_request_filter: X-Forwarded-For / -Proto / -Host (Host itself is kept)
//! fail_to_proxy:   502 with a body that says which route had no reachable upstream
//! ```

use crate::bridge::Bridge;
use crate::config::{Config, Route, RouteKind};
use crate::error::Reject;
use crate::metrics;
use crate::policy;
use crate::router::Router;
use crate::transport::{self, Downstream};
use crate::upstream::pool::{Lease, UpstreamSet};
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
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
}

impl AsRef<Route> for RouteRuntime {
    fn as_ref(&self) -> &Route {
        &self.route
    }
}

/// Everything built from one config generation.
pub struct GatewayState {
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
                            Some(Target::Bridge(prev)) => Bridge::carried(route.clone(), b, prev),
                            _ => None,
                        };
                        let bridge = carried.unwrap_or_else(|| Bridge::new(route.clone(), b));
                        Target::Bridge(Box::new(bridge))
                    }
                };
                Arc::new(RouteRuntime {
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
                        set.retired
                            .store(true, std::sync::atomic::Ordering::Relaxed);
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
                                let _ = crate::metrics::UPSTREAM_HEALTHY
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
                            b.retire();
                        }
                    }
                }
                if successor.is_none() {
                    changes.removed.push(rt.route.name.clone());
                }
            }
        }
        let state = Self {
            router: Router::new(&routes),
            routes,
            upstream_sets,
        };
        (state, changes)
    }
}

/// The state in force, swapped whole by a reload. Each request takes the generation current
/// when it arrives and keeps it to the end.
pub struct Live {
    current: std::sync::RwLock<Arc<GatewayState>>,
}

impl Live {
    pub fn new(state: GatewayState) -> Self {
        Self {
            current: std::sync::RwLock::new(Arc::new(state)),
        }
    }

    pub fn load(&self) -> Arc<GatewayState> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn store(&self, state: GatewayState) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
    }
}

pub struct Gateway {
    pub state: Arc<Live>,
}

#[derive(Default)]
pub struct RequestCtx {
    route: Option<Arc<RouteRuntime>>,
    /// This request's place on its route, held until the request (or its tunnel) ends.
    slot: Option<policy::limits::Slot>,
    /// Members of the upstream set this request already failed to connect to.
    tried: Vec<usize>,
    lease: Option<Lease>,
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.route.name.as_str())
    }
}

pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

/// The methods a route takes, as a preflight answer lists them.
fn route_methods(rt: &RouteRuntime) -> &'static str {
    match &rt.target {
        Target::Proxy(_) => "GET, HEAD, POST, PUT, PATCH, DELETE",
        Target::Bridge(b) => match (b.spec.two_way(), b.sessions().is_some()) {
            (true, true) => "GET, POST, DELETE",
            (true, false) => "GET, POST",
            _ => "GET",
        },
    }
}

/// Applies the edge policy after routing: the origin allowlist (every request of a bridged
/// route, WebSocket upgrades of a pass-through one), CORS preflights answered here, and CORS
/// headers for allowed cross-origin answers. `None` when the request was answered (refused, or a
/// preflight); otherwise the headers (CORS, `Vary`) its answer must carry.
async fn policy_refused<D: Downstream>(
    session: &mut D,
    rt: &RouteRuntime,
    upgrade: bool,
) -> Result<Option<CorsFields>> {
    let route = &rt.route;
    let head = policy::hygiene::head_size(session.req_header(), route.limits.max_header_bytes);
    // A pass-through WebSocket handshake is checked here as a terminated one would be (RFC
    // 6455 section 4.2.1), so a bad one never reaches the backend.
    let bad_handshake = match &rt.target {
        Target::Proxy(_) if transport::ws::is_upgrade(session.req_header()) => {
            transport::ws::accept_key(session.req_header()).err()
        }
        _ => None,
    };
    if let Some(reject) = head.err().or(bad_handshake) {
        reject.send(session, &route.name).await?;
        return Ok(None);
    }
    let enforce = matches!(rt.target, Target::Bridge(_)) || upgrade;
    let preflight = policy::cors::is_preflight(session.req_header());
    let origin = policy::origin::admit(
        session.req_header(),
        &route.origins,
        route.allow_no_origin,
        session.is_tls(),
        enforce || preflight,
    );
    let origin = match origin {
        Ok(o) => o,
        Err(reject) => {
            reject.send(session, &route.name).await?;
            return Ok(None);
        }
    };
    let cross = match &origin {
        policy::origin::Origin::Allowed(v) => Some(v.clone()),
        // The gateway's own origin needs no CORS headers, but a preflight still gets answered.
        policy::origin::Origin::Same if preflight => session
            .req_header()
            .headers
            .get(http::header::ORIGIN)
            .cloned(),
        _ => None,
    };
    if preflight {
        let answer = cross.as_ref().and_then(|o| {
            policy::cors::preflight(session.req_header(), route, route_methods(rt), o)
        });
        match answer {
            Some(resp) => {
                metrics::HTTP_REQUESTS
                    .with_label_values(&[&route.name, "2xx"])
                    .inc();
                session.write_response_header(Box::new(resp), true).await?;
            }
            None => {
                Reject::new(
                    403,
                    "cors_method_not_allowed",
                    format!(
                        "route {} takes {} from other origins",
                        route.name,
                        route_methods(rt)
                    ),
                )
                .send(session, &route.name)
                .await?
            }
        }
        return Ok(None);
    }
    // Every answer varies by Origin (CORS headers depend on it), so caches keep them apart.
    let headers = match cross.filter(|_| matches!(origin, policy::origin::Origin::Allowed(_))) {
        Some(o) => policy::cors::response_headers(route, &o),
        None => vec![(http::header::VARY, http::HeaderValue::from_static("Origin"))],
    };
    Ok(Some(headers))
}

type CorsFields = Vec<(http::HeaderName, http::HeaderValue)>;

/// The route of a request the listener may serve over its own lean connection
/// ([`transport::conn`]): a bridged route (not the demo page) and a request for one of its
/// streaming transports. Everything else goes through pingora.
pub fn stream_route(state: &GatewayState, req: &RequestHeader) -> Option<Arc<RouteRuntime>> {
    let rt = state.router.find(request_host(req), req.uri.path())?;
    match &rt.target {
        Target::Bridge(b)
            if !matches!(b.feed, crate::bridge::Feed::DemoPage)
                && transport::requested(req).is_some() =>
        {
            Some(rt.clone())
        }
        _ => None,
    }
}

/// Serves a request [`stream_route`] took, with the same policy and limits as
/// [`Gateway::request_filter`] applies to the requests pingora parses.
pub async fn serve_stream(conn: &mut transport::conn::Conn, rt: &RouteRuntime) {
    let Target::Bridge(bridge) = &rt.target else {
        return;
    };
    let route = rt.route.name.as_str();
    let served: Result<()> = async {
        match policy_refused(conn, rt, true).await? {
            None => return Ok(()),
            Some(headers) => conn.cors.headers = headers,
        }
        let limits = &rt.route.limits;
        let _slot = match rt.occupancy.admit(
            conn.client_ip(),
            limits.max_clients,
            limits.max_clients_per_ip,
        ) {
            Ok(slot) => slot,
            Err(reject) => return reject.send(conn, route).await,
        };
        transport::serve(conn, bridge).await
    }
    .await;
    if let Err(e) = served {
        log::debug!("route {route}: stream ended: {e}");
        if conn.status.is_none() {
            // Failed before answering (pingora would have sent its 500 here too).
            let _ = Reject::new(500, "internal_error", format!("route {route}: {e}"))
                .send(conn, route)
                .await;
        }
    }
    count_request(route, conn.status);
}

/// Counts an answered request in `switchyard_http_requests_total` by status class.
fn count_request(route: &str, status: Option<u16>) {
    let class = match status {
        Some(s) => match s / 100 {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            _ => "5xx",
        },
        None => "none",
    };
    metrics::HTTP_REQUESTS
        .with_label_values(&[route, class])
        .inc();
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // pingora's default (response compression, off), plus the CORS headers.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(policy::cors::CorsModule));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        // Before routing: shapes no route may see.
        let framing = match session.as_http1() {
            Some(h1) => {
                let head = h1.get_headers_raw_bytes();
                policy::hygiene::framing(
                    &policy::hygiene::raw_fields(&head),
                    session.req_header().version,
                )
            }
            None => {
                let req = session.req_header();
                let fields: Vec<(&[u8], &[u8])> = req
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                    .collect();
                policy::hygiene::framing(&fields, req.version)
            }
        };
        if let Err(reject) = framing {
            reject.send(session, "-").await?;
            return Ok(true);
        }
        if policy::hygiene::strip_h2c(session.req_header_mut()) {
            log::debug!("removed an h2c upgrade offer");
        }
        let req = session.req_header();
        let found = self
            .state
            .load()
            .router
            .find(request_host(req), req.uri.path())
            .cloned();
        let Some(rt) = found else {
            let path = req.uri.path().to_owned();
            Reject::new(404, "no_route", format!("no route for {path}"))
                .send(session, "-")
                .await?;
            return Ok(true);
        };
        ctx.route = Some(rt.clone());
        let upgrade = session.is_upgrade_req();
        match policy_refused(session, &rt, upgrade).await? {
            None => return Ok(true),
            Some(headers) => {
                if let Some(m) = session
                    .downstream_modules_ctx
                    .get_mut::<policy::cors::CorsHeaders>()
                {
                    m.headers = headers;
                }
            }
        }
        let limits = &rt.route.limits;
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        match rt
            .occupancy
            .admit(ip, limits.max_clients, limits.max_clients_per_ip)
        {
            Ok(slot) => ctx.slot = Some(slot),
            Err(reject) => {
                reject.send(session, &rt.route.name).await?;
                return Ok(true);
            }
        }
        match &rt.target {
            Target::Bridge(bridge) => {
                transport::serve(session, bridge).await?;
                Ok(true)
            }
            Target::Proxy(_) => {
                if session.is_upgrade_req() {
                    // A tunnelled WebSocket may stay quiet for long: only idle_timeout ends it.
                    let idle = rt.route.keepalive.idle_timeout;
                    session.set_read_timeout((!idle.is_zero()).then_some(idle));
                }
                Ok(false)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let rt = ctx.route.clone().expect("request_filter sets the route");
        let Target::Proxy(set) = &rt.target else {
            return Error::e_explain(
                ErrorType::InternalError,
                "bridged route reached the proxy path",
            );
        };
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.lease = None;
        let Some(lease) = set.select(client_ip, &ctx.tried) else {
            return Error::e_explain(
                ErrorType::Custom("no_upstream"),
                format!(
                    "no healthy upstream left to try for route {}",
                    rt.route.name
                ),
            );
        };
        let member = &set.members[lease.index];
        let mut peer = HttpPeer::new(member.upstream.addr, false, String::new());
        peer.options.connection_timeout = Some(set.spec.connect_timeout);
        if session.is_upgrade_req() {
            let idle = rt.route.keepalive.idle_timeout;
            peer.options.read_timeout = (!idle.is_zero()).then_some(idle);
        }
        ctx.lease = Some(lease);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(rt), Some(lease)) = (&ctx.route, ctx.lease.take()) {
            if let Target::Proxy(set) = &rt.target {
                let name = &set.members[lease.index].upstream.name;
                metrics::UPSTREAM_CONNECT_FAILURES
                    .with_label_values(&[&rt.route.name, name])
                    .inc();
                ctx.tried.push(lease.index);
                let untried = (0..set.members.len())
                    .any(|i| set.members[i].is_healthy() && !ctx.tried.contains(&i));
                if untried {
                    e.set_retry(true);
                }
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // switchyard is the edge: the client's own X-Forwarded-* claims are not trusted.
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            upstream_request.insert_header("x-forwarded-for", ip.to_string())?;
        }
        let proto = if Downstream::is_tls(session) {
            "https"
        } else {
            "http"
        };
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        if let Some(host) = request_host(session.req_header()).map(str::to_owned) {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    /// Nothing is tunnelled until the backend's real 101 (RFC 6455 section 4.1): `Upgrade:
    /// websocket` and the `Sec-WebSocket-Accept` that matches the client's key; anything else is
    /// a 502 and the connection is never upgraded.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // CORS is the edge's: an upstream's own CORS headers would bypass the route's policy.
        let upstream_cors: Vec<http::HeaderName> = upstream_response
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in upstream_cors {
            upstream_response.remove_header(&name);
        }
        if upstream_response.status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        let req = session.req_header();
        let expected = req
            .headers
            .get("sec-websocket-key")
            .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
        let upgrade_ok = upstream_response
            .headers
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        let accept_ok = match (
            &expected,
            upstream_response.headers.get("sec-websocket-accept"),
        ) {
            (Some(e), Some(got)) => got.as_bytes() == e.as_bytes(),
            _ => false,
        };
        if transport::ws::is_upgrade(req) && upgrade_ok && accept_ok {
            return Ok(());
        }
        Error::e_explain(
            ErrorType::Custom("bad_upgrade_answer"),
            "the upstream's 101 does not complete the client's WebSocket handshake",
        )
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy
    where
        Self::CTX: Send + Sync,
    {
        let route = ctx.route_name().to_owned();
        let reject = match e.etype() {
            ErrorType::HTTPStatus(code) => Some(Reject::new(
                *code,
                "http_error",
                format!("request failed with status {code}"),
            )),
            ErrorType::Custom("bad_upgrade_answer") => Some(Reject::new(
                502,
                "bad_upgrade_answer",
                format!("502 Bad Gateway: the upstream of route {route} answered the WebSocket handshake wrongly"),
            )),
            ErrorType::Custom("no_upstream") => Some(Reject::new(
                502,
                "no_upstream",
                format!("502 Bad Gateway: no upstream of route {route} is reachable"),
            )),
            _ => match e.esource() {
                ErrorSource::Upstream => Some(Reject::new(
                    502,
                    "upstream_error",
                    format!(
                        "502 Bad Gateway: the upstream of route {route} failed: {}",
                        e.etype().as_str()
                    ),
                )),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        None
                    }
                    _ => Some(Reject::new(400, "bad_request", "400 Bad Request")),
                },
                ErrorSource::Internal | ErrorSource::Unset => Some(Reject::new(
                    500,
                    "internal_error",
                    "500 Internal Server Error",
                )),
            },
        };
        let code = reject.as_ref().map_or(0, |r| r.status);
        if let Some(r) = reject {
            // Only answer if nothing was sent yet; otherwise the connection just closes.
            if session.response_written().is_none() {
                let _ = r.send(session, &route).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        // The next request on a kept-alive connection gets its own head deadline.
        if !session.was_upgraded() {
            if let Some(stream) = session.stream() {
                if let Some(d) = (**stream)
                    .as_any()
                    .downcast_ref::<crate::listener::HeaderDeadline>()
                {
                    d.next_request();
                }
            }
        }
        count_request(
            ctx.route_name(),
            session.response_written().map(|r| r.status.as_u16()),
        );
        ctx.lease = None;
    }
}
