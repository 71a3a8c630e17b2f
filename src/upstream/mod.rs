//! The backend side. [`pool`] is the load-balanced upstream set of a pass-through route and
//! [`health`] its active checks. Bridged routes read a feed: [`feed`] runs the shared backend
//! connection (opened on demand, reconnected with backoff), speaking [`ws`] or [`sse`] to the
//! backend. `fanout: per_client` routes give each client its own connection ([`per_client`]),
//! and client messages to an `sse:` backend go out as POSTs ([`post`]); [`builtin`] holds the
//! demo backends that need nothing running.
//!
//! [`Connectors`] is how the bridge reaches all of this: the gateway hands it to every bridge
//! it builds ([`crate::bridge::Backends`]).

pub mod auth;
pub mod builtin;
pub mod clustered;
pub mod feed;
pub mod health;
pub mod http1;
pub mod per_client;
pub mod pool;
pub mod post;
pub mod sse;
pub mod tls;
pub mod tunnel;
pub mod ws;

use crate::bridge::session::{Outgoing, Session, UPLINK_QUEUE};
use crate::bridge::Elsewhere;
use crate::bridge::{Backends, Bridge, ClientInfo, Hub, OpenError, SessionSite, SessionTarget};
use crate::config::{BackendSpec, BridgeRoute, Builtin, Route};
use pingora::http::RequestHeader;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The backend connectors, as the bridge sees them.
pub struct Connectors;

#[async_trait::async_trait]
impl Backends for Connectors {
    fn shared_hub(&self, route: &Route, spec: &BridgeRoute) -> Hub {
        match (&spec.backend, crate::cluster::get()) {
            (BackendSpec::WebSocket(_) | BackendSpec::Sse(_) | BackendSpec::Published, Some(_)) => {
                clustered::hub(route, spec)
            }
            _ => Hub::new(route.limits.send_queue, spec.replay),
        }
    }

    fn authorizer(
        &self,
        route: &Route,
        spec: &BridgeRoute,
    ) -> Option<Arc<dyn crate::bridge::Authorize>> {
        let auth = spec.auth.as_ref()?;
        Some(Arc::new(auth::Authorizer::new(&route.name, auth)))
    }

    fn ensure_feed(&self, hub: &Arc<Hub>, route: &Arc<Route>, spec: &BridgeRoute) {
        match &spec.backend {
            BackendSpec::Builtin(Builtin::Clock) => builtin::ensure_clock(hub),
            BackendSpec::WebSocket(_) | BackendSpec::Sse(_) => match crate::cluster::get() {
                Some(cluster) if hub.is_clustered() => {
                    clustered::ensure_running(cluster, hub, route, spec)
                }
                _ => feed::ensure_running(hub, route, spec),
            },
            BackendSpec::Published => match crate::cluster::get() {
                // Nothing to connect: the stream brings the other instances' publishes.
                Some(cluster) if hub.is_clustered() => {
                    clustered::ensure_reader(cluster, hub, route, spec)
                }
                _ => {}
            },
            BackendSpec::Builtin(_) => {}
        }
    }

    async fn open_session(
        &self,
        site: &SessionSite,
        req: &RequestHeader,
        client: &ClientInfo,
        transport: &'static str,
        listed: bool,
        at: Option<&SessionTarget>,
    ) -> Result<Arc<Session>, OpenError> {
        per_client::open(site, req, client, transport, listed, at).await
    }

    async fn remote_session(
        &self,
        bridge: &Bridge,
        id: &str,
    ) -> Elsewhere<Box<dyn crate::bridge::session::Remote>> {
        match (bridge.sessions(), crate::cluster::get()) {
            (Some(_), Some(cluster)) => cluster.remote_session(&bridge.route.name, id).await,
            _ => Elsewhere::Nowhere,
        }
    }

    fn sockjs_cluster(&self) -> Option<Arc<dyn crate::bridge::held::SessionCluster>> {
        let cluster = crate::cluster::get()?;
        Some(Arc::new(crate::cluster::held::HeldSide(cluster)))
    }

    fn engine_cluster(&self) -> Option<Arc<dyn crate::bridge::engineio::EngineCluster>> {
        let cluster = crate::cluster::get()?;
        Some(Arc::new(crate::cluster::engine::EngineSide(cluster)))
    }

    fn client_poster(
        &self,
        bridge: &Bridge,
        req: &RequestHeader,
        client: &ClientInfo,
    ) -> Option<mpsc::Sender<Outgoing>> {
        let feed = bridge.spec.remote()?;
        let (tx, rx) = mpsc::channel(UPLINK_QUEUE);
        let headers = per_client::forwarded_headers(&feed.forward_headers, req, client);
        per_client::spawn_poster(&bridge.route.name, feed, headers, rx).then_some(tx)
    }
}
