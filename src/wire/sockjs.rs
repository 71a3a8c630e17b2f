//! The SockJS 0.3.3 wire format (the `sockjs-protocol` suite is its definition): the URL
//! layout under a base path, the frames (`o`, `h`, `a[...]`, `c[code,"reason"]`), how each HTTP
//! transport wraps a frame, the client's message bodies, the `/info` answer and the
//! `iframe.html` page. Pure: no I/O, no sessions, no routes.

use bytes::{BufMut, Bytes, BytesMut};

/// What a path under a SockJS base URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    /// `base` or `base/`: the greeting.
    Greeting,
    /// `base/info`.
    Info,
    /// `base/iframe.html` and its versioned forms (`iframe-1.6.1.html`).
    Iframe,
    /// `base/websocket`: a plain WebSocket without SockJS framing.
    RawWebSocket,
    /// `base/{server}/{session}/{transport}`.
    Session {
        session: &'a str,
        transport: Transport,
    },
    /// Anything else under the base (including malformed session paths): 404.
    NotFound,
}

/// The server-side transports of a session URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    WebSocket,
    Xhr,
    XhrSend,
    XhrStreaming,
    EventSource,
    HtmlFile,
    Jsonp,
    JsonpSend,
}

impl Transport {
    pub const ALL: [Transport; 8] = [
        Self::WebSocket,
        Self::Xhr,
        Self::XhrSend,
        Self::XhrStreaming,
        Self::EventSource,
        Self::HtmlFile,
        Self::Jsonp,
        Self::JsonpSend,
    ];

    pub fn from_path(s: &str) -> Option<Self> {
        Some(match s {
            "websocket" => Self::WebSocket,
            "xhr" => Self::Xhr,
            "xhr_send" => Self::XhrSend,
            "xhr_streaming" => Self::XhrStreaming,
            "eventsource" => Self::EventSource,
            "htmlfile" => Self::HtmlFile,
            "jsonp" => Self::Jsonp,
            "jsonp_send" => Self::JsonpSend,
            _ => return None,
        })
    }

    /// Its name in URLs, metrics (`sockjs-<name>`) and the `sockjs.transports` list.
    pub fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Xhr => "xhr",
            Self::XhrSend => "xhr_send",
            Self::XhrStreaming => "xhr_streaming",
            Self::EventSource => "eventsource",
            Self::HtmlFile => "htmlfile",
            Self::Jsonp => "jsonp",
            Self::JsonpSend => "jsonp_send",
        }
    }

    /// The metrics label: `sockjs-<name>`.
    pub fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "sockjs-websocket",
            Self::Xhr => "sockjs-xhr",
            Self::XhrSend => "sockjs-xhr_send",
            Self::XhrStreaming => "sockjs-xhr_streaming",
            Self::EventSource => "sockjs-eventsource",
            Self::HtmlFile => "sockjs-htmlfile",
            Self::Jsonp => "sockjs-jsonp",
            Self::JsonpSend => "sockjs-jsonp_send",
        }
    }

    /// The receiving transport a send URL belongs to (the one the allowlist names).
    pub fn receiver(self) -> Self {
        match self {
            Self::XhrSend => Self::Xhr,
            Self::JsonpSend => Self::Jsonp,
            t => t,
        }
    }

    /// The method that uses it (`OPTIONS` aside).
    pub fn method(self) -> &'static str {
        match self {
            Self::WebSocket | Self::EventSource | Self::HtmlFile | Self::Jsonp => "GET",
            Self::Xhr | Self::XhrSend | Self::XhrStreaming | Self::JsonpSend => "POST",
        }
    }

    /// Answers with a stream of frames (closed after `response_limit` bytes) rather than one.
    pub fn streaming(self) -> bool {
        matches!(
            self,
            Self::XhrStreaming | Self::EventSource | Self::HtmlFile
        )
    }

    /// Sends client messages rather than receiving.
    pub fn sends(self) -> bool {
        matches!(self, Self::XhrSend | Self::JsonpSend)
    }

    /// Needs a `c=` callback.
    pub fn needs_callback(self) -> bool {
        matches!(self, Self::HtmlFile | Self::Jsonp)
    }
}

