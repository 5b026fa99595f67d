//! The data model: transaction ids, epochs, node identities, chained hashes and transactions.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The id of a transaction in a log. Ids are dense and start at 1; `TxId(0)` means "before the
/// first transaction" (an empty log).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TxId(pub u64);

impl TxId {
    /// The position before the first transaction.
    pub const ZERO: TxId = TxId(0);

    /// The id that follows this one.
    pub fn next(self) -> TxId {
        TxId(self.0 + 1)
    }

    /// The id before this one (saturating at zero).
    pub fn prev(self) -> TxId {
        TxId(self.0.saturating_sub(1))
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The epoch of a primary. A primary begins a new, higher epoch every time it starts, every
/// transaction records the epoch of the primary that wrote it, and nodes refuse sources of a
/// lower epoch than their own (fencing).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch that follows this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0 + 1)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who writes in an epoch: at most one primary does. A primary claims its epoch for itself
/// when it begins it; a replica records the claim its source passes on before it acknowledges
/// anything of that epoch, and refuses a second primary claiming the same epoch
/// ([`Refusal::EpochTaken`](crate::protocol::Refusal::EpochTaken)). That is the vote of Raft
/// without an election: two promotions racing to one epoch cannot both gather a quorum whose
/// members intersect.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EpochClaim {
    /// The epoch.
    pub epoch: Epoch,
    /// The primary that writes in it: its node and database. `None` when unknown (an epoch
    /// learned from transactions alone, or a log written before claims were recorded).
    pub primary: Option<ReplicaId>,
}

impl EpochClaim {
    /// `epoch`, claimed by `primary`.
    pub fn new(epoch: Epoch, primary: Option<ReplicaId>) -> EpochClaim {
        EpochClaim { epoch, primary }
    }

    /// Whether a log that saved `saved` records this claim in its place: a higher epoch, or
    /// the same epoch with its primary when `saved` named none. The rule of
    /// [`TxLog::save_epoch`](crate::TxLog::save_epoch), for stores to share.
    pub fn replaces(&self, saved: &EpochClaim) -> bool {
        self.epoch > saved.epoch
            || (self.epoch == saved.epoch && saved.primary.is_none() && self.primary.is_some())
    }

    /// Whether this claim and `other` name two different primaries for one epoch.
    pub fn conflicts_with(&self, other: &EpochClaim) -> bool {
        self.epoch == other.epoch
            && matches!((&self.primary, &other.primary), (Some(a), Some(b)) if a != b)
    }
}

impl fmt::Display for EpochClaim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.primary {
            Some(primary) => write!(f, "epoch {} of {primary}", self.epoch),
            None => write!(f, "epoch {} (primary unknown)", self.epoch),
        }
    }
}

/// The identity of a node, as the transport authenticated it (for QUIC, the name in its
/// certificate). Quorum policies name replicas by this identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// Makes an identity from a name.
    pub fn new(name: impl Into<String>) -> NodeId {
        NodeId(name.into())
    }

    /// The identity as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(name: &str) -> NodeId {
        NodeId::new(name)
    }
}

/// A replica as its source knows it: the replica's node and the name of its database there.
/// Two replica databases of one source on the same server are two replicas. Text form:
/// `node/database`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReplicaId {
    /// The replica's node, as the transport authenticated it.
    pub node: NodeId,
    /// The replica's database on that node.
    pub database: String,
}

impl ReplicaId {
    /// The replica `database` on `node`.
    pub fn new(node: impl Into<NodeId>, database: impl Into<String>) -> ReplicaId {
        ReplicaId {
            node: node.into(),
            database: database.into(),
        }
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.node, self.database)
    }
}

/// A replica identity that is not `node/database`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid replica {0:?}: expected NODE/DATABASE")]
pub struct ParseReplicaIdError(String);

impl std::str::FromStr for ReplicaId {
    type Err = ParseReplicaIdError;

    fn from_str(text: &str) -> Result<ReplicaId, ParseReplicaIdError> {
        match text.split_once('/') {
            Some((node, database))
                if !node.is_empty() && !database.is_empty() && !database.contains('/') =>
            {
                Ok(ReplicaId::new(node, database))
            }
            _ => Err(ParseReplicaIdError(text.to_string())),
        }
    }
}

/// A 32-byte BLAKE3 hash that chains a transaction to all transactions before it.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TxHash(pub [u8; 32]);

impl TxHash {
    /// The hash that "precedes" transaction 1.
    pub const GENESIS: TxHash = TxHash([0; 32]);

    /// Lower-case hexadecimal, as status output shows it.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0
            .iter()
            .fold(String::with_capacity(64), |mut out, byte| {
                let _ = write!(out, "{byte:02x}");
                out
            })
    }
}

impl fmt::Debug for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes are enough to tell hashes apart in logs and test output.
        write!(f, "{}…", &self.to_hex()[..16])
    }
}

impl fmt::Display for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Computes the chained hash of a transaction: BLAKE3 over the previous transaction's hash, the
/// id, the epoch and the payload. Two logs that agree on `(id, hash)` therefore agree on every
/// transaction up to `id`.
pub fn chain_hash(prev: &TxHash, id: TxId, epoch: Epoch, payload: &[u8]) -> TxHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&prev.0);
    hasher.update(&id.0.to_le_bytes());
    hasher.update(&epoch.0.to_le_bytes());
    hasher.update(&(payload.len() as u64).to_le_bytes());
    hasher.update(payload);
    TxHash(*hasher.finalize().as_bytes())
}

