//! The Autobahn WebSocket testsuite (fuzzingclient) against the two kinds of WebSocket the
//! gateway terminates: the builtin echo (terminated) and a per-client route bridged to a
//! tokio-tungstenite echo backend. Every case must end OK, NON-STRICT or INFORMATIONAL, its close
//! too; UNIMPLEMENTED fails.
//!
//! The 216 permessage-deflate cases (12.*, 13.*) cost the suite's Python client about 6 minutes
//! of CPU per path on a 2-core machine; the other 301 take seconds. So `cargo test` (and CI) runs
//! sections 1-10 on both paths and the first case of each compression group (12.1.1-12.5.1,
//! 13.1.1-13.7.1: every payload shape and every negotiation variant once) on both paths.
//! `SWITCHYARD_AUTOBAHN=full` runs all 517 cases on both paths (9 minutes here, the two paths
//! side by side): `scripts/conformance.sh` does, before a release and for every change to
//! framing.
//!
//! `wstest` comes from `scripts/install-autobahn.sh` (run by `scripts/install-deps.sh --test`).

use crate::common::{Gateway, WsBackend};
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

/// Runs the fuzzingclient against `url` as `agent`, on the cases (or case patterns) in `cases`;
/// returns its verdicts by case id.
async fn fuzz(agent: &str, url: &str, cases: &[String]) -> BTreeMap<String, (String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("reports");
    let spec = serde_json::json!({
        "outdir": out,
        "servers": [{ "agent": agent, "url": url }],
        "cases": cases,
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
    let output = tokio::time::timeout(Duration::from_secs(1800), run)
        .await
        .expect("wstest finishes within 30 minutes")
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
    let full = std::env::var("SWITCHYARD_AUTOBAHN").is_ok_and(|v| v == "full");
    let cases: Vec<String> = if full {
        vec!["*".into()]
    } else {
        (1..=10)
            .map(|section| format!("{section}.*"))
            .chain((1..=5).map(|group| format!("12.{group}.1")))
            .chain((1..=7).map(|group| format!("13.{group}.1")))
            .collect()
    };
    let (terminated, bridged) = tokio::join!(
        fuzz("terminated", &echo_url, &cases),
        fuzz("bridged", &bridged_url, &cases),
    );
    let group = |v: &BTreeMap<String, (String, String)>, g: &str| {
        v.keys().filter(|c| c.starts_with(g)).count()
    };
    // The permessage-deflate cases ran on both paths: all 90 of 12.* and 126 of 13.* when
    // full, else the first case of each of their 5 and 7 groups.
    let (in_12, in_13) = if full { (90, 126) } else { (5, 7) };
    for (agent, verdicts) in [("terminated", &terminated), ("bridged", &bridged)] {
        assert_eq!(
            (group(verdicts, "12."), group(verdicts, "13.")),
            (in_12, in_13),
            "{agent}: the compression cases ran"
        );
        // The 301 cases of sections 1 to 10 run on both paths.
        let rest = verdicts.len() - group(verdicts, "12.") - group(verdicts, "13.");
        assert_eq!(rest, 301, "{agent}: every case of sections 1-10 ran");
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
            >= 301
    );
    for agent in ["echo", "bridged"] {
        assert!(
            gw.metrics().await.contains(&format!(
                "switchyard_ws_compression_bytes_total{{direction=\"in\",route=\"{agent}\",stage=\"plain\",transport=\"websocket\"}}"
            )),
            "{agent}: compressed traffic is counted"
        );
    }
}
