//! The on-disk record: `len: u32 | crc32c: u32 | id: u64 | epoch: u64 | hash: [u8; 32] | payload`,
//! little-endian, where `len` counts the bytes after the CRC and the CRC covers them.

use bytes::Bytes;
use replication_core::{Epoch, Tx, TxHash, TxId};

/// Bytes a record adds to its payload.
pub(crate) const OVERHEAD: usize = FRAME_HEADER + BODY_FIXED;

/// Bytes before the body: length and CRC.
pub(crate) const FRAME_HEADER: usize = 8;
/// Fixed part of the body: id, epoch, hash.
pub(crate) const BODY_FIXED: usize = 48;
/// The largest body accepted when reading, so that a corrupt length cannot make us allocate
/// gigabytes.
pub(crate) const MAX_BODY: usize = 256 << 20;

/// CRC-32C (Castagnoli, as iSCSI, ext4 and PostgreSQL's WAL use) of `bytes`.
///
/// crc-fast folds with carry-less multiplication (VPCLMULQDQ / PCLMULQDQ, or NEON's PMULL),
/// several times faster than the `crc32` instruction alone: a catching-up replica's read is
/// a page-cache copy plus this pass, so its speed sets how fast catch-up can go.
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Appends the record for `tx` to `out`.
pub(crate) fn encode(tx: &Tx, out: &mut Vec<u8>) {
    let body_len = BODY_FIXED + tx.payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&tx.id.0.to_le_bytes());
    out.extend_from_slice(&tx.epoch.0.to_le_bytes());
    out.extend_from_slice(&tx.hash.0);
    out.extend_from_slice(&tx.payload);
    let crc = checksum(&out[start + FRAME_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The size of `tx`'s record.
pub(crate) fn record_len(tx: &Tx) -> usize {
    FRAME_HEADER + BODY_FIXED + tx.payload.len()
}

/// Why bytes are not a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes than the header or the declared length.
    Short { needed: usize },
    /// A length that no record has.
    Length(u32),
    /// The checksum does not match.
    Crc,
}

/// A checked record: everything but the payload, and the record's size.
struct Checked {
    id: TxId,
    epoch: Epoch,
    hash: TxHash,
    total: usize,
}

/// Checks the record at the start of `bytes`: length, then CRC.
fn check(bytes: &[u8]) -> Result<Checked, Bad> {
    if bytes.len() < FRAME_HEADER {
        return Err(Bad::Short {
            needed: FRAME_HEADER,
        });
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if (body_len as usize) < BODY_FIXED || body_len as usize > MAX_BODY {
        return Err(Bad::Length(body_len));
    }
    let total = FRAME_HEADER + body_len as usize;
    if bytes.len() < total {
        return Err(Bad::Short { needed: total });
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let body = &bytes[FRAME_HEADER..total];
    if checksum(body) != crc {
        return Err(Bad::Crc);
    }
    let id = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let epoch = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let hash: [u8; 32] = body[16..48].try_into().expect("32 bytes");
    Ok(Checked {
        id: TxId(id),
        epoch: Epoch(epoch),
        hash: TxHash(hash),
        total,
    })
}

/// Parses the record at the start of `bytes`; returns it (its payload copied) and its size.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Tx, usize), Bad> {
    let checked = check(bytes)?;
    let payload = Bytes::copy_from_slice(&bytes[OVERHEAD..checked.total]);
    Ok((
        Tx {
            id: checked.id,
            epoch: checked.epoch,
            payload,
            hash: checked.hash,
        },
        checked.total,
    ))
}

/// Parses the record that fills `record` exactly; its payload shares `record`'s buffer.
pub(crate) fn decode_shared(record: &Bytes) -> Result<Tx, Bad> {
    let checked = check(record)?;
    if checked.total != record.len() {
        return Err(Bad::Length(record.len() as u32));
    }
    let payload = record.slice(OVERHEAD..checked.total);
    Ok(Tx {
        id: checked.id,
        epoch: checked.epoch,
        payload,
        hash: checked.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_core::LogPosition;

    #[test]
    fn checksum_is_crc32c() {
        // The check value of CRC-32C (RFC 3720, B.4): records written by any build agree.
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
        assert_eq!(checksum(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn round_trip_and_damage() {
        let tx = Tx::new(LogPosition::START, Epoch(2), Bytes::from_static(b"payload"));
        let mut bytes = Vec::new();
        encode(&tx, &mut bytes);
        assert_eq!(bytes.len(), record_len(&tx));
        assert_eq!(decode(&bytes), Ok((tx, bytes.len())));
        for cut in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Err(Bad::Short { .. })));
        }
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&flipped).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
    }
}
