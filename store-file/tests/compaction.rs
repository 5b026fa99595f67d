//! Compaction and reset across crashes: a crash at every step of `compact` and `reset_to`
//! (stopped there by `FileLog::crash_after_steps`, every step being synced) leaves a directory
//! that the offline verify accepts and that opens as the old log or the new one, never a mix;
//! and hand-made crash states and damage around the `base` file.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use replication_core::{
    Epoch, EpochClaim, LogBase, LogError, LogPosition, ReplicaId, Tx, TxHash, TxId, TxLog,
};
use store_file::{FileLog, FileLogOptions};

/// Five segments of four records: 1-4, 5-8, 9-12 and 13-16 sealed, 17-20 active.
const TXS: usize = 20;
/// The commit point of the built log.
const COMMITTED: TxId = TxId(14);

fn options() -> FileLogOptions {
    FileLogOptions {
        segment_bytes: 250,
        ..FileLogOptions::default()
    }
}

fn members() -> Vec<ReplicaId> {
    vec![ReplicaId::new("a", "db"), ReplicaId::new("b", "db")]
}

fn claim() -> EpochClaim {
    EpochClaim::new(Epoch(1), Some(ReplicaId::new("primary", "db")))
}

fn chain(prev: LogPosition, epoch: Epoch, count: usize, tag: &str) -> Vec<Tx> {
    let mut prev = prev;
    (0..count)
        .map(|i| {
            let tx = Tx::new(prev, epoch, Bytes::from(format!("{tag} number {i:03}")));
            prev = tx.position();
            tx
        })
        .collect()
}

