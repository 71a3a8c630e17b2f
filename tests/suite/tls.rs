//! TLS listeners: a certificate made by scripts/dev-cert.sh, real curl as the client, HTTP/1.1
//! and h2 (SSE works over both), and `X-Forwarded-Proto: https` on the proxied side.

use crate::common::*;
use std::process::Command;

/// Runs curl without blocking the test runtime (the backend lives on it).
async fn curl(args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new("curl")
        .args(args)
        .output()
        .await
        .expect("curl is installed (CI installs it)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test]
async fn tls_listener_serves_bridged_and_proxied_routes_over_h1_and_h2() {
    let certs = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-cert.sh");
    let made = Command::new("bash")
        .arg(script)
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let backend = HttpBackend::start("tls-backend").await;
    let tls_port = free_port();
    let extra = format!(
        "    - addr: \"127.0.0.1:{tls_port}\"\n      tls: {{ cert: {}, key: {} }}\n",
        certs.path().join("dev.crt").display(),
        certs.path().join("dev.key").display()
    );
    let routes = format!("  - name: clock\n    path: /clock\n    backend: {{ builtin: clock }}\n  - name: api\n    path: /api\n    proxy: {{ upstreams: [\"{}\"] }}\n", backend.addr);
    let gw = Gateway::start_full(&extra, &routes, "").await;
    assert!(wait_for_port(format!("127.0.0.1:{tls_port}").parse().unwrap(), DEADLINE).await);
    let base = format!("https://127.0.0.1:{tls_port}");
    let cacert = certs.path().join("dev.crt");
    let cacert = cacert.to_str().unwrap();

    // Long-poll over HTTP/1.1, certificate verified against the dev CA.
    let (code, body) = curl(&[
        "-s",
        "--http1.1",
        "--cacert",
        cacert,
        "--max-time",
        "10",
        &format!("{base}/clock?transport=poll"),
    ])
    .await;
    assert_eq!(code, 0, "{body}\n{}", gw.log());
    assert!(body.contains("\"cursor\""), "{body}");

    // SSE over h2: events arrive while the stream stays open (curl stops it at --max-time).
    let (code, body) = curl(&[
        "-sN",
        "--http2",
        "--cacert",
        cacert,
        "--max-time",
        "3",
        "-H",
        "Accept: text/event-stream",
        "-w",
        "\nproto=%{http_version}",
        &format!("{base}/clock"),
    ])
    .await;
    assert_eq!(
        code, 28,
        "curl ends on its own timeout, not on a closed stream: {body}"
    );
    assert!(
        body.contains("retry: ") && body.contains("data: 20") && body.ends_with("proto=2"),
        "{body}"
    );

    // The proxied request tells the backend the client came over TLS.
    let (code, body) = curl(&[
        "-s",
        "--cacert",
        cacert,
        "--max-time",
        "10",
        &format!("{base}/api/x"),
    ])
    .await;
    assert_eq!(code, 0);
    let j: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(j["x-forwarded-proto"], "https");
    assert_eq!(j["backend"], "tls-backend");
    drop(gw);
}
