//! Refusals as plain data: the HTTP status, a metric `reason` label and a short body that tells
//! the client what went wrong. Policy decides; whoever owns the socket renders the answer
//! (`transport::Respond`).

use crate::metrics;
use crate::wire::ws::Handshake;
use bytes::Bytes;
use pingora::http::ResponseHeader;

#[derive(Debug, Clone)]
pub struct Reject {
    pub status: u16,
    /// Bounded label value for `switchyard_rejections_total`.
    pub reason: &'static str,
    pub message: String,
    pub headers: Vec<(&'static str, String)>,
}

impl Reject {
    pub fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Counts the refusal (`switchyard_rejections_total` and the status page's last minute) and
    /// logs it (once per route and reason at info level).
    pub fn count(&self, route: &str) {
        metrics::refused(route, self.reason);
        log_refusal(route, self.reason, self.status, &self.message);
    }

    /// The answer to send: a short text body that says what went wrong, and a head that closes
    /// the connection afterwards is the renderer's business.
    pub fn response(&self) -> pingora::Result<(ResponseHeader, Bytes)> {
        let body = Bytes::from(format!("{}\n", self.message));
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        for (k, v) in &self.headers {
            resp.insert_header(*k, v)?;
        }
        Ok((resp, body))
    }
}

impl From<Handshake> for Reject {
    fn from(h: Handshake) -> Self {
        let reject = Reject::new(h.status(), h.label(), h.message());
        match h.header() {
            Some((name, value)) => reject.header(name, value),
            None => reject,
        }
    }
}

/// Logs a refusal without flooding: the first of each (route, reason) at info, the rest at
/// debug. Every one is counted in `switchyard_rejections_total` either way. The set is bounded:
/// routes come from the config and reasons from the code.
pub fn log_refusal(route: &str, reason: &'static str, status: u16, message: &str) {
    static SEEN: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashSet<(String, &'static str)>>,
    > = std::sync::LazyLock::new(Default::default);
    let first = SEEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((route.to_owned(), reason));
    if first {
        log::info!("route {route}: refused {status} {reason}: {message} (further {reason} refusals are logged at debug level and counted in switchyard_rejections_total)");
    } else {
        log::debug!("route {route}: {status} {reason}: {message}");
    }
}
