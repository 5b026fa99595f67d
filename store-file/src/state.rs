//! The state every handle and both background threads share, and how a failure is recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use replication_core::log::LogOperation;
use replication_core::{LogBase, LogError, LogPosition, ReplicaId, TxId};
use tokio::sync::watch;

use crate::claim::SavedClaim;
use crate::meta::{Meta, MetaFile};
use crate::options::FileLogOptions;
use crate::segment::Segment;

/// The log's contents and positions, guarded by [`Shared::state`].
pub(crate) struct State {
    /// Sealed segments in order, then the active one (always present).
    pub(crate) segments: Vec<Segment>,
    pub(crate) active_offsets: Vec<u64>,
    /// Where the active segment's records end: appends go here.
    pub(crate) active_len: u64,
    /// The active segment's size on disk: records, then zeros up to here.
    pub(crate) active_prepared: u64,
    pub(crate) last: LogPosition,
    pub(crate) durable: LogPosition,
    pub(crate) meta: Meta,
    pub(crate) meta_file: MetaFile,
    /// What the `members` file holds: read and checked on open, so that `members` needs no
    /// disk read and a damaged file stops the open rather than a later call.
    pub(crate) members: Vec<ReplicaId>,
    /// What the `epoch-claim` file holds: the primary of an epoch, `meta.epoch`'s or an
    /// older one's.
    pub(crate) claim: Option<SavedClaim>,
    /// Where the log begins, as the `base` file records it ([`LogBase::START`] without one,
    /// for a log whose first segment is 1). `None` for a log whose retention removed
    /// segments before the `base` file existed: the hash before its first segment is unknown
    /// until the next compaction records a base.
    pub(crate) base: Option<LogBase>,
    /// Bumped by every truncation: a sync that began before it covers nothing after it.
    pub(crate) generation: u64,
    /// Set when a write or sync failed: the log refuses further work (as PostgreSQL does
    /// after a failed fsync, since the kernel may have dropped the dirty pages).
    pub(crate) failed: Option<Failure>,
}

impl State {
    pub(crate) fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("an active segment always exists")
    }

    /// The first transaction the log can hold: after its base, and in its first segment.
    pub(crate) fn first_retained(&self) -> TxId {
        let after_base = self.base.map_or(TxId(1), |base| base.first());
        self.segments[0].first.max(after_base)
    }

    pub(crate) fn check(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(failure) => Err(failure.error()),
            None => Ok(()),
        }
    }
}

/// The first write or sync that failed, kept so that every later call reports that one: it is
/// the cause, what follows is only the refusal.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    during: LogOperation,
    cause: String,
}

impl Failure {
    pub(crate) fn error(&self) -> LogError {
        LogError::Failed {
            during: self.during,
            cause: self.cause.clone(),
        }
    }
}

/// What every handle and both background threads hold: the state, and the requests and
/// results passed between them.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: FileLogOptions,
    pub(crate) state: Mutex<State>,
    /// The durable id, and the failure once the log failed.
    pub(crate) durable: watch::Sender<(TxId, Option<Failure>)>,
    /// Set by appenders, cleared by the sync thread; `closing` stops it.
    pub(crate) wake: Mutex<SyncRequest>,
    pub(crate) wake_signal: Condvar,
    /// Asks the zero-fill thread for more prepared space; `closing` stops it.
    pub(crate) prepare: Mutex<SyncRequest>,
    pub(crate) prepare_signal: Condvar,
    /// Test support ([`FileLog::crash_after_steps`](crate::FileLog::crash_after_steps)): how
    /// many more steps of a compaction or reset may run before the log stops as if it
    /// crashed; `usize::MAX` when no test asked.
    pub(crate) crash_after: AtomicUsize,
    pub(crate) _lock: File,
}

/// A request to a background thread, with the handshake that keeps appends off `futex`.
#[derive(Default)]
pub(crate) struct SyncRequest {
    pub(crate) pending: bool,
    pub(crate) closing: bool,
    /// The thread is blocked on the condition variable: only then does a request need a
    /// notification (a `futex` call per append otherwise, in the hot path).
    pub(crate) waiting: bool,
}

/// Asks the thread behind `request` to finish its last round and return.
pub(crate) fn stop(request: &Mutex<SyncRequest>, signal: &Condvar) {
    let mut request = request.lock().unwrap_or_else(|p| p.into_inner());
    request.closing = true;
    request.pending = true;
    drop(request);
    signal.notify_all();
}

/// Makes a created or removed file in `dir` durable (its entry, not only its data).
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` either completes or marks the log failed before it can
        // panic, so a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn lock_wake(&self) -> MutexGuard<'_, SyncRequest> {
        self.wake
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Called before each durable step of a compaction or reset: stops there, failing the
    /// log as a crash would, when a test asked ([`FileLog::crash_after_steps`]).
    ///
    /// [`FileLog::crash_after_steps`]: crate::FileLog::crash_after_steps
    pub(crate) fn step(&self, state: &mut State) -> Result<(), LogError> {
        let left = self.crash_after.load(Ordering::SeqCst);
        if left == usize::MAX {
            return Ok(());
        }
        if left == 0 {
            return Err(self.fail(
                state,
                LogOperation::Compact,
                "stopped by FileLog::crash_after_steps, as a crash would stop it".into(),
            ));
        }
        self.crash_after.store(left - 1, Ordering::SeqCst);
        Ok(())
    }

    /// Marks the log failed (keeping the first failure if there was one already), wakes every
    /// waiting [`Durability`](replication_core::Durability) future with it, and returns it.
    pub(crate) fn fail(&self, state: &mut State, during: LogOperation, cause: String) -> LogError {
        tracing::error!(dir = %self.dir.display(), %during, %cause, "log failed");
        let failure = state
            .failed
            .get_or_insert(Failure { during, cause })
            .clone();
        let error = failure.error();
        let durable = state.durable.tx_id;
        self.durable.send_replace((durable, Some(failure)));
        error
    }
}
