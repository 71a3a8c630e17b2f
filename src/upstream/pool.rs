//! The upstream set of a `proxy:` route: members with health and in-flight counts, and the
//! three selection policies. A request that fails to connect is retried on another member, so
//! a member that died between two health checks costs no request.

use crate::config::{Balance, ProxyRoute, Upstream};
use crate::metrics;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Member {
    pub upstream: Upstream,
    healthy: AtomicBool,
    in_flight: AtomicUsize,
}

impl Member {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests and tunnels using the member now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

pub struct UpstreamSet {
    pub route: String,
    pub spec: ProxyRoute,
    pub members: Vec<Member>,
    next: AtomicUsize,
    /// Set when a reload replaced or removed the route: its health checks stop.
    pub retired: std::sync::atomic::AtomicBool,
}

/// Holds one in-flight count on a member for as long as the request uses it.
pub struct Lease {
    set: Arc<UpstreamSet>,
    pub index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.set.members[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl UpstreamSet {
    pub fn new(route: &str, spec: &ProxyRoute) -> Self {
        let members = spec
            .upstreams
            .iter()
            .map(|u| {
                metrics::UPSTREAM_HEALTHY
                    .with_label_values(&[route, &u.name])
                    .set(1);
                Member {
                    upstream: u.clone(),
                    healthy: AtomicBool::new(true),
                    in_flight: AtomicUsize::new(0),
                }
            })
            .collect();
        Self {
            route: route.to_owned(),
            spec: spec.clone(),
            members,
            next: AtomicUsize::new(0),
            retired: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn set_healthy(&self, index: usize, healthy: bool) -> bool {
        let m = &self.members[index];
        let was = m.healthy.swap(healthy, Ordering::Relaxed);
        // Always written: a set replaced by a reload shares these labels and must not leave
        // its last value behind.
        metrics::UPSTREAM_HEALTHY
            .with_label_values(&[&self.route, &m.upstream.name])
            .set(healthy as i64);
        was != healthy
    }

    /// Picks a healthy member not in `tried`, and leases it. Allocates nothing: it runs once
    /// per proxied request.
    pub fn select(self: &Arc<Self>, client_ip: Option<IpAddr>, tried: &[usize]) -> Option<Lease> {
        let candidate = |i: &usize| self.members[*i].is_healthy() && !tried.contains(i);
        let n = self.members.len();
        let count = (0..n).filter(candidate).count();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let index = match self.spec.balance {
            Balance::RoundRobin => (0..n)
                .filter(candidate)
                .nth(start % count)
                .expect("count candidates"),
            Balance::LeastConn => {
                // Rotate the scan start so ties spread instead of piling on the first member.
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(candidate)
                    .min_by_key(|i| self.members[*i].in_flight.load(Ordering::Relaxed))
                    .expect("count candidates")
            }
            Balance::HashClientIp => {
                // Rendezvous hashing: a client keeps its member while that member is up, and
                // only the clients of a member that goes down move.
                let ip = client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                (0..n)
                    .filter(candidate)
                    .max_by_key(|i| {
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        ip.hash(&mut h);
                        self.members[*i].upstream.name.hash(&mut h);
                        h.finish()
                    })
                    .expect("count candidates")
            }
        };
        self.members[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            set: self.clone(),
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set(balance: Balance, n: usize) -> Arc<UpstreamSet> {
        let spec = ProxyRoute {
            upstreams: (0..n)
                .map(|i| Upstream {
                    name: format!("u{i}"),
                    addr: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                })
                .collect(),
            balance,
            health_check: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(60),
            tls: None,
        };
        Arc::new(UpstreamSet::new("t", &spec))
    }

    #[test]
    fn round_robin_skips_unhealthy_and_tried() {
        let s = set(Balance::RoundRobin, 3);
        let picks: Vec<usize> = (0..6).map(|_| s.select(None, &[]).unwrap().index).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        s.set_healthy(1, false);
        for _ in 0..4 {
            assert_ne!(s.select(None, &[]).unwrap().index, 1);
        }
        assert_eq!(s.select(None, &[0]).unwrap().index, 2);
        assert!(s.select(None, &[0, 2]).is_none());
    }

    #[test]
    fn least_conn_prefers_idle_member() {
        let s = set(Balance::LeastConn, 2);
        let held = s.select(None, &[]).unwrap();
        for _ in 0..3 {
            assert_ne!(s.select(None, &[]).unwrap().index, held.index);
        }
        drop(held);
    }

    #[test]
    fn hash_is_sticky_and_moves_only_on_failure() {
        let s = set(Balance::HashClientIp, 4);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = s.select(Some(ip), &[]).unwrap().index;
        for _ in 0..5 {
            assert_eq!(s.select(Some(ip), &[]).unwrap().index, first);
        }
        s.set_healthy(first, false);
        assert_ne!(s.select(Some(ip), &[]).unwrap().index, first);
    }

    #[test]
    fn an_upstreams_host_is_its_name_without_the_port() {
        let host = |name: &str| {
            Upstream {
                name: name.into(),
                addr: "127.0.0.1:1".parse().unwrap(),
            }
            .host()
            .to_owned()
        };
        assert_eq!(host("api.internal:443"), "api.internal");
        assert_eq!(host("10.0.0.1:8443"), "10.0.0.1");
        assert_eq!(host("[::1]:443"), "::1");
    }
}
