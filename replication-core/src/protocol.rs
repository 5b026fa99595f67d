//! The replication protocol: the messages nodes exchange and their framing.
//!
//! A replica opens a channel to its source and sends [`Message::Subscribe`]; the source answers
//! [`Message::Accepted`] (or [`Message::Refused`], or [`Message::Diverged`] when the replica's
//! log disagrees with its own) and then streams [`Message::Txs`] and [`Message::Committed`]; the
//! replica answers with [`Message::Ack`] whenever more of its log becomes durable, and as a
//! heartbeat. Each message is one frame, encoded with postcard, at most [`MAX_FRAME_SIZE`]
//! bytes unless the transport is configured otherwise.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::quorum::Tags;
use crate::snapshot::SnapshotMeta;
use crate::types::{Epoch, EpochClaim, LogPosition, ReplicaId, Tx, TxHash, TxId};

/// The version of this protocol. A peer speaking another version is refused with
/// [`Refusal::ProtocolVersion`]. Version 4 added [`Refusal::NoLease`]; version 5 the snapshot
/// transfer ([`Message::SnapshotOffer`], [`Message::SnapshotAck`], [`Message::SnapshotChunk`],
/// `snapshot` in [`Message::Subscribe`], [`Refusal::SnapshotUnavailable`]).
pub const PROTOCOL_VERSION: u16 = 5;

/// The default largest frame, in bytes. Larger frames are refused without being read whole.
pub const MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// How many hashes a [`Message::Diverged`] carries at most, which bounds its size.
pub const DIVERGENCE_WINDOW: usize = 1024;

/// One replication message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Replica → source: start streaming after my log.
    Subscribe {
        /// [`PROTOCOL_VERSION`] of the replica.
        version: u16,
        /// The database at the source to replicate.
        database: String,
        /// The highest epoch the replica has seen, and the primary it recorded for it.
        claim: EpochClaim,
        /// The replica's last transaction.
        last: LogPosition,
        /// A position the replica knows it shares with the source (at least its commit point):
        /// the source checks the replica's log against its own only after this.
        known_common: LogPosition,
        /// How many transactions the source may send beyond the replica's acknowledged
        /// position (the replica's prefetch buffer).
        window: u32,
        /// Labels for quorum policies, such as a zone.
        tags: Tags,
        /// The replica's own database: with its node, the replica's identity at the source
        /// (two replica databases of one source on one server are two replicas).
        replica_database: String,
        /// Whether the replica would rather, or must, start from the source's snapshot.
        snapshot: SnapshotWish,
    },
    /// Source → replica: subscription accepted; transactions follow.
    Accepted {
        /// The source's epoch and its primary: the replica records it before it acknowledges
        /// anything.
        claim: EpochClaim,
        /// The primary's address as this source knows it; `None` when the source is the
        /// primary (the replica dialled it). Lets a replica of a replica name the primary.
        primary: Option<String>,
        /// The source's commit point.
        committed: TxId,
    },
    /// Source → replica: subscription refused.
    Refused(Refusal),
    /// Source → replica: the replica's log disagrees with the source's after `known_common`.
    /// The source sends its hashes for the transactions after `known_common` (at most
    /// [`DIVERGENCE_WINDOW`]) so that the replica can find the last transaction they share.
    Diverged {
        /// The source's epoch and its primary.
        claim: EpochClaim,
        /// The hashes of the source's transactions `known_common + 1 ..`.
        source_hashes: Vec<TxHash>,
        /// The source's last transaction it would serve.
        source_last: TxId,
    },
    /// Source → replica: the next transactions, and the source's commit point.
    Txs {
        /// The source's epoch and its primary, which the replica records before it stores the
        /// transactions: a relay may have moved to a newer epoch since it accepted us.
        claim: EpochClaim,
        /// Contiguous transactions following the last one sent.
        txs: Vec<Tx>,
        /// The source's commit point.
        committed: TxId,
    },
    /// Source → replica: the commit point moved (also sent as a heartbeat).
    Committed {
        /// The source's epoch and its primary.
        claim: EpochClaim,
        /// The source's commit point.
        committed: TxId,
    },
    /// Replica → source: everything up to `durable` is durably stored here (also a heartbeat).
    Ack {
        /// The replica's durable position.
        durable: LogPosition,
    },
    /// Source → replica, answering a subscription: the transactions the replica needs next are
    /// no longer in the source's log (compacted), or it asked for a snapshot: here is the
    /// snapshot to start from instead. The replica answers [`Message::SnapshotAck`] with the
    /// first chunk it lacks (resuming a transfer it began before), then subscribes again on
    /// the same channel once the snapshot is installed.
    SnapshotOffer {
        /// The source's epoch and its primary (checked, not recorded, by the replica).
        claim: EpochClaim,
        /// The snapshot: its position, format, size and digest.
        meta: SnapshotMeta,
    },
    /// Replica → source: the replica holds chunks `0..next` of the snapshot with `digest`,
    /// stored; the source sends from `next` on, a few chunks ahead at most. Repeated as a
    /// heartbeat while the replica installs the snapshot.
    SnapshotAck {
        /// The snapshot's digest ([`SnapshotMeta::digest`]).
        digest: [u8; 32],
        /// The first chunk the replica lacks.
        next: u64,
    },
    /// Source → replica: one chunk of the snapshot offered, with its BLAKE3 hash. A chunk whose
    /// data does not match its hash is refused: the replica drops the channel and resumes
    /// from it.
    SnapshotChunk {
        /// The chunk's place, from 0.
        index: u64,
        /// Its data.
        data: Bytes,
        /// The BLAKE3 hash of `data`.
        hash: [u8; 32],
    },
}

