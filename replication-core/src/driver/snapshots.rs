//! [`SnapshotDir`]: where a node keeps its snapshots: the ones it took or installed, and the
//! one it is receiving from its source.
//!
//! Layout: `snapshot-<last tx, 20 digits>.snap` for whole snapshots ([`SnapshotFile`]); a
//! snapshot being written is `<name>.partial` until it is renamed. A snapshot being received is
//! `incoming.partial`, with the metadata the source offered in `incoming.meta`, so that a
//! transfer resumes after a lost connection or a restart at the first chunk not stored whole.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::snapshot::{SnapshotError, SnapshotFile, SnapshotMeta, SnapshotWriter};
use crate::types::TxId;

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".snap";
const INCOMING: &str = "incoming.partial";
const INCOMING_META: &str = "incoming.meta";

/// A directory of snapshots: `snapshot-<last tx, 20 digits>.snap` for whole snapshots
/// ([`SnapshotFile`]), `<name>.partial` while one is written, and `incoming.partial` with
/// `incoming.meta` for the one being received, which a transfer resumes after its last whole
/// chunk.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// Opens `dir`, creating it if needed.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<SnapshotDir> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(SnapshotDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where the snapshot whose last transaction is `last` lives.
    pub fn path_for(&self, last: TxId) -> PathBuf {
        self.dir.join(format!("{PREFIX}{:020}{SUFFIX}", last.0))
    }

    /// Every whole snapshot's path and last transaction, newest first.
    fn listed(&self) -> io::Result<Vec<(TxId, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(stem) = name
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.strip_suffix(SUFFIX))
            else {
                continue;
            };
            if let Ok(last) = stem.parse::<u64>() {
                found.push((TxId(last), entry.path()));
            }
        }
        found.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(found)
    }

    /// The newest snapshot whose file reads whole (its metadata and end marker; the chunks
    /// are verified as they are read). A damaged one is skipped with a warning naming it.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn latest(&self) -> io::Result<Option<(PathBuf, SnapshotMeta)>> {
        for (_, path) in self.listed()? {
            match SnapshotFile::open(&path) {
                Ok(file) => return Ok(Some((path, file.meta().clone()))),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "skipping a damaged snapshot");
                }
            }
        }
        Ok(None)
    }

    /// The snapshot with `digest`, if this directory holds it.
    pub fn find(&self, digest: &[u8; 32]) -> Option<SnapshotFile> {
        self.listed()
            .ok()?
            .into_iter()
            .filter_map(|(_, path)| SnapshotFile::open(&path).ok())
            .find(|file| &file.meta().digest == digest)
    }

    /// Removes every snapshot older than `keep` (their readers keep what they opened).
    pub fn prune(&self, keep: TxId) {
        let Ok(listed) = self.listed() else { return };
        for (last, path) in listed {
            if last < keep
                && let Err(error) = fs::remove_file(&path)
            {
                tracing::warn!(file = %path.display(), %error, "cannot remove an old snapshot");
            }
        }
    }

    /// Removes every snapshot but the one up to `last` (installed from the source: the others
    /// may be of the history this node left).
    pub fn keep_only(&self, last: TxId) {
        let Ok(listed) = self.listed() else { return };
        for (at, path) in listed {
            if at != last {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Removes every snapshot beyond `last` (the log was cut below them, in a rewind).
    pub fn remove_after(&self, last: TxId) {
        let Ok(listed) = self.listed() else { return };
        for (at, path) in listed {
            if at > last {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// The snapshot being received, with how many of its chunks are stored whole.
    ///
    /// # Errors
    /// I/O errors.
    pub fn incoming(&self) -> Result<Option<(SnapshotMeta, u64)>, SnapshotError> {
        let Ok(encoded) = fs::read(self.dir.join(INCOMING_META)) else {
            return Ok(None);
        };
        let Ok(meta) = postcard::from_bytes::<SnapshotMeta>(&encoded) else {
            tracing::warn!(dir = %self.dir.display(), "discarding an unreadable incoming snapshot");
            self.discard_incoming();
            return Ok(None);
        };
        let path = self.path_for(meta.last.tx_id);
        let (_, held) = SnapshotWriter::resume(&self.dir.join(INCOMING), &path, meta.chunks)?;
        Ok(Some((meta, held)))
    }

    /// Starts or resumes receiving `meta`, keeping at most `from` chunks already stored of it
    /// (any other snapshot received in part is discarded). Returns the writer and how many
    /// chunks it holds.
    ///
    /// # Errors
    /// I/O errors.
    pub fn receive(
        &self,
        meta: &SnapshotMeta,
        from: u64,
    ) -> Result<(SnapshotWriter, u64), SnapshotError> {
        let path = self.path_for(meta.last.tx_id);
        let temporary = self.dir.join(INCOMING);
        let same = fs::read(self.dir.join(INCOMING_META))
            .ok()
            .and_then(|encoded| postcard::from_bytes::<SnapshotMeta>(&encoded).ok())
            .is_some_and(|held| held.digest == meta.digest);
        if same {
            return SnapshotWriter::resume(&temporary, &path, from);
        }
        self.discard_incoming();
        let encoded = postcard::to_allocvec(meta)
            .map_err(|error| SnapshotError::Io(format!("encoding the metadata: {error}")))?;
        fs::write(self.dir.join(INCOMING_META), encoded)?;
        Ok((SnapshotWriter::create(&temporary, &path)?, 0))
    }

    /// Hands the data of the first `count` chunks of the snapshot being received to `take`,
    /// verified, in order (to stage them again after a restart).
    ///
    /// # Errors
    /// As [`SnapshotWriter::read_back`].
    pub fn read_incoming(
        &self,
        count: u64,
        take: impl FnMut(&[u8]) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        SnapshotWriter::read_back(&self.dir.join(INCOMING), count, take)
    }

    /// Forgets the snapshot received in part, if any.
    pub fn discard_incoming(&self) {
        let _ = fs::remove_file(self.dir.join(INCOMING));
        let _ = fs::remove_file(self.dir.join(INCOMING_META));
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::snapshot::{SnapshotChunk, SnapshotFormat};
    use crate::types::{Epoch, LogPosition, TxHash};

    fn chunk(index: u64) -> SnapshotChunk {
        SnapshotChunk::new(index, Bytes::from(vec![index as u8; 100]))
    }

    fn meta_of(chunks: &[SnapshotChunk]) -> SnapshotMeta {
        let mut digest = blake3::Hasher::new();
        for chunk in chunks {
            digest.update(&chunk.hash);
        }
        SnapshotMeta {
            format: SnapshotFormat {
                name: "test".into(),
                version: 1,
            },
            last: LogPosition {
                tx_id: TxId(7),
                hash: TxHash::GENESIS,
            },
            last_epoch: Epoch(1),
            chunks: chunks.len() as u64,
            bytes: chunks.iter().map(|c| c.data.len() as u64).sum(),
            digest: *digest.finalize().as_bytes(),
        }
    }

    #[test]
    fn a_transfer_resumes_after_the_chunks_stored_and_ends_as_the_snapshot_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let chunks: Vec<_> = (0..5).map(chunk).collect();
        let meta = meta_of(&chunks);
        let (mut writer, held) = snapshots.receive(&meta, 0).expect("receive");
        assert_eq!(held, 0);
        for chunk in &chunks[..3] {
            writer.push(chunk).expect("push");
        }
        drop(writer);
        assert_eq!(
            snapshots.incoming().expect("incoming"),
            Some((meta.clone(), 3))
        );
        // A resumption never keeps more than the engine asks for.
        let (writer, held) = snapshots.receive(&meta, 2).expect("resume");
        assert_eq!(held, 2);
        drop(writer);
        let (mut writer, held) = snapshots.receive(&meta, 9).expect("resume");
        assert_eq!(held, 2);
        for chunk in &chunks[2..] {
            writer.push(chunk).expect("push");
        }
        writer.finish_expecting(&meta).expect("finish");
        snapshots.discard_incoming();
        let (path, latest) = snapshots.latest().expect("latest").expect("a snapshot");
        assert_eq!(latest, meta);
        assert_eq!(SnapshotFile::verify(&path).expect("verify"), meta);
        assert!(snapshots.find(&meta.digest).is_some());
    }

    #[test]
    fn a_transfer_of_another_snapshot_starts_again_and_a_wrong_whole_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let chunks: Vec<_> = (0..3).map(chunk).collect();
        let meta = meta_of(&chunks);
        let (mut writer, _) = snapshots.receive(&meta, 0).expect("receive");
        writer.push(&chunks[0]).expect("push");
        drop(writer);
        let other = SnapshotMeta {
            digest: [9; 32],
            ..meta.clone()
        };
        let (mut writer, held) = snapshots.receive(&other, 1).expect("receive another");
        assert_eq!(held, 0, "chunks of another snapshot are not kept");
        for chunk in &chunks {
            writer.push(chunk).expect("push");
        }
        let refused = writer.finish_expecting(&other);
        assert!(
            matches!(refused, Err(SnapshotError::Corrupt { .. })),
            "{refused:?}"
        );
        assert!(snapshots.latest().expect("latest").is_none());
    }

    #[test]
    fn a_chunk_out_of_order_is_not_stored_and_a_damaged_one_is_found_when_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = SnapshotDir::open(dir.path()).expect("open");
        let chunks: Vec<_> = (0..2).map(chunk).collect();
        let meta = meta_of(&chunks);
        let (mut writer, _) = snapshots.receive(&meta, 0).expect("receive");
        assert!(writer.push(&chunks[1]).is_err());
        assert_eq!(writer.chunks(), 0);
        // Damaged after its hash was checked (on disk, say): a resumption keeps nothing of it,
        // and the whole does not add up to the snapshot offered.
        let mut damaged = chunks[0].clone();
        damaged.data = Bytes::from(vec![42u8; 100]);
        writer.push(&damaged).expect("stored as handed over");
        drop(writer);
        let (mut writer, held) = snapshots.receive(&meta, 2).expect("resume");
        assert_eq!(held, 0, "the damaged chunk is not kept");
        writer.push(&damaged).expect("stored as handed over");
        writer.push(&chunks[1]).expect("push");
        // Its hash is the one offered, so the whole adds up, but reading it back (as the
        // install does) refuses the chunk.
        writer.finish_expecting(&meta).expect("finish");
        let path = snapshots.path_for(meta.last.tx_id);
        assert!(matches!(
            SnapshotFile::verify(&path),
            Err(SnapshotError::Corrupt { chunk: 0, .. })
        ));
    }
}
