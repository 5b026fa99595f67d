//! store-file against the floor on the same disk, in one run:
//! - durable append latency with one writer vs. a plain `write` + `fdatasync` loop of the same
//!   record size (target: within 1.15x);
//! - throughput with 64 concurrent writers vs. one (target: at least 20x, by group commit);
//! - sequential reads vs. reading the segment files raw (target: at least half).
//!
//! Payloads of 128 bytes and 4 KiB. Files live under `target/` (the project's disk).
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use replication_core::{Epoch, LogPosition, Tx, TxLog};
use store_file::{FileLog, FileLogOptions};
use tokio::sync::Mutex;

fn bench_dir() -> tempfile::TempDir {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    tempfile::tempdir_in(root).expect("tempdir")
}

/// Appends with ids assigned under a lock, as the engine's single sequencer does; the wait
/// for durability happens outside it, so concurrent writers share syncs.
struct Sequencer {
    log: FileLog,
    last: Mutex<LogPosition>,
    payload: Bytes,
}

impl Sequencer {
    async fn append_one(&self) {
        let durable = {
            let mut last = self.last.lock().await;
            let tx = Tx::new(*last, Epoch(1), self.payload.clone());
            *last = tx.position();
            self.log.append(vec![tx]).await.expect("append")
        };
        durable.await.expect("durable");
    }
}

fn appends(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for size in [128usize, 4096] {
        let mut group = c.benchmark_group(format!("append_{size}B"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_millis(500));
        group.throughput(Throughput::Elements(1));
        let dir = bench_dir();

        let record = vec![5u8; size + 56];
        let floor = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("floor"))
            .expect("floor file");
        let mut offset = 0u64;
        group.bench_function("floor_write_fdatasync", |b| {
            b.iter(|| {
                floor.write_all_at(&record, offset).expect("write");
                floor.sync_data().expect("sync");
                offset += record.len() as u64;
            });
        });

        let log = FileLog::open(dir.path().join("log"), FileLogOptions::default()).expect("open");
        let sequencer = Arc::new(Sequencer {
            log,
            last: Mutex::new(LogPosition::START),
            payload: Bytes::from(vec![9u8; size]),
        });
        for writers in [1usize, 64] {
            group.bench_with_input(
                BenchmarkId::new("file_log", format!("{writers}_writers")),
                &writers,
                |b, &writers| {
                    b.iter_custom(|iterations| {
                        runtime.block_on(async {
                            let per_writer = iterations.div_ceil(writers as u64);
                            let start = Instant::now();
                            let tasks: Vec<_> = (0..writers)
                                .map(|_| {
                                    let sequencer = sequencer.clone();
                                    tokio::spawn(async move {
                                        for _ in 0..per_writer {
                                            sequencer.append_one().await;
                                        }
                                    })
                                })
                                .collect();
                            for task in tasks {
                                task.await.expect("writer");
                            }
                            start
                                .elapsed()
                                .mul_f64(iterations as f64 / (per_writer * writers as u64) as f64)
                        })
                    });
                },
            );
        }
        group.finish();
    }
}

fn sequential_read(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = bench_dir();
    let size = 4096usize;
    let count = 16 * 1024; // 64 MiB of payload
    let log_dir = dir.path().join("log");
    let options = FileLogOptions {
        segment_bytes: 16 << 20,
        ..FileLogOptions::default()
    };
    runtime.block_on(async {
        let log = FileLog::open(&log_dir, options.clone()).expect("open");
        let mut last = LogPosition::START;
        for _ in 0..count / 256 {
            let batch: Vec<Tx> = (0..256)
                .map(|_| {
                    let tx = Tx::new(last, Epoch(1), Bytes::from(vec![3u8; size]));
                    last = tx.position();
                    tx
                })
                .collect();
            log.append(batch)
                .await
                .expect("append")
                .await
                .expect("durable");
        }
    });
    let segment_files: Vec<_> = std::fs::read_dir(&log_dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    let total_bytes: u64 = segment_files
        .iter()
        .map(|p| std::fs::metadata(p).expect("meta").len())
        .sum();
    let mut group = c.benchmark_group("sequential_read_64MiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(total_bytes));
    group.bench_function("raw_segment_files", |b| {
        let mut buffer = vec![0u8; 1 << 20];
        b.iter(|| {
            for path in &segment_files {
                let mut file = File::open(path).expect("open");
                while file.read(&mut buffer).expect("read") > 0 {}
            }
        });
    });
    let log = FileLog::open(&log_dir, options).expect("open");
    group.bench_function("file_log_read", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut next = replication_core::TxId(1);
                loop {
                    // The engine reads catch-up batches of `max_batch_bytes` (1 MiB by default).
                    let txs = log.read(next, 1024, 1 << 20).await.expect("read");
                    let Some(last) = txs.last() else { break };
                    next = last.id.next();
                }
            })
        });
    });
    group.finish();
}

criterion_group!(benches, appends, sequential_read);
criterion_main!(benches);
