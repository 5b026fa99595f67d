//! Snapshots: a state machine's state as of one log position, cut into checksummed chunks, so
//! that a new replica starts from it instead of the whole history, and the log below it can
//! be cut.
//!
//! The pieces, from the state machine outwards:
//! - a [`StateMachine`](crate::StateMachine) that supports snapshots names its
//!   [`SnapshotFormat`] and [exports](crate::StateMachine::export) its state as of its last
//!   applied transaction through a [`SnapshotExport`], a read view that writes do not wait
//!   for; it [stages](crate::StateMachine::stage) a received one through a [`SnapshotStage`]
//!   and switches to it atomically on [`commit`](SnapshotStage::commit);
//! - a [`SnapshotFile`] keeps an export on disk, chunk by chunk, each with its BLAKE3 hash,
//!   and the [`SnapshotMeta`] last: the position it stands for, the format, and a digest of
//!   every chunk hash. It is written to a temporary name, synced and renamed, so a snapshot
//!   file that exists is complete; it is read back one chunk at a time, each verified, so
//!   neither side ever holds more than a chunk, whatever the snapshot's size.
//!
//! ```
//! use bytes::Bytes;
//! use replication_core::snapshot::{SnapshotExport, SnapshotFile, SnapshotFormat, SnapshotError};
//! use replication_core::types::{Epoch, LogPosition};
//!
//! /// An export of three fixed pieces.
//! struct Pieces(Vec<Bytes>);
//! impl SnapshotExport for Pieces {
//!     fn next_chunk(&mut self, _max: usize) -> Result<Option<Bytes>, SnapshotError> {
//!         Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
//!     }
//! }
//!
//! let dir = std::env::temp_dir().join(format!("snapshot-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("snapshot");
//! let format = SnapshotFormat { name: "pieces".into(), version: 1 };
//! let mut export = Pieces(vec![Bytes::from("a"), Bytes::from("bc"), Bytes::from("def")]);
//! let meta = SnapshotFile::write(&path, format, LogPosition::START, Epoch(1), &mut export, 1 << 20)
//!     .unwrap();
//! assert_eq!((meta.chunks, meta.bytes), (3, 6));
//!
//! let mut file = SnapshotFile::open(&path).unwrap();
//! assert_eq!(file.meta(), &meta);
//! let mut data = Vec::new();
//! while let Some(chunk) = file.next_chunk().unwrap() {
//!     data.extend_from_slice(&chunk.data);
//! }
//! assert_eq!(data, b"abcdef");
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Epoch, LogPosition};

/// The largest chunk a snapshot file holds or a peer accepts: both sides' memory per
/// transfer is bounded by a few of these.
pub const MAX_CHUNK_BYTES: usize = 4 << 20;

/// What a state machine's snapshots are: a name for their format and its version. A replica
/// installs only a snapshot of the format its own state machine names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotFormat {
    /// The format's name, chosen by the state machine (for example `repnode-kv`).
    pub name: String,
    /// Its version: raised whenever the bytes change meaning.
    pub version: u32,
}

impl std::fmt::Display for SnapshotFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.name, self.version)
    }
}

/// What a snapshot is: the log position it stands for, its format and its size, and a digest
/// of its chunks' hashes, which a receiver checks once it holds them all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The format of its data.
    pub format: SnapshotFormat,
    /// The last transaction it includes, with that transaction's chain hash: the log that
    /// follows it must chain from this hash.
    pub last: LogPosition,
    /// The epoch of that transaction.
    pub last_epoch: Epoch,
    /// How many chunks it has.
    pub chunks: u64,
    /// How many data bytes, all chunks together.
    pub bytes: u64,
    /// BLAKE3 of the chunks' hashes, in order.
    pub digest: [u8; 32],
}

/// One chunk of a snapshot, as read from a [`SnapshotFile`] or received from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Its place, from 0.
    pub index: u64,
    /// Its data.
    pub data: Bytes,
    /// The BLAKE3 hash of `data`, as the writer computed it.
    pub hash: [u8; 32],
}

impl SnapshotChunk {
    /// A chunk of `data` at `index`, hashed.
    pub fn new(index: u64, data: Bytes) -> SnapshotChunk {
        let hash = *blake3::hash(&data).as_bytes();
        SnapshotChunk { index, data, hash }
    }

