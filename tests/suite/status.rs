//! The admin listener's status page over the wire: `/status.json` reports exactly the traffic a
//! test made (clients per transport, the backend's state and reconnects, upstream health,
//! refusals of the last minute, the last reload), and `/` is the same as HTML that refreshes
//! itself and escapes what the config wrote.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const GOOD: &str = "https://app.example";

fn routes(feed: &FeedBackend, api: &HttpBackend, dead: &DeadPort) -> String {
    format!(
        "  - name: feed\n    path: /feed\n    origins: [\"{GOOD}\"]\n    backend: {{ websocket: \"{}\" }}\n\
         \x20 - name: clock\n    path: /clock\n    clients: [sse, long_poll]\n    backend: {{ builtin: clock }}\n\
         \x20 - name: chat\n    path: /chat\n    fanout: per_client\n    backend: {{ websocket: \"{}\" }}\n\
         \x20 - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\", \"{}\"], health_check: {{ interval: 100ms }} }}\n",
        feed.url("/stream"),
        feed.url("/chat"),
        api.addr,
        dead.addr,
    )
}

async fn status_json(gw: &Gateway) -> Value {
    let r = http_get(gw.admin, "/status.json", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("status.json is JSON")
}

/// Polls `/status.json` until `ready` holds; returns that document.
async fn wait_status(gw: &Gateway, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + DEADLINE;
    loop {
        let s = status_json(gw).await;
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < until, "{what} never showed:\n{s:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn route<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("route {name} in {s:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_the_traffic_made() {
    let feed = FeedBackend::start().await;
    let api = HttpBackend::start("api").await;
    let dead = dead_port();
    let gw = Gateway::start(&routes(&feed, &api, &dead)).await;

    // Before any client: the shared feed is idle, nothing is refused, no reload happened.
    let s = status_json(&gw).await;
    assert_eq!(s["ready"], true);
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["config"]["last_reload"], Value::Null);
    assert_eq!(s["refusals_last_minute"]["total"], 0);
    let f = route(&s, "feed");
    assert_eq!(f["bridge"]["state"], "idle");
    assert_eq!(f["bridge"]["connected"], false);
    let names: Vec<&str> = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["feed", "clock", "chat", "api"]);

    // Three SSE clients on the feed, one request refused by its Origin.
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(SseReader::open(gw.addr, "/feed", &[("origin", GOOD)]).await);
    }
    feed.wait_open(1).await;
    let refused = http_get(gw.addr, "/feed", &[("origin", "https://evil.example")]).await;
    assert_eq!(refused.status, 403);

    let s = wait_status(&gw, "3 clients and a backend", |s| {
        let f = route(s, "feed");
        f["clients_total"] == 3 && f["bridge"]["connected"] == true
    })
    .await;
    let f = route(&s, "feed");
    assert_eq!(f["kind"], "bridge");
    assert_eq!(f["host"], "*");
    assert_eq!(f["path"], "/feed");
    assert_eq!(
        f["transports"],
        serde_json::json!(["websocket", "sse", "long_poll"])
    );
    assert_eq!(
        f["clients"],
        serde_json::json!({"websocket": 0, "sse": 3, "long_poll": 0})
    );
    let b = &f["bridge"];
    assert_eq!(b["backend"], "websocket");
    assert_eq!(b["builtin"], Value::Null);
    assert_eq!(b["backend_addr"], feed.addr.to_string());
    assert_eq!(b["fanout"], "shared");
    assert_eq!(b["state"], "connected");
    assert_eq!(b["backend_connections_open"], 1);
    assert_eq!(b["connects_ok"], 1);
    assert_eq!(b["reconnects"], 0);
    assert_eq!(f["refusals_total"], 1);
    assert_eq!(f["proxy"], Value::Null);
    assert_eq!(
        s["refusals_last_minute"],
        serde_json::json!({"total": 1, "by_reason": {"origin_not_allowed": 1}})
    );

    let c = route(&s, "clock");
    assert_eq!(c["bridge"]["backend"], "builtin");
    assert_eq!(c["bridge"]["builtin"], "clock");
    assert_eq!(c["bridge"]["state"], "builtin");
    assert_eq!(c["transports"], serde_json::json!(["sse", "long_poll"]));
    assert_eq!(c["clients_total"], 0);
    assert_eq!(route(&s, "chat")["bridge"]["fanout"], "per_client");

    // The proxy route's pool: the live member healthy, the dead one marked down.
    let s = wait_status(&gw, "the dead upstream marked down", |s| {
        route(s, "api")["proxy"]["upstreams"][1]["healthy"] == false
    })
    .await;
    let a = route(&s, "api");
    assert_eq!(a["kind"], "proxy");
    assert_eq!(a["bridge"], Value::Null);
    assert_eq!(a["transports"], serde_json::json!(["http", "tunnel"]));
    assert_eq!(a["proxy"]["balance"], "round_robin");
    assert_eq!(a["proxy"]["health_checked"], true);
    let ups = a["proxy"]["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 2);
    assert_eq!(ups[0]["name"], api.addr.to_string());
    assert_eq!(ups[0]["addr"], api.addr.to_string());
    assert_eq!(ups[0]["healthy"], true);
    assert_eq!(ups[1]["name"], dead.addr.to_string());

    // The backend drops its connection: the feed reconnects once (its SSE clients are told
    // the backend went, and would resume with Last-Event-ID).
    feed.send(FeedCmd::Drop);
    feed.wait_connections(2).await;
    let s = wait_status(&gw, "one reconnect", |s| {
        let b = &route(s, "feed")["bridge"];
        b["reconnects"] == 1 && b["connected"] == true
    })
    .await;
    assert_eq!(route(&s, "feed")["bridge"]["connects_ok"], 2);

    drop(clients);
}

#[tokio::test]
async fn status_page_is_html_that_names_the_routes_and_refreshes() {
    let feed = FeedBackend::start().await;
    let api = HttpBackend::start("api").await;
    let dead = dead_port();
    let gw = Gateway::start(&routes(&feed, &api, &dead)).await;
    let _client = SseReader::open(gw.addr, "/feed", &[("origin", GOOD)]).await;
    let page = http_get(gw.admin, "/", &[]).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    let html = page.body_text();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    for name in ["feed", "clock", "chat", "api"] {
        assert!(
            html.contains(&format!("<tr data-route=\"{name}\">")),
            "route {name} in:\n{html}"
        );
    }
    assert!(html.contains(&dead.addr.to_string()), "{html}");
    // Readable without scripts and without anything fetched from elsewhere.
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("src=") && !html.contains("<link"), "{html}");
    // A path the admin listener does not serve is still a 404.
    assert_eq!(http_get(gw.admin, "/nope", &[]).await.status, 404);
}

/// A refused reload shows with its error text, escaped: the error quotes what the config says,
/// here a route name that is markup. Then an applied reload replaces it.
#[tokio::test]
async fn status_shows_the_last_reload_and_escapes_its_error() {
    let gw = Gateway::start("  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n")
        .await;
    gw.rewrite_routes(
        "  - name: \"<img src=x onerror=alert(1)>\"\n    path: /x\n    backend: { builtin: clock }\n",
    );
    gw.signal("HUP");
    let s = wait_status(&gw, "the refused reload", |s| {
        s["config"]["last_reload"] != Value::Null
    })
    .await;
    let r = &s["config"]["last_reload"];
    assert_eq!(r["outcome"], "failure");
    assert_eq!(r["generation"], 1);
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("invalid route name \"<img src=x onerror=alert(1)>\""),
        "{s:#}"
    );
    assert_eq!(s["config"]["reloads_failed"], 1, "{s:#}");
    let html = http_get(gw.admin, "/", &[]).await.body_text();
    assert!(
        html.contains("invalid route name &quot;&lt;img src=x onerror=alert(1)&gt;&quot;"),
        "{html}"
    );
    assert!(!html.contains("<img"), "{html}");

    gw.rewrite_routes(
        "  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n  - name: added\n    path: /added\n    backend: { builtin: echo }\n",
    );
    gw.signal("HUP");
    // The outcome is recorded last, after the swap and the counters.
    let s = wait_status(&gw, "the applied reload", |s| {
        s["config"]["last_reload"]["outcome"] == "success"
    })
    .await;
    assert_eq!(s["config"]["generation"], 2);
    let r = &s["config"]["last_reload"];
    assert_eq!(r["outcome"], "success");
    assert_eq!(r["generation"], 2);
    assert_eq!(r["error"], Value::Null);
    assert_eq!(s["config"]["reloads_succeeded"], 1);
    assert_eq!(route(&s, "added")["bridge"]["builtin"], "echo");
}
