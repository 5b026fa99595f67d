//! Segment files (`<first tx id>.seg`) and their offset indexes (`<first tx id>.idx`: one
//! little-endian u64 offset per transaction, written when the segment is sealed).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use replication_core::{LogError, LogPosition, Tx, TxId};

use crate::record::{self, Bad};

/// How many bytes a scan reads at a time.
const SCAN_CHUNK: usize = 1 << 20;

pub(crate) fn segment_path(dir: &Path, first: TxId) -> PathBuf {
    dir.join(format!("{:020}.seg", first.0))
}

pub(crate) fn index_path(dir: &Path, first: TxId) -> PathBuf {
    dir.join(format!("{:020}.idx", first.0))
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub first: TxId,
    /// Transactions it holds.
    pub count: u64,
    pub path: PathBuf,
    pub file: Arc<File>,
    /// For a sealed segment, its index file; the active segment's index is in memory.
    pub index: Option<Arc<File>>,
}

impl Segment {
    pub(crate) fn last(&self) -> TxId {
        TxId(self.first.0 + self.count - 1)
    }

    /// The offsets of up to `count` transactions from `id` in a sealed segment, with one read
    /// of its index file.
    pub(crate) fn sealed_offsets(&self, id: TxId, count: usize) -> Result<Vec<u64>, LogError> {
        let index = self
            .index
            .as_ref()
            .ok_or_else(|| LogError::Corrupt("no index".into()))?;
        let start = id.0 - self.first.0;
        let count = (count as u64).min(self.count - start) as usize;
        let mut bytes = vec![0u8; count * 8];
        index.read_exact_at(&mut bytes, start * 8).map_err(|e| {
            LogError::Corrupt(format!(
                "{}: index entries from {id} unreadable: {e}",
                index_path_of(&self.path).display()
            ))
        })?;
        Ok(bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

fn index_path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!("{} at offset {offset}: {reason}", path.display()))
}

/// Reads a file through a window of at least [`SCAN_CHUNK`] bytes.
struct ChunkReader<'a> {
    file: &'a File,
    len: u64,
    buffer: Vec<u8>,
    start: u64,
}

impl<'a> ChunkReader<'a> {
    fn new(file: &'a File, len: u64) -> ChunkReader<'a> {
        ChunkReader {
            file,
            len,
            buffer: Vec::new(),
            start: 0,
        }
    }

    /// The `need` bytes at `offset`, or `None` if the file ends before them.
    fn bytes(&mut self, offset: u64, need: usize) -> std::io::Result<Option<&[u8]>> {
        if offset + need as u64 > self.len {
            return Ok(None);
        }
        let end = self.start + self.buffer.len() as u64;
        if offset < self.start || offset + need as u64 > end {
            let want = (need.max(SCAN_CHUNK) as u64).min(self.len - offset) as usize;
            self.buffer.resize(want, 0);
            self.file.read_exact_at(&mut self.buffer, offset)?;
            self.start = offset;
        }
        let at = (offset - self.start) as usize;
        Ok(Some(&self.buffer[at..at + need]))
    }

    /// The record at `offset`: `Ok(None)` at a clean end of file.
    fn record(&mut self, offset: u64) -> std::io::Result<Option<Result<(Tx, usize), Bad>>> {
        if offset >= self.len {
            return Ok(None);
        }
        let Some(header) = self.bytes(offset, record::FRAME_HEADER)? else {
            return Ok(Some(Err(Bad::Short {
                needed: record::FRAME_HEADER,
            })));
        };
        let body = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        if (body as usize) < record::BODY_FIXED || body as usize > record::MAX_BODY {
            return Ok(Some(Err(Bad::Length(body))));
        }
        let total = record::FRAME_HEADER + body as usize;
        match self.bytes(offset, total)? {
            Some(bytes) => Ok(Some(record::decode(bytes))),
            None => Ok(Some(Err(Bad::Short { needed: total }))),
        }
    }
}

/// Reads transactions from `file` starting at `offset`, expecting ids from `first`, until
/// `max_count`, `max_bytes` (at least one) or `end` (the file's logical length).
pub(crate) fn read_records(
    path: &Path,
    file: &File,
    mut offset: u64,
    end: u64,
    first: TxId,
    max_count: usize,
    max_bytes: usize,
) -> Result<Vec<Tx>, LogError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut reader = ChunkReader::new(file, end);
    while out.len() < max_count {
        let Some(decoded) = reader
            .record(offset)
            .map_err(|e| corrupt(path, offset, e))?
        else {
            break;
        };
        match decoded {
            Ok((tx, len)) => {
                let expected = TxId(first.0 + out.len() as u64);
                if tx.id != expected {
                    return Err(corrupt(
                        path,
                        offset,
                        format_args!("holds transaction {} where {expected} belongs", tx.id),
                    ));
                }
                if !out.is_empty() && bytes + tx.payload.len() > max_bytes {
                    break;
                }
                bytes += tx.payload.len();
                offset += len as u64;
                out.push(tx);
            }
            Err(Bad::Short { .. }) => {
                return Err(corrupt(
                    path,
                    offset,
                    "record runs past the end of the segment",
                ));
            }
            Err(Bad::Length(len)) => {
                return Err(corrupt(
                    path,
                    offset,
                    format_args!("impossible record length {len}"),
                ));
            }
            Err(Bad::Crc) => return Err(corrupt(path, offset, "record fails its CRC32C")),
        }
    }
    Ok(out)
}

