//! The [`TxLog`] implementation: appends (and sealing a full segment), commits, truncation,
//! the epoch, the membership, compaction and starting again after a snapshot.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_trait::async_trait;
use replication_core::log::LogOperation;
use replication_core::{
    Durability, EpochClaim, LogBase, LogError, LogPosition, LogState, ReplicaId, Tx, TxHash, TxId,
    TxLog,
};

use crate::FileLog;
use crate::base::{self, SavedBase};
use crate::claim::{self, SavedClaim};
use crate::members;
use crate::meta::Meta;
use crate::options::SyncMode;
use crate::prepare::PREPARE_AHEAD;
use crate::record;
use crate::segment::{self, Segment, index_path, segment_path};
use crate::state::{Shared, State, sync_dir};

impl Shared {
    /// Whether the next append seals the active segment first.
    fn seal_due(&self) -> bool {
        let state = self.lock();
        state.active_len >= self.options.segment_bytes && state.active().count > 0
    }

    /// Writes `txs` after the last transaction (sealing the active segment first if it is
    /// full), under the state lock; returns whether the zero-fill thread should prepare more.
    fn write_batch(&self, txs: &[Tx]) -> Result<bool, LogError> {
        let mut state = self.lock();
        state.check()?;
        // After a reset (or a compaction of everything), the first append must chain from the
        // base: the one hash a log checks (see `TxLog::reset_to`), since the open would find
        // the break only later, as corruption.
        let breaks_base = state.base.is_some_and(|base| {
            base != LogBase::START
                && state.last.tx_id == base.position.tx_id
                && txs[0].verify_follows(&base.position).is_err()
        });
        if txs[0].id != state.last.tx_id.next() || breaks_base {
            return Err(LogError::NotContiguous {
                last: state.last.tx_id,
                found: txs[0].id,
            });
        }
        if state.active_len >= self.options.segment_bytes
            && state.active().count > 0
            && let Err(error) = self.seal_active(&mut state)
        {
            let reason = format!("sealing a segment failed: {error}");
            return Err(self.fail(&mut state, LogOperation::Append, reason));
        }
        let mut buffer = Vec::with_capacity(txs.iter().map(record::record_len).sum());
        let base = state.active_len;
        for tx in txs {
            state.active_offsets.push(base + buffer.len() as u64);
            record::encode(tx, &mut buffer);
        }
        if let Err(error) = state.active().file.write_all_at(&buffer, base) {
            let reason = format!("write to {} failed: {error}", state.active().path.display());
            return Err(self.fail(&mut state, LogOperation::Append, reason));
        }
        state.active_len += buffer.len() as u64;
        state.active_prepared = state.active_prepared.max(state.active_len);
        state.segments.last_mut().expect("active").count += txs.len() as u64;
        state.last = txs[txs.len() - 1].position();
        let low_water = (state.active_len + PREPARE_AHEAD / 2).min(self.options.segment_bytes);
        Ok(state.active_prepared < low_water)
    }

    /// Cuts the active segment to its last record, syncs it, writes its index and begins the
    /// next segment; everything sealed is then durable.
    fn seal_active(&self, state: &mut State) -> Result<(), LogError> {
        let dir = &self.dir;
        let active = state.active();
        // A sealed segment ends exactly after its last record: its prepared zeros go (also
        // any that a failed zero-fill write left uncounted), and `sync_all` makes the new
        // size durable with the data.
        if active.file.metadata()?.len() != state.active_len {
            active.file.set_len(state.active_len)?;
        }
        active.file.sync_all()?;
        let index = segment::write_index(dir, active.first, &state.active_offsets)?;
        let next_first = state.last.tx_id.next();
        let path = segment_path(dir, next_first);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        sync_dir(dir)?;
        let active = state.segments.last_mut().expect("active");
        active.index = Some(index);
        state.segments.push(Segment {
            first: next_first,
            count: 0,
            path,
            file: Arc::new(file),
            index: None,
        });
        state.active_offsets.clear();
        state.active_len = 0;
        state.active_prepared = 0;
        // Everything in the sealed segment was just synced.
        if state.durable.tx_id < state.last.tx_id {
            state.durable = state.last;
            self.durable.send_replace((state.last.tx_id, None));
        }
        Ok(())
    }
}

