//! Server-Sent Events framing (WHATWG HTML, "Server-sent events"): the encoder for events the
//! gateway sends, and the incremental parser for streams it reads from SSE backends. One copy
//! of each, so the round trip is tested here. Pure: no I/O, no routes.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};

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
    /// With [`Self::with_ids`]: each dispatched event's "last event ID string", in order.
    ids: Option<Vec<String>>,
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
            ids: None,
        }
    }

    /// Also records the id each event was dispatched with ([`Self::take_ids`]): a reader that
    /// stores a position per event (the cluster resumes an SSE backend from it) needs the id
    /// of every event, not only of the last one a read brought.
    pub fn with_ids(mut self) -> Self {
        self.ids = Some(Vec::new());
        self
    }

    /// The ids of the events dispatched since the last call, one per event in `out`'s order.
    pub fn take_ids(&mut self) -> Vec<String> {
        self.ids.as_mut().map(std::mem::take).unwrap_or_default()
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
        if let Some(ids) = &mut self.ids {
            ids.push(self.last_id.clone());
        }
        out.push(ParsedEvent {
            event: (!event.is_empty() && event != "message").then_some(event),
            data,
        });
    }
}

/// One SSE event: `id: EPOCH-SEQ`, the event name when there is one, the payload as `data:`
/// lines (binary as base64 under `event: binary`), and the blank line that dispatches it.
pub fn encode_event(
    epoch: &str,
    seq: u64,
    event: Option<&str>,
    payload: &[u8],
    binary: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 48);
    out.put_slice(format!("id: {epoch}-{}\n", seq).as_bytes());
    if let (Some(name), false) = (event, binary) {
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
    }
    if binary {
        out.put_slice(b"event: binary\ndata: ");
        out.put_slice(
            base64::engine::general_purpose::STANDARD
                .encode(payload)
                .as_bytes(),
        );
        out.put_u8(b'\n');
    } else {
        put_data_lines(&mut out, payload);
    }
    out.put_u8(b'\n');
    out.freeze()
}

/// Splits a payload on CRLF, CR or LF into `data:` lines; the client joins them back with LF.
fn put_data_lines(out: &mut BytesMut, payload: &[u8]) {
    let mut rest = payload;
    loop {
        let end = rest.iter().position(|b| *b == b'\n' || *b == b'\r');
        out.put_slice(b"data: ");
        match end {
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                return;
            }
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
        }
    }
}

/// Parses `EPOCH-SEQ` when EPOCH is the hub's current one.
pub fn resume_position(last_event_id: &str, epoch: &str) -> Option<u64> {
    let (e, seq) = last_event_id.trim().rsplit_once('-')?;
    if e != epoch {
        return None;
    }
    seq.parse().ok()
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

    fn enc(epoch: &str, m: (u64, Option<&str>, impl AsRef<[u8]>, bool)) -> Bytes {
        encode_event(epoch, m.0, m.1, m.2.as_ref(), m.3)
    }

    #[test]
    fn multi_line_payloads_become_several_data_lines() {
        let m = (3, None, b"a\nb\r\nc\rd", false);
        assert_eq!(
            &enc("e", m)[..],
            b"id: e-3\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let m = (4, None, b"", false);
        assert_eq!(&enc("e", m)[..], b"id: e-4\ndata: \n\n");
    }

    #[test]
    fn binary_is_base64_with_its_own_event_name() {
        let m = (1, None, &[0u8, 255][..], true);
        assert_eq!(&enc("e", m)[..], b"id: e-1\nevent: binary\ndata: AP8=\n\n");
    }

    #[test]
    fn event_names_from_an_sse_backend_are_kept() {
        let m = (5, Some("tick"), b"a\nb", false);
        assert_eq!(
            &enc("e", m)[..],
            b"id: e-5\nevent: tick\ndata: a\ndata: b\n\n"
        );
        // A payload that looks like fields stays data: every line gets its own `data: `.
        let m = (6, None, b"id: 9\n\nevent: x\n", false);
        assert_eq!(
            &enc("e", m)[..],
            b"id: e-6\ndata: id: 9\ndata: \ndata: event: x\ndata: \n\n"
        );
    }

    #[test]
    fn encoder_output_parses_back_to_the_payload() {
        for payload in [
            "",
            "one",
            "a\nb",
            "a\r\nb\rc",
            "\n\n",
            " lead",
            "h\u{e9}llo \u{1F600}",
            "data: x",
            ":colon",
        ] {
            let m = (1, None, payload, false);
            let mut p = SseParser::new(1 << 20);
            let mut out = Vec::new();
            p.push(&enc("e", m), &mut out);
            let want = payload.replace("\r\n", "\n").replace('\r', "\n");
            assert_eq!(out.len(), 1, "{payload:?}");
            assert_eq!(out[0].data, want, "{payload:?}");
            assert_eq!(p.last_event_id(), "e-1");
        }
    }

    #[test]
    fn resume_only_within_the_same_epoch() {
        assert_eq!(resume_position("abc-41", "abc"), Some(41));
        assert_eq!(resume_position("old-41", "abc"), None);
        assert_eq!(resume_position("garbage", "abc"), None);
    }

    #[test]
    fn each_event_keeps_the_id_it_was_dispatched_with() {
        let mut p = SseParser::new(1024).with_ids();
        let mut out = Vec::new();
        p.push(
            b"id: 1\ndata: a\n\ndata: b\n\nid: 3\ndata: c\n\nid: 4\n",
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(
            p.take_ids(),
            ["1", "1", "3"],
            "b has no id line: it keeps a's"
        );
        assert_eq!(
            p.last_event_id(),
            "3",
            "an id without an event is not dispatched"
        );
        p.push(b"data: d\n\n", &mut out);
        assert_eq!(p.take_ids(), ["4"]);
        let mut plain = SseParser::new(1024);
        plain.push(b"id: 9\ndata: x\n\n", &mut out);
        assert!(plain.take_ids().is_empty(), "not recorded unless asked");
    }
}
