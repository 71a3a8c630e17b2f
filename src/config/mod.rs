//! `gateway.yaml` in, the typed [`Config`] the gateway runs on out.
//!
//! ```text
//! text -> serde_yaml::Value -> raw::* (per section, per route) -> validate -> model::Config
//! ```
//!
//! - [`raw`] is the stable UI: a serde mirror of `gateway.yaml`, every struct denying unknown
//!   keys. A change there is a change to what operators write.
//! - [`validate`] checks every value and how keys combine, fills in defaults and builds the
//!   model.
//! - [`model`] is what the code uses: `crate::config::{Config, Route, BackendSpec, ..}` are
//!   re-exported from it. It is the buffer between the YAML and the gateway's internals, free to
//!   change shape without any config file changing.
//! - [`locate`] turns a YAML path back into a line; [`units`] parses `20s` and `1MiB`.
//!
//! [`load_file`] and [`load_str`] run the chain. Sections and routes are deserialized one by one,
//! and an unknown key is reported and then set aside, so a single run lists every problem in the
//! file, each with its YAML path and line.

pub mod locate;
pub mod model;
pub mod raw;
pub mod units;
pub mod validate;

pub use model::*;

use locate::LineIndex;
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::fmt;
use std::path::Path;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// YAML path, e.g. `routes[1].keepalive.ping_interval`; empty for the whole document.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.source,
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            write!(f, "  {}", self.source)?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
            }
            if e.path.is_empty() {
                writeln!(f, ": {}", e.message)?;
            } else {
                writeln!(f, ": {}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads and validates a config file. Relative paths inside it (TLS files) resolve from its folder.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = read_file(path).map_err(|e| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            path: String::new(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        }],
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    load_str(&text, base, &source)
}

/// The largest config file read: far above any real one (a thousand routes are ~300 KiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// How long reading the config file may take before the read is given up.
pub const READ_TIME_BOX: std::time::Duration = std::time::Duration::from_secs(5);

/// A read of the config file that has not returned yet: while one hangs (a stuck network
/// filesystem), the next is refused at once instead of stacking threads behind it.
static READ_IN_FLIGHT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads the config file as UTF-8 text, if it is a regular file of at most [`MAX_FILE_BYTES`]
/// read within [`READ_TIME_BOX`]. A symlink is followed to what it names: `/dev/zero`, a FIFO,
/// a directory or a 200 MB file is refused with a reason instead of being read (or waited on)
/// without end.
pub fn read_file(path: &Path) -> Result<String, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let owned = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("config read".into())
        .spawn(move || {
            let _ = tx.send(read_unboxed(&owned));
        });
    if let Err(e) = spawned {
        return Err(format!("cannot start its read: {e}"));
    }
    match rx.recv_timeout(READ_TIME_BOX) {
        Ok(read) => read,
        Err(_) => Err(format!("not read within {READ_TIME_BOX:?}")),
    }
}

/// [`read_file`] without its time box, for a caller that boxes the read itself (the config
/// watcher, on tokio's blocking pool, so that a read every tick starts no thread of its own).
pub fn read_unboxed(path: &Path) -> Result<String, String> {
    use std::sync::atomic::Ordering;
    if READ_IN_FLIGHT.swap(true, Ordering::SeqCst) {
        return Err("an earlier read of it has not returned yet (is its filesystem stuck?)".into());
    }
    let read = read_regular(path);
    READ_IN_FLIGHT.store(false, Ordering::SeqCst);
    read
}

fn read_regular(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Not blocking on open: a FIFO without a writer would wait forever here.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        return Err(format!("it is {what}"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES} a config may have",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // A file that grows while it is read is cut at the cap and refused.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "it grew past the {MAX_FILE_BYTES} bytes a config may have while it was read"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".into())
}

