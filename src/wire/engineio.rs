//! Engine.IO framing, protocol revisions 3 and 4 (socket.io-client 1/2 and 3/4): packets,
//! polling payloads, the WebSocket forms, JSONP, the open packet and the error bodies.
//!
//! ```text
//! packet      <type digit><data>    0 open, 1 close, 2 ping, 3 pong, 4 message, 5 upgrade, 6 noop
//! payload v4  packet \x1e packet ...        binary message: b<base64>
//! payload v3  <len>:<packet> ...            len in UTF-16 units; binary message: b4<base64>
//!             or, binary (XHR2), per packet  <0 string|1 binary><len digits, a byte each>\xff<packet>
//! websocket   one packet per frame; a binary frame is the message's bytes (v3: after a 0x04)
//! jsonp (v3)  ___eio[<n>]("<payload as a JS string>");   sends: form `d=<payload>`
//! ```

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

/// The protocol revision of a session, fixed by its handshake's `EIO` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V3,
    V4,
}

impl Version {
    /// `EIO=3` or `EIO=4`; anything else (a missing value included) is refused.
    pub fn parse(eio: Option<&str>) -> Option<Self> {
        match eio {
            Some("3") => Some(Self::V3),
            Some("4") => Some(Self::V4),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The server's first packet, its JSON (see [`open_packet`]).
    Open(Bytes),
    Close,
    /// A ping, with its data (`probe` during an upgrade).
    Ping(Bytes),
    Pong(Bytes),
    Message {
        data: Bytes,
        binary: bool,
    },
    Upgrade,
    Noop,
}

impl Packet {
    pub fn text(data: Bytes) -> Self {
        Self::Message {
            data,
            binary: false,
        }
    }

    fn type_digit(&self) -> u8 {
        match self {
            Self::Open(_) => b'0',
            Self::Close => b'1',
            Self::Ping(_) => b'2',
            Self::Pong(_) => b'3',
            Self::Message { .. } => b'4',
            Self::Upgrade => b'5',
            Self::Noop => b'6',
        }
    }

    fn data(&self) -> &[u8] {
        match self {
            Self::Open(d) | Self::Ping(d) | Self::Pong(d) | Self::Message { data: d, .. } => d,
            _ => b"",
        }
    }
}

/// Why a client's packet or payload was refused (engine.io closes the session for any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not a packet of the protocol (an unknown type, broken length or base64, not UTF-8).
    Malformed(&'static str),
    /// More packets than the caller allows in one payload.
    TooMany,
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

/// One packet in its text form: a WebSocket text frame, or one packet of a payload (where a
/// binary message is `b<base64>` in v4 and `b4<base64>` in v3). The open packet is the
/// server's: a client sending one is malformed.
pub fn decode_text(v: Version, s: Bytes) -> Result<Packet, Invalid> {
    if std::str::from_utf8(&s).is_err() {
        return Err(Invalid::Malformed("a text packet is not UTF-8"));
    }
    let Some(&t) = s.first() else {
        return Err(Invalid::Malformed("an empty packet"));
    };
    let data = s.slice(1..);
    Ok(match t {
        b'1' => Packet::Close,
        b'2' => Packet::Ping(data),
        b'3' => Packet::Pong(data),
        b'4' => Packet::text(data),
        b'5' => Packet::Upgrade,
        b'6' => Packet::Noop,
        b'b' => {
            let encoded = match v {
                Version::V4 => &data[..],
                Version::V3 => match data.split_first() {
                    Some((b'4', rest)) => rest,
                    _ => return Err(Invalid::Malformed("a binary packet that is not a message")),
                },
            };
            let bytes = b64()
                .decode(encoded)
                .map_err(|_| Invalid::Malformed("broken base64 in a binary packet"))?;
            Packet::Message {
                data: Bytes::from(bytes),
                binary: true,
            }
        }
        _ => return Err(Invalid::Malformed("unknown packet type")),
    })
}

/// A WebSocket binary frame: the message's bytes (v3: after its type byte, which must be 4).
pub fn decode_ws_binary(v: Version, frame: Bytes) -> Result<Packet, Invalid> {
    let data = match v {
        Version::V4 => frame,
        Version::V3 => match frame.first() {
            Some(4) => frame.slice(1..),
            _ => return Err(Invalid::Malformed("a binary frame that is not a message")),
        },
    };
    Ok(Packet::Message { data, binary: true })
}

/// A polling POST's body: its packets in order. `binary_body`: the body was sent as
/// `application/octet-stream` (v3's binary payload). At most `max` packets.
pub fn decode_payload(
    v: Version,
    body: Bytes,
    binary_body: bool,
    max: usize,
) -> Result<Vec<Packet>, Invalid> {
    let mut out = Vec::new();
    let push = |p: Packet, out: &mut Vec<Packet>| {
        if out.len() >= max {
            return Err(Invalid::TooMany);
        }
        out.push(p);
        Ok(())
    };
    match v {
        Version::V4 => {
            let mut start = 0;
            for (i, &b) in body
                .iter()
                .enumerate()
                .chain(std::iter::once((body.len(), &0x1e)))
            {
                if b == 0x1e {
                    push(decode_text(v, body.slice(start..i))?, &mut out)?;
                    start = i + 1;
                }
            }
        }
        Version::V3 if binary_body || body.first().is_some_and(|&b| b <= 1) => {
            let mut rest = body;
            while !rest.is_empty() {
                let kind = rest[0];
                if kind > 1 {
                    return Err(Invalid::Malformed(
                        "a binary payload's packet kind is not 0 or 1",
                    ));
                }
                let mut len = 0usize;
                let mut i = 1;
                loop {
                    match rest.get(i) {
                        Some(0xff) if i > 1 => break,
                        Some(&d) if d <= 9 && i <= 10 => len = len * 10 + d as usize,
                        _ => return Err(Invalid::Malformed("a binary payload's length is broken")),
                    }
                    i += 1;
                }
                let end = i + 1 + len;
                if end > rest.len() {
                    return Err(Invalid::Malformed("a binary payload's packet is cut short"));
                }
                let packet = rest.slice(i + 1..end);
                let p = if kind == 0 {
                    decode_text(v, packet)?
                } else {
                    decode_ws_binary(v, packet)?
                };
                push(p, &mut out)?;
                rest = rest.slice(end..);
            }
        }
        Version::V3 => {
            let text = std::str::from_utf8(&body)
                .map_err(|_| Invalid::Malformed("a text payload is not UTF-8"))?;
            let mut at = 0;
            while at < text.len() {
                let colon = text[at..]
                    .find(':')
                    .filter(|&c| (1..=10).contains(&c))
                    .ok_or(Invalid::Malformed("a payload's length is missing"))?;
                let len: usize = text[at..at + colon]
                    .parse()
                    .map_err(|_| Invalid::Malformed("a payload's length is not a number"))?;
                let start = at + colon + 1;
                // The length counts UTF-16 units, as JavaScript's `String.length`.
                let mut units = 0;
                let mut end = start;
                for c in text[start..].chars() {
                    if units >= len {
                        break;
                    }
                    units += c.len_utf16();
                    end += c.len_utf8();
                }
                if units != len || len == 0 {
                    return Err(Invalid::Malformed(
                        "a payload's packet does not match its length",
                    ));
                }
                push(decode_text(v, body.slice(start..end))?, &mut out)?;
                at = end;
            }
        }
    }
    if out.is_empty() {
        return Err(Invalid::Malformed("an empty payload"));
    }
    Ok(out)
}

/// A packet as one WebSocket message: its payload and whether it is a binary frame.
pub fn ws_message(v: Version, p: &Packet) -> (Bytes, bool) {
    match p {
        Packet::Message { data, binary: true } => match v {
            Version::V4 => (data.clone(), true),
            Version::V3 => {
                let mut b = BytesMut::with_capacity(1 + data.len());
                b.put_u8(4);
                b.extend_from_slice(data);
                (b.freeze(), true)
            }
        },
        other => (text_form(v, other), false),
    }
}

/// A packet's text form, binary messages as base64 (`b`, then `4` in v3).
fn text_form(v: Version, p: &Packet) -> Bytes {
    let mut b = BytesMut::new();
    match p {
        Packet::Message { data, binary: true } => {
            b.put_u8(b'b');
            if v == Version::V3 {
                b.put_u8(b'4');
            }
            b.extend_from_slice(b64().encode(data).as_bytes());
        }
        other => {
            b.reserve(1 + other.data().len());
            b.put_u8(other.type_digit());
            b.extend_from_slice(other.data());
        }
    }
    b.freeze()
}

/// A poll's answer: its body and whether it is v3's binary payload (`application/octet-stream`).
/// `binary_ok`: the client takes binary payloads (v3 without `b64=1`; v4 payloads are text).
pub fn encode_payload<'a>(
    v: Version,
    packets: impl IntoIterator<Item = &'a Packet>,
    binary_ok: bool,
) -> (Bytes, bool) {
    let packets: Vec<&Packet> = packets.into_iter().collect();
    let mut out = BytesMut::new();
    match v {
        Version::V4 => {
            for (i, p) in packets.iter().enumerate() {
                if i > 0 {
                    out.put_u8(0x1e);
                }
                out.extend_from_slice(&text_form(v, p));
            }
            (out.freeze(), false)
        }
        Version::V3
            if binary_ok
                && packets
                    .iter()
                    .any(|p| matches!(p, Packet::Message { binary: true, .. })) =>
        {
            for p in packets {
                let (body, binary) = ws_message(v, p);
                out.put_u8(u8::from(binary));
                out.extend(body.len().to_string().bytes().map(|d| d - b'0'));
                out.put_u8(0xff);
                out.extend_from_slice(&body);
            }
            (out.freeze(), true)
        }
        Version::V3 => {
            for p in packets {
                let text = text_form(v, p);
                let units: usize = std::str::from_utf8(&text)
                    .map(|s| s.encode_utf16().count())
                    // A message whose text is not UTF-8 cannot reach here (backends' text
                    // messages are UTF-8): count its bytes.
                    .unwrap_or(text.len());
                out.extend_from_slice(units.to_string().as_bytes());
                out.put_u8(b':');
                out.extend_from_slice(&text);
            }
            (out.freeze(), false)
        }
    }
}

/// A JSONP poll's answer: `___eio[<index>]("<payload>");` (the payload is text: JSONP is v3
/// with `b64=1`). `index` is the digits of the client's `j`.
pub fn jsonp(index: &str, payload: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(payload);
    let quoted = serde_json::to_string(&*text).expect("a string serializes");
    // JSON allows U+2028 and U+2029 in strings; older JavaScript does not.
    let quoted = quoted
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    Bytes::from(format!("___eio[{index}]({quoted});"))
}

/// A JSONP index (`j`): decimal digits only.
pub fn jsonp_index_ok(j: &str) -> bool {
    !j.is_empty() && j.len() <= 10 && j.bytes().all(|b| b.is_ascii_digit())
}

/// A JSONP send's form body (`d=<payload>`, URL-encoded): the payload, with the newline
/// escapes the client adds undone (`\n` is a newline, `\\n` the two characters).
pub fn jsonp_send_payload(form: &[u8]) -> Option<Bytes> {
    let decoded = String::from_utf8(super::http::form_field(form, b"d")?).ok()?;
    let mut out = String::with_capacity(decoded.len());
    let mut rest = decoded.as_str();
    while let Some(i) = rest.find("\\n") {
        if rest[..i].ends_with('\\') {
            // `\\n`: an escaped backslash before an `n`, one backslash less.
            out.push_str(&rest[..i]);
            out.push('n');
        } else {
            out.push_str(&rest[..i]);
            out.push('\n');
        }
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    Some(Bytes::from(out))
}

/// The open packet (`0{...}`).
pub fn open_packet(
    sid: &str,
    upgrades: bool,
    ping_interval_ms: u128,
    ping_timeout_ms: u128,
    max_payload: u64,
) -> Packet {
    let upgrades = if upgrades { "[\"websocket\"]" } else { "[]" };
    Packet::Open(Bytes::from(format!(
        "{{\"sid\":\"{sid}\",\"upgrades\":{upgrades},\"pingInterval\":{ping_interval_ms},\"pingTimeout\":{ping_timeout_ms},\"maxPayload\":{max_payload}}}"
    )))
}

/// engine.io's error codes, with the messages its clients show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl ErrorCode {
    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The JSON body of a 400 (`{"code":1,"message":"Session ID unknown"}`).
    pub fn body(self) -> Bytes {
        Bytes::from(format!(
            "{{\"code\":{},\"message\":\"{}\"}}",
            self as u8,
            self.message()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &str) -> Packet {
        Packet::text(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn bin(b: &[u8]) -> Packet {
        Packet::Message {
            data: Bytes::copy_from_slice(b),
            binary: true,
        }
    }

    #[test]
    fn versions_are_exactly_3_and_4() {
        assert_eq!(Version::parse(Some("4")), Some(Version::V4));
        assert_eq!(Version::parse(Some("3")), Some(Version::V3));
        for bad in [None, Some(""), Some("abc"), Some("5"), Some("04")] {
            assert_eq!(Version::parse(bad), None);
        }
    }

    #[test]
    fn v4_payloads_both_ways() {
        let body = Bytes::from_static(b"4hello\x1ebAQIDBA==\x1e3\x1e2probe");
        let packets = decode_payload(Version::V4, body.clone(), false, 10).unwrap();
        assert_eq!(
            packets,
            vec![
                msg("hello"),
                bin(&[1, 2, 3, 4]),
                Packet::Pong(Bytes::new()),
                Packet::Ping(Bytes::from_static(b"probe"))
            ]
        );
        let (out, binary) = encode_payload(Version::V4, &packets, true);
        assert_eq!(out, body);
        assert!(!binary);
        assert!(matches!(
            decode_payload(Version::V4, Bytes::from_static(b"abc"), false, 10),
            Err(Invalid::Malformed(_))
        ));
        assert!(
            decode_payload(Version::V4, Bytes::from_static(b"4a\x1e\x1e4b"), false, 10).is_err()
        );
        assert_eq!(
            decode_payload(Version::V4, Bytes::from_static(b"4a\x1e4b\x1e4c"), false, 2),
            Err(Invalid::TooMany)
        );
    }

    #[test]
    fn v3_text_payloads_count_utf16_units() {
        let body = Bytes::from("6:4hello2:4€3:4😀10:b4AQIDBA==".to_owned());
        let packets = decode_payload(Version::V3, body.clone(), false, 10).unwrap();
        assert_eq!(
            packets,
            vec![msg("hello"), msg("€"), msg("😀"), bin(&[1, 2, 3, 4])]
        );
        let (out, binary) = encode_payload(Version::V3, &packets, false);
        assert_eq!(out, body);
        assert!(!binary);
        for bad in ["7:4hello", "x:4a", "2:4", ":4a", "2:9a", "1:2abc"] {
            assert!(
                decode_payload(Version::V3, Bytes::from(bad.to_owned()), false, 10).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn v3_binary_payloads() {
        let packets = vec![msg("hello"), bin(&[1, 2, 3, 4])];
        let (out, binary) = encode_payload(Version::V3, &packets, true);
        assert!(binary);
        assert_eq!(
            &out[..],
            &[0, 6, 255, 52, 104, 101, 108, 108, 111, 1, 5, 255, 4, 1, 2, 3, 4]
        );
        assert_eq!(decode_payload(Version::V3, out, true, 10).unwrap(), packets);
        // Text only: a text payload, even for a client that takes binary.
        let (out, binary) = encode_payload(Version::V3, &[msg("hi")], true);
        assert_eq!((&out[..], binary), (&b"3:4hi"[..], false));
        let cut = Bytes::from_static(&[0, 6, 255, 52, 104]);
        assert!(decode_payload(Version::V3, cut, true, 10).is_err());
        let endless = Bytes::from_static(&[0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 255]);
        assert!(decode_payload(Version::V3, endless, true, 10).is_err());
    }

    #[test]
    fn websocket_forms() {
        assert_eq!(
            ws_message(Version::V3, &bin(&[1, 2])),
            (Bytes::from_static(&[4, 1, 2]), true)
        );
        assert_eq!(
            ws_message(Version::V4, &bin(&[1, 2])),
            (Bytes::from_static(&[1, 2]), true)
        );
        assert_eq!(
            ws_message(Version::V4, &Packet::Ping(Bytes::from_static(b"probe"))),
            (Bytes::from_static(b"2probe"), false)
        );
        assert_eq!(
            decode_ws_binary(Version::V3, Bytes::from_static(&[4, 9])).unwrap(),
            bin(&[9])
        );
        assert!(decode_ws_binary(Version::V3, Bytes::from_static(&[2, 9])).is_err());
        assert!(decode_text(Version::V4, Bytes::from_static(b"0{}")).is_err());
        assert!(decode_text(Version::V4, Bytes::from_static(b"")).is_err());
        assert!(decode_text(Version::V4, Bytes::from_static(b"4\xff")).is_err());
    }

    #[test]
    fn jsonp_both_ways() {
        assert_eq!(
            &jsonp("3", "5:4a\"\u{2028}".as_bytes())[..],
            b"___eio[3](\"5:4a\\\"\\u2028\");"
        );
        assert!(jsonp_index_ok("0") && jsonp_index_ok("12"));
        for bad in ["", "a", "1;alert(1)", "-1", "12345678901"] {
            assert!(!jsonp_index_ok(bad), "{bad}");
        }
        assert_eq!(
            jsonp_send_payload(b"d=6%3A4hello").unwrap(),
            Bytes::from_static(b"6:4hello")
        );
        assert_eq!(
            jsonp_send_payload(b"d=4%3A4a%5Cnb").unwrap(),
            Bytes::from_static(b"4:4a\nb")
        );
        assert_eq!(
            jsonp_send_payload(b"d=5%3A4a%5C%5Cnb").unwrap(),
            Bytes::from_static(b"5:4a\\nb")
        );
        assert!(jsonp_send_payload(b"x=1").is_none());
    }

    #[test]
    fn open_packet_and_errors() {
        assert_eq!(
            &ws_message(Version::V4, &open_packet("abc", true, 300, 200, 1_000_000)).0[..],
            &b"0{\"sid\":\"abc\",\"upgrades\":[\"websocket\"],\"pingInterval\":300,\"pingTimeout\":200,\"maxPayload\":1000000}"[..]
        );
        assert_eq!(
            &ErrorCode::UnknownSid.body()[..],
            b"{\"code\":1,\"message\":\"Session ID unknown\"}"
        );
    }
}
