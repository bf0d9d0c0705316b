//! Fuzz target `acme_jws`: see `certflow_fuzz::acme_server::acme_jws`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::acme_server::acme_jws(data));
