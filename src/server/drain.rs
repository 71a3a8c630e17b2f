//! The drain service: when pingora begins its shutdown, it raises the drain signal
//! ([`crate::drain`]) and ends the process as soon as the edge has no connection and the bridge
//! no session left, or when `shutdown_grace` runs out.

/// How long nothing may be open before the process exits (see [`DrainOnShutdown`]).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// A pingora background service that starts the drain when pingora begins its shutdown, then
/// ends the process as soon as no client connection or session is left (or `grace` has
/// passed). pingora on
/// its own would always sleep its whole grace period, however quickly clients left.
pub struct DrainOnShutdown {
    pub grace: std::time::Duration,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainOnShutdown {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        let open = crate::edge::open_connections();
        log::info!(
            "shutdown requested: draining {open} client connection(s) for up to {:?}",
            self.grace
        );
        crate::drain::begin();
        let until = tokio::time::Instant::now() + self.grace;
        // Connections, not requests: one accepted just before the listeners closed may not
        // have a request yet, and exiting under it would reset it.
        let busy = || crate::edge::open_connections() + crate::bridge::session::live();
        // A connection accepted just before the listeners closed is counted once its task
        // first runs: exit only after nothing was open for SETTLE, so such a connection is
        // served rather than reset by the exit (seen under load as a reset during a binary
        // upgrade).
        let mut quiet_since: Option<tokio::time::Instant> = None;
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                break;
            }
            if busy() > 0 {
                quiet_since = None;
            } else if quiet_since.is_some_and(|t| now - t >= SETTLE) {
                break;
            } else if quiet_since.is_none() {
                quiet_since = Some(now);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = busy();
        if left > 0 {
            log::warn!("shutdown_grace over with {left} client connection(s) or session(s) still open; exiting");
        } else {
            log::info!("drained; exiting");
        }
        // Access log lines still queued (a slow disk or pipe) get what is left of the grace,
        // and at least a moment.
        let rest = until.saturating_duration_since(tokio::time::Instant::now());
        let within = rest.max(std::time::Duration::from_millis(200));
        // Blocking this thread is fine: the process ends right after.
        if !crate::access_log::flush(within) {
            log::warn!("exiting with access log lines not yet written");
        }
        std::process::exit(0);
    }
}