    /// Checks the data against the hash.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] when they differ, or the chunk is larger than
    /// [`MAX_CHUNK_BYTES`].
    pub fn verify(&self) -> Result<(), SnapshotError> {
        if self.data.len() > MAX_CHUNK_BYTES {
            return Err(SnapshotError::Corrupt {
                chunk: self.index,
                why: format!(
                    "{} bytes, more than the {MAX_CHUNK_BYTES} a chunk may hold",
                    self.data.len()
                ),
            });
        }
        if *blake3::hash(&self.data).as_bytes() != self.hash {
            return Err(SnapshotError::Corrupt {
                chunk: self.index,
                why: "its data does not match its hash".into(),
            });
        }
        Ok(())
    }
}

/// Why a snapshot could not be taken, stored, read or installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The state machine takes no snapshots (the default of the hooks).
    #[error("this state machine does not support snapshots")]
    Unsupported,
    /// A snapshot of another format, or another version, than the state machine's.
    #[error("snapshot format {offered} cannot be installed: this state machine reads {supported}")]
    FormatMismatch {
        /// The snapshot's.
        offered: SnapshotFormat,
        /// The state machine's, if it supports snapshots at all.
        supported: String,
    },
    /// A chunk, or the file, failed its checks: nothing of it is installed.
    #[error("snapshot chunk {chunk} is corrupt: {why}")]
    Corrupt {
        /// The chunk's index (the chunk count for the metadata at the end).
        chunk: u64,
        /// What failed.
        why: String,
    },
    /// The state machine refused the data.
    #[error("the state machine refused the snapshot: {0}")]
    Refused(String),
    /// Reading or writing the snapshot failed.
    #[error("snapshot I/O: {0}")]
    Io(String),
}

impl From<std::io::Error> for SnapshotError {
    fn from(error: std::io::Error) -> SnapshotError {
        SnapshotError::Io(error.to_string())
    }
}

/// A state machine's export in progress: its state as of one transaction, produced chunk by
/// chunk. It is a read view: the state machine goes on applying transactions meanwhile (the
/// driver runs an export on a blocking thread).
pub trait SnapshotExport: Send {
    /// The next chunk of at most `max_bytes` (never empty), or `None` at the end.
    ///
    /// # Errors
    /// Whatever keeps the export from going on; the snapshot is then abandoned.
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Bytes>, SnapshotError>;
}

/// A received snapshot being staged beside the live state, which it replaces only on
/// [`commit`](SnapshotStage::commit). Dropped without a commit, it is discarded.
pub trait SnapshotStage: Send {
    /// Takes the next chunk's data, in order; chunks reach it verified.
    ///
    /// # Errors
    /// Data the state machine cannot read ([`SnapshotError::Refused`]).
    fn write(&mut self, data: &[u8]) -> Result<(), SnapshotError>;

    /// Switches the state machine to the staged state, atomically: afterwards its
    /// [`applied`](crate::StateMachine::applied) is the snapshot's last transaction; on
    /// error, the live state is unchanged.
    ///
    /// # Errors
    /// Data incomplete or refused, or a failure to switch.
    fn commit(self: Box<Self>) -> Result<(), SnapshotError>;
}

const MAGIC: &[u8; 8] = b"RNSNAP01";
const END: &[u8; 8] = b"RNSNAPND";

/// A snapshot on disk: `RNSNAP01`, then each chunk as its length (u32, little endian), its
/// BLAKE3 hash and its data, then the [`SnapshotMeta`] (postcard), its length (u32), its
/// hash, and `RNSNAPND`. Read one chunk at a time.
#[derive(Debug)]
pub struct SnapshotFile {
    meta: SnapshotMeta,
    reader: BufReader<File>,
    next: u64,
    end_of_chunks: u64,
}

impl SnapshotFile {
    /// Writes the snapshot that `export` produces, as of `last` (of epoch `last_epoch`), to
    /// `path`, in chunks of at most `chunk_bytes`: to a temporary name first, synced, then
    /// renamed, so that a file at `path` is always whole. Returns its metadata.
    ///
    /// # Errors
    /// The export's, and I/O errors.
    pub fn write(
        path: &Path,
        format: SnapshotFormat,
        last: LogPosition,
        last_epoch: Epoch,
        export: &mut dyn SnapshotExport,
        chunk_bytes: usize,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let chunk_bytes = chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let mut writer = SnapshotWriter::create(&temporary_path(path), path)?;
        while let Some(data) = export.next_chunk(chunk_bytes)? {
            if data.is_empty() {
                continue;
            }
            if data.len() > chunk_bytes {
                return Err(SnapshotError::Refused(format!(
                    "the export produced a chunk of {} bytes, more than the {chunk_bytes} asked",
                    data.len()
                )));
            }
            writer.push(&SnapshotChunk::new(writer.chunks(), data))?;
        }
        writer.finish(format, last, last_epoch)
    }

