//! Operations over real sockets and real signals: hot reload (SIGHUP) under live connections,
//! a refused reload, and the graceful drain on SIGTERM.

use crate::common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn feed_route(backend: &FeedBackend) -> String {
    format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"{}\" }}\n    limits: {{ send_queue: 4096 }}\n",
        backend.url("/stream")
    )
}

const GONE: &str = "  - name: gone\n    path: /gone\n    backend: { builtin: clock }\n";
const CHANGED_BEFORE: &str =
    "  - name: changed\n    path: /changed\n    backend: { builtin: clock }\n    clients: [sse, websocket]\n";
const CHANGED_AFTER: &str =
    "  - name: changed\n    path: /changed\n    backend: { builtin: clock }\n    clients: [sse]\n";
const ADDED: &str = "  - name: added\n    path: /added\n    backend: { builtin: clock }\n";

/// A reload under 1,000 live SSE and WebSocket connections on an unchanged route drops none of
/// them (they keep their shared backend connection and keep receiving); a removed route's
/// clients are drained; an added route serves; then an invalid config is refused, counted, and
/// the running generation keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_routes_live_and_refuses_bad_configs() {
    let backend = FeedBackend::start().await;
    let gw = Gateway::start(&format!("{}{GONE}{CHANGED_BEFORE}", feed_route(&backend))).await;
    let mut sse = Vec::new();
    let mut ws = Vec::new();
    for _ in 0..500 {
        sse.push(SseReader::open(gw.addr, "/feed", &[]).await);
        let (w, _) = tokio_tungstenite::connect_async(gw.ws_url("/feed"))
            .await
            .unwrap();
        ws.push(w);
    }
    gw.wait_metric(
        r#"switchyard_client_connections_open{route="feed",transport="sse"}"#,
        500.0,
    )
    .await;
    gw.wait_metric(
        r#"switchyard_client_connections_open{route="feed",transport="websocket"}"#,
        500.0,
    )
    .await;
    let mut gone = SseReader::open(gw.addr, "/gone", &[]).await;
    gone.next_data_event().await;
    let (mut changed_ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/changed"))
        .await
        .unwrap();

    gw.rewrite_routes(&format!("{}{CHANGED_AFTER}{ADDED}", feed_route(&backend)));
    let reloaded = Instant::now();
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 2.0).await;
    eprintln!(
        "reload applied {:?} after SIGHUP with 1,000 live connections",
        reloaded.elapsed()
    );
    gw.expect_metric(r#"switchyard_config_reloads_total{outcome="success"}"#, 1.0)
        .await;

    // Every connection on the unchanged route is still there and still served.
    backend.send_numbered(1..=1, 0, 1, Duration::ZERO);
    for (i, r) in sse.iter_mut().enumerate() {
        let e = r.next_data_event().await;
        assert_eq!(number_of(&e.data), 1, "sse client {i}");
    }
    for (i, w) in ws.iter_mut().enumerate() {
        let m = loop {
            match tokio::time::timeout(DEADLINE, w.next()).await.unwrap() {
                Some(Ok(Message::Text(t))) => break t,
                Some(Ok(_)) => continue,
                other => panic!("websocket client {i} lost: {other:?}"),
            }
        };
        assert_eq!(number_of(&m), 1, "websocket client {i}");
    }
    assert_eq!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the unchanged route kept its one backend connection"
    );
    // The removed route's client was drained: its stream ends with a fresh retry.
    let mut saw_retry = false;
    while let Some(e) = gone.next_event_or_end().await {
        saw_retry |= e.retry.is_some();
    }
    assert!(saw_retry, "the drained stream got a retry: before its end");
    assert_eq!(
        http_get(gw.addr, "/gone", &[("accept", "text/event-stream")])
            .await
            .status,
        404
    );
    let mut added = SseReader::open(gw.addr, "/added", &[]).await;
    added.next_data_event().await;
    // A changed route: new connections get the new settings (no more WebSocket), while the
    // one opened before the reload finishes on the old settings and keeps its ticks coming.
    let r = http_get(
        gw.addr,
        "/changed",
        &[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(r.status, 406, "{}", r.body_text());
    for _ in 0..2 {
        let m = tokio::time::timeout(DEADLINE, changed_ws.next())
            .await
            .unwrap();
        assert!(matches!(m, Some(Ok(Message::Text(_)))), "{m:?}");
    }
    assert!(
        gw.log()
            .contains("changed: [changed], added: [added], removed: [gone]"),
        "{}",
        gw.log()
    );

    // An invalid config is refused with its errors, and generation 2 keeps serving.
    gw.rewrite_config(
        "server:\n  listen: []\nroutes:\n  - name: x\n    path: nope\n    colour: blue\n",
    );
    gw.signal("HUP");
    gw.wait_metric(r#"switchyard_config_reloads_total{outcome="failure"}"#, 1.0)
        .await;
    gw.expect_metric("switchyard_config_generation", 2.0).await;
    let log = gw.log();
    assert!(log.contains("refused; generation 2 keeps serving"), "{log}");
    assert!(
        log.contains("routes[0].colour"),
        "every error is logged: {log}"
    );
    let mut still = SseReader::open(gw.addr, "/added", &[]).await;
    still.next_data_event().await;
    backend.send_numbered(2..=2, 0, 1, Duration::ZERO);
    assert_eq!(number_of(&sse[0].next_data_event().await.data), 2);
    let w = ws.last_mut().unwrap();
    w.send(Message::text("ignored")).await.unwrap();
}

/// SIGTERM: `/readyz` and new work stop, long-lived clients are told (WebSocket 1001, SSE a
/// final jittered `retry:` and the end of the stream, a waiting poll answered at once), and the
/// process exits within `shutdown_grace` once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_every_client_and_exits_within_shutdown_grace() {
    let backend = FeedBackend::start().await;
    let mut gw = Gateway::start(&feed_route(&backend)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/feed"))
        .await
        .unwrap();
    let mut sse = SseReader::open(gw.addr, "/feed", &[]).await;
    let first = sse.next_event().await;
    assert!(first.retry.is_some());
    let addr = gw.addr;
    let poll = tokio::spawn(async move {
        let asked = Instant::now();
        let r = http_get(addr, "/feed?transport=poll&cursor=0", &[]).await;
        (r.status, asked.elapsed())
    });
    gw.wait_metric(
        r#"switchyard_client_connections_open{route="feed",transport="long_poll"}"#,
        1.0,
    )
    .await;
    let term = Instant::now();
    gw.signal("TERM");

    let code = loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(code, 1001, "going away");
    let mut retry = None;
    while let Some(e) = sse.next_event_or_end().await {
        retry = e.retry.or(retry);
    }
    let retry = retry.expect("a final retry: before the stream ends");
    assert!((1000..=3000).contains(&retry), "jittered retry {retry}");
    let (status, waited) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        waited < Duration::from_secs(5),
        "the poll was answered at once, not at poll_timeout"
    );

    let status = gw.wait_exit(Duration::from_secs(5)).await;
    let exited = term.elapsed();
    assert!(status.is_some(), "the process exited");
    eprintln!("SIGTERM with WS, SSE and poll clients: exited {exited:?} after the signal");
    // shutdown_grace is 1s in the test config; the clients left at once.
    assert!(
        exited < Duration::from_millis(1500),
        "exited {exited:?} after SIGTERM"
    );
}

/// `--probe` (the container health check) exits 0 on a 200 from the admin listener and
/// non-zero otherwise.
#[tokio::test]
async fn probe_checks_a_running_gateway() {
    let gw = Gateway::start("  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n")
        .await;
    let run = |target: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--probe", &target])
            .output()
            .unwrap()
    };
    assert!(run(format!("{}/healthz", gw.admin)).status.success());
    assert!(run(format!("{}/readyz", gw.admin)).status.success());
    let missing = run(format!("{}/nope", gw.admin));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    let dead = dead_port();
    assert!(!run(format!("{}/healthz", dead.addr)).status.success());
}

