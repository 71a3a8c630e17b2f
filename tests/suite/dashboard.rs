//! The Grafana dashboard and the alert rules only query metrics the gateway really exports:
//! after real traffic of every kind (including a reload), each `switchyard_*` name in
//! `grafana/switchyard.json` and `grafana/alerts.yml` is on /metrics, and the live scrape passes
//! `promtool check metrics`.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn queried_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("switchyard_"))
        .map(|w| w.trim_end_matches("_bucket").to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_metric_is_exported_and_promtool_is_happy() {
    let dead = dead_port();
    let api = HttpBackend::start("api").await;
    let sse = crate::common::chat::SsePostBackend::start().await;
    let feed = FeedBackend::start().await;
    let routes = format!(
        "  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    clients: [websocket, sockjs]\n    backend: {{ builtin: echo }}\n  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n  - name: checked\n    path: /checked\n    proxy: {{ upstreams: [\"{}\"], health_check: {{ interval: 200ms, path: /healthz }} }}\n  - name: chat\n    path: /chat\n    fanout: per_client\n    origins: [\"https://app.example\"]\n    backend: {{ sse: \"{}\", post: \"{}\" }}\n  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n    slow_consumer: drop_oldest\n    binary: drop\n    limits: {{ send_queue: 1 }}\n  - name: rooms\n    path: \"/rooms/{{room}}\"\n    backend: {{ publish: {{}} }}\n    auth: {{ url: \"http://{}/authorize\" }}\n",
        dead.addr,
        api.addr,
        sse.url("/events"),
        sse.url("/send"),
        feed.url("/"),
        dead.addr,
    );
    let gw = Gateway::start(&routes).await;
    // A publish opens a channel; a subscriber the (unreachable) auth endpoint cannot admit.
    let published =
        crate::common::sockjs::request(gw.admin, "POST", "/publish/rooms/r1", &[], b"hi").await;
    assert_eq!(published.status, 202);
    let refused = http_get(gw.addr, "/rooms/r1", &[("accept", "text/event-stream")]).await;
    assert_eq!(refused.status, 503);
    let mut clock = SseReader::open(gw.addr, "/clock", &[]).await;
    let tick = clock.next_data_event().await;
    drop(clock);
    // Resume: a replay hit.
    let mut again = SseReader::open(
        gw.addr,
        "/clock",
        &[("last-event-id", tick.id.as_deref().unwrap())],
    )
    .await;
    again.next_data_event().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/echo"))
        .await
        .unwrap();
    ws.send(Message::text("x")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    // A WebSocket that agreed to permessage-deflate (tungstenite offers none).
    let (mut deflated, ext) = ws_open_offering(gw.addr, "/echo", Some("permessage-deflate")).await;
    assert!(ext.starts_with("permessage-deflate"), "{ext}");
    let text = json_quotes(1);
    tokio::io::AsyncWriteExt::write_all(&mut deflated, &client_frame(0x81, text.as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        read_server_frame(&mut deflated).await.0,
        0xC1,
        "a compressed echo"
    );
    drop(deflated);
    // A SockJS session on the echo.
    let mut sj = crate::common::chat::Client::connect(gw.addr).await;
    assert_eq!(
        sj.request("POST", "/echo/000/dash/xhr", &[], "").await.body,
        "o\n"
    );
    assert_eq!(
        sj.request("POST", "/echo/000/dash/xhr_send", &[], "[\"m\"]")
            .await
            .status,
        204
    );
    assert_eq!(
        sj.request("POST", "/echo/000/dash/xhr", &[], "").await.body,
        "a[\"m\"]\n"
    );
    assert_eq!(http_get(gw.addr, "/api", &[]).await.status, 502);
    assert_eq!(http_get(gw.addr, "/missing", &[]).await.status, 404);
    gw.wait_metric(
        &format!(
            "switchyard_upstream_healthy{{route=\"checked\",upstream=\"{}\"}}",
            api.addr
        ),
        1.0,
    )
    .await;
    // A per-client session that posts one message and is closed.
    let mut c = crate::common::chat::Client::connect(gw.addr).await;
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
    // A feed that outruns its client (send_queue 1, drop_oldest) and sends binary to SSE.
    let mut fed = SseReader::open(gw.addr, "/feed", &[]).await;
    feed.wait_open(1).await;
    feed.send(FeedCmd::Send {
        messages: std::sync::Arc::new(vec![Message::binary(vec![1u8, 2, 3])]),
        batch: 1,
        pause: Duration::ZERO,
    });
    feed.send_numbered(1..=2000, 64, 2000, Duration::ZERO);
    fed.next_data_event().await;
    gw.wait_metric(
        r#"switchyard_slow_consumer_total{action="drop",route="feed",transport="sse"}"#,
        1.0,
    )
    .await;
    // A reload.
    gw.signal("HUP");
    gw.wait_metric(r#"switchyard_config_reloads_total{outcome="success"}"#, 1.0)
        .await;

    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/grafana/switchyard.json")).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    let vars: Vec<&str> = parsed["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "route", "transport"]);
    let alerts = std::fs::read_to_string(format!("{root}/grafana/alerts.yml")).unwrap();
    let mut names = queried_names(&dashboard);
    names.extend(queried_names(&alerts));
    names.sort();
    names.dedup();
    assert!(names.len() >= 20, "{names:?}");
    let metrics = gw.metrics().await;
    // Cluster metrics exist only with `cluster:`: tests/suite/cluster.rs checks them on a cluster.
    for name in names
        .iter()
        .filter(|n| !n.starts_with("switchyard_cluster_"))
    {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "the dashboard or an alert queries {name}, which /metrics does not export:\n{metrics}"
        );
    }

    // The live scrape passes promtool's checks (naming, units, help).
    let dir = tempfile::tempdir().unwrap();
    let scrape = dir.path().join("metrics.txt");
    std::fs::write(&scrape, &metrics).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&scrape).unwrap())
        .output()
        .expect("promtool is installed (scripts/install-deps.sh --test)");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `switchyard_*` names the dashboard and the alert rules query (the cluster's aside: they
/// exist only with `cluster:`).
fn dashboard_and_alert_names() -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/grafana/switchyard.json")).unwrap();
    let alerts = std::fs::read_to_string(format!("{root}/grafana/alerts.yml")).unwrap();
    let mut names = queried_names(&dashboard);
    names.extend(queried_names(&alerts));
    names.sort();
    names.dedup();
    names.retain(|n| !n.starts_with("switchyard_cluster_"));
    names
}

