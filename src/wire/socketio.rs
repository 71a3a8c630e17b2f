//! Socket.IO packets: protocol 5 (socket.io-client 3 and 4, over Engine.IO 4) and protocol 4
//! (socket.io-client 1 and 2, over Engine.IO 3). Each packet is one Engine.IO message; one
//! with binary attachments is followed by that many binary messages.
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON>]
//! 0 CONNECT  1 DISCONNECT  2 EVENT  3 ACK  4 CONNECT_ERROR  5 BINARY_EVENT  6 BINARY_ACK
//! 42["chat",{"text":"hi"}]     451-/admin,7["file",{"_placeholder":true,"num":0}]
//! ```
//!
//! The JSON of a packet is kept as the text it came in (it goes on byte for byte); it is only
//! parsed to check what the protocol requires of it.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl Kind {
    fn digit(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
            Self::BinaryEvent => '5',
            Self::BinaryAck => '6',
        }
    }

    fn of(c: u8) -> Option<Self> {
        Some(match c {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }
}

/// Which revision of the Socket.IO protocol a connection speaks (fixed by its Engine.IO one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Socket.IO 1 and 2 (Engine.IO 3): an implicit connection to `/`, no CONNECT payloads.
    V4,
    /// Socket.IO 3 and 4 (Engine.IO 4).
    V5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    /// Binary attachments that follow (BINARY_EVENT, BINARY_ACK).
    pub attachments: usize,
    /// `/` when the packet names none.
    pub nsp: String,
    /// Protocol 4's CONNECT carries a query string after the namespace (`/admin?token=x`).
    pub query: Option<String>,
    pub id: Option<u64>,
    /// The JSON payload, as sent.
    pub data: Option<String>,
}

/// At most this many attachments per packet (each is a message of its own, held until all
/// came).
pub const MAX_ATTACHMENTS: usize = 64;

/// Why a packet was refused (socket.io closes the connection for any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

/// A packet's text, as a client or a server sent it.
pub fn decode(text: &str) -> Result<Packet, Invalid> {
    let b = text.as_bytes();
    let kind = b
        .first()
        .and_then(|&c| Kind::of(c))
        .ok_or(Invalid("unknown packet type"))?;
    let mut i = 1;
    let mut attachments = 0;
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 3 || b.get(i) != Some(&b'-') {
            return Err(Invalid("illegal attachments"));
        }
        attachments = text[start..i]
            .parse()
            .map_err(|_| Invalid("illegal attachments"))?;
        if attachments > MAX_ATTACHMENTS {
            return Err(Invalid("too many attachments"));
        }
        i += 1;
    }
    let mut nsp = "/".to_owned();
    let mut query = None;
    if b.get(i) == Some(&b'/') {
        let start = i;
        while i < b.len() && b[i] != b',' {
            i += 1;
        }
        let name = &text[start..i];
        if i < b.len() {
            i += 1; // the comma
        }
        match name.split_once('?') {
            Some((n, q)) => {
                nsp = n.to_owned();
                query = Some(q.to_owned());
            }
            None => nsp = name.to_owned(),
        }
        if nsp.len() > 256 {
            return Err(Invalid("namespace too long"));
        }
    }
    let mut id = None;
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i > start {
        if i - start > 15 {
            return Err(Invalid("ack id too long"));
        }
        id = Some(text[start..i].parse().map_err(|_| Invalid("bad ack id"))?);
    }
    let data = (i < b.len()).then(|| text[i..].to_owned());
    let payload = match &data {
        Some(d) => Some(serde_json::from_str::<Value>(d).map_err(|_| Invalid("invalid payload"))?),
        None => None,
    };
    let valid = match (kind, &payload) {
        (Kind::Connect, None) => true,
        (Kind::Connect, Some(p)) => p.is_object(),
        (Kind::Disconnect, p) => p.is_none(),
        (Kind::Event | Kind::BinaryEvent, Some(Value::Array(a))) => {
            matches!(a.first(), Some(Value::String(_) | Value::Number(_)))
        }
        (Kind::Ack | Kind::BinaryAck, Some(Value::Array(_))) => true,
        (Kind::ConnectError, Some(p)) => p.is_object() || p.is_string(),
        _ => false,
    };
    if !valid {
        return Err(Invalid("invalid payload"));
    }
    Ok(Packet {
        kind,
        attachments,
        nsp,
        query,
        id,
        data,
    })
}

/// A packet's text: `data` is JSON text, sent as it is.
pub fn encode(
    kind: Kind,
    attachments: usize,
    nsp: &str,
    id: Option<u64>,
    data: Option<&str>,
) -> String {
    let mut s = String::with_capacity(8 + nsp.len() + data.map_or(0, str::len));
    s.push(kind.digit());
    if matches!(kind, Kind::BinaryEvent | Kind::BinaryAck) {
        s.push_str(&attachments.to_string());
        s.push('-');
    }
    if nsp != "/" {
        s.push_str(nsp);
        s.push(',');
    }
    if let Some(id) = id {
        s.push_str(&id.to_string());
    }
    if let Some(d) = data {
        s.push_str(d);
    }
    s
}

/// The server's CONNECT answer: `{"sid":...}` in protocol 5, nothing in protocol 4.
pub fn connected(p: Protocol, nsp: &str, sid: &str) -> String {
    match p {
        Protocol::V5 => encode(
            Kind::Connect,
            0,
            nsp,
            None,
            Some(&format!("{{\"sid\":\"{sid}\"}}")),
        ),
        Protocol::V4 => encode(Kind::Connect, 0, nsp, None, None),
    }
}

