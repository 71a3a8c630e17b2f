//! The middle of a bridged route: a [`Bridge`] ties a route to its backend feed. A shared feed
//! is a [`hub::Hub`] that fans each backend message out to every client transport, keeps a
//! replay window for resume, and bounds what a slow client can hold.

pub mod hub;

pub use hub::{Hub, Message, Subscription};

use crate::config::{BackendSpec, BridgeRoute, Builtin, Route};
use crate::upstream::builtin;
use std::sync::Arc;

/// Where a bridged route's messages come from.
pub enum Feed {
    /// One backend stream shared by every client of the route.
    Shared(Arc<Hub>),
    /// Each client talks to its own echo.
    Echo,
    /// The built-in demo page: plain HTTP, no stream.
    DemoPage,
}

pub struct Bridge {
    pub route: Arc<Route>,
    pub spec: BridgeRoute,
    pub feed: Feed,
}

impl Bridge {
    pub fn new(route: Arc<Route>, spec: &BridgeRoute) -> Self {
        let feed = match spec.backend {
            BackendSpec::Builtin(Builtin::Clock) => {
                Feed::Shared(Arc::new(Hub::new(route.limits.send_queue, spec.replay)))
            }
            BackendSpec::Builtin(Builtin::Echo) => Feed::Echo,
            BackendSpec::Builtin(Builtin::DemoPage) => Feed::DemoPage,
        };
        Self {
            route,
            spec: spec.clone(),
            feed,
        }
    }

    pub fn hub(&self) -> Option<&Arc<Hub>> {
        match &self.feed {
            Feed::Shared(h) => Some(h),
            _ => None,
        }
    }

    /// Subscribes to the shared feed, starting its backend if it is not running.
    ///
    /// # Panics
    /// When the route has no shared feed; transports check [`Self::hub`] first.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let hub = self
            .hub()
            .expect("subscribe is only called on shared feeds");
        let sub = hub.subscribe(after);
        if let BackendSpec::Builtin(Builtin::Clock) = self.spec.backend {
            builtin::ensure_clock(hub);
        }
        sub
    }
}
