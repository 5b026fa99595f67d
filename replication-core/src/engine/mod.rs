//! The replication engine: the whole replication logic as a state machine that performs no IO,
//! reads no clock and draws no randomness.
//!
//! # Architecture invariant
//! Nothing in this module does IO, reads a clock (`clippy.toml` bans `Instant::now` and
//! `SystemTime::now` in this crate outside the driver's one clock function), spawns tasks or
//! uses randomness. Time comes in as the `now` argument; jitter comes from a seed in the
//! configuration. The same events in the same order produce the same commands, which is what
//! lets [`crate::testing::sim`] replay any failure from its seed.
//!
//! # How to drive it
//! 1. Build it with [`Engine::new`] from the log's [`LogState`] at startup.
//! 2. Feed every event with [`Engine::handle`], passing the current time.
//! 3. After each event, drain [`Engine::poll_command`] and execute the commands **in order**:
//!    an [`Command::Append`] must have returned (the transactions are readable) before a later
//!    [`Command::Send`] is executed, a [`Command::Truncate`] or [`Command::SaveEpoch`] must be
//!    durable before what follows, and [`Command::Commit`] (record the commit point and apply to
//!    the state machine) must be done before the [`Command::Reply`] after it.
//! 4. Call [`Engine::handle`] with [`Event::Tick`] no later than [`Engine::poll_timeout`].
//!
//! Report the outcome of commands as events: [`Event::Durable`] when an append's durability
//! completes, [`Event::ReadDone`] for a read, [`Event::Connected`] / [`Event::ConnectFailed`]
//! for a connect, [`Event::LogFailed`] when the log fails.

mod replica;
mod source;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::{Message, Refusal};
use crate::quorum::{Quorum, QuorumPolicy, Tags};
use crate::types::{ChainError, Epoch, LogPosition, LogState, NodeId, Tx, TxHash, TxId};

pub use replica::UpstreamState;

/// A point in time, in microseconds since an origin the driver chooses. The engine only
/// compares and adds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// `self + duration`.
    pub fn plus(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration.as_micros() as u64))
    }

    /// The time from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Identifies a channel between this node and a peer, chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Identifies a client write, chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// Which way a channel points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// To this node's source (this node is a replica).
    Upstream,
    /// From a replica of this node.
    Downstream,
}

/// Whether a node writes its own transactions or copies a source's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Accepts writes; begins a new epoch every time it starts.
    Primary,
    /// Copies the database from a source (a primary or another replica) at `address`.
    Replica {
        /// The source's address, as the transport dials it.
        address: String,
    },
    /// A replica without a replicator of its own: an external process pushes transactions
    /// committed elsewhere with [`Event::Replicate`] (immudb's `ReplicateTx`), and the engine
    /// checks their hash chain before storing them.
    ExternalReplica,
}

