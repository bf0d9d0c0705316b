//! Fuzz target `agent_report`: see `certflow_fuzz::api::agent_report`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::api::agent_report(data));