/// A CONNECT_ERROR: `{"message":...,"data":...}` in protocol 5, the message as a string in 4.
pub fn connect_error(p: Protocol, nsp: &str, message: &str, data: Option<&Value>) -> String {
    let payload = match p {
        // `message` first, as socket.io writes it.
        Protocol::V5 => match data {
            Some(d) => format!("{{\"message\":{},\"data\":{d}}}", json_string(message)),
            None => format!("{{\"message\":{}}}", json_string(message)),
        },
        Protocol::V4 => Value::String(message.into()).to_string(),
    };
    encode(Kind::ConnectError, 0, nsp, None, Some(&payload))
}

/// The attachments a JSON payload refers to (`{"_placeholder":true,"num":i}`): how many, when
/// they are numbered 0 to n-1 each once; None when they are not.
pub fn placeholders(v: &Value) -> Option<usize> {
    fn walk(v: &Value, seen: &mut Vec<u64>) {
        match v {
            Value::Object(o) if o.get("_placeholder") == Some(&Value::Bool(true)) => {
                if let Some(n) = o.get("num").and_then(Value::as_u64) {
                    seen.push(n);
                }
            }
            Value::Object(o) => o.values().for_each(|x| walk(x, seen)),
            Value::Array(a) => a.iter().for_each(|x| walk(x, seen)),
            _ => {}
        }
    }
    let mut seen = Vec::new();
    walk(v, &mut seen);
    seen.sort_unstable();
    seen.iter()
        .enumerate()
        .all(|(i, &n)| n == i as u64)
        .then_some(seen.len())
}

/// The JSON text of a string.
pub fn json_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// An attachment's placeholder, as JSON text.
pub fn placeholder(num: usize) -> String {
    format!("{{\"_placeholder\":true,\"num\":{num}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: Kind, nsp: &str, id: Option<u64>, data: Option<&str>) -> Packet {
        Packet {
            kind,
            attachments: 0,
            nsp: nsp.into(),
            query: None,
            id,
            data: data.map(str::to_owned),
        }
    }

    #[test]
    fn decodes_the_protocol_examples() {
        assert_eq!(decode("0").unwrap(), p(Kind::Connect, "/", None, None));
        assert_eq!(
            decode("0/admin,{\"token\":\"123\"}").unwrap(),
            p(Kind::Connect, "/admin", None, Some("{\"token\":\"123\"}"))
        );
        assert_eq!(
            decode("1/admin,").unwrap(),
            p(Kind::Disconnect, "/admin", None, None)
        );
        assert_eq!(
            decode("2[\"hey\",\"Jude\"]").unwrap(),
            p(Kind::Event, "/", None, Some("[\"hey\",\"Jude\"]"))
        );
        assert_eq!(
            decode("2/admin,456[\"project:delete\",123]").unwrap(),
            p(
                Kind::Event,
                "/admin",
                Some(456),
                Some("[\"project:delete\",123]")
            )
        );
        assert_eq!(
            decode("3/admin,456[]").unwrap(),
            p(Kind::Ack, "/admin", Some(456), Some("[]"))
        );
        let b = decode("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!((b.kind, b.attachments), (Kind::BinaryEvent, 1));
        let q = decode("0/admin?token=x&a=b,").unwrap();
        assert_eq!(
            (q.nsp.as_str(), q.query.as_deref()),
            ("/admin", Some("token=x&a=b"))
        );
    }

    #[test]
    fn refuses_what_socket_io_refuses() {
        for bad in [
            "",
            "7",
            "4abc",
            "2{}",
            "2[]",
            "2[1",
            "42abc[\"x\"]",
            "1/admin,{}",
            "0[1]",
            "5[\"x\"]",
            "5x-[\"x\"]",
            "51[\"x\"]",
            "3/a,1{}",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert!(decode(&format!("5{}-[\"x\"]", MAX_ATTACHMENTS + 1)).is_err());
    }

    #[test]
    fn encodes_as_socket_io_does() {
        assert_eq!(
            encode(Kind::Event, 0, "/", None, Some("[\"a\"]")),
            "2[\"a\"]"
        );
        assert_eq!(
            encode(Kind::Disconnect, 0, "/admin", None, None),
            "1/admin,"
        );
        assert_eq!(
            encode(Kind::Ack, 0, "/admin", Some(7), Some("[1]")),
            "3/admin,7[1]"
        );
        assert_eq!(
            encode(Kind::BinaryAck, 2, "/", Some(1), Some("[]")),
            "62-1[]"
        );
        assert_eq!(connected(Protocol::V5, "/", "abc"), "0{\"sid\":\"abc\"}");
        assert_eq!(connected(Protocol::V4, "/admin", "abc"), "0/admin,");
        assert_eq!(connected(Protocol::V4, "/", "abc"), "0");
        assert_eq!(
            connect_error(Protocol::V5, "/x", "Invalid namespace", None),
            "4/x,{\"message\":\"Invalid namespace\"}"
        );
        assert_eq!(
            connect_error(Protocol::V4, "/x", "Invalid namespace", None),
            "4/x,\"Invalid namespace\""
        );
    }

    #[test]
    fn counts_placeholders() {
        let v: Value = serde_json::from_str(
            "[\"x\",{\"_placeholder\":true,\"num\":1},[{\"a\":{\"_placeholder\":true,\"num\":0}}]]",
        )
        .unwrap();
        assert_eq!(placeholders(&v), Some(2));
        let gap: Value = serde_json::from_str("[{\"_placeholder\":true,\"num\":1}]").unwrap();
        assert_eq!(placeholders(&gap), None);
        assert_eq!(placeholders(&Value::Null), Some(0));
    }
}
