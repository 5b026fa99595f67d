//! The `members` file: the membership [`TxLog::save_members`] saved, replaced whole and
//! atomically ([`SmallFile`]), so that a crash leaves either the old list or the new one.
//!
//! Body, little-endian, in the framing of [`crate::small_file`] (magic `RPMEMBRS`, version 1):
//!
//! ```text
//! count: u32, then per replica: node_len: u32 | node | database_len: u32 | database
//! ```
//!
//! [`TxLog::save_members`]: replication_core::TxLog::save_members

use std::path::Path;

use replication_core::{LogError, NodeId, ReplicaId};

use crate::small_file::{Body, SmallFile, put_text};

/// The `members` file.
pub(crate) const FILE: SmallFile = SmallFile {
    name: "members",
    temp: "members.tmp",
    magic: b"RPMEMBRS",
    version: 1,
    what: "membership",
};

/// Encodes `members` as the whole file.
pub(crate) fn encode(members: &[ReplicaId]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(members.len() as u32).to_le_bytes());
    for member in members {
        put_text(&mut body, member.node.as_str());
        put_text(&mut body, &member.database);
    }
    FILE.frame(&body)
}

/// Decodes a whole members file; the error says what is wrong, for the caller to name the
/// file.
fn decode(bytes: &[u8]) -> Result<Vec<ReplicaId>, String> {
    let mut body = Body(FILE.unframe(bytes)?);
    let count = body.u32()? as usize;
    // Each replica takes at least eight bytes: a corrupt count cannot reserve much.
    let mut members = Vec::with_capacity(count.min(body.remaining() / 8));
    for _ in 0..count {
        let node = body.text()?;
        let database = body.text()?;
        members.push(ReplicaId {
            node: NodeId(node),
            database,
        });
    }
    if body.remaining() > 0 {
        return Err(format!(
            "{} bytes after the last of {count} replicas",
            body.remaining()
        ));
    }
    Ok(members)
}

/// Reads the membership saved in `dir`: empty if no membership was ever saved (no file).
///
/// # Errors
/// [`LogError::Corrupt`] naming the file and what is wrong with it, for a file that is too
/// large, truncated or fails its checks; [`LogError::Io`] naming the file if it is unreadable.
pub(crate) fn load(dir: &Path) -> Result<Vec<ReplicaId>, LogError> {
    Ok(FILE.load_decoded(dir, decode)?.unwrap_or_default())
}

/// Durably replaces the membership saved in `dir` ([`SmallFile::save`]).
pub(crate) fn save(dir: &Path, members: &[ReplicaId]) -> (bool, Result<(), LogError>) {
    FILE.save(dir, &encode(members))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File};

    use super::*;
    use crate::record::checksum;
    use crate::small_file::MAX_FILE;

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
        let framed = |body: &[u8]| FILE.frame(body);
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
        assert!(!dir.path().join(FILE.temp).exists());
        assert_eq!(load(dir.path()).expect("load"), sample());

        fs::write(FILE.path(dir.path()), b"").expect("empty");
        let error = load(dir.path()).expect_err("empty file").to_string();
        assert!(
            error.contains("members") && error.contains("truncated"),
            "{error}"
        );

        let file = File::create(FILE.path(dir.path())).expect("create");
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
