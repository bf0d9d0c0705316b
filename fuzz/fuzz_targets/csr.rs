//! Fuzz target `csr`: see `certflow_fuzz::pki::csr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::pki::csr(data));
