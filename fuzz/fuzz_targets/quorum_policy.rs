//! Fuzz target `quorum_policy`: see `fuzz_checks::quorum_policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_checks::quorum_policy(data));
