//! A route's stream: the lease holder's [`Relay`] appends what its backend sends; every
//! instance's [`read_feed`] reads it into the local hub.
//!
//! An entry's id is its hub seq (`SEQ-0`), so the stream's order is the feed's and a reader
//! needs no mapping; a backend-gone notice after message SEQ is `SEQ-1`. Fields: `p` payload,
//! `b` binary, `e` SSE event name, `v` the previous seq, `t` when it was stamped (Unix ms, the
//! cluster's clock), `i` an SSE backend's own event id (where a new holder resumes the
//! backend); a notice has `g` (close code), `r` (reason) and `n` (the node that saw it).

use super::{Cluster, FeedKeys, READ_BLOCK, STREAM_TTL};
use crate::bridge::hub::{Hub, Message, Provenance, CLOCK_SHIFT};
use crate::metrics;
use bytes::Bytes;
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Appends waiting for Redis, at most; beyond it they are counted as failed (the holder's own
/// clients have them anyway), so a slow Redis never holds the backend's reader.
const APPEND_QUEUE: usize = 4096;

/// Entries per pipeline and per read.
const BATCH: usize = 256;

enum Append {
    Message(Arc<Message>, Option<Box<str>>),
    Gone {
        after: u64,
        code: u16,
        reason: String,
    },
}

/// The lease holder's way into the route's stream. Offers never wait.
#[derive(Clone)]
pub struct Relay {
    tx: mpsc::Sender<Append>,
    route: Arc<str>,
}

impl Relay {
    /// Appends `msg` (with the SSE backend's own event id, if any) when this instance holds
    /// the lease.
    pub fn offer(&self, msg: &Arc<Message>, origin_id: Option<&str>) {
        let append = Append::Message(msg.clone(), origin_id.map(Into::into));
        if self.tx.try_send(append).is_err() {
            metrics::CLUSTER_APPENDS
                .with_label_values(&[&*self.route, "failed"])
                .inc();
        }
    }

    /// Tells the other instances that the backend connection ended after message `after`.
    pub fn gone(&self, after: u64, code: u16, reason: &str) {
        let _ = self.tx.try_send(Append::Gone {
            after,
            code,
            reason: reason.to_owned(),
        });
    }
}

/// Starts the appender of one route; it appends while `holding` is set, and ends when every
/// [`Relay`] is dropped.
pub fn appender(
    cluster: Arc<Cluster>,
    keys: FeedKeys,
    cap: usize,
    holding: Arc<AtomicBool>,
) -> Relay {
    let (tx, rx) = mpsc::channel(APPEND_QUEUE);
    let relay = Relay {
        tx,
        route: keys.route.clone(),
    };
    tokio::spawn(run_appender(cluster, keys, cap, holding, rx));
    relay
}

async fn run_appender(
    cluster: Arc<Cluster>,
    keys: FeedKeys,
    cap: usize,
    holding: Arc<AtomicBool>,
    mut rx: mpsc::Receiver<Append>,
) {
    let route = &*keys.route;
    let ok = metrics::CLUSTER_APPENDS.with_label_values(&[route, "ok"]);
    let failed = metrics::CLUSTER_APPENDS.with_label_values(&[route, "failed"]);
    let local = metrics::CLUSTER_APPENDS.with_label_values(&[route, "local"]);
    let mut batch = Vec::with_capacity(BATCH);
    let mut warned = false;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let messages = batch
            .iter()
            .filter(|a| matches!(a, Append::Message(..)))
            .count() as u64;
        if !holding.load(Ordering::Relaxed) {
            // Local mode (Redis unreachable) or the lease just moved: this instance's clients
            // had these; the cluster gets the holder's.
            local.inc_by(messages);
            batch.clear();
            continue;
        }
        let mut pipe = redis::pipe();
        let node = cluster.node();
        for a in batch.drain(..) {
            let cmd = pipe
                .cmd("XADD")
                .arg(&keys.stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(cap);
            match a {
                Append::Message(m, origin) => {
                    cmd.arg(format!("{}-0", m.seq))
                        .arg("p")
                        .arg(&m.payload[..])
                        .arg("v")
                        .arg(m.prev)
                        .arg("t")
                        .arg(stamp_ms(m.seq))
                        .arg("c")
                        .arg(1);
                    if m.binary {
                        cmd.arg("b").arg(1);
                    }
                    if let Some(e) = &m.event {
                        cmd.arg("e").arg(&**e);
                    }
                    if let Some(i) = origin {
                        cmd.arg("i").arg(&*i);
                    }
                }
                Append::Gone {
                    after,
                    code,
                    reason,
                } => {
                    cmd.arg(format!("{after}-1"))
                        .arg("g")
                        .arg(code)
                        .arg("r")
                        .arg(reason)
                        .arg("n")
                        .arg(node);
                }
            }
            cmd.ignore();
        }
        pipe.cmd("PEXPIRE")
            .arg(&keys.stream)
            .arg(STREAM_TTL.as_millis() as u64)
            .ignore();
        match cluster.run_pipe::<()>("append", &pipe).await {
            Ok(()) => {
                ok.inc_by(messages);
                warned = false;
            }
            Err(e) => {
                failed.inc_by(messages);
                if !warned {
                    log::warn!("cluster: route {route}: could not append to the stream ({e}); this instance's clients still get every message");
                    warned = true;
                }
            }
        }
    }
}

/// Appends a published message to a feed's stream, any instance may: its seq is the cluster's
/// clock, or one past the stream's newest entry when that is ahead (another instance appended
/// meanwhile), decided in Redis so two publishers never take one seq. Returns the seq and the
/// seq of the entry before it (the message's `prev`).
const APPEND_PUBLISHED: &str = r"
local last = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  last = tonumber(string.match(top[1][1], '^(%d+)-'))
end
local seq = tonumber(ARGV[1])
if seq <= last then
  seq = last + 1
end
local id = string.format('%.0f-0', seq)
if ARGV[5] == '1' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'p', ARGV[4], 'v', string.format('%.0f', last), 't', ARGV[6], 'b', '1')
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'p', ARGV[4], 'v', string.format('%.0f', last), 't', ARGV[6])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {string.format('%.0f', seq), string.format('%.0f', last)}
";

