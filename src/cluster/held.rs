//! SockJS sessions on any instance. A SockJS session stays on the instance that opened it (its
//! owner: the receiver hand-over, `2010`, `disconnect_delay` and the close frames are decided
//! there); a receiver or a send on another instance goes through Redis:
//!
//! ```text
//! {p}:sockjs:ROUTE:ID       hash: node, net, origin (the session's binding), inner (its own
//!                           backend or echo session, mirrored as in `sessions`; empty on a
//!                           shared feed, which every instance has)
//! receiver elsewhere  -> {k:sa}  attach: the owner holds the session for it, answers where its
//!                                messages resume  (`opened:SEQ`, `resumed:SEQ`, `busy`, `closed:CODE:REASON`)
//!                     -> {k:sd}  detach: delivered up to SEQ, interrupted or not, closed or not
//! send elsewhere      -> {k:ss}  the client's messages, answered as a relayed POST
//! ```
//!
//! A receiver's instance that dies while attached stops renewing its liveness key: the owner
//! notices within seconds and detaches it as interrupted (the session closes, `c[1002,...]`),
//! as it does for a receiver whose client went away.

use super::sessions::{remote_for, send_outcome};
use super::Cluster;
use crate::bridge::held::{
    Attach, HeldSession, Owner, RemoteAttach, RemoteHeld, RemoteHeldOps, SessionCluster,
};
use crate::bridge::session::EndReason;
use crate::bridge::session::{Session, UplinkError};
use crate::bridge::{Consumer, Elsewhere};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a receiver elsewhere may wait for the session's current receiver to leave (as
/// locally).
const HANDOVER: Duration = Duration::from_millis(100);

/// A session's record outlives the last renewal by at least this (renewed every third of it
/// while the session lives; a dead owner's records are known dead by its liveness key).
const RECORD_TTL: Duration = Duration::from_secs(600);

/// How often the owner checks that the instance of a remote receiver is alive (its liveness
/// key lives 3 s).
const WATCH_RECEIVER: Duration = Duration::from_secs(3);

/// This instance's SockJS sessions as the cluster sees them.
#[derive(Default)]
pub struct HeldRegistry {
    /// Sessions owned here, by route and id.
    owned: Mutex<HashMap<(String, String), Arc<HeldSession>>>,
    /// Sessions held for a receiver on another instance, by its request id.
    attached: Mutex<HashMap<u64, Attached>>,
    /// Detaches that arrived before their attach was done (a receiver dropped while its attach
    /// was in flight), by request id, with when they came: the attach, once done, is undone at
    /// once instead of holding the session busy. Bounded: old and surplus entries are dropped.
    early_detaches: Mutex<HashMap<u64, std::time::Instant>>,
}

/// At most this many early detaches are remembered, each for at most [`EARLY_DETACH_TTL`].
const EARLY_DETACHES: usize = 4096;
const EARLY_DETACH_TTL: Duration = Duration::from_secs(30);