/// Server and session ids: not empty, no `.` (and no `/`, which the split already took), and
/// at most [`MAX_ID`] bytes: a session id is kept for as long as its session lives.
fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID && !s.contains('.')
}

/// The longest server or session id taken (sockjs-client sends 8 characters, and a UUID is 36).
pub const MAX_ID: usize = 128;

/// What `path` names under `base` (the route's path, without a trailing slash); None when the
/// path is not under it.
pub fn resource<'a>(base: &str, path: &'a str) -> Option<Resource<'a>> {
    let base = base.trim_end_matches('/');
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() || rest == "/" {
        return Some(Resource::Greeting);
    }
    let rest = rest.strip_prefix('/')?;
    Some(match rest {
        "info" => Resource::Info,
        "websocket" => Resource::RawWebSocket,
        _ if is_iframe(rest) => Resource::Iframe,
        _ => {
            let mut parts = rest.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(server), Some(session), Some(t), None) if id_ok(server) && id_ok(session) => {
                    match Transport::from_path(t) {
                        Some(transport) => Resource::Session { session, transport },
                        None => Resource::NotFound,
                    }
                }
                _ => Resource::NotFound,
            }
        }
    })
}

/// `iframe.html`, `iframe-<anything of [0-9a-z._-]>.html`.
fn is_iframe(name: &str) -> bool {
    name.strip_prefix("iframe")
        .and_then(|r| r.strip_suffix(".html"))
        .is_some_and(|mid| {
            mid.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b"-._".contains(&b))
        })
}

/// The greeting at the base URL.
pub const GREETING: &str = "Welcome to SockJS!\n";

/// The open frame.
pub const OPEN: &[u8] = b"o";
/// The heartbeat frame.
pub const HEARTBEAT: &[u8] = b"h";

/// Code points that some browser or proxy mangles inside a JS string: they go as `\uXXXX`
/// (the suite's `escapable_by_server`; astral code points go as their UTF-16 surrogates, as
/// the reference server writes them).
fn escapable(c: char) -> bool {
    matches!(c,
        '\u{200c}'..='\u{200f}'
        | '\u{2028}'..='\u{202f}'
        | '\u{2060}'..='\u{206f}'
        | '\u{fff0}'..='\u{ffff}'
    ) || u32::from(c) > 0xffff
}

/// Appends `s` as a JSON string, with [`escapable`] code points as `\uXXXX` too.
pub fn quote_into(out: &mut BytesMut, s: &str) {
    out.put_u8(b'"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&[u8]> = match c {
            '"' => Some(b"\\\""),
            '\\' => Some(b"\\\\"),
            '\n' => Some(b"\\n"),
            '\r' => Some(b"\\r"),
            '\t' => Some(b"\\t"),
            '\u{8}' => Some(b"\\b"),
            '\u{c}' => Some(b"\\f"),
            _ => None,
        };
        if esc.is_none() && !escapable(c) && u32::from(c) >= 0x20 {
            continue;
        }
        out.put_slice(&s.as_bytes()[start..i]);
        match esc {
            Some(e) => out.put_slice(e),
            None => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.put_slice(format!("\\u{u:04x}").as_bytes());
                }
            }
        }
        start = i + c.len_utf8();
    }
    out.put_slice(&s.as_bytes()[start..]);
    out.put_u8(b'"');
}

/// A JSON string for `s` (see [`quote_into`]).
pub fn quote(s: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(s.len() + 2);
    quote_into(&mut out, s);
    out.freeze()
}

/// A message frame: `a[...]` of the messages' quoted texts (each already a JSON string).
pub fn array_frame<'a>(quoted: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(b"a[");
    for (i, q) in quoted.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(q);
    }
    out.put_u8(b']');
    out.freeze()
}

/// The close frame `c[code,"reason"]`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(reason.len() + 12);
    out.put_slice(format!("c[{code},").as_bytes());
    quote_into(&mut out, reason);
    out.put_u8(b']');
    out.freeze()
}

