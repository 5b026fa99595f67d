//! Snapshots and compaction in the simulation, as repnode's retention task and the driver do
//! them: every so often a node (any, primary or replica) takes a snapshot of its state machine
//! and compacts its log below it, sparing or not the replicas that lag (`unpin_below`); a
//! replica whose next transactions were compacted away at its source is sent the snapshot,
//! chunk by chunk over the simulated network, resumes a transfer a crash or a cut channel
//! interrupted, and installs it.
//!
//! The state machine's state is the list of positions it applied; a snapshot's chunks are
//! those positions, encoded, so what a replica installs is what crossed the network. The
//! transactions up to the snapshot (which the engine cannot read any more) are kept aside by
//! digest, for the checks that compare whole histories. A replica's state after an install
//! must be the committed history up to the snapshot's last transaction.
//!
//! Retention draws from a stream of its own, so the faults of a seed stay what they were.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::oracle::Check;
use super::rng::{Rng, Stream};
use super::world::{SimEvent, World};
use crate::engine::{ConnId, Event};
use crate::snapshot::{SnapshotChunk, SnapshotError, SnapshotFormat, SnapshotMeta};
use crate::types::{Epoch, LogPosition, Tx, TxHash, TxId};

/// Positions per chunk: small, so that transfers span several messages.
const POSITIONS_PER_CHUNK: usize = 16;
/// An encoded position: its id and hash.
const POSITION_BYTES: usize = 8 + 32;

/// The format of the simulated state machine's snapshots.
pub(super) fn format() -> SnapshotFormat {
    SnapshotFormat {
        name: "sim".into(),
        version: 1,
    }
}

/// A snapshot taken by a node: what it sends, and the history it stands for.
#[derive(Debug)]
pub(super) struct SimSnapshot {
    pub(super) meta: SnapshotMeta,
    pub(super) chunks: Vec<SnapshotChunk>,
    /// The transactions up to `meta.last`, kept aside for the checks.
    pub(super) txs: Arc<Vec<Tx>>,
}

/// What the simulation keeps of snapshots.
#[derive(Debug)]
pub(super) struct Snapshots {
    rng: Rng,
    /// Every snapshot taken, by digest.
    taken: HashMap<[u8; 32], Arc<SimSnapshot>>,
    /// Snapshots taken, compactions that removed something, transfers installed, chunks sent.
    pub(super) stats: SnapshotStats,
}

/// What a run did with snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct SnapshotStats {
    /// Snapshots taken.
    pub taken: usize,
    /// Compactions that moved a log's base.
    pub compactions: usize,
    /// Snapshots installed by replicas.
    pub installed: usize,
    /// Transfers resumed after an interruption (the replica held chunks already).
    pub resumed: usize,
}

impl Snapshots {
    pub(super) fn new(seed: u64) -> Snapshots {
        Snapshots {
            rng: Rng::stream(seed, Stream::Retention),
            taken: HashMap::new(),
            stats: SnapshotStats::default(),
        }
    }

    /// How long until the next retention round.
    pub(super) fn next_round(&mut self) -> u64 {
        self.rng.range(100_000, 700_000)
    }
}

/// Encodes the state `applied` into chunks.
fn encode(applied: &[LogPosition]) -> Vec<SnapshotChunk> {
    applied
        .chunks(POSITIONS_PER_CHUNK)
        .enumerate()
        .map(|(index, positions)| {
            let mut data = Vec::with_capacity(positions.len() * POSITION_BYTES);
            for position in positions {
                data.extend_from_slice(&position.tx_id.0.to_le_bytes());
                data.extend_from_slice(&position.hash.0);
            }
            SnapshotChunk::new(index as u64, Bytes::from(data))
        })
        .collect()
}

/// Decodes the state the chunks hold.
fn decode(chunks: &[SnapshotChunk]) -> Result<Vec<LogPosition>, String> {
    let mut applied = Vec::new();
    for chunk in chunks {
        if chunk.data.len() % POSITION_BYTES != 0 {
            return Err(format!("chunk {} is not whole positions", chunk.index));
        }
        for bytes in chunk.data.chunks(POSITION_BYTES) {
            let mut id = [0u8; 8];
            id.copy_from_slice(&bytes[..8]);
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&bytes[8..]);
            applied.push(LogPosition {
                tx_id: TxId(u64::from_le_bytes(id)),
                hash: TxHash(hash),
            });
        }
    }
    Ok(applied)
}

