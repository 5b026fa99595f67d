//! What `--metrics-listen` serves over plain HTTP: Prometheus metrics at `/metrics` (the
//! OpenMetrics text format, encoded by `prometheus-client`), `/healthz` (the process is up) and
//! `/readyz` (every loaded database serves: a primary takes writes, a replica streams within
//! its lag bound). Any other path is 404.
//!
//! The metrics are gathered at each scrape from the databases' status reports
//! ([`ServerMetrics`], built by `Server::metrics`), so that they never disagree with `repnode
//! status`; only the commit latency histogram lives across scrapes, one per database. This
//! module renders what it is given: the server depends on it, not the reverse.
//!
//! ```
//! use node::metrics::{ServerMetrics, render};
//!
//! let empty = ServerMetrics::new("n1", std::time::Duration::from_secs(10));
//! let text = render(&empty);
//! assert!(text.contains("repnode_build_info{"));
//! assert!(text.ends_with("# EOF\n"));
//! ```

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeMetric;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::wire::StatusReport;

/// Upper bounds of the commit latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// The `Content-Type` of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A database's commit latency histogram: one per database, kept across scrapes (cheap to
/// clone: clones share their counts).
#[derive(Clone, Debug)]
pub struct CommitLatency(Histogram);

impl Default for CommitLatency {
    fn default() -> CommitLatency {
        CommitLatency(Histogram::new(BUCKETS))
    }
}

impl CommitLatency {
    /// Records one write's time from arrival to commit.
    pub fn observe(&self, elapsed: Duration) {
        self.0.observe(elapsed.as_secs_f64());
    }
}

/// What the metrics endpoint shows of one loaded database.
pub struct DatabaseMetrics {
    /// Its status, as `repnode status` shows it.
    pub status: StatusReport,
    /// Its commit latency.
    pub commit_latency: CommitLatency,
    /// Transactions applied to its state machine.
    pub applied: u64,
    /// Payload bytes applied to its state machine.
    pub applied_bytes: u64,
}

/// What the metrics endpoint shows of a server: every loaded database.
pub struct ServerMetrics {
    /// The server's name.
    pub server: String,
    /// Its loaded databases.
    pub databases: Vec<DatabaseMetrics>,
    /// How far behind its source (in time) a replica may be and count as ready.
    pub ready_max_lag: Duration,
}

impl ServerMetrics {
    /// A server without databases.
    pub fn new(server: &str, ready_max_lag: Duration) -> ServerMetrics {
        ServerMetrics {
            server: server.to_string(),
            databases: Vec::new(),
            ready_max_lag,
        }
    }

    /// Whether every loaded database serves, and why each that does not.
    pub fn readiness(&self) -> Vec<(String, Option<String>)> {
        self.databases
            .iter()
            .map(|db| {
                let status = &db.status;
                (
                    status.database.clone(),
                    not_ready(status, self.ready_max_lag),
                )
            })
            .collect()
    }
}

/// Why a database does not serve as its role should, or `None` when it does: a primary takes
/// writes (not fenced, its log sound, under automatic failover holding the lease); a replica
/// streams from its source and trails it by at most `max_lag`.
fn not_ready(status: &StatusReport, max_lag: Duration) -> Option<String> {
    if let Some(failure) = &status.log_failure {
        return Some(format!("log failed: {failure}"));
    }
    if status.role == "primary" {
        if let Some(epoch) = status.fenced {
            return Some(format!("fenced: epoch {epoch} was seen"));
        }
        if let Some(failover) = &status.failover
            && failover.lease_remaining_ms.is_none()
        {
            return Some("holds no leader lease: the coordinator elects another".into());
        }
        if status.policy_met_by_connected == Some(false) {
            let policy = status.policy.as_deref().unwrap_or("its policy");
            return Some(format!(
                "writes wait: the replicas connected cannot meet {policy}"
            ));
        }
        return None;
    }
    let source = status.source.as_ref()?;
    if !source.streaming {
        let why = status
            .link_error
            .as_ref()
            .map(|e| format!("{}: {}", e.cause, e.message))
            .or_else(|| status.last_error.clone())
            .unwrap_or_else(|| status.phase.clone().unwrap_or_default());
        return Some(format!("not streaming from its source: {why}"));
    }
    let lag = Duration::from_millis(source.lag_ms.unwrap_or(0));
    (lag > max_lag).then(|| {
        format!(
            "{} ms behind its source, over the bound of {} ms",
            lag.as_millis(),
            max_lag.as_millis()
        )
    })
}

