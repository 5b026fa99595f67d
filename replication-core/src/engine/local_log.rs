//! [`LocalLog`]: what the engine knows of this node's own log, and the only code that moves its
//! positions.
//!
//! Every part of the engine (the source, the upstream, external pushes) appends, truncates and
//! commits through here, so the rules hold in one place: the commit point never passes the
//! durable position and never moves back (except in a rewind an operator allowed), durability
//! reported for an append that a truncation overtook counts only up to the truncation, and the
//! recent cache holds only what the log holds.

use std::collections::VecDeque;

use super::{AppendToken, Command};
use crate::protocol::Refusal;
use crate::types::{
    ChainError, Epoch, EpochClaim, LogBase, LogPosition, LogState, ReplicaId, Tx, TxId,
};

/// Why received or pushed transactions do not extend this log.
#[derive(Debug)]
pub(super) enum NotExtending {
    /// The hash chain breaks.
    Chain(ChainError),
    /// An epoch decreases.
    BadEpoch {
        /// The transaction.
        tx_id: TxId,
        /// Its epoch.
        epoch: Epoch,
        /// The epoch before it.
        min: Epoch,
    },
}

/// The positions of this node's log, its epoch, and a cache of recent transactions.
#[derive(Debug)]
pub(super) struct LocalLog {
    /// The highest epoch begun or seen, and its primary when known.
    claim: EpochClaim,
    /// Where the log begins: transactions up to it were compacted away, or came in a snapshot.
    base: LogBase,
    last: LogPosition,
    /// The epoch of the last transaction in the log; epochs never decrease along a log.
    last_epoch: Epoch,
    durable: LogPosition,
    committed: TxId,
    /// A position known to be committed here, with its hash: what a replica offers its source
    /// as common ground.
    committed_position: LogPosition,
    /// Positions appended in this run after the commit point, to name hashes of positions that
    /// become durable or committed.
    positions: VecDeque<LogPosition>,
    /// Recent transactions, streamed to live replicas without reading the log.
    recent: VecDeque<Tx>,
    recent_bytes: usize,
    recent_max_txs: usize,
    recent_max_bytes: usize,
    next_append_token: AppendToken,
    /// Durability events of appends before this token predate a truncation.
    first_valid_token: AppendToken,
    truncated_to: TxId,
}

impl LocalLog {
    /// The log as it was found at startup. The recent cache keeps at most `recent_max_txs`
    /// transactions and, beyond one, `recent_max_bytes` of them.
    pub(super) fn new(
        state: LogState,
        base: LogBase,
        claim: EpochClaim,
        last_epoch: Epoch,
        recent_max_txs: usize,
        recent_max_bytes: usize,
    ) -> LocalLog {
        LocalLog {
            // A store's claim names the epoch of its state; should the two disagree, the
            // higher epoch holds, and its primary is unknown unless the claim names it.
            claim: if claim.epoch >= state.epoch {
                claim
            } else {
                EpochClaim::new(state.epoch, None)
            },
            base,
            last: state.last,
            last_epoch,
            durable: state.durable,
            committed: state.committed.tx_id,
            committed_position: state.committed,
            positions: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_max_txs,
            recent_max_bytes,
            next_append_token: AppendToken(0),
            first_valid_token: AppendToken(0),
            truncated_to: TxId(u64::MAX),
        }
    }

    /// The node's epoch.
    pub(super) fn epoch(&self) -> Epoch {
        self.claim.epoch
    }

    /// The node's epoch and the primary that claims it.
    pub(super) fn claim(&self) -> &EpochClaim {
        &self.claim
    }

    /// Where the log begins.
    pub(super) fn base(&self) -> LogBase {
        self.base
    }

    /// The log was compacted up to `base` (it only moves forwards).
    pub(super) fn compacted(&mut self, base: LogBase) {
        if base.position.tx_id > self.base.position.tx_id {
            self.base = base;
        }
    }

    /// The driver installed a snapshot and started the log again after `base`: the log holds
    /// nothing, and `base` is its last, durable and committed position. Durability reported
    /// later for earlier appends counts for nothing.
    pub(super) fn reset_to(&mut self, base: LogBase) {
        self.base = base;
        self.last = base.position;
        self.last_epoch = base.epoch;
        self.durable = base.position;
        self.committed = base.position.tx_id;
        self.committed_position = base.position;
        self.positions.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.first_valid_token = self.next_append_token;
        self.truncated_to = base.position.tx_id;
    }

