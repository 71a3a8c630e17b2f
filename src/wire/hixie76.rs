//! The 2010 WebSocket draft (draft-hixie-thewebsocketprotocol-76), which the SockJS protocol
//! still lists for its WebSocket transport: the handshake's challenge and the frame format
//! (`0x00 UTF-8 0xFF` text frames, `0xFF 0x00` to close). Pure: no I/O.
//!
//! Only SockJS's framed WebSocket speaks it here (`base/S/ID/websocket`); no browser has sent
//! it since 2012, but old SockJS deployments and the protocol suite still do.

use bytes::{BufMut, Bytes, BytesMut};
use pingora::http::RequestHeader;

/// True when the request is a Hixie-76 handshake: both challenge keys, no RFC 6455 key.
pub fn is_handshake(req: &RequestHeader) -> bool {
    req.headers.contains_key("sec-websocket-key1")
        && req.headers.contains_key("sec-websocket-key2")
        && !req.headers.contains_key("sec-websocket-key")
}

/// One challenge key's number: its digits read as a number, divided by its spaces. None for a
/// key the draft calls invalid (no spaces, or digits that are not a multiple of the spaces).
fn key_number(key: &str) -> Option<u32> {
    let digits: String = key.chars().filter(char::is_ascii_digit).collect();
    let spaces = key.chars().filter(|c| *c == ' ').count() as u64;
    let n: u64 = digits.parse().ok()?;
    if spaces == 0 || !n.is_multiple_of(spaces) {
        return None;
    }
    u32::try_from(n / spaces).ok()
}

/// The 16 bytes the server answers the 8-byte `key3` with: MD5 of the two keys' numbers (big
/// endian) and `key3`. None when a key is invalid.
pub fn challenge(key1: &str, key2: &str, key3: &[u8; 8]) -> Option<[u8; 16]> {
    use md5::Digest;
    let mut input = [0u8; 16];
    input[..4].copy_from_slice(&key_number(key1)?.to_be_bytes());
    input[4..8].copy_from_slice(&key_number(key2)?.to_be_bytes());
    input[8..].copy_from_slice(key3);
    Some(md5::Md5::digest(input).into())
}

/// A text frame.
pub fn text_frame(text: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(text.len() + 2);
    b.put_u8(0x00);
    b.put_slice(text);
    b.put_u8(0xff);
    b.freeze()
}

/// The closing frame.
pub const CLOSE: &[u8] = &[0xff, 0x00];

/// What the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Close,
}

/// Why the client's stream was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Violation {
    /// A text frame longer than the route's `max_message`.
    TooBig,
    /// A frame type the draft does not define here, or text that is not UTF-8.
    Malformed,
}

/// Splits the client's bytes into frames, holding at most one partial frame of `max` bytes.
pub struct Decoder {
    buf: BytesMut,
    max: usize,
}

impl Decoder {
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is held.
    pub fn next_frame(&mut self) -> Result<Option<Incoming>, Violation> {
        match self.buf.first() {
            None => Ok(None),
            Some(0x00) => match self.buf.iter().position(|b| *b == 0xff) {
                Some(end) => {
                    let frame = self.buf.split_to(end + 1);
                    let text = frame.freeze().slice(1..end);
                    if std::str::from_utf8(&text).is_err() {
                        return Err(Violation::Malformed);
                    }
                    Ok(Some(Incoming::Text(text)))
                }
                None if self.buf.len() > self.max + 1 => Err(Violation::TooBig),
                None => Ok(None),
            },
            Some(0xff) => match self.buf.get(1) {
                Some(0x00) => Ok(Some(Incoming::Close)),
                Some(_) => Err(Violation::Malformed),
                None => Ok(None),
            },
            Some(_) => Err(Violation::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drafts_example_challenge() {
        // draft-hixie-thewebsocketprotocol-76, section 1.3.
        let answer = challenge("4 @1  46546xW%0l 1 5", "12998 5 Y3 1  .P00", b"^n:ds[4U").unwrap();
        assert_eq!(&answer, b"8jKS'y:G*Co,Wxa-");
        // The SockJS suite's: the same keys, `aaaaaaaa`.
        let answer = challenge("4 @1  46546xW%0l 1 5", "12998 5 Y3 1  .P00", b"aaaaaaaa").unwrap();
        assert_eq!(&answer, b"\xca4\x00\xd8\xa5\x08G\x97,\xd5qZ\xba\xbfC{");
        assert_eq!(challenge("123", "12998 5 Y3 1  .P00", b"aaaaaaaa"), None);
    }

    #[test]
    fn frames_both_ways() {
        assert_eq!(&text_frame(b"o")[..], b"\x00o\xff");
        let mut d = Decoder::new(8);
        d.push(b"\x00[\"a\"]\xff\x00[\"b");
        assert_eq!(
            d.next_frame(),
            Ok(Some(Incoming::Text(Bytes::from_static(b"[\"a\"]"))))
        );
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b"\"]\xff\xff");
        assert_eq!(
            d.next_frame(),
            Ok(Some(Incoming::Text(Bytes::from_static(b"[\"b\"]"))))
        );
        assert_eq!(d.next_frame(), Ok(None));
        d.push(b"\x00");
        assert_eq!(d.next_frame(), Ok(Some(Incoming::Close)));
        let mut big = Decoder::new(4);
        big.push(b"\x00123456");
        assert_eq!(big.next_frame(), Err(Violation::TooBig));
        let mut odd = Decoder::new(4);
        odd.push(b"\x80\x01");
        assert_eq!(odd.next_frame(), Err(Violation::Malformed));
    }
}
