//! The driver on store-file: a synchronous cluster whose replica restarts from its directory
//! and resumes from its own durable position.

use std::sync::Arc;

use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{AckKind, EngineConfig, Role};
use replication_core::quorum::Quorum;
use replication_core::testing::{MemNetwork, RecordingStateMachine, fast_timers};
use replication_core::{TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

fn config(name: &str, role: Role) -> EngineConfig {
    fast_timers(EngineConfig::new(name, "db", role))
}

async fn start(
    network: &MemNetwork,
    config: EngineConfig,
    policy: Quorum,
    dir: &std::path::Path,
) -> Node {
    let name = config.node.0.clone();
    let log = FileLog::open(dir, FileLogOptions::default()).expect("open log");
    Node::start(
        config,
        Arc::new(policy),
        log,
        network.endpoint(&name),
        RecordingStateMachine::default(),
        NodeOptions::default(),
    )
    .await
    .expect("start")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_restarts_from_disk_and_resumes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (p_dir, r_dir) = (root.path().join("p"), root.path().join("r"));
    let network = MemNetwork::new();
    let primary = start(
        &network,
        config("p", Role::Primary),
        Quorum::AckCount { n: 1, among: None },
        &p_dir,
    )
    .await;
    let replica_role = || Role::Replica {
        address: "p".into(),
    };
    let replica = start(&network, config("r", replica_role()), Quorum::Async, &r_dir).await;
    for i in 0..100 {
        let receipt = primary
            .write(Bytes::from(format!("v{i}")))
            .await
            .expect("write");
        assert_eq!(receipt.ack, AckKind::Quorum);
    }
    replica.wait_applied(TxId(100)).await.expect("applied");
    replica.shutdown().await;
    network.remove("r");
    drop(replica);

    // Writes wait while the replica is away...
    let waiting = tokio::spawn({
        let primary = primary.clone();
        async move { primary.write(Bytes::from_static(b"while away")).await }
    });
    // ...and complete once it is back, resuming from its own log (101 comes over the wire;
    // 1..=100 were already on its disk).
    let replica = start(&network, config("r", replica_role()), Quorum::Async, &r_dir).await;
    assert_eq!(
        replica.applied(),
        TxId(100),
        "state rebuilt from the committed log on disk"
    );
    let receipt = waiting
        .await
        .expect("task")
        .expect("completes after the replica returns");
    assert_eq!(receipt.tx_id, TxId(101));
    replica.wait_applied(TxId(101)).await.expect("applied");
    primary.shutdown().await;
    replica.shutdown().await;
    drop((primary, replica));
    // Both logs on disk hold the same 101 transactions.
    let p = FileLog::open(&p_dir, FileLogOptions::default()).expect("reopen p");
    let r = FileLog::open(&r_dir, FileLogOptions::default()).expect("reopen r");
    let (ps, rs) = (
        p.state().await.expect("state"),
        r.state().await.expect("state"),
    );
    assert_eq!(ps.last, rs.last);
    assert_eq!(ps.last.tx_id, TxId(101));
}
