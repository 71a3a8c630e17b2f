//! The backend side. [`pool`] is the load-balanced upstream set of a pass-through route and
//! [`health`] its active checks. Bridged routes read a feed: [`feed`] runs the shared backend
//! connection (opened on demand, reconnected with backoff), speaking [`ws`] or [`sse`] to the
//! backend; [`builtin`] holds the demo backends that need nothing running.

pub mod builtin;
pub mod feed;
pub mod health;
pub mod pool;
pub mod sse;
pub mod ws;