struct Attached {
    session: Arc<HeldSession>,
    consumer: Consumer,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    fn sockjs_key(&self, route: &str, id: &str) -> String {
        // SockJS ids are chosen by clients: hex-encoded, so no byte of theirs shapes the key.
        let hex: String = id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}:sockjs:{route}:{hex}", self.cfg.prefix)
    }

    /// Commands from other instances about SockJS sessions owned here.
    pub(super) fn handle_held(&'static self, e: &super::stream::Entry) {
        let text = |name: &str| {
            e.field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let (route, id, from) = (text("route"), text("s"), text("f"));
        let Some(rid) = e.number("r") else { return };
        let session = lock(&self.held_sessions.owned)
            .get(&(route.clone(), id.clone()))
            .cloned();
        match e.field("k").unwrap_or_default() {
            b"sa" => {
                let Some(session) = session else {
                    self.reply(&from, rid, "closed:1002:Connection interrupted");
                    return;
                };
                tokio::spawn(async move {
                    let (answer, consumer) = match session.attach_within(HANDOVER).await {
                        Attach::Opened(c) => (format!("opened:{}", c.last_seq), Some(c)),
                        Attach::Resumed(c) => (format!("resumed:{}", c.last_seq), Some(c)),
                        Attach::Busy => ("busy".to_owned(), None),
                        Attach::Closed(code, reason) => (format!("closed:{code}:{reason}"), None),
                    };
                    if let Some(consumer) = consumer {
                        let early = lock(&self.held_sessions.early_detaches).remove(&rid);
                        if early.is_some() {
                            // Its receiver went while this attach waited: nobody will read.
                            session.detach(consumer, true);
                            return;
                        }
                        lock(&self.held_sessions.attached).insert(
                            rid,
                            Attached {
                                session: session.clone(),
                                consumer,
                            },
                        );
                        tokio::spawn(self.watch_receiver(rid, from.clone()));
                    }
                    self.reply(&from, rid, &answer);
                });
            }
            b"sd" => {
                let after = e.number("c").unwrap_or(0);
                let interrupted = e.field("i").is_some_and(|i| i == b"1");
                let close = e.number("x").map(|code| (code as u16, text("xr")));
                // `r` here names the attach this detach ends.
                self.detach_remote(rid, after, interrupted, close);
            }
            b"ss" => {
                let uplink = session
                    .filter(|s| s.closed().is_none())
                    .and_then(|s| s.link.uplink.clone());
                self.deliver_to(uplink, e);
            }
            _ => {}
        }
    }

    fn detach_remote(&self, rid: u64, after: u64, interrupted: bool, close: Option<(u16, String)>) {
        let Some(Attached {
            session,
            mut consumer,
        }) = lock(&self.held_sessions.attached).remove(&rid)
        else {
            // Not attached (yet): its attach may still be waiting for the session's current
            // receiver to leave. Remembered, so that attach is undone when it is done.
            let mut early = lock(&self.held_sessions.early_detaches);
            let now = std::time::Instant::now();
            early.retain(|_, at| now.duration_since(*at) < EARLY_DETACH_TTL);
            if early.len() < EARLY_DETACHES {
                early.insert(rid, now);
            }
            return;
        };
        consumer.delivered_up_to(after);
        if let Some((code, reason)) = close {
            let why = if code == 1001 {
                EndReason::Shutdown
            } else {
                EndReason::Client
            };
            session.close(code, &reason, why);
        }
        session.detach(consumer, interrupted);
    }

    /// Detaches a remote receiver as interrupted if its instance dies while attached.
    async fn watch_receiver(&'static self, rid: u64, node: String) {
        loop {
            tokio::time::sleep(WATCH_RECEIVER).await;
            if !lock(&self.held_sessions.attached).contains_key(&rid) {
                return;
            }
            if !self.node_alive(&node).await {
                self.detach_remote(rid, 0, true, None);
                return;
            }
        }
    }
}

/// The cluster as `bridge::held` sees it.
pub struct HeldSide(pub &'static Arc<Cluster>);

#[async_trait]
impl SessionCluster for HeldSide {
    async fn opened(
        &self,
        route: &str,
        s: &Arc<HeldSession>,
        inner: Option<&Arc<Session>>,
        cap: usize,
        keep: Duration,
    ) {
        let c = self.0;
        let (net, origin) = s.owner().to_record();
        let key = c.sockjs_key(route, &s.id);
        if let Some(inner) = inner {
            c.own_session(inner, cap, keep).await;
        }
        let inner_id = inner.map_or("", |i| &*i.id);
        let fields = [
            ("node", c.node()),
            ("net", &net),
            ("origin", &origin),
            ("inner", inner_id),
        ];
        c.write_record(&key, &fields, keep.max(RECORD_TTL)).await;
        let entry = (route.to_owned(), s.id.to_string());
        lock(&c.held_sessions.owned).insert(entry.clone(), s.clone());
        // The record is renewed while the session lives here, a few times per TTL: a constant
        // cost per session (10,000 sessions: about 50 commands/s), however idle.
        let ttl = keep.max(RECORD_TTL);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if !lock(&c.held_sessions.owned).contains_key(&entry) {
                    return;
                }
                let mut expire = redis::cmd("PEXPIRE");
                expire.arg(&key).arg(ttl.as_millis() as u64);
                c.queue(expire);
            }
        });
    }

    fn gone(&self, route: &str, s: &HeldSession, linger: Duration) {
        let c = self.0;
        lock(&c.held_sessions.owned).remove(&(route.to_owned(), s.id.to_string()));
        let mut expire = redis::cmd("PEXPIRE");
        expire
            .arg(c.sockjs_key(route, &s.id))
            .arg(linger.as_millis() as u64);
        c.queue(expire);
        if let Some(inner) = &s.link.backend {
            c.disown_session(&inner.id, linger);
        }
    }

    async fn find(&self, route: &str, id: &str) -> Elsewhere<RemoteHeld> {
        let c = self.0;
        if !c.is_up() {
            return Elsewhere::Unknown;
        }
        let Ok(fields) = c
            .run::<HashMap<String, String>>(
                "session_lookup",
                redis::cmd("HGETALL").arg(c.sockjs_key(route, id)),
            )
            .await
        else {
            return Elsewhere::Unknown;
        };
        let Some(node) = fields.get("node").cloned() else {
            return Elsewhere::Nowhere;
        };
        if node == c.node() {
            // Ours, and gone from here: nothing to reach.
            return Elsewhere::Nowhere;
        }
        let field = |k: &str| fields.get(k).map(String::as_str).unwrap_or_default();
        Elsewhere::Found(RemoteHeld {
            owner: Owner::from_record(field("net"), field("origin")),
            ops: Box::new(Ops {
                cluster: c,
                route: route.to_owned(),
                id: id.to_owned(),
                node,
                inner: field("inner").to_owned(),
                attach: Mutex::new(None),
            }),
        })
    }
}

