//! Two-way bridging with per-client sessions (`fanout: per_client`) against real backends on
//! ephemeral ports: long-poll and SSE clients talking to a WebSocket backend through POST, a
//! WebSocket client in front of an SSE backend with `post:`, session expiry, isolation and the
//! answers for unknown sessions.

use crate::common::chat::*;
use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A gateway with route `chat` on `/chat`: one session per client on a [`ChatBackend`].
async fn chat_gateway(extra: &str) -> (ChatBackend, Gateway) {
    let backend = ChatBackend::start().await;
    let routes = format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ websocket: \"{}\" }}\n{extra}  - name: other\n    path: /other\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ websocket: \"{}\" }}\n",
        backend.url("/chat"),
        backend.url("/other"),
    );
    let gw = Gateway::start(&routes).await;
    (backend, gw)
}

/// Opens a long-poll session and returns its id.
async fn open_session(client: &mut Client, headers: &[(&str, &str)]) -> String {
    let a = client.get("/chat?transport=poll", headers).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    assert_eq!(v["cursor"], 0);
    assert_eq!(v["messages"], serde_json::json!([]));
    v["session"].as_str().expect("a session id").to_owned()
}

/// Polls once: (messages as text, next cursor, whole answer).
async fn poll(client: &mut Client, id: &str, cursor: u64) -> (Vec<String>, u64, serde_json::Value) {
    let a = client
        .get(
            &format!("/chat?transport=poll&session={id}&cursor={cursor}"),
            &[],
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json();
    let texts = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect();
    (texts, v["cursor"].as_u64().unwrap(), v)
}

async fn post(client: &mut Client, id: &str, content_type: &str, body: &str) -> Answer {
    client
        .request(
            "POST",
            &format!("/chat?transport=poll&session={id}"),
            &[("content-type", content_type)],
            body,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_client_holds_a_full_conversation_with_a_websocket_backend() {
    let (backend, gw) = chat_gateway("    keepalive: { poll_timeout: 2s }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(
        &mut c,
        &[
            ("cookie", "user=alice"),
            ("cookie", "theme=dark"),
            ("authorization", "Bearer alice-token"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    assert!(id.len() >= 22, "at least 128 bits: {id}");

    // The poller collects while the sender posts: 300 single text/plain posts, then 20 JSON
    // arrays of 10.
    let addr = gw.addr;
    let poller_id = id.clone();
    let poller = tokio::spawn(async move {
        let mut pc = Client::connect(addr).await;
        let mut got = Vec::new();
        let mut cursor = 0;
        while got.len() < 500 {
            let (texts, next, _) = poll(&mut pc, &poller_id, cursor).await;
            got.extend(texts);
            cursor = next;
        }
        (got, cursor)
    });
    for i in 1..=300 {
        let a = post(&mut c, &id, "text/plain", &format!("m{i}")).await;
        assert_eq!(a.status, 204, "{}", a.body);
    }
    for batch in 0..20 {
        let items: Vec<String> = (0..10)
            .map(|k| format!("m{}", 301 + batch * 10 + k))
            .collect();
        let a = post(
            &mut c,
            &id,
            "application/json",
            &serde_json::to_string(&items).unwrap(),
        )
        .await;
        assert_eq!(a.status, 204, "{}", a.body);
    }
    let (got, cursor) = tokio::time::timeout(DEADLINE, poller)
        .await
        .unwrap()
        .unwrap();
    let expected: Vec<String> = (1..=500).map(|i| format!("1:{i}:m{i}")).collect();
    assert_eq!(
        got, expected,
        "every echo, in order, from one backend connection"
    );
    assert_eq!(cursor, 500);

    let conns = backend.conns();
    assert_eq!(conns.len(), 1, "one backend connection for the session");
    let h = &conns[0].headers;
    assert_eq!(h["cookie"], "user=alice; theme=dark");
    assert_eq!(h["authorization"], "Bearer alice-token");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "the client's own claim is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    gw.expect_metric(
        r#"switchyard_sessions_open{route="chat",transport="long_poll"}"#,
        1.0,
    )
    .await;
    gw.expect_metric(
        r#"switchyard_messages_total{direction="in",route="chat",transport="long_poll"}"#,
        500.0,
    )
    .await;
    gw.expect_metric(
        r#"switchyard_messages_total{direction="out",route="chat",transport="long_poll"}"#,
        500.0,
    )
    .await;
}

#[tokio::test]
async fn sessions_are_isolated_polls_are_idempotent_and_unknown_sessions_get_410() {
    let (backend, gw) = chat_gateway("    keepalive: { poll_timeout: 300ms }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let a = open_session(&mut c, &[("cookie", "user=a")]).await;
    let b = open_session(&mut c, &[("cookie", "user=b")]).await;
    assert_ne!(a, b);
    assert_eq!(post(&mut c, &a, "text/plain", "for-a").await.status, 204);
    assert_eq!(post(&mut c, &b, "text/plain", "for-b").await.status, 204);

    let (ta, ca, _) = poll(&mut c, &a, 0).await;
    let (tb, cb, _) = poll(&mut c, &b, 0).await;
    assert_eq!(ta, ["1:1:for-a"]);
    assert_eq!(tb, ["2:1:for-b"]);
    assert_eq!((ca, cb), (1, 1));
    // A poll repeated with the old cursor gets the same answer (its reply was lost, say).
    let (again, c_again, _) = poll(&mut c, &a, 0).await;
    assert_eq!((again, c_again), (ta, 1));
    // Nothing new: the poll waits poll_timeout and answers empty at the same cursor.
    let started = std::time::Instant::now();
    let (empty, same, _) = poll(&mut c, &a, 1).await;
    assert!(empty.is_empty());
    assert_eq!(same, 1);
    assert!(started.elapsed() >= Duration::from_millis(250));

    // Unknown, malformed and other-route ids are all 410, with a reason.
    for path in [
        "/chat?transport=poll&session=AAAAAAAAAAAAAAAAAAAAAAAA&cursor=0".to_owned(),
        "/chat?transport=poll&session=nope&cursor=0".to_owned(),
        format!("/other?transport=poll&session={a}&cursor=0"),
    ] {
        let r = c.get(&path, &[]).await;
        assert_eq!(r.status, 410, "{path}: {}", r.body);
        assert!(r.body.contains("start a new one"), "{}", r.body);
    }
    let r = post(&mut c, "AAAAAAAAAAAAAAAAAAAAAAAA", "text/plain", "x").await;
    assert_eq!(r.status, 410);
    // A cursor ahead of the session is a client bug, not a reason to lose anything.
    let r = c
        .get(&format!("/chat?transport=poll&session={a}&cursor=99"), &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Malformed bodies are refused and nothing reaches the backend.
    let r = post(&mut c, &a, "application/json", "{\"not\": \"an array\"}").await;
    assert_eq!(r.status, 400, "{}", r.body);
    // A body of many tiny messages (here 200,000 empty strings in 600 KB) is refused whole:
    // one POST cannot become hundreds of thousands of queued messages.
    let many = format!("[{}]", vec!["\"\""; 200_000].join(","));
    let r = post(&mut c, &a, "application/json", &many).await;
    assert_eq!(r.status, 413, "{}", r.body);

    // DELETE ends the session and closes its backend socket.
    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=poll&session={a}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let closed = backend.wait_ended(1).await;
    assert_eq!(closed.closed_with, Some(1000));
    assert_eq!(
        closed.received,
        ["for-a"],
        "the bad body never reached the backend"
    );
    let r = c
        .get(&format!("/chat?transport=poll&session={a}&cursor=1"), &[])
        .await;
    assert_eq!(r.status, 410);
    // Session b is untouched, and a new session starts fine.
    assert_eq!(post(&mut c, &b, "text/plain", "still").await.status, 204);
    assert_eq!(poll(&mut c, &b, 1).await.0, ["2:2:still"]);
    let fresh = open_session(&mut c, &[]).await;
    assert_eq!(post(&mut c, &fresh, "text/plain", "hi").await.status, 204);
    assert_eq!(poll(&mut c, &fresh, 0).await.0, ["3:1:hi"]);
    gw.expect_metric(
        r#"switchyard_sessions_ended_total{reason="client_closed",route="chat"}"#,
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_session_without_polls_expires_and_its_backend_socket_closes() {
    let (backend, gw) =
        chat_gateway("    session_ttl: 1s\n    keepalive: { poll_timeout: 200ms }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    assert_eq!(post(&mut c, &id, "text/plain", "x").await.status, 204);
    // Polling keeps it alive past its ttl.
    let mut cursor = 0;
    for _ in 0..6 {
        cursor = poll(&mut c, &id, cursor).await.1;
    }
    assert_eq!(cursor, 1);
    assert!(!backend.conns()[0].ended, "a polled session stays open");
    let quiet = std::time::Instant::now();
    let closed = backend.wait_ended(1).await;
    let after = quiet.elapsed();
    assert_eq!(closed.closed_with, Some(1001), "closed as going away");
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "expired {after:?} after the last poll"
    );
    let r = c
        .get(&format!("/chat?transport=poll&session={id}&cursor=1"), &[])
        .await;
    assert_eq!(r.status, 410, "{}", r.body);
    gw.wait_metric(
        r#"switchyard_sessions_ended_total{reason="expired",route="chat"}"#,
        1.0,
    )
    .await;
    gw.expect_metric(
        r#"switchyard_sessions_open{route="chat",transport="long_poll"}"#,
        0.0,
    )
    .await;
}

#[tokio::test]
async fn a_backend_close_reaches_the_poller_after_the_messages_before_it() {
    let (_backend, gw) = chat_gateway("    keepalive: { poll_timeout: 2s }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    let r = post(
        &mut c,
        &id,
        "application/json",
        r#"["one", "two", "close:4001"]"#,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let mut got = Vec::new();
    let mut cursor = 0;
    let closed = loop {
        let (texts, next, v) = poll(&mut c, &id, cursor).await;
        got.extend(texts);
        cursor = next;
        if !v["closed"].is_null() {
            break v["closed"].clone();
        }
    };
    assert_eq!(got, ["1:1:one", "1:2:two"]);
    assert_eq!(closed["code"], 4001);
    let r = c
        .get(
            &format!("/chat?transport=poll&session={id}&cursor={cursor}"),
            &[],
        )
        .await;
    assert_eq!(
        r.status, 410,
        "the session is gone once its end was delivered"
    );
    let r = post(&mut c, &id, "text/plain", "late").await;
    assert_eq!(r.status, 410);
}

#[tokio::test]
async fn unreachable_backend_is_a_502_and_no_session() {
    let dead = dead_port();
    let gw = Gateway::start(&format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ websocket: \"ws://{}/x\", connect_timeout: 1s }}\n",
        dead.addr
    ))
    .await;
    let mut c = Client::connect(gw.addr).await;
    let r = c.get("/chat?transport=poll", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("could not be reached"), "{}", r.body);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let r = http_get(
        gw.addr,
        "/chat",
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", key),
        ],
    )
    .await;
    assert_eq!(r.status, 502, "a WebSocket client hears it before any 101");
    gw.expect_metric(
        r#"switchyard_rejections_total{reason="backend_unreachable",route="chat"}"#,
        2.0,
    )
    .await;
}

#[tokio::test]
async fn sse_client_sends_with_post_and_reattaches_with_last_event_id() {
    let (backend, gw) = chat_gateway("").await;
    let mut sse = SseReader::open(gw.addr, "/chat?transport=sse", &[("cookie", "user=sse")]).await;
    let first = sse.next_data_event().await;
    assert_eq!(first.event.as_deref(), Some("session"));
    let id = first.data.clone();
    assert_eq!(first.id.as_deref(), Some(format!("{id}-0").as_str()));

    let mut c = Client::connect(gw.addr).await;
    let send = |text: &'static str| {
        let path = format!("/chat?transport=sse&session={id}");
        async move {
            let mut c = Client::connect(gw.addr).await;
            c.request("POST", &path, &[], text).await
        }
    };
    for t in ["a", "b", "c"] {
        assert_eq!(send(t).await.status, 204);
    }
    for (n, t) in ["a", "b", "c"].iter().enumerate() {
        let e = sse.next_data_event().await;
        assert_eq!(e.data, format!("1:{}:{t}", n + 1));
        assert_eq!(e.id.as_deref(), Some(format!("{id}-{}", n + 1).as_str()));
    }
    // The stream drops; what the backend says meanwhile is held for the session.
    drop(sse);
    for t in ["d", "e"] {
        assert_eq!(send(t).await.status, 204);
    }
    let last = format!("{id}-3");
    let mut sse = SseReader::open(
        gw.addr,
        "/chat",
        &[("accept", "text/event-stream"), ("last-event-id", &last)],
    )
    .await;
    let hello = sse.next_data_event().await;
    assert_eq!(hello.event.as_deref(), Some("session"));
    assert_eq!(hello.data, id, "reattached to the same session");
    assert_eq!(hello.id, None, "the browser keeps its place");
    assert_eq!(sse.next_data_event().await.data, "1:4:d");
    assert_eq!(sse.next_data_event().await.data, "1:5:e");
    assert_eq!(backend.conns().len(), 1, "still one backend connection");
    // An SSE client on a one-session route may also end it.
    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=sse&session={id}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(backend.wait_ended(1).await.closed_with, Some(1000));
    let end = sse.next_data_event_or_end().await;
    let closed = end.expect("told that the session closed");
    assert_eq!(closed.event.as_deref(), Some("closed"));
}

#[tokio::test]
async fn websocket_client_gets_its_own_backend_session() {
    let (backend, gw) = chat_gateway("").await;
    let mut req = gw.ws_url("/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("cookie", "user=ws".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    for i in 1..=50 {
        ws.send(Message::text(format!("w{i}"))).await.unwrap();
    }
    for i in 1..=50 {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("1:{i}:w{i}"));
    }
    assert_eq!(backend.conns()[0].headers["cookie"], "user=ws");
    // The backend's own close code reaches the client.
    ws.send(Message::text("close:4002")).await.unwrap();
    let code = loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 4002);
    // A second client closes its side; the backend hears a normal close.
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    assert_eq!(backend.wait_ended(2).await.closed_with, Some(1000));
}

/// `backend: { sse: .., post: .. }` with fanout `fanout` and the client cookie `cookie`.
async fn sse_post_gateway(fanout: &str) -> (SsePostBackend, Gateway) {
    let backend = SsePostBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    fanout: {fanout}\n    origins: [\"https://app.example\"]\n    backend: {{ sse: \"{}\", post: \"{}\" }}\n",
        backend.url("/events"),
        backend.url("/send"),
    ))
    .await;
    (backend, gw)
}

#[tokio::test]
async fn websocket_clients_in_front_of_an_sse_backend_post_their_messages() {
    for fanout in ["per_client", "shared"] {
        let (backend, gw) = sse_post_gateway(fanout).await;
        let mut req = gw.ws_url("/feed").into_client_request().unwrap();
        req.headers_mut()
            .insert("cookie", "user=w".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        backend.wait_subscriptions(1).await;
        for i in 1..=50 {
            ws.send(Message::text(format!("s{i}"))).await.unwrap();
        }
        for i in 1..=50 {
            let m = tokio::time::timeout(DEADLINE, ws.next()).await;
            let Ok(m) = m else {
                panic!(
                    "{fanout}: no echo {i}; posts {:?}\n{}",
                    backend.posts().len(),
                    gw.log()
                )
            };
            assert_eq!(
                m.unwrap().unwrap().into_text().unwrap().as_str(),
                format!("echo:s{i}"),
                "{fanout}"
            );
        }
        let posts = backend.posts();
        assert_eq!(posts.len(), 50);
        let bodies: Vec<_> = posts.iter().map(|p| p.body.clone()).collect();
        let expected: Vec<_> = (1..=50).map(|i| format!("s{i}")).collect();
        assert_eq!(bodies, expected, "{fanout}: POSTed in order");
        assert_eq!(posts[0].headers["cookie"], "user=w");
        assert_eq!(
            posts[0].headers["content-type"],
            "text/plain; charset=utf-8"
        );
        assert_eq!(posts[0].headers["x-forwarded-for"], "127.0.0.1");
        if fanout == "per_client" {
            let subs = backend.subscriptions.lock().unwrap().clone();
            assert_eq!(
                subs[0]["cookie"], "user=w",
                "the subscription is the client's own"
            );
        }
        // A message the backend refuses closes the client with 1008 and the status.
        ws.send(Message::text("forbidden")).await.unwrap();
        let close = loop {
            match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(f)))) => break f,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        };
        assert_eq!(u16::from(close.code), 1008, "{fanout}");
        assert!(close.reason.contains("403"), "{}", close.reason);
        gw.expect_metric(
            r#"switchyard_backend_posts_total{outcome="ok",route="feed"}"#,
            50.0,
        )
        .await;
    }
}

#[tokio::test]
async fn post_on_a_one_way_route_is_405() {
    let backend = SsePostBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    backend: {{ sse: \"{}\" }}\n",
        backend.url("/events"),
    ))
    .await;
    let mut c = Client::connect(gw.addr).await;
    let r = c.request("POST", "/feed?transport=poll", &[], "x").await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.headers["allow"], "GET");
}

#[tokio::test]
async fn a_client_that_falls_behind_holds_back_its_backend_and_loses_nothing() {
    // At most 8 unacknowledged messages are held per session; the rest wait in the backend's
    // socket until the client acknowledges.
    let (backend, gw) =
        chat_gateway("    limits: { send_queue: 8 }\n    keepalive: { poll_timeout: 2s }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    let items: Vec<String> = (1..=300).map(|i| format!("m{i}")).collect();
    let r = post(
        &mut c,
        &id,
        "application/json",
        &serde_json::to_string(&items).unwrap(),
    )
    .await;
    assert_eq!(
        r.status, 204,
        "client messages still flow while the backend waits: {}",
        r.body
    );
    let mut got = Vec::new();
    let mut cursor = 0;
    let mut polls = 0;
    while got.len() < 300 {
        let (texts, next, v) = poll(&mut c, &id, cursor).await;
        assert!(
            texts.len() <= 8,
            "never more than send_queue held: {}",
            texts.len()
        );
        assert!(v["missed"].is_null(), "nothing is dropped");
        got.extend(texts);
        cursor = next;
        polls += 1;
    }
    let expected: Vec<String> = (1..=300).map(|i| format!("1:{i}:m{i}")).collect();
    assert_eq!(got, expected);
    assert!(polls >= 300 / 8, "{polls} polls");
    assert_eq!(backend.conns().len(), 1);
    assert!(!backend.conns()[0].ended);
}

#[tokio::test]
async fn sessions_per_route_are_capped_by_max_clients() {
    let (backend, gw) = chat_gateway("    limits: { max_clients: 2 }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let a = open_session(&mut c, &[]).await;
    let _b = open_session(&mut c, &[]).await;
    let r = c.get("/chat?transport=poll", &[]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "5");
    assert!(r.body.contains("max_clients"), "{}", r.body);
    let handshake = [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let ws_refused = http_get(gw.addr, "/chat", &handshake).await;
    assert_eq!(ws_refused.status, 503, "WebSocket sessions count too");
    assert_eq!(
        backend.conns().len(),
        2,
        "no backend connection for a refused session"
    );
    // Ending one frees its place.
    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=poll&session={a}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    backend.wait_ended(1).await;
    // The place is given back when the ended session's task finishes, a moment after the
    // backend saw its close: a poll in between is refused (and counted) like any other.
    let until = std::time::Instant::now() + DEADLINE;
    let mut refused_while_freeing = 0.0;
    loop {
        let r = c.get("/chat?transport=poll", &[]).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.body);
        refused_while_freeing += 1.0;
        assert!(
            std::time::Instant::now() < until,
            "the freed place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.expect_metric(
        r#"switchyard_rejections_total{reason="too_many_sessions",route="chat"}"#,
        2.0 + refused_while_freeing,
    )
    .await;
}

/// Prints round-trip figures (no timing assertions: figures are compared within one run):
/// 300 sequential message-and-echo round trips directly to the chat backend, through the gateway
/// over a per-client WebSocket, and through the gateway as a long-poll client (POST, then poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_figures_direct_vs_websocket_vs_long_poll() {
    const N: usize = 300;
    let (backend, gw) = chat_gateway("    keepalive: { poll_timeout: 5s }\n").await;
    async fn ws_round_trips(url: String, conn: usize) -> Duration {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let started = std::time::Instant::now();
        for i in 1..=N {
            ws.send(Message::text(format!("r{i}"))).await.unwrap();
            let m = tokio::time::timeout(DEADLINE, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(m.into_text().unwrap().as_str(), format!("{conn}:{i}:r{i}"));
        }
        started.elapsed()
    }
    let direct = ws_round_trips(backend.url("/chat"), 1).await;
    let via_ws = ws_round_trips(gw.ws_url("/chat"), 2).await;
    let mut c = Client::connect(gw.addr).await;
    let mut p = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    let started = std::time::Instant::now();
    let mut cursor = 0;
    for i in 1..=N {
        assert_eq!(
            post(&mut c, &id, "text/plain", &format!("r{i}"))
                .await
                .status,
            204
        );
        let (texts, next, _) = poll(&mut p, &id, cursor).await;
        assert_eq!(texts, [format!("3:{i}:r{i}")]);
        cursor = next;
    }
    let via_poll = started.elapsed();
    let per = |d: Duration| d.as_secs_f64() * 1e6 / N as f64;
    eprintln!(
        "{N} round trips: direct {:.0} us each, per-client WebSocket via gateway {:.0} us ({:.2}x), long-poll POST+poll via gateway {:.0} us ({:.2}x)",
        per(direct),
        per(via_ws),
        per(via_ws) / per(direct),
        per(via_poll),
        per(via_poll) / per(direct),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_echoes_past_the_socket_buffers_do_not_wedge_a_session() {
    // 300 echoes of 64 KiB are far more than 8 held messages plus the kernel's socket buffers.
    // The client posts without polling until everything is stuck: the backend blocks writing
    // its echoes and stops reading, so the gateway's writes to it block too. Then the client
    // polls, and each acknowledgement must let both directions move again.
    let (backend, gw) =
        chat_gateway("    limits: { send_queue: 8 }\n    keepalive: { poll_timeout: 2s }\n").await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    let poster_id = id.clone();
    let poster = tokio::spawn(async move {
        for i in 1..=300 {
            let body = format!("{i:05}{}", "x".repeat(65536 - 5));
            let r = post(&mut c, &poster_id, "text/plain", &body).await;
            assert_eq!(r.status, 204, "message {i}: {}", r.body);
        }
    });
    // Wait until the backend stops receiving: the stall the session must survive.
    let mut seen = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = backend.conns()[0].received.len();
        if now == seen {
            break;
        }
        seen = now;
    }
    assert!(
        seen > 8 && seen < 300,
        "the backend stalled after {seen} messages"
    );
    let mut pc = Client::connect(gw.addr).await;
    let drain = async {
        let (mut got, mut cursor) = (0usize, 0u64);
        while got < 300 {
            let (texts, next, _) = poll(&mut pc, &id, cursor).await;
            for t in texts {
                got += 1;
                let prefix = format!("1:{got}:{got:05}");
                assert!(t.starts_with(&prefix), "echo {got} out of order");
                assert_eq!(t.len(), prefix.len() - 5 + 65536);
            }
            cursor = next;
        }
    };
    tokio::time::timeout(DEADLINE, drain)
        .await
        .expect("the session moves again once the client polls");
    tokio::time::timeout(DEADLINE, poster)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.conns()[0].received.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_websocket_client_sent_before_closing_reaches_the_backend() {
    // The client sends 60 messages of 64 KiB and closes without reading a single echo: over
    // seven times what its session holds (send_queue 8). Once it has closed, its echoes are
    // dropped, so the backend keeps reading, and every message arrives before the close.
    // Until the close is read, the echoes have nowhere to go but the socket buffers on the
    // way (the client reads none), so the volume must fit in them: 200 messages (12.8 MB)
    // did with some buffer sizings and not with others.
    let (backend, gw) = chat_gateway("    limits: { send_queue: 8 }\n").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
        .await
        .unwrap();
    for i in 1..=60 {
        let text = format!("{i:05}{}", "x".repeat(65536 - 5));
        ws.feed(Message::text(text)).await.unwrap();
    }
    ws.close(None).await.unwrap();
    let conn = backend.wait_ended(1).await;
    assert_eq!(conn.received.len(), 60, "every message before the close");
    for (i, m) in conn.received.iter().enumerate() {
        assert!(
            m.starts_with(&format!("{:05}", i + 1)),
            "message {} out of order",
            i + 1
        );
    }
    assert_eq!(conn.closed_with, Some(1000));
}

#[tokio::test]
async fn per_client_sse_backend_without_post_is_one_way() {
    let backend = SsePostBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ sse: \"{}\" }}\n",
        backend.url("/events"),
    ))
    .await;
    let mut c = Client::connect(gw.addr).await;
    let open = c.get("/feed?transport=poll", &[("cookie", "user=p")]).await;
    assert_eq!(open.status, 200, "{}", open.body);
    let id = open.json()["session"].as_str().unwrap().to_owned();
    let r = c
        .request(
            "POST",
            &format!("/feed?transport=poll&session={id}"),
            &[],
            "x",
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.body);
    assert_eq!(r.headers["allow"], "GET");
    assert_eq!(backend.subscriptions.lock().unwrap()[0]["cookie"], "user=p");
}

/// RFC 6455 section 10.2 (Cross-Site WebSocket Hijacking): a route that forwards cookies to
/// its backend only lets listed origins in, and refuses others before the backend is contacted.
#[tokio::test]
async fn foreign_origins_never_reach_a_per_client_backend() {
    let (backend, gw) = chat_gateway("").await;
    let handshake = |origin: &'static str| {
        let mut h = vec![
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("cookie", "user=victim"),
        ];
        if !origin.is_empty() {
            h.push(("origin", origin));
        }
        h
    };
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
    ] {
        let r = http_get(gw.addr, "/chat", &handshake(origin)).await;
        assert_eq!(r.status, 403, "{origin}");
        let r = http_get(gw.addr, "/chat?transport=poll", &[("origin", origin)]).await;
        assert_eq!(r.status, 403, "{origin}");
        let r = http_get(gw.addr, "/chat?transport=sse", &[("origin", origin)]).await;
        assert_eq!(r.status, 403, "{origin}");
    }
    // An <img> or <script> GET from another site carries no Origin but says so itself.
    let r = http_get(
        gw.addr,
        "/chat?transport=poll",
        &[("sec-fetch-site", "cross-site"), ("cookie", "user=victim")],
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(
        backend.conns().is_empty(),
        "no refused client reached the backend"
    );
    gw.expect_metric(
        r#"switchyard_rejections_total{reason="origin_not_allowed",route="chat"}"#,
        10.0,
    )
    .await;
    // The listed origin, and a client that sends none (not a browser), get through.
    let mut req = gw.ws_url("/chat").into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "https://app.example".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hi")).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.into_text().unwrap().as_str(), "1:1:hi");
    let mut c = Client::connect(gw.addr).await;
    open_session(&mut c, &[("origin", "https://app.example")]).await;
    open_session(&mut c, &[]).await;
    // A session opened from the right origin cannot be fed from another one.
    let id = open_session(&mut c, &[]).await;
    let r = c
        .request(
            "POST",
            &format!("/chat?transport=poll&session={id}"),
            &[("origin", "https://evil.example")],
            "x",
        )
        .await;
    assert_eq!(r.status, 403);
}

/// A backend that completes WebSocket handshakes and then never reads (every client message
/// sent to it can only pile up in the gateway), or with `flood` sends 1 MiB binary frames for
/// as long as the gateway takes them.
async fn stalled_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    handshaking_backend(false).await
}

async fn handshaking_backend(flood: bool) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let Some(answer) = read_request_head(&mut s)
                .await
                .and_then(|head| ws_switching_protocols(&head))
            else {
                continue;
            };
            if s.write_all(answer.as_bytes()).await.is_err() {
                continue;
            }
            if flood {
                held.push(tokio::spawn(async move {
                    let mut frame = vec![0x82u8, 127];
                    frame.extend_from_slice(&(1u64 << 20).to_be_bytes());
                    frame.extend(std::iter::repeat_n(7u8, 1 << 20));
                    while s.write_all(&frame).await.is_ok() {}
                }));
            } else {
                held.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(s);
                }));
            }
        }
    });
    (addr, task)
}

