//! The policy keys a route inherits from `defaults:` and may override: origins, cors, keepalive
//! and limits.

use super::Validator;
use crate::config::model::{
    Cors, Keepalive, Limits, DEFAULT_CORS_ALLOW_HEADERS, DEFAULT_CORS_MAX_AGE,
};
use crate::config::raw::{RawCors, RawKeepalive, RawLimits};
use crate::config::units::parse_size;
use std::time::Duration;

const MAX_MESSAGE_CAP: u64 = 64 << 20;
const MAX_SEND_QUEUE: usize = 1 << 20;

impl Validator<'_> {
    pub(super) fn origins(&mut self, at: &str, origins: &[String]) {
        for (i, o) in origins.iter().enumerate() {
            let host = o.split_once("://").map_or("", |(_, h)| h);
            // `*` only as a whole leading label: `https://*.example.com`.
            let wildcard_ok = match host.strip_prefix("*.") {
                Some(domain) => {
                    !domain.is_empty() && !domain.contains('*') && !domain.ends_with('.')
                }
                None => !host.contains('*'),
            };
            let ok = o == "*"
                || o == "null"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !host.is_empty()
                    && !o.ends_with('/')
                    && !host.contains('/')
                    && wildcard_ok);
            if !ok {
                self.err(
                    format!("{at}[{i}]"),
                    format!("invalid origin {o:?}: expected \"*\", \"null\" or scheme://host[:port] such as \"https://app.example.com\" or \"https://*.example.com\" (no path, no trailing slash)"),
                );
            }
        }
    }

    pub(super) fn cors(&mut self, at: &str, raw: Option<&RawCors>, origins: &[String]) -> Cors {
        let mut headers = |key: &str, list: Option<&Vec<String>>, default: &[&str]| {
            let names: Vec<String> = match list {
                Some(l) => l.clone(),
                None => default.iter().map(|s| s.to_string()).collect(),
            };
            let mut out = Vec::new();
            for (i, n) in names.iter().enumerate() {
                match http::HeaderName::from_bytes(n.as_bytes()) {
                    Ok(h) => out.push(h),
                    Err(_) => self.err(
                        format!("{at}.{key}[{i}]"),
                        format!("{n:?} is not a valid header name"),
                    ),
                }
            }
            out
        };
        let allow_headers = headers(
            "allow_headers",
            raw.and_then(|r| r.allow_headers.as_ref()),
            &DEFAULT_CORS_ALLOW_HEADERS,
        );
        let expose_headers = headers(
            "expose_headers",
            raw.and_then(|r| r.expose_headers.as_ref()),
            &[],
        );
        let credentials = raw.and_then(|r| r.credentials).unwrap_or(false);
        if credentials && origins.iter().any(|o| o == "*") {
            self.err(
                format!("{at}.credentials"),
                "cors.credentials: true with origins: [\"*\"] would let every web page read answers made with your users' cookies: list the origins instead",
            );
        }
        let max_age = self.duration(
            format!("{at}.max_age"),
            &raw.and_then(|r| r.max_age.clone()),
            DEFAULT_CORS_MAX_AGE,
        );
        Cors {
            credentials,
            max_age,
            allow_headers,
            expose_headers,
        }
    }

    pub(super) fn keepalive(
        &mut self,
        at: &str,
        raw: Option<&RawKeepalive>,
        base: &Keepalive,
    ) -> Keepalive {
        let Some(raw) = raw else { return base.clone() };
        let k = Keepalive {
            ping_interval: self.duration(
                format!("{at}.ping_interval"),
                &raw.ping_interval,
                base.ping_interval,
            ),
            pong_timeout: self.duration(
                format!("{at}.pong_timeout"),
                &raw.pong_timeout,
                base.pong_timeout,
            ),
            sse_heartbeat: self.duration(
                format!("{at}.sse_heartbeat"),
                &raw.sse_heartbeat,
                base.sse_heartbeat,
            ),
            poll_timeout: self.duration(
                format!("{at}.poll_timeout"),
                &raw.poll_timeout,
                base.poll_timeout,
            ),
            idle_timeout: self.duration(
                format!("{at}.idle_timeout"),
                &raw.idle_timeout,
                base.idle_timeout,
            ),
        };
        if !k.ping_interval.is_zero() && k.pong_timeout.is_zero() {
            self.err(
                format!("{at}.pong_timeout"),
                "pong_timeout must be above 0s while ping_interval is on (set ping_interval: 0s to turn pings off)",
            );
        }
        if k.poll_timeout.is_zero() || k.poll_timeout > Duration::from_secs(300) {
            self.err(
                format!("{at}.poll_timeout"),
                "poll_timeout must be between 1ms and 5m (clients and proxies on the way cut longer requests)",
            );
        }
        k
    }

    pub(super) fn limits(&mut self, at: &str, raw: Option<&RawLimits>, base: &Limits) -> Limits {
        let Some(raw) = raw else { return base.clone() };
        let max_message = match &raw.max_message {
            None => base.max_message,
            Some(s) => match parse_size(&s.0) {
                Ok(0) => {
                    self.err(format!("{at}.max_message"), "max_message must be above 0");
                    base.max_message
                }
                Ok(n) if n > MAX_MESSAGE_CAP => {
                    self.err(
                        format!("{at}.max_message"),
                        format!("max_message {n} is above the 64MiB cap"),
                    );
                    base.max_message
                }
                Ok(n) => n,
                Err(e) => {
                    self.err(format!("{at}.max_message"), e);
                    base.max_message
                }
            },
        };
        let max_header_bytes = match &raw.max_header_bytes {
            None => base.max_header_bytes,
            Some(v) => match parse_size(&v.0) {
                Ok(n) if (1024..=(1 << 20)).contains(&n) => n as usize,
                Ok(n) => {
                    self.err(
                        format!("{at}.max_header_bytes"),
                        format!("max_header_bytes must be between 1KiB and 1MiB (pingora's own cap), got {n}"),
                    );
                    base.max_header_bytes
                }
                Err(e) => {
                    self.err(format!("{at}.max_header_bytes"), e);
                    base.max_header_bytes
                }
            },
        };
        let send_queue = raw.send_queue.unwrap_or(base.send_queue);
        if send_queue == 0 || send_queue > MAX_SEND_QUEUE {
            self.err(
                format!("{at}.send_queue"),
                format!("send_queue must be between 1 and {MAX_SEND_QUEUE}, got {send_queue}"),
            );
        }
        let max_clients = raw.max_clients.unwrap_or(base.max_clients);
        if max_clients == 0 {
            self.err(format!("{at}.max_clients"), "max_clients must be above 0");
        }
        let max_channels = raw.max_channels.unwrap_or(base.max_channels);
        if max_channels == 0 {
            self.err(format!("{at}.max_channels"), "max_channels must be above 0");
        }
        Limits {
            max_channels,
            max_message,
            max_message_explicit: base.max_message_explicit || raw.max_message.is_some(),
            send_queue,
            max_clients,
            max_clients_per_ip: raw.max_clients_per_ip.unwrap_or(base.max_clients_per_ip),
            max_sessions_per_ip: raw.max_sessions_per_ip.unwrap_or(base.max_sessions_per_ip),
            max_header_bytes,
        }
    }
}
