//! Frame boundaries in a relayed WebSocket byte stream. A pass-through tunnel forwards bytes as
//! they come; this scanner reads only the frame headers on the way (payloads are skipped, never
//! buffered or unmasked), so the tunnel can count messages, cap a message's size, and find the
//! next point between two frames where a close frame of the gateway's own may be put in.
//!
//! It holds at most one partial frame header (14 bytes) and a few counters, whatever the input.

/// What a [`Scanner`] found in one call of [`Scanner::feed`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes of the input that were scanned (all of it, unless the scan stopped at a boundary
    /// or at a frame over the cap).
    pub consumed: usize,
    /// Data messages whose last frame ended in these bytes.
    pub messages: u64,
    /// Close frames that ended in these bytes.
    pub closes: u64,
    /// The scan stopped at a frame whose message would pass the cap. `consumed` is where that
    /// frame's header began; `clean` is false when part of the header was in an earlier call
    /// (so the bytes before `consumed` do not end on a boundary).
    pub oversize: Option<Oversize>,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Oversize {
    pub clean: bool,
}

#[derive(Debug, Default)]
pub struct Scanner {
    max_message: Option<u64>,
    /// The current frame's header bytes, while it is incomplete.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame not yet seen (its header is complete).
    payload_left: u64,
    /// The current frame (header complete) is a data frame that ends its message.
    ends_message: bool,
    is_close: bool,
    /// Data bytes of the message in progress (a fragmented one spans several frames).
    message_len: u64,
    /// The first close frame's status code, once read (1005 when it carried none).
    close_code: Option<u16>,
    /// While the first close frame's code is being read: its bytes so far, and the frame's
    /// mask key (zero when unmasked).
    code_bytes: Option<([u8; 2], u8, [u8; 4])>,
}

impl Scanner {
    /// `max_message`: the largest data message let through, summed over its fragments.
    pub fn new(max_message: Option<u64>) -> Self {
        Self {
            max_message,
            ..Self::default()
        }
    }

    /// The status code of the first close frame seen (RFC 6455 section 7.1.5; 1005 when it
    /// carried none), unmasked from its first two payload bytes (the only ones read).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// True between two frames: a frame of the gateway's own may go out here.
    pub fn at_boundary(&self) -> bool {
        self.head_len == 0 && self.payload_left == 0
    }

    /// Scans `data`. With `stop_at_boundary`, stops at the first boundary reached after at
    /// least one byte (the bytes up to it are `consumed`); a scan that starts at a boundary
    /// and is asked to stop there consumes nothing.
    pub fn feed(&mut self, data: &[u8], stop_at_boundary: bool) -> Scanned {
        let mut out = Scanned::default();
        let mut at = 0;
        // Where the current header began in `data`; None when it began in an earlier call.
        let mut header_start = None;
        if stop_at_boundary && self.at_boundary() {
            return out;
        }
        while at < data.len() {
            if self.payload_left > 0 {
                let take = (self.payload_left.min((data.len() - at) as u64)) as usize;
                if let Some((mut code, mut got, key)) = self.code_bytes.take() {
                    for &b in &data[at..at + take.min(2 - got as usize)] {
                        code[got as usize] = b ^ key[got as usize];
                        got += 1;
                    }
                    if got == 2 {
                        self.close_code = Some(u16::from_be_bytes(code));
                    } else {
                        self.code_bytes = Some((code, got, key));
                    }
                }
                at += take;
                self.payload_left -= take as u64;
                if self.payload_left == 0 {
                    self.frame_end(&mut out);
                    if stop_at_boundary {
                        break;
                    }
                }
                continue;
            }
            // In a header.
            if self.head_len == 0 {
                header_start = Some(at);
            }
            let need = self.header_len_needed();
            let take = (need - self.head_len as usize).min(data.len() - at);
            let from = self.head_len as usize;
            self.head[from..from + take].copy_from_slice(&data[at..at + take]);
            self.head_len += take as u8;
            at += take;
            if (self.head_len as usize) < self.header_len_needed() {
                // Either the header needs more bytes than we have, or the second byte just
                // told us the header is longer: go round (the loop ends when data runs out).
                continue;
            }
            let (fin, opcode, len) = self.parse_head();
            if opcode == 0x8 && self.close_code.is_none() && self.code_bytes.is_none() {
                if len < 2 {
                    self.close_code = Some(1005);
                } else {
                    let ext = match self.head[1] & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let mut key = [0u8; 4];
                    if self.head[1] & 0x80 != 0 {
                        key.copy_from_slice(&self.head[2 + ext..6 + ext]);
                    }
                    self.code_bytes = Some(([0; 2], 0, key));
                }
            }
            self.head_len = 0;
            let control = opcode & 0x8 != 0;
            if !control {
                if opcode != 0 {
                    self.message_len = 0;
                }
                self.message_len = self.message_len.saturating_add(len);
                if self.max_message.is_some_and(|max| self.message_len > max) {
                    out.consumed = header_start.unwrap_or(0);
                    out.oversize = Some(Oversize {
                        clean: header_start.is_some(),
                    });
                    return out;
                }
            }
            self.ends_message = !control && fin;
            self.is_close = opcode == 0x8;
            self.payload_left = len;
            if len == 0 {
                self.frame_end(&mut out);
                if stop_at_boundary {
                    break;
                }
            }
        }
        out.consumed = at;
        out
    }

    /// How long the current header is, as far as its bytes so far tell.
    fn header_len_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let b1 = self.head[1];
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn parse_head(&self) -> (bool, u8, u64) {
        let b0 = self.head[0];
        let b1 = self.head[1];
        let len = match b1 & 0x7f {
            126 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
            127 => u64::from_be_bytes(self.head[2..10].try_into().expect("8 bytes")),
            n => n as u64,
        };
        (b0 & 0x80 != 0, b0 & 0x0f, len)
    }

