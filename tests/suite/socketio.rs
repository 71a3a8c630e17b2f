//! Socket.IO clients on a plain WebSocket backend, over the wire: real clients
//! (socket.io-client 4 and 2.5) on every transport through a backend written to the mapping
//! (tests/socketio/backend.js), and the mapping's edges raw: refused and unknown namespaces,
//! a backend's refusal and its loss, protocol 4's CONNECT query, invalid packets. The
//! protocol's own suite (socket.io-protocol `test-suite/`) runs in `scripts/protocol-suites.sh`;
//! Chromium clients are in `browser.rs`.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn node_modules() -> String {
    crate::common::node_modules("socket.io-client-v2")
}

/// tests/socketio/backend.js: a plain WebSocket backend that follows the mapping (and refuses
/// `/forbidden` with 403), on a free port.
pub(crate) async fn mapped_backend() -> NodeServer {
    NodeServer::start("socketio/backend.js", "ws", &[]).await
}

/// A `clients: [socketio]` route at /socket.io on `backend`, with `extra` keys.
pub(crate) fn route(backend: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: sio\n    path: /socket.io\n    backend: {{ websocket: \"ws://{backend}/\", forward_headers: [] }}\n    fanout: per_client\n    clients: [socketio]\n    socketio: {{ namespaces: [\"/\", \"/custom\", \"/forbidden\"], connect_timeout: 2s }}\n{extra}"
    )
}

#[tokio::test]
async fn real_clients_on_every_transport_with_namespaces_acks_and_binary() {
    let backend = mapped_backend().await;
    let gw = Gateway::start(&route(backend.addr, "")).await;
    let url = gw.url("");
    for version in ["4", "2"] {
        for mode in ["polling", "websocket", "upgrade"] {
            let out = tokio::process::Command::new("node")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/socketio/client.js"
                ))
                .args([url.as_str(), version, mode])
                .env("NODE_PATH", node_modules())
                .output();
            let out = tokio::time::timeout(Duration::from_secs(30), out)
                .await
                .expect("the client ends")
                .expect("node runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let r: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
                panic!(
                    "{version} {mode}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            assert_eq!(r["ok"], true, "socket.io-client {version} on {mode}: {r}");
            let want = if mode == "polling" {
                "polling"
            } else {
                "websocket"
            };
            assert_eq!(r["transport"], want, "{version} {mode}: {r}");
        }
    }
    let m = gw.metrics().await;
    for t in ["socketio-polling", "socketio-websocket"] {
        let series = format!(
            "switchyard_messages_total{{direction=\"in\",route=\"sio\",transport=\"{t}\"}}"
        );
        assert!(metric(&m, &series).is_some_and(|v| v >= 6.0), "{series}");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw Engine.IO WebSocket, past its open packet.
async fn raw(gw: &Gateway, eio: u8) -> Ws {
    let url = gw.ws_url(&format!("/socket.io/?EIO={eio}&transport=websocket"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "{open}");
    ws
}

/// The next text message (pings skipped), or "closed".
async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "2" => continue,
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                return "closed".into()
            }
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Err(_) => panic!("nothing within the deadline"),
        }
    }
}

