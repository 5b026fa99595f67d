//! Opening a log: finding its segments, checking them and recovering from a crash, finishing
//! a compaction or a reset that the crash interrupted.
//!
//! The crash states of a compaction ([`FileLog::remove_before`]), whose `base` file is saved
//! before any segment goes:
//! - the new base never replaced the old one (a `base.tmp` may be left): the old log, as it
//!   was; the temporary file is removed.
//! - the new base is saved and some, all or none of the segments at or below it are still
//!   there (perhaps a segment gone but its index left): the open removes them, and the log
//!   begins after the base, its first segment starting at `base.first()`.
//!
//! The crash states of [`TxLog::reset_to`], whose `base` file, saved with `resetting` set, is
//! the moment the log becomes the new one:
//! - before that file replaced the old one: the old log, as it was.
//! - from then until the reset saved the base again with `resetting` cleared (the meta file
//!   rewritten or not, any of the old segments and indexes removed, the new empty segment
//!   created or not): the open discards every segment and index, begins the empty segment
//!   after the base and clears `resetting`: the new log. No transaction can have been
//!   appended meanwhile, since the reset returns only after clearing it.
//!
//! In both, the meta file's commit point is raised to the base (what is below it was
//! committed) and its epoch to the base's, and saved if that changed it.
//!
//! [`FileLog::remove_before`]: crate::FileLog::remove_before
//! [`TxLog::reset_to`]: replication_core::TxLog::reset_to

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::sync::Arc;

use replication_core::{Epoch, LogBase, LogError, LogPosition, TxId};

use crate::base::{self, SavedBase};
use crate::meta::{Meta, MetaFile};
use crate::options::FileLogOptions;
use crate::record;
use crate::segment::{self, Segment, index_path, segment_path};
use crate::state::{State, sync_dir};
use crate::{claim, members};

/// The segment and index files in a log directory, each list sorted by first id.
pub(crate) struct Listing {
    /// The first ids of the `.seg` files.
    pub(crate) segments: Vec<TxId>,
    /// The first ids of the `.idx` files (names that are not an id are ignored).
    pub(crate) indexes: Vec<TxId>,
}

/// Lists the segments and indexes of `dir`.
///
/// # Errors
/// [`LogError::Corrupt`] for a `.seg` file whose name is not an id.
pub(crate) fn list(dir: &Path) -> Result<Listing, LogError> {
    let mut listing = Listing {
        segments: Vec::new(),
        indexes: Vec::new(),
    };
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
            listing.segments.push(TxId(first));
        } else if let Some(Ok(first)) = name.strip_suffix(".idx").map(str::parse::<u64>) {
            listing.indexes.push(TxId(first));
        }
    }
    listing.segments.sort();
    listing.indexes.sort();
    Ok(listing)
}

/// How many of the segments starting at `firsts` lie wholly at or below `base`: those a
/// compaction interrupted by a crash left behind. Never the last one.
pub(crate) fn below_base(firsts: &[TxId], base: &LogBase) -> usize {
    firsts
        .windows(2)
        .take_while(|pair| pair[1] <= base.first())
        .count()
}

