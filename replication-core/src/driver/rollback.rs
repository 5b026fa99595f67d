//! Rollback files: what a replica drops from its log when it rejoins a newer history is first
//! kept somewhere an operator can read it, as MongoDB keeps rollback files. The driver hands
//! the dropped transactions to a [`RollbackSink`] before it truncates; the sink decides where
//! and how they are kept (`repnode` writes JSON lines under the database's directory).

use std::io;

use crate::log::{LogError, TxLog};
use crate::types::{Tx, TxId};

/// Where dropped transactions are kept. Called on a blocking thread.
pub trait RollbackSink: Send + Sync + 'static {
    /// Opens a new rollback for the transactions `from ..= to`, which follow in order.
    ///
    /// # Errors
    /// Any IO error: the truncation is then not made, and the log is reported failed.
    fn create(&self, from: TxId, to: TxId) -> io::Result<Box<dyn RollbackFile>>;
}

/// One rollback being written.
pub trait RollbackFile: Send {
    /// Appends the next transactions.
    ///
    /// # Errors
    /// Any IO error.
    fn write(&mut self, txs: &[Tx]) -> io::Result<()>;

    /// Makes the rollback durable; returns where it is (a path, for an operator).
    ///
    /// # Errors
    /// Any IO error.
    fn finish(self: Box<Self>) -> io::Result<String>;
}

/// Transactions read from the log per chunk: the rollback never holds the dropped suffix
/// whole.
const CHUNK_TXS: usize = 1024;
const CHUNK_BYTES: usize = 8 << 20;

/// Copies `from ..= to` of `log` to a new rollback of `sink`, chunk by chunk; returns its
/// location.
pub(super) async fn keep<L: TxLog>(
    log: &L,
    sink: &std::sync::Arc<dyn RollbackSink>,
    from: TxId,
    to: TxId,
) -> Result<String, LogError> {
    let opened = {
        let sink = sink.clone();
        blocking(move || sink.create(from, to)).await?
    };
    let mut file = opened;
    let mut next = from;
    while next <= to {
        let count = ((to.0 - next.0 + 1) as usize).min(CHUNK_TXS);
        let txs = log.read(next, count, CHUNK_BYTES).await?;
        let Some(last) = txs.last().map(|tx| tx.id) else {
            return Err(LogError::Io(io::Error::other(format!(
                "the log holds no transaction {next}, to keep before dropping it"
            ))));
        };
        file = blocking(move || file.write(&txs).map(|()| file)).await?;
        next = last.next();
    }
    blocking(move || file.finish()).await
}

async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> io::Result<R> + Send + 'static,
) -> Result<R, LogError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(LogError::Io),
        Err(join) => Err(LogError::Io(io::Error::other(format!(
            "the rollback writer panicked: {join}"
        )))),
    }
}
