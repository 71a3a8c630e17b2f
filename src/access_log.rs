//! The access log (`server.access_log`): one line per answered request and one per finished
//! stream, as JSON or Apache's combined format, written off the hot path.
//!
//! ```text
//! entry point (gateway: pingora's logging hook, the edge's serve_stream)
//!   Head::capture (before a stream frees its request head) + status + Notes (refusal reason,
//!   a transport's StreamEnd) -> Record -> submit: try_send on a bounded queue
//!     full (ACCESS_LOG_QUEUE lines or ACCESS_LOG_QUEUE_BYTES) -> dropped, counted
//!   -> the writer thread: formats, batches what is queued, one write, flush (stdout or a file
//!      in append mode, reopened on SIGUSR1)
//! ```
//!
//! A connection never waits for the log: a writer that falls behind (a slow disk, a pipe nobody
//! reads) costs dropped lines, counted in `switchyard_access_log_dropped_total`, never latency.
//! Nothing is copied for the log while it is off.
//!
//! What is logged: the path without its query string (tokens travel there), and of the request
//! headers only `Referer` (without its query string and fragment) and `User-Agent`, both
//! truncated; no other header value, so no cookie or credential reaches the log. `time` is when
//! the request head was read (Apache's `%t`); a stream's line is written when it ends.
//!
//! It sits at the bottom of the module graph, beside `metrics`: any layer may note facts, and
//! the server configures it (at start and on each reload) and reopens it.

use crate::config::{AccessLogConfig, AccessLogFormat, AccessLogTarget};
use crate::metrics;
use arc_swap::ArcSwapOption;
use pingora::http::RequestHeader;
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines queued for the writer at most.
pub const ACCESS_LOG_QUEUE: usize = 8192;
/// Bytes of queued lines (estimated from their text fields) at most, so long paths cannot make
/// the queue large.
pub const ACCESS_LOG_QUEUE_BYTES: usize = 4 << 20;
/// Longest path, `Referer` and `User-Agent` kept (longer ones are cut, marked with `...`).
const MAX_PATH: usize = 2048;
const MAX_HEADER: usize = 512;
/// The writer writes once this much is buffered, and at once whenever the queue is empty.
const WRITE_BUFFER: usize = 64 * 1024;
/// How often an idle writer looks for a reopen request.
const IDLE_WAKE: Duration = Duration::from_millis(200);
/// After writing what was queued, the writer lets lines gather this long before it looks
/// again: under load it wakes about 50 times a second instead of once per line, which on a
/// busy core is a context switch taken from the connections per request. A line reaches the
/// file at most this much later; the queue holds 8,192 lines, far more than arrive meanwhile.
const GATHER: Duration = Duration::from_millis(20);

/// Who ended a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Closer {
    Client,
    Backend,
    Gateway,
}

impl Closer {
    pub fn label(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Backend => "backend",
            Self::Gateway => "gateway",
        }
    }
}

/// What a finished stream carried, told by the transport that served it. Counts are the ones
/// its metrics were flushed from (`metrics::Delivered` and the like), not a second tally.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamEnd {
    pub transport: &'static str,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    /// The WebSocket close code (1006 when the connection ended without a close frame).
    pub close_code: Option<u16>,
    pub closed_by: Option<Closer>,
}

/// What the entry point learns while a request is served, beyond its head and status.
#[derive(Debug, Default)]
pub struct Notes {
    /// The refusal's reason (the `reason` label of `switchyard_rejections_total`).
    pub refused: Option<&'static str>,
    /// Boxed: a lean connection carries these notes for as long as its stream lasts.
    pub stream: Option<Box<StreamEnd>>,
}

impl Notes {
    pub fn stream_ended(&mut self, end: StreamEnd) {
        if enabled() {
            self.stream = Some(Box::new(end));
        }
    }
}