/// Checks that the first segment, after those below the base are gone, starts right after the
/// base: anything else is a missing or out-of-place segment.
pub(crate) fn check_first_segment(
    dir: &Path,
    firsts: &[TxId],
    base: &LogBase,
) -> Result<(), LogError> {
    let base_path = base::FILE.path(dir);
    match firsts.first() {
        None => Err(LogError::Corrupt(format!(
            "{}: missing: the log's base ({}) ends at transaction {}, and no segment follows it",
            segment_path(dir, base.first()).display(),
            base_path.display(),
            base.position.tx_id
        ))),
        Some(&first) if first > base.first() => Err(segment::corrupt(
            &segment_path(dir, first),
            0,
            format_args!(
                "the first segment starts at transaction {first}, but the log's base ({}) ends \
                 at {}: the segment {} is missing",
                base_path.display(),
                base.position.tx_id,
                segment_path(dir, base.first()).display()
            ),
        )),
        Some(&first) if first < base.first() => Err(segment::corrupt(
            &segment_path(dir, first),
            0,
            format_args!(
                "the first segment starts at transaction {first}, at or below the log's base \
                 ({}, transaction {}), yet it is the last segment or holds transactions after \
                 the base",
                base_path.display(),
                base.position.tx_id
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The error for a log that holds no transaction in its only segment, starting at `first`,
/// whose earlier segments were removed before the log kept a base: nothing records the hash
/// the next transaction must chain from.
pub(crate) fn unknown_chain(path: &Path, first: TxId) -> LogError {
    segment::corrupt(
        path,
        0,
        format_args!(
            "the log holds no transaction, and the segments before transaction {first} were \
             removed before the log kept a base file: the hash of transaction {}, which the \
             next one must chain from, is unknown (restore the removed segment, or remove \
             this log and copy the database again)",
            first.prev()
        ),
    )
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Finishes a reset to `base` that a crash interrupted: every segment and index goes, the
/// empty segment after the base begins, and the `base` file no longer says `resetting`.
fn finish_reset(dir: &Path, listing: &Listing, base: LogBase) -> Result<(), LogError> {
    tracing::warn!(
        dir = %dir.display(),
        base = %base.position,
        "finishing a reset to a snapshot's base that a crash interrupted"
    );
    for &first in &listing.segments {
        remove_if_present(&segment_path(dir, first))?;
    }
    for &first in &listing.indexes {
        remove_if_present(&index_path(dir, first))?;
    }
    File::create(segment_path(dir, base.first()))?;
    sync_dir(dir)?;
    let (_, saved) = base::save(
        dir,
        &SavedBase {
            base,
            resetting: false,
        },
    );
    saved
}

/// Finishes a compaction to `base` that a crash interrupted: removes the segments wholly at or
/// below it, and the indexes before the first segment kept, then checks what is left.
fn finish_compaction(dir: &Path, listing: &mut Listing, base: &LogBase) -> Result<(), LogError> {
    let stale = below_base(&listing.segments, base);
    // Checked before anything is removed: a base that does not belong to these segments
    // fails the open and deletes nothing.
    check_first_segment(dir, &listing.segments[stale..], base)?;
    check_head(dir, listing.segments[stale], base)?;
    for first in listing.segments.drain(..stale) {
        tracing::info!(segment = %segment_path(dir, first).display(), "removing a segment that an interrupted compaction left behind");
        remove_if_present(&segment_path(dir, first))?;
    }
    let kept = listing.segments.first().copied();
    let orphans: Vec<TxId> = listing
        .indexes
        .iter()
        .copied()
        .filter(|&first| kept.is_none_or(|kept| first < kept))
        .collect();
    for &first in &orphans {
        remove_if_present(&index_path(dir, first))?;
    }
    if stale > 0 || !orphans.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Checks that the first transaction of the segment starting at `first` chains from `base`,
/// when it reads as a whole record: damage there, or a torn write in an active segment, is
/// for the open's checks of the segment to judge.
fn check_head(dir: &Path, first: TxId, base: &LogBase) -> Result<(), LogError> {
    let path = segment_path(dir, first);
    let file = File::open(&path)?;
    let len = file.metadata()?.len();
    if let Ok(head) = segment::read_records(&path, &file, 0, len, first, 1, usize::MAX)
        && let Some(head) = head.first()
        && let Err(error) = head.verify_follows(&base.position)
    {
        return Err(segment::corrupt(
            &path,
            0,
            format_args!(
                "does not follow the log's base ({}, {}): {error}",
                base::FILE.path(dir).display(),
                base.position
            ),
        ));
    }
    Ok(())
}

/// Opens every segment, checks the sealed ones cheaply (index shape, last record) and scans the
/// active one fully.
pub(crate) fn recover(dir: &Path, options: &FileLogOptions) -> Result<State, LogError> {
    let mut listing = list(dir)?;
    let meta_path = dir.join("meta");
    let (mut meta_file, stored_meta) = MetaFile::open(
        &meta_path,
        listing.segments.is_empty() || meta_path.exists(),
    )
    .map_err(|e| match e {
        LogError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => LogError::Corrupt(
            format!("{}: missing, but segments exist", meta_path.display()),
        ),
        other => other,
    })?;
    // Before any segment is touched: a damaged membership fails the open as a damaged
    // meta file does, and never reads as empty (the node would forget its quorum).
    let members = members::load(dir)?;
    members::FILE.remove_unfinished(dir)?;
    let claim = claim::load(dir)?;
    claim::FILE.remove_unfinished(dir)?;
    let saved_base = base::load(dir)?;
    base::FILE.remove_unfinished(dir)?;
    let base = match saved_base {
        Some(SavedBase {
            base,
            resetting: true,
        }) => {
            finish_reset(dir, &listing, base)?;
            listing = Listing {
                segments: vec![base.first()],
                indexes: Vec::new(),
            };
            Some(base)
        }
        Some(SavedBase { base, .. }) => {
            finish_compaction(dir, &mut listing, &base)?;
            Some(base)
        }
        None if listing
            .segments
            .first()
            .is_none_or(|&first| first == TxId(1)) =>
        {
            Some(LogBase::START)
        }
        None => {
            tracing::warn!(
                dir = %dir.display(),
                "segments were removed before the log kept a base file: the hash before the \
                 first segment is unknown until the next compaction records one"
            );
            None
        }
    };
    let mut firsts = listing.segments;
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
    // The chain starts at the base; unknown for a log whose retention ran before base files.
    let mut prev = base.map_or(LogPosition::START, |base| base.position);
    let mut prev_known = base.is_some();
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
            if scan.last.is_none() && !prev_known {
                return Err(unknown_chain(&path, first));
            }
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
            let base_id = base.map_or(TxId::ZERO, |base| base.position.tx_id);
            let base_epoch = base.map_or(Epoch(0), |base| base.epoch);
            // The claim file is written first: a crash before the meta file followed leaves
            // the higher epoch there. Everything up to the base was committed, and a reset
            // raises the epoch to the base's.
            let meta = Meta {
                epoch: stored_meta
                    .epoch
                    .max(claim.as_ref().map_or(Epoch(0), |c| c.epoch))
                    .max(base_epoch),
                committed: stored_meta.committed.max(base_id).min(last.tx_id),
            };
            // Saved, so that what the open decided holds even if the next crash comes
            // before the next commit: a commit point kept above the last transaction would
            // otherwise cover whatever is appended there next.
            if meta != stored_meta {
                meta_file.write(meta, true)?;
            }
            return Ok(State {
                segments,
                active_offsets: scan.offsets,
                active_len: scan.valid_len,
                active_prepared: prepared,
                last,
                durable: last,
                meta,
                meta_file,
                members,
                claim,
                base,
                generation: 0,
                failed: None,
            });
        }
        let next_first = firsts[i + 1];
        if next_first <= first {
            return Err(segment::corrupt(&path, 0, "segments overlap"));
        }
        let count = next_first.0 - first.0;
        // The first segment must chain from the base (a rebuild scans the whole chain).
        if i == 0 && prev_known && !options.rebuild_indexes {
            let head = segment::read_records(&path, &file, 0, len, first, 1, usize::MAX)?;
            let Some(head) = head.first() else {
                return Err(segment::corrupt(&path, 0, "first record missing"));
            };
            if let Err(error) = head.verify_follows(&prev) {
                return Err(segment::corrupt(
                    &path,
                    0,
                    format_args!("does not follow the log's base {prev}: {error}"),
                ));
            }
        }
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
