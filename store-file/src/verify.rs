//! Offline inspection of a log directory that no process has open: every checksum, every
//! index, the whole hash chain from the log's base and the saved membership, without modifying
//! anything (as `pg_waldump` and `etcdutl` do for their logs). A compaction or reset that a
//! crash interrupted is reported, and checked as the open will finish it.

use std::fs::File;
use std::path::Path;

use replication_core::{EpochClaim, LogBase, LogError, LogPosition, ReplicaId, Tx, TxId};

use crate::base::{self, SavedBase};
use crate::record;
use crate::recovery;
use crate::segment::{self, index_path, segment_path};
use crate::{claim, members};

/// What [`verify`] found in a sound log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Transactions checked.
    pub transactions: u64,
    /// Segment files checked.
    pub segments: usize,
    /// The first transaction stored (after retention), or the one the log expects next if it
    /// holds none after its base.
    pub first: TxId,
    /// The last transaction and its hash (the base's, if the log holds nothing after it).
    pub last: LogPosition,
    /// Where the log begins, as its `base` file records it. `None` without one: a log that
    /// holds its whole history, or whose retention removed segments before the log kept a
    /// base (the hash before its first segment is then unknown, and not checked).
    pub base: Option<LogBase>,
    /// A compaction or a reset that a crash interrupted, which opening the log finishes: what
    /// it left behind (segments at or below the base, or the whole old log) is not checked.
    pub unfinished: Option<String>,
    /// A torn record at the end of the last segment (left by a crash mid-write; opening the log
    /// cuts it off), named by file and offset.
    pub torn_tail: Option<String>,
    /// The membership last saved (empty if none was: the `members` file is absent).
    pub members: Vec<ReplicaId>,
    /// The primary last recorded for an epoch (the `epoch-claim` file), if any: the claim of
    /// the log's epoch, or of an older one when a later epoch was learned without its primary.
    pub epoch_claim: Option<EpochClaim>,
}

/// Checks the log in `dir` and calls `visit` for every transaction, in order.
///
/// # Errors
/// [`LogError::Corrupt`] naming the file, offset and reason of the first problem (for the
/// `members` and `epoch-claim` files, the file and the reason).
pub fn verify(dir: &Path, mut visit: impl FnMut(&Tx)) -> Result<VerifyReport, LogError> {
    // Read a log only while nobody writes it.
    let _lock = match File::options().write(true).open(dir.join("LOCK")) {
        Ok(lock) => {
            if lock.try_lock().is_err() {
                return Err(LogError::Io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by a running process; stop it first",
                        dir.display()
                    ),
                )));
            }
            Some(lock)
        }
        Err(_) => None,
    };
    let mut firsts = recovery::list(dir)?.segments;
    if !dir.join("meta").exists() {
        return Err(LogError::Corrupt(format!(
            "{}: missing",
            dir.join("meta").display()
        )));
    }
    // Checked like the open checks it: a damaged membership is as fatal as a damaged segment.
    let members = members::load(dir)?;
    let epoch_claim =
        claim::load(dir)?.map(|saved| EpochClaim::new(saved.epoch, Some(saved.primary)));
    let mut unfinished = None;
    let base = match base::load(dir)? {
        Some(SavedBase {
            base,
            resetting: true,
        }) => {
            unfinished = Some(format!(
                "a reset to {} was interrupted: opening the log discards its {} segments and \
                 finishes it",
                base.position,
                firsts.len()
            ));
            firsts.clear();
            Some(base)
        }
        Some(SavedBase { base, .. }) => {
            let stale = recovery::below_base(&firsts, &base);
            if stale > 0 {
                unfinished = Some(format!(
                    "a compaction to {} was interrupted: opening the log removes the {stale} \
                     segments at or below it, from {}",
                    base.position,
                    segment_path(dir, firsts[0]).display()
                ));
                firsts.drain(..stale);
            }
            recovery::check_first_segment(dir, &firsts, &base)?;
            Some(base)
        }
        None => None,
    };
    let mut report = VerifyReport {
        transactions: 0,
        segments: firsts.len(),
        first: base.map_or_else(
            || firsts.first().copied().unwrap_or(TxId(1)),
            |base| base.first(),
        ),
        last: base.map_or(LogPosition::START, |base| base.position),
        base,
        unfinished,
        torn_tail: None,
        members,
        epoch_claim,
    };
    // The chain starts at the base; unknown for a log whose retention ran before base files.
    let mut prev: Option<LogPosition> = match base {
        Some(base) => Some(base.position),
        None => (report.first == TxId(1)).then_some(LogPosition::START),
    };
    for (i, &first) in firsts.iter().enumerate() {
        let path = segment_path(dir, first);
        let file = File::open(&path)?;
        let mut len = file.metadata()?.len();
        let is_last = i + 1 == firsts.len();
        if is_last {
            let scan = segment::scan(&path, &file, first, prev)?;
            if scan.torn {
                report.torn_tail = Some(format!("{} at offset {}", path.display(), scan.valid_len));
            }
            // Beyond the records: a torn write, or zeros prepared for the next appends.
            len = scan.valid_len;
        }
        let mut offsets = Vec::new();
        let mut offset = 0u64;
        let mut next = first;
        while offset < len {
            let txs = segment::read_records(&path, &file, offset, len, next, 1024, 8 << 20)?;
            if txs.is_empty() {
                break;
            }
            for tx in &txs {
                if let Some(Err(error)) = prev.map(|p| tx.verify_follows(&p)) {
                    return Err(segment::corrupt(&path, offset, error));
                }
                offsets.push(offset);
                offset += record::record_len(tx) as u64;
                prev = Some(tx.position());
                report.last = tx.position();
                report.transactions += 1;
                next = tx.id.next();
                visit(tx);
            }
        }
        if !is_last {
            let expected = firsts[i + 1].0 - first.0;
            if offsets.len() as u64 != expected {
                return Err(segment::corrupt(
                    &path,
                    offset,
                    format_args!(
                        "holds {} transactions, {expected} expected before the next segment",
                        offsets.len()
                    ),
                ));
            }
            let index = segment::load_index(dir, first, expected, len)?;
            if index != offsets {
                return Err(segment::corrupt(
                    &index_path(dir, first),
                    0,
                    "offsets disagree with the segment",
                ));
            }
        }
    }
    if let (None, Some(&first)) = (base, firsts.first())
        && first != TxId(1)
        && report.transactions == 0
    {
        // As the open refuses it.
        return Err(recovery::unknown_chain(&segment_path(dir, first), first));
    }
    Ok(report)
}