/// The settings of one replicated database on one node.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's identity.
    pub node: NodeId,
    /// The database's name; a subscription for another name is refused.
    pub database: String,
    /// The name of the database to replicate at the source, when it differs from `database`.
    pub source_database: Option<String>,
    /// Primary or replica.
    pub role: Role,
    /// Labels this node announces to its source (e.g. a zone), for quorum policies.
    pub tags: Tags,
    /// Identities allowed to replicate from this node; `None` allows any authenticated peer.
    pub allowed_replicators: Option<Vec<NodeId>>,
    /// How many transactions a source may send beyond this replica's acknowledgement
    /// (immudb's `--replication-prefetch-tx-buffer-size`).
    pub prefetch_buffer: u32,
    /// Whether a replica may discard uncommitted transactions that diverge from its source
    /// when the source's epoch does not already supersede them (immudb's
    /// `--replication-allow-tx-discarding`).
    pub allow_tx_discarding: bool,
    /// Most transactions on the primary that are appended but not yet committed. Writes beyond
    /// it are refused with [`WriteError::Backlog`] instead of queueing without bound.
    pub max_uncommitted: u64,
    /// How long a write may wait for its commit before it is answered with
    /// [`WriteError::Timeout`] (outcome unknown); `None` waits as long as it takes.
    pub write_timeout: Option<Duration>,
    /// Largest number of transactions in one `Txs` message.
    pub max_batch_txs: usize,
    /// Largest payload bytes in one `Txs` message (one transaction is always sent whole).
    pub max_batch_bytes: usize,
    /// Recent transactions kept in memory to stream to live replicas without reading the log.
    pub recent_cache_txs: usize,
    /// How long replicas may go without learning a new commit point when no `Txs` message
    /// carries it. Under load the next batch carries it for free; an idle source sends a
    /// `Committed` message after this delay. Zero sends it at once, which costs every replica
    /// one more message and wake-up per commit.
    pub commit_notify_delay: Duration,
    /// Under a policy that commits without replicas (asynchronous), how long new transactions
    /// may wait before they are streamed, so that replicas get them in batches rather than one
    /// message per write batch: each message costs a replica a receive, an append, a sync
    /// hand-off and an acknowledgement (and its sync competes with the primary's for the
    /// disk). Replicas lag by at most this much more (a few milliseconds, like a Kafka
    /// producer's `linger.ms`). Synchronous policies always stream at once; zero streams at
    /// once under every policy.
    pub async_stream_delay: Duration,
    /// How many partly filled `Txs` messages may await a replica's acknowledgement before
    /// newer transactions wait for one to be acknowledged and go out together (Nagle's rule,
    /// per replica). An idle stream sends at once; a busy one sends one message per replica
    /// sync instead of one per write batch, and two in flight keep the next batch ready when
    /// the replica's sync ends. Full messages (`max_batch_txs` or `max_batch_bytes`) are never
    /// held, so catch-up keeps its pipeline. Zero never holds.
    pub partial_batches_in_flight: usize,
    /// How often a silent channel carries a heartbeat.
    pub heartbeat_interval: Duration,
    /// A peer silent for this long is considered lost and its channel is closed.
    pub peer_timeout: Duration,
    /// First delay before reconnecting to a source; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Seed for the reconnection jitter.
    pub seed: u64,
}

impl EngineConfig {
    /// Defaults for a database named `database` on node `node`.
    pub fn new(node: impl Into<NodeId>, database: impl Into<String>, role: Role) -> EngineConfig {
        EngineConfig {
            node: node.into(),
            database: database.into(),
            source_database: None,
            role,
            tags: Tags::new(),
            allowed_replicators: None,
            prefetch_buffer: 4096,
            allow_tx_discarding: false,
            max_uncommitted: 100_000,
            write_timeout: None,
            max_batch_txs: 1024,
            max_batch_bytes: 1 << 20,
            recent_cache_txs: 8192,
            commit_notify_delay: Duration::from_millis(2),
            async_stream_delay: Duration::from_millis(5),
            partial_batches_in_flight: 2,
            heartbeat_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            seed: 0,
        }
    }
}

impl From<String> for NodeId {
    fn from(name: String) -> NodeId {
        NodeId(name)
    }
}

/// Something that happened, fed to [`Engine::handle`].
#[derive(Debug)]
pub enum Event {
    /// Clients proposed writes (the driver batches concurrent ones into one event).
    Propose(Vec<(WriteId, Bytes)>),
    /// The appends up to token `token` are durable up to `up_to`.
    Durable {
        /// The token of the [`Command::Append`] whose durability completed.
        token: u64,
        /// The last durable transaction of that append.
        up_to: TxId,
    },
    /// A channel opened.
    Connected {
        /// The channel.
        conn: ConnId,
        /// The peer's authenticated identity.
        peer: NodeId,
        /// The peer's address, for status.
        address: String,
        /// Which way it points.
        direction: Direction,
    },
    /// A [`Command::Connect`] failed.
    ConnectFailed {
        /// Why.
        reason: String,
    },
    /// A channel closed or broke.
    Disconnected {
        /// The channel.
        conn: ConnId,
    },
    /// A message arrived.
    Received {
        /// On this channel.
        conn: ConnId,
        /// The message.
        message: Message,
    },
    /// A [`Command::Read`] completed (an empty vector if the transactions do not exist).
    ReadDone {
        /// The channel the read was for.
        conn: ConnId,
        /// The transactions read.
        txs: Vec<Tx>,
    },
    /// An external replicator pushes transactions committed at their source (only on a
    /// [`Role::ExternalReplica`]); answered with a [`Command::Reply`] once they are durable.
    Replicate {
        /// Identifies the answer.
        write: WriteId,
        /// Contiguous transactions following this node's last.
        txs: Vec<Tx>,
    },
    /// The quorum policy changed.
    SetPolicy(Arc<dyn QuorumPolicy>),
    /// The log failed; the engine stops accepting writes.
    LogFailed(String),
    /// Time passed.
    Tick,
}