fn digest(chunks: &[SnapshotChunk]) -> [u8; 32] {
    let mut digest = blake3::Hasher::new();
    for chunk in chunks {
        digest.update(&chunk.hash);
    }
    *digest.finalize().as_bytes()
}

impl World {
    /// A retention round: a node takes a snapshot, or compacts, or both.
    pub(super) fn retention_round(&mut self) -> Check {
        if !self.faults.enabled() {
            return Ok(());
        }
        let delay = self.snapshots.next_round();
        self.schedule(delay, SimEvent::Retention);
        let rng = &mut self.snapshots.rng;
        let node = rng.below(self.nodes.len() as u64) as usize;
        let take = rng.chance(70);
        let compact = rng.chance(70);
        // Replicas lagging by more than this many transactions do not hold compaction back.
        let lag_allowed = rng.chance(50).then(|| rng.range(0, 40));
        if !self.nodes[node].is_up() {
            return Ok(());
        }
        if take {
            self.take_snapshot(node)?;
        }
        if compact {
            let committed = self.nodes[node].disk.committed();
            let unpin_below = match lag_allowed {
                Some(lag) => TxId(committed.saturating_sub(lag)),
                None => TxId::ZERO,
            };
            let event = Event::Compact {
                up_to: TxId(committed),
                unpin_below,
            };
            self.deliver(node, event)?;
        }
        Ok(())
    }

