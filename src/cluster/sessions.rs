//! Per-client sessions on any instance: a session keeps its backend connection on the instance
//! that opened it (its owner); its traffic goes through Redis, so a poll, POST or DELETE that
//! lands on another instance works.
//!
//! ```text
//! owner:   outbox --Mirror--> {p}:sess:ID:out (stream, seq-0 per message, head-1 at the end)
//!          {p}:sess:ID        (hash: node, route; TTL renewed while clients use it)
//! any:     poll   -> XADD {p}:node:OWNER:in {k:a, cursor, waiting node} ; XRANGE the out stream
//!          POST   -> XADD {p}:node:OWNER:in {k:m, messages, reply to}  ; wait for {k:y} on its own
//!          DELETE -> XADD {p}:node:OWNER:in {k:d}
//! ```
//!
//! Each instance reads one stream of its own (`{p}:node:NODE:in`, one blocking read): commands
//! for the sessions it owns, replies to POSTs it relayed, and wake-ups for polls waiting here.
//! An owner that has a message for a session wakes the instances whose polls wait on it, so a
//! remote poll costs Redis nothing while it waits. An owner that dies stops renewing
//! `{p}:node:NODE:alive`; a poll elsewhere then gets what the stream still holds, and then the
//! session's end: `closed: {code: 1012, reason: "session ended: its gateway instance is gone"}`.

use super::Cluster;
use crate::bridge::hub::{Gone, Message};
use crate::bridge::session::{Batch, EndReason, Mirror, Outgoing, Remote, Session, UplinkError};
use crate::bridge::Elsewhere;
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use redis::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Commands from the owner side waiting to be pipelined to Redis, at most; beyond it they are
/// counted as failed (the owner's own clients are not affected).
const MIRROR_QUEUE: usize = 16_384;

/// A node's command stream keeps about this many entries.
const NODE_STREAM_CAP: usize = 100_000;

/// A node's command stream expires this long after its reader last renewed it.
const NODE_STREAM_TTL: Duration = Duration::from_secs(3600);

/// How long a node's liveness key outlives its last heartbeat.
pub const ALIVE_TTL: Duration = Duration::from_secs(3);

/// The close a client gets when its session's owner instance is gone.
pub const OWNER_LOST: u16 = 1012;
pub const OWNER_LOST_REASON: &str = "session ended: its gateway instance is gone";

/// The longest a relayed POST waits for the owner's answer.
const REPLY_DEADLINE: Duration = crate::bridge::session::POST_DEADLINE;

/// How long a remote poll's registration with the owner lasts (longer than any poll).
const WAITER_TTL: Duration = Duration::from_secs(120);

/// This instance's side of the cluster's sessions.
pub struct Registry {
    /// Sessions this instance owns and mirrors, by id.
    owned: Mutex<HashMap<Arc<str>, Owned>>,
    /// Polls here waiting for a session's next message, by session id.
    waiting: Mutex<HashMap<Arc<str>, Waiters>>,
    /// POSTs relayed from here waiting for the owner's answer, by request id.
    replies: Mutex<HashMap<u64, oneshot::Sender<String>>>,
    tx: mpsc::Sender<redis::Cmd>,
    rx: Mutex<Option<mpsc::Receiver<redis::Cmd>>>,
}

/// Polls here waiting on one session: how many, and how they are woken.
type Waiters = (usize, Arc<Notify>);

struct Owned {
    session: Arc<Session>,
    mirror: Arc<SessionMirror>,
}

impl Default for Registry {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(MIRROR_QUEUE);
        Self {
            owned: Mutex::default(),
            waiting: Mutex::default(),
            replies: Mutex::default(),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    fn session_key(&self, id: &str) -> String {
        format!("{}:sess:{id}", self.cfg.prefix)
    }

    fn out_key(&self, id: &str) -> String {
        format!("{}:sess:{id}:out", self.cfg.prefix)
    }

    pub(super) fn node_stream(&self, node: &str) -> String {
        format!("{}:node:{node}:in", self.cfg.prefix)
    }

    pub(super) fn alive_key(&self, node: &str) -> String {
        format!("{}:node:{node}:alive", self.cfg.prefix)
    }

    /// Queues a command from the owner side; never waits.
    pub(super) fn queue(&self, cmd: redis::Cmd) {
        if self.sessions.tx.try_send(cmd).is_err() {
            metrics::REDIS_ERRORS
                .with_label_values(&["session_queue"])
                .inc();
        }
    }

    /// A command for `node`'s stream.
    pub(super) fn to_node(&self, node: &str) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(self.node_stream(node))
            .arg("MAXLEN")
            .arg("~")
            .arg(NODE_STREAM_CAP)
            .arg("*");
        c
    }

