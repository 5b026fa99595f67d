//! A simulated node: the real [`Engine`] (absent while the node is down), its disk and the
//! state machine's applied history, and the node's engine configuration.
//!
//! The configuration is drawn from the node's own stream, afresh at every boot, so a node
//! comes back from a crash with the settings (and engine jitter seed) it had before.

use std::sync::Arc;
use std::time::Duration;

use super::disk::Disk;
use super::rng::{Rng, Stream};
use super::snapshots::SimSnapshot;
use super::topology::NodeSpec;
use crate::engine::{Engine, EngineConfig, Recovered, Role, Timestamp};
use crate::quorum::Quorum;
use crate::snapshot::{SnapshotChunk, SnapshotMeta};
use crate::types::{LogPosition, Tx};

#[derive(Debug)]
pub(super) struct SimNode {
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) zone: String,
    pub(super) engine: Option<Engine>,
    pub(super) disk: Disk,
    /// What the state machine applied, in order.
    pub(super) applied: Vec<LogPosition>,
    /// Bumped on every crash: events addressed to an earlier incarnation are dropped.
    pub(super) incarnation: u64,
    /// When the node's next tick is scheduled, so that only one is pending at a time.
    pub(super) tick_at: Option<u64>,
    /// Set by the operator on an old primary that rejoins after a failover.
    pub(super) allow_tx_discarding: bool,
    /// Set by the operator on a node that rejoins a history lacking transactions it committed
    /// (after a forced promotion).
    pub(super) allow_rewind: bool,
    /// Under automatic failover: a primary writes only under the coordinator's lease.
    pub(super) leased: bool,
    /// As a primary, begin an epoch above this one (automatic failover's granted epoch less
    /// one, as `repnode` persists it).
    pub(super) min_epoch: crate::types::Epoch,
    /// The snapshots it holds, oldest first (the latest and the one before, which transfers
    /// in progress may still read, as the driver keeps a file it opened). Durable.
    pub(super) snapshots: Vec<Arc<SimSnapshot>>,
    /// A snapshot being received: what the source offered and the chunks stored. Survives a
    /// crash, as the driver's partial file does.
    pub(super) incoming: Option<(SnapshotMeta, Vec<SnapshotChunk>)>,
    config_rng: Rng,
}

impl SimNode {
    pub(super) fn new(seed: u64, index: usize, spec: &NodeSpec, role: Role) -> SimNode {
        SimNode {
            name: spec.name.clone(),
            role,
            zone: spec.zone.clone(),
            engine: None,
            disk: Disk::new(Rng::stream(seed, Stream::Disk(index))),
            applied: Vec::new(),
            incarnation: 0,
            tick_at: None,
            allow_tx_discarding: false,
            allow_rewind: false,
            leased: false,
            min_epoch: crate::types::Epoch(0),
            snapshots: Vec::new(),
            incoming: None,
            config_rng: Rng::stream(seed, Stream::Config(index)),
        }
    }

    /// Keeps `snapshot` as the latest, and the one before it.
    pub(super) fn keep_snapshot(&mut self, snapshot: Arc<SimSnapshot>) {
        self.snapshots.push(snapshot);
        self.snapshots
            .sort_by_key(|snapshot| snapshot.meta.last.tx_id);
        let excess = self.snapshots.len().saturating_sub(2);
        self.snapshots.drain(..excess);
    }

    /// The latest snapshot it holds.
    pub(super) fn latest_snapshot(&self) -> Option<&Arc<SimSnapshot>> {
        self.snapshots.last()
    }

    /// The snapshot with `digest`, if it still holds it.
    pub(super) fn snapshot_held(&self, digest: &[u8; 32]) -> Option<&Arc<SimSnapshot>> {
        self.snapshots.iter().find(|s| &s.meta.digest == digest)
    }

    /// Forgets everything on its disk (an operator re-seeds it).
    pub(super) fn reseed(&mut self, disk: Disk) {
        self.disk = disk;
        self.snapshots.clear();
        self.incoming = None;
    }

    pub(super) fn is_up(&self) -> bool {
        self.engine.is_some()
    }

    fn config(&self) -> EngineConfig {
        let mut rng = self.config_rng.clone();
        let mut config = EngineConfig::new(self.name.as_str(), "db", self.role.clone());
        config.heartbeat_interval = Duration::from_millis(50);
        config.peer_timeout = Duration::from_millis(300);
        config.reconnect_min = Duration::from_millis(10);
        config.reconnect_max = Duration::from_millis(200);
        config.prefetch_buffer = rng.range(2, 64) as u32;
        config.recent_cache_txs = rng.range(1, 64) as usize;
        config.max_batch_txs = rng.range(1, 16) as usize;
        config.max_uncommitted = rng.range(8, 128);
        config.write_timeout = rng
            .chance(50)
            .then(|| Duration::from_millis(rng.range(200, 3000)));
        config.tags.insert("zone".into(), self.zone.clone());
        config.allow_tx_discarding = self.allow_tx_discarding;
        config.allow_rewind = self.allow_rewind;
        config.leased = self.leased;
        config.min_epoch = self.min_epoch;
        config.seed = rng.next();
        config.snapshot_format = Some(super::snapshots::format());
        config.snapshot_window = 1 + (config.seed % 4) as u32;
        config
    }

    /// Starts the engine from what the disk holds, under `policy`; returns the last position.
    pub(super) fn boot(&mut self, policy: &Quorum, now: u64) -> LogPosition {
        let state = self.disk.state();
        // The state machine is rebuilt from the committed log, as a real node does.
        let committed = self.disk.committed() as usize;
        self.applied = self.disk.txs()[..committed]
            .iter()
            .map(Tx::position)
            .collect();
        self.engine = Some(Engine::new(
            self.config(),
            Arc::new(policy.clone()),
            Recovered {
                state,
                epoch_claim: self.disk.epoch_claim().clone(),
                last_epoch: self.disk.last_epoch(),
                members: self.disk.members().to_vec(),
                base: self.disk.base(),
                snapshot: self.latest_snapshot().map(|s| s.meta.clone()),
                partial_snapshot: self
                    .incoming
                    .as_ref()
                    .map(|(meta, chunks)| (meta.clone(), chunks.len() as u64)),
            },
            Timestamp(now),
        ));
        self.tick_at = None;
        state.last
    }

    /// Loses the engine and whatever the disk had not made durable.
    pub(super) fn crash(&mut self) {
        self.engine = None;
        self.incarnation += 1;
        self.disk.crash();
    }
}
