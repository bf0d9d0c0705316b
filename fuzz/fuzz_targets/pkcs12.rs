//! Fuzz target `pkcs12`: see `certflow_fuzz::pki::pkcs12`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::pki::pkcs12(data));
