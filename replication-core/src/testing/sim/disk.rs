//! A node's simulated log: what was appended, how much of it is durable, and what survives a
//! crash.
//!
//! Appends are readable at once but become durable only when their completion, scheduled a
//! random time later, is applied; completions happen in the order the appends were issued, as
//! with one fsync queue. A crash keeps exactly the durable prefix (and a commit point no
//! further); a truncation discards the tail and makes the completions of earlier appends
//! cover nothing past it.
//!
//! Compaction hides transactions up to the log's base from the engine (reads there fail, as
//! [`TxLog::compact`](crate::TxLog::compact) makes them), but the simulation keeps them, so
//! that its checks compare whole histories; a snapshot installed starts the log again after
//! the snapshot with the source's history up to it, hidden the same way.

use super::rng::Rng;
use crate::types::{
    Epoch, EpochClaim, LogBase, LogPosition, LogState, ReplicaId, Tx, TxHash, TxId,
};

/// An append's durability, to be completed at `at` by [`Disk::complete`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) at: u64,
    pub(super) up_to: u64,
    pub(super) truncations: u64,
}

#[derive(Debug)]
pub(super) struct Disk {
    txs: Vec<Tx>,
    durable: u64,
    committed: u64,
    /// The epoch and its primary.
    epoch: EpochClaim,
    /// The membership, durable as soon as it is saved (as the epoch).
    members: Vec<ReplicaId>,
    /// Bumped by every truncation; a durability completion from before it covers nothing
    /// appended after it.
    truncations: u64,
    /// Earliest time the next durability completion may happen (they complete in order).
    busy_until: u64,
    /// Transactions up to this id were compacted away (or came in a snapshot): the engine
    /// cannot read them. Durable.
    base: u64,
    rng: Rng,
}

impl Disk {
    pub(super) fn new(rng: Rng) -> Disk {
        Disk {
            txs: Vec::new(),
            durable: 0,
            committed: 0,
            epoch: EpochClaim::default(),
            members: Vec::new(),
            truncations: 0,
            busy_until: 0,
            base: 0,
            rng,
        }
    }

    /// Everything appended and not truncated or lost, durable or not.
    pub(super) fn txs(&self) -> &[Tx] {
        &self.txs
    }

    pub(super) fn len(&self) -> u64 {
        self.txs.len() as u64
    }

    pub(super) fn durable(&self) -> u64 {
        self.durable
    }

    pub(super) fn committed(&self) -> u64 {
        self.committed
    }

    pub(super) fn hashes(&self) -> Vec<TxHash> {
        self.txs.iter().map(|tx| tx.hash).collect()
    }

    fn position(&self, id: u64) -> LogPosition {
        if id == 0 {
            LogPosition::START
        } else {
            self.txs[id as usize - 1].position()
        }
    }

    /// What a node reads from its log when it starts.
    pub(super) fn state(&self) -> LogState {
        LogState {
            epoch: self.epoch.epoch,
            last: self.position(self.len()),
            durable: self.position(self.durable),
            committed: self.position(self.committed),
        }
    }

    pub(super) fn last_epoch(&self) -> Epoch {
        self.txs.last().map(|tx| tx.epoch).unwrap_or(Epoch(0))
    }

    /// Appends `txs` (the caller has checked they follow the last) and schedules their
    /// durability after every earlier append's.
    pub(super) fn append(&mut self, txs: Vec<Tx>, now: u64) -> Pending {
        let up_to = txs.last().map(|tx| tx.id.0).unwrap_or(0);
        self.txs.extend(txs);
        let at = (now + self.rng.range(20, 3000)).max(self.busy_until);
        self.busy_until = at;
        Pending {
            at,
            up_to,
            truncations: self.truncations,
        }
    }

    /// Applies a completed durability, unless a truncation since made it stale.
    pub(super) fn complete(&mut self, pending: Pending) {
        if self.truncations == pending.truncations {
            self.durable = self.durable.max(pending.up_to.min(self.len()));
        }
    }

