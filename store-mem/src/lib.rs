//! An in-memory [`TxLog`] for tests, examples and benchmarks.
//!
//! By default every append is durable at once. [`MemLog::with_manual_sync`] makes durability
//! explicit ([`MemLog::sync`]) and [`MemLog::crash`] simulates a crash that loses whatever was
//! not yet durable, which is how tests check that a node never acknowledges what it could
//! lose. It keeps the whole log in memory, so it is not for production data.
//!
//! It implements the optional operations of [`TxLog`] too: [`TxLog::compact`] forgets exactly
//! the committed transactions asked for (freeing memory a chunk of 4,096 at a time),
//! [`TxLog::reset_to`] starts the log again after a snapshot's base, and the base, like the
//! epoch and the membership, is durable at once: it survives [`MemLog::crash`].
//!
//! ```
//! use bytes::Bytes;
//! use replication_core::{LogPosition, Epoch, Tx, TxId, TxLog};
//! use store_mem::MemLog;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let log = MemLog::with_manual_sync();
//! let tx = Tx::new(LogPosition::START, Epoch(1), Bytes::from_static(b"a"));
//! let durable = log.append(vec![tx]).await.unwrap();
//! assert_eq!(log.state().await.unwrap().durable.tx_id, TxId(0)); // readable, not durable
//! log.sync();
//! assert_eq!(durable.await.unwrap(), TxId(1));
//! assert_eq!(log.crash().state().await.unwrap().last.tx_id, TxId(1));
//! # }
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use replication_core::{
    Durability, EpochClaim, LogBase, LogError, LogPosition, LogState, ReplicaId, Tx, TxId, TxLog,
};
use tokio::sync::watch;

/// Transactions per chunk of [`Chunks`].
const CHUNK_TXS: usize = 4096;

/// The log's transactions in fixed-size chunks, so that growing the log never copies what it
/// holds (one `Vec` doubling would move every transaction into freshly faulted pages) and
/// retention and compaction free whole chunks.
///
/// Indexes are transaction ids minus one. The chunks begin at `origin` (after a reset, any
/// index) and are `CHUNK_TXS` long each; compaction may forget the start of the first chunk
/// (`first` is then inside it) without freeing it yet.
#[derive(Debug, Clone, Default)]
struct Chunks {
    chunks: VecDeque<Vec<Tx>>,
    /// Index of the first transaction of the first chunk.
    origin: usize,
    /// Index of the first transaction still held (`origin` or later).
    first: usize,
    /// Index after the last transaction.
    len: usize,
}

impl Chunks {
    fn len(&self) -> usize {
        self.len
    }

    fn first(&self) -> usize {
        self.first
    }

    fn get(&self, index: usize) -> Option<&Tx> {
        if index < self.first || index >= self.len {
            return None;
        }
        let offset = index - self.origin;
        self.chunks.get(offset / CHUNK_TXS)?.get(offset % CHUNK_TXS)
    }

    fn push(&mut self, tx: Tx) {
        if (self.len - self.origin).is_multiple_of(CHUNK_TXS) {
            self.chunks.push_back(Vec::with_capacity(CHUNK_TXS));
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.push(tx);
            self.len += 1;
        }
    }

    /// Keeps the transactions before index `len` (never fewer than were forgotten already).
    fn truncate(&mut self, len: usize) {
        let len = len.max(self.first);
        if len >= self.len {
            return;
        }
        let kept_chunks = (len - self.origin).div_ceil(CHUNK_TXS);
        self.chunks.truncate(kept_chunks);
        if let Some(last) = self.chunks.back_mut() {
            last.truncate(len - self.origin - (kept_chunks - 1) * CHUNK_TXS);
        }
        self.len = len;
    }

    /// The index up to which whole chunks end at or before `index`: what retention frees.
    fn chunk_floor(&self, index: usize) -> usize {
        let index = index.clamp(self.origin, self.len);
        self.origin + (index - self.origin) / CHUNK_TXS * CHUNK_TXS
    }

    /// Forgets the transactions before `index` (at most every one held), freeing every chunk
    /// that ends at or before it.
    fn forget_before(&mut self, index: usize) {
        self.first = self.first.max(index.min(self.len));
        while self.origin + CHUNK_TXS <= self.first {
            self.chunks.pop_front();
            self.origin += CHUNK_TXS;
        }
    }

    /// Forgets everything: the next transaction has index `len`.
    fn restart_at(&mut self, len: usize) {
        *self = Chunks {
            chunks: VecDeque::new(),
            origin: len,
            first: len,
            len,
        };
    }

    fn iter_from(&self, start: usize) -> impl Iterator<Item = &Tx> {
        (start.max(self.first)..self.len).filter_map(|index| self.get(index))
    }
}

#[derive(Debug, Clone)]
struct Inner {
    txs: Chunks,
    /// The epoch and its primary, saved durably at once.
    epoch: EpochClaim,
    durable: TxId,
    committed: TxId,
    manual_sync: bool,
    /// Committed transactions kept before the commit point; `None` keeps everything.
    retention: Option<u64>,
    /// Saved durably at once, like the epoch.
    members: Vec<ReplicaId>,
    /// Where the log begins: the last transaction forgotten (by compaction or retention), or
    /// the base of the last reset. Saved durably at once, like the epoch. Always the
    /// transaction before `txs.first()`.
    base: LogBase,
}

