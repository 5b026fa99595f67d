//! Shared pieces of the benchmarks; the benchmarks themselves live in `benches/`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{EngineConfig, Role};
use replication_core::quorum::Quorum;
use replication_core::testing::DiscardingStateMachine;
use replication_core::{Transport, TxLog};

/// Bytes of each benchmark write's payload.
pub const PAYLOAD_BYTES: usize = 128;

/// Runs `total` writes of [`PAYLOAD_BYTES`] from `writers` concurrent tasks against `primary`
/// and returns the time they took, scaled to exactly `total` (each writer does an equal share).
///
/// # Panics
/// If a write fails: a benchmark of failing writes measures nothing.
pub async fn run_writes(primary: &Node, writers: usize, total: u64) -> Duration {
    run(primary, writers, total, None).await
}

/// [`run_writes`], also recording each write's commit latency (microseconds) in `latencies`.
///
/// # Panics
/// If a write fails.
pub async fn run_writes_recorded(
    primary: &Node,
    writers: usize,
    total: u64,
    latencies: &Mutex<Histogram<u64>>,
) -> Duration {
    run(primary, writers, total, Some(latencies)).await
}

async fn run(
    primary: &Node,
    writers: usize,
    total: u64,
    latencies: Option<&Mutex<Histogram<u64>>>,
) -> Duration {
    let per_writer = total.div_ceil(writers as u64);
    let record = latencies.is_some();
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let primary = primary.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(vec![7u8; PAYLOAD_BYTES]);
                // Each writer keeps its own histogram: no shared lock on the measured path.
                let mut own = record.then(new_histogram);
                for _ in 0..per_writer {
                    let sent = Instant::now();
                    primary.write(payload.clone()).await.expect("write");
                    if let Some(own) = own.as_mut() {
                        own.saturating_record(sent.elapsed().as_micros() as u64);
                    }
                }
                own
            })
        })
        .collect();
    let mut merged = Vec::new();
    for task in tasks {
        merged.extend(task.await.expect("writer"));
    }
    let elapsed = start.elapsed();
    if let Some(latencies) = latencies {
        let mut latencies = latencies.lock().expect("histogram");
        for own in merged {
            latencies.add(own).expect("same bounds");
        }
    }
    elapsed.mul_f64(total as f64 / (per_writer * writers as u64) as f64)
}

/// A histogram of microseconds from 1 µs to 60 s, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// A fresh directory under the workspace's `target/bench-data`, removed when dropped: on the
/// disk the workspace is on rather than in the system's temporary directory, which may be a
/// tmpfs where `fdatasync` costs nothing.
///
/// # Panics
/// If the directory cannot be made: a benchmark without its disk measures nothing.
pub fn bench_dir() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    tempfile::tempdir_in(root).expect("tempdir")
}

/// Starts node `name` of the database `bench` with `log` and `transport`, applying to a
/// [`DiscardingStateMachine`] so that the application costs nothing.
///
/// # Panics
/// If the node does not start.
pub async fn start_node<L: TxLog, T: Transport>(
    name: &str,
    role: Role,
    policy: Quorum,
    log: L,
    transport: T,
) -> Node {
    Node::start(
        EngineConfig::new(name, "bench", role),
        Arc::new(policy),
        log,
        transport,
        DiscardingStateMachine::default(),
        NodeOptions::default(),
    )
    .await
    .expect("node")
}

/// The runtime the benchmarks run their nodes on: multi-threaded with two workers, the same
/// for every benchmark so that their numbers compare.
///
/// # Panics
/// If the runtime cannot be built.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
