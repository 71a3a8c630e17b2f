//! A bare pingora proxy, for `bench/http.sh`: a `ProxyHttp` with only `upstream_peer` (the shape
//! of pingora's own load-balancer example), built against the project's pingora and release
//! profile. It tells pingora's own cost per request apart from switchyard's.
//!
//! ```sh
//! cargo build --release --example pingora_bare
//! target/release/examples/pingora_bare LISTEN UPSTREAM [THREADS] [steal|nosteal]
//! ```

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use std::net::SocketAddr;

struct Bare(SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: pingora_bare LISTEN UPSTREAM [THREADS] [steal|nosteal]");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("UPSTREAM is HOST:PORT");
    let threads = args
        .get(3)
        .map_or(1, |t| t.parse().expect("THREADS is a number"));
    let conf = ServerConf {
        threads,
        work_stealing: args.get(4).map(String::as_str) != Some("nosteal"),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare(upstream));
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
