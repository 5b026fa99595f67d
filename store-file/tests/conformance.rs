//! store-file runs the core's `TxLog` conformance suite: a crash here is dropping every handle
//! without any further sync, and reopening the directory.

use replication_core::testing::{LogFactory, txlog_conformance};
use store_file::{FileLog, FileLogOptions};

struct Factory {
    root: tempfile::TempDir,
    next: std::sync::atomic::AtomicUsize,
    options: FileLogOptions,
}

#[async_trait::async_trait]
impl LogFactory for Factory {
    type Log = FileLog;

    async fn create(&self) -> FileLog {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        FileLog::open(self.root.path().join(n.to_string()), self.options.clone()).expect("open")
    }

    async fn make_durable(&self, _log: &FileLog) {}

    async fn crash_and_reopen(&self, log: FileLog) -> FileLog {
        let dir = log.dir().to_path_buf();
        drop(log);
        FileLog::open(dir, self.options.clone()).expect("reopen")
    }
}

fn factory(options: FileLogOptions) -> Factory {
    Factory {
        root: tempfile::tempdir().expect("tempdir"),
        next: Default::default(),
        options,
    }
}

#[tokio::test]
async fn file_log_passes_the_conformance_suite() {
    txlog_conformance(&factory(FileLogOptions::default())).await;
}

#[tokio::test]
async fn file_log_with_tiny_segments_passes_the_conformance_suite() {
    // Many segments: reads, truncation and recovery cross segment boundaries.
    let options = FileLogOptions {
        segment_bytes: 300,
        ..FileLogOptions::default()
    };
    txlog_conformance(&factory(options)).await;
}
