//! Host + longest path-prefix matching, compiled once per config generation.
//!
//! Routes are grouped by host pattern; a request host picks exact names first, then the most
//! specific `*.suffix`, then `*`. Within a group, prefixes match whole path segments (`/api`
//! matches `/api` and `/api/x`, never `/apix`) and the longest one wins.
//!
//! A path with captures (`/rooms/{room}`) matches any one non-empty segment where it captures.
//! Its length is that of the request path it matched, so the longest match still wins; on a
//! tie, a literal segment wins over a capture at the first depth where two routes differ.

use crate::config::{ChannelPath, HostPattern, PathSegment, Route};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct PathTable<T> {
    /// Sorted by prefix length, longest first.
    entries: Vec<(String, Arc<T>)>,
    /// Routes whose paths capture segments.
    patterns: Vec<Arc<T>>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            patterns: Vec::new(),
        }
    }
}

impl<T: AsRef<Route>> PathTable<T> {
    fn insert(&mut self, route: Arc<T>) {
        if (*route).as_ref().channels.is_some() {
            self.patterns.push(route);
            return;
        }
        self.entries.push(((*route).as_ref().path.clone(), route));
        self.entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
    }

    fn find(&self, path: &str) -> Option<&Arc<T>> {
        let literal = self
            .entries
            .iter()
            .find(|(prefix, _)| segment_prefix(prefix, path));
        if self.patterns.is_empty() {
            return literal.map(|(_, r)| r);
        }
        // The literal route's length, compared as a pattern's: the request bytes it matched.
        let mut best: Option<(usize, Option<&ChannelPath>, &Arc<T>)> =
            literal.map(|(prefix, r)| (if prefix == "/" { 0 } else { prefix.len() }, None, r));
        for route in &self.patterns {
            let channels = (**route)
                .as_ref()
                .channels
                .as_ref()
                .expect("patterns capture");
            let Some(len) = matched_len(channels, path) else {
                continue;
            };
            let better = match &best {
                None => true,
                Some((l, _, _)) if len != *l => len > *l,
                // A literal route wins every tie.
                Some((_, None, _)) => false,
                Some((_, Some(other), _)) => more_literal(channels, other),
            };
            if better {
                best = Some((len, Some(channels), route));
            }
        }
        best.map(|(_, _, r)| r)
    }
}

/// The length of the request path's prefix `channels` matches: its segments, each literal
/// equal and each capture non-empty. None when it does not match.
pub fn matched_len(channels: &ChannelPath, path: &str) -> Option<usize> {
    let mut at = 0;
    for segment in &channels.segments {
        let rest = path[at..].strip_prefix('/')?;
        let len = rest.find('/').unwrap_or(rest.len());
        let value = &rest[..len];
        let ok = match segment {
            PathSegment::Literal(l) => value == l,
            PathSegment::Capture(_) => !value.is_empty(),
        };
        if !ok {
            return None;
        }
        at += 1 + len;
    }
    Some(at)
}

/// True when `a` has a literal segment where `b` captures, at the first depth they differ.
fn more_literal(a: &ChannelPath, b: &ChannelPath) -> bool {
    for (x, y) in a.segments.iter().zip(&b.segments) {
        match (x, y) {
            (PathSegment::Literal(_), PathSegment::Capture(_)) => return true,
            (PathSegment::Capture(_), PathSegment::Literal(_)) => return false,
            _ => {}
        }
    }
    false
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// Routes by host and path; `T` is whatever the caller attaches to a route (the route itself,
/// or its runtime state).
#[derive(Debug)]
pub struct Router<T> {
    exact: HashMap<String, PathTable<T>>,
    /// `(".example.com", table)`, longest suffix first.
    suffix: Vec<(String, PathTable<T>)>,
    any: PathTable<T>,
}

impl<T: AsRef<Route>> Router<T> {
    pub fn new(routes: &[Arc<T>]) -> Self {
        let mut r = Router {
            exact: HashMap::new(),
            suffix: Vec::new(),
            any: PathTable::default(),
        };
        for route in routes {
            match &(**route).as_ref().host {
                HostPattern::Any => r.any.insert(route.clone()),
                HostPattern::Exact(h) => {
                    r.exact.entry(h.clone()).or_default().insert(route.clone())
                }
                HostPattern::Suffix(s) => match r.suffix.iter_mut().find(|(k, _)| k == s) {
                    Some((_, t)) => t.insert(route.clone()),
                    None => {
                        let mut t = PathTable::default();
                        t.insert(route.clone());
                        r.suffix.push((s.clone(), t));
                    }
                },
            }
        }
        r.suffix.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        r
    }

    /// `host` is the request's Host header (port and case are normalised here); `path` has no query.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<T>> {
        let host = host.map(normalize_host);
        if let Some(h) = &host {
            if let Some(r) = self.exact.get(h.as_str()).and_then(|t| t.find(path)) {
                return Some(r);
            }
            for (suffix, table) in &self.suffix {
                if h.len() > suffix.len() && h.ends_with(suffix.as_str()) {
                    if let Some(r) = table.find(path) {
                        return Some(r);
                    }
                }
            }
        }
        self.any.find(path)
    }
}

