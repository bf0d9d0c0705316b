//! Replays the committed corpus of the agent_http1 fuzz target
//! (fuzz/corpus/, RELIABILITY.md) through the target's own entry point
//! (fuzz/src/server.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/server.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn agent_http1_corpus_replays_without_panic() {
    replay::replay("agent_http1", entries::agent_http1);
}