/// Sends 1 MiB binary frames until TCP pushes back for good (2 s without progress), the
/// connection ends, or `max` went; returns how many went.
async fn send_mib_frames<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, max: usize) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = Message::binary(vec![7u8; 1 << 20]);
    let mut sent = 0usize;
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_secs(2), ws.send(frame.clone())).await
    {
        sent += 1;
        if sent == max {
            break;
        }
    }
    sent
}

/// A per-client session whose backend stops reading: each client may have only a couple of
/// `max_message` in flight towards it (the rest waits in TCP, unread), not hundreds, and the
/// gateway keeps serving everyone else. Three clients sending 1 MiB frames as fast as they can
/// took the gateway past 800 MB when the bound was 256 messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backend_holds_client_messages_bounded_in_bytes() {
    let (backend, task) = stalled_backend().await;
    let gw = Gateway::start(&format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"ws://{backend}/\" }}\n    limits: {{ max_message: 1MiB }}\n  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n"
    ))
    .await;
    let before = gw.rss_kib();
    let mut senders = Vec::new();
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
            .await
            .unwrap();
        senders.push(tokio::spawn(async move {
            // The gateway must stop reading long before 256 messages.
            let sent = send_mib_frames(&mut ws, 300).await;
            (sent, ws)
        }));
    }
    let mut held = Vec::new();
    for s in senders {
        let (sent, ws) = s.await.unwrap();
        eprintln!("a client got {sent} MiB out before TCP pushed back");
        assert!(
            sent < 100,
            "the gateway kept reading: {sent} MiB taken from one client"
        );
        held.push(ws);
    }
    let grew_mib = gw.rss_kib().saturating_sub(before) / 1024;
    eprintln!("three stalled clients: the gateway grew by {grew_mib} MiB");
    assert!(
        grew_mib < 64,
        "three stalled clients grew the gateway by {grew_mib} MiB"
    );
    // Everyone else is still served.
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    assert!(!sse.next_data_event().await.data.is_empty());
    drop(held);
    task.abort();
}

