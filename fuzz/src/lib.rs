//! The fuzz targets' entry points. Each module uses only one certflow crate
//! (and that crate's own dependencies) so that the crate's corpus-replay test
//! (`crates/*/tests/fuzz_corpus.rs`) includes the very same file with
//! `#[path]` and runs what the fuzzer ran, on the stable toolchain.

pub mod acme_server;
pub mod api;
pub mod auth;
pub mod pki;
pub mod server;
pub mod services;
