//! The SSE backend connector: an HTTP/1.1 client (hyper) that holds a `text/event-stream`
//! request open, parses it incrementally with [`SseParser`], and publishes each event into the
//! route's hub with its `event:` name kept. On reconnect it sends `Last-Event-ID` with the last
//! id the backend gave, so a backend that supports resume fills the gap itself, and it honours
//! the backend's `retry:` as the shortest reconnect delay.

use super::feed::{connect_tcp, within_connect_timeout, Connected, Link, Outcome};
use super::private::SessionEnd;
use crate::bridge::hub::Gone;
use crate::bridge::session::Session;
use crate::config::BackendFeed;
use crate::metrics;
use crate::transport::ws::close;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// One event as the WHATWG "dispatch the event" step produces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEvent {
    /// The event type when it is not the default `message`.
    pub event: Option<String>,
    pub data: String,
}

/// An incremental `text/event-stream` parser following the WHATWG HTML rules ("Server-sent
/// events", "Interpreting an event stream"): one leading BOM is skipped; lines end in CRLF, LF
/// or CR, also when a CRLF is split across reads; `data` lines are joined with LF; `id`
/// values with NUL are ignored; `retry` takes digits only; comments and unknown fields are
/// skipped; an event without any `data` line is not dispatched; an unterminated event at the
/// end of the stream is dropped.
///
/// Bounded: an event whose data grows past `max` bytes (or a line past `max`) is discarded
/// whole and counted in [`Self::oversized`].
pub struct SseParser {
    line: Vec<u8>,
    bom_seen: bool,
    skip_lf: bool,
    /// The current line outgrew the bound and is being skipped to its end.
    skip_line: bool,
    data: String,
    has_data: bool,
    event: String,
    /// The "last event ID buffer": set by `id:` lines.
    id_buffer: String,
    /// The event source's "last event ID string": the buffer as of the last dispatch.
    last_id: String,
    discarding: bool,
    max: usize,
    /// The last valid `retry:` value, in milliseconds.
    pub retry: Option<u64>,
    pub oversized: u64,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    pub fn new(max: usize) -> Self {
        Self::resuming(max, String::new())
    }

    /// A parser for a reconnected stream that continues from `last_id`.
    pub fn resuming(max: usize, last_id: String) -> Self {
        Self {
            line: Vec::new(),
            bom_seen: false,
            skip_lf: false,
            skip_line: false,
            data: String::new(),
            has_data: false,
            event: String::new(),
            id_buffer: last_id.clone(),
            last_id,
            discarding: false,
            max,
            retry: None,
            oversized: 0,
        }
    }

    /// The event source's "last event ID string": what to send as `Last-Event-ID`.
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    /// Feeds bytes as they arrive; complete events are appended to `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<ParsedEvent>) {
        if !self.bom_seen {
            // The BOM may arrive split across reads: hold up to three bytes until it is decided.
            let take = (BOM.len() - self.line.len()).min(chunk.len());
            self.line.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.line.len() < BOM.len() && BOM.starts_with(&self.line) {
                return;
            }
            self.bom_seen = true;
            let held = std::mem::take(&mut self.line);
            let held = held.strip_prefix(BOM).unwrap_or(&held);
            self.scan(held, out);
        }
        self.scan(chunk, out);
    }

    fn scan(&mut self, mut rest: &[u8], out: &mut Vec<ParsedEvent>) {
        if self.skip_lf && !rest.is_empty() {
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
            self.skip_lf = false;
        }
        while let Some(i) = rest.iter().position(|b| *b == b'\n' || *b == b'\r') {
            self.add_to_line(&rest[..i]);
            if !std::mem::replace(&mut self.skip_line, false) {
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, out);
                self.line = line;
            }
            self.line.clear();
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => rest = &rest[i + 2..],
                    Some(_) => rest = &rest[i + 1..],
                    None => {
                        self.skip_lf = true;
                        rest = &[];
                    }
                }
            } else {
                rest = &rest[i + 1..];
            }
        }
        self.add_to_line(rest);
    }

    fn add_to_line(&mut self, bytes: &[u8]) {
        if self.skip_line || self.line.len() + bytes.len() > self.max + 16 {
            // A line this long cannot fit in an event we would keep.
            self.discarding = true;
            self.skip_line = true;
            self.line.clear();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<ParsedEvent>) {
        if line.is_empty() {
            return self.dispatch(out);
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        // Line ends never fall inside a UTF-8 sequence, so decoding per line is exact.
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    self.discarding = true;
                }
                if !self.discarding {
                    self.data.push_str(&value);
                    self.data.push('\n');
                }
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.id_buffer = value.into_owned(),
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<ParsedEvent>) {
        self.last_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        let mut data = std::mem::take(&mut self.data);
        let has_data = std::mem::replace(&mut self.has_data, false);
        if std::mem::replace(&mut self.discarding, false) {
            self.oversized += 1;
            return;
        }
        if !has_data {
            return;
        }
        data.pop();
        out.push(ParsedEvent {
            event: (!event.is_empty() && event != "message").then_some(event),
            data,
        });
    }
}

