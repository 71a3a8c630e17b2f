//! The drain coordinator. pingora tells background services when the process is shutting down;
//! long-lived client connections do not hear that by themselves, so this module turns it into a
//! signal every transport loop selects on (WS close 1001, SSE end with `retry:`, empty poll).

use std::sync::LazyLock;
use tokio::sync::watch;

static DRAIN: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);

/// Starts the drain: every open client connection is asked to go.
pub fn begin() {
    DRAIN.send_replace(true);
}

pub fn draining() -> bool {
    *DRAIN.borrow()
}

/// Resolves once the drain has begun.
pub async fn wait() {
    let mut rx = DRAIN.subscribe();
    let _ = rx.wait_for(|d| *d).await;
}

/// A pingora background service that starts the drain when pingora begins its shutdown.
pub struct DrainOnShutdown;

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for DrainOnShutdown {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        log::info!("shutdown requested: draining client connections");
        begin();
    }
}
