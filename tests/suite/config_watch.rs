//! `server.watch_config`: the gateway reloads when its config file changes, through the same
//! path as SIGHUP. An edit in place and a Kubernetes ConfigMap update (the `..data` symlink
//! swapped to a new folder) each reload once; a rewrite with the same content and a symlink
//! swap to the same content reload nothing; an invalid edit is refused and counted, and the
//! running config keeps serving.

use crate::common::*;
use std::path::Path;
use std::time::Duration;

fn reloads(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!("switchyard_config_reloads_total{{outcome=\"{outcome}\"}}"),
    )
    .unwrap()
}

/// Waits for `outcome` to reach `n`, then a few watch periods more, and checks that each
/// outcome was counted exactly as expected: a change is one reload, not several.
async fn expect_reloads(gw: &Gateway, success: f64, failure: f64) {
    let outcome = if failure > 0.0 { "failure" } else { "success" };
    let n = if failure > 0.0 { failure } else { success };
    gw.wait_metric(
        &format!("switchyard_config_reloads_total{{outcome=\"{outcome}\"}}"),
        n,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = gw.metrics().await;
    assert_eq!(
        (reloads(&m, "success"), reloads(&m, "failure")),
        (success, failure),
        "{}",
        gw.log()
    );
}

fn proxy_route(name: &str, backend: &HttpBackend) -> String {
    format!(
        "  - name: {name}\n    path: /{name}\n    proxy: {{ upstreams: [\"{}\"] }}\n",
        backend.addr
    )
}

/// Makes `dir/..data` point at a new folder `dir/..NAME` holding `text` as `gateway.yaml`,
/// the way the kubelet updates a mounted ConfigMap (a new symlink renamed over the old one).
fn configmap_update(dir: &Path, name: &str, text: &str) {
    let folder = dir.join(format!("..{name}"));
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("gateway.yaml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{name}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_configmap_swaps_each_reload_once_and_an_invalid_edit_is_refused() {
    let backend = HttpBackend::start("watched").await;
    // `extra_listen` lands in `server:` after the listeners: the watch is a server key.
    let gw = Gateway::start_full("  watch_config: true\n", &proxy_route("a", &backend), "").await;
    assert_eq!(http_get(gw.addr, "/b", &[]).await.status, 404);
    let applied = std::fs::read_to_string(&gw.config_path).unwrap();

    // The same content written again is no change.
    std::fs::write(&gw.config_path, &applied).unwrap();
    expect_reloads(&gw, 0.0, 0.0).await;

    // An edit in place.
    let two = [proxy_route("a", &backend), proxy_route("b", &backend)].concat();
    gw.rewrite_routes(&two);
    expect_reloads(&gw, 1.0, 0.0).await;
    assert_eq!(http_get(gw.addr, "/b", &[]).await.status, 200);

    // An invalid edit: refused, counted, and the running config keeps serving.
    gw.rewrite_config("server: [not, a, mapping]\n");
    expect_reloads(&gw, 1.0, 1.0).await;
    assert_eq!(http_get(gw.addr, "/b", &[]).await.status, 200);
    assert!(gw.log().contains("reload of"), "{}", gw.log());

    // The file becomes a ConfigMap mount: gateway.yaml -> ..data/gateway.yaml, ..data -> a
    // folder. Its content (the two routes again) differs from the refused edit: one reload.
    let dir = gw.config_path.parent().unwrap().to_owned();
    let valid_two = format!("{}{two}\n", gw_head(&applied));
    configmap_update(&dir, "2026_12_02_a", &valid_two);
    let link = dir.join("gateway.yaml.tmp");
    std::os::unix::fs::symlink("..data/gateway.yaml", &link).unwrap();
    std::fs::rename(&link, &gw.config_path).unwrap();
    expect_reloads(&gw, 2.0, 1.0).await;
    assert_eq!(http_get(gw.addr, "/c", &[]).await.status, 404);

    // The kubelet swaps `..data` to a folder with a third route: one reload.
    let three = [two.clone(), proxy_route("c", &backend)].concat();
    configmap_update(
        &dir,
        "2026_12_02_b",
        &format!("{}{three}\n", gw_head(&applied)),
    );
    expect_reloads(&gw, 3.0, 1.0).await;
    assert_eq!(http_get(gw.addr, "/c", &[]).await.status, 200);
    assert_eq!(backend.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// The config text before its `routes:` list (what the fixture wrote first).
fn gw_head(applied: &str) -> &str {
    let at = applied.find("routes:\n").unwrap() + "routes:\n".len();
    &applied[..at]
}
