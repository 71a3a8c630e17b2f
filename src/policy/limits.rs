//! How many clients a route serves at once: `limits.max_clients` in all (503 when full) and
//! `limits.max_clients_per_ip` from one address (429), both with `Retry-After`. A [`Slot`] is
//! held for as long as the request (or the stream, tunnel or poll it became) lasts. A session
//! that outlives its requests holds an [`AddressSlot`] of its route's sessions instead
//! (`limits.max_sessions_per_ip`).

use super::reject::Reject;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Seconds a refused client is asked to wait.
const RETRY_AFTER: &str = "5";

/// The address a per-client limit counts by: IPv4 as is, IPv6 by its /64 (one subscriber's
/// network), so rotating addresses inside it does not multiply the allowance.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Default)]
pub struct Occupancy {
    total: AtomicUsize,
    per_ip: Arc<PerAddress>,
}

/// One client's place on a route, given back when dropped.
pub struct Slot {
    occupancy: Arc<Occupancy>,
    _ip: Option<AddressSlot>,
}

impl Occupancy {
    /// Takes a place for a client from `ip`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Reject> {
        let taken = self
            .total
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max_total).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Reject::new(
                503,
                "max_clients",
                format!("this route serves at most {max_total} clients at once (max_clients); try again later"),
            )
            .header("retry-after", RETRY_AFTER));
        }
        let ip = match ip.filter(|_| max_per_ip > 0) {
            None => None,
            Some(ip) => match self.per_ip.take(ip, max_per_ip) {
                Some(place) => Some(place),
                None => {
                    self.total.fetch_sub(1, Ordering::SeqCst);
                    return Err(Reject::new(
                        429,
                        "max_clients_per_ip",
                        format!("at most {max_per_ip} clients per address on this route (max_clients_per_ip); try again later"),
                    )
                    .header("retry-after", RETRY_AFTER));
                }
            },
        };
        Ok(Slot {
            occupancy: self.clone(),
            _ip: ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.occupancy.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many places each client address holds (IPv6 by its /64): connections on a route, or
/// its sessions that outlive requests (`max_sessions_per_ip`).
#[derive(Default)]
pub struct PerAddress {
    map: Mutex<HashMap<IpAddr, usize>>,
}

/// One place of an address, given back when dropped.
pub struct AddressSlot {
    counts: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// Takes a place for `ip` unless it holds `max` already.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let ip = client_key(ip);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_per_address_places_come_back() {
        let o = Arc::new(Occupancy::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = o.admit(Some(a), 3, 2).unwrap();
        let _s2 = o.admit(Some(a), 3, 2).unwrap();
        assert_eq!(o.admit(Some(a), 3, 2).err().unwrap().status, 429);
        let _s3 = o.admit(Some(b), 3, 2).unwrap();
        assert_eq!(o.admit(Some(b), 3, 2).err().unwrap().status, 503);
        drop(s1);
        assert!(o.admit(Some(a), 3, 2).is_ok());
        assert!(o.per_ip.addresses() <= 2, "no entry outlives its clients");
    }
}