/// What survives a reconnect: where the backend's stream was, and how long it asked us to wait.
#[derive(Default)]
pub struct Resume {
    pub last_id: String,
    pub retry: Option<Duration>,
}

/// An open event stream: the response body, and the connection task that ends with it.
pub struct Opened {
    pub body: hyper::body::Incoming,
    _driver: AbortOnDrop<Result<(), hyper::Error>>,
}

/// Opens the backend's event stream with the configured headers plus `extra` (a client's
/// forwarded headers), resuming after `last_id` when it is not empty. Only a 200 with
/// `text/event-stream` counts as open.
pub async fn connect(
    feed: &BackendFeed,
    extra: &[(HeaderName, HeaderValue)],
    last_id: &str,
) -> Result<Opened, Outcome> {
    let mut request = http::Request::get(feed.path.as_str())
        .header(http::header::HOST, feed.authority.as_str())
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::CACHE_CONTROL, "no-cache");
    if !last_id.is_empty() {
        request = request.header("last-event-id", last_id);
    }
    for (name, value) in feed.headers.iter().chain(extra) {
        request = request.header(name, value);
    }
    let request = match request.body(Empty::<Bytes>::new()) {
        Ok(r) => r,
        Err(e) => return Err(Outcome::ConnectFailed(format!("bad request: {e}"))),
    };
    let connect = async {
        let tcp = connect_tcp(feed).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let driver = tokio::spawn(conn);
        let response = sender.send_request(request).await;
        Ok::<_, String>((response, driver))
    };
    let (response, driver) = within_connect_timeout(feed, connect).await?;
    // The connection task ends with the stream, whichever way it goes.
    let driver = AbortOnDrop(driver);
    let response = match response {
        Ok(r) => r,
        Err(e) => return Err(Outcome::ConnectFailed(format!("request: {e}"))),
    };
    if response.status() != http::StatusCode::OK {
        return Err(Outcome::ConnectFailed(format!(
            "answered {} instead of 200",
            response.status()
        )));
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("text/event-stream")
    {
        return Err(Outcome::ConnectFailed(format!(
            "answered Content-Type {content_type:?}, not text/event-stream"
        )));
    }
    Ok(Opened {
        body: response.into_body(),
        _driver: driver,
    })
}