/// Reads the records at `offsets` (ids from `first`), which end at `end`, with one read into
/// one buffer that their payloads share: no copy per transaction. Every record must match the
/// index exactly and pass its CRC.
pub(crate) fn read_planned(
    path: &Path,
    file: &File,
    first: TxId,
    offsets: &[u64],
    end: u64,
) -> Result<Vec<Tx>, LogError> {
    let Some(&start) = offsets.first() else {
        return Ok(Vec::new());
    };
    if end < start || end - start > (record::MAX_BODY as u64) * (offsets.len() as u64 + 1) {
        return Err(corrupt(path, start, "index offsets out of range"));
    }
    let buffer = read_exact_uninit(file, (end - start) as usize, start)
        .map_err(|e| corrupt(path, start, format_args!("unreadable: {e}")))?;
    let buffer = Bytes::from(buffer);
    let mut txs = Vec::with_capacity(offsets.len());
    for (i, &offset) in offsets.iter().enumerate() {
        let next = offsets.get(i + 1).copied().unwrap_or(end);
        if next <= offset || offset < start {
            return Err(corrupt(path, offset, "index offsets out of order"));
        }
        let record = buffer.slice((offset - start) as usize..(next - start) as usize);
        let tx = record::decode_shared(&record).map_err(|bad| match bad {
            Bad::Crc => corrupt(path, offset, "record fails its CRC32C"),
            Bad::Length(len) => corrupt(
                path,
                offset,
                format_args!("record length {len} disagrees with the index"),
            ),
            Bad::Short { .. } => corrupt(path, offset, "record runs past the end of the segment"),
        })?;
        let expected = TxId(first.0 + i as u64);
        if tx.id != expected {
            return Err(corrupt(
                path,
                offset,
                format_args!("holds transaction {} where {expected} belongs", tx.id),
            ));
        }
        txs.push(tx);
    }
    Ok(txs)
}