/// Validates config text. `source` names it in messages; `base_dir` resolves relative files.
pub fn load_str(text: &str, base_dir: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let fail = |errors: Vec<ConfigError>| ConfigErrors {
        source: source.to_owned(),
        errors,
    };
    let doc: Value = serde_yaml::from_str(text).map_err(|e| {
        fail(vec![ConfigError {
            path: String::new(),
            // The end of a text without a final line break is marked on the line after it:
            // point at the text's last line instead.
            line: e.location().map(|l| l.line().min(locate::line_count(text))),
            message: format!("not valid YAML: {e}"),
        }])
    })?;
    let lines = LineIndex::new(text);
    let mut errors = Vec::new();
    let Value::Mapping(top) = doc else {
        return Err(fail(vec![ConfigError {
            path: String::new(),
            line: None,
            message: "the config must be a mapping with `server:`, `defaults:` and `routes:`"
                .into(),
        }]));
    };
    let mut server_node = None;
    let mut defaults_node = None;
    let mut routes_node = None;
    let mut cluster_node = None;
    for (k, v) in top {
        match k.as_str() {
            Some("server") => server_node = Some(v),
            Some("defaults") => defaults_node = Some(v),
            Some("routes") => routes_node = Some(v),
            Some("cluster") => cluster_node = Some(v),
            _ => errors.push(ConfigError {
                path: key_text(&k),
                line: None,
                message: format!(
                    "unknown key `{}`, expected one of `server`, `cluster`, `defaults`, `routes`",
                    key_text(&k)
                ),
            }),
        }
    }
    let server = match server_node {
        Some(v) => parse_node::<raw::RawServer>(v, "server", &mut errors),
        None => {
            errors.push(ConfigError {
                path: "server".into(),
                line: None,
                message: "missing `server:` section (at least `server: { listen: [ { addr: \"127.0.0.1:8080\" } ] }`)".into(),
            });
            None
        }
    };
    let defaults = match defaults_node {
        Some(Value::Null) | None => raw::RawPolicy::default(),
        Some(v) => parse_node::<raw::RawPolicy>(v, "defaults", &mut errors).unwrap_or_default(),
    };
    let routes = match routes_node {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| parse_node::<raw::RawRoute>(v, &format!("routes[{i}]"), &mut errors))
            .collect(),
        Some(_) => {
            errors.push(ConfigError {
                path: "routes".into(),
                line: None,
                message: "`routes` must be a list of routes (`- name: ..`)".into(),
            });
            Vec::new()
        }
    };
    let cluster = match cluster_node {
        Some(Value::Null) | None => None,
        Some(v) => parse_node::<raw::RawCluster>(v, "cluster", &mut errors),
    };
    let parts = validate::RawParts {
        server,
        cluster,
        defaults,
        routes,
    };
    validate::Validator::new(base_dir, errors)
        .validate(parts)
        .map_err(|mut errors| {
            for e in &mut errors {
                if e.line.is_none() {
                    e.line = lines.line_of(&e.path);
                }
            }
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            fail(errors)
        })
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => rest.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        _ => format!("{base}.{rest}"),
    }
}

/// Deserializes one node. An unknown key is recorded, removed and the node tried again, so the
/// rest of the node is still checked; any other structural error ends this node.
fn parse_node<T: DeserializeOwned>(
    mut node: Value,
    base: &str,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    const MAX_UNKNOWN_KEYS_PER_NODE: usize = 32;
    for _ in 0..MAX_UNKNOWN_KEYS_PER_NODE {
        let err = match serde_path_to_error::deserialize::<_, T>(node.clone()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let segments: Vec<serde_path_to_error::Segment> = err.path().iter().cloned().collect();
        let message = err.into_inner().to_string();
        if let Some(field) = unknown_field(&message) {
            // serde_path_to_error may or may not include the unknown key itself in the path.
            let parent_segments = match segments.last() {
                Some(serde_path_to_error::Segment::Map { key }) if key == &field => {
                    &segments[..segments.len() - 1]
                }
                _ => &segments[..],
            };
            let parent_path = render(parent_segments);
            errors.push(ConfigError {
                path: join(&join(base, &parent_path), &field),
                line: None,
                message,
            });
            if !remove_key(&mut node, parent_segments, &field) {
                return None;
            }
            continue;
        }
        errors.push(ConfigError {
            path: join(base, &render(&segments)),
            line: None,
            message,
        });
        return None;
    }
    None
}

fn render(segments: &[serde_path_to_error::Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            other => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&other.to_string());
            }
        }
    }
    out
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_owned())
}

fn remove_key(node: &mut Value, path: &[serde_path_to_error::Segment], key: &str) -> bool {
    let mut cur = node;
    for seg in path {
        cur = match (seg, cur) {
            (serde_path_to_error::Segment::Seq { index }, Value::Sequence(items)) => {
                match items.get_mut(*index) {
                    Some(v) => v,
                    None => return false,
                }
            }
            (serde_path_to_error::Segment::Map { key }, Value::Mapping(m)) => {
                match m.get_mut(key.as_str()) {
                    Some(v) => v,
                    None => return false,
                }
            }
            _ => return false,
        };
    }
    match cur {
        Value::Mapping(m) => m.remove(key).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config` fuzz target: YAML cut short on its only line was reported on
    /// line 2, a line the file does not have.
    #[test]
    fn a_yaml_error_at_the_end_points_at_a_line_of_the_text() {
        for (text, line) in [
            ("&se [", 1),
            ("a: [", 1),
            ("a: 1\nb: [", 2),
            ("a: 1\rb: [", 2),
        ] {
            let e = load_str(text, Path::new("."), "t.yaml").unwrap_err();
            assert_eq!(e.errors[0].line, Some(line), "{text:?}: {e}");
        }
    }

    const BAD: &str = r#"
server:
  listen:
    - addr: "127.0.0.1:0"
routes:
  - name: a
    path: /a
    backend: { builtin: clock }
    keepalive: { ping_interval: 20x }
    colour: blue
  - name: b
    path: /a/
    backend: { builtin: clock }
"#;

    #[test]
    fn lists_every_error_with_path_and_line() {
        let errs = load_str(BAD, Path::new("."), "t.yaml").unwrap_err();
        let text = errs.to_string();
        assert_eq!(errs.errors.len(), 3, "{text}");
        let paths: Vec<&str> = errs.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].keepalive.ping_interval",
                "routes[0].colour",
                "routes[1].path"
            ],
            "{text}"
        );
        assert_eq!(errs.errors[0].line, Some(9), "{text}");
        assert_eq!(errs.errors[1].line, Some(10), "{text}");
        assert!(
            text.contains("t.yaml:12: routes[1].path: duplicate route"),
            "{text}"
        );
    }
}
