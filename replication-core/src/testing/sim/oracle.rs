//! The checks: one function per invariant, each returning the broken invariant's description.
//!
//! Safety invariants are checked as the engines act — at every append, truncation, commit and
//! reply — so a failure points at the step that broke them. Liveness and convergence are
//! checked once the cluster is healed: every write answered, every node holding exactly the
//! primary's history, nothing acknowledged lost.

use super::node::SimNode;
use super::topology::Topology;
use super::workload::{AckedWrite, Workload};
use crate::engine::{AckKind, Engine, WriteId, WriteReceipt};
use crate::quorum::{Quorum, QuorumPolicy, ReplicaFilter};
use std::collections::BTreeMap;

use crate::types::{Epoch, NodeId, ReplicaId, Tx, TxHash, TxId};

/// `Err` names the broken invariant.
pub(super) type Check = Result<(), String>;

/// What the oracle remembers across steps.
#[derive(Debug, Default)]
pub(super) struct Oracle {
    /// The hash of every transaction any node committed, by id: the cluster's one committed
    /// history.
    committed_history: Vec<TxHash>,
    /// The committed history before a forced promotion replaced what followed the new
    /// primary's log: a node that has not rewound yet may still commit from it.
    old_history: Vec<TxHash>,
    /// The node that committed as primary in each epoch.
    epoch_writers: BTreeMap<Epoch, String>,
}

impl Oracle {
    /// Replicas agree on the committed history: the transaction a node commits at an id is
    /// the one (by chained hash) every other node committed there. Records it otherwise.
    pub(super) fn committed_history_agrees(&mut self, node: &SimNode, tx: &Tx) -> Check {
        let index = tx.id.0 as usize - 1;
        // Learning the old history's commits late (from a relay that has not rewound
        // either) is what a node does until it rewinds; it is not recorded.
        if node.allow_rewind
            && self.old_history.get(index) == Some(&tx.hash)
            && self.committed_history.get(index) != Some(&tx.hash)
        {
            return Ok(());
        }
        match self.committed_history.get(index) {
            Some(hash) if *hash != tx.hash => Err(format!(
                "{}: committed {} with hash {:?}, but another node committed {:?}",
                node.name, tx.id, tx.hash, hash
            )),
            Some(_) => Ok(()),
            None => {
                self.committed_history.push(tx.hash);
                Ok(())
            }
        }
    }
}

impl Oracle {
    /// A replica's state after installing a snapshot is the committed history up to the
    /// snapshot's last transaction: every position, in order, with the hash every node
    /// committed there.
    pub(super) fn installed_state_is_the_history(
        &self,
        node: &SimNode,
        state: &[crate::types::LogPosition],
        last: crate::types::LogPosition,
    ) -> Check {
        if state
            .last()
            .copied()
            .unwrap_or(crate::types::LogPosition::START)
            != last
        {
            return Err(format!(
                "{}: installs a snapshot whose state ends at {:?}, not at its last {last:?}",
                node.name,
                state.last()
            ));
        }
        for (index, position) in state.iter().enumerate() {
            let expected = self.committed_history.get(index);
            // A relay that has not rewound yet still serves the history a forced promotion
            // replaced, as it would its log: a node allowed to rewind may take it until then.
            let old = node.allow_rewind && self.old_history.get(index) == Some(&position.hash);
            if position.tx_id.0 != index as u64 + 1 || (expected != Some(&position.hash) && !old) {
                return Err(format!(
                    "{}: installs a snapshot whose state differs from the committed history at \
                     {}: {:?}, committed {expected:?}",
                    node.name, position.tx_id, position.hash
                ));
            }
        }
        Ok(())
    }

    /// One writer per epoch: no two nodes commit as primary in one epoch, whatever promotions
    /// raced. Records `node` as the epoch's writer otherwise.
    pub(super) fn one_writer_per_epoch(&mut self, node: &str, epoch: Epoch) -> Check {
        match self.epoch_writers.get(&epoch) {
            Some(writer) if writer != node => Err(format!(
                "{node} commits as primary in epoch {epoch}, in which {writer} committed"
            )),
            Some(_) => Ok(()),
            None => {
                self.epoch_writers.insert(epoch, node.to_string());
                Ok(())
            }
        }
    }