/// A transaction: an opaque payload the framework never interprets, the epoch of the primary that
/// wrote it, and its chained hash.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tx {
    /// Its position in the log.
    pub id: TxId,
    /// The epoch of the primary that wrote it.
    pub epoch: Epoch,
    /// The application's bytes.
    pub payload: Bytes,
    /// `chain_hash(previous hash, id, epoch, payload)`.
    pub hash: TxHash,
}

impl Tx {
    /// Makes the transaction that follows `prev` (the position of the previous transaction).
    pub fn new(prev: LogPosition, epoch: Epoch, payload: Bytes) -> Tx {
        let id = prev.tx_id.next();
        let hash = chain_hash(&prev.hash, id, epoch, &payload);
        Tx {
            id,
            epoch,
            payload,
            hash,
        }
    }

    /// The position this transaction occupies.
    pub fn position(&self) -> LogPosition {
        LogPosition {
            tx_id: self.id,
            hash: self.hash,
        }
    }

    /// Checks that this transaction directly follows `prev` and that its hash is the chained
    /// hash of its contents.
    pub fn verify_follows(&self, prev: &LogPosition) -> Result<(), ChainError> {
        if self.id != prev.tx_id.next() {
            return Err(ChainError::Gap {
                expected: prev.tx_id.next(),
                found: self.id,
            });
        }
        let expected = chain_hash(&prev.hash, self.id, self.epoch, &self.payload);
        if expected != self.hash {
            return Err(ChainError::HashMismatch {
                tx_id: self.id,
                expected,
                found: self.hash,
            });
        }
        Ok(())
    }

    /// An estimate of the bytes this transaction takes on the wire and in buffers.
    pub fn encoded_len_hint(&self) -> usize {
        self.payload.len() + 56
    }
}

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("id", &self.id)
            .field("epoch", &self.epoch)
            .field("payload_len", &self.payload.len())
            .field("hash", &self.hash)
            .finish()
    }
}

/// Why a transaction does not extend a chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ChainError {
    /// The transaction's id is not the next one.
    #[error("expected transaction {expected}, received {found}")]
    Gap {
        /// The id that should have come next.
        expected: TxId,
        /// The id that came.
        found: TxId,
    },
    /// The transaction's hash is not the chained hash of its contents: it was altered, or it
    /// belongs to another history.
    #[error("transaction {tx_id} fails the hash chain: expected {expected}, found {found}")]
    HashMismatch {
        /// The transaction.
        tx_id: TxId,
        /// The chained hash of what was received.
        expected: TxHash,
        /// The hash the transaction carried.
        found: TxHash,
    },
}

/// A position in a log: a transaction id and the hash of that transaction (`GENESIS` for
/// `TxId::ZERO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogPosition {
    /// The id of the last transaction up to this position.
    pub tx_id: TxId,
    /// Its hash.
    pub hash: TxHash,
}

impl LogPosition {
    /// The position of an empty log.
    pub const START: LogPosition = LogPosition {
        tx_id: TxId::ZERO,
        hash: TxHash::GENESIS,
    };
}

impl fmt::Display for LogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{:?}", self.tx_id, self.hash)
    }
}

/// Where a log begins: the position just before the first transaction it holds, with that
/// transaction's epoch. [`LogBase::START`] for a log that holds its whole history; after
/// compaction, the last transaction removed; after a snapshot was installed, the snapshot's
/// last transaction. The first transaction a log holds must chain from its base's hash.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LogBase {
    /// The last transaction before the log's first, with its hash.
    pub position: LogPosition,
    /// That transaction's epoch (`Epoch(0)` at the start).
    pub epoch: Epoch,
}

impl LogBase {
    /// The base of a log that holds its whole history.
    pub const START: LogBase = LogBase {
        position: LogPosition::START,
        epoch: Epoch(0),
    };

    /// The first transaction such a log can hold.
    pub fn first(&self) -> TxId {
        self.position.tx_id.next()
    }
}

/// What a log reports about itself, as immudb's status shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// The highest epoch this node has begun or seen from a source, durably recorded.
    pub epoch: Epoch,
    /// The last transaction appended (readable, not necessarily durable yet).
    pub last: LogPosition,
    /// The last transaction durably stored: immudb's "precommitted" position.
    pub durable: LogPosition,
    /// The last transaction known committed.
    pub committed: LogPosition,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_detects_tampering_and_gaps() {
        let t1 = Tx::new(LogPosition::START, Epoch(1), Bytes::from_static(b"a"));
        let t2 = Tx::new(t1.position(), Epoch(1), Bytes::from_static(b"b"));
        assert!(t1.verify_follows(&LogPosition::START).is_ok());
        assert!(t2.verify_follows(&t1.position()).is_ok());
        assert!(matches!(
            t2.verify_follows(&LogPosition::START),
            Err(ChainError::Gap { .. })
        ));

        let mut forged = t2.clone();
        forged.payload = Bytes::from_static(b"c");
        assert!(matches!(
            forged.verify_follows(&t1.position()),
            Err(ChainError::HashMismatch { .. })
        ));
        let mut other_epoch = t2.clone();
        other_epoch.epoch = Epoch(2);
        assert!(other_epoch.verify_follows(&t1.position()).is_err());
    }

    #[test]
    fn same_payload_different_history_differs() {
        let a = Tx::new(LogPosition::START, Epoch(1), Bytes::from_static(b"x"));
        let b = Tx::new(LogPosition::START, Epoch(2), Bytes::from_static(b"x"));
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash.to_hex().len(), 64);
    }
}
