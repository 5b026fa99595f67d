//! The `StateMachine` trait: where the application's state lives.

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
}
