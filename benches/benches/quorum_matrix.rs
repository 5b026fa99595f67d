//! Commit latency and throughput per quorum size: quorum 0 (asynchronous) to 4 with 1 to 5
//! replicas, and a primary alone for reference; over the in-memory transport and over QUIC
//! (mutual TLS) on loopback; on store-mem and on store-file (`fdatasync` on); with 1 and with
//! 64 concurrent writers of 128-byte payloads.
//!
//! Criterion reports throughput; every write's commit latency also goes into an HDR histogram,
//! and at the end a table of writes/s, p50 and p99 per configuration is printed (and written
//! to `target/bench-results/quorum_matrix.md`) beside the floor measured in the same run: one
//! `fdatasync` of a record-sized append on the same disk plus one loopback UDP round trip. All
//! nodes share that disk, and concurrent flushes slow each other down, so the floor is also
//! measured with as many threads syncing at once as the configuration has nodes, writing into
//! zero-filled space as store-file does; the last column compares QUIC on store-file with it.
//!
//! Filter as usual: `cargo bench -p benches --bench quorum_matrix -- quic_file` runs the QUIC
//! and store-file part only. A cluster is started only for configurations the filter keeps.
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use benches::{
    PAYLOAD_BYTES, bench_dir, bench_runtime, new_histogram, run_writes_recorded, start_node,
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use replication_core::driver::Node;
use replication_core::engine::Role;
use replication_core::quorum::Quorum;
use replication_core::testing::MemNetwork;
use replication_core::{Transport, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};
use store_mem::MemLog;
use transport_quic::testing::loopback;
use transport_quic::{DevCa, QuicOptions};

const MAX_REPLICAS: usize = 5;
const MAX_QUORUM: usize = 4;
const WRITERS: [usize; 2] = [1, 64];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Net {
    Mem,
    Quic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Store {
    Mem,
    File,
}

/// One cluster configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Spec {
    net: Net,
    store: Store,
    replicas: usize,
    quorum: usize,
}

impl Spec {
    fn group(&self) -> String {
        let net = match self.net {
            Net::Mem => "mem",
            Net::Quic => "quic",
        };
        let store = match self.store {
            Store::Mem => "mem",
            Store::File => "file",
        };
        format!("{net}_{store}")
    }

    fn name(&self) -> String {
        if self.replicas == 0 {
            "alone".into()
        } else {
            format!("r{}_q{}", self.replicas, self.quorum)
        }
    }

    fn policy(&self) -> Quorum {
        if self.quorum == 0 {
            Quorum::Async
        } else {
            Quorum::AckCount {
                n: self.quorum,
                among: None,
            }
        }
    }
}

/// Every configuration: a primary alone, then each replica count with each quorum it allows.
fn specs() -> Vec<Spec> {
    let mut specs = Vec::new();
    for net in [Net::Mem, Net::Quic] {
        for store in [Store::Mem, Store::File] {
            specs.push(Spec {
                net,
                store,
                replicas: 0,
                quorum: 0,
            });
            for replicas in 1..=MAX_REPLICAS {
                for quorum in 0..=replicas.min(MAX_QUORUM) {
                    specs.push(Spec {
                        net,
                        store,
                        replicas,
                        quorum,
                    });
                }
            }
        }
    }
    specs
}

struct Cluster {
    spec: Spec,
    primary: Node,
    replicas: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn shutdown(self) {
        self.primary.shutdown().await;
        for replica in &self.replicas {
            replica.shutdown().await;
        }
    }
}

/// Starts the nodes of `spec` with logs from `log` and transports from `transport` (which
/// returns the address others reach that node at).
async fn start_nodes<L: TxLog, T: Transport>(
    spec: Spec,
    log: impl Fn(&str) -> L,
    transport: impl AsyncFn(&str) -> (T, String),
) -> (Node, Vec<Node>) {
    let (primary_transport, primary_address) = transport("p").await;
    let primary = start_node(
        "p",
        Role::Primary,
        spec.policy(),
        log("p"),
        primary_transport,
    )
    .await;
    let mut replicas = Vec::new();
    for i in 0..spec.replicas {
        let name = format!("r{i}");
        let (replica_transport, _) = transport(&name).await;
        let role = Role::Replica {
            address: primary_address.clone(),
        };
        replicas.push(start_node(&name, role, Quorum::Async, log(&name), replica_transport).await);
    }
    (primary, replicas)
}

async fn start_cluster(spec: Spec) -> Cluster {
    let dir = bench_dir();
    let root = dir.path().to_path_buf();
    let file_log =
        |name: &str| FileLog::open(root.join(name), FileLogOptions::default()).expect("file log");
    let mem_log = |_: &str| MemLog::new().with_retention(65_536);
    let network = MemNetwork::new();
    let mem_endpoint = async |name: &str| (network.endpoint(name), name.to_string());
    let ca = DevCa::generate("bench").expect("ca");
    let quic = async |name: &str| {
        loopback(&ca, name, QuicOptions::default())
            .await
            .expect("loopback endpoint")
    };
    let (primary, replicas) = match (spec.net, spec.store) {
        (Net::Mem, Store::Mem) => start_nodes(spec, mem_log, mem_endpoint).await,
        (Net::Mem, Store::File) => start_nodes(spec, file_log, mem_endpoint).await,
        (Net::Quic, Store::Mem) => start_nodes(spec, mem_log, quic).await,
        (Net::Quic, Store::File) => start_nodes(spec, file_log, quic).await,
    };
    // Every replica streams before anything is measured.
    for _ in 0..100 {
        primary
            .write(Bytes::from_static(b"warm-up"))
            .await
            .expect("warm-up");
    }
    for replica in &replicas {
        replica
            .wait_applied(TxId(100))
            .await
            .expect("replica caught up");
    }
    Cluster {
        spec,
        primary,
        replicas,
        _dir: dir,
    }
}

/// Percentiles in microseconds.
#[derive(Clone, Debug)]
struct Floor {
    fdatasync_p50: f64,
    fdatasync_p99: f64,
    round_trip_p50: f64,
    round_trip_p99: f64,
    /// p50 of an `fdatasync` into zero-filled space while `i + 1` threads sync at once.
    contended_p50: Vec<f64>,
}

impl Floor {
    /// The least a commit of `spec` can take in one process: the contended sync of every node,
    /// plus a round trip when a replica must acknowledge.
    fn of(&self, spec: &Spec) -> f64 {
        let syncing = (spec.replicas + 1).min(self.contended_p50.len());
        let sync = self.contended_p50[syncing - 1];
        if spec.quorum == 0 {
            sync
        } else {
            sync + self.round_trip_p50
        }
    }
}

/// `fdatasync` latencies of `threads` threads, each writing records into its own zero-filled
/// file and syncing after each, all at once.
fn contended_syncs(dir: &Path, threads: usize) -> Vec<Duration> {
    let record = vec![5u8; PAYLOAD_BYTES + 56];
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let path = dir.join(format!("contended-{threads}-{i}"));
            let record = record.clone();
            std::thread::spawn(move || {
                let file = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true)
                    .open(&path)
                    .expect("file");
                file.write_all_at(&vec![0u8; 1 << 20], 0).expect("zeros");
                file.sync_data().expect("sync");
                let mut syncs = Vec::with_capacity(500);
                for n in 0..500u64 {
                    let started = Instant::now();
                    file.write_all_at(&record, n * record.len() as u64)
                        .expect("write");
                    file.sync_data().expect("sync");
                    syncs.push(started.elapsed());
                }
                syncs
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("sync thread"))
        .collect()
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

/// The floor, measured now: an append of one record-sized write plus `fdatasync` on the disk
/// the store-file runs use, and a 64-byte UDP round trip on loopback (QUIC runs over UDP).
fn measure_floor() -> Floor {
    let dir = bench_dir();
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.path().join("floor"))
        .expect("floor file");
    let record = vec![5u8; PAYLOAD_BYTES + 56];
    let mut syncs = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        let started = Instant::now();
        file.write_all_at(&record, i * record.len() as u64)
            .expect("write");
        file.sync_data().expect("sync");
        syncs.push(started.elapsed());
    }

    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let server_address = server.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let mut buffer = [0u8; 64];
        for _ in 0..5000 {
            let (n, from) = server.recv_from(&mut buffer).expect("recv");
            server.send_to(&buffer[..n], from).expect("send");
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
    client.connect(server_address).expect("connect");
    let mut trips = Vec::with_capacity(5000);
    let mut buffer = [0u8; 64];
    for _ in 0..5000 {
        let started = Instant::now();
        client.send(&buffer).expect("send");
        client.recv(&mut buffer).expect("recv");
        trips.push(started.elapsed());
    }
    echo.join().expect("echo thread");
    let contended_p50 = (1..=MAX_REPLICAS + 1)
        .map(|threads| percentile(&mut contended_syncs(dir.path(), threads), 0.5))
        .collect();
    Floor {
        fdatasync_p50: percentile(&mut syncs, 0.5),
        fdatasync_p99: percentile(&mut syncs, 0.99),
        round_trip_p50: percentile(&mut trips, 0.5),
        round_trip_p99: percentile(&mut trips, 0.99),
        contended_p50,
    }
}

/// What one configuration measured.
struct Row {
    writes_per_second: f64,
    latencies: Arc<Mutex<Histogram<u64>>>,
}

fn report(floor: &Floor, rows: &BTreeMap<(Spec, usize), Row>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "floor: fdatasync of a {}-byte append p50 {:.0} us (p99 {:.0}); loopback UDP round trip \
         p50 {:.0} us (p99 {:.0}); sum of p50s {:.0} us\n",
        PAYLOAD_BYTES + 56,
        floor.fdatasync_p50,
        floor.fdatasync_p99,
        floor.round_trip_p50,
        floor.round_trip_p99,
        floor.fdatasync_p50 + floor.round_trip_p50,
    );
    let contended: Vec<String> = floor
        .contended_p50
        .iter()
        .enumerate()
        .map(|(i, p50)| format!("{} at once {p50:.0} us", i + 1))
        .collect();
    let _ = writeln!(
        out,
        "fdatasync p50 into zero-filled space with several threads syncing their own files: {}\n",
        contended.join(", ")
    );
    let _ = writeln!(
        out,
        "| transport_store | replicas | quorum | writers | writes/s | p50 us | p99 us | p50 / contended floor |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for ((spec, writers), row) in rows {
        let latencies = row.latencies.lock().expect("histogram");
        if latencies.is_empty() {
            continue;
        }
        let p50 = latencies.value_at_quantile(0.5) as f64;
        let p99 = latencies.value_at_quantile(0.99) as f64;
        // The floor is disk syncs plus a network round trip: it bounds QUIC on store-file.
        let ratio = if (spec.net, spec.store) == (Net::Quic, Store::File) {
            format!("{:.2}", p50 / floor.of(spec))
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {ratio} |",
            spec.group(),
            spec.replicas,
            spec.quorum,
            writers,
            row.writes_per_second,
            p50,
            p99,
        );
    }
    out
}

