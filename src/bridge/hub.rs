//! A shared feed: messages are stamped with an id once, kept in a bounded replay ring, and
//! broadcast to subscribers through one bounded ring (tokio's broadcast channel), so a slow
//! subscriber can only fall behind (and is told how far), never hold memory or delay others.
//!
//! Each message carries its encodings for the client transports, built on first use and then
//! shared by every client as `Bytes`.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// One message from a backend, as every client will see it.
#[derive(Debug)]
pub struct Message {
    /// Position in the feed, starting at 1; long-poll cursors and SSE ids are built from it.
    /// Seqs only grow; on a clustered feed they come from the cluster's clock and have gaps.
    pub seq: u64,
    /// The seq of the message before this one in the feed (0 for the first), so a resume can
    /// tell whether anything between a client's position and what is held was lost.
    pub prev: u64,
    pub payload: Bytes,
    pub binary: bool,
    /// The SSE event name, when an SSE backend gave one (other than the default `message`).
    pub event: Option<Box<str>>,
    /// When the gateway received it from the backend (delivery latency is measured from here).
    pub received: std::time::Instant,
    sse: OnceLock<Bytes>,
    ws: OnceLock<Bytes>,
    /// The WebSocket frame compressed with the full window, for every subscriber that agreed
    /// to permessage-deflate (no context takeover, so one compression serves them all).
    ws_deflate: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
    sockjs: OnceLock<Bytes>,
    engine: OnceLock<Bytes>,
}

impl Message {
    pub fn new(seq: u64, payload: Bytes, binary: bool) -> Self {
        Self::named(seq, None, payload, binary)
    }

    pub fn named(seq: u64, event: Option<Box<str>>, payload: Bytes, binary: bool) -> Self {
        Self {
            seq,
            prev: seq.saturating_sub(1),
            payload,
            binary,
            event,
            received: std::time::Instant::now(),
            sse: OnceLock::new(),
            ws: OnceLock::new(),
            ws_deflate: OnceLock::new(),
            json: OnceLock::new(),
            sockjs: OnceLock::new(),
            engine: OnceLock::new(),
        }
    }

    /// This message as an Engine.IO client's WebSocket frames, encoded once by `encode` for
    /// every subscriber: a route's Engine.IO framing of a message is the same for all of its
    /// clients (callers keep binary messages, whose frames differ by protocol revision, out).
    pub fn engine_frames(&self, encode: impl FnOnce(&Message) -> Bytes) -> Bytes {
        self.engine.get_or_init(|| encode(self)).clone()
    }

    /// The long-poll JSON value for this message, encoded once.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                crate::wire::longpoll::encode_message(
                    &self.payload,
                    self.binary,
                    self.event.as_deref(),
                )
            })
            .clone()
    }

    /// The SSE event for this message, encoded once.
    pub fn sse_frame(&self, epoch: &str) -> Bytes {
        self.sse
            .get_or_init(|| {
                crate::wire::sse::encode_event(
                    epoch,
                    self.seq,
                    self.event.as_deref(),
                    &self.payload,
                    self.binary,
                )
            })
            .clone()
    }

    /// This message as an item of a SockJS `a[...]` frame (a JSON string; binary payloads as
    /// base64 text, since SockJS carries text only), encoded once.
    pub fn sockjs(&self) -> Bytes {
        self.sockjs
            .get_or_init(|| {
                use base64::Engine;
                if self.binary {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&self.payload);
                    crate::wire::sockjs::quote(&b64)
                } else {
                    crate::wire::sockjs::quote(&String::from_utf8_lossy(&self.payload))
                }
            })
            .clone()
    }

    fn ws_opcode(&self) -> u8 {
        if self.binary {
            crate::wire::ws::OP_BINARY
        } else {
            crate::wire::ws::OP_TEXT
        }
    }

    /// The WebSocket frame for this message, encoded once.
    pub fn ws_frame(&self) -> Bytes {
        self.ws
            .get_or_init(|| crate::wire::ws::encode_frame(self.ws_opcode(), &self.payload))
            .clone()
    }

    /// The WebSocket frame for a client that agreed to `deflate` (or not): with the full window
    /// (every browser's case) compressed once for all subscribers; with a smaller window, which
    /// only a client that asked for one gets, compressed for it alone.
    pub fn ws_frame_for(&self, deflate: Option<crate::wire::deflate::Agreed>) -> Bytes {
        use crate::wire::ws::encode_message;
        match deflate {
            None => self.ws_frame(),
            Some(a) if a.server_bits == 15 => self
                .ws_deflate
                .get_or_init(|| encode_message(self.ws_opcode(), &self.payload, Some(a)))
                .clone(),
            Some(a) => encode_message(self.ws_opcode(), &self.payload, Some(a)),
        }
    }
}

