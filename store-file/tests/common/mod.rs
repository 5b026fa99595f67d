//! Helpers shared by the store-file integration tests.

use std::fs;
use std::path::Path;

/// Where the records of a segment file end: zeros prepared for the next appends may follow.
pub fn records_end(path: &Path) -> u64 {
    let bytes = fs::read(path).expect("read");
    bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |at| at as u64 + 1)
}
