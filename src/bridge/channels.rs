//! Channels: one route, many feeds. A route whose path captures segments (`/rooms/{room}`)
//! serves one feed per channel key, each a [`Bridge`] of its own: its backend connection at
//! the URL the captures fill in, its replay ring, ids and cursors, its SockJS and per-client
//! sessions. A channel opens with its first client or publish, and closes `backend_linger`
//! after its last one, once its backend connection has closed.
//!
//! ```text
//! GET /rooms/lobby --> key "lobby" --> Channels --> Bridge "lobby" --> ws://feeds/rooms/lobby
//!                                         |
//!                                         +-------> Bridge "kitchen" --> ws://feeds/rooms/kitchen
//! ```
//!
//! Metrics stay per route (a label per channel would let clients choose the cardinality).

use super::Bridge;
use crate::config::{placeholders, BridgeRoute, ChannelPath, PathSegment, RemoteBackend};
use crate::metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// A channel named by a request's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKey {
    /// The captured values, percent-decoded, in path order.
    pub values: Vec<String>,
    /// The values joined by `/` (which no value holds): the channel's name.
    pub name: Box<str>,
}

/// Why a request names no channel (404), or why its channel cannot open (503).
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The path does not fit the route, or a captured value is not a channel name.
    BadName(String),
    /// The route has `max_channels` open.
    Full(usize),
}

/// Reads the channel key from `path`, against the route's captures. Each captured value is
/// percent-decoded once and must be a safe name: not `.` or `..`, no `/`, NUL or control
/// character, and matching the route's `channel_pattern`.
pub fn key(channels: &ChannelPath, path: &str) -> Result<ChannelKey, ChannelError> {
    let len = crate::router::matched_len(channels, path)
        .ok_or_else(|| ChannelError::BadName("the path does not fit the route".into()))?;
    let raw: Vec<&str> = channels
        .segments
        .iter()
        .zip(path[..len].split('/').skip(1))
        .filter(|(s, _)| matches!(s, PathSegment::Capture(_)))
        .map(|(_, raw)| raw)
        .collect();
    key_of(channels, &raw)
}

/// The channel key of the raw (still percent-encoded) captured values, one per capture.
pub fn key_of(channels: &ChannelPath, raw: &[&str]) -> Result<ChannelKey, ChannelError> {
    let names: Vec<&str> = channels.names().collect();
    if raw.len() != names.len() {
        return Err(ChannelError::BadName(format!(
            "the route captures {} value(s) ({}), {} given",
            names.len(),
            names.join(", "),
            raw.len()
        )));
    }
    let mut values = Vec::with_capacity(raw.len());
    for (name, raw) in names.iter().zip(raw) {
        let value = decode(raw)
            .ok_or_else(|| ChannelError::BadName(format!("{{{name}}}: invalid escape")))?;
        let unsafe_name = value.is_empty()
            || value == "."
            || value == ".."
            || value.chars().any(|c| c == '/' || c.is_control());
        if unsafe_name || !channels.pattern.is_match(&value) {
            return Err(ChannelError::BadName(format!(
                "{{{name}}} is not a channel name this route takes (it must match {})",
                channels.pattern.as_str()
            )));
        }
        values.push(value);
    }
    Ok(ChannelKey {
        name: values.join("/").into(),
        values,
    })
}

/// `%XX` escapes decoded once; None for a malformed escape or bytes that are not UTF-8.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `template` with each `{name}` replaced by its value, percent-encoded but for RFC 3986's
/// unreserved characters (so a value is one path segment, one query value, or plain header
/// text, wherever it lands).
pub fn fill(template: &str, names: &[&str], values: &[String]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut at = 0;
    for (range, name) in placeholders(template) {
        let Some(i) = names.iter().position(|n| *n == name) else {
            continue;
        };
        out.push_str(&template[at..range.start]);
        for b in values[i].bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        at = range.end;
    }
    out.push_str(&template[at..]);
    out
}

