//! Snapshots through the tokio driver, store-mem and the in-memory transport: a fresh replica
//! of a fully compacted primary, an empty database, a replica of a replica started from its
//! parent's snapshot, a damaged chunk, compaction during a transfer, a replica restarted in
//! the middle of one, and a state machine of another format. After each, the replica's state
//! (every position it applied, in order) is the source's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{EngineConfig, EngineStatus, Role, UpstreamState};
use replication_core::quorum::Quorum;
use replication_core::testing::{MemNetwork, RecordingStateMachine, fast_timers};
use replication_core::{LogPosition, TxId};
use store_mem::MemLog;

struct TestNode {
    node: Node,
    machine: RecordingStateMachine,
    log: MemLog,
    _dir: Arc<tempfile::TempDir>,
    dir: Arc<tempfile::TempDir>,
}

fn replica_of(source: &str) -> Role {
    Role::Replica {
        address: source.to_string(),
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Starts `name` as `role`, with small snapshot chunks so that transfers take many frames.
async fn start(
    network: &MemNetwork,
    name: &str,
    role: Role,
    machine: RecordingStateMachine,
    log: MemLog,
    dir: Option<Arc<tempfile::TempDir>>,
) -> TestNode {
    init_logs();
    let dir = dir.unwrap_or_else(|| Arc::new(tempfile::tempdir().expect("tempdir")));
    let mut config = fast_timers(EngineConfig::new(name, "db", role));
    config.snapshot_window = 2;
    let options = NodeOptions {
        snapshot_dir: Some(dir.path().join("snapshots")),
        snapshot_chunk_bytes: 400,
        ..NodeOptions::default()
    };
    let node = Node::start(
        config,
        Arc::new(Quorum::Async),
        log.clone(),
        network.endpoint(name),
        machine.clone(),
        options,
    )
    .await
    .expect("start");
    TestNode {
        node,
        machine,
        log,
        _dir: dir.clone(),
        dir,
    }
}

/// A new, empty node `name` in `role`, with a directory of its own.
async fn fresh(network: &MemNetwork, name: &str, role: Role) -> TestNode {
    start(
        network,
        name,
        role,
        RecordingStateMachine::default(),
        MemLog::new(),
        None,
    )
    .await
}

async fn write(primary: &TestNode, count: usize) -> TxId {
    let mut last = TxId::ZERO;
    for i in 0..count {
        last = primary
            .node
            .write(Bytes::from(format!("write {i}")))
            .await
            .expect("write")
            .tx_id;
    }
    last
}

async fn status(node: &TestNode) -> EngineStatus {
    node.node.status().await.expect("status")
}

/// Waits (at most 20 s) until `check` holds of `node`'s status.
async fn until(node: &TestNode, what: &str, check: impl Fn(&EngineStatus) -> bool) -> EngineStatus {
    let polled = async {
        loop {
            let status = status(node).await;
            if check(&status) {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), polled).await {
        Ok(status) => status,
        Err(_) => panic!("timed out waiting for {what}: {:?}", status(node).await),
    }
}

/// Waits until `replica` applied everything `primary` applied, and checks their states agree.
async fn same_state(primary: &TestNode, replica: &TestNode) {
    let target = primary.node.applied();
    replica.node.wait_applied(target).await.expect("applied");
    tokio::time::timeout(Duration::from_secs(20), async {
        while replica.machine.positions().len() < primary.machine.positions().len() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the replica's state catches up");
    assert_eq!(
        replica.machine.positions(),
        primary.machine.positions(),
        "the replica's state is the primary's"
    );
}

/// A primary holding `count` transactions, snapshotted and fully compacted.
async fn compacted_primary(network: &MemNetwork, count: usize) -> TestNode {
    let primary = fresh(network, "p", Role::Primary).await;
    let last = write(&primary, count).await;
    let meta = primary.node.take_snapshot().await.expect("snapshot");
    assert_eq!(meta.last.tx_id, last);
    let base = primary
        .node
        .compact(last, TxId::ZERO)
        .await
        .expect("compact");
    assert_eq!(base.position.tx_id, last, "nothing holds the log back");
    assert_eq!(primary.log.first(), last.next());
    primary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_of_a_fully_compacted_primary_starts_from_its_snapshot() {
    let network = MemNetwork::new();
    let primary = compacted_primary(&network, 60).await;
    let replica = fresh(&network, "r1", replica_of("p")).await;
    let installed = until(&replica, "the install", |s| {
        s.base.position.tx_id == TxId(60)
    })
    .await;
    assert_eq!(installed.snapshot.map(|(last, _)| last), Some(TxId(60)));
    // The log follows from the snapshot.
    write(&primary, 5).await;
    same_state(&primary, &replica).await;
    let status = status(&replica).await;
    assert_eq!(status.upstream, Some(UpstreamState::Streaming));
    assert_eq!(status.snapshot_transfer, None);
    assert_eq!(
        replica.log.first(),
        TxId(61),
        "the replica's log begins after it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_empty_database_is_taken_sent_and_installed() {
    let network = MemNetwork::new();
    let primary = fresh(&network, "p", Role::Primary).await;
    let meta = primary.node.take_snapshot().await.expect("snapshot");
    assert_eq!(
        (meta.last, meta.chunks, meta.bytes),
        (LogPosition::START, 0, 0)
    );
    // An empty replica prefers a snapshot only of something: it streams from the log.
    let replica = fresh(&network, "r1", replica_of("p")).await;
    write(&primary, 3).await;
    same_state(&primary, &replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_a_replica_starts_from_its_parents_snapshot() {
    let network = MemNetwork::new();
    let primary = compacted_primary(&network, 40).await;
    let relay = fresh(&network, "r1", replica_of("p")).await;
    write(&primary, 10).await;
    same_state(&primary, &relay).await;
    // The relay snapshots and compacts its own log.
    let meta = relay.node.take_snapshot().await.expect("relay snapshot");
    assert_eq!(meta.last.tx_id, TxId(50));
    relay
        .node
        .compact(TxId(50), TxId::ZERO)
        .await
        .expect("compact");
    let leaf = fresh(&network, "r2", replica_of("r1")).await;
    until(&leaf, "the install of the relay's snapshot", |s| {
        s.base.position.tx_id == TxId(50)
    })
    .await;
    write(&primary, 5).await;
    same_state(&primary, &leaf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_chunk_is_refused_and_sent_again() {
    let network = MemNetwork::new();
    let primary = compacted_primary(&network, 80).await;
    // The next frame from p of at least 300 bytes is a chunk (chunks are 400 bytes).
    network.corrupt_next_frame("p", 300);
    let replica = fresh(&network, "r1", replica_of("p")).await;
    until(&replica, "the install", |s| {
        s.base.position.tx_id == TxId(80)
    })
    .await;
    same_state(&primary, &replica).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_during_a_transfer_spares_what_the_replica_needs_after_it() {
    let network = MemNetwork::new();
    let primary = compacted_primary(&network, 200).await;
    network.set_latency(Duration::from_millis(2));
    let replica = fresh(&network, "r1", replica_of("p")).await;
    until(&replica, "the transfer", |s| {
        s.upstream == Some(UpstreamState::ReceivingSnapshot)
    })
    .await;
    // More writes, a newer snapshot and a compaction while the old snapshot is in transfer:
    // the transfer goes on with the snapshot it began, and the log after it stays.
    write(&primary, 20).await;
    primary.node.take_snapshot().await.expect("newer snapshot");
    let base = primary
        .node
        .compact(TxId(220), TxId::ZERO)
        .await
        .expect("compact");
    assert_eq!(
        base.position.tx_id,
        TxId(200),
        "the transfer in progress needs what follows its snapshot"
    );
    same_state(&primary, &replica).await;
    until(&primary, "the replica's acknowledgement", |s| {
        s.replicas.iter().any(|r| r.acked == TxId(220))
    })
    .await;
    // Once the replica streams, the log may go.
    let base = primary
        .node
        .compact(TxId(220), TxId::ZERO)
        .await
        .expect("compact");
    assert_eq!(base.position.tx_id, TxId(220));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_during_a_transfer_resumes_after_the_chunks_it_stored() {
    let network = MemNetwork::new();
    let primary = compacted_primary(&network, 300).await;
    network.set_latency(Duration::from_millis(3));
    let machine = RecordingStateMachine::default();
    let log = MemLog::new();
    let replica = start(&network, "r1", replica_of("p"), machine, log, None).await;
    let receiving = until(&replica, "part of the transfer", |s| {
        s.snapshot_transfer
            .as_ref()
            .is_some_and(|t| t.chunks_done >= 3 && t.chunks_done + 3 < t.chunks)
    })
    .await;
    let held = receiving.snapshot_transfer.expect("a transfer").chunks_done;
    replica.node.shutdown().await;
    network.remove("r1");
    // Restarted over the same directory: the transfer resumes where it stopped.
    let restarted = start(
        &network,
        "r1",
        replica_of("p"),
        RecordingStateMachine::default(),
        MemLog::new(),
        Some(replica.dir.clone()),
    )
    .await;
    let resumed = status(&restarted).await;
    let transfer = resumed
        .snapshot_transfer
        .expect("the partial transfer is known");
    assert!(
        transfer.chunks_done >= held.saturating_sub(1) && transfer.chunks_done > 0,
        "resumes after the chunks stored ({held}), found {}",
        transfer.chunks_done
    );
    until(&restarted, "the install", |s| {
        s.base.position.tx_id == TxId(300)
    })
    .await;
    same_state(&primary, &restarted).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_another_snapshot_format_stops_and_says_why() {
    let network = MemNetwork::new();
    let _primary = compacted_primary(&network, 20).await;
    let replica = start(
        &network,
        "r1",
        replica_of("p"),
        RecordingStateMachine::of_version(2),
        MemLog::new(),
        None,
    )
    .await;
    let stopped = until(&replica, "the refusal", |s| {
        matches!(s.upstream, Some(UpstreamState::Stopped(_)))
    })
    .await;
    let error = stopped.last_error.unwrap_or_default();
    assert!(
        error.contains("recording v1") && error.contains("recording v2"),
        "{error}"
    );
    assert_eq!(stopped.last.tx_id, TxId::ZERO, "nothing installed");
}

/// A history of `count` transactions in epoch 1, tagged so that two tags are two histories.
fn history(count: usize, tag: &str) -> Vec<replication_core::Tx> {
    let mut prev = LogPosition::START;
    (0..count)
        .map(|i| {
            let tx = replication_core::Tx::new(
                prev,
                replication_core::Epoch(1),
                Bytes::from(format!("{tag} {i}")),
            );
            prev = tx.position();
            tx
        })
        .collect()
}

/// A log holding `txs`, durable, committed up to `committed`.
async fn log_of(txs: &[replication_core::Tx], committed: u64) -> MemLog {
    use replication_core::TxLog;
    let log = MemLog::new();
    if !txs.is_empty() {
        log.append(txs.to_vec())
            .await
            .expect("append")
            .await
            .expect("durable");
        log.commit(TxId(committed)).await.expect("commit");
    }
    log
}

/// Writes, in `dir`'s snapshot directory, the snapshot of the state that applied `txs`.
fn snapshot_of(dir: &std::path::Path, txs: &[replication_core::Tx]) {
    use replication_core::StateMachine;
    use replication_core::driver::SnapshotDir;
    use replication_core::snapshot::SnapshotFile;
    let mut machine = RecordingStateMachine::default();
    for tx in txs {
        machine.apply(tx);
    }
    let (last, mut export) = machine.export().expect("export");
    let snapshots = SnapshotDir::open(dir.join("snapshots")).expect("snapshot dir");
    let tx = &txs[last.0 as usize - 1];
    SnapshotFile::write(
        &snapshots.path_for(last),
        machine.snapshot_format().expect("a format"),
        tx.position(),
        tx.epoch,
        &mut *export,
        400,
    )
    .expect("write the snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_a_crash_interrupted_is_finished_at_the_next_start() {
    // The replica stored the source's snapshot (history a, up to 30) and crashed before its
    // log, of history b, started again after it.
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let ours = history(10, "b");
    let theirs = history(30, "a");
    snapshot_of(dir.path(), &theirs);
    let network = MemNetwork::new();
    let replica = start(
        &network,
        "r1",
        replica_of("p"),
        RecordingStateMachine::default(),
        log_of(&ours, 5).await,
        Some(dir.clone()),
    )
    .await;
    let status = status(&replica).await;
    assert_eq!(status.base.position, theirs[29].position());
    assert_eq!(status.last, theirs[29].position());
    assert_eq!(status.committed, TxId(30));
    let expected: Vec<LogPosition> = theirs.iter().map(|tx| tx.position()).collect();
    assert_eq!(replica.machine.positions(), expected);
    assert_eq!(replica.log.first(), TxId(31));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_restores_the_state_from_the_latest_snapshot_and_replays_the_rest() {
    // A primary's log holds 40 of one history, a snapshot up to 30 of it: the state comes
    // from the snapshot and 31..=40 from the log, which stays whole.
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let txs = history(40, "a");
    snapshot_of(dir.path(), &txs[..30]);
    let network = MemNetwork::new();
    let primary = start(
        &network,
        "p",
        Role::Primary,
        RecordingStateMachine::default(),
        log_of(&txs, 40).await,
        Some(dir.clone()),
    )
    .await;
    let expected: Vec<LogPosition> = txs.iter().map(|tx| tx.position()).collect();
    assert_eq!(primary.machine.positions(), expected);
    assert_eq!(primary.log.first(), TxId(1), "the log is untouched");
    assert_eq!(
        status(&primary).await.snapshot.map(|(last, _)| last),
        Some(TxId(30))
    );
}