impl Inner {
    fn position(&self, tx_id: TxId) -> LogPosition {
        if tx_id == self.base.position.tx_id {
            return self.base.position;
        }
        match tx_id
            .0
            .checked_sub(1)
            .and_then(|i| self.txs.get(usize::try_from(i).ok()?))
        {
            Some(tx) => tx.position(),
            None => LogPosition::START,
        }
    }

    fn last(&self) -> TxId {
        TxId(self.txs.len() as u64)
    }

    /// The first transaction held, or the next one to append when none is.
    fn first_retained(&self) -> TxId {
        self.base.first()
    }

    /// Forgets the transactions before index `index` (ids up to `index`), recording the last
    /// one forgotten as the base.
    fn forget_before(&mut self, index: usize) {
        let index = index.min(self.txs.len());
        if index <= self.txs.first() {
            return;
        }
        if let Some(tx) = self.txs.get(index - 1) {
            self.base = LogBase {
                position: tx.position(),
                epoch: tx.epoch,
            };
        }
        self.txs.forget_before(index);
    }
}

/// Durability progress shared with waiting [`Durability`] futures: the durable id, and whether
/// the log crashed (waiters then fail).
type DurableWatch = watch::Sender<(TxId, bool)>;

/// An in-memory transaction log. Cloning gives another handle to the same log.
#[derive(Debug, Clone)]
pub struct MemLog {
    inner: Arc<Mutex<Inner>>,
    durable: Arc<DurableWatch>,
}

impl Default for MemLog {
    fn default() -> MemLog {
        MemLog::new()
    }
}

impl MemLog {
    /// An empty log whose appends are durable at once.
    pub fn new() -> MemLog {
        MemLog::from_inner(Inner {
            txs: Chunks::default(),
            epoch: EpochClaim::default(),
            durable: TxId::ZERO,
            committed: TxId::ZERO,
            manual_sync: false,
            retention: None,
            members: Vec::new(),
            base: LogBase::START,
        })
    }

    /// An empty log whose appends become durable only when [`MemLog::sync`] is called.
    pub fn with_manual_sync() -> MemLog {
        let log = MemLog::new();
        log.lock().manual_sync = true;
        log
    }

    /// Keeps only the last `keep` committed transactions (and everything after them), freeing
    /// older ones in chunks of 4,096 as the commit point moves, so that a long benchmark or
    /// example holds bounded memory, as a file log with snapshots would. Reading a freed
    /// transaction fails with [`LogError::Removed`], and [`TxLog::base`] names the last one
    /// freed.
    pub fn with_retention(self, keep: u64) -> MemLog {
        self.lock().retention = Some(keep);
        self
    }

    /// The first transaction still held (1 until retention, compaction or a reset frees any):
    /// the one after [`TxLog::base`].
    pub fn first(&self) -> TxId {
        self.lock().first_retained()
    }

    fn from_inner(inner: Inner) -> MemLog {
        let durable = inner.durable;
        MemLog {
            inner: Arc::new(Mutex::new(inner)),
            durable: Arc::new(watch::channel((durable, false)).0),
        }
    }

