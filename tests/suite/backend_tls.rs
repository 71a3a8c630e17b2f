//! TLS toward backends and upstreams: `wss://` feeds, an `https://` SSE backend with `post:`
//! over mTLS, and `proxy.tls` upstreams (requests, a WebSocket upgrade, the health check).
//! Each backend is a real plain test backend behind a real TLS server (rustls) holding a
//! certificate of a CA the test makes; a wrong CA, a wrong name and a missing client
//! certificate fail closed.

use crate::common::chat::*;
use crate::common::tls::{Pki, TlsFront};
use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn yaml_path(p: &std::path::Path) -> String {
    format!("{:?}", p.display().to_string())
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(std::time::Instant::now() < until, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_feed_is_verified_and_a_wrong_ca_or_name_fails_closed() {
    let pki = Pki::new();
    let backend = FeedBackend::start().await;
    let front = TlsFront::start(&pki, backend.addr, false).await;
    let url = format!("wss://localhost:{}/stream", front.port());
    let route = |name: &str, tls: String| {
        format!(
            "  - name: {name}\n    path: /{name}\n    backend: {{ websocket: \"{url}\", reconnect: {{ initial: 50ms, max: 200ms }}, tls: {tls} }}\n"
        )
    };
    let ca = yaml_path(&pki.ca);
    let routes = [
        route("good", format!("{{ ca: {ca} }}")),
        route("wrongca", format!("{{ ca: {} }}", yaml_path(&pki.other_ca))),
        route("wrongname", format!("{{ ca: {ca}, sni: wrong.example }}")),
        route(
            "lab",
            format!("{{ ca: {}, verify: false }}", yaml_path(&pki.other_ca)),
        ),
    ]
    .concat();
    let gw = Gateway::start(&routes).await;
    let mut good = SseReader::open(gw.addr, "/good", &[]).await;
    let mut lab = SseReader::open(gw.addr, "/lab", &[]).await;
    let mut refused = Vec::new();
    for name in ["wrongca", "wrongname"] {
        refused.push(SseReader::open(gw.addr, &format!("/{name}"), &[]).await);
    }
    // Only the two routes that accept the certificate reach the backend behind TLS.
    backend.wait_open(2).await;
    let backend_id = format!("localhost:{}", front.port());
    gw.wait_metric(
        &format!("switchyard_backend_tls_failures_total{{backend=\"{backend_id}\",reason=\"certificate\"}}"),
        4.0,
    )
    .await;
    for route in ["wrongca", "wrongname"] {
        gw.wait_metric(
            &format!(
                "switchyard_backend_connect_attempts_total{{outcome=\"failed\",route=\"{route}\"}}"
            ),
            2.0,
        )
        .await;
    }
    backend.send_numbered(1..=3, 0, 3, Duration::ZERO);
    for sse in [&mut good, &mut lab] {
        for n in 1..=3 {
            assert_eq!(number_of(&sse.next_data_event().await.data), n);
        }
    }
    // The refused routes' clients are still connected and waiting for the feed; nothing
    // plaintext went anywhere.
    for sse in &mut refused {
        let nothing = tokio::time::timeout(Duration::from_millis(300), sse.next_data_event()).await;
        assert!(
            nothing.is_err(),
            "a feed behind a refused certificate delivered"
        );
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        2
    );
    assert!(front.failed() >= 4, "the front saw the refused handshakes");
    let names = front.log.names.lock().unwrap().clone();
    assert!(
        names.iter().all(|n| n.as_deref() == Some("localhost")),
        "{names:?}"
    );
    let log = gw.log();
    assert!(
        log.contains("route wrongca") && log.contains("certificate"),
        "the refusal is a clear log line:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_sse_backend_with_post_works_over_mtls_and_fails_closed_without_a_client_cert() {
    let pki = Pki::new();
    let backend = SsePostBackend::start().await;
    let front = TlsFront::start(&pki, backend.addr, true).await;
    let base = format!("https://localhost:{}", front.port());
    let route = |name: &str, tls: String| {
        format!(
            "  - name: {name}\n    path: /{name}\n    fanout: per_client\n    backend: {{ sse: \"{base}/events\", post: \"{base}/send\", connect_timeout: 2s, tls: {tls} }}\n"
        )
    };
    let ca = yaml_path(&pki.ca);
    let routes = [
        route(
            "feed",
            format!(
                "{{ ca: {ca}, client_cert: {}, client_key: {} }}",
                yaml_path(&pki.client_cert),
                yaml_path(&pki.client_key)
            ),
        ),
        route("nocert", format!("{{ ca: {ca} }}")),
    ]
    .concat();
    let gw = Gateway::start(&routes).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/feed"))
        .await
        .expect("a WebSocket client in front of the HTTPS SSE backend");
    backend.wait_subscriptions(1).await;
    for i in 1..=3 {
        ws.send(Message::text(format!("s{i}"))).await.unwrap();
    }
    for i in 1..=3 {
        let m = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        assert_eq!(
            m.unwrap().unwrap().into_text().unwrap().as_str(),
            format!("echo:s{i}")
        );
    }
    let bodies: Vec<_> = backend.posts().iter().map(|p| p.body.clone()).collect();
    assert_eq!(bodies, ["s1", "s2", "s3"], "POSTed over TLS, in order");
    // The event stream and the POSTs each showed the gateway's client certificate.
    assert!(
        front
            .log
            .client_certs
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );

    // Without a client certificate the backend refuses the gateway: the client's handshake
    // gets a 502 before any 101, and no session is made.
    let failed_before = front.failed();
    let r = http_get(
        gw.addr,
        "/nocert",
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert!(front.failed() > failed_before);
    assert_eq!(backend.subscriptions.lock().unwrap().len(), 1);
    gw.expect_metric(
        r#"switchyard_rejections_total{reason="backend_unreachable",route="nocert"}"#,
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_serve_requests_upgrades_and_health_checks_and_a_wrong_ca_is_502() {
    let pki = Pki::new();
    let http = HttpBackend::start("secure").await;
    let ws = WsBackend::start().await;
    let http_front = TlsFront::start(&pki, http.addr, false).await;
    let ws_front = TlsFront::start(&pki, ws.addr, false).await;
    let ca = yaml_path(&pki.ca);
    let other = yaml_path(&pki.other_ca);
    let hp = http_front.port();
    // `api` names its upstream by IP (verified against the certificate's IP address), `ws`
    // by IP with `sni: localhost`.
    let routes = format!(
        "  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"127.0.0.1:{hp}\"], tls: {{ ca: {ca} }}, health_check: {{ interval: 200ms, path: /healthz }} }}\n  \
- name: ws\n    path: /ws\n    proxy: {{ upstreams: [\"127.0.0.1:{}\"], tls: {{ ca: {ca}, sni: localhost }} }}\n  \
- name: bad\n    path: /bad\n    proxy: {{ upstreams: [\"127.0.0.1:{hp}\"], tls: {{ ca: {other} }} }}\n  \
- name: badcheck\n    path: /badcheck\n    proxy: {{ upstreams: [\"127.0.0.1:{hp}\"], tls: {{ ca: {other} }}, health_check: {{ interval: 200ms, path: /healthz }} }}\n",
        ws_front.port()
    );
    let gw = Gateway::start(&routes).await;

    let r = http_get(gw.addr, "/api/x?y=1", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body_text());
    let v: serde_json::Value = serde_json::from_str(&r.body_text()).unwrap();
    assert_eq!(v["backend"], "secure");
    assert_eq!(v["path"], "/api/x?y=1");

    let (mut client, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .expect("a WebSocket upgrade through a TLS upstream");
    client.send(Message::text("over tls")).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, client.next()).await.unwrap();
    assert_eq!(
        echo.unwrap().unwrap().into_text().unwrap().as_str(),
        "over tls"
    );
    let names = ws_front.log.names.lock().unwrap().clone();
    assert_eq!(names, [Some("localhost".to_owned())]);

    // `bad` names the same upstream as `api`, whose verified connection is kept alive in
    // pingora's pool: it must not be reused by a route that trusts another CA.
    let r = http_get(gw.addr, "/bad/x", &[]).await;
    assert_eq!(r.status, 502, "{}", r.body_text());
    assert_eq!(http.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    gw.wait_metric(
        &format!("switchyard_backend_tls_failures_total{{backend=\"127.0.0.1:{hp}\",reason=\"certificate\"}}"),
        1.0,
    )
    .await;
    // The health check speaks TLS too: verified for `api`, refused for `badcheck`.
    let series =
        format!("switchyard_upstream_healthy{{route=\"badcheck\",upstream=\"127.0.0.1:{hp}\"}}");
    let until = std::time::Instant::now() + DEADLINE;
    while metric(&gw.metrics().await, &series) != Some(0.0) {
        assert!(
            std::time::Instant::now() < until,
            "{series} never went to 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks_before = http_front.handshakes();
    wait_until("the health check keeps connecting over TLS", || {
        http_front.handshakes() >= checks_before + 2
    })
    .await;
    gw.expect_metric(
        &format!("switchyard_upstream_healthy{{route=\"api\",upstream=\"127.0.0.1:{hp}\"}}"),
        1.0,
    )
    .await;
}
