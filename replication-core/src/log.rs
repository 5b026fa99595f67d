//! The `TxLog` trait: the ordered, hash-chained transaction log a node keeps.

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::types::{EpochClaim, LogBase, LogState, ReplicaId, Tx, TxId};

/// Resolves once the transactions of one [`TxLog::append`] call are durable, with the id of the
/// last of them. Dropping it does not cancel durability.
pub type Durability = BoxFuture<'static, Result<TxId, LogError>>;

/// Errors a log reports.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An append did not start right after the current last transaction.
    #[error("append of transaction {found} does not follow the last transaction {last}")]
    NotContiguous {
        /// The log's last transaction.
        last: TxId,
        /// The first id of the batch.
        found: TxId,
    },
    /// A truncation or commit would discard or pass a transaction it must not.
    #[error("cannot truncate to {requested}: transactions up to {committed} are committed")]
    TruncateCommitted {
        /// The requested new last transaction.
        requested: TxId,
        /// The committed position.
        committed: TxId,
    },
    /// A commit point was set beyond what is durable, or moved backwards.
    #[error("invalid commit point {requested} (durable up to {durable}, committed {committed})")]
    InvalidCommit {
        /// The requested commit point.
        requested: TxId,
        /// The durable position.
        durable: TxId,
        /// The current commit point.
        committed: TxId,
    },
    /// The data on the medium is damaged: the message names where and how.
    #[error("log corrupt: {0}")]
    Corrupt(String),
    /// The log was closed or its node crashed.
    #[error("log closed")]
    Closed,
    /// An earlier write or sync failed, so the log refuses to go on: after a failed sync what
    /// the medium holds may not be what was reported written (PostgreSQL's lesson from
    /// "fsyncgate"). Reopening recovers a consistent log.
    #[error("the log failed during {during} and refuses to go on: {cause}")]
    Failed {
        /// The operation that failed first.
        during: LogOperation,
        /// What the medium reported then.
        cause: String,
    },
    /// The transaction was removed by retention or compaction and can no longer be read.
    #[error("transaction {requested} was removed; the log now starts at {first_retained}")]
    Removed {
        /// The transaction asked for.
        requested: TxId,
        /// The first transaction the log still holds.
        first_retained: TxId,
    },
    /// The log does not implement an optional operation (compaction, or starting again
    /// after a snapshot).
    #[error("this log does not support {0}")]
    Unsupported(&'static str),
    /// An I/O error from the medium.
    #[error("log I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl LogError {
    /// Whether the medium is out of space (`ENOSPC`), directly or as the cause of a failure.
    pub fn is_disk_full(&self) -> bool {
        match self {
            LogError::Io(error) => is_disk_full(error),
            LogError::Failed { cause, .. } => cause.contains(DISK_FULL_TEXT),
            _ => false,
        }
    }
}

/// How the standard library renders `ENOSPC`; a [`LogError::Failed`] keeps only the text.
const DISK_FULL_TEXT: &str = "No space left on device";

fn is_disk_full(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::StorageFull || error.raw_os_error() == Some(28)
}

/// A log operation, to say which one failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogOperation {
    /// Opening or recovering the log.
    Open,
    /// [`TxLog::append`].
    Append,
    /// Waiting on a [`Durability`] future (the sync).
    Sync,
    /// [`TxLog::read`].
    Read,
    /// [`TxLog::state`].
    State,
    /// [`TxLog::commit`].
    Commit,
    /// [`TxLog::truncate_after`] or [`TxLog::rewind_after`].
    Truncate,
    /// [`TxLog::save_epoch`].
    SaveEpoch,
    /// [`TxLog::compact`] or [`TxLog::reset_to`].
    Compact,
    /// [`TxLog::members`] or [`TxLog::save_members`].
    SaveMembers,
}

