//! The access log over real sockets: one line per request and per finished stream (plain HTTP
//! through a proxy route, SSE, WebSocket closed by either side, a refusal with its reason), the
//! combined format read back by a regex, SIGUSR1 reopening a renamed file, and a writer that
//! cannot keep up costing dropped lines, never stalled clients.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn access_log(format: &str, to: &Path) -> String {
    format!(
        "  access_log: {{ format: {format}, to: \"{}\" }}\n",
        to.display()
    )
}

/// Waits until `path` has at least `n` lines for which `keep` is true; returns all its lines.
async fn lines_where(path: &Path, n: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let until = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.iter().filter(|l| keep(l)).count() >= n {
            return lines;
        }
        assert!(
            Instant::now() < until,
            "{} never had {n} such lines:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn find(
    lines: &[serde_json::Value],
    what: impl Fn(&serde_json::Value) -> bool,
) -> &serde_json::Value {
    lines
        .iter()
        .find(|v| what(v))
        .unwrap_or_else(|| panic!("no such line in {lines:#?}"))
}

/// One line each for a proxied request, an SSE stream, a WebSocket the client closed, one the
/// backend closed, a pass-through WebSocket tunnel, and a refused request (with its reason); no query string or header secret
/// reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_requests_streams_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let api = HttpBackend::start("api").await;
    let feed = FeedBackend::start().await;
    let ws = WsBackend::start().await;
    let routes = format!(
        "  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n  - name: tunnel\n    path: /tunnel\n    proxy: {{ upstreams: [\"{}\"] }}\n  - name: clock\n    path: /clock\n    origins: [\"https://app.example\"]\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    backend: {{ builtin: echo }}\n  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n",
        api.addr,
        ws.addr,
        feed.url("/")
    );
    let gw = Gateway::start_with(&routes, &access_log("json", &file)).await;

    let r = http_get(
        gw.addr,
        "/api/items?token=s3cret",
        &[
            ("authorization", "Bearer s3cret"),
            ("user-agent", "probe/1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);

    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    sse.next_data_event().await;
    drop(sse);

    let (mut echo, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    echo.send(Message::text("hi")).await.unwrap();
    assert_eq!(echo.next().await.unwrap().unwrap(), Message::text("hi"));
    echo.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    while let Some(Ok(_)) = echo.next().await {}

    let (mut fed, _) = tokio_tungstenite::connect_async(gw.ws_url("/feed"))
        .await
        .unwrap();
    feed.wait_open(1).await;
    feed.send(FeedCmd::Close(4001, "maintenance".into()));
    match tokio::time::timeout(DEADLINE, fed.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected close 4001, got {other:?}"),
    }
    drop(fed);

    // A pass-through WebSocket: the tunnel reads the frame headers on the way.
    let (mut tunnelled, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel"))
        .await
        .unwrap();
    tunnelled.send(Message::text("through")).await.unwrap();
    assert_eq!(
        tunnelled.next().await.unwrap().unwrap(),
        Message::text("through")
    );
    tunnelled
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "".into(),
        }))
        .await
        .unwrap();
    while let Some(Ok(_)) = tunnelled.next().await {}
    // The tunnel ends when both sides have closed their streams.
    drop(tunnelled);

    let refused = http_get(
        gw.addr,
        "/clock",
        &[
            ("origin", "https://evil.example"),
            ("accept", "text/event-stream"),
        ],
    )
    .await;
    assert_eq!(refused.status, 403);

    lines_where(&file, 6, |l| !l.is_empty()).await;
    let lines = lines_where(&file, 1, |l| l.contains("\"route\":\"feed\"")).await;
    let text = lines.join("\n");
    assert!(!text.contains("s3cret"), "{text}");
    let v = json_lines(&lines);

    let http = find(&v, |v| v["route"] == "api");
    assert_eq!(http["transport"], "http");
    assert_eq!(http["method"], "GET");
    assert_eq!(http["path"], "/api/items");
    assert_eq!(http["status"], 200);
    assert_eq!(http["client"], "127.0.0.1");
    assert_eq!(http["user_agent"], "probe/1");
    assert!(http["bytes_out"].as_u64().unwrap() > 0, "{http}");
    assert!(http["time"].as_str().unwrap().ends_with('Z'), "{http}");
    assert!(http["duration_ms"].as_f64().is_some(), "{http}");

    let sse = find(&v, |v| v["route"] == "clock" && v["status"] == 200);
    assert_eq!(sse["transport"], "sse");
    assert!(sse["messages_out"].as_u64().unwrap() >= 1, "{sse}");
    assert!(sse["bytes_out"].as_u64().unwrap() > 0, "{sse}");
    assert_eq!(sse["closed_by"], "client");

    let echo = find(&v, |v| v["route"] == "echo");
    assert_eq!(echo["transport"], "websocket");
    assert_eq!(echo["status"], 101);
    assert_eq!(
        (&echo["messages_in"], &echo["messages_out"]),
        (&1.into(), &1.into()),
        "{echo}"
    );
    assert!(echo["bytes_in"].as_u64().unwrap() > 0, "{echo}");
    assert_eq!(echo["close_code"], 1000);
    assert_eq!(echo["closed_by"], "client");

    let fed = find(&v, |v| v["route"] == "feed");
    assert_eq!(fed["close_code"], 4001);
    assert_eq!(fed["closed_by"], "backend");

    let tunnel = find(&v, |v| v["route"] == "tunnel");
    assert_eq!(tunnel["transport"], "tunnel");
    assert_eq!(tunnel["status"], 101);
    assert_eq!(
        (&tunnel["messages_in"], &tunnel["messages_out"]),
        (&1.into(), &1.into()),
        "{tunnel}"
    );
    assert_eq!(tunnel["close_code"], 1001);
    assert_eq!(tunnel["closed_by"], "client");

    let no = find(&v, |v| v["status"] == 403);
    assert_eq!(no["route"], "clock");
    assert_eq!(no["refused"], "origin_not_allowed");
    assert_eq!(no["transport"], "sse");

    gw.wait_metric("switchyard_access_log_lines_total", 6.0)
        .await;
    gw.expect_metric("switchyard_access_log_dropped_total", 0.0)
        .await;
}

/// Apache's combined format, then `key=value` fields: every line parses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_parse_as_combined_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let api = HttpBackend::start("api").await;
    let routes = format!(
        "  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n",
        api.addr
    );
    let gw = Gateway::start_with(&routes, &access_log("combined", &file)).await;
    let ok = http_get(
        gw.addr,
        "/api/a?x=1",
        &[
            ("referer", "https://app.example/page?sid=s3cret"),
            ("user-agent", "Mozilla/5.0 (X11; \"quoted\")"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(http_get(gw.addr, "/nowhere", &[]).await.status, 404);

    let lines = lines_where(&file, 2, |l| !l.is_empty()).await;
    let clf = regex::Regex::new(
        r#"^(\S+) - - \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(\S+) (\S+) (HTTP/\d\.\d)" (\d{3}|-) (\d+|-) "((?:[^"\\]|\\x[0-9a-f]{2})*)" "((?:[^"\\]|\\x[0-9a-f]{2})*)"((?: [a-z_]+=[^ "]+)*)$"#,
    )
    .unwrap();
    let parsed: Vec<regex::Captures> = lines
        .iter()
        .map(|l| {
            clf.captures(l)
                .unwrap_or_else(|| panic!("not combined: {l}"))
        })
        .collect();
    let ok = parsed.iter().find(|c| &c[6] == "200").expect("the 200");
    assert_eq!(&ok[1], "127.0.0.1");
    assert_eq!((&ok[3], &ok[4], &ok[5]), ("GET", "/api/a", "HTTP/1.1"));
    assert!(ok[7].parse::<u64>().unwrap() > 0);
    assert_eq!(&ok[8], "https://app.example/page");
    assert_eq!(&ok[9], "Mozilla/5.0 (X11; \\x22quoted\\x22)");
    assert!(
        ok[10].contains(" route=api transport=http duration_ms="),
        "{}",
        &ok[0]
    );
    let missing = parsed.iter().find(|c| &c[6] == "404").expect("the 404");
    assert_eq!(&missing[4], "/nowhere");
    assert!(missing[10].contains(" route=- "), "{}", &missing[0]);
    assert!(
        missing[10].ends_with(" refused=no_route"),
        "{}",
        &missing[0]
    );
}

/// logrotate's `create` mode: the file is renamed, SIGUSR1 is sent, and the lines after it land
/// in a new file at the configured path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_a_renamed_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let rotated: PathBuf = dir.path().join("access.log.1");
    let routes = "  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n";
    let gw = Gateway::start_with(routes, &access_log("json", &file)).await;
    assert_eq!(http_get(gw.addr, "/before", &[]).await.status, 404);
    lines_where(&file, 1, |l| l.contains("/before")).await;

    std::fs::rename(&file, &rotated).unwrap();
    gw.signal("USR1");
    let until = Instant::now() + DEADLINE;
    while !file.exists() {
        assert!(Instant::now() < until, "no new file after SIGUSR1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(http_get(gw.addr, "/after", &[]).await.status, 404);
    lines_where(&file, 1, |l| l.contains("/after")).await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/before") && !old.contains("/after"), "{old}");
    assert!(gw.log().contains("access log reopened"), "{}", gw.log());
}

/// Sends `n` GETs of `path` one after another on one kept-alive connection; returns how many
/// were answered 200.
async fn keepalive_gets(addr: std::net::SocketAddr, path: &str, n: usize) -> usize {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {}\r\n\r\n",
        "u".repeat(500)
    );
    let mut ok = 0;
    let mut buf = Vec::new();
    for _ in 0..n {
        s.write_all(req.as_bytes()).await.unwrap();
        loop {
            if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .expect("a content-length answer");
                if buf.len() >= split + 4 + len {
                    if head.starts_with("http/1.1 200") {
                        ok += 1;
                    }
                    buf.drain(..split + 4 + len);
                    break;
                }
            }
            let mut chunk = [0u8; 16384];
            let got = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
                .await
                .expect("an answer within the deadline")
                .unwrap();
            assert!(got > 0, "the gateway closed the connection");
            buf.extend_from_slice(&chunk[..got]);
        }
    }
    ok
}

/// The log goes to a FIFO that is held open and never read: the writer blocks, its queue fills,
/// and every request is still answered while the lines that do not fit are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_writer_drops_lines_and_never_blocks_clients() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // Held open for reading and writing (so the gateway's open does not wait for a reader),
    // and never read.
    let _held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let api = HttpBackend::start("api").await;
    let routes = format!(
        "  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n",
        api.addr
    );
    let gw = Gateway::start_with(&routes, &access_log("json", &fifo)).await;
    // Long paths make heavy lines: the queue's byte bound (4 MiB) is reached after ~1,500.
    let path = format!("/api/{}", "p".repeat(2000));
    let (clients, each) = (4, 600);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (addr, path) = (gw.addr, path.clone());
        tasks.push(tokio::spawn(async move {
            keepalive_gets(addr, &path, each).await
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, clients * each, "every request was answered");
    let metrics = gw.metrics().await;
    let dropped = metric(&metrics, "switchyard_access_log_dropped_total").unwrap();
    let written = metric(&metrics, "switchyard_access_log_lines_total").unwrap();
    assert!(dropped >= 100.0, "dropped {dropped}, written {written}");
    assert!(
        written < (clients * each) as f64,
        "dropped {dropped}, written {written}"
    );
}

/// Heads refused before they are requests (the hostile pass: probing left no line): a control
/// byte in a header, a bare CR, a non-UTF-8 target, a garbage request line each get `400` and
/// a line with `refused: bad_head`; the gateway keeps serving.
#[tokio::test]
async fn heads_refused_before_any_route_are_logged() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = Gateway::start_with(
        "  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n",
        &access_log("json", &file),
    )
    .await;
    let probes: [&[u8]; 4] = [
        b"GET /clock HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
        b"GET /clock HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
        b"GET /cl\xffock HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01garbage\r\n\r\n",
    ];
    for probe in probes {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(probe).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut answer))
            .await
            .expect("answered")
            .ok();
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{probe:?} -> {text}");
    }
    let lines = lines_where(&file, 4, |l| l.contains("bad_head")).await;
    let v = json_lines(&lines);
    let refused: Vec<_> = v.iter().filter(|v| v["refused"] == "bad_head").collect();
    assert_eq!(refused.len(), 4, "{v:#?}");
    for r in &refused {
        assert_eq!(r["status"], 400);
        assert_eq!(r["client"], "127.0.0.1");
        assert_eq!(r["route"], "-");
    }
    assert_eq!(refused[0]["method"], "GET");
    assert_eq!(
        refused[3]["method"], "___garbage____",
        "control bytes do not reach the log"
    );
    let r = http_get(gw.addr, "/clock?transport=poll", &[]).await;
    assert_eq!(r.status, 200);
}

/// Lines still queued when the process exits are written within the shutdown grace: the log is
/// a pipe nobody reads while requests come in (so lines queue behind a blocked write), the
/// gateway is asked to stop, and only then is the pipe read. Every request has its line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_queued_at_exit_are_written_within_the_grace() {
    use std::os::unix::fs::OpenOptionsExt;
    const REQUESTS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("access.pipe");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A reader end that reads nothing yet (so the gateway's open does not wait for one).
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let api = HttpBackend::start("api").await;
    let mut gw = Gateway::start_with(
        &format!(
            "  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n",
            api.addr
        ),
        &access_log("json", &fifo),
    )
    .await;
    let long = format!("/api/{}", "p".repeat(400));
    let served = keepalive_gets(gw.addr, &long, REQUESTS).await;
    assert_eq!(served, REQUESTS);
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Now read everything, until the gateway is gone and the pipe ends.
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut all = Vec::new();
        let mut chunk = [0u8; 65536];
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < until, "the pipe never ended");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    });
    let status = gw.wait_exit(Duration::from_secs(15)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", gw.log());
    let all = read.await.unwrap();
    let lines = String::from_utf8_lossy(&all)
        .lines()
        .filter(|l| l.contains("\"route\":\"api\""))
        .count();
    assert_eq!(lines, REQUESTS, "{}", gw.log());
}