/// `server.limits.memory` bounds the sum over clients: fifty clients of a stalled backend,
/// each sending 1 MiB frames for as long as the gateway reads them, cannot take the gateway
/// past the budget plus a per-connection constant. Clients whose next message does not fit
/// are closed with 1013 (try again later), the refusals are counted, and the gateway keeps
/// serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_bounds_what_all_clients_make_the_gateway_hold() {
    let (backend, task) = stalled_backend().await;
    let gw = Gateway::start_with(
        &format!(
            "  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"ws://{backend}/\" }}\n    limits: {{ max_message: 1MiB, max_clients: 100 }}\n  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n"
        ),
        // Under `server:` (the test config's `defaults` slot follows its keys).
        "  limits: { memory: 16MiB }\n",
    )
    .await;
    let before = gw.rss_kib();
    let mut senders = Vec::new();
    for _ in 0..50 {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
            .await
            .unwrap();
        senders.push(tokio::spawn(async move {
            let sent = send_mib_frames(&mut ws, 100).await;
            // A client the budget refused was told so.
            let closed = match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => Some(u16::from(f.code)),
                _ => None,
            };
            (sent, closed, ws)
        }));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for s in senders {
        let (sent, closed, ws) = s.await.unwrap();
        assert!(
            sent < 100,
            "the gateway kept reading: {sent} MiB from one client"
        );
        if closed == Some(1013) {
            refused += 1;
        }
        held.push(ws);
    }
    let grew_mib = gw.rss_kib().saturating_sub(before) / 1024;
    let metrics = gw.metrics().await;
    let refusals: f64 = ["ws_message", "ws_partial"]
        .iter()
        .filter_map(|w| {
            metric(
                &metrics,
                &format!("switchyard_memory_refusals_total{{what=\"{w}\"}}"),
            )
        })
        .sum();
    let used = metric(&metrics, "switchyard_memory_used_bytes").unwrap_or(-1.0);
    eprintln!(
        "fifty stalled clients, 16 MiB budget: the gateway grew by {grew_mib} MiB; {refused} clients closed with 1013; {refusals} refusals; {used} bytes charged"
    );
    assert!(refused > 0 && refusals > 0.0, "the budget refused someone");
    assert!(
        used <= (16 << 20) as f64,
        "charged {used} bytes, over the budget"
    );
    // The budget plus what the allocator keeps of freed 1 MiB buffers: over 48 runs of four
    // builds, 18-44 MiB in all, with a tail to 65 MiB (glibc keeps freed blocks when its mmap
    // threshold has moved; how much depends on the order of frees). Without the budget, the
    // per-connection bound alone lets each client hold 7-9 MiB: 350+ MiB for these fifty.
    assert!(
        grew_mib < 16 + 64,
        "fifty stalled clients grew the gateway by {grew_mib} MiB"
    );
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    assert!(!sse.next_data_event().await.data.is_empty());
    drop(held);
    task.abort();
}