/// Something the driver must do, drained from [`Engine::poll_command`].
#[derive(Debug)]
pub enum Command {
    /// Append these transactions; report durability as [`Event::Durable`] with `token`.
    Append {
        /// The transactions, contiguous after the log's last.
        txs: Vec<Tx>,
        /// Echoed in the durability event.
        token: u64,
    },
    /// Durably remove every transaction after `after`.
    Truncate {
        /// The new last transaction.
        after: TxId,
    },
    /// Durably record the epoch.
    SaveEpoch(Epoch),
    /// Record the commit point and apply every transaction up to it to the state machine.
    Commit {
        /// The new commit point.
        up_to: TxId,
    },
    /// Read transactions from the log and report them as [`Event::ReadDone`].
    Read {
        /// The channel they are for.
        conn: ConnId,
        /// First id.
        from: TxId,
        /// At most this many.
        max_count: usize,
        /// Stop after this many payload bytes.
        max_bytes: usize,
    },
    /// Send a message on a channel.
    Send {
        /// The channel.
        conn: ConnId,
        /// The message.
        message: Message,
    },
    /// Open a channel to this node's source.
    Connect {
        /// The source's address.
        address: String,
    },
    /// Close a channel.
    Close {
        /// The channel.
        conn: ConnId,
    },
    /// Answer a client write.
    Reply {
        /// The write.
        write: WriteId,
        /// Its outcome.
        result: Result<WriteReceipt, WriteError>,
    },
}

/// How a write was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckKind {
    /// Under a synchronous policy: the quorum's replicas hold it durably.
    Quorum,
    /// Under the asynchronous policy: only the primary holds it durably.
    Async,
}

/// The answer to a committed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// The transaction's id.
    pub tx_id: TxId,
    /// Its chained hash.
    pub hash: TxHash,
    /// How it was committed.
    pub ack: AckKind,
}

/// Why a write was not acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum WriteError {
    /// This node is a replica. Nothing was written.
    #[error("this database is a replica; send writes to the primary at {source_address}")]
    NotPrimary {
        /// The primary's address as this replica knows it (its source's, until the source
        /// names the primary).
        source_address: String,
    },

    /// Too many transactions wait for their quorum. Nothing was written.
    #[error("{uncommitted} transactions are waiting for their quorum (limit {limit}); retry later")]
    Backlog {
        /// How many wait.
        uncommitted: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The write was appended as transaction `tx_id` but not committed within the write
    /// timeout. Its outcome is unknown: it may still commit.
    #[error("transaction {tx_id} was not committed within the timeout; its outcome is unknown")]
    Timeout {
        /// The transaction it became.
        tx_id: TxId,
    },
    /// A node of a higher epoch exists: this primary is fenced and accepts no writes.
    #[error("this primary is fenced: epoch {seen} was seen, ours is {ours}")]
    Fenced {
        /// Our epoch.
        ours: Epoch,
        /// The higher epoch seen.
        seen: Epoch,
    },
    /// The log failed. The outcome of writes already appended is unknown.
    #[error("the log failed: {0}")]
    LogFailed(String),
    /// The node is shutting down. The outcome of writes already appended is unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Pushed transactions were refused (they do not extend this log's hash chain, or this
    /// node does not take pushed transactions). Nothing was stored.
    #[error("transactions refused: {0}")]
    Rejected(String),
}

