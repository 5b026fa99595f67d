//! Opening a log: finding its segments, checking them and recovering from a crash.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use replication_core::{Epoch, LogError, LogPosition, TxId};

use crate::meta::{Meta, MetaFile};
use crate::options::FileLogOptions;
use crate::record;
use crate::segment::{self, Segment, index_path, segment_path};
use crate::state::{State, sync_dir};
use crate::{claim, members};

/// Opens every segment, checks the sealed ones cheaply (index shape, last record) and scans the
/// active one fully.
pub(crate) fn recover(dir: &Path, options: &FileLogOptions) -> Result<State, LogError> {
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
    // Before any segment is touched: a damaged membership fails the open as a damaged
    // meta file does, and never reads as empty (the node would forget its quorum).
    let members = members::load(dir)?;
    members::FILE.remove_unfinished(dir)?;
    let claim = claim::load(dir)?;
    claim::FILE.remove_unfinished(dir)?;
    // The claim file is written first: a crash before the meta file followed leaves the
    // higher epoch there.
    let meta = Meta {
        epoch: meta.epoch.max(claim.as_ref().map_or(Epoch(0), |c| c.epoch)),
        ..meta
    };
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
                members,
                claim,
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
