//! Several instances as one gateway, on Redis Streams (`cluster:` in `gateway.yaml`).
//!
//! ```text
//!                    lease holder (one per route)              every instance with clients
//! backend --> upstream::feed --> Hub ----> Appender --XADD--> stream --XREAD--> reader --> Hub
//!                                 (its own clients at once)                    (local fan-out)
//! ```
//!
//! A shared feed keeps one backend connection for the whole cluster: the instance holding the
//! route's lease (a Redis key with a short TTL, renewed while it runs) stamps each message with
//! the cluster's clock, delivers it to its own clients and appends it to the route's stream.
//! Every instance with clients on the route reads the stream once (one blocking read per route,
//! not per client) into its local hub, so a message has the same id, and a client the same
//! place, on every instance: `Last-Event-ID` and long-poll cursors resume anywhere.
//!
//! Failure is decided here: Redis unreachable at start or later, every instance serves its own
//! clients from its own backend connection (local mode, `switchyard_cluster_up 0`) and rejoins
//! when Redis answers again. No client is disconnected for it. What a holder could not append
//! still reached its own clients. Redis holds bounded state only: each stream is capped at the
//! replay window (`MAXLEN ~`), and every key has a TTL.
//!
//! This module knows Redis and the hub; `upstream` runs the controller that decides, per route,
//! whether this instance connects the backend ([`FeedKeys`], [`Cluster::lease_tick`]).

pub mod engine;
pub mod held;
pub mod sessions;
pub mod stream;

use crate::config::{ClusterConfig, RedisAt, SentinelConfig};
use crate::metrics;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The cluster's clock starts here (2026-01-01T00:00:00Z): seqs stay small enough for
/// JavaScript numbers for centuries (see [`crate::bridge::hub::CLOCK_SHIFT`]).
const CLOCK_EPOCH_MS: i64 = 1_767_225_600_000;

/// How often the heartbeat checks Redis (and the clock offset).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The longest one non-blocking command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a stream reader's `XREAD` blocks; an idle cluster costs one read per route per
/// instance this often.
pub const READ_BLOCK: Duration = Duration::from_secs(5);

/// A stream and its keys live this long after the last append (or lease renewal), so a
/// route that went away leaves nothing behind.
pub const STREAM_TTL: Duration = Duration::from_secs(24 * 3600);

static CLUSTER: OnceLock<Arc<Cluster>> = OnceLock::new();

/// Milliseconds to add to this host's clock to get Redis's (measured by the heartbeat).
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// The cluster this process is part of, when `cluster:` is configured.
pub fn get() -> Option<&'static Arc<Cluster>> {
    CLUSTER.get()
}

/// Joins the cluster described by `cfg` (once per process; `cluster:` changes need a restart).
/// Nothing is connected yet: the heartbeat ([`Cluster::heartbeat`]) and the feeds connect
/// when they run, and an unreachable Redis leaves the process in local mode.
pub fn init(cfg: &ClusterConfig) -> anyhow::Result<&'static Arc<Cluster>> {
    // rediss:// needs a rustls provider; the listeners' TLS uses the same one (ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = cfg.tls.as_ref().map(|t| redis::TlsCertificates {
        client_tls: t.client.as_ref().map(|(cert, key)| redis::ClientTlsConfig {
            client_cert: cert.clone(),
            client_key: key.clone(),
        }),
        root_cert: t.ca.clone(),
    });
    let (client, sentinel) = match &cfg.redis {
        RedisAt::Url(url) => (
            match &certs {
                Some(c) => redis::Client::build_with_tls(url.as_str(), c.clone()),
                None => redis::Client::open(url.as_str()),
            }
            .map_err(|e| anyhow::anyhow!("cluster.redis: {e}"))?,
            None,
        ),
        RedisAt::Sentinel(s) => {
            let sentinel = sentinel_client(s, certs.as_ref())
                .map_err(|e| anyhow::anyhow!("cluster.sentinel: {e}"))?;
            // Until a Sentinel names the master, commands go nowhere (local mode); the
            // heartbeat asks at once.
            let nowhere = redis::Client::open("redis://127.0.0.1:1/")
                .map_err(|e| anyhow::anyhow!("cluster.sentinel: {e}"))?;
            (nowhere, Some(tokio::sync::Mutex::new(sentinel)))
        }
    };
    let cluster = Arc::new(Cluster {
        cfg: cfg.clone(),
        client: arc_swap::ArcSwap::from_pointee(client),
        sentinel,
        master: std::sync::Mutex::new(None),
        master_epoch: std::sync::atomic::AtomicU64::new(0),
        manager: arc_swap::ArcSwapOption::empty(),
        up: tokio::sync::watch::Sender::new(false),
        sessions: sessions::Registry::default(),
        held_sessions: held::HeldRegistry::default(),
    });
    metrics::CLUSTER_UP
        .with_label_values(&[cfg.node.as_str()])
        .set(0);
    Ok(CLUSTER.get_or_init(|| cluster))
}