/// Why replication from a source stopped and needs an operator.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The source refused the subscription.
    #[error("source refused: {0}")]
    Refused(Refusal),
    /// The replica's uncommitted transactions differ from the source's and discarding them is
    /// not allowed.
    #[error(
        "replica diverged from its source at transaction {tx_id}: local hash {local_hash}, \
         source hash {}; set allow_tx_discarding to discard the local uncommitted transactions",
        source_hash.map(|h| h.to_hex()).unwrap_or_else(|| "none (source ends before)".into())
    )]
    Diverged {
        /// The first transaction that differs.
        tx_id: TxId,
        /// The replica's hash there.
        local_hash: TxHash,
        /// The source's hash there, if it has that transaction.
        source_hash: Option<TxHash>,
    },
    /// A received transaction failed the hash chain: the stream was tampered with.
    #[error("received transaction breaks the hash chain: {0}")]
    Chain(#[from] ChainError),
    /// A received transaction carries an epoch lower than the transaction before it: epochs
    /// never decrease along a log.
    #[error("transaction {tx_id} has epoch {epoch}, lower than the previous transaction's {min}")]
    BadEpoch {
        /// The transaction.
        tx_id: TxId,
        /// Its epoch.
        epoch: Epoch,
        /// The previous transaction's epoch.
        min: Epoch,
    },
    /// The log failed.
    #[error("log failed: {0}")]
    LogFailed(String),
}

/// What a primary knows of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The replica's identity.
    pub id: NodeId,
    /// Its address.
    pub address: String,
    /// The tags it announced.
    pub tags: Tags,
    /// The last transaction it acknowledged as durable.
    pub acked: TxId,
    /// How many transactions it is behind this node's last.
    pub lag_txs: u64,
    /// How long it has been behind (zero when caught up).
    pub lag: Duration,
    /// Whether its channel is open.
    pub connected: bool,
}

/// A snapshot of the engine's state, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineStatus {
    /// Primary or replica.
    pub role: Role,
    /// The node's epoch.
    pub epoch: Epoch,
    /// The last transaction appended.
    pub last: LogPosition,
    /// The last durable transaction (immudb's precommitted position).
    pub durable: LogPosition,
    /// The commit point.
    pub committed: TxId,
    /// The commit point with its hash, where known (it may trail `committed` just after a
    /// restart, until a transaction whose hash is at hand commits).
    pub committed_position: LogPosition,
    /// The quorum policy (primary only).
    pub policy: Option<String>,
    /// Whether a higher epoch fenced this primary.
    pub fenced: Option<Epoch>,
    /// Writes waiting for their commit.
    pub waiting_writes: usize,
    /// The replica's link to its source (replica only).
    pub upstream: Option<UpstreamState>,
    /// The last error replication met (replica only), cleared once streaming resumes.
    pub last_error: Option<String>,
    /// This node's replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// A write waiting for its commit.
#[derive(Debug)]
struct PendingWrite {
    write: WriteId,
    position: LogPosition,
    deadline: Option<Timestamp>,
}

