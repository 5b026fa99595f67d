//! The tokio driver: runs an [`Engine`] against a [`TxLog`], a [`Transport`] and a
//! [`StateMachine`].
//!
//! The driver is deliberately thin. One task owns the engine and executes its commands in
//! order; per-channel tasks read and write frames; per-append tasks wait for durability. All of
//! them report back through one bounded event queue. The only clock reading in the crate is
//! [`Clock`], and the engine sees time only as the `now` the driver passes in.

mod clock;
pub mod failover;
mod rollback;
mod snapshots;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::engine::{
    Command, ConnId, Direction, Engine, EngineConfig, EngineStatus, Event, LinkErrorCause,
    Recovered, Rollback, WriteError, WriteId, WriteReceipt,
};
use crate::log::{LogError, LogFailure, LogFailureKind, LogOperation, TxLog};
use crate::protocol::{self, MAX_FRAME_SIZE, Message};
use crate::quorum::QuorumPolicy;
use crate::snapshot::{SnapshotError, SnapshotFile, SnapshotMeta, SnapshotStage, SnapshotWriter};
use crate::state_machine::StateMachine;
use crate::transport::{Channel, Transport, TransportError};
use crate::types::{Epoch, LogBase, NodeId, ReplicaId, Tx, TxId};

pub use clock::Clock;
pub use rollback::{RollbackFile, RollbackSink};
pub use snapshots::SnapshotDir;

/// Settings of the driver itself (the replication settings are in [`EngineConfig`]).
#[derive(Clone)]
pub struct NodeOptions {
    /// Where the transactions a replica drops from its log (rejoining a newer history) are
    /// kept before they are dropped; `None` drops them unkept.
    pub rollback: Option<Arc<dyn RollbackSink>>,
    /// Largest frame sent or accepted.
    pub max_frame_size: usize,
    /// Frames queued for one channel before it is considered too slow and closed.
    pub channel_queue_frames: usize,
    /// Client writes queued before [`Node::write`] waits for room.
    pub write_queue: usize,
    /// Most writes handed to the engine as one batch.
    pub max_write_batch: usize,
    /// Whether the node accepts replicas' channels from the transport itself. A server that
    /// routes channels to several databases turns it off and calls [`Node::attach`].
    pub accept_replicas: bool,
    /// Where snapshots are kept ([`SnapshotDir`]); `None`: this node takes none, sends none
    /// and installs none (its log is never compacted, and a replica replays the whole history).
    pub snapshot_dir: Option<std::path::PathBuf>,
    /// The size of a snapshot's chunks: with
    /// [`EngineConfig::snapshot_window`](crate::engine::EngineConfig::snapshot_window), what a
    /// transfer holds in memory on each side.
    pub snapshot_chunk_bytes: usize,
    /// Snapshots are sent to each replica at most this many bytes per second (`None`: as fast
    /// as the replica takes them).
    pub snapshot_max_rate: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            max_frame_size: MAX_FRAME_SIZE,
            channel_queue_frames: 1024,
            write_queue: 16 * 1024,
            max_write_batch: 1024,
            accept_replicas: true,
            rollback: None,
            snapshot_dir: None,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_max_rate: None,
        }
    }
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("max_frame_size", &self.max_frame_size)
            .field("channel_queue_frames", &self.channel_queue_frames)
            .field("write_queue", &self.write_queue)
            .field("max_write_batch", &self.max_write_batch)
            .field("accept_replicas", &self.accept_replicas)
            .field("rollback", &self.rollback.is_some())
            .field("snapshot_dir", &self.snapshot_dir)
            .field("snapshot_chunk_bytes", &self.snapshot_chunk_bytes)
            .field("snapshot_max_rate", &self.snapshot_max_rate)
            .finish()
    }
}

enum Request {
    Write {
        payload: Bytes,
        reply: oneshot::Sender<Result<WriteReceipt, WriteError>>,
    },
    Replicate {
        txs: Vec<Tx>,
        reply: oneshot::Sender<Result<WriteReceipt, WriteError>>,
    },
    Status(oneshot::Sender<EngineStatus>),
    SetPolicy(Arc<dyn QuorumPolicy>, oneshot::Sender<()>),
    Lease(
        tokio::time::Instant,
        Option<Vec<NodeId>>,
        Option<Arc<dyn QuorumPolicy>>,
        oneshot::Sender<()>,
    ),
    RemoveMember(ReplicaId, oneshot::Sender<bool>),
    TakeSnapshot(oneshot::Sender<Result<SnapshotMeta, SnapshotError>>),
    Compact(TxId, TxId, oneshot::Sender<LogBase>),
    Attach(Channel),
    Shutdown(oneshot::Sender<()>),
}

enum Internal {
    Engine(Event),
    Opened {
        channel: Channel,
        direction: Direction,
    },
    SnapshotWritten {
        result: Result<SnapshotMeta, SnapshotError>,
        reply: Option<oneshot::Sender<Result<SnapshotMeta, SnapshotError>>>,
    },
    SnapshotInstalled {
        meta: SnapshotMeta,
        result: Result<(), SnapshotError>,
    },
    /// A resumed transfer's chunks are staged again: receiving goes on from `held`.
    ReceiveReady {
        receiving: Box<Receiving>,
        result: Result<u64, SnapshotError>,
    },
}

/// A snapshot being received: its file, and the state machine's stage, which takes each chunk
/// as it is stored so that the install at the end only switches to it.
struct Receiving {
    writer: SnapshotWriter,
    digest: [u8; 32],
    stage: Box<dyn SnapshotStage>,
}

/// A handle to a running replication node (one database on one server).
#[derive(Clone)]
pub struct Node {
    requests: mpsc::Sender<Request>,
    applied: watch::Receiver<TxId>,
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("applied", &*self.applied.borrow())
            .finish_non_exhaustive()
    }
}

