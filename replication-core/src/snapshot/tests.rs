use super::*;
use crate::types::TxId;

/// An export of fixed pieces.
struct Pieces(Vec<Bytes>);

impl SnapshotExport for Pieces {
    fn next_chunk(&mut self, _max: usize) -> Result<Option<Bytes>, SnapshotError> {
        Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
    }
}

/// An export of `total` bytes (a counting pattern), cut at whatever size is asked, failing
/// after `fail_after` chunks if given.
struct Counting {
    total: usize,
    sent: usize,
    fail_after: Option<usize>,
    chunks: usize,
}

fn counting(total: usize, fail_after: Option<usize>) -> Counting {
    Counting {
        total,
        sent: 0,
        fail_after,
        chunks: 0,
    }
}

impl SnapshotExport for Counting {
    fn next_chunk(&mut self, max: usize) -> Result<Option<Bytes>, SnapshotError> {
        if self.fail_after == Some(self.chunks) {
            return Err(SnapshotError::Io("the export broke".into()));
        }
        if self.sent == self.total {
            return Ok(None);
        }
        let n = max.min(self.total - self.sent);
        let data: Vec<u8> = (self.sent..self.sent + n)
            .map(|i| (i % 251) as u8)
            .collect();
        self.sent += n;
        self.chunks += 1;
        Ok(Some(Bytes::from(data)))
    }
}

fn format() -> SnapshotFormat {
    SnapshotFormat {
        name: "test".into(),
        version: 3,
    }
}

fn position(tx: u64) -> LogPosition {
    LogPosition {
        tx_id: TxId(tx),
        hash: crate::types::TxHash([tx as u8; 32]),
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut file = SnapshotFile::open(path)?;
    let mut data = Vec::new();
    while let Some(chunk) = file.next_chunk()? {
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

#[test]
fn a_snapshot_is_written_in_bounded_chunks_and_read_back_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap");
    let mut export = counting(10_000, None);
    let meta = SnapshotFile::write(&path, format(), position(42), Epoch(7), &mut export, 1_000)
        .expect("written");
    assert_eq!(meta.format, format());
    assert_eq!(meta.last, position(42));
    assert_eq!(meta.last_epoch, Epoch(7));
    assert_eq!((meta.chunks, meta.bytes), (10, 10_000));
    let mut file = SnapshotFile::open(&path).expect("open");
    let mut expected = 0usize;
    while let Some(chunk) = file.next_chunk().expect("a chunk") {
        assert_eq!(chunk.index as usize, expected / 1_000);
        assert!(chunk.data.len() <= 1_000);
        for byte in chunk.data.iter() {
            assert_eq!(*byte, (expected % 251) as u8);
            expected += 1;
        }
    }
    assert_eq!(expected, 10_000);
    assert_eq!(SnapshotFile::verify(&path), Ok(meta));
    assert!(!temporary_path(&path).exists());
}

#[test]
fn an_empty_state_makes_a_snapshot_of_no_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap");
    let meta = SnapshotFile::write(
        &path,
        format(),
        LogPosition::START,
        Epoch(0),
        &mut Pieces(Vec::new()),
        64,
    )
    .expect("written");
    assert_eq!((meta.chunks, meta.bytes), (0, 0));
    assert_eq!(read_all(&path), Ok(Vec::new()));
    assert_eq!(SnapshotFile::verify(&path), Ok(meta));
}

#[test]
fn a_failed_export_leaves_no_snapshot_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap");
    let mut export = counting(10_000, Some(3));
    let error = SnapshotFile::write(&path, format(), position(1), Epoch(1), &mut export, 100)
        .expect_err("the export broke");
    assert_eq!(error, SnapshotError::Io("the export broke".into()));
    assert!(!path.exists(), "a snapshot file exists only whole");
}

#[test]
fn an_export_that_overruns_the_chunk_size_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap");
    let mut export = Pieces(vec![Bytes::from(vec![1u8; 65])]);
    let error = SnapshotFile::write(&path, format(), position(1), Epoch(1), &mut export, 64)
        .expect_err("too big");
    assert!(matches!(error, SnapshotError::Refused(_)), "{error:?}");
    assert!(!path.exists());
}

/// Every byte flipped, and every truncation, of a small snapshot file: an error naming
/// corruption or I/O, never a panic and never the original data passed as intact.
#[test]
fn every_flipped_byte_and_every_truncation_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("snap");
    let pieces = vec![
        Bytes::from("first"),
        Bytes::from("second"),
        Bytes::from("x"),
    ];
    SnapshotFile::write(
        &path,
        format(),
        position(9),
        Epoch(2),
        &mut Pieces(pieces),
        64,
    )
    .expect("written");
    let original = std::fs::read(&path).expect("read");
    let damaged = dir.path().join("damaged");
    for at in 0..original.len() {
        let mut bytes = original.clone();
        bytes[at] ^= 0x40;
        std::fs::write(&damaged, &bytes).expect("write");
        let verified = SnapshotFile::verify(&damaged);
        assert!(verified.is_err(), "byte {at} flipped passed: {verified:?}");
    }
    for length in 0..original.len() {
        std::fs::write(&damaged, &original[..length]).expect("write");
        assert!(
            SnapshotFile::verify(&damaged).is_err(),
            "truncated to {length} passed"
        );
    }
}

#[test]
fn a_chunk_received_with_another_hash_is_refused() {
    let mut chunk = SnapshotChunk::new(4, Bytes::from("payload"));
    assert_eq!(chunk.verify(), Ok(()));
    chunk.data = Bytes::from("paylaod");
    let error = chunk.verify().expect_err("corrupt");
    assert!(
        matches!(error, SnapshotError::Corrupt { chunk: 4, .. }),
        "{error:?}"
    );
    let oversized = SnapshotChunk::new(0, Bytes::from(vec![0u8; MAX_CHUNK_BYTES + 1]));
    assert!(oversized.verify().is_err());
}

#[test]
fn the_recording_state_machine_moves_through_a_snapshot_and_goes_on_in_order() {
    use crate::StateMachine;
    use crate::testing::RecordingStateMachine;
    let mut source = RecordingStateMachine::default();
    let mut previous = LogPosition::START;
    let mut txs = Vec::new();
    for i in 1..=30u64 {
        let tx = crate::types::Tx::new(previous, Epoch(1), Bytes::from(format!("tx{i}")));
        previous = tx.position();
        txs.push(tx);
    }
    for tx in &txs[..20] {
        source.apply(tx);
    }
    let (last, mut export) = source.export().expect("export");
    assert_eq!(last, TxId(20));
    let mut replica = RecordingStateMachine::default();
    let format = replica.snapshot_format().expect("a format");
    let mut stage = replica.stage(&format, last).expect("stage");
    while let Some(data) = export.next_chunk(33).expect("chunk") {
        stage.write(&data).expect("write");
    }
    stage.commit().expect("commit");
    assert_eq!(replica.positions(), source.positions());
    // The log follows from the snapshot's transaction, in order.
    for tx in &txs[20..] {
        replica.apply(tx);
    }
    assert_eq!(replica.applied(), TxId(30));
    assert_eq!(replica.order_violation(), None);
    let other = SnapshotFormat {
        name: "recording".into(),
        version: 2,
    };
    assert!(matches!(
        replica.stage(&other, last).err(),
        Some(SnapshotError::FormatMismatch { .. })
    ));
}