    /// A forced promotion, above epoch `seen`, of a node whose log is `new_log`: the committed
    /// history keeps only its prefix shared with that log, and what followed may be committed
    /// anew; the epochs above `seen` begin anew too (the lost primary may have committed in
    /// one alone, under an asynchronous policy, where no answering node saw it). Returns the
    /// length of the prefix kept.
    pub(super) fn forced_promotion(&mut self, new_log: &[TxHash], seen: Epoch) -> usize {
        self.epoch_writers.retain(|epoch, _| *epoch <= seen);
        let common = self
            .committed_history
            .iter()
            .zip(new_log)
            .take_while(|(a, b)| a == b)
            .count();
        self.old_history = self.committed_history.clone();
        self.committed_history.truncate(common);
        common
    }

    /// A rewind drops no transaction of the one committed history: what `node` drops after
    /// `after` and had committed is the old history's, replaced by a forced promotion.
    pub(super) fn rewind_spares_the_history(&self, node: &SimNode, after: TxId) -> Check {
        let committed = node.disk.committed() as usize;
        for (index, tx) in node
            .disk
            .txs()
            .iter()
            .enumerate()
            .take(committed)
            .skip(after.0 as usize)
        {
            if self.committed_history.get(index) == Some(&tx.hash) {
                return Err(format!(
                    "{}: rewinds after {after}, dropping {} of the committed history",
                    node.name, tx.id
                ));
            }
        }
        Ok(())
    }
}

/// An append continues the log right after its last transaction: no gap, no overwrite.
pub(super) fn append_follows_log(node: &SimNode, txs: &[Tx]) -> Check {
    let first = txs.first().map(|tx| tx.id.0).unwrap_or(0);
    if first == node.disk.len() + 1 {
        Ok(())
    } else {
        Err(format!(
            "{}: append of {first} after {}",
            node.name,
            node.disk.len()
        ))
    }
}

/// A truncation never removes a committed transaction.
pub(super) fn truncation_spares_committed(node: &SimNode, after: TxId) -> Check {
    if after.0 < node.disk.committed() {
        Err(format!(
            "{}: truncate to {after} below committed {}",
            node.name,
            node.disk.committed()
        ))
    } else {
        Ok(())
    }
}

/// Committed transactions are dropped only where an operator allowed a rewind.
pub(super) fn rewind_allowed(node: &SimNode, rewind: bool) -> Check {
    if rewind && !node.allow_rewind {
        Err(format!("{}: rewinds without permission", node.name))
    } else {
        Ok(())
    }
}

/// A node's commit point never moves backwards (the engine only reports advances).
pub(super) fn commit_never_regresses(node: &SimNode, up_to: TxId) -> Check {
    if up_to.0 < node.disk.committed() {
        Err(format!(
            "{}: commits {up_to} after committing {}",
            node.name,
            node.disk.committed()
        ))
    } else {
        Ok(())
    }
}

/// The commit point never passes what the node holds durably.
pub(super) fn commit_within_durable(node: &SimNode, up_to: TxId) -> Check {
    if up_to.0 > node.disk.durable() {
        Err(format!(
            "{}: commits {up_to} but only {} is durable",
            node.name,
            node.disk.durable()
        ))
    } else {
        Ok(())
    }
}

/// The state machine applies transactions in log order, each once.
pub(super) fn applies_in_order(node: &SimNode, tx: &Tx) -> Check {
    if tx.id.0 == node.applied.len() as u64 + 1 {
        Ok(())
    } else {
        Err(format!("{}: applies {} out of order", node.name, tx.id))
    }
}

/// Every reply answers a write that was proposed and not yet answered.
pub(super) fn reply_is_for_outstanding(
    write: WriteId,
    proposed: Option<Quorum>,
) -> Result<Quorum, String> {
    proposed.ok_or_else(|| format!("reply to unknown write {write:?}"))
}

/// An acknowledged write is durable on the primary, with the receipt's hash.
pub(super) fn ack_durable_on_primary(primary: &SimNode, receipt: &WriteReceipt) -> Check {
    if primary.disk.holds_durably(receipt.tx_id, receipt.hash) {
        Ok(())
    } else {
        Err(format!(
            "acknowledged {} that the primary does not hold durably",
            receipt.tx_id
        ))
    }
}