#[async_trait]
impl TxLog for FileLog {
    async fn append(&self, txs: Vec<Tx>) -> Result<Durability, LogError> {
        let Some(last_id) = txs.last().map(|tx| tx.id) else {
            let last = self.shared.lock().last.tx_id;
            return Ok(Box::pin(async move { Ok(last) }));
        };
        let running_out = if self.shared.seal_due() {
            // Sealing syncs the whole segment, writes and syncs its index and syncs the
            // directory: too long to block a runtime thread with, so it runs on a blocking
            // thread. `write_batch` checks again under the lock, so a concurrent append that
            // sealed first is no harm.
            let shared = self.shared.clone();
            match tokio::task::spawn_blocking(move || shared.write_batch(&txs)).await {
                Ok(written) => written?,
                Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                Err(_) => return Err(LogError::Closed),
            }
        } else {
            self.shared.write_batch(&txs)?
        };
        if running_out {
            self.shared.request_prepare();
        }
        match self.shared.options.sync {
            SyncMode::Always => self.shared.request_sync(),
            SyncMode::Interval(_) | SyncMode::Never => {
                let mut state = self.shared.lock();
                state.durable = state.last;
                self.shared.durable.send_replace((state.last.tx_id, None));
            }
        }
        let mut durable = self.shared.durable.subscribe();
        Ok(Box::pin(async move {
            let reached = durable
                .wait_for(|(durable, failed)| failed.is_some() || *durable >= last_id)
                .await
                .map_err(|_| LogError::Closed)?;
            match &reached.1 {
                Some(failure) => Err(failure.error()),
                None => Ok(last_id),
            }
        }))
    }

    async fn read(
        &self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Tx>, LogError> {
        self.read_blocking(from, max_count, max_bytes)
    }

    async fn state(&self) -> Result<LogState, LogError> {
        let (committed, last) = {
            let state = self.shared.lock();
            state.check()?;
            (state.meta.committed, state.last)
        };
        let committed = if committed == last.tx_id {
            last
        } else {
            self.position_of(committed)?
        };
        let state = self.shared.lock();
        Ok(LogState {
            epoch: state.meta.epoch,
            last: state.last,
            durable: state.durable,
            committed,
        })
    }

    async fn commit(&self, up_to: TxId) -> Result<(), LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        if up_to > state.durable.tx_id {
            return Err(LogError::InvalidCommit {
                requested: up_to,
                durable: state.durable.tx_id,
                committed: state.meta.committed,
            });
        }
        if up_to <= state.meta.committed {
            return Ok(());
        }
        let meta = Meta {
            committed: up_to,
            ..state.meta
        };
        // Not synced: after a crash the commit point may read lower, never higher.
        state.meta_file.write(meta, false)?;
        state.meta = meta;
        Ok(())
    }

    async fn truncate_after(&self, last: TxId) -> Result<(), LogError> {
        self.cut_after(last, false)
    }

    async fn rewind_after(&self, last: TxId) -> Result<(), LogError> {
        self.cut_after(last, true)
    }

