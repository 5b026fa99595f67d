//! What the engine is told: [`Event`] and the identifiers events carry.

use std::sync::Arc;

use bytes::Bytes;

use crate::log::LogFailure;
use crate::protocol::Message;
use crate::quorum::QuorumPolicy;
use crate::snapshot::{SnapshotChunk, SnapshotError, SnapshotMeta};
use crate::types::{LogBase, NodeId, ReplicaId, Tx, TxId};

/// Identifies a channel between this node and a peer, chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// Identifies one [`Command::Append`](super::Command::Append), echoed by the
/// [`Event::Durable`] that reports its durability. Tokens increase with every append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppendToken(pub u64);

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

/// Something that happened, fed to [`Engine::handle`](super::Engine::handle).
#[derive(Debug)]
pub enum Event {
    /// Clients proposed writes (the driver batches concurrent ones into one event).
    Propose(Vec<(WriteId, Bytes)>),
    /// The appends up to token `token` are durable up to `up_to`.
    Durable {
        /// The token of the [`super::Command::Append`] whose durability completed.
        token: AppendToken,
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
    /// A [`super::Command::Connect`] failed.
    ConnectFailed {
        /// Why.
        reason: String,
        /// The kind of failure: [`LinkErrorCause::Unreachable`] or
        /// [`LinkErrorCause::Certificate`] for a transport's.
        ///
        /// [`LinkErrorCause::Unreachable`]: super::LinkErrorCause::Unreachable
        /// [`LinkErrorCause::Certificate`]: super::LinkErrorCause::Certificate
        cause: super::LinkErrorCause,
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
    /// A [`super::Command::Read`] completed (an empty vector if the transactions do not exist).
    ReadDone {
        /// The channel the read was for.
        conn: ConnId,
        /// The transactions read.
        txs: Vec<Tx>,
    },
    /// An external replicator pushes transactions committed at their source (only on a
    /// [`Role::ExternalReplica`](super::Role::ExternalReplica)); answered with a [`super::Command::Reply`] once they are durable.
    Replicate {
        /// Identifies the answer.
        write: WriteId,
        /// Contiguous transactions following this node's last.
        txs: Vec<Tx>,
    },
    /// The quorum policy changed.
    SetPolicy(Arc<dyn QuorumPolicy>),
    /// An operator retires a member for good; the policy stops counting it at once.
    RemoveMember(ReplicaId),
    /// The log failed; the engine stops accepting writes.
    LogFailed(LogFailure),
    /// The driver kept the transactions a [`super::Command::Truncate`] dropped (for status).
    RolledBack(super::Rollback),
    /// The coordinator granted or renewed this node's lease: a
    /// [`leased`](super::EngineConfig::leased) primary may acknowledge writes until `until`
    /// (exclusive). The driver computes it from when it *sent* the renewal, plus the lease's
    /// time to live, minus a margin, so that it ends before the coordinator's copy can.
    Lease {
        /// The end of the lease, in the engine's time.
        until: super::Timestamp,
        /// The members the coordinator holds as the policy's voters (published with the
        /// commit point): only their acknowledgements count, so that no write is
        /// acknowledged through a member a new leader could not know to look for. `None`
        /// counts every member.
        voters: Option<Vec<crate::types::NodeId>>,
        /// The policy whose proofs the coordinator holds (published with the commit point):
        /// the primary commits only what it satisfies too, so that a weaker policy set since
        /// takes effect once published. `None`: the primary's own policy alone.
        policy: Option<Arc<dyn QuorumPolicy>>,
    },
    /// A [`super::Command::SnapshotRead`] completed: the chunk, or `None` if the snapshot
    /// cannot be read any more (the channel is then closed; the replica resumes later).
    SnapshotChunkRead {
        /// The channel it was for.
        conn: ConnId,
        /// The chunk.
        chunk: Option<SnapshotChunk>,
    },
    /// A [`super::Command::SnapshotReceive`] completed: how many chunks of the snapshot are
    /// stored (fewer than asked if some did not survive), or why it cannot be received.
    SnapshotReceiving {
        /// The snapshot's digest.
        digest: [u8; 32],
        /// The chunks stored, from 0.
        result: Result<u64, SnapshotError>,
    },
    /// A [`super::Command::SnapshotInstall`] completed.
    SnapshotInstalled {
        /// The snapshot.
        meta: SnapshotMeta,
        /// Whether it is installed: the state machine switched to it and the log starts after
        /// it.
        result: Result<(), SnapshotError>,
    },
    /// A snapshot of this node's state is stored and may be sent to replicas (taken here, or
    /// installed from the source).
    SnapshotTaken(SnapshotMeta),
    /// The log was compacted: it now begins after `base`.
    Compacted(LogBase),
    /// Compact the log up to `up_to` at most: the engine cuts no further than its latest
    /// snapshot and what its connected replicas, and transfers in progress, still need,
    /// except a replica that needs a transaction before `unpin_below` (it lags too far, and
    /// gets a snapshot when it returns). Answered by a [`super::Command::Compact`], or by
    /// nothing when nothing may be cut.
    Compact {
        /// The last transaction the caller wants removed.
        up_to: TxId,
        /// Replicas needing anything before this do not hold the log back.
        unpin_below: TxId,
    },
    /// Time passed.
    Tick,
}

impl PartialEq for Event {
    /// Structural equality; two policies are equal when they describe themselves alike (a
    /// policy is a trait object, and its `Debug` form is its text form).
    fn eq(&self, other: &Event) -> bool {
        use Event::*;
        match (self, other) {
            (Propose(a), Propose(b)) => a == b,
            (Durable { token: a, up_to: x }, Durable { token: b, up_to: y }) => a == b && x == y,
            (
                Connected {
                    conn: a,
                    peer: p,
                    address: x,
                    direction: d,
                },
                Connected {
                    conn: b,
                    peer: q,
                    address: y,
                    direction: e,
                },
            ) => a == b && p == q && x == y && d == e,
            (
                ConnectFailed {
                    reason: a,
                    cause: x,
                },
                ConnectFailed {
                    reason: b,
                    cause: y,
                },
            ) => a == b && x == y,
            (Disconnected { conn: a }, Disconnected { conn: b }) => a == b,
            (
                Received {
                    conn: a,
                    message: x,
                },
                Received {
                    conn: b,
                    message: y,
                },
            ) => a == b && x == y,
            (ReadDone { conn: a, txs: x }, ReadDone { conn: b, txs: y }) => a == b && x == y,
            (Replicate { write: a, txs: x }, Replicate { write: b, txs: y }) => a == b && x == y,
            (SetPolicy(a), SetPolicy(b)) => format!("{a:?}") == format!("{b:?}"),
            (RemoveMember(a), RemoveMember(b)) => a == b,
            (LogFailed(a), LogFailed(b)) => a == b,
            (RolledBack(a), RolledBack(b)) => a == b,
            (SnapshotChunkRead { conn: a, chunk: x }, SnapshotChunkRead { conn: b, chunk: y }) => {
                a == b && x == y
            }
            (
                SnapshotInstalled { meta: a, result: x },
                SnapshotInstalled { meta: b, result: y },
            ) => a == b && x == y,
            (SnapshotTaken(a), SnapshotTaken(b)) => a == b,
            (
                SnapshotReceiving {
                    digest: a,
                    result: x,
                },
                SnapshotReceiving {
                    digest: b,
                    result: y,
                },
            ) => a == b && x == y,
            (Compacted(a), Compacted(b)) => a == b,
            (
                Compact {
                    up_to: a,
                    unpin_below: x,
                },
                Compact {
                    up_to: b,
                    unpin_below: y,
                },
            ) => a == b && x == y,
            (Tick, Tick) => true,
            _ => false,
        }
    }
}
