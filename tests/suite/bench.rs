//! The load generator checks itself: `switchyard-bench serve` feeds a real gateway, and
//! `fanout` (SSE, WebSocket and long-poll) and `echo` report verified figures (every subscriber connected, nothing missing,
//! nothing twice, every echo right) as JSON; `soak` verifies its clients against the backend's
//! log through a two-instance cluster, and reports a logged message its clients stepped over.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
}

/// Runs `switchyard-bench ARGS --json` off the async runtime and returns its JSON result.
async fn run(args: Vec<String>) -> serde_json::Value {
    let out =
        tokio::task::spawn_blocking(move || bench().args(&args).arg("--json").output().unwrap())
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    let mut result: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {text}"));
    // What the tool said about any failure, for the assertion messages.
    result["stderr"] = String::from_utf8_lossy(&out.stderr).into_owned().into();
    result
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `switchyard-bench serve` on `port` at `rate` messages a second, logging what it writes to
/// `seq_log` when given.
fn serve_backend(port: u16, rate: u32, seq_log: Option<&std::path::Path>) -> Killed {
    let mut cmd = bench();
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--rate", &rate.to_string()]);
    if let Some(log) = seq_log {
        cmd.arg("--seq-log").arg(log);
    }
    Killed(cmd.stderr(Stdio::null()).spawn().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_verifies_fanout_and_echo_through_the_gateway() {
    let port = free_port();
    let _backend = serve_backend(port, 50, None);
    assert!(
        wait_for_port(format!("127.0.0.1:{port}").parse().unwrap(), DEADLINE).await,
        "the bench backend listens"
    );
    let gw = Gateway::start(&format!(
        "  - name: feed\n    path: /feed\n    backend: {{ websocket: \"ws://127.0.0.1:{port}/feed\" }}\n  - name: tunnel\n    path: /echo\n    proxy: {{ upstreams: [\"127.0.0.1:{port}\"] }}\n"
    ))
    .await;
    // Echo first, through a pass-through tunnel: every handshake, send and read must succeed.
    let url = format!("ws://{}/echo", gw.addr);
    let r = run(args(&[
        "echo",
        "--url",
        &url,
        "--clients",
        "5",
        "--seconds",
        "1",
    ]))
    .await;
    assert_eq!(r["wrong_or_failed"].as_u64(), Some(0), "{r}");
    assert!(r["round_trips_per_s"].as_f64().unwrap() > 100.0, "{r}");
    for transport in ["sse", "ws", "poll"] {
        let scheme = if transport == "ws" { "ws" } else { "http" };
        let url = format!("{scheme}://{}/feed", gw.addr);
        let r = run(args(&[
            "fanout",
            "--url",
            &url,
            "--transport",
            transport,
            "--clients",
            "20",
            "--seconds",
            "2",
            "--rate",
            "50",
        ]))
        .await;
        assert_eq!(r["connected"], 20, "{transport}: {r}");
        assert_eq!(r["failed"], 0, "{transport}: {r}");
        assert_eq!(r["lost"], 0, "{transport}: {r}");
        assert_eq!(r["gaps"], 0, "{transport}: {r}");
        assert_eq!(r["duplicates"], 0, "{transport}: {r}");
        let ratio = r["delivered_ratio"].as_f64().unwrap();
        assert!(ratio > 0.9 && ratio < 1.1, "{transport}: {r}");
        assert!(r["p99_ms"].as_f64().unwrap() > 0.0);
        if transport == "poll" {
            // At 50 msg/s each poll finds one or a few messages: between 1 and 50 polls a
            // second per client, and every one counted.
            let polls = r["polls_per_s"].as_f64().unwrap();
            assert!((20.0..=20.0 * 55.0).contains(&polls), "{r}");
        }
    }
}

/// The soak's clients and their verifier, in small: two clustered instances, SSE, WebSocket,
/// long-poll, SockJS and tunnel clients with churn, checked against the backend's log. With
/// `fake_loss`, the backend is restarted half-way and a seq it never sent is added to its log
/// in between: every SSE and long-poll chain then steps over a logged message, and the verdict
/// must say so (the verifier can fail).
async fn soak_run(fake_loss: bool) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sent.log");
    let port = free_port();
    let serve = |log: &std::path::Path| serve_backend(port, 20, Some(log));
    let mut backend = serve(&log);
    let at: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_for_port(at, DEADLINE).await,
        "the bench backend listens"
    );
    let redis = crate::common::cluster::Redis::start().await;
    let routes = format!(
        "  - name: feed\n    path: /feed\n    origins: [\"*\"]\n    clients: [sse, websocket, long_poll, sockjs]\n    backend: {{ websocket: \"ws://{at}/feed\", reconnect: {{ initial: 50ms, max: 200ms }} }}\n    replay: 1000\n\
         \x20 - name: session\n    path: /session\n    fanout: per_client\n    session_ttl: 5s\n    clients: [long_poll]\n    backend: {{ websocket: \"ws://{at}/session\", forward_headers: [] }}\n\
         \x20 - name: echo\n    path: /echo\n    proxy: {{ upstreams: [\"{at}\"] }}\n"
    );
    let gws = crate::common::cluster::cluster_of(&redis, &routes, "soak", 2).await;
    let gateways = format!("{},{}", gws[0].addr, gws[1].addr);
    let soak = {
        let log = log.to_str().unwrap().to_owned();
        tokio::spawn(run(args(&[
            "soak",
            "--gateways",
            &gateways,
            "--sse",
            "20",
            "--ws",
            "20",
            "--poll",
            "20",
            "--sockjs",
            "10",
            "--tunnels",
            "10",
            "--sessions-per-sec",
            "5",
            "--seconds",
            "8",
            "--min-life",
            "1",
            "--max-life",
            "3",
            "--seq-log",
            &log,
        ])))
    };
    if fake_loss {
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(backend);
        let text = std::fs::read_to_string(&log).unwrap();
        let last: u64 = text
            .lines()
            .last()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        // Well inside the restart's step: the new backend's seqs start from the clock, 10,000
        // a second past the old ones.
        writeln!(f, "{} {now}", last + 1000).unwrap();
        backend = serve(&log);
    }
    let result = soak.await.unwrap();
    drop(backend);
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_clients_verify_every_transport_against_the_backends_log() {
    let r = soak_run(false).await;
    assert_eq!(r["unexplained"], 0, "{r:#}");
    for t in ["sse", "websocket", "long_poll", "sockjs"] {
        let t = &r["transports"][t];
        assert!(t["messages"].as_u64().unwrap() > 50, "{r:#}");
        assert!(
            t["left"].as_u64().unwrap() > 0,
            "clients came and went: {r:#}"
        );
    }
    assert!(r["tunnels"]["round_trips"].as_u64().unwrap() > 0, "{r:#}");
    assert_eq!(r["tunnels"]["wrong_answers"], 0, "{r:#}");
    assert!(r["sessions"]["opened"].as_u64().unwrap() > 10, "{r:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soak_verifier_reports_a_logged_message_a_chain_stepped_over() {
    let r = soak_run(true).await;
    let lost = r["transports"]["sse"]["lost"].as_u64().unwrap()
        + r["transports"]["long_poll"]["lost"].as_u64().unwrap();
    assert!(lost > 0, "{r:#}");
    assert!(r["unexplained"].as_u64().unwrap() >= lost, "{r:#}");
    assert!(
        !r["unexplained_examples"].as_array().unwrap().is_empty(),
        "{r:#}"
    );
}
