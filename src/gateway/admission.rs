//! Admission: the one place that decides whether a request goes on, for both entry points (the
//! edge's lean connection and pingora's `request_filter`). Each entry point calls [`admit`] and
//! only renders what it decided.
//!
//! ```text
//! head shape (hygiene: smuggling, h2c)  -> 400
//! HTTP/1.1 without Host                 -> 400
//! route (router)                        -> 404 no_route
//! head size                             -> 431
//! WebSocket handshake (pass-through)    -> 405 / 400 / 426
//! origin (bridged: all; proxy: upgrades)-> 403
//! CORS preflight                        -> 204 answered here | 403
//! limits (max_clients, per address)     -> 503 / 429, a Slot held while the request lives
//! ```

use super::state::{GatewayState, RouteRuntime, Target};
use crate::policy::reject::Reject;
use crate::policy::{self, limits::Slot, origin::Origin};
use crate::wire;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;

/// The headers (CORS, `Vary`) an admitted request's answer carries.
pub type CorsFields = Vec<(HeaderName, HeaderValue)>;

/// What [`admit`] decided.
pub enum Admission {
    /// Refused: answer `reject`, counted under `route` (`-` when no route was found).
    Refused { route: String, reject: Reject },
    /// A CORS preflight from an allowed origin, answered here; it never reaches a backend.
    Preflight(Box<ResponseHeader>),
    /// Admitted: serve it.
    Admitted(Admitted),
}

pub struct Admitted {
    pub rt: Arc<RouteRuntime>,
    /// The headers its answer carries.
    pub cors: CorsFields,
    /// Its place on the route, held until the request (or its stream or tunnel) ends.
    pub slot: Slot,
}

/// Who is asking, and over what.
pub struct Client<'a> {
    /// The raw request head as sent, when the entry point has it (HTTP/1); framing is judged on
    /// the raw fields, before any parser normalised them.
    pub raw_head: Option<&'a [u8]>,
    pub ip: Option<IpAddr>,
    pub tls: bool,
}