/// A POST whose announced body the memory budget cannot hold is refused at once with 503 and
/// `Retry-After` (not 413: it is under `max_message`), before the client sends it; a body that
/// fits still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_body_over_the_memory_budget_is_503_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = ChatBackend::start().await;
    let gw = Gateway::start_with(
        &format!(
            "  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"{}\" }}\n    limits: {{ max_message: 4MiB }}\n",
            backend.url("/chat")
        ),
        "  limits: { memory: 1MiB }\n",
    )
    .await;
    let mut c = Client::connect(gw.addr).await;
    let id = open_session(&mut c, &[]).await;
    // The head only: the answer must come without the body.
    let mut raw = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /chat?transport=poll&session={id} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        gw.addr,
        3 << 19
    );
    raw.write_all(head.as_bytes()).await.unwrap();
    let mut got = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut got))
        .await
        .expect("answered before the body")
        .unwrap();
    let text = String::from_utf8_lossy(&got[..n]).to_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    gw.expect_metric(r#"switchyard_memory_refusals_total{what="post_body"}"#, 1.0)
        .await;
    let r = post(&mut c, &id, "text/plain", &"x".repeat(100_000)).await;
    assert_eq!(r.status, 204, "{}", r.body);
}

/// A per-client session whose client stops reading while its backend floods it: the session
/// holds at most a couple of `max_message` for the client (then stops reading the backend), not
/// `send_queue` (1,024) of them, and the gateway keeps serving everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_backend_messages_bounded_in_bytes() {
    let (backend, task) = handshaking_backend(true).await;
    let gw = Gateway::start(&format!(
        "  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"ws://{backend}/\" }}\n    limits: {{ max_message: 1MiB }}\n  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n"
    ))
    .await;
    let before = gw.rss_kib();
    let mut held = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
            .await
            .unwrap();
        held.push(ws);
    }
    // Let the backends write until the gateway stops taking their bytes.
    let mut last = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = gw.rss_kib();
        if now.abs_diff(last) < 1024 {
            break;
        }
        last = now;
    }
    let grew_mib = gw.rss_kib().saturating_sub(before) / 1024;
    eprintln!("three clients that do not read: the gateway grew by {grew_mib} MiB");
    assert!(
        grew_mib < 64,
        "three clients that do not read grew the gateway by {grew_mib} MiB"
    );
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    assert!(!sse.next_data_event().await.data.is_empty());
    drop(held);
    task.abort();
}

