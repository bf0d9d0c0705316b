//! Replays the committed fuzz corpora of the csr, import_pem, ocsp_request, pkcs12 fuzz
//! targets (fuzz/corpus/, RELIABILITY.md) through the targets' own entry
//! points (fuzz/src/pki.rs): on the stable toolchain, in seconds.
#![allow(clippy::panic, dead_code)]

#[path = "../../../fuzz/src/pki.rs"]
mod entries;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn csr_corpus_replays_without_panic() {
    replay::replay("csr", entries::csr);
}

#[test]
fn import_pem_corpus_replays_without_panic() {
    replay::replay("import_pem", entries::import_pem);
}

#[test]
fn ocsp_request_corpus_replays_without_panic() {
    replay::replay("ocsp_request", entries::ocsp_request);
}

#[test]
fn pkcs12_corpus_replays_without_panic() {
    replay::replay("pkcs12", entries::pkcs12);
}
