//! Reads: one segment at a time, each with at most one index read and one segment read.

use replication_core::{LogError, LogPosition, Tx, TxId};

use crate::FileLog;
use crate::record;
use crate::segment;

impl FileLog {
    /// Reads from the page cache or disk; called from async code because reads of recent
    /// data are page-cache hits.
    pub(crate) fn read_blocking(
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
            let first_retained = state.first_retained();
            if from < first_retained {
                return Err(LogError::Removed {
                    requested: from,
                    first_retained,
                });
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

    pub(crate) fn position_of(&self, tx_id: TxId) -> Result<LogPosition, LogError> {
        if tx_id == TxId::ZERO {
            return Ok(LogPosition::START);
        }
        // The base's transaction was removed, but its position is known.
        let base = self.shared.lock().base;
        if let Some(base) = base
            && base.position.tx_id == tx_id
        {
            return Ok(base.position);
        }
        let tx = self.read_blocking(tx_id, 1, usize::MAX)?;
        tx.first()
            .map(Tx::position)
            .ok_or_else(|| LogError::Corrupt(format!("transaction {tx_id} missing")))
    }
}