/// What the log keeps of a request head, taken before the request is served (a stream frees
/// its head).
#[derive(Debug, Clone)]
pub struct Head {
    pub time: SystemTime,
    pub began: Instant,
    pub client: Option<IpAddr>,
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub referer: Option<String>,
    pub user_agent: Option<String>,
    /// `http`, `tunnel`, or the streaming transport the request asks for (a stream's own
    /// [`StreamEnd`] has the last word).
    pub transport: &'static str,
}

impl Head {
    /// None while the log is off: nothing is copied then.
    pub fn capture(
        req: &RequestHeader,
        client: Option<IpAddr>,
        transport: &'static str,
        since: Option<(SystemTime, Instant)>,
    ) -> Option<Box<Head>> {
        if !enabled() {
            return None;
        }
        let (time, began) = since.unwrap_or_else(|| (SystemTime::now(), Instant::now()));
        let header = |name: &str| {
            req.headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let protocol = match req.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2.0",
            http::Version::HTTP_3 => "HTTP/3.0",
            _ => "HTTP/1.1",
        };
        Some(Box::new(Head {
            time,
            began,
            client,
            method: req.method.as_str().to_owned(),
            path: cut(logged_path(req.uri.path(), transport), MAX_PATH),
            protocol,
            referer: header("referer").map(|r| {
                let end = r.find(['?', '#']).unwrap_or(r.len());
                cut(r[..end].to_owned(), MAX_HEADER)
            }),
            user_agent: header("user-agent").map(|u| cut(u, MAX_HEADER)),
            transport,
        }))
    }
}

/// The path as logged: a SockJS session URL (`BASE/SERVER/SESSION/TRANSPORT`) with its session
/// id masked, since whoever reads the log could otherwise send into or read a live session
/// from the same address.
fn logged_path(path: &str, transport: &str) -> String {
    if transport == "sockjs" {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() >= 4 {
            let n = parts.len();
            let mut masked = parts[..n - 2].join("/");
            masked.push_str("/-/");
            masked.push_str(parts[n - 1]);
            return masked;
        }
    }
    path.to_owned()
}

/// `s` cut to at most `max` bytes (at a character boundary), marked with `...` when cut.
fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
    s
}

/// One line of the log.
#[derive(Debug)]
pub struct Record {
    pub head: Box<Head>,
    /// `-` when no route was found.
    pub route: String,
    /// None when nothing was answered (the client went away first).
    pub status: Option<u16>,
    pub duration: Duration,
    /// Body bytes of a plain request each way (a stream's are in its [`StreamEnd`]).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub notes: Notes,
}

impl Record {
    fn weight(&self) -> usize {
        let h = &self.head;
        256 + h.path.len()
            + h.referer.as_ref().map_or(0, String::len)
            + h.user_agent.as_ref().map_or(0, String::len)
            + self.route.len()
    }
}

/// The log in force: where records go.
struct Sink {
    tx: SyncSender<Box<Record>>,
    config: AccessLogConfig,
}