#[tokio::test]
async fn namespaces_refused_joined_left_and_lost() {
    let backend = mapped_backend().await;
    let gw = Gateway::start(&route(backend.addr, "")).await;
    let mut ws = raw(&gw, 4).await;
    // Not listed: refused by the gateway.
    ws.send(Message::text("40/random,")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"44/random,{"message":"Invalid namespace"}"#
    );
    // Listed, refused by the backend: its status reaches the client's connect_error.
    ws.send(Message::text("40/forbidden,")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"44/forbidden,{"message":"backend refused: 403","data":{"status":403}}"#
    );
    // Joined with auth: the backend saw it as a header, non-ASCII escaped.
    ws.send(Message::text(r#"40/custom,{"token":"Zoë"}"#))
        .await
        .unwrap();
    let joined = next_text(&mut ws).await;
    assert!(joined.starts_with(r#"40/custom,{"sid":""#), "{joined}");
    assert_eq!(
        next_text(&mut ws).await,
        r#"42/custom,["auth",{"token":"Zoë"}]"#
    );
    // A packet for a namespace never joined ends the connection, as socket.io does.
    ws.send(Message::text(r#"42/other,["x"]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "1");
    assert_eq!(next_text(&mut ws).await, "closed");

    // A backend that is lost (1011) drops the whole connection: the client reconnects.
    let mut ws = raw(&gw, 4).await;
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{"));
    assert_eq!(next_text(&mut ws).await, r#"42["auth",{}]"#);
    ws.send(Message::text(r#"42["close",1011]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "1");
    assert_eq!(next_text(&mut ws).await, "closed");

    // Protocol 4 (socket.io-client 2): `/` is joined at once, CONNECT answers carry nothing,
    // a namespace's query is its auth, refusals are strings.
    let mut ws = raw(&gw, 3).await;
    assert_eq!(next_text(&mut ws).await, "40");
    assert_eq!(next_text(&mut ws).await, r#"42["auth",{}]"#);
    ws.send(Message::text("40/custom?token=a%20b,"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "40/custom,");
    assert_eq!(
        next_text(&mut ws).await,
        r#"42/custom,["auth",{"token":"a b"}]"#
    );
    ws.send(Message::text("40/nope,")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"44/nope,"Invalid namespace""#);
    ws.send(Message::text("41/custom,")).await.unwrap();
    ws.send(Message::text(r#"42["message","still here"]"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"42["message-back","still here"]"#
    );
}

#[tokio::test]
async fn backend_messages_map_to_events_acks_and_attachments() {
    // A backend that sends what a plain backend may: any text, bytes, events with ack ids,
    // events with attachments, and then closes deliberately.
    let feed = FeedBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: sio\n    path: /socket.io\n    backend: {{ websocket: \"{}\" }}\n    fanout: per_client\n    clients: [socketio]\n",
        feed.url("/")
    ))
    .await;
    let mut ws = raw(&gw, 4).await;
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{"));
    feed.wait_open(1).await;
    let sent = vec![
        Message::text("plain words"),
        Message::text(r#"{"a":1}"#),
        Message::text(r#"["news",{"b":[2,3]},"x"]"#),
        Message::text(r#"{"event":["ask",1],"id":9}"#),
        Message::text(r#"["file",{"_placeholder":true,"num":0},"name"]"#),
        Message::binary(vec![1u8, 2, 3]),
        Message::binary(vec![7u8]),
    ];
    feed.send(FeedCmd::Send {
        messages: std::sync::Arc::new(sent),
        batch: 7,
        pause: Duration::ZERO,
    });
    assert_eq!(next_text(&mut ws).await, r#"42["message","plain words"]"#);
    assert_eq!(next_text(&mut ws).await, r#"42["message","{\"a\":1}"]"#);
    assert_eq!(next_text(&mut ws).await, r#"42["news",{"b":[2,3]},"x"]"#);
    assert_eq!(next_text(&mut ws).await, r#"429["ask",1]"#);
    assert_eq!(
        next_text(&mut ws).await,
        r#"451-["file",{"_placeholder":true,"num":0},"name"]"#
    );
    let bin = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bin, Message::binary(vec![1u8, 2, 3]));
    assert_eq!(
        next_text(&mut ws).await,
        r#"451-["message",{"_placeholder":true,"num":0}]"#
    );
    let bin = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bin, Message::binary(vec![7u8]));
    // The client's ack of 9 reaches the backend in the mapping's form.
    ws.send(Message::text(r#"439["yes"]"#)).await.unwrap();
    // A deliberate close (4000) is the namespace's DISCONNECT; the connection stays.
    feed.send(FeedCmd::Close(4000, "bye".into()));
    assert_eq!(next_text(&mut ws).await, "41");
    // What the client sent to `/` before it saw that is dropped, not a protocol error; it may
    // join again.
    ws.send(Message::text(r#"42["sent before the disconnect"]"#))
        .await
        .unwrap();
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{"));
    ws.send(Message::text("3")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.expect_metric("switchyard_engineio_sessions_open{route=\"sio\"}", 1.0)
        .await;
}

#[tokio::test]
async fn a_client_that_joins_nothing_is_let_go() {
    let backend = mapped_backend().await;
    let gw = Gateway::start(&route(backend.addr, "")).await;
    // connect_timeout is 2 s here: no CONNECT, no connection (pongs or not).
    let url = gw.ws_url("/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap()
            }
            Some(Ok(Message::Text(_))) => {}
            _ => break,
        }
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    // Its namespaces' sessions never opened; nothing is held.
    gw.wait_metric_is("switchyard_engineio_sessions_open{route=\"sio\"}", 0.0)
        .await;
}

#[tokio::test]
async fn a_shared_feed_reaches_every_client_as_events_on_the_main_namespace() {
    let feed = FeedBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: news\n    path: /socket.io\n    backend: {{ websocket: \"{}\" }}\n    fanout: shared\n    clients: [socketio, sse]\n",
        feed.url("/")
    ))
    .await;
    // Socket.IO 4 on a WebSocket: joins `/` itself; other namespaces are refused.
    let mut ws = raw(&gw, 4).await;
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with(r#"40{"sid":""#));
    ws.send(Message::text("40/admin,")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"44/admin,{"message":"Invalid namespace"}"#
    );
    // Socket.IO 2 polling: joined to `/` by the server.
    let r = crate::common::sockjs::request(
        gw.addr,
        "GET",
        "/socket.io/?EIO=3&transport=polling&b64=1",
        &[],
        b"",
    )
    .await;
    let text = r.body_text();
    let sid = &text[text.find("\"sid\":\"").unwrap() + 7..][..20];
    let path = format!("/socket.io/?EIO=3&transport=polling&b64=1&sid={sid}");
    let joined = crate::common::sockjs::request(gw.addr, "GET", &path, &[], b"").await;
    assert_eq!(joined.body_text(), "2:40");
    feed.wait_open(1).await;
    let poll = tokio::spawn({
        let addr = gw.addr;
        let path = path.clone();
        async move { crate::common::sockjs::request(addr, "GET", &path, &[], b"").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    feed.send(FeedCmd::Send {
        messages: std::sync::Arc::new(vec![
            Message::text("headline"),
            Message::text(r#"["score",{"home":2}]"#),
            Message::binary(vec![7u8, 8]),
        ]),
        batch: 3,
        pause: Duration::ZERO,
    });
    // The same events to both, each encoded by the mapping.
    assert_eq!(next_text(&mut ws).await, r#"42["message","headline"]"#);
    assert_eq!(next_text(&mut ws).await, r#"42["score",{"home":2}]"#);
    assert_eq!(
        next_text(&mut ws).await,
        r#"451-["message",{"_placeholder":true,"num":0}]"#
    );
    let bin = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(bin, Message::binary(vec![7u8, 8]));
    let polled = poll.await.unwrap().body_text();
    assert_eq!(
        polled,
        "24:42[\"message\",\"headline\"]22:42[\"score\",{\"home\":2}]45:451-[\"message\",{\"_placeholder\":true,\"num\":0}]6:b4Bwg="
    );
    // The feed takes nothing from clients (no `post:`): an emit is refused.
    let r =
        crate::common::sockjs::request(gw.addr, "POST", &path, &[], b"13:42[\"hi\",true]").await;
    assert_eq!(r.status, 405);
    ws.send(Message::text(r#"42["hi"]"#)).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "closed");
}

#[tokio::test]
async fn emits_on_a_shared_feed_go_to_its_post_url_by_the_mapping() {
    // An SSE feed with `post:`; the backend echoes each POST body on the feed as `echo:BODY`.
    let backend = crate::common::chat::SsePostBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: live\n    path: /socket.io\n    backend: {{ sse: \"{}\", post: \"{}\" }}\n    clients: [socketio]\n",
        backend.url("/events"),
        backend.url("/send")
    ))
    .await;
    let mut ws = raw(&gw, 4).await;
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{"));
    backend.wait_subscriptions(1).await;
    ws.send(Message::text(r#"42["vote","yes"]"#)).await.unwrap();
    ws.send(Message::text(r#"427["vote","no"]"#)).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"42["message","echo:[\"vote\",\"yes\"]"]"#
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"42["message","echo:{\"event\":[\"vote\",\"no\"],\"id\":7}"]"#
    );
}