    pub(super) fn truncate(&mut self, after: TxId) {
        // Only a rewind reaches below the commit point, and it lowers it first.
        self.committed = self.committed.min(after.0);
        self.txs.truncate(after.0 as usize);
        self.durable = self.durable.min(after.0);
        self.base = self.base.min(after.0);
        self.truncations += 1;
    }

    /// Saves `claim`, by the rule of `TxLog::save_epoch`.
    pub(super) fn save_epoch(&mut self, claim: &EpochClaim) {
        if claim.replaces(&self.epoch) {
            self.epoch = claim.clone();
        }
    }

    /// The epoch claim last saved.
    pub(super) fn epoch_claim(&self) -> &EpochClaim {
        &self.epoch
    }

    /// The epoch of the last durable transaction (`Epoch(0)` for none).
    pub(super) fn durable_epoch(&self) -> Epoch {
        (self.durable as usize)
            .checked_sub(1)
            .and_then(|index| self.txs.get(index))
            .map(|tx| tx.epoch)
            .unwrap_or(Epoch(0))
    }

    /// Saves the membership, replacing the one before.
    pub(super) fn save_members(&mut self, members: Vec<ReplicaId>) {
        self.members = members;
    }

    /// The membership last saved.
    pub(super) fn members(&self) -> &[ReplicaId] {
        &self.members
    }

    /// Records the commit point (the caller has checked it is durable).
    pub(super) fn commit(&mut self, up_to: TxId) {
        self.committed = self.committed.max(up_to.0);
    }

    /// Where the log begins, as the engine sees it.
    pub(super) fn base(&self) -> LogBase {
        match self.base {
            0 => LogBase::START,
            id => LogBase {
                position: self.position(id),
                epoch: self.txs[id as usize - 1].epoch,
            },
        }
    }

    /// Removes committed transactions up to `up_to` from the engine's sight.
    pub(super) fn compact(&mut self, up_to: TxId) -> LogBase {
        self.base = self.base.max(up_to.0.min(self.committed));
        self.base()
    }

    /// Starts the log again after a snapshot of the history `prefix`, which it holds, durable
    /// and committed, and hides.
    pub(super) fn reset_to(&mut self, prefix: Vec<Tx>) {
        let last = prefix.len() as u64;
        self.txs = prefix;
        self.durable = last;
        self.committed = last;
        self.base = last;
        self.truncations += 1;
    }

    /// Up to `max_count` transactions from `from` within `max_bytes` (at least one, if any),
    /// and how long the read takes; `None` for a read that starts at or below the base.
    pub(super) fn read(
        &mut self,
        from: TxId,
        max_count: usize,
        max_bytes: usize,
    ) -> (u64, Option<Vec<Tx>>) {
        if from.0 <= self.base {
            return (self.rng.range(10, 500), None);
        }
        let mut bytes = 0;
        let txs = self
            .txs
            .iter()
            .skip(from.0.max(1) as usize - 1)
            .take(max_count)
            .take_while(|tx| {
                let fits = bytes == 0 || bytes + tx.payload.len() <= max_bytes;
                bytes += tx.payload.len();
                fits
            })
            .cloned()
            .collect();
        (self.rng.range(10, 500), Some(txs))
    }

    /// Loses everything not durable. Pending completions still arrive but are addressed to
    /// the node's previous incarnation and dropped.
    pub(super) fn crash(&mut self) {
        self.txs.truncate(self.durable as usize);
        self.committed = self.committed.min(self.durable);
    }

    /// Whether transaction `id` with `hash` is on this disk and durable.
    pub(super) fn holds_durably(&self, id: TxId, hash: TxHash) -> bool {
        id.0 >= 1
            && id.0 <= self.durable
            && self
                .txs
                .get(id.0 as usize - 1)
                .is_some_and(|tx| tx.hash == hash)
    }
}