    /// Opens the snapshot at `path` and reads its metadata; chunks follow with
    /// [`next_chunk`](SnapshotFile::next_chunk).
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] for a file that is not a whole snapshot; I/O errors.
    pub fn open(path: &Path) -> Result<SnapshotFile, SnapshotError> {
        let mut file = File::open(path)?;
        let length = file.metadata()?.len();
        let trailer = (4 + 32 + END.len()) as u64;
        let corrupt = |why: &str| SnapshotError::Corrupt {
            chunk: u64::MAX,
            why: format!("{}: {why}", path.display()),
        };
        if length < MAGIC.len() as u64 + trailer {
            return Err(corrupt("too short to be a snapshot"));
        }
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(corrupt("not a snapshot file"));
        }
        file.seek(SeekFrom::Start(length - trailer))?;
        let mut tail = vec![0u8; trailer as usize];
        file.read_exact(&mut tail)?;
        if &tail[36..] != END {
            return Err(corrupt("its end marker is missing (an incomplete write?)"));
        }
        let meta_length = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if meta_length > length - trailer - MAGIC.len() as u64 {
            return Err(corrupt("its metadata length is out of range"));
        }
        let end_of_chunks = length - trailer - meta_length;
        file.seek(SeekFrom::Start(end_of_chunks))?;
        let mut encoded = vec![0u8; meta_length as usize];
        file.read_exact(&mut encoded)?;
        if blake3::hash(&encoded).as_bytes() != &tail[4..36] {
            return Err(corrupt("its metadata does not match its hash"));
        }
        let meta: SnapshotMeta = postcard::from_bytes(&encoded)
            .map_err(|error| corrupt(&format!("its metadata does not decode: {error}")))?;
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(SnapshotFile {
            meta,
            reader: BufReader::new(file),
            next: 0,
            end_of_chunks,
        })
    }

    /// The snapshot's metadata.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The next chunk, verified, or `None` after the last (whose count and digest are then
    /// checked against the metadata).
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] for a chunk that fails its hash, a length out of range, or
    /// chunks that do not add up to the metadata; I/O errors.
    pub fn next_chunk(&mut self) -> Result<Option<SnapshotChunk>, SnapshotError> {
        let position = self.reader.stream_position()?;
        if position >= self.end_of_chunks {
            if self.next != self.meta.chunks {
                return Err(SnapshotError::Corrupt {
                    chunk: self.next,
                    why: format!(
                        "the file holds {} chunks, its metadata says {}",
                        self.next, self.meta.chunks
                    ),
                });
            }
            return Ok(None);
        }
        let index = self.next;
        let corrupt = |why: String| SnapshotError::Corrupt { chunk: index, why };
        let mut header = [0u8; 36];
        self.reader
            .read_exact(&mut header)
            .map_err(|error| corrupt(format!("its header cannot be read: {error}")))?;
        let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if length > MAX_CHUNK_BYTES || position + 36 + length as u64 > self.end_of_chunks {
            return Err(corrupt(format!("its length {length} is out of range")));
        }
        let mut data = vec![0u8; length];
        self.reader.read_exact(&mut data)?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&header[4..]);
        let chunk = SnapshotChunk {
            index,
            data: Bytes::from(data),
            hash,
        };
        chunk.verify()?;
        self.next += 1;
        Ok(Some(chunk))
    }

    /// Moves to chunk `index`, so that [`next_chunk`](SnapshotFile::next_chunk) returns it
    /// (reading only the headers of the chunks before it when going forwards).
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] for an index beyond the last chunk or a header out of
    /// range; I/O errors.
    pub fn skip_to(&mut self, index: u64) -> Result<(), SnapshotError> {
        if index > self.meta.chunks {
            return Err(SnapshotError::Corrupt {
                chunk: index,
                why: format!("the snapshot has {} chunks", self.meta.chunks),
            });
        }
        if index < self.next {
            self.reader.seek(SeekFrom::Start(MAGIC.len() as u64))?;
            self.next = 0;
        }
        while self.next < index {
            let position = self.reader.stream_position()?;
            let mut header = [0u8; 36];
            self.reader.read_exact(&mut header)?;
            let length = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as u64;
            if length > MAX_CHUNK_BYTES as u64 || position + 36 + length > self.end_of_chunks {
                return Err(SnapshotError::Corrupt {
                    chunk: self.next,
                    why: format!("its length {length} is out of range"),
                });
            }
            self.reader.seek_relative(length as i64)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Reads every chunk, verifying each and the digest of all, without keeping them:
    /// whether the file is whole and intact.
    ///
    /// # Errors
    /// As [`next_chunk`](SnapshotFile::next_chunk), and a digest that differs.
    pub fn verify(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
        let mut file = SnapshotFile::open(path)?;
        let mut digest = blake3::Hasher::new();
        let mut bytes = 0u64;
        while let Some(chunk) = file.next_chunk()? {
            digest.update(&chunk.hash);
            bytes += chunk.data.len() as u64;
        }
        let meta = file.meta;
        if *digest.finalize().as_bytes() != meta.digest || bytes != meta.bytes {
            return Err(SnapshotError::Corrupt {
                chunk: meta.chunks,
                why: "the chunks do not add up to the metadata's digest and size".into(),
            });
        }
        Ok(meta)
    }
}

/// Writes a snapshot file chunk by chunk, under a temporary name until
/// [`finish`](SnapshotWriter::finish) renames it: a snapshot taken here, or received from a
/// source (which [`resume`](SnapshotWriter::resume)s after a lost connection or a crash).
#[derive(Debug)]
pub struct SnapshotWriter {
    out: BufWriter<File>,
    temporary: PathBuf,
    path: PathBuf,
    digest: blake3::Hasher,
    chunks: u64,
    bytes: u64,
}

impl SnapshotWriter {
    /// Starts a new snapshot at `temporary` (replacing any file there), to become `path`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(temporary: &Path, path: &Path) -> Result<SnapshotWriter, SnapshotError> {
        let mut out = BufWriter::new(File::create(temporary)?);
        out.write_all(MAGIC)?;
        Ok(SnapshotWriter {
            out,
            temporary: temporary.to_path_buf(),
            path: path.to_path_buf(),
            digest: blake3::Hasher::new(),
            chunks: 0,
            bytes: 0,
        })
    }

    /// Goes on with the snapshot at `temporary`, keeping at most its first `keep` chunks that
    /// are whole and match their hashes, and cutting off what follows (a torn write, or chunks
    /// the sender will send again). A file that is not a snapshot's start is begun again.
    /// Returns the writer and how many chunks it kept.
    ///
    /// # Errors
    /// I/O errors.
    pub fn resume(
        temporary: &Path,
        path: &Path,
        keep: u64,
    ) -> Result<(SnapshotWriter, u64), SnapshotError> {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(temporary)
        else {
            return Ok((SnapshotWriter::create(temporary, path)?, 0));
        };
        let length = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let mut magic = [0u8; 8];
        if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
            return Ok((SnapshotWriter::create(temporary, path)?, 0));
        }
        let mut digest = blake3::Hasher::new();
        let (mut chunks, mut bytes, mut end) = (0u64, 0u64, MAGIC.len() as u64);
        while chunks < keep {
            let mut header = [0u8; 36];
            if reader.read_exact(&mut header).is_err() {
                break;
            }
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if size > MAX_CHUNK_BYTES || end + 36 + size as u64 > length {
                break;
            }
            let mut data = vec![0u8; size];
            if reader.read_exact(&mut data).is_err() {
                break;
            }
            if blake3::hash(&data).as_bytes() != &header[4..] {
                break;
            }
            digest.update(&header[4..]);
            chunks += 1;
            bytes += size as u64;
            end += 36 + size as u64;
        }
        let file = reader.into_inner();
        file.set_len(end)?;
        let mut out = BufWriter::new(file);
        out.seek(SeekFrom::Start(end))?;
        let writer = SnapshotWriter {
            out,
            temporary: temporary.to_path_buf(),
            path: path.to_path_buf(),
            digest,
            chunks,
            bytes,
        };
        Ok((writer, chunks))
    }

    /// Reads back the first `count` chunks of the snapshot being written at `temporary` (a
    /// resumed transfer's), verifying each, and hands their data to `take` in order.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] for a chunk missing or failing its hash; `take`'s errors;
    /// I/O errors.
    pub fn read_back(
        temporary: &Path,
        count: u64,
        mut take: impl FnMut(&[u8]) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let mut reader = BufReader::new(File::open(temporary)?);
        let mut magic = [0u8; 8];
        reader.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(SnapshotError::Corrupt {
                chunk: 0,
                why: format!("{}: not a snapshot file", temporary.display()),
            });
        }
        for index in 0..count {
            let corrupt = |why: String| SnapshotError::Corrupt { chunk: index, why };
            let mut header = [0u8; 36];
            reader
                .read_exact(&mut header)
                .map_err(|error| corrupt(format!("its header cannot be read: {error}")))?;
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            if size > MAX_CHUNK_BYTES {
                return Err(corrupt(format!("its length {size} is out of range")));
            }
            let mut data = vec![0u8; size];
            reader
                .read_exact(&mut data)
                .map_err(|error| corrupt(format!("it cannot be read: {error}")))?;
            if blake3::hash(&data).as_bytes() != &header[4..] {
                return Err(corrupt("its data does not match its hash".into()));
            }
            take(&data)?;
        }
        Ok(())
    }

    /// Chunks written so far.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Appends a chunk, which must be the next one (`index == chunks()`) and must have been
    /// verified ([`SnapshotChunk::verify`]; a received chunk is, before it is handed to the
    /// driver, and the hash is checked again when the file is read), and hands it to the
    /// operating system: a crash of the process keeps it, a resumption finds it.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] for a chunk out of order or larger than a chunk may be; I/O
    /// errors.
    pub fn push(&mut self, chunk: &SnapshotChunk) -> Result<(), SnapshotError> {
        if chunk.index != self.chunks || chunk.data.len() > MAX_CHUNK_BYTES {
            return Err(SnapshotError::Corrupt {
                chunk: chunk.index,
                why: format!(
                    "chunk {} of {} bytes where chunk {} was expected",
                    chunk.index,
                    chunk.data.len(),
                    self.chunks
                ),
            });
        }
        self.out
            .write_all(&(chunk.data.len() as u32).to_le_bytes())?;
        self.out.write_all(&chunk.hash)?;
        self.out.write_all(&chunk.data)?;
        self.out.flush()?;
        self.digest.update(&chunk.hash);
        self.chunks += 1;
        self.bytes += chunk.data.len() as u64;
        Ok(())
    }

    /// Ends the snapshot as of `last` (of epoch `last_epoch`): writes the metadata, syncs,
    /// renames it to its final path and syncs the directory.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(
        self,
        format: SnapshotFormat,
        last: LogPosition,
        last_epoch: Epoch,
    ) -> Result<SnapshotMeta, SnapshotError> {
        let meta = SnapshotMeta {
            format,
            last,
            last_epoch,
            chunks: self.chunks,
            bytes: self.bytes,
            digest: *self.digest.finalize().as_bytes(),
        };
        self.seal(&meta)?;
        Ok(meta)
    }

    /// Ends a received snapshot, which must add up to `expected` (its chunk count, size and
    /// digest) before it is renamed to its final path.
    ///
    /// # Errors
    /// [`SnapshotError::Corrupt`] when it does not; I/O errors.
    pub fn finish_expecting(self, expected: &SnapshotMeta) -> Result<(), SnapshotError> {
        let digest = *self.digest.finalize().as_bytes();
        if self.chunks != expected.chunks
            || self.bytes != expected.bytes
            || digest != expected.digest
        {
            return Err(SnapshotError::Corrupt {
                chunk: self.chunks,
                why: format!(
                    "received {} chunks of {} bytes that do not add up to the snapshot offered \
                     ({} chunks, {} bytes, and its digest)",
                    self.chunks, self.bytes, expected.chunks, expected.bytes
                ),
            });
        }
        self.seal(expected)
    }

    fn seal(mut self, meta: &SnapshotMeta) -> Result<(), SnapshotError> {
        let encoded = postcard::to_allocvec(meta)
            .map_err(|error| SnapshotError::Io(format!("encoding the metadata: {error}")))?;
        self.out.write_all(&encoded)?;
        self.out.write_all(&(encoded.len() as u32).to_le_bytes())?;
        self.out.write_all(blake3::hash(&encoded).as_bytes())?;
        self.out.write_all(END)?;
        let file = self
            .out
            .into_inner()
            .map_err(|error| SnapshotError::Io(error.to_string()))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// The name a snapshot is written under before it is whole.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests;