    async fn save_epoch(&self, claim: &EpochClaim) -> Result<(), LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        if !claim.replaces(&SavedClaim::claim_of(
            state.claim.as_ref(),
            state.meta.epoch,
        )) {
            return Ok(());
        }
        // The claim first, the epoch second: a crash between them leaves the claim of a
        // higher epoch than the meta file's, which the open takes, never an epoch whose
        // primary was recorded elsewhere and lost.
        if let Some(saved) = SavedClaim::of(claim) {
            let (replaced, result) = claim::save(&self.shared.dir, &saved);
            // As for the membership: once renamed, the file holds the claim.
            if replaced {
                state.claim = Some(saved);
            }
            result?;
        }
        if claim.epoch > state.meta.epoch {
            let meta = Meta {
                epoch: claim.epoch,
                ..state.meta
            };
            state.meta_file.write(meta, true)?;
            state.meta = meta;
        }
        Ok(())
    }

    async fn epoch_claim(&self) -> Result<EpochClaim, LogError> {
        let state = self.shared.lock();
        state.check()?;
        Ok(SavedClaim::claim_of(state.claim.as_ref(), state.meta.epoch))
    }

    async fn members(&self) -> Result<Vec<ReplicaId>, LogError> {
        let state = self.shared.lock();
        state.check()?;
        Ok(state.members.clone())
    }

    async fn save_members(&self, members: Vec<ReplicaId>) -> Result<(), LogError> {
        // Under the state lock while it syncs, as `save_epoch`: saves are rare (a membership
        // change), and the lock also keeps two saves from sharing the temporary file.
        let mut state = self.shared.lock();
        state.check()?;
        let (replaced, saved) = members::save(&self.shared.dir, &members);
        // Once renamed, the file holds the new list even if the directory sync failed: the
        // cache follows the file, and the caller, told of the failure, cannot count on either
        // list surviving a crash until a save succeeds. Nothing else is at stake (the old file
        // is replaced whole, never patched), so the log need not refuse to go on.
        if replaced {
            state.members = members;
        }
        saved
    }

    async fn base(&self) -> Result<LogBase, LogError> {
        let state = self.shared.lock();
        state.check()?;
        Ok(state
            .base
            .unwrap_or_else(|| unknown_base(state.segments[0].first)))
    }

    async fn compact(&self, up_to: TxId) -> Result<LogBase, LogError> {
        self.remove_before(up_to.next())?;
        self.base().await
    }

    async fn reset_to(&self, base: LogBase) -> Result<(), LogError> {
        self.reset(base)
    }
}

/// The base of a log whose retention removed the segments before `first` before the log kept a
/// `base` file: the id is known, the hash and the epoch are not (zeros) until the next
/// compaction records a base.
fn unknown_base(first: TxId) -> LogBase {
    LogBase {
        position: LogPosition {
            tx_id: first.prev(),
            hash: TxHash::GENESIS,
        },
        epoch: replication_core::Epoch(0),
    }
}