/// Admits or refuses one request. `routed` is its route when the caller looked it up already
/// (the edge does, to decide which path serves it); otherwise it is found here.
pub fn admit(
    state: &GatewayState,
    req: &mut RequestHeader,
    client: &Client,
    routed: Option<Arc<RouteRuntime>>,
) -> Admission {
    let refused = |route: &str, reject: Reject| Admission::Refused {
        route: route.to_owned(),
        reject,
    };
    // Before routing: shapes no route may see.
    let framing = match client.raw_head {
        Some(raw) => policy::hygiene::framing(&policy::hygiene::raw_fields(raw), req.version),
        None => {
            let fields: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
                .collect();
            policy::hygiene::framing(&fields, req.version)
        }
    };
    if let Err(reject) = framing {
        return refused("-", reject);
    }
    if let Err(reject) = policy::hygiene::host_present(req) {
        return refused("-", reject);
    }
    if policy::hygiene::strip_h2c(req) {
        log::debug!("removed an h2c upgrade offer");
    }
    let found = routed.or_else(|| {
        state
            .router
            .find(wire::http::request_host(req), req.uri.path())
            .cloned()
    });
    let Some(rt) = found else {
        let path = req.uri.path();
        return refused(
            "-",
            Reject::new(404, "no_route", format!("no route for {path}")),
        );
    };
    let route = &rt.route;
    if let Err(reject) = policy::hygiene::head_size(req, route.limits.max_header_bytes) {
        return refused(&route.name, reject);
    }
    // A pass-through WebSocket handshake is checked here as a terminated one would be (RFC
    // 6455 section 4.2.1), so a bad one never reaches the backend.
    if let (Target::Proxy(_), true) = (&rt.target, wire::ws::is_upgrade(req)) {
        if let Err(h) = wire::ws::accept_key(req) {
            return refused(&route.name, h.into());
        }
    }
    let enforce = matches!(rt.target, Target::Bridge(_)) || wire::http::asks_upgrade(req);
    // SockJS answers its own preflights (the spec fixes them), and judges the requests that
    // cannot show an origin (JSONP, htmlfile) by the page their Referer names.
    let sockjs = match &rt.target {
        Target::Bridge(b) => crate::transport::sockjs::requested(b, req),
        Target::Proxy(_) => false,
    };
    let preflight = policy::cors::is_preflight(req) && !sockjs;
    // Engine.IO's JSONP polls (`j=`) are `<script>` loads too: judged by their Referer.
    let eio_jsonp = match &rt.target {
        Target::Bridge(b) => {
            crate::transport::engineio::requested(b, req)
                && wire::http::query_param(req, "j").is_some()
        }
        Target::Proxy(_) => false,
    };
    let by_referer = if sockjs {
        policy::origin::admit_any(req, &route.origins)
            .or_else(|| policy::origin::admit_referer(req, &route.origins, client.tls))
    } else if eio_jsonp {
        policy::origin::admit_referer(req, &route.origins, client.tls)
    } else {
        None
    };
    // A script or frame load that shows neither its page (`Referer`) nor whether it is
    // cross-site (`Sec-Fetch-Site`) could come from any page: a plain-HTTP page with
    // `referrerpolicy="no-referrer"`, or Safari before 16.4. Where the route hands the
    // visitor's credentials on, such a load is refused.
    if by_referer.is_none() {
        if let Target::Bridge(b) = &rt.target {
            // (Engine.IO's JSONP is refused whole on such routes, by its transport.)
            let script = sockjs && crate::transport::sockjs::script_load(b, req);
            if script
                && b.spec.forwards_credentials()
                && !req.headers.contains_key(http::header::ORIGIN)
                && !req.headers.contains_key("sec-fetch-site")
            {
                return refused(
                    &route.name,
                    policy::reject::Reject::new(
                        403,
                        "origin_unknown",
                        "a script or frame load with neither Referer nor Sec-Fetch-Site cannot show its page, and this route forwards credentials",
                    ),
                );
            }
        }
    }
    let origin = match by_referer.unwrap_or_else(|| {
        policy::origin::admit(
            req,
            &route.origins,
            route.allow_no_origin,
            client.tls,
            enforce || preflight,
        )
    }) {
        Ok(o) => o,
        Err(reject) => return refused(&route.name, reject),
    };
    let cross = match &origin {
        Origin::Allowed(v) => Some(v.clone()),
        // The gateway's own origin needs no CORS headers, but a preflight still gets answered.
        Origin::Same if preflight => req.headers.get(http::header::ORIGIN).cloned(),
        _ => None,
    };
    if preflight {
        let answer = cross
            .as_ref()
            .and_then(|o| policy::cors::preflight(req, route, rt.methods(), o));
        return match answer {
            Some(resp) => Admission::Preflight(Box::new(resp)),
            None => refused(
                &route.name,
                Reject::new(
                    403,
                    "cors_method_not_allowed",
                    format!(
                        "route {} takes {} from other origins",
                        route.name,
                        rt.methods()
                    ),
                ),
            ),
        };
    }
    // Every answer varies by Origin (CORS headers depend on it), so caches keep them apart.
    let cors = match cross.filter(|_| matches!(origin, Origin::Allowed(_))) {
        Some(o) => policy::cors::response_headers(route, &o),
        None => vary_origin(),
    };
    let limits = &route.limits;
    let slot = match rt
        .occupancy
        .admit(client.ip, limits.max_clients, limits.max_clients_per_ip)
    {
        Ok(slot) => slot,
        Err(reject) => return refused(&route.name, reject),
    };
    Admission::Admitted(Admitted { rt, cors, slot })
}

/// The one field an answer to a request without an allowed origin carries: `Vary: Origin`.
pub static VARY_ORIGIN: [(HeaderName, HeaderValue); 1] =
    [(http::header::VARY, HeaderValue::from_static("Origin"))];

fn vary_origin() -> CorsFields {
    VARY_ORIGIN.to_vec()
}

const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_of(status: Option<u16>) -> usize {
    match status {
        Some(s) => (s / 100).clamp(1, 5) as usize,
        None => 0,
    }
}

/// Counts an answered request in `switchyard_http_requests_total` by status class.
pub fn count_request(route: &str, status: Option<u16>) {
    crate::metrics::HTTP_REQUESTS
        .with_label_values(&[route, CLASSES[class_of(status)]])
        .inc();
}

/// A route's `switchyard_http_requests_total` series, looked up once per route and config
/// generation rather than per request (a label lookup hashes and locks).
pub struct RequestCounts([prometheus::IntCounter; 6]);

impl RequestCounts {
    pub fn new(route: &str) -> Self {
        Self(CLASSES.map(|class| crate::metrics::HTTP_REQUESTS.with_label_values(&[route, class])))
    }

    pub fn count(&self, status: Option<u16>) {
        self.0[class_of(status)].inc();
    }
}