/// A write is acknowledged only after its `Commit` was executed: the primary recorded the
/// commit point and applied the write.
pub(super) fn commit_before_reply(primary: &SimNode, receipt: &WriteReceipt) -> Check {
    if primary.disk.committed() >= receipt.tx_id.0
        && primary.applied.len() as u64 >= receipt.tx_id.0
    {
        Ok(())
    } else {
        Err(format!(
            "acknowledged {} before committing it (committed {}, applied {})",
            receipt.tx_id,
            primary.disk.committed(),
            primary.applied.len()
        ))
    }
}

/// An acknowledgement says how the write was committed: as `Quorum` exactly when the policy
/// in force is synchronous. Otherwise a synchronous commit labelled `Async` would escape
/// [`quorum_ack_held_by_replicas`].
pub(super) fn ack_kind_matches_policy(receipt: &WriteReceipt, current: &Quorum) -> Check {
    let expected = if current.is_synchronous() {
        AckKind::Quorum
    } else {
        AckKind::Async
    };
    if receipt.ack == expected {
        Ok(())
    } else {
        Err(format!(
            "{} acknowledged as {:?} under `{current}`",
            receipt.tx_id, receipt.ack
        ))
    }
}

/// A write acknowledged under a synchronous policy is held durably by the primary's members
/// (among `replicas`, indices into `nodes`) that policy demands — the one in force when it was proposed or the one in force
/// when it was answered, whichever it satisfies, since the policy may change in between.
/// `members` is the primary's durable membership when it answered: `majority` needs a true
/// majority of it, whichever members are connected or known to the primary since its restart.
pub(super) fn quorum_ack_held_by_replicas(
    nodes: &[SimNode],
    replicas: &[usize],
    members: &[ReplicaId],
    receipt: &WriteReceipt,
    proposed: &Quorum,
    current: &Quorum,
) -> Check {
    let holders: Vec<&SimNode> = replicas
        .iter()
        .map(|&index| &nodes[index])
        .filter(|node| node.disk.holds_durably(receipt.tx_id, receipt.hash))
        .collect();
    if holders_satisfy(proposed, &holders, members) || holders_satisfy(current, &holders, members) {
        Ok(())
    } else {
        let names: Vec<&str> = holders.iter().map(|n| n.name.as_str()).collect();
        Err(format!(
            "{} acknowledged under `{current}` (proposed under `{proposed}`) held durably by \
             {names:?} only",
            receipt.tx_id
        ))
    }
}

/// Whether replicas `holders` holding a write could have satisfied `policy`, given the
/// primary's durable `members`. Exact for counts and majorities; for `first n` a necessary
/// condition (`n` of the listed, not the first `n` connected, which is not visible from here).
fn holders_satisfy(policy: &Quorum, holders: &[&SimNode], members: &[ReplicaId]) -> bool {
    let count = |admits: &dyn Fn(&SimNode) -> bool| holders.iter().filter(|n| admits(n)).count();
    let is_member = |node: &SimNode| members.iter().any(|m| m.node.as_str() == node.name);
    let named = |names: &[NodeId], node: &SimNode| names.contains(&NodeId::new(node.name.as_str()));
    match policy {
        Quorum::Async => true,
        Quorum::AckCount { n, among } => {
            count(&|node| is_member(node) && among.as_ref().is_none_or(|f| filter_admits(f, node)))
                >= *n
        }
        Quorum::Majority => count(&is_member) >= members.len().div_ceil(2).max(1),
        Quorum::MajorityOf(names) => {
            count(&|node| named(names, node) && is_member(node)) >= names.len().div_ceil(2).max(1)
        }
        Quorum::Any { n, names } | Quorum::First { n, names } => {
            count(&|node| named(names, node) && is_member(node)) >= *n
        }
        Quorum::AllOf(parts) => parts
            .iter()
            .all(|part| holders_satisfy(part, holders, members)),
    }
}

/// Whether `filter` admits `node`, whose only tag is its zone.
fn filter_admits(filter: &ReplicaFilter, node: &SimNode) -> bool {
    let tag = |key: &str| (key == "zone").then_some(node.zone.as_str());
    match filter {
        ReplicaFilter::Names(names) => names.contains(&NodeId::new(node.name.as_str())),
        ReplicaFilter::TagEquals { key, value } => tag(key) == Some(value.as_str()),
        ReplicaFilter::TagNotEquals { key, value } => tag(key) != Some(value.as_str()),
    }
}

