//! The backend side. [`pool`] is the load-balanced upstream set of a pass-through route and
//! [`health`] its active checks; [`builtin`] holds the demo backends that need nothing running.

pub mod builtin;
pub mod health;
pub mod pool;
