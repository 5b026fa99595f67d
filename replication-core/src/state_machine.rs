//! The `StateMachine` trait: where the application's state lives.

use crate::snapshot::{SnapshotError, SnapshotExport, SnapshotFormat, SnapshotStage};
use crate::types::{Tx, TxId};

/// Applies committed transactions, in log order, to the application's state.
///
/// The framework calls [`apply`](StateMachine::apply) exactly once per committed transaction,
/// in id order, starting after [`applied`](StateMachine::applied), and answers a writer only
/// after its transaction was applied. `apply` must be deterministic: every replica applies the
/// same transactions and must reach the same state. It cannot fail: a payload the application
/// cannot interpret was still committed, so the state machine records that it ignored it.
///
/// To serve reads, keep the state behind a shared handle (for example an
/// `Arc<RwLock<BTreeMap<..>>>`) that the application also holds.
pub trait StateMachine: Send + 'static {
    /// Applies one committed transaction.
    fn apply(&mut self, tx: &Tx);

    /// The last transaction applied (`TxId::ZERO` for a state machine rebuilt from nothing).
    /// After a restart the framework replays committed transactions after it.
    fn applied(&self) -> TxId;

    /// Whether [`rewind`](StateMachine::rewind) is implemented. A replica may be allowed to
    /// rewind ([`EngineConfig::allow_rewind`](crate::engine::EngineConfig::allow_rewind)) only on a
    /// state machine that can; the driver refuses to start otherwise.
    fn can_rewind(&self) -> bool {
        false
    }

    /// Forgets every applied transaction after `last`: the replica is dropping committed
    /// transactions that the new primary's history lacks, as an operator allowed. Returns the
    /// last transaction still applied, at most `last`; the framework then replays the log
    /// from there up to `last`. A state machine that keeps no history returns to nothing
    /// (`TxId::ZERO`) and is rebuilt by the replay; one with checkpoints may restore the
    /// latest at or before `last`.
    ///
    /// Called before the log drops anything, so that a crash in between finds the state
    /// machine at or behind the log. The default, never called unless
    /// [`can_rewind`](StateMachine::can_rewind) says so, forgets nothing; the driver then
    /// fails rather than leave applied what the log no longer holds.
    fn rewind(&mut self, last: TxId) -> TxId {
        let _ = last;
        self.applied()
    }

    /// The format of this state machine's snapshots, or `None` (the default) when it takes
    /// none: its log is then never cut, and its replicas start from the whole history.
    fn snapshot_format(&self) -> Option<SnapshotFormat> {
        None
    }

    /// Starts an export of the state as of the last transaction applied, which it returns
    /// with the export. The export is a read view: transactions applied meanwhile are not in
    /// it, and do not wait for it (the driver reads it on a blocking thread). The default
    /// supports none.
    ///
    /// # Errors
    /// [`SnapshotError::Unsupported`] by default.
    fn export(&self) -> Result<(TxId, Box<dyn SnapshotExport>), SnapshotError> {
        Err(SnapshotError::Unsupported)
    }

    /// Starts staging a snapshot of `format` whose last transaction is `last`, beside the live
    /// state; the stage's [`commit`](SnapshotStage::commit) switches to it atomically. A
    /// format or version this state machine cannot read is refused here, before any data is
    /// sent. The default supports none.
    ///
    /// # Errors
    /// [`SnapshotError::FormatMismatch`], or [`SnapshotError::Unsupported`] by default.
    fn stage(
        &mut self,
        format: &SnapshotFormat,
        last: TxId,
    ) -> Result<Box<dyn SnapshotStage>, SnapshotError> {
        let _ = (format, last);
        Err(SnapshotError::Unsupported)
    }
}