pub async fn session(link: &Link, feed: &BackendFeed, resume: &mut Resume) -> Outcome {
    let route = link.route_name();
    let opened = match connect(feed, &[], &resume.last_id).await {
        Ok(o) => o,
        Err(failed) => return failed,
    };
    let _connected = Connected::new(route);
    log::info!("route {route}: connected to backend {}", feed.url);
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[route]);
    let mut body = opened.body;
    let mut parser = SseParser::resuming(
        link.route.limits.max_message as usize,
        resume.last_id.clone(),
    );
    let mut events = Vec::new();
    let mut linger = tokio::time::interval(link.linger_check());
    let idle = link.route.keepalive.idle_timeout;
    let quiet_limit = if idle.is_zero() {
        Duration::from_secs(86_400 * 365)
    } else {
        idle
    };
    let mut quiet = Box::pin(tokio::time::sleep(quiet_limit));
    let mut messages = 0u64;
    let ended = |reason: String, messages| Outcome::Ended {
        code: close::SERVICE_RESTART,
        reason,
        messages,
    };
    loop {
        tokio::select! {
            frame = body.frame() => {
                let data = match frame {
                    None => return ended("backend ended the event stream".into(), messages),
                    Some(Err(e)) => return ended(format!("backend connection lost: {e}"), messages),
                    Some(Ok(f)) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                quiet.as_mut().reset(tokio::time::Instant::now() + quiet_limit);
                parser.push(&data, &mut events);
                resume.last_id.clone_from(&parser.last_id);
                if let Some(ms) = parser.retry {
                    resume.retry = Some(Duration::from_millis(ms));
                }
                for e in events.drain(..) {
                    messages += 1;
                    received.inc();
                    link.hub.publish_named(e.event.map(Into::into), Bytes::from(e.data), false);
                }
                if parser.oversized > 0 {
                    log::warn!("route {route}: dropped {} backend events larger than max_message", parser.oversized);
                    parser.oversized = 0;
                }
            }
            _ = linger.tick() => {
                if link.should_close() {
                    return Outcome::Idle;
                }
            }
            // A half-open connection shows as silence: reconnect, resuming with Last-Event-ID.
            _ = &mut quiet => {
                return Outcome::Recycled(format!("it sent nothing for idle_timeout {idle:?}"));
            }
        }
    }
}

