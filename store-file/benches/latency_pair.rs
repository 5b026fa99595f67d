//! Single-writer durable append latency against the floor, measured interleaved: each round
//! does one plain `write` + `fdatasync` of the record size and one `FileLog` append awaited
//! until durable, on the same disk, so that the machine's drift hits both alike. Prints p50
//! and p99 of each and their ratio (target: p50 within 1.15x of the floor).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use replication_core::{Epoch, LogPosition, Tx, TxLog};
use store_file::{FileLog, FileLogOptions};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn main() {
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for size in [128usize, 4096] {
        let dir = tempfile::tempdir_in(&root).expect("tempdir");
        let floor = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("floor"))
            .expect("floor");
        let record = vec![1u8; size + 56];
        let log = FileLog::open(dir.path().join("log"), FileLogOptions::default()).expect("log");
        let payload = Bytes::from(vec![2u8; size]);
        let (mut floor_samples, mut log_samples) =
            (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        let mut offset = 0u64;
        let mut last = LogPosition::START;
        runtime.block_on(async {
            for _ in 0..rounds {
                let started = Instant::now();
                floor.write_all_at(&record, offset).expect("write");
                floor.sync_data().expect("sync");
                floor_samples.push(started.elapsed());
                offset += record.len() as u64;

                let tx = Tx::new(last, Epoch(1), payload.clone());
                last = tx.position();
                let started = Instant::now();
                log.append(vec![tx])
                    .await
                    .expect("append")
                    .await
                    .expect("durable");
                log_samples.push(started.elapsed());
            }
        });
        let (f50, f99) = (
            percentile(&mut floor_samples, 0.5),
            percentile(&mut floor_samples, 0.99),
        );
        let (l50, l99) = (
            percentile(&mut log_samples, 0.5),
            percentile(&mut log_samples, 0.99),
        );
        println!(
            "{size:>5} B: floor p50 {:>6.1} us p99 {:>7.1} us | FileLog p50 {:>6.1} us p99 {:>7.1} us | p50 ratio {:.2}x",
            f50.as_secs_f64() * 1e6,
            f99.as_secs_f64() * 1e6,
            l50.as_secs_f64() * 1e6,
            l99.as_secs_f64() * 1e6,
            l50.as_secs_f64() / f50.as_secs_f64()
        );
    }
}
