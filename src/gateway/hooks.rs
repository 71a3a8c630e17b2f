//! pingora's `ProxyHttp` hooks: what pingora asks the gateway for each request it parsed
//! (everything the edge does not serve itself).
//!
//! ```text
//! request_filter:  admission::admit -> refused | preflight | bridged route -> transport::serve
//!                                                          | proxy route   -> pingora's proxy path
//! upstream_peer:   UpstreamSet::select (healthy, not yet tried) -> HttpPeer
//! fail_to_connect: mark the member tried, retry on another one while any is left
//! upstream_request_filter: X-Forwarded-For / -Proto / -Host (Host itself is kept)
//! upstream_response_filter: edge CORS only; a 101 must complete the client's handshake
//! fail_to_proxy:   502 with a body that says which route had no reachable upstream
//! logging:         the request counted by status class and written to the access log; the
//!                  next head gets its deadline
//! ```

use super::admission::{self, admit, Admission, Admitted, Client};
use super::state::{RouteRuntime, Target};
use super::Gateway;
use crate::access_log::{self, Head, Notes, Record};
use crate::edge::HeadDeadline;
use crate::metrics;
use crate::policy;
use crate::policy::reject::Reject;
use crate::transport::{self, Downstream, Respond, WithNotes};
use crate::upstream::pool::Lease;
use crate::wire;
use async_trait::async_trait;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;

#[derive(Default)]
pub struct RequestCtx {
    route: Option<Arc<RouteRuntime>>,
    /// This request's place on its route, held until the request (or its tunnel) ends.
    slot: Option<policy::limits::Slot>,
    /// Members of the upstream set this request already failed to connect to.
    tried: Vec<usize>,
    lease: Option<Lease>,
    /// When the request's head was read, while the access log is on.
    since: Option<(std::time::SystemTime, std::time::Instant)>,
    /// The route a refusal named, before `route` is set (for the access log).
    refused_on: Option<String>,
    /// For the access log: a refusal's reason, what a bridged stream carried.
    notes: Notes,
}

impl RequestCtx {
    fn route_name(&self) -> &str {
        self.route.as_ref().map_or("-", |r| r.route.name.as_str())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            since: access_log::enabled()
                .then(|| (std::time::SystemTime::now(), std::time::Instant::now())),
            ..RequestCtx::default()
        }
    }

    fn init_downstream_modules(&self, modules: &mut pingora::modules::http::HttpModules) {
        // pingora's default (response compression, off), plus the CORS headers.
        modules
            .add_module(pingora::modules::http::compression::ResponseCompressionBuilder::enable(0));
        modules.add_module(Box::new(policy::cors::CorsModule));
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let state = self.state.load();
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let client = Client {
            raw_head: raw.as_deref(),
            ip: Downstream::client_ip(session),
            tls: Downstream::is_tls(session),
        };
        let admitted = match admit(&state, session.req_header_mut(), &client, None) {
            Admission::Refused { route, reject } => {
                ctx.notes.refused = Some(reject.reason);
                ctx.refused_on = Some(route.clone());
                reject.send(session, &route).await?;
                return Ok(true);
            }
            Admission::Preflight(answer) => {
                session.write_response_header(answer, true).await?;
                return Ok(true);
            }
            Admission::Admitted(a) => a,
        };
        let Admitted { rt, cors, slot } = admitted;
        ctx.route = Some(rt.clone());
        ctx.slot = Some(slot);
        if let Some(m) = session
            .downstream_modules_ctx
            .get_mut::<policy::cors::CorsHeaders>()
        {
            m.headers = cors;
        }
        match &rt.target {
            Target::Bridge(bridge) => {
                let mut noted = WithNotes::new(session);
                let served = transport::serve(&mut noted, bridge).await;
                ctx.notes = noted.notes;
                served?;
                Ok(true)
            }
            Target::Proxy(_) => {
                if session.is_upgrade_req() {
                    // Tunnels run on the edge's lean connection (super::tunnel), never here:
                    // pingora-proxy 0.9.1 can end a tunnel right after its 101
                    // (cloudflare/pingora#946). A handshake that reaches pingora is one the
                    // lean reader does not take: it carries a body, or asks for another
                    // protocol, or is not HTTP/1.1.
                    let reject = Reject::new(
                        400,
                        "upgrade_refused",
                        "400 Bad Request: only a bodiless HTTP/1.1 WebSocket handshake is tunnelled",
                    );
                    ctx.notes.refused = Some(reject.reason);
                    reject.send(session, &rt.route.name).await?;
                    return Ok(true);
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
        let tls = set.spec.tls.as_ref();
        let mut peer = HttpPeer::new(member.upstream.addr, tls.is_some(), String::new());
        if let Some(t) = tls {
            crate::upstream::tls::peer_options(&mut peer, t, member.upstream.host());
        }
        peer.options.connection_timeout = Some(set.spec.connect_timeout);
        peer.options.read_timeout = Some(set.spec.read_timeout);
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
                if let Some(reason) = tls_failure(&e) {
                    crate::upstream::tls::failed(name, reason);
                    log::warn!(
                        "route {}: TLS toward upstream {name} failed: {e}",
                        rt.route.name
                    );
                }
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
        if let Some(host) = wire::http::request_host(session.req_header()).map(str::to_owned) {
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
        if wire::ws::answer_completes(session.req_header(), upstream_response) {
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
            ctx.notes.refused = Some(r.reason);
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

    /// A client's own failure (a malformed body, a client that went away) is not the
    /// gateway's error: [`Self::fail_to_proxy`] answered and counted it in
    /// `switchyard_rejections_total`, logged once per route and reason, so pingora's ERROR line
    /// per request (one client could write thousands) is left out. Upstream and internal
    /// failures are still logged.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        matches!(error.esource(), ErrorSource::Downstream)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        // The next request on a kept-alive connection gets its own head deadline.
        if !session.was_upgraded() {
            if let Some(stream) = session.stream() {
                if let Some(d) = (**stream).as_any().downcast_ref::<HeadDeadline>() {
                    d.next_request();
                }
            }
        }
        let status = session.response_written().map(|r| r.status.as_u16());
        admission::count_request(ctx.route_name(), status);
        ctx.lease = None;
        if let Some(since) = ctx.since {
            let req = session.req_header();
            let transport = ctx
                .route
                .as_ref()
                .map_or("http", |rt| super::transport_label(rt, req));
            if let Some(head) =
                Head::capture(req, Downstream::client_ip(session), transport, Some(since))
            {
                access_log::submit(Record {
                    head,
                    route: ctx
                        .refused_on
                        .take()
                        .unwrap_or_else(|| ctx.route_name().to_owned()),
                    status,
                    duration: since.1.elapsed(),
                    bytes_in: session.body_bytes_read() as u64,
                    bytes_out: session.body_bytes_sent() as u64,
                    notes: std::mem::take(&mut ctx.notes),
                });
            }
        }
    }
}

/// What a failed upstream connection's error says about TLS: `certificate` when verification
/// refused the upstream's certificate, `handshake` for another TLS failure, None otherwise.
fn tls_failure(e: &Error) -> Option<&'static str> {
    use pingora::ErrorType::{InvalidCert, TLSHandshakeFailure, TLSHandshakeTimedout};
    match e.etype() {
        InvalidCert => Some("certificate"),
        TLSHandshakeFailure | TLSHandshakeTimedout => {
            Some(if e.to_string().contains("certificate") {
                "certificate"
            } else {
                "handshake"
            })
        }
        _ => None,
    }
}