/// What the live ring carries: messages, and the news that the backend connection ended.
#[derive(Debug, Clone)]
pub enum Event {
    Message(Arc<Message>),
    /// The backend connection ended; the feed itself goes on and reconnects. Carries the
    /// WebSocket close code and reason clients are closed with.
    BackendGone(Arc<Gone>),
}

#[derive(Debug)]
pub struct Gone {
    pub code: u16,
    pub reason: String,
}

/// What a subscriber holds: a live receiver plus everything from the replay window it asked for.
pub struct Subscription {
    pub backlog: Vec<Arc<Message>>,
    /// True when the requested position was older than the replay window: messages were missed.
    pub gap: bool,
    pub live: broadcast::Receiver<Event>,
}

struct Ring {
    next_seq: u64,
    held: VecDeque<Arc<Message>>,
    /// A clustered hub's own recent messages (from this instance's backend connection) that
    /// no stream entry has matched yet, oldest first: see [`Hub::publish_at`].
    own: VecDeque<Arc<Message>>,
    /// The other way round: entries another instance's connection relayed, taken while this
    /// instance's own connection was open, that none of its own messages has matched yet
    /// (see [`Hub::publish_backend`]).
    theirs: VecDeque<Arc<Message>>,
    /// This instance's backend connections open for the feed (see [`Hub::own_connection`]).
    connections: usize,
    /// The payload bytes `held` keeps, charged to the process's memory budget: a ring that
    /// cannot grow within it lets its oldest messages go (down to none).
    charge: crate::memory::Charge,
}

/// Where a stream entry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provenance {
    /// Relayed from a lease holder's backend connection: the same backend message may also
    /// reach this instance on its own connection, during a hand-over.
    Relayed,
    /// Published over HTTP (or written by an instance that does not say): only its seq
    /// identifies it.
    Published,
}

/// True when `m` and the message (`seq`, `event`, `payload`, `binary`) are one backend
/// message stamped by two instances: the same content, stamps within [`SAME_MESSAGE_MS`].
fn same_message(m: &Message, seq: u64, event: Option<&str>, payload: &[u8], binary: bool) -> bool {
    m.seq.abs_diff(seq) <= SAME_MESSAGE_MS << CLOCK_SHIFT
        && m.binary == binary
        && m.event.as_deref() == event
        && m.payload[..] == *payload
}

/// Drops messages from the front of `tail` while it is over [`OWN_TAIL`] or older than
/// [`SAME_MESSAGE_MS`] before `seq`.
fn prune(tail: &mut VecDeque<Arc<Message>>, seq: u64) {
    let window = SAME_MESSAGE_MS << CLOCK_SHIFT;
    while tail.len() >= OWN_TAIL || tail.front().is_some_and(|m| m.seq + window < seq) {
        tail.pop_front();
    }
}

/// Finds the first message of `tail` that `hit` accepts; it and every older one leave the
/// tail (both sides deliver one backend order, so what is passed over is not matched later).
fn take_match(tail: &mut VecDeque<Arc<Message>>, hit: impl Fn(&Message) -> bool) -> bool {
    match tail.iter().position(|m| hit(m)) {
        Some(i) => {
            tail.drain(..=i);
            true
        }
        None => false,
    }
}