/// Appends one published message to `keys`' stream (see [`APPEND_PUBLISHED`]): its seq and
/// the seq before it.
pub async fn append_published(
    cluster: &Cluster,
    keys: &FeedKeys,
    cap: usize,
    payload: &[u8],
    binary: bool,
) -> redis::RedisResult<(u64, u64)> {
    let seq = super::clock_seq();
    let mut conn = cluster.commands().await?;
    let script = redis::Script::new(APPEND_PUBLISHED);
    let mut invocation = script.key(&keys.stream);
    invocation
        .arg(seq)
        .arg(cap)
        .arg(STREAM_TTL.as_millis() as u64)
        .arg(payload)
        .arg(if binary { "1" } else { "0" })
        .arg(stamp_ms(seq));
    let (seq, prev): (String, String) =
        super::timed("append", invocation.invoke_async(&mut conn)).await?;
    let parse = |s: &str| {
        s.parse::<u64>().map_err(|_| {
            redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, "append: not a seq"))
        })
    };
    Ok((parse(&seq)?, parse(&prev)?))
}

/// The Unix time (ms, the cluster's clock) a clustered seq was stamped at.
fn stamp_ms(seq: u64) -> u64 {
    (seq >> CLOCK_SHIFT) + super::CLOCK_EPOCH_MS as u64
}

