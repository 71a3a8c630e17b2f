//! Active health checks for proxy upstreams, run as one pingora background service. The probe
//! itself is pingora-load-balancing's (`HttpHealthCheck` for a path, `TcpHealthCheck`
//! otherwise); this module owns the schedule and flips members in their [`UpstreamSet`].

use super::pool::UpstreamSet;
use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck as Probe, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

pub struct HealthChecker {
    pub sets: Vec<Arc<UpstreamSet>>,
}

fn probe_for(set: &UpstreamSet) -> Option<Box<dyn Probe + Send + Sync>> {
    let hc = set.spec.health_check.as_ref()?;
    Some(match &hc.path {
        Some(path) => {
            let tls = set.spec.tls.as_ref();
            let mut p = HttpHealthCheck::new("localhost", tls.is_some());
            if let (Some(t), Some(m)) = (tls, set.members.first()) {
                // One template for every member: `tls.sni` or the first member's host name.
                super::tls::peer_options(&mut p.peer_template, t, m.upstream.host());
            }
            let mut req = pingora::http::RequestHeader::build("GET", path.as_bytes(), None)
                .expect("a validated path builds a request");
            let host = set
                .members
                .first()
                .map(|m| m.upstream.name.clone())
                .unwrap_or_default();
            req.insert_header("Host", host).expect("host header");
            req.insert_header("User-Agent", "switchyard-health-check")
                .expect("user agent header");
            p.req = req;
            p.peer_template.options.connection_timeout = Some(hc.timeout);
            p.peer_template.options.read_timeout = Some(hc.timeout);
            p.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::HTTPStatus(resp.status.as_u16()),
                        "health check answered a non-2xx status",
                    )
                }
            }));
            Box::new(p)
        }
        None => {
            let mut p = TcpHealthCheck::new();
            p.peer_template.options.connection_timeout = Some(hc.timeout);
            p
        }
    })
}

/// Checks one upstream set's members every `health_check.interval` until shutdown or until a
/// reload retires the set.
pub async fn run_set(set: Arc<UpstreamSet>, mut shutdown: ShutdownWatch) {
    let Some(probe) = probe_for(&set) else { return };
    let interval = set
        .spec
        .health_check
        .as_ref()
        .map(|h| h.interval)
        .unwrap_or_default();
    let backends: Vec<Backend> = set
        .members
        .iter()
        .map(|m| Backend::new(&m.upstream.addr.to_string()).expect("socket address parses"))
        .collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if set.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let checks = backends.iter().map(|b| probe.check(b));
        let results = futures_util::future::join_all(checks).await;
        // Replaced while probing: the new set's checks own the gauge now.
        if set.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        for (i, result) in results.into_iter().enumerate() {
            let healthy = result.is_ok();
            if set.set_healthy(i, healthy) {
                let name = &set.members[i].upstream.name;
                match result {
                    Ok(()) => log::info!("route {}: upstream {name} is healthy again", set.route),
                    Err(e) => log::warn!("route {}: upstream {name} marked down: {e}", set.route),
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, shutdown: ShutdownWatch) {
        let tasks: Vec<_> = self
            .sets
            .iter()
            .filter(|s| s.spec.health_check.is_some())
            .map(|s| tokio::spawn(run_set(s.clone(), shutdown.clone())))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }
}
