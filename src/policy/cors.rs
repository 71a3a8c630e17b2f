//! CORS at the edge (Fetch standard, "CORS protocol"): preflights (`OPTIONS` with
//! `Access-Control-Request-Method`) are answered here and never reach a backend, and every
//! answer to an allowed cross-origin request carries `Access-Control-Allow-Origin` with that
//! one origin (never `*`), `Vary: Origin`, and the route's `cors` settings. A refused origin
//! gets no CORS headers at all.
//!
//! The headers are added by a pingora downstream module, so gateway-made answers (SSE, polls,
//! refusals) and proxied ones get the same treatment.

use crate::config::Route;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use std::any::Any;

/// The headers an allowed cross-origin answer carries.
pub fn response_headers(route: &Route, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![
        (http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (http::header::VARY, HeaderValue::from_static("Origin")),
    ];
    if route.cors.credentials {
        out.push((
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ));
    }
    if !route.cors.expose_headers.is_empty() {
        let list = route
            .cors
            .expose_headers
            .iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&list) {
            out.push((http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v));
        }
    }
    out
}

/// True for a CORS preflight.
pub fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight from an allowed origin: 204 with the methods the route takes,
/// the requested headers it allows, and `max_age`. None when the requested method is not one
/// the route takes.
pub fn preflight(
    req: &RequestHeader,
    route: &Route,
    methods: &str,
    origin: &HeaderValue,
) -> Option<ResponseHeader> {
    let wanted = req
        .headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()?
        .trim();
    if !methods.split(", ").any(|m| m == wanted) {
        return None;
    }
    let requested: Vec<String> = req
        .headers
        .get_all(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let allowed: Vec<&str> = requested
        .iter()
        .map(String::as_str)
        .filter(|h| route.cors.allow_headers.iter().any(|a| a.as_str() == *h))
        .collect();
    let mut resp = ResponseHeader::build(204, Some(8)).ok()?;
    for (k, v) in response_headers(route, origin) {
        resp.insert_header(k, v).ok()?;
    }
    resp.insert_header(
        http::header::VARY,
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
    )
    .ok()?;
    resp.insert_header(http::header::ACCESS_CONTROL_ALLOW_METHODS, methods)
        .ok()?;
    if !allowed.is_empty() {
        resp.insert_header(
            http::header::ACCESS_CONTROL_ALLOW_HEADERS,
            allowed.join(", "),
        )
        .ok()?;
    }
    resp.insert_header(
        http::header::ACCESS_CONTROL_MAX_AGE,
        route.cors.max_age.as_secs().to_string(),
    )
    .ok()?;
    resp.insert_header(http::header::CONTENT_LENGTH, "0").ok()?;
    Some(resp)
}

/// The per-request module state: the CORS headers the request's answer gets, if any.
#[derive(Default)]
pub struct CorsHeaders {
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl CorsHeaders {
    /// Adds the headers to an answer (`Vary` alongside any the answer has).
    pub fn apply(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        for (k, v) in &self.headers {
            if k == http::header::VARY {
                resp.append_header(k.clone(), v.clone())?;
            } else {
                resp.insert_header(k.clone(), v.clone())?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl HttpModule for CorsHeaders {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        _end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.apply(resp)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Registers [`CorsHeaders`] with pingora's downstream modules.
pub struct CorsModule;

impl HttpModuleBuilder for CorsModule {
    fn init(&self) -> Module {
        Box::new(CorsHeaders::default())
    }
}