    /// `node` snapshots its state machine as of what it applied.
    pub(super) fn take_snapshot(&mut self, node: usize) -> Check {
        let n = &self.nodes[node];
        let applied = n.applied.clone();
        let last = applied.last().copied().unwrap_or(LogPosition::START);
        let txs: Vec<Tx> = n.disk.txs()[..applied.len()].to_vec();
        let last_epoch = txs.last().map_or(Epoch(0), |tx| tx.epoch);
        let chunks = encode(&applied);
        let meta = SnapshotMeta {
            format: format(),
            last,
            last_epoch,
            chunks: chunks.len() as u64,
            bytes: chunks.iter().map(|c| c.data.len() as u64).sum(),
            digest: digest(&chunks),
        };
        let snapshot = Arc::new(SimSnapshot {
            meta: meta.clone(),
            chunks,
            txs: Arc::new(txs),
        });
        self.snapshots.taken.insert(meta.digest, snapshot.clone());
        self.snapshots.stats.taken += 1;
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} takes a snapshot up to {}", last.tx_id));
        self.nodes[node].keep_snapshot(snapshot);
        self.deliver(node, Event::SnapshotTaken(meta))
    }

    /// Executes a snapshot or compaction command of `node`'s engine.
    pub(super) fn execute_snapshot_command(
        &mut self,
        node: usize,
        command: crate::engine::Command,
    ) -> Check {
        use crate::engine::Command;
        let incarnation = self.nodes[node].incarnation;
        let engine_event = |event| SimEvent::Engine {
            node,
            incarnation,
            event,
        };
        match command {
            Command::SnapshotRead {
                conn,
                digest,
                index,
            } => {
                let chunk = self.nodes[node]
                    .snapshot_held(&digest)
                    .and_then(|snapshot| snapshot.chunks.get(index as usize).cloned());
                let delay = self.snapshots.rng.range(10, 800);
                self.schedule(
                    delay,
                    engine_event(Event::SnapshotChunkRead { conn, chunk }),
                );
            }
            Command::SnapshotReceive { meta, from } => {
                let n = &mut self.nodes[node];
                let held = match &mut n.incoming {
                    Some((held, chunks)) if held.digest == meta.digest => {
                        chunks.truncate(from as usize);
                        chunks.len() as u64
                    }
                    _ => {
                        n.incoming = Some((meta.clone(), Vec::new()));
                        0
                    }
                };
                if held > 0 {
                    self.snapshots.stats.resumed += 1;
                }
                let event = Event::SnapshotReceiving {
                    digest: meta.digest,
                    result: Ok(held),
                };
                self.engine_now(node, event);
            }
            Command::SnapshotStore { chunk } => {
                let n = &mut self.nodes[node];
                let name = n.name.clone();
                let Some((_, chunks)) = &mut n.incoming else {
                    return Err(format!(
                        "{name}: stores a snapshot chunk it is not receiving"
                    ));
                };
                if chunk.index != chunks.len() as u64 {
                    return Err(format!(
                        "{name}: stores chunk {} after {} chunks",
                        chunk.index,
                        chunks.len()
                    ));
                }
                chunk
                    .verify()
                    .map_err(|error| format!("{name}: stores a damaged chunk: {error}"))?;
                chunks.push(chunk);
            }
            Command::SnapshotInstall { meta, .. } => {
                let delay = self.snapshots.rng.range(100, 20_000);
                self.schedule(
                    delay,
                    SimEvent::InstallDone {
                        node,
                        incarnation,
                        meta,
                    },
                );
            }
            Command::Compact { up_to } => {
                let n = &mut self.nodes[node];
                let before = n.disk.base().position.tx_id;
                let snapshot = n
                    .latest_snapshot()
                    .map_or(TxId::ZERO, |s| s.meta.last.tx_id);
                if up_to > snapshot {
                    return Err(format!(
                        "{}: compacts up to {up_to}, beyond its latest snapshot ({snapshot})",
                        n.name
                    ));
                }
                let base = n.disk.compact(up_to);
                if base.position.tx_id > before {
                    self.snapshots.stats.compactions += 1;
                    let name = self.nodes[node].name.clone();
                    self.log(format!("{name} compacts up to {}", base.position.tx_id));
                }
                self.engine_now(node, Event::Compacted(base));
            }
            Command::TakeSnapshot => {
                // As the driver does, on a thread of its own: the snapshot arrives later.
                let delay = self.snapshots.rng.range(100, 5_000);
                self.schedule(delay, SimEvent::TakeSnapshot { node, incarnation });
            }
            other => return Err(format!("not a snapshot command: {other:?}")),
        }
        Ok(())
    }

    /// An install completes: the replica's state becomes what the chunks hold, which must be
    /// the committed history up to the snapshot, and its log starts again after it.
    pub(super) fn install_done(&mut self, node: usize, meta: SnapshotMeta) -> Check {
        let name = self.nodes[node].name.clone();
        let Some((held, chunks)) = self.nodes[node].incoming.take() else {
            return Err(format!("{name}: installs a snapshot it did not receive"));
        };
        if held.digest != meta.digest || digest(&chunks) != meta.digest {
            let result = Err(SnapshotError::Corrupt {
                chunk: chunks.len() as u64,
                why: "the chunks do not add up to the snapshot".into(),
            });
            return self.deliver(node, Event::SnapshotInstalled { meta, result });
        }
        let state = decode(&chunks)?;
        self.oracle
            .installed_state_is_the_history(&self.nodes[node], &state, meta.last)?;
        let Some(snapshot) = self.snapshots.taken.get(&meta.digest).cloned() else {
            return Err(format!("{name}: installs a snapshot nobody took"));
        };
        self.log(format!(
            "{name} installs a snapshot up to {}",
            meta.last.tx_id
        ));
        self.snapshots.stats.installed += 1;
        let n = &mut self.nodes[node];
        n.applied = state;
        n.disk.reset_to(snapshot.txs.to_vec());
        // It replaces any other: those may be of the history this node left.
        n.snapshots = vec![snapshot];
        self.deliver(
            node,
            Event::SnapshotInstalled {
                meta,
                result: Ok(()),
            },
        )
    }

    /// A read that fails because compaction removed what it asked for: as the driver does,
    /// the channel closes.
    pub(super) fn read_removed(&mut self, node: usize, conn: ConnId) {
        let name = self.nodes[node].name.clone();
        self.log(format!(
            "{name} conn {conn:?}: read below the log's base; closing"
        ));
        self.close_channel(node, conn);
        self.engine_now(node, Event::Disconnected { conn });
    }

    /// Hands `event` to `node`'s engine as part of the command being executed (the driver's
    /// answers that come at once); its commands run after the current one.
    fn engine_now(&mut self, node: usize, event: Event) {
        if let Some(engine) = self.nodes[node].engine.as_mut() {
            engine.handle(crate::engine::Timestamp(self.now), event);
        }
    }
}