/// The replication engine of one database on one node. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    policy: Arc<dyn QuorumPolicy>,
    epoch: Epoch,
    last: LogPosition,
    /// The epoch of the last transaction in the log; epochs never decrease along a log.
    last_epoch: Epoch,
    durable: LogPosition,
    committed: TxId,
    /// A position known to be committed here, with its hash: what a replica offers its source
    /// as common ground.
    committed_position: LogPosition,
    /// Positions appended in this run after the commit point, to name hashes of positions that
    /// become durable or committed.
    positions: VecDeque<LogPosition>,
    /// Recent transactions, streamed to live replicas without reading the log.
    recent: VecDeque<Tx>,
    recent_bytes: usize,
    next_append_token: u64,
    /// Durability events of appends before this token predate a truncation.
    first_valid_token: u64,
    truncated_to: TxId,
    pending: VecDeque<PendingWrite>,
    /// Pushes from an external replicator waiting for durability.
    pushed: VecDeque<PendingWrite>,
    fenced: Option<Epoch>,
    failed: Option<String>,
    downstreams: BTreeMap<ConnId, source::Downstream>,
    replicas: BTreeMap<NodeId, source::ReplicaRecord>,
    upstream: replica::Upstream,
    /// The commit point moved and replicas have not been told yet.
    commit_point_dirty: bool,
    /// When the replicas not told by a `Txs` message get a `Committed` message.
    commit_notify_at: Option<Timestamp>,
    /// When transactions held back by `async_stream_delay` are streamed.
    stream_at: Option<Timestamp>,
    /// The time of the latest event.
    now: Timestamp,
    /// The primary's address, learned from the source's `Accepted`.
    primary_hint: Option<String>,
    /// Why the source last refused us, while we keep retrying.
    last_refusal: Option<String>,
    next_tick: Timestamp,
    commands: VecDeque<Command>,
    rng: u64,
}

impl Engine {
    /// Builds the engine from the log's state at startup. A primary begins a new epoch (the
    /// first command saves it); a replica schedules its first connection.
    ///
    /// `last_epoch` is the epoch of the log's last transaction (`Epoch(0)` for an empty log).
    pub fn new(
        config: EngineConfig,
        policy: Arc<dyn QuorumPolicy>,
        state: LogState,
        last_epoch: Epoch,
        now: Timestamp,
    ) -> Engine {
        let mut engine = Engine {
            rng: config.seed ^ 0x9e37_79b9_7f4a_7c15,
            policy,
            epoch: state.epoch,
            last: state.last,
            last_epoch,
            durable: state.durable,
            committed: state.committed.tx_id,
            committed_position: state.committed,
            positions: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            next_append_token: 0,
            first_valid_token: 0,
            truncated_to: TxId(u64::MAX),
            pending: VecDeque::new(),
            pushed: VecDeque::new(),
            fenced: None,
            failed: None,
            downstreams: BTreeMap::new(),
            replicas: BTreeMap::new(),
            upstream: replica::Upstream::Idle {
                retry_at: now,
                backoff: config.reconnect_min,
            },
            last_refusal: None,
            primary_hint: None,
            commit_point_dirty: false,
            commit_notify_at: None,
            stream_at: None,
            now,
            next_tick: now,
            commands: VecDeque::new(),
            config,
        };
        if engine.is_primary() {
            // A new epoch on every start: a replica holding transactions this primary streamed
            // but lost in a crash sees they come from an older epoch and may drop them.
            engine.epoch = engine.epoch.max(last_epoch).next();
            engine.commands.push_back(Command::SaveEpoch(engine.epoch));
        }
        engine
    }

