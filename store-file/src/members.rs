//! The `members` file: the membership [`TxLog::save_members`] saved, replaced whole and
//! atomically (a temporary file, synced, renamed over it, then the directory synced), so that
//! a crash leaves either the old list or the new one, never a mix.
//!
//! Layout, little-endian:
//!
//! ```text
//! magic: b"RPMEMBRS" | crc32c: u32 | version: u32 = 1 | body_len: u32 | body
//! body = count: u32, then per replica: node_len: u32 | node | database_len: u32 | database
//! ```
//!
//! The CRC covers everything after itself (version, length and body), so no bit of the file
//! can change unnoticed: the magic is compared, the rest checksummed. The encoding is written
//! out by hand rather than with serde so that the bytes on disk do not depend on a serializer's
//! version.
//!
//! [`TxLog::save_members`]: replication_core::TxLog::save_members

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use replication_core::{LogError, NodeId, ReplicaId};

use crate::record::checksum;
use crate::state::sync_dir;

/// The file's name in the log directory.
pub(crate) const FILE: &str = "members";
/// Where a save writes before the rename; a leftover one is an unfinished save.
pub(crate) const TEMP_FILE: &str = "members.tmp";

const MAGIC: &[u8; 8] = b"RPMEMBRS";
const VERSION: u32 = 1;
/// Magic, CRC, version and body length.
const HEADER: usize = 20;
/// The largest members file read or written: a membership is a handful of names, so anything
/// larger is damage, and refusing it keeps a corrupt length from costing memory.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// The members file of the log in `dir`.
pub(crate) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!("{}: {reason}", path.display()))
}

/// Encodes `members` as the whole file.
pub(crate) fn encode(members: &[ReplicaId]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for member in members {
        for text in [member.node.as_str(), member.database.as_str()] {
            body.extend_from_slice(&(text.len() as u32).to_le_bytes());
            body.extend_from_slice(text.as_bytes());
        }
    }
    let mut file = Vec::with_capacity(HEADER + body.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&[0; 4]);
    file.extend_from_slice(&VERSION.to_le_bytes());
    file.extend_from_slice(&(body.len() as u32).to_le_bytes());
    file.extend_from_slice(&body);
    let crc = checksum(&file[12..]);
    file[8..12].copy_from_slice(&crc.to_le_bytes());
    file
}

/// Decodes a whole members file; the error says what is wrong, for [`corrupt`] to name the
/// file.
fn decode(bytes: &[u8]) -> Result<Vec<ReplicaId>, String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "{} bytes, shorter than the {HEADER}-byte header (truncated)",
            bytes.len()
        ));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a members file (bad magic)".into());
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    // The length before the checksum: a cut file then says it is truncated, which is what an
    // operator needs to hear, rather than only that the checksum fails.
    let body_len = word(16) as usize;
    if bytes.len() - HEADER != body_len {
        return Err(format!(
            "the header declares {body_len} bytes of membership but {} follow (truncated or damaged)",
            bytes.len() - HEADER
        ));
    }
    if checksum(&bytes[12..]) != word(8) {
        return Err("checksum mismatch".into());
    }
    let version = word(12);
    if version != VERSION {
        return Err(format!(
            "unsupported version {version} (this build reads {VERSION})"
        ));
    }
    // The checksum matched, so what follows was written by `encode`; the checks below keep a
    // file written by a buggy or foreign writer from causing a panic all the same.
    let mut body = Body(&bytes[HEADER..]);
    let count = body.u32()? as usize;
    // Each replica takes at least eight bytes: a corrupt count cannot reserve much.
    let mut members = Vec::with_capacity(count.min(body.0.len() / 8));
    for _ in 0..count {
        let node = body.text()?;
        let database = body.text()?;
        members.push(ReplicaId {
            node: NodeId(node),
            database,
        });
    }
    if !body.0.is_empty() {
        return Err(format!(
            "{} bytes after the last of {count} replicas",
            body.0.len()
        ));
    }
    Ok(members)
}

/// The body of a members file, read front to back.
struct Body<'a>(&'a [u8]);

