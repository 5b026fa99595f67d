//! store-mem runs the core's `TxLog` conformance suite, durability across crashes included.

use bytes::Bytes;
use replication_core::testing::{LogFactory, txlog_conformance};
use replication_core::{Epoch, LogError, LogPosition, Tx, TxId, TxLog};
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

/// A chain of `count` one-byte transactions after `prev`.
fn chain(prev: LogPosition, count: usize) -> Vec<Tx> {
    let mut txs: Vec<Tx> = Vec::with_capacity(count);
    for i in 0..count {
        let prev = txs.last().map(Tx::position).unwrap_or(prev);
        txs.push(Tx::new(prev, Epoch(1), Bytes::from(vec![i as u8])));
    }
    txs
}

/// The log keeps transactions in chunks of 4,096: reads, positions and truncation must not
/// notice the seams.
#[tokio::test]
async fn reads_and_truncation_across_chunk_seams() {
    let log = MemLog::new();
    let txs = chain(LogPosition::START, 10_000);
    log.append(txs[..5_000].to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    log.append(txs[5_000..].to_vec())
        .await
        .unwrap()
        .await
        .unwrap();
    let read = log.read(TxId(4_090), 20, usize::MAX).await.unwrap();
    assert_eq!(read, txs[4_089..4_109].to_vec());
    assert_eq!(
        log.read(TxId(9_999), 10, usize::MAX).await.unwrap(),
        txs[9_998..].to_vec()
    );
    assert!(
        log.read(TxId(10_001), 10, usize::MAX)
            .await
            .unwrap()
            .is_empty()
    );

    for cut in [8_193u64, 8_192, 4_097, 4_096, 1] {
        log.truncate_after(TxId(cut)).await.unwrap();
        let state = log.state().await.unwrap();
        assert_eq!(state.last, txs[cut as usize - 1].position(), "cut at {cut}");
        assert!(
            log.read(TxId(cut + 1), 1, usize::MAX)
                .await
                .unwrap()
                .is_empty()
        );
    }
    // Growing again after a cut inside the first chunk.
    let more = chain(txs[0].position(), 5_000);
    log.append(more.clone()).await.unwrap().await.unwrap();
    assert_eq!(log.state().await.unwrap().last, more[4_999].position());
    assert_eq!(
        log.read(TxId(4_096), 2, usize::MAX).await.unwrap(),
        more[4_094..4_096].to_vec()
    );
}

/// Retention frees whole committed chunks and keeps the requested tail readable.
#[tokio::test]
async fn retention_frees_committed_chunks_only() {
    let log = MemLog::new().with_retention(100);
    let txs = chain(LogPosition::START, 10_000);
    log.append(txs.clone()).await.unwrap().await.unwrap();
    log.commit(TxId(4_000)).await.unwrap();
    assert_eq!(
        log.first(),
        TxId(1),
        "no whole chunk is 100 behind the commit point"
    );
    log.commit(TxId(8_000)).await.unwrap();
    assert_eq!(log.first(), TxId(4_097));
    log.commit(TxId(10_000)).await.unwrap();
    assert_eq!(log.first(), TxId(8_193), "9,900 and later are kept");
    let error = log.read(TxId(8_192), 1, usize::MAX).await.unwrap_err();
    assert!(matches!(error, LogError::Removed { .. }), "{error}");
    assert_eq!(
        log.read(TxId(9_901), 2, usize::MAX).await.unwrap(),
        txs[9_900..9_902].to_vec()
    );
    let state = log.state().await.unwrap();
    assert_eq!(
        (state.committed, state.last),
        (txs[9_999].position(), txs[9_999].position())
    );
    let more = chain(txs[9_999].position(), 3);
    log.append(more.clone()).await.unwrap().await.unwrap();
    assert_eq!(log.read(TxId(10_001), 3, usize::MAX).await.unwrap(), more);
}

/// Compaction forgets exactly what it is asked to (freeing whole chunks as they empty), the
/// base survives a crash, and a reset starts again anywhere, even mid-chunk.
#[tokio::test]
async fn compaction_is_exact_and_a_reset_starts_anywhere() {
    let log = MemLog::with_manual_sync();
    let txs = chain(LogPosition::START, 10_000);
    let _durable = log.append(txs.clone()).await.unwrap();
    log.sync_up_to(TxId(9_000));
    log.commit(TxId(8_500)).await.unwrap();
    let base = log.compact(TxId(9_999)).await.unwrap();
    assert_eq!(
        base.position,
        txs[8_499].position(),
        "never past the commit point"
    );
    assert_eq!(log.first(), TxId(8_501));
    let base = log.compact(TxId(5_000)).await.unwrap();
    assert_eq!(base.position, txs[8_499].position(), "never backwards");
    assert!(matches!(
        log.read(TxId(8_500), 1, usize::MAX).await,
        Err(LogError::Removed {
            first_retained: TxId(8_501),
            ..
        })
    ));
    let log = log.crash();
    assert_eq!(
        log.base().await.unwrap(),
        base,
        "the base is durable at once"
    );
    let state = log.state().await.unwrap();
    assert_eq!(
        state.last,
        txs[8_999].position(),
        "what was durable survives"
    );
    assert_eq!(state.committed, txs[8_499].position());
    assert_eq!(
        log.read(TxId(8_501), 600, usize::MAX).await.unwrap(),
        txs[8_500..9_000].to_vec()
    );

    // A reset to a base just before a chunk seam of the old numbering.
    let reset = replication_core::LogBase {
        position: txs[4_093].position(),
        epoch: Epoch(1),
    };
    log.reset_to(reset).await.unwrap();
    assert_eq!(log.first(), TxId(4_095));
    let more = chain(reset.position, 5_000);
    let durable = log.append(more.clone()).await.unwrap();
    log.sync();
    durable.await.unwrap();
    let log = log.crash();
    assert_eq!(log.state().await.unwrap().last, more[4_999].position());
    assert_eq!(
        log.read(TxId(4_095), 5_000, usize::MAX).await.unwrap(),
        more
    );
    log.truncate_after(TxId(4_100)).await.unwrap();
    assert_eq!(log.state().await.unwrap().last, more[5].position());
    log.commit(TxId(4_100)).await.unwrap();
    let base = log.compact(TxId(4_099)).await.unwrap();
    assert_eq!(base.position, more[4].position());
    assert_eq!(
        log.read(TxId(4_100), 5, usize::MAX).await.unwrap(),
        more[5..6].to_vec()
    );
}

/// Retention records what it freed as the base.
#[tokio::test]
async fn retention_moves_the_base() {
    let log = MemLog::new().with_retention(100);
    let txs = chain(LogPosition::START, 9_000);
    log.append(txs.clone()).await.unwrap().await.unwrap();
    log.commit(TxId(9_000)).await.unwrap();
    let base = log.base().await.unwrap();
    assert_eq!(base.position, txs[8_191].position());
    assert_eq!(log.first(), base.first());
    // A rewind to the base itself is possible; below it, what it needs was freed.
    assert!(matches!(
        log.rewind_after(TxId(8_000)).await,
        Err(LogError::Removed { .. })
    ));
    log.rewind_after(TxId(8_192)).await.unwrap();
    let state = log.state().await.unwrap();
    assert_eq!(
        (state.last, state.committed),
        (base.position, base.position)
    );
}