/// Lower-cases and strips the port and a trailing dot: `API.Example.com.:8080` -> `api.example.com`.
fn normalize_host(host: &str) -> String {
    let h = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn router(yaml_routes: &str) -> Router<Route> {
        let text = format!(
            "server: {{ listen: [ {{ addr: \"127.0.0.1:0\" }} ] }}\nroutes:\n{yaml_routes}"
        );
        let cfg = load_str(&text, Path::new("."), "t").unwrap();
        let routes: Vec<Arc<Route>> = cfg.routes.into_iter().map(Arc::new).collect();
        Router::new(&routes)
    }

    fn name<'a>(r: &'a Router<Route>, host: Option<&str>, path: &str) -> Option<&'a str> {
        r.find(host, path).map(|r| r.name.as_str())
    }

    #[test]
    fn longest_segment_prefix_wins() {
        let r = router(
            "  - { name: root, path: /, backend: { builtin: clock } }\n  - { name: api, path: /api, backend: { builtin: clock } }\n  - { name: v2, path: /api/v2/, backend: { builtin: clock } }\n",
        );
        assert_eq!(name(&r, None, "/"), Some("root"));
        assert_eq!(name(&r, None, "/api"), Some("api"));
        assert_eq!(name(&r, None, "/api/x"), Some("api"));
        assert_eq!(name(&r, None, "/apix"), Some("root"));
        assert_eq!(name(&r, None, "/api/v2"), Some("v2"));
        assert_eq!(name(&r, None, "/api/v2/deep/er"), Some("v2"));
        assert_eq!(name(&r, None, "/api/v22"), Some("api"));
    }

    #[test]
    fn host_exact_then_suffix_then_any() {
        let r = router(
            "  - { name: any, path: /x, backend: { builtin: clock } }\n  - { name: wild, host: \"*.example.com\", path: /x, backend: { builtin: clock } }\n  - { name: deep, host: \"*.eu.example.com\", path: /x, backend: { builtin: clock } }\n  - { name: exact, host: API.example.com, path: /x, backend: { builtin: clock } }\n",
        );
        assert_eq!(name(&r, Some("api.example.com"), "/x"), Some("exact"));
        assert_eq!(name(&r, Some("Api.Example.Com:8080"), "/x"), Some("exact"));
        assert_eq!(name(&r, Some("www.example.com"), "/x"), Some("wild"));
        assert_eq!(name(&r, Some("a.eu.example.com"), "/x"), Some("deep"));
        assert_eq!(name(&r, Some("example.com"), "/x"), Some("any"));
        assert_eq!(name(&r, Some("other.org"), "/x"), Some("any"));
        assert_eq!(name(&r, None, "/x"), Some("any"));
        assert_eq!(name(&r, Some("api.example.com"), "/y"), None);
    }

    #[test]
    fn host_specific_table_falls_back_to_any_for_other_paths() {
        let r = router(
            "  - { name: any, path: /, backend: { builtin: clock } }\n  - { name: exact, host: a.test, path: /only, backend: { builtin: clock } }\n",
        );
        assert_eq!(name(&r, Some("a.test"), "/only/x"), Some("exact"));
        assert_eq!(name(&r, Some("a.test"), "/other"), Some("any"));
    }

    #[test]
    fn captures_match_one_segment_and_the_longest_match_wins_with_literals_winning_ties() {
        let r = router(
            "  - { name: root, path: /, backend: { builtin: clock } }\n  - { name: rooms, path: /rooms, backend: { builtin: clock } }\n  - { name: room, path: \"/rooms/{room}\", backend: { publish: {} } }\n  - { name: lobby, path: /rooms/lobby, backend: { builtin: clock } }\n  - { name: feed, path: \"/t/{tenant}/feeds/{feed}\", backend: { publish: {} } }\n  - { name: admin, path: \"/t/admin/feeds/{feed}\", backend: { publish: {} } }\n",
        );
        assert_eq!(name(&r, None, "/rooms"), Some("rooms"));
        assert_eq!(name(&r, None, "/rooms/"), Some("rooms"));
        assert_eq!(name(&r, None, "/rooms/a"), Some("room"));
        assert_eq!(name(&r, None, "/rooms/a/123/abc/xhr"), Some("room"));
        assert_eq!(name(&r, None, "/rooms/lobby"), Some("lobby"));
        assert_eq!(name(&r, None, "/rooms/lobby/x"), Some("lobby"));
        assert_eq!(name(&r, None, "/roomsx/a"), Some("root"));
        assert_eq!(name(&r, None, "/t/acme/feeds/f1"), Some("feed"));
        assert_eq!(name(&r, None, "/t/admin/feeds/f1"), Some("admin"));
        assert_eq!(name(&r, None, "/t/acme/feeds"), Some("root"));
        assert_eq!(name(&r, None, "/t//feeds/f1"), Some("root"));
    }

    #[test]
    fn ipv6_host_port_is_stripped() {
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("Example.COM."), "example.com");
    }
}
