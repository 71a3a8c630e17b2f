//! Demo backends that run inside the gateway, so the default config serves something real with
//! nothing else running: `clock` (one message a second with the current UTC time, shared by all
//! clients) and `echo` (answers each client message with the same message).

use crate::bridge::Hub;
use crate::wire::time::rfc3339;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long the clock keeps ticking after its last subscriber left.
pub const CLOCK_LINGER: Duration = Duration::from_secs(30);

/// Starts the clock feed for `hub` if it is not running. Ticks land on whole seconds.
pub fn ensure_clock(hub: &Arc<Hub>) {
    if !hub.claim_producer() {
        return;
    }
    let hub = hub.clone();
    tokio::spawn(async move {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let to_next_second =
                Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos() as u64);
            tokio::time::sleep(to_next_second).await;
            if hub.producer_should_stop(CLOCK_LINGER) {
                return;
            }
            hub.publish(Bytes::from(rfc3339_now()), false);
        }
    });
}

/// The current UTC time as `2026-11-22T10:04:05Z`.
pub fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}