/// Reads exactly `len` bytes at `offset` into a new buffer without zeroing it first: the read
/// fills uninitialised capacity (rustix's `spare_capacity`), which saves a pass over every
/// byte a catching-up replica reads.
fn read_exact_uninit(file: &File, len: usize, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(len);
    while buffer.len() < len {
        let at = offset + buffer.len() as u64;
        let spare = rustix::buffer::spare_capacity(&mut buffer);
        match rustix::io::pread(file, spare, at) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    // The allocator may have given more capacity than asked for, and the file may go on.
    buffer.truncate(len);
    Ok(buffer)
}

/// The outcome of scanning the active segment on open.
pub(crate) struct Scan {
    pub offsets: Vec<u64>,
    /// The last valid transaction, if the segment holds any.
    pub last: Option<LogPosition>,
    /// Where valid data ends; beyond it are zeros (prepared space) or a torn write.
    pub valid_len: u64,
    /// Whether a torn write (not just zeros) follows `valid_len`.
    pub torn: bool,
}

/// Scans a whole segment, checking CRCs, dense ids and the hash chain from `prev`. Zeros to the
/// end of the file are a clean end (prepared space). A bad record followed by nothing but
/// zeros is a torn write (the scan stops before it); a bad record followed by more (non-zero)
/// data is corruption.
pub(crate) fn scan(
    path: &Path,
    file: &File,
    first: TxId,
    prev: Option<LogPosition>,
) -> Result<Scan, LogError> {
    let len = file.metadata()?.len();
    let mut offsets = Vec::new();
    let mut offset = 0u64;
    let mut last = prev;
    let mut reader = ChunkReader::new(file, len);
    while let Some(decoded) = reader.record(offset)? {
        match decoded {
            Ok((tx, size)) => {
                let expected = TxId(first.0 + offsets.len() as u64);
                if tx.id != expected {
                    return Err(corrupt(
                        path,
                        offset,
                        format_args!("holds transaction {} where {expected} belongs", tx.id),
                    ));
                }
                if let Some(Err(error)) = last.map(|prev| tx.verify_follows(&prev)) {
                    return Err(corrupt(path, offset, error));
                }
                offsets.push(offset);
                last = Some(tx.position());
                offset += size as u64;
            }
            Err(bad) => {
                let record_end = match bad {
                    Bad::Short { needed } => offset.saturating_add(needed as u64),
                    Bad::Crc => {
                        let header = reader.bytes(offset, 4)?.unwrap_or(&[0; 4]);
                        let body = u32::from_le_bytes(header.try_into().expect("4 bytes"));
                        offset + record::FRAME_HEADER as u64 + u64::from(body)
                    }
                    Bad::Length(_) => offset + record::FRAME_HEADER as u64,
                };
                if record_end < len && !tail_is_zero(file, record_end, len)? {
                    return Err(corrupt(
                        path,
                        offset,
                        format_args!("damaged record ({bad:?}) followed by more data"),
                    ));
                }
                let last = if offsets.is_empty() { None } else { last };
                let torn = !tail_is_zero(file, offset, record_end.min(len))?;
                return Ok(Scan {
                    offsets,
                    last,
                    valid_len: offset,
                    torn,
                });
            }
        }
    }
    let last = if offsets.is_empty() { None } else { last };
    Ok(Scan {
        offsets,
        last,
        valid_len: len,
        torn: false,
    })
}

fn tail_is_zero(file: &File, from: u64, to: u64) -> Result<bool, LogError> {
    let mut buffer = vec![0u8; (to - from).min(SCAN_CHUNK as u64) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buffer.len());
        file.read_exact_at(&mut buffer[..n], at)?;
        if buffer[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Writes the index file of a segment being sealed, durably.
pub(crate) fn write_index(dir: &Path, first: TxId, offsets: &[u64]) -> Result<Arc<File>, LogError> {
    let path = index_path(dir, first);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let bytes: Vec<u8> = offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
    file.write_all_at(&bytes, 0)?;
    file.sync_all()?;
    Ok(Arc::new(file))
}

/// Reads and checks a sealed segment's index: one offset per transaction, starting at zero,
/// strictly increasing, inside the segment.
pub(crate) fn load_index(
    dir: &Path,
    first: TxId,
    count: u64,
    segment_len: u64,
) -> Result<Vec<u64>, LogError> {
    let path = index_path(dir, first);
    let file = File::open(&path).map_err(|e| {
        LogError::Corrupt(format!(
            "{}: cannot open the index: {e} (rebuild it with FileLogOptions::rebuild_indexes)",
            path.display()
        ))
    })?;
    let len = file.metadata()?.len();
    if len != count * 8 {
        return Err(corrupt(
            &path,
            0,
            format_args!("index holds {} entries for {count} transactions", len / 8),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)?;
    let offsets: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
        .collect();
    let ordered = offsets.first() == Some(&0) && offsets.windows(2).all(|w| w[0] < w[1]);
    if !ordered || offsets.last().is_some_and(|&o| o >= segment_len) {
        return Err(corrupt(
            &path,
            0,
            "offsets out of order or beyond the segment",
        ));
    }
    Ok(offsets)
}
