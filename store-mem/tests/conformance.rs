//! store-mem runs the core's `TxLog` conformance suite, durability across crashes included.

use replication_core::testing::{LogFactory, txlog_conformance};
use store_mem::MemLog;

struct Factory;

#[async_trait::async_trait]
impl LogFactory for Factory {
    type Log = MemLog;

    async fn create(&self) -> MemLog {
        MemLog::with_manual_sync()
    }

    async fn make_durable(&self, log: &MemLog) {
        log.sync();
    }

    async fn crash_and_reopen(&self, log: MemLog) -> MemLog {
        log.crash()
    }
}

#[tokio::test]
async fn mem_log_passes_the_conformance_suite() {
    txlog_conformance(&Factory).await;
}
