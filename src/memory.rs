//! The process-wide budget for message buffers (`limits.memory` under `server:`). Each
//! connection's own queues are bounded in bytes already; this bounds their sum, so that
//! `max_message x clients` cannot take the machine: bytes a client made the gateway hold (a
//! message being received, messages on their way to a backend, a POST body) are charged here
//! while they are held, and a new charge that does not fit is refused. The refusal is the
//! transport's to render (WebSocket close 1013 "try again later", HTTP 503 with
//! `Retry-After`), and is counted in `switchyard_memory_refusals_total`.
//!
//! What is not charged is bounded per connection by a constant (socket buffers, a tunnel's at
//! most one read per direction, a shared feed's message held once for all its clients).

use crate::metrics;
use std::sync::atomic::{AtomicUsize, Ordering};

static USED: AtomicUsize = AtomicUsize::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_LIMIT);

pub use crate::config::DEFAULT_MEMORY_LIMIT as DEFAULT_LIMIT;

/// Sets the budget (at start and on each reload). Charges held stay valid; new ones see the
/// new limit.
pub fn set_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
    metrics::MEMORY_LIMIT.set(bytes as i64);
}

pub fn used() -> usize {
    USED.load(Ordering::Relaxed)
}

/// Whether `bytes` more would fit now (nothing is charged; a refusal of `what` is counted).
/// For a body that announces its length: refused before it is sent, rather than cut half-way.
pub fn would_fit(bytes: usize, what: &'static str) -> bool {
    let fits = used().saturating_add(bytes) <= LIMIT.load(Ordering::Relaxed);
    if !fits {
        metrics::MEMORY_REFUSALS.with_label_values(&[what]).inc();
    }
    fits
}

/// Bytes held against the budget, given back when dropped.
#[derive(Debug, Default)]
pub struct Charge {
    bytes: usize,
}

impl Charge {
    /// A charge of nothing, to be grown with [`Self::resize`].
    pub fn none() -> Self {
        Self { bytes: 0 }
    }

    /// Charges `bytes`, or None when they do not fit (counted as a refusal of `what`).
    pub fn take(bytes: usize, what: &'static str) -> Option<Self> {
        let mut c = Self::none();
        c.resize(bytes, what).then_some(c)
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Makes this charge `bytes` in all; false (and unchanged) when the growth does not fit.
    pub fn resize(&mut self, bytes: usize, what: &'static str) -> bool {
        if bytes <= self.bytes {
            let less = self.bytes - bytes;
            USED.fetch_sub(less, Ordering::Relaxed);
            metrics::MEMORY_USED.sub(less as i64);
            self.bytes = bytes;
            return true;
        }
        let more = bytes - self.bytes;
        let limit = LIMIT.load(Ordering::Relaxed);
        let grown = USED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            (used + more <= limit).then_some(used + more)
        });
        if grown.is_err() {
            metrics::MEMORY_REFUSALS.with_label_values(&[what]).inc();
            return false;
        }
        metrics::MEMORY_USED.add(more as i64);
        self.bytes = bytes;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            USED.fetch_sub(self.bytes, Ordering::Relaxed);
            metrics::MEMORY_USED.sub(self.bytes as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges up to the limit pass, the next is refused, and what is dropped is given back.
    /// (One test touches the global budget, so tests cannot race on it.)
    #[test]
    fn charges_stop_at_the_limit_and_come_back_when_dropped() {
        let base = used();
        set_limit(base + 1000);
        let a = Charge::take(600, "test").expect("fits");
        assert!(Charge::take(500, "test").is_none(), "over the limit");
        let mut b = Charge::take(400, "test").expect("exactly the limit");
        assert!(!b.resize(401, "test"), "growth past the limit refused");
        assert_eq!(
            b.bytes(),
            400,
            "a refused growth leaves the charge as it was"
        );
        assert!(b.resize(100, "test"));
        drop(a);
        assert_eq!(used(), base + 100);
        drop(b);
        assert_eq!(used(), base);
        set_limit(DEFAULT_LIMIT);
    }
}