/// Label sets: a name and a value per label.
type Labels = Vec<(&'static str, String)>;

/// One scrape's registry, filled family by family.
struct Scrape {
    registry: Registry,
}

impl Scrape {
    /// An integer gauge (transaction ids, counts, 0 or 1) with a sample per label set.
    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, u64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in samples {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.registry.register(name, help, family);
    }

    /// A gauge in `unit` (the name takes the unit as its suffix), fractional.
    fn measure(
        &mut self,
        name: &str,
        help: &str,
        unit: Unit,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register_with_unit(name, help, unit, family);
    }

    /// A counter (the name takes `_total` when encoded).
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in samples {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }
}

/// The label set of one database.
fn db(status: &StatusReport) -> Labels {
    vec![("database", status.database.clone())]
}

/// Renders every metric of this server, in the OpenMetrics text format.
pub fn render(metrics: &ServerMetrics) -> String {
    let mut scrape = Scrape {
        registry: Registry::default(),
    };
    scrape.registry.register(
        "repnode_build",
        "The running build: its version and commit",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("commit", crate::BUILD_COMMIT.to_string()),
            ("server", metrics.server.clone()),
        ]),
    );
    process_metrics(&mut scrape);
    let dbs: Vec<&StatusReport> = metrics.databases.iter().map(|d| &d.status).collect();
    database_metrics(&mut scrape, metrics, &dbs);
    primary_metrics(&mut scrape, &dbs);
    replica_metrics(&mut scrape, &dbs);
    failover_metrics(&mut scrape, &dbs);
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &scrape.registry);
    text
}

/// Role, epoch, positions, writes and readiness of every database.
fn database_metrics(scrape: &mut Scrape, metrics: &ServerMetrics, dbs: &[&StatusReport]) {
    scrape.registry.register_with_unit(
        "repnode_commit_latency",
        "Time from a write's arrival to its commit",
        Unit::Seconds,
        CommitLatencies(
            metrics
                .databases
                .iter()
                .map(|d| (d.status.database.clone(), d.commit_latency.clone()))
                .collect(),
        ),
    );
    scrape.gauge(
        "repnode_role",
        "1 for the role each database has here: primary, replica or external_replica",
        dbs.iter().filter_map(|s| {
            let role = match s.role.as_str() {
                "primary" => "primary",
                "replica" => "replica",
                // A database whose status could not be read has no role to show.
                "" => return None,
                _ => "external_replica",
            };
            let labels = vec![("database", s.database.clone()), ("role", role.into())];
            Some((labels, 1))
        }),
    );
    scrape.gauge(
        "repnode_epoch",
        "The database's epoch here",
        dbs.iter().map(|s| (db(s), s.epoch)),
    );
    scrape.gauge(
        "repnode_committed_tx",
        "The commit point: the last transaction committed",
        dbs.iter().map(|s| (db(s), s.committed.tx_id)),
    );
    scrape.gauge(
        "repnode_precommitted_tx",
        "The last transaction stored durably here",
        dbs.iter().map(|s| (db(s), s.precommitted.tx_id)),
    );
    scrape.gauge(
        "repnode_log_base_tx",
        "The last transaction before the log's first (compacted away or from a snapshot)",
        dbs.iter().map(|s| (db(s), s.log_base)),
    );
    scrape.gauge(
        "repnode_waiting_writes",
        "Writes waiting for their quorum",
        dbs.iter().map(|s| (db(s), s.waiting_writes as u64)),
    );
    scrape.gauge(
        "repnode_log_failed",
        "1 when the log failed (a write or sync did): nothing is acknowledged until a restart",
        dbs.iter()
            .map(|s| (db(s), u64::from(s.log_failure.is_some()))),
    );
    scrape.gauge(
        "repnode_fenced",
        "1 for a primary fenced by a higher epoch: it takes no writes",
        dbs.iter().map(|s| (db(s), u64::from(s.fenced.is_some()))),
    );
    let readiness = metrics.readiness();
    scrape.gauge(
        "repnode_ready",
        "1 when the database serves as its role should (what /readyz checks)",
        readiness
            .iter()
            .map(|(name, why)| (vec![("database", name.clone())], u64::from(why.is_none()))),
    );
    scrape.counter(
        "repnode_applied_transactions",
        "Transactions applied to the state machine here",
        metrics.databases.iter().map(|d| (db(&d.status), d.applied)),
    );
    scrape.counter(
        "repnode_applied_payload_bytes",
        "Payload bytes applied to the state machine here",
        metrics
            .databases
            .iter()
            .map(|d| (db(&d.status), d.applied_bytes)),
    );
}