/// Whether the scrape holds at least one series (a sample line) of `name`.
fn has_series(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|l| {
        let rest = l
            .strip_prefix(name)
            .map(|r| r.strip_prefix("_bucket").unwrap_or(r));
        rest.is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_gateway_has_a_series_for_every_dashboard_metric_and_reloads_add_and_remove_them() {
    let dead = dead_port();
    let api = HttpBackend::start("api").await;
    let routes = |last: &str| {
        format!(
            "  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: echo\n    path: /echo\n    clients: [websocket, sockjs]\n    backend: {{ builtin: echo }}\n  - name: checked\n    path: /checked\n    proxy: {{ upstreams: [\"{}\"], health_check: {{ interval: 200ms, path: /healthz }} }}\n  - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"ws://{}/chat\" }}\n  - name: events\n    path: /events\n    backend: {{ sse: \"http://{}/events\", post: \"http://{}/send\" }}\n  - name: rooms\n    path: \"/rooms/{{room}}\"\n    backend: {{ publish: {{}} }}\n    auth: {{ url: \"http://{}/authorize\" }}\n{last}",
            api.addr, dead.addr, dead.addr, dead.addr, dead.addr
        )
    };
    let feed = format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"ws://{}/feed\" }}\n    clients: [websocket, sse, long_poll]\n",
        dead.addr
    );
    let gw = Gateway::start(&routes(&feed)).await;
    // No client, no request: every queried name has a series already.
    let metrics = gw.metrics().await;
    let names = dashboard_and_alert_names();
    assert!(names.len() >= 20, "{names:?}");
    let missing: Vec<&String> = names.iter().filter(|n| !has_series(&metrics, n)).collect();
    assert!(
        missing.is_empty(),
        "no series on a quiet gateway for {missing:?}:\n{metrics}"
    );
    // The alert rules' selectors match, and each route's own series are there at 0.
    for series in [
        r#"switchyard_backend_connect_attempts_total{outcome="failed",route="feed"}"#,
        r#"switchyard_backend_connect_attempts_total{outcome="ok",route="chat"}"#,
        r#"switchyard_config_reloads_total{outcome="failure"}"#,
        r#"switchyard_client_connections_open{route="feed",transport="long_poll"}"#,
        r#"switchyard_client_connections_total{route="echo",transport="sockjs-xhr"}"#,
        r#"switchyard_messages_total{direction="in",route="events",transport="sse"}"#,
        r#"switchyard_sessions_open{route="chat",transport="long_poll"}"#,
        r#"switchyard_sessions_ended_total{reason="expired",route="chat"}"#,
        r#"switchyard_backend_posts_total{outcome="failed",route="events"}"#,
        r#"switchyard_replay_total{result="miss",route="feed"}"#,
        r#"switchyard_slow_consumer_total{action="disconnect",route="feed",transport="sse"}"#,
        r#"switchyard_rejections_total{reason="origin_not_allowed",route="checked"}"#,
        r#"switchyard_rejections_total{reason="no_upstream",route="checked"}"#,
        r#"switchyard_http_requests_total{class="5xx",route="clock"}"#,
        r#"switchyard_ws_compression_bytes_total{direction="out",route="echo",stage="wire",transport="websocket"}"#,
    ] {
        assert_eq!(metric(&metrics, series), Some(0.0), "{series}:\n{metrics}");
    }
    assert_eq!(
        metric(
            &metrics,
            &format!(
                "switchyard_upstream_connect_failures_total{{route=\"checked\",upstream=\"{}\"}}",
                api.addr
            )
        ),
        Some(0.0)
    );

    // A reload that removes `feed` and adds `later`: its series come, feed's go.
    gw.rewrite_routes(&routes(
        "  - name: later\n    path: /later\n    backend: { builtin: clock }\n    clients: [sse]\n",
    ));
    gw.signal("HUP");
    gw.wait_metric(r#"switchyard_config_reloads_total{outcome="success"}"#, 1.0)
        .await;
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("route=\"feed\""),
        "a removed route's series are gone:\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"switchyard_client_connections_open{route="later",transport="sse"}"#
        ),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"switchyard_client_connections_open{route="clock",transport="sse"}"#
        ),
        Some(0.0),
        "routes that stay keep theirs"
    );
}
