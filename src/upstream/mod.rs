//! The backend side. [`pool`] is the load-balanced upstream set of a pass-through route and
//! [`health`] its active checks. Bridged routes read a feed: [`feed`] runs the shared backend
//! connection (opened on demand, reconnected with backoff), speaking [`ws`] or [`sse`] to the
//! backend. `fanout: per_client` routes give each client its own connection ([`private`]), and
//! client messages to an `sse:` backend go out as POSTs ([`post`]); [`builtin`] holds the demo backends that need nothing running.

pub mod builtin;
pub mod feed;
pub mod health;
pub mod pool;
pub mod post;
pub mod private;
pub mod sse;
pub mod ws;
