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
//! acknowledged is dropped silently.
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

mod meta;
mod record;
mod segment;
mod verify;

pub use verify::{VerifyReport, verify};

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use replication_core::{Durability, Epoch, LogError, LogPosition, LogState, Tx, TxId, TxLog};
use tokio::sync::watch;

use meta::{Meta, MetaFile};
use segment::{Segment, index_path, segment_path};

/// When appended data is forced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// `fdatasync` before durability is reported, shared by concurrent appends (group commit).
    /// Loses nothing reported durable, even on power loss.
    Always,
    /// Durability is reported once the data is written to the OS; a background sync runs
    /// every interval. A process crash loses nothing; a power loss or kernel crash can lose
    /// up to one interval of appends reported durable.
    Interval(Duration),
    /// Durability is reported once the data is written to the OS, which flushes when it
    /// likes. A process crash loses nothing; a power loss can lose anything not yet flushed
    /// (tens of seconds on Linux defaults).
    Never,
}

/// Settings of a [`FileLog`].
#[derive(Clone, Debug)]
pub struct FileLogOptions {
    /// A segment is sealed and a new one begun once it exceeds this size.
    pub segment_bytes: u64,
    /// When data is forced to disk.
    pub sync: SyncMode,
    /// Rebuild every sealed segment's index from the segment itself instead of trusting the
    /// index files (after an index was reported broken).
    pub rebuild_indexes: bool,
    /// Extend the active segment with zeros, in the background, ahead of the appends (up to
    /// `segment_bytes`). An append then overwrites space the file already has, so its
    /// `fdatasync` need not also write the inode for a new file size: about a third less
    /// sync latency on ext4, which is why PostgreSQL zero-fills its WAL segments too. The
    /// cost is writing each byte twice, once as zeros off the commit path. Zeros after the
    /// last record are a clean end of the log, not a torn write.
    pub preallocate: bool,
}

impl Default for FileLogOptions {
    fn default() -> FileLogOptions {
        FileLogOptions {
            segment_bytes: 64 << 20,
            sync: SyncMode::Always,
            rebuild_indexes: false,
            preallocate: true,
        }
    }
}

struct State {
    /// Sealed segments in order, then the active one (always present).
    segments: Vec<Segment>,
    active_offsets: Vec<u64>,
    /// Where the active segment's records end: appends go here.
    active_len: u64,
    /// The active segment's size on disk: records, then zeros up to here.
    active_prepared: u64,
    last: LogPosition,
    durable: LogPosition,
    meta: Meta,
    meta_file: MetaFile,
    /// Bumped by every truncation: a sync that began before it covers nothing after it.
    generation: u64,
    /// Set when a write or sync failed: the log refuses further work (as PostgreSQL does
    /// after a failed fsync, since the kernel may have dropped the dirty pages).
    failed: Option<String>,
}

impl State {
    fn active(&self) -> &Segment {
        self.segments
            .last()
            .expect("an active segment always exists")
    }

    fn check(&self) -> Result<(), LogError> {
        match &self.failed {
            Some(reason) => Err(LogError::Corrupt(format!(
                "log failed earlier and refuses work: {reason}"
            ))),
            None => Ok(()),
        }
    }
}

struct Shared {
    dir: PathBuf,
    options: FileLogOptions,
    state: Mutex<State>,
    /// The durable id, and a failure message once syncing failed.
    durable: watch::Sender<(TxId, Option<String>)>,
    /// Set by appenders, cleared by the sync thread; `closing` stops it.
    wake: Mutex<SyncRequest>,
    wake_signal: Condvar,
    /// Asks the zero-fill thread for more prepared space; `closing` stops it.
    prepare: Mutex<SyncRequest>,
    prepare_signal: Condvar,
    _lock: File,
}

/// How far ahead of the appends the zero-fill thread prepares the active segment.
const PREPARE_AHEAD: u64 = 2 << 20;
/// Zeros written (and synced) per step; the state lock is held while they are written.
const PREPARE_CHUNK: u64 = 512 << 10;

#[derive(Default)]
struct SyncRequest {
    pending: bool,
    closing: bool,
    /// The thread is blocked on the condition variable: only then does a request need a
    /// notification (a `futex` call per append otherwise, in the hot path).
    waiting: bool,
}

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

