//! The over-the-wire test suite, one binary: the real `switchyard` binary (and its bench
//! client) started per test on ephemeral loopback ports, real backends, real third-party
//! clients. One module per area; `common` holds the harness.
//!
//! One binary rather than one per file: it links once, and the tests of every area share the
//! test threads, so a test that waits (a 70 s quiet connection, a drain) overlaps the others
//! instead of holding up the run. `cargo test --test suite edge::` runs one area.

mod common;

mod access_log;
mod admission;
mod autobahn;
mod backend_tls;
mod bench;
mod bridge;
mod channels;

mod browser;
mod cli;
mod cluster;
mod compression;
mod config_watch;
mod dashboard;
mod differential;
mod edge;
mod engineio;
mod fanout;
mod fuzz_corpus;
mod ops;
mod passthrough;
mod proxy;
mod sessions;
mod socketio;
mod sockjs;
mod status;
mod tls;
mod tunnel;