/// Why a request other than a write (status, a policy change, a wait) was not answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node stopped: it was shut down or its task ended.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The configuration allows a rewind that this node could not carry out safely.
    #[error("cannot allow a rewind: {0}")]
    CannotRewind(&'static str),
    /// A snapshot needed to start could not be read or installed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The log begins after transactions the state machine lacks, and no snapshot covers
    /// them.
    #[error(
        "the log begins after transaction {base} but the state machine has applied only up \
         to {applied}, and no snapshot in the snapshot directory covers the difference"
    )]
    MissingSnapshot {
        /// The log's base.
        base: TxId,
        /// What the state machine applied.
        applied: TxId,
    },
}

impl Node {
    /// Opens the node: reads the log's state, replays committed transactions the state machine
    /// has not applied, and starts replicating.
    ///
    /// # Errors
    /// [`StartError::Log`] when the log cannot be read.
    pub async fn start<L: TxLog, T: Transport, S: StateMachine>(
        config: EngineConfig,
        policy: Arc<dyn QuorumPolicy>,
        log: L,
        transport: T,
        mut state_machine: S,
        options: NodeOptions,
    ) -> Result<Node, StartError> {
        if config.allow_rewind {
            if !state_machine.can_rewind() {
                return Err(StartError::CannotRewind(
                    "the state machine cannot forget applied transactions (StateMachine::rewind)",
                ));
            }
            if options.rollback.is_none() {
                return Err(StartError::CannotRewind(
                    "no rollback sink to keep the dropped transactions (NodeOptions::rollback)",
                ));
            }
        }
        let log = Arc::new(log);
        let transport = Arc::new(transport);
        let mut config = config;
        config.snapshot_format = match options.snapshot_dir {
            Some(_) => state_machine.snapshot_format(),
            None => None,
        };
        let snapshots = match &options.snapshot_dir {
            Some(dir) => Some(Arc::new(
                SnapshotDir::open(dir).map_err(SnapshotError::from)?,
            )),
            None => None,
        };
        let restored = restore(&*log, &mut state_machine, snapshots.as_deref()).await?;
        let state = log.state().await?;
        let base = log.base().await?;
        let last_epoch = if state.last.tx_id == base.position.tx_id {
            base.epoch
        } else {
            match log.read(state.last.tx_id, 1, usize::MAX).await?.first() {
                Some(tx) if state.last.tx_id > TxId::ZERO => tx.epoch,
                _ => Epoch(0),
            }
        };
        let members = log.members().await?;
        let epoch_claim = log.epoch_claim().await?;
        apply_committed(&*log, &mut state_machine, None, state.committed.tx_id).await?;
        let clock = Clock::start();
        let partial_snapshot = match &snapshots {
            Some(dir) => dir.incoming()?,
            None => None,
        };
        let recovered = Recovered {
            state,
            epoch_claim,
            last_epoch,
            members,
            base,
            snapshot: restored,
            partial_snapshot,
        };
        // Every line the node logs names its database (a server runs many).
        let span = tracing::info_span!("db", db = %config.database);
        let engine = Engine::new(config, policy, recovered, clock.now());
        let (requests_tx, requests_rx) = mpsc::channel(options.write_queue);
        let (internal_tx, internal_rx) = mpsc::channel(4096);
        let (applied_tx, applied_rx) = watch::channel(state_machine.applied());
        if options.accept_replicas {
            spawn_accept_loop(transport.clone(), internal_tx.clone());
        }
        let driver = Driver {
            engine,
            log,
            transport,
            state_machine,
            clock,
            options,
            conns: HashMap::new(),
            writers: HashMap::new(),
            next_conn: 0,
            next_write: 0,
            internal_tx,
            applied_tx,
            last_batch_frame: None,
            after_commands: Vec::new(),
            snapshots,
            serving: HashMap::new(),
            receiving: None,
            taking_snapshot: false,
            compactions: Vec::new(),
        };
        let task = tokio::spawn(tracing::Instrument::instrument(
            driver.run(requests_rx, internal_rx),
            span,
        ));
        Ok(Node {
            requests: requests_tx,
            applied: applied_rx,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// Proposes a write and waits for its outcome: committed under the policy and applied to
    /// the state machine, or an error saying why not.
    ///
    /// # Errors
    /// See [`WriteError`]; [`WriteError::Timeout`] and [`WriteError::ShuttingDown`] leave the
    /// outcome unknown.
    ///
    /// # Cancel safety
    /// Dropping the future does not withdraw the write: it may still commit.
    pub async fn write(&self, payload: Bytes) -> Result<WriteReceipt, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Write { payload, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.unwrap_or(Err(WriteError::ShuttingDown))
    }

    /// Pushes transactions committed at their source into this node, which must be a
    /// [`Role::ExternalReplica`](crate::engine::Role::ExternalReplica): the hash chain is
    /// checked, and the answer comes once they are durable and applied.
    ///
    /// # Errors
    /// [`WriteError::Rejected`] for transactions that do not extend this log.
    pub async fn replicate(&self, txs: Vec<Tx>) -> Result<WriteReceipt, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Replicate { txs, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.unwrap_or(Err(WriteError::ShuttingDown))
    }

    /// The engine's state.
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] once the node stopped.
    pub async fn status(&self) -> Result<EngineStatus, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Status(reply))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Replaces the quorum policy; waiting writes are re-evaluated at once.
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] once the node stopped.
    pub async fn set_policy(&self, policy: Arc<dyn QuorumPolicy>) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::SetPolicy(policy, reply))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Tells a [`leased`](crate::engine::EngineConfig::leased) primary that the coordinator
    /// granted or renewed its leader lease: it may acknowledge writes until `until`. The
    /// caller computes `until` from when it *sent* the renewal, plus the lease's time to live,
    /// minus a margin (see [`crate::coordinator`]); only the acknowledgements of `voters`
    /// count (`None`: every member's), and only what `policy` (the one the coordinator holds
    /// proofs for) satisfies too commits.
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] once the node stopped.
    pub async fn renew_lease(
        &self,
        until: tokio::time::Instant,
        voters: Option<Vec<NodeId>>,
        policy: Option<Arc<dyn QuorumPolicy>>,
    ) -> Result<(), NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Lease(until, voters, policy, reply))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Retires a member for good: it no longer counts toward the quorum policy, which applies
    /// to waiting writes at once. Answers once the new membership is durable, with whether
    /// `replica` was a member. A replica that subscribes again joins again.
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] once the node stopped.
    pub async fn remove_member(&self, replica: ReplicaId) -> Result<bool, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::RemoveMember(replica, reply))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Takes a snapshot of the state machine as of its last applied transaction, on a
    /// blocking thread while writes go on, and keeps it in the snapshot directory (older ones
    /// are removed): from then on it is what replicas that cannot be served from the log get.
    ///
    /// # Errors
    /// [`SnapshotError::Unsupported`] without a snapshot directory or a state machine that
    /// takes snapshots; [`SnapshotError::Refused`] while another is being taken; the export's
    /// and I/O errors.
    pub async fn take_snapshot(&self) -> Result<SnapshotMeta, SnapshotError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::TakeSnapshot(reply))
            .await
            .map_err(|_| SnapshotError::Io("the node is shutting down".into()))?;
        answer
            .await
            .unwrap_or_else(|_| Err(SnapshotError::Io("the node is shutting down".into())))
    }

    /// Compacts the log up to `up_to` at most: never past the latest snapshot, nor what a
    /// connected replica or a snapshot transfer still needs, except a replica that needs a
    /// transaction before `unpin_below` (it lags too far; it gets a snapshot when it
    /// returns). Returns where the log begins afterwards.
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] once the node stopped.
    pub async fn compact(&self, up_to: TxId, unpin_below: TxId) -> Result<LogBase, NodeError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Compact(up_to, unpin_below, reply))
            .await
            .map_err(|_| NodeError::ShuttingDown)?;
        answer.await.map_err(|_| NodeError::ShuttingDown)
    }

    /// Hands the node a channel a replica opened (when the server routes channels itself).
    pub async fn attach(&self, channel: Channel) {
        let _ = self.requests.send(Request::Attach(channel)).await;
    }

    /// The last transaction applied to the state machine.
    pub fn applied(&self) -> TxId {
        *self.applied.borrow()
    }

    /// Waits until the state machine applied `tx_id` (read-your-writes on a replica).
    ///
    /// # Errors
    /// [`NodeError::ShuttingDown`] if the node stops first.
    pub async fn wait_applied(&self, tx_id: TxId) -> Result<TxId, NodeError> {
        let mut applied = self.applied.clone();
        let result = applied.wait_for(|applied| *applied >= tx_id).await;
        result
            .map(|applied| *applied)
            .map_err(|_| NodeError::ShuttingDown)
    }

    /// Stops the node: answers waiting writes with [`WriteError::ShuttingDown`] (outcome
    /// unknown), closes every channel, and waits for the driver to finish.
    pub async fn shutdown(&self) {
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request::Shutdown(reply)).await.is_ok() {
            let _ = answer.await;
        }
        let task = self.task.lock().map(|mut task| task.take()).unwrap_or(None);
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn spawn_accept_loop<T: Transport>(transport: Arc<T>, internal: mpsc::Sender<Internal>) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                accepted = transport.accept() => match accepted {
                    Ok(channel) => {
                        let opened = Internal::Opened { channel, direction: Direction::Downstream };
                        if internal.send(opened).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, "accept loop ends");
                        return;
                    }
                },
                _ = internal.closed() => return,
            }
        }
    });
}

