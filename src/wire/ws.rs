//! WebSocket framing (RFC 6455) for the side the gateway terminates: frame encoding, close
//! frames and codes, a decoder that enforces what a server must (masking, reserved bits,
//! control-frame rules, fragmentation order, UTF-8 of text, the message size cap, each mapped to
//! its close code), and the opening handshake's checks. Pure: no I/O, no routes.
//!
//! Frame headers are parsed and written with tungstenite's `FrameHeader`.

use super::deflate;
use super::http::header_has_token;
use bytes::{Buf, Bytes, BytesMut};
use pingora::http::RequestHeader;
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const UNSUPPORTED: u16 = 1003;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const POLICY: u16 = 1008;
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The backend restarted or went away; the client may reconnect.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The server is overloaded (its memory budget is spent): try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Never sent (RFC 6455 section 7.4.1): stands for a connection that ended without a close
    /// frame, in logs.
    pub const ABNORMAL: u16 = 1006;
}

/// Encodes one unfragmented, unmasked (server-to-client) frame.
pub fn encode_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let header = FrameHeader {
        opcode: OpCode::from(opcode),
        ..FrameHeader::default()
    };
    let mut out = Vec::with_capacity(payload.len() + 10);
    header
        .format(payload.len() as u64, &mut out)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// One message's frame to a client that agreed to `deflate`: compressed (RSV1 set) when that
/// makes it smaller and it is at least [`deflate::THRESHOLD`] bytes, plain otherwise.
pub fn encode_message(opcode: u8, payload: &[u8], deflate: Option<deflate::Agreed>) -> Bytes {
    let compressed = deflate
        .filter(|_| payload.len() >= deflate::THRESHOLD)
        .and_then(|a| deflate::compress(payload, a));
    match compressed {
        Some(c) => {
            let header = FrameHeader {
                opcode: OpCode::from(opcode),
                rsv1: true,
                ..FrameHeader::default()
            };
            let mut out = Vec::with_capacity(c.len() + 10);
            header
                .format(c.len() as u64, &mut out)
                .expect("writing to a Vec cannot fail");
            out.extend_from_slice(&c);
            Bytes::from(out)
        }
        None => encode_frame(opcode, payload),
    }
}

pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    // A control frame carries at most 125 bytes.
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encode_frame(OP_CLOSE, &payload)
}

/// A complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<u16>),
}

/// Why the client's stream was refused, with the close code to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
    /// The offending frame was the client's close: it sends no other, so the server's close
    /// answers it and nothing more is awaited.
    pub in_close: bool,
}

fn violation(code: u16, reason: &'static str) -> Violation {
    Violation {
        code,
        reason,
        in_close: false,
    }
}

pub struct Decoder {
    buf: BytesMut,
    max_message: usize,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    deflate: bool,
    /// A fragmented data message in progress.
    partial: Option<Partial>,
}

struct Partial {
    op: u8,
    compressed: bool,
    data: BytesMut,
}

