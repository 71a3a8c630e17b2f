//! Checks the [`super::raw`] mirror and builds the typed [`super::model::Config`] from it,
//! collecting every problem with the YAML path it came from.
//!
//! One file per part of `gateway.yaml`: `server.rs` (`server:`), `policy.rs` (origins, cors,
//! keepalive and limits, under `defaults:` and on each route), `route.rs` (a route's name, host,
//! path and kind), `proxy.rs` (`proxy:`), `bridge.rs` (a bridged route's settings) and
//! `backend.rs` (`websocket:` and `sse:` backends). A check that fails records its error and goes
//! on with a default, so one run finds every problem; [`Validator::validate`] returns the config
//! only when there was none.

mod backend;
mod bridge;
mod cluster;
mod policy;
mod proxy;
mod route;
mod server;
mod tls;

use super::model::{Config, HostPattern, Keepalive, Limits};
use super::raw::{RawCluster, RawPolicy, RawRoute, RawServer, Scalar};
use super::units::parse_duration;
use super::ConfigError;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Parsed sections, each `None` when it failed structurally (its errors are already recorded).
pub struct RawParts {
    pub server: Option<RawServer>,
    pub cluster: Option<RawCluster>,
    pub defaults: RawPolicy,
    pub routes: Vec<Option<RawRoute>>,
}

pub struct Validator<'a> {
    base_dir: &'a Path,
    pub errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub fn new(base_dir: &'a Path, errors: Vec<ConfigError>) -> Self {
        Self { base_dir, errors }
    }

    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Reports every key of `keys` that is set, for the same reason.
    fn misplaced(&mut self, at: &str, keys: &[(&str, bool)], why: &str) {
        for (key, set) in keys {
            if *set {
                self.err(format!("{at}.{key}"), format!("`{key}` {why}"));
            }
        }
    }

    fn duration(&mut self, path: String, v: &Option<Scalar>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(&s.0).unwrap_or_else(|e| {
                self.err(path, e);
                default
            }),
        }
    }

    /// Checks every section; returns the config only when nothing at all was wrong.
    pub fn validate(mut self, parts: RawParts) -> Result<Config, Vec<ConfigError>> {
        let server = parts.server.as_ref().map(|s| self.server(s));
        let cluster = parts.cluster.as_ref().map(|c| self.cluster(c));
        let defaults_origins = parts.defaults.origins.clone().unwrap_or_default();
        self.origins("defaults.origins", &defaults_origins);
        let defaults_keepalive = self.keepalive(
            "defaults.keepalive",
            parts.defaults.keepalive.as_ref(),
            &Keepalive::default(),
        );
        let defaults_limits = self.limits(
            "defaults.limits",
            parts.defaults.limits.as_ref(),
            &Limits::default(),
        );

        let mut routes = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut places: HashMap<(HostPattern, String), usize> = HashMap::new();
        for (i, raw) in parts.routes.iter().enumerate() {
            let Some(raw) = raw else { continue };
            let at = format!("routes[{i}]");
            if let Some(first) = names.insert(raw.name.clone(), i) {
                self.err(
                    format!("{at}.name"),
                    format!(
                        "duplicate route name {:?} (already used by routes[{first}]); names must be unique",
                        raw.name
                    ),
                );
            }
            let Some(route) = self.route(
                &at,
                raw,
                &defaults_origins,
                &defaults_keepalive,
                &defaults_limits,
            ) else {
                continue;
            };
            // Captures match whatever their names: /rooms/{room} and /rooms/{id} are one place.
            let shape = match &route.channels {
                Some(c) => c
                    .segments
                    .iter()
                    .map(|s| match s {
                        super::model::PathSegment::Literal(l) => format!("/{l}"),
                        super::model::PathSegment::Capture(_) => "/{}".to_owned(),
                    })
                    .collect(),
                None => route.path.clone(),
            };
            let key = (route.host.clone(), shape);
            if let Some(first) = places.insert(key, i) {
                self.err(
                    format!("{at}.path"),
                    format!(
                        "duplicate route: host {:?} path {:?} is already served by routes[{first}]; give one of them another path or host",
                        raw.host.as_deref().unwrap_or("*"),
                        route.path
                    ),
                );
            }
            routes.push(route);
        }
        if self.errors.is_empty() {
            if let Some(server) = server {
                return Ok(Config {
                    server,
                    cluster,
                    routes,
                });
            }
        }
        Err(self.errors)
    }
}