/// Applies committed transactions after the state machine's `applied()` up to `up_to`,
/// taking them from `cached` when it holds them and from the log otherwise.
async fn apply_committed<L: TxLog, S: StateMachine>(
    log: &L,
    state_machine: &mut S,
    cached: Option<Vec<Tx>>,
    up_to: TxId,
) -> Result<(), LogError> {
    if let Some(txs) = cached {
        for tx in &txs {
            if tx.id == state_machine.applied().next() && tx.id <= up_to {
                state_machine.apply(tx);
            }
        }
    }
    while state_machine.applied() < up_to {
        let from = state_machine.applied().next();
        let count = (up_to.0 - from.0 + 1).min(1024) as usize;
        let txs = log.read(from, count, 4 << 20).await?;
        if txs.is_empty() {
            return Err(LogError::Corrupt(format!(
                "committed transaction {from} is missing"
            )));
        }
        for tx in &txs {
            if tx.id != state_machine.applied().next() {
                return Err(LogError::Corrupt(format!(
                    "log returned transaction {} where {} was expected",
                    tx.id,
                    state_machine.applied().next()
                )));
            }
            state_machine.apply(tx);
        }
    }
    Ok(())
}

/// Brings the state machine up to the latest snapshot in `dir` where that is needed (the log
/// was compacted past what the state machine holds) or saves a replay, and finishes an install
/// a crash interrupted: a snapshot beyond the commit point that the log does not hold was
/// received, and the log starts again after it. Returns the snapshot this node can send.
async fn restore<L: TxLog, S: StateMachine>(
    log: &L,
    state_machine: &mut S,
    dir: Option<&SnapshotDir>,
) -> Result<Option<SnapshotMeta>, StartError> {
    let base = log.base().await?;
    let applied = state_machine.applied();
    let missing = StartError::MissingSnapshot {
        base: base.position.tx_id,
        applied,
    };
    let latest = match dir {
        Some(dir) => dir.latest().map_err(SnapshotError::from)?,
        None => None,
    };
    let Some((path, meta)) = latest else {
        return if applied < base.position.tx_id {
            Err(missing)
        } else {
            Ok(None)
        };
    };
    if state_machine.snapshot_format().as_ref() != Some(&meta.format) {
        if applied < base.position.tx_id {
            let supported = state_machine
                .snapshot_format()
                .map_or_else(|| "no snapshots".to_string(), |format| format.to_string());
            return Err(StartError::Snapshot(SnapshotError::FormatMismatch {
                offered: meta.format,
                supported,
            }));
        }
        tracing::warn!(file = %path.display(), format = %meta.format, "a snapshot of another format is neither installed nor sent");
        return Ok(None);
    }
    let state = log.state().await?;
    let at = meta.last;
    let holds = if at.tx_id == base.position.tx_id {
        at.hash == base.position.hash
    } else if at.tx_id > base.position.tx_id && at.tx_id <= state.last.tx_id {
        log.read(at.tx_id, 1, usize::MAX)
            .await?
            .first()
            .is_some_and(|tx| tx.id == at.tx_id && tx.hash == at.hash)
    } else {
        false
    };
    if !holds {
        if at.tx_id <= state.committed.tx_id {
            if applied < base.position.tx_id {
                return Err(missing);
            }
            tracing::warn!(file = %path.display(), last = %at.tx_id, "a snapshot of another history than the log's is neither installed nor sent");
            return Ok(None);
        }
        // Received from the source, and the log not yet started again after it when the
        // node stopped: finish the install.
        tracing::warn!(last = %at.tx_id, "finishing the install of a snapshot the source sent");
        log.reset_to(LogBase {
            position: at,
            epoch: meta.last_epoch,
        })
        .await?;
    }
    if state_machine.applied() < at.tx_id {
        let stage = state_machine.stage(&meta.format, at.tx_id)?;
        let (file, expected) = (path.clone(), meta.clone());
        tokio::task::spawn_blocking(move || install_file(&file, &expected, stage))
            .await
            .map_err(|error| SnapshotError::Io(error.to_string()))??;
        tracing::info!(file = %path.display(), last = %at.tx_id, "state restored from a snapshot");
        if state.committed.tx_id < at.tx_id
            && let Err(error) = log.commit(at.tx_id).await
        {
            tracing::warn!(%error, "cannot raise the commit point to the snapshot's");
        }
    }
    Ok(Some(meta))
}