impl Decoder {
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_message,
            deflate: false,
            partial: None,
        }
    }

    /// A decoder for a client that agreed to permessage-deflate: a message with RSV1 on its
    /// first frame is inflated (on its own, no context kept) and its inflated size is what
    /// `max_message` bounds.
    pub fn with_deflate(max_message: usize) -> Self {
        Self {
            deflate: true,
            ..Self::new(max_message)
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes held: the buffers of what was received and not yet returned as messages (frames
    /// still arriving, the fragments of a message in progress), counted by their capacity, which
    /// is what they take from the allocator.
    pub fn held(&self) -> usize {
        self.buf.capacity() + self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, Violation> {
        self.next_message_within(&mut |_| true)
    }

    /// [`Self::next_message`], where inflating a compressed message asks `room` before its
    /// buffer grows (see [`deflate::inflate_within`]); a refusal is a `1013` violation.
    pub fn next_message_within(
        &mut self,
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Option<Incoming>, Violation> {
        loop {
            let mut cur = Cursor::new(&self.buf[..]);
            let Some((header, len)) = FrameHeader::parse(&mut cur)
                .map_err(|_| violation(close::PROTOCOL_ERROR, "malformed frame header"))?
            else {
                return Ok(None);
            };
            let header_len = cur.position() as usize;
            // RSV1 is permessage-deflate's, and only on a message's first frame (RFC 7692
            // section 6.1); RSV2 and RSV3 belong to no extension here.
            let first_data = matches!(header.opcode, OpCode::Data(d) if d != Data::Continue);
            if header.rsv2 || header.rsv3 || (header.rsv1 && !(self.deflate && first_data)) {
                return Err(violation(
                    close::PROTOCOL_ERROR,
                    "reserved bits set without an extension",
                ));
            }
            let Some(mask) = header.mask else {
                return Err(violation(
                    close::PROTOCOL_ERROR,
                    "client frames must be masked",
                ));
            };
            let len = match header.opcode {
                OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                    return Err(violation(close::PROTOCOL_ERROR, "reserved opcode"));
                }
                OpCode::Control(_) => {
                    if !header.is_final || len > 125 {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "control frames must be final and at most 125 bytes",
                        ));
                    }
                    len as usize
                }
                OpCode::Data(_) => {
                    let held = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                    if held.saturating_add(len) > self.max_message as u64 {
                        return Err(violation(close::TOO_BIG, "message exceeds max_message"));
                    }
                    len as usize
                }
            };
            // Nothing is reserved for an announced length: the buffer grows only as the payload
            // arrives, so a header that claims max_message costs nothing by itself.
            if self.buf.len() < header_len + len {
                return Ok(None);
            }
            self.buf.advance(header_len);
            let mut payload = self.buf.split_to(len);
            unmask(&mut payload, mask);
            match header.opcode {
                OpCode::Control(Control::Close) => {
                    return parse_close(&payload).map(Some).map_err(|v| Violation {
                        in_close: true,
                        ..v
                    })
                }
                OpCode::Control(Control::Ping) => {
                    return Ok(Some(Incoming::Ping(payload.freeze())))
                }
                OpCode::Control(Control::Pong) => {
                    return Ok(Some(Incoming::Pong(payload.freeze())))
                }
                OpCode::Data(Data::Continue) => {
                    let Some(held) = self.partial.as_mut() else {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "continuation without a message",
                        ));
                    };
                    held.data.extend_from_slice(&payload);
                    if header.is_final {
                        let p = self.partial.take().expect("checked above");
                        return self.finish(p.op, p.compressed, p.data, room).map(Some);
                    }
                }
                OpCode::Data(data) => {
                    if self.partial.is_some() {
                        return Err(violation(
                            close::PROTOCOL_ERROR,
                            "new message inside a fragmented one",
                        ));
                    }
                    let op = if data == Data::Text {
                        OP_TEXT
                    } else {
                        OP_BINARY
                    };
                    if header.is_final {
                        return self.finish(op, header.rsv1, payload, room).map(Some);
                    }
                    self.partial = Some(Partial {
                        op,
                        compressed: header.rsv1,
                        data: payload,
                    });
                }
                OpCode::Control(Control::Reserved(_)) => unreachable!("refused above"),
            }
        }
    }
}

/// XORs the payload with its masking key (RFC 6455 section 5.3), eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut words = data.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ wide;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts at a multiple of 8, so the key lines up again.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

impl Decoder {
    /// A complete message: inflated when it came compressed, then checked.
    fn finish(
        &self,
        op: u8,
        compressed: bool,
        data: BytesMut,
        room: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Incoming, Violation> {
        if !compressed {
            return finish(op, data.freeze());
        }
        match deflate::inflate_within(&data, self.max_message, room) {
            Ok(plain) => finish(op, Bytes::from(plain)),
            Err(deflate::InflateError::TooBig) => Err(violation(
                close::TOO_BIG,
                "message exceeds max_message once inflated",
            )),
            Err(deflate::InflateError::Corrupt) => Err(violation(
                close::INVALID_PAYLOAD,
                "compressed message is not valid deflate data",
            )),
            Err(deflate::InflateError::NoRoom) => Err(violation(
                close::TRY_AGAIN_LATER,
                "the gateway is over its memory budget",
            )),
        }
    }
}

fn finish(op: u8, data: Bytes) -> Result<Incoming, Violation> {
    if op == OP_TEXT {
        if std::str::from_utf8(&data).is_err() {
            return Err(violation(
                close::INVALID_PAYLOAD,
                "text message is not valid UTF-8",
            ));
        }
        Ok(Incoming::Text(data))
    } else {
        Ok(Incoming::Binary(data))
    }
}

fn parse_close(payload: &[u8]) -> Result<Incoming, Violation> {
    match payload.len() {
        0 => Ok(Incoming::Close(None)),
        1 => Err(violation(
            close::PROTOCOL_ERROR,
            "close frame with a 1-byte payload",
        )),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(violation(close::PROTOCOL_ERROR, "invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(violation(
                    close::INVALID_PAYLOAD,
                    "close reason is not valid UTF-8",
                ));
            }
            Ok(Incoming::Close(Some(code)))
        }
    }
}

/// True when the request asks for a WebSocket upgrade (its validity is checked by [`accept_key`]).
pub fn is_upgrade(req: &RequestHeader) -> bool {
    header_has_token(req, "upgrade", "websocket")
}

