//! Prometheus metrics in the text exposition format, served over plain HTTP on
//! `--metrics-listen`. Hand-rolled: a handful of gauges and one histogram do not justify a
//! metrics framework and an HTTP stack.
//!
//! This module only renders the [`Snapshot`]s it is given; the server takes them
//! (`Server::metric_snapshots`), so the server depends on the metrics and not the reverse.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the commit latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels},le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Renders every metric of these databases.
pub fn render(snapshots: &[Snapshot]) -> String {
    let mut out = String::new();
    out.push_str("# HELP repnode_commit_latency_seconds Time from a write's arrival to its commit.\n# TYPE repnode_commit_latency_seconds histogram\n");
    for snapshot in snapshots {
        snapshot.commit_latency.render(
            &mut out,
            "repnode_commit_latency_seconds",
            &format!("db=\"{}\"", snapshot.db),
        );
    }
    let gauges: [(&str, &str, &str); 5] = [
        ("repnode_committed_tx", "gauge", "The commit point."),
        (
            "repnode_precommitted_tx",
            "gauge",
            "The last durably stored transaction.",
        ),
        (
            "repnode_waiting_writes",
            "gauge",
            "Writes waiting for their quorum.",
        ),
        (
            "repnode_applied_transactions_total",
            "counter",
            "Transactions applied here (replicated, on a replica).",
        ),
        (
            "repnode_applied_bytes_total",
            "counter",
            "Payload bytes applied here (replicated, on a replica).",
        ),
    ];
    for (index, (name, kind, help)) in gauges.iter().enumerate() {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for snapshot in snapshots {
            let value = [
                snapshot.committed,
                snapshot.precommitted,
                snapshot.waiting_writes,
                snapshot.applied,
                snapshot.applied_bytes,
            ][index];
            let _ = writeln!(out, "{name}{{db=\"{}\"}} {value}", snapshot.db);
        }
    }
    out.push_str("# HELP repnode_replica_lag_transactions How many transactions a replica is behind.\n# TYPE repnode_replica_lag_transactions gauge\n");
    out.push_str("# HELP repnode_replica_lag_seconds How long a replica has been behind.\n# TYPE repnode_replica_lag_seconds gauge\n");
    out.push_str("# HELP repnode_replica_connected Whether a replica is connected.\n# TYPE repnode_replica_connected gauge\n");
    for snapshot in snapshots {
        for replica in &snapshot.replicas {
            let labels = format!("db=\"{}\",replica=\"{}\"", snapshot.db, replica.id);
            let _ = writeln!(
                out,
                "repnode_replica_lag_transactions{{{labels}}} {}",
                replica.lag_txs
            );
            let _ = writeln!(
                out,
                "repnode_replica_lag_seconds{{{labels}}} {}",
                replica.lag_ms as f64 / 1000.0
            );
            let _ = writeln!(
                out,
                "repnode_replica_connected{{{labels}}} {}",
                u8::from(replica.connected)
            );
        }
    }
    render_failover(&mut out, snapshots);
    out
}

/// The counters of automatic failover, for the databases under it.
fn render_failover(out: &mut String, snapshots: &[Snapshot]) {
    type Read = fn(&crate::wire::FailoverReport) -> Option<f64>;
    let metrics: [(&str, &str, &str, Read); 4] = [
        (
            "repnode_failover_elections_won_total",
            "counter",
            "Leader key campaigns this member won.",
            |f| Some(f.elections_won as f64),
        ),
        (
            "repnode_failover_renew_failures_total",
            "counter",
            "Lease grants or renewals that failed.",
            |f| Some(f.renew_failures as f64),
        ),
        (
            "repnode_failover_self_fencings_total",
            "counter",
            "Times this primary's lease deadline passed without a renewal: it stopped acknowledging.",
            |f| Some(f.self_fencings as f64),
        ),
        (
            "repnode_failover_lease_remaining_seconds",
            "gauge",
            "As leader, how long this primary may still acknowledge without a renewal.",
            |f| f.lease_remaining_ms.map(|ms| ms as f64 / 1000.0),
        ),
    ];
    for (name, kind, help, read) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for snapshot in snapshots {
            if let Some(value) = snapshot.failover.as_ref().and_then(read) {
                let _ = writeln!(out, "{name}{{db=\"{}\"}} {value}", snapshot.db);
            }
        }
    }
}

/// What the metrics endpoint reads of one database.
pub struct Snapshot {
    /// The database.
    pub db: String,
    /// Its commit latency histogram.
    pub commit_latency: Arc<Histogram>,
    /// The commit point.
    pub committed: u64,
    /// The durable position.
    pub precommitted: u64,
    /// Waiting writes.
    pub waiting_writes: u64,
    /// Transactions applied.
    pub applied: u64,
    /// Payload bytes applied.
    pub applied_bytes: u64,
    /// Its replicas.
    pub replicas: Vec<crate::wire::ReplicaReport>,
    /// Its automatic failover, if under it.
    pub failover: Option<crate::wire::FailoverReport>,
}

/// Serves `GET /metrics` (any path) until the listener fails, rendering what `snapshots`
/// returns at each request.
pub async fn serve<F, S>(listener: TcpListener, snapshots: F)
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Future<Output = Vec<Snapshot>> + Send + 'static,
{
    let snapshots = Arc::new(snapshots);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), whatever it asks: there is one resource.
            let mut head = vec![0u8; 8192];
            let mut filled = 0;
            while filled < head.len() {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head[filled..]))
                    .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        filled += n;
                        if head[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                }
            }
            let body = render(&snapshots().await);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ReplicaReport;

    #[test]
    fn a_snapshot_renders_its_gauges_histogram_and_replicas() {
        let commit_latency = Arc::new(Histogram::default());
        commit_latency.observe(Duration::from_micros(300));
        let snapshot = Snapshot {
            db: "app".into(),
            commit_latency,
            committed: 5,
            precommitted: 6,
            waiting_writes: 1,
            applied: 5,
            applied_bytes: 640,
            replicas: vec![ReplicaReport {
                id: "n2".into(),
                database: "app".into(),
                member: true,
                address: "127.0.0.1:7441".into(),
                acked_tx_id: 4,
                lag_txs: 2,
                lag_ms: 1500,
                connected: true,
            }],
            failover: Some(crate::wire::FailoverReport {
                elections_won: 2,
                self_fencings: 1,
                lease_remaining_ms: Some(2500),
                ..Default::default()
            }),
        };
        let text = render(&[snapshot]);
        for line in [
            "repnode_commit_latency_seconds_bucket{db=\"app\",le=\"0.0002\"} 0",
            "repnode_commit_latency_seconds_bucket{db=\"app\",le=\"0.0005\"} 1",
            "repnode_commit_latency_seconds_count{db=\"app\"} 1",
            "repnode_committed_tx{db=\"app\"} 5",
            "repnode_precommitted_tx{db=\"app\"} 6",
            "repnode_applied_bytes_total{db=\"app\"} 640",
            "repnode_replica_lag_seconds{db=\"app\",replica=\"n2\"} 1.5",
            "repnode_replica_connected{db=\"app\",replica=\"n2\"} 1",
            "repnode_failover_elections_won_total{db=\"app\"} 2",
            "repnode_failover_self_fencings_total{db=\"app\"} 1",
            "repnode_failover_renew_failures_total{db=\"app\"} 0",
            "repnode_failover_lease_remaining_seconds{db=\"app\"} 2.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
