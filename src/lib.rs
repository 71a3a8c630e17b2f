//! switchyard: an edge gateway that terminates WebSocket, SSE and long-poll clients and bridges
//! them to plain WebSocket/SSE backends, or proxies HTTP and WebSocket straight through.
//!
//! The request pipeline, one module each:
//! `server` (listeners) -> `router` -> `policy` -> `transport` (client side) -> `bridge` ->
//! `upstream` (backend side); `proxy` is the pingora hook that ties them together.
#![forbid(unsafe_code)]

pub mod config;
pub mod router;
