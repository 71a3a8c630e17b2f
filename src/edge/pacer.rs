//! Accept pacing: a reconnect storm waits in the kernel's accept queue instead of landing all at
//! once.

use async_trait::async_trait;
use std::time::Duration;

/// Paces accepts to `rate` per second with bursts of `burst` (a token bucket), so a reconnect
/// storm waits in the kernel's accept queue instead of landing all at once. It runs inside
/// pingora's accept loop, before TLS: sleeping here slows accepting, it drops nothing.
#[derive(Debug)]
pub struct AcceptPacer {
    rate: f64,
    burst: f64,
    bucket: std::sync::Mutex<(f64, tokio::time::Instant)>,
}

impl AcceptPacer {
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            bucket: std::sync::Mutex::new((f64::from(burst.max(1)), tokio::time::Instant::now())),
        }
    }

    /// How long the next accept must wait (zero when a token is there); takes the token.
    fn wait(&self) -> Duration {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
        let tokens = tokens - 1.0;
        *b = (tokens, now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / self.rate)
        }
    }
}

#[async_trait]
impl pingora::listeners::ConnectionFilter for AcceptPacer {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        let wait = self.wait();
        if !wait.is_zero() {
            crate::metrics::ACCEPTS_PACED.inc();
            tokio::time::sleep(wait).await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let p = AcceptPacer::new(100, 3);
        assert!(p.wait().is_zero());
        assert!(p.wait().is_zero());
        assert!(p.wait().is_zero());
        let w = p.wait();
        assert!(
            w > Duration::from_millis(5) && w <= Duration::from_millis(11),
            "{w:?}"
        );
        let w2 = p.wait();
        assert!(w2 > w, "each waiter queues behind the last: {w2:?}");
    }
}