/// Fifty clients push 1 MiB messages at their own backend connection, which takes nothing:
/// each client is held to what its session may have in flight (twice `max_message`) plus the
/// message being read, each message is held once while it waits to be written, and the
/// gateway's memory grows by less than 256 MiB (a copy per message in flight made it ~300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pushing_at_a_stalled_backend_hold_each_message_once() {
    use tokio::io::AsyncWriteExt;
    let (backend, _task) = stalled_backend().await;
    let gw = Gateway::start(&format!(
        "  - name: push\n    path: /push\n    fanout: per_client\n    backend: {{ websocket: \"ws://{backend}/push\" }}\n    limits: {{ max_message: 1MiB }}\n"
    ))
    .await;
    // Warm up (threads, allocator arenas) before measuring.
    let (mut warm, _) = ws_open_offering(gw.addr, "/push", None).await;
    warm.write_all(&client_frame(0x81, b"warm")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = gw.rss_kib();
    let frame = std::sync::Arc::new(client_frame(0x82, &vec![7u8; 1 << 20]));
    let mut clients = Vec::new();
    for _ in 0..50 {
        let (addr, frame) = (gw.addr, frame.clone());
        clients.push(tokio::spawn(async move {
            let (mut s, _) = ws_open_offering(addr, "/push", None).await;
            // Push until the gateway stops reading (a write that waits a second).
            let mut sent = 0;
            while sent < 64 {
                match tokio::time::timeout(Duration::from_secs(1), s.write_all(&frame)).await {
                    Ok(Ok(())) => sent += 1,
                    _ => break,
                }
            }
            assert!(
                sent < 64,
                "the gateway kept reading from a client whose backend stalled"
            );
            s
        }));
    }
    let mut held = Vec::new();
    for c in clients {
        held.push(c.await.unwrap());
    }
    let after = gw.rss_kib();
    assert!(
        after < before + 256 * 1024,
        "RSS grew from {before} KiB to {after} KiB ({} MiB)",
        (after - before) / 1024
    );
    eprintln!("RSS grew by {} MiB", (after.saturating_sub(before)) / 1024);
    // The gateway still serves everyone else.
    let r = http_get(gw.admin, "/healthz", &[]).await;
    assert_eq!(r.status, 200);
    drop(held);
}

