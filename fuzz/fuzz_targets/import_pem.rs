//! Fuzz target `import_pem`: see `certflow_fuzz::pki::import_pem`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| certflow_fuzz::pki::import_pem(data));