impl std::fmt::Display for LogOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogOperation::Open => "open",
            LogOperation::Append => "append",
            LogOperation::Sync => "sync",
            LogOperation::Read => "read",
            LogOperation::State => "state",
            LogOperation::Commit => "commit",
            LogOperation::Truncate => "truncate",
            LogOperation::SaveEpoch => "save epoch",
            LogOperation::SaveMembers => "save members",
            LogOperation::Compact => "compact",
        })
    }
}

/// What kind of failure stopped a log, as far as an operator needs to tell them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LogFailureKind {
    /// The medium is full.
    DiskFull,
    /// The medium returned an I/O error.
    Io,
    /// Stored data failed its checks.
    Corrupt,
    /// The log refuses to go on after an earlier failure.
    Failed,
    /// A transaction needed was removed by retention.
    Removed,
    /// The log was closed.
    Closed,
    /// The log refused a call that breaks its contract (a bug in the caller).
    Contract,
}

/// A log error as the engine keeps and reports it: clonable, comparable and serializable (it
/// reaches clients inside write errors), with the operation that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{operation} failed: {message}")]
pub struct LogFailure {
    /// The operation that failed.
    pub operation: LogOperation,
    /// The kind of failure.
    pub kind: LogFailureKind,
    /// The log's own description of it.
    pub message: String,
}

impl LogFailure {
    /// Describes `error`, returned by `operation` (or, for [`LogError::Failed`], by the
    /// operation that failed first).
    pub fn new(operation: LogOperation, error: &LogError) -> LogFailure {
        // A log that refuses to go on names the operation that failed first: that is the
        // failure, the later call only met it.
        let operation = match error {
            LogError::Failed { during, .. } => *during,
            _ => operation,
        };
        let kind = if error.is_disk_full() {
            LogFailureKind::DiskFull
        } else {
            match error {
                LogError::NotContiguous { .. }
                | LogError::Unsupported(_)
                | LogError::TruncateCommitted { .. }
                | LogError::InvalidCommit { .. } => LogFailureKind::Contract,
                LogError::Corrupt(_) => LogFailureKind::Corrupt,
                LogError::Closed => LogFailureKind::Closed,
                LogError::Failed { .. } => LogFailureKind::Failed,
                LogError::Removed { .. } => LogFailureKind::Removed,
                LogError::Io(_) => LogFailureKind::Io,
            }
        };
        LogFailure {
            operation,
            kind,
            message: error.to_string(),
        }
    }
}

