//! `auth:` on a bridged route, the way nginx's `auth_request` works: before a client's stream
//! starts, `GET <url>` with the client's listed headers, `X-Forwarded-*`, the original URI
//! (`X-Original-URI`), the route and the channel (`X-Switchyard-Route`,
//! `X-Switchyard-Channel`). A 2xx admits; a 401 or 403 is passed to the client; anything else,
//! an unreachable endpoint and a timeout refuse it (503): it fails closed.
//!
//! An admitting answer may be reused for `cache`, keyed by the route, the channel and the
//! forwarded header values. The cache keeps a keyed 128-bit hash of those (the keys are random
//! per process), never the values themselves, and holds at most [`CACHE_MAX`] entries.
//! Subrequests reuse up to [`IDLE_MAX`] kept-alive connections.

use crate::bridge::{AuthAsk, Authorize, Verdict};
use crate::config::Auth;
use crate::metrics;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Admitting answers remembered at most, per route.
pub const CACHE_MAX: usize = 10_000;
/// Kept-alive connections to the endpoint, per route.
pub const IDLE_MAX: usize = 16;
/// An answer's body is read (and dropped) up to this size; a larger one ends the connection.
const MAX_BODY: usize = 16 * 1024;

pub struct Authorizer {
    route: Arc<str>,
    spec: Auth,
    /// Key hash -> when the admission expires.
    cache: Mutex<HashMap<u128, Instant>>,
    keys: (std::hash::RandomState, std::hash::RandomState),
    idle: Mutex<Vec<SendRequest<Empty<Bytes>>>>,
}

impl Authorizer {
    pub fn new(route: &str, spec: &Auth) -> Self {
        Self {
            route: route.into(),
            spec: spec.clone(),
            cache: Mutex::new(HashMap::new()),
            keys: Default::default(),
            idle: Mutex::new(Vec::new()),
        }
    }

    fn key(&self, channel: Option<&str>, forwarded: &[(HeaderName, HeaderValue)]) -> u128 {
        let one = |state: &std::hash::RandomState| {
            let mut h = state.build_hasher();
            self.route.hash(&mut h);
            channel.hash(&mut h);
            for (n, v) in forwarded {
                n.as_str().hash(&mut h);
                v.as_bytes().hash(&mut h);
            }
            h.finish()
        };
        (u128::from(one(&self.keys.0)) << 64) | u128::from(one(&self.keys.1))
    }

    fn cached(&self, key: u128) -> bool {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                cache.remove(&key);
                false
            }
            None => false,
        }
    }

    fn remember(&self, key: u128) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            let now = Instant::now();
            cache.retain(|_, until| *until > now);
        }
        // Still full of live answers: this one is asked again next time.
        if cache.len() < CACHE_MAX {
            cache.insert(key, Instant::now() + self.spec.cache);
        }
    }

    async fn connection(&self) -> Result<SendRequest<Empty<Bytes>>, String> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => {}
                None => break,
            }
        }
        let e = &self.spec.endpoint;
        let backend = format!("{}:{}", e.host, e.port);
        let io = super::tls::connect(&e.host, e.port, e.tls.as_ref(), &backend).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    /// One subrequest: the status and the `WWW-Authenticate` it answered with.
    async fn ask(
        &self,
        forwarded: Vec<(HeaderName, HeaderValue)>,
        ask: &AuthAsk<'_>,
    ) -> Result<(u16, Option<String>), String> {
        let e = &self.spec.endpoint;
        let mut req = http::Request::get(e.path.as_str())
            .header(http::header::HOST, e.authority.as_str())
            .header("x-original-uri", ask.req.uri.to_string())
            .header("x-switchyard-route", &*self.route);
        if let Some(c) = ask.channel {
            req = req.header("x-switchyard-channel", c);
        }
        for (n, v) in forwarded {
            req = req.header(n, v);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let mut sender = self.connection().await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
        if body.collect().await.is_ok() && !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < IDLE_MAX {
                idle.push(sender);
            }
        }
        Ok((status, challenge))
    }
}

#[async_trait::async_trait]
impl Authorize for Authorizer {
    async fn check(&self, ask: AuthAsk<'_>) -> Verdict {
        let route = &*self.route;
        let forwarded =
            super::per_client::forwarded_headers(&self.spec.forward_headers, ask.req, ask.client);
        let key = (!self.spec.cache.is_zero()).then(|| {
            // The client's own headers only: X-Forwarded-* are the gateway's.
            let own = &forwarded[..forwarded
                .iter()
                .position(|(n, _)| n.as_str().starts_with("x-forwarded-"))
                .unwrap_or(forwarded.len())];
            self.key(ask.channel, own)
        });
        if key.is_some_and(|k| self.cached(k)) {
            metrics::AUTH_CACHE_HITS.with_label_values(&[route]).inc();
            return Verdict::Allowed;
        }
        let started = Instant::now();
        let answer = tokio::time::timeout(self.spec.timeout, self.ask(forwarded, &ask)).await;
        metrics::AUTH_SECONDS
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        let verdict = match answer {
            Err(_) => Verdict::Failed(format!(
                "the authorization endpoint did not answer within {:?}",
                self.spec.timeout
            )),
            Ok(Err(e)) => Verdict::Failed(format!("the authorization endpoint failed: {e}")),
            Ok(Ok((status, _))) if (200..300).contains(&status) => {
                if let Some(k) = key {
                    self.remember(k);
                }
                Verdict::Allowed
            }
            Ok(Ok((status @ (401 | 403), challenge))) => Verdict::Denied { status, challenge },
            Ok(Ok((status, _))) => {
                Verdict::Failed(format!("the authorization endpoint answered {status}"))
            }
        };
        let outcome = match &verdict {
            Verdict::Allowed => "allowed",
            Verdict::Denied { .. } => "denied",
            Verdict::Failed(why) => {
                log::warn!("route {route}: auth: {why}; the client is refused (503)");
                "error"
            }
        };
        metrics::AUTH_REQUESTS
            .with_label_values(&[route, outcome])
            .inc();
        verdict
    }
}
