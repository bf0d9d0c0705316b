//! Fuzz target `ocsp_request`: see `certflow_fuzz::pki::ocsp_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::pki::ocsp_request(data));
