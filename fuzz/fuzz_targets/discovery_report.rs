//! Fuzz target `discovery_report`: see `certflow_fuzz::services::discovery_report`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::services::discovery_report(data));