/// Keeps every transaction `log` holds in `sink` (a replica starting again from a snapshot in
/// place of a rewind); `None` when it holds none.
async fn keep_log<L: TxLog>(
    log: &L,
    sink: &Arc<dyn RollbackSink>,
) -> Result<Option<Rollback>, LogError> {
    let state = log.state().await?;
    let first = log.base().await?.first();
    if state.last.tx_id < first {
        return Ok(None);
    }
    let location = rollback::keep(log, sink, first, state.last.tx_id).await?;
    Ok(Some(Rollback {
        from: first,
        to: state.last.tx_id,
        location,
        committed_to: Some(state.committed.tx_id).filter(|c| *c >= first),
    }))
}

/// Reads the snapshot at `path`, which must be `meta`, into `stage`, verifying every chunk and
/// the digest of all before the stage switches the state machine to it.
fn install_file(
    path: &std::path::Path,
    meta: &SnapshotMeta,
    mut stage: Box<dyn SnapshotStage>,
) -> Result<(), SnapshotError> {
    let mut file = SnapshotFile::open(path)?;
    if file.meta() != meta {
        return Err(SnapshotError::Corrupt {
            chunk: meta.chunks,
            why: format!("{} is not the snapshot expected", path.display()),
        });
    }
    let mut digest = blake3::Hasher::new();
    while let Some(chunk) = file.next_chunk()? {
        digest.update(&chunk.hash);
        stage.write(&chunk.data)?;
    }
    if *digest.finalize().as_bytes() != meta.digest {
        return Err(SnapshotError::Corrupt {
            chunk: meta.chunks,
            why: "the chunks do not add up to the snapshot's digest".into(),
        });
    }
    stage.commit()
}

struct ConnHandle {
    frames: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
}

struct Driver<L, T, S> {
    engine: Engine,
    log: Arc<L>,
    transport: Arc<T>,
    state_machine: S,
    clock: Clock,
    options: NodeOptions,
    conns: HashMap<ConnId, ConnHandle>,
    writers: HashMap<WriteId, oneshot::Sender<Result<WriteReceipt, WriteError>>>,
    next_conn: u64,
    next_write: u64,
    internal_tx: mpsc::Sender<Internal>,
    applied_tx: watch::Sender<TxId>,
    /// The last `Txs` frame encoded, by (first id, last id, last hash, commit point): the same
    /// batch streamed to several replicas is encoded once.
    last_batch_frame: Option<(BatchKey, Bytes)>,
    /// Answers to send once the commands queued with them have run.
    after_commands: Vec<(oneshot::Sender<bool>, bool)>,
    snapshots: Option<Arc<SnapshotDir>>,
    /// The snapshot each replica's channel is being sent, open: a newer snapshot may replace
    /// its file meanwhile.
    serving: HashMap<ConnId, Arc<std::sync::Mutex<SnapshotFile>>>,
    /// The snapshot being received from the source.
    receiving: Option<Receiving>,
    taking_snapshot: bool,
    /// Compaction requests, answered with the log's base once their commands have run.
    compactions: Vec<oneshot::Sender<LogBase>>,
}

type BatchKey = (TxId, TxId, crate::types::TxHash, TxId);

fn batch_key(message: &Message) -> Option<BatchKey> {
    match message {
        Message::Txs { txs, committed, .. } => {
            let (first, last) = (txs.first()?, txs.last()?);
            Some((first.id, last.id, last.hash, *committed))
        }
        _ => None,
    }
}

