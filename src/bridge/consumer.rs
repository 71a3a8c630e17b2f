//! One client's view of a shared feed: its position in the live ring and the route's
//! slow-consumer policy.
//!
//! Every client reads the same bounded ring, so a client that stops reading holds no memory of
//! its own; it only falls behind. How far it may fall is `limits.send_queue`: beyond that,
//! `disconnect` closes it (SSE and long-poll clients then resume from the replay ring) and
//! `drop_oldest` skips what it missed and tells it how many. A client blocked in a write is
//! watched too, so one that never reads again cannot hold its connection forever.

use super::hub::{Event, Gone, Message};
use super::session::Session;
use crate::config::SlowConsumer;
use crate::metrics;
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
        Self {
            source: Source::Shared(live),
            policy,
            queue,
            route: route.into(),
            transport,
            last_seq,
            stashed: None,
            write_deadline,
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
        Self {
            route: session.route.clone(),
            source: Source::Session {
                changes: session.outbox.subscribe(),
                session,
                attachment,
            },
            policy: SlowConsumer::Disconnect,
            queue: 0,
            transport,
            last_seq,
            stashed: None,
            write_deadline,
        }
    }

    /// Waits for the next thing to tell the client.
    pub async fn next(&mut self) -> Delivery {
        if let Some(d) = self.stashed.take() {
            return d;
        }
        let live = match &mut self.source {
            Source::Shared(live) => live,
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
        let live = match &mut self.source {
            Source::Shared(live) => live,
            Source::Session { session, .. } => {
                let m = session.outbox.next_after(self.last_seq)?;
                self.last_seq = m.seq;
                return Some(m);
            }
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
                Source::Session { .. } => false,
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
