//! Replays the committed fuzz corpora of the discovery_report fuzz
//! target (fuzz/corpus/, RELIABILITY.md) through the targets' own entry
//! points (fuzz/src/services.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/services.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn discovery_report_corpus_replays_without_panic() {
    replay::replay("discovery_report", entries::discovery_report);
}
