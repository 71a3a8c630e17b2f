//! The drain signal. pingora tells background services when the process is shutting down;
//! long-lived client connections do not hear that by themselves, so the server's drain service
//! (`server::drain`) raises this signal and every transport loop and session selects on it (WS
//! close 1001, SSE end with `retry:`, empty poll). It sits at the bottom of the module graph so
//! that any layer may listen; only the server raises it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;
use tokio::sync::watch;

static DRAIN: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);
/// The same as a flag, for loops that check it on every wake-up.
static BEGUN: AtomicBool = AtomicBool::new(false);

/// Starts the drain: every open client connection is asked to go.
pub fn begin() {
    BEGUN.store(true, Ordering::SeqCst);
    DRAIN.send_replace(true);
}

pub fn draining() -> bool {
    BEGUN.load(Ordering::SeqCst)
}

/// Resolves once the drain has begun.
pub async fn wait() {
    let mut rx = DRAIN.subscribe();
    let _ = rx.wait_for(|d| *d).await;
}