/// What `xhr_streaming` sends before its first frame: 2048 `h` and a newline, so that IE's
/// XDomainRequest (and proxies that buffer) let the stream through.
pub fn xhr_streaming_prelude() -> Bytes {
    let mut b = BytesMut::with_capacity(2049);
    b.put_bytes(b'h', 2048);
    b.put_u8(b'\n');
    b.freeze()
}

/// What an `eventsource` stream sends before its first frame.
pub const EVENTSOURCE_PRELUDE: &[u8] = b"\r\n";

/// The `htmlfile` page before its first frame: it hands each frame to
/// `parent.<callback>`, padded to at least 1 KiB so that browsers start rendering it.
pub fn htmlfile_prelude(callback: &str) -> Bytes {
    // Padded as the reference server pads it: by the template's length, before the callback.
    let pad = (1024 + 13usize).saturating_sub(HTMLFILE.len());
    let page = HTMLFILE.replace("{{ callback }}", callback);
    let mut b = BytesMut::with_capacity(page.len() + pad + 4);
    b.put_slice(page.as_bytes());
    b.put_bytes(b' ', pad);
    b.put_slice(b"\r\n\r\n");
    b.freeze()
}

const HTMLFILE: &str = r#"<!doctype html>
<html><head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
</head><body><h2>Don't panic!</h2>
  <script>
    document.domain = document.domain;
    var c = parent.{{ callback }};
    c.start();
    function p(d) {c.message(d);};
    window.onload = function() {c.stop();};
  </script>"#;

/// How a transport carries one frame.
pub fn wrap(transport: Transport, callback: &str, frame: &[u8]) -> Bytes {
    let text = std::str::from_utf8(frame).unwrap_or_default();
    let mut out = BytesMut::with_capacity(frame.len() + 32);
    match transport {
        Transport::Xhr | Transport::XhrStreaming => {
            out.put_slice(frame);
            out.put_u8(b'\n');
        }
        Transport::EventSource => {
            // sockjs-client decodes each event with decodeURI: `%` (and the line breaks and
            // NUL an event cannot carry) go percent-encoded.
            out.put_slice(b"data: ");
            for b in frame {
                match b {
                    b'%' => out.put_slice(b"%25"),
                    b'\r' => out.put_slice(b"%0D"),
                    b'\n' => out.put_slice(b"%0A"),
                    0 => out.put_slice(b"%00"),
                    b => out.put_u8(*b),
                }
            }
            out.put_slice(b"\r\n\r\n");
        }
        Transport::HtmlFile => {
            out.put_slice(b"<script>\np(");
            quote_into(&mut out, text);
            out.put_slice(b");\n</script>\r\n");
        }
        Transport::Jsonp => {
            out.put_slice(b"/**/");
            out.put_slice(callback.as_bytes());
            out.put_u8(b'(');
            quote_into(&mut out, text);
            out.put_slice(b");\r\n");
        }
        Transport::WebSocket | Transport::XhrSend | Transport::JsonpSend => out.put_slice(frame),
    }
    out.freeze()
}

/// A `c=` callback: letters, digits, `_`, `-` and `.` only (the suite's `[a-zA-Z0-9-_.]`:
/// nothing a script could be injected through), at most `max` bytes (the reference server
/// takes 32 for JSONP).
pub fn callback_ok(c: &str, max: usize) -> bool {
    !c.is_empty()
        && c.len() <= max
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// Why a client's message body was refused (both are `500` with this text, per the spec).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// No body, or JSON that is not an array.
    Empty,
    /// Not JSON, or an array with something else than strings.
    Broken,
    /// An array of more messages than one send may carry.
    TooMany,
}

impl BodyError {
    pub fn message(&self) -> &'static str {
        match self {
            Self::Empty => "Payload expected.",
            Self::Broken => "Broken JSON encoding.",
            Self::TooMany => "Too many messages in one send.",
        }
    }
}

