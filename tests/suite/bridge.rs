//! Bridged routes with the built-in backends, over real sockets: the clock fanned out over SSE,
//! WebSocket and long-poll (with resume), the echo over WebSocket, and the refusals a client
//! gets when it asks for the wrong thing.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const ROUTES: &str = "  - name: demo\n    path: /\n    backend: { builtin: demo }\n  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n    clients: [sse, websocket, long_poll]\n  - name: echo\n    path: /echo\n    backend: { builtin: echo }\n    clients: [websocket]\n    limits: { max_message: 64KiB }\n  - name: sse-only\n    path: /feed\n    backend: { builtin: clock }\n    clients: [sse]\n";

fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').unwrap().1.parse().unwrap()
}

#[tokio::test]
async fn sse_clock_sends_an_event_each_second_with_ids() {
    let gw = Gateway::start(ROUTES).await;
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    assert!(
        sse.head
            .to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        sse.head
    );
    let first = sse.next_event().await;
    let retry = first.retry.expect("retry: is sent on connect");
    assert!(
        (1000..=3000).contains(&retry),
        "retry {retry} is 2s with jitter"
    );
    let a = sse.next_data_event().await;
    let b = sse.next_data_event().await;
    assert_eq!(
        seq_of(b.id.as_deref().unwrap()),
        seq_of(a.id.as_deref().unwrap()) + 1
    );
    // RFC 3339 times one second apart.
    assert_eq!(a.data.len(), 20, "{a:?}");
    assert_ne!(a.data, b.data);
}

#[tokio::test]
async fn sse_resume_with_last_event_id_replays_what_was_missed() {
    let gw = Gateway::start(ROUTES).await;
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    let a = sse.next_data_event().await;
    let _b = sse.next_data_event().await;
    let c = sse.next_data_event().await;
    drop(sse);
    // Header form, then the query form for clients that cannot set headers.
    let a_id = a.id.clone().unwrap();
    let mut resumed = SseReader::open(gw.addr, "/clock", &[("Last-Event-ID", a_id.as_str())]).await;
    let next = resumed.next_data_event().await;
    assert_eq!(
        seq_of(next.id.as_deref().unwrap()),
        seq_of(&a_id) + 1,
        "no gap after a resume"
    );
    let mut resumed = SseReader::open(
        gw.addr,
        &format!("/clock?lastEventId={}", c.id.as_deref().unwrap()),
        &[],
    )
    .await;
    let next = resumed.next_data_event().await;
    assert_eq!(
        seq_of(next.id.as_deref().unwrap()),
        seq_of(c.id.as_deref().unwrap()) + 1
    );
    // An id from another epoch: everything still held, after a visible gap marker.
    let mut stale = SseReader::open(gw.addr, "/clock", &[("Last-Event-ID", "0-5")]).await;
    assert_eq!(stale.next_data_event().await.event.as_deref(), Some("gap"));
}

