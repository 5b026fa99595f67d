//! `repnode bench`: a load generator against a running server, in the spirit of `pgbench` and
//! `etcd benchmark`: N clients, each on its own QUIC connection, writing single keys of a given
//! size as fast as their commits come back; latencies go into an HDR histogram.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hdrhistogram::Histogram;
use node::client::{Client, Outcome};
use node::kv::KvOp;
use node::wire::{Request, Response};
use serde::Serialize;
use transport_quic::TlsIdentity;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The server, HOST:PORT, or a list to find the primary among.
    pub server: String,
    /// The database (a primary).
    pub db: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ...or after this many writes in all.
    pub count: Option<u64>,
    /// Bytes per value.
    pub value_size: usize,
    /// Distinct keys each client cycles through (overwriting them, as pgbench updates rows),
    /// or `None` for a new key per write. With a bounded key space the database stops growing,
    /// so a long run shows whether anything else does.
    pub key_space: Option<u64>,
    /// Print a progress line every second (to stderr).
    pub progress: bool,
}

/// The outcome, as `--json` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Writes committed.
    pub writes: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Committed writes per second.
    pub writes_per_second: f64,
    /// Mean commit latency, milliseconds.
    pub mean_ms: f64,
    /// Commit latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// Runs the load and prints the report, one JSON object with `json`.
///
/// # Errors
/// A client that cannot connect, or a write that fails.
pub async fn run_and_print(
    options: BenchOptions,
    identity: TlsIdentity,
    json: bool,
) -> Result<ExitCode> {
    let report = run(options, identity).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} clients: {} writes in {:.1} s = {:.0} writes/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
            report.clients,
            report.writes,
            report.seconds,
            report.writes_per_second,
            report.p50_ms,
            report.p90_ms,
            report.p99_ms,
            report.p999_ms,
            report.max_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the load and returns the report.
async fn run(options: BenchOptions, identity: TlsIdentity) -> Result<BenchReport> {
    if options.duration.is_none() && options.count.is_none() {
        bail!("give --duration or --count");
    }
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = options.duration.map(|d| started + d);
    let value = "x".repeat(options.value_size);
    // Writes go to the primary: found once among the servers given, then every client
    // connects to it.
    let servers = node::routing::split_servers(&options.server);
    let server = match servers.as_slice() {
        [one] => one.clone(),
        _ => {
            node::routing::find_primary(&servers, &identity, &options.db)
                .await?
                .1
        }
    };
    let mut tasks = Vec::new();
    for client_number in 0..options.clients {
        let mut client = Client::connect(&server, identity.clone()).await?;
        let (done, db, value, count, key_space) = (
            done.clone(),
            options.db.clone(),
            value.clone(),
            options.count,
            options.key_space,
        );
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut n = 0u64;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                if count.is_some_and(|c| done.fetch_add(1, Ordering::Relaxed) >= c) {
                    break;
                }
                let ops = vec![KvOp::Set {
                    key: format!(
                        "bench-{client_number}-{}",
                        key_space.map_or(n, |space| n % space.max(1))
                    ),
                    value: value.clone(),
                }];
                let sent = Instant::now();
                match client
                    .request(
                        &Request::Write {
                            db: db.clone(),
                            ops,
                        },
                        None,
                    )
                    .await?
                {
                    Outcome::Answered(Response::Written { .. }) => {}
                    Outcome::Answered(Response::Error { message, .. }) => {
                        bail!("write failed: {message}")
                    }
                    other => bail!("write failed: {other:?}"),
                }
                histogram.record(sent.elapsed().as_micros().max(1) as u64)?;
                if count.is_none() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
            anyhow::Ok(histogram)
        }));
    }
    let progress = options.progress.then(|| {
        let done = done.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "{:>6.1} s  {:>8} writes  {:>8} writes/s",
                    started.elapsed().as_secs_f64(),
                    now,
                    now - last
                );
                last = now;
            }
        })
    });
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        histogram.add(task.await??)?;
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(BenchReport {
        clients: options.clients,
        writes: histogram.len(),
        seconds,
        writes_per_second: histogram.len() as f64 / seconds,
        mean_ms: histogram.mean() / 1000.0,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p90_ms: ms(histogram.value_at_quantile(0.9)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        p999_ms: ms(histogram.value_at_quantile(0.999)),
        max_ms: ms(histogram.max()),
    })
}
