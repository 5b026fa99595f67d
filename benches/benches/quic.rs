//! QUIC against the in-memory transport and against plain quinn, in one run on loopback:
//! - synchronous commit (quorum 1, one replica, both on store-file) through QUIC and through
//!   the in-memory transport, with 1 and 64 writers (target: QUIC at least 70% of in-memory
//!   throughput with 64 writers);
//! - bulk catch-up: an empty replica pulling a 64 MiB log over QUIC, against a plain quinn
//!   stream carrying the same bytes (target: at least 50%).
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::path::Path;
use std::time::{Duration, Instant};

use benches::{bench_dir, bench_runtime, run_writes, start_node};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use replication_core::driver::Node;
use replication_core::engine::Role;
use replication_core::quorum::Quorum;
use replication_core::testing::MemNetwork;
use replication_core::{Transport, TxId};
use store_file::{FileLog, FileLogOptions};
use transport_quic::testing::loopback;
use transport_quic::{DevCa, QuicOptions, QuicTransport};

async fn quic(ca: &DevCa, name: &str) -> (QuicTransport, String) {
    loopback(ca, name, QuicOptions::default())
        .await
        .expect("loopback endpoint")
}

async fn start<T: Transport>(
    name: &str,
    role: Role,
    policy: Quorum,
    dir: &Path,
    transport: T,
) -> Node {
    let log = FileLog::open(dir.join(name), FileLogOptions::default()).expect("log");
    start_node(name, role, policy, log, transport).await
}

/// A primary and one synchronous replica; returns both.
async fn pair(over_quic: bool, dir: &Path) -> (Node, Node) {
    let policy = Quorum::AckCount { n: 1, among: None };
    if over_quic {
        let ca = DevCa::generate("bench").expect("ca");
        let (p_transport, p_address) = quic(&ca, "p").await;
        let (r_transport, _) = quic(&ca, "r").await;
        let primary = start("p", Role::Primary, policy, dir, p_transport).await;
        let replica = start(
            "r",
            Role::Replica { address: p_address },
            Quorum::Async,
            dir,
            r_transport,
        )
        .await;
        (primary, replica)
    } else {
        let network = MemNetwork::new();
        let primary = start("p", Role::Primary, policy, dir, network.endpoint("p")).await;
        let replica = start(
            "r",
            Role::Replica {
                address: "p".into(),
            },
            Quorum::Async,
            dir,
            network.endpoint("r"),
        )
        .await;
        (primary, replica)
    }
}

fn synchronous_commit(c: &mut Criterion) {
    let runtime = bench_runtime();
    let mut group = c.benchmark_group("sync_commit_store_file");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Elements(1));
    for (label, over_quic) in [("in_memory", false), ("quic", true)] {
        let dir = bench_dir();
        let (primary, replica) = runtime.block_on(pair(over_quic, dir.path()));
        runtime.block_on(async {
            primary
                .write(Bytes::from_static(b"warm-up"))
                .await
                .expect("warm-up");
            replica
                .wait_applied(TxId(1))
                .await
                .expect("replica streams");
        });
        for writers in [1usize, 64] {
            group.bench_with_input(
                BenchmarkId::new(label, format!("{writers}_writers")),
                &writers,
                |b, &writers| {
                    b.iter_custom(|iterations| {
                        runtime.block_on(run_writes(&primary, writers, iterations))
                    });
                },
            );
        }
        runtime.block_on(async {
            primary.shutdown().await;
            replica.shutdown().await;
        });
    }
    group.finish();
}

const CATCH_UP_TXS: u64 = 16 * 1024;
const CATCH_UP_PAYLOAD: usize = 4096;

fn catch_up(c: &mut Criterion) {
    let runtime = bench_runtime();
    let ca = DevCa::generate("bench").expect("ca");
    let dir = bench_dir();
    // One primary with a 64 MiB log, written once.
    let (primary, primary_address) = runtime.block_on(async {
        let (transport, address) = quic(&ca, "p").await;
        let primary = start("p", Role::Primary, Quorum::Async, dir.path(), transport).await;
        let payload = Bytes::from(vec![5u8; CATCH_UP_PAYLOAD]);
        let writers: Vec<_> = (0..64)
            .map(|_| {
                let primary = primary.clone();
                let payload = payload.clone();
                tokio::spawn(async move {
                    for _ in 0..CATCH_UP_TXS / 64 {
                        primary.write(payload.clone()).await.expect("write");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("writer");
        }
        (primary, address)
    });
    let mut group = c.benchmark_group("catch_up_64MiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_millis(500));
    group.throughput(Throughput::Bytes(CATCH_UP_TXS * CATCH_UP_PAYLOAD as u64));
    let mut round = 0;
    group.bench_function("replica_over_quic", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    round += 1;
                    let name = format!("r{round}");
                    let (transport, _) = quic(&ca, &name).await;
                    let replica_dir = bench_dir();
                    let start_at = Instant::now();
                    let replica = start(
                        &name,
                        Role::Replica {
                            address: primary_address.clone(),
                        },
                        Quorum::Async,
                        replica_dir.path(),
                        transport,
                    )
                    .await;
                    replica
                        .wait_applied(TxId(CATCH_UP_TXS))
                        .await
                        .expect("caught up");
                    total += start_at.elapsed();
                    replica.shutdown().await;
                }
                total
            })
        });
    });
    group.bench_function("plain_quinn_stream", |b| {
        b.iter_custom(|iterations| {
            runtime.block_on(async {
                let (server, address) = quic(&ca, "raw-server").await;
                let (client, _) = quic(&ca, "raw-client").await;
                let total_bytes = CATCH_UP_TXS as usize * (CATCH_UP_PAYLOAD + 100);
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let start_at = Instant::now();
                    let mut outgoing = client.connect(&address).await.expect("connect");
                    let sending = tokio::spawn(async move {
                        let chunk = Bytes::from(vec![1u8; 1 << 20]);
                        let mut sent = 0;
                        while sent < total_bytes {
                            outgoing.sender.send(chunk.clone()).await.expect("send");
                            sent += chunk.len();
                        }
                        outgoing
                    });
                    let mut incoming = server.accept().await.expect("accept");
                    let mut received = 0;
                    while received < total_bytes {
                        received += incoming
                            .receiver
                            .recv()
                            .await
                            .expect("recv")
                            .expect("frame")
                            .len();
                    }
                    drop(sending.await.expect("sender"));
                    total += start_at.elapsed();
                }
                total
            })
        });
    });
    group.finish();
    runtime.block_on(primary.shutdown());
}

criterion_group!(benches, synchronous_commit, catch_up);
criterion_main!(benches);
