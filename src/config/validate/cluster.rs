//! `cluster:`: the Redis URL (with `${VAR}` taken from the environment) or the Sentinels that
//! name its master, this node's name, the key prefix and the lease TTL.

use super::Validator;
use crate::config::model::{ClusterConfig, RedisAt, RedisTls, SentinelConfig};
use crate::config::raw::{RawCluster, RawRedisTls, RawSentinel};
use std::time::Duration;

const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

impl Validator<'_> {
    pub(super) fn cluster(&mut self, c: &RawCluster) -> ClusterConfig {
        let redis = match (&c.redis, &c.sentinel) {
            (Some(url), None) => RedisAt::Url(self.redis_url(url)),
            (None, Some(s)) => RedisAt::Sentinel(self.sentinel(s)),
            (Some(_), Some(_)) => {
                self.err(
                    "cluster.sentinel",
                    "give either `redis` (one Redis) or `sentinel` (a master Sentinel follows), not both",
                );
                RedisAt::Url(String::new())
            }
            (None, None) => {
                self.err(
                    "cluster.redis",
                    "missing: `redis: \"redis://HOST:6379/0\"`, or `sentinel: { master: NAME, addrs: [\"HOST:26379\"] }`",
                );
                RedisAt::Url(String::new())
            }
        };
        let tls = c.tls.as_ref().map(|t| self.redis_tls(t));
        if tls.is_some() {
            let tls_target = match &redis {
                RedisAt::Url(url) => url.starts_with("rediss://"),
                RedisAt::Sentinel(s) => s.tls,
            };
            if !tls_target {
                self.err(
                    "cluster.tls",
                    "applies to TLS toward Redis: a rediss:// URL, or `sentinel: { tls: true }`",
                );
            }
        }
        self.cluster_rest(c, redis, tls)
    }

    /// `cluster.tls`: PEM files, each read now (a missing or empty one is an error here).
    fn redis_tls(&mut self, t: &RawRedisTls) -> RedisTls {
        let mut pem = |key: &str, file: &Option<String>| -> Option<Vec<u8>> {
            let file = file.as_deref()?;
            let path = self.base_dir.join(file);
            match std::fs::read(&path) {
                Ok(b) if b.len() <= 1 << 20 && b.windows(11).any(|w| w == b"-----BEGIN ") => {
                    Some(b)
                }
                Ok(_) => {
                    self.err(
                        format!("cluster.tls.{key}"),
                        format!("{file:?} is not a PEM file"),
                    );
                    None
                }
                Err(e) => {
                    self.err(format!("cluster.tls.{key}"), format!("cannot read {file:?} (relative paths are from the config file's folder): {e}"));
                    None
                }
            }
        };
        let ca = pem("ca", &t.ca);
        let cert = pem("client_cert", &t.client_cert);
        let key = pem("client_key", &t.client_key);
        if t.client_cert.is_some() != t.client_key.is_some() {
            self.err("cluster.tls", "client_cert and client_key go together");
        }
        RedisTls {
            ca,
            client: cert.zip(key),
        }
    }

    /// `cluster.sentinel`: passwords may come from the environment (`${VAR}`).
    fn sentinel(&mut self, s: &RawSentinel) -> SentinelConfig {
        if !name_ok(&s.master) {
            self.err(
                "cluster.sentinel.master",
                format!(
                    "master name {:?} must be 1-64 characters of letters, digits, `.`, `_` and `-`",
                    s.master
                ),
            );
        }
        if s.addrs.is_empty() {
            self.err(
                "cluster.sentinel.addrs",
                "list at least one Sentinel as \"HOST:PORT\" (three, on three machines, for a quorum)",
            );
        }
        let mut addrs = Vec::new();
        for (i, a) in s.addrs.iter().enumerate() {
            match a
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            {
                Some((host, port)) if !host.is_empty() && port > 0 => {
                    addrs.push((host.trim_matches(['[', ']']).to_owned(), port))
                }
                _ => self.err(
                    format!("cluster.sentinel.addrs[{i}]"),
                    format!("{a:?} is not HOST:PORT, e.g. \"10.0.0.5:26379\""),
                ),
            }
        }
        let mut secret = |key: &str, v: &Option<String>| {
            v.as_deref().and_then(|v| match expand_env(v) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.err(format!("cluster.sentinel.{key}"), e);
                    None
                }
            })
        };
        let username = secret("username", &s.username);
        let password = secret("password", &s.password);
        let sentinel_password = secret("sentinel_password", &s.sentinel_password);
        SentinelConfig {
            master: s.master.clone(),
            addrs,
            username,
            password,
            sentinel_password,
            tls: s.tls.unwrap_or(false),
            db: s.db.unwrap_or(0),
        }
    }

    /// `cluster.redis`: a `redis://` or `rediss://` URL (`${VAR}` from the environment).
    fn redis_url(&mut self, raw: &str) -> String {
        let redis = match expand_env(raw) {
            Ok(url) => url,
            Err(e) => {
                self.err("cluster.redis", e);
                String::new()
            }
        };
        if !redis.is_empty() {
            let scheme = redis.split_once("://").map_or("", |(s, _)| s);
            if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
                self.err(
                    "cluster.redis",
                    format!("{:?} is not a Redis URL: expected redis://HOST:PORT/DB or rediss://... (TLS)", crate::config::model::redact_url(&redis)),
                );
            } else if let Err(e) = redis::Client::open(redis.as_str()) {
                self.err("cluster.redis", format!("invalid Redis URL: {e}"));
            }
        }
        redis
    }

    fn cluster_rest(
        &mut self,
        c: &RawCluster,
        redis: RedisAt,
        tls: Option<RedisTls>,
    ) -> ClusterConfig {
        let node = match &c.node {
            Some(n) => match expand_env(n) {
                Ok(n) => n,
                Err(e) => {
                    self.err("cluster.node", e);
                    String::new()
                }
            },
            None => default_node(),
        };
        if !name_ok(&node) {
            self.err(
                "cluster.node",
                format!("node name {node:?} must be 1-64 characters of letters, digits, `.`, `_` and `-`"),
            );
        }
        let prefix = c.prefix.clone().unwrap_or_else(|| "switchyard".into());
        if !name_ok(&prefix) {
            self.err(
                "cluster.prefix",
                format!("key prefix {prefix:?} must be 1-64 characters of letters, digits, `.`, `_` and `-`"),
            );
        }
        let lease_ttl = self.duration("cluster.lease_ttl".into(), &c.lease_ttl, DEFAULT_LEASE_TTL);
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&lease_ttl) {
            self.err(
                "cluster.lease_ttl",
                format!("lease_ttl {lease_ttl:?} must be between 1s and 60s: failover takes about this long, and it is renewed three times per TTL"),
            );
        }
        ClusterConfig {
            redis,
            tls,
            node,
            prefix,
            lease_ttl,
        }
    }
}