/// The messages of an HTTP send (`xhr_send`, `jsonp_send`): a JSON array of strings, at most
/// `max_messages` of them (more is [`BodyError::TooMany`]).
pub fn parse_messages(body: &[u8], max_messages: usize) -> Result<Vec<String>, BodyError> {
    if body.is_empty() {
        return Err(BodyError::Empty);
    }
    match serde_json::from_slice::<serde_json::Value>(body).map_err(|_| BodyError::Broken)? {
        serde_json::Value::Array(items) if items.len() <= max_messages => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(BodyError::Broken),
            })
            .collect(),
        serde_json::Value::Array(_) => Err(BodyError::TooMany),
        _ => Err(BodyError::Empty),
    }
}

/// The messages of one WebSocket message from a SockJS client: a JSON array of strings, or one
/// JSON string. None when it is neither (the reference server then closes with
/// `3000 Broken framing.`).
pub fn parse_ws_messages(text: &[u8], max_messages: usize) -> Option<Vec<String>> {
    match serde_json::from_slice::<serde_json::Value>(text).ok()? {
        serde_json::Value::String(s) => Some(vec![s]),
        serde_json::Value::Array(items) if items.len() <= max_messages => items
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// The body of a `jsonp_send`: a form's `d=` field (`application/x-www-form-urlencoded`), or
/// the raw body. None when a form has no `d`.
pub fn jsonp_payload(content_type: &str, body: &[u8]) -> Option<Vec<u8>> {
    let form = content_type.split(';').next().is_some_and(|m| {
        m.trim()
            .eq_ignore_ascii_case("application/x-www-form-urlencoded")
    });
    if !form {
        return Some(body.to_vec());
    }
    super::http::form_field(body, b"d")
}

/// The `/info` answer.
pub fn info(websocket: bool, cookie_needed: bool, entropy: u32) -> String {
    format!(
        "{{\"websocket\":{websocket},\"origins\":[\"*:*\"],\"cookie_needed\":{cookie_needed},\"entropy\":{entropy}}}"
    )
}

/// The `iframe.html` page: it loads sockjs-client from `client_url` and lets a page on another
/// origin use the transports that need the gateway's own origin.
pub fn iframe_page(client_url: &str) -> String {
    let url = client_url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    IFRAME.replace("{{ sockjs_url }}", &url)
}

const IFRAME: &str = r#"<!DOCTYPE html>
<html>
<head>
  <meta http-equiv="X-UA-Compatible" content="IE=edge" />
  <meta http-equiv="Content-Type" content="text/html; charset=UTF-8" />
  <script src="{{ sockjs_url }}"></script>
  <script>
    document.domain = document.domain;
    SockJS.bootstrap_iframe();
  </script>
</head>
<body>
  <h2>Don't panic!</h2>
  <p>This is a SockJS hidden iframe. It's used for cross domain magic.</p>
</body>
</html>"#;

/// A strong, stable entity tag for `body` (FNV-1a, 64 bits), quoted.
pub fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_the_base() {
        let r = |p| resource("/echo", p);
        assert_eq!(r("/echo"), Some(Resource::Greeting));
        assert_eq!(r("/echo/"), Some(Resource::Greeting));
        assert_eq!(r("/echo/info"), Some(Resource::Info));
        assert_eq!(r("/echo/iframe.html"), Some(Resource::Iframe));
        assert_eq!(r("/echo/iframe-1.6.1.html"), Some(Resource::Iframe));
        assert_eq!(r("/echo/iframe-a_b.html"), Some(Resource::Iframe));
        assert_eq!(r("/echo/iframe-A.html"), Some(Resource::NotFound));
        assert_eq!(r("/echo/websocket"), Some(Resource::RawWebSocket));
        assert_eq!(
            r("/echo/000/abc/xhr"),
            Some(Resource::Session {
                session: "abc",
                transport: Transport::Xhr
            })
        );
        for bad in [
            "/echo/a.b/abc/xhr",
            "/echo/000/a.b/xhr",
            "/echo//abc/xhr",
            "/echo/000//xhr",
            "/echo/000/abc/nope",
            "/echo/000/abc/xhr/",
            "/echo/000/abc",
        ] {
            assert_eq!(r(bad), Some(Resource::NotFound), "{bad}");
        }
        let long = format!("/echo/000/{}/xhr", "s".repeat(MAX_ID + 1));
        assert_eq!(
            r(&long),
            Some(Resource::NotFound),
            "a session id past MAX_ID"
        );
        assert_eq!(r("/echoes/info"), None);
        assert_eq!(resource("/", "/info"), Some(Resource::Info));
    }

    #[test]
    fn frames_and_wrappers() {
        let q = quote("a\"b\\c\n\u{2028}é\u{ffff}");
        assert_eq!(&q[..], "\"a\\\"b\\\\c\\n\\u2028é\\uffff\"".as_bytes());
        let a = array_frame([&quote("x")[..], &quote("y")[..]]);
        assert_eq!(&a[..], b"a[\"x\",\"y\"]");
        assert_eq!(&close_frame(3000, "Go away!")[..], b"c[3000,\"Go away!\"]");
        assert_eq!(&wrap(Transport::Xhr, "", b"o")[..], b"o\n");
        assert_eq!(
            &wrap(Transport::EventSource, "", b"o")[..],
            b"data: o\r\n\r\n"
        );
        assert_eq!(
            &wrap(Transport::EventSource, "", b"a[\"100%\"]")[..],
            b"data: a[\"100%25\"]\r\n\r\n"
        );
        assert_eq!(
            &wrap(Transport::Jsonp, "cb.x", b"a[\"x\"]")[..],
            b"/**/cb.x(\"a[\\\"x\\\"]\");\r\n"
        );
        assert_eq!(
            &wrap(Transport::HtmlFile, "", b"o")[..],
            b"<script>\np(\"o\");\n</script>\r\n"
        );
        assert_eq!(xhr_streaming_prelude().len(), 2049);
        let page = htmlfile_prelude("cb");
        assert!(page.len() > 1024);
        assert!(std::str::from_utf8(&page)
            .unwrap()
            .contains("var c = parent.cb;"));
    }

    #[test]
    fn callbacks_and_bodies() {
        assert!(callback_ok("jQuery_1.x_2-3", 32));
        assert!(!callback_ok(&"a".repeat(33), 32));
        for bad in ["", "a(b)", "a;alert(1)", "a b", "<x>", "a/b", "*", "a%28"] {
            assert!(!callback_ok(bad, 32), "{bad}");
        }
        assert_eq!(
            parse_messages(br#"["a","b"]"#, 10),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_messages(br#""a""#, 10), Err(BodyError::Empty));
        assert_eq!(parse_messages(b"[]", 10), Ok(vec![]));
        assert_eq!(parse_ws_messages(br#""a""#, 10), Some(vec!["a".into()]));
        assert_eq!(parse_ws_messages(br#"["a",1]"#, 10), None);
        assert_eq!(parse_ws_messages(b"[\"a", 10), None);
        assert_eq!(parse_messages(b"", 10), Err(BodyError::Empty));
        assert_eq!(parse_messages(b"[\"a", 10), Err(BodyError::Broken));
        assert_eq!(parse_messages(b"[1]", 10), Err(BodyError::Broken));
        assert_eq!(parse_messages(br#"["a","b"]"#, 1), Err(BodyError::TooMany));
        assert_eq!(
            jsonp_payload(
                "application/x-www-form-urlencoded",
                b"x=1&d=%5B%22a+b%22%5D"
            ),
            Some(br#"["a b"]"#.to_vec())
        );
        assert_eq!(
            jsonp_payload("text/plain", b"[\"x\"]"),
            Some(b"[\"x\"]".to_vec())
        );
        assert_eq!(
            jsonp_payload("application/x-www-form-urlencoded", b"x=1"),
            None
        );
    }

    #[test]
    fn info_and_iframe() {
        assert_eq!(
            info(false, true, 7),
            r#"{"websocket":false,"origins":["*:*"],"cookie_needed":true,"entropy":7}"#
        );
        let p = iframe_page("http://cdn.example/sockjs.js?a=1&b=\"");
        assert!(p.contains("src=\"http://cdn.example/sockjs.js?a=1&amp;b=&quot;\""));
        assert_eq!(etag(p.as_bytes()), etag(p.as_bytes()));
        assert_ne!(etag(b"a"), etag(b"b"));
    }
}
