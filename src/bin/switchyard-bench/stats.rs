//! What a run measures and how it is told: the latency histogram, the verdict every client
//! adds to (received, gaps, duplicates, connected, failed, polls), the per-client order check
//! behind gaps and duplicates, and the report (a table line, and the JSON object that
//! `bench/compare.sh` and `tests/bench.rs` parse).

use std::sync::atomic::{AtomicU64, Ordering};

/// A latency histogram with about 5% resolution, in microseconds.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    pub max: AtomicU64,
}

const GROWTH: f64 = 1.05;

impl Histogram {
    pub fn new() -> Self {
        Self {
            buckets: (0..600).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
    pub fn record(&self, us: u64) {
        let i = if us <= 1 {
            0
        } else {
            ((us as f64).ln() / GROWTH.ln()) as usize
        };
        self.buckets[i.min(599)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
    /// The upper bound of the bucket holding quantile `q`, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let target = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return GROWTH.powi(i as i32 + 1) / 1000.0;
            }
        }
        self.max.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

#[derive(Default)]
pub struct Verdict {
    pub received: AtomicU64,
    pub gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    /// Long-poll answers received while measuring.
    pub polls: AtomicU64,
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