fn name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The host's name and a random suffix, so two instances on one host (or two pods restarted
/// with the same name) never share a node name.
fn default_node() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "switchyard".into());
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(55)
        .collect();
    format!("{host}-{:08x}", fastrand::u32(..))
}

/// Replaces every `${NAME}` with the environment variable NAME; an unset one is an error.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed `${{` in {text:?}"));
        };
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            return Err(format!("`${{{name}}}` is not an environment variable name"));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => return Err(format!("environment variable {name} is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_variables_are_expanded_and_unset_ones_refused() {
        std::env::set_var("SWITCHYARD_TEST_REDIS_HOST", "10.0.0.7");
        assert_eq!(
            expand_env("redis://${SWITCHYARD_TEST_REDIS_HOST}:6379/0").unwrap(),
            "redis://10.0.0.7:6379/0"
        );
        assert!(expand_env("redis://${SWITCHYARD_TEST_UNSET_VAR}/0")
            .unwrap_err()
            .contains("SWITCHYARD_TEST_UNSET_VAR is not set"));
        assert!(expand_env("redis://${oops").is_err());
    }

    #[test]
    fn default_node_names_differ_and_are_valid() {
        let (a, b) = (default_node(), default_node());
        assert_ne!(a, b);
        assert!(name_ok(&a), "{a}");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::load_str;
    use std::path::Path;

    fn errors(cluster: &str) -> Vec<(String, String)> {
        let text = format!(
            "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\n{cluster}routes:\n  - name: a\n    path: /a\n    backend: {{ builtin: clock }}\n"
        );
        match load_str(&text, Path::new("."), "t.yaml") {
            Ok(_) => Vec::new(),
            Err(e) => e.errors.into_iter().map(|e| (e.path, e.message)).collect(),
        }
    }

    #[test]
    fn a_bad_cluster_section_is_refused_with_its_paths() {
        let errs = errors(
            "cluster:\n  redis: \"http://10.0.0.1:6379\"\n  node: \"a b\"\n  lease_ttl: 500ms\n  colour: red\n",
        );
        let paths: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "cluster.redis",
                "cluster.node",
                "cluster.lease_ttl",
                "cluster.colour"
            ],
            "{errs:?}"
        );
        assert!(errs[0].1.contains("not a Redis URL"), "{errs:?}");
        let missing = errors("cluster:\n  node: a\n");
        assert_eq!(missing[0].0, "cluster.redis", "{missing:?}");
        assert!(missing[0].1.contains("sentinel"), "{missing:?}");
        let plain = errors("cluster:\n  redis: \"redis://r:6379/0\"\n  tls: {}\n");
        assert_eq!(plain[0].0, "cluster.tls", "{plain:?}");
        let both = errors("cluster:\n  redis: \"redis://r:6379/0\"\n  sentinel: { master: m, addrs: [\"s:26379\"] }\n");
        assert_eq!(both[0].0, "cluster.sentinel", "{both:?}");
        let bad =
            errors("cluster:\n  sentinel: { master: \"m m\", addrs: [\"s:26379\", \"nope\"] }\n");
        let paths: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["cluster.sentinel.master", "cluster.sentinel.addrs[1]"],
            "{bad:?}"
        );
    }

    #[test]
    fn a_sentinel_section_is_taken_and_its_passwords_never_shown() {
        let text = "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\ncluster:\n  sentinel: { master: main, addrs: [\"10.0.0.5:26379\", \"[::1]:26380\"], password: s3cret, sentinel_password: t0ken }\n  node: edge-a\nroutes: []\n";
        let cfg = load_str(text, Path::new("."), "t.yaml").unwrap();
        let c = cfg.cluster.expect("cluster: was given");
        let crate::config::model::RedisAt::Sentinel(s) = &c.redis else {
            panic!("a Sentinel: {c:?}");
        };
        assert_eq!(
            s.addrs,
            [("10.0.0.5".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert_eq!(s.password.as_deref(), Some("s3cret"));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert!(
            shown.contains("master \\\"main\\\" of Sentinel 10.0.0.5:26379"),
            "{shown}"
        );
    }

    #[test]
    fn a_good_cluster_section_is_taken_and_its_password_never_shown() {
        let text = "server:\n  listen:\n    - addr: \"127.0.0.1:0\"\ncluster:\n  redis: \"rediss://app:s3cret@redis.example:6380/2\"\n  node: edge-a\nroutes: []\n";
        let cfg = load_str(text, Path::new("."), "t.yaml").unwrap();
        let c = cfg.cluster.expect("cluster: was given");
        assert_eq!(
            (c.node.as_str(), c.prefix.as_str()),
            ("edge-a", "switchyard")
        );
        assert_eq!(c.lease_ttl, std::time::Duration::from_secs(5));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("app:***@redis.example"),
            "{shown}"
        );
        assert!(errors("").is_empty(), "no cluster: is fine");
    }
}