/// Builds the log in `dir` (one append per transaction: a full segment is sealed at the start
/// of the next append), with [`COMMITTED`], [`claim`] and [`members`].
async fn build(dir: &Path, tag: &str) -> Vec<Tx> {
    let log = FileLog::open(dir, options()).expect("open");
    let txs = chain(LogPosition::START, Epoch(1), TXS, tag);
    for tx in &txs {
        log.append(vec![tx.clone()])
            .await
            .expect("append")
            .await
            .expect("durable");
    }
    log.commit(COMMITTED).await.expect("commit");
    log.save_epoch(&claim()).await.expect("epoch");
    log.save_members(members()).await.expect("members");
    txs
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .expect("dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.file_name().is_some_and(|name| name != "LOCK"))
        .collect();
    files.sort();
    files
}

/// The first ids of the files with extension `ext`.
fn firsts(dir: &Path, ext: &str) -> Vec<u64> {
    files(dir)
        .iter()
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| {
            path.file_stem()
                .and_then(|stem| stem.to_str())
                .and_then(|stem| stem.parse().ok())
                .expect("an id")
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for file in files(from) {
        fs::copy(&file, to.join(file.file_name().expect("name"))).expect("copy");
    }
}

fn segment(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn base_of(tx: &Tx) -> LogBase {
    LogBase {
        position: tx.position(),
        epoch: tx.epoch,
    }
}

async fn read_all_from(log: &FileLog, from: TxId) -> Vec<Tx> {
    log.read(from, 1000, usize::MAX).await.expect("read")
}

async fn assert_removed(log: &FileLog, id: TxId, first_retained: TxId) {
    match log.read(id, 1, usize::MAX).await {
        Err(LogError::Removed {
            first_retained: first,
            ..
        }) => assert_eq!(first, first_retained),
        other => panic!("a read of {id} must fail with Removed: {other:?}"),
    }
}

#[tokio::test]
async fn a_crash_at_every_step_of_a_compaction_leaves_the_old_log_or_the_new_one() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let txs = build(pristine.path(), "history").await;
    assert_eq!(firsts(pristine.path(), "seg"), [1, 5, 9, 13, 17]);
    // Segments 1-4, 5-8 and 9-12 are wholly committed: the compaction removes them.
    let base = base_of(&txs[11]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut interrupted = 0;
    let mut steps = 0;
    loop {
        let dir = scratch.path().join(steps.to_string());
        copy_dir(pristine.path(), &dir);
        let log = FileLog::open(&dir, options()).expect("open");
        log.crash_after_steps(steps);
        let result = log.compact(TxId(16)).await;
        drop(log);

        let report = store_file::verify(&dir, |_| {})
            .unwrap_or_else(|error| panic!("step {steps}: verify the crashed log: {error}"));
        interrupted += usize::from(report.unfinished.is_some());
        let log = FileLog::open(&dir, options())
            .unwrap_or_else(|error| panic!("step {steps}: reopen: {error}"));
        let got = log.base().await.expect("base");
        assert!(
            got == LogBase::START || got == base,
            "step {steps}: the base is the old or the new one: {got:?}"
        );
        assert_eq!(report.base.unwrap_or(LogBase::START), got, "step {steps}");
        let state = log.state().await.expect("state");
        assert_eq!(state.last, txs[TXS - 1].position(), "step {steps}: last");
        assert_eq!(state.durable, state.last, "step {steps}: durable");
        assert_eq!(
            state.committed,
            txs[13].position(),
            "step {steps}: committed"
        );
        assert_eq!(
            read_all_from(&log, got.first()).await,
            txs[got.first().0 as usize - 1..].to_vec(),
            "step {steps}: what follows the base"
        );
        assert_eq!(log.first(), got.first(), "step {steps}");
        if got == base {
            assert_removed(&log, TxId(1), TxId(13)).await;
            assert_removed(&log, TxId(12), TxId(13)).await;
            assert_eq!(firsts(&dir, "seg"), [13, 17], "step {steps}: segments");
            assert_eq!(firsts(&dir, "idx"), [13], "step {steps}: indexes");
        } else {
            assert_eq!(read_all_from(&log, TxId(1)).await, txs, "step {steps}");
        }
        assert_eq!(log.epoch_claim().await.expect("claim"), claim());
        assert_eq!(log.members().await.expect("members"), members());
        // The log goes on: appends, and a compaction that finishes the work.
        let more = chain(txs[TXS - 1].position(), Epoch(1), 2, "more");
        log.append(more.clone())
            .await
            .expect("append")
            .await
            .expect("durable");
        assert_eq!(log.compact(TxId(16)).await.expect("compact again"), base);
        drop(log);
        let report = store_file::verify(&dir, |_| {}).expect("verify after reopen");
        assert_eq!(
            report.unfinished, None,
            "step {steps}: the open finished it"
        );
        assert_eq!(report.last, more[1].position());

        if result.is_ok() {
            assert_eq!(got, base, "a compaction that returned is done");
            break;
        }
        assert!(
            matches!(result, Err(LogError::Failed { .. })),
            "step {steps}: the test hook fails the log: {result:?}"
        );
        steps += 1;
        assert!(steps < 100, "the compaction never completes");
    }
    assert!(steps >= 5, "the compaction had steps to crash in ({steps})");
    assert!(
        interrupted >= 4,
        "crashes left segments below the base for the open to remove ({interrupted})"
    );
}

#[tokio::test]
async fn a_crash_at_every_step_of_a_reset_leaves_the_old_log_or_the_new_one() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let txs = build(pristine.path(), "history").await;
    // A snapshot of another history, of a higher epoch, whose base ends at 12: the new log's
    // first segment, 13, has the name of one of the old log's.
    let other = chain(LogPosition::START, Epoch(2), 12, "snapshot");
    let base = base_of(&other[11]);
    assert_ne!(base.position, txs[11].position());
    let raised = EpochClaim::new(Epoch(2), None);
    let scratch = tempfile::tempdir().expect("tempdir");
    let (mut old, mut new, mut interrupted) = (0, 0, 0);
    let mut steps = 0;
    loop {
        let dir = scratch.path().join(steps.to_string());
        copy_dir(pristine.path(), &dir);
        let log = FileLog::open(&dir, options()).expect("open");
        log.crash_after_steps(steps);
        let result = log.reset_to(base).await;
        drop(log);

        let report = store_file::verify(&dir, |_| {})
            .unwrap_or_else(|error| panic!("step {steps}: verify the crashed log: {error}"));
        interrupted += usize::from(report.unfinished.is_some());
        let log = FileLog::open(&dir, options())
            .unwrap_or_else(|error| panic!("step {steps}: reopen: {error}"));
        let state = log.state().await.expect("state");
        if state.last == txs[TXS - 1].position() {
            old += 1;
            assert!(
                result.is_err(),
                "step {steps}: a reset that returned is done"
            );
            assert_eq!(report.last, state.last, "step {steps}");
            assert_eq!(log.base().await.expect("base"), LogBase::START);
            assert_eq!(read_all_from(&log, TxId(1)).await, txs, "step {steps}");
            assert_eq!(state.committed, txs[13].position(), "step {steps}");
            assert_eq!(log.epoch_claim().await.expect("claim"), claim());
        } else {
            new += 1;
            assert_eq!(state.last, base.position, "step {steps}: old or new");
            assert_eq!(report.last, base.position, "step {steps}: verify");
            assert_eq!(report.transactions, 0, "step {steps}: verify");
            assert_eq!(state.durable, base.position, "step {steps}");
            assert_eq!(state.committed, base.position, "step {steps}");
            assert_eq!(state.epoch, Epoch(2), "step {steps}: the base's epoch");
            assert_eq!(log.base().await.expect("base"), base, "step {steps}");
            assert_eq!(log.epoch_claim().await.expect("claim"), raised);
            assert_removed(&log, TxId(1), TxId(13)).await;
            assert_removed(&log, TxId(12), TxId(13)).await;
            assert!(read_all_from(&log, TxId(13)).await.is_empty());
            assert_eq!(firsts(&dir, "seg"), [13], "step {steps}: segments");
            assert!(firsts(&dir, "idx").is_empty(), "step {steps}: indexes");
        }
        assert_eq!(log.members().await.expect("members"), members());
        // Whichever it is, it goes on.
        let last = log.state().await.expect("state").last;
        let next = chain(last, Epoch(2), 3, "next");
        log.append(next.clone())
            .await
            .expect("append")
            .await
            .expect("durable");
        drop(log);
        let log = FileLog::open(&dir, options()).expect("reopen");
        assert_eq!(log.state().await.expect("state").last, next[2].position());
        assert_eq!(read_all_from(&log, last.tx_id.next()).await, next);
        drop(log);
        let report = store_file::verify(&dir, |_| {}).expect("verify after appends");
        assert_eq!(report.unfinished, None);
        assert_eq!(report.last, next[2].position());

        if result.is_ok() {
            break;
        }
        steps += 1;
        assert!(steps < 100, "the reset never completes");
    }
    assert!(old >= 1 && new >= 5, "old {old}, new {new}");
    assert!(
        interrupted >= 4,
        "crashes left resets for the open to finish ({interrupted})"
    );
}

/// The log's retention removed the segment before the active one, and the crash came right
/// after the next was begun, before any record in it reached the disk: the log holds nothing
/// after its base. Without the base file its last position would be unknown.
#[tokio::test]
async fn an_empty_first_segment_after_the_base_opens_at_the_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = FileLog::open(dir.path(), options()).expect("open");
    let txs = chain(LogPosition::START, Epoch(1), 17, "history");
    for tx in &txs {
        log.append(vec![tx.clone()])
            .await
            .expect("append")
            .await
            .expect("durable");
    }
    log.commit(TxId(16)).await.expect("commit");
    let base = log.compact(TxId(16)).await.expect("compact");
    assert_eq!(base, base_of(&txs[15]));
    drop(log);
    assert_eq!(firsts(dir.path(), "seg"), [17]);
    fs::OpenOptions::new()
        .write(true)
        .open(segment(dir.path(), 17))
        .expect("open")
        .set_len(0)
        .expect("cut");
    let legacy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), legacy.path());

    let log = FileLog::open(dir.path(), options()).expect("reopen");
    let state = log.state().await.expect("state");
    assert_eq!(
        state.last,
        txs[15].position(),
        "the base is the last position"
    );
    assert_eq!(state.durable, txs[15].position());
    assert_eq!(state.committed, txs[15].position());
    assert_eq!(log.base().await.expect("base"), base);
    log.append(vec![txs[16].clone()])
        .await
        .expect("append after the base")
        .await
        .expect("durable");
    drop(log);
    let log = FileLog::open(dir.path(), options()).expect("reopen");
    assert_eq!(log.state().await.expect("state").last, txs[16].position());
    drop(log);

    // A log written before base files, in the same state: nothing says what the next
    // transaction must chain from. The open says so, naming the segment; so does verify.
    fs::remove_file(legacy.path().join("base")).expect("remove base");
    let error = FileLog::open(legacy.path(), options())
        .expect_err("unknown chain")
        .to_string();
    assert!(
        error.contains(&segment(legacy.path(), 17).display().to_string())
            && error.contains("unknown"),
        "{error}"
    );
    let error = store_file::verify(legacy.path(), |_| {})
        .expect_err("unknown chain")
        .to_string();
    assert!(error.contains("unknown"), "{error}");
}

