//! Client messages to an `sse:` backend: each one becomes `POST <post URL>` with the message as
//! the body (`text/plain; charset=utf-8` or `application/octet-stream`) and the client's
//! forwarded headers. One poster runs per client (or session), sends one message at a time in
//! order over a kept-alive HTTP/1.1 connection, and reports each outcome to its sender.
//!
//! A request that was never written (the kept-alive connection had closed) is retried once on a
//! new connection; one that may have reached the backend is not, since a POST is not idempotent.

use crate::bridge::session::{Outgoing, UplinkError, POST_DEADLINE};
use crate::config::Endpoint;
use crate::metrics;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tokio::sync::mpsc;

/// A response body is read (and dropped) up to this size; a larger one ends the connection.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

pub struct Poster {
    pub route: std::sync::Arc<str>,
    pub endpoint: Endpoint,
    pub connect_timeout: Duration,
    /// The configured `headers` and the client's forwarded ones.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl Poster {
    /// Sends every queued message in order until the senders are gone.
    pub async fn run(self, mut rx: mpsc::Receiver<Outgoing>) {
        let mut conn: Option<SendRequest<Full<Bytes>>> = None;
        while let Some(out) = rx.recv().await {
            // Its sender stopped waiting (a POST that timed out): not sent late.
            if out.done.as_ref().is_some_and(|d| d.is_closed()) {
                continue;
            }
            let result = self.post(&mut conn, &out).await;
            let outcome = match &result {
                Ok(()) => "ok",
                Err(UplinkError::Refused(_)) => "refused",
                Err(_) => "failed",
            };
            metrics::BACKEND_POSTS
                .with_label_values(&[&self.route, outcome])
                .inc();
            if let Err(e) = &result {
                log::debug!(
                    "route {}: POST to {} failed: {e:?}",
                    self.route,
                    self.endpoint.url
                );
            }
            if let Some(done) = out.done {
                let _ = done.send(result);
            }
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, UplinkError> {
        let attempt = async {
            let e = &self.endpoint;
            let backend = format!("{}:{}", e.host, e.port);
            let tcp = super::tls::connect(&e.host, e.port, e.tls.as_ref(), &backend).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok::<_, String>(sender)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Err(_) => Err(UplinkError::Unreachable(format!(
                "no answer within connect_timeout {:?}",
                self.connect_timeout
            ))),
            Ok(r) => r.map_err(UplinkError::Unreachable),
        }
    }

    fn request(&self, out: &Outgoing) -> http::Request<Full<Bytes>> {
        let content_type = if out.binary {
            "application/octet-stream"
        } else {
            "text/plain; charset=utf-8"
        };
        let mut req = http::Request::post(self.endpoint.path.as_str())
            .header(http::header::HOST, self.endpoint.authority.as_str())
            .header(http::header::CONTENT_TYPE, content_type);
        for (name, value) in &self.headers {
            req = req.header(name, value);
        }
        req.body(Full::new(out.payload.clone()))
            .expect("request parts are valid: checked when the config was loaded")
    }

    async fn post(
        &self,
        conn: &mut Option<SendRequest<Full<Bytes>>>,
        out: &Outgoing,
    ) -> Result<(), UplinkError> {
        let mut req = self.request(out);
        let mut fresh = false;
        let response = loop {
            let sender = match conn {
                Some(s) if !s.is_closed() => s,
                _ => {
                    fresh = true;
                    conn.insert(self.connect().await?)
                }
            };
            if sender.ready().await.is_err() {
                *conn = None;
                if fresh {
                    return Err(UplinkError::Unreachable("connection closed".into()));
                }
                continue;
            }
            let sent = tokio::time::timeout(POST_DEADLINE, sender.try_send_request(req)).await;
            match sent {
                Err(_) => {
                    *conn = None;
                    return Err(UplinkError::Unreachable(format!(
                        "no answer within {POST_DEADLINE:?}"
                    )));
                }
                Ok(Ok(r)) => break r,
                Ok(Err(mut e)) => {
                    *conn = None;
                    // Never written: safe to send again on a new connection, once.
                    match e.take_message() {
                        Some(unsent) if !fresh => req = unsent,
                        _ => return Err(UplinkError::Unreachable(e.into_error().to_string())),
                    }
                }
            }
        };
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BODY);
        if tokio::time::timeout(POST_DEADLINE, body.collect())
            .await
            .map_or(true, |r| r.is_err())
        {
            *conn = None;
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(UplinkError::Refused(status.as_u16()))
        }
    }
}
