//! Hot reload: on SIGHUP the config file is read and validated again. A valid config becomes
//! the next generation, swapped in whole (see [`GatewayState::rebuild`]): unchanged routes keep
//! their runtime and every open connection, changed routes serve new connections with the new
//! settings, removed routes are retired (their clients drain as on shutdown). An invalid config
//! is refused with every error logged, and the running generation keeps serving.
//!
//! The `server` section (listeners, TLS, threads) and `cluster` cannot change in a running
//! process: such changes are reported and wait for a restart or pingora's binary upgrade
//! (`--upgrade`). Two keys of `server` apply at once: `limits.memory`, and `access_log`, which
//! a reload may switch on or off or point elsewhere (a file that cannot be opened leaves the log
//! as it was, with an error logged).

use crate::config::{self, ServerConfig};
use crate::gateway::{GatewayState, Live};
use crate::metrics;
use crate::upstream::health;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<Live>,
    /// The server section the process started with.
    pub server: ServerConfig,
    /// The cluster section the process started with (it joins one cluster for its life).
    pub cluster: Option<config::ClusterConfig>,
}

impl Reloader {
    /// Reads, validates and applies the config file once. Returns whether it was applied.
    pub fn reload(&self, shutdown: &ShutdownWatch) -> bool {
        let path = self.path.display();
        let config = match config::load_file(&self.path) {
            Ok(c) => c,
            Err(errors) => {
                metrics::CONFIG_RELOADS
                    .with_label_values(&["failure"])
                    .inc();
                log::error!(
                    "reload of {path} refused; generation {} keeps serving:\n{errors}",
                    metrics::CONFIG_GENERATION.get()
                );
                return false;
            }
        };
        // The memory budget applies at once; the rest of `server` needs a restart.
        crate::memory::set_limit(config.server.memory);
        if let Err(e) = crate::access_log::configure(config.server.access_log.as_ref()) {
            log::error!("reload of {path}: the access log stays as it was: {e}");
        }
        let mut server = config.server.clone();
        server.memory = self.server.memory;
        server.access_log = self.server.access_log.clone();
        if server != self.server {
            log::warn!("reload of {path}: the `server` section changed; listeners, TLS, threads and timeouts there apply only after a restart or binary upgrade");
        }
        if config.cluster != self.cluster {
            log::warn!("reload of {path}: the `cluster` section changed; it applies only after a restart (this instance stays in the cluster it joined)");
        }
        let previous = self.live.load();
        let (state, changes) = GatewayState::rebuild(&config, Some(&previous));
        self.live.store(state);
        for set in changes
            .new_sets
            .iter()
            .filter(|s| s.spec.health_check.is_some())
        {
            tokio::spawn(health::run_set(set.clone(), shutdown.clone()));
        }
        let generation = metrics::CONFIG_GENERATION.get() + 1;
        metrics::CONFIG_GENERATION.set(generation);
        metrics::CONFIG_RELOADS
            .with_label_values(&["success"])
            .inc();
        log::info!(
            "reloaded {path}: generation {generation}; {} route(s) unchanged, changed: [{}], added: [{}], removed: [{}]",
            changes.kept,
            changes.changed.join(", "),
            changes.added.join(", "),
            changes.removed.join(", "),
        );
        true
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGHUP, hot reload is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.reload(&shutdown);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