static SINK: ArcSwapOption<Sink> = ArcSwapOption::const_empty();
/// Estimated bytes of the records queued now (see [`ACCESS_LOG_QUEUE_BYTES`]).
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Lines queued since start, and lines the writers are done with (written or dropped): what
/// [`flush`] waits on.
static QUEUED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
/// Set by [`start`]: writers are started at once from then on.
static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Writers configured before [`start`] (before a daemon's fork, when no thread may be made):
/// their queues take lines already, and their threads start with the services.
#[allow(clippy::type_complexity)]
static PENDING: std::sync::Mutex<Vec<Box<dyn FnOnce() -> std::io::Result<()> + Send>>> =
    std::sync::Mutex::new(Vec::new());
/// Bumped by [`reopen`]; the writer reopens its file when it sees a new value.
static REOPENS: AtomicU64 = AtomicU64::new(0);

/// Whether the access log is on.
pub fn enabled() -> bool {
    SINK.load().is_some()
}

/// Queues one line without waiting: when the writer is behind, the line is dropped and counted.
pub fn submit(record: Record) {
    let sink = SINK.load();
    let Some(sink) = sink.as_ref() else {
        return;
    };
    let weight = record.weight();
    if QUEUED_BYTES.fetch_add(weight, Ordering::Relaxed) + weight > ACCESS_LOG_QUEUE_BYTES {
        QUEUED_BYTES.fetch_sub(weight, Ordering::Relaxed);
        metrics::ACCESS_LOG_DROPPED.inc();
        return;
    }
    QUEUED.fetch_add(1, Ordering::SeqCst);
    match sink.tx.try_send(Box::new(record)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            QUEUED_BYTES.fetch_sub(weight, Ordering::Relaxed);
            metrics::ACCESS_LOG_DROPPED.inc();
            DONE.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Waits up to `within` for every line queued so far to be written (at exit: lines a slow disk
/// or pipe held back are not lost with the process while the shutdown grace lasts). True when
/// none is left.
pub fn flush(within: Duration) -> bool {
    let target = QUEUED.load(Ordering::SeqCst);
    let until = Instant::now() + within;
    while DONE.load(Ordering::SeqCst) < target {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Logs a request head refused before it could be read as a request (pingora answers it `400`
/// before any hook runs): a probe with a control byte in a header, a non-UTF-8 target or a
/// garbage request line is seen in the log, with what can be told of it.
pub fn refused_head(client: Option<IpAddr>, began: (SystemTime, Instant), method: &[u8]) {
    if !enabled() {
        return;
    }
    let method: String = method
        .iter()
        .take(16)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '_' })
        .collect();
    submit(Record {
        head: Box::new(Head {
            time: began.0,
            began: began.1,
            client,
            method: if method.is_empty() {
                "-".into()
            } else {
                method
            },
            path: "-".into(),
            protocol: "HTTP/1.1",
            referer: None,
            user_agent: None,
            transport: "http",
        }),
        route: "-".into(),
        status: Some(400),
        duration: began.1.elapsed(),
        bytes_in: 0,
        bytes_out: 0,
        notes: Notes {
            refused: Some("bad_head"),
            stream: None,
        },
    });
}

/// Puts `config` in force: the log starts, stops, or moves to a new format or destination (a
/// new writer takes over; the old one writes what it has queued and ends). Unchanged, nothing
/// happens. When the file cannot be opened the log in force stays as it was.
pub fn configure(config: Option<&AccessLogConfig>) -> std::io::Result<()> {
    let current = SINK.load();
    if current.as_ref().map(|s| &s.config) == config {
        return Ok(());
    }
    let Some(config) = config else {
        SINK.store(None);
        return Ok(());
    };
    let out = Output::open(&config.to)?;
    let (tx, rx) = mpsc::sync_channel(ACCESS_LOG_QUEUE);
    let (format, target) = (config.format, config.to.clone());
    let writer = move || {
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx, format, target, out))
            .map(drop)
    };
    {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        if STARTED.load(Ordering::SeqCst) {
            drop(pending);
            writer()?;
        } else {
            pending.push(Box::new(writer));
        }
    }
    SINK.store(Some(Arc::new(Sink {
        tx,
        config: config.clone(),
    })));
    Ok(())
}

/// Starts the writers [`configure`] set up so far, and every later one at once. Called with
/// the services (after a daemon's fork); lines submitted before wait in their queue.
pub fn start() {
    let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
    STARTED.store(true, Ordering::SeqCst);
    for writer in pending.drain(..) {
        if let Err(e) = writer() {
            log::error!("access log: cannot start its writer: {e}");
        }
    }
}

/// Asks the writer to reopen its file (after logrotate moved it away): lines written after that
/// go to a new file at the configured path.
pub fn reopen() {
    REOPENS.fetch_add(1, Ordering::SeqCst);
}

enum Output {
    Stdout(std::io::Stdout),
    File(std::fs::File),
}

impl Output {
    fn open(to: &AccessLogTarget) -> std::io::Result<Self> {
        match to {
            AccessLogTarget::Stdout => Ok(Self::Stdout(std::io::stdout())),
            AccessLogTarget::File(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Self::File)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Stdout(s) => {
                let mut lock = s.lock();
                lock.write_all(data)?;
                lock.flush()
            }
            // Unbuffered: one write of whole lines, appended as a unit.
            Self::File(f) => f.write_all(data),
        }
    }
}

/// The writer: takes what is queued, formats it into one buffer and writes it out whenever the
/// queue runs empty (or the buffer is full), so lines reach the file at once when traffic is
/// light and in large writes when it is heavy. Ends when its sink is replaced or removed.
fn write_loop(
    rx: mpsc::Receiver<Box<Record>>,
    format: AccessLogFormat,
    target: AccessLogTarget,
    mut out: Output,
) {
    let mut buf = Vec::with_capacity(WRITE_BUFFER);
    let mut lines = 0u64;
    let mut reopens = REOPENS.load(Ordering::SeqCst);
    let mut open_failed = false;
    let mut write_failed = false;
    loop {
        let first = rx.recv_timeout(IDLE_WAKE);
        let ended = matches!(first, Err(RecvTimeoutError::Disconnected));
        let seen = REOPENS.load(Ordering::SeqCst);
        if seen != reopens {
            reopens = seen;
            if let AccessLogTarget::File(_) = target {
                match Output::open(&target) {
                    Ok(o) => {
                        out = o;
                        open_failed = false;
                        write_failed = false;
                        log::info!("access log reopened");
                    }
                    Err(e) if !open_failed => {
                        open_failed = true;
                        log::error!("access log: cannot reopen, still writing to the file that was open: {e}");
                    }
                    Err(_) => {}
                }
            }
        }
        let mut next = first.ok();
        let wrote_any = next.is_some();
        let mut full = false;
        while let Some(record) = next {
            QUEUED_BYTES.fetch_sub(record.weight(), Ordering::Relaxed);
            match format {
                AccessLogFormat::Json => json_line(&record, &mut buf),
                AccessLogFormat::Combined => combined_line(&record, &mut buf),
            }
            lines += 1;
            if buf.len() >= WRITE_BUFFER {
                full = true;
                break;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            match out.write_all(&buf) {
                Ok(()) => metrics::ACCESS_LOG_LINES.inc_by(lines),
                Err(e) => {
                    metrics::ACCESS_LOG_DROPPED.inc_by(lines);
                    if !write_failed {
                        write_failed = true;
                        log::error!("access log: write failed, lines are dropped (counted in switchyard_access_log_dropped_total): {e}");
                    }
                }
            }
            DONE.fetch_add(lines, Ordering::SeqCst);
            buf.clear();
            if buf.capacity() > 4 * WRITE_BUFFER {
                buf.shrink_to(WRITE_BUFFER);
            }
            lines = 0;
        }
        if ended {
            return;
        }
        if wrote_any && !full {
            std::thread::sleep(GATHER);
        }
    }
}

/// The facts of a record, in the order both formats give them.
#[derive(Serialize)]
struct Fields<'a> {
    time: String,
    route: &'a str,
    transport: &'static str,
    client: Option<IpAddr>,
    method: &'a str,
    path: &'a str,
    protocol: &'static str,
    status: Option<u16>,
    duration_ms: f64,
    bytes_in: u64,
    bytes_out: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages_out: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    close_code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    closed_by: Option<Closer>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    referer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_agent: Option<&'a str>,
}

fn fields(r: &Record) -> Fields<'_> {
    let h = &r.head;
    let stream = r.notes.stream.as_deref();
    Fields {
        time: rfc3339(h.time),
        route: &r.route,
        transport: stream.map_or(h.transport, |s| s.transport),
        client: h.client,
        method: &h.method,
        path: &h.path,
        protocol: h.protocol,
        status: r.status,
        duration_ms: r.duration.as_micros() as f64 / 1000.0,
        bytes_in: stream.map_or(r.bytes_in, |s| s.bytes_in),
        bytes_out: stream.map_or(r.bytes_out, |s| s.bytes_out),
        messages_in: stream.map(|s| s.messages_in),
        messages_out: stream.map(|s| s.messages_out),
        close_code: stream.and_then(|s| s.close_code),
        closed_by: stream.and_then(|s| s.closed_by),
        refused: r.notes.refused,
        referer: h.referer.as_deref(),
        user_agent: h.user_agent.as_deref(),
    }
}

/// One JSON object and a newline.
pub fn json_line(r: &Record, out: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *out, &fields(r)).is_ok() {
        out.push(b'\n');
    }
}

/// Apache's combined format (`%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"`), then
/// the other fields as `key=value` (values have no spaces or quotes), and a newline.
pub fn combined_line(r: &Record, out: &mut Vec<u8>) {
    let f = fields(r);
    let mut line = String::with_capacity(256 + f.path.len());
    use std::fmt::Write as _;
    let _ = write!(
        line,
        "{} - - [{}] \"",
        f.client.map_or_else(|| "-".to_owned(), |c| c.to_string()),
        clf_time(r.head.time)
    );
    quoted(&mut line, f.method);
    line.push(' ');
    quoted(&mut line, f.path);
    let _ = write!(line, " {}\" ", f.protocol);
    match f.status {
        Some(s) => {
            let _ = write!(line, "{s} ");
        }
        None => line.push_str("- "),
    }
    match f.bytes_out {
        0 => line.push_str("- \""),
        n => {
            let _ = write!(line, "{n} \"");
        }
    }
    quoted(&mut line, f.referer.unwrap_or("-"));
    line.push_str("\" \"");
    quoted(&mut line, f.user_agent.unwrap_or("-"));
    line.push('"');
    let _ = write!(line, " route=");
    bare(&mut line, f.route);
    let _ = write!(
        line,
        " transport={} duration_ms={} bytes_in={} bytes_out={}",
        f.transport, f.duration_ms, f.bytes_in, f.bytes_out
    );
    if let Some(n) = f.messages_in {
        let _ = write!(line, " messages_in={n}");
    }
    if let Some(n) = f.messages_out {
        let _ = write!(line, " messages_out={n}");
    }
    if let Some(c) = f.close_code {
        let _ = write!(line, " close_code={c}");
    }
    if let Some(c) = f.closed_by {
        let _ = write!(line, " closed_by={}", c.label());
    }
    if let Some(reason) = f.refused {
        let _ = write!(line, " refused={reason}");
    }
    line.push('\n');
    out.extend_from_slice(line.as_bytes());
}

/// Text inside a quoted field: `"`, `\`, controls and non-ASCII escaped as `\xHH` (as Apache
/// does), so a field can never end early or break the line.
fn quoted(line: &mut String, s: &str) {
    for b in s.bytes() {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            line.push_str(&format!("\\x{b:02x}"));
        } else {
            line.push(b as char);
        }
    }
}

