//! Test support that other crates reuse: the [`TxLog`](crate::TxLog),
//! [`Coordinator`](crate::coordinator::Coordinator) and
//! [`Transport`](crate::Transport) conformance suites, an in-memory transport with fault
//! injection, a recording state machine, fast timers for clusters in tests, and the
//! deterministic cluster simulator.

mod coordinator_suite;
mod log_suite;
mod mem_coordinator;
mod mem_transport;
pub mod sim;
mod transport_suite;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use coordinator_suite::coordinator_conformance;
pub use log_suite::{LogFactory, txlog_conformance};
pub use mem_coordinator::{CoordinatorState, MemCoordinator, MemCoordinatorClient};
pub use mem_transport::{MemEndpoint, MemNetwork};
pub use transport_suite::{TransportFactory, transport_conformance};

use crate::driver::{RollbackFile, RollbackSink};
use crate::engine::EngineConfig;
use crate::snapshot::{SnapshotError, SnapshotExport, SnapshotFormat, SnapshotStage};
use crate::state_machine::StateMachine;
use crate::types::{LogPosition, Tx, TxId};

/// A state machine that records the position of every transaction it applies and the first
/// out-of-order application, for tests to inspect through a clone.
#[derive(Clone, Debug, Default)]
pub struct RecordingStateMachine {
    applied: Arc<Mutex<Vec<LogPosition>>>,
    out_of_order: Arc<Mutex<Option<String>>>,
    /// Its snapshot format's version is 1 plus this.
    version_offset: u32,
}

impl RecordingStateMachine {
    /// A recording whose snapshots are of format version `version` (1 by default): one of
    /// another version refuses to install the others' snapshots.
    pub fn of_version(version: u32) -> RecordingStateMachine {
        RecordingStateMachine {
            version_offset: version.saturating_sub(1),
            ..RecordingStateMachine::default()
        }
    }

    /// Every applied position, in order.
    pub fn positions(&self) -> Vec<LogPosition> {
        self.applied.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// A description of the first transaction applied out of order, if any.
    pub fn order_violation(&self) -> Option<String> {
        self.out_of_order.lock().ok().and_then(|v| v.clone())
    }
}

impl StateMachine for RecordingStateMachine {
    fn apply(&mut self, tx: &Tx) {
        let Ok(mut applied) = self.applied.lock() else {
            return;
        };
        let expected = TxId(applied.len() as u64 + 1);
        if tx.id != expected
            && let Ok(mut violation) = self.out_of_order.lock()
        {
            violation.get_or_insert(format!("applied {} where {expected} was due", tx.id));
        }
        applied.push(tx.position());
    }

    fn applied(&self) -> TxId {
        TxId(self.applied.lock().map(|a| a.len() as u64).unwrap_or(0))
    }

    fn can_rewind(&self) -> bool {
        true
    }

    /// Forgets the positions after `last`: the record is its own history.
    fn rewind(&mut self, last: TxId) -> TxId {
        if let Ok(mut applied) = self.applied.lock() {
            applied.truncate(last.0 as usize);
        }
        self.applied()
    }

    fn snapshot_format(&self) -> Option<SnapshotFormat> {
        Some(recording_format(self.version_offset))
    }

    /// The recorded positions, 40 bytes each (tx id little endian, hash), across chunks.
    fn export(&self) -> Result<(TxId, Box<dyn SnapshotExport>), SnapshotError> {
        let positions = self.positions();
        let mut bytes = Vec::with_capacity(positions.len() * POSITION_BYTES);
        for position in &positions {
            bytes.extend_from_slice(&position.tx_id.0.to_le_bytes());
            bytes.extend_from_slice(&position.hash.0);
        }
        let last = TxId(positions.len() as u64);
        Ok((last, Box::new(BytesExport(bytes::Bytes::from(bytes)))))
    }