impl Body<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], String> {
        if self.0.len() < len {
            return Err(format!(
                "a field of {len} bytes runs past the end of the membership"
            ));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// Reads the membership saved in `dir`: empty if no membership was ever saved (no file).
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and what is wrong with it, for a file that is too
/// large, truncated or fails its checks; [`LogError::Io`] naming the file if it is unreadable.
pub(crate) fn load(dir: &Path) -> Result<Vec<ReplicaId>, LogError> {
    let path = path(dir);
    let with_path = |error: io::Error| {
        LogError::Io(io::Error::new(
            error.kind(),
            format!("{}: {error}", path.display()),
        ))
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(with_path(error)),
    };
    let len = file.metadata().map_err(with_path)?.len();
    let too_large = |len: u64| {
        corrupt(
            &path,
            format_args!("{len} bytes, more than the {MAX_FILE} a members file may hold"),
        )
    };
    if len > MAX_FILE {
        return Err(too_large(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // Bounded even if the file grew since its size was read.
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(with_path)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_large(bytes.len() as u64));
    }
    decode(&bytes).map_err(|reason| corrupt(&path, reason))
}

/// Durably replaces the membership saved in `dir`: when this returns `Ok`, a crash leaves
/// `members`. Returns whether the new file took the old one's place, also on error: once the
/// rename is done, the directory holds the new membership even if its sync then failed.
///
/// # Errors
/// [`LogError::Io`] if `members` encodes to more than [`MAX_FILE`] (it could not be read
/// back), or if writing, syncing or renaming fails.
pub(crate) fn save(dir: &Path, members: &[ReplicaId]) -> (bool, Result<(), LogError>) {
    let bytes = encode(members);
    if bytes.len() as u64 > MAX_FILE {
        let error = io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a membership of {} replicas takes {} bytes, more than the {MAX_FILE} a members file may hold",
                members.len(),
                bytes.len()
            ),
        );
        return (false, Err(LogError::Io(error)));
    }
    let temp = dir.join(TEMP_FILE);
    let target = path(dir);
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)?;
        file.write_all(&bytes)?;
        // Synced before the rename: otherwise a crash could leave the new name on an empty or
        // partial file (the rename reaching the disk before the data).
        file.sync_all()
    })()
    .and_then(|()| fs::rename(&temp, &target));
    if let Err(error) = written {
        let _ = fs::remove_file(&temp);
        let error = io::Error::new(
            error.kind(),
            format!("saving {} failed: {error}", target.display()),
        );
        return (false, Err(LogError::Io(error)));
    }
    // The rename is durable only once the directory is synced.
    let synced = sync_dir(dir).map_err(|error| {
        LogError::Io(io::Error::new(
            error.kind(),
            format!(
                "syncing {} after saving members failed: {error}",
                dir.display()
            ),
        ))
    });
    (true, synced)
}

/// Removes what a save interrupted by a crash left behind: the temporary file was never
/// renamed, so the membership it held was never saved.
pub(crate) fn remove_unfinished(dir: &Path) -> Result<(), LogError> {
    match fs::remove_file(dir.join(TEMP_FILE)) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ReplicaId> {
        vec![
            ReplicaId::new("node-a", "orders"),
            ReplicaId::new("node-b", "orders"),
            ReplicaId::new("ñode-ç", ""),
        ]
    }

    #[test]
    fn round_trip() {
        for members in [Vec::new(), sample()] {
            assert_eq!(decode(&encode(&members)), Ok(members));
        }
    }

    #[test]
    fn the_format_is_stable() {
        // The bytes on disk are a format: a change here must come with a new version.
        let bytes = encode(&[ReplicaId::new("n", "db")]);
        assert_eq!(&bytes[..8], b"RPMEMBRS");
        assert_eq!(
            &bytes[12..],
            &[
                1, 0, 0, 0, 15, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, b'n', 2, 0, 0, 0, b'd', b'b'
            ]
        );
    }

    #[test]
    fn every_bit_flip_and_every_cut_is_detected() {
        let bytes = encode(&sample());
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&flipped).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
        for cut in 0..bytes.len() {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "cut at {cut} went unnoticed"
            );
        }
    }

    #[test]
    fn a_checksummed_but_malformed_body_is_an_error_not_a_panic() {
        // As a buggy writer could produce: valid header and CRC around a bad body.
        let framed = |body: &[u8]| {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&[0; 4]);
            file.extend_from_slice(&VERSION.to_le_bytes());
            file.extend_from_slice(&(body.len() as u32).to_le_bytes());
            file.extend_from_slice(body);
            let crc = checksum(&file[12..]);
            file[8..12].copy_from_slice(&crc.to_le_bytes());
            file
        };
        for body in [
            &[][..],
            &[0xff, 0xff, 0xff, 0xff][..],
            &[1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..],
            &[1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0][..],
            &[0, 0, 0, 0, 7][..],
        ] {
            assert!(decode(&framed(body)).is_err(), "{body:?}");
        }
        let mut version_two = framed(&[0, 0, 0, 0]);
        version_two[12] = 2;
        let crc = checksum(&version_two[12..]);
        version_two[8..12].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&version_two).unwrap_err().contains("version 2"));
    }

    #[test]
    fn load_and_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("missing"), Vec::new());
        let (replaced, saved) = save(dir.path(), &sample());
        saved.expect("save");
        assert!(replaced);
        assert!(!dir.path().join(TEMP_FILE).exists());
        assert_eq!(load(dir.path()).expect("load"), sample());

        fs::write(path(dir.path()), b"").expect("empty");
        let error = load(dir.path()).expect_err("empty file").to_string();
        assert!(
            error.contains("members") && error.contains("truncated"),
            "{error}"
        );

        let file = File::create(path(dir.path())).expect("create");
        file.set_len(MAX_FILE + 1).expect("grow");
        let error = load(dir.path()).expect_err("too large").to_string();
        assert!(
            error.contains("members") && error.contains("more than"),
            "{error}"
        );

        let huge = vec![ReplicaId::new("n".repeat(1 << 20), "db")];
        let (replaced, saved) = save(dir.path(), &huge);
        assert!(
            !replaced && saved.is_err(),
            "a file too large to read back is refused"
        );
    }
}