/// What a subscribing replica wants of the source's snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotWish {
    /// Transactions from the log, unless the log no longer holds those it needs.
    #[default]
    Log,
    /// It holds nothing yet: a snapshot, if the source has one, rather than the whole
    /// history.
    Prefer,
    /// It must start again from a snapshot (finding common ground with the source needs
    /// transactions its own log compacted away): the source takes one if it has none.
    Need,
}

/// Why a source refused a subscription.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: source speaks {source_version}, replica {replica}")]
    ProtocolVersion {
        /// The source's version.
        source_version: u16,
        /// The replica's version.
        replica: u16,
    },
    /// The source holds no such database.
    #[error("unknown database {0:?}")]
    UnknownDatabase(String),
    /// The replica's identity may not replicate this database.
    #[error("identity {0:?} is not allowed to replicate this database")]
    NotAllowed(String),
    /// The replica has seen a higher epoch than the source: the source is stale (fenced).
    #[error("source epoch {source_epoch} is lower than the replica's epoch {replica}")]
    StaleSource {
        /// The source's epoch.
        source_epoch: Epoch,
        /// The replica's epoch.
        replica: Epoch,
    },
    /// Two primaries claim one epoch: the source's claim and the replica's name different
    /// nodes. At most one of them may write in it; the replica keeps the one it recorded
    /// first, and a primary told of another claim to its epoch fences itself. Promote again,
    /// above this epoch.
    #[error(
        "epoch {epoch} is claimed by two primaries: {source_primary} (the source's) and \
         {replica_primary} (the replica's); promote again above epoch {epoch}"
    )]
    EpochTaken {
        /// The epoch.
        epoch: Epoch,
        /// The primary the source names for it.
        source_primary: ReplicaId,
        /// The primary the replica recorded for it.
        replica_primary: ReplicaId,
    },
    /// The replica's committed position is beyond what this source holds (a lagging source):
    /// try again later.
    #[error("source holds transactions only up to {source_last}, behind the replica")]
    SourceBehind {
        /// The last transaction the source serves.
        source_last: TxId,
    },
    /// The replica's committed history differs from the source's: nothing may be discarded.
    #[error(
        "committed history differs at transaction {tx_id}: replica has {replica_hash}, source \
         has {}", source_hash.map(|h| h.to_hex()).unwrap_or_else(|| "nothing".into())
    )]
    CommittedDivergence {
        /// The transaction where the histories differ.
        tx_id: TxId,
        /// The replica's hash there.
        replica_hash: TxHash,
        /// The source's hash there, if it has that transaction.
        source_hash: Option<TxHash>,
    },
    /// The source is a primary under automatic failover that holds no leader lease (not
    /// granted yet, or expired): it serves no replica, so that none records a claim to an
    /// epoch the coordinator did not grant. Try again shortly, or follow the leader the
    /// coordinator names.
    #[error("the source holds no leader lease; it serves replicas once the coordinator grants one")]
    NoLease,
    /// The replica needs a snapshot (its transactions were compacted away at the source, or
    /// it must start again) and the source has none yet: it takes one; try again shortly.
    #[error(
        "the source has no snapshot to send yet (its log begins at transaction {first}); it \
         is taking one"
    )]
    SnapshotUnavailable {
        /// The first transaction the source's log holds.
        first: TxId,
    },
}

