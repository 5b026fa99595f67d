//! The settings of one replicated database on one node, and its role.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::quorum::{Quorum, QuorumPolicy, Tags};
use crate::types::{Epoch, NodeId};

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
    /// committed elsewhere with [`Event::Replicate`](super::Event::Replicate) (immudb's `ReplicateTx`), and the engine
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
    /// Whether a replica may drop transactions it had committed when it rejoins a history
    /// that lacks them (after a forced promotion, or under an asynchronous policy), once:
    /// the first rewind spends the permission until the engine is built again. Without it,
    /// replication stops naming the range and both hashes. The dropped transactions go to
    /// the rollback sink first; the driver refuses to start with it unless the state machine
    /// can rewind ([`StateMachine::rewind`](crate::StateMachine::rewind)).
    pub allow_rewind: bool,
    /// Most transactions on the primary that are appended but not yet committed. Writes beyond
    /// it are refused with [`WriteError::Backlog`](super::WriteError::Backlog) instead of queueing without bound.
    pub max_uncommitted: u64,
    /// How long a write may wait for its commit before it is answered with
    /// [`WriteError::Timeout`](super::WriteError::Timeout) (outcome unknown); `None` waits as long as it takes.
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
    /// A primary begins its epoch above this one as well as above every epoch its log has
    /// seen. A promotion by hand sets it to the highest epoch the other members report, so
    /// that none of them refuses the new primary as older, nor fences it by subscribing with
    /// an epoch it never saw.
    pub min_epoch: Epoch,
    /// Whether this primary writes under a coordinator's lease, as under automatic failover:
    /// it acknowledges writes only until the end of the lease the driver last reported
    /// ([`Event::Lease`](super::Event::Lease)). Without one, or once it has passed, it accepts
    /// no write, moves no commit point and answers waiting writes as of unknown outcome, under
    /// any policy, so that a primary cut from its coordinator, or paused past its lease,
    /// acknowledges nothing once another node may have been elected. It serves no replica
    /// without a lease, and at a restart begins no epoch of its own unless `min_epoch`
    /// reaches its log's (the coordinator grants epochs).
    pub leased: bool,
    /// The format of the state machine's snapshots, `None` when it takes none: a replica then
    /// refuses a snapshot its source offers, with the reason, since it could not install it.
    /// The driver sets it from [`StateMachine::snapshot_format`](crate::StateMachine::snapshot_format).
    pub snapshot_format: Option<crate::snapshot::SnapshotFormat>,
    /// A replica whose log is empty asks its source for a snapshot rather than the whole
    /// history (`prefer_snapshot` in its subscription); the source offers one if it has one.
    pub prefer_snapshot: bool,
    /// Snapshot chunks a source sends beyond the last one the replica stored: with the chunk
    /// size, what a transfer holds in memory and in flight.
    pub snapshot_window: u32,
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
            allow_rewind: false,
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
            min_epoch: Epoch(0),
            leased: false,
            snapshot_format: None,
            prefer_snapshot: true,
            snapshot_window: 4,
        }
    }
}

impl From<String> for NodeId {
    fn from(name: String) -> NodeId {
        NodeId(name)
    }
}

/// The built-in policy a primary uses unless told otherwise.
pub fn default_policy() -> Arc<dyn QuorumPolicy> {
    Arc::new(Quorum::Async)
}
