//! `repnode bench`: a load generator against a running server, in the spirit of `pgbench` and
//! `etcd benchmark`: N clients, each on its own QUIC connection, writing single keys of a given
//! size as fast as their commits come back; latencies go into an HDR histogram.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use node::client::{Client, Outcome};
use node::kv::KvOp;
use node::wire::{ErrorKind, Request, Response};
use serde::Serialize;
use transport_quic::TlsIdentity;

use super::exit::UsageError;

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
    /// ...or after this many writes in all (attempts: failed ones count too, and are
    /// reported as errors).
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
    /// Writes that failed, by kind (`unknown_outcome`, `refused`, `failed`, `connection`):
    /// the statistics count only the committed ones.
    pub errors: BTreeMap<String, u64>,
    /// The first error of each kind, in words.
    pub first_errors: BTreeMap<String, String>,
    /// Clients that stopped before the end, after an error that retrying cannot fix (an
    /// unknown database, a replica) or too many in a row.
    pub clients_stopped: usize,
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

/// A client gives up after this many failed writes in a row.
const MAX_ERRORS_IN_A_ROW: u32 = 100;

/// Refuses a run that would do nothing.
///
/// # Errors
/// No clients, no writes, no time, or neither a count nor a duration.
pub fn check(options: &BenchOptions) -> Result<()> {
    let refuse = |why: &str| Err(UsageError(why.to_string()).into());
    if options.clients == 0 {
        return refuse("--clients 0: a run needs at least one client");
    }
    match (options.count, options.duration) {
        (None, None) => refuse("give --duration SECONDS or --count WRITES"),
        (Some(0), _) => refuse("--count 0: a run needs at least one write"),
        (_, Some(duration)) if duration.is_zero() => refuse("--duration 0: a run needs some time"),
        _ => Ok(()),
    }
}