/// Reads the route's stream into `hub` until aborted: first the replay window's worth of
/// history (then the hub is ready), then everything appended, with one blocking read at a
/// time. Reconnects with a growing delay while Redis is unreachable; the hub is marked ready
/// then too, so clients are served from what this instance has.
pub async fn read_feed(cluster: Arc<Cluster>, hub: Arc<Hub>, keys: FeedKeys) {
    let route = keys.route.clone();
    let lag = metrics::CLUSTER_READ_LAG.with_label_values(&[&*route]);
    let mut last: Option<String> = None;
    let mut delay = Duration::from_millis(100);
    loop {
        let epoch = cluster.master_epoch();
        let mut conn = match cluster.blocking_connection().await {
            Ok(c) => c,
            Err(e) => {
                metrics::REDIS_ERRORS.with_label_values(&["read"]).inc();
                log::debug!("cluster: route {route}: stream reader cannot connect: {e}");
                hub.set_ready();
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if last.is_none() {
            let history: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
                .arg(&keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(hub.replay().max(1))
                .query_async(&mut conn)
                .await;
            match history {
                Ok(v) => {
                    let mut entries = entries_of(v);
                    entries.reverse();
                    last = Some(
                        entries
                            .last()
                            .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()),
                    );
                    for e in entries {
                        // Old notices are not news: only messages go into the ring.
                        apply(&hub, e, None, cluster.node());
                    }
                    hub.set_ready();
                }
                Err(e) => {
                    metrics::REDIS_ERRORS.with_label_values(&["read"]).inc();
                    log::debug!("cluster: route {route}: history read failed: {e}");
                    hub.set_ready();
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
        }
        delay = Duration::from_millis(100);
        // A new master (Sentinel) has the stream: read there from the same place.
        while cluster.master_epoch() == epoch {
            let from = last.clone().expect("set by the history read");
            let read = xread(&mut conn, &keys.stream, &from).await;
            match read {
                Ok(Value::Nil) => {}
                Ok(v) => {
                    for e in streams_entries(v) {
                        last = Some(e.id.clone());
                        apply(&hub, e, Some(&lag), cluster.node());
                    }
                }
                Err(e) => {
                    metrics::REDIS_ERRORS.with_label_values(&["read"]).inc();
                    log::debug!("cluster: route {route}: stream read failed: {e}");
                    break;
                }
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// One blocking read of `key` after entry `from` (Nil when nothing came within
/// [`READ_BLOCK`]).
pub(super) async fn xread(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    from: &str,
) -> redis::RedisResult<Value> {
    redis::cmd("XREAD")
        .arg("COUNT")
        .arg(BATCH)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(key)
        .arg(from)
        .query_async(conn)
        .await
}

/// The SSE backend event id of the newest message that carries one (where a new lease
/// holder resumes its backend), if the stream has one among its last few entries.
pub async fn last_origin_id(cluster: &Cluster, keys: &FeedKeys) -> Option<String> {
    let v: Value = cluster
        .run(
            "history",
            redis::cmd("XREVRANGE")
                .arg(&keys.stream)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(16),
        )
        .await
        .ok()?;
    entries_of(v).into_iter().find_map(|e| {
        e.field("i")
            .map(|i| String::from_utf8_lossy(i).into_owned())
    })
}

/// One stream entry.
#[doc(hidden)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An entry id `A-B` as numbers.
pub(super) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    }

    pub fn number(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.field(name)?).ok()?.parse().ok()
    }

    pub fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let i = self.fields.iter().position(|(k, _)| k == name.as_bytes())?;
        Some(self.fields.swap_remove(i).1)
    }
}

#[doc(hidden)]
pub fn apply(hub: &Hub, mut e: Entry, lag: Option<&prometheus::Histogram>, node: &str) {
    let Some((seq, kind)) =
        e.id.split_once('-')
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
    else {
        return;
    };
    match kind {
        0 => {
            let prev = e.number("v").unwrap_or(0);
            let stamped = e.number("t");
            let binary = e.field("b").is_some_and(|b| b == b"1");
            let event = e
                .field("e")
                .map(|n| String::from_utf8_lossy(n).into_owned().into_boxed_str());
            // Relayed from a backend connection (not published over HTTP).
            let from = match e.field("c") {
                Some(_) => Provenance::Relayed,
                None => Provenance::Published,
            };
            let payload = Bytes::from(e.take("p").unwrap_or_default());
            if hub
                .publish_at(seq, prev, event, payload, binary, from)
                .is_some()
            {
                if let (Some(lag), Some(t)) = (lag, stamped) {
                    let now = stamp_ms(super::clock_seq());
                    lag.observe(now.saturating_sub(t) as f64 / 1000.0);
                }
            }
        }
        // A live notice from another node: its backend connection ended.
        1 if lag.is_some() && e.field("n").is_some_and(|n| n != node.as_bytes()) => {
            let code = e.number("g").unwrap_or(1012) as u16;
            let reason = e
                .field("r")
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .unwrap_or_default();
            hub.backend_gone(code, reason);
        }
        _ => {}
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        _ => Vec::new(),
    }
}

/// Entries of an `XRANGE`/`XREVRANGE` answer: `[[id, [field, value, ...]], ...]`.
#[doc(hidden)]
pub fn entries_of(v: Value) -> Vec<Entry> {
    items(v)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = items(entry).into_iter();
            let id = String::from_utf8(bytes_of(parts.next()?)?).ok()?;
            let mut flat = items(parts.next()?).into_iter();
            let mut fields = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push((bytes_of(k)?, bytes_of(v)?));
            }
            Some(Entry { id, fields })
        })
        .collect()
}

/// Entries of an `XREAD` answer over one stream: `[[key, [entries]]]` (or a map in RESP3).
#[doc(hidden)]
pub fn streams_entries(v: Value) -> Vec<Entry> {
    match v {
        Value::Map(pairs) => pairs
            .into_iter()
            .flat_map(|(_, entries)| entries_of(entries))
            .collect(),
        other => items(other)
            .into_iter()
            .flat_map(|s| {
                let mut parts = items(s).into_iter();
                let _key = parts.next();
                parts.next().map(entries_of).unwrap_or_default()
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_are_parsed_and_applied_in_order_without_repeats() {
        let entry = |id: &str, fields: &[(&str, &str)]| {
            Value::Array(vec![
                bulk(id),
                Value::Array(
                    fields
                        .iter()
                        .flat_map(|(k, v)| [bulk(k), bulk(v)])
                        .collect(),
                ),
            ])
        };
        let answer = Value::Array(vec![Value::Array(vec![
            bulk("switchyard:feed:r"),
            Value::Array(vec![
                entry("5000-0", &[("p", "a"), ("v", "0"), ("t", "1")]),
                entry("5001-0", &[("p", "b"), ("v", "5000"), ("e", "tick")]),
                entry("5001-1", &[("g", "1011"), ("r", "gone"), ("n", "other")]),
            ]),
        ])]);
        let hub = Hub::clustered(8, 8, || 1);
        let mut live = hub.subscribe(None).live;
        for e in streams_entries(answer) {
            apply(
                &hub,
                e,
                Some(&metrics::CLUSTER_READ_LAG.with_label_values(&["t"])),
                "me",
            );
        }
        assert_eq!(hub.head(), 5001);
        let s = hub.subscribe(Some(0));
        assert_eq!(s.backlog.len(), 2);
        assert_eq!(s.backlog[1].event.as_deref(), Some("tick"));
        assert_eq!(s.backlog[1].prev, 5000);
        use crate::bridge::hub::Event;
        assert!(matches!(live.try_recv(), Ok(Event::Message(m)) if m.seq == 5000));
        assert!(matches!(live.try_recv(), Ok(Event::Message(m)) if m.seq == 5001));
        assert!(matches!(live.try_recv(), Ok(Event::BackendGone(g)) if g.code == 1011));
        // The same entry again (the holder reading its own append) changes nothing.
        let again = Value::Array(vec![entry("5001-0", &[("p", "b"), ("v", "5000")])]);
        for e in entries_of(again) {
            apply(&hub, e, None, "me");
        }
        assert!(live.try_recv().is_err());
    }
}
