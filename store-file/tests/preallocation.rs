//! Zeros prepared ahead of the appends (`FileLogOptions::preallocate`): the active segment is
//! extended in the background, the zeros after the last record are a clean end of the log on
//! reopen (no torn-tail warning, nothing cut), appends go on at the records' end, and sealed
//! segments end exactly after their last record.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use replication_core::{Epoch, LogPosition, Tx, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

mod common;
use common::{records_end, wait_until};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("meta").len()
}

async fn append(log: &FileLog, prev: &mut LogPosition, count: usize) -> Vec<Tx> {
    let mut txs = Vec::new();
    for i in 0..count {
        let tx = Tx::new(*prev, Epoch(1), Bytes::from(format!("payload {i}")));
        *prev = tx.position();
        txs.push(tx.clone());
        log.append(vec![tx])
            .await
            .expect("append")
            .await
            .expect("durable");
    }
    txs
}

#[tokio::test]
async fn prepared_zeros_are_a_clean_end_and_appends_continue_at_the_records_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut prev = LogPosition::START;
    let mut written = {
        let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
        let written = append(&log, &mut prev, 10).await;
        let segment = segments(dir.path()).pop().expect("segment");
        wait_until("the segment is prepared", || {
            file_len(&segment) > records_end(&segment)
        });
        written
    };
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert_eq!(report.transactions, 10);
    assert!(report.torn_tail.is_none(), "zeros are not a torn write");

    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    let segment = segments(dir.path()).pop().expect("segment");
    assert!(
        file_len(&segment) > records_end(&segment),
        "reopening kept the prepared space"
    );
    assert_eq!(log.state().await.expect("state").last, prev);
    written.extend(append(&log, &mut prev, 5).await);
    drop(log);

    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    let read = log.read(TxId(1), 100, usize::MAX).await.expect("read");
    assert_eq!(
        read, written,
        "the appends after reopening follow the records"
    );
}

#[tokio::test]
async fn sealed_segments_end_exactly_after_their_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        segment_bytes: 4096,
        ..FileLogOptions::default()
    };
    let log = FileLog::open(dir.path(), options.clone()).expect("open");
    let mut prev = LogPosition::START;
    let mut written = Vec::new();
    for _ in 0..6 {
        written.extend(append(&log, &mut prev, 70).await);
        // Let the zero-fill thread catch up, so that every segment was prepared before it
        // was sealed.
        let segment = segments(dir.path()).pop().expect("segment");
        wait_until("the segment is prepared", || {
            file_len(&segment) >= options.segment_bytes
        });
    }
    let all = segments(dir.path());
    assert!(all.len() >= 3, "{} segments", all.len());
    for sealed in &all[..all.len() - 1] {
        assert_eq!(
            file_len(sealed),
            records_end(sealed),
            "{} keeps zeros after sealing",
            sealed.display()
        );
    }
    drop(log);
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert_eq!(report.transactions, written.len() as u64);
    let log = FileLog::open(dir.path(), options).expect("reopen");
    let read = log.read(TxId(1), 1000, usize::MAX).await.expect("read");
    assert_eq!(read, written);
}

#[tokio::test]
async fn without_preallocation_the_file_ends_at_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = FileLogOptions {
        preallocate: false,
        ..FileLogOptions::default()
    };
    let log = FileLog::open(dir.path(), options).expect("open");
    let mut prev = LogPosition::START;
    append(&log, &mut prev, 10).await;
    drop(log);
    let segment = segments(dir.path()).pop().expect("segment");
    assert_eq!(file_len(&segment), records_end(&segment));
}
