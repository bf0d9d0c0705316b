//! Replays the committed fuzz corpora of the jws fuzz
//! target (fuzz/corpus/, RELIABILITY.md) through the targets' own entry
//! points (fuzz/src/auth.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/auth.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn jws_corpus_replays_without_panic() {
    replay::replay("jws", entries::jws);
}
