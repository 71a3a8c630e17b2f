//! What a run measures and how it is told: the latency histogram (hdrhistogram), the verdict every client
//! adds to (received, gaps, duplicates, connected, failed, polls), the per-client order check
//! behind gaps and duplicates, and the report (a table line, and the JSON object that
//! `bench/compare.sh` and `tests/suite/bench.rs` parse).

use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The latencies of a run, in microseconds, recorded by all its clients: an HDR histogram with
/// three significant digits (a quantile is within 0.1% of the true value) and, beside it, the
/// exact largest latency (hdrhistogram's own `max()` is rounded up to its resolution).
pub struct Latencies {
    recorded: Mutex<Recorded>,
}

struct Recorded {
    hist: Histogram<u64>,
    max_us: u64,
}

/// The highest latency the histogram tells apart, one hour; longer ones count as an hour
/// there (the exact maximum still sees them).
const HIGHEST_US: u64 = 3_600_000_000;

impl Latencies {
    pub fn new() -> Self {
        let hist = Histogram::new_with_max(HIGHEST_US, 3).expect("valid histogram bounds");
        Self {
            recorded: Mutex::new(Recorded { hist, max_us: 0 }),
        }
    }

    pub fn record(&self, us: u64) {
        let mut r = self.lock();
        r.hist.saturating_record(us);
        r.max_us = r.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.lock().hist.len()
    }

    /// The latency at quantile `q` (0.5, 0.99), in milliseconds: the highest value the
    /// histogram cannot tell apart from it. 0 when nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let r = self.lock();
        if r.hist.is_empty() {
            return 0.0;
        }
        r.hist.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency recorded, in milliseconds, exact. 0 when nothing was recorded.
    pub fn max_ms(&self) -> f64 {
        self.lock().max_us as f64 / 1000.0
    }

    /// A client that panicked while holding the lock left the counts whole: carry on.
    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
pub struct Verdict {
    pub received: AtomicU64,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub connected: AtomicU64,
    /// Subscribers that never got their stream (connect or handshake failed).
    pub failed: AtomicU64,
    /// Subscribers whose stream ended before the run did (the server closed it, a read
    /// failed, or a message could not be parsed): every one is a failure.
    pub lost: AtomicU64,
    /// Long-poll answers received while measuring.
    pub polls: AtomicU64,
    /// Bytes WebSocket subscribers read while measuring (frames, compressed or not).
    pub wire_bytes: AtomicU64,
}

/// Per-client order check: after the first message, each one must be the next seq.
pub struct Order {
    pub last: Option<u64>,
}

impl Order {
    pub fn see(&mut self, seq: u64, v: &Verdict) {
        if let Some(last) = self.last {
            if seq <= last {
                v.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if seq > last + 1 {
                v.gaps.fetch_add(seq - last - 1, Ordering::Relaxed);
            }
        }
        self.last = Some(seq);
    }
}

pub fn report(result: &serde_json::Value, json: bool) {
    let fields: Vec<String> = result
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("{}", fields.join(" "));
    if json {
        println!("{result}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_counts_each_missing_seq_as_a_gap_and_each_old_one_as_a_duplicate() {
        let v = Verdict::default();
        let mut order = Order { last: None };
        for seq in [5, 6, 6, 4, 9, 10] {
            order.see(seq, &v);
        }
        assert_eq!(v.duplicates.load(Ordering::Relaxed), 2, "6 again, then 4");
        assert_eq!(v.gaps.load(Ordering::Relaxed), 2, "7 and 8");
        assert_eq!(order.last, Some(10));
    }

    #[test]
    fn latencies_are_recorded_in_microseconds_and_reported_in_milliseconds() {
        let l = Latencies::new();
        assert_eq!((l.quantile_ms(0.5), l.max_ms(), l.count()), (0.0, 0.0, 0));
        // Below 2,048 us three significant digits are exact.
        for us in 1..=1000 {
            l.record(us);
        }
        assert_eq!(l.count(), 1000);
        assert_eq!(l.quantile_ms(0.5), 0.5);
        assert_eq!(l.quantile_ms(0.99), 0.99);
        assert_eq!(l.max_ms(), 1.0);
        // Above, a quantile is rounded up within 0.1%; the maximum stays exact, even past
        // the histogram's highest value.
        let l = Latencies::new();
        l.record(123_456);
        let p99 = l.quantile_ms(0.99);
        assert!((123.456..123.456 * 1.001).contains(&p99), "{p99}");
        assert_eq!(l.max_ms(), 123.456);
        l.record(2 * HIGHEST_US);
        assert_eq!(l.max_ms(), 2.0 * HIGHEST_US as f64 / 1000.0);
        assert_eq!(l.count(), 2);
    }
}