/// How a hub numbers what its own producer publishes.
#[derive(Clone, Copy)]
enum Stamp {
    /// 1, 2, 3, ...: one process's feed.
    Counter,
    /// From the cluster's clock (milliseconds shifted by [`CLOCK_SHIFT`]), so every instance
    /// stamps in one order and a position from any of them means the same everywhere.
    Clock(fn() -> u64),
}

/// A clustered seq is a millisecond count shifted left by this, leaving room for 1,024
/// messages per millisecond, and staying below 2^53 for centuries (JSON numbers in JavaScript).
pub const CLOCK_SHIFT: u32 = 10;

/// How far ahead of the cluster's clock a client's position may be and still be believed.
const CLOCK_SLACK_MS: u64 = 60_000;

/// How far apart two instances' stamps of one backend message may be (each stamps it when its
/// own connection delivers it): a stream entry this close to one of this instance's own
/// messages, with the same content, is that message.
const SAME_MESSAGE_MS: u64 = 2_000;

/// At most this many of its own messages a clustered hub keeps to match stream entries
/// against (a few seconds' worth at any realistic rate; older ones are dropped by age too).
const OWN_TAIL: usize = 4096;

pub struct Hub {
    /// Changes when the feed restarts from scratch; part of every event id. A clustered feed
    /// has one epoch for good (its seqs are time-based).
    pub epoch: String,
    stamp: Stamp,
    /// False until a clustered feed has loaded what the cluster holds (see [`Self::wait_ready`]).
    ready: tokio::sync::watch::Sender<bool>,
    /// Set when a reload replaced the feed: its producer lets go at once (on a cluster, the
    /// new feed's controller takes the lease over where this one was).
    retired: std::sync::atomic::AtomicBool,
    ring: Mutex<Ring>,
    /// The broadcast ring live subscribers read: made by the first subscriber, let go once
    /// nobody has subscribed for `backend_linger` (its `queue` slots are an idle channel's
    /// largest cost; long-poll clients, subscribed only while a poll waits, keep it). Held by
    /// a publisher from stamping a message to sending it, so live order is seq order; taken
    /// before `ring` by everyone.
    live: Mutex<Option<broadcast::Sender<Event>>>,
    replay: usize,
    queue: usize,
    producer: Mutex<ProducerState>,
    /// The subprotocol the WebSocket backend chose, offered to clients that ask for it.
    backend_protocol: Mutex<Option<String>>,
    /// The channel this hub is the feed of, on a route with channels (a cluster keeps a
    /// stream and a lease per channel).
    channel: Option<Box<str>>,
}

struct ProducerState {
    running: bool,
    last_subscriber: Instant,
}