/// A log whose retention removed segments before base files existed opens as it always did
/// (the chain checked from its first transaction on), and its next compaction records a base.
#[tokio::test]
async fn a_log_compacted_before_base_files_opens_and_its_next_compaction_records_a_base() {
    let dir = tempfile::tempdir().expect("tempdir");
    let txs = build(dir.path(), "history").await;
    let log = FileLog::open(dir.path(), options()).expect("open");
    assert_eq!(log.remove_before(TxId(9)).expect("remove"), TxId(9));
    drop(log);
    fs::remove_file(dir.path().join("base")).expect("remove base");

    let report = store_file::verify(dir.path(), |_| {}).expect("verify");
    assert_eq!((report.base, report.first), (None, TxId(9)));
    assert_eq!(report.last, txs[TXS - 1].position());
    let log = FileLog::open(dir.path(), options()).expect("open");
    let state = log.state().await.expect("state");
    assert_eq!(state.last, txs[TXS - 1].position());
    assert_eq!(state.committed, txs[13].position());
    assert_eq!(read_all_from(&log, TxId(9)).await, txs[8..].to_vec());
    assert_removed(&log, TxId(8), TxId(9)).await;
    // The id is known, the hash is not.
    let unknown = log.base().await.expect("base");
    assert_eq!(unknown.position.tx_id, TxId(8));
    assert_eq!(unknown.position.hash, TxHash::GENESIS);

    let base = log.compact(TxId(14)).await.expect("compact");
    assert_eq!(base, base_of(&txs[11]));
    drop(log);
    let log = FileLog::open(dir.path(), options()).expect("open");
    assert_eq!(log.base().await.expect("base"), base);
    assert_eq!(read_all_from(&log, TxId(13)).await, txs[12..].to_vec());
}

