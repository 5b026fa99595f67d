//! The application state machine of the reference node: a key-value store whose
//! transactions are atomic lists of sets and deletes, rebuilt from the log on restart.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use replication_core::{StateMachine, Tx, TxId};
use serde::{Deserialize, Serialize};

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Sets `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Removes `key`.
    Delete {
        /// The key.
        key: String,
    },
}

/// A transaction: its operations are applied together or not at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvTx {
    /// The operations, in order.
    pub ops: Vec<KvOp>,
}

impl KvTx {
    /// The payload that carries this transaction in the log.
    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_allocvec(self).unwrap_or_default())
    }

    /// Parses a payload.
    ///
    /// # Errors
    /// A payload that is not a transaction of this store.
    pub fn decode(payload: &[u8]) -> Result<KvTx, postcard::Error> {
        postcard::from_bytes(payload)
    }
}

/// The store: readers share it through clones; the replication driver applies to it.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    inner: Arc<RwLock<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Each key's value and the transaction that last set it.
    map: BTreeMap<String, (String, TxId)>,
    applied: TxId,
    applied_bytes: u64,
}

impl KvStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value of `key` and the transaction that set it.
    pub fn get(&self, key: &str) -> Option<(String, TxId)> {
        self.read().map.get(key).cloned()
    }

    /// Every key and value, in key order.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.read()
            .map
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    /// Payload bytes applied since the store was built.
    pub fn applied_bytes(&self) -> u64 {
        self.read().applied_bytes
    }

    /// The last transaction applied: reads reflect every transaction up to it.
    pub fn applied_tx(&self) -> TxId {
        self.read().applied
    }
}

impl StateMachine for KvStore {
    fn apply(&mut self, tx: &Tx) {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match KvTx::decode(&tx.payload) {
            Ok(kv) => {
                for op in kv.ops {
                    match op {
                        KvOp::Set { key, value } => {
                            inner.map.insert(key, (value, tx.id));
                        }
                        KvOp::Delete { key } => {
                            inner.map.remove(&key);
                        }
                    }
                }
            }
            // Committed all the same: every replica skips it alike.
            Err(error) => {
                tracing::warn!(tx = %tx.id, %error, "ignoring a payload that is not a key-value transaction")
            }
        }
        inner.applied = tx.id;
        inner.applied_bytes += tx.payload.len() as u64;
    }

    fn applied(&self) -> TxId {
        self.read().applied
    }

    fn can_rewind(&self) -> bool {
        true
    }

    /// Returns to the empty store: a value records only the transaction that last set it, not
    /// the one before, so the driver rebuilds the store by replaying the log up to `last`.
    /// A rewind is rare (an operator allows it after a forced promotion), and replaying is
    /// what a restart does anyway.
    fn rewind(&mut self, _last: TxId) -> TxId {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // A counter for metrics: it goes on counting what the replay applies again.
        let applied_bytes = inner.applied_bytes;
        *inner = Inner {
            applied_bytes,
            ..Inner::default()
        };
        TxId::ZERO
    }
}