/// Runs the load and prints the report, one JSON object with `json`. Exits 1 when any write
/// failed (the report, with the errors counted, is printed all the same).
///
/// # Errors
/// Options that would do nothing, or no client able to connect.
pub async fn run_and_print(
    options: BenchOptions,
    identity: TlsIdentity,
    json: bool,
) -> Result<ExitCode> {
    check(&options)?;
    let report = run(options, identity).await?;
    let failed: u64 = report.errors.values().sum();
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
        for (kind, count) in &report.errors {
            let first = report.first_errors.get(kind).cloned().unwrap_or_default();
            eprintln!("{count} writes failed ({kind}), the first: {first}");
        }
        if report.clients_stopped > 0 {
            eprintln!(
                "{} of {} clients stopped early",
                report.clients_stopped, report.clients
            );
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What one client did.
struct ClientOutcome {
    histogram: Histogram<u64>,
    errors: BTreeMap<String, (u64, String)>,
    stopped: bool,
}

/// The kind of a failed write, and whether retrying can help.
fn classify(outcome: &Outcome) -> (&'static str, bool) {
    match outcome {
        Outcome::Unknown(_) => ("connection", true),
        Outcome::Answered(Response::Error { kind, .. }) => match kind {
            ErrorKind::Unknown => ("unknown_outcome", true),
            ErrorKind::Failed => ("failed", true),
            ErrorKind::Refused => ("refused", true),
            ErrorKind::NotPrimary
            | ErrorKind::UnknownDatabase
            | ErrorKind::BadSetting
            | ErrorKind::Unauthorized => ("refused", false),
        },
        _ => ("failed", false),
    }
}

/// Runs the load and returns the report.
async fn run(options: BenchOptions, identity: TlsIdentity) -> Result<BenchReport> {
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
        let (server, identity) = (server.clone(), identity.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcome = ClientOutcome {
                histogram: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
                errors: BTreeMap::new(),
                stopped: false,
            };
            let mut n = 0u64;
            let mut in_a_row = 0;
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
                let request = Request::Write {
                    db: db.clone(),
                    ops,
                };
                let answer = client
                    .request(&request, None)
                    .await
                    .unwrap_or_else(|error| Outcome::Unknown(format!("{error:#}")));
                n += 1;
                if let Outcome::Answered(Response::Written { .. }) = answer {
                    // Past the histogram's 60 s, recorded as its highest value: never an error
                    // that would lose the run.
                    outcome
                        .histogram
                        .saturating_record(sent.elapsed().as_micros().max(1) as u64);
                    if count.is_none() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    in_a_row = 0;
                    continue;
                }
                let (kind, retry) = classify(&answer);
                let text = match &answer {
                    Outcome::Unknown(why) => why.clone(),
                    Outcome::Answered(Response::Error { message, .. }) => message.clone(),
                    other => format!("{other:?}"),
                };
                let entry = outcome.errors.entry(kind.to_string()).or_insert((0, text));
                entry.0 += 1;
                in_a_row += 1;
                if !retry || in_a_row >= MAX_ERRORS_IN_A_ROW {
                    outcome.stopped = true;
                    break;
                }
                // A lost connection is dialled again; any failure waits a little, so that a
                // server in trouble is not hammered.
                tokio::time::sleep(Duration::from_millis(10)).await;
                if matches!(answer, Outcome::Unknown(_))
                    && let Ok(fresh) = Client::connect(&server, identity.clone()).await
                {
                    client = fresh;
                }
            }
            anyhow::Ok(outcome)
        }));
    }
    let progress = options.progress.then(|| {
        let done = done.clone();
        let (count, duration) = (options.count, options.duration);
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "{}",
                    progress_line(started.elapsed(), now, now - last, count, duration)
                );
                last = now;
            }
        })
    });
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_errors = BTreeMap::new();
    let mut clients_stopped = 0;
    for task in tasks {
        let outcome = task.await??;
        histogram.add(outcome.histogram)?;
        for (kind, (count, first)) in outcome.errors {
            *errors.entry(kind.clone()).or_default() += count;
            first_errors.entry(kind).or_insert(first);
        }
        clients_stopped += usize::from(outcome.stopped);
    }
    if let Some(progress) = progress {
        progress.abort();
    }
    let seconds = started.elapsed().as_secs_f64();
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(BenchReport {
        clients: options.clients,
        writes: histogram.len(),
        errors,
        first_errors,
        clients_stopped,
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

/// One progress line: elapsed, writes against the total (`--count`) or time against the
/// duration, the rate in the last second, and the time left at the average rate.
fn progress_line(
    elapsed: Duration,
    writes: u64,
    last_second: u64,
    count: Option<u64>,
    duration: Option<Duration>,
) -> String {
    let seconds = elapsed.as_secs_f64();
    let (fraction, position) = match (count, duration) {
        (Some(count), _) => (
            writes.min(count) as f64 / count as f64,
            format!("{:>8}/{count} writes", writes.min(count)),
        ),
        (None, Some(duration)) => (
            (seconds / duration.as_secs_f64()).min(1.0),
            format!(
                "{seconds:>6.1}/{:.0} s, {writes:>8} writes",
                duration.as_secs_f64()
            ),
        ),
        (None, None) => (0.0, format!("{writes:>8} writes")),
    };
    let left = if fraction > 0.0 {
        format!("{:.0} s left", seconds * (1.0 - fraction) / fraction)
    } else {
        "time left unknown".into()
    };
    format!(
        "{seconds:>6.1} s  {position} ({:>3.0}%)  {last_second:>7} writes/s  {left}",
        fraction * 100.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(clients: usize, count: Option<u64>, duration: Option<f64>) -> BenchOptions {
        BenchOptions {
            server: "127.0.0.1:1".into(),
            db: "app".into(),
            clients,
            duration: duration.map(Duration::from_secs_f64),
            count,
            value_size: 8,
            key_space: None,
            progress: false,
        }
    }

    #[test]
    fn a_run_that_would_do_nothing_is_refused() {
        for (refused, why) in [
            (options(0, Some(10), None), "--clients 0"),
            (options(4, Some(0), None), "--count 0"),
            (options(4, None, Some(0.0)), "--duration 0"),
            (options(4, None, None), "--duration SECONDS or --count"),
        ] {
            let error = check(&refused).expect_err(why).to_string();
            assert!(error.contains(why), "{error}");
        }
        assert!(check(&options(1, Some(1), None)).is_ok());
    }

    #[test]
    fn progress_shows_the_total_a_percentage_and_the_time_left() {
        let line = progress_line(Duration::from_secs(2), 500, 250, Some(2000), None);
        assert!(line.contains("500/2000 writes"), "{line}");
        assert!(line.contains("25%"), "{line}");
        assert!(line.contains("6 s left"), "{line}");
        let line = progress_line(
            Duration::from_secs(3),
            900,
            300,
            None,
            Some(Duration::from_secs(12)),
        );
        assert!(line.contains("3.0/12 s"), "{line}");
        assert!(line.contains("25%") && line.contains("9 s left"), "{line}");
    }
}
