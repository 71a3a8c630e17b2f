//! Engine.IO (revisions 3 and 4) on bridged routes, over the wire: real clients
//! (engine.io-client 6 and 3.5) echoing through a plain WebSocket backend on every transport;
//! the same raw exchanges sent to the reference server (npm `engine.io` 6 with `allowEIO3`)
//! and to switchyard, answer for answer; JSONP; and how sessions end and what they refuse.
//! The protocols' own suites (`test-suite/` of socketio/engine.io-protocol) run in
//! `scripts/conformance.sh`.

use crate::common::sockjs::{eventually, request};
use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn node_modules() -> String {
    crate::common::node_modules("engine.io-client-v3")
}

fn script(name: &str) -> String {
    format!("{}/tests/engineio/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A route of clients: [engineio] at /engine.io on `backend`, per client.
fn routes(backend: &str, keepalive: &str) -> String {
    routes_with(backend, "", keepalive)
}

/// [`routes`] with more keys in `backend:` (`, forward_headers: []`).
fn routes_with(backend: &str, backend_keys: &str, keepalive: &str) -> String {
    format!(
        "  - name: eio\n    path: /engine.io\n    backend: {{ websocket: \"{backend}\"{backend_keys} }}\n    fanout: per_client\n    clients: [engineio]\n    limits: {{ max_message: 1000000 }}\n{keepalive}"
    )
}

const SHORT_HEARTBEAT: &str = "    keepalive: { ping_interval: 300ms, pong_timeout: 200ms }\n";

/// Runs tests/engineio/client.js: engine.io-client `version` (6 or 3) on `mode`.
async fn run_client(url: &str, version: &str, mode: &str) -> serde_json::Value {
    let out = tokio::process::Command::new("node")
        .arg(script("client.js"))
        .args([url, version, mode])
        .env("NODE_PATH", node_modules())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(20), out)
        .await
        .expect("the client ends")
        .expect("node runs (apt-get install nodejs)");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|_| {
        panic!(
            "client {version} {mode} printed {text:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test]
async fn real_clients_echo_through_a_plain_websocket_backend_on_every_transport() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(&format!("ws://{}/", backend.addr), "")).await;
    let url = gw.url("");
    for version in ["6", "3"] {
        for mode in ["polling", "websocket", "upgrade"] {
            let r = run_client(&url, version, mode).await;
            assert_eq!(r["ok"], true, "engine.io-client {version} on {mode}: {r}");
            let want = if mode == "polling" {
                "polling"
            } else {
                "websocket"
            };
            assert_eq!(r["transport"], want, "{version} {mode}: {r}");
            if mode == "upgrade" {
                // Sent once the upgrade completed: the echoes came over the WebSocket.
                assert_eq!(r["sentAfter"], "upgrade to websocket", "{r}");
            }
        }
    }
    // One backend session per client, each closed with its client.
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        6
    );
    gw.wait_metric_is("switchyard_engineio_sessions_open{route=\"eio\"}", 0.0)
        .await;
    let metrics = gw.metrics().await;
    for t in ["engineio-polling", "engineio-websocket"] {
        let series = format!(
            "switchyard_messages_total{{direction=\"in\",route=\"eio\",transport=\"{t}\"}}"
        );
        assert!(metric(&metrics, &series).unwrap_or(0.0) >= 6.0, "{series}");
    }
}

/// The reference Engine.IO server (tests/engineio/reference.js), echoing, on a free port.
async fn reference(ping_interval: u64, ping_timeout: u64) -> NodeServer {
    let (i, t) = (ping_interval.to_string(), ping_timeout.to_string());
    NodeServer::start("engineio/reference.js", "engine.io", &[&i, &t]).await
}

/// What an answer shows of the protocol: its status, the headers Engine.IO fixes and its body,
/// with the session id (20 characters on both servers) blanked.
fn shape(r: &Response, sid: Option<&str>) -> String {
    let mut body = r.body.clone();
    if let Some(sid) = sid.filter(|s| !s.is_empty()) {
        let blank = b"SSSSSSSSSSSSSSSSSSSS";
        while let Some(at) = body.windows(sid.len()).position(|w| w == sid.as_bytes()) {
            body.splice(
                at..at + sid.len(),
                blank[..sid.len().min(20)].iter().copied(),
            );
        }
    }
    let ok = r.status == 200;
    format!(
        "{} ct={:?} cache={:?} body={:?}",
        r.status,
        r.header("content-type"),
        if ok { r.header("cache-control") } else { None },
        String::from_utf8_lossy(&body)
    )
}

fn sid_of(handshake: &Response) -> String {
    let text = handshake.body_text();
    let (Some(from), Some(to)) = (text.find('{'), text.rfind('}')) else {
        panic!("not an open packet: {} {text:?}", handshake.status);
    };
    let json = &text[from..=to];
    let json = json.replace("\\\"", "\"");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v["sid"].as_str().unwrap().to_owned()
}

/// One scripted exchange against `addr`: each answer's shape, in order.
async fn exchange(addr: SocketAddr, script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut sid = String::new();
    let mut ws: Option<
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    > = None;
    for step in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (verb, rest) = step.split_once(' ').unwrap_or((step, ""));
        let path = |q: &str| format!("/engine.io/?{}", q.replace("$SID", &sid));
        match verb {
            "GET" | "POST" => {
                let (q, body) = rest.split_once(' ').unwrap_or((rest, ""));
                let body = body.replace("\\x1e", "\x1e");
                let ctype = if q.contains("j=") && verb == "POST" {
                    vec![("Content-Type", "application/x-www-form-urlencoded")]
                } else {
                    vec![("Content-Type", "text/plain;charset=UTF-8")]
                };
                let r = request(addr, verb, &path(q), &ctype, body.as_bytes()).await;
                if sid.is_empty() && r.status == 200 && r.body_text().contains("\"sid\"") {
                    sid = sid_of(&r);
                }
                out.push(shape(&r, Some(&sid)));
            }
            "WS" => {
                let url = format!("ws://{addr}{}", path(rest));
                let (s, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
                out.push(format!("ws {}", resp.status().as_u16()));
                ws = Some(s);
            }
            "SEND" => {
                let m = if let Some(hex) = rest.strip_prefix("bin:") {
                    Message::binary(
                        (0..hex.len())
                            .step_by(2)
                            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                            .collect::<Vec<u8>>(),
                    )
                } else {
                    Message::text(rest.to_owned())
                };
                ws.as_mut().unwrap().send(m).await.unwrap();
            }
            "RECV" => {
                let next = tokio::time::timeout(DEADLINE, ws.as_mut().unwrap().next()).await;
                let m = match next {
                    Ok(Some(Ok(m))) => m,
                    other => panic!("no message on the WebSocket: {other:?}"),
                };
                let shown = match m {
                    Message::Text(t) => {
                        let t = t.to_string();
                        if sid.is_empty() && t.starts_with('0') {
                            sid = serde_json::from_str::<serde_json::Value>(&t[1..]).unwrap()
                                ["sid"]
                                .as_str()
                                .unwrap()
                                .to_owned();
                        }
                        format!("text {:?}", t.replace(&sid, "SSSSSSSSSSSSSSSSSSSS"))
                    }
                    Message::Binary(b) => format!("binary {:?}", &b[..]),
                    Message::Close(_) => "close".to_owned(),
                    other => format!("{other:?}"),
                };
                out.push(shown);
            }
            "SLEEP" => tokio::time::sleep(Duration::from_millis(rest.parse().unwrap())).await,
            other => panic!("unknown step {other}"),
        }
    }
    out
}

#[tokio::test]
async fn raw_exchanges_match_the_reference_server() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(
        &format!("ws://{}/", backend.addr),
        "    keepalive: { ping_interval: 25s, pong_timeout: 20s }\n",
    ))
    .await;
    let reference = reference(25_000, 20_000).await;
    let scripts = [
        // Handshakes: the open packet in each payload form.
        "GET EIO=4&transport=polling",
        "GET EIO=3&transport=polling",
        "GET EIO=3&transport=polling&b64=1",
        // Echoes: several packets, binary as base64 in v4, one answer.
        "GET EIO=4&transport=polling
         POST EIO=4&transport=polling&sid=$SID 4hello\\x1e4w\u{f6}rld \u{1f600}\\x1ebAQIDBA==
         GET EIO=4&transport=polling&sid=$SID",
        // v3: lengths in UTF-16 units; binary as a binary payload, or as base64 with b64=1.
        "GET EIO=3&transport=polling
         POST EIO=3&transport=polling&sid=$SID 6:4hello3:4\u{1f600}10:b4AQIDBA==
         GET EIO=3&transport=polling&sid=$SID",
        "GET EIO=3&transport=polling&b64=1
         POST EIO=3&transport=polling&b64=1&sid=$SID 6:4hello10:b4AQIDBA==
         GET EIO=3&transport=polling&b64=1&sid=$SID",
        // v3's heartbeat: the client pings, the server pongs.
        "GET EIO=3&transport=polling
         POST EIO=3&transport=polling&sid=$SID 1:2
         GET EIO=3&transport=polling&sid=$SID",
        // Refusals.
        "GET EIO=4&transport=polling&sid=unknown",
        "GET EIO=4&transport=carrier-pigeon",
        "POST EIO=4&transport=polling",
        "GET EIO=4&transport=polling
         POST EIO=4&transport=polling&sid=$SID abc
         GET EIO=4&transport=polling&sid=$SID",
        "GET EIO=4&transport=polling
         POST EIO=4&transport=polling&sid=$SID 2
         GET EIO=4&transport=polling&sid=$SID",
        // The client's close. (For 200 ms a poll still gets the noop that answers it: one
        // sent with the close may arrive after it, which engine.io, reading its sockets in
        // order on one thread, does not see happen.)
        "GET EIO=4&transport=polling
         POST EIO=4&transport=polling&sid=$SID 1
         SLEEP 300
         GET EIO=4&transport=polling&sid=$SID",
        // WebSocket from the start, both revisions.
        "WS EIO=4&transport=websocket
         RECV
         SEND 4h\u{e9}llo
         RECV
         SEND bin:01020304
         RECV",
        "WS EIO=3&transport=websocket
         RECV
         SEND 2
         RECV
         SEND bin:0401020304
         RECV",
        // The upgrade: probe, the noop that ends polling, then the WebSocket carries it.
        "GET EIO=4&transport=polling
         WS EIO=4&transport=websocket&sid=$SID
         SEND 2probe
         RECV
         GET EIO=4&transport=polling&sid=$SID
         SEND 5
         SLEEP 50
         SEND 4after
         RECV
         GET EIO=4&transport=polling&sid=$SID",
    ];
    for script in scripts {
        let theirs = exchange(reference.addr, script).await;
        let ours = exchange(gw.addr, script).await;
        assert_eq!(
            ours, theirs,
            "switchyard and engine.io differ on:\n{script}"
        );
    }
}

