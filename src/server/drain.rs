//! The drain service: when pingora begins its shutdown, it raises the drain signal
//! ([`crate::drain`]) and ends the process as soon as the edge has no connection and the bridge
//! no session left, or when `shutdown_grace` runs out.

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
        while busy() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = busy();
        if left > 0 {
            log::warn!("shutdown_grace over with {left} client connection(s) or session(s) still open; exiting");
        } else {
            log::info!("drained; exiting");
        }
        std::process::exit(0);
    }
}
