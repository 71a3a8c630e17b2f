//! Pass-through `proxy:` routes over real sockets: HTTP and WebSocket upgrades reach real
//! backends; health checks and connect retries keep requests succeeding with a member down;
//! no reachable member gives a 502 with a body that says so.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn proxy_route(upstreams: &[std::net::SocketAddr], extra: &str) -> String {
    let list = upstreams
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!("  - name: api\n    path: /api\n    proxy:\n      upstreams: [{list}]\n{extra}")
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("JSON body, got {} {:?}", r.status, r.body_text()))
}

#[tokio::test]
async fn http_request_reaches_backend_with_forwarded_headers_and_host_kept() {
    let backend = HttpBackend::start("a").await;
    let gw = Gateway::start(&proxy_route(&[backend.addr], "")).await;
    let r = http_get(gw.addr, "/api/items?x=1", &[("X-Forwarded-For", "6.6.6.6")]).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = json(&r);
    assert_eq!(j["backend"], "a");
    assert_eq!(j["path"], "/api/items?x=1");
    assert_eq!(
        j["host"],
        gw.addr.to_string(),
        "Host is passed through unchanged"
    );
    assert_eq!(
        j["x-forwarded-for"], "127.0.0.1",
        "the edge replaces a client-supplied X-Forwarded-For"
    );
    assert_eq!(j["x-forwarded-proto"], "http");
    // Outside the route's segment prefix: no route.
    assert_eq!(http_get(gw.addr, "/apix", &[]).await.status, 404);
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_to_a_real_backend() {
    let backend = WsBackend::start().await;
    let gw = Gateway::start(&proxy_route(&[backend.addr], "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(gw.ws_url("/api/chat"))
        .await
        .expect("handshake through the proxy");
    assert_eq!(resp.status(), 101);
    for i in 0..20 {
        ws.send(Message::text(format!("msg {i}"))).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text(format!("msg {i}"))
        );
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn round_robin_spreads_requests_over_members() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let gw = Gateway::start(&proxy_route(
        &[a.addr, b.addr],
        "      balance: round_robin\n",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 5);
    assert_eq!(b.hits.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn hash_client_ip_keeps_a_client_on_one_member() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let gw = Gateway::start(&proxy_route(
        &[a.addr, b.addr],
        "      balance: hash_client_ip\n",
    ))
    .await;
    let first = json(&http_get(gw.addr, "/api", &[]).await)["backend"].clone();
    for _ in 0..8 {
        assert_eq!(
            json(&http_get(gw.addr, "/api", &[]).await)["backend"],
            first
        );
    }
}

#[tokio::test]
async fn least_conn_route_serves_every_request() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    let gw = Gateway::start(&proxy_route(
        &[a.addr, b.addr],
        "      balance: least_conn\n",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(
        a.hits.load(Ordering::SeqCst) + b.hits.load(Ordering::SeqCst),
        10
    );
    assert!(a.hits.load(Ordering::SeqCst) > 0 && b.hits.load(Ordering::SeqCst) > 0);
}

async fn wait_for_metric(gw: &Gateway, needle: &str) {
    let until = Instant::now() + DEADLINE;
    loop {
        if gw.metrics().await.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < until,
            "metric {needle:?} never appeared:\n{}",
            gw.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_member_down_every_request_still_succeeds() {
    let alive = HttpBackend::start("alive").await;
    let dead_guard = dead_port();
    let dead = dead_guard.addr;
    let gw = Gateway::start(&proxy_route(
        &[alive.addr, dead],
        "      health_check: { interval: 200ms, path: /healthz }\n",
    ))
    .await;
    // Before and after the health check notices: connect failures are retried on the other member.
    for _ in 0..20 {
        let r = http_get(gw.addr, "/api", &[]).await;
        assert_eq!(r.status, 200, "{}", r.body_text());
    }
    wait_for_metric(
        &gw,
        &format!("switchyard_upstream_healthy{{route=\"api\",upstream=\"{dead}\"}} 0"),
    )
    .await;
    for _ in 0..20 {
        assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(alive.hits.load(Ordering::SeqCst), 40);
}

#[tokio::test]
async fn member_failing_its_http_check_gets_no_traffic_and_comes_back() {
    let a = HttpBackend::start("a").await;
    let b = HttpBackend::start("b").await;
    b.healthy.store(false, Ordering::SeqCst);
    let gw = Gateway::start(&proxy_route(
        &[a.addr, b.addr],
        "      health_check: { interval: 200ms, path: /healthz }\n",
    ))
    .await;
    wait_for_metric(
        &gw,
        &format!(
            "switchyard_upstream_healthy{{route=\"api\",upstream=\"{}\"}} 0",
            b.addr
        ),
    )
    .await;
    let before = b.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 200);
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        before,
        "a member answering 503 on /healthz gets no requests"
    );
    b.healthy.store(true, Ordering::SeqCst);
    wait_for_metric(
        &gw,
        &format!(
            "switchyard_upstream_healthy{{route=\"api\",upstream=\"{}\"}} 1",
            b.addr
        ),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 200);
    }
    assert!(
        b.hits.load(Ordering::SeqCst) > before,
        "a recovered member is used again"
    );
}

#[tokio::test]
async fn all_members_down_gives_502_with_a_clear_body() {
    let (g1, g2) = (dead_port(), dead_port());
    let gw = Gateway::start(&proxy_route(&[g1.addr, g2.addr], "")).await;
    let r = http_get(gw.addr, "/api", &[]).await;
    assert_eq!(r.status, 502);
    assert!(
        r.body_text().contains("route api"),
        "body names the route: {:?}",
        r.body_text()
    );
    // Same once the health check has marked both down.
    let (g3, g4) = (dead_port(), dead_port());
    let (d1, d2) = (g3.addr, g4.addr);
    let gw = Gateway::start(&proxy_route(
        &[d1, d2],
        "      health_check: { interval: 100ms }\n",
    ))
    .await;
    for d in [d1, d2] {
        wait_for_metric(
            &gw,
            &format!("switchyard_upstream_healthy{{route=\"api\",upstream=\"{d}\"}} 0"),
        )
        .await;
    }
    let r = http_get(gw.addr, "/api", &[]).await;
    assert_eq!(r.status, 502);
    assert!(
        r.body_text()
            .contains("no upstream of route api is reachable"),
        "{:?}",
        r.body_text()
    );
    // The gateway keeps serving: the admin side and other requests still answer.
    assert_eq!(http_get(gw.admin, "/healthz", &[]).await.status, 200);
}

/// `proxy.read_timeout` (the hostile pass: an upstream that reads the request and never answers
/// held its client for minutes, with no key to bound it): no answer head within it is `504`,
/// and an answer whose body stops for longer is cut, not held open.
#[tokio::test]
async fn an_upstream_that_does_not_answer_in_read_timeout_is_504() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Reads each request; `/api/silent` gets nothing back, `/api/stall` half an answer.
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if buf[..n].starts_with(b"GET /api/stall") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
                        .await;
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
                drop(s);
            });
        }
    });
    let gw = Gateway::start(&proxy_route(&[addr], "      read_timeout: 400ms\n")).await;
    let started = Instant::now();
    let r = http_get(gw.addr, "/api/silent", &[]).await;
    assert_eq!(r.status, 504, "{}", r.body_text());
    assert!(r.body_text().contains("did not answer in time"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");

    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /api/stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the stalled answer is cut, not held")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("half"),
        "{text}"
    );
    gw.wait_metric(
        "switchyard_rejections_total{reason=\"upstream_timeout\",route=\"api\"}",
        1.0,
    )
    .await;
}
