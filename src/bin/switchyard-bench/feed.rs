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

/// The shape of the feed's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Payload {
    /// `SEQ TS_NS` padded with dots: the cheapest to produce and check.
    Padded,
    /// A JSON object of quotes: what compression meets in practice.
    Json,
}

impl Payload {
    pub fn message(self, seq: u64, size: usize) -> String {
        match self {
            Self::Padded => message(seq, size),
            Self::Json => json_message(seq, size),
        }
    }
}

/// `{"seq":SEQ,"ts":TS_NS,"type":"quotes","quotes":[...]}` of about `size` bytes: quotes whose
/// symbols, prices and volumes vary with `seq`, as a market feed's do (a feed of repeated
/// bytes would flatter compression).
pub fn json_message(seq: u64, size: usize) -> String {
    let mut m = format!(
        "{{\"seq\":{seq},\"ts\":{},\"type\":\"quotes\",\"quotes\":[",
        now_ns()
    );
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut first = true;
    while m.len() + 2 < size {
        // xorshift: cheap, deterministic numbers.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let venue = ["XNAS", "XNYS", "BATS", "ARCX"][(x % 4) as usize];
        let quote = format!(
            "{}{{\"sym\":\"S{:04}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"vol\":{},\"venue\":\"{venue}\"}}",
            if first { "" } else { "," },
            x % 5000,
            10 + (x >> 8) % 990,
            (x >> 20) % 100,
            10 + (x >> 8) % 990,
            (x >> 28) % 100,
            (x >> 36) % 1_000_000,
        );
        first = false;
        m.push_str(&quote);
    }
    m.push_str("]}");
    m
}

/// A message's seq and timestamp, or None if it is not a feed message.
pub fn parse(m: &str) -> Option<(u64, u64)> {
    if let Some(rest) = m.strip_prefix("{\"seq\":") {
        let (seq, rest) = rest.split_once(",\"ts\":")?;
        let ts = rest.split(',').next()?;
        return Some((seq.parse().ok()?, ts.parse().ok()?));
    }
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
        let j = json_message(9, 1024);
        assert!((900..1200).contains(&j.len()), "{}", j.len());
        assert!(serde_json::from_str::<serde_json::Value>(&j).is_ok(), "{j}");
        assert_eq!(parse(&j).map(|(seq, _)| seq), Some(9));
    }
}
