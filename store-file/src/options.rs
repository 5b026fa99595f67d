//! The settings a [`FileLog`](crate::FileLog) is opened with.

use std::time::Duration;

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

/// Settings of a [`FileLog`](crate::FileLog).
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