/// Why an opening handshake is refused (RFC 6455 section 4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Not a GET: `405` with `Allow: GET`.
    NotGet,
    /// No `Connection: Upgrade`: `400`.
    NoConnectionUpgrade,
    /// `Sec-WebSocket-Version` other than 13: `426` with `Sec-WebSocket-Version: 13`.
    BadVersion,
    /// `Sec-WebSocket-Key` missing or not 16 bytes in base64: `400`.
    BadKey,
    /// `Sec-WebSocket-Key` or `Sec-WebSocket-Version` more than once (RFC 6455 section 11.3.1
    /// and 11.3.5 allow each once): `400`.
    Repeated,
}

impl Handshake {
    pub fn status(self) -> u16 {
        match self {
            Self::NotGet => 405,
            Self::NoConnectionUpgrade | Self::BadKey | Self::Repeated => 400,
            Self::BadVersion => 426,
        }
    }

    /// The `reason` label of `switchyard_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::NotGet => "ws_bad_method",
            Self::NoConnectionUpgrade => "ws_bad_handshake",
            Self::BadVersion => "ws_bad_version",
            Self::BadKey => "ws_bad_key",
            Self::Repeated => "ws_repeated_header",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::NotGet => "a WebSocket handshake must be a GET",
            Self::NoConnectionUpgrade => "WebSocket handshake without `Connection: Upgrade`",
            Self::BadVersion => "unsupported WebSocket version: this server speaks 13",
            Self::BadKey => "missing or malformed Sec-WebSocket-Key (16 random bytes, base64)",
            Self::Repeated => "Sec-WebSocket-Key and Sec-WebSocket-Version may each appear once",
        }
    }

    /// The header the answer must carry, if any.
    pub fn header(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::NotGet => Some(("allow", "GET")),
            Self::BadVersion => Some(("sec-websocket-version", "13")),
            _ => None,
        }
    }
}

/// Checks the opening handshake (RFC 6455 section 4.2.1) and returns `Sec-WebSocket-Accept`.
pub fn accept_key(req: &RequestHeader) -> Result<String, Handshake> {
    if req.method != ::http::Method::GET {
        return Err(Handshake::NotGet);
    }
    if !header_has_token(req, "connection", "upgrade") {
        return Err(Handshake::NoConnectionUpgrade);
    }
    // Two keys are two handshakes: which one a backend behind a pass-through route would
    // answer is anyone's guess.
    if ["sec-websocket-key", "sec-websocket-version"]
        .iter()
        .any(|name| req.headers.get_all(*name).iter().nth(1).is_some())
    {
        return Err(Handshake::Repeated);
    }
    let version = req
        .headers
        .get("sec-websocket-version")
        .map(|v| v.as_bytes());
    if version != Some(b"13") {
        return Err(Handshake::BadVersion);
    }
    let key = req
        .headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let key_ok = key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/');
    if !key_ok {
        return Err(Handshake::BadKey);
    }
    Ok(tungstenite::handshake::derive_accept_key(key))
}

/// True when an upstream's `101` completes the client's handshake `req` (RFC 6455 section
/// 4.1): `Upgrade: websocket` and the `Sec-WebSocket-Accept` of the client's key. A proxy
/// tunnels nothing on any other answer.
pub fn answer_completes(req: &RequestHeader, answer: &pingora::http::ResponseHeader) -> bool {
    let expected = req
        .headers
        .get("sec-websocket-key")
        .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()));
    let upgrade_ok = answer
        .headers
        .get(::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let accept_ok = match (&expected, answer.headers.get("sec-websocket-accept")) {
        (Some(e), Some(got)) => got.as_bytes() == e.as_bytes(),
        _ => false,
    };
    is_upgrade(req) && upgrade_ok && accept_ok
}

