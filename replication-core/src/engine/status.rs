//! The engine's state as status output shows it.

use std::time::Duration;

use super::Role;
use crate::quorum::Tags;
use crate::types::{Epoch, LogBase, LogPosition, ReplicaId, TxId};

/// The state of a replica's link to its source, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    /// Waiting to reconnect.
    Disconnected,
    /// Dialling the source.
    Connecting,
    /// Subscribed, waiting for the source's answer.
    Subscribing,
    /// Comparing logs after the source reported a divergence.
    ResolvingDivergence,
    /// Receiving transactions.
    Streaming,
    /// Receiving a snapshot from the source (its log no longer holds what this replica needs,
    /// or this replica started empty).
    ReceivingSnapshot,
    /// Installing the snapshot received.
    InstallingSnapshot,
    /// Stopped by an error that needs an operator.
    Stopped(String),
}

/// Why a replica's link to its source failed, by kind: what an operator fixes differs for each,
/// so status, logs and metrics name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LinkErrorCause {
    /// The source could not be reached: a wrong address, nothing listening, a network cut.
    Unreachable,
    /// The handshake refused an identity: a certificate of another CA, or an expired one.
    Certificate,
    /// The source has no such database.
    UnknownDatabase,
    /// The source does not allow this node to replicate the database.
    NotAllowed,
    /// The source refused the subscription for a reason that may pass (epochs, a source
    /// behind this replica, no leader lease yet), or the handshake failed for another reason
    /// than a certificate (a protocol version).
    Refused,
    /// The source went silent past the peer timeout.
    Timeout,
    /// An open channel to the source closed.
    ConnectionLost,
    /// A snapshot from the source could not be received, stored or installed.
    Snapshot,
    /// Replication stopped for an operator (see the error): a diverged history, a protocol
    /// version the source refuses, a local log that failed.
    Stopped,
}

impl LinkErrorCause {
    /// Every cause, in order: metrics show a zero for those never seen.
    pub const ALL: [LinkErrorCause; 9] = [
        LinkErrorCause::Unreachable,
        LinkErrorCause::Certificate,
        LinkErrorCause::UnknownDatabase,
        LinkErrorCause::NotAllowed,
        LinkErrorCause::Refused,
        LinkErrorCause::Timeout,
        LinkErrorCause::ConnectionLost,
        LinkErrorCause::Snapshot,
        LinkErrorCause::Stopped,
    ];

    /// The cause as a short label: `unreachable`, `certificate`, `unknown_database`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LinkErrorCause::Unreachable => "unreachable",
            LinkErrorCause::Certificate => "certificate",
            LinkErrorCause::UnknownDatabase => "unknown_database",
            LinkErrorCause::NotAllowed => "not_allowed",
            LinkErrorCause::Refused => "refused",
            LinkErrorCause::Timeout => "timeout",
            LinkErrorCause::ConnectionLost => "connection_lost",
            LinkErrorCause::Snapshot => "snapshot",
            LinkErrorCause::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for LinkErrorCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A replica's link to its source failing, from its first failure until the source accepts a
/// subscription again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkTrouble {
    /// The kind of the last failure.
    pub cause: LinkErrorCause,
    /// The last failure, in words.
    pub message: String,
    /// Failed attempts since the link last worked.
    pub attempts: u64,
    /// How long ago the last attempt failed.
    pub since_last_attempt: Duration,
    /// How long ago the first of these failures happened.
    pub since_first: Duration,
}

/// What a primary knows of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// The replica's identity: its node and its database there.
    pub id: ReplicaId,
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
    /// Whether it is a member: it counts toward the quorum policy, connected or not.
    pub member: bool,
}