#[tokio::test]
async fn overlapping_polls_end_the_session_as_engine_io_does() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(&format!("ws://{}/", backend.addr), "")).await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let first = tokio::spawn({
        let path = path.clone();
        let addr = gw.addr;
        async move { request(addr, "GET", &path, &[], b"").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = request(gw.addr, "GET", &path, &[], b"").await;
    assert_eq!(second.status, 400);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body_text()), (200, "1".to_owned()));
    let third = request(gw.addr, "GET", &path, &[], b"").await;
    assert_eq!(third.status, 400);
    assert_eq!(
        third.body_text(),
        r#"{"code":1,"message":"Session ID unknown"}"#
    );
    // Its backend session went with it.
    gw.wait_metric_is("switchyard_engineio_sessions_open{route=\"eio\"}", 0.0)
        .await;
}

#[tokio::test]
async fn jsonp_polling_for_legacy_clients() {
    let backend = WsBackend::start().await;
    // A route that hands its clients' cookies to the backend (the default) refuses JSONP: any
    // page may load a script in a visitor's name and read its answer.
    let gw = Gateway::start(&routes(&format!("ws://{}/", backend.addr), "")).await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=3&transport=polling&j=0",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), r#"{"code":4,"message":"Forbidden"}"#);
    drop(gw);
    let no_credentials = ", forward_headers: []";
    let backend_url = format!("ws://{}/", backend.addr);
    let gw = Gateway::start(&routes_with(&backend_url, no_credentials, "")).await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=3&transport=polling&j=4",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    // A script, and only where a page asked for one.
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=UTF-8")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let body = r.body_text();
    assert!(
        body.starts_with("___eio[4](\"") && body.ends_with("\");"),
        "{body}"
    );
    let sid = sid_of(&r);
    // Sends are form posts; the client escapes newlines as `\n`.
    let form = "d=10%3A4line%5Cn%E2%80%A8two";
    let path = format!("/engine.io/?EIO=3&transport=polling&j=4&sid={sid}");
    let sent = request(
        gw.addr,
        "POST",
        &path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .await;
    assert_eq!((sent.status, sent.body_text()), (200, "ok".to_owned()));
    let polled = request(gw.addr, "GET", &path, &[], b"").await;
    // The echo: a newline and U+2028, escaped for any JavaScript parser.
    assert_eq!(polled.body_text(), "___eio[4](\"10:4line\\n\\u2028two\");");
    // The index is digits only: anything else could run in the page.
    for bad in ["x", "1;alert(1)", "%2d1"] {
        let r = request(
            gw.addr,
            "GET",
            &format!("/engine.io/?EIO=3&transport=polling&j={bad}"),
            &[],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "j={bad}");
    }
    drop(gw);
    // A JSONP poll is a script load, sent without Origin: it is judged by its Referer.
    let gw = Gateway::start_with(
        &routes_with(&backend_url, no_credentials, ""),
        "defaults:\n  origins: [\"http://a.example\"]\n",
    )
    .await;
    let jsonp = "/engine.io/?EIO=3&transport=polling&j=0";
    let from = |page: &'static str| [("Referer", page)];
    let evil = request(
        gw.addr,
        "GET",
        jsonp,
        &from("http://evil.example/page"),
        b"",
    )
    .await;
    assert_eq!(evil.status, 403);
    let ours = request(gw.addr, "GET", jsonp, &from("http://a.example/app"), b"").await;
    assert_eq!(ours.status, 200);
}

#[tokio::test]
async fn sessions_end_on_a_missed_heartbeat_in_either_direction() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(&format!("ws://{}/", backend.addr), SHORT_HEARTBEAT)).await;
    // v4: the server pings; a client that never pongs is gone after interval + timeout.
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let ping = request(gw.addr, "GET", &path, &[], b"").await;
    assert_eq!(ping.body_text(), "2");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(request(gw.addr, "GET", &path, &[], b"").await.status, 400);
    // One that answers stays, however long.
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    for _ in 0..4 {
        assert_eq!(
            request(gw.addr, "GET", &path, &[], b"").await.body_text(),
            "2"
        );
        let pong = request(gw.addr, "POST", &path, &[], b"3").await;
        assert_eq!(pong.status, 200);
    }
    // v3: the client pings; silence for interval + timeout ends the session.
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=3&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=3&transport=polling&sid={sid}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        request(gw.addr, "POST", &path, &[], b"1:2").await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        request(gw.addr, "POST", &path, &[], b"1:2").await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        request(gw.addr, "POST", &path, &[], b"1:2").await.status,
        400
    );
    // On a WebSocket too: a v4 client that never pongs is closed.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(gw.ws_url("/engine.io/?EIO=4&transport=websocket"))
            .await
            .unwrap();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                return true;
            }
            seen.push(m.into_text().unwrap().to_string());
        }
        true
    })
    .await
    .expect("closed within the deadline");
    assert!(closed);
    assert!(seen[0].starts_with("0{"), "{seen:?}");
    assert_eq!(&seen[1..], ["2"]);
    assert_eq!(
        metric(
            &gw.metrics().await,
            "switchyard_rejections_total{reason=\"engineio_ping_timeout\",route=\"eio\"}"
        ),
        // The four sessions above: the v4 poller that never answered, the one that did until
        // this test stopped polling it, the silent v3 one, the WebSocket.
        Some(4.0)
    );
}