fn stop(request: &Mutex<SyncRequest>, signal: &Condvar) {
    let mut request = request.lock().unwrap_or_else(|p| p.into_inner());
    request.closing = true;
    request.pending = true;
    drop(request);
    signal.notify_all();
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation of `State` either completes or marks the log failed before it can
        // panic, so a poisoned lock still guards consistent data.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_wake(&self) -> MutexGuard<'_, SyncRequest> {
        self.wake
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn fail(&self, state: &mut State, reason: String) -> LogError {
        tracing::error!(dir = %self.dir.display(), %reason, "log failed");
        state.failed = Some(reason.clone());
        let durable = state.durable.tx_id;
        self.durable.send_replace((durable, Some(reason.clone())));
        LogError::Corrupt(reason)
    }

    /// The zero-fill thread: keeps the active segment prepared [`PREPARE_AHEAD`] bytes beyond
    /// its last record (up to `segment_bytes`), one synced chunk at a time.
    fn prepare_loop(self: Arc<Shared>) {
        let zeros = vec![0u8; PREPARE_CHUNK as usize];
        loop {
            {
                let mut request = self.prepare.lock().unwrap_or_else(|p| p.into_inner());
                while !request.pending {
                    request = self
                        .prepare_signal
                        .wait(request)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if request.closing {
                    return;
                }
                request.pending = false;
            }
            while let Some(file) = self.prepare_chunk(&zeros) {
                // Synced here, off the commit path, so that appends' syncs find the zeros
                // (and the new file size) already on disk. A failed sync fails the log: the
                // kernel may have dropped dirty record pages with it, and would not report
                // that to the sync thread again.
                if let Err(error) = file.sync_data() {
                    let mut state = self.lock();
                    self.fail(&mut state, format!("fdatasync failed: {error}"));
                    return;
                }
                if self
                    .prepare
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .closing
                {
                    return;
                }
            }
        }
    }

    /// Writes the next chunk of zeros after the active segment's prepared end, under the
    /// state lock so that no append can write there meanwhile; returns the file to sync, or
    /// `None` when the segment is prepared far enough.
    fn prepare_chunk(&self, zeros: &[u8]) -> Option<Arc<File>> {
        let mut state = self.lock();
        if state.failed.is_some() {
            return None;
        }
        let target = (state.active_len + PREPARE_AHEAD).min(self.options.segment_bytes);
        let start = state.active_prepared.max(state.active_len);
        if start >= target {
            return None;
        }
        let len = (target - start).min(zeros.len() as u64) as usize;
        let file = state.active().file.clone();
        if let Err(error) = file.write_all_at(&zeros[..len], start) {
            // Only an optimisation failed (the disk may be full): appends go on extending
            // the file themselves, and report their own errors.
            tracing::warn!(dir = %self.dir.display(), %error, "could not prepare log space");
            return None;
        }
        state.active_prepared = start + len as u64;
        Some(file)
    }

    /// The sync thread: each round syncs everything written so far, then publishes it.
    fn sync_loop(self: Arc<Shared>) {
        let mut closing;
        let mut previous_batch = 0u64;
        let mut previous_sync = Duration::ZERO;
        loop {
            {
                let mut request = self.lock_wake();
                let interval = match self.options.sync {
                    SyncMode::Interval(every) => Some(every),
                    _ => None,
                };
                while !request.pending && !request.closing {
                    request.waiting = true;
                    match interval {
                        Some(every) => {
                            let (guard, timeout) = self
                                .wake_signal
                                .wait_timeout(request, every)
                                .unwrap_or_else(|poisoned| poisoned.into_inner());
                            request = guard;
                            if timeout.timed_out() {
                                break;
                            }
                        }
                        None => {
                            request = self
                                .wake_signal
                                .wait(request)
                                .unwrap_or_else(|p| p.into_inner());
                        }
                    }
                }
                request.waiting = false;
                if request.closing && !request.pending {
                    return;
                }
                request.pending = false;
                closing = request.closing;
            }
            // Concurrent appenders: let the writers woken by the previous sync append before
            // this one starts, so that one sync covers them all (bounded by a fraction of
            // the previous sync's duration, so a lone writer never waits).
            if previous_batch > 1 && !closing {
                let deadline = std::time::Instant::now() + previous_sync / 4;
                let mut seen = self.lock().last.tx_id;
                while std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_micros(20));
                    let now = self.lock().last.tx_id;
                    if now == seen {
                        break;
                    }
                    seen = now;
                }
            }
            let (file, target, generation) = {
                let state = self.lock();
                // On close, sync even in the modes that report durability early.
                if state.failed.is_some() || (state.durable == state.last && !closing) {
                    continue;
                }
                (state.active().file.clone(), state.last, state.generation)
            };
            let started = std::time::Instant::now();
            let synced = file.sync_data();
            previous_sync = started.elapsed().min(Duration::from_millis(2));
            let mut state = self.lock();
            previous_batch = target.tx_id.0.saturating_sub(state.durable.tx_id.0);
            match synced {
                Err(error) => {
                    self.fail(&mut state, format!("fdatasync failed: {error}"));
                }
                Ok(()) if state.generation == generation && target.tx_id > state.durable.tx_id => {
                    state.durable = target;
                    self.durable.send_replace((target.tx_id, None));
                }
                Ok(()) => {}
            }
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
        let state = recover(&dir, &options)?;
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
        log.request_prepare();
        Ok(log)
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The first transaction still stored (after [`FileLog::remove_before`]).
    pub fn first(&self) -> TxId {
        self.shared.lock().segments[0].first
    }

    /// Removes whole sealed segments whose transactions all precede `tx_id` and are committed
    /// (for snapshots). Returns the new first stored transaction.
    ///
    /// # Errors
    /// I/O errors removing files.
    pub fn remove_before(&self, tx_id: TxId) -> Result<TxId, LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        let limit = tx_id.min(state.meta.committed.next());
        let mut removed = false;
        while state.segments.len() > 1 && state.segments[0].last() < limit {
            let segment = state.segments.remove(0);
            fs::remove_file(&segment.path)?;
            let _ = fs::remove_file(index_path(&self.shared.dir, segment.first));
            removed = true;
        }
        if removed {
            sync_dir(&self.shared.dir)?;
        }
        Ok(state.segments[0].first)
    }

    fn seal_active(&self, state: &mut State) -> Result<(), LogError> {
        let dir = &self.shared.dir;
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
            self.shared.durable.send_replace((state.last.tx_id, None));
        }
        Ok(())
    }

    /// Reads from the page cache or disk; called from async code because reads of recent
    /// data are page-cache hits.
    fn read_blocking(
        &self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Tx>, LogError> {
        let mut out: Vec<Tx> = Vec::new();
        let mut from = from.max(TxId(1));
        let mut bytes = 0usize;
        while out.len() < max_count && (out.is_empty() || bytes < max_bytes) {
            let Some(part) = self.read_one_segment(
                from,
                max_count - out.len(),
                max_bytes - bytes.min(max_bytes),
                out.is_empty(),
            )?
            else {
                break;
            };
            let Some(last) = part.last() else { break };
            from = last.id.next();
            bytes += part.iter().map(|tx| tx.payload.len()).sum::<usize>();
            let full = part.len();
            out.extend(part);
            if full == 0 {
                break;
            }
        }
        Ok(out)
    }

    /// Reads from the segment holding `from` only; `None` past the end of the log.
    fn read_one_segment(
        &self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
        at_least_one: bool,
    ) -> Result<Option<Vec<Tx>>, LogError> {
        let (path, file, offsets, end) = {
            let state = self.shared.lock();
            state.check()?;
            if from > state.last.tx_id || max_count == 0 {
                return Ok(None);
            }
            if from < state.segments[0].first {
                return Err(LogError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!(
                        "transactions before {} were removed by retention",
                        state.segments[0].first
                    ),
                )));
            }
            let index = state.segments.partition_point(|s| s.first <= from) - 1;
            let segment = &state.segments[index];
            let is_active = index + 1 == state.segments.len();
            let start = (from.0 - segment.first.0) as usize;
            let count = max_count.min((segment.count as usize).saturating_sub(start));
            // The offsets of the wanted records and of the one after them (or the end).
            let (mut offsets, end) = if is_active {
                let end = state
                    .active_offsets
                    .get(start + count)
                    .copied()
                    .unwrap_or(state.active_len);
                (state.active_offsets[start..start + count].to_vec(), end)
            } else {
                let len = segment.file.metadata()?.len();
                let mut offsets = segment.sealed_offsets(from, count + 1)?;
                let end = if offsets.len() > count {
                    offsets.pop().unwrap_or(len)
                } else {
                    len
                };
                (offsets, end)
            };
            // Stop once the payloads would exceed `max_bytes` (one record at least).
            let mut bytes = 0u64;
            let mut keep = offsets.len();
            for (i, window) in offsets
                .iter()
                .copied()
                .chain([end])
                .collect::<Vec<_>>()
                .windows(2)
                .enumerate()
            {
                bytes += (window[1] - window[0]).saturating_sub(record::OVERHEAD as u64);
                if i > 0 && bytes > max_bytes as u64 {
                    keep = i;
                    break;
                }
            }
            let end = if keep < offsets.len() {
                offsets[keep]
            } else {
                end
            };
            offsets.truncate(keep);
            (segment.path.clone(), segment.file.clone(), offsets, end)
        };
        // Reads happen outside the lock: appends only add bytes beyond `end`.
        let txs = segment::read_planned(&path, &file, from, &offsets, end)?;
        if !at_least_one && txs.first().is_some_and(|tx| tx.payload.len() > max_bytes) {
            return Ok(Some(Vec::new()));
        }
        Ok(Some(txs))
    }

    fn position_of(&self, tx_id: TxId) -> Result<LogPosition, LogError> {
        if tx_id == TxId::ZERO {
            return Ok(LogPosition::START);
        }
        let tx = self.read_blocking(tx_id, 1, usize::MAX)?;
        tx.first()
            .map(Tx::position)
            .ok_or_else(|| LogError::Corrupt(format!("transaction {tx_id} missing")))
    }

    fn request_sync(&self) {
        let mut request = self.shared.lock_wake();
        request.pending = true;
        let waiting = request.waiting;
        drop(request);
        if waiting {
            self.shared.wake_signal.notify_one();
        }
    }

    /// Wakes the zero-fill thread (if preallocation is on).
    fn request_prepare(&self) {
        if self.shared.options.preallocate {
            let mut request = self
                .shared
                .prepare
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            request.pending = true;
            drop(request);
            self.shared.prepare_signal.notify_one();
        }
    }
}

