//! Fuzz target `client_request`: see `fuzz_checks::client_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::client_request(data));
