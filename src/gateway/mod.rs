//! The gateway: the layer that knows routes, admission and both entry points.
//!
//! - [`state`]: the routes of one config generation with their runtimes, and [`Live`], the
//!   generation in force.
//! - [`admission`]: one `admit()` for every request, whichever path carries it.
//! - [`hooks`]: pingora's `ProxyHttp` hooks, for the requests pingora parses.
//! - [`tunnel`]: pass-through WebSocket tunnels, on the edge's lean connection.
//! - [`pass`]: plain HTTP/1.1 pass-through, on the edge's lean connection.
//! - [`LeanStreams`] for [`Gateway`]: the requests the edge serves over its own connection
//!   (bridged streams, pass-through tunnels and plain pass-through HTTP/1.1).

pub mod admission;
pub mod hooks;
pub mod pass;
pub mod state;
pub mod tunnel;

pub use state::{GatewayState, Live, RouteRuntime, Target};

use crate::access_log::{self, Head, Record};
use crate::bridge::Source;
use crate::edge::{http1, LeanStreams};
use crate::policy::reject::Reject;
use crate::transport::{self, Downstream, Respond};
use crate::wire;
use admission::{admit, Admission, Admitted, Client};
use bytes::BytesMut;
use pingora::http::RequestHeader;
use std::sync::Arc;

pub struct Gateway {
    pub state: Arc<Live>,
}

impl LeanStreams for Gateway {
    type Route = Arc<RouteRuntime>;

    /// A bridged route (not the demo page) and a request for one of its streaming transports,
    /// a WebSocket handshake on a pass-through route, or any other request the edge's reader
    /// judged on a pass-through route to plain (not TLS) upstreams; everything else goes
    /// through pingora.
    fn stream_route(&self, req: &RequestHeader, shape: http1::Shape) -> Option<Self::Route> {
        let state = self.state.load();
        let rt = state
            .router
            .find(wire::http::request_host(req), req.uri.path())?;
        match &rt.target {
            Target::Bridge(b)
                if shape.stream
                    && !matches!(b.source, Source::DemoPage)
                    && (transport::requested(req).is_some()
                        || transport::sockjs::requested(b, req)
                        || transport::engineio::requested(b, req)) =>
            {
                Some(rt.clone())
            }
            Target::Proxy(_) if shape.stream && wire::ws::is_upgrade(req) => Some(rt.clone()),
            Target::Proxy(set) if set.spec.tls.is_none() && !wire::ws::is_upgrade(req) => {
                Some(rt.clone())
            }
            _ => None,
        }
    }

    /// A pass-through route to plain upstreams, while the access log is off (its lines are
    /// taken from a request value).
    fn plain_route(&self, host: &str, path: &str) -> Option<Self::Route> {
        if access_log::enabled() {
            return None;
        }
        let state = self.state.load();
        let rt = state.router.find(Some(host), path)?;
        match &rt.target {
            Target::Proxy(set) if set.spec.tls.is_none() => Some(rt.clone()),
            _ => None,
        }
    }

    /// Admits a plain head as [`admit`] would (nothing it checks beyond the head's size and
    /// the route's limits can apply to one: see `edge::http1::PlainHead`), then passes it
    /// through.
    async fn serve_plain(
        &self,
        conn: &mut http1::Connection,
        rt: Self::Route,
        raw_head: BytesMut,
        size: usize,
    ) {
        let route = rt.route.name.as_str();
        let limits = &rt.route.limits;
        let served = async {
            if let Err(reject) =
                crate::policy::hygiene::head_size_within(size, limits.max_header_bytes)
            {
                return reject.send(conn, route).await;
            }
            let _slot = match rt.occupancy.admit(
                conn.client_ip(),
                limits.max_clients,
                limits.max_clients_per_ip,
            ) {
                Ok(slot) => slot,
                Err(reject) => return reject.send(conn, route).await,
            };
            // Its answer carries `Vary: Origin` (see `pass`), as every admitted answer does.
            let Target::Proxy(set) = &rt.target else {
                unreachable!("plain_route takes pass-through routes only")
            };
            pass::serve(conn, &rt, set, &raw_head).await
        }
        .await;
        if let Err(e) = served {
            log::debug!("route {route}: request ended: {e}");
        }
        rt.count_request(conn.status);
    }