/// Picks the subprotocol to answer with: the one the backend chose when the client offers it,
/// else the first of the client's offers that the route's config lists (RFC 6455 section 4.2.2:
/// the server answers with one of the client's values or none).
pub fn choose_subprotocol(
    req: &RequestHeader,
    configured: &[String],
    backend: Option<&str>,
) -> Option<String> {
    let offered: Vec<&str> = req
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(b) = backend.filter(|b| offered.contains(b)) {
        return Some(b.to_owned());
    }
    offered
        .into_iter()
        .find(|o| configured.iter().any(|c| c == o))
        .map(str::to_owned)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One masked (client-to-server) frame: `first` is its first byte (FIN and opcode).
    pub(crate) fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn decodes_fragmented_text_split_across_reads() {
        let mut d = Decoder::new(1024);
        let mut wire = masked(0x01, b"Hel");
        wire.extend(masked(0x89, b"p")); // a ping between fragments is allowed
        wire.extend(masked(0x80, b"lo"));
        for chunk in wire.chunks(3) {
            d.push(chunk);
        }
        assert_eq!(
            d.next_message().unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            d.next_message().unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"Hello")))
        );
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn rfc6455_violations_get_their_close_codes() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (vec![0x81, 0x02, b'h', b'i'], close::PROTOCOL_ERROR), // unmasked (5.1)
            (masked(0xC1, b"x"), close::PROTOCOL_ERROR),           // RSV1 without extension (5.2)
            (masked(0x83, b"x"), close::PROTOCOL_ERROR),           // reserved opcode (5.2)
            (masked(0x09, b"x"), close::PROTOCOL_ERROR),           // fragmented ping (5.5)
            (masked(0x89, &[0u8; 126]), close::PROTOCOL_ERROR),    // control > 125 bytes (5.5)
            (masked(0x80, b"x"), close::PROTOCOL_ERROR),           // continuation first (5.4)
            (masked(0x81, &[0xff, 0xfe]), close::INVALID_PAYLOAD), // bad UTF-8 (8.1)
            (masked(0x88, &[0x03, 0xed]), close::PROTOCOL_ERROR), // close code 1005 on the wire (7.4.1)
            (masked(0x82, &[0u8; 2000]), close::TOO_BIG),         // over max_message
        ];
        for (wire, code) in cases {
            let mut d = Decoder::new(1024);
            d.push(&wire);
            assert_eq!(d.next_message().unwrap_err().code, code, "{wire:02x?}");
        }
    }

    #[test]
    fn deflate_marks_first_frames_only_and_inflated_size_is_capped() {
        let a = deflate::Agreed { server_bits: 15 };
        let text = "{\"k\":\"v\"}".repeat(40);
        let c = deflate::compress(text.as_bytes(), a).unwrap();
        // Whole, and split over a text frame and a continuation (RSV1 on the first only).
        let mut d = Decoder::with_deflate(1024);
        d.push(&masked(0xC1, &c));
        let (head, tail) = c.split_at(c.len() / 2);
        d.push(&masked(0x41, head));
        d.push(&masked(0x80, tail));
        for _ in 0..2 {
            assert_eq!(
                d.next_message().unwrap(),
                Some(Incoming::Text(Bytes::from(text.clone())))
            );
        }
        // Uncompressed messages still pass.
        d.push(&masked(0x81, b"plain"));
        assert_eq!(
            d.next_message().unwrap(),
            Some(Incoming::Text(Bytes::from_static(b"plain")))
        );
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (
                [masked(0x41, head), masked(0xC0, tail)].concat(),
                close::PROTOCOL_ERROR,
            ), // RSV1 on a continuation (RFC 7692 6.1)
            (masked(0xC9, b"x"), close::PROTOCOL_ERROR), // RSV1 on a ping (RFC 7692 6.1)
            (masked(0xA1, b"x"), close::PROTOCOL_ERROR), // RSV2: no extension
            (masked(0xC1, &[0xff, 0xff, 0xff]), close::INVALID_PAYLOAD), // not deflate
            (masked(0xC1, &c), close::TOO_BIG),          // 400 bytes inflated, cap 100
        ];
        for (i, (wire, code)) in cases.into_iter().enumerate() {
            let mut d = Decoder::with_deflate(if i == 4 { 100 } else { 1024 });
            d.push(&wire);
            assert_eq!(d.next_message().unwrap_err().code, code, "case {i}");
        }
        // Compressed frames out: RSV1 set, below the threshold plain.
        let f = encode_message(OP_TEXT, text.as_bytes(), Some(a));
        assert_eq!(f[0], 0xC1);
        assert!(f.len() < text.len() / 4);
        assert_eq!(
            &encode_message(OP_TEXT, b"short", Some(a))[..],
            b"\x81\x05short"
        );
        assert_eq!(encode_message(OP_TEXT, text.as_bytes(), None)[0], 0x81);
    }

    #[test]
    fn size_cap_applies_before_the_payload_arrives() {
        let mut d = Decoder::new(100);
        // Header announcing 1 MiB, no payload yet: refused at once, nothing buffered.
        d.push(&[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0x10, 0, 0, 1, 2, 3, 4]);
        assert_eq!(d.next_message().unwrap_err().code, close::TOO_BIG);
    }

    #[test]
    fn server_frames_are_unmasked() {
        assert_eq!(&encode_frame(OP_TEXT, b"ok")[..], b"\x81\x02ok");
        assert_eq!(encode_frame(OP_BINARY, &[0; 300])[..4], [0x82, 126, 1, 44]);
        assert_eq!(&encode_close(1001, "bye")[..], b"\x88\x05\x03\xe9bye");
    }
}
