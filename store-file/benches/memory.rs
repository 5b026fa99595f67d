//! Peak memory while appending and then reading a large log (2 GiB by default; set
//! `MEMORY_BENCH_MIB` to change it). Prints the process's peak resident set (VmHWM), which
//! must stay far below the log's size: nothing holds the log in memory.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use replication_core::{Epoch, LogPosition, Tx, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        return; // `cargo bench -- --test` only checks that benchmarks build.
    }
    let mib: u64 = std::env::var("MEMORY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    let payload_size = 4096usize;
    let count = mib * 1024 * 1024 / payload_size as u64;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-data");
    std::fs::create_dir_all(&root).expect("bench dir");
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
        let payload = Bytes::from(vec![7u8; payload_size]);
        let baseline = peak_rss_kib();
        let started = Instant::now();
        let mut last = LogPosition::START;
        let mut written = 0;
        while written < count {
            let batch: Vec<Tx> = (0..256.min(count - written))
                .map(|_| {
                    let tx = Tx::new(last, Epoch(1), payload.clone());
                    last = tx.position();
                    tx
                })
                .collect();
            written += batch.len() as u64;
            log.append(batch).await.expect("append").await.expect("durable");
        }
        let append_secs = started.elapsed().as_secs_f64();
        let after_append = peak_rss_kib();
        let started = Instant::now();
        let mut next = TxId(1);
        let mut read = 0u64;
        loop {
            let txs = log.read(next, 1024, 4 << 20).await.expect("read");
            let Some(tx) = txs.last() else { break };
            next = tx.id.next();
            read += txs.len() as u64;
        }
        assert_eq!(read, count);
        let read_secs = started.elapsed().as_secs_f64();
        println!(
            "log of {mib} MiB ({count} x {payload_size} B): appended in {append_secs:.1} s, read in {read_secs:.1} s"
        );
        println!(
            "peak RSS: {:.1} MiB before, {:.1} MiB after appending, {:.1} MiB after reading",
            baseline as f64 / 1024.0,
            after_append as f64 / 1024.0,
            peak_rss_kib() as f64 / 1024.0
        );
    });
}