#[tokio::test]
async fn damage_around_the_base_is_named() {
    let pristine = tempfile::tempdir().expect("tempdir");
    let txs = build(pristine.path(), "history").await;
    let pristine_full = tempfile::tempdir().expect("tempdir");
    copy_dir(pristine.path(), pristine_full.path());
    let log = FileLog::open(pristine.path(), options()).expect("open");
    assert_eq!(
        log.compact(TxId(12)).await.expect("compact"),
        base_of(&txs[11])
    );
    drop(log);
    let scratch = tempfile::tempdir().expect("tempdir");

    // An interrupted save of the base: the temporary file is ignored and removed.
    let dir = scratch.path().join("tmp");
    copy_dir(pristine.path(), &dir);
    fs::write(dir.join("base.tmp"), b"half a base").expect("write");
    let log = FileLog::open(&dir, options()).expect("open");
    assert_eq!(log.base().await.expect("base"), base_of(&txs[11]));
    assert!(!dir.join("base.tmp").exists());
    drop(log);

    // The first segment after the base is missing.
    let dir = scratch.path().join("missing");
    copy_dir(pristine.path(), &dir);
    fs::remove_file(segment(&dir, 13)).expect("remove");
    let error = FileLog::open(&dir, options())
        .expect_err("missing segment")
        .to_string();
    assert!(
        error.contains(&segment(&dir, 17).display().to_string())
            && error.contains(&segment(&dir, 13).display().to_string())
            && error.contains("missing"),
        "{error}"
    );
    let error = store_file::verify(&dir, |_| {})
        .expect_err("missing segment")
        .to_string();
    assert!(error.contains("missing"), "{error}");

    // The base of another history: the first segment does not chain from it.
    let other = scratch.path().join("other");
    build(&other, "another history").await;
    let log = FileLog::open(&other, options()).expect("open");
    log.compact(TxId(12)).await.expect("compact");
    drop(log);
    let dir = scratch.path().join("foreign");
    copy_dir(pristine.path(), &dir);
    fs::copy(other.join("base"), dir.join("base")).expect("copy base");
    // Left below the base by an interrupted compaction: kept, since the base is refused.
    for first in [1, 5, 9] {
        fs::copy(segment(pristine_full.path(), first), segment(&dir, first)).expect("copy");
    }
    let error = FileLog::open(&dir, options())
        .expect_err("foreign base")
        .to_string();
    assert!(
        error.contains(&segment(&dir, 13).display().to_string()) && error.contains("base"),
        "{error}"
    );
    assert_eq!(
        firsts(&dir, "seg"),
        [1, 5, 9, 13, 17],
        "a refused base removes nothing"
    );
    let error = store_file::verify(&dir, |_| {})
        .expect_err("foreign base")
        .to_string();
    assert!(
        error.contains(&segment(&dir, 13).display().to_string()),
        "{error}"
    );

    // Every flipped bit and every cut of the base file fails the open, naming it.
    let bytes = fs::read(pristine.path().join("base")).expect("read");
    let dir = scratch.path().join("flips");
    copy_dir(pristine.path(), &dir);
    let damaged = (0..bytes.len() * 8)
        .map(|bit| {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            flipped
        })
        .chain((0..bytes.len()).map(|cut| bytes[..cut].to_vec()));
    for damaged in damaged {
        fs::write(dir.join("base"), &damaged).expect("write");
        let error = FileLog::open(&dir, options())
            .expect_err("damaged base")
            .to_string();
        assert!(
            error.contains(&dir.join("base").display().to_string()),
            "{error}"
        );
    }
}

#[tokio::test]
async fn the_directory_lists_the_segments_an_open_log_holds_and_compaction_removes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    build(dir.path(), "sizes").await;
    let log = FileLog::open(dir.path(), options()).expect("open");
    let listed = store_file::segment_sizes(dir.path()).expect("list");
    let open = log.segments();
    let firsts = |segments: &[(TxId, u64)]| segments.iter().map(|s| s.0).collect::<Vec<_>>();
    assert_eq!(firsts(&listed), firsts(&open));
    assert_eq!(
        firsts(&listed),
        vec![TxId(1), TxId(5), TxId(9), TxId(13), TxId(17)]
    );
    // Sealed segments are exact; the active one may count space prepared ahead.
    assert_eq!(listed[..4], open[..4]);
    assert!(listed[4].1 >= open[4].1);
    log.compact(TxId(12)).await.expect("compact");
    assert_eq!(
        firsts(&store_file::segment_sizes(dir.path()).expect("list")),
        vec![TxId(13), TxId(17)]
    );
}
