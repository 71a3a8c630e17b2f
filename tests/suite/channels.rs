//! Channels (`/rooms/{room}`: one backend connection per channel, at the URL its captures fill
//! in) and HTTP publishing on the admin listener, against a real WebSocket backend and real
//! clients of every transport.

use crate::common::raw_http;
use crate::common::sockjs::{request, session_id, Stream};
use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket backend that records the path of each connection and, told to, sends
/// `"<path>:<n>"` for n in 1..=count on every connection it holds.
struct PathBackend {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
    send: tokio::sync::broadcast::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl PathBackend {
    async fn start() -> PathBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new(AtomicUsize::new(0));
        let (send, _) = tokio::sync::broadcast::channel::<u64>(16);
        let (p, o, tx) = (paths.clone(), open.clone(), send.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (p, o) = (p.clone(), o.clone());
                let mut rx = tx.subscribe();
                tokio::spawn(async move {
                    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
                    let path = Arc::new(Mutex::new(String::new()));
                    let seen = path.clone();
                    #[allow(clippy::result_large_err)]
                    let record = move |req: &Request, resp: Response| {
                        *seen.lock().unwrap() = req.uri().to_string();
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await
                    else {
                        return;
                    };
                    let path = path.lock().unwrap().clone();
                    p.lock().unwrap().push(path.clone());
                    o.fetch_add(1, Ordering::SeqCst);
                    loop {
                        tokio::select! {
                            n = rx.recv() => match n {
                                Ok(n) => {
                                    for i in 1..=n {
                                        if ws.feed(Message::text(format!("{path}:{i}"))).await.is_err() {
                                            break;
                                        }
                                    }
                                    if ws.flush().await.is_err() {
                                        break;
                                    }
                                }
                                Err(_) => break,
                            },
                            msg = ws.next() => match msg {
                                Some(Ok(_)) => {}
                                _ => break,
                            },
                        }
                    }
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        PathBackend {
            addr,
            paths,
            open,
            send,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    fn paths(&self) -> Vec<String> {
        let mut p = self.paths.lock().unwrap().clone();
        p.sort();
        p
    }

    async fn wait_open(&self, n: usize) {
        let until = Instant::now() + DEADLINE;
        while self.open.load(Ordering::SeqCst) != n {
            assert!(
                Instant::now() < until,
                "backend has {} open connections, expected {n}",
                self.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for PathBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_client(gw: &Gateway, path: &str) -> Ws {
    tokio_tungstenite::connect_async(gw.ws_url(path))
        .await
        .expect("WebSocket handshake through the gateway")
        .0
}

async fn ws_texts(ws: &mut Ws, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        let msg = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("stream open")
            .expect("no error");
        if let Message::Text(t) = msg {
            got.push(t.to_string());
        }
    }
    got
}

async fn sse_texts(sse: &mut SseReader, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < count {
        got.push(sse.next_data_event().await.data);
    }
    got
}

/// Polls from cursor 0 until `count` messages arrived.
async fn poll_texts(addr: SocketAddr, path: &str, count: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut cursor = 0;
    let until = Instant::now() + DEADLINE * 2;
    while got.len() < count {
        assert!(Instant::now() < until, "long-poll stuck at {got:?}");
        let r = http_get(addr, &format!("{path}?transport=poll&cursor={cursor}"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.body_text());
        let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        for m in j["messages"].as_array().unwrap() {
            got.push(m.as_str().unwrap().to_owned());
        }
        cursor = j["cursor"].as_u64().unwrap();
    }
    got
}

fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("{prefix}:{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_has_one_backend_connection_and_its_subscribers_get_only_its_messages() {
    const MESSAGES: usize = 30;
    let backend = PathBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: rooms\n    path: \"/rooms/{{room}}\"\n    backend: {{ websocket: \"{}\" }}\n    backend_linger: 1s\n",
        backend.url("/feeds/{room}?as=gw")
    ))
    .await;
    let rooms = ["lobby", "kitchen", "a.b-c_d~e"];
    // Per channel: 20 WebSocket, 20 SSE and 10 long-poll subscribers.
    let mut ws = Vec::new();
    let mut sse = Vec::new();
    for room in rooms {
        for _ in 0..20 {
            ws.push((room, ws_client(&gw, &format!("/rooms/{room}")).await));
            sse.push((
                room,
                SseReader::open(gw.addr, &format!("/rooms/{room}"), &[]).await,
            ));
        }
    }
    backend.wait_open(3).await;
    assert_eq!(
        backend.paths(),
        [
            "/feeds/a.b-c_d~e?as=gw",
            "/feeds/kitchen?as=gw",
            "/feeds/lobby?as=gw"
        ],
        "one connection per channel, at its templated path"
    );
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"rooms\",transport=\"sse\"}",
        60.0,
    )
    .await;
    gw.expect_metric("switchyard_channels_open{route=\"rooms\"}", 3.0)
        .await;
    backend.send.send(MESSAGES as u64).unwrap();
    // Each task hands its client back, so that they all leave at one moment. A message of
    // another channel would show among the first ones read: each list is compared whole.
    enum Held {
        Ws(Box<Ws>),
        Sse(Box<SseReader>),
        Nothing,
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (room, mut c) in ws {
        tasks.spawn(async move {
            let want = numbered(&format!("/feeds/{room}?as=gw"), MESSAGES);
            let got = ws_texts(&mut c, MESSAGES).await;
            assert_eq!(got, want, "WebSocket on {room}");
            Held::Ws(Box::new(c))
        });
    }
    for (room, mut c) in sse {
        tasks.spawn(async move {
            let want = numbered(&format!("/feeds/{room}?as=gw"), MESSAGES);
            assert_eq!(sse_texts(&mut c, MESSAGES).await, want, "SSE on {room}");
            Held::Sse(Box::new(c))
        });
    }
    for room in rooms {
        for _ in 0..10 {
            let addr = gw.addr;
            tasks.spawn(async move {
                let want = numbered(&format!("/feeds/{room}?as=gw"), MESSAGES);
                let got = poll_texts(addr, &format!("/rooms/{room}"), MESSAGES).await;
                assert_eq!(got, want, "long-poll on {room}");
                Held::Nothing
            });
        }
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        held.push(r.unwrap_or_else(|e| panic!("a subscriber failed: {e}\n{}", gw.log())));
    }
    assert_eq!(backend.paths().len(), 3, "no connection was opened twice");
    // The clients go; each channel's backend connection closes backend_linger later, and so
    // do the channels.
    backend.wait_open(3).await;
    let left = Instant::now();
    for h in held {
        match h {
            Held::Ws(mut ws) => Ws::close(&mut ws, None).await.unwrap(),
            Held::Sse(sse) => drop(sse),
            Held::Nothing => {}
        }
    }
    gw.wait_metric_is(
        "switchyard_client_connections_open{route=\"rooms\",transport=\"sse\"}",
        0.0,
    )
    .await;
    backend.wait_open(0).await;
    assert!(
        left.elapsed() >= Duration::from_millis(900),
        "closed after backend_linger, not before ({:?})",
        left.elapsed()
    );
    gw.wait_metric_is("switchyard_channels_open{route=\"rooms\"}", 0.0)
        .await;
    gw.expect_metric(
        "switchyard_channel_events_total{event=\"closed\",route=\"rooms\"}",
        3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_channels_refuses_a_new_channel_and_hostile_names_are_not_found() {
    let backend = PathBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: rooms\n    path: \"/rooms/{{room}}\"\n    backend: {{ websocket: \"{}\" }}\n    limits: {{ max_channels: 2 }}\n",
        backend.url("/feeds/{room}")
    ))
    .await;
    let _a = SseReader::open(gw.addr, "/rooms/a", &[]).await;
    let _b = SseReader::open(gw.addr, "/rooms/b", &[]).await;
    backend.wait_open(2).await;
    let full = http_get(gw.addr, "/rooms/c", &[("accept", "text/event-stream")]).await;
    assert_eq!(full.status, 503, "{}", full.body_text());
    assert_eq!(full.header("retry-after"), Some("5"));
    let ws = tokio_tungstenite::connect_async(gw.ws_url("/rooms/c")).await;
    assert!(
        matches!(ws, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 503),
        "{ws:?}"
    );
    // An open channel still takes clients.
    let _a2 = SseReader::open(gw.addr, "/rooms/a", &[]).await;
    gw.expect_metric(
        "switchyard_channel_events_total{event=\"refused\",route=\"rooms\"}",
        2.0,
    )
    .await;
    let long = format!("/rooms/{}", "x".repeat(300));
    for path in [
        "/rooms/a%2Fb",
        "/rooms/%2e%2e",
        "/rooms/%00",
        "/rooms/caf%C3%A9",
        "/rooms/%zz",
        long.as_str(),
    ] {
        let r = http_get(gw.addr, path, &[("accept", "text/event-stream")]).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body_text());
        let r = http_get(gw.addr, &format!("{path}?transport=poll"), &[]).await;
        assert_eq!(r.status, 404, "{path} (poll): {}", r.body_text());
        let ws = tokio_tungstenite::connect_async(gw.ws_url(path)).await;
        assert!(
            matches!(ws, Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 404),
            "{path}: {ws:?}"
        );
    }
    assert_eq!(backend.paths(), ["/feeds/a", "/feeds/b"]);
}

/// A gateway with `news` (`/news/{topic}`, fed only by publishes, token `s3cret`) offering
/// every client transport, SockJS included.
async fn news_gateway(extra: &str) -> Gateway {
    Gateway::start_with(
        &format!("  - name: news\n    path: \"/news/{{topic}}\"\n    clients: [websocket, sse, long_poll, sockjs]\n    backend: {{ publish: {{ token: s3cret }} }}\n{extra}"),
        crate::common::sockjs::SUITE_DEFAULTS,
    )
    .await
}

async fn publish(gw: &Gateway, path: &str, ctype: &str, body: &[u8]) -> Response {
    request(
        gw.admin,
        "POST",
        path,
        &[("authorization", "Bearer s3cret"), ("content-type", ctype)],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_reaches_every_transport_of_its_channel_and_no_other() {
    let gw = news_gateway("    backend_linger: 5s\n").await;
    let mut ws = ws_client(&gw, "/news/a").await;
    let mut sse = SseReader::open(gw.addr, "/news/a", &[]).await;
    let mut other = SseReader::open(gw.addr, "/news/b", &[]).await;
    let sid = session_id();
    let mut sockjs = Stream::open(
        gw.addr,
        "POST",
        &format!("/news/a/000/{sid}/xhr_streaming"),
        &[],
    )
    .await;
    assert_eq!(sockjs.status, 200);
    let _prelude = sockjs.chunk().await.expect("the prelude");
    assert_eq!(sockjs.chunk().await.as_deref(), Some("o\n"));
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"news\",transport=\"sse\"}",
        2.0,
    )
    .await;

    // Refused: no token, a wrong one, and the public listener.
    let none = request(gw.admin, "POST", "/publish/news/a", &[], b"x").await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = request(
        gw.admin,
        "POST",
        "/publish/news/a",
        &[("authorization", "Bearer s3creT")],
        b"x",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let public = request(
        gw.addr,
        "POST",
        "/publish/news/a",
        &[("authorization", "Bearer s3cret")],
        b"x",
    )
    .await;
    assert_eq!(public.status, 404, "{}", public.body_text());

    let r = publish(
        &gw,
        "/publish/news/a",
        "application/json",
        br#"["one","two"]"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body_text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["subscribers"], 3, "{j}");
    let r = publish(&gw, "/publish/news/a", "text/plain", b"three").await;
    assert_eq!(r.status, 202);
    let last_id = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let want = ["one", "two", "three"];
    assert_eq!(ws_texts(&mut ws, 3).await, want);
    let mut ids = Vec::new();
    for w in want {
        let ev = sse.next_data_event().await;
        assert_eq!(ev.data, w);
        ids.push(ev.id.unwrap());
    }
    assert_eq!(ids.last(), Some(&last_id), "the answer's id is the SSE id");
    assert_eq!(poll_texts(gw.addr, "/news/a", 3).await, want);
    let mut framed: Vec<String> = Vec::new();
    while framed.len() < 3 {
        let chunk = sockjs.chunk().await.expect("SockJS frames");
        for line in chunk.lines().filter_map(|l| l.strip_prefix('a')) {
            let items: Vec<String> = serde_json::from_str(line).unwrap();
            framed.extend(items);
        }
    }
    assert_eq!(framed, want, "SockJS");

    // The other channel got none of it: its first message is its own.
    let r = publish(&gw, "/publish/news/b", "text/plain", b"for b").await;
    assert_eq!(r.status, 202);
    assert_eq!(other.next_data_event().await.data, "for b");
    gw.expect_metric(
        "switchyard_publishes_total{outcome=\"accepted\",route=\"news\"}",
        3.0,
    )
    .await;
    gw.expect_metric(
        "switchyard_publishes_total{outcome=\"unauthorized\",route=\"news\"}",
        2.0,
    )
    .await;
    gw.expect_metric("switchyard_published_messages_total{route=\"news\"}", 4.0)
        .await;

    // Malformed: a bad body, a hostile channel name, a route that takes none, too many keys.
    let bad = publish(&gw, "/publish/news/a", "application/json", b"[1]").await;
    assert_eq!(bad.status, 400);
    let hostile = publish(&gw, "/publish/news/%2e%2e", "text/plain", b"x").await;
    assert_eq!(hostile.status, 404);
    let deep = publish(&gw, "/publish/news/a/b", "text/plain", b"x").await;
    assert_eq!(deep.status, 404);
    let nobody = publish(&gw, "/publish/nope/a", "text/plain", b"x").await;
    assert_eq!(nobody.status, 404);
    let get = request(
        gw.admin,
        "GET",
        "/publish/news/a",
        &[("authorization", "Bearer s3cret")],
        b"",
    )
    .await;
    assert_eq!(get.status, 405);
    ws.close(None).await.unwrap();
}

/// The status of the next answer on `io` (see [`raw_http::read_answer`]).
async fn next_status(io: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
    let answer = raw_http::read_answer(io, buf, false)
        .await
        .expect("an answer before the connection closed");
    answer[9..12].parse().unwrap()
}

/// The admin listener reads a publish whose body has a length whole and answers it on its own
/// connection; a chunked body, one over its own limit, and anything it does not read whole go
/// the full HTTP path. All on one kept-alive connection, pipelined or not, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_of_every_framing_are_answered_in_order_on_one_kept_alive_connection() {
    use tokio::io::AsyncWriteExt;
    let gw = news_gateway("    limits: { max_message: 1000 }\n").await;
    let mut sse = SseReader::open(gw.addr, "/news/k", &[]).await;
    gw.wait_metric(
        "switchyard_client_connections_open{route=\"news\",transport=\"sse\"}",
        1.0,
    )
    .await;
    let post = |body: &str, extra: &str| {
        format!(
            "POST /publish/news/k HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let mut io = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    let mut buf = Vec::new();
    // Two publishes and a health check, pipelined in one write.
    let pipelined = format!(
        "{}{}GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n",
        post("p1", ""),
        post("p2", "")
    );
    io.write_all(pipelined.as_bytes()).await.unwrap();
    assert_eq!(next_status(&mut io, &mut buf).await, 202);
    assert_eq!(next_status(&mut io, &mut buf).await, 202);
    let health = raw_http::read_answer(&mut io, &mut buf, false)
        .await
        .unwrap();
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    // A chunked body, then a plain one again on the same connection.
    io.write_all(b"POST /publish/news/k HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer s3cret\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nc3\r\n0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next_status(&mut io, &mut buf).await, 202);
    // A client that waits for `100 Continue` before its body gets it first.
    let expect = post("e4", "Expect: 100-continue\r\n");
    let (head, body) = expect.split_at(expect.len() - 2);
    io.write_all(head.as_bytes()).await.unwrap();
    let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
    tokio::time::timeout(DEADLINE, raw_http::fill(&mut io, &mut buf, interim.len()))
        .await
        .expect("100 Continue before the body")
        .unwrap();
    assert_eq!(&buf[..interim.len()], interim);
    buf.drain(..interim.len());
    io.write_all(body.as_bytes()).await.unwrap();
    assert_eq!(next_status(&mut io, &mut buf).await, 202);
    // Over the route's max_message: 413, whether the body is read whole first or refused by
    // its declared length on the full path (over what the listener reads whole).
    let big = "x".repeat(1001);
    io.write_all(post(&big, "").as_bytes()).await.unwrap();
    assert_eq!(next_status(&mut io, &mut buf).await, 413);
    let mut io2 = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    let huge = "x".repeat(300 * 1024);
    io2.write_all(post(&huge, "").as_bytes()).await.unwrap();
    assert_eq!(next_status(&mut io2, &mut Vec::new()).await, 413);
    // The connection still serves after a refusal.
    io.write_all(post("p5", "").as_bytes()).await.unwrap();
    assert_eq!(next_status(&mut io, &mut buf).await, 202);
    for want in ["p1", "p2", "c3", "e4", "p5"] {
        assert_eq!(sse.next_data_event().await.data, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_an_unwatched_channel_waits_for_its_first_subscriber_within_backend_linger() {
    let gw = news_gateway("    backend_linger: 2s\n    keepalive: { poll_timeout: 1s }\n").await;
    let r = publish(
        &gw,
        "/publish/news/quiet",
        "application/json",
        br#"["early", {"binary": "AAE="}]"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body_text());
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["subscribers"], 0);
    gw.expect_metric("switchyard_channels_open{route=\"news\"}", 1.0)
        .await;
    let r = http_get(gw.addr, "/news/quiet?transport=poll&cursor=0", &[]).await;
    assert_eq!(r.status, 200);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["messages"][0], "early", "{j}");
    assert_eq!(
        j["messages"][1],
        serde_json::json!({ "binary": "AAE=" }),
        "{j}"
    );
    // backend_linger after its last visit, the channel and what it held are gone.
    gw.wait_metric_is("switchyard_channels_open{route=\"news\"}", 0.0)
        .await;
    let r = http_get(gw.addr, "/news/quiet?transport=poll&cursor=0", &[]).await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["messages"], serde_json::json!([]), "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_publishes_in_a_row_arrive_in_order_beside_the_backends_own_messages() {
    const N: usize = 1000;
    let backend = PathBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: prices\n    path: /prices\n    replay: 2000\n    backend: {{ websocket: \"{}\", publish: {{}} }}\n",
        backend.url("/feed")
    ))
    .await;
    let mut ws = ws_client(&gw, "/prices").await;
    let mut sse = SseReader::open(gw.addr, "/prices", &[]).await;
    backend.wait_open(1).await;
    backend.send.send(2).unwrap();
    assert_eq!(ws_texts(&mut ws, 2).await, numbered("/feed", 2));
    for i in 1..=N {
        let r = request(
            gw.admin,
            "POST",
            "/publish/prices",
            &[],
            i.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 202, "publish {i}: {}", r.body_text());
    }
    let mut want = numbered("/feed", 2);
    want.extend((1..=N).map(|i| i.to_string()));
    assert_eq!(ws_texts(&mut ws, N).await, want[2..]);
    assert_eq!(sse_texts(&mut sse, N + 2).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_client_channels_open_each_clients_own_connection_at_its_channels_url() {
    let backend = PathBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: users\n    path: \"/users/{{user}}\"\n    fanout: per_client\n    backend: {{ websocket: \"{}\" }}\n",
        backend.url("/inbox/{user}")
    ))
    .await;
    let mut u1 = ws_client(&gw, "/users/u1").await;
    let mut u1b = ws_client(&gw, "/users/u1").await;
    let mut u2 = ws_client(&gw, "/users/u2").await;
    backend.wait_open(3).await;
    assert_eq!(backend.paths(), ["/inbox/u1", "/inbox/u1", "/inbox/u2"]);
    backend.send.send(1).unwrap();
    assert_eq!(ws_texts(&mut u1, 1).await, ["/inbox/u1:1"]);
    assert_eq!(ws_texts(&mut u1b, 1).await, ["/inbox/u1:1"]);
    assert_eq!(ws_texts(&mut u2, 1).await, ["/inbox/u2:1"]);
    u1.close(None).await.unwrap();
    backend.wait_open(2).await;
    // A long-poll session on a channel: its own connection at the channel's URL.
    let r = http_get(gw.addr, "/users/u3?transport=poll", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let session = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    backend.wait_open(3).await;
    assert!(backend.paths().contains(&"/inbox/u3".to_owned()));
    backend.send.send(1).unwrap();
    let r = http_get(
        gw.addr,
        &format!("/users/u3?transport=poll&session={session}&cursor=0"),
        &[],
    )
    .await;
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(j["messages"][0], "/inbox/u3:1", "{j}");
    // The session is the channel's: another channel does not know it.
    let r = http_get(
        gw.addr,
        &format!("/users/u2?transport=poll&session={session}&cursor=0"),
        &[],
    )
    .await;
    assert_eq!(r.status, 410, "{}", r.body_text());
}

/// What an authorization endpoint does with each subrequest.
#[derive(Clone, Copy)]
enum AuthMode {
    /// 200 when the cookie `user=<u>` names the channel, 401 without a cookie, 403 otherwise.
    Users,
    /// 500 to everything.
    Broken,
    /// Reads the request and never answers.
    Hangs,
}

/// A real HTTP authorization endpoint (keep-alive, raw HTTP/1.1) recording each subrequest's
/// headers.
struct AuthServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<std::collections::HashMap<String, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthServer {
    async fn start(mode: AuthMode) -> AuthServer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                        buf.drain(..head_end);
                        let mut headers = std::collections::HashMap::new();
                        let mut lines = head.split("\r\n");
                        headers.insert(":line".to_owned(), lines.next().unwrap().to_owned());
                        for l in lines.filter(|l| !l.is_empty()) {
                            let (k, v) = l.split_once(':').unwrap();
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                        }
                        record.lock().unwrap().push(headers.clone());
                        let answer = match mode {
                            AuthMode::Hangs => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            AuthMode::Broken => {
                                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                                    .to_owned()
                            }
                            AuthMode::Users => {
                                let channel = headers.get("x-switchyard-channel");
                                match headers.get("cookie") {
                                    None => "HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Cookie realm=\"alerts\"\r\ncontent-length: 0\r\n\r\n".to_owned(),
                                    Some(c) if channel.is_some_and(|ch| c == &format!("user={ch}")) => "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_owned(),
                                    Some(_) => "HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nno way".to_owned(),
                                }
                            }
                        };
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        AuthServer { addr, asked, task }
    }

    fn asked(&self) -> usize {
        self.asked.lock().unwrap().len()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A gateway with `alerts` (`/alerts/{user}`, a WebSocket backend at `/alerts/{user}`)
/// asking `auth_url` about every subscriber; `auth_extra` is more of the `auth:` map.
async fn alerts_gateway(backend: &PathBackend, auth_url: &str, auth_extra: &str) -> Gateway {
    Gateway::start(&format!(
        "  - name: alerts\n    path: \"/alerts/{{user}}\"\n    backend: {{ websocket: \"{}\" }}\n    auth: {{ url: \"{auth_url}\", forward_headers: [cookie]{auth_extra} }}\n",
        backend.url("/alerts/{user}")
    ))
    .await
}

/// The status an SSE, a WebSocket and a long-poll request for `path` get with `headers`.
async fn statuses(gw: &Gateway, path: &str, headers: &[(&str, &str)]) -> [u16; 3] {
    let mut sse_headers = headers.to_vec();
    sse_headers.push(("accept", "text/event-stream"));
    let sse = Stream::open(gw.addr, "GET", path, &sse_headers)
        .await
        .status;
    let poll = http_get(gw.addr, &format!("{path}?transport=poll&cursor=0"), headers)
        .await
        .status;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        gw.ws_url(path),
    )
    .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let ws = match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("WebSocket: {e}"),
    };
    [sse, ws, poll]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_admits_the_right_cookie_on_its_channel_and_refuses_others_on_every_transport() {
    let auth = AuthServer::start(AuthMode::Users).await;
    let backend = PathBackend::start().await;
    let gw = alerts_gateway(&backend, &format!("http://{}/authorize?v=1", auth.addr), "").await;
    let wrong = statuses(&gw, "/alerts/u1", &[("cookie", "user=u2")]).await;
    assert_eq!(wrong, [403, 403, 403]);
    let none = statuses(&gw, "/alerts/u1", &[]).await;
    assert_eq!(none, [401, 401, 401]);
    let r = http_get(gw.addr, "/alerts/u1", &[("accept", "text/event-stream")]).await;
    assert_eq!(
        r.header("www-authenticate"),
        Some("Cookie realm=\"alerts\"")
    );
    assert_eq!(
        backend.paths(),
        Vec::<String>::new(),
        "no refused client reached the backend"
    );
    gw.expect_metric("switchyard_channels_open{route=\"alerts\"}", 0.0)
        .await;

    let mut sse = SseReader::open(gw.addr, "/alerts/u1", &[("cookie", "user=u1")]).await;
    let mut ws = {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                gw.ws_url("/alerts/u1"),
            )
            .unwrap();
        req.headers_mut()
            .insert("cookie", "user=u1".parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    backend.wait_open(1).await;
    backend.send.send(2).unwrap();
    assert_eq!(sse_texts(&mut sse, 2).await, numbered("/alerts/u1", 2));
    assert_eq!(ws_texts(&mut ws, 2).await, numbered("/alerts/u1", 2));
    let r = http_get(
        gw.addr,
        "/alerts/u1?transport=poll&cursor=0",
        &[("cookie", "user=u1")],
    )
    .await;
    assert_eq!(r.status, 200);

    let asked = auth.asked.lock().unwrap().clone();
    let last = asked.last().unwrap();
    assert_eq!(last[":line"], "GET /authorize?v=1 HTTP/1.1");
    assert_eq!(last["x-original-uri"], "/alerts/u1?transport=poll&cursor=0");
    assert_eq!(last["x-switchyard-route"], "alerts");
    assert_eq!(last["x-switchyard-channel"], "u1");
    assert_eq!(last["x-forwarded-for"], "127.0.0.1");
    assert_eq!(last["x-forwarded-proto"], "http");
    assert_eq!(last["cookie"], "user=u1");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "switchyard_auth_requests_total{outcome=\"allowed\",route=\"alerts\"}"
        )
        .unwrap()
            >= 3.0
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_auth_requests_total{outcome=\"denied\",route=\"alerts\"}"
        ),
        Some(7.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_auth_requests_total{outcome=\"error\",route=\"alerts\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_fails_closed_and_the_backend_is_never_contacted() {
    let backend = PathBackend::start().await;
    let dead = dead_port();
    let gw = alerts_gateway(&backend, &format!("http://{}/authorize", dead.addr), "").await;
    assert_eq!(
        statuses(&gw, "/alerts/u1", &[("cookie", "user=u1")]).await,
        [503, 503, 503]
    );
    let broken = AuthServer::start(AuthMode::Broken).await;
    let gw2 = alerts_gateway(&backend, &format!("http://{}/authorize", broken.addr), "").await;
    assert_eq!(
        statuses(&gw2, "/alerts/u1", &[("cookie", "user=u1")]).await,
        [503, 503, 503]
    );
    let hangs = AuthServer::start(AuthMode::Hangs).await;
    let gw3 = alerts_gateway(
        &backend,
        &format!("http://{}/authorize", hangs.addr),
        ", timeout: 300ms",
    )
    .await;
    let started = Instant::now();
    let r = http_get(
        gw3.addr,
        "/alerts/u1",
        &[("accept", "text/event-stream"), ("cookie", "user=u1")],
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "refused at the timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        backend.paths(),
        Vec::<String>::new(),
        "the backend was never contacted"
    );
    gw3.expect_metric(
        "switchyard_auth_requests_total{outcome=\"error\",route=\"alerts\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_admission_spares_the_auth_server_a_second_call() {
    let auth = AuthServer::start(AuthMode::Users).await;
    let backend = PathBackend::start().await;
    let gw = alerts_gateway(
        &backend,
        &format!("http://{}/authorize", auth.addr),
        ", cache: 30s",
    )
    .await;
    let _a = SseReader::open(gw.addr, "/alerts/u1", &[("cookie", "user=u1")]).await;
    assert_eq!(
        auth.asked(),
        1,
        "the channel's opening and the stream share one answer"
    );
    let _b = SseReader::open(gw.addr, "/alerts/u1", &[("cookie", "user=u1")]).await;
    // A poll with its cursor at the head (the feed is empty) waits: it was admitted.
    let poll = Stream::open(
        gw.addr,
        "GET",
        "/alerts/u1?transport=poll&cursor=0",
        &[("cookie", "user=u1")],
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), poll)
            .await
            .is_err(),
        "the poll waits for a message"
    );
    assert_eq!(auth.asked(), 1, "cached");
    // Other headers are another key; refusals are never cached.
    let r = http_get(
        gw.addr,
        "/alerts/u1",
        &[("accept", "text/event-stream"), ("cookie", "user=u2")],
    )
    .await;
    assert_eq!(r.status, 403);
    let r = http_get(
        gw.addr,
        "/alerts/u1",
        &[("accept", "text/event-stream"), ("cookie", "user=u2")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(auth.asked(), 3);
    gw.expect_metric("switchyard_auth_cache_hits_total{route=\"alerts\"}", 3.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channels_ring_is_bounded_by_the_memory_budget_and_lets_its_oldest_go() {
    let gw = Gateway::start_with(
        "  - name: news\n    path: \"/news/{topic}\"\n    backend: { publish: {} }\n    replay: 64\n    keepalive: { poll_timeout: 1s }\n",
        "  limits: { memory: 1MiB }\n",
    )
    .await;
    let big = "x".repeat(300 * 1024);
    for i in 1..=10 {
        let body = format!("{i}:{big}");
        let r = request(gw.admin, "POST", "/publish/news/big", &[], body.as_bytes()).await;
        assert_eq!(r.status, 202, "{}", r.body_text());
    }
    let r = http_get(gw.addr, "/news/big?transport=poll&cursor=0", &[]).await;
    assert_eq!(r.status, 200);
    let j: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let got: Vec<u64> = j["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| number_of(m.as_str().unwrap()))
        .collect();
    assert_eq!(got, [8, 9, 10], "the newest that fit in 1 MiB");
    assert_eq!(j["missed"], true, "the client is told it missed some");
    let m = gw.metrics().await;
    assert!(metric(&m, "switchyard_memory_used_bytes").unwrap() <= 1024.0 * 1024.0);
    assert!(metric(&m, "switchyard_memory_refusals_total{what=\"replay_ring\"}").unwrap() >= 7.0);
    // Another channel still gets its messages.
    let r = request(gw.admin, "POST", "/publish/news/small", &[], b"hello").await;
    assert_eq!(r.status, 202);
    assert_eq!(poll_texts(gw.addr, "/news/small", 1).await, ["hello"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_channels_whose_feed_is_unchanged_and_retires_the_others() {
    let route = |extra: &str| {
        format!("  - name: news\n    path: \"/news/{{topic}}\"\n    backend: {{ publish: {{}} }}\n{extra}  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n")
    };
    let gw = Gateway::start(&route("")).await;
    let mut sse = SseReader::open(gw.addr, "/news/a", &[]).await;
    for topic in ["a", "b"] {
        let r = request(
            gw.admin,
            "POST",
            &format!("/publish/news/{topic}"),
            &[],
            b"1",
        )
        .await;
        assert_eq!(r.status, 202);
    }
    assert_eq!(sse.next_data_event().await.data, "1");
    gw.expect_metric("switchyard_channels_open{route=\"news\"}", 2.0)
        .await;
    // Not the feed: the channels carry on.
    gw.rewrite_routes(&route(
        "    allow_no_origin: true\n    keepalive: { sse_heartbeat: 20s }\n",
    ));
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 2.0).await;
    let r = request(gw.admin, "POST", "/publish/news/a", &[], b"2").await;
    assert_eq!(r.status, 202);
    assert_eq!(sse.next_data_event().await.data, "2", "the same channel");
    gw.expect_metric("switchyard_channels_open{route=\"news\"}", 2.0)
        .await;
    // The feed itself: its channels are retired, and their clients told to go.
    gw.rewrite_routes(&route("    replay: 10\n"));
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 3.0).await;
    assert!(sse.next_data_event_or_end().await.is_none(), "told to go");
    gw.wait_metric_is("switchyard_channels_open{route=\"news\"}", 0.0)
        .await;
    let r = request(gw.admin, "POST", "/publish/news/c", &[], b"3").await;
    assert_eq!(r.status, 202);
    gw.expect_metric("switchyard_channels_open{route=\"news\"}", 1.0)
        .await;
    // Removed with a channel open: its series goes, and the table's end does not make it again.
    gw.rewrite_routes("  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n");
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 4.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "switchyard_channels_open{route=\"news\"}"),
        None,
        "{m}"
    );
}
