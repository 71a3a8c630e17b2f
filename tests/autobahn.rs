//! The Autobahn WebSocket testsuite (fuzzingclient, all 517 cases, permessage-deflate's 12.*
//! and 13.* included) against the two kinds of WebSocket the gateway terminates: the builtin
//! echo (terminated) and a per-client route bridged to a tokio-tungstenite echo backend. Every
//! case must end OK, NON-STRICT or INFORMATIONAL, its close too; UNIMPLEMENTED fails.
//!
//! `wstest` comes from `scripts/install-autobahn.sh` (run by `scripts/install-deps.sh --test`).

mod common;

use common::{Gateway, WsBackend};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn wstest() -> PathBuf {
    let tools = std::env::var("SWITCHYARD_TOOLS")
        .unwrap_or_else(|_| format!("{}/.cache/switchyard-tools", std::env::var("HOME").unwrap()));
    let bin = PathBuf::from(format!("{tools}/autobahn/wstest"));
    assert!(
        bin.exists(),
        "the Autobahn testsuite is not in {tools}/autobahn: run scripts/install-deps.sh --test"
    );
    bin
}

/// Runs the fuzzingclient against `url` as `agent`; returns its verdicts by case id.
async fn fuzz(agent: &str, url: &str) -> BTreeMap<String, (String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    let spec = serde_json::json!({
        "outdir": out,
        "servers": [{ "agent": agent, "url": url }],
        "cases": ["*"],
        "exclude-cases": [],
        "exclude-agent-cases": {},
    });
    let spec_path = dir.path().join("fuzzingclient.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let started = Instant::now();
    let run = tokio::process::Command::new(wstest())
        .args(["-m", "fuzzingclient", "-s"])
        .arg(&spec_path)
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("wstest finishes within 10 minutes")
        .expect("wstest runs");
    assert!(
        output.status.success(),
        "wstest failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{agent}: {:.1}s", started.elapsed().as_secs_f64());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    index[agent]
        .as_object()
        .expect("the agent's verdicts")
        .iter()
        .map(|(case, v)| {
            let s = |k: &str| v[k].as_str().unwrap_or("?").to_owned();
            (case.clone(), (s("behavior"), s("behaviorClose")))
        })
        .collect()
}

fn failures(verdicts: &BTreeMap<String, (String, String)>) -> Vec<String> {
    let good = |b: &str| matches!(b, "OK" | "NON-STRICT" | "INFORMATIONAL");
    verdicts
        .iter()
        .filter(|(_, (b, c))| !good(b) || !good(c))
        .map(|(case, (b, c))| format!("{case}: {b} / close {c}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autobahn_passes_on_terminated_and_bridged_websockets() {
    let backend = WsBackend::start().await;
    // Case 9.* sends messages of up to 16 MiB.
    let gw = Gateway::start(&format!(
        "  - name: echo\n    path: /echo\n    backend: {{ builtin: echo }}\n    limits: {{ max_message: 20MiB }}\n\
         \x20 - name: bridged\n    path: /bridged\n    fanout: per_client\n    backend: {{ websocket: \"ws://{}/echo\" }}\n    limits: {{ max_message: 20MiB }}\n",
        backend.addr
    ))
    .await;
    let (echo_url, bridged_url) = (gw.ws_url("/echo"), gw.ws_url("/bridged"));
    let (terminated, bridged) =
        tokio::join!(fuzz("terminated", &echo_url), fuzz("bridged", &bridged_url),);
    for (agent, verdicts) in [("terminated", &terminated), ("bridged", &bridged)] {
        assert_eq!(verdicts.len(), 517, "{agent}: every case ran");
        let compressed = verdicts
            .keys()
            .filter(|c| c.starts_with("12.") || c.starts_with("13."))
            .count();
        assert_eq!(compressed, 216, "{agent}: the permessage-deflate cases ran");
        let bad = failures(verdicts);
        assert!(
            bad.is_empty(),
            "{agent}: {} cases failed:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
    // The bridged cases went through the backend, one connection each.
    assert!(
        backend
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 517
    );
    assert!(
        gw.metrics().await.contains(
            "switchyard_ws_compression_bytes_total{direction=\"in\",route=\"bridged\",stage=\"plain\",transport=\"websocket\"}"
        ),
        "compressed traffic is counted"
    );
}
