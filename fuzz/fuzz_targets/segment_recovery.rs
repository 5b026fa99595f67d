//! Fuzz target `segment_recovery`: see `fuzz_checks::segment_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::segment_recovery(data));
