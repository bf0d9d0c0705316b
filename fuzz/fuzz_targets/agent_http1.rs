//! Fuzz target `agent_http1`: see `certflow_fuzz::server::agent_http1`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::server::agent_http1(data));