impl Refusal {
    /// [`Refusal::EpochTaken`] if `source` and `replica` name different primaries for one
    /// epoch.
    pub fn epoch_taken(source: &EpochClaim, replica: &EpochClaim) -> Option<Refusal> {
        if !source.conflicts_with(replica) {
            return None;
        }
        Some(Refusal::EpochTaken {
            epoch: source.epoch,
            source_primary: source.primary.clone()?,
            replica_primary: replica.primary.clone()?,
        })
    }
}

/// Errors encoding or decoding a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The frame is larger than allowed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes are not a valid message.
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a message into one frame, refusing one larger than `max_frame_size`.
pub fn encode(message: &Message, max_frame_size: usize) -> Result<Bytes, FrameError> {
    let bytes = postcard::to_allocvec(message)?;
    if bytes.len() > max_frame_size {
        return Err(FrameError::TooLarge {
            size: bytes.len(),
            limit: max_frame_size,
        });
    }
    Ok(Bytes::from(bytes))
}

/// Decodes one frame. Never panics, whatever the bytes.
pub fn decode(frame: &[u8], max_frame_size: usize) -> Result<Message, FrameError> {
    if frame.len() > max_frame_size {
        return Err(FrameError::TooLarge {
            size: frame.len(),
            limit: max_frame_size,
        });
    }
    let (message, rest) = postcard::take_from_bytes(frame)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(
            postcard::Error::DeserializeBadEncoding,
        ));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let tx = Tx::new(LogPosition::START, Epoch(3), Bytes::from_static(b"payload"));
        let message = Message::Txs {
            claim: EpochClaim::new(Epoch(3), Some(ReplicaId::new("n1", "app"))),
            txs: vec![tx],
            committed: TxId(0),
        };
        let frame = encode(&message, MAX_FRAME_SIZE).unwrap();
        assert_eq!(decode(&frame, MAX_FRAME_SIZE).unwrap(), message);
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let tx = Tx::new(LogPosition::START, Epoch(1), Bytes::from(vec![7u8; 4096]));
        let message = Message::Txs {
            claim: EpochClaim::new(Epoch(3), Some(ReplicaId::new("n1", "app"))),
            txs: vec![tx],
            committed: TxId(0),
        };
        assert!(matches!(
            encode(&message, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        let frame = encode(&message, MAX_FRAME_SIZE).unwrap();
        assert!(matches!(
            decode(&frame, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_frames_are_errors() {
        let message = Message::Ack {
            durable: LogPosition::START,
        };
        let frame = encode(&message, MAX_FRAME_SIZE).unwrap();
        for cut in 0..frame.len() {
            assert!(
                decode(&frame[..cut], MAX_FRAME_SIZE).is_err(),
                "cut at {cut}"
            );
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, MAX_FRAME_SIZE);
        }
    }
}
