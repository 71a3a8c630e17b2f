//! Maps a YAML path (`routes[1].keepalive.ping_interval`) to the line it sits on, so that every
//! config error, semantic ones included, can point at a line. serde_yaml keeps no spans on its
//! `Value`, so this walks the parser's marked events once.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker {
    /// The path of the node that is starting now, or None when a mapping key is starting.
    fn node_path(&mut self, line: usize) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key }) => {
                let p = join_key(path, key.as_deref().unwrap_or_default());
                *key = None;
                Some(p)
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                self.lines.entry(p.clone()).or_insert(line);
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            // `node_path` advances the walker for every scalar; only keys get past the guard.
            Event::Scalar(value, ..) if self.node_path(line).is_none() => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    self.lines.insert(join_key(path, &value), line);
                    *key = Some(value);
                }
            }
            Event::Alias(_) => {
                let _ = self.node_path(line);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node_path(line) {
                    self.stack.push(Frame::Map { path, key: None });
                } else {
                    // A complex (non-scalar) key: track it as an anonymous map so nesting stays right.
                    self.stack.push(Frame::Map {
                        path: "?".into(),
                        key: None,
                    });
                }
            }
            Event::SequenceStart(..) => {
                let path = self.node_path(line).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl LineIndex {
    /// Builds the index; a document that does not parse gives an empty index (serde_yaml then
    /// reports the syntax error with its own line).
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Self::default();
        }
        // What the parser makes up at the end of a text without a final line break (an empty
        // node) is marked on the line after it: every line stays inside the text.
        let last = line_count(text);
        let mut lines = walker.lines;
        for line in lines.values_mut() {
            *line = (*line).min(last);
        }
        Self { lines }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// How many lines YAML sees in `text`: LF, CR and CRLF each end one; the last need not end.
pub fn line_count(text: &str) -> usize {
    1 + text.matches('\n').count() + text.matches('\r').count() - text.matches("\r\n").count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `config` fuzz target: an empty node made up at the end of a one-line text
    /// was put on line 2.
    #[test]
    fn lines_stay_inside_the_text() {
        let idx = LineIndex::new("? ! 8888888889               :               ~");
        assert!(!idx.lines.is_empty());
        assert!(idx.lines.values().all(|l| *l == 1), "{idx:?}");
        assert_eq!(line_count("a\r\nb\rc\n"), 4);
    }

    #[test]
    fn finds_lines_of_nested_keys_and_items() {
        let text = "server:\n  listen:\n    - addr: a\n    - addr: b\nroutes:\n  - name: x\n    keepalive: { ping_interval: 2s }\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line_of("server"), Some(1));
        assert_eq!(idx.line_of("server.listen[1].addr"), Some(4));
        assert_eq!(idx.line_of("routes[0].name"), Some(6));
        assert_eq!(idx.line_of("routes[0].keepalive.ping_interval"), Some(7));
        // A key that is not there falls back to its parent.
        assert_eq!(idx.line_of("routes[0].keepalive.nope"), Some(7));
    }
}
