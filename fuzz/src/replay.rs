//! Corpus replay for the stable test command: each crate's
//! `tests/fuzz_corpus.rs` includes this file and the entry module of its
//! fuzz targets, and runs every committed input of `fuzz/corpus/<target>/`
//! through the same entry point the fuzzer calls.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest one input may take in a debug build on a busy CI core; the
/// fuzzer's own bound (release, `-timeout`) is far lower.
pub const PER_INPUT: Duration = Duration::from_secs(5);

/// The committed corpus of `target`, sorted; a missing or empty corpus fails.
pub fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    files
}

/// Runs every input of `target`'s corpus through `entry`: none may panic
/// (the test fails naming the file) or take longer than [`PER_INPUT`].
pub fn replay(target: &str, entry: fn(&[u8])) {
    for path in corpus(target) {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        let took = started.elapsed();
        assert!(outcome.is_ok(), "{target}: {} panics", path.display());
        assert!(
            took < PER_INPUT,
            "{target}: {} took {took:?} (at most {PER_INPUT:?})",
            path.display()
        );
    }
}
