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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_carries_its_seq_and_send_time_at_any_size() {
        let before = now_ns();
        let m = message(7, 100);
        assert_eq!(m.len(), 100);
        let (seq, ts) = parse(&m).unwrap();
        assert_eq!(seq, 7);
        assert!((before..=now_ns()).contains(&ts));
        // A size below the header's length pads nothing.
        assert_eq!(parse(&message(8, 0)).map(|(seq, _)| seq), Some(8));
        assert_eq!(parse("hello"), None);
    }
}
