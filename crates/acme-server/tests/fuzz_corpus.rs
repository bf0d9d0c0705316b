//! Replays the committed fuzz corpus of the acme_jws fuzz target
//! (fuzz/corpus/, RELIABILITY.md) through the target's own entry point
//! (fuzz/src/acme_server.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/acme_server.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn acme_jws_corpus_replays_without_panic() {
    replay::replay("acme_jws", entries::acme_jws);
}
