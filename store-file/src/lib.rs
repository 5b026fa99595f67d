//! A durable, crash-safe, group-committed [`TxLog`] in a directory of segment files.
//!
//! # Layout
//! - `<first id>.seg`: records `len | crc32c | id | epoch | hash | payload` (see `record.rs`),
//!   appended in id order. A segment is sealed when it exceeds
//!   [`FileLogOptions::segment_bytes`].
//! - `<first id>.idx`: a sealed segment's offsets, one u64 per transaction, so any transaction
//!   is found with one index read and one segment read, without holding the log in memory.
//!   The active segment's offsets are kept in memory and rebuilt on open by scanning that one
//!   segment.
//! - `meta`: the epoch and the commit point, in two alternating checksummed slots.
//! - `members`: the membership last saved ([`TxLog::save_members`]), checksummed, replaced
//!   whole through `members.tmp` (written, synced, renamed over it, then the directory
//!   synced), so a crash leaves the old list or the new one. No file is an empty membership.
//! - `epoch-claim`: the primary that claims the epoch ([`TxLog::save_epoch`]), replaced the
//!   same way through `epoch-claim.tmp`, written before the meta file so that a crash between
//!   the two leaves the higher epoch with its primary. No file: no primary recorded.
//! - `base`: where the log begins ([`TxLog::base`]): the last transaction before the first
//!   segment, with its hash and epoch, checksummed and replaced the same way through
//!   `base.tmp`. Compaction ([`TxLog::compact`], [`FileLog::remove_before`]) saves it before
//!   removing any segment, and the open removes the segments at or below it that a crash left
//!   behind; the first segment must start right after it and chain from its hash.
//!   [`TxLog::reset_to`] saves it first marked `resetting` (from then on the log is the new
//!   one: an open that finds the mark discards every segment and finishes the reset), then
//!   removes the old segments, begins the empty one after the base and clears the mark. No
//!   file: the log holds its whole history from transaction 1 (or, for a log whose retention
//!   removed segments before this file existed, the hash before its first segment is unknown
//!   until its next compaction: [`TxLog::base`] then reports the id before the first segment
//!   with a zero hash and epoch, and such a log that holds no transaction fails to open, since
//!   nothing says what the next one must chain from).
//! - `LOCK`: held with an exclusive lock while the log is open: a second process gets a clear
//!   error, never two writers.
//!
//! # Durability
//! With [`SyncMode::Always`] (the default) an append's [`Durability`] future completes only
//! after `fdatasync` covered it. One sync thread serves all appenders: appends made while a
//! sync runs share the next one (group commit). New and removed segments are followed by a
//! sync of the directory. The other modes trade durability for speed, knowingly; see
//! [`SyncMode`].
//!
//! # Prepared space
//! With [`FileLogOptions::preallocate`] (the default) a background thread keeps the active
//! segment zero-filled and synced a little ahead of the appends, so that an append's
//! `fdatasync` does not also have to write the inode for a grown file. Zeros after the last
//! record are the clean end of the log; a sealed segment is cut to its last record.
//!
//! # Crash safety
//! On open, the active segment is scanned: a torn record at its end (a crash mid-write) is cut
//! off with a warning naming the file and offset. Any other damage — a flipped bit mid-log, a
//! missing segment, a broken index — is an error naming the file and offset: nothing
//! acknowledged is dropped silently. A compaction or a reset that a crash interrupted is
//! finished: the log opens as the old one or the new one, never a mix (see `recovery.rs`).
//!
//! ```
//! use bytes::Bytes;
//! use replication_core::{Epoch, LogPosition, Tx, TxId, TxLog};
//! use store_file::{FileLog, FileLogOptions};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let log = FileLog::open(dir.path(), FileLogOptions::default())?;
//! let tx = Tx::new(LogPosition::START, Epoch(1), Bytes::from_static(b"hello"));
//! let durable = log.append(vec![tx]).await?;
//! assert_eq!(durable.await?, TxId(1)); // on disk
//! drop(log);
//! let reopened = FileLog::open(dir.path(), FileLogOptions::default())?;
//! assert_eq!(reopened.state().await?.last.tx_id, TxId(1));
//! # Ok(()) }
//! ```
//!
//! [`TxLog`]: replication_core::TxLog
//! [`TxLog::save_members`]: replication_core::TxLog::save_members
//! [`TxLog::save_epoch`]: replication_core::TxLog::save_epoch
//! [`TxLog::base`]: replication_core::TxLog::base
//! [`TxLog::compact`]: replication_core::TxLog::compact
//! [`TxLog::reset_to`]: replication_core::TxLog::reset_to
//! [`Durability`]: replication_core::Durability