impl Hub {
    /// `queue` bounds how far any subscriber may fall behind; `replay` how many messages are
    /// kept for resume.
    pub fn new(queue: usize, replay: usize) -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| format!("{:x}", d.as_millis()))
            .unwrap_or_else(|_| "0".into());
        Self::build(queue, replay, epoch, Stamp::Counter)
    }

    /// A feed shared by a cluster of instances: seqs from `clock` (the cluster's time, see
    /// [`CLOCK_SHIFT`]), the fixed epoch `c`, and not ready until the cluster's history is in.
    pub fn clustered(queue: usize, replay: usize, clock: fn() -> u64) -> Self {
        let hub = Self::build(queue, replay, "c".into(), Stamp::Clock(clock));
        hub.ready.send_replace(false);
        hub
    }

    fn build(queue: usize, replay: usize, epoch: String, stamp: Stamp) -> Self {
        Self {
            epoch,
            stamp,
            ready: tokio::sync::watch::Sender::new(true),
            retired: std::sync::atomic::AtomicBool::new(false),
            ring: Mutex::new(Ring {
                charge: crate::memory::Charge::none(),
                next_seq: 1,
                held: VecDeque::new(),
                own: VecDeque::new(),
                theirs: VecDeque::new(),
                connections: 0,
            }),
            live: Mutex::new(None),
            replay,
            queue: queue.max(1),
            producer: Mutex::new(ProducerState {
                running: false,
                last_subscriber: Instant::now(),
            }),
            backend_protocol: Mutex::new(None),
            channel: None,
        }
    }

    /// This hub as the feed of `channel`.
    pub fn for_channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.into());
        self
    }

    /// The channel this hub is the feed of, if any.
    pub fn channel(&self) -> Option<&str> {
        self.channel.as_deref()
    }

    /// How many messages a subscriber may fall behind (the route's `send_queue`).
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// The replay window, in messages.
    pub fn replay(&self) -> usize {
        self.replay
    }

    /// A reload replaced this feed (see [`Self::retired`]).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_clustered(&self) -> bool {
        matches!(self.stamp, Stamp::Clock(_))
    }

    /// Marks a clustered feed's history loaded (or given up on: the cluster is unreachable).
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Waits (at most `limit`) until the feed's history is loaded; at once on a local feed.
    pub async fn wait_ready(&self, limit: std::time::Duration) {
        let mut rx = self.ready.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
    }

    /// True when `seq`, a position a client gave, can belong to this feed: not ahead of its
    /// head on a local feed; on a clustered one, not ahead of the cluster's clock (another
    /// instance may have published it a moment before this one read it).
    pub fn plausible(&self, seq: u64) -> bool {
        let head = self.head();
        match self.stamp {
            Stamp::Counter => seq <= head,
            Stamp::Clock(clock) => seq <= head.max(clock() + (CLOCK_SLACK_MS << CLOCK_SHIFT)),
        }
    }

    /// Stamps and publishes one message.
    pub fn publish(&self, payload: Bytes, binary: bool) -> Arc<Message> {
        self.publish_named(None, payload, binary)
    }

    /// Stamps and publishes one message that may carry an SSE event name.
    pub fn publish_named(
        &self,
        event: Option<Box<str>>,
        payload: Bytes,
        binary: bool,
    ) -> Arc<Message> {
        // Publishers take turns, so live order always matches seq order; the ring itself is
        // locked only to stamp and hold the message, not while the send wakes every receiver.
        // A subscriber that comes in between sees the message in its backlog and again live,
        // and consumers skip what they have by seq.
        let mut live = self.live();
        let msg = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let seq = match self.stamp {
                Stamp::Counter => ring.next_seq,
                Stamp::Clock(clock) => ring.next_seq.max(clock()),
            };
            let prev = ring.next_seq - 1;
            self.hold(&mut ring, seq, prev, event, payload, binary)
        };
        send(&mut live, Event::Message(msg.clone()));
        msg
    }

    /// Publishes one message from this instance's backend connection. None when it is on a
    /// clustered feed and another instance's connection relayed the same message first (see
    /// below): this instance's clients have it already.
    ///
    /// After an outage of Redis, an instance that served its clients from its own connection
    /// (local mode) keeps it until its next lease tick while the new holder relays the same
    /// messages, so each one may come twice, in either order: on its own connection first
    /// (the entry is then dropped by [`Self::publish_at`]) or from the stream first (dropped
    /// here). Each side is matched in order against the other's recent unmatched messages
    /// (same content, stamps within [`SAME_MESSAGE_MS`]), so one message stands for at most
    /// one of the other's, and a repeated payload is not mistaken for an earlier one.
    pub fn publish_backend(
        &self,
        event: Option<Box<str>>,
        payload: Bytes,
        binary: bool,
    ) -> Option<Arc<Message>> {
        let Stamp::Clock(clock) = self.stamp else {
            return Some(self.publish_named(event, payload, binary));
        };
        let mut live = self.live();
        let msg = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let seq = ring.next_seq.max(clock());
            prune(&mut ring.theirs, seq);
            let ev = event.as_deref();
            if take_match(&mut ring.theirs, |m| {
                same_message(m, seq, ev, &payload, binary)
            }) {
                return None;
            }
            let prev = ring.next_seq - 1;
            let msg = self.hold(&mut ring, seq, prev, event, payload, binary);
            prune(&mut ring.own, seq);
            ring.own.push_back(msg.clone());
            msg
        };
        send(&mut live, Event::Message(msg.clone()));
        Some(msg)
    }

    /// Marks one of this instance's backend connections for the feed open until the guard is
    /// dropped: meanwhile relayed entries are kept for [`Self::publish_backend`] to match.
    pub fn own_connection(self: &Arc<Self>) -> OwnConnection {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .connections += 1;
        OwnConnection(self.clone())
    }

    /// Publishes a message another instance stamped (`seq`, after `prev`), read from the
    /// cluster. Nothing happens when `seq` is not past the head (this instance has it already,
    /// or has moved past it), nor when it is this instance's own append read back (its seq)
    /// or, for a [`Provenance::Relayed`] one, a message this instance's own backend connection
    /// delivered already (see [`Self::publish_backend`]).
    pub fn publish_at(
        &self,
        seq: u64,
        prev: u64,
        event: Option<Box<str>>,
        payload: Bytes,
        binary: bool,
        from: Provenance,
    ) -> Option<Arc<Message>> {
        let mut live = self.live();
        let msg = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let ev = event.as_deref();
            let relayed = from == Provenance::Relayed;
            let own = take_match(&mut ring.own, |m| {
                m.seq == seq || (relayed && same_message(m, seq, ev, &payload, binary))
            });
            if own || seq < ring.next_seq {
                return None;
            }
            let msg = self.hold(&mut ring, seq, prev, event, payload, binary);
            if relayed && ring.connections > 0 {
                prune(&mut ring.theirs, seq);
                ring.theirs.push_back(msg.clone());
            }
            msg
        };
        send(&mut live, Event::Message(msg.clone()));
        Some(msg)
    }

    fn hold(
        &self,
        ring: &mut Ring,
        seq: u64,
        prev: u64,
        event: Option<Box<str>>,
        payload: Bytes,
        binary: bool,
    ) -> Arc<Message> {
        let mut m = Message::named(seq, event, payload, binary);
        m.prev = prev;
        let msg = Arc::new(m);
        ring.next_seq = seq + 1;
        if self.replay > 0 {
            let mut bytes = ring.charge.bytes() + msg.payload.len();
            if ring.held.len() == self.replay {
                if let Some(old) = ring.held.pop_front() {
                    bytes -= old.payload.len();
                }
            }
            ring.held.push_back(msg.clone());
            while !ring.charge.resize(bytes, "replay_ring") {
                match ring.held.pop_front() {
                    Some(old) => bytes -= old.payload.len(),
                    None => break,
                }
            }
        }
        msg
    }

    /// Tells every subscriber that the backend connection ended (see [`Event::BackendGone`]).
    pub fn backend_gone(&self, code: u16, reason: String) {
        // In turn with publishers, so the signal is ordered after every message before it.
        let mut live = self.live();
        send(
            &mut live,
            Event::BackendGone(Arc::new(Gone { code, reason })),
        );
    }

    pub fn set_backend_protocol(&self, protocol: Option<String>) {
        *self
            .backend_protocol
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = protocol;
    }

    pub fn backend_protocol(&self) -> Option<String> {
        self.backend_protocol
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The payload bytes the replay ring holds (charged to the memory budget).
    #[cfg(test)]
    pub fn held_bytes(&self) -> usize {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .charge
            .bytes()
    }

    /// The seq of the newest message published so far (0 before the first).
    pub fn head(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).next_seq - 1
    }

    /// Subscribes; `after` asks for every held message with a seq above it.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let mut tx = self.live();
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let live = tx
            .get_or_insert_with(|| broadcast::channel(self.queue).0)
            .subscribe();
        let (backlog, gap) = match after {
            None => (Vec::new(), false),
            Some(after) => {
                let backlog: Vec<_> = ring
                    .held
                    .iter()
                    .filter(|m| m.seq > after)
                    .cloned()
                    .collect();
                // Missed messages when something came after the client's position and before
                // the oldest message still held.
                let gap = match ring.held.front() {
                    Some(oldest) => after < oldest.prev,
                    None => after < ring.next_seq - 1,
                };
                (backlog, gap)
            }
        };
        Subscription { backlog, gap, live }
    }

    /// Marks that someone wants the feed; returns true when the caller must start the producer.
    pub fn claim_producer(&self) -> bool {
        let mut p = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        p.last_subscriber = Instant::now();
        if p.running {
            false
        } else {
            p.running = true;
            true
        }
    }

    /// Lets the next subscriber start a producer (used when one died).
    pub fn release_producer(&self) {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .running = false;
    }

    /// True when nobody here has been subscribed for `linger` (changes nothing; see
    /// [`Self::producer_should_stop`] to act on it).
    pub fn idle_for(&self, linger: std::time::Duration) -> bool {
        let mut p = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if self.subscribers() > 0 {
            p.last_subscriber = Instant::now();
            return false;
        }
        p.last_subscriber.elapsed() >= linger
    }

    /// Counts as a subscriber's visit for `backend_linger` (a publish keeps a channel's ring).
    pub fn touch(&self) {
        self.producer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_subscriber = Instant::now();
    }

    /// Subscribers here now.
    pub fn subscribers(&self) -> usize {
        self.live().as_ref().map_or(0, |tx| tx.receiver_count())
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<Event>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when nobody has been subscribed (nor published) for `linger` and no producer
    /// runs: a channel in that state can be closed.
    pub fn finished(&self, linger: std::time::Duration) -> bool {
        let mut p = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if self.subscribers() > 0 {
            p.last_subscriber = Instant::now();
            return false;
        }
        let done = !p.running && p.last_subscriber.elapsed() >= linger;
        if done {
            self.shed();
        }
        done
    }

    /// Lets the broadcast ring go when nobody holds a receiver.
    fn shed(&self) {
        let mut live = self.live();
        if live.as_ref().is_some_and(|tx| tx.receiver_count() == 0) {
            *live = None;
        }
    }

    /// Called by the producer between messages: true when it should stop because nobody has
    /// subscribed for `linger`. Decided under the same lock as [`Self::claim_producer`], so a
    /// subscriber arriving meanwhile either keeps it running or starts a new one.
    pub fn producer_should_stop(&self, linger: std::time::Duration) -> bool {
        let mut p = self.producer.lock().unwrap_or_else(|p| p.into_inner());
        if self.subscribers() > 0 {
            p.last_subscriber = Instant::now();
            return false;
        }
        if p.last_subscriber.elapsed() >= linger {
            p.running = false;
            self.shed();
            return true;
        }
        false
    }
}

