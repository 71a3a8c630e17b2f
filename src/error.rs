//! Refusals at the edge: one type that carries the HTTP status, a metric `reason` label and a
//! short body that tells the client what went wrong.

use crate::metrics;
use crate::transport::Downstream;
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

    /// Counts the rejection and answers it; the connection closes afterwards.
    pub async fn send<D: Downstream>(self, session: &mut D, route: &str) -> pingora::Result<()> {
        metrics::REJECTIONS
            .with_label_values(&[route, self.reason])
            .inc();
        log_refusal(route, self.reason, self.status, &self.message);
        let body = Bytes::from(format!("{}\n", self.message));
        let mut resp = ResponseHeader::build(self.status, Some(4))?;
        resp.insert_header("content-type", "text/plain; charset=utf-8")?;
        resp.insert_header("content-length", body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        for (k, v) in self.headers {
            resp.insert_header(k, v)?;
        }
        session.set_keepalive(None);
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
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