    /// Removes every transaction after `last`, which the caller checked may go.
    fn cut_after(&self, inner: &mut Inner, last: TxId) {
        inner.txs.truncate(last.0 as usize);
        if inner.durable > last {
            inner.durable = last;
            self.durable.send_replace((last, false));
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated (every update is a
        // single assignment or push), so a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes every appended transaction durable (manual-sync logs).
    pub fn sync(&self) {
        let last = self.lock().last();
        self.sync_up_to(last);
    }

    /// Makes transactions up to `tx_id` durable (manual-sync logs).
    pub fn sync_up_to(&self, tx_id: TxId) {
        let mut inner = self.lock();
        let up_to = tx_id.min(inner.last());
        if up_to > inner.durable {
            inner.durable = up_to;
            self.durable.send_replace((up_to, false));
        }
    }

    /// Simulates a crash: this handle's pending durability futures fail, and the returned log
    /// is what a restart would find, holding only what was durable.
    pub fn crash(&self) -> MemLog {
        let mut survivor = self.lock().clone();
        survivor.txs.truncate(survivor.durable.0 as usize);
        survivor.committed = survivor.committed.min(survivor.durable);
        let durable = *self.durable.borrow();
        self.durable.send_replace((durable.0, true));
        MemLog::from_inner(survivor)
    }
}

#[async_trait]
impl TxLog for MemLog {
    async fn append(&self, txs: Vec<Tx>) -> Result<Durability, LogError> {
        let last = {
            let mut inner = self.lock();
            if *self.durable.borrow() == (inner.durable, true) {
                return Err(LogError::Closed);
            }
            let Some(first) = txs.first() else {
                let last = inner.last();
                return Ok(Box::pin(async move { Ok(last) }));
            };
            // After a reset (or a compaction of everything), the first append must chain from
            // the base: the one hash a log checks (see `TxLog::reset_to`).
            let after_base = inner.last() == inner.base.position.tx_id
                && inner.base != LogBase::START
                && first.verify_follows(&inner.base.position).is_err();
            if first.id != inner.last().next() || after_base {
                return Err(LogError::NotContiguous {
                    last: inner.last(),
                    found: first.id,
                });
            }
            for tx in txs {
                inner.txs.push(tx);
            }
            inner.last()
        };
        if !self.lock().manual_sync {
            self.sync_up_to(last);
        }
        let mut progress = self.durable.subscribe();
        Ok(Box::pin(async move {
            let reached = progress
                .wait_for(|(durable, crashed)| *crashed || *durable >= last)
                .await
                .map_err(|_| LogError::Closed)?;
            if reached.1 {
                Err(LogError::Closed)
            } else {
                Ok(last)
            }
        }))
    }

    async fn read(
        &self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Tx>, LogError> {
        let inner = self.lock();
        let start = from.0.max(1) as usize - 1;
        if start < inner.txs.first() && start < inner.txs.len() {
            return Err(LogError::Removed {
                requested: TxId(start as u64 + 1),
                first_retained: inner.first_retained(),
            });
        }
        let mut bytes = 0;
        let mut out = Vec::new();
        for tx in inner.txs.iter_from(start).take(max_count) {
            if !out.is_empty() && bytes + tx.payload.len() > max_bytes {
                break;
            }
            bytes += tx.payload.len();
            out.push(tx.clone());
        }
        Ok(out)
    }

    async fn state(&self) -> Result<LogState, LogError> {
        let inner = self.lock();
        Ok(LogState {
            epoch: inner.epoch.epoch,
            last: inner.position(inner.last()),
            durable: inner.position(inner.durable),
            committed: inner.position(inner.committed),
        })
    }

    async fn commit(&self, up_to: TxId) -> Result<(), LogError> {
        let mut inner = self.lock();
        if up_to > inner.durable {
            return Err(LogError::InvalidCommit {
                requested: up_to,
                durable: inner.durable,
                committed: inner.committed,
            });
        }
        inner.committed = inner.committed.max(up_to);
        if let Some(keep) = inner.retention {
            let keep_from = inner.committed.0.saturating_sub(keep);
            let floor = inner
                .txs
                .chunk_floor(usize::try_from(keep_from).unwrap_or(usize::MAX));
            inner.forget_before(floor);
        }
        Ok(())
    }

    async fn truncate_after(&self, last: TxId) -> Result<(), LogError> {
        let mut inner = self.lock();
        if last < inner.committed {
            return Err(LogError::TruncateCommitted {
                requested: last,
                committed: inner.committed,
            });
        }
        self.cut_after(&mut inner, last);
        Ok(())
    }

    async fn rewind_after(&self, last: TxId) -> Result<(), LogError> {
        let mut inner = self.lock();
        // What precedes the base was freed, so no earlier position can be named.
        if last < inner.base.position.tx_id {
            return Err(LogError::Removed {
                requested: last,
                first_retained: inner.first_retained(),
            });
        }
        inner.committed = inner.committed.min(last);
        self.cut_after(&mut inner, last);
        Ok(())
    }

    async fn save_epoch(&self, claim: &EpochClaim) -> Result<(), LogError> {
        let mut inner = self.lock();
        if claim.replaces(&inner.epoch) {
            inner.epoch = claim.clone();
        }
        Ok(())
    }

    async fn epoch_claim(&self) -> Result<EpochClaim, LogError> {
        Ok(self.lock().epoch.clone())
    }

    async fn members(&self) -> Result<Vec<ReplicaId>, LogError> {
        Ok(self.lock().members.clone())
    }

    async fn save_members(&self, members: Vec<ReplicaId>) -> Result<(), LogError> {
        self.lock().members = members;
        Ok(())
    }

    async fn base(&self) -> Result<LogBase, LogError> {
        Ok(self.lock().base)
    }

    async fn compact(&self, up_to: TxId) -> Result<LogBase, LogError> {
        let mut inner = self.lock();
        let limit = up_to.min(inner.committed);
        inner.forget_before(usize::try_from(limit.0).unwrap_or(usize::MAX));
        Ok(inner.base)
    }

    async fn reset_to(&self, base: LogBase) -> Result<(), LogError> {
        let mut inner = self.lock();
        if *self.durable.borrow() == (inner.durable, true) {
            return Err(LogError::Closed);
        }
        let Ok(index) = usize::try_from(base.position.tx_id.0) else {
            return Err(LogError::Unsupported("a base beyond this machine's memory"));
        };
        inner.txs.restart_at(index);
        inner.base = base;
        inner.durable = base.position.tx_id;
        inner.committed = base.position.tx_id;
        // As `save_epoch` of the base's epoch would: a higher epoch, whose primary is unknown.
        let claim = EpochClaim::new(base.epoch, None);
        if claim.replaces(&inner.epoch) {
            inner.epoch = claim;
        }
        self.durable.send_replace((base.position.tx_id, false));
        Ok(())
    }
}