/// SockJS in the log: a session URL's id is masked (whoever reads the log could otherwise use a
/// live session from the same address), and a Hixie-76 stream has its line with what it
/// carried and who ended it.
#[tokio::test]
async fn sockjs_lines_mask_session_ids_and_hixie76_streams_have_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let gw = Gateway::start_with(
        "  - name: echo\n    path: /echo\n    origins: [\"*\"]\n    clients: [sockjs]\n    backend: { builtin: echo }\n",
        &access_log("json", &file),
    )
    .await;
    let sid = "s3cr3tsessi0n";
    let r =
        crate::common::sockjs::request(gw.addr, "POST", &format!("/echo/000/{sid}/xhr"), &[], b"")
            .await;
    assert_eq!(r.body_text(), "o\n");

    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "GET /echo/000/hixiesession/websocket HTTP/1.1\r\nHost: {a}\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nOrigin: http://{a}\r\nSec-WebSocket-Key1: 4 @1  46546xW%0l 1 5\r\nSec-WebSocket-Key2: 12998 5 Y3 1  .P00\r\n\r\n",
        a = gw.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    s.write_all(b"aaaaaaaa").await.unwrap();
    let mut answer = [0u8; 19];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer[16..], b"\x00o\xff");
    s.write_all(b"\x00[\"hi\"]\xff").await.unwrap();
    let mut echo = [0u8; 9];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"\x00a[\"hi\"]\xff");
    drop(s);

    let lines = lines_where(&file, 1, |l| l.contains("sockjs-hixie76")).await;
    let v = json_lines(&lines);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(sid) || l.contains("hixiesession")),
        "{lines:#?}"
    );
    let xhr = find(&v, |v| v["path"] == "/echo/000/-/xhr");
    assert_eq!(xhr["status"], 200);
    let hixie = find(&v, |v| v["transport"] == "sockjs-hixie76");
    assert_eq!(hixie["path"], "/echo/000/-/websocket");
    assert_eq!(hixie["status"], 101);
    assert_eq!(hixie["messages_in"], 1);
    assert!(hixie["messages_out"].as_u64().unwrap() >= 1, "{hixie}");
    assert_eq!(hixie["closed_by"], "client");
}
