//! The application state machine of the reference node: a key-value store whose
//! transactions are atomic lists of sets and deletes, rebuilt from the log on restart.
//!
//! Its map is persistent (`imbl::OrdMap`, shared structure): a snapshot export clones it in
//! constant time and reads that version on its own while transactions go on applying, each
//! write copying only the nodes on its path.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use imbl::OrdMap;
use replication_core::snapshot::{SnapshotError, SnapshotExport, SnapshotFormat, SnapshotStage};
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
    map: OrdMap<String, (String, TxId)>,
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

    /// A digest of the whole state (every key, its value and the transaction that set it) and
    /// the last transaction it reflects: two stores that applied the same history agree,
    /// however each got there (replay or snapshot). Hashed outside the lock, on a copy-on-write
    /// view, so writes go on meanwhile.
    pub fn digest(&self) -> (TxId, [u8; 32]) {
        let (map, applied) = {
            let inner = self.read();
            (inner.map.clone(), inner.applied)
        };
        let mut hasher = blake3::Hasher::new();
        for (key, (value, set_by)) in map.iter() {
            hasher.update(&(key.len() as u64).to_le_bytes());
            hasher.update(key.as_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
            hasher.update(&set_by.0.to_le_bytes());
        }
        (applied, *hasher.finalize().as_bytes())
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

    fn snapshot_format(&self) -> Option<SnapshotFormat> {
        Some(kv_snapshot_format())
    }

    fn export(&self) -> Result<(TxId, Box<dyn SnapshotExport>), SnapshotError> {
        let inner = self.read();
        let export = KvExport {
            map: inner.map.clone(),
            after: None,
            carry: Bytes::new(),
        };
        Ok((inner.applied, Box::new(export)))
    }

    fn stage(
        &mut self,
        format: &SnapshotFormat,
        last: TxId,
    ) -> Result<Box<dyn SnapshotStage>, SnapshotError> {
        let supported = kv_snapshot_format();
        if *format != supported {
            return Err(SnapshotError::FormatMismatch {
                offered: format.clone(),
                supported: supported.to_string(),
            });
        }
        Ok(Box::new(KvStage {
            store: self.clone(),
            last,
            map: OrdMap::new(),
            pending: BytesMut::new(),
        }))
    }
}

/// The format of the key-value store's snapshots: each entry, in key order, as its length
/// (u32, little endian) and a postcard `SnapshotEntry`; entries run across chunk boundaries.
pub fn kv_snapshot_format() -> SnapshotFormat {
    SnapshotFormat {
        name: "repnode-kv".into(),
        version: 1,
    }
}

/// The largest entry a snapshot may hold: a staged snapshot keeps at most one partial entry.
const MAX_SNAPSHOT_ENTRY: usize = 64 << 20;

/// One key of a snapshot.
#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: String,
    value: String,
    /// The transaction that last set it.
    set_by: u64,
}

/// An export: a version of the map, read in key order from after the last key sent.
struct KvExport {
    map: OrdMap<String, (String, TxId)>,
    after: Option<String>,
    /// The rest of an entry that did not fit in the last chunk.
    carry: Bytes,
}

impl SnapshotExport for KvExport {
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Bytes>, SnapshotError> {
        let max_bytes = max_bytes.max(1);
        let mut chunk = BytesMut::with_capacity(max_bytes.min(1 << 20));
        loop {
            if !self.carry.is_empty() {
                let n = self.carry.len().min(max_bytes - chunk.len());
                chunk.put(self.carry.split_to(n));
                if chunk.len() == max_bytes {
                    break;
                }
            }
            let next = match &self.after {
                None => self.map.iter().next(),
                Some(key) => self
                    .map
                    .range::<_, String>((
                        std::ops::Bound::Excluded(key.clone()),
                        std::ops::Bound::Unbounded,
                    ))
                    .next(),
            };
            let Some((key, (value, set_by))) = next else {
                break;
            };
            let entry = SnapshotEntry {
                key: key.clone(),
                value: value.clone(),
                set_by: set_by.0,
            };
            let encoded = postcard::to_allocvec(&entry).map_err(|error| {
                SnapshotError::Refused(format!("encoding key {key:?}: {error}"))
            })?;
            let mut framed = BytesMut::with_capacity(4 + encoded.len());
            framed.put_u32_le(encoded.len() as u32);
            framed.put_slice(&encoded);
            self.carry = framed.freeze();
            self.after = Some(key.clone());
        }
        Ok((!chunk.is_empty()).then(|| chunk.freeze()))
    }
}

/// A snapshot being staged: a new map, switched in on commit.
struct KvStage {
    store: KvStore,
    last: TxId,
    map: OrdMap<String, (String, TxId)>,
    /// Bytes of an entry not yet complete.
    pending: BytesMut,
}