/// A Sentinel client for `s`'s master, with its credentials and TLS.
fn sentinel_client(
    s: &SentinelConfig,
    certs: Option<&redis::TlsCertificates>,
) -> redis::RedisResult<redis::sentinel::SentinelClient> {
    use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    let addrs = s.addrs.iter().map(|(host, port)| {
        if s.tls {
            redis::ConnectionAddr::TcpTls {
                host: host.clone(),
                port: *port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(host.clone(), *port)
        }
    });
    let mut b = SentinelClientBuilder::new(addrs, s.master.clone(), SentinelServerType::Master)?
        .set_client_to_redis_db(s.db);
    if s.tls {
        b = b
            .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        if let Some(c) = certs {
            b = b
                .set_client_to_redis_certificates(c.clone())
                .set_client_to_sentinel_certificates(c.clone());
        }
    }
    if let Some(u) = &s.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.password {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(p) = &s.sentinel_password {
        b = b.set_client_to_sentinel_password(p);
    }
    b.build()
}

/// The cluster's clock as a hub seq: Redis's time in milliseconds since [`CLOCK_EPOCH_MS`],
/// shifted left by [`crate::bridge::hub::CLOCK_SHIFT`].
pub fn clock_seq() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ms = (now + CLOCK_OFFSET_MS.load(Ordering::Relaxed) - CLOCK_EPOCH_MS).max(0) as u64;
    ms << crate::bridge::hub::CLOCK_SHIFT
}

pub struct Cluster {
    pub cfg: ClusterConfig,
    /// The Redis commands go to: the configured one, or the master Sentinel named last.
    client: arc_swap::ArcSwap<redis::Client>,
    /// With `cluster.sentinel`: asks the Sentinels where the master is.
    sentinel: Option<tokio::sync::Mutex<redis::sentinel::SentinelClient>>,
    /// The master's address as Sentinel last named it.
    master: std::sync::Mutex<Option<String>>,
    /// Bumped when the master moves: blocking readers reconnect.
    master_epoch: std::sync::atomic::AtomicU64,
    /// Commands (leases, appends, backfills) share one multiplexed connection that reconnects
    /// by itself; blocking reads have connections of their own. Replaced when the master moves.
    manager: arc_swap::ArcSwapOption<ConnectionManager>,
    /// Whether the heartbeat reaches Redis; feed controllers act on a change at once.
    up: tokio::sync::watch::Sender<bool>,
    /// Per-client sessions reachable from every instance.
    pub sessions: sessions::Registry,
    /// SockJS sessions reachable from every instance.
    pub held_sessions: held::HeldRegistry,
}

/// The keys of one route's feed.
#[derive(Clone)]
pub struct FeedKeys {
    pub route: Arc<str>,
    /// The stream of messages.
    pub stream: String,
    /// Who holds the backend connection (the node's name), with a TTL.
    pub lease: String,
    /// Set (with a TTL) by instances that have clients on the route but not the lease, so a
    /// holder without clients of its own keeps the connection for them.
    pub want: String,
}

const LEASE_TICK: &str = r"
local held = 0
local v = redis.call('GET', KEYS[1])
if ARGV[3] == '1' then
  if v == false then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    held = 1
  elseif v == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    held = 1
  end
  if held == 0 then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  end
end
return {held, redis.call('EXISTS', KEYS[2])}
";

const LEASE_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What one lease tick found.
pub struct Lease {
    /// This instance holds the route's lease.
    pub held: bool,
    /// Another instance has clients on the route and waits for the holder's messages.
    pub wanted_elsewhere: bool,
}

impl Cluster {
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// True while the heartbeat reaches Redis.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Changes whenever Redis is found reachable or not.
    pub fn watch_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// The keys of `hub`'s feed: the route's, or its channel's.
    pub fn keys_of(&self, route: &str, hub: &crate::bridge::Hub) -> FeedKeys {
        match hub.channel() {
            Some(channel) => self.channel_keys(route, channel),
            None => self.feed_keys(route),
        }
    }

    /// The keys of one channel of a route: its own stream, lease and want. The channel's
    /// length comes first, so no channel name can reach another's keys (or the route's).
    pub fn channel_keys(&self, route: &str, channel: &str) -> FeedKeys {
        let base = format!(
            "{}:chan:{route}:{}:{channel}",
            self.cfg.prefix,
            channel.len()
        );
        FeedKeys {
            route: route.into(),
            lease: format!("{base}:lease"),
            want: format!("{base}:want"),
            stream: base,
        }
    }

    pub fn feed_keys(&self, route: &str) -> FeedKeys {
        let base = format!("{}:feed:{route}", self.cfg.prefix);
        FeedKeys {
            route: route.into(),
            lease: format!("{base}:lease"),
            want: format!("{base}:want"),
            stream: base,
        }
    }

    /// The shared command connection (created on first use; reconnects by itself; made anew
    /// for a new master).
    pub async fn commands(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some(m) = self.manager.load_full() {
            return Ok((*m).clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let client = self.client.load_full();
        let m = ConnectionManager::new_lazy_with_config((*client).clone(), cfg)?;
        // Two first users may both make one: the first stored wins, the other is dropped.
        let stored = self
            .manager
            .compare_and_swap(&None::<Arc<ConnectionManager>>, Some(Arc::new(m.clone())));
        Ok(stored.as_deref().cloned().unwrap_or(m))
    }

    /// A connection of its own, for a blocking read.
    pub async fn blocking_connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(2)));
        self.client
            .load()
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// How many times the master has moved (Sentinel): a blocking reader that saw another
    /// value reconnects, to the new master.
    pub fn master_epoch(&self) -> u64 {
        self.master_epoch.load(Ordering::SeqCst)
    }

    /// With `cluster.sentinel`: asks the Sentinels where the master is, and moves every
    /// command there when it has changed. Never moves without an answer.
    async fn follow_master(&self) {
        let Some(sentinel) = &self.sentinel else {
            return;
        };
        let client = {
            let mut s = sentinel.lock().await;
            match tokio::time::timeout(COMMAND_TIMEOUT * 3, s.async_get_client()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    metrics::REDIS_ERRORS.with_label_values(&["sentinel"]).inc();
                    log::debug!("cluster: no Sentinel named the master: {e}");
                    return;
                }
                Err(_) => {
                    metrics::REDIS_ERRORS.with_label_values(&["sentinel"]).inc();
                    return;
                }
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        let mut master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        if master.as_deref() == Some(addr.as_str()) {
            return;
        }
        log::warn!(
            "cluster: Sentinel names {addr} as master {:?} (was {}); commands and reads move there",
            match &self.cfg.redis {
                RedisAt::Sentinel(s) => s.master.as_str(),
                RedisAt::Url(_) => "",
            },
            master.as_deref().unwrap_or("none")
        );
        *master = Some(addr);
        drop(master);
        self.client.store(Arc::new(client));
        self.manager.store(None);
        self.master_epoch.fetch_add(1, Ordering::SeqCst);
        metrics::CLUSTER_MASTER_CHANGES.inc();
    }

    /// Runs one command with the latency and error metrics (label `op`).
    pub async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> redis::RedisResult<T> {
        let mut conn = self.commands().await?;
        timed(op, cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline with the latency and error metrics (label `op`).
    pub async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipe: &redis::Pipeline,
    ) -> redis::RedisResult<T> {
        let mut conn = self.commands().await?;
        timed(op, pipe.query_async(&mut conn)).await
    }

    /// Takes or renews the route's lease when `want` (this instance has clients on the route,
    /// or holds it already), and says whether another instance waits for the feed. Without
    /// `want`, only looks.
    pub async fn lease_tick(&self, keys: &FeedKeys, want: bool) -> redis::RedisResult<Lease> {
        let ttl = self.cfg.lease_ttl.as_millis() as u64;
        let mut conn = self.commands().await?;
        let script = redis::Script::new(LEASE_TICK);
        let mut invocation = script.key(&keys.lease);
        invocation
            .key(&keys.want)
            .arg(self.node())
            .arg(ttl)
            .arg(if want { "1" } else { "0" });
        let (held, others): (u8, u8) = timed("lease", invocation.invoke_async(&mut conn)).await?;
        Ok(Lease {
            held: held == 1,
            wanted_elsewhere: others == 1,
        })
    }

    /// Gives the lease up (only if this instance still holds it).
    pub async fn release(&self, keys: &FeedKeys) {
        let Ok(mut conn) = self.commands().await else {
            return;
        };
        let script = redis::Script::new(LEASE_RELEASE);
        let mut invocation = script.key(&keys.lease);
        invocation.arg(self.node());
        let _: redis::RedisResult<u8> = timed("lease", invocation.invoke_async(&mut conn)).await;
    }

    /// Checks Redis once a second: marks the cluster up or down (loudly when it changes) and
    /// keeps the clock offset current. Runs for the life of the process.
    pub async fn heartbeat(self: Arc<Self>) {
        let node = self.cfg.node.clone();
        let gauge = metrics::CLUSTER_UP.with_label_values(&[node.as_str()]);
        let redacted = self.cfg.redis.describe();
        let mut first = true;
        let mut tick: u64 = 0;
        loop {
            // Sentinel is asked at start, after a failed beat (the master may have moved: a
            // demoted one refuses writes), and every few seconds besides.
            if first || !*self.up.borrow() || tick.is_multiple_of(5) {
                self.follow_master().await;
            }
            tick += 1;
            let sent = Instant::now();
            let local_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut pipe = redis::pipe();
            pipe.cmd("TIME")
                .add_command(sessions::alive_command(&self))
                .ignore();
            let answer: redis::RedisResult<((i64, i64),)> = self.run_pipe("time", &pipe).await;
            let answer = answer.map(|(t,)| t);
            match answer {
                Ok((secs, micros)) => {
                    // Redis's time at the midpoint of the round trip.
                    let rtt = sent.elapsed().as_millis() as i64;
                    let redis_ms = secs * 1000 + micros / 1000;
                    CLOCK_OFFSET_MS.store(redis_ms - (local_ms + rtt / 2), Ordering::Relaxed);
                    if !self.up.send_replace(true) {
                        log::info!(
                            "cluster: node {node} joined through Redis at {redacted} (clock offset {} ms)",
                            CLOCK_OFFSET_MS.load(Ordering::Relaxed)
                        );
                    }
                    gauge.set(1);
                }
                Err(e) => {
                    if self.up.send_replace(false) || first {
                        log::error!(
                            "cluster: Redis at {redacted} unreachable ({e}); node {node} serves in LOCAL MODE: each feed uses its own backend connection, and resume across instances is off until Redis is back"
                        );
                    }
                    gauge.set(0);
                }
            }
            first = false;
            tokio::time::sleep(HEARTBEAT).await;
        }
    }
}

/// The heartbeat as a pingora background service.
pub struct Heartbeat(pub Arc<Cluster>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        tokio::select! {
            _ = self.0.clone().heartbeat() => {}
            _ = self.0.clone().run_node_reader() => {}
            _ = self.0.clone().run_session_writer() => {}
            _ = shutdown.changed() => {}
        }
    }
}

async fn timed<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    let started = Instant::now();
    let r = match tokio::time::timeout(COMMAND_TIMEOUT * 2, fut).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "Redis did not answer in time",
        ))),
    };
    match &r {
        Ok(_) => metrics::REDIS_SECONDS
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64()),
        Err(_) => metrics::REDIS_ERRORS.with_label_values(&[op]).inc(),
    }
    r
}