#[tokio::test]
async fn long_poll_cursor_misses_nothing_and_repeats_idempotently() {
    let gw = Gateway::start(ROUTES).await;
    let poll = |q: String| {
        let addr = gw.addr;
        async move {
            let r = http_get(addr, &format!("/clock?transport=poll{q}"), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body_text());
            assert_eq!(r.header("content-type"), Some("application/json"));
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let first = poll(String::new()).await;
    let cursor = first["cursor"].as_u64().unwrap();
    assert_eq!(first["messages"].as_array().unwrap().len(), 1, "{first}");
    let second = poll(format!("&cursor={cursor}")).await;
    let c2 = second["cursor"].as_u64().unwrap();
    assert!(c2 > cursor);
    assert_eq!(
        second["messages"].as_array().unwrap().len() as u64,
        c2 - cursor,
        "every message after the cursor, none skipped"
    );
    let again = poll(format!("&cursor={cursor}")).await;
    assert_eq!(
        again["messages"][0], second["messages"][0],
        "same cursor, same messages"
    );
    let bad = http_get(gw.addr, "/clock?transport=poll&cursor=abc", &[]).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn polls_waiting_at_one_cursor_share_an_answer_and_other_cursors_get_their_own() {
    let gw = Gateway::start(ROUTES).await;
    let poll = |cursor: u64| {
        let addr = gw.addr;
        async move {
            let r = http_get(addr, &format!("/clock?transport=poll&cursor={cursor}"), &[]).await;
            assert_eq!(r.status, 200, "{}", r.body_text());
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let start = serde_json::from_slice::<serde_json::Value>(
        &http_get(gw.addr, "/clock?transport=poll", &[]).await.body,
    )
    .unwrap()["cursor"]
        .as_u64()
        .unwrap();
    // Twelve polls wait at the head for the next tick, together.
    let waiting: Vec<_> = (0..12).map(|_| tokio::spawn(poll(start))).collect();
    let mut answers = Vec::new();
    for w in waiting {
        answers.push(w.await.unwrap());
    }
    for a in &answers {
        assert_eq!(a, &answers[0], "the same cursor, the same answer");
    }
    let next = answers[0]["cursor"].as_u64().unwrap();
    assert!(next > start, "{}", answers[0]);
    // A poll from further back, after them, gets more than they did (and not their answer);
    // one from where they are now waits for a later tick.
    let behind = poll(start - 1).await;
    assert_eq!(
        behind["messages"].as_array().unwrap().len() as u64,
        behind["cursor"].as_u64().unwrap() - (start - 1),
        "{behind}"
    );
    assert_ne!(behind, answers[0]);
    let later = poll(next).await;
    assert!(later["cursor"].as_u64().unwrap() > next, "{later}");
    // Each answer's messages are counted, shared or not: 12 + 1 + the ones above.
    let first_len = answers[0]["messages"].as_array().unwrap().len() as u64;
    let counted = 1
        + 12 * first_len
        + behind["messages"].as_array().unwrap().len() as u64
        + later["messages"].as_array().unwrap().len() as u64;
    gw.expect_metric(
        r#"switchyard_messages_total{direction="out",route="clock",transport="long_poll"}"#,
        counted as f64,
    )
    .await;
}

#[tokio::test]
async fn long_poll_times_out_empty_at_poll_timeout() {
    let routes = "  - name: quiet\n    path: /q\n    backend: { builtin: clock }\n    keepalive: { poll_timeout: 300ms }\n";
    let gw = Gateway::start(routes).await;
    // Hold the cursor at the head: the next tick is up to a second away, the timeout 300 ms.
    let head = serde_json::from_slice::<serde_json::Value>(
        &http_get(gw.addr, "/q?transport=poll", &[]).await.body,
    )
    .unwrap()["cursor"]
        .as_u64()
        .unwrap();
    let r = http_get(gw.addr, &format!("/q?transport=poll&cursor={head}"), &[]).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    // Either the poll timed out empty with the same cursor, or a tick landed first.
    let n = j["messages"].as_array().unwrap().len() as u64;
    assert_eq!(j["cursor"].as_u64().unwrap(), head + n);
    assert!(n <= 1);
}

#[tokio::test]
async fn websocket_clients_get_the_clock_and_the_echo() {
    let gw = Gateway::start(ROUTES).await;
    let (mut clock, _) = tokio_tungstenite::connect_async(gw.ws_url("/clock"))
        .await
        .unwrap();
    let tick = clock.next().await.unwrap().unwrap();
    assert!(
        tick.is_text() && tick.to_text().unwrap().ends_with('Z'),
        "{tick:?}"
    );

    let (mut echo, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    for m in [
        Message::text("hello"),
        Message::binary(vec![1u8, 2, 3]),
        Message::text("é✓".repeat(1000)),
    ] {
        echo.send(m.clone()).await.unwrap();
        assert_eq!(echo.next().await.unwrap().unwrap(), m);
    }
    echo.send(Message::Ping(b"p".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        echo.next().await.unwrap().unwrap(),
        Message::Pong(b"p".to_vec().into())
    );
    echo.close(None).await.unwrap();
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "switchyard_messages_total{direction=\"in\",route=\"echo\",transport=\"websocket\"} 3"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_websocket_message_gets_1009_and_others_are_unaffected() {
    let gw = Gateway::start(ROUTES).await;
    let (mut big, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    big.send(Message::binary(vec![0u8; 65 * 1024]))
        .await
        .unwrap();
    match big.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Size),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let (mut ok, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    ok.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ok.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test]
async fn bad_websocket_handshakes_get_the_right_status() {
    let gw = Gateway::start(ROUTES).await;
    let base = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    // RFC 6455 4.4: an unsupported version gets 426 with the version we speak.
    let mut h = base.to_vec();
    h.push(("Sec-WebSocket-Version", "8"));
    let r = http_get(gw.addr, "/echo", &h).await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    // RFC 6455 4.2.1: a missing key is a bad request.
    let r = http_get(
        gw.addr,
        "/echo",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    // A good handshake on a raw socket: the accept value from RFC 6455 1.3's example.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
}

#[tokio::test]
async fn transports_not_offered_and_unknown_paths_are_refused_clearly() {
    let gw = Gateway::start(ROUTES).await;
    let r = http_get(gw.addr, "/feed?transport=poll", &[]).await;
    assert_eq!(r.status, 406);
    assert!(
        r.body_text().contains("does not offer long_poll"),
        "{}",
        r.body_text()
    );
    let r = http_get(gw.addr, "/clock", &[("Accept", "text/html")]).await;
    assert_eq!(r.status, 406);
    assert!(
        r.body_text().contains("ask for one of"),
        "{}",
        r.body_text()
    );
    let r = http_get(gw.addr, "/nowhere/else", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body_text().contains("no route"));
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "switchyard_rejections_total{reason=\"transport_not_offered\",route=\"sse-only\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn demo_page_and_admin_endpoints_answer() {
    let gw = Gateway::start(ROUTES).await;
    let r = http_get(gw.addr, "/", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body_text().contains("new EventSource('/clock')"));
    assert!(r.body_text().contains("/echo"));
    assert_eq!(http_get(gw.admin, "/healthz", &[]).await.status, 200);
    assert_eq!(http_get(gw.admin, "/readyz", &[]).await.status, 200);
    let m = http_get(gw.admin, "/metrics", &[]).await;
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    assert!(m.body_text().contains("switchyard_config_generation 1"));
}

/// Reads one `Content-Length` response from `s`, keeping bytes past it in `buf`.
async fn read_one(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Response {
    loop {
        if let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or_else(|| panic!("a Content-Length answer, got {head}"));
            if buf.len() >= split + 4 + len {
                let rest = buf.split_off(split + 4 + len);
                let one = std::mem::replace(buf, rest);
                return parse_response(&one);
            }
        }
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed with {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn one_kept_alive_connection_carries_streams_and_proxied_requests_in_turn() {
    // Streaming requests are served by the listener's own connection, everything else by
    // pingora; a keep-alive connection goes back and forth, pipelined requests included.
    let gw = Gateway::start(ROUTES).await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let host = gw.addr;
    let poll = format!("GET /clock?transport=poll HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let page = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut buf = Vec::new();
    for round in 0..3 {
        // Two requests in one write: the second waits in the buffer while the first is served.
        s.write_all(format!("{poll}{page}").as_bytes())
            .await
            .unwrap();
        let a = read_one(&mut s, &mut buf).await;
        assert_eq!(a.status, 200, "round {round}: {}", a.body_text());
        let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert!(j["cursor"].is_string() || j["cursor"].is_number(), "{j}");
        assert_eq!(j["messages"].as_array().map(Vec::len), Some(1), "{j}");
        let b = read_one(&mut s, &mut buf).await;
        assert_eq!(b.status, 200);
        assert!(
            b.body_text().contains("<html"),
            "round {round}: the demo page"
        );
        // Then the other order, one at a time.
        s.write_all(page.as_bytes()).await.unwrap();
        assert_eq!(read_one(&mut s, &mut buf).await.status, 200);
        s.write_all(poll.as_bytes()).await.unwrap();
        assert_eq!(read_one(&mut s, &mut buf).await.status, 200);
    }
    assert!(buf.is_empty());
    // Last, the same connection turns into an SSE stream.
    s.write_all(
        format!("GET /clock HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut sse = SseReader::from_stream(s).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    let e = sse.next_data_event().await;
    assert_eq!(e.data.len(), 20, "{e:?}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "switchyard_http_requests_total{class=\"2xx\",route=\"clock\"}"
        ),
        Some(6.0),
        "every answered poll is counted"
    );
}

#[tokio::test]
async fn stream_requests_get_the_same_head_checks_as_everything_else() {
    // The listener serves streaming GETs itself; a head pingora would refuse (RFC 9112
    // section 3.2: one Host, no userinfo, an absolute-form target that agrees with Host)
    // is refused the same way.
    let gw = Gateway::start(ROUTES).await;
    let host = gw.addr;
    for head in [
        format!(
            "GET /clock?transport=poll HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\n\r\n"
        ),
        format!("GET /clock?transport=poll HTTP/1.1\r\nHost: user@{host}\r\n\r\n"),
        format!("GET http://{host}/clock?transport=poll HTTP/1.1\r\nHost: other.example\r\n\r\n"),
    ] {
        let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await;
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{head:?} -> {text}");
    }
    // A well-formed one is served, with a Date like every other answer.
    let r = http_get(gw.addr, "/clock?transport=poll", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("date").is_some_and(|d| d.ends_with(" GMT")),
        "{:?}",
        r.header("date")
    );
}

/// RFC 6455 section 8.1: a backend that sends a text frame that is not UTF-8 has broken the
/// protocol. Its clients are closed with 1011 (an internal error of the feed), not 1012 (which
/// says the backend merely went away and a reconnect will do).
#[tokio::test]
async fn a_backend_that_sends_invalid_utf8_closes_clients_with_1011() {
    // A hand-written backend: the handshake, then one text frame with bytes that are not UTF-8.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_request_head(&mut s)
            .await
            .expect("the gateway's handshake");
        let answer = ws_switching_protocols(&head).expect("a key");
        s.write_all(answer.as_bytes()).await.unwrap();
        s.write_all(b"\x81\x02\xff\xfe").await.unwrap();
        // Held open: the close must come from the gateway's judgement, not from an EOF.
        tokio::time::sleep(DEADLINE).await;
        drop(s);
    });
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"ws://{backend}/\" }}\n    clients: [websocket]\n"
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/feed"))
        .await
        .unwrap();
    let close = loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("a close code");
    assert_eq!(close.code, CloseCode::Error, "{close:?}");
    task.abort();
}
