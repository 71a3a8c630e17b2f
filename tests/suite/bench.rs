//! The load generator checks itself: `switchyard-bench serve` feeds a real gateway, and
//! `fanout` (SSE, WebSocket and long-poll) and `echo` report verified figures (every subscriber connected, nothing missing,
//! nothing twice, every echo right) as JSON.

use crate::common::*;
use std::process::{Command, Stdio};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_verifies_fanout_and_echo_through_the_gateway() {
    let port = free_port();
    let _backend = Killed(
        bench()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--rate",
                "50",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