fn quorum_matrix(c: &mut Criterion) {
    let runtime = Rc::new(bench_runtime());
    let floor = measure_floor();
    // The cluster of the configuration being measured; started by the first benchmark of a
    // configuration that the filter keeps, and stopped when the next one starts.
    let current: Rc<RefCell<Option<Cluster>>> = Rc::new(RefCell::new(None));
    let mut rows: BTreeMap<(Spec, usize), Row> = BTreeMap::new();
    let specs = specs();
    let mut groups: Vec<String> = specs.iter().map(Spec::group).collect();
    groups.dedup();
    for group_name in groups {
        let mut group = c.benchmark_group(&group_name);
        group
            .sample_size(10)
            .measurement_time(Duration::from_millis(1500))
            .warm_up_time(Duration::from_millis(300))
            .throughput(Throughput::Elements(1));
        for spec in specs.iter().copied().filter(|s| s.group() == group_name) {
            for writers in WRITERS {
                let latencies = Arc::new(Mutex::new(new_histogram()));
                let measured = Rc::new(RefCell::new((0u64, Duration::ZERO)));
                let (current, latencies_here, measured_here, runtime) = (
                    current.clone(),
                    latencies.clone(),
                    measured.clone(),
                    runtime.clone(),
                );
                group.bench_with_input(
                    BenchmarkId::new(spec.name(), format!("{writers}w")),
                    &writers,
                    move |b, &writers| {
                        let mut slot = current.borrow_mut();
                        if slot.as_ref().map(|c| c.spec) != Some(spec) {
                            if let Some(old) = slot.take() {
                                runtime.block_on(old.shutdown());
                            }
                            *slot = Some(runtime.block_on(start_cluster(spec)));
                        }
                        let cluster = slot.as_ref().expect("started");
                        b.iter_custom(|iterations| {
                            let took = runtime.block_on(run_writes_recorded(
                                &cluster.primary,
                                writers,
                                iterations,
                                &latencies_here,
                            ));
                            let mut measured = measured_here.borrow_mut();
                            measured.0 += iterations;
                            measured.1 += took;
                            took
                        });
                    },
                );
                let (writes, took) = *measured.borrow();
                if writes > 0 {
                    rows.insert(
                        (spec, writers),
                        Row {
                            writes_per_second: writes as f64 / took.as_secs_f64(),
                            latencies,
                        },
                    );
                }
            }
        }
        group.finish();
    }
    if let Some(last) = current.borrow_mut().take() {
        runtime.block_on(last.shutdown());
    }
    let table = report(&floor, &rows);
    println!("\n{table}");
    let out: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results");
    if std::fs::create_dir_all(&out).is_ok() {
        let _ = std::fs::write(out.join("quorum_matrix.md"), &table);
    }
}

criterion_group!(benches, quorum_matrix);
criterion_main!(benches);
