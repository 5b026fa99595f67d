//! The engine in openraft's benchmark configuration: store-mem logs and the in-memory
//! transport, a primary and two replicas, majority commit, 1, 64 and 256 concurrent clients.
//! Each iteration is one committed write. The full matrix of quorum sizes, replica counts,
//! transports and stores is `quorum_matrix`.
#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::sync::Arc;
use std::time::Duration;

use benches::{bench_runtime, run_writes};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use replication_core::TxId;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{EngineConfig, Role};
use replication_core::quorum::Quorum;
use replication_core::testing::{DiscardingStateMachine, MemNetwork};
use store_mem::MemLog;

/// Committed transactions each in-memory log keeps, so that the benchmark's memory stays
/// bounded however long it runs (openraft's in-memory log store also purges old entries).
const RETAINED_TXS: u64 = 65_536;

struct Cluster {
    primary: Node,
    replicas: Vec<Node>,
}

async fn cluster(quorum: usize, replicas: usize) -> Cluster {
    let network = MemNetwork::new();
    let policy = if quorum == 0 {
        Quorum::Async
    } else {
        Quorum::AckCount {
            n: quorum,
            among: None,
        }
    };
    let primary = Node::start(
        EngineConfig::new("p", "bench", Role::Primary),
        Arc::new(policy),
        MemLog::new().with_retention(RETAINED_TXS),
        network.endpoint("p"),
        DiscardingStateMachine::default(),
        NodeOptions::default(),
    )
    .await
    .expect("primary");
    let mut nodes = Vec::new();
    for i in 0..replicas {
        let name = format!("r{i}");
        let role = Role::Replica {
            address: "p".into(),
        };
        let node = Node::start(
            EngineConfig::new(name.as_str(), "bench", role),
            Arc::new(Quorum::Async),
            MemLog::new().with_retention(RETAINED_TXS),
            network.endpoint(&name),
            // openraft's benchmark applies to "a state machine with no data".
            DiscardingStateMachine::default(),
            NodeOptions::default(),
        )
        .await
        .expect("replica");
        nodes.push(node);
    }
    // Warm up until every replica streams.
    for _ in 0..100 {
        primary
            .write(Bytes::from_static(b"warm-up"))
            .await
            .expect("warm-up");
    }
    for node in &nodes {
        node.wait_applied(TxId(100))
            .await
            .expect("replica caught up");
    }
    Cluster {
        primary,
        replicas: nodes,
    }
}

/// openraft's benchmark configuration: three nodes (a primary and two replicas), in-memory
/// log and transport, majority commit, 1, 64 and 256 clients.
fn three_nodes_majority(c: &mut Criterion) {
    let runtime = bench_runtime();
    let mut group = c.benchmark_group("three_nodes_majority");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let cluster = runtime.block_on(cluster(1, 2));
    for writers in [1usize, 64, 256] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{writers}_clients")),
            &writers,
            |b, &writers| {
                b.iter_custom(|iterations| {
                    runtime.block_on(run_writes(&cluster.primary, writers, iterations))
                });
            },
        );
    }
    runtime.block_on(async {
        cluster.primary.shutdown().await;
        for replica in &cluster.replicas {
            replica.shutdown().await;
        }
    });
    group.finish();
}

criterion_group!(benches, three_nodes_majority);
criterion_main!(benches);
