//! One client's view of a shared feed: its position in the live ring and the route's
//! slow-consumer policy.
//!
//! Every client reads the same bounded ring, so a client that stops reading holds no memory of
//! its own; it only falls behind. How far it may fall is `limits.send_queue`: beyond that,
//! `disconnect` closes it (SSE and long-poll clients then resume from the replay ring) and
//! `drop_oldest` skips what it missed and tells it how many. A client blocked in a write is
//! watched too, so one that never reads again cannot hold its connection forever.

use super::hub::{Event, Gone, Message};
use super::session::{Remote, Session};
use crate::config::SlowConsumer;
use crate::metrics;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

/// What a client gets next.
#[derive(Debug)]
pub enum Delivery {
    Message(Arc<Message>),
    /// `drop_oldest`: this many messages were skipped because the client fell behind.
    Dropped(u64),
    /// `disconnect`: the client fell behind and must be closed.
    TooSlow,
    BackendGone(Arc<Gone>),
    /// The feed is gone for good (its route was removed).
    Closed,
}

/// Where a client's messages come from.
enum Source {
    /// The route's shared ring.
    Shared(broadcast::Receiver<Event>),
    /// The client's own session: messages are acknowledged as they are written, and the
    /// backend waits (rather than anything being dropped) while the client is behind.
    Session {
        session: Arc<Session>,
        changes: watch::Receiver<u64>,
        attachment: u64,
    },
    /// A session another instance of the cluster owns, read through it in batches.
    Remote {
        remote: Box<dyn Remote>,
        ended: Option<Arc<Gone>>,
    },
}

pub struct Consumer {
    source: Source,
    policy: SlowConsumer,
    queue: usize,
    route: Arc<str>,
    transport: &'static str,
    /// The seq of the last message handed out; anything at or below it is not repeated.
    pub last_seq: u64,
    /// A non-message delivery met by [`Self::ready`], handed out by the next [`Self::next`].
    stashed: Option<Delivery>,
    /// Messages to hand out before the source's: a backlog, or a remote session's batch.
    queued: VecDeque<Arc<Message>>,
    /// The longest one write may stay blocked, whatever the policy.
    write_deadline: Duration,
}

/// How often a client stuck in a write is checked against its queue bound.
const STALL_CHECK: Duration = Duration::from_millis(100);

impl Consumer {
    pub fn new(
        live: broadcast::Receiver<Event>,
        policy: SlowConsumer,
        queue: usize,
        route: &str,
        transport: &'static str,
        last_seq: u64,
        write_deadline: Duration,
    ) -> Self {
        let mut c = Self::at(Source::Shared(live), route.into(), transport, last_seq);
        (c.policy, c.queue, c.write_deadline) = (policy, queue, write_deadline);
        c
    }

    /// A consumer of `source` after `last_seq`; a session's (local or remote) waits for its
    /// client rather than dropping anything, so only the write deadline applies to it.
    fn at(source: Source, route: Arc<str>, transport: &'static str, last_seq: u64) -> Self {
        Self {
            source,
            policy: SlowConsumer::Disconnect,
            queue: 0,
            route,
            transport,
            last_seq,
            stashed: None,
            queued: VecDeque::new(),
            write_deadline: Duration::from_secs(60),
        }
    }

    /// A streaming client attached to its session (attachment `attachment`), positioned after
    /// `last_seq`.
    pub fn for_session(
        session: Arc<Session>,
        attachment: u64,
        transport: &'static str,
        last_seq: u64,
        write_deadline: Duration,
    ) -> Self {
        let route = session.route.clone();
        let source = Source::Session {
            changes: session.outbox.subscribe(),
            session,
            attachment,
        };
        Self {
            write_deadline,
            ..Self::at(source, route, transport, last_seq)
        }
    }

    /// A client of a session another instance owns (see [`Remote`]), positioned after
    /// `last_seq`.
    pub fn remote(
        remote: Box<dyn Remote>,
        route: &str,
        transport: &'static str,
        last_seq: u64,
        write_deadline: Duration,
    ) -> Self {
        let source = Source::Remote {
            remote,
            ended: None,
        };
        Self {
            write_deadline,
            ..Self::at(source, route.into(), transport, last_seq)
        }
    }

    /// Hands out `messages` (those after the position) before anything live: a backlog.
    pub fn queue_first(&mut self, messages: Vec<Arc<Message>>) {
        let after = self.last_seq;
        self.queued
            .extend(messages.into_iter().filter(|m| m.seq > after));
    }

    /// Moves the position to `seq` (a receiver elsewhere delivered up to it); a session's
    /// messages up to it are acknowledged.
    pub fn delivered_up_to(&mut self, seq: u64) {
        if seq > self.last_seq {
            self.last_seq = seq;
        }
        while self.queued.front().is_some_and(|m| m.seq <= seq) {
            self.queued.pop_front();
        }
        match &mut self.source {
            Source::Session { session, .. } => session.outbox.ack(self.last_seq),
            // What the ring kept for this consumer meanwhile was delivered elsewhere: skip it
            // (and any lag it ran into), keeping the first message past the position.
            Source::Shared(live) => loop {
                match live.try_recv() {
                    Ok(Event::Message(m)) if m.seq <= seq => {}
                    Ok(Event::Message(m)) => {
                        self.queued.push_back(m);
                        break;
                    }
                    Ok(Event::BackendGone(_)) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                    Err(_) => break,
                }
            },
            Source::Remote { .. } => {}
        }
    }