/// The ordered, hash-chained transaction log a node keeps.
///
/// # What an implementation must guarantee
///
/// To ensure correctness of replication, an implementation must:
///
/// 1. **Readable on return.** When [`append`](TxLog::append) returns `Ok`, the transactions are
///    visible to [`read`](TxLog::read) and [`state`](TxLog::state)`.last`, in order, even if not
///    yet durable. The engine streams them to replicas at that moment.
/// 2. **Durable on completion.** The [`Durability`] future returned by `append` resolves `Ok`
///    only when those transactions, and every transaction before them, would survive a crash of
///    the process or the machine (for a file, after `fdatasync`). This is the rule users' stores
///    break most often: the engine commits, and answers writers, on the strength of it.
///    Completions may resolve in any order, but `state().durable` only moves forwards, over a
///    contiguous prefix.
/// 3. **Contiguous.** `append` refuses a batch whose first id is not `last + 1`
///    ([`LogError::NotContiguous`]). The engine verifies the hash chain before appending; the
///    log need not recompute hashes but must store them as given (except for the first append
///    after [`reset_to`](TxLog::reset_to), which must chain from the base's hash).
/// 4. **Commit point.** [`commit`](TxLog::commit) records a commit point that is monotonic and
///    never beyond `durable`. It may be persisted lazily: after a crash it may read lower than
///    was recorded, never higher.
/// 5. **Truncation.** [`truncate_after`](TxLog::truncate_after) removes every transaction after
///    the given id, durably, before it returns, and refuses to remove a committed transaction.
///    [`rewind_after`](TxLog::rewind_after), where implemented, removes committed ones too,
///    lowering the commit point durably first.
/// 6. **Epoch.** [`save_epoch`](TxLog::save_epoch) is durable on return, `state().epoch`
///    never decreases, and [`epoch_claim`](TxLog::epoch_claim) returns the claim of that
///    epoch: once a primary is recorded for an epoch, no other replaces it.
/// 7. **Membership.** [`save_members`](TxLog::save_members) is durable on return, and
///    [`members`](TxLog::members) returns the last membership saved, across crashes.
/// 8. **Crash.** After a crash and reopen, the log holds a prefix of what was appended that
///    includes every transaction whose durability was reported, and nothing corrupt.
///
/// [`testing::txlog_conformance`](crate::testing::txlog_conformance) checks these rules,
/// including durability across a crash.
///
/// # Cancel safety
///
/// Dropping an `append` future before it returns may leave the batch appended or not; the
/// engine does not do so. Dropping a [`Durability`] future is always safe.
///
/// # Blocking
///
/// The driver awaits these methods in its tasks, on the runtime's worker threads, and a node's
/// writes wait behind them: an implementation may block such a thread briefly (a write into
/// the page cache, a read of recent data) but should not wait for the medium there. Waiting
/// for the medium is what the [`Durability`] future is for: `append` returns once the batch
/// is readable, and a thread of the log's own (or `spawn_blocking`) syncs, which also lets
/// concurrent appends share one sync.
///
/// What the stores of this workspace do:
/// - store-mem never blocks.
/// - store-file writes an append's records (`pwrite`) and reads (`pread`) on the calling
///   thread, under its state lock; its sync thread runs every `fdatasync` of appended data and
///   completes the `Durability` futures. Sealing a full segment (syncing it, its index and the
///   directory) runs on a `spawn_blocking` thread inside `append`. `truncate_after`,
///   `save_epoch`, `save_members`, `compact` and `reset_to`, durable on return by contract,
///   sync on the calling thread: they are rare (a failover, a new epoch, a replica joining, a snapshot) and hold the log's
///   lock while they sync, so another thread would free the runtime's thread but not the log. `commit` writes the commit point
///   without syncing it.
#[async_trait]
pub trait TxLog: Send + Sync + 'static {
    /// Appends a batch of transactions that follows the last one. Returns once they are
    /// readable, with a future that completes when they are durable.
    ///
    /// # Errors
    /// [`LogError::NotContiguous`] if the batch does not follow; I/O errors.
    async fn append(&self, txs: Vec<Tx>) -> Result<Durability, LogError>;

    /// Reads up to `max_count` transactions starting at `from`, stopping early once the
    /// returned transactions' payloads exceed `max_bytes` (at least one transaction is
    /// returned if `from` exists). Reading past the last transaction returns an empty vector.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] if stored data fails its checks; I/O errors.
    async fn read(
        &self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Tx>, LogError>;

    /// The log's positions and epoch.
    async fn state(&self) -> Result<LogState, LogError>;

    /// Records that every transaction up to `up_to` is committed. A call that does not move
    /// the commit point forwards is a no-op.
    ///
    /// # Errors
    /// [`LogError::InvalidCommit`] if `up_to` is beyond `durable`.
    async fn commit(&self, up_to: TxId) -> Result<(), LogError>;

    /// Durably removes every transaction after `last`.
    ///
    /// # Errors
    /// [`LogError::TruncateCommitted`] if that would remove a committed transaction.
    async fn truncate_after(&self, last: TxId) -> Result<(), LogError>;

    /// Durably removes every transaction after `last`, committed ones included, lowering the
    /// commit point to `last` first. The engine calls it only when an operator allowed a
    /// replica to rewind (it rejoins a history that lacks transactions it had committed, after
    /// a forced promotion or under an asynchronous policy), and only after the state machine
    /// forgot them. Below the commit point, the lowered commit point must be durable before any
    /// transaction is removed, so that a crash in between never leaves a commit point beyond
    /// the last transaction. At or above it, this is [`truncate_after`](TxLog::truncate_after).
    ///
    /// The default refuses, for a log that cannot lower its commit point: a replica on it then
    /// stops with the divergence instead.
    ///
    /// # Errors
    /// [`LogError::TruncateCommitted`] from the default; [`LogError::Removed`] if `last` is
    /// before what retention kept; I/O errors.
    async fn rewind_after(&self, last: TxId) -> Result<(), LogError> {
        let committed = self.state().await?.committed.tx_id;
        if last < committed {
            return Err(LogError::TruncateCommitted {
                requested: last,
                committed,
            });
        }
        self.truncate_after(last).await
    }

    /// Durably records the epoch this node has begun or seen, with the primary that claims it
    /// when known. A claim of a lower epoch than the one saved is ignored; a claim of the same
    /// epoch replaces the saved one only if that named no primary.
    async fn save_epoch(&self, claim: &EpochClaim) -> Result<(), LogError>;

    /// The claim last saved with [`save_epoch`](TxLog::save_epoch): the epoch of
    /// [`state`](TxLog::state) and who claimed it (`Epoch(0)` and no primary for a new log).
    async fn epoch_claim(&self) -> Result<EpochClaim, LogError>;

    /// The membership last saved with [`save_members`](TxLog::save_members) (empty for a new
    /// log).
    async fn members(&self) -> Result<Vec<ReplicaId>, LogError>;

    /// Durably replaces the membership: the replicas that count toward this database's quorum
    /// policy when this node is its primary. Durable on return, like the epoch: after a crash
    /// the log returns the last membership saved.
    async fn save_members(&self, members: Vec<ReplicaId>) -> Result<(), LogError>;

    /// Where the log begins: [`LogBase::START`] unless [`compact`](TxLog::compact) removed
    /// transactions or [`reset_to`](TxLog::reset_to) started it again after a snapshot.
    /// Transactions up to the base read as [`LogError::Removed`]. Durable: after a crash the
    /// base is the last one returned by `compact` or `reset_to`, or a later one.
    ///
    /// The default, for a log that never removes anything, is the start.
    async fn base(&self) -> Result<LogBase, LogError> {
        Ok(LogBase::START)
    }

    /// Removes committed transactions up to `up_to` at most, durably, and returns the new
    /// base. A log may remove fewer (whole segments, whole chunks), never more, and never a
    /// transaction beyond the commit point. The engine calls it only below a snapshot of the
    /// state machine, so that a replica that needs what was removed can be sent the snapshot.
    ///
    /// The default removes nothing: the log then grows without limit, as before compaction.
    ///
    /// # Errors
    /// I/O errors.
    async fn compact(&self, up_to: TxId) -> Result<LogBase, LogError> {
        let _ = up_to;
        self.base().await
    }

    /// Durably discards every transaction and starts the log again after `base`: the last
    /// transaction of a snapshot this node installed. Afterwards `state()` reports `base` as
    /// last, durable and committed, the epoch is at least `base.epoch`, the next append must
    /// be `base.first()` and chain from its hash; the epoch claim and the membership are kept.
    /// A crash part way leaves either the old log or the new one.
    ///
    /// A log that implements it refuses, with [`LogError::NotContiguous`], a first append after
    /// the base that does not chain from the base's hash: that one hash it checks, since a base
    /// that does not match the history that follows would otherwise surface only as a broken
    /// chain on the next open, or never.
    ///
    /// # Errors
    /// [`LogError::Unsupported`] by default: a replica on such a log can only replay the
    /// whole history from its source.
    async fn reset_to(&self, base: LogBase) -> Result<(), LogError> {
        let _ = base;
        Err(LogError::Unsupported(
            "starting again after a snapshot (TxLog::reset_to)",
        ))
    }
}