    /// Serves a request [`Self::stream_route`] took, admitted as pingora's requests are.
    async fn serve_stream(
        &self,
        conn: &mut http1::Connection,
        rt: Self::Route,
        raw_head: BytesMut,
    ) {
        let routed = rt.clone();
        let route = routed.route.name.as_str();
        // Taken now: a stream frees its request head.
        let head = if access_log::enabled() {
            Head::capture(
                conn.req_header(),
                conn.client_ip(),
                transport_label(&rt, conn.req_header()),
                None,
            )
        } else {
            None
        };
        let served: pingora::Result<()> = async {
            let client = Client {
                raw_head: Some(&raw_head),
                ip: conn.client_ip(),
                tls: conn.is_tls(),
            };
            let state = self.state.load();
            let admission = admit(&state, conn.req_header_mut(), &client, Some(rt));
            drop(state);
            let admitted = match admission {
                Admission::Refused { route, reject } => {
                    return Box::pin(reject.send(conn, &route)).await
                }
                Admission::Preflight(answer) => {
                    return Box::pin(conn.write_response_header(answer, true)).await
                }
                Admission::Admitted(a) => a,
            };
            let Admitted {
                rt,
                cors,
                slot: _slot,
            } = admitted;
            conn.cors.headers = cors;
            match &rt.target {
                Target::Proxy(set) if !wire::ws::is_upgrade(conn.req_header()) => {
                    pass::serve(conn, &rt, set, &raw_head).await
                }
                target => {
                    // Judged: the head's buffer is not held for a stream's life.
                    drop(raw_head);
                    match target {
                        Target::Bridge(bridge) => transport::serve(conn, bridge).await,
                        Target::Proxy(set) => Box::pin(tunnel::serve(conn, &rt, set)).await,
                    }
                }
            }
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
        routed.requests.count(conn.status);
        if let Some(head) = head {
            access_log::submit(Record {
                duration: head.began.elapsed(),
                head,
                route: route.to_owned(),
                status: conn.status,
                bytes_in: 0,
                bytes_out: conn.answered_bytes,
                notes: std::mem::take(&mut conn.notes),
            });
        }
    }
}

/// The access log's `transport` of a request before it is served: what it asks for on its
/// route (a stream's own end has the last word).
pub(crate) fn transport_label(rt: &RouteRuntime, req: &RequestHeader) -> &'static str {
    match &rt.target {
        Target::Proxy(_) if wire::ws::is_upgrade(req) => "tunnel",
        Target::Proxy(_) => "http",
        Target::Bridge(b) if transport::engineio::requested(b, req) => "engineio",
        Target::Bridge(b) if transport::sockjs::requested(b, req) => "sockjs",
        Target::Bridge(_) => transport::requested(req).map_or("http", |t| t.label()),
    }
}

/// Serves an Engine.IO request another instance of the cluster relayed here (for a session
/// held here) on the route it names, as it is now.
pub async fn serve_relayed(
    state: &Live,
    req: crate::bridge::engineio::Relayed,
) -> crate::bridge::engineio::RelayAnswer {
    let current = state.load();
    let route = current.routes.iter().find(|r| r.route.name == req.route);
    match route.map(|r| &r.target) {
        Some(Target::Bridge(b)) => transport::engineio::serve_relayed(b, req).await,
        _ => crate::bridge::engineio::RelayAnswer {
            status: 400,
            headers: vec![("content-type".into(), "application/json".into())],
            body: crate::wire::engineio::ErrorCode::UnknownSid.body(),
        },
    }
}
