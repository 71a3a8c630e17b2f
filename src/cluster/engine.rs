//! Engine.IO sessions on any instance. A session stays on the instance that opened it (its
//! heartbeat, its control packets, the one-poll rule and its binding are decided there); a
//! poll, a send or a probe that lands on another instance is relayed to it whole through
//! Redis and its answer relayed back, so no load balancer needs sticky sessions:
//!
//! ```text
//! {p}:eio:ROUTE:SID    the node that holds the session (renewed while it lives)
//! elsewhere  -> {k:er}  the request (method, path and query, the headers the protocol reads,
//!                       the client's address, the body); the owner serves it as its own
//!            <- {k:y}   its answer: status, headers, body
//! ```
//!
//! An upgrade WebSocket that lands elsewhere is refused (`400`): engine.io-client then stays on
//! polling, which every instance serves; relaying a WebSocket frame by frame would cost a
//! Redis round trip per message and hold the relaying instance for the connection's life.

use super::Cluster;
use crate::bridge::engineio::{EngineCluster, RelayAnswer, Relayed};
use crate::bridge::Elsewhere;
use async_trait::async_trait;
use base64::Engine as _;
use std::sync::Arc;
use std::time::Duration;

/// A session's record outlives its last renewal by this much (renewed every third of it).
const RECORD_TTL: Duration = Duration::from_secs(60);

/// The cluster as `bridge::engineio` sees it.
pub struct EngineSide(pub &'static Arc<Cluster>);

impl Cluster {
    fn engine_key(&self, route: &str, sid: &str) -> String {
        // Session ids are the gateway's own (URL-safe base64); route names are the config's.
        format!("{}:eio:{route}:{sid}", self.cfg.prefix)
    }

    /// A request relayed by another instance for a session held here: served as its own,
    /// answered with what it answered.
    pub(super) fn handle_engine(&'static self, e: &super::stream::Entry) {
        let (Some(rid), Some(from)) = (e.number("r"), e.field("f")) else {
            return;
        };
        let from = String::from_utf8_lossy(from).into_owned();
        let text = |name: &str| {
            e.field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let headers: Vec<(String, String)> = serde_json::from_str(&text("h")).unwrap_or_default();
        let req = Relayed {
            route: text("route"),
            method: text("m"),
            uri: text("u"),
            headers,
            client_ip: text("ip").parse().ok(),
            tls: text("t") == "1",
            body: bytes::Bytes::from(e.field("b").unwrap_or_default().to_vec()),
        };
        tokio::spawn(async move {
            let answer = crate::bridge::engineio::serve_relayed(req).await;
            let encoded = serde_json::json!({
                "s": answer.status,
                "h": answer.headers,
                "b": base64::engine::general_purpose::STANDARD.encode(&answer.body),
            });
            self.reply(&from, rid, &encoded.to_string());
        });
    }
}

#[async_trait]
impl EngineCluster for EngineSide {
    async fn opened(&self, route: &str, sid: &str, alive: Box<dyn Fn() -> bool + Send + Sync>) {
        let c = self.0;
        let key = c.engine_key(route, sid);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(c.node())
            .arg("PX")
            .arg(RECORD_TTL.as_millis() as u64);
        let _ = c.run::<()>("session_write", &set).await;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECORD_TTL / 3).await;
                if !alive() {
                    // Gone here: a relayed request now finds nothing (the owner would have
                    // answered it as unknown anyway).
                    c.queue(redis::Cmd::del(&key));
                    return;
                }
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(RECORD_TTL.as_millis() as u64);
                c.queue(expire);
            }
        });
    }

    async fn owner_of(&self, route: &str, sid: &str) -> Elsewhere<String> {
        let c = self.0;
        if !c.is_up() {
            return Elsewhere::Unknown;
        }
        match c
            .run::<Option<String>>(
                "session_lookup",
                redis::cmd("GET").arg(c.engine_key(route, sid)),
            )
            .await
        {
            Err(_) => Elsewhere::Unknown,
            Ok(Some(node)) if node != c.node() => Elsewhere::Found(node),
            Ok(_) => Elsewhere::Nowhere,
        }
    }

    async fn relay(&self, node: &str, req: Relayed, wait: Duration) -> Option<RelayAnswer> {
        let c = self.0;
        let mut cmd = c.to_node(node);
        cmd.arg("k")
            .arg("er")
            .arg("route")
            .arg(&req.route)
            .arg("m")
            .arg(&req.method)
            .arg("u")
            .arg(&req.uri)
            .arg("h")
            .arg(serde_json::to_string(&req.headers).unwrap_or_default())
            .arg("ip")
            .arg(req.client_ip.map(|ip| ip.to_string()).unwrap_or_default())
            .arg("t")
            .arg(if req.tls { "1" } else { "0" })
            .arg("b")
            .arg(&req.body[..]);
        let answer = c.ask_within(cmd, wait).await?;
        let v: serde_json::Value = serde_json::from_str(&answer).ok()?;
        let headers = serde_json::from_value(v["h"].clone()).unwrap_or_default();
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["b"].as_str().unwrap_or(""))
            .ok()?;
        Some(RelayAnswer {
            status: v["s"].as_u64()? as u16,
            headers,
            body: bytes::Bytes::from(body),
        })
    }
}
