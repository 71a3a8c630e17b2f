//! One-way bridging against real backends on ephemeral ports: a WebSocket or SSE feed fanned
//! out to WebSocket, SSE and long-poll clients through one shared backend connection, with
//! resume, slow consumers, backend failures and reconnects, and linger.

use crate::common::*;
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn feed_route(name: &str, path: &str, backend: &str, extra: &str) -> String {
    format!("  - name: {name}\n    path: {path}\n    backend: {{ {backend} }}\n{extra}")
}

/// A WebSocket feed backend and a gateway with route `feed` on `/feed` reading it; `extra` is
/// YAML added to the route (indented by four spaces).
async fn feed_gateway(extra: &str) -> (FeedBackend, Gateway) {
    let backend = FeedBackend::start().await;
    let route = feed_route(
        "feed",
        "/feed",
        &format!("websocket: \"{}\"", backend.url("/stream")),
        extra,
    );
    let gw = Gateway::start(&route).await;
    (backend, gw)
}

/// An SSE backend and a gateway with route `feed` on `/feed` reading it (fast reconnects).
async fn sse_feed_gateway(extra: &str) -> (SseBackend, Gateway) {
    let backend = SseBackend::start().await;
    let route = feed_route(
        "feed",
        "/feed",
        &format!(
            "sse: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }}",
            backend.url("/events")
        ),
        extra,
    );
    let gw = Gateway::start(&route).await;
    (backend, gw)
}

/// Reads until the gateway closes the connection.
async fn expect_closed(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("the gateway closed the connection")
            .unwrap_or(0);
        if n == 0 {
            return;
        }
    }
}

/// The gateway counted a slow SSE client on `feed` as disconnected, and its stream is cut
/// once it reads again.
async fn expect_cut_as_slow(gw: &Gateway, stalled: &mut tokio::net::TcpStream) {
    gw.wait_metric(
        "switchyard_slow_consumer_total{action=\"disconnect\",route=\"feed\",transport=\"sse\"}",
        1.0,
    )
    .await;
    expect_closed(stalled).await;
}

async fn ws_client(gw: &Gateway, path: &str) -> Ws {
    tokio_tungstenite::connect_async(gw.ws_url(path))
        .await
        .expect("WebSocket handshake through the gateway")
        .0
}

/// Reads `count` numbered text messages and checks they are exactly `from..from+count` in order.
async fn ws_expect_numbers(ws: &mut Ws, from: u64, count: u64) {
    for want in from..from + count {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap_or_else(|_| panic!("message {want} within the deadline"))
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(t) => assert_eq!(number_of(&t), want, "order and no duplicates"),
            other => panic!("expected text {want}, got {other:?}"),
        }
    }
}

async fn sse_expect_numbers(sse: &mut SseReader, from: u64, count: u64) -> String {
    let mut last_id = String::new();
    for want in from..from + count {
        let ev = sse.next_data_event().await;
        assert_eq!(number_of(&ev.data), want, "order and no duplicates");
        last_id = ev.id.expect("every event has an id");
    }
    last_id
}