/// A snapshot of the engine's state, as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineStatus {
    /// Primary or replica.
    pub role: Role,
    /// The node's epoch.
    pub epoch: Epoch,
    /// The primary that claims that epoch, as this node recorded it (`None` when unknown).
    pub epoch_primary: Option<ReplicaId>,
    /// The last transaction appended.
    pub last: LogPosition,
    /// The epoch of the last transaction appended: with `durable`, how advanced this log is.
    /// Compare logs by this epoch first, then by position, as Raft compares last terms: a log
    /// whose last transaction comes from a later epoch holds the later primary's history, and
    /// a longer log of an older epoch may hold only transactions that primary superseded.
    pub last_epoch: Epoch,
    /// The last durable transaction (immudb's precommitted position).
    pub durable: LogPosition,
    /// The commit point.
    pub committed: TxId,
    /// The commit point with its hash, where known (it may trail `committed` just after a
    /// restart, until a transaction whose hash is at hand commits).
    pub committed_position: LogPosition,
    /// The quorum policy (primary only).
    pub policy: Option<String>,
    /// On a primary: whether the replicas connected now can meet the policy (`false`: new
    /// writes wait for more replicas to connect); `None` elsewhere.
    pub policy_met_by_connected: Option<bool>,
    /// Whether a higher epoch fenced this primary.
    pub fenced: Option<Epoch>,
    /// On a primary writing under a coordinator's lease, when the lease it was last granted
    /// ends (`None`: none granted, or not leased).
    pub lease_until: Option<super::Timestamp>,
    /// Writes waiting for their commit.
    pub waiting_writes: usize,
    /// The replica's link to its source (replica only).
    pub upstream: Option<UpstreamState>,
    /// The last error replication met (replica), cleared once streaming resumes; on a fenced
    /// primary, why it is fenced.
    pub last_error: Option<String>,
    /// The replica's link to its source failing: the last cause, its message, the failed
    /// attempts and when (replica only; `None` while the link works).
    pub link_trouble: Option<LinkTrouble>,
    /// The link's failures since this node started, by cause (replica only).
    pub link_errors: Vec<(LinkErrorCause, u64)>,
    /// Connections to the source dialled since this node started, the first included.
    pub link_connects: u64,
    /// The source's commit point as this replica last heard it (kept while disconnected), and
    /// the age of the oldest commit point of the source this replica has not reached (zero
    /// when it has reached every one heard).
    pub source_lag: Option<(TxId, Duration)>,
    /// The source's address (replica only).
    pub source_address: Option<String>,
    /// This node's replicas: those heard from since it started, and every member.
    pub replicas: Vec<ReplicaStatus>,
    /// The durable membership: the replicas that count toward the quorum policy.
    pub members: Vec<ReplicaId>,
    /// Why the log failed (a write or a sync did): the node then refuses every write and
    /// acknowledgement until it restarts and recovers its log.
    pub log_failure: Option<String>,
    /// The last transactions this node dropped from its log (rejoining a newer history) and
    /// where they were kept, since it started.
    pub last_rollback: Option<Rollback>,
    /// Where the log begins: transactions up to it were compacted away or came in a snapshot.
    pub base: LogBase,
    /// The latest snapshot this node can send to replicas: its last transaction and size.
    pub snapshot: Option<(TxId, u64)>,
    /// A snapshot being received from the source (replica only), or paused to resume.
    pub snapshot_transfer: Option<SnapshotProgress>,
    /// The source's commit point as this replica last heard it (replica only, while
    /// streaming): with `committed`, how far it has to catch up.
    pub source_committed: Option<TxId>,
    /// While the replica streams: for how long, and its commit point when it began (with
    /// `committed`, the rate at which it catches up).
    pub streaming_since: Option<(Duration, TxId)>,
}

/// How a snapshot transfer to this replica goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// The snapshot's last transaction: the log follows from there.
    pub last: TxId,
    /// Chunks stored.
    pub chunks_done: u64,
    /// Chunks in all.
    pub chunks: u64,
    /// Bytes stored.
    pub bytes_done: u64,
    /// Bytes in all.
    pub bytes: u64,
    /// Bytes per second since this connection's transfer began.
    pub bytes_per_second: u64,
    /// Every chunk is stored and the snapshot is being installed.
    pub installing: bool,
}

/// Transactions a node dropped from its log, kept first where an operator can read them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollback {
    /// The first dropped.
    pub from: TxId,
    /// The last dropped.
    pub to: TxId,
    /// Where they were kept (the driver's [`RollbackSink`](crate::driver::RollbackSink)).
    pub location: String,
    /// The last of them that this node had committed, when an operator allowed a rewind;
    /// `None` when every one of them was uncommitted.
    pub committed_to: Option<TxId>,
}