/// `max_sessions_per_ip`: sessions that outlive their requests are counted per client address
/// (the hostile pass's one address taking a route's every session): long-poll past the cap is
/// `429` with `Retry-After`, other addresses still open theirs, a WebSocket (bound to its own
/// connection) is not a listed session, SockJS sessions are capped the same way, and an ended
/// session gives its place back.
#[tokio::test]
async fn sessions_per_address_are_capped_by_max_sessions_per_ip() {
    use crate::common::sockjs::request_from;
    let (backend, gw) = chat_gateway(
        "    limits: { max_sessions_per_ip: 2 }\n  - name: sj\n    path: /sj\n    clients: [sockjs]\n    limits: { max_sessions_per_ip: 1 }\n    backend: { builtin: echo }\n",
    )
    .await;
    let mut c = Client::connect(gw.addr).await;
    let a = open_session(&mut c, &[]).await;
    let _b = open_session(&mut c, &[]).await;
    let r = c.get("/chat?transport=poll", &[]).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.headers["retry-after"], "5");
    assert!(r.body.contains("max_sessions_per_ip"), "{}", r.body);
    assert_eq!(backend.conns().len(), 2, "no backend connection for it");
    let other: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let r = request_from(
        Some(other),
        gw.addr,
        "GET",
        "/chat?transport=poll",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "another address has its own places");
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/chat"))
        .await
        .expect("a WebSocket is not a listed session");
    ws.send(Message::text("hi")).await.unwrap();
    assert!(ws.next().await.is_some());

    let me: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let r = request_from(Some(me), gw.addr, "POST", "/sj/000/aaaaaaaa/xhr", &[], b"").await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "o\n"));
    let r = request_from(Some(me), gw.addr, "POST", "/sj/000/bbbbbbbb/xhr", &[], b"").await;
    assert_eq!(r.status, 429, "a second SockJS session: {}", r.body_text());
    let r = request_from(
        Some(other),
        gw.addr,
        "POST",
        "/sj/000/cccccccc/xhr",
        &[],
        b"",
    )
    .await;
    assert_eq!((r.status, r.body_text().as_str()), (200, "o\n"));

    let r = c
        .request(
            "DELETE",
            &format!("/chat?transport=poll&session={a}"),
            &[],
            "",
        )
        .await;
    assert_eq!(r.status, 204);
    let until = std::time::Instant::now() + DEADLINE;
    loop {
        let r = c.get("/chat?transport=poll", &[]).await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 429, "{}", r.body);
        assert!(
            std::time::Instant::now() < until,
            "the place never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.wait_metric(
        r#"switchyard_rejections_total{reason="too_many_sessions_per_ip",route="chat"}"#,
        1.0,
    )
    .await;
}

/// An idle per-client session costs the gateway little: 400 long-poll sessions, each with its
/// own backend WebSocket, grow its RSS by under 40 KiB each. (tungstenite's default read
/// buffer, 128 KiB zero-filled before every read, made it about 150 KiB a session.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_holds_kilobytes_not_a_128_kib_read_buffer() {
    const SESSIONS: u64 = 400;
    let (backend, gw) = chat_gateway("").await;
    let mut c = Client::connect(gw.addr).await;
    // Warm up (threads, allocator arenas) before measuring.
    for _ in 0..20 {
        open_session(&mut c, &[]).await;
    }
    let before = gw.rss_kib();
    for _ in 0..SESSIONS {
        open_session(&mut c, &[]).await;
    }
    assert!(backend.conns().len() >= SESSIONS as usize);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_session = gw.rss_kib().saturating_sub(before) / SESSIONS;
    eprintln!("an idle per-client session: {per_session} KiB");
    assert!(per_session < 40, "{per_session} KiB per idle session");
}