#[tokio::test]
async fn backend_ends_and_refusals_reach_the_client_as_engine_io_says() {
    let backend = WsBackend::start().await;
    // A backend that closes (3000) right away: the poll gets the close packet.
    let gw = Gateway::start(&routes(&format!("ws://{}/close", backend.addr), "")).await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let r = request(gw.addr, "GET", &path, &[], b"").await;
    assert_eq!((r.status, r.body_text()), (200, "1".to_owned()));
    assert_eq!(request(gw.addr, "GET", &path, &[], b"").await.status, 400);
    // And on a WebSocket: `1`, then the close.
    let (mut ws, _) =
        tokio_tungstenite::connect_async(gw.ws_url("/engine.io/?EIO=4&transport=websocket"))
            .await
            .unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.into_text().unwrap().starts_with("0{"));
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("1"));
    assert!(ws.next().await.unwrap().unwrap().is_close());
    drop(gw);

    // An unreachable backend: the handshake is 502.
    let dead = dead_port();
    let gw = Gateway::start(&routes(&format!("ws://{}/", dead.addr), "")).await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 502);
    drop(gw);

    let gw = Gateway::start_with(
        &routes(&format!("ws://{}/", backend.addr), ""),
        "defaults:\n  origins: [\"http://a.example\", \"http://b.example\"]\n",
    )
    .await;
    // No or another EIO: 400, as the v4 suites expect.
    for q in [
        "transport=polling",
        "EIO=abc&transport=polling",
        "EIO=5&transport=polling",
    ] {
        let r = request(gw.addr, "GET", &format!("/engine.io/?{q}"), &[], b"").await;
        assert_eq!(r.status, 400, "{q}");
        assert_eq!(
            r.body_text(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
    }
    // A session is its opener's: another address or origin does not reach it.
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[("Origin", "http://a.example")],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let stolen = request(
        gw.addr,
        "POST",
        &path,
        &[("Origin", "http://b.example")],
        b"4x",
    )
    .await;
    assert_eq!(stolen.status, 400);
    let elsewhere = crate::common::sockjs::request_from(
        Some("127.0.0.2".parse().unwrap()),
        gw.addr,
        "POST",
        &path,
        &[],
        b"4x",
    )
    .await;
    assert_eq!(elsewhere.status, 400);
    // A body past maxPayload is 413 (answered on its Content-Length, before it is sent); the
    // session goes on.
    let big = format!("4{}", "y".repeat(1_000_001));
    assert_eq!(oversize_post(gw.addr, &path, big.as_bytes()).await, 413);
    let ok = request(gw.addr, "POST", &path, &[], b"4fine").await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        request(gw.addr, "GET", &path, &[], b"").await.body_text(),
        "4fine"
    );
    // A second WebSocket for an upgraded session is accepted and closed at once.
    let (mut up, _) = tokio_tungstenite::connect_async(
        gw.ws_url(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")),
    )
    .await
    .unwrap();
    up.send(Message::text("2probe")).await.unwrap();
    assert_eq!(up.next().await.unwrap().unwrap(), Message::text("3probe"));
    up.send(Message::text("5")).await.unwrap();
    let (mut again, _) = tokio_tungstenite::connect_async(
        gw.ws_url(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")),
    )
    .await
    .unwrap();
    assert!(again.next().await.unwrap().unwrap().is_close());
    up.send(Message::text("4still here")).await.unwrap();
    assert_eq!(
        up.next().await.unwrap().unwrap(),
        Message::text("4still here")
    );
}

/// A POST whose body the gateway refuses before reading it: its status (the body's write may
/// fail once the answer came).
async fn oversize_post(addr: SocketAddr, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await;
    parse_response(&raw).status
}

#[tokio::test]
async fn a_shared_feed_reaches_engine_io_clients_and_refuses_their_messages() {
    let feed = FeedBackend::start().await;
    let gw = Gateway::start(&format!(
        "  - name: news\n    path: /engine.io\n    backend: {{ websocket: \"{}\" }}\n    fanout: shared\n    clients: [engineio, sse]\n",
        feed.url("/")
    ))
    .await;
    let r = request(
        gw.addr,
        "GET",
        "/engine.io/?EIO=4&transport=polling",
        &[],
        b"",
    )
    .await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let (mut ws, _) =
        tokio_tungstenite::connect_async(gw.ws_url("/engine.io/?EIO=3&transport=websocket"))
            .await
            .unwrap();
    assert!(ws
        .next()
        .await
        .unwrap()
        .unwrap()
        .into_text()
        .unwrap()
        .starts_with("0{"));
    feed.wait_open(1).await;
    let poll = tokio::spawn({
        let addr = gw.addr;
        let path = path.clone();
        async move { request(addr, "GET", &path, &[], b"").await }
    });
    eventually("both clients subscribed", || async {
        metric(
            &gw.metrics().await,
            "switchyard_engineio_sessions_open{route=\"news\"}",
        ) == Some(2.0)
    })
    .await;
    feed.send(FeedCmd::Send {
        messages: std::sync::Arc::new(vec![
            Message::text("headline"),
            Message::binary(vec![7u8, 8]),
        ]),
        batch: 2,
        pause: Duration::ZERO,
    });
    let polled = poll.await.unwrap();
    assert_eq!(polled.body_text(), "4headline\x1ebBwg=");
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("4headline")
    );
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![4u8, 7, 8])
    );
    // The feed takes no messages from clients: refused, pongs still taken.
    assert_eq!(request(gw.addr, "POST", &path, &[], b"3").await.status, 200);
    let r = request(gw.addr, "POST", &path, &[], b"4hi").await;
    assert_eq!(r.status, 405);
    ws.send(Message::text("4hi")).await.unwrap();
    let end = ws.next().await.unwrap().unwrap();
    assert!(end.is_close(), "{end:?}");
}

