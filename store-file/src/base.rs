//! The `base` file: where the log begins ([`TxLog::base`]), replaced whole and atomically
//! ([`SmallFile`]), so that a crash leaves either the old base or the new one.
//!
//! Body, little-endian, in the framing of [`crate::small_file`] (magic `RPBASE01`, version 1):
//!
//! ```text
//! tx_id: u64 | hash: [u8; 32] | epoch: u64 | resetting: u32 (0 or 1)
//! ```
//!
//! Compaction writes it before it removes a segment: an open then removes every segment at or
//! below the base that a crash left behind. [`TxLog::reset_to`] writes it first with
//! `resetting` set, the moment the log becomes the new one: an open that finds it set discards
//! every segment and begins the empty log after the base; the reset clears it once the new
//! segment exists, before any transaction can be appended.
//!
//! [`TxLog::base`]: replication_core::TxLog::base
//! [`TxLog::reset_to`]: replication_core::TxLog::reset_to

use std::path::Path;

use replication_core::{Epoch, LogBase, LogError, LogPosition, TxHash, TxId};

use crate::small_file::{Body, SmallFile};

/// The `base` file.
pub(crate) const FILE: SmallFile = SmallFile {
    name: "base",
    temp: "base.tmp",
    magic: b"RPBASE01",
    version: 1,
    what: "log base",
};

/// What the file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SavedBase {
    /// Where the log begins.
    pub(crate) base: LogBase,
    /// A reset to `base` began and is not finished: every segment present is from before it.
    pub(crate) resetting: bool,
}

/// Encodes `saved` as the whole file.
pub(crate) fn encode(saved: &SavedBase) -> Vec<u8> {
    let mut body = Vec::with_capacity(52);
    body.extend_from_slice(&saved.base.position.tx_id.0.to_le_bytes());
    body.extend_from_slice(&saved.base.position.hash.0);
    body.extend_from_slice(&saved.base.epoch.0.to_le_bytes());
    body.extend_from_slice(&u32::from(saved.resetting).to_le_bytes());
    FILE.frame(&body)
}

/// Decodes a whole base file; the error says what is wrong, for the caller to name the file.
fn decode(bytes: &[u8]) -> Result<SavedBase, String> {
    let mut body = Body(FILE.unframe(bytes)?);
    let tx_id = TxId(body.u64()?);
    let hash = TxHash(body.array()?);
    let epoch = Epoch(body.u64()?);
    let resetting = match body.u32()? {
        0 => false,
        1 => true,
        other => return Err(format!("impossible reset flag {other}")),
    };
    if body.remaining() > 0 {
        return Err(format!("{} bytes after the base", body.remaining()));
    }
    Ok(SavedBase {
        base: LogBase {
            position: LogPosition { tx_id, hash },
            epoch,
        },
        resetting,
    })
}

/// Reads the base saved in `dir`: `None` if there is no file.
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and what is wrong with it; [`LogError::Io`] naming
/// the file if it is unreadable.
pub(crate) fn load(dir: &Path) -> Result<Option<SavedBase>, LogError> {
    FILE.load_decoded(dir, decode)
}

/// Durably replaces the base saved in `dir` ([`SmallFile::save`]).
pub(crate) fn save(dir: &Path, saved: &SavedBase) -> (bool, Result<(), LogError>) {
    FILE.save(dir, &encode(saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedBase {
        SavedBase {
            base: LogBase {
                position: LogPosition {
                    tx_id: TxId(41),
                    hash: TxHash([7; 32]),
                },
                epoch: Epoch(3),
            },
            resetting: true,
        }
    }

    #[test]
    fn round_trip() {
        for resetting in [false, true] {
            let saved = SavedBase {
                resetting,
                ..sample()
            };
            assert_eq!(decode(&encode(&saved)), Ok(saved));
        }
    }

    #[test]
    fn the_format_is_stable() {
        // The bytes on disk are a format: a change here must come with a new version.
        let bytes = encode(&sample());
        assert_eq!(&bytes[..8], b"RPBASE01");
        let mut body = vec![1, 0, 0, 0, 52, 0, 0, 0, 41, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[7; 32]);
        body.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&bytes[12..], &body[..]);
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
        let mut flag_two = encode(&sample())[20..].to_vec();
        let at = flag_two.len() - 4;
        flag_two[at] = 2;
        for body in [
            &[][..],
            &[1, 0, 0, 0, 0, 0, 0, 0][..],
            &flag_two[..],
            &[0; 53][..],
        ] {
            assert!(decode(&FILE.frame(body)).is_err(), "{body:?}");
        }
    }

    #[test]
    fn load_and_save() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(load(dir.path()).expect("missing"), None);
        let (replaced, saved) = save(dir.path(), &sample());
        saved.expect("save");
        assert!(replaced);
        assert!(!dir.path().join(FILE.temp).exists());
        assert_eq!(load(dir.path()).expect("load"), Some(sample()));
        std::fs::write(FILE.path(dir.path()), b"RPBASE01").expect("cut");
        let error = load(dir.path()).expect_err("cut file").to_string();
        assert!(
            error.contains("base") && error.contains("truncated"),
            "{error}"
        );
    }
}