/// A route's backend settings for one channel: its URL, `post:` and header values filled in
/// (the route's own, shared, when none of them uses a capture).
pub fn channel_spec(
    spec: &Arc<BridgeRoute>,
    names: &[&str],
    values: &[String],
) -> Arc<BridgeRoute> {
    let templated = spec.remote().is_some_and(|r| {
        let mut texts = vec![r.path.as_str()];
        if let Some(p) = &r.post {
            texts.push(p.path.as_str());
        }
        texts.extend(r.headers.iter().filter_map(|(_, v)| v.to_str().ok()));
        texts.iter().any(|t| !placeholders(t).is_empty())
    });
    if !templated {
        return spec.clone();
    }
    let mut spec = (**spec).clone();
    let fill_remote = |r: &mut RemoteBackend| {
        r.url = fill(&r.url, names, values);
        r.path = fill(&r.path, names, values);
        if let Some(p) = &mut r.post {
            p.url = fill(&p.url, names, values);
            p.path = fill(&p.path, names, values);
        }
        for (_, v) in &mut r.headers {
            if let Ok(text) = v.to_str() {
                if let Ok(filled) = http::HeaderValue::from_str(&fill(text, names, values)) {
                    *v = filled;
                }
            }
        }
    };
    match &mut spec.backend {
        crate::config::BackendSpec::WebSocket(r) | crate::config::BackendSpec::Sse(r) => {
            fill_remote(r)
        }
        _ => {}
    }
    Arc::new(spec)
}

/// The open channels of one route.
pub struct Channels {
    map: Mutex<HashMap<Box<str>, Arc<Bridge>>>,
    /// A task closes finished channels while any is open.
    sweeping: AtomicBool,
    route: Box<str>,
}

impl Drop for Channels {
    /// A table a reload replaced takes its channels out of `switchyard_channels_open` (their
    /// clients were told to go; what they still hold is not the route's any more). A route
    /// the reload removed has no series left to change.
    fn drop(&mut self) {
        let left = self.map.get_mut().map_or(0, |m| m.len());
        if left > 0 {
            metrics::sub_if_exported(&metrics::CHANNELS_OPEN, &self.route, left as i64);
        }
    }
}

