//! The tokio driver with store-mem and the in-memory transport: a primary, replicas, a replica
//! of a replica, synchronous stalls, policy changes, late joiners and crashes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions, StartError};
use replication_core::engine::{
    AckKind, EngineConfig, EngineStatus, Role, UpstreamState, WriteError,
};
use replication_core::quorum::Quorum;
use replication_core::testing::{MemNetwork, MemRollback, RecordingStateMachine, fast_timers};
use replication_core::{TxId, TxLog};
use store_mem::MemLog;

fn config(name: &str, role: Role) -> EngineConfig {
    fast_timers(EngineConfig::new(name, "db", role))
}

fn replica_of(source: &str) -> Role {
    Role::Replica {
        address: source.to_string(),
    }
}

struct TestNode {
    node: Node,
    log: MemLog,
    machine: RecordingStateMachine,
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start(
    network: &MemNetwork,
    config: EngineConfig,
    policy: Quorum,
    log: MemLog,
) -> TestNode {
    start_with(network, config, policy, log, NodeOptions::default())
        .await
        .expect("start")
}

async fn start_with(
    network: &MemNetwork,
    config: EngineConfig,
    policy: Quorum,
    log: MemLog,
    options: NodeOptions,
) -> Result<TestNode, StartError> {
    init_logs();
    let machine = RecordingStateMachine::default();
    let name = config.node.0.clone();
    let node = Node::start(
        config,
        Arc::new(policy),
        log.clone(),
        network.endpoint(&name),
        machine.clone(),
        options,
    )
    .await?;
    Ok(TestNode { node, log, machine })
}

async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    let polled = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), polled)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Waits until `node`'s status satisfies `ready`, and returns it.
async fn until_status(
    node: &Node,
    what: &str,
    ready: impl Fn(&EngineStatus) -> bool,
) -> EngineStatus {
    let polled = async {
        loop {
            let status = node.status().await.expect("status");
            if ready(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), polled)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Waits until `count` writes wait for their quorum on `node`.
async fn until_waiting(node: &Node, count: usize) {
    let what = format!("{count} waiting writes");
    until_status(node, &what, |status| status.waiting_writes == count).await;
}

async fn put(
    node: &Node,
    text: &str,
) -> Result<replication_core::engine::WriteReceipt, WriteError> {
    node.write(Bytes::from(text.to_string())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_primary_streams_to_replicas_and_a_cascade() {
    let network = MemNetwork::new();
    let primary = start(
        &network,
        config("p", Role::Primary),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    let r1 = start(
        &network,
        config("r1", replica_of("p")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    let r2 = start(
        &network,
        config("r2", replica_of("r1")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    let mut last = TxId::ZERO;
    for i in 0..50 {
        let receipt = put(&primary.node, &format!("w{i}")).await.expect("write");
        assert_eq!(receipt.ack, AckKind::Async);
        assert_eq!(receipt.tx_id, last.next(), "dense ids");
        last = receipt.tx_id;
    }
    r1.node.wait_applied(last).await.unwrap();
    r2.node.wait_applied(last).await.unwrap();
    assert_eq!(r1.machine.positions(), primary.machine.positions());
    assert_eq!(r2.machine.positions(), primary.machine.positions());
    assert!(r2.machine.order_violation().is_none());

    let refused = put(&r1.node, "nope").await.unwrap_err();
    assert_eq!(
        refused,
        WriteError::NotPrimary {
            source_address: "p".into()
        }
    );
    assert!(refused.to_string().contains("primary at p"));

    let status = primary.node.status().await.unwrap();
    assert_eq!(status.committed, last);
    assert_eq!(
        status.replicas.len(),
        1,
        "the cascaded replica is not the primary's replica"
    );
    assert_eq!(status.replicas[0].id.node.0, "r1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_writes_wait_for_the_quorum_and_resume() {
    let network = MemNetwork::new();
    let policy = Quorum::AckCount { n: 1, among: None };
    let primary = start(&network, config("p", Role::Primary), policy, MemLog::new()).await;
    let r1 = start(
        &network,
        config("r1", replica_of("p")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    let first = put(&primary.node, "a").await.unwrap();
    assert_eq!(first.ack, AckKind::Quorum);
    r1.node.wait_applied(first.tx_id).await.unwrap();

    // Lose the only replica: writes wait, reads (the applied state) go on.
    r1.node.shutdown().await;
    network.remove("r1");
    let waiting = tokio::spawn({
        let node = primary.node.clone();
        async move { put(&node, "b").await }
    });
    until_waiting(&primary.node, 1).await;
    assert!(
        !waiting.is_finished(),
        "a synchronous write must wait for its quorum"
    );
    assert_eq!(primary.node.applied(), first.tx_id);
    let status = primary.node.status().await.unwrap();
    assert_eq!(status.waiting_writes, 1);
    assert_eq!(
        status.durable.tx_id,
        TxId(2),
        "the primary holds it durably"
    );
    assert_eq!(status.committed, TxId(1));

    // The replica comes back from its own disk and the waiting write completes by itself.
    let r1 = start(
        &network,
        config("r1", replica_of("p")),
        Quorum::Async,
        r1.log.crash(),
    )
    .await;
    let second = waiting
        .await
        .unwrap()
        .expect("write completes once the replica is back");
    assert_eq!(second.tx_id, TxId(2));
    assert_eq!(second.ack, AckKind::Quorum);
    r1.node.wait_applied(TxId(2)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_policy_releases_waiting_writes() {
    let network = MemNetwork::new();
    let policy = Quorum::AckCount { n: 2, among: None };
    let primary = start(&network, config("p", Role::Primary), policy, MemLog::new()).await;
    let _r1 = start(
        &network,
        config("r1", replica_of("p")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    let waiting = tokio::spawn({
        let node = primary.node.clone();
        async move { put(&node, "x").await }
    });
    until_waiting(&primary.node, 1).await;
    assert!(
        !waiting.is_finished(),
        "two acknowledgements cannot come from one replica"
    );
    primary
        .node
        .set_policy(Arc::new(Quorum::AckCount { n: 1, among: None }))
        .await
        .unwrap();
    let receipt = waiting
        .await
        .unwrap()
        .expect("released by the policy change");
    assert_eq!(receipt.ack, AckKind::Quorum);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_timeout_reports_an_unknown_outcome() {
    let network = MemNetwork::new();
    let mut cfg = config("p", Role::Primary);
    cfg.write_timeout = Some(Duration::from_millis(100));
    let primary = start(
        &network,
        cfg,
        Quorum::AckCount { n: 1, among: None },
        MemLog::new(),
    )
    .await;
    let error = put(&primary.node, "x").await.unwrap_err();
    assert_eq!(error, WriteError::Timeout { tx_id: TxId(1) });
    assert!(error.to_string().contains("unknown"));
    // It may still commit: a replica that arrives later commits it.
    let r1 = start(
        &network,
        config("r1", replica_of("p")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    r1.node.wait_applied(TxId(1)).await.unwrap();
    eventually("the timed-out write commits", || {
        primary.node.applied() == TxId(1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_receives_the_whole_history_then_follows_live() {
    let network = MemNetwork::new();
    let mut cfg = config("p", Role::Primary);
    cfg.recent_cache_txs = 16; // most of the history must come from the log, not the cache
    let primary = start(&network, cfg, Quorum::Async, MemLog::new()).await;
    for i in 0..500 {
        put(&primary.node, &format!("old{i}")).await.unwrap();
    }
    let mut late_cfg = config("late", replica_of("p"));
    late_cfg.prefetch_buffer = 32;
    let late = start(&network, late_cfg, Quorum::Async, MemLog::new()).await;
    late.node.wait_applied(TxId(500)).await.unwrap();
    for i in 0..20 {
        put(&primary.node, &format!("new{i}")).await.unwrap();
    }
    late.node.wait_applied(TxId(520)).await.unwrap();
    assert_eq!(late.machine.positions(), primary.machine.positions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_primary_supersedes_what_it_lost_and_replicas_follow() {
    let network = MemNetwork::new();
    let primary_log = MemLog::with_manual_sync();
    let primary = start(
        &network,
        config("p", Role::Primary),
        Quorum::Async,
        primary_log.clone(),
    )
    .await;
    let replica = start(
        &network,
        config("r", replica_of("p")),
        Quorum::Async,
        MemLog::new(),
    )
    .await;
    primary_log.sync();
    let waiting = tokio::spawn({
        let node = primary.node.clone();
        async move { put(&node, "lost").await }
    });
    // The replica stores the transaction the primary streamed before its own sync...
    eventually("the replica holds tx 1", || {
        futures::executor::block_on(replica.log.state())
            .unwrap()
            .last
            .tx_id
            == TxId(1)
    })
    .await;
    // ...and the primary crashes before syncing it: the writer never got an answer.
    primary.node.shutdown().await;
    network.remove("p");
    assert!(
        waiting.await.unwrap().is_err(),
        "the write was never acknowledged"
    );
    let reopened = primary_log.crash();
    assert_eq!(
        futures::executor::block_on(reopened.state())
            .unwrap()
            .last
            .tx_id,
        TxId(0)
    );
    let primary = start(
        &network,
        config("p", Role::Primary),
        Quorum::Async,
        reopened.clone(),
    )
    .await;
    // From now on the restarted primary's disk syncs continuously.
    tokio::spawn(async move {
        loop {
            reopened.sync();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let receipt = put(&primary.node, "kept").await.unwrap();
    assert_eq!(receipt.tx_id, TxId(1));
    // The replica discards its superseded transaction 1 without an operator.
    replica.node.wait_applied(TxId(1)).await.unwrap();
    assert_eq!(replica.machine.positions(), primary.machine.positions());
    let status = replica.node.status().await.unwrap();
    assert_eq!(status.epoch, primary.node.status().await.unwrap().epoch);
}

/// An asynchronous primary commits transactions its replica never received; the replica is
/// promoted without them (a forced promotion). Rejoining, the old primary stops naming the
/// divergence; allowed to rewind, it keeps the dropped transactions in the rollback, its state
/// machine forgets them, and it follows the new history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewind_drops_committed_transactions_only_when_allowed_and_keeps_them() {
    let network = MemNetwork::new();
    let old_log = MemLog::new();
    let old = start(
        &network,
        config("p", Role::Primary),
        Quorum::Async,
        old_log.clone(),
    )
    .await;
    let replica_log = MemLog::new();
    let replica = start(
        &network,
        config("r", replica_of("p")),
        Quorum::Async,
        replica_log.clone(),
    )
    .await;
    for text in ["a", "b", "c"] {
        put(&old.node, text).await.expect("write");
    }
    replica
        .node
        .wait_applied(TxId(3))
        .await
        .expect("replica applies");
    replica.node.shutdown().await;
    network.remove("r");
    // Committed by the primary alone, as an asynchronous policy allows.
    let lost: Vec<_> = [put(&old.node, "d").await, put(&old.node, "e").await]
        .into_iter()
        .map(|receipt| receipt.expect("acknowledged"))
        .collect();
    old.node.shutdown().await;
    network.remove("p");
    let promoted = start(
        &network,
        config("r", Role::Primary),
        Quorum::Async,
        replica_log,
    )
    .await;
    let receipt = put(&promoted.node, "x")
        .await
        .expect("the promoted primary writes");
    assert_eq!(receipt.tx_id, TxId(4));

    // Without permission: replication stops, naming the range and both hashes, and drops
    // nothing.
    let rejoined = start(
        &network,
        config("p", replica_of("r")),
        Quorum::Async,
        old_log.clone(),
    )
    .await;
    let stopped = until_status(&rejoined.node, "replication to stop", |status| {
        matches!(status.upstream, Some(UpstreamState::Stopped(_)))
    })
    .await;
    let error = stopped.last_error.expect("the stop names its cause");
    assert!(
        error.contains("transactions 4 to 5")
            && error.contains(&lost[0].hash.to_hex())
            && error.contains(&receipt.hash.to_hex()),
        "{error}"
    );
    let state = rejoined.log.state().await.expect("state");
    assert_eq!(
        (state.last.tx_id, state.committed.tx_id),
        (TxId(5), TxId(5))
    );
    rejoined.node.shutdown().await;
    network.remove("p");

    // Allowing a rewind needs somewhere to keep what it drops.
    let mut allowed = config("p", replica_of("r"));
    allowed.allow_rewind = true;
    let refused = start_with(
        &network,
        allowed.clone(),
        Quorum::Async,
        old_log.clone(),
        NodeOptions::default(),
    )
    .await;
    assert!(matches!(refused, Err(StartError::CannotRewind(_))));
    network.remove("p");

    let rollback = MemRollback::default();
    let options = NodeOptions {
        rollback: Some(Arc::new(rollback.clone())),
        ..NodeOptions::default()
    };
    let rejoined = start_with(&network, allowed, Quorum::Async, old_log, options)
        .await
        .expect("start");
    rejoined
        .node
        .wait_applied(TxId(4))
        .await
        .expect("follows the new history");
    eventually("the state machines agree", || {
        rejoined.machine.positions() == promoted.machine.positions()
    })
    .await;
    assert!(rejoined.machine.order_violation().is_none());
    let kept = rollback.rollbacks();
    assert_eq!(kept.len(), 1);
    let kept_ids: Vec<_> = kept[0].iter().map(|tx| (tx.id, tx.hash)).collect();
    let lost_ids: Vec<_> = lost.iter().map(|r| (r.tx_id, r.hash)).collect();
    assert_eq!(
        kept_ids, lost_ids,
        "the rollback holds exactly what was dropped"
    );
    let status = rejoined.node.status().await.expect("status");
    let last_rollback = status.last_rollback.expect("status names the rollback");
    assert_eq!(
        (
            last_rollback.from,
            last_rollback.to,
            last_rollback.committed_to
        ),
        (TxId(4), TxId(5), Some(TxId(5)))
    );
    let state = rejoined.log.state().await.expect("state");
    assert_eq!(
        state.committed.hash, receipt.hash,
        "committed the new history's transaction 4"
    );
}