/// On a cluster, a session is held by the instance that opened it; polls and sends that land
/// on another instance are relayed to it whole: no sticky sessions.
#[tokio::test]
async fn sessions_are_reached_from_every_instance_of_a_cluster() {
    use crate::common::cluster::{cluster_of, Redis};
    let redis = Redis::start().await;
    let backend = WsBackend::start().await;
    let gws = cluster_of(
        &redis,
        &routes(&format!("ws://{}/", backend.addr), SHORT_HEARTBEAT),
        "eio",
        2,
    )
    .await;
    let (a, b) = (gws[0].addr, gws[1].addr);
    let r = request(a, "GET", "/engine.io/?EIO=4&transport=polling", &[], b"").await;
    let sid = sid_of(&r);
    let path = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    // A send on b, a poll on b: both served by a.
    let sent = request(b, "POST", &path, &[], b"4hello\x1e4w\xc3\xb6rld").await;
    assert_eq!((sent.status, sent.body_text()), (200, "ok".to_owned()));
    let polled = request(b, "GET", &path, &[], b"").await;
    assert_eq!(polled.body_text(), "4hello\x1e4w\u{f6}rld");
    // The heartbeat is a's: b's poll gets its ping, b relays the pong, a keeps the session.
    for at in [b, a, b] {
        assert_eq!(request(at, "GET", &path, &[], b"").await.body_text(), "2");
        assert_eq!(request(at, "POST", &path, &[], b"3").await.status, 200);
    }
    // v3 with binary payloads, relayed as they are.
    let r = request(b, "GET", "/engine.io/?EIO=3&transport=polling", &[], b"").await;
    let sid3 = sid_of(&r);
    let path3 = format!("/engine.io/?EIO=3&transport=polling&sid={sid3}");
    assert_eq!(
        request(a, "POST", &path3, &[], b"10:b4AQIDBA==")
            .await
            .status,
        200
    );
    let bin = request(a, "GET", &path3, &[], b"").await;
    assert_eq!(bin.header("content-type"), Some("application/octet-stream"));
    assert_eq!(bin.body, [1u8, 5, 255, 4, 1, 2, 3, 4]);
    // The session's binding holds across instances.
    let stolen = crate::common::sockjs::request_from(
        Some("127.0.0.2".parse().unwrap()),
        b,
        "GET",
        &path,
        &[],
        b"",
    )
    .await;
    assert_eq!(stolen.status, 400);
    // An upgrade is taken by the owner only: elsewhere it is refused, and the client polls on.
    let elsewhere = tokio_tungstenite::connect_async(format!(
        "ws://{b}/engine.io/?EIO=4&transport=websocket&sid={sid}"
    ))
    .await;
    assert!(elsewhere.is_err(), "the upgrade is refused off the owner");
    // The client's close, sent to b, ends the session on a.
    assert_eq!(request(b, "POST", &path, &[], b"1").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(request(a, "GET", &path, &[], b"").await.status, 400);
    assert_eq!(request(b, "GET", &path, &[], b"").await.status, 400);
    // a held the first session, b the v3 one (its handshake came to b).
    gws[0]
        .wait_metric_is("switchyard_engineio_sessions_open{route=\"eio\"}", 0.0)
        .await;
    gws[1]
        .wait_metric_is("switchyard_engineio_sessions_open{route=\"eio\"}", 1.0)
        .await;
}
