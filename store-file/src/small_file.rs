//! Small files replaced whole and atomically (a temporary file, synced, renamed over the old
//! one, then the directory synced), so that a crash leaves either the old content or the new
//! one, never a mix: the `members` file, the `epoch-claim` file and the `base` file.
//!
//! Framing, little-endian:
//!
//! ```text
//! magic: [u8; 8] | crc32c: u32 | version: u32 | body_len: u32 | body
//! ```
//!
//! The CRC covers everything after itself (version, length and body), so no bit of the file
//! can change unnoticed: the magic is compared, the rest checksummed. Bodies are written out
//! by hand rather than with serde so that the bytes on disk do not depend on a serializer's
//! version.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use replication_core::LogError;

use crate::record::checksum;
use crate::state::sync_dir;

/// Magic, CRC, version and body length.
const HEADER: usize = 20;
/// The largest small file read or written: they hold a handful of names, so anything larger
/// is damage, and refusing it keeps a corrupt length from costing memory.
pub(crate) const MAX_FILE: u64 = 1 << 20;

/// One kind of small file: its names, magic and format version.
pub(crate) struct SmallFile {
    /// The file's name in the log directory.
    pub(crate) name: &'static str,
    /// Where a save writes before the rename; a leftover one is an unfinished save.
    pub(crate) temp: &'static str,
    /// The first eight bytes.
    pub(crate) magic: &'static [u8; 8],
    /// The only format version this build reads and writes.
    pub(crate) version: u32,
    /// What the file holds, for messages ("a membership").
    pub(crate) what: &'static str,
}

impl SmallFile {
    /// The file in the log directory `dir`.
    pub(crate) fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.name)
    }

    /// The error for a damaged file in `dir`, naming it.
    pub(crate) fn corrupt(&self, dir: &Path, reason: impl std::fmt::Display) -> LogError {
        LogError::Corrupt(format!("{}: {reason}", self.path(dir).display()))
    }

    /// The whole file holding `body`.
    pub(crate) fn frame(&self, body: &[u8]) -> Vec<u8> {
        let mut file = Vec::with_capacity(HEADER + body.len());
        file.extend_from_slice(self.magic);
        file.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&self.version.to_le_bytes());
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(body);
        let crc = checksum(&file[12..]);
        file[8..12].copy_from_slice(&crc.to_le_bytes());
        file
    }

    /// The body of a whole file, once its framing checks out; the error says what is wrong.
    pub(crate) fn unframe<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], String> {
        if bytes.len() < HEADER {
            return Err(format!(
                "{} bytes, shorter than the {HEADER}-byte header (truncated)",
                bytes.len()
            ));
        }
        if &bytes[..8] != self.magic {
            return Err(format!("not a {} file (bad magic)", self.name));
        }
        let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        // The length before the checksum: a cut file then says it is truncated, which is what
        // an operator needs to hear, rather than only that the checksum fails.
        let body_len = word(16) as usize;
        if bytes.len() - HEADER != body_len {
            return Err(format!(
                "the header declares {body_len} bytes of {} but {} follow (truncated or damaged)",
                self.what,
                bytes.len() - HEADER
            ));
        }
        if checksum(&bytes[12..]) != word(8) {
            return Err("checksum mismatch".into());
        }
        let version = word(12);
        if version != self.version {
            return Err(format!(
                "unsupported version {version} (this build reads {})",
                self.version
            ));
        }
        Ok(&bytes[HEADER..])
    }

    /// Reads and decodes the file in `dir`: `None` if there is none; a body `decode` refuses
    /// is [`LogError::Corrupt`] naming the file and why.
    ///
    /// # Errors
    /// As [`load`](SmallFile::load), and the decoder's refusal.
    pub(crate) fn load_decoded<T>(
        &self,
        dir: &Path,
        decode: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, LogError> {
        match self.load(dir)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|reason| self.corrupt(dir, reason)),
        }
    }

    /// Reads the whole file in `dir`: `None` if there is none.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] naming the file if it is larger than [`MAX_FILE`];
    /// [`LogError::Io`] naming the file if it is unreadable.
    pub(crate) fn load(&self, dir: &Path) -> Result<Option<Vec<u8>>, LogError> {
        let path = self.path(dir);
        let with_path = |error: io::Error| {
            LogError::Io(io::Error::new(
                error.kind(),
                format!("{}: {error}", path.display()),
            ))
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(with_path(error)),
        };
        let len = file.metadata().map_err(with_path)?.len();
        let too_large = |len: u64| {
            self.corrupt(
                dir,
                format_args!(
                    "{len} bytes, more than the {MAX_FILE} a {} file may hold",
                    self.name
                ),
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
        Ok(Some(bytes))
    }

    /// Durably replaces the file in `dir` with `bytes` (a whole file, from
    /// [`frame`](Self::frame)): when this returns `Ok`, a crash leaves `bytes`. Returns whether
    /// the new file took the old one's place, also on error: once the rename is done, the
    /// directory holds the new content even if its sync then failed.
    ///
    /// # Errors
    /// [`LogError::Io`] if `bytes` is larger than [`MAX_FILE`] (it could not be read back), or
    /// if writing, syncing or renaming fails.
    pub(crate) fn save(&self, dir: &Path, bytes: &[u8]) -> (bool, Result<(), LogError>) {
        if bytes.len() as u64 > MAX_FILE {
            let error = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} takes {} bytes, more than the {MAX_FILE} a {} file may hold",
                    self.what,
                    bytes.len(),
                    self.name
                ),
            );
            return (false, Err(LogError::Io(error)));
        }
        let temp = dir.join(self.temp);
        let target = self.path(dir);
        let written = (|| -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&temp)?;
            file.write_all(bytes)?;
            // Synced before the rename: otherwise a crash could leave the new name on an empty
            // or partial file (the rename reaching the disk before the data).
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
                    "syncing {} after saving {} failed: {error}",
                    dir.display(),
                    self.name
                ),
            ))
        });
        (true, synced)
    }

    /// Removes what a save interrupted by a crash left behind: the temporary file was never
    /// renamed, so what it held was never saved.
    pub(crate) fn remove_unfinished(&self, dir: &Path) -> Result<(), LogError> {
        match fs::remove_file(dir.join(self.temp)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

/// A body, read front to back; every read checks the length, so a body written by a buggy or
/// foreign writer is an error, never a panic.
pub(crate) struct Body<'a>(pub(crate) &'a [u8]);

impl Body<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8], String> {
        if self.0.len() < len {
            return Err(format!(
                "a field of {len} bytes runs past the end of the file"
            ));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    /// The next little-endian `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// The next little-endian `u64`.
    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// The next `N` bytes.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// The next text: a `u32` length, then UTF-8.
    pub(crate) fn text(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }

    /// Bytes left over.
    pub(crate) fn remaining(&self) -> usize {
        self.0.len()
    }
}

/// Appends `text` as [`Body::text`] reads it.
pub(crate) fn put_text(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}