impl Channels {
    pub fn new(route: &str) -> Arc<Self> {
        Arc::new(Self {
            map: Mutex::new(HashMap::new()),
            sweeping: AtomicBool::new(false),
            route: route.into(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Arc<Bridge>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The open channels with their subscribers here, busiest first, at most `n`.
    pub fn busiest(&self, n: usize) -> Vec<(Box<str>, usize)> {
        let mut all: Vec<(Box<str>, usize)> = self
            .lock()
            .iter()
            .map(|(k, b)| (k.clone(), b.hub().map_or(0, |h| h.subscribers())))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The channel `key` of `parent`'s route: the open one, or a new one when there is room.
    pub fn get_or_open(
        self: &Arc<Self>,
        parent: &Bridge,
        key: &ChannelKey,
    ) -> Result<Arc<Bridge>, ChannelError> {
        let route = parent.route.name.as_str();
        let mut map = self.lock();
        if let Some(b) = map.get(&key.name) {
            return Ok(b.clone());
        }
        let max = parent.route.limits.max_channels;
        if map.len() >= max {
            drop(map);
            metrics::CHANNEL_EVENTS
                .with_label_values(&[route, "refused"])
                .inc();
            return Err(ChannelError::Full(max));
        }
        let channels = parent.route.channels.as_ref().expect("a channel route");
        let names: Vec<&str> = channels.names().collect();
        let spec = channel_spec(&parent.spec, &names, &key.values);
        let child = Arc::new(parent.channel_bridge(spec, key));
        map.insert(key.name.clone(), child.clone());
        drop(map);
        metrics::CHANNELS_OPEN.with_label_values(&[route]).inc();
        metrics::CHANNEL_EVENTS
            .with_label_values(&[route, "opened"])
            .inc();
        log::debug!("route {route}: channel {} opened", key.name);
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let every =
                (parent.spec.linger / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
            tokio::spawn(sweep(
                Arc::downgrade(self),
                every,
                parent.spec.linger,
                route.into(),
            ));
        }
        Ok(child)
    }

    /// The open channel `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<Bridge>> {
        self.lock().get(name).cloned()
    }

    /// Closes the channels nobody uses: no client holds them, no session or subscriber is
    /// left, nothing was published for `linger`, and their backend connection has closed.
    /// Returns how many are left open.
    fn close_finished(&self, linger: Duration, route: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        // A channel only the table holds can gain no client while the lock is held: a client
        // takes its channel under this lock.
        map.retain(|_, b| Arc::strong_count(b) > 1 || !b.finished(linger));
        let closed = before - map.len();
        let left = map.len();
        drop(map);
        if closed > 0 {
            metrics::CHANNELS_OPEN
                .with_label_values(&[route])
                .sub(closed as i64);
            metrics::CHANNEL_EVENTS
                .with_label_values(&[route, "closed"])
                .inc_by(closed as u64);
            log::debug!("route {route}: {closed} channel(s) closed after backend_linger");
        }
        left
    }

    /// Retires every open channel (the route was removed by a reload).
    pub fn retire_all(&self) {
        let all: Vec<Arc<Bridge>> = self.lock().values().cloned().collect();
        for b in all {
            b.retire();
        }
    }
}

/// Closes finished channels every `every` while the table lives and has channels open.
async fn sweep(channels: Weak<Channels>, every: Duration, linger: Duration, route: Box<str>) {
    loop {
        tokio::time::sleep(every).await;
        let Some(c) = channels.upgrade() else {
            return;
        };
        if c.close_finished(linger, &route) == 0 {
            // Started again by the next channel to open.
            c.sweeping.store(false, Ordering::Release);
            // One may have opened between the count and the flag: then carry on.
            if c.is_empty() || c.sweeping.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms(pattern: &str) -> ChannelPath {
        ChannelPath {
            segments: vec![
                PathSegment::Literal("rooms".into()),
                PathSegment::Capture("room".into()),
            ],
            pattern: regex::Regex::new(&format!("^(?:{pattern})$")).unwrap(),
        }
    }

    #[test]
    fn a_key_is_the_decoded_captures() {
        let c = rooms(crate::config::DEFAULT_CHANNEL_PATTERN);
        assert_eq!(&*key(&c, "/rooms/lobby").unwrap().name, "lobby");
        assert_eq!(&*key(&c, "/rooms/a%2Db/123/xyz/xhr").unwrap().name, "a-b");
        assert!(key(&c, "/rooms").is_err());
        assert!(key_of(&c, &["a", "b"]).is_err());
    }

    #[test]
    fn hostile_names_are_refused() {
        let c = rooms(crate::config::DEFAULT_CHANNEL_PATTERN);
        let long = format!("/rooms/{}", "a".repeat(129));
        for path in [
            "/rooms/a%2Fb",
            "/rooms/..",
            "/rooms/%2E%2E",
            "/rooms/.",
            "/rooms/a%00",
            "/rooms/%zz",
            "/rooms/%E2%82%AC",
            "/rooms/a%",
            long.as_str(),
            "/rooms/a b",
        ] {
            assert!(
                matches!(key(&c, path), Err(ChannelError::BadName(_))),
                "{path} was taken"
            );
        }
        assert!(key(&c, &format!("/rooms/{}", "a".repeat(128))).is_ok());
        // A pattern that lets more in still never takes a slash, a dot segment or NUL.
        let loose = rooms(".*");
        for path in ["/rooms/a%2Fb", "/rooms/%2E%2E", "/rooms/a%00b"] {
            assert!(key(&loose, path).is_err(), "{path} was taken");
        }
        assert_eq!(&*key(&loose, "/rooms/%E2%82%AC").unwrap().name, "€");
    }

    #[test]
    fn values_are_percent_encoded_where_they_land() {
        let names = ["room", "tenant"];
        let values = ["a b/€".to_owned(), "t1".to_owned()];
        assert_eq!(
            fill("/feeds/{tenant}/{room}?r={room}&x={other}", &names, &values),
            "/feeds/t1/a%20b%2F%E2%82%AC?r=a%20b%2F%E2%82%AC&x={other}"
        );
    }
}