/// Polls from `cursor` until `count` numbered messages from `from` arrived; returns the cursor.
async fn poll_expect_numbers(
    addr: std::net::SocketAddr,
    path: &str,
    mut cursor: u64,
    from: u64,
    count: u64,
) -> u64 {
    let mut want = from;
    let until = Instant::now() + DEADLINE * 4;
    while want < from + count {
        assert!(Instant::now() < until, "long-poll stuck at {want}");
        let r = http_get(addr, &format!("{path}?transport=poll&cursor={cursor}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body_text());
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(j.get("missed").is_none(), "nothing missed: {j}");
        for m in j["messages"].as_array().unwrap() {
            assert_eq!(
                number_of(m.as_str().unwrap()),
                want,
                "order and no duplicates"
            );
            want += 1;
        }
        cursor = j["cursor"].as_u64().unwrap();
    }
    cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_websocket_feed_reaches_every_client_transport_in_order_over_one_connection() {
    const N: u64 = 10_000;
    // Room for a test client that a busy machine slows down: dropping is tested on its own.
    let (backend, gw) =
        feed_gateway("    replay: 10000\n    limits: { send_queue: 16384 }\n").await;

    let mut ws_clients = Vec::new();
    for _ in 0..50 {
        ws_clients.push(ws_client(&gw, "/feed").await);
    }
    let mut sse_clients = Vec::new();
    for _ in 0..50 {
        sse_clients.push(SseReader::open(gw.addr, "/feed", &[]).await);
    }
    backend.wait_open(1).await;
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"feed\",transport=\"sse\"}",
        50.0,
    )
    .await;

    let started = Instant::now();
    backend.send_numbered(1..=N, 16, 100, Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in ws_clients {
        tasks.spawn(async move { ws_expect_numbers(&mut ws, 1, N).await });
    }
    for mut sse in sse_clients {
        tasks.spawn(async move {
            sse_expect_numbers(&mut sse, 1, N).await;
        });
    }
    for _ in 0..20 {
        let addr = gw.addr;
        tasks.spawn(async move {
            poll_expect_numbers(addr, "/feed", 0, 1, N).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            let m = gw.metrics().await;
            let slow: Vec<_> = m
                .lines()
                .filter(|l| l.contains("slow_consumer") || l.contains("backend_"))
                .collect();
            panic!("a client failed: {e}\n{}\n{}", slow.join("\n"), gw.log());
        }
    }
    let took = started.elapsed();
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one backend connection served every client"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_backend_messages_total{route=\"feed\"}"),
        Some(N as f64)
    );
    eprintln!("120 clients x {N} messages in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_poll_clients_resume_after_dropping_at_3000() {
    let (backend, gw) =
        feed_gateway("    replay: 10000\n    limits: { send_queue: 16384 }\n").await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=3000, 8, 500, Duration::from_millis(1));
    let last_id = sse_expect_numbers(&mut sse, 1, 3000).await;
    drop(sse);
    let cursor = poll_expect_numbers(gw.addr, "/feed", 0, 1, 3000).await;
    assert_eq!(cursor, 3000);

    // Both clients are away while the next 3,000 arrive.
    backend.send_numbered(3001..=6000, 8, 500, Duration::from_millis(1));
    gw.wait_metric("switchyard_backend_messages_total{route=\"feed\"}", 6000.0)
        .await;

    let mut sse = SseReader::open(gw.addr, "/feed", &[("Last-Event-ID", &last_id)]).await;
    // A gap marker would fail here: it is an event without a numbered payload.
    sse_expect_numbers(&mut sse, 3001, 3000).await;
    // The query form, for clients that cannot set headers.
    let mut sse = SseReader::open(gw.addr, &format!("/feed?lastEventId={last_id}"), &[]).await;
    sse_expect_numbers(&mut sse, 3001, 10).await;
    poll_expect_numbers(gw.addr, "/feed", cursor, 3001, 3000).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// Opens an SSE request with a tiny receive buffer and never reads it.
async fn stalled_sse_client(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    stream
}

/// Runs `N` 1 KiB messages through 10 WS and 10 SSE clients; returns how long they took.
async fn run_fast_clients(gw: &Gateway, backend: &FeedBackend, first: u64, n: u64) -> Duration {
    let mut ws_clients = Vec::new();
    let mut sse_clients = Vec::new();
    for _ in 0..10 {
        ws_clients.push(ws_client(gw, "/feed").await);
        sse_clients.push(SseReader::open(gw.addr, "/feed", &[]).await);
    }
    backend.wait_open(1).await;
    let started = Instant::now();
    // 2,000 messages/s: a rate the debug-built gateway and these 20 debug-built readers keep
    // up with on a slow 2-core machine (at 10,000/s they could not, and fast readers fell
    // `send_queue` behind too). The stalled client falls behind whatever the rate.
    backend.send_numbered(first..=first + n - 1, 1024, 20, Duration::from_millis(10));
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in ws_clients {
        tasks.spawn(async move { ws_expect_numbers(&mut ws, first, n).await });
    }
    for mut sse in sse_clients {
        tasks.spawn(async move {
            sse_expect_numbers(&mut sse, first, n).await;
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("fast clients get every message in order");
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_without_delaying_others_or_growing_memory() {
    const N: u64 = 5000;
    let (backend, gw) =
        feed_gateway("    slow_consumer: disconnect\n    limits: { send_queue: 256 }\n").await;
    // The backend connection stays up between the two runs (backend_linger).
    let baseline = run_fast_clients(&gw, &backend, 1, N).await;

    let rss_before = gw.rss_kib();
    let mut stalled = stalled_sse_client(gw.addr, "/feed").await;
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"feed\",transport=\"sse\"}",
        1.0,
    )
    .await;
    let with_stall = run_fast_clients(&gw, &backend, N + 1, N).await;
    let rss_after = gw.rss_kib();
    eprintln!("baseline {baseline:?}, with a stalled client {with_stall:?}; RSS {rss_before} -> {rss_after} KiB");
    assert!(
        with_stall < baseline * 2 + Duration::from_millis(500),
        "the stalled client delayed the others: {with_stall:?} vs {baseline:?}"
    );
    // 5 MiB went past the stalled client; it may hold at most the shared ring's worth.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory grew with a stalled reader: {rss_before} -> {rss_after} KiB"
    );
    expect_cut_as_slow(&gw, &mut stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_a_stalled_client_and_tells_it_what_it_missed() {
    const N: u64 = 5000;
    let (backend, gw) =
        feed_gateway("    slow_consumer: drop_oldest\n    limits: { send_queue: 256 }\n").await;
    let stalled = stalled_sse_client(gw.addr, "/feed").await;
    backend.wait_open(1).await;
    let rss_before = gw.rss_kib();
    run_fast_clients(&gw, &backend, 1, N).await;
    let rss_after = gw.rss_kib();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "memory grew with a stalled reader: {rss_before} -> {rss_after} KiB"
    );
    // Now it reads: what it gets is in order, with a gap marker where messages were dropped.
    let mut reader = SseReader::from_stream(stalled).await;
    let mut last = 0;
    let mut gaps = 0;
    while last < N {
        let ev = reader.next_data_event().await;
        if ev.event.as_deref() == Some("gap") {
            gaps += 1;
            continue;
        }
        let n = number_of(&ev.data);
        assert!(n > last, "in order without duplicates: {n} after {last}");
        last = n;
    }
    assert!(gaps >= 1, "the client was told it missed messages");
    let m = gw.metrics().await;
    assert!(
        metric(&m, "switchyard_dropped_messages_total{reason=\"slow_consumer\",route=\"feed\",transport=\"sse\"}").unwrap_or(0.0) > 0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_at_start_is_retried_while_the_gateway_serves_others() {
    let dead = dead_port();
    let routes = format!(
        "{}{}",
        feed_route(
            "feed",
            "/feed",
            &format!(
                "websocket: \"ws://{}/\", reconnect: {{ initial: 50ms, max: 300ms }}",
                dead.addr
            ),
            "",
        ),
        feed_route("clock", "/clock", "builtin: clock", ""),
    );
    let gw = Gateway::start(&routes).await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    assert!(sse.head.starts_with("HTTP/1.1 200"), "{}", sse.head);
    let mut ws = ws_client(&gw, "/feed").await;
    gw.wait_metric(
        "switchyard_backend_connect_attempts_total{outcome=\"failed\",route=\"feed\"}",
        3.0,
    )
    .await;
    // Everyone else is served meanwhile.
    let r = http_get(gw.addr, "/clock?transport=poll", &[]).await;
    assert_eq!(r.status, 200);

    // The backend comes up on its address: the gateway connects and the waiting clients get it.
    let addr = dead.addr;
    drop(dead);
    let backend = FeedBackend::start_at(addr, None).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=5, 0, 5, Duration::ZERO);
    sse_expect_numbers(&mut sse, 1, 5).await;
    ws_expect_numbers(&mut ws, 1, 5).await;
    let log = gw.log();
    assert_eq!(
        log.matches("unreachable").count(),
        1,
        "a down backend is logged once, not once per attempt:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_close_reaches_clients_and_they_resume_without_loss() {
    let backend = FeedBackend::start().await;
    let route = feed_route(
        "feed",
        "/feed",
        &format!(
            "websocket: \"{}\", reconnect: {{ initial: 50ms, max: 200ms }}",
            backend.url("/")
        ),
        "    replay: 1000\n",
    );
    let gw = Gateway::start(&route).await;
    let mut ws = ws_client(&gw, "/feed").await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=100, 0, 100, Duration::ZERO);
    ws_expect_numbers(&mut ws, 1, 100).await;
    let last_id = sse_expect_numbers(&mut sse, 1, 100).await;

    // A deliberate close: its code reaches WebSocket clients; SSE gets a comment, a retry
    // and the end of the stream.
    backend.send(FeedCmd::Close(4001, "maintenance".into()));
    match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!(u16::from(f.code), 4001);
            assert!(f.reason.contains("maintenance"), "{f:?}");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    let mut told = false;
    while let Some(ev) = sse.next_event_or_end().await {
        assert!(
            ev.id.is_none(),
            "no message after the backend went away: {ev:?}"
        );
        told |= ev.comments.iter().any(|c| c.contains("backend went away")) && ev.retry.is_some();
    }
    assert!(told, "the SSE client was told to reconnect");

    // The gateway reconnects; what the backend sends before the clients are back is replayed.
    backend.wait_connections(2).await;
    backend.wait_open(1).await;
    backend.send_numbered(101..=150, 0, 50, Duration::ZERO);
    gw.wait_metric("switchyard_backend_messages_total{route=\"feed\"}", 150.0)
        .await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[("Last-Event-ID", &last_id)]).await;
    sse_expect_numbers(&mut sse, 101, 50).await;
    let mut ws = ws_client(&gw, "/feed").await;

    // A dropped connection (no close frame) gives clients 1012, Service Restart.
    backend.send(FeedCmd::Drop);
    match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected close 1012, got {other:?}"),
    }
    assert!(sse.next_data_event_or_end().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_connection_closes_after_backend_linger_and_reopens_on_demand() {
    let (backend, gw) = feed_gateway("    backend_linger: 300ms\n").await;
    let mut ws = ws_client(&gw, "/feed").await;
    backend.wait_open(1).await;
    // A client coming and going within the linger keeps the same connection.
    drop(SseReader::open(gw.addr, "/feed", &[]).await);
    ws.close(None).await.unwrap();
    drop(ws);
    backend.wait_open(0).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    gw.wait_metric("switchyard_backend_connections_open{route=\"feed\"}", 0.0)
        .await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    backend.send_numbered(1..=3, 0, 3, Duration::ZERO);
    sse_expect_numbers(&mut sse, 1, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_and_headers_reach_the_backend_and_clients_get_its_choice() {
    let backend = FeedBackend::start_at("127.0.0.1:0".parse().unwrap(), Some("v2.feed")).await;
    let route = feed_route(
        "feed",
        "/feed",
        &format!(
            "websocket: \"{}\", subprotocols: [v1.feed, v2.feed], headers: {{ Authorization: \"Bearer feed-token\" }}",
            backend.url("/stream?x=1")
        ),
        "",
    );
    let gw = Gateway::start(&route).await;
    let _first = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    // The gateway has read the backend's answer (and its chosen subprotocol).
    gw.wait_metric("switchyard_backend_connections_open{route=\"feed\"}", 1.0)
        .await;
    {
        let h = backend.handshakes.lock().unwrap();
        assert_eq!(h[0]["authorization"], "Bearer feed-token");
        assert_eq!(h[0]["sec-websocket-protocol"], "v1.feed, v2.feed");
    }
    let offer = |list: &'static str| {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = gw.ws_url("/feed").into_client_request().unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", list.parse().unwrap());
        req
    };
    let (_ws, resp) = tokio_tungstenite::connect_async(offer("v1.feed, v2.feed"))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v2.feed",
        "the backend's choice"
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(offer("v1.feed"))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v1.feed",
        "listed in the config"
    );
    // None in common: the handshake succeeds without the header (the client then decides).
    let err = tokio_tungstenite::connect_async(offer("other"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            tokio_tungstenite::tungstenite::Error::Protocol(
                tokio_tungstenite::tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                    _
                )
            )
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_messages_follow_the_route_policy_on_text_only_transports() {
    let backend = FeedBackend::start().await;
    let url = backend.url("/");
    let routes = format!(
        "{}{}",
        feed_route("b64", "/b64", &format!("websocket: \"{url}\""), ""),
        feed_route(
            "nobin",
            "/nobin",
            &format!("websocket: \"{url}\""),
            "    binary: drop\n"
        ),
    );
    let gw = Gateway::start(&routes).await;
    let mut b64 = SseReader::open(gw.addr, "/b64", &[]).await;
    let mut nobin = SseReader::open(gw.addr, "/nobin", &[]).await;
    let mut ws = ws_client(&gw, "/nobin").await;
    backend.wait_open(2).await;
    backend.send(FeedCmd::Send {
        messages: std::sync::Arc::new(vec![
            Message::binary(vec![0u8, 1, 2, 255]),
            Message::text("after"),
        ]),
        batch: 2,
        pause: Duration::ZERO,
    });
    let ev = b64.next_data_event().await;
    assert_eq!(
        (ev.event.as_deref(), ev.data.as_str()),
        (Some("binary"), "AAEC/w==")
    );
    assert_eq!(b64.next_data_event().await.data, "after");
    assert_eq!(
        nobin.next_data_event().await.data,
        "after",
        "binary dropped"
    );
    // WebSocket clients get binary as binary whatever the policy.
    let m = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(m, Message::binary(vec![0u8, 1, 2, 255]));
    let r = http_get(gw.addr, "/b64?transport=poll&cursor=0", &[]).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        j["messages"],
        serde_json::json!([{ "binary": "AAEC/w==" }, "after"])
    );
    let r = http_get(gw.addr, "/nobin?transport=poll&cursor=0", &[]).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["messages"], serde_json::json!(["after"]));
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_dropped_messages_total{reason=\"binary_policy\",route=\"nobin\",transport=\"sse\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_backend_keeps_event_names_and_resumes_with_last_event_id() {
    let (backend, gw) = sse_feed_gateway("").await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    let mut ws = ws_client(&gw, "/feed").await;
    backend.wait_connections(1).await;
    // Lines split anywhere, CRLF split across chunks, a BOM, comments, an empty payload.
    for chunk in [
        "\u{feff}retry: 100\n: hello\n\n",
        "id: b1\nevent: tick\ndata: line1\ndata: line2\n\n",
        "data: crlf\r",
        "\n\r\n",
        "data:\n\n",
        "id: b2\ndata: h\u{e9}llo \u{1F600}\n\n",
    ] {
        backend.write(chunk);
    }
    let ev = sse.next_data_event().await;
    assert_eq!(
        (ev.event.as_deref(), ev.data.as_str()),
        (Some("tick"), "line1\nline2")
    );
    assert_eq!(sse.next_data_event().await.data, "crlf");
    assert_eq!(sse.next_data_event().await.data, "");
    assert_eq!(sse.next_data_event().await.data, "h\u{e9}llo \u{1F600}");
    for want in ["line1\nline2", "crlf", "", "h\u{e9}llo \u{1F600}"] {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m, Message::text(want));
    }
    let r = http_get(gw.addr, "/feed?transport=poll&cursor=0", &[]).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        j["messages"],
        serde_json::json!([{ "event": "tick", "data": "line1\nline2" }, "crlf", "", "h\u{e9}llo \u{1F600}"])
    );

    // The backend ends its stream: the gateway reconnects with the last id the backend gave.
    backend.end_streams();
    backend.wait_connections(2).await;
    assert_eq!(
        backend.last_event_ids.lock().unwrap().clone(),
        [None, Some("b2".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_sse_backend_is_reconnected_behind_the_clients_backs() {
    let (backend, gw) = sse_feed_gateway("    keepalive: { idle_timeout: 400ms }\n").await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_connections(1).await;
    backend.write("id: 7\ndata: before\n\n");
    assert_eq!(sse.next_data_event().await.data, "before");
    // Silence past idle_timeout: the gateway reconnects and resumes from the backend's id 7.
    backend.wait_connections(2).await;
    assert_eq!(
        backend.last_event_ids.lock().unwrap()[1].as_deref(),
        Some("7")
    );
    backend.write("id: 8\ndata: after\n\n");
    let ev = sse.next_data_event().await;
    assert_eq!(ev.data, "after", "the client stayed connected: {ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_drop_oldest_a_client_blocked_past_the_write_deadline_is_let_go() {
    let (backend, gw) = feed_gateway(
        "    slow_consumer: drop_oldest\n    limits: { send_queue: 256 }\n    keepalive: { ping_interval: 500ms, pong_timeout: 500ms }\n",
    )
    .await;
    let mut stalled = stalled_sse_client(gw.addr, "/feed").await;
    backend.wait_open(1).await;
    // A write blocks only once the kernel's buffers are full, and the sending side's grows
    // to `tcp_wmem`'s maximum (4 MiB by default). Under drop_oldest a slow writer skips what it
    // cannot keep up with, so the bytes it writes depend on the machine's speed: 5,000 1 KiB
    // messages sometimes fitted in the kernel whole and no write ever blocked. What is still
    // queued when the feed stops is `send_queue` messages of 32 KiB, 8 MiB, which alone
    // cannot fit, however many were skipped before.
    backend.send_numbered(1..=1000, 32 * 1024, 50, Duration::from_millis(5));
    expect_cut_as_slow(&gw, &mut stalled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_ahead_of_the_feed_replays_what_is_held_with_a_gap_mark() {
    let (backend, gw) = feed_gateway("").await;
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    backend.wait_open(1).await;
    backend.send_numbered(1..=3, 0, 3, Duration::ZERO);
    let id = sse_expect_numbers(&mut sse, 1, 3).await;
    let epoch = id.rsplit_once('-').unwrap().0;
    let forged = format!("{epoch}-18446744073709551615");
    let mut sse = SseReader::open(gw.addr, "/feed", &[("Last-Event-ID", &forged)]).await;
    assert_eq!(sse.next_data_event().await.event.as_deref(), Some("gap"));
    sse_expect_numbers(&mut sse, 1, 3).await;
}