/// Opens every segment, checks the sealed ones cheaply (index shape, last record) and scans the
/// active one fully.
fn recover(dir: &Path, options: &FileLogOptions) -> Result<State, LogError> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".seg") {
            let first = stem.parse::<u64>().map_err(|_| {
                LogError::Corrupt(format!(
                    "{}: not a segment name",
                    dir.join(&*name).display()
                ))
            })?;
            firsts.push(TxId(first));
        }
    }
    firsts.sort();
    let meta_path = dir.join("meta");
    let (meta_file, meta) = MetaFile::open(&meta_path, firsts.is_empty() || meta_path.exists())
        .map_err(|e| match e {
            LogError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => LogError::Corrupt(
                format!("{}: missing, but segments exist", meta_path.display()),
            ),
            other => other,
        })?;
    if firsts.is_empty() {
        let path = segment_path(dir, TxId(1));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        sync_dir(dir)?;
        firsts.push(TxId(1));
        drop(file);
    }
    let mut segments = Vec::new();
    let mut prev = LogPosition::START;
    let mut prev_known = firsts[0] == TxId(1);
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let is_active = i + 1 == firsts.len();
        if is_active {
            // When retention removed the segment before, the chain starts at this one.
            let scan = segment::scan(&path, &file, first, prev_known.then_some(prev))?;
            let mut prepared = len;
            if scan.torn {
                tracing::warn!(file = %path.display(), offset = scan.valid_len, "cutting off a torn record at the end of the log");
                file.set_len(scan.valid_len)?;
                prepared = scan.valid_len;
            }
            file.sync_all()?;
            let count = scan.offsets.len() as u64;
            let _ = fs::remove_file(index_path(dir, first));
            segments.push(Segment {
                first,
                count,
                path,
                file: Arc::new(file),
                index: None,
            });
            let last = scan.last.unwrap_or(prev);
            let meta = Meta {
                committed: meta.committed.min(last.tx_id),
                ..meta
            };
            return Ok(State {
                segments,
                active_offsets: scan.offsets,
                active_len: scan.valid_len,
                active_prepared: prepared,
                last,
                durable: last,
                meta,
                meta_file,
                generation: 0,
                failed: None,
            });
        }
        let next_first = firsts[i + 1];
        if next_first <= first {
            return Err(segment::corrupt(&path, 0, "segments overlap"));
        }
        let count = next_first.0 - first.0;
        let offsets = if options.rebuild_indexes {
            let scan = segment::scan(&path, &file, first, prev_known.then_some(prev))?;
            if scan.offsets.len() as u64 != count || scan.valid_len != len {
                return Err(segment::corrupt(
                    &path,
                    scan.valid_len,
                    format_args!(
                        "holds {} transactions, {count} expected (a segment is missing or damaged)",
                        scan.offsets.len()
                    ),
                ));
            }
            segment::write_index(dir, first, &scan.offsets)?;
            scan.offsets
        } else {
            segment::load_index(dir, first, count, len)?
        };
        // The last record must be whole, end the file exactly, and link to the next segment.
        let last_offset = *offsets.last().expect("count > 0");
        let tail = segment::read_records(
            &path,
            &file,
            last_offset,
            len,
            TxId(next_first.0 - 1),
            1,
            usize::MAX,
        )?;
        let Some(last_tx) = tail.first() else {
            return Err(segment::corrupt(&path, last_offset, "last record missing"));
        };
        if last_offset + record::record_len(last_tx) as u64 != len {
            return Err(segment::corrupt(
                &path,
                last_offset,
                "segment does not end after its last record",
            ));
        }
        prev = last_tx.position();
        prev_known = true;
        let index = Arc::new(File::open(index_path(dir, first))?);
        segments.push(Segment {
            first,
            count,
            path,
            file: Arc::new(file),
            index: Some(index),
        });
    }
    unreachable_active()
}

