//! `proxy:`: a pass-through route's upstreams, balancing, health check and connect timeout.

use super::Validator;
use crate::config::model::{Balance, HealthCheck, ProxyRoute, Upstream};
use crate::config::raw::RawProxy;
use std::net::ToSocketAddrs;
use std::time::Duration;

impl Validator<'_> {
    pub(super) fn proxy(&mut self, at: &str, p: &RawProxy) -> Option<ProxyRoute> {
        if p.upstreams.is_empty() {
            self.err(
                format!("{at}.upstreams"),
                "no upstreams: list at least one \"host:port\"",
            );
        }
        let mut upstreams = Vec::new();
        for (i, u) in p.upstreams.iter().enumerate() {
            match u.to_socket_addrs().ok().and_then(|mut a| a.next()) {
                Some(addr) => upstreams.push(Upstream {
                    name: u.clone(),
                    addr,
                }),
                None => self.err(
                    format!("{at}.upstreams[{i}]"),
                    format!("invalid upstream {u:?}: expected host:port that resolves, e.g. \"127.0.0.1:3000\""),
                ),
            }
        }
        let balance = match p.balance.as_deref().unwrap_or("round_robin") {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "hash_client_ip" => Balance::HashClientIp,
            other => {
                self.err(
                    format!("{at}.balance"),
                    format!(
                        "unknown balance {other:?}: use round_robin, least_conn or hash_client_ip"
                    ),
                );
                Balance::RoundRobin
            }
        };
        let health_check = p.health_check.as_ref().map(|h| {
            let interval = self.duration(
                format!("{at}.health_check.interval"),
                &Some(h.interval.clone()),
                Duration::from_secs(5),
            );
            if interval < Duration::from_millis(100) {
                self.err(
                    format!("{at}.health_check.interval"),
                    "health_check.interval must be at least 100ms",
                );
            }
            if let Some(path) = &h.path {
                if !path.starts_with('/') {
                    self.err(
                        format!("{at}.health_check.path"),
                        format!("health check path {path:?} must start with '/'"),
                    );
                }
            }
            let timeout = self.duration(
                format!("{at}.health_check.timeout"),
                &h.timeout,
                Duration::from_secs(1).min(interval),
            );
            HealthCheck {
                interval,
                path: h.path.clone(),
                timeout,
            }
        });
        let connect_timeout = self.duration(
            format!("{at}.connect_timeout"),
            &p.connect_timeout,
            Duration::from_secs(3),
        );
        let read_timeout = self.duration(
            format!("{at}.read_timeout"),
            &p.read_timeout,
            Duration::from_secs(60),
        );
        if read_timeout.is_zero() || read_timeout > Duration::from_secs(24 * 3600) {
            self.err(
                format!("{at}.read_timeout"),
                "read_timeout must be above 0s and at most 24h",
            );
        }
        let tls = p
            .tls
            .as_ref()
            .map(|t| self.backend_tls(&format!("{at}.tls"), Some(t)));
        if let (Some(t), Some(HealthCheck { path: Some(_), .. })) = (&tls, &health_check) {
            let mut hosts = upstreams.iter().map(Upstream::host);
            let first = hosts.next();
            if t.sni.is_none() && hosts.any(|h| Some(h) != first) {
                self.err(
                    format!("{at}.tls.sni"),
                    "the upstreams have different host names and the HTTPS health check verifies one name for all: set `tls.sni` to the name their certificates share",
                );
            }
        }
        Some(ProxyRoute {
            tls,
            upstreams,
            balance,
            health_check,
            connect_timeout,
            read_timeout,
        })
    }
}