/// Liveness: the cluster has converged once no write is outstanding and every node runs, has
/// committed and applied the primary's last transaction, and holds nothing beyond it — a
/// replica still holding uncommitted transactions a crashed primary lost has not converged
/// until it dropped them, which it does once it subscribes to the restarted primary.
pub(super) fn converged(nodes: &[SimNode], primary: usize, workload: &Workload) -> bool {
    let Some(primary) = nodes[primary].engine.as_ref() else {
        return false;
    };
    // By position, hash included: after a forced promotion a node may hold as many
    // transactions of the old history as the new one has.
    let target = primary.last();
    workload.outstanding() == 0
        && nodes.iter().all(|n| {
            n.engine
                .as_ref()
                .is_some_and(|e| e.last() == target && e.committed() == target.tx_id)
                && n.applied.len() as u64 == target.tx_id.0
                && n.applied.last().is_none_or(|applied| *applied == target)
                && n.disk.len() == target.tx_id.0
        })
}

/// A node's membership holds only replicas that subscribe to it directly: a replica of a
/// replica is never a member of the primary. (A member an operator repointed to another
/// primary, or promoted, as switchovers and racing promotions do, stays a member until
/// removed.)
pub(super) fn members_replicate_from_it(
    topology: &Topology,
    node: usize,
    members: &[ReplicaId],
) -> Check {
    let name = &topology.nodes()[node].name;
    let is_primary = |upstream: &String| {
        topology
            .index(upstream)
            .is_some_and(|index| topology.nodes()[index].upstream.is_none())
    };
    for member in members {
        let upstream = topology
            .index(member.node.as_str())
            .and_then(|index| topology.nodes()[index].upstream.as_ref());
        // Cascaded: it replicates from a replica other than this node.
        if upstream.is_some_and(|upstream| upstream != name && !is_primary(upstream)) {
            return Err(format!(
                "{name} counts {member} as a member, but it replicates from {upstream:?}"
            ));
        }
    }
    Ok(())
}

/// No node's replication stopped for good (a refusal or a broken hash chain).
pub(super) fn replication_never_stopped(nodes: &[SimNode]) -> Check {
    for node in nodes {
        if let Some(error) = node.engine.as_ref().and_then(Engine::replication_error) {
            return Err(format!("{}: replication stopped: {error}", node.name));
        }
    }
    Ok(())
}

/// Every proposed write was answered, or given up on because the primary crashed.
pub(super) fn every_write_answered(workload: &Workload) -> Check {
    match workload.outstanding() {
        0 => Ok(()),
        n => Err(format!("{n} writes were never answered")),
    }
}

/// Every node's log is exactly the primary's, transaction for transaction.
pub(super) fn logs_equal_primary(nodes: &[SimNode], primary: usize) -> Check {
    let primary_log = nodes[primary].disk.hashes();
    for node in nodes {
        let log = node.disk.hashes();
        if log != primary_log {
            return Err(format!(
                "{}'s log ({} txs) differs from the primary's ({})",
                node.name,
                log.len(),
                primary_log.len()
            ));
        }
    }
    Ok(())
}

/// Every node's state machine applied exactly the primary's history.
pub(super) fn applied_equal_primary(nodes: &[SimNode], primary: usize) -> Check {
    let primary_log = nodes[primary].disk.hashes();
    for node in nodes {
        let applied: Vec<TxHash> = node.applied.iter().map(|p| p.hash).collect();
        if applied != primary_log {
            return Err(format!("{} applied a different history", node.name));
        }
    }
    Ok(())
}

/// No acknowledged write is lost: each is durable, with its hash, on every node.
pub(super) fn no_acknowledged_write_lost(nodes: &[SimNode], acked: &[AckedWrite]) -> Check {
    for node in nodes {
        for write in acked {
            if !node
                .disk
                .holds_durably(write.position.tx_id, write.position.hash)
            {
                return Err(format!(
                    "{} lost acknowledged write {} ({:?})",
                    node.name, write.position.tx_id, write.kind
                ));
            }
        }
    }
    Ok(())
}

/// Every check of a healed, converged cluster.
pub(super) fn final_checks(nodes: &[SimNode], primary: usize, workload: &Workload) -> Check {
    replication_never_stopped(nodes)?;
    every_write_answered(workload)?;
    logs_equal_primary(nodes, primary)?;
    applied_equal_primary(nodes, primary)?;
    no_acknowledged_write_lost(nodes, workload.acked())
}
