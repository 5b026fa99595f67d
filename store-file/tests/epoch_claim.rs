//! The `epoch-claim` file as the log uses it: a crash between it and the meta file keeps the
//! higher epoch with its primary, an interrupted save is ignored, damage fails the open.

use std::fs;

use replication_core::{Epoch, EpochClaim, ReplicaId, TxLog};
use store_file::{FileLog, FileLogOptions};

fn claim(epoch: u64, node: &str) -> EpochClaim {
    EpochClaim::new(Epoch(epoch), Some(ReplicaId::new(node, "db")))
}

#[tokio::test]
async fn a_crash_between_the_claim_and_the_meta_file_keeps_the_new_claim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_epoch(&claim(2, "a")).await.expect("save");
    let meta = dir.path().join("meta");
    let old_meta = fs::read(&meta).expect("meta");
    log.save_epoch(&claim(3, "b")).await.expect("save");
    drop(log);
    // The claim file was replaced, the meta file's write never landed.
    fs::write(&meta, &old_meta).expect("restore");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(log.state().await.expect("state").epoch, Epoch(3));
    assert_eq!(log.epoch_claim().await.expect("claim"), claim(3, "b"));
}

#[tokio::test]
async fn an_epoch_learned_without_its_primary_names_nobody() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_epoch(&claim(2, "a")).await.expect("save");
    log.save_epoch(&EpochClaim::new(Epoch(5), None))
        .await
        .expect("save");
    drop(log);
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(
        log.epoch_claim().await.expect("claim"),
        EpochClaim::new(Epoch(5), None),
        "the older epoch's primary is not the newer one's"
    );
    drop(log);
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert_eq!(report.epoch_claim, Some(claim(2, "a")));
}

#[tokio::test]
async fn an_interrupted_save_is_ignored_and_damage_fails_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_epoch(&claim(4, "a")).await.expect("save");
    drop(log);
    let temp = dir.path().join("epoch-claim.tmp");
    fs::write(&temp, b"half a claim").expect("write");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(log.epoch_claim().await.expect("claim"), claim(4, "a"));
    assert!(!temp.exists(), "the unfinished save is cleaned up");
    drop(log);

    let file = dir.path().join("epoch-claim");
    let mut bytes = fs::read(&file).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&file, &bytes).expect("write");
    let error = match FileLog::open(dir.path(), FileLogOptions::default()) {
        Ok(_) => panic!("a damaged claim must fail the open"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("epoch-claim") && error.contains("checksum"),
        "{error}"
    );
    let error = store_file::verify(dir.path(), |_| {})
        .expect_err("verify names it")
        .to_string();
    assert!(error.contains("epoch-claim"), "{error}");
}