impl SnapshotStage for KvStage {
    fn write(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.pending.extend_from_slice(data);
        while self.pending.len() >= 4 {
            let length = u32::from_le_bytes([
                self.pending[0],
                self.pending[1],
                self.pending[2],
                self.pending[3],
            ]) as usize;
            if length > MAX_SNAPSHOT_ENTRY {
                return Err(SnapshotError::Refused(format!(
                    "an entry of {length} bytes, more than {MAX_SNAPSHOT_ENTRY}"
                )));
            }
            if self.pending.len() < 4 + length {
                break;
            }
            let framed = self.pending.split_to(4 + length);
            let entry: SnapshotEntry = postcard::from_bytes(&framed[4..])
                .map_err(|error| SnapshotError::Refused(format!("an entry: {error}")))?;
            self.map
                .insert(entry.key, (entry.value, TxId(entry.set_by)));
        }
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), SnapshotError> {
        if !self.pending.is_empty() {
            return Err(SnapshotError::Refused(format!(
                "the snapshot ends inside an entry ({} bytes left over)",
                self.pending.len()
            )));
        }
        let mut inner = self
            .store
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.map = self.map;
        inner.applied = self.last;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use replication_core::snapshot::SnapshotFile;
    use replication_core::types::{Epoch, LogPosition, TxHash};

    fn tx(id: u64, ops: Vec<KvOp>) -> Tx {
        Tx {
            id: TxId(id),
            epoch: Epoch(1),
            payload: KvTx { ops }.encode(),
            hash: TxHash([0; 32]),
        }
    }

    fn set(key: &str, value: &str) -> KvOp {
        KvOp::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A store of `n` keys, values of varied lengths, one transaction each, some deleted.
    fn filled(n: u64) -> KvStore {
        let mut store = KvStore::default();
        for i in 1..=n {
            let value = "v".repeat((i as usize * 37) % 300);
            store.apply(&tx(i, vec![set(&format!("key{i:05}"), &value)]));
        }
        store.apply(&tx(
            n + 1,
            vec![KvOp::Delete {
                key: "key00002".into(),
            }],
        ));
        store
    }

    fn entries(store: &KvStore) -> Vec<(String, (String, TxId))> {
        store
            .read()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn transfer(source: &KvStore, into: &mut KvStore, chunk: usize) -> Result<TxId, SnapshotError> {
        let (last, mut export) = source.export()?;
        let mut stage = into.stage(&kv_snapshot_format(), last)?;
        while let Some(data) = export.next_chunk(chunk)? {
            assert!(data.len() <= chunk, "{} > {chunk}", data.len());
            stage.write(&data)?;
        }
        stage.commit()?;
        Ok(last)
    }

    #[test]
    fn a_snapshot_installs_the_same_state_whatever_the_chunk_size() {
        let source = filled(500);
        for chunk in [1, 7, 64, 4096, 1 << 20] {
            let mut replica = KvStore::default();
            replica.apply(&tx(1, vec![set("stale", "gone after the install")]));
            let last = transfer(&source, &mut replica, chunk).expect("installed");
            assert_eq!(last, TxId(501));
            assert_eq!(replica.applied(), TxId(501));
            assert_eq!(entries(&replica), entries(&source), "chunks of {chunk}");
            assert_eq!(replica.get("stale"), None);
        }
    }

    #[test]
    fn an_export_is_a_read_view_that_writes_do_not_change() {
        let mut source = filled(50);
        let before = entries(&source);
        let (last, mut export) = source.export().expect("export");
        // Writes go on while the export is read.
        source.apply(&tx(52, vec![set("key00001", "changed"), set("new", "x")]));
        let mut replica = KvStore::default();
        let mut stage = replica.stage(&kv_snapshot_format(), last).expect("stage");
        while let Some(data) = export.next_chunk(100).expect("chunk") {
            stage.write(&data).expect("write");
        }
        stage.commit().expect("commit");
        assert_eq!(entries(&replica), before);
        assert_eq!(replica.applied(), TxId(51));
        assert_eq!(source.get("new").map(|(v, _)| v), Some("x".into()));
    }

    #[test]
    fn another_format_version_is_refused_before_any_data() {
        let mut replica = KvStore::default();
        let newer = SnapshotFormat {
            version: 2,
            ..kv_snapshot_format()
        };
        let refused = replica.stage(&newer, TxId(5)).err().expect("refused");
        assert!(
            refused
                .to_string()
                .contains("repnode-kv v2 cannot be installed")
                && refused.to_string().contains("repnode-kv v1"),
            "{refused}"
        );
    }

    #[test]
    fn an_incomplete_or_garbled_snapshot_leaves_the_live_state_untouched() {
        let source = filled(20);
        let (last, mut export) = source.export().expect("export");
        let first = export.next_chunk(50).expect("chunk").expect("data");
        let mut replica = KvStore::default();
        replica.apply(&tx(1, vec![set("live", "kept")]));
        let before = entries(&replica);
        let mut stage = replica.stage(&kv_snapshot_format(), last).expect("stage");
        stage.write(&first).expect("write");
        assert!(stage.commit().is_err(), "ends inside an entry");
        assert_eq!(entries(&replica), before);
        assert_eq!(replica.applied(), TxId(1));
        let mut stage = replica.stage(&kv_snapshot_format(), last).expect("stage");
        let garbled = stage.write(&[0xff, 0xff, 0xff, 0x7f]);
        assert!(
            matches!(garbled, Err(SnapshotError::Refused(_))),
            "{garbled:?}"
        );
        drop(stage);
        assert_eq!(entries(&replica), before);
    }

    #[test]
    fn a_snapshot_file_carries_the_store_to_a_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("snapshot");
        let source = filled(300);
        let (last, mut export) = source.export().expect("export");
        let position = LogPosition {
            tx_id: last,
            ..LogPosition::START
        };
        let meta = SnapshotFile::write(
            &path,
            kv_snapshot_format(),
            position,
            Epoch(1),
            export.as_mut(),
            1000,
        )
        .expect("written");
        assert!(meta.chunks > 1);
        let mut file = SnapshotFile::open(&path).expect("open");
        let mut replica = KvStore::default();
        let mut stage = replica
            .stage(&file.meta().format, file.meta().last.tx_id)
            .expect("stage");
        while let Some(chunk) = file.next_chunk().expect("chunk") {
            stage.write(&chunk.data).expect("write");
        }
        stage.commit().expect("commit");
        assert_eq!(entries(&replica), entries(&source));
        assert_eq!(replica.applied(), last);
    }
}