/// Runs one per-client session's event stream: each event into the session's outbox (waiting
/// while the client is behind) until the stream ends or the client side ends the session.
pub async fn drive_session(
    mut opened: Opened,
    session: &Session,
    max_message: usize,
) -> SessionEnd {
    let received = metrics::BACKEND_MESSAGES.with_label_values(&[&session.route]);
    let mut parser = SseParser::new(max_message);
    let mut events = Vec::new();
    let client_end = session.ended_by_client();
    tokio::pin!(client_end);
    loop {
        let frame = tokio::select! {
            frame = opened.body.frame() => frame,
            why = &mut client_end => return SessionEnd::Client(why),
        };
        let data = match frame {
            None => {
                return SessionEnd::Backend(Gone {
                    code: close::NORMAL,
                    reason: "backend ended the event stream".into(),
                })
            }
            Some(Err(e)) => {
                return SessionEnd::Backend(Gone {
                    code: close::SERVICE_RESTART,
                    reason: format!("backend connection lost: {e}"),
                })
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
        };
        parser.push(&data, &mut events);
        for e in events.drain(..) {
            received.inc();
            // `session` and `closed` are the gateway's own events on a session's stream.
            let event = e.event.map(|name| match name.as_str() {
                "session" | "closed" => format!("backend.{name}").into(),
                _ => name.into(),
            });
            tokio::select! {
                _ = session.outbox.push(event, Bytes::from(e.data), false) => {}
                why = &mut client_end => return SessionEnd::Client(why),
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<ParsedEvent>, SseParser) {
        let mut p = SseParser::new(1 << 20);
        let mut out = Vec::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        (out, p)
    }

    fn parse(s: &str) -> Vec<ParsedEvent> {
        parse_chunks(&[s.as_bytes()]).0
    }

    fn msg(data: &str) -> ParsedEvent {
        ParsedEvent {
            event: None,
            data: data.into(),
        }
    }

    #[test]
    fn data_lines_are_joined_with_lf() {
        assert_eq!(parse("data: a\ndata: b\n\n"), [msg("a\nb")]);
        assert_eq!(
            parse("data:a\ndata:  b\n\n"),
            [msg("a\n b")],
            "one space is removed"
        );
        assert_eq!(
            parse("data\n\n"),
            [msg("")],
            "a field without colon has an empty value"
        );
        assert_eq!(parse("data:\ndata:\n\n"), [msg("\n")]);
    }

    #[test]
    fn every_line_ending_counts_even_split_across_reads() {
        assert_eq!(
            parse("data: a\r\n\r\ndata: b\r\rdata: c\n\n"),
            [msg("a"), msg("b"), msg("c")]
        );
        // CR at the end of one read, LF at the start of the next: one line end, not two.
        let (out, _) = parse_chunks(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(out, [msg("a\nb")]);
        // Byte by byte gives the same events.
        let text = b"event: x\r\ndata: 1\r\n\r\ndata: 2\r\r";
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        let (out, _) = parse_chunks(&bytes);
        assert_eq!(
            out,
            [
                ParsedEvent {
                    event: Some("x".into()),
                    data: "1".into()
                },
                msg("2")
            ]
        );
    }

    #[test]
    fn a_leading_bom_is_skipped_once_even_when_split() {
        let (out, _) = parse_chunks(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(out, [msg("a")]);
        // A second BOM is data of the field name and makes the line unknown.
        let (out, _) = parse_chunks(&[b"\xEF\xBB\xBF\xEF\xBB\xBFdata: a\n\ndata: b\n\n"]);
        assert_eq!(out, [msg("b")]);
        // Fewer than three bytes that only start like a BOM are kept as text.
        let (out, _) = parse_chunks(&[b"da", b"ta: x\n\n"]);
        assert_eq!(out, [msg("x")]);
    }

    #[test]
    fn comments_unknown_fields_and_events_without_data() {
        assert_eq!(parse(": hello\nfoo: bar\ndata: a\n\n"), [msg("a")]);
        assert!(parse("event: x\n\n").is_empty(), "no data, no dispatch");
        assert!(parse("id: 7\n\n").is_empty());
        // The event name is reset even when nothing was dispatched.
        assert_eq!(parse("event: x\n\ndata: a\n\n"), [msg("a")]);
        assert_eq!(parse("event: message\ndata: a\n\n"), [msg("a")]);
        assert_eq!(parse("event:\ndata: a\n\n"), [msg("a")]);
    }

    #[test]
    fn an_unterminated_event_at_the_end_is_not_dispatched() {
        assert!(parse("data: a\n").is_empty());
        assert!(parse("data: a").is_empty());
    }

    #[test]
    fn ids_and_retry() {
        let (_, p) = parse_chunks(&[b"id: 41\ndata: a\n\n"]);
        assert_eq!(p.last_event_id(), "41");
        let (_, p) = parse_chunks(&[b"id: 41\n\nid: a\0b\n\n"]);
        assert_eq!(p.last_event_id(), "41", "an id with NUL is ignored");
        let (_, p) = parse_chunks(&[b"id: 41\n\nid\n\n"]);
        assert_eq!(p.last_event_id(), "", "an empty id resets it");
        // The id counts once its event is dispatched, not when its line is read.
        let (_, p) = parse_chunks(&[b"id: 41\ndata: a\n\nid: 42\ndata: b\n"]);
        assert_eq!(p.last_event_id(), "41");
        // A reconnected stream keeps the position until the backend gives a new id.
        let mut p = SseParser::resuming(1 << 20, "41".into());
        let mut out = Vec::new();
        p.push(b"retry: 10\n\n: ok\n\ndata: c\n\n", &mut out);
        assert_eq!((out.len(), p.last_event_id()), (1, "41"));
        let (_, p) = parse_chunks(&[b"retry: 1500\n\nretry: 12a\n\nretry: \n\n"]);
        assert_eq!(p.retry, Some(1500), "non-digits are ignored");
    }

    #[test]
    fn unicode_and_invalid_utf8() {
        assert_eq!(
            parse("data: h\u{e9}llo \u{1F600}\n\n"),
            [msg("h\u{e9}llo \u{1F600}")]
        );
        // A multi-byte character split across reads is put back together.
        let s = "data: \u{1F600}\n\n".as_bytes();
        let (out, _) = parse_chunks(&[&s[..8], &s[8..]]);
        assert_eq!(out, [msg("\u{1F600}")]);
        assert_eq!(parse_chunks(&[b"data: \xff\n\n"]).0, [msg("\u{FFFD}")]);
    }

    #[test]
    fn oversized_events_are_dropped_whole() {
        let mut p = SseParser::new(8);
        let mut out = Vec::new();
        p.push(b"data: 12345\ndata: 67890\n\ndata: ok\n\n", &mut out);
        assert_eq!(out, [msg("ok")]);
        assert_eq!(p.oversized, 1);
        p.push(&[b'x'; 100], &mut out);
        p.push(b"\n\ndata: fine\n\n", &mut out);
        assert_eq!(out, [msg("ok"), msg("fine")]);
    }
}
