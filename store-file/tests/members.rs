//! The `members` file as the log uses it: checked at open, an interrupted save left behind is
//! ignored, and the offline verify reports it.

use std::fs;

use replication_core::{ReplicaId, TxLog};
use store_file::{FileLog, FileLogOptions};

fn members() -> Vec<ReplicaId> {
    vec![ReplicaId::new("a", "db"), ReplicaId::new("b", "db")]
}

#[tokio::test]
async fn an_interrupted_save_leaves_the_last_membership() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_members(members()).await.expect("save");
    drop(log);
    // A crash between writing the temporary file and renaming it: the save never happened.
    let temp = dir.path().join("members.tmp");
    fs::write(&temp, b"half a membership").expect("write");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("reopen");
    assert_eq!(log.members().await.expect("members"), members());
    assert!(!temp.exists(), "the unfinished save is cleaned up");
}

#[tokio::test]
async fn a_damaged_membership_fails_the_open_and_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_members(members()).await.expect("save");
    drop(log);
    let path = dir.path().join("members");
    let mut bytes = fs::read(&path).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&path, &bytes).expect("write");
    let error = FileLog::open(dir.path(), FileLogOptions::default())
        .expect_err("damaged membership")
        .to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("checksum"),
        "{error}"
    );
}

#[tokio::test]
async fn verify_reports_the_membership_and_none_for_a_log_that_never_saved_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    drop(log);
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert!(report.members.is_empty());
    assert!(!dir.path().join("members").exists());

    let log = FileLog::open(dir.path(), FileLogOptions::default()).expect("open");
    log.save_members(members()).await.expect("save");
    drop(log);
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert_eq!(report.members, members());
}