/// A `key=value` value: anything but visible ASCII (and `"`) becomes `_`.
fn bare(line: &mut String, s: &str) {
    line.extend(s.chars().map(|c| {
        if c.is_ascii_graphic() && c != '"' {
            c
        } else {
            '_'
        }
    }));
}

/// (year, month, day, hour, minute, second, millisecond) in UTC.
fn utc(t: SystemTime) -> (i64, u32, u32, u64, u64, u64, u32) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (y, m, d) = crate::wire::time::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    (
        y,
        m,
        d,
        s / 3600,
        s / 60 % 60,
        s % 60,
        since.subsec_millis(),
    )
}

/// `2026-12-02T11:07:31.123Z`
fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s, ms) = utc(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
}

/// `02/Dec/2026:11:07:31 +0000` (always UTC)
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s, _) = utc(t);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stream: Option<StreamEnd>, refused: Option<&'static str>) -> Record {
        Record {
            head: Box::new(Head {
                // 2026-12-02T11:07:31.250Z
                time: UNIX_EPOCH + Duration::from_millis(1_796_209_651_250),
                began: Instant::now(),
                client: Some("10.1.2.3".parse().unwrap()),
                method: "GET".into(),
                path: "/feed \"x\"".into(),
                protocol: "HTTP/1.1",
                referer: None,
                user_agent: Some("curl/8.5.0".into()),
                transport: "http",
            }),
            route: "feed".into(),
            status: Some(101),
            duration: Duration::from_micros(12_345),
            bytes_in: 0,
            bytes_out: 0,
            notes: Notes {
                refused,
                stream: stream.map(Box::new),
            },
        }
    }

    #[test]
    fn times_are_utc_calendar_dates() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_209_651_250);
        assert_eq!(rfc3339(t), "2026-12-02T11:07:31.250Z");
        assert_eq!(clf_time(t), "02/Dec/2026:11:07:31 +0000");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // A leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_stream_line_in_both_formats() {
        let end = StreamEnd {
            transport: "websocket",
            messages_in: 2,
            bytes_in: 40,
            messages_out: 3,
            bytes_out: 120,
            close_code: Some(1000),
            closed_by: Some(Closer::Client),
        };
        let r = record(Some(end), None);
        let mut json = Vec::new();
        json_line(&r, &mut json);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["time"], "2026-12-02T11:07:31.250Z");
        assert_eq!(v["transport"], "websocket");
        assert_eq!(v["client"], "10.1.2.3");
        assert_eq!(v["path"], "/feed \"x\"");
        assert_eq!(v["duration_ms"], 12.345);
        assert_eq!(v["messages_out"], 3);
        assert_eq!(v["close_code"], 1000);
        assert_eq!(v["closed_by"], "client");
        assert!(v.get("refused").is_none() && v.get("referer").is_none());
        assert_eq!(json.iter().filter(|b| **b == b'\n').count(), 1);

        let mut clf = Vec::new();
        combined_line(&r, &mut clf);
        assert_eq!(
            String::from_utf8(clf).unwrap(),
            "10.1.2.3 - - [02/Dec/2026:11:07:31 +0000] \"GET /feed \\x22x\\x22 HTTP/1.1\" 101 120 \"-\" \"curl/8.5.0\" route=feed transport=websocket duration_ms=12.345 bytes_in=40 bytes_out=120 messages_in=2 messages_out=3 close_code=1000 closed_by=client\n"
        );
    }

    #[test]
    fn a_refusal_names_its_reason_and_secrets_stay_out() {
        let mut req = RequestHeader::build("GET", b"/chat?token=s3cret", None).unwrap();
        req.insert_header("referer", "https://app.example/page?sid=s3cret#x")
            .unwrap();
        req.insert_header("authorization", "Bearer s3cret").unwrap();
        req.insert_header("cookie", "sid=s3cret").unwrap();
        // Captured even while no log runs in this test process.
        let _on = SinkForTest::on();
        let head = Head::capture(&req, None, "http", None).unwrap();
        let mut r = record(None, Some("origin_not_allowed"));
        r.head = head;
        r.status = Some(403);
        r.bytes_out = 20;
        let mut out = Vec::new();
        json_line(&r, &mut out);
        combined_line(&r, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("\"refused\":\"origin_not_allowed\""),
            "{text}"
        );
        assert!(text.contains(" refused=origin_not_allowed\n"), "{text}");
        assert!(
            text.contains("\"GET /chat HTTP/1.1\" 403 20 \"https://app.example/page\" \"-\""),
            "{text}"
        );
    }

    /// Turns the log on (to stdout) for a test that captures heads.
    struct SinkForTest;

    impl SinkForTest {
        fn on() -> Self {
            let (tx, _rx) = mpsc::sync_channel(1);
            SINK.store(Some(Arc::new(Sink {
                tx,
                config: AccessLogConfig {
                    format: AccessLogFormat::Json,
                    to: AccessLogTarget::Stdout,
                },
            })));
            Self
        }
    }

    impl Drop for SinkForTest {
        fn drop(&mut self) {
            SINK.store(None);
        }
    }

    #[test]
    fn cut_keeps_character_boundaries() {
        assert_eq!(cut("abc".into(), 5), "abc");
        assert_eq!(cut("ééé".into(), 3), "é...");
    }
}