    fn take_queued(&mut self) -> Option<Arc<Message>> {
        let m = self.queued.pop_front()?;
        self.last_seq = m.seq;
        Some(m)
    }

    /// Waits for the next thing to tell the client.
    pub async fn next(&mut self) -> Delivery {
        if let Some(d) = self.stashed.take() {
            return d;
        }
        if let Some(m) = self.take_queued() {
            return Delivery::Message(m);
        }
        let live = match &mut self.source {
            Source::Shared(live) => live,
            Source::Remote { remote, ended } => loop {
                if let Some(g) = ended.take() {
                    return Delivery::BackendGone(g);
                }
                // Acknowledges what was handed out, and waits there for more.
                let batch = remote
                    .poll(self.last_seq, 256, Duration::from_secs(30))
                    .await;
                *ended = batch.ended;
                self.queued.extend(batch.messages);
                if let Some(m) = self.queued.pop_front() {
                    self.last_seq = m.seq;
                    return Delivery::Message(m);
                }
            },
            Source::Session {
                session,
                changes,
                attachment,
            } => {
                // Asking for more means everything handed out before was written.
                session.outbox.ack(self.last_seq);
                loop {
                    changes.borrow_and_update();
                    if session.superseded(*attachment) {
                        return Delivery::Closed;
                    }
                    if let Some(m) = session.outbox.next_after(self.last_seq) {
                        self.last_seq = m.seq;
                        return Delivery::Message(m);
                    }
                    if let Some(gone) = session.outbox.after(self.last_seq, 1).ended {
                        return Delivery::BackendGone(gone);
                    }
                    if changes.changed().await.is_err() {
                        return Delivery::Closed;
                    }
                }
            }
        };
        loop {
            match live.recv().await {
                Ok(Event::Message(m)) if m.seq <= self.last_seq => continue,
                Ok(Event::Message(m)) => {
                    self.last_seq = m.seq;
                    return Delivery::Message(m);
                }
                Ok(Event::BackendGone(g)) => return Delivery::BackendGone(g),
                Err(RecvError::Lagged(n)) => return self.fell_behind(n),
                Err(RecvError::Closed) => return Delivery::Closed,
            }
        }
    }

    /// The next message when one is already queued, without waiting; lets a transport put a
    /// burst into one write. Anything else queued is kept for the next [`Self::next`].
    pub fn ready(&mut self) -> Option<Arc<Message>> {
        if self.stashed.is_some() {
            return None;
        }
        if let Some(m) = self.take_queued() {
            return Some(m);
        }
        let live = match &mut self.source {
            Source::Shared(live) => live,
            Source::Session { session, .. } => {
                let m = session.outbox.next_after(self.last_seq)?;
                self.last_seq = m.seq;
                return Some(m);
            }
            Source::Remote { .. } => return None,
        };
        loop {
            let d = match live.try_recv() {
                Ok(Event::Message(m)) if m.seq <= self.last_seq => continue,
                Ok(Event::Message(m)) => {
                    self.last_seq = m.seq;
                    return Some(m);
                }
                Ok(Event::BackendGone(g)) => Delivery::BackendGone(g),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.fell_behind(n),
                Err(broadcast::error::TryRecvError::Closed) => Delivery::Closed,
                Err(broadcast::error::TryRecvError::Empty) => return None,
            };
            self.stashed = Some(d);
            return None;
        }
    }

    fn fell_behind(&mut self, n: u64) -> Delivery {
        let labels = [&*self.route, self.transport];
        match self.policy {
            SlowConsumer::Disconnect => {
                metrics::SLOW_CONSUMERS
                    .with_label_values(&[labels[0], labels[1], "disconnect"])
                    .inc();
                Delivery::TooSlow
            }
            SlowConsumer::DropOldest => {
                metrics::SLOW_CONSUMERS
                    .with_label_values(&[labels[0], labels[1], "drop"])
                    .inc();
                metrics::DROPPED_MESSAGES
                    .with_label_values(&[labels[0], labels[1], "slow_consumer"])
                    .inc_by(n);
                Delivery::Dropped(n)
            }
        }
    }

    /// Resolves when a client stuck in a write must be let go (the write is then abandoned
    /// and the client closed): under `disconnect` once it is `send_queue` behind, and under
    /// any policy once one write has been blocked for the write deadline. Short of that,
    /// `drop_oldest` settles the lag at the next [`Self::next`].
    pub async fn stalled(&self) {
        let give_up = tokio::time::Instant::now() + self.write_deadline;
        loop {
            tokio::time::sleep(STALL_CHECK).await;
            let behind = match &self.source {
                Source::Shared(live) => {
                    self.policy == SlowConsumer::Disconnect && live.len() >= self.queue
                }
                // A session's backend waits for its client; only the deadline applies.
                Source::Session { .. } | Source::Remote { .. } => false,
            };
            if behind || tokio::time::Instant::now() >= give_up {
                metrics::SLOW_CONSUMERS
                    .with_label_values(&[&*self.route, self.transport, "disconnect"])
                    .inc();
                return;
            }
        }
    }
}
