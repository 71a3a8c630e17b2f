//! A real Redis for the cluster tests, and the `cluster:` block that joins a gateway to it.

use super::*;
use std::process::{Child, Command, Stdio};

/// A `redis-server` of its own, without persistence, on a free port.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// Its working folder: a replica's full sync writes an RDB file there, not in the repo.
    dir: tempfile::TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.run().await;
        r
    }

    pub async fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/install-deps.sh --test installs it)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        assert!(
            wait_for_port(addr, DEADLINE).await,
            "redis-server did not listen"
        );
    }

    /// Stops the server (everything it held is gone: no persistence).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The keys matching `pattern`, each checked to expire by itself.
pub async fn keys_with_ttls(
    conn: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    for k in &keys {
        let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(conn).await.unwrap();
        assert!(ttl > 0, "{k} has no TTL");
    }
    keys
}

pub fn cluster_yaml(redis: &Redis, node: &str, prefix: &str) -> String {
    format!(
        "cluster:\n  redis: \"{}\"\n  node: \"{node}\"\n  prefix: \"{prefix}\"\n  lease_ttl: 1s\n",
        redis.url()
    )
}

/// `n` gateways (nodes `node-a`, `node-b`, ...) with `routes`, joined through `redis` under
/// `prefix`, each up in the cluster.
pub async fn cluster_of(redis: &Redis, routes: &str, prefix: &str, n: usize) -> Vec<Gateway> {
    let mut out = Vec::new();
    for i in 0..n {
        let node = format!("node-{}", (b'a' + i as u8) as char);
        let gw = Gateway::start_with(routes, &cluster_yaml(redis, &node, prefix)).await;
        gw.wait_metric(&format!("switchyard_cluster_up{{node=\"{node}\"}}"), 1.0)
            .await;
        out.push(gw);
    }
    out
}

/// haproxy in HTTP mode in front of `servers`, round robin per request (a new server for
/// every request, as a balancer without stickiness does); killed when dropped.
pub struct Balancer {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Balancer {
    pub async fn start(servers: &[SocketAddr]) -> Balancer {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = format!(
            "defaults\n    mode http\n    option http-server-close\n    timeout connect 5s\n    timeout client 1m\n    timeout server 1m\n    timeout tunnel 1m\nfrontend f\n    bind {addr}\n    default_backend b\nbackend b\n    balance roundrobin\n"
        );
        for (i, s) in servers.iter().enumerate() {
            cfg.push_str(&format!("    server s{i} {s}\n"));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy runs (scripts/install-deps.sh --test installs it)");
        assert!(
            wait_for_port(addr, DEADLINE).await,
            "haproxy did not listen"
        );
        Balancer {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
