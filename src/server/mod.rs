//! Maps a validated [`Config`] onto a pingora `Server`: the proxy service with its plain and TLS
//! listeners, the admin listener (`/metrics`, `/healthz`, `/readyz`, the status page at `/` and
//! `/status.json`), the health checker, the drain coordinator and the access log's writer
//! (reopened on SIGUSR1).

pub mod drain;
pub mod publish;
pub mod reload;
pub mod status;

use crate::config::{AdminAuth, Config};
use crate::edge::{AcceptPacer, Edge};
use crate::gateway::{Gateway, GatewayState, Live};
use crate::metrics;
use crate::policy;
use crate::upstream::health::HealthChecker;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use drain::DrainOnShutdown;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::http::RequestHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use prometheus::{Encoder, TextEncoder};
use reload::Reloader;
use std::sync::Arc;

/// The admin listener's app.
#[derive(Clone)]
pub struct AdminApp {
    /// The generation in force, for the status page.
    pub live: Arc<Live>,
    pub started: status::Started,
    /// `server.admin_auth`, swapped by a reload.
    pub auth: Arc<ArcSwap<AdminAuth>>,
}

impl AdminApp {
    /// The refusal of a request `server.admin_auth` does not let in, if it is one.
    fn refusal(
        &self,
        req: &RequestHeader,
        peer: Option<std::net::IpAddr>,
        path: &str,
    ) -> Option<http::Response<Vec<u8>>> {
        let auth = self.auth.load();
        let authorization = req
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let refusal = policy::admin::admit(&auth, path, peer, authorization).err()?;
        metrics::ADMIN_REFUSALS
            .with_label_values(&[refusal.label()])
            .inc();
        let resp = http::Response::builder()
            .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(http::header::CACHE_CONTROL, "no-store");
        let (resp, body) = match refusal {
            policy::admin::Refusal::Address => (
                resp.status(403),
                &b"the admin listener does not serve this address (server.admin_auth.allow)\n"[..],
            ),
            policy::admin::Refusal::Token => (
                resp.status(401)
                    .header(http::header::WWW_AUTHENTICATE, "Bearer realm=\"switchyard admin\""),
                &b"the admin listener needs `Authorization: Bearer <token>` (server.admin_auth.token)\n"[..],
            ),
        };
        Some(
            resp.header(http::header::CONTENT_LENGTH, body.len())
                .body(body.to_vec())
                .expect("static response parts are valid"),
        )
    }

    /// The answer to one request (`req`, from `peer`), whose body `body` gives.
    async fn answer(
        &self,
        req: &RequestHeader,
        peer: Option<std::net::IpAddr>,
        body: publish::Body<'_>,
    ) -> http::Response<Vec<u8>> {
        let path = req.uri.path();
        if let Some(refused) = self.refusal(req, peer, path) {
            return refused;
        }
        if path.starts_with("/publish/") {
            let state = self.live.load();
            let auth = self.auth.load();
            let answer = publish::serve(&state, req, body, auth.token.as_deref()).await;
            let mut resp = http::Response::builder()
                .status(answer.status)
                .header(
                    http::header::CONTENT_TYPE,
                    if answer.status == 202 {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    },
                )
                .header(http::header::CACHE_CONTROL, "no-store")
                .header(http::header::CONTENT_LENGTH, answer.body.len());
            for (name, value) in &answer.headers {
                resp = resp.header(*name, value.as_str());
            }
            return resp
                .body(answer.body)
                .expect("publish answers are valid responses");
        }
        let (status, ctype, body) = match path {
            "/" => {
                let page = status::collect(&self.live.load(), self.started).to_html();
                (200, "text/html; charset=utf-8".into(), page.into_bytes())
            }
            "/status.json" => {
                let facts = status::collect(&self.live.load(), self.started);
                let mut body = serde_json::to_vec_pretty(&facts).unwrap_or_default();
                body.push(b'\n');
                (200, "application/json".into(), body)
            }
            "/metrics" => {
                let encoder = TextEncoder::new();
                let mut buf = Vec::new();
                let _ = encoder.encode(&prometheus::gather(), &mut buf);
                (200, encoder.format_type().to_owned(), buf)
            }
            "/healthz" => (200, "text/plain".into(), b"ok\n".to_vec()),
            "/readyz" if crate::drain::draining() => {
                (503, "text/plain".into(), b"draining\n".to_vec())
            }
            "/readyz" => (200, "text/plain".into(), b"ready\n".to_vec()),
            _ => (
                404,
                "text/plain".into(),
                b"admin endpoints: / /status.json /metrics /healthz /readyz, POST /publish/ROUTE[/KEY...]\n".to_vec(),
            ),
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CACHE_CONTROL, "no-store")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}

/// The admin app as the edge serves it (see [`crate::edge::AdminConnections`]).
struct Admin {
    app: AdminApp,
    /// The same app on pingora's path.
    pingora: Arc<HttpServer<AdminApp>>,
}

impl crate::edge::AdminConnections for Admin {
    fn answer<'a>(
        &'a self,
        req: &'a RequestHeader,
        peer: Option<std::net::IpAddr>,
        body: bytes::Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<Vec<u8>>> + Send + 'a>>
    {
        Box::pin(self.app.answer(req, peer, publish::Body::Read(body)))
    }