    /// The last transaction appended.
    pub(super) fn last(&self) -> LogPosition {
        self.last
    }

    /// The epoch of the last transaction.
    pub(super) fn last_epoch(&self) -> Epoch {
        self.last_epoch
    }

    /// The last durable transaction.
    pub(super) fn durable(&self) -> LogPosition {
        self.durable
    }

    /// The commit point.
    pub(super) fn committed(&self) -> TxId {
        self.committed
    }

    /// The latest commit point whose hash is known.
    pub(super) fn committed_position(&self) -> LogPosition {
        self.committed_position
    }

    /// The recent transactions, oldest first, ending with the last one appended.
    pub(super) fn recent_cache(&self) -> &VecDeque<Tx> {
        &self.recent
    }

    /// Checks that `txs` extend this log: each chains from the one before (the first from our
    /// last) and epochs never decrease. Returns the last position and epoch they reach.
    pub(super) fn check_extends(&self, txs: &[Tx]) -> Result<(LogPosition, Epoch), NotExtending> {
        let mut prev = self.last;
        let mut prev_epoch = self.last_epoch;
        for tx in txs {
            tx.verify_follows(&prev).map_err(NotExtending::Chain)?;
            if tx.epoch < prev_epoch {
                return Err(NotExtending::BadEpoch {
                    tx_id: tx.id,
                    epoch: tx.epoch,
                    min: prev_epoch,
                });
            }
            prev = tx.position();
            prev_epoch = tx.epoch;
        }
        Ok((prev, prev_epoch))
    }

    /// Begins or records `claim`, which must replace the current one
    /// ([`EpochClaim::replaces`]): a primary's own epoch at startup, or one a source passed on.
    fn save_claim(&mut self, claim: EpochClaim, out: &mut VecDeque<Command>) {
        self.claim = claim.clone();
        out.push_back(Command::SaveEpoch(claim));
    }

    /// Begins `epoch` as its primary `me` (a primary at startup); `epoch` must be higher than
    /// the current one.
    pub(super) fn begin_epoch(&mut self, epoch: Epoch, me: ReplicaId, out: &mut VecDeque<Command>) {
        self.save_claim(EpochClaim::new(epoch, Some(me)), out);
    }

    /// Adopts `epoch` if it is higher than ours, its primary unknown (seen in transactions
    /// pushed by an external replicator, or forwarded ahead of their claim).
    pub(super) fn raise_epoch(&mut self, epoch: Epoch, out: &mut VecDeque<Command>) {
        if epoch > self.claim.epoch {
            self.save_claim(EpochClaim::new(epoch, None), out);
        }
    }

    /// Whether a source's claim may be followed: not of a lower epoch than ours (the source is
    /// stale), nor naming another primary for our epoch.
    pub(super) fn check_claim(&self, claim: &EpochClaim) -> Result<(), Refusal> {
        if claim.epoch < self.claim.epoch {
            return Err(Refusal::StaleSource {
                source_epoch: claim.epoch,
                replica: self.claim.epoch,
            });
        }
        match Refusal::epoch_taken(claim, &self.claim) {
            Some(taken) => Err(taken),
            None => Ok(()),
        }
    }

    /// Records a source's claim before anything of its epoch is stored or acknowledged: a
    /// higher epoch, or our epoch's primary where we knew none. Refuses a lower epoch (the
    /// source is stale) and a second primary of our epoch.
    pub(super) fn adopt_claim(
        &mut self,
        claim: &EpochClaim,
        out: &mut VecDeque<Command>,
    ) -> Result<(), Refusal> {
        self.check_claim(claim)?;
        if claim.replaces(&self.claim) {
            self.save_claim(claim.clone(), out);
        }
        Ok(())
    }

