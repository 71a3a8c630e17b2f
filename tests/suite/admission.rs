//! One admission for both entry points: the same refused requests sent to a streaming route
//! (served on the edge's lean connection) and to a pass-through route (served by pingora's
//! proxy path) get the same status and the same `switchyard_rejections_total{reason}` increment.

use crate::common::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const GOOD: &str = "https://good.example";

fn routes(upstream: SocketAddr) -> String {
    let mut out = String::new();
    for (name, limits) in [
        ("ip", "{ max_clients_per_ip: 1 }"),
        ("max", "{ max_clients: 1 }"),
    ] {
        out.push_str(&format!(
            "  - name: s-{name}\n    path: /s-{name}\n    backend: {{ builtin: clock }}\n    origins: [\"{GOOD}\"]\n    limits: {limits}\n\
             \x20 - name: p-{name}\n    path: /p-{name}\n    origins: [\"{GOOD}\"]\n    proxy: {{ upstreams: [\"{upstream}\"] }}\n    limits: {limits}\n"
        ));
    }
    out
}

/// What a request to a streaming route asks for (SSE), or to a pass-through one (a WebSocket
/// upgrade: pass-through routes check origins on upgrades).
fn ask(path: &str, origin: &str, version: &str) -> String {
    let asking = if path.starts_with("/s-") {
        "Accept: text/event-stream\r\n".to_owned()
    } else {
        format!(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        )
    };
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\nOrigin: {origin}\r\n{asking}")
}

/// Sends `head` (its blank line added) and returns the answer's status.
async fn status_of(addr: SocketAddr, head: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\n").as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.unwrap();
    let line = String::from_utf8_lossy(&got);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"))
}

fn rejections(metrics: &str, route: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!("switchyard_rejections_total{{reason=\"{reason}\",route=\"{route}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Sends the same refused request to the streaming route and to the pass-through route and
/// checks both get `status`, counted once each under `reason`.
async fn same_refusal(
    gw: &Gateway,
    kind: &str,
    make: impl Fn(&str) -> String,
    status: u16,
    reason: &str,
) {
    let before = gw.metrics().await;
    for path in [format!("/s-{kind}"), format!("/p-{kind}")] {
        let got = status_of(gw.addr, &make(&path)).await;
        assert_eq!(got, status, "{reason} at {path}");
    }
    let after = gw.metrics().await;
    for route in [format!("s-{kind}"), format!("p-{kind}")] {
        let counted = rejections(&after, &route, reason) - rejections(&before, &route, reason);
        assert_eq!(counted, 1.0, "{reason} counted once for {route}");
    }
}

/// Smuggling shapes are refused before routing: both get 400 and the refusal is counted for no
/// route (`-`), once per request.
async fn same_smuggling_refusal(gw: &Gateway, extra: &str, reason: &str) {
    let before = gw.metrics().await;
    for path in ["/s-ip", "/p-ip"] {
        let head = format!("{}{extra}", ask(path, GOOD, "13"));
        assert_eq!(status_of(gw.addr, &head).await, 400, "{reason} at {path}");
    }
    let after = gw.metrics().await;
    let counted = rejections(&after, "-", reason) - rejections(&before, "-", reason);
    assert_eq!(counted, 2.0, "{reason}: both requests counted");
}

#[tokio::test]
async fn both_paths_refuse_alike_and_count_alike() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(backend.addr)).await;

    // RFC 6455 section 10.2: an origin that is not listed.
    same_refusal(
        &gw,
        "ip",
        |p| ask(p, "https://evil.example", "13"),
        403,
        "origin_not_allowed",
    )
    .await;

    // RFC 9112 section 6.3: framing that two parsers could read differently.
    same_smuggling_refusal(
        &gw,
        "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        "smuggling_te_and_cl",
    )
    .await;
    same_smuggling_refusal(
        &gw,
        "Content-Length: 0\r\nContent-Length: 0\r\n",
        "smuggling_double_cl",
    )
    .await;

    // Hold the one place each route has: an SSE stream on the lean path, a tunnel through
    // pingora's. The next client is over the limit on both.
    let mut held_sse = Vec::new();
    let mut held_ws = Vec::new();
    for kind in ["ip", "max"] {
        let sse = SseReader::open(gw.addr, &format!("/s-{kind}"), &[("origin", GOOD)]).await;
        held_sse.push(sse);
        let mut req = gw
            .ws_url(&format!("/p-{kind}"))
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", GOOD.parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        held_ws.push(ws);
    }
    same_refusal(&gw, "ip", |p| ask(p, GOOD, "13"), 429, "max_clients_per_ip").await;
    same_refusal(&gw, "max", |p| ask(p, GOOD, "13"), 503, "max_clients").await;

    // Places come back when their clients leave, on both paths.
    drop(held_sse);
    drop(held_ws);
    let open = r#"switchyard_client_connections_open{route="s-ip",transport="sse"}"#;
    let until = std::time::Instant::now() + DEADLINE;
    while metric(&gw.metrics().await, open) != Some(0.0) {
        assert!(
            std::time::Instant::now() < until,
            "the held stream never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut sse = SseReader::open(gw.addr, "/s-ip", &[("origin", GOOD)]).await;
    assert!(
        !sse.next_data_event().await.data.is_empty(),
        "the lean path serves again"
    );
    let mut req = gw.ws_url("/p-max").into_client_request().unwrap();
    req.headers_mut().insert("origin", GOOD.parse().unwrap());
    let mut admitted = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(req.clone()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        admitted,
        "pingora's path admits again once the tunnel is gone"
    );
}

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host` is 400 on both paths, before
/// routing, also when its target is in absolute form (a proxy must not take the host from it).
#[tokio::test]
async fn a_request_without_host_is_refused_on_both_paths() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&routes(backend.addr)).await;
    let before = gw.metrics().await;
    let heads = [
        format!("GET /s-ip HTTP/1.1\r\nOrigin: {GOOD}\r\nAccept: text/event-stream\r\n"),
        format!(
            "GET http://{}/s-ip HTTP/1.1\r\nOrigin: {GOOD}\r\nAccept: text/event-stream\r\n",
            gw.addr
        ),
        ask("/p-ip", GOOD, "13").replace("Host: gw\r\n", ""),
        format!("GET http://{}/p-ip HTTP/1.1\r\n", gw.addr),
    ];
    for head in &heads {
        assert_eq!(status_of(gw.addr, head).await, 400, "{head:?}");
    }
    let after = gw.metrics().await;
    let counted =
        rejections(&after, "-", "missing_host") - rejections(&before, "-", "missing_host");
    assert_eq!(counted, heads.len() as f64);
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}
