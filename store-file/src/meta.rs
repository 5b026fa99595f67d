//! The `meta` file: the epoch and the commit point, in two checksummed slots written
//! alternately, so that a torn write leaves the other slot intact.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use replication_core::{Epoch, LogError, TxId};

const SLOT: u64 = 32;

/// What the meta file records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Meta {
    pub epoch: Epoch,
    pub committed: TxId,
}

/// The open meta file and the sequence number of its newest slot.
#[derive(Debug)]
pub(crate) struct MetaFile {
    file: File,
    sequence: u64,
}

fn encode(sequence: u64, meta: Meta) -> [u8; SLOT as usize] {
    let mut slot = [0u8; SLOT as usize];
    slot[0..8].copy_from_slice(&sequence.to_le_bytes());
    slot[8..16].copy_from_slice(&meta.epoch.0.to_le_bytes());
    slot[16..24].copy_from_slice(&meta.committed.0.to_le_bytes());
    let crc = crate::record::checksum(&slot[0..24]);
    slot[24..28].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode(slot: &[u8]) -> Option<(u64, Meta)> {
    let crc = u32::from_le_bytes(slot[24..28].try_into().ok()?);
    if crate::record::checksum(&slot[0..24]) != crc {
        return None;
    }
    let word =
        |range: std::ops::Range<usize>| u64::from_le_bytes(slot[range].try_into().expect("8"));
    Some((
        word(0..8),
        Meta {
            epoch: Epoch(word(8..16)),
            committed: TxId(word(16..24)),
        },
    ))
}

impl MetaFile {
    /// Opens (or creates, when `create`) the meta file.
    pub(crate) fn open(path: &Path, create: bool) -> Result<(MetaFile, Meta), LogError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        let mut bytes = vec![0u8; 2 * SLOT as usize];
        let len = file.metadata()?.len();
        if len == 0 {
            let mut meta_file = MetaFile { file, sequence: 0 };
            meta_file.write(Meta::default(), true)?;
            return Ok((meta_file, Meta::default()));
        }
        let read = file.read_at(&mut bytes, 0)?;
        let slots = [&bytes[..SLOT as usize], &bytes[SLOT as usize..]];
        let newest = slots
            .iter()
            .take(read / SLOT as usize)
            .filter_map(|s| decode(s))
            .max_by_key(|(seq, _)| *seq);
        match newest {
            Some((sequence, meta)) => Ok((MetaFile { file, sequence }, meta)),
            None => Err(LogError::Corrupt(format!(
                "{}: both slots fail their checksum (epoch and commit point unknown)",
                path.display()
            ))),
        }
    }

    /// Writes `meta` to the older slot; syncs when `durable`.
    pub(crate) fn write(&mut self, meta: Meta, durable: bool) -> io::Result<()> {
        let sequence = self.sequence + 1;
        self.file
            .write_all_at(&encode(sequence, meta), (sequence % 2) * SLOT)?;
        if durable {
            self.file.sync_data()?;
        }
        self.sequence = sequence;
        Ok(())
    }
}
