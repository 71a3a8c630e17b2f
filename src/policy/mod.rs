//! Edge policy: what a request must satisfy before any transport or backend sees it. Each check
//! is a pure decision; a refusal is a [`reject::Reject`] (plain data), which the gateway's
//! admission collects and whoever owns the socket renders.
//!
//! - [`origin`]: the route's `origins` allowlist (Cross-Site WebSocket Hijacking, RFC 6455
//!   section 10.2): every request of a bridged route, and WebSocket upgrades of pass-through
//!   ones.
//! - [`cors`]: preflights answered at the edge and CORS headers for allowed origins.
//! - [`hygiene`]: request smuggling shapes, h2c upgrades, oversized heads.
//! - [`limits`]: clients per route and per address.
//! - [`reject`]: refusals as data, counted and logged once per route and reason.
//! - [`admin`]: who may use the admin listener (`server.admin_auth`).

pub mod admin;
pub mod cors;
pub mod hygiene;
pub mod limits;
pub mod origin;
pub mod reject;