/// Every database's commit latency histogram, encoded as one family.
#[derive(Debug)]
struct CommitLatencies(Vec<(String, CommitLatency)>);

impl EncodeMetric for CommitLatencies {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        for (name, latency) in &self.0 {
            let labels = vec![("database", name.clone())];
            latency.0.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// A primary's view of its replicas, as `pg_stat_replication` shows it.
fn primary_metrics(scrape: &mut Scrape, dbs: &[&StatusReport]) {
    let primaries = || dbs.iter().filter(|s| s.role == "primary");
    scrape.gauge(
        "repnode_policy_met",
        "On a primary: 1 when the replicas connected now can meet its quorum policy",
        primaries().map(|s| (db(s), u64::from(s.policy_met_by_connected != Some(false)))),
    );
    let replicas = || {
        dbs.iter().flat_map(|s| {
            s.replicas.iter().map(|r| {
                let labels = vec![
                    ("database", s.database.clone()),
                    ("replica", r.replica.clone()),
                ];
                (labels, r)
            })
        })
    };
    scrape.gauge(
        "repnode_replica_acked_tx",
        "The last transaction a replica acknowledged as durable",
        replicas().map(|(l, r)| (l, r.acked_tx_id)),
    );
    scrape.gauge(
        "repnode_replica_lag_transactions",
        "How many transactions a replica is behind this primary's log",
        replicas().map(|(l, r)| (l, r.lag_txs)),
    );
    scrape.measure(
        "repnode_replica_lag",
        "How long a replica has been behind",
        Unit::Seconds,
        replicas().map(|(l, r)| (l, r.lag_ms as f64 / 1000.0)),
    );
    scrape.gauge(
        "repnode_replica_connected",
        "1 while a replica is connected",
        replicas().map(|(l, r)| (l, u64::from(r.connected))),
    );
    scrape.gauge(
        "repnode_replica_member",
        "1 for a member: the quorum policy counts it, connected or not",
        replicas().map(|(l, r)| (l, u64::from(r.member))),
    );
}

/// A replica's view of its source, as immudb's replication metrics and
/// `pg_stat_wal_receiver` show it.
fn replica_metrics(scrape: &mut Scrape, dbs: &[&StatusReport]) {
    let sources = || {
        dbs.iter()
            .filter_map(|s| s.source.as_ref().map(|source| (db(s), source)))
    };
    scrape.gauge(
        "repnode_source_streaming",
        "On a replica: 1 while it streams from its source",
        sources().map(|(l, s)| (l, u64::from(s.streaming))),
    );
    scrape.gauge(
        "repnode_source_committed_tx",
        "On a replica: its source's commit point as last heard",
        sources().filter_map(|(l, s)| Some((l, s.committed_tx_id?))),
    );
    scrape.gauge(
        "repnode_source_lag_transactions",
        "On a replica: transactions its source committed that it has not, as last heard",
        sources().filter_map(|(l, s)| Some((l, s.lag_txs?))),
    );
    scrape.measure(
        "repnode_source_lag",
        "On a replica: how long its commit point has trailed its source's",
        Unit::Seconds,
        sources().filter_map(|(l, s)| Some((l, s.lag_ms? as f64 / 1000.0))),
    );
    scrape.counter(
        "repnode_source_connects",
        "On a replica: connections dialled to its source (the first and every retry)",
        sources().map(|(l, s)| (l, s.connects)),
    );
    scrape.counter(
        "repnode_source_errors",
        "On a replica: failures of its link to its source, by cause",
        sources().flat_map(|(l, s)| {
            s.errors.iter().map(move |(cause, count)| {
                let mut labels = l.clone();
                labels.push(("cause", cause.clone()));
                (labels, *count)
            })
        }),
    );
}

/// The counters of automatic failover, for the databases under it.
fn failover_metrics(scrape: &mut Scrape, dbs: &[&StatusReport]) {
    let agents = || {
        dbs.iter()
            .filter_map(|s| s.failover.as_ref().map(|f| (db(s), f)))
    };
    scrape.counter(
        "repnode_failover_elections_won",
        "Leader key campaigns this member won",
        agents().map(|(l, f)| (l, f.elections_won)),
    );
    scrape.counter(
        "repnode_failover_renew_failures",
        "Lease grants or renewals that failed",
        agents().map(|(l, f)| (l, f.renew_failures)),
    );
    scrape.counter(
        "repnode_failover_self_fencings",
        "Times this primary's lease deadline passed without a renewal: it stopped acknowledging",
        agents().map(|(l, f)| (l, f.self_fencings)),
    );
    scrape.measure(
        "repnode_failover_lease_remaining",
        "As leader, how long this primary may still acknowledge without a renewal",
        Unit::Seconds,
        agents().filter_map(|(l, f)| Some((l, f.lease_remaining_ms? as f64 / 1000.0))),
    );
}

/// The standard process metrics of the Prometheus client libraries, read from `/proc`.
fn process_metrics(scrape: &mut Scrape) {
    let Some(process) = ProcessStats::read() else {
        return;
    };
    let none = || std::iter::once((Labels::new(), 0.0));
    scrape.registry.register_with_unit(
        "process_cpu",
        "User and system CPU time spent",
        Unit::Seconds,
        {
            let counter = Counter::<f64, AtomicU64>::default();
            counter.inc_by(process.cpu_seconds);
            counter
        },
    );
    for (name, help, value) in [
        (
            "process_resident_memory",
            "Resident memory size",
            process.resident_bytes,
        ),
        (
            "process_virtual_memory",
            "Virtual memory size",
            process.virtual_bytes,
        ),
    ] {
        scrape.measure(
            name,
            help,
            Unit::Bytes,
            none().map(|(l, _)| (l, value as f64)),
        );
    }
    scrape.measure(
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Unit::Seconds,
        none().map(|(l, _)| (l, process.start_time_seconds)),
    );
    scrape.gauge(
        "process_open_fds",
        "Open file descriptors",
        [(Labels::new(), process.open_fds)],
    );
    if let Some(max) = process.max_fds {
        scrape.gauge(
            "process_max_fds",
            "The limit of open file descriptors",
            [(Labels::new(), max)],
        );
    }
    scrape.gauge(
        "process_threads",
        "OS threads in the process",
        [(Labels::new(), process.threads)],
    );
}

/// This process, as `/proc/self` shows it (Linux).
struct ProcessStats {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: u64,
    max_fds: Option<u64>,
    threads: u64,
}

impl ProcessStats {
    fn read() -> Option<ProcessStats> {
        // /proc reports times in USER_HZ ticks, which Linux fixes at 100 for user space
        // whatever the kernel's own tick rate (the kernel converts).
        const TICKS_PER_SECOND: f64 = 100.0;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) may hold spaces: the fields after it follow its `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        // Fields 14, 15 (utime, stime), 20 (threads), 22 (starttime) and 23 (vsize), counted
        // from 1; `fields` begins at field 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))?
            .trim()
            .parse::<u64>()
            .ok()?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits
                    .lines()
                    .find(|line| line.starts_with("Max open files"))
                    .and_then(|line| line.split_whitespace().nth(3))
                    .and_then(|soft| soft.parse::<u64>().ok())
            });
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / TICKS_PER_SECOND,
            threads: field(20)?,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / TICKS_PER_SECOND,
            virtual_bytes: field(23)?,
            resident_bytes: resident_bytes()?,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds,
        })
    }
}

/// The resident set size, from `/proc/self/status` (in kB there, whatever the page size).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// An HTTP answer: status line, content type and body.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

/// The answer to `GET path`.
fn answer(method: &str, path: &str, metrics: Option<&ServerMetrics>) -> Answer {
    let json = |status, body: serde_json::Value| Answer {
        status,
        content_type: "application/json",
        body: format!("{body}\n"),
    };
    if method != "GET" && method != "HEAD" {
        return json(
            "405 Method Not Allowed",
            serde_json::json!({"error": "only GET is served"}),
        );
    }
    match (path, metrics) {
        ("/healthz", _) => json("200 OK", serde_json::json!({"status": "ok"})),
        ("/metrics", Some(metrics)) => Answer {
            status: "200 OK",
            content_type: OPENMETRICS,
            body: render(metrics),
        },
        ("/readyz", Some(metrics)) => {
            let readiness = metrics.readiness();
            let ready = readiness.iter().all(|(_, why)| why.is_none());
            let databases: serde_json::Map<String, serde_json::Value> = readiness
                .into_iter()
                .map(|(name, why)| {
                    let value = match why {
                        None => serde_json::json!({"ready": true}),
                        Some(why) => serde_json::json!({"ready": false, "reason": why}),
                    };
                    (name, value)
                })
                .collect();
            let status = if ready {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            json(
                status,
                serde_json::json!({"status": if ready { "ready" } else { "not ready" }, "databases": databases}),
            )
        }
        _ => json(
            "404 Not Found",
            serde_json::json!({"error": "not found: /metrics, /healthz and /readyz are served"}),
        ),
    }
}

/// The method and path of an HTTP request head.
fn request_line(head: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(head);
    let mut words = text.lines().next().unwrap_or_default().split_whitespace();
    let method = words.next().unwrap_or_default().to_string();
    // A query string does not change the resource.
    let path = words
        .next()
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_string();
    (method, path)
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the listener fails, gathering what
/// `gather` returns for each request that needs the databases.
pub async fn serve<F, S>(listener: TcpListener, gather: F)
where
    F: Fn() -> S + Send + Sync + 'static,
    S: Future<Output = ServerMetrics> + Send + 'static,
{
    let gather = Arc::new(gather);
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let gather = gather.clone();
        tokio::spawn(async move {
            // Read the request head, bounded in size and time.
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
            let (method, path) = request_line(&head[..filled]);
            // /healthz answers without asking the databases: the process is up.
            let gathered = match path.as_str() {
                "/metrics" | "/readyz" => Some(gather().await),
                _ => None,
            };
            let answer = answer(&method, &path, gathered.as_ref());
            let body = if method == "HEAD" { "" } else { &answer.body };
            let response = format!(
                "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                answer.status,
                answer.content_type,
                answer.body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{LinkErrorReport, Position, ReplicaReport, SourceReport};

    fn primary() -> DatabaseMetrics {
        let commit_latency = CommitLatency::default();
        commit_latency.observe(Duration::from_micros(300));
        DatabaseMetrics {
            status: StatusReport {
                database: "app".into(),
                role: "primary".into(),
                epoch: 3,
                committed: Position {
                    tx_id: 5,
                    hash: String::new(),
                },
                precommitted: Position {
                    tx_id: 6,
                    hash: String::new(),
                },
                policy_met_by_connected: Some(true),
                replicas: vec![ReplicaReport {
                    replica: "n2/app".into(),
                    node: "n2".into(),
                    database: "app".into(),
                    member: true,
                    address: "127.0.0.1:7441".into(),
                    acked_tx_id: 4,
                    lag_txs: 2,
                    lag_ms: 1500,
                    connected: true,
                }],
                ..StatusReport::default()
            },
            commit_latency,
            applied: 5,
            applied_bytes: 640,
        }
    }

    fn replica(streaming: bool, lag_ms: u64) -> DatabaseMetrics {
        DatabaseMetrics {
            status: StatusReport {
                database: "copy".into(),
                role: "replica".into(),
                source: Some(SourceReport {
                    address: "127.0.0.1:7440/app".into(),
                    streaming,
                    committed_tx_id: Some(9),
                    lag_txs: Some(4),
                    lag_ms: Some(lag_ms),
                    connects: 3,
                    errors: vec![("unreachable".into(), 2), ("certificate".into(), 0)],
                }),
                link_error: (!streaming).then(|| LinkErrorReport {
                    cause: "unreachable".into(),
                    message: "cannot reach 127.0.0.1:7440: timed out".into(),
                    attempts: 2,
                    ..LinkErrorReport::default()
                }),
                ..StatusReport::default()
            },
            commit_latency: CommitLatency::default(),
            applied: 0,
            applied_bytes: 0,
        }
    }

    fn server(databases: Vec<DatabaseMetrics>) -> ServerMetrics {
        ServerMetrics {
            databases,
            ..ServerMetrics::new("n1", Duration::from_secs(10))
        }
    }

    #[test]
    fn databases_render_with_one_descriptor_per_family() {
        let text = render(&server(vec![primary(), replica(true, 0)]));
        for line in [
            "# TYPE repnode_commit_latency_seconds histogram",
            "repnode_commit_latency_seconds_bucket{le=\"0.0002\",database=\"app\"} 0",
            "repnode_commit_latency_seconds_bucket{le=\"0.0005\",database=\"app\"} 1",
            "repnode_commit_latency_seconds_count{database=\"app\"} 1",
            "repnode_committed_tx{database=\"app\"} 5",
            "repnode_epoch{database=\"app\"} 3",
            "repnode_role{database=\"app\",role=\"primary\"} 1",
            "repnode_role{database=\"copy\",role=\"replica\"} 1",
            "repnode_applied_payload_bytes_total{database=\"app\"} 640",
            "repnode_replica_lag_seconds{database=\"app\",replica=\"n2/app\"} 1.5",
            "repnode_replica_connected{database=\"app\",replica=\"n2/app\"} 1",
            "repnode_source_committed_tx{database=\"copy\"} 9",
            "repnode_source_lag_transactions{database=\"copy\"} 4",
            "repnode_source_errors_total{database=\"copy\",cause=\"unreachable\"} 2",
            "repnode_source_connects_total{database=\"copy\"} 3",
            "repnode_ready{database=\"app\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        for family in ["repnode_committed_tx", "repnode_commit_latency_seconds"] {
            let descriptors = text
                .lines()
                .filter(|l| {
                    *l == format!("# TYPE {family} gauge")
                        || *l == format!("# TYPE {family} histogram")
                })
                .count();
            assert_eq!(descriptors, 1, "{family}: one TYPE line for all databases");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_replica_is_ready_while_it_streams_within_its_lag_bound() {
        let ready = |db: DatabaseMetrics| server(vec![db]).readiness().remove(0).1;
        assert_eq!(ready(primary()), None);
        assert_eq!(ready(replica(true, 2_000)), None);
        let lagging = ready(replica(true, 60_000)).expect("too far behind");
        assert!(lagging.contains("60000 ms behind"), "{lagging}");
        let cut = ready(replica(false, 0)).expect("not streaming");
        assert!(cut.contains("unreachable: cannot reach"), "{cut}");
        let mut fenced = primary();
        fenced.status.fenced = Some(4);
        assert!(ready(fenced).is_some());
    }

    #[test]
    fn paths_other_than_the_three_are_not_found() {
        let metrics = server(vec![primary(), replica(false, 0)]);
        assert_eq!(answer("GET", "/healthz", None).status, "200 OK");
        assert_eq!(answer("GET", "/nope", None).status, "404 Not Found");
        assert_eq!(
            answer("POST", "/metrics", None).status,
            "405 Method Not Allowed"
        );
        let readyz = answer("GET", "/readyz", Some(&metrics));
        assert_eq!(readyz.status, "503 Service Unavailable");
        let body: serde_json::Value = serde_json::from_str(&readyz.body).expect("json");
        assert_eq!(body["databases"]["app"]["ready"], true);
        assert_eq!(body["databases"]["copy"]["ready"], false);
        assert_eq!(
            answer("GET", "/metrics", Some(&metrics)).content_type,
            OPENMETRICS
        );
        assert_eq!(
            request_line(b"GET /readyz?x=1 HTTP/1.1\r\n\r\n"),
            ("GET".into(), "/readyz".into())
        );
    }
}
