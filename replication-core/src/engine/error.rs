//! Why a write was not acknowledged and why replication stopped.

use serde::{Deserialize, Serialize};

use crate::log::LogFailure;
use crate::protocol::Refusal;
use crate::types::{ChainError, Epoch, ReplicaId, TxHash, TxId};

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
    /// Another primary claims this primary's epoch (two promotions raced to it): this primary
    /// is fenced and accepts no writes. The outcome of writes already appended is unknown.
    #[error(
        "this primary is fenced: {other} claims its epoch {epoch} too; promote again, above \
         epoch {epoch}"
    )]
    EpochTaken {
        /// Our epoch.
        epoch: Epoch,
        /// The other primary claiming it.
        other: ReplicaId,
    },
    /// This primary writes under a coordinator's lease and holds none: it was not granted
    /// yet, or it ended (another node may be primary by now). Nothing was appended.
    #[error(
        "this primary holds no leader lease (not granted yet, or expired); the node holding \
         the leader key takes writes"
    )]
    NoLease,
    /// The write was appended as transaction `tx_id`, but this primary's leader lease ended
    /// before it committed. Its outcome is unknown: the next primary may hold it.
    #[error(
        "transaction {tx_id} was not committed before this primary's leader lease ended; its \
         outcome is unknown"
    )]
    LeaseEnded {
        /// The transaction it became.
        tx_id: TxId,
    },
    /// The log failed. The outcome of writes already appended is unknown.
    #[error("the log failed: {0}")]
    LogFailed(LogFailure),
    /// The node is shutting down. The outcome of writes already appended is unknown.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Pushed transactions were refused (they do not extend this log's hash chain, or this
    /// node does not take pushed transactions). Nothing was stored.
    #[error("transactions refused: {0}")]
    Rejected(PushRefusal),
}

/// Why transactions pushed by an external replicator were refused. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum PushRefusal {
    /// This database is not an external replica: it has a source or is a primary.
    #[error("this database does not take pushed transactions")]
    NotExternalReplica,
    /// The transactions do not extend this log's hash chain.
    #[error("{0}")]
    Chain(#[from] ChainError),
    /// A transaction's epoch is lower than the one before it.
    #[error("transaction {tx_id} has epoch {epoch}, lower than {min}")]
    BadEpoch {
        /// The transaction.
        tx_id: TxId,
        /// Its epoch.
        epoch: Epoch,
        /// The previous transaction's epoch.
        min: Epoch,
    },
    /// The log failed earlier.
    #[error("the log failed: {0}")]
    LogFailed(LogFailure),
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
    /// Transactions this replica committed are missing from its source's history (the source
    /// was promoted without them, or committed alone under an asynchronous policy), and
    /// dropping them is not allowed.
    #[error(
        "committed history diverged from the source at transaction {tx_id}: local hash \
         {local_hash}, source hash {}; transactions {tx_id} to {committed} were committed here \
         and the source's history lacks them; set allow_rewind to drop them (they are kept in \
         the rollback first)",
        source_hash.map(|h| h.to_hex()).unwrap_or_else(|| "none (source ends before)".into())
    )]
    CommittedDivergence {
        /// The first transaction that differs.
        tx_id: TxId,
        /// The replica's hash there.
        local_hash: TxHash,
        /// The source's hash there, if it has that transaction.
        source_hash: Option<TxHash>,
        /// The replica's commit point: the last committed transaction a rewind would drop.
        committed: TxId,
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
    LogFailed(LogFailure),
    /// The source can serve this replica only from a snapshot, and this replica cannot
    /// install it (its state machine takes no snapshots, or reads another format).
    #[error("cannot start from the source's snapshot: {0}")]
    Snapshot(crate::snapshot::SnapshotError),
}
