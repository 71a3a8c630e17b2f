//! permessage-deflate (RFC 7692) without per-connection state: the offer is accepted only with
//! `server_no_context_takeover` and `client_no_context_takeover` (section 7.1.1: the server may
//! require both), so every message is compressed and inflated on its own. That is what lets a
//! shared feed compress a message once for all its subscribers, and what keeps an idle
//! compressed connection as small as an uncompressed one: the (de)compressors are per thread,
//! reset between messages, never per connection.
//!
//! Pure: the negotiation, and bytes in, bytes out.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::cell::RefCell;

/// The extension's registered name.
pub const NAME: &str = "permessage-deflate";

/// Messages shorter than this go out uncompressed (RSV1 clear, as section 6 allows): below it
/// the deflate block's own overhead eats the saving.
pub const THRESHOLD: usize = 64;

/// The tail every sync-flushed message ends with, removed before sending and put back before
/// inflating (section 7.2.1, 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The deflate level. On ~1 KiB JSON quotes (zlib-ng here) level 2 leaves 37.8% of the bytes
/// in 31 µs a message, level 6 36.0% in 42 µs, level 1 49.1% in 13 µs: 2 is most of the saving
/// for three quarters of the CPU, and on large messages (Autobahn's 128 KiB ones) it is far
/// cheaper than 6.
const LEVEL: u32 = 2;

/// What was agreed with one client: messages to it are compressed with an LZ77 window of
/// `2^server_bits` bytes (15 unless the client asked for less); both sides reset their context
/// after every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    pub server_bits: u8,
}

impl Agreed {
    /// The `Sec-WebSocket-Extensions` value of the `101`.
    pub fn response(&self) -> String {
        let mut s = format!("{NAME}; server_no_context_takeover; client_no_context_takeover");
        if self.server_bits != 15 {
            s.push_str(&format!("; server_max_window_bits={}", self.server_bits));
        }
        s
    }
}

/// Picks the first `permessage-deflate` offer that can be honoured from the client's
/// `Sec-WebSocket-Extensions` values (each a comma-separated list). An offer is declined when
/// section 5.1 says so: a parameter it does not define, a bad value, a parameter twice; and when
/// it asks for a window zlib cannot compress with (`server_max_window_bits=8`). None: answer
/// without the extension.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Agreed> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            if !parts.next()?.eq_ignore_ascii_case(NAME) {
                return None;
            }
            accept_offer(parts)
        })
}

fn accept_offer<'a>(params: impl Iterator<Item = &'a str>) -> Option<Agreed> {
    let mut seen = [false; 4];
    let mut server_bits = 15;
    for p in params {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(unquote(v.trim())?)),
            None => (p, None),
        };
        let which = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_bits = window_bits(value?)?;
                2
            }
            // Without a value the client only says it could honour one; we ask for none, since
            // each message is inflated on its own with a full window.
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[which], true) {
            return None;
        }
    }
    // zlib has no raw deflate with a 256-byte window.
    (server_bits >= 9).then_some(Agreed { server_bits })
}

/// `"10"` and `10` alike (section 7.1.2.1 allows the quoted form).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"'),
        None => Some(v),
    }
}

/// 8 to 15, in plain digits with no leading zero (section 7.1.2.1).
fn window_bits(v: &str) -> Option<u8> {
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

thread_local! {
    /// One compressor per window size in use on this thread (index: bits - 9), made on first use.
    static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([None, None, None, None, None, None, None]) };
    static INFLATER: RefCell<Decompress> = RefCell::new(Decompress::new_with_window_bits(false, 15));
}

/// `payload` compressed on its own (no context kept), as a message's frame payload carries it:
/// the sync flush's empty block removed. None when compressing would not make it smaller.
pub fn compress(payload: &[u8], agreed: Agreed) -> Option<Vec<u8>> {
    let bits = agreed.server_bits.clamp(9, 15);
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let c = all[usize::from(bits - 9)].get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let taken = c.total_in() as usize;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity());
            }
            c.compress_vec(&payload[taken..], &mut out, FlushCompress::Sync)
                .ok()?;
            // All input taken and the flush finished with room to spare: done.
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
            if out.len() > payload.len() + 64 {
                return None;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        (out.len() < payload.len()).then_some(out)
    })
}

/// Why a compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates to more than the limit (the rest is never inflated).
    TooBig,
    /// Not a valid deflate stream.
    Corrupt,
    /// `room` refused the buffer's growth (the process's memory budget is spent).
    NoRoom,
}

/// Inflates one message, stopping as soon as it passes `limit` bytes: a small frame that would
/// inflate to gigabytes costs at most `limit` (a zip bomb is refused, not expanded).
pub fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, InflateError> {
    inflate_within(data, limit, &mut |_| true)
}

