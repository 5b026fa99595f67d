//! Fuzz target `frame`: see `fuzz_checks::frame`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::frame(data));
