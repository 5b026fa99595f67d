//! Shared pieces of the benchmarks; the benchmarks themselves live in `benches/`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use replication_core::driver::Node;

/// Runs `total` writes of 128 bytes from `writers` concurrent tasks against `primary` and
/// returns the time they took, scaled to exactly `total` (each writer does an equal share).
///
/// # Panics
/// If a write fails: a benchmark of failing writes measures nothing.
pub async fn run_writes(primary: &Node, writers: usize, total: u64) -> Duration {
    let per_writer = total.div_ceil(writers as u64);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let primary = primary.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(vec![7u8; 128]);
                for _ in 0..per_writer {
                    primary.write(payload.clone()).await.expect("write");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    start
        .elapsed()
        .mul_f64(total as f64 / (per_writer * writers as u64) as f64)
}
