//! The feed's message format, shared by the publishing side (`backend`) and the checking side
//! (`scenarios`): `SEQ TS_NS`, padded with `.` to the message size. The sequence number lets
//! every subscriber check order, gaps and duplicates; the send time in nanoseconds since the
//! Unix epoch lets it time delivery (generator and server share one clock: loopback only).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in nanoseconds since the Unix epoch: the feed's timestamps.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A message: `SEQ TS_NS` padded with `.` to `size` bytes.
pub fn message(seq: u64, size: usize) -> String {
    let mut m = format!("{seq} {}", now_ns());
    while m.len() < size {
        m.push('.');
    }
    m
}

/// A message's seq and timestamp, or None if it is not a feed message.
pub fn parse(m: &str) -> Option<(u64, u64)> {
    let mut it = m.split([' ', '.']);
    let seq = it.next()?.parse().ok()?;
    let ts = it.next()?.parse().ok()?;
    Some((seq, ts))
}
