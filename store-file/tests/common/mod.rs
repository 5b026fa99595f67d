//! Helpers shared by the store-file integration tests.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the records of a segment file end: zeros prepared for the next appends may follow.
pub fn records_end(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read");
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |at| at as u64 + 1)
}

/// Waits until `done` holds, polling every few milliseconds; fails the test after 10 s.
/// The zero-fill thread works in the background, so tests wait for what it did, not a time.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
