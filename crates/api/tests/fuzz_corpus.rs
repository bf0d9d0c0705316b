//! Replays the committed fuzz corpora of the agent_report fuzz
//! target (fuzz/corpus/, RELIABILITY.md) through the targets' own entry
//! points (fuzz/src/api.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/api.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn agent_report_corpus_replays_without_panic() {
    replay::replay("agent_report", entries::agent_report);
}
