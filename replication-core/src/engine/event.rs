//! What the engine is told: [`Event`] and the identifiers events carry.

use std::sync::Arc;

use bytes::Bytes;

use crate::log::LogFailure;
use crate::protocol::Message;
use crate::quorum::QuorumPolicy;
use crate::types::{NodeId, ReplicaId, Tx, TxId};

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
            (ConnectFailed { reason: a }, ConnectFailed { reason: b }) => a == b,
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
            (Tick, Tick) => true,
            _ => false,
        }
    }
}
