//! switchyard: an edge gateway that terminates WebSocket, SSE and long-poll clients and bridges
//! them to plain WebSocket/SSE backends, or proxies HTTP and WebSocket straight through.
//!
//! ```text
//! server (listeners, TLS, admin) -> listener (request-head deadline)
//!   -> proxy (pingora hook) -> router -> policy
//!        -> bridged route:  transport (ws | sse | longpoll) <-> bridge (hub, replay) <-> upstream (builtin, ...)
//!        -> proxy route:    upstream::pool (balance, health) -> pingora proxy path
//! ```
#![forbid(unsafe_code)]

pub mod bridge;
pub mod config;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod shutdown;
pub mod transport;
pub mod upstream;
