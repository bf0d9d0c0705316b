//! Fuzz target `jws`: see `certflow_fuzz::auth::jws`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::auth::jws(data));
