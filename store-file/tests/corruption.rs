//! Bad input from disk: bit flips and truncations at every offset of a small multi-segment
//! log (its `members` file included), missing segments, broken indexes, a second process.
//! Never a panic; each case ends in a correct log or a clear error naming the file.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use replication_core::{Epoch, EpochClaim, LogError, LogPosition, ReplicaId, Tx, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

mod common;
use common::{records_end, wait_until};

/// Four segments of four records, and a last one of two followed by prepared zeros.
const TXS: u64 = 14;

fn options() -> FileLogOptions {
    FileLogOptions {
        segment_bytes: 250,
        ..FileLogOptions::default()
    }
}

/// The membership every built log saves, so that the sweeps cover the `members` file too.
fn saved_members() -> Vec<ReplicaId> {
    vec![
        ReplicaId::new("node-a", "orders"),
        ReplicaId::new("node-b", "orders"),
    ]
}

/// The epoch claim every built log saves, so that the sweeps cover the `epoch-claim` file.
fn saved_claim() -> EpochClaim {
    EpochClaim::new(Epoch(1), Some(ReplicaId::new("primary", "db")))
}

/// Builds a log of `TXS` transactions in about four segments, with [`saved_members`], and
/// returns the transactions.
fn build(dir: &Path) -> Vec<Tx> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let log = FileLog::open(dir, options()).expect("open");
        let mut prev = LogPosition::START;
        let mut all = Vec::new();
        for i in 0..TXS {
            let tx = Tx::new(prev, Epoch(1), Bytes::from(format!("payload number {i}")));
            prev = tx.position();
            all.push(tx.clone());
            log.append(vec![tx])
                .await
                .expect("append")
                .await
                .expect("durable");
        }
        log.commit(TxId(4)).await.expect("commit");
        log.save_epoch(&saved_claim()).await.expect("epoch");
        log.save_members(saved_members()).await.expect("members");
        // The sweeps below also cover the zeros prepared after the last record: wait for
        // them while the log is open (closing stops the zero-fill thread where it is).
        let last = last_segment(dir).expect("segment");
        wait_until("the active segment is prepared", || {
            fs::metadata(&last).expect("meta").len() >= options().segment_bytes
        });
        all
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "LOCK"))
        .collect();
    files.sort();
    files
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

fn last_segment(dir: &Path) -> Option<PathBuf> {
    segments(dir).pop()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for file in files(from) {
        fs::copy(&file, to.join(file.file_name().expect("name"))).expect("copy");
    }
}

/// Opens and reads everything. `Ok` only for a log that is a prefix of `original` and holds
/// the saved membership.
fn open_and_read(dir: &Path, original: &[Tx]) -> Result<usize, LogError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let log = FileLog::open(dir, options())?;
        let last = log.state().await?.last.tx_id;
        let txs = log.read(TxId(1), 1000, usize::MAX).await?;
        assert_eq!(txs.len() as u64, last.0, "state and reads agree");
        assert_eq!(
            &txs[..],
            &original[..txs.len()],
            "what is read is a prefix of what was written"
        );
        assert_eq!(
            log.members().await?,
            saved_members(),
            "a membership that opens is the one saved"
        );
        assert_eq!(
            log.epoch_claim().await?,
            saved_claim(),
            "an epoch claim that opens is the one saved"
        );
        Ok(txs.len())
    })
}

fn is_active_segment_tail(path: &Path, dir: &Path, offset: u64, original: &[Tx]) -> bool {
    // Damage inside the last record of the last segment looks like a torn write, and is cut.
    let last_segment = last_segment(dir);
    let last_record_len = 8 + 48 + original.last().map(|t| t.payload.len()).unwrap_or(0) as u64;
    last_segment.as_deref() == Some(path) && offset + last_record_len >= records_end(path)
}

#[test]
fn every_bit_flip_is_detected_or_harmless() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let original = build(pristine.path());
    assert!(
        files(pristine.path())
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .count()
            >= 3
    );
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut cases = 0;
    for (file_number, file) in files(pristine.path()).iter().enumerate() {
        let bytes = fs::read(file).expect("read");
        for offset in 0..bytes.len() {
            let dir = scratch.path().join(format!("flip-{file_number}-{offset}"));
            copy_dir(pristine.path(), &dir);
            let target = dir.join(file.file_name().expect("name"));
            let mut damaged = bytes.clone();
            damaged[offset] ^= 1 << (offset % 8);
            fs::write(&target, &damaged).expect("write");
            match open_and_read(&dir, &original) {
                Ok(count) => {
                    let is_meta = target.file_name().is_some_and(|n| n == "meta");
                    assert!(
                        count == original.len()
                            || is_meta
                            || is_active_segment_tail(&target, &dir, offset as u64, &original),
                        "flip at {}:{offset} silently lost transactions ({count} left)",
                        target.display()
                    );
                }
                Err(error) => {
                    let message = error.to_string();
                    assert!(
                        message.contains(".seg")
                            || message.contains(".idx")
                            || message.contains("meta")
                            || message.contains("members")
                            || message.contains("epoch-claim"),
                        "error names no file: {message}"
                    );
                }
            }
            fs::remove_dir_all(&dir).expect("cleanup");
            cases += 1;
        }
    }
    assert!(cases > 500, "{cases} cases");
}

