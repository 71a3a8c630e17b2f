//! switchyard: an edge gateway that terminates WebSocket, SSE and long-poll clients and bridges
//! them to plain WebSocket/SSE backends, or proxies HTTP and WebSocket straight through.
//!
//! The modules form a DAG, bottom up (a module imports only those above it in this list):
//!
//! ```text
//! 0  config, metrics, drain, memory,  typed config; metric names; the drain signal; the
//!    wire, access_log                 process-wide buffer budget; pure framing; the access log
//! 1  router, policy                   route lookup; origin, CORS, hygiene, limits, refusals as data
//! 2  bridge                           hub, replay ring, consumers, sessions; backends injected
//! 2b cluster                          Redis Streams: feed leases, the stream appender and reader
//! 3  upstream                         backend connectors, pools, health (implements bridge::Backends)
//! 4  transport                        ws, sse, long-poll endpoints over a Downstream
//! 5  edge                             accept, head deadline, lean HTTP/1 connection, replay to pingora
//! 6  gateway                          state, admission (one admit()), pingora hooks; implements edge::LeanStreams
//! 7  server                           the pingora Server: listeners, admin, drain service, reload
//! ```
//!
//! A connection flows edge -> admission -> transport -> bridge <- upstream; `docs/ARCHITECTURE.md`
//! follows one from accept to close.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod drain;
pub mod edge;
pub mod gateway;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod router;
pub mod server;
pub mod transport;
pub mod upstream;
pub mod wire;
