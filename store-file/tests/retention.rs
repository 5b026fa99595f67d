//! Retention: `remove_before` drops whole committed segments, and reading what it dropped is
//! reported as removed, with where the log now starts.

use bytes::Bytes;
use replication_core::{Epoch, LogError, LogPosition, Tx, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

#[tokio::test]
async fn reading_a_removed_transaction_reports_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        segment_bytes: 300,
        ..FileLogOptions::default()
    };
    let log = FileLog::open(dir.path(), options).expect("open");
    let mut previous = LogPosition::START;
    // One append each: a full segment is sealed at the start of the next append.
    for i in 0..20u8 {
        let tx = Tx::new(previous, Epoch(1), Bytes::from(vec![i; 50]));
        previous = tx.position();
        log.append(vec![tx])
            .await
            .expect("append")
            .await
            .expect("durable");
    }
    log.commit(TxId(20)).await.expect("commit");
    let first = log.remove_before(TxId(15)).expect("remove");
    assert!(first > TxId(1) && first <= TxId(15), "first kept: {first}");
    assert_eq!(log.first(), first);
    match log.read(TxId(1), 1, usize::MAX).await {
        Err(LogError::Removed {
            requested,
            first_retained,
        }) => assert_eq!((requested, first_retained), (TxId(1), first)),
        other => panic!("read of a removed transaction: {other:?}"),
    }
    let kept = log.read(first, 1, usize::MAX).await.expect("read");
    assert_eq!(kept.first().map(|tx| tx.id), Some(first));
}