mod base;
mod claim;
mod members;
mod meta;
mod options;
mod prepare;
mod read;
mod record;
mod recovery;
mod segment;
mod small_file;
mod state;
mod sync;
mod txlog;
mod verify;

pub use options::{FileLogOptions, SyncMode};
pub use verify::{VerifyReport, verify};

/// The membership saved in the log directory `dir`, read without opening the log (it may be
/// open elsewhere, or stopped): empty if none was ever saved.
///
/// # Errors
/// A damaged or unreadable `members` file, named.
pub fn read_members(dir: &Path) -> Result<Vec<replication_core::ReplicaId>, LogError> {
    members::load(dir)
}

/// Each segment file's first transaction and size, oldest first, read from the directory of a
/// log without opening it (it may be open elsewhere): what retention by size measures. The
/// active segment counts the space prepared ahead of the appends too (a few MiB at most), so
/// its figure may be a little high; [`FileLog::segments`] is exact on an open log.
///
/// # Errors
/// The directory cannot be listed.
pub fn segment_sizes(dir: &Path) -> std::io::Result<Vec<(TxId, u64)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|name| name.strip_suffix(".seg"))
            .and_then(|stem| stem.parse::<u64>().ok())
        else {
            continue;
        };
        // A segment removed meanwhile (by compaction) is simply not counted.
        if let Ok(metadata) = entry.metadata() {
            segments.push((TxId(first), metadata.len()));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use replication_core::{LogBase, LogError, Tx, TxId};
use tokio::sync::watch;

use base::SavedBase;
use segment::{Segment, index_path};
use state::{Shared, SyncRequest, stop, sync_dir};

/// A durable transaction log in a directory. Cloning gives another handle to the same log;
/// the sync thread stops when the last handle is dropped.
#[derive(Clone)]
pub struct FileLog {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

impl std::fmt::Debug for FileLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// Stops the background threads when the last handle goes.
struct Closer {
    shared: Arc<Shared>,
    sync_thread: Option<std::thread::JoinHandle<()>>,
    prepare_thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Closer {
    fn drop(&mut self) {
        stop(&self.shared.prepare, &self.shared.prepare_signal);
        if let Some(thread) = self.prepare_thread.take() {
            let _ = thread.join();
        }
        // One last round: what was written is synced before the log closes.
        stop(&self.shared.wake, &self.shared.wake_signal);
        if let Some(thread) = self.sync_thread.take() {
            let _ = thread.join();
        }
    }
}

impl FileLog {
    /// Opens the log in `dir`, creating it if needed, and recovers from a crash: a torn record
    /// at the end of the active segment is cut off; any other damage is an error.
    ///
    /// # Errors
    /// [`LogError::Io`] if the directory is locked by another process or unreadable;
    /// [`LogError::Corrupt`] naming the file and offset of any damage.
    pub fn open(dir: impl AsRef<Path>, options: FileLogOptions) -> Result<FileLog, LogError> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir)?;
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(LogError::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by another process (its LOCK is held)",
                    dir.display()
                ),
            )));
        }
        let state = recovery::recover(&dir, &options)?;
        let durable = state.durable.tx_id;
        let shared = Arc::new(Shared {
            dir,
            options,
            state: Mutex::new(state),
            durable: watch::channel((durable, None)).0,
            wake: Mutex::new(SyncRequest::default()),
            wake_signal: Condvar::new(),
            prepare: Mutex::new(SyncRequest::default()),
            prepare_signal: Condvar::new(),
            crash_after: AtomicUsize::new(usize::MAX),
            _lock: lock,
        });
        let sync_thread = std::thread::Builder::new()
            .name("store-file-sync".into())
            .spawn({
                let shared = shared.clone();
                move || shared.sync_loop()
            })?;
        let mut closer = Closer {
            shared: shared.clone(),
            sync_thread: Some(sync_thread),
            prepare_thread: None,
        };
        if shared.options.preallocate {
            closer.prepare_thread = Some(
                std::thread::Builder::new()
                    .name("store-file-prepare".into())
                    .spawn({
                        let shared = shared.clone();
                        move || shared.prepare_loop()
                    })?,
            );
        }
        let log = FileLog {
            shared,
            _closer: Arc::new(closer),
        };
        log.shared.request_prepare();
        Ok(log)
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Each segment's first transaction and its size in bytes, oldest first: what retention by
    /// size measures. The active segment counts what it holds, not the space prepared ahead.
    pub fn segments(&self) -> Vec<(TxId, u64)> {
        let state = self.shared.lock();
        let count = state.segments.len();
        state
            .segments
            .iter()
            .enumerate()
            .map(|(i, segment)| {
                let size = if i + 1 == count {
                    state.active_len
                } else {
                    segment.file.metadata().map_or(0, |m| m.len())
                };
                (segment.first, size)
            })
            .collect()
    }

    /// The first transaction still stored (after [`FileLog::remove_before`],
    /// [`TxLog::compact`] or [`TxLog::reset_to`]: the one after [`TxLog::base`]).
    ///
    /// [`TxLog::base`]: replication_core::TxLog::base
    /// [`TxLog::compact`]: replication_core::TxLog::compact
    /// [`TxLog::reset_to`]: replication_core::TxLog::reset_to
    pub fn first(&self) -> TxId {
        self.shared.lock().first_retained()
    }

    /// Removes whole sealed segments whose transactions all precede `tx_id` and are committed
    /// (for snapshots; [`TxLog::compact`] is this). Returns the new first stored transaction;
    /// reading a removed one then fails with [`LogError::Removed`].
    ///
    /// The new base (the last transaction of the last segment removed) is saved in the `base`
    /// file before any segment goes: a crash part way leaves the old log, or the new base with
    /// some segments at or below it, which the next open removes.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] if the last transaction to remove cannot be read; I/O errors
    /// saving the base or removing files (the log goes on, and the next open finishes what
    /// was begun).
    ///
    /// [`TxLog::compact`]: replication_core::TxLog::compact
    pub fn remove_before(&self, tx_id: TxId) -> Result<TxId, LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        let dir = &self.shared.dir;
        let limit = tx_id.min(state.meta.committed.next());
        // Never the active segment: sealed segments only.
        let sealed = state.segments.len() - 1;
        let removable = state.segments[..sealed]
            .iter()
            .take_while(|segment| segment.last() < limit)
            .count();
        if removable == 0 {
            return Ok(state.first_retained());
        }
        let last = last_of_sealed(&state.segments[removable - 1])?;
        let base = LogBase {
            position: last.position(),
            epoch: last.epoch,
        };
        self.shared.step(&mut state)?;
        let (replaced, saved) = base::save(
            dir,
            &SavedBase {
                base,
                resetting: false,
            },
        );
        // Once renamed, the file holds the new base even if the directory sync failed: what
        // is at or below it is gone for the log, on disk or not yet.
        if replaced {
            state.base = Some(base);
        }
        saved?;
        for _ in 0..removable {
            self.shared.step(&mut state)?;
            fs::remove_file(&state.segments[0].path)?;
            let segment = state.segments.remove(0);
            self.shared.step(&mut state)?;
            let _ = fs::remove_file(index_path(dir, segment.first));
        }
        sync_dir(dir)?;
        Ok(state.first_retained())
    }

    /// Test support, not for production: the next compaction ([`FileLog::remove_before`],
    /// [`TxLog::compact`]) or [`TxLog::reset_to`] runs only its first `steps` durable steps
    /// (saving the base, rewriting the meta file, removing one file, beginning a segment)
    /// and then stops as if the process crashed there: the call fails with
    /// [`LogError::Failed`], the log refuses to go on, and the directory holds what such a
    /// crash leaves (every step is synced before the next begins). Reopen it to recover.
    ///
    /// [`TxLog::compact`]: replication_core::TxLog::compact
    /// [`TxLog::reset_to`]: replication_core::TxLog::reset_to
    #[doc(hidden)]
    pub fn crash_after_steps(&self, steps: usize) {
        self.shared.crash_after.store(steps, Ordering::SeqCst);
    }
}

/// Reads the last transaction of a sealed segment (through its index).
fn last_of_sealed(segment: &Segment) -> Result<Tx, LogError> {
    let last = segment.last();
    let offsets = segment.sealed_offsets(last, 1)?;
    let len = segment.file.metadata()?.len();
    segment::read_planned(&segment.path, &segment.file, last, &offsets, len)?
        .pop()
        .ok_or_else(|| {
            segment::corrupt(&segment.path, 0, format_args!("transaction {last} missing"))
        })
}