impl<L: TxLog, T: Transport, S: StateMachine> Driver<L, T, S> {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        loop {
            self.execute_commands().await;
            let deadline = self.clock.instant_of(self.engine.poll_timeout());
            tokio::select! {
                biased;
                event = internal.recv() => {
                    let Some(event) = event else { break };
                    self.on_internal(event);
                    // Take what else is ready, so that a burst becomes one round of commands.
                    for _ in 0..256 {
                        match internal.try_recv() {
                            Ok(event) => self.on_internal(event),
                            Err(_) => break,
                        }
                    }
                }
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    if let Some(done) = self.on_request(request, &mut requests) {
                        self.stop(done).await;
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = self.clock.now();
                    self.engine.handle(now, Event::Tick);
                }
            }
        }
        self.close_all();
    }

    fn on_internal(&mut self, internal: Internal) {
        let now = self.clock.now();
        match internal {
            Internal::Engine(event) => self.engine.handle(now, event),
            Internal::Opened { channel, direction } => self.open_channel(channel, direction),
            Internal::SnapshotWritten { result, reply } => {
                self.taking_snapshot = false;
                match &result {
                    Ok(meta) => {
                        tracing::info!(last = %meta.last.tx_id, bytes = meta.bytes, "snapshot taken");
                        if let Some(dir) = &self.snapshots {
                            dir.prune(meta.last.tx_id);
                        }
                        self.engine.handle(now, Event::SnapshotTaken(meta.clone()));
                    }
                    Err(error) => tracing::warn!(%error, "taking a snapshot failed"),
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Internal::SnapshotInstalled { meta, result } => {
                self.applied_tx.send_replace(self.state_machine.applied());
                if result.is_ok()
                    && let Some(dir) = &self.snapshots
                {
                    dir.keep_only(meta.last.tx_id);
                }
                self.engine
                    .handle(now, Event::SnapshotInstalled { meta, result });
            }
            Internal::ReceiveReady { receiving, result } => {
                let digest = receiving.digest;
                if result.is_ok() {
                    self.receiving = Some(*receiving);
                }
                self.engine
                    .handle(now, Event::SnapshotReceiving { digest, result });
            }
        }
    }

    /// Gets ready to receive `meta`, keeping at most `from` chunks already stored: a stage of
    /// the state machine takes the data as it comes; the chunks kept are staged again first,
    /// on a blocking thread.
    fn receive_snapshot(&mut self, meta: SnapshotMeta, from: u64) {
        let refused = |driver: &mut Self, error| {
            let now = driver.clock.now();
            let event = Event::SnapshotReceiving {
                digest: meta.digest,
                result: Err(error),
            };
            driver.engine.handle(now, event);
        };
        self.receiving = None;
        let Some(dir) = self.snapshots.clone() else {
            return refused(self, SnapshotError::Unsupported);
        };
        let stage = match self.state_machine.stage(&meta.format, meta.last.tx_id) {
            Ok(stage) => stage,
            Err(error) => return refused(self, error),
        };
        let (writer, held) = match dir.receive(&meta, from) {
            Ok(received) => received,
            Err(error) => return refused(self, error),
        };
        let mut receiving = Box::new(Receiving {
            writer,
            digest: meta.digest,
            stage,
        });
        if held == 0 {
            self.receiving = Some(*receiving);
            let now = self.clock.now();
            let event = Event::SnapshotReceiving {
                digest: meta.digest,
                result: Ok(0),
            };
            return self.engine.handle(now, event);
        }
        let events = self.internal_tx.clone();
        tokio::spawn(async move {
            let staged = tokio::task::spawn_blocking(move || {
                let result = dir.read_incoming(held, |data| receiving.stage.write(data));
                (receiving, result.map(|()| held))
            })
            .await;
            if let Ok((receiving, result)) = staged {
                let _ = events
                    .send(Internal::ReceiveReady { receiving, result })
                    .await;
            }
        });
    }

    /// Starts a snapshot of the state machine: the export is read on a blocking thread.
    fn take_snapshot(
        &mut self,
        reply: Option<oneshot::Sender<Result<SnapshotMeta, SnapshotError>>>,
    ) {
        let started = match (self.snapshots.clone(), self.state_machine.snapshot_format()) {
            _ if self.taking_snapshot => Err(SnapshotError::Refused(
                "a snapshot is being taken already".into(),
            )),
            (Some(dir), Some(format)) => self
                .state_machine
                .export()
                .map(|(last, export)| (dir, format, last, export)),
            _ => Err(SnapshotError::Unsupported),
        };
        let (dir, format, last, mut export) = match started {
            Ok(started) => started,
            Err(error) => {
                match reply {
                    Some(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    None => tracing::debug!(%error, "no snapshot taken for a replica"),
                }
                return;
            }
        };
        self.taking_snapshot = true;
        let base = self.engine.base();
        let log = self.log.clone();
        let events = self.internal_tx.clone();
        let chunk_bytes = self.options.snapshot_chunk_bytes;
        tokio::spawn(async move {
            let position = if last == base.position.tx_id {
                Ok((base.position, base.epoch))
            } else {
                match log.read(last, 1, usize::MAX).await {
                    Ok(txs) => match txs.first() {
                        Some(tx) if tx.id == last => Ok((tx.position(), tx.epoch)),
                        _ => Err(SnapshotError::Io(format!(
                            "the log does not hold transaction {last}, the state machine's last"
                        ))),
                    },
                    Err(error) => Err(SnapshotError::Io(error.to_string())),
                }
            };
            let result = match position {
                Ok((position, epoch)) => tokio::task::spawn_blocking(move || {
                    let path = dir.path_for(last);
                    SnapshotFile::write(&path, format, position, epoch, &mut *export, chunk_bytes)
                })
                .await
                .unwrap_or_else(|error| Err(SnapshotError::Io(error.to_string()))),
                Err(error) => Err(error),
            };
            let written = Internal::SnapshotWritten { result, reply };
            let _ = events.send(written).await;
        });
    }

    /// Sends chunk `index` of the snapshot with `digest` to `conn`, read on a blocking thread.
    fn read_snapshot_chunk(&mut self, conn: ConnId, digest: [u8; 32], index: u64) {
        let open = self
            .serving
            .get(&conn)
            .filter(|file| file.lock().is_ok_and(|file| file.meta().digest == digest))
            .cloned();
        let file = match open {
            Some(file) => Some(file),
            None => self
                .snapshots
                .as_ref()
                .and_then(|dir| dir.find(&digest))
                .map(|file| {
                    let file = Arc::new(std::sync::Mutex::new(file));
                    self.serving.insert(conn, file.clone());
                    file
                }),
        };
        let Some(file) = file else {
            let now = self.clock.now();
            let event = Event::SnapshotChunkRead { conn, chunk: None };
            return self.engine.handle(now, event);
        };
        let events = self.internal_tx.clone();
        let max_rate = self.options.snapshot_max_rate.filter(|rate| *rate > 0);
        tokio::spawn(async move {
            #[allow(clippy::disallowed_methods)] // Pacing a transfer is wall-clock by nature.
            let started = tokio::time::Instant::now();
            let chunk = tokio::task::spawn_blocking(move || {
                let mut file = file
                    .lock()
                    .map_err(|_| SnapshotError::Io("a reader panicked".into()))?;
                file.skip_to(index)?;
                file.next_chunk()
            })
            .await;
            let chunk = match chunk {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(error)) => {
                    tracing::error!(?conn, %error, "cannot read the snapshot in transfer");
                    None
                }
                Err(_) => None,
            };
            // Paced: the next chunk is read only once this one's share of the rate is spent.
            if let (Some(rate), Some(chunk)) = (max_rate, &chunk) {
                let share =
                    std::time::Duration::from_secs_f64(chunk.data.len() as f64 / rate as f64);
                tokio::time::sleep_until(started + share).await;
            }
            let event = Event::SnapshotChunkRead { conn, chunk };
            let _ = events.send(Internal::Engine(event)).await;
        });
    }

    /// Installs the snapshot received: checks it whole and keeps it, switches the state
    /// machine to the stage that took its chunks (on a blocking thread), then starts the log
    /// again after it.
    fn install_snapshot(&mut self, meta: SnapshotMeta, keep_dropped: bool) {
        let receiving = self
            .receiving
            .take()
            .filter(|receiving| receiving.digest == meta.digest);
        let (Some(receiving), Some(dir)) = (receiving, self.snapshots.clone()) else {
            let now = self.clock.now();
            let result = Err(SnapshotError::Io(
                "the snapshot received is not at hand to install".into(),
            ));
            return self
                .engine
                .handle(now, Event::SnapshotInstalled { meta, result });
        };
        let log = self.log.clone();
        let events = self.internal_tx.clone();
        let sink = self.options.rollback.clone().filter(|_| keep_dropped);
        tokio::spawn(async move {
            // In place of a rewind: what the log holds goes, kept first (nothing goes if that
            // fails).
            if let Some(sink) = sink {
                match keep_log(&*log, &sink).await {
                    Ok(Some(rollback)) => {
                        let event = Event::RolledBack(rollback);
                        let _ = events.send(Internal::Engine(event)).await;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        let result = Err(SnapshotError::Io(format!(
                            "keeping the transactions the snapshot replaces: {error}"
                        )));
                        let _ = events
                            .send(Internal::SnapshotInstalled { meta, result })
                            .await;
                        return;
                    }
                }
            }
            let expected = meta.clone();
            let installed = tokio::task::spawn_blocking(move || {
                let Receiving { writer, stage, .. } = receiving;
                writer.finish_expecting(&expected)?;
                dir.discard_incoming();
                stage.commit()
            })
            .await
            .unwrap_or_else(|error| Err(SnapshotError::Io(error.to_string())));
            let result = match installed {
                Ok(()) => {
                    let base = LogBase {
                        position: meta.last,
                        epoch: meta.last_epoch,
                    };
                    log.reset_to(base).await.map_err(|error| {
                        SnapshotError::Io(format!("starting the log again: {error}"))
                    })
                }
                Err(error) => Err(error),
            };
            let _ = events
                .send(Internal::SnapshotInstalled { meta, result })
                .await;
        });
    }

    /// Handles a request; returns the shutdown acknowledgement when asked to stop.
    fn on_request(
        &mut self,
        request: Request,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Option<oneshot::Sender<()>> {
        let now = self.clock.now();
        match request {
            Request::Write { payload, reply } => {
                let mut batch = vec![self.register_write(payload, reply)];
                let mut deferred = None;
                while batch.len() < self.options.max_write_batch {
                    match requests.try_recv() {
                        Ok(Request::Write { payload, reply }) => {
                            batch.push(self.register_write(payload, reply));
                        }
                        Ok(other) => {
                            deferred = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                self.engine.handle(now, Event::Propose(batch));
                if let Some(other) = deferred {
                    return self.on_request(other, requests);
                }
            }
            Request::Replicate { txs, reply } => {
                let (write, _) = self.register_write(Bytes::new(), reply);
                self.engine.handle(now, Event::Replicate { write, txs });
            }
            Request::Status(reply) => {
                let _ = reply.send(self.engine.status(now));
            }
            Request::SetPolicy(policy, reply) => {
                self.engine.handle(now, Event::SetPolicy(policy));
                let _ = reply.send(());
            }
            Request::Lease(until, voters, policy, reply) => {
                let until = self.clock.timestamp_of(until);
                let lease = Event::Lease {
                    until,
                    voters,
                    policy,
                };
                self.engine.handle(now, lease);
                let _ = reply.send(());
            }
            Request::RemoveMember(replica, reply) => {
                let was_member = self.engine.is_member(&replica);
                self.engine.handle(now, Event::RemoveMember(replica));
                // Answered once the commands that save the new membership have run.
                self.after_commands.push((reply, was_member));
            }
            Request::TakeSnapshot(reply) => self.take_snapshot(Some(reply)),
            Request::Compact(up_to, unpin_below, reply) => {
                self.engine
                    .handle(now, Event::Compact { up_to, unpin_below });
                self.compactions.push(reply);
            }
            Request::Attach(channel) => self.open_channel(channel, Direction::Downstream),
            Request::Shutdown(done) => return Some(done),
        }
        None
    }

    fn register_write(
        &mut self,
        payload: Bytes,
        reply: oneshot::Sender<Result<WriteReceipt, WriteError>>,
    ) -> (WriteId, Bytes) {
        let write = WriteId(self.next_write);
        self.next_write += 1;
        self.writers.insert(write, reply);
        (write, payload)
    }

    async fn stop(&mut self, done: oneshot::Sender<()>) {
        self.execute_commands().await;
        for (_, reply) in self.writers.drain() {
            let _ = reply.send(Err(WriteError::ShuttingDown));
        }
        self.close_all();
        let _ = done.send(());
    }

    fn close_all(&mut self) {
        for (_, conn) in self.conns.drain() {
            conn.reader.abort();
        }
    }

    fn open_channel(&mut self, channel: Channel, direction: Direction) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let Channel {
            peer,
            peer_address,
            mut sender,
            mut receiver,
            ..
        } = channel;
        let (frames_tx, mut frames_rx) = mpsc::channel::<Bytes>(self.options.channel_queue_frames);
        let events = self.internal_tx.clone();
        tokio::spawn(async move {
            while let Some(frame) = frames_rx.recv().await {
                if let Err(error) = sender.send(frame).await {
                    tracing::debug!(?conn, %error, "channel send failed");
                    let _ = events
                        .send(Internal::Engine(Event::Disconnected { conn }))
                        .await;
                    return;
                }
            }
        });
        let events = self.internal_tx.clone();
        let max_frame_size = self.options.max_frame_size;
        let reader = tokio::spawn(async move {
            loop {
                match receiver.recv().await {
                    Ok(Some(frame)) => match protocol::decode(&frame, max_frame_size) {
                        Ok(message) => {
                            let event = Event::Received { conn, message };
                            if events.send(Internal::Engine(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(error) => {
                            tracing::warn!(?conn, %error, "bad frame; closing the channel");
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(?conn, %error, "channel receive failed");
                        break;
                    }
                }
            }
            let _ = events
                .send(Internal::Engine(Event::Disconnected { conn }))
                .await;
        });
        self.conns.insert(
            conn,
            ConnHandle {
                frames: frames_tx,
                reader,
            },
        );
        let now = self.clock.now();
        let event = Event::Connected {
            conn,
            peer,
            address: peer_address,
            direction,
        };
        self.engine.handle(now, event);
    }

    async fn execute_commands(&mut self) {
        while let Some(command) = self.engine.poll_command() {
            if let Err(error) = self.execute(command).await {
                let now = self.clock.now();
                self.engine.handle(now, Event::LogFailed(error));
            }
        }
        for (reply, answer) in self.after_commands.drain(..) {
            let _ = reply.send(answer);
        }
        for reply in self.compactions.drain(..) {
            let _ = reply.send(self.engine.base());
        }
    }

    /// Executes a [`Command::Truncate`]: keeps what goes in the rollback sink, makes the
    /// state machine forget committed transactions among them (a rewind), then cuts the log.
    async fn truncate(&mut self, after: TxId, rewind: bool) -> Result<(), LogFailure> {
        let failed = |error: LogError| LogFailure::new(LogOperation::Truncate, &error);
        let state = self.log.state().await.map_err(failed)?;
        let last = state.last.tx_id;
        // Kept before they are dropped: a failure to keep them drops nothing.
        let kept = match &self.options.rollback {
            Some(sink) if last > after => {
                let from = after.next();
                let location = rollback::keep(&*self.log, sink, from, last)
                    .await
                    .map_err(failed)?;
                Some(Rollback {
                    from,
                    to: last,
                    location,
                    committed_to: (state.committed.tx_id > after).then_some(state.committed.tx_id),
                })
            }
            _ => None,
        };
        if rewind {
            if self.state_machine.applied() > after {
                let still_applied = self.state_machine.rewind(after);
                if still_applied > after {
                    return Err(LogFailure {
                        operation: LogOperation::Truncate,
                        kind: LogFailureKind::Contract,
                        message: format!(
                            "the state machine still holds transactions up to {still_applied} \
                             after a rewind to {after}; the log keeps them"
                        ),
                    });
                }
                // The log still holds everything up to `after`: replay it.
                apply_committed(&*self.log, &mut self.state_machine, None, after)
                    .await
                    .map_err(|error| LogFailure::new(LogOperation::Read, &error))?;
                self.applied_tx.send_replace(self.state_machine.applied());
            }
            self.log.rewind_after(after).await.map_err(failed)?;
            // A snapshot beyond the cut is of the history this node leaves.
            if let Some(dir) = &self.snapshots {
                dir.remove_after(after);
            }
        } else {
            self.log.truncate_after(after).await.map_err(failed)?;
        }
        if let Some(rollback) = kept {
            let now = self.clock.now();
            self.engine.handle(now, Event::RolledBack(rollback));
        }
        Ok(())
    }

    /// Executes one command; a log error is returned with the operation that failed.
    async fn execute(&mut self, command: Command) -> Result<(), LogFailure> {
        let failed = |operation| move |error: LogError| LogFailure::new(operation, &error);
        match command {
            Command::Append { txs, token } => {
                let last = txs.last().map(|tx| tx.id);
                let durability = self
                    .log
                    .append(txs)
                    .await
                    .map_err(failed(LogOperation::Append))?;
                let events = self.internal_tx.clone();
                tokio::spawn(async move {
                    let event = match durability.await {
                        Ok(up_to) => Event::Durable {
                            token,
                            up_to: last.unwrap_or(up_to).min(up_to),
                        },
                        Err(error) => Event::LogFailed(LogFailure::new(LogOperation::Sync, &error)),
                    };
                    let _ = events.send(Internal::Engine(event)).await;
                });
            }
            Command::Truncate { after, rewind } => {
                self.truncate(after, rewind).await?;
            }
            Command::SaveEpoch(claim) => self
                .log
                .save_epoch(&claim)
                .await
                .map_err(failed(LogOperation::SaveEpoch))?,
            Command::SaveMembers(members) => self
                .log
                .save_members(members)
                .await
                .map_err(failed(LogOperation::SaveMembers))?,
            Command::Commit { up_to } => {
                self.log
                    .commit(up_to)
                    .await
                    .map_err(failed(LogOperation::Commit))?;
                let from = self.state_machine.applied().next();
                let cached = self.engine.recent(from, up_to);
                apply_committed(&*self.log, &mut self.state_machine, cached, up_to)
                    .await
                    .map_err(failed(LogOperation::Read))?;
                self.applied_tx.send_replace(self.state_machine.applied());
            }
            Command::Read {
                conn,
                from,
                max_count,
                max_bytes,
            } => {
                let event = match self.log.read(from, max_count, max_bytes).await {
                    Ok(txs) => Event::ReadDone { conn, txs },
                    Err(error) => {
                        tracing::error!(?conn, %error, "log read failed; closing the channel");
                        self.close(conn);
                        Event::Disconnected { conn }
                    }
                };
                let now = self.clock.now();
                self.engine.handle(now, event);
            }
            Command::Send { conn, message } => {
                // A channel past its snapshot transfer lets go of the file it read: an open
                // file keeps its disk space after a newer snapshot replaced it.
                if !matches!(
                    message,
                    Message::SnapshotChunk { .. } | Message::SnapshotOffer { .. }
                ) {
                    self.serving.remove(&conn);
                }
                let key = batch_key(&message);
                let cached = match (&key, &self.last_batch_frame) {
                    // Equal ids, last hash and commit point mean equal transactions: the hash
                    // chains everything before it.
                    (Some(key), Some((cached_key, frame))) if key == cached_key => {
                        Some(frame.clone())
                    }
                    _ => None,
                };
                let encoded = match cached {
                    Some(frame) => Ok(frame),
                    None => protocol::encode(&message, self.options.max_frame_size),
                };
                if let (Some(key), Ok(frame)) = (key, &encoded) {
                    self.last_batch_frame = Some((key, frame.clone()));
                }
                let sent = match encoded {
                    Ok(frame) => self
                        .conns
                        .get(&conn)
                        .map(|handle| handle.frames.try_send(frame).is_ok()),
                    Err(error) => {
                        tracing::error!(?conn, %error, "cannot encode a message");
                        Some(false)
                    }
                };
                if sent == Some(false) {
                    // A peer that cannot keep up with its window is dropped; it reconnects and
                    // catches up from the log.
                    tracing::warn!(?conn, "channel queue full or frame refused; closing it");
                    self.close(conn);
                    let now = self.clock.now();
                    self.engine.handle(now, Event::Disconnected { conn });
                }
            }
            Command::Connect { address } => {
                let transport = self.transport.clone();
                let events = self.internal_tx.clone();
                tokio::spawn(async move {
                    let internal = match transport.connect(&address).await {
                        Ok(channel) => Internal::Opened {
                            channel,
                            direction: Direction::Upstream,
                        },
                        Err(error) => Internal::Engine(Event::ConnectFailed {
                            reason: error.to_string(),
                            cause: match &error {
                                // A handshake refused over the protocol version is no
                                // certificate's fault.
                                TransportError::Refused(why)
                                    if why.contains("protocol version") =>
                                {
                                    LinkErrorCause::Refused
                                }
                                TransportError::Refused(_) => LinkErrorCause::Certificate,
                                _ => LinkErrorCause::Unreachable,
                            },
                        }),
                    };
                    let _ = events.send(internal).await;
                });
            }
            Command::Close { conn } => self.close(conn),
            Command::SnapshotRead {
                conn,
                digest,
                index,
            } => self.read_snapshot_chunk(conn, digest, index),
            Command::SnapshotReceive { meta, from } => self.receive_snapshot(meta, from),
            Command::SnapshotStore { chunk } => {
                let stored = match &mut self.receiving {
                    Some(receiving) => receiving
                        .writer
                        .push(&chunk)
                        .and_then(|()| receiving.stage.write(&chunk.data))
                        .map_err(|e| (e, receiving.digest)),
                    None => Ok(()),
                };
                if let Err((error, digest)) = stored {
                    tracing::error!(%error, "cannot store a snapshot chunk");
                    self.receiving = None;
                    let now = self.clock.now();
                    let event = Event::SnapshotReceiving {
                        digest,
                        result: Err(error),
                    };
                    self.engine.handle(now, event);
                }
            }
            Command::SnapshotInstall { meta, keep_dropped } => {
                self.install_snapshot(meta, keep_dropped)
            }
            Command::TakeSnapshot => self.take_snapshot(None),
            Command::Compact { up_to } => {
                let base = self
                    .log
                    .compact(up_to)
                    .await
                    .map_err(failed(LogOperation::Compact))?;
                tracing::info!(first = %base.first(), "log compacted");
                let now = self.clock.now();
                self.engine.handle(now, Event::Compacted(base));
            }
            Command::Reply { write, result } => {
                if let Some(reply) = self.writers.remove(&write) {
                    let _ = reply.send(result);
                }
            }
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId) {
        self.serving.remove(&conn);
        if let Some(handle) = self.conns.remove(&conn) {
            // Dropping the frame queue lets the writer flush what is queued and finish.
            handle.reader.abort();
        }
    }
}