#[test]
fn every_truncation_is_detected_or_a_clean_prefix() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let original = build(pristine.path());
    let scratch = tempfile::tempdir().expect("tempdir");
    for (file_number, file) in files(pristine.path()).iter().enumerate() {
        let len = fs::metadata(file).expect("meta").len();
        for cut in 0..len {
            let dir = scratch.path().join(format!("cut-{file_number}-{cut}"));
            copy_dir(pristine.path(), &dir);
            let target = dir.join(file.file_name().expect("name"));
            fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .expect("open")
                .set_len(cut)
                .expect("truncate");
            if let Ok(count) = open_and_read(&dir, &original) {
                let last_segment = last_segment(&dir).as_ref() == Some(&target);
                let is_meta = target.file_name().is_some_and(|n| n == "meta");
                assert!(
                    count == original.len() || last_segment || is_meta,
                    "cut of {} at {cut} lost data silently",
                    target.display()
                );
            }
            fs::remove_dir_all(&dir).expect("cleanup");
        }
    }
}

#[test]
fn a_missing_segment_or_index_is_an_error_and_indexes_can_be_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = build(dir.path());
    let segments: Vec<PathBuf> = files(dir.path())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();

    let broken = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), broken.path());
    let index = broken
        .path()
        .join(segments[0].with_extension("idx").file_name().expect("name"));
    fs::remove_file(&index).expect("remove index");
    let error = FileLog::open(broken.path(), options())
        .expect_err("missing index")
        .to_string();
    assert!(
        error.contains(".idx") && error.contains("rebuild"),
        "{error}"
    );
    let rebuilt = FileLog::open(
        broken.path(),
        FileLogOptions {
            rebuild_indexes: true,
            ..options()
        },
    )
    .expect("rebuild");
    drop(rebuilt);
    assert_eq!(
        open_and_read(broken.path(), &original).expect("after rebuild"),
        original.len()
    );

    let gap = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), gap.path());
    fs::remove_file(gap.path().join(segments[1].file_name().expect("name")))
        .expect("remove segment");
    let error = FileLog::open(gap.path(), options())
        .expect_err("missing segment")
        .to_string();
    assert!(error.contains(".idx") || error.contains(".seg"), "{error}");
}

#[test]
fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = FileLog::open(dir.path(), options()).expect("open");
    let error = FileLog::open(dir.path(), options())
        .expect_err("second open")
        .to_string();
    assert!(error.contains("in use by another process"), "{error}");
}

#[test]
fn a_torn_tail_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = build(dir.path());
    let last = last_segment(dir.path()).expect("segment");
    let end = records_end(&last);
    assert!(
        fs::metadata(&last).expect("meta").len() > end,
        "zeros follow"
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .set_len(end - 3)
        .expect("truncate");
    assert_eq!(
        open_and_read(dir.path(), &original).expect("recovers"),
        original.len() - 1
    );
}

#[test]
fn a_torn_record_before_prepared_zeros_is_cut_and_the_rest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = build(dir.path());
    let last = last_segment(dir.path()).expect("segment");
    let end = records_end(&last);
    // The end of the last record never reached the disk; the prepared zeros after it did.
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .expect("open")
        .write_all_at(&[0; 3], end - 3)
        .expect("write");
    assert_eq!(
        open_and_read(dir.path(), &original).expect("recovers"),
        original.len() - 1
    );
    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert!(report.torn_tail.is_none(), "the reopened log was repaired");
}

#[test]
fn offline_verify_reports_a_sound_log_and_names_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = build(dir.path());
    let mut seen = Vec::new();
    let report = store_file::verify(dir.path(), |tx| seen.push(tx.clone())).expect("sound");
    assert_eq!(seen, original);
    assert_eq!(report.transactions, TXS);
    assert!(report.torn_tail.is_none());
    assert_eq!(report.members, saved_members());
    assert_eq!(report.epoch_claim, Some(saved_claim()));

    // A flipped bit in the members file: named by file, like a damaged segment.
    let members = dir.path().join("members");
    let mut bytes = fs::read(&members).expect("read");
    let sound = bytes.clone();
    bytes[30] ^= 0x01;
    fs::write(&members, &bytes).expect("write");
    let error = store_file::verify(dir.path(), |_| {})
        .expect_err("damaged members")
        .to_string();
    assert!(
        error.contains(&members.display().to_string()) && error.contains("checksum"),
        "{error}"
    );
    fs::write(&members, &sound).expect("restore");

    // A flipped bit in the middle of the first segment: named by file and offset.
    let first = segments(dir.path()).remove(0);
    let mut bytes = fs::read(&first).expect("read");
    bytes[20] ^= 0x10;
    fs::write(&first, &bytes).expect("write");
    let error = store_file::verify(dir.path(), |_| {})
        .expect_err("damage")
        .to_string();
    assert!(
        error.contains(&first.display().to_string()) && error.contains("offset 0"),
        "{error}"
    );
}