    fn stage(
        &mut self,
        format: &SnapshotFormat,
        last: TxId,
    ) -> Result<Box<dyn SnapshotStage>, SnapshotError> {
        let supported = recording_format(self.version_offset);
        if *format != supported {
            return Err(SnapshotError::FormatMismatch {
                offered: format.clone(),
                supported: supported.to_string(),
            });
        }
        Ok(Box::new(RecordingStage {
            target: self.clone(),
            last,
            bytes: Vec::new(),
        }))
    }
}

const POSITION_BYTES: usize = 40;

fn recording_format(version_offset: u32) -> SnapshotFormat {
    SnapshotFormat {
        name: "recording".into(),
        version: 1 + version_offset,
    }
}

/// An export of bytes held whole (test state is small).
struct BytesExport(bytes::Bytes);

impl SnapshotExport for BytesExport {
    fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<bytes::Bytes>, SnapshotError> {
        let n = self.0.len().min(max_bytes.max(1));
        Ok((n > 0).then(|| self.0.split_to(n)))
    }
}

/// A recording staged from a snapshot: the positions it lists replace the record on commit.
struct RecordingStage {
    target: RecordingStateMachine,
    last: TxId,
    bytes: Vec<u8>,
}

impl SnapshotStage for RecordingStage {
    fn write(&mut self, data: &[u8]) -> Result<(), SnapshotError> {
        self.bytes.extend_from_slice(data);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), SnapshotError> {
        if !self.bytes.len().is_multiple_of(POSITION_BYTES)
            || self.bytes.len() / POSITION_BYTES != self.last.0 as usize
        {
            return Err(SnapshotError::Refused(format!(
                "{} bytes do not hold the {} positions up to {}",
                self.bytes.len(),
                self.last.0,
                self.last
            )));
        }
        let positions: Vec<LogPosition> = self
            .bytes
            .chunks_exact(POSITION_BYTES)
            .map(|record| {
                let mut id = [0u8; 8];
                id.copy_from_slice(&record[..8]);
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&record[8..]);
                LogPosition {
                    tx_id: TxId(u64::from_le_bytes(id)),
                    hash: crate::types::TxHash(hash),
                }
            })
            .collect();
        let mut applied = self
            .target
            .applied
            .lock()
            .map_err(|_| SnapshotError::Refused("the record is poisoned".into()))?;
        *applied = positions;
        Ok(())
    }
}

/// A rollback sink that keeps the dropped transactions in memory, one list per rollback, for
/// tests to inspect through a clone.
#[derive(Clone, Debug, Default)]
pub struct MemRollback {
    rollbacks: Arc<Mutex<Vec<Vec<Tx>>>>,
}

impl MemRollback {
    /// Every finished rollback, oldest first.
    pub fn rollbacks(&self) -> Vec<Vec<Tx>> {
        self.rollbacks.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl RollbackSink for MemRollback {
    fn create(&self, _from: TxId, _to: TxId) -> std::io::Result<Box<dyn RollbackFile>> {
        Ok(Box::new(MemRollbackFile {
            sink: self.clone(),
            txs: Vec::new(),
        }))
    }
}

struct MemRollbackFile {
    sink: MemRollback,
    txs: Vec<Tx>,
}

impl RollbackFile for MemRollbackFile {
    fn write(&mut self, txs: &[Tx]) -> std::io::Result<()> {
        self.txs.extend_from_slice(txs);
        Ok(())
    }

    fn finish(self: Box<Self>) -> std::io::Result<String> {
        let mut rollbacks = self
            .sink
            .rollbacks
            .lock()
            .map_err(|_| std::io::Error::other("rollback store poisoned"))?;
        rollbacks.push(self.txs);
        Ok(format!("memory #{}", rollbacks.len()))
    }
}

/// A state machine that keeps nothing but its position: for benchmarks that measure
/// replication, not the application.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardingStateMachine(TxId);

impl StateMachine for DiscardingStateMachine {
    fn apply(&mut self, tx: &Tx) {
        self.0 = tx.id;
    }

    fn applied(&self) -> TxId {
        self.0
    }
}

/// `config` with the timers of a cluster in a test: heartbeats every 50 ms, a peer lost after
/// 400 ms of silence, reconnection after 10 ms doubling up to 100 ms. A test of a lost peer
/// or a reconnection then takes well under a second, while a silence of 400 ms still means a
/// lost peer rather than a busy machine.
pub fn fast_timers(mut config: EngineConfig) -> EngineConfig {
    config.heartbeat_interval = Duration::from_millis(50);
    config.peer_timeout = Duration::from_millis(400);
    config.reconnect_min = Duration::from_millis(10);
    config.reconnect_max = Duration::from_millis(100);
    config
}
