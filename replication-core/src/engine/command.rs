//! What the engine asks of its driver: [`Command`], and the answers to writes it carries.

use serde::{Deserialize, Serialize};

use super::{AppendToken, ConnId, WriteError, WriteId};
use crate::protocol::Message;
use crate::snapshot::{SnapshotChunk, SnapshotMeta};
use crate::types::{EpochClaim, ReplicaId, Tx, TxHash, TxId};

/// Something the driver must do, drained from [`Engine::poll_command`](super::Engine::poll_command).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Append these transactions; report durability as [`super::Event::Durable`] with `token`.
    Append {
        /// The transactions, contiguous after the log's last.
        txs: Vec<Tx>,
        /// Echoed in the durability event.
        token: AppendToken,
    },
    /// Durably remove every transaction after `after`.
    Truncate {
        /// The new last transaction.
        after: TxId,
        /// Committed transactions are among those removed (an operator allowed a rewind):
        /// the state machine forgets them first, then
        /// [`TxLog::rewind_after`](crate::TxLog::rewind_after) lowers the commit point to
        /// `after` and cuts.
        rewind: bool,
    },
    /// Durably record the epoch and who claims it ([`TxLog::save_epoch`](crate::TxLog::save_epoch)).
    SaveEpoch(EpochClaim),
    /// Durably record the membership (the replicas that count toward the policy), replacing
    /// the one saved before; it must be durable before what follows.
    SaveMembers(Vec<ReplicaId>),
    /// Record the commit point and apply every transaction up to it to the state machine.
    Commit {
        /// The new commit point.
        up_to: TxId,
    },
    /// Read transactions from the log and report them as [`super::Event::ReadDone`].
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
    /// Read chunk `index` of the snapshot with `digest` for a replica's channel; report it as
    /// [`super::Event::SnapshotChunkRead`].
    SnapshotRead {
        /// The channel it is for.
        conn: ConnId,
        /// The snapshot's digest.
        digest: [u8; 32],
        /// The chunk.
        index: u64,
    },
    /// Get ready to receive the snapshot `meta` from the source, keeping the chunks `0..from`
    /// already stored of it and discarding any other snapshot received in part.
    SnapshotReceive {
        /// The snapshot.
        meta: SnapshotMeta,
        /// The first chunk still to come.
        from: u64,
    },
    /// Store a received chunk, verified, after those stored.
    SnapshotStore {
        /// The chunk.
        chunk: SnapshotChunk,
    },
    /// Every chunk of `meta` is stored: check the whole, switch the state machine to it, and
    /// start the log again after its last transaction ([`crate::TxLog::reset_to`]); report
    /// [`super::Event::SnapshotInstalled`].
    SnapshotInstall {
        /// The snapshot.
        meta: SnapshotMeta,
        /// The replica starts again from the snapshot in place of a rewind (its history
        /// differs from the source's below its own log's base): what its log holds is kept in
        /// the rollback sink before it goes, and reported as [`super::Event::RolledBack`].
        keep_dropped: bool,
    },
    /// Take a snapshot of the state machine (a replica needs one and none is held), and
    /// report it as [`super::Event::SnapshotTaken`].
    TakeSnapshot,
    /// Remove transactions from the log up to `up_to` at most ([`crate::TxLog::compact`]),
    /// and report the new base as [`super::Event::Compacted`].
    Compact {
        /// The last transaction that may be removed.
        up_to: TxId,
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