    fn to_pingora<'a>(
        &'a self,
        io: Box<crate::edge::HeadDeadline>,
        replay: bytes::Bytes,
        shutdown: &'a pingora::server::ShutdownWatch,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Option<Box<crate::edge::HeadDeadline>>> + Send + 'a>,
    > {
        Box::pin(crate::edge::to_pingora(&self.pingora, io, replay, shutdown))
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        // Only requests the edge does not read whole come this way (a chunked or large body):
        // their head is copied so the session can give the body.
        let req = session.req_header().clone();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.answer(&req, peer, publish::Body::Session(session))
            .await
    }
}

/// Starts the access log's writer with the services (the log itself is put in force by
/// [`build`], before any listener serves), and reopens its file on each SIGUSR1 (logrotate's
/// `create` mode: rename, SIGUSR1, and new lines go to a new file). A reload may change or
/// stop the log later (`reload`).
pub struct AccessLogService;

#[async_trait]
impl pingora::services::background::BackgroundService for AccessLogService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        crate::access_log::start();
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log cannot be reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                got = usr1.recv() => {
                    if got.is_none() {
                        return;
                    }
                    crate::access_log::reopen();
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Process-level options from the command line.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take over the listening sockets of a running instance (zero-downtime binary upgrade).
    pub upgrade: bool,
    pub daemon: bool,
    /// The config file, read again on SIGHUP.
    pub config_path: Option<std::path::PathBuf>,
}

pub fn build(config: &Config, run: &RunOptions) -> anyhow::Result<Server> {
    let started = status::Started::now();
    let grace = config.server.shutdown_grace.as_secs().max(1);
    let first_port = config.server.listen.first().map_or(0, |l| l.addr.port());
    let conf = ServerConf {
        threads: config.server.threads,
        // One single-threaded runtime per thread, as nginx runs one event loop per worker: a
        // connection stays on the thread that accepted it (pingora spreads accepted
        // connections over the threads at random), so it never pays for a hand-off between
        // threads, and the pass-through path's per-thread upstream pool (`upstream::http1`)
        // serves every request of it. pingora's work-stealing runtime cost about a third of
        // plain pass-through's requests per second when measured against this.
        work_stealing: false,
        grace_period_seconds: Some(grace),
        graceful_shutdown_timeout_seconds: Some(grace),
        // One upgrade socket per instance, so two gateways on one host do not collide.
        upgrade_sock: format!("/tmp/switchyard-{first_port}.upgrade.sock"),
        pid_file: format!("/tmp/switchyard-{first_port}.pid"),
        daemon: run.daemon,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: run.upgrade,
        daemon: run.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    // Before the first generation: its shared feeds are built clustered.
    if let Some(cfg) = &config.cluster {
        let cluster = crate::cluster::init(cfg)?;
        server.add_service(background_service(
            "cluster heartbeat",
            crate::cluster::Heartbeat(cluster.clone()),
        ));
        log::info!(
            "cluster: node {} with Redis at {} (prefix {:?}, lease_ttl {:?})",
            cfg.node,
            cfg.redis.describe(),
            cfg.prefix,
            cfg.lease_ttl
        );
    }
    let state = Arc::new(Live::new(GatewayState::new(config)));
    if config.cluster.is_some() {
        // Engine.IO requests other instances relay here, for sessions held here.
        let live = state.clone();
        crate::bridge::engineio::serve_relayed_with(Box::new(move |req| {
            let live = live.clone();
            Box::pin(async move { crate::gateway::serve_relayed(&live, req).await })
        }));
    }
    metrics::init();
    metrics::CONFIG_GENERATION.set(state.load().generation);
    let app = pingora::proxy::http_proxy(
        &server.configuration,
        Gateway {
            state: state.clone(),
        },
    );
    let admin_auth = Arc::new(ArcSwap::from_pointee(config.server.admin_auth.clone()));
    if let Some(addr) = config.server.admin {
        if !addr.ip().is_loopback() && config.server.admin_auth == AdminAuth::default() {
            log::warn!("the admin listener {addr} is not on a loopback address and has no server.admin_auth: anyone who can reach it sees every route and its metrics, and can publish to routes without a token");
        }
    }
    let edge = Edge {
        pingora: Arc::new(app),
        gateway: Arc::new(Gateway {
            state: state.clone(),
        }),
        header_timeout: config.server.header_timeout,
        admin: config.server.admin.map(|addr| crate::edge::AdminListener {
            addr,
            app: {
                let app = AdminApp {
                    live: state.clone(),
                    started,
                    auth: admin_auth.clone(),
                };
                Arc::new(Admin {
                    pingora: Arc::new(HttpServer::new_app(app.clone())),
                    app,
                })
            },
        }),
    };
    crate::memory::set_limit(config.server.memory);
    if let Some(crate::config::AccessLogConfig {
        to: crate::config::AccessLogTarget::File(path),
        ..
    }) = &config.server.access_log
    {
        // Opened and put in force before any listener serves, so the first request is logged
        // and a file that cannot be written stops the start with a clear error; the writer
        // thread starts with the services (after a daemon's fork), and what comes before it
        // waits in the queue.
        crate::access_log::configure(config.server.access_log.as_ref()).map_err(|e| {
            anyhow::anyhow!("server.access_log.to: cannot open {}: {e}", path.display())
        })?;
    } else {
        crate::access_log::configure(config.server.access_log.as_ref())?;
    }
    server.add_service(background_service(
        "access log (SIGUSR1 reopens)",
        AccessLogService,
    ));
    let mut proxy = Service::new("switchyard".into(), edge);
    proxy.set_connection_filter(Arc::new(AcceptPacer::new(
        config.server.accept_rate,
        config.server.accept_burst,
    )));
    // A client that stops reading fills its send buffer before any write waits; a bounded one
    // makes the write deadline fire sooner and caps what a stalled client pins in the kernel.
    let socket = config.server.client_send_buffer.map(|n| {
        let mut options = pingora::listeners::TcpSocketOptions::default();
        options.tcp_snd_buf = Some(n);
        options
    });
    for l in &config.server.listen {
        let addr = l.addr.to_string();
        match &l.tls {
            // No L4 read buffer on plain listeners: pingora's HTTP reader and the lean
            // connection read into buffers of their own, and a 64 KiB one per connection is
            // the largest thing an idle stream would otherwise hold. TLS keeps pingora's
            // default, so record reads stay few.
            None => {
                let mut listener =
                    ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::default().read(0));
                if let Some(options) = &socket {
                    listener = listener.tcp_socket_options(options.clone());
                }
                proxy.add_listener(listener)
            }
            Some(tls) => {
                let cert = tls.cert.to_string_lossy();
                let key = tls.key.to_string_lossy();
                let mut settings = TlsSettings::intermediate(&cert, &key)
                    .map_err(|e| anyhow::anyhow!("TLS listener {addr}: {e}"))?;
                settings.enable_h2();
                proxy.add_tls_with_settings(&addr, socket.clone(), settings);
            }
        }
    }
    if let Some(admin) = config.server.admin {
        proxy.add_listener(ListenerConfig::tcp(admin.to_string()));
    }
    server.add_service(proxy);
    server.add_service(background_service(
        "upstream health checks",
        HealthChecker {
            sets: state.load().upstream_sets.clone(),
        },
    ));
    server.add_service(background_service(
        "drain coordinator",
        DrainOnShutdown {
            grace: config.server.shutdown_grace,
        },
    ));
    if let Some(path) = &run.config_path {
        server.add_service(background_service(
            "config reload (SIGHUP)",
            Reloader {
                path: path.clone(),
                live: state.clone(),
                server: config.server.clone(),
                cluster: config.cluster.clone(),
                admin_auth,
            },
        ));
    }
    Ok(server)
}