/// See [`Hub::own_connection`]; the entries kept for it go when the last one closes.
pub struct OwnConnection(Arc<Hub>);

impl Drop for OwnConnection {
    fn drop(&mut self) {
        let mut ring = self.0.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.connections -= 1;
        if ring.connections == 0 {
            ring.theirs.clear();
        }
    }
}

/// Sends `event` to the live subscribers, if there is a ring for them.
fn send(live: &mut Option<broadcast::Sender<Event>>, event: Event) {
    if let Some(tx) = live.as_ref() {
        let _ = tx.send(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_and_gap_marker() {
        let hub = Hub::new(8, 3);
        for i in 0..5 {
            hub.publish(Bytes::from(format!("m{i}")), false);
        }
        assert_eq!(hub.head(), 5);
        let s = hub.subscribe(Some(3));
        assert_eq!(s.backlog.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
        assert!(!s.gap);
        let s = hub.subscribe(Some(0));
        assert_eq!(
            s.backlog.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(s.gap, "seq 1 and 2 fell out of the window");
        let s = hub.subscribe(Some(5));
        assert!(s.backlog.is_empty() && !s.gap);
    }

    #[test]
    fn the_ring_charges_the_bytes_it_holds_and_gives_back_what_falls_out() {
        let hub = Hub::new(8, 3);
        for i in 0..5 {
            hub.publish(Bytes::from(vec![b'x'; 100 + i]), false);
        }
        assert_eq!(hub.held_bytes(), 102 + 103 + 104);
        drop(hub);
    }

    #[tokio::test]
    async fn live_messages_follow_backlog_in_order() {
        let hub = Hub::new(8, 8);
        hub.publish(Bytes::from_static(b"a"), false);
        let mut s = hub.subscribe(Some(0));
        hub.publish(Bytes::from_static(b"b"), false);
        assert_eq!(s.backlog[0].seq, 1);
        match s.live.recv().await.unwrap() {
            Event::Message(m) => assert_eq!(m.seq, 2),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn backend_gone_arrives_after_what_was_published_before_it() {
        let hub = Hub::new(8, 8);
        let mut s = hub.subscribe(None);
        hub.publish(Bytes::from_static(b"a"), false);
        hub.backend_gone(1012, "lost".into());
        hub.publish(Bytes::from_static(b"b"), false);
        assert!(matches!(s.live.recv().await.unwrap(), Event::Message(m) if m.seq == 1));
        assert!(matches!(s.live.recv().await.unwrap(), Event::BackendGone(g) if g.code == 1012));
        // The sequence goes on across the reconnect.
        assert!(matches!(s.live.recv().await.unwrap(), Event::Message(m) if m.seq == 2));
    }

    fn clock() -> u64 {
        1_000 << CLOCK_SHIFT
    }

    #[test]
    fn clustered_feeds_stamp_from_the_clock_and_take_messages_stamped_elsewhere() {
        let hub = Hub::clustered(8, 3, clock);
        let a = hub.publish(Bytes::from_static(b"a"), false);
        assert_eq!((a.seq, a.prev), (clock(), 0));
        // The clock has not moved: the next one is still after the first.
        let b = hub.publish(Bytes::from_static(b"b"), false);
        assert_eq!((b.seq, b.prev), (clock() + 1, clock()));
        // From another instance: later ones go in, what is not past the head does not.
        let at = |seq: u64, prev: u64, text: &'static str| {
            let payload = Bytes::from_static(text.as_bytes());
            hub.publish_at(seq, prev, None, payload, false, Provenance::Relayed)
                .is_some()
        };
        assert!(at(clock() + 50, clock() + 1, "c"));
        assert!(!at(clock() + 50, clock() + 1, "c"));
        assert!(at(clock() + 70, clock() + 60, "e"));
        // Held: b, c, e. A client at c missed what came at +60 (never seen here either).
        let s = hub.subscribe(Some(clock() + 50));
        assert_eq!(s.backlog.len(), 1);
        // A client at b is exactly before c: no gap, though the seqs are not consecutive.
        let s = hub.subscribe(Some(clock()));
        assert_eq!(s.backlog.len(), 3);
        assert!(!s.gap);
        // A client before a (which fell out) missed it.
        assert!(hub.subscribe(Some(5)).gap);
        assert!(hub.plausible(clock() + 70));
        assert!(hub.plausible(clock() + (30_000 << CLOCK_SHIFT)));
        assert!(!hub.plausible(clock() + (120_000 << CLOCK_SHIFT)));
    }

    fn entry(hub: &Hub, seq: u64, text: &'static str, from: Provenance) -> bool {
        let payload = Bytes::from_static(text.as_bytes());
        hub.publish_at(seq, 0, None, payload, false, from).is_some()
    }

    fn own(hub: &Hub, text: &'static str) -> Option<u64> {
        let payload = Bytes::from_static(text.as_bytes());
        hub.publish_backend(None, payload, false).map(|m| m.seq)
    }

    fn held(hub: &Hub) -> Vec<String> {
        let s = hub.subscribe(Some(0));
        s.backlog
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect()
    }

    /// After an outage of Redis: this instance still has its own connection while the new
    /// holder's entries for the same messages arrive, stamped a little later. Each entry that
    /// is one of its own messages is dropped once; what its own connection never gave goes in.
    #[test]
    fn entries_for_messages_this_instance_delivered_itself_are_not_delivered_again() {
        use Provenance::{Published, Relayed};
        let hub = Hub::clustered(8, 16, clock);
        let ms = |n: u64| n << CLOCK_SHIFT;
        // Its own connection: x, y, x (a payload may repeat).
        let mine: Vec<u64> = ["x", "y", "x"]
            .iter()
            .map(|t| own(&hub, t).unwrap())
            .collect();
        // Its own append read back: the same seq.
        assert!(!entry(&hub, mine[0], "x", Relayed));
        // The holder's stamps of y and the second x, 3 ms later each: the same messages.
        assert!(!entry(&hub, mine[1] + ms(3), "y", Relayed));
        assert!(!entry(&hub, mine[2] + ms(3), "x", Relayed));
        // The second x is matched already: another x is a new message, as is z.
        assert!(entry(&hub, mine[2] + ms(250), "x", Relayed));
        assert!(entry(&hub, mine[2] + ms(500), "z", Relayed));
        // The same content long after is a new message too.
        let later = own(&hub, "w").unwrap();
        assert!(entry(&hub, later + ms(SAME_MESSAGE_MS + 1), "w", Relayed));
        // A message published over HTTP elsewhere is never taken for one of its own.
        let v = own(&hub, "v").unwrap();
        assert!(entry(&hub, v + ms(1), "v", Published));
        assert_eq!(held(&hub), ["x", "y", "x", "x", "z", "w", "w", "v", "v"]);
    }

    /// The other order: the holder's entries reach this instance before its own connection
    /// delivers the same messages. While its connection is open those entries are kept, and
    /// each of its own messages that one of them stands for is not delivered again.
    #[test]
    fn own_messages_that_the_stream_delivered_first_are_not_delivered_again() {
        use Provenance::Relayed;
        let hub = Arc::new(Hub::clustered(8, 16, clock));
        let ms = |n: u64| n << CLOCK_SHIFT;
        let connection = hub.own_connection();
        assert!(entry(&hub, clock() + ms(1), "a", Relayed));
        assert!(entry(&hub, clock() + ms(2), "b", Relayed));
        assert!(entry(&hub, clock() + ms(3), "a", Relayed));
        assert_eq!(own(&hub, "a"), None);
        assert_eq!(own(&hub, "b"), None);
        assert_eq!(own(&hub, "a"), None);
        // Each entry stands for one of its own: a third a is new, as is c.
        assert!(own(&hub, "a").is_some());
        assert!(own(&hub, "c").is_some());
        // An entry taken while no connection of its own was open is not kept: the same
        // content on a connection opened later is a new message.
        drop(connection);
        assert!(entry(&hub, clock() + ms(10), "d", Relayed));
        let _connection = hub.own_connection();
        assert!(own(&hub, "d").is_some());
        assert_eq!(held(&hub), ["a", "b", "a", "a", "c", "d", "d"]);
    }

    #[test]
    fn encodings_are_built_once_and_shared() {
        let m = Message::new(7, Bytes::from_static(b"hi"), false);
        let a = m.ws_frame();
        let b = m.ws_frame();
        assert_eq!(a.as_ptr(), b.as_ptr());
        assert_eq!(&a[..], b"\x81\x02hi");
    }
}
