//! The Grafana dashboard only queries metrics the gateway really exports: after a little real
//! traffic of every kind, each `switchyard_*` name in grafana/switchyard.json is on /metrics.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn every_dashboard_metric_is_exported() {
    let dead = dead_port();
    let sse = common::chat::SsePostBackend::start().await;
    let routes = format!(
        "  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    backend: {{ builtin: echo }}\n  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ sse: \"{}\", post: \"{}\" }}\n",
        dead.addr,
        sse.url("/events"),
        sse.url("/send"),
    );
    let gw = Gateway::start(&routes).await;
    let mut sse = SseReader::open(gw.addr, "/clock", &[]).await;
    sse.next_data_event().await;
    drop(sse);
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 502);
    // A per-client session that posts one message and is closed.
    let mut c = common::chat::Client::connect(gw.addr).await;
    let open = c.get("/chat?transport=poll", &[]).await.json();
    let sid = open["session"].as_str().unwrap().to_owned();
    let path = format!("/chat?transport=poll&session={sid}");
    assert_eq!(c.request("POST", &path, &[], "hi").await.status, 204);
    assert_eq!(c.request("DELETE", &path, &[], "").await.status, 204);
    gw.wait_metric(
        "switchyard_sessions_ended_total{reason=\"client_closed\",route=\"chat\"}",
        1.0,
    )
    .await;
    assert_eq!(http_get(gw.addr, "/missing", &[]).await.status, 404);

    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/switchyard.json"
    ))
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    let mut names: Vec<String> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_"))
        .map(|w| w.trim_end_matches("_bucket").to_owned())
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    let metrics = gw.metrics().await;
    for name in names {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "dashboard queries {name}, which /metrics does not export:\n{metrics}"
        );
    }
}