    /// The next command to execute, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.commands.is_empty() && self.commit_point_dirty {
            // Replicas learn the commit point once per burst of events rather than once per
            // acknowledgement, and only after `commit_notify_delay`, by when the next `Txs`
            // has usually carried it: the primary's commit never waits for this message.
            self.commit_point_dirty = false;
            if self.config.commit_notify_delay.is_zero() {
                self.send_commit_points();
            } else if self.commit_notify_at.is_none() {
                self.commit_notify_at = Some(self.now.plus(self.config.commit_notify_delay));
            }
        }
        self.commands.pop_front()
    }

    /// When the engine next needs an [`Event::Tick`].
    pub fn poll_timeout(&self) -> Timestamp {
        let mut at = self.next_tick;
        for due in [self.commit_notify_at, self.stream_at]
            .into_iter()
            .flatten()
        {
            at = at.min(due);
        }
        if let Some(deadline) = self.pending.iter().filter_map(|p| p.deadline).min() {
            at = at.min(deadline);
        }
        if let replica::Upstream::Idle { retry_at, .. } = self.upstream
            && matches!(self.config.role, Role::Replica { .. })
        {
            at = at.min(retry_at);
        }
        at
    }

    /// Handles one event at time `now`.
    pub fn handle(&mut self, now: Timestamp, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::Propose(writes) => self.propose(now, writes),
            Event::Durable { token, up_to } => self.on_durable(token, up_to),
            Event::Connected {
                conn,
                peer,
                address,
                direction,
            } => match direction {
                Direction::Upstream => self.on_upstream_connected(now, conn),
                Direction::Downstream => self.on_downstream_connected(now, conn, peer, address),
            },
            Event::ConnectFailed { reason } => self.on_connect_failed(now, reason),
            Event::Disconnected { conn } => self.on_disconnected(now, conn),
            Event::Received { conn, message } => self.on_message(now, conn, message),
            Event::ReadDone { conn, txs } => self.on_read_done(now, conn, txs),
            Event::Replicate { write, txs } => self.on_replicate(write, txs),
            Event::SetPolicy(policy) => {
                self.policy = policy;
                if self.stream_at.take().is_some() {
                    self.pump_all(now);
                }
                self.advance_commit();
            }
            Event::LogFailed(reason) => self.on_log_failed(reason),
            Event::Tick => self.on_tick(now),
        }
    }

    /// The engine's state, for status output.
    pub fn status(&self, now: Timestamp) -> EngineStatus {
        EngineStatus {
            role: self.config.role.clone(),
            epoch: self.epoch,
            last: self.last,
            durable: self.durable,
            committed: self.committed,
            committed_position: self.committed_position,
            policy: self.is_primary().then(|| format!("{:?}", self.policy)),
            fenced: self.fenced,
            waiting_writes: self.pending.len(),
            upstream: matches!(self.config.role, Role::Replica { .. })
                .then(|| self.upstream.state()),
            last_error: self
                .upstream
                .last_error()
                .or_else(|| self.last_refusal.clone()),
            replicas: self.replica_statuses(now),
        }
    }

    /// The committed transactions `from..=up_to` if all of them are still in the recent
    /// cache, so that the driver can apply them without reading the log.
    pub fn recent(&self, from: TxId, up_to: TxId) -> Option<Vec<Tx>> {
        let first = self.recent.front()?.id;
        if from < first || up_to > self.last.tx_id || from > up_to {
            return None;
        }
        let start = (from.0 - first.0) as usize;
        Some(
            self.recent
                .iter()
                .skip(start)
                .take((up_to.0 - from.0 + 1) as usize)
                .cloned()
                .collect(),
        )
    }

    /// The node's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The commit point.
    pub fn committed(&self) -> TxId {
        self.committed
    }

    /// The last transaction appended.
    pub fn last(&self) -> LogPosition {
        self.last
    }

    /// The last durable transaction.
    pub fn durable(&self) -> LogPosition {
        self.durable
    }

    /// The node's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The error that stopped replication from the source, if any.
    pub fn replication_error(&self) -> Option<&ReplicationError> {
        self.upstream.stopped()
    }

    /// The primary's address as far as this node knows: `None` on the primary itself, the
    /// source's hint (or the source) on a replica.
    pub fn primary_address(&self) -> Option<String> {
        match &self.config.role {
            Role::Primary | Role::ExternalReplica => None,
            Role::Replica { address } => {
                Some(self.primary_hint.clone().unwrap_or_else(|| address.clone()))
            }
        }
    }

    fn is_primary(&self) -> bool {
        self.config.role == Role::Primary
    }

    /// Appends transactions this node now holds (written here or received from its source).
    fn append(&mut self, txs: Vec<Tx>) {
        let Some(last_tx) = txs.last() else { return };
        self.last = last_tx.position();
        self.last_epoch = last_tx.epoch;
        for tx in &txs {
            self.positions.push_back(tx.position());
            self.recent_bytes += tx.encoded_len_hint();
            self.recent.push_back(tx.clone());
        }
        while self.recent.len() > self.config.recent_cache_txs
            || (self.recent_bytes > 64 * self.config.max_batch_bytes && self.recent.len() > 1)
        {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.encoded_len_hint();
            }
        }
        let token = self.next_append_token;
        self.next_append_token += 1;
        self.commands.push_back(Command::Append { txs, token });
    }

    /// Removes every transaction after `position` (which must not be before the commit point).
    fn truncate(&mut self, position: LogPosition) {
        self.commands.push_back(Command::Truncate {
            after: position.tx_id,
        });
        self.last = position;
        if self.durable.tx_id > position.tx_id {
            self.durable = position;
        }
        self.positions.retain(|p| p.tx_id <= position.tx_id);
        while self.recent.back().is_some_and(|tx| tx.id > position.tx_id) {
            if let Some(old) = self.recent.pop_back() {
                self.recent_bytes -= old.encoded_len_hint();
            }
        }
        self.first_valid_token = self.next_append_token;
        self.truncated_to = position.tx_id;
    }

    fn position_of(&self, tx_id: TxId) -> Option<LogPosition> {
        if tx_id == self.last.tx_id {
            return Some(self.last);
        }
        if tx_id == self.durable.tx_id {
            return Some(self.durable);
        }
        if tx_id == self.committed_position.tx_id {
            return Some(self.committed_position);
        }
        let first = self.positions.front()?.tx_id;
        let index = tx_id.0.checked_sub(first.0)?;
        self.positions.get(index as usize).copied()
    }

    fn on_durable(&mut self, token: u64, up_to: TxId) {
        let mut up_to = up_to.min(self.last.tx_id);
        if token < self.first_valid_token {
            // That append's durability says nothing about what was appended after the
            // truncation that followed it.
            up_to = up_to.min(self.truncated_to);
        }
        if up_to <= self.durable.tx_id {
            return;
        }
        if let Some(position) = self.position_of(up_to) {
            self.durable = position;
            self.on_durable_advanced();
        }
    }

    fn on_log_failed(&mut self, reason: String) {
        tracing::error!(%reason, "log failed; refusing writes");
        for pending in std::mem::take(&mut self.pending) {
            self.commands.push_back(Command::Reply {
                write: pending.write,
                result: Err(WriteError::LogFailed(reason.clone())),
            });
        }
        if !self.is_primary() {
            self.stop_replication(ReplicationError::LogFailed(reason.clone()));
        }
        self.failed = Some(reason);
    }

    /// Moves the commit point to `up_to` (never backwards, never past durable).
    fn set_committed(&mut self, up_to: TxId) {
        let up_to = up_to.min(self.durable.tx_id);
        if up_to <= self.committed {
            return;
        }
        self.committed = up_to;
        if let Some(position) = self.position_of(up_to) {
            self.committed_position = position;
        }
        while self.positions.front().is_some_and(|p| p.tx_id < up_to) {
            self.positions.pop_front();
        }
        self.commands.push_back(Command::Commit { up_to });
        self.on_commit_advanced();
    }

    fn on_tick(&mut self, now: Timestamp) {
        if self.stream_at.is_some_and(|at| at <= now) {
            self.stream_at = None;
            self.pump_all(now);
        }
        if self.commit_notify_at.is_some_and(|at| at <= now) {
            self.commit_notify_at = None;
            self.send_commit_points();
        }
        self.next_tick = now.plus(self.config.heartbeat_interval / 2);
        self.expire_writes(now);
        self.tick_downstreams(now);
        if matches!(self.config.role, Role::Replica { .. }) {
            self.tick_upstream(now);
        }
    }

    fn next_jitter(&mut self, max: Duration) -> Duration {
        // xorshift64*: deterministic from the configured seed.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let max_micros = max.as_micros().max(1) as u64;
        Duration::from_micros(value % max_micros)
    }
}

/// The built-in policy a primary uses unless told otherwise.
pub fn default_policy() -> Arc<dyn QuorumPolicy> {
    Arc::new(Quorum::Async)
}