    /// Makes `session` (listed, owned here) reachable from every instance: its record in Redis,
    /// and a mirror of its outbox. `keep` is how long its record outlives the last use.
    /// The record is written before this returns, so a request for the session on another
    /// instance right after the client learns its id finds it.
    pub async fn own_session(
        self: &'static Arc<Self>,
        session: &Arc<Session>,
        cap: usize,
        keep: Duration,
    ) {
        let mirror = Arc::new(SessionMirror {
            cluster: self,
            id: session.id.clone(),
            cap,
            keep_ms: keep.as_millis() as u64,
            refreshed: AtomicU64::new(0),
            started: Instant::now(),
            waiters: Mutex::default(),
        });
        let key = self.session_key(&session.id);
        // Without Redis the session still works here; the record is written by the next use.
        self.write_record(
            &key,
            &[("node", self.node()), ("route", &session.route)],
            keep,
        )
        .await;
        mirror.refresh();
        session.outbox.set_mirror(mirror.clone());
        lock(&self.sessions.owned).insert(
            session.id.clone(),
            Owned {
                session: session.clone(),
                mirror,
            },
        );
    }

    /// Writes a session's record (`fields` of hash `key`, expiring after `ttl`) and waits for
    /// Redis to take it, so another instance finds it as soon as the client can ask there.
    /// A failure is counted and otherwise ignored: the session works here alone meanwhile.
    pub(super) async fn write_record(&self, key: &str, fields: &[(&str, &str)], ttl: Duration) {
        let mut pipe = redis::pipe();
        let hset = pipe.cmd("HSET").arg(key);
        for (k, v) in fields {
            hset.arg(*k).arg(*v);
        }
        hset.ignore()
            .cmd("PEXPIRE")
            .arg(key)
            .arg(ttl.as_millis() as u64)
            .ignore();
        let _ = self.run_pipe::<()>("session_write", &pipe).await;
    }

    /// The session ended here: it is no longer reachable (its end notice stays in its stream
    /// for `linger`, for a client that polls elsewhere).
    pub fn disown_session(&self, id: &str, linger: Duration) {
        lock(&self.sessions.owned).remove(id);
        for key in [self.session_key(id), self.out_key(id)] {
            let mut c = redis::cmd("PEXPIRE");
            c.arg(key).arg(linger.as_millis() as u64);
            self.queue(c);
        }
    }

