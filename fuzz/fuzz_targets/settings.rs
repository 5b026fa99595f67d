//! Fuzz target `settings`: see `fuzz_checks::settings`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::settings(data));
