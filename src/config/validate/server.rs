//! `server:`: listeners and their TLS files, the admin address, threads, the shutdown and
//! request-head deadlines, accept pacing.

use super::Validator;
use crate::config::model::{Listener, ServerConfig, TlsFiles};
use crate::config::raw::RawServer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

const MAX_THREADS: usize = 256;

impl Validator<'_> {
    pub(super) fn server(&mut self, s: &RawServer) -> ServerConfig {
        let mut listen = Vec::new();
        if s.listen.is_empty() {
            self.err(
                "server.listen",
                "no listener: add at least one `- addr: \"127.0.0.1:8080\"`",
            );
        }
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        for (i, l) in s.listen.iter().enumerate() {
            let at = format!("server.listen[{i}]");
            let Ok(addr) = l.addr.parse::<SocketAddr>() else {
                self.err(
                    format!("{at}.addr"),
                    format!(
                        "invalid listen address {:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\"",
                        l.addr
                    ),
                );
                continue;
            };
            if let Some(first) = seen.insert(addr, i) {
                self.err(
                    format!("{at}.addr"),
                    format!("listening address {addr} is already used by server.listen[{first}]"),
                );
            }
            let tls = l.tls.as_ref().map(|t| TlsFiles {
                cert: self.existing_file(format!("{at}.tls.cert"), &t.cert),
                key: self.existing_file(format!("{at}.tls.key"), &t.key),
            });
            listen.push(Listener { addr, tls });
        }
        let admin = s.admin.as_ref().and_then(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if let Some(i) = seen.get(&addr) {
                    self.err(
                        "server.admin",
                        format!("admin address {addr} is already used by server.listen[{i}]"),
                    );
                }
                Some(addr)
            }
            Err(_) => {
                self.err(
                    "server.admin",
                    format!("invalid admin address {a:?}: expected IP:PORT, e.g. \"127.0.0.1:9100\""),
                );
                None
            }
        });
        let threads = s.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        if threads == 0 || threads > MAX_THREADS {
            self.err(
                "server.threads",
                format!("threads must be between 1 and {MAX_THREADS}, got {threads}"),
            );
        }
        let shutdown_grace = self.duration(
            "server.shutdown_grace".into(),
            &s.shutdown_grace,
            Duration::from_secs(10),
        );
        let header_timeout = self.duration(
            "server.header_timeout".into(),
            &s.header_timeout,
            Duration::from_secs(10),
        );
        if header_timeout.is_zero() || header_timeout > Duration::from_secs(300) {
            self.err(
                "server.header_timeout",
                "header_timeout must be above 0s and at most 5m",
            );
        }
        let accept_rate = s.accept_rate.unwrap_or(2000);
        let accept_burst = s.accept_burst.unwrap_or(500);
        if accept_rate == 0 || accept_burst == 0 {
            self.err(
                "server.accept_rate",
                "accept_rate and accept_burst must be above 0",
            );
        }
        let memory = match s.limits.as_ref().and_then(|l| l.memory.as_ref()) {
            None => crate::config::model::DEFAULT_MEMORY_LIMIT,
            Some(v) => match super::super::units::parse_size(&v.0) {
                Ok(n) if n >= 1 << 20 => n as usize,
                Ok(n) => {
                    self.err(
                        "server.limits.memory",
                        format!("memory must be at least 1MiB, got {n}"),
                    );
                    crate::config::model::DEFAULT_MEMORY_LIMIT
                }
                Err(e) => {
                    self.err("server.limits.memory", e);
                    crate::config::model::DEFAULT_MEMORY_LIMIT
                }
            },
        };
        ServerConfig {
            listen,
            admin,
            threads,
            shutdown_grace,
            header_timeout,
            accept_rate,
            accept_burst,
            memory,
            watch_config: s.watch_config.unwrap_or(false),
        }
    }

    fn existing_file(&mut self, path: String, file: &str) -> PathBuf {
        let p = self.base_dir.join(file);
        if !p.is_file() {
            self.err(
                path,
                format!(
                    "file {file:?} not found (relative paths are resolved from the config file's folder; scripts/dev-cert.sh makes a dev pair)"
                ),
            );
        }
        p
    }
}