/// pingora's zero-downtime binary upgrade: a new process started with `--upgrade` takes the
/// listening sockets from the old one on SIGQUIT; a client hammering the gateway throughout
/// sees no refused or failed request, and the old process drains and exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_without_refusing_a_connection() {
    let mut old =
        Gateway::start("  - name: demo\n    path: /\n    backend: { builtin: demo }\n").await;
    let addr = old.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match tokio::time::timeout(DEADLINE, async {
                    let mut s = tokio::net::TcpStream::connect(addr).await?;
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .await?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).await?;
                    Ok::<_, std::io::Error>(out)
                })
                .await
                {
                    Ok(Ok(out)) if out.starts_with(b"HTTP/1.1 200") => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The new process listens on the upgrade socket; the old one hands over once it is there.
    let upgrade_sock = format!("/tmp/switchyard-{}.upgrade.sock", old.addr.port());
    let _ = std::fs::remove_file(&upgrade_sock);
    let log = std::fs::File::create(old.config_path.with_extension("new.log")).unwrap();
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("--config")
        .arg(&old.config_path)
        .arg("--upgrade")
        .stderr(log)
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + DEADLINE;
    while !std::path::Path::new(&upgrade_sock).exists() {
        assert!(
            std::time::Instant::now() < until,
            "the new process never listened on {upgrade_sock}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.signal("QUIT");
    let exited = old.wait_exit(Duration::from_secs(10)).await;
    assert!(
        exited.is_some(),
        "the old process drained and exited:\n{}",
        old.log()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = hammer.await.unwrap();
    let new_log = std::fs::read_to_string(old.config_path.with_extension("new.log")).unwrap();
    let _ = new.kill();
    let _ = new.wait();
    eprintln!(
        "binary upgrade: {ok} requests served during the handover, {} failed",
        failed.len()
    );
    assert!(ok > 20, "{ok} requests");
    assert!(
        failed.is_empty(),
        "failed during the upgrade: {failed:?}\nnew process log:\n{new_log}"
    );
}

/// A reload that changes a per-client route but not its feed carries the sessions over (polls
/// and POSTs go on over the same backend connection); a reload that removes the route closes
/// its sessions and their backend connections.
#[tokio::test]
async fn reloads_carry_sessions_over_and_removal_closes_them() {
    let backend = crate::common::chat::ChatBackend::start().await;
    let route = |ttl: &str| {
        format!(
            "  - name: chat\n    path: /chat\n    fanout: per_client\n    session_ttl: {ttl}\n    origins: [\"https://app.example\"]\n    backend: {{ websocket: \"{}\" }}\n    keepalive: {{ poll_timeout: 2s }}\n",
            backend.url("/chat")
        )
    };
    let clock = "  - name: clock\n    path: /clock\n    backend: { builtin: clock }\n";
    let gw = Gateway::start(&route("60s")).await;
    let mut c = crate::common::chat::Client::connect(gw.addr).await;
    let id = c.get("/chat?transport=poll", &[]).await.json()["session"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = format!("/chat?transport=poll&session={id}");
    assert_eq!(c.request("POST", &post, &[], "a").await.status, 204);
    let poll = |cursor: u64| format!("/chat?transport=poll&session={id}&cursor={cursor}");
    assert_eq!(c.get(&poll(0), &[]).await.json()["messages"][0], "1:1:a");

    gw.rewrite_routes(&format!("{}{clock}", route("30s")));
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 2.0).await;
    assert_eq!(
        c.request("POST", &post, &[], "b").await.status,
        204,
        "the session lives on"
    );
    assert_eq!(c.get(&poll(1), &[]).await.json()["messages"][0], "1:2:b");
    assert_eq!(backend.conns().len(), 1, "same backend connection");

    gw.rewrite_routes(clock);
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_generation", 3.0).await;
    let closed = backend.wait_ended(1).await;
    assert_eq!(closed.closed_with, Some(1001), "closed as going away");
}

/// During a drain the gateway is unready at once (pingora closes every listener, the admin one
/// with `/readyz` included, so probes fail) and takes no new connections; a client that does
/// not leave (a pass-through tunnel) holds the drain open at most `shutdown_grace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unready_at_once_and_shutdown_grace_bounds_the_drain() {
    let backend = WsBackend::start().await;
    let mut gw = Gateway::start(&format!(
        "  - name: tunnel\n    path: /tunnel\n    proxy: {{ upstreams: [\"{}\"] }}\n",
        backend.addr
    ))
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/tunnel"))
        .await
        .unwrap();
    ws.send(Message::text("hold")).await.unwrap();
    ws.next().await.unwrap().unwrap();
    assert_eq!(http_get(gw.admin, "/readyz", &[]).await.status, 200);
    let term = Instant::now();
    gw.signal("TERM");
    // Ready means answering 200 on /readyz; refused connections and 503 both mean not ready.
    let ready = |addr: std::net::SocketAddr| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--probe", &format!("{addr}/readyz")])
            .output()
            .unwrap()
            .status
            .success()
    };
    let until = Instant::now() + Duration::from_millis(800);
    let mut unready_after = None;
    while Instant::now() < until {
        if !ready(gw.admin) {
            unready_after = Some(term.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let unready_after = unready_after.expect("unready during the drain");
    // Each service closes its own listeners, on its own runtime: the main one follows the
    // admin one within moments, not at the same instant.
    let closing = Instant::now() + Duration::from_secs(1);
    while tokio::net::TcpStream::connect(gw.addr).await.is_ok() {
        assert!(
            Instant::now() < closing,
            "no new connections during the drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    let exited = term.elapsed();
    assert!(status.is_some());
    eprintln!(
        "SIGTERM with an open tunnel: unready after {unready_after:?}, exited after {exited:?}"
    );
    // shutdown_grace is 1s in the test config.
    assert!(
        exited >= Duration::from_millis(900) && exited < Duration::from_millis(2500),
        "the open tunnel held the drain for shutdown_grace: {exited:?}"
    );
}

/// `server.admin_auth`: probes stay open; everything else needs the token from an allowed
/// address; a publish to a route without its own token takes the admin token; a reload swaps
/// both the networks and the token at once; refusals are counted.
#[tokio::test]
async fn admin_auth_guards_the_admin_listener_and_a_reload_swaps_it() {
    use crate::common::sockjs::{request, request_from};
    let routes = "  - name: news\n    path: /news\n    backend: { publish: {} }\n";
    let gw = Gateway::start_with(
        routes,
        "  admin_auth:\n    token: \"s3cret-1\"\n    allow: [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
    )
    .await;
    let far: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let good = [("Authorization", "Bearer s3cret-1")];
    for path in ["/healthz", "/readyz"] {
        let r = request_from(Some(far), gw.admin, "GET", path, &[], b"").await;
        assert_eq!(r.status, 200, "{path} is open to probes from anywhere");
    }
    for path in ["/", "/status.json", "/metrics"] {
        let r = request(gw.admin, "GET", path, &[], b"").await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"switchyard admin\"")
        );
        let r = request(
            gw.admin,
            "GET",
            path,
            &[("Authorization", "Bearer s3cret-2")],
            b"",
        )
        .await;
        assert_eq!(r.status, 401, "{path} with the wrong token");
        let r = request(gw.admin, "GET", path, &good, b"").await;
        assert_eq!(r.status, 200, "{path} with the token");
        let r = request_from(Some(far), gw.admin, "GET", path, &good, b"").await;
        assert_eq!(r.status, 403, "{path} from outside `allow`, token or not");
    }
    let r = request(gw.admin, "POST", "/publish/news", &[], b"hi").await;
    assert_eq!(
        r.status, 401,
        "a route without a token of its own takes the admin token"
    );
    let r = request(gw.admin, "POST", "/publish/news", &good, b"hi").await;
    assert_eq!(r.status, 202, "{}", r.body_text());
    let m = request(gw.admin, "GET", "/metrics", &good, b"")
        .await
        .body_text();
    assert_eq!(
        metric(&m, "switchyard_admin_refusals_total{reason=\"token\"}"),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &m,
            "switchyard_publishes_total{outcome=\"unauthorized\",route=\"news\"}"
        ),
        Some(1.0),
        "a publish refusal is the publish's own"
    );
    assert_eq!(
        metric(&m, "switchyard_admin_refusals_total{reason=\"address\"}"),
        Some(3.0)
    );

    // The token rotates and 127.0.0.2 is let in, by a reload: no restart.
    let config = std::fs::read_to_string(&gw.config_path).unwrap();
    let rotated = config
        .replace("s3cret-1", "s3cret-2")
        .replace("\"127.0.0.1\"", "\"127.0.0.0/30\"");
    assert_ne!(rotated, config);
    gw.rewrite_config(&rotated);
    gw.signal("HUP");
    let until = Instant::now() + Duration::from_secs(10);
    while request(gw.admin, "GET", "/metrics", &good, b"")
        .await
        .status
        != 401
    {
        assert!(Instant::now() < until, "the reload swaps the token");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = [("Authorization", "Bearer s3cret-2")];
    let r = request_from(Some(far), gw.admin, "GET", "/status.json", &new, b"").await;
    assert_eq!(r.status, 200, "the new networks apply with the new token");
    let r = request_from(Some(far), gw.admin, "POST", "/publish/news", &new, b"hi").await;
    assert_eq!(r.status, 202);
}

/// An invalid `admin_auth` names its path and why; an empty one protects nothing and is refused.
#[test]
fn admin_auth_errors_name_the_key() {
    let check = |block: &str| {
        let yaml = format!(
            "server:\n  listen: [{{ addr: \"127.0.0.1:8080\" }}]\n  admin: \"127.0.0.1:9100\"\n{block}routes:\n  - name: c\n    path: /c\n    backend: {{ builtin: clock }}\n"
        );
        switchyard::config::load_str(&yaml, std::path::Path::new("."), "gateway.yaml")
            .unwrap_err()
            .to_string()
    };
    let e = check("  admin_auth: { allow: [\"10.0.0.1/8\"] }\n");
    assert!(
        e.contains("server.admin_auth.allow[0]") && e.contains("10.0.0.0/8"),
        "{e}"
    );
    let e = check("  admin_auth: {}\n");
    assert!(
        e.contains("server.admin_auth") && e.contains("protects nothing"),
        "{e}"
    );
    let e = check("  admin_auth: { token: \"${SWITCHYARD_TEST_UNSET_TOKEN}\" }\n");
    assert!(e.contains("server.admin_auth.token"), "{e}");
    let e = check("  admin_auth: { token: \"two words\" }\n");
    assert!(e.contains("visible ASCII"), "{e}");
}

/// The hostile pass's finding: the config path was read with no type or size check, so a
/// symlink to `/dev/zero` grew the process by ~500 MB/s and a FIFO blocked reloading for good.
/// Now each is refused at once with its reason (and counted), RSS stays put, the running
/// config keeps serving, and the next good config applies (so nothing was left hanging).
#[tokio::test]
async fn a_config_path_that_is_not_a_small_regular_file_is_refused_at_once() {
    let gw = Gateway::start(GONE).await;
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    let rss_before = gw.rss_kib();
    let status = || async {
        let j = http_get(gw.admin, "/status.json", &[]).await;
        serde_json::from_slice::<serde_json::Value>(&j.body).unwrap()
    };
    let refused = |n: f64| {
        let gw = &gw;
        async move {
            gw.wait_metric("switchyard_config_reloads_total{outcome=\"failure\"}", n)
                .await
        }
    };
    let path = gw.config_path.clone();
    let swap = |make: &dyn Fn(&std::path::Path)| {
        let _ = std::fs::remove_file(&path);
        make(&path);
    };
    let expect_error = |v: serde_json::Value, want: &str| {
        let text = v.to_string();
        assert!(text.contains(want), "the reload error names why: {text}");
    };

    swap(&|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
    gw.signal("HUP");
    refused(1.0).await;
    expect_error(status().await, "not a regular file");

    swap(&|p| {
        let made = std::process::Command::new("mkfifo")
            .arg(p)
            .status()
            .unwrap();
        assert!(made.success());
    });
    gw.signal("HUP");
    refused(2.0).await;
    expect_error(status().await, "not a regular file");

    swap(&|p| {
        let mut big = good.clone();
        big.push_str(&format!("# {}\n", "x".repeat(5 << 20)));
        std::fs::write(p, big).unwrap();
    });
    gw.signal("HUP");
    refused(3.0).await;
    expect_error(status().await, "more than the 4194304");

    let grew = gw.rss_kib().saturating_sub(rss_before);
    assert!(grew < 32 << 10, "RSS grew by {grew} KiB");
    let r = http_get(gw.addr, "/gone?transport=poll", &[]).await;
    assert_eq!(r.status, 200, "the running config keeps serving");
    swap(&|p| std::fs::write(p, good.replace("/gone", "/back")).unwrap());
    gw.signal("HUP");
    gw.wait_metric("switchyard_config_reloads_total{outcome=\"success\"}", 1.0)
        .await;
}
