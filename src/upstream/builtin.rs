//! Demo backends that run inside the gateway, so the default config serves something real with
//! nothing else running: `clock` (one message a second with the current UTC time, shared by all
//! clients) and `echo` (answers each client message with the same message).

use crate::bridge::Hub;
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

/// `unix` (seconds since the epoch) as `2026-11-22T10:04:05Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil-from-days (H. Hinnant's algorithm), valid for the whole u64 range we meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_341_845), "2026-11-22T10:04:05Z");
    }
}