impl FileLog {
    /// Discards every transaction and begins the log again after `base`. The `base` file,
    /// saved marked `resetting`, is the point of no return: before it the old log is intact;
    /// from it on, an open discards every segment and finishes the reset, so a failure after
    /// it fails the log rather than let it go on as the old one.
    fn reset(&self, base: LogBase) -> Result<(), LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        let dir = self.shared.dir.clone();
        self.shared.step(&mut state)?;
        let (replaced, saved) = base::save(
            &dir,
            &SavedBase {
                base,
                resetting: true,
            },
        );
        if !replaced {
            // The old base file stands: nothing changed.
            return saved;
        }
        let file = match saved.and_then(|()| self.reset_files(&mut state, base)) {
            Ok(file) => file,
            Err(error) => {
                return Err(self.shared.fail(
                    &mut state,
                    LogOperation::Compact,
                    format!(
                        "a reset to a snapshot's base failed part way (the next open finishes \
                         it): {error}"
                    ),
                ));
            }
        };
        state.segments = vec![Segment {
            first: base.first(),
            count: 0,
            path: segment_path(&dir, base.first()),
            file: Arc::new(file),
            index: None,
        }];
        state.active_offsets.clear();
        state.active_len = 0;
        state.active_prepared = 0;
        state.base = Some(base);
        state.last = base.position;
        state.durable = base.position;
        // A sync that began before the reset covers nothing after it.
        state.generation += 1;
        self.shared
            .durable
            .send_replace((base.position.tx_id, None));
        drop(state);
        self.shared.request_prepare();
        Ok(())
    }

    /// The steps of a reset after its point of no return: the meta file, the old segments
    /// out, the new one in, the `resetting` mark cleared. Returns the new segment's file.
    fn reset_files(&self, state: &mut State, base: LogBase) -> Result<std::fs::File, LogError> {
        let dir = &self.shared.dir;
        self.shared.step(state)?;
        let meta = Meta {
            epoch: state.meta.epoch.max(base.epoch),
            committed: base.position.tx_id,
        };
        state.meta_file.write(meta, true)?;
        state.meta = meta;
        let old: Vec<TxId> = state.segments.iter().map(|segment| segment.first).collect();
        for first in old {
            self.shared.step(state)?;
            fs::remove_file(segment_path(dir, first))?;
            self.shared.step(state)?;
            match fs::remove_file(index_path(dir, first)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        self.shared.step(state)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(segment_path(dir, base.first()))?;
        sync_dir(dir)?;
        self.shared.step(state)?;
        let (_, saved) = base::save(
            dir,
            &SavedBase {
                base,
                resetting: false,
            },
        );
        saved?;
        Ok(file)
    }

    /// Removes every transaction after `last`; below the commit point only when `rewind`,
    /// after lowering the commit point durably.
    fn cut_after(&self, last: TxId, rewind: bool) -> Result<(), LogError> {
        let position = self.position_of(last)?;
        let mut state = self.shared.lock();
        state.check()?;
        if last < state.meta.committed {
            if !rewind {
                return Err(LogError::TruncateCommitted {
                    requested: last,
                    committed: state.meta.committed,
                });
            }
            let meta = Meta {
                committed: last,
                ..state.meta
            };
            // Synced before anything is cut: a crash then never finds a commit point beyond
            // the last transaction.
            if let Err(error) = state.meta_file.write(meta, true) {
                return Err(self.shared.fail(
                    &mut state,
                    LogOperation::Truncate,
                    format!("lowering the commit point failed: {error}"),
                ));
            }
            state.meta = meta;
        }
        if last >= state.last.tx_id {
            return Ok(());
        }
        let dir = self.shared.dir.clone();
        let result = (|| -> Result<(), LogError> {
            // Drop whole segments after `last`, keeping at least the first one.
            while state.segments.len() > 1 && state.active().first > last {
                let segment = state.segments.pop().expect("len > 1");
                fs::remove_file(&segment.path)?;
            }
            let active_index = state.segments.len() - 1;
            let keep = last.0 + 1 - state.segments[active_index].first.0.min(last.0 + 1);
            if state.segments[active_index].index.is_some() {
                // A sealed segment becomes active again: its offsets move into memory.
                let segment = &state.segments[active_index];
                let (first, count) = (segment.first, segment.count);
                let len = segment.file.metadata()?.len();
                state.active_offsets = segment::load_index(&dir, first, count, len)?;
                state.active_len = len;
                fs::remove_file(index_path(&dir, first))?;
                state.segments[active_index].index = None;
            }
            let cut = state
                .active_offsets
                .get(keep as usize)
                .copied()
                .unwrap_or(state.active_len);
            state.active_offsets.truncate(keep as usize);
            let segment = &mut state.segments[active_index];
            segment.count = keep;
            segment.file.set_len(cut)?;
            segment.file.sync_all()?;
            sync_dir(&dir)?;
            state.active_len = cut;
            state.active_prepared = cut;
            Ok(())
        })();
        if let Err(error) = result {
            return Err(self.shared.fail(
                &mut state,
                LogOperation::Truncate,
                format!("truncation failed: {error}"),
            ));
        }
        state.generation += 1;
        state.last = position;
        if state.durable.tx_id > last {
            state.durable = position;
            self.shared.durable.send_replace((last, None));
        }
        drop(state);
        self.shared.request_prepare();
        Ok(())
    }
}
