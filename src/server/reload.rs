//! Hot reload: on SIGHUP the config file is read and validated again. A valid config becomes
//! the next generation, swapped in whole (see [`GatewayState::rebuild`]): unchanged routes keep
//! their runtime and every open connection, changed routes serve new connections with the new
//! settings, removed routes are retired (their clients drain as on shutdown). An invalid config
//! is refused with every error logged, and the running generation keeps serving.
//!
//! With `server.watch_config: true` the same reload runs when the file's content changes: the
//! file is read every [`WATCH_EVERY`] through its path, so an edit in place, a new file moved
//! over it and a Kubernetes ConfigMap update (a symlink swapped to a new folder) all count. A
//! change is applied once it has held still for [`SETTLE`] (an editor writing in pieces, or a
//! swap of several files, is one reload), and a content equal to what was last read is no
//! change at all (a `touch` reloads nothing).
//!
//! The `server` section (listeners, TLS, threads) and `cluster` cannot change in a running
//! process: such changes are reported and wait for a restart or pingora's binary upgrade
//! (`--upgrade`). Three keys of `server` apply at once: `limits.memory`, `admin_auth` (a token
//! rotates without a restart), and `access_log`, which a reload may switch on or off or point
//! elsewhere (a file that cannot be opened leaves the log as it was, with an error logged).

use crate::config::{self, ServerConfig};
use crate::gateway::{GatewayState, Live};
use crate::metrics;
use crate::upstream::health;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How the last reload ended, for the status page.
#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    /// The generation in force after it (unchanged when the reload was refused).
    pub generation: i64,
    /// Why the config was refused; None when it was applied.
    pub error: Option<String>,
}

/// The status page shows at most this much of a refused config's errors (the log has them all).
const MAX_ERROR_TEXT: usize = 8 << 10;

static LAST: Mutex<Option<ReloadOutcome>> = Mutex::new(None);

/// The last reload's outcome since the process started; None before the first SIGHUP.
pub fn last_outcome() -> Option<ReloadOutcome> {
    LAST.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn record(generation: i64, error: Option<String>) {
    let error = error.map(|mut text| {
        if text.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str("\n... (the rest is in the log)");
        }
        text
    });
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some(ReloadOutcome {
        at: SystemTime::now(),
        generation,
        error,
    });
}

/// How often a watched config file is read.
pub const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a changed file must stay the same before it is applied.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

pub struct Reloader {
    pub path: PathBuf,
    pub live: Arc<Live>,
    /// The server section the process started with.
    pub server: ServerConfig,
    /// The cluster section the process started with (it joins one cluster for its life).
    pub cluster: Option<config::ClusterConfig>,
    /// The admin listener's `server.admin_auth`, which a reload replaces at once.
    pub admin_auth: Arc<arc_swap::ArcSwap<config::AdminAuth>>,
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
                let generation = self.live.load().generation;
                log::error!(
                    "reload of {path} refused; generation {generation} keeps serving:\n{errors}"
                );
                record(generation, Some(errors.to_string()));
                return false;
            }
        };
        // The memory budget, the access log and admin_auth apply at once; the rest of `server`
        // needs a restart.
        crate::memory::set_limit(config.server.memory);
        if let Err(e) = crate::access_log::configure(config.server.access_log.as_ref()) {
            log::error!("reload of {path}: the access log stays as it was: {e}");
        }
        self.admin_auth
            .store(Arc::new(config.server.admin_auth.clone()));
        let mut server = config.server.clone();
        server.memory = self.server.memory;
        server.access_log = self.server.access_log.clone();
        server.admin_auth = self.server.admin_auth.clone();
        if server != self.server {
            log::warn!("reload of {path}: the `server` section changed; listeners, TLS, threads and timeouts there apply only after a restart or binary upgrade");
        }
        if config.cluster != self.cluster {
            log::warn!("reload of {path}: the `cluster` section changed; it applies only after a restart (this instance stays in the cluster it joined)");
        }
        let previous = self.live.load();
        let (state, mut changes) = GatewayState::rebuild(&config, Some(&previous));
        let generation = state.generation;
        self.live.store(state);
        // Only now: a client told to go reconnects to the generation in force.
        changes.retire_replaced();
        for set in changes
            .new_sets
            .iter()
            .filter(|s| s.spec.health_check.is_some())
        {
            tokio::spawn(health::run_set(set.clone(), shutdown.clone()));
        }
        metrics::CONFIG_GENERATION.set(generation);
        metrics::CONFIG_RELOADS
            .with_label_values(&["success"])
            .inc();
        record(generation, None);
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
        let mut watch = self
            .server
            .watch_config
            .then(|| Watch::new(self.path.clone()));
        if watch.is_some() {
            log::info!(
                "watching {} for changes (server.watch_config)",
                self.path.display()
            );
        }
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.reload(&shutdown);
                    // What SIGHUP applied is not a change for the watch.
                    if let Some(w) = watch.as_mut() {
                        w.seen = w.read().await;
                    }
                }
                _ = tick.tick(), if watch.is_some() => {
                    let w = watch.as_mut().expect("ticks only while watching");
                    if w.changed().await {
                        log::info!("{} changed: reloading", self.path.display());
                        self.reload(&shutdown);
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The watched file's last content read through its path (None while it cannot be read).
struct Watch {
    path: PathBuf,
    seen: Option<Vec<u8>>,
}

impl Watch {
    fn new(path: PathBuf) -> Self {
        // Read synchronously once: what the process started with is the baseline.
        let seen = config::read_file(&path).ok().map(String::into_bytes);
        Self { path, seen }
    }

    /// The file's content, read through the path (following symlinks as they are now), or
    /// None while it is missing, unreadable (mid-swap), or not a config-sized regular file
    /// (a reload then says why).
    async fn read(&self) -> Option<Vec<u8>> {
        let path = self.path.clone();
        // The same bounded, time-boxed read as a reload's: a watched path that becomes
        // `/dev/zero` or a FIFO is not read without end.
        let read = tokio::task::spawn_blocking(move || config::read_unboxed(&path));
        tokio::time::timeout(config::READ_TIME_BOX, read)
            .await
            .ok()?
            .ok()?
            .ok()
            .map(String::into_bytes)
    }

    /// Whether the content differs from the last one applied, once it has settled: it must
    /// read the same twice [`SETTLE`] apart. A file that cannot be read is no change (the
    /// next tick looks again); the running config keeps serving.
    async fn changed(&mut self) -> bool {
        let Some(now) = self.read().await else {
            return false;
        };
        if self.seen.as_ref() == Some(&now) {
            return false;
        }
        let mut last = now;
        loop {
            tokio::time::sleep(SETTLE).await;
            let Some(again) = self.read().await else {
                return false;
            };
            if again == last {
                break;
            }
            last = again;
        }
        if self.seen.as_ref() == Some(&last) {
            return false;
        }
        self.seen = Some(last);
        true
    }
}