/// [`inflate`], where `room` is asked before the output buffer is allocated and before each time it grows, with
/// the capacity it would have; the caller charges that against its budget, so inflation is
/// accounted while it runs, not only once it is done.
pub fn inflate_within(
    data: &[u8],
    limit: usize,
    room: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, InflateError> {
    INFLATER.with(|cell| {
        let mut d = cell.borrow_mut();
        d.reset(false);
        let first = (data.len() * 4).max(256).min(limit.saturating_add(1));
        if !room(first) {
            return Err(InflateError::NoRoom);
        }
        let mut out = Vec::with_capacity(first);
        for input in [data, &TAIL[..]] {
            let start = d.total_in();
            loop {
                let taken = (d.total_in() - start) as usize;
                if out.len() == out.capacity() {
                    if out.len() > limit {
                        return Err(InflateError::TooBig);
                    }
                    let left = limit.saturating_add(1) - out.len();
                    let more = out.capacity().min(left).max(1);
                    if !room(out.capacity() + more) {
                        return Err(InflateError::NoRoom);
                    }
                    out.reserve_exact(more);
                }
                let before = (d.total_in(), d.total_out());
                let status = d
                    .decompress_vec(&input[taken..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Corrupt)?;
                if out.len() > limit {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block ends the message; nothing after it is inflated.
                    return Ok(fitted(out));
                }
                let done = (d.total_in() - start) as usize == input.len();
                if done && out.len() < out.capacity() {
                    break;
                }
                if (d.total_in(), d.total_out()) == before && out.len() < out.capacity() {
                    return Err(InflateError::Corrupt);
                }
            }
        }
        Ok(fitted(out))
    })
}

/// An inflated message as it is held afterwards: its buffer shrunk when more than half of it is
/// unused (the first guess is four times the input, and growth doubles), so a message waiting
/// for its backend holds about what it charges against the memory budget.
fn fitted(mut out: Vec<u8>) -> Vec<u8> {
    if out.capacity() > 2 * out.len() {
        out.shrink_to_fit();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreed(v: &str) -> Option<Agreed> {
        negotiate([v])
    }

    #[test]
    fn accepts_what_browsers_and_autobahn_offer() {
        let full = Some(Agreed { server_bits: 15 });
        // Chromium, Firefox.
        assert_eq!(agreed("permessage-deflate; client_max_window_bits"), full);
        assert_eq!(agreed("permessage-deflate"), full);
        assert_eq!(
            agreed("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            full
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=10"),
            Some(Agreed { server_bits: 10 })
        );
        assert_eq!(
            agreed("permessage-deflate; server_max_window_bits=\"9\""),
            Some(Agreed { server_bits: 9 })
        );
        assert_eq!(
            Agreed { server_bits: 15 }.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(
            Agreed { server_bits: 10 }.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
    }

    #[test]
    fn declines_offers_section_5_1_refuses_and_takes_the_next() {
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(agreed(bad), None, "{bad}");
        }
        assert_eq!(
            negotiate([
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=12",
            ]),
            Some(Agreed { server_bits: 12 })
        );
        assert_eq!(
            negotiate(["foo", "permessage-deflate"]),
            Some(Agreed { server_bits: 15 })
        );
    }

    #[test]
    fn round_trips_without_context_and_stops_a_zip_bomb_at_the_limit() {
        let json =
            br#"{"id":1,"kind":"quote","symbol":"ACME","bid":101.25,"ask":101.5}"#.repeat(16);
        for bits in 9..=15 {
            let a = Agreed { server_bits: bits };
            let c = compress(&json, a).expect("JSON compresses");
            assert!(c.len() < json.len() / 4, "{} of {}", c.len(), json.len());
            // Each message stands alone: compressing twice gives the same bytes.
            assert_eq!(compress(&json, a).unwrap(), c);
            assert_eq!(inflate(&c, json.len()).unwrap(), json);
            assert_eq!(inflate(&c, json.len() - 1), Err(InflateError::TooBig));
        }
        // Incompressible input is left alone.
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(compress(&noise, Agreed { server_bits: 15 }), None);
        // 64 MiB of zeros from a ~64 KiB message: refused at 1 MiB.
        let zeros = vec![0u8; 64 << 20];
        let bomb = compress(&zeros, Agreed { server_bits: 15 }).unwrap();
        assert!(bomb.len() < 128 << 10);
        assert_eq!(inflate(&bomb, 1 << 20), Err(InflateError::TooBig));
        // Each growth is asked for first, with the capacity it would reach: refused at 64 KiB,
        // the buffer never gets there.
        let mut asked = Vec::new();
        let mut room = |n: usize| {
            asked.push(n);
            n <= 64 << 10
        };
        assert_eq!(
            inflate_within(&bomb, 1 << 20, &mut room),
            Err(InflateError::NoRoom)
        );
        assert!(asked.windows(2).all(|w| w[0] < w[1]), "{asked:?}");
        assert!(*asked.last().unwrap() > 64 << 10, "{asked:?}");
        assert_eq!(
            inflate(b"\xff\xff\xff", 1 << 20),
            Err(InflateError::Corrupt)
        );
        // The RFC's example: "Hello" (section 7.2.3.1).
        assert_eq!(
            inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(),
            b"Hello"
        );
    }

    #[test]
    fn an_inflated_message_holds_at_most_twice_its_length() {
        let agreed = agreed("permessage-deflate").unwrap();
        for len in [1usize, 10, 100, 4_000, 70_000, 1 << 20] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
            let packed = compress(&payload, agreed).unwrap_or_else(|| payload.clone());
            if packed.len() >= payload.len() {
                continue;
            }
            let out = inflate(&packed, 2 << 20).unwrap();
            assert_eq!(out, payload);
            assert!(
                out.capacity() <= 2 * out.len().max(1),
                "{len}: capacity {}",
                out.capacity()
            );
        }
        // A message that shrinks on inflation too (stored blocks): the first guess is dropped.
        let stored = [0x01, 0x05, 0x00, 0xfa, 0xff, b'h', b'e', b'l', b'l', b'o'];
        let out = inflate(&stored, 1 << 20).unwrap();
        assert_eq!(out, b"hello");
        assert!(out.capacity() <= 10, "capacity {}", out.capacity());
    }
}
