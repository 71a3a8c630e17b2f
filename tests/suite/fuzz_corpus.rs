//! The fuzz corpora, replayed on stable: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` (inputs that once broke a check, kept after their fix) goes
//! through the same check the fuzz target runs (`fuzz/checks.rs`, compiled here too). A target
//! whose corpus is missing or empty fails, so the replay cannot pass by finding nothing.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Replays one target's corpus and regressions; each failing input is named.
fn replay(target: &str) {
    let check = checks::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no check named {target} in fuzz/checks.rs"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let corpus = files(&root.join("corpus").join(target));
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is missing or empty: seed it (see fuzz/README.md)"
    );
    let regressions = files(&root.join("regressions").join(target));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).expect("a corpus file");
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failed.push(
                file.strip_prefix(&root)
                    .unwrap_or(file)
                    .display()
                    .to_string(),
            );
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:?}",
        failed.len(),
        corpus.len() + regressions.len()
    );
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        /// Every check in fuzz/checks.rs has its replay test above.
        #[test]
        fn every_target_is_replayed() {
            let replayed = [$(stringify!($target)),*];
            for (name, _) in checks::TARGETS {
                assert!(replayed.contains(name), "{name} has no replay test");
            }
        }
    };
}

replay_tests!(
    ws_frames,
    ws_deflate,
    sse,
    http1_head,
    http1_framing,
    chunked,
    tunnel_frames,
    sockjs,
    longpoll_body,
    config,
    redis_stream,
    engineio,
    socketio,
);
