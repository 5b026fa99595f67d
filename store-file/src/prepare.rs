//! The zero-fill thread: keeps the active segment prepared (zero-filled and synced) a little
//! ahead of the appends, so that an append's `fdatasync` need not also write the inode of a
//! grown file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use replication_core::log::LogOperation;

use crate::state::Shared;

/// How far ahead of the appends the zero-fill thread prepares the active segment.
pub(crate) const PREPARE_AHEAD: u64 = 2 << 20;
/// Zeros written (and synced) per step; the state lock is held while they are written.
const PREPARE_CHUNK: u64 = 512 << 10;

impl Shared {
    /// The zero-fill thread: keeps the active segment prepared [`PREPARE_AHEAD`] bytes beyond
    /// its last record (up to `segment_bytes`), one synced chunk at a time.
    pub(crate) fn prepare_loop(self: Arc<Shared>) {
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
                    self.fail(
                        &mut state,
                        LogOperation::Sync,
                        format!("fdatasync failed: {error}"),
                    );
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

    /// Wakes the zero-fill thread (if preallocation is on).
    pub(crate) fn request_prepare(&self) {
        if self.options.preallocate {
            let mut request = self.prepare.lock().unwrap_or_else(|p| p.into_inner());
            request.pending = true;
            drop(request);
            self.prepare_signal.notify_one();
        }
    }
}
