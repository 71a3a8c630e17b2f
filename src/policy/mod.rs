//! Edge policy: what a request must satisfy before any transport or backend sees it. Checked
//! right after routing; a refusal is answered here and counted by reason.
//!
//! - [`origin`]: the route's `origins` allowlist (Cross-Site WebSocket Hijacking, RFC 6455
//!   section 10.2). Applied to bridged routes, where switchyard terminates the client.

pub mod origin;
