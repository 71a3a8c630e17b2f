//! `server:`: listeners and their TLS files, the admin address, threads, the shutdown and
//! request-head deadlines, accept pacing.

use super::Validator;
use crate::config::model::{
    AccessLogConfig, AccessLogFormat, AccessLogTarget, AdminAuth, Cidr, Listener, ServerConfig,
    TlsFiles,
};
use crate::config::raw::{RawAccessLog, RawAdminAuth, RawServer};
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
        let admin_auth = s
            .admin_auth
            .as_ref()
            .map(|a| self.admin_auth(a))
            .unwrap_or_default();
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
        let access_log = s.access_log.as_ref().map(|a| self.access_log(a));
        let client_send_buffer = s.client_send_buffer.as_ref().and_then(|v| {
            match super::super::units::parse_size(&v.0) {
                Ok(n) if (4 << 10..=64 << 20).contains(&n) => Some(n as usize),
                Ok(n) => {
                    self.err(
                        "server.client_send_buffer",
                        format!("client_send_buffer must be between 4KiB and 64MiB, got {n}"),
                    );
                    None
                }
                Err(e) => {
                    self.err("server.client_send_buffer", e);
                    None
                }
            }
        });
        ServerConfig {
            listen,
            admin,
            admin_auth,
            threads,
            shutdown_grace,
            header_timeout,
            accept_rate,
            accept_burst,
            memory,
            watch_config: s.watch_config.unwrap_or(false),
            access_log,
            client_send_buffer,
        }
    }

    /// `server.admin_auth`: a bearer token (`${VAR}` from the environment) and/or the networks
    /// peers must come from. An empty block would protect nothing, so it is refused.
    fn admin_auth(&mut self, a: &RawAdminAuth) -> AdminAuth {
        let token = a
            .token
            .as_deref()
            .and_then(|t| self.bearer_token("server.admin_auth.token".into(), t));
        let mut allow = Vec::new();
        for (i, net) in a.allow.iter().flatten().enumerate() {
            match Cidr::parse(net) {
                Ok(c) => allow.push(c),
                Err(e) => self.err(format!("server.admin_auth.allow[{i}]"), e),
            }
        }
        if a.token.is_none() && a.allow.as_ref().is_none_or(|l| l.is_empty()) {
            self.err(
                "server.admin_auth",
                "admin_auth protects nothing: set `token`, `allow: [\"10.0.0.0/8\", ...]`, or both",
            );
        }
        AdminAuth { token, allow }
    }

    /// A bearer token: `${VAR}` taken from the environment; visible ASCII, not empty.
    pub(super) fn bearer_token(&mut self, at: String, raw: &str) -> Option<String> {
        match super::cluster::expand_env(raw) {
            Ok(t) if t.is_empty() => {
                self.err(
                    at,
                    "the token is empty: set one, or leave `token` out to go without one",
                );
                None
            }
            Ok(t) if !t.bytes().all(|c| c.is_ascii_graphic()) => {
                self.err(at, "a bearer token is visible ASCII text without spaces");
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                self.err(at, e);
                None
            }
        }
    }

    /// `server.access_log`: both keys are required, so that turning the log on says where it
    /// goes. A relative file is resolved from the config file's folder; the file itself is
    /// opened (created) when the gateway starts, and its folder must exist.
    fn access_log(&mut self, a: &RawAccessLog) -> AccessLogConfig {
        let format = match a.format.as_deref() {
            Some("json") => AccessLogFormat::Json,
            Some("combined") => AccessLogFormat::Combined,
            Some(other) => {
                self.err(
                    "server.access_log.format",
                    format!("expected json or combined, got {other:?}"),
                );
                AccessLogFormat::Json
            }
            None => {
                self.err(
                    "server.access_log.format",
                    "missing: expected json or combined",
                );
                AccessLogFormat::Json
            }
        };
        let to = match a.to.as_deref() {
            Some("stdout") => AccessLogTarget::Stdout,
            Some("") | None => {
                self.err(
                    "server.access_log.to",
                    "missing: expected stdout or a file path, e.g. /var/log/switchyard/access.log",
                );
                AccessLogTarget::Stdout
            }
            Some(file) => {
                let path = self.base_dir.join(file);
                // A bare file name beside a config loaded as `gateway.yaml` has an empty parent.
                let folder_ok = path
                    .parent()
                    .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir());
                if path.is_dir() {
                    self.err(
                        "server.access_log.to",
                        format!("{file:?} is a folder: expected stdout or a file path"),
                    );
                } else if !folder_ok {
                    self.err(
                        "server.access_log.to",
                        format!(
                            "the folder of {file:?} does not exist (relative paths are resolved from the config file's folder)"
                        ),
                    );
                }
                AccessLogTarget::File(path)
            }
        };
        AccessLogConfig { format, to }
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

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use crate::config::{AccessLogFormat, AccessLogTarget};
    use std::path::Path;

    fn load(access_log: &str) -> Result<crate::config::Config, Vec<(String, String)>> {
        let text = format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\n{access_log}routes:\n  - name: a\n    path: /a\n    backend: {{ builtin: clock }}\n"
        );
        load_str(&text, Path::new("/tmp"), "t.yaml")
            .map_err(|e| e.errors.into_iter().map(|e| (e.path, e.message)).collect())
    }

    #[test]
    fn the_access_log_is_off_unless_configured() {
        assert_eq!(load("").unwrap().server.access_log, None);
    }

    #[test]
    fn an_access_log_to_stdout_or_a_file_is_taken() {
        let a = load("  access_log: { format: combined, to: stdout }\n")
            .unwrap()
            .server
            .access_log
            .unwrap();
        assert_eq!(
            (a.format, a.to),
            (AccessLogFormat::Combined, AccessLogTarget::Stdout)
        );
        let a = load("  access_log: { format: json, to: access.log }\n")
            .unwrap()
            .server
            .access_log
            .unwrap();
        assert_eq!(a.format, AccessLogFormat::Json);
        assert_eq!(a.to, AccessLogTarget::File("/tmp/access.log".into()));
        let text = "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\n  access_log: { format: json, to: access.log }\nroutes: []\n";
        let a = load_str(text, Path::new(""), "gateway.yaml")
            .unwrap()
            .server
            .access_log
            .unwrap();
        assert_eq!(a.to, AccessLogTarget::File("access.log".into()));
    }

    #[test]
    fn a_bad_access_log_is_refused_with_its_paths() {
        let errs =
            load("  access_log: { format: clf, to: /no/such/folder/access.log }\n").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["server.access_log.format", "server.access_log.to"],
            "{errs:?}"
        );
        assert!(
            errs[0].1.starts_with("expected json or combined"),
            "{errs:?}"
        );
        assert!(errs[1].1.contains("does not exist"), "{errs:?}");

        let errs = load("  access_log: {}\n").unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["server.access_log.format", "server.access_log.to"],
            "{errs:?}"
        );
        let errs = load("  access_log: { format: json, to: /tmp }\n").unwrap_err();
        assert!(errs[0].1.contains("is a folder"), "{errs:?}");
        let errs = load("  access_log: { format: json, to: stdout, level: info }\n").unwrap_err();
        assert_eq!(errs[0].0, "server.access_log.level", "{errs:?}");
    }
}