    /// Appends transactions this node now holds (written here or received), which must follow
    /// the last one.
    pub(super) fn append(&mut self, txs: Vec<Tx>, out: &mut VecDeque<Command>) {
        let Some(last_tx) = txs.last() else { return };
        self.last = last_tx.position();
        self.last_epoch = last_tx.epoch;
        for tx in &txs {
            self.positions.push_back(tx.position());
            self.recent_bytes += tx.encoded_len_hint();
            self.recent.push_back(tx.clone());
        }
        while self.recent.len() > self.recent_max_txs
            || (self.recent_bytes > self.recent_max_bytes && self.recent.len() > 1)
        {
            if let Some(old) = self.recent.pop_front() {
                self.recent_bytes -= old.encoded_len_hint();
            }
        }
        let token = self.next_append_token;
        self.next_append_token = AppendToken(token.0 + 1);
        out.push_back(Command::Append { txs, token });
    }

    /// Removes every transaction after `position`; `last_epoch` is the epoch of the
    /// transaction at `position`. Unless `rewind` (an operator allowed dropping committed
    /// transactions, and the commit point moves back to `position`), `position` must not be
    /// before the commit point.
    pub(super) fn truncate(
        &mut self,
        position: LogPosition,
        last_epoch: Epoch,
        rewind: bool,
        out: &mut VecDeque<Command>,
    ) {
        out.push_back(Command::Truncate {
            after: position.tx_id,
            rewind,
        });
        if rewind && self.committed > position.tx_id {
            self.committed = position.tx_id;
            self.committed_position = position;
        }
        self.last = position;
        self.last_epoch = last_epoch;
        if self.durable.tx_id > position.tx_id {
            self.durable = position;
        }
        self.positions.retain(|p| p.tx_id <= position.tx_id);
        while self.recent.back().is_some_and(|tx| tx.id > position.tx_id) {
            if let Some(old) = self.recent.pop_back() {
                self.recent_bytes -= old.encoded_len_hint();
            }
        }
        self.first_valid_token = self.next_append_token;
        self.truncated_to = position.tx_id;
    }

    fn position_of(&self, tx_id: TxId) -> Option<LogPosition> {
        if tx_id == self.last.tx_id {
            return Some(self.last);
        }
        if tx_id == self.durable.tx_id {
            return Some(self.durable);
        }
        if tx_id == self.committed_position.tx_id {
            return Some(self.committed_position);
        }
        let first = self.positions.front()?.tx_id;
        let index = tx_id.0.checked_sub(first.0)?;
        self.positions.get(index as usize).copied()
    }

    /// Records that the append with `token` is durable up to `up_to`; returns whether the
    /// durable position moved.
    pub(super) fn on_durable(&mut self, token: AppendToken, up_to: TxId) -> bool {
        let mut up_to = up_to.min(self.last.tx_id);
        if token < self.first_valid_token {
            // That append's durability says nothing about what was appended after the
            // truncation that followed it.
            up_to = up_to.min(self.truncated_to);
        }
        if up_to <= self.durable.tx_id {
            return false;
        }
        match self.position_of(up_to) {
            Some(position) => {
                self.durable = position;
                true
            }
            None => false,
        }
    }

    /// Moves the commit point to `up_to` (never backwards, never past durable) and asks the
    /// driver to record and apply it; returns whether it moved.
    pub(super) fn set_committed(&mut self, up_to: TxId, out: &mut VecDeque<Command>) -> bool {
        let up_to = up_to.min(self.durable.tx_id);
        if up_to <= self.committed {
            return false;
        }
        self.committed = up_to;
        if let Some(position) = self.position_of(up_to) {
            self.committed_position = position;
        }
        while self.positions.front().is_some_and(|p| p.tx_id < up_to) {
            self.positions.pop_front();
        }
        out.push_back(Command::Commit { up_to });
        true
    }

    /// The transactions `from..=up_to` if all of them are still in the recent cache.
    pub(super) fn recent(&self, from: TxId, up_to: TxId) -> Option<Vec<Tx>> {
        let first = self.recent.front()?.id;
        if from < first || up_to > self.last.tx_id || from > up_to {
            return None;
        }
        let start = (from.0 - first.0) as usize;
        Some(
            self.recent
                .iter()
                .skip(start)
                .take((up_to.0 - from.0 + 1) as usize)
                .cloned()
                .collect(),
        )
    }
}