fn unreachable_active() -> Result<State, LogError> {
    Err(LogError::Corrupt("no active segment".into()))
}

#[async_trait]
impl TxLog for FileLog {
    async fn append(&self, txs: Vec<Tx>) -> Result<Durability, LogError> {
        let Some(last_id) = txs.last().map(|tx| tx.id) else {
            let last = self.shared.lock().last.tx_id;
            return Ok(Box::pin(async move { Ok(last) }));
        };
        let running_out = {
            let mut state = self.shared.lock();
            state.check()?;
            if txs[0].id != state.last.tx_id.next() {
                return Err(LogError::NotContiguous {
                    last: state.last.tx_id,
                    found: txs[0].id,
                });
            }
            if state.active_len >= self.shared.options.segment_bytes
                && state.active().count > 0
                && let Err(error) = self.seal_active(&mut state)
            {
                let reason = format!("sealing a segment failed: {error}");
                return Err(self.shared.fail(&mut state, reason));
            }
            let mut buffer = Vec::with_capacity(txs.iter().map(record::record_len).sum());
            let base = state.active_len;
            for tx in &txs {
                state.active_offsets.push(base + buffer.len() as u64);
                record::encode(tx, &mut buffer);
            }
            if let Err(error) = state.active().file.write_all_at(&buffer, base) {
                let reason = format!("write to {} failed: {error}", state.active().path.display());
                return Err(self.shared.fail(&mut state, reason));
            }
            state.active_len += buffer.len() as u64;
            state.active_prepared = state.active_prepared.max(state.active_len);
            state.segments.last_mut().expect("active").count += txs.len() as u64;
            state.last = txs[txs.len() - 1].position();
            let low_water =
                (state.active_len + PREPARE_AHEAD / 2).min(self.shared.options.segment_bytes);
            state.active_prepared < low_water
        };
        if running_out {
            self.request_prepare();
        }
        match self.shared.options.sync {
            SyncMode::Always => self.request_sync(),
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
                Some(reason) => Err(LogError::Corrupt(reason.clone())),
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
        let position = self.position_of(last)?;
        let mut state = self.shared.lock();
        state.check()?;
        if last < state.meta.committed {
            return Err(LogError::TruncateCommitted {
                requested: last,
                committed: state.meta.committed,
            });
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
            return Err(self
                .shared
                .fail(&mut state, format!("truncation failed: {error}")));
        }
        state.generation += 1;
        state.last = position;
        if state.durable.tx_id > last {
            state.durable = position;
            self.shared.durable.send_replace((last, None));
        }
        drop(state);
        self.request_prepare();
        Ok(())
    }

    async fn save_epoch(&self, epoch: Epoch) -> Result<(), LogError> {
        let mut state = self.shared.lock();
        state.check()?;
        if epoch <= state.meta.epoch {
            return Ok(());
        }
        let meta = Meta {
            epoch,
            ..state.meta
        };
        state.meta_file.write(meta, true)?;
        state.meta = meta;
        Ok(())
    }
}