    /// Pipelines what the owner side queued, for the life of the process.
    pub(super) async fn run_session_writer(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.sessions.rx).take() else {
            return;
        };
        let mut batch = Vec::with_capacity(256);
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut pipe = redis::pipe();
            for c in batch.drain(..) {
                pipe.add_command(c).ignore();
            }
            if self.run_pipe::<()>("session_write", &pipe).await.is_err() {
                log::debug!("cluster: session stream writes failed");
            }
        }
    }

    /// Finds session `id` of `route` on another instance.
    pub async fn remote_session(
        self: &'static Arc<Self>,
        route: &str,
        id: &str,
    ) -> Elsewhere<Box<dyn Remote>> {
        if !self.is_up() {
            return Elsewhere::Unknown;
        }
        let Ok(fields) = self
            .run::<HashMap<String, String>>(
                "session_lookup",
                redis::cmd("HGETALL").arg(self.session_key(id)),
            )
            .await
        else {
            return Elsewhere::Unknown;
        };
        if fields.get("route").map(String::as_str) != Some(route) {
            return Elsewhere::Nowhere;
        }
        let Some(owner) = fields.get("node").cloned() else {
            return Elsewhere::Nowhere;
        };
        Elsewhere::Found(Box::new(RemoteSession {
            cluster: self,
            id: id.into(),
            owner,
        }))
    }

    /// Reads this node's stream for the life of the process (from what arrives after start).
    pub(super) async fn run_node_reader(self: Arc<Self>) {
        let me: &'static Arc<Cluster> = super::get().expect("the cluster was initialised");
        let key = self.node_stream(self.node());
        // Where reading starts: the stream's newest entry when the reader first connects, then
        // each entry read. Never `$` after that: a read that fails after Redis answered it (the
        // process was paused past the response timeout) is read again from the same place, so
        // no command sent to this node meanwhile is lost.
        let mut last: Option<String> = None;
        // The stream expires an hour after its reader is gone (this node died).
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(NODE_STREAM_TTL.as_millis() as u64);
        let mut expired_at: Option<Instant> = None;
        loop {
            let epoch = self.master_epoch();
            let mut conn = match self.blocking_connection().await {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if last.is_none() {
                let newest: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                match newest {
                    Ok(v) => {
                        let newest = super::stream::entries_of(v).pop();
                        last = Some(newest.map_or_else(|| "0-0".to_owned(), |e| e.id));
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // A new master (Sentinel): read there, from the same place.
            while self.master_epoch() == epoch {
                if expired_at.is_none_or(|at| at.elapsed() >= NODE_STREAM_TTL / 60) {
                    expired_at = Some(Instant::now());
                    self.queue(expire.clone());
                }
                let from = last.clone().expect("set above");
                let read = super::stream::xread(&mut conn, &key, &from).await;
                match read {
                    Ok(Value::Nil) => {}
                    Ok(v) => {
                        for e in super::stream::streams_entries(v) {
                            last = Some(e.id.clone());
                            me.handle(e);
                        }
                    }
                    Err(e) => {
                        metrics::REDIS_ERRORS.with_label_values(&["read"]).inc();
                        log::debug!("cluster: node stream read failed: {e}");
                        break;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn handle(&'static self, e: super::stream::Entry) {
        let text = |name: &str| {
            e.field(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let id = text("s");
        match e.field("k").unwrap_or_default() {
            b"a" => {
                let owned = lock(&self.sessions.owned)
                    .get(id.as_str())
                    .map(|o| (o.session.clone(), o.mirror.clone()));
                let waiter = text("w");
                match owned {
                    Some((session, mirror)) => {
                        let cursor = e.number("c").unwrap_or(0);
                        session.outbox.ack(cursor);
                        session.touch();
                        if !waiter.is_empty() {
                            // Registered first, then checked: a message pushed in between
                            // wakes it either way.
                            mirror.wait_from(&waiter);
                            if session.outbox.head() > cursor || session.outbox.is_ended() {
                                mirror.wake_all();
                            }
                        }
                    }
                    // Not (or no longer) here: let the poll look again at once.
                    None if !waiter.is_empty() => self.wake(&waiter, &id),
                    None => {}
                }
            }
            b"d" => {
                if let Some(o) = lock(&self.sessions.owned).get(id.as_str()) {
                    o.session.close(EndReason::Client);
                }
            }
            b"m" => self.deliver(&e, &id),
            b"sa" | b"sd" | b"ss" => self.handle_held(&e),
            b"er" => self.handle_engine(&e),
            b"w" => {
                if let Some((_, n)) = lock(&self.sessions.waiting).get(id.as_str()) {
                    n.notify_waiters();
                }
            }
            b"y" => {
                if let Some(r) = e.number("r") {
                    if let Some(tx) = lock(&self.sessions.replies).remove(&r) {
                        let _ = tx.send(text("o"));
                    }
                }
            }
            _ => {}
        }
    }

    fn wake(&self, node: &str, id: &str) {
        let mut c = self.to_node(node);
        c.arg("k").arg("w").arg("s").arg(id);
        self.queue(c);
    }

    /// Client messages relayed by another instance for session `id`: see [`Self::deliver_to`].
    fn deliver(&'static self, e: &super::stream::Entry, id: &str) {
        let session = lock(&self.sessions.owned)
            .get(id)
            .map(|o| o.session.clone());
        if let Some(s) = &session {
            s.touch();
        }
        self.deliver_to(session.and_then(|s| s.uplink()), e);
    }

    /// Hands the messages of a relay command (`n`, `p0`, `b0`, ...) to `uplink` in order (queued
    /// here, in the order read, so relayed POSTs keep their order), then answers the relaying
    /// instance: `ok`, or `INDEX:ended`, `INDEX:refused:STATUS`, `INDEX:unreachable:WHY`.
    pub(super) fn deliver_to(
        &'static self,
        uplink: Option<mpsc::Sender<Outgoing>>,
        e: &super::stream::Entry,
    ) {
        let (Some(rid), Some(from)) = (e.number("r"), e.field("f")) else {
            return;
        };
        let from = String::from_utf8_lossy(from).into_owned();
        let n = e.number("n").unwrap_or(0) as usize;
        let Some(uplink) = uplink else {
            self.reply(&from, rid, "0:ended");
            return;
        };
        let mut pending = Vec::with_capacity(n);
        let mut overflow = Vec::new();
        for i in 0..n {
            let payload = Bytes::from(e.field(&format!("p{i}")).unwrap_or_default().to_vec());
            let binary = e.field(&format!("b{i}")).is_some_and(|b| b == b"1");
            let (done, heard) = oneshot::channel();
            let out = Outgoing {
                payload,
                binary,
                done: Some(done),
            };
            if !overflow.is_empty() {
                overflow.push(out);
            } else if let Err(mpsc::error::TrySendError::Full(out)) = uplink.try_send(out) {
                overflow.push(out);
            }
            pending.push(heard);
        }
        tokio::spawn(async move {
            for out in overflow {
                if uplink.send(out).await.is_err() {
                    break;
                }
            }
            let mut outcome = "ok".to_owned();
            for (i, heard) in pending.into_iter().enumerate() {
                match heard.await.unwrap_or(Err(UplinkError::Ended)) {
                    Ok(()) => {}
                    Err(UplinkError::Ended) => outcome = format!("{i}:ended"),
                    Err(UplinkError::Refused(s)) => outcome = format!("{i}:refused:{s}"),
                    Err(UplinkError::Unreachable(w)) => outcome = format!("{i}:unreachable:{w}"),
                }
                if outcome != "ok" {
                    break;
                }
            }
            self.reply(&from, rid, &outcome);
        });
    }

    /// Answers request `rid` of instance `node`.
    pub(super) fn reply(&self, node: &str, rid: u64, outcome: &str) {
        let mut c = self.to_node(node);
        c.arg("k").arg("y").arg("r").arg(rid).arg("o").arg(outcome);
        self.queue(c);
    }

    /// Sends `cmd` (a command for `owner`'s stream, without `r` and `f`) and waits for its
    /// answer; None when Redis or the owner did not answer within the POST deadline.
    pub(super) async fn ask(&self, mut cmd: redis::Cmd) -> Option<String> {
        let rid = fastrand::u64(..);
        cmd.arg("r").arg(rid).arg("f").arg(self.node());
        self.ask_with(cmd, rid).await
    }

    /// [`Self::ask`], waiting up to `wait` for the answer (a relayed poll waits as long as the
    /// poll may).
    pub(super) async fn ask_within(&self, mut cmd: redis::Cmd, wait: Duration) -> Option<String> {
        let rid = fastrand::u64(..);
        cmd.arg("r").arg(rid).arg("f").arg(self.node());
        self.ask_until(cmd, rid, wait).await
    }

    /// [`Self::ask`] for a command that names its request id `rid` and this node (`r`, `f`)
    /// already.
    pub(super) async fn ask_with(&self, cmd: redis::Cmd, rid: u64) -> Option<String> {
        self.ask_until(cmd, rid, REPLY_DEADLINE).await
    }

    async fn ask_until(&self, cmd: redis::Cmd, rid: u64, wait: Duration) -> Option<String> {
        let (tx, rx) = oneshot::channel();
        lock(&self.sessions.replies).insert(rid, tx);
        let answer = match self.run::<()>("session_command", &cmd).await {
            Ok(()) => tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        lock(&self.sessions.replies).remove(&rid);
        answer
    }

    /// True unless `node`'s liveness key is gone (a Redis that does not answer says nothing).
    pub(super) async fn node_alive(&self, node: &str) -> bool {
        let n: redis::RedisResult<u8> = self
            .run(
                "session_lookup",
                redis::cmd("EXISTS").arg(self.alive_key(node)),
            )
            .await;
        n.map_or(true, |n| n == 1)
    }

    /// A relay command for `owner`: `kind`, session `id`, and the messages.
    pub(super) fn relay_command(
        &self,
        owner: &str,
        kind: &str,
        id: &str,
        messages: &[(Bytes, bool)],
    ) -> redis::Cmd {
        let mut c = self.to_node(owner);
        c.arg("k")
            .arg(kind)
            .arg("s")
            .arg(id)
            .arg("n")
            .arg(messages.len());
        for (i, (payload, binary)) in messages.iter().enumerate() {
            c.arg(format!("p{i}")).arg(&payload[..]);
            if *binary {
                c.arg(format!("b{i}")).arg(1);
            }
        }
        c
    }
}

/// Reads the answer to a relayed send (see [`Cluster::deliver_to`]).
pub(super) fn send_outcome(answer: Option<String>) -> Result<(), (usize, UplinkError)> {
    let Some(answer) = answer else {
        return Err((
            0,
            UplinkError::Unreachable("the session's gateway instance did not answer".into()),
        ));
    };
    if answer == "ok" {
        return Ok(());
    }
    let mut parts = answer.splitn(3, ':');
    let i = parts.next().and_then(|i| i.parse().ok()).unwrap_or(0);
    let e = match (parts.next(), parts.next()) {
        (Some("refused"), Some(s)) => UplinkError::Refused(s.parse().unwrap_or(502)),
        (Some("unreachable"), why) => UplinkError::Unreachable(why.unwrap_or_default().into()),
        _ => UplinkError::Ended,
    };
    Err((i, e))
}

/// The owner's mirror of one session.
struct SessionMirror {
    cluster: &'static Arc<Cluster>,
    id: Arc<str>,
    cap: usize,
    keep_ms: u64,
    /// Milliseconds after `started` of the last TTL renewal.
    refreshed: AtomicU64,
    started: Instant,
    /// Instances with a poll waiting for this session's next message (one entry each).
    waiters: Mutex<Vec<(String, Instant)>>,
}

impl SessionMirror {
    fn refresh(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.refreshed.store(now, Ordering::Relaxed);
        for key in [
            self.cluster.session_key(&self.id),
            self.cluster.out_key(&self.id),
        ] {
            let mut c = redis::cmd("PEXPIRE");
            c.arg(key).arg(self.keep_ms);
            self.cluster.queue(c);
        }
    }

    /// Registers a poll waiting on `node`: one entry per instance, so an idle session polled
    /// from elsewhere for hours holds no more than the cluster has instances.
    fn wait_from(&self, node: &str) {
        let mut w = lock(&self.waiters);
        w.retain(|(n, since)| n != node && since.elapsed() < WAITER_TTL);
        w.push((node.to_owned(), Instant::now()));
    }

    fn wake_all(&self) {
        let waiters: Vec<(String, Instant)> = std::mem::take(&mut *lock(&self.waiters));
        for (node, since) in &waiters {
            if since.elapsed() < WAITER_TTL {
                self.cluster.wake(node, &self.id);
            }
        }
    }
}

impl Mirror for SessionMirror {
    fn pushed(&self, m: &Arc<Message>) {
        let mut c = redis::cmd("XADD");
        c.arg(self.cluster.out_key(&self.id))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.cap)
            .arg(format!("{}-0", m.seq))
            .arg("p")
            .arg(&m.payload[..]);
        if m.binary {
            c.arg("b").arg(1);
        }
        if let Some(e) = &m.event {
            c.arg("e").arg(&**e);
        }
        self.cluster.queue(c);
        self.refresh();
        self.wake_all();
    }

    fn ended(&self, gone: &Gone, head: u64) {
        let key = self.cluster.out_key(&self.id);
        let mut c = redis::cmd("XADD");
        c.arg(&key)
            .arg(format!("{head}-1"))
            .arg("g")
            .arg(gone.code)
            .arg("r")
            .arg(&gone.reason);
        self.cluster.queue(c);
        // The session may be disowned already (its keys set to expire, or gone): this append
        // then makes the stream anew, so it gets its own expiry, queued behind it.
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(self.keep_ms);
        self.cluster.queue(expire);
        self.wake_all();
    }

    fn touched(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        if now.saturating_sub(self.refreshed.load(Ordering::Relaxed)) >= self.keep_ms / 4 {
            self.refresh();
        }
    }
}

/// Session `id`, owned by `owner`, as a request here reads it.
pub(super) fn remote_for(cluster: &'static Arc<Cluster>, id: &str, owner: &str) -> Box<dyn Remote> {
    Box::new(RemoteSession {
        cluster,
        id: id.into(),
        owner: owner.to_owned(),
    })
}

/// A session owned by another instance.
struct RemoteSession {
    cluster: &'static Arc<Cluster>,
    id: Arc<str>,
    owner: String,
}

/// Unregisters a waiting poll when it ends.
struct Waiting<'a> {
    registry: &'a Registry,
    id: Arc<str>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut w = lock(&self.registry.waiting);
        if let Some((n, _)) = w.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.id);
            }
        }
    }
}

impl RemoteSession {
    /// What the session's stream holds after `cursor`.
    async fn read(&self, cursor: u64, max: usize) -> redis::RedisResult<Batch> {
        let v: Value = self
            .cluster
            .run(
                "session_read",
                redis::cmd("XRANGE")
                    .arg(self.cluster.out_key(&self.id))
                    .arg(format!("({cursor}-0"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(max + 1),
            )
            .await?;
        let mut batch = Batch {
            messages: Vec::new(),
            gap: false,
            ended: None,
        };
        for mut e in super::stream::entries_of(v) {
            let Some((seq, kind)) = super::stream::parse_id(&e.id) else {
                continue;
            };
            if kind == 1 {
                if batch.messages.is_empty() {
                    batch.ended = Some(Arc::new(Gone {
                        code: e.number("g").unwrap_or(1000) as u16,
                        reason: e
                            .field("r")
                            .map(|r| String::from_utf8_lossy(r).into_owned())
                            .unwrap_or_default(),
                    }));
                }
                break;
            }
            if batch.messages.len() == max {
                break;
            }
            let binary = e.field("b").is_some_and(|b| b == b"1");
            let event = e
                .field("e")
                .map(|n| String::from_utf8_lossy(n).into_owned().into_boxed_str());
            let payload = Bytes::from(e.take("p").unwrap_or_default());
            batch
                .messages
                .push(Arc::new(Message::named(seq, event, payload, binary)));
        }
        batch.gap = batch.messages.first().is_some_and(|m| m.seq > cursor + 1);
        Ok(batch)
    }

    async fn command(&self, fields: &[(&str, &[u8])]) -> redis::RedisResult<()> {
        let mut c = self.cluster.to_node(&self.owner);
        for (k, v) in fields {
            c.arg(*k).arg(*v);
        }
        c.arg("s").arg(&*self.id);
        self.cluster.run::<()>("session_command", &c).await
    }
}

fn owner_lost() -> Arc<Gone> {
    Arc::new(Gone {
        code: OWNER_LOST,
        reason: OWNER_LOST_REASON.into(),
    })
}

#[async_trait]
impl Remote for RemoteSession {
    async fn poll(&self, cursor: u64, max: usize, wait: Duration) -> Batch {
        let registry = &self.cluster.sessions;
        let notify = {
            let mut w = lock(&registry.waiting);
            let entry = w
                .entry(self.id.clone())
                .or_insert_with(|| (0, Arc::new(Notify::new())));
            entry.0 += 1;
            entry.1.clone()
        };
        let _waiting = Waiting {
            registry,
            id: self.id.clone(),
        };
        let node = self.cluster.node().as_bytes().to_vec();
        let cursor_text = cursor.to_string();
        let registered = self
            .command(&[("k", b"a"), ("c", cursor_text.as_bytes()), ("w", &node)])
            .await;
        let until = tokio::time::Instant::now() + wait;
        loop {
            let woken = notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let batch = match self.read(cursor, max).await {
                Ok(b) => b,
                Err(_) => Batch {
                    messages: Vec::new(),
                    gap: false,
                    ended: None,
                },
            };
            if !batch.messages.is_empty() || batch.ended.is_some() {
                return batch;
            }
            if registered.is_err() || !self.cluster.node_alive(&self.owner).await {
                return Batch {
                    messages: Vec::new(),
                    gap: false,
                    ended: Some(owner_lost()),
                };
            }
            // Woken by the owner, or looked again every few seconds (a wake-up lost with a
            // Redis blip costs a little latency, not the poll).
            let step = (until - tokio::time::Instant::now()).min(Duration::from_secs(5));
            if step.is_zero() {
                return batch;
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(step) => {}
            }
            if tokio::time::Instant::now() >= until {
                let last = self.read(cursor, max).await;
                return last.unwrap_or(batch);
            }
        }
    }

    async fn send(&self, messages: Vec<(Bytes, bool)>) -> Result<(), (usize, UplinkError)> {
        if !self.cluster.node_alive(&self.owner).await {
            return Err((0, UplinkError::Ended));
        }
        let cmd = self
            .cluster
            .relay_command(&self.owner, "m", &self.id, &messages);
        send_outcome(self.cluster.ask(cmd).await)
    }

    async fn close(&self) {
        let _ = self.command(&[("k", b"d")]).await;
    }
}

/// Renews this node's liveness key (called by the heartbeat while Redis answers).
pub(super) fn alive_command(cluster: &Cluster) -> redis::Cmd {
    let mut c = redis::cmd("SET");
    c.arg(cluster.alive_key(cluster.node()))
        .arg(1)
        .arg("PX")
        .arg(ALIVE_TTL.as_millis() as u64);
    c
}