/// A SockJS session another instance owns.
struct Ops {
    cluster: &'static Arc<Cluster>,
    route: String,
    id: String,
    node: String,
    inner: String,
    /// The request id of the attach in force (its detach names it).
    attach: Mutex<Option<u64>>,
}

impl Ops {
    /// Queues the detach of the attach in force, if any (at most once).
    fn detach_now(&self, after: u64, interrupted: bool, close: Option<(u16, String)>) {
        let Some(rid) = lock(&self.attach).take() else {
            return;
        };
        let mut cmd = self.command("sd");
        cmd.arg("r")
            .arg(rid)
            .arg("c")
            .arg(after)
            .arg("i")
            .arg(if interrupted { "1" } else { "0" });
        if let Some((code, reason)) = close {
            cmd.arg("x").arg(code).arg("xr").arg(reason);
        }
        self.cluster.queue(cmd);
    }

    fn command(&self, kind: &str) -> redis::Cmd {
        let mut c = self.cluster.to_node(&self.node);
        c.arg("k")
            .arg(kind)
            .arg("route")
            .arg(&self.route)
            .arg("s")
            .arg(&self.id);
        c
    }
}

#[async_trait]
impl RemoteHeldOps for Ops {
    async fn attach(&self) -> RemoteAttach {
        let lost = || RemoteAttach::Closed(1002, "Connection interrupted".into());
        if !self.cluster.node_alive(&self.node).await {
            return lost();
        }
        let rid = fastrand::u64(..);
        let mut cmd = self.command("sa");
        cmd.arg("r").arg(rid).arg("f").arg(self.cluster.node());
        // Named before it is asked: a receiver dropped while the attach is in flight still
        // sends its detach (see `abandon`), which the owner applies when the attach is done.
        *lock(&self.attach) = Some(rid);
        let Some(answer) = self.cluster.ask_with(cmd, rid).await else {
            return lost();
        };
        let mut parts = answer.splitn(3, ':');
        let attached = matches!(parts.clone().next(), Some("opened" | "resumed"));
        if !attached {
            // Nothing to detach from.
            lock(&self.attach).take();
        }
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind @ ("opened" | "resumed")), Some(seq), _) => RemoteAttach::Attached {
                opened: kind == "opened",
                after: seq.parse().unwrap_or(0),
                inner: (!self.inner.is_empty())
                    .then(|| remote_for(self.cluster, &self.inner, &self.node)),
            },
            (Some("busy"), _, _) => RemoteAttach::Busy,
            (Some("closed"), Some(code), reason) => RemoteAttach::Closed(
                code.parse().unwrap_or(1002),
                reason.unwrap_or_default().into(),
            ),
            _ => lost(),
        }
    }

    async fn detach(&self, after: u64, interrupted: bool, close: Option<(u16, String)>) {
        self.detach_now(after, interrupted, close);
    }

    fn abandon(&self) {
        self.detach_now(0, true, None);
    }

    async fn send(&self, messages: Vec<(Bytes, bool)>) -> Result<(), (usize, UplinkError)> {
        if !self.cluster.node_alive(&self.node).await {
            return Err((0, UplinkError::Ended));
        }
        let mut cmd = self
            .cluster
            .relay_command(&self.node, "ss", &self.id, &messages);
        cmd.arg("route").arg(&self.route);
        send_outcome(self.cluster.ask(cmd).await)
    }
}