    fn frame_end(&mut self, out: &mut Scanned) {
        if self.ends_message {
            out.messages += 1;
            self.message_len = 0;
        }
        if self.is_close {
            out.closes += 1;
        }
        self.ends_message = false;
        self.is_close = false;
    }
}

/// A masked close frame, as a client (the gateway toward an upstream) must send it (RFC 6455
/// section 5.3), with a fresh mask from the OS.
pub fn masked_close(code: u16, reason: &str) -> Vec<u8> {
    let mut key = [0u8; 4];
    getrandom::fill(&mut key).expect("the OS has randomness");
    masked_close_with(code, reason, key)
}

fn masked_close_with(code: u16, reason: &str, key: [u8; 4]) -> Vec<u8> {
    let plain = super::ws::encode_close(code, reason);
    // An unmasked close of at most 125 bytes has a 2-byte header.
    let payload = &plain[2..];
    let mut out = Vec::with_capacity(plain.len() + 4);
    out.push(plain[0]);
    out.push(plain[1] | 0x80);
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first close's code is read from its payload, masked or not, cut anywhere.
    #[test]
    fn the_first_close_code_is_read() {
        let masked = masked_close(4001, "bye");
        for cut in 0..masked.len() {
            let mut s = Scanner::new(None);
            s.feed(&masked[..cut], false);
            s.feed(&masked[cut..], false);
            assert_eq!(s.close_code(), Some(4001), "cut at {cut}");
        }
        let mut s = Scanner::new(None);
        s.feed(&crate::wire::ws::encode_close(1000, ""), false);
        s.feed(&crate::wire::ws::encode_close(1001, ""), false);
        assert_eq!(s.close_code(), Some(1000));
        let mut s = Scanner::new(None);
        s.feed(&[0x88, 0x00], false);
        assert_eq!(s.close_code(), Some(1005));
    }
    use crate::wire::ws::tests::masked;
    use crate::wire::ws::{encode_frame, Decoder, Incoming, OP_BINARY, OP_PING, OP_TEXT};

    /// Frames of every header length, a fragmented message with a ping inside it, an empty
    /// frame and a close: fed whole and cut at every byte, the counts are the same.
    #[test]
    fn messages_are_counted_wherever_the_stream_is_cut() {
        let mut stream = Vec::new();
        stream.extend(encode_frame(OP_TEXT, b"hello").iter());
        stream.extend(masked(0x82, &vec![7u8; 300]));
        stream.extend(masked(0x82, &vec![7u8; 70_000]));
        stream.extend(masked(0x01, b"ab"));
        stream.extend(masked(0x89, b"p"));
        stream.extend(masked(0x80, b"cd"));
        stream.extend(encode_frame(OP_BINARY, b""));
        stream.extend(masked(0x88, &1000u16.to_be_bytes()));
        for step in [stream.len(), 1, 7, 1000] {
            let mut s = Scanner::new(None);
            let (mut messages, mut closes) = (0, 0);
            for piece in stream.chunks(step) {
                let r = s.feed(piece, false);
                assert_eq!(r.consumed, piece.len());
                messages += r.messages;
                closes += r.closes;
            }
            assert_eq!((messages, closes), (5, 1), "step {step}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn a_scan_asked_to_stop_stops_at_the_next_frame_end() {
        let mut stream = masked(0x81, b"first");
        let first = stream.len();
        stream.extend(masked(0x81, b"second"));
        let mut s = Scanner::new(None);
        // Mid-frame: runs to the end of the first frame and stops there.
        assert_eq!(s.feed(&stream[..3], false).consumed, 3);
        assert!(!s.at_boundary());
        let r = s.feed(&stream[3..], true);
        assert_eq!(r.consumed, first - 3);
        assert_eq!(r.messages, 1);
        assert!(s.at_boundary());
        // At a boundary already: nothing more is taken.
        assert_eq!(s.feed(&stream[first..], true).consumed, 0);
    }

    #[test]
    fn a_message_over_the_cap_is_stopped_at_its_frame_header() {
        // A small message passes; a fragmented one passes the cap on its second fragment.
        let mut stream = masked(0x81, b"ok");
        let second = stream.len();
        stream.extend(masked(0x02, &[0u8; 60]));
        let third = stream.len();
        stream.extend(masked(0x80, &[0u8; 60]));
        let mut s = Scanner::new(Some(100));
        let r = s.feed(&stream, false);
        assert_eq!(r.messages, 1);
        assert_eq!(r.consumed, third);
        assert_eq!(r.oversize, Some(Oversize { clean: true }));
        assert!(second < third);
        // A header that announces too much is stopped before any payload arrives; cut inside
        // that header, the stop is not on a boundary.
        let big = masked(0x82, &[0u8; 200]);
        let mut s = Scanner::new(Some(100));
        assert_eq!(s.feed(&big[..1], false).oversize, None);
        let r = s.feed(&big[1..], false);
        assert_eq!(r.oversize, Some(Oversize { clean: false }));
        assert_eq!(r.consumed, 0);
    }

    #[test]
    fn a_masked_close_is_one_a_server_decodes() {
        let frame = masked_close_with(1001, "going away", [9, 8, 7, 6]);
        let mut d = Decoder::new(1 << 20);
        d.push(&frame);
        assert_eq!(d.next_message().unwrap(), Some(Incoming::Close(Some(1001))));
        // And a ping stays a control frame to the scanner (no message counted).
        let mut s = Scanner::new(None);
        let r = s.feed(&encode_frame(OP_PING, b"x"), false);
        assert_eq!((r.messages, r.closes), (0, 0));
    }
}
