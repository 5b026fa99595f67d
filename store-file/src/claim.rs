//! The `epoch-claim` file: the primary that claims the log's epoch, as
//! [`TxLog::save_epoch`] saved it, replaced whole and atomically ([`SmallFile`]). The epoch
//! itself lives in the `meta` file, which the commit point rewrites often; the claim changes
//! only when an epoch begins or its primary is learned, and a name does not fit a meta slot.
//!
//! Body, little-endian, in the framing of [`crate::small_file`] (magic `RPCLAIM1`, version 1):
//!
//! ```text
//! epoch: u64 | node_len: u32 | node | database_len: u32 | database
//! ```
//!
//! A save writes this file before the meta file, so a crash between the two leaves a claim of
//! a higher epoch than the meta file's: the open takes the higher. A claim of a lower epoch
//! than the meta file's is an epoch learned later without its primary, and names nobody.
//!
//! [`TxLog::save_epoch`]: replication_core::TxLog::save_epoch

use std::path::Path;

use replication_core::{Epoch, EpochClaim, LogError, NodeId, ReplicaId};

use crate::small_file::{Body, SmallFile, put_text};

/// The `epoch-claim` file.
pub(crate) const FILE: SmallFile = SmallFile {
    name: "epoch-claim",
    temp: "epoch-claim.tmp",
    magic: b"RPCLAIM1",
    version: 1,
    what: "epoch claim",
};

/// The primary of an epoch, as the file holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SavedClaim {
    /// The epoch.
    pub(crate) epoch: Epoch,
    /// Its primary.
    pub(crate) primary: ReplicaId,
}

impl SavedClaim {
    /// `claim`'s primary and epoch, if it names one.
    pub(crate) fn of(claim: &EpochClaim) -> Option<SavedClaim> {
        Some(SavedClaim {
            epoch: claim.epoch,
            primary: claim.primary.clone()?,
        })
    }

    /// The claim of `epoch` (the meta file's) this file makes: its primary if it is of that
    /// epoch, nobody otherwise.
    pub(crate) fn claim_of(saved: Option<&SavedClaim>, epoch: Epoch) -> EpochClaim {
        let primary = saved
            .filter(|saved| saved.epoch == epoch)
            .map(|saved| saved.primary.clone());
        EpochClaim::new(epoch, primary)
    }
}

/// Encodes `claim` as the whole file.
pub(crate) fn encode(claim: &SavedClaim) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&claim.epoch.0.to_le_bytes());
    put_text(&mut body, claim.primary.node.as_str());
    put_text(&mut body, &claim.primary.database);
    FILE.frame(&body)
}

/// Decodes a whole claim file; the error says what is wrong, for the caller to name the file.
fn decode(bytes: &[u8]) -> Result<SavedClaim, String> {
    let mut body = Body(FILE.unframe(bytes)?);
    let epoch = Epoch(body.u64()?);
    let node = body.text()?;
    let database = body.text()?;
    if body.remaining() > 0 {
        return Err(format!("{} bytes after the claim", body.remaining()));
    }
    Ok(SavedClaim {
        epoch,
        primary: ReplicaId {
            node: NodeId(node),
            database,
        },
    })
}

/// Reads the claim saved in `dir`: `None` if no primary was ever recorded (no file).
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and what is wrong with it; [`LogError::Io`] naming
/// the file if it is unreadable.
pub(crate) fn load(dir: &Path) -> Result<Option<SavedClaim>, LogError> {
    FILE.load_decoded(dir, decode)
}

/// Durably replaces the claim saved in `dir` ([`SmallFile::save`]).
pub(crate) fn save(dir: &Path, claim: &SavedClaim) -> (bool, Result<(), LogError>) {
    FILE.save(dir, &encode(claim))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SavedClaim {
        SavedClaim {
            epoch: Epoch(7),
            primary: ReplicaId::new("ñode-a", "orders"),
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(decode(&encode(&sample())), Ok(sample()));
    }

    #[test]
    fn the_format_is_stable() {
        // The bytes on disk are a format: a change here must come with a new version.
        let bytes = encode(&SavedClaim {
            epoch: Epoch(2),
            primary: ReplicaId::new("n", "db"),
        });
        assert_eq!(&bytes[..8], b"RPCLAIM1");
        assert_eq!(
            &bytes[12..],
            &[
                1, 0, 0, 0, 19, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'n', 2, 0, 0, 0,
                b'd', b'b'
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
        for body in [
            &[][..],
            &[2, 0, 0, 0, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xff, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..],
        ] {
            assert!(decode(&FILE.frame(body)).is_err(), "{body:?}");
        }
    }

    #[test]
    fn the_claim_of_the_meta_epoch() {
        let saved = sample();
        assert_eq!(
            SavedClaim::claim_of(Some(&saved), Epoch(7)),
            EpochClaim::new(Epoch(7), Some(saved.primary.clone()))
        );
        assert_eq!(
            SavedClaim::claim_of(Some(&saved), Epoch(8)),
            EpochClaim::new(Epoch(8), None),
            "an epoch learned after the claim names nobody"
        );
        assert_eq!(
            SavedClaim::claim_of(None, Epoch(3)),
            EpochClaim::new(Epoch(3), None)
        );
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
        std::fs::write(FILE.path(dir.path()), b"RPCLAIM1").expect("cut");
        let error = load(dir.path()).expect_err("cut file").to_string();
        assert!(
            error.contains("epoch-claim") && error.contains("truncated"),
            "{error}"
        );
    }
}
