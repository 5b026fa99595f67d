//! Failover by hand, as an operator runs it with `failover plan`, `db promote` and
//! `db update --replica-of`: the primary is lost for good; once the plan has a provably safe
//! candidate, that replica is promoted in an epoch above every epoch the answering members
//! have seen, the primary's other replicas are repointed to it, and the old primary, revived
//! later, rejoins as its replica.
//!
//! The plan's rule: under policies that put every commit on at least `k` members, a candidate
//! is safe once `n - k + 1` of the `n` members answer, and it is the one whose durable log is
//! the most advanced, comparing the epoch of its last durable transaction first and its
//! position second (a longer log of an older epoch may hold only transactions a restarted
//! primary superseded). The simulation asks every member to answer, which satisfies the rule
//! for any `k >= 1`; it fails over only if no policy in force so far was asynchronous, since
//! an asynchronous commit is on the primary alone and a failover may lose it by design.
//!
//! Rejoining, the old primary runs with `allow_tx_discarding`, as the operator sets it: what it
//! holds beyond the new history was never committed under a synchronous policy. If it saw an
//! epoch the new primary did not (it restarted alone before it was lost), its subscription
//! would fence the new primary (a higher epoch is how a stale primary learns it is stale), so
//! the operator re-seeds it first (empty data directory), as immudb's documentation has an
//! operator re-seed a replica that cannot follow.

use super::disk::Disk;
use super::oracle::Check;
use super::rng::{Rng, Stream};
use super::world::{SimEvent, World};
use crate::engine::Role;
use crate::quorum::Quorum;
use crate::types::{Epoch, EpochClaim};

/// Where the run is in its (at most one) failover.
#[derive(Debug, Default)]
pub(super) enum Failover {
    /// No failover (yet).
    #[default]
    None,
    /// `old`, the primary, is lost; a promotion is waited for.
    Pending {
        /// The lost primary.
        old: usize,
        /// Whether the operator promotes by force, without waiting for a safe candidate.
        forced: bool,
    },
    /// A replica was promoted; `old` rejoins as its replica.
    Done {
        /// The old primary.
        old: usize,
        /// Whether it has rejoined (booted since the promotion).
        rejoined: bool,
        /// Whether the operator re-seeded it to rejoin.
        reseeded: bool,
        /// Whether the promotion was forced.
        forced: bool,
    },
}

/// The fewest members a commit under `policy` is on, whatever the membership was when it
/// committed (`majority` counts only its minimum of one, since the membership may have been
/// smaller then).
pub(super) fn guaranteed_copies(policy: &Quorum) -> usize {
    match policy {
        Quorum::Async => 0,
        Quorum::AckCount { n, .. } | Quorum::Any { n, .. } | Quorum::First { n, .. } => *n,
        Quorum::Majority => 1,
        Quorum::MajorityOf(names) => names.len().div_ceil(2).max(1),
        Quorum::AllOf(parts) => parts.iter().map(guaranteed_copies).max().unwrap_or(0),
    }
}

impl World {
    /// Whether `node` is the lost primary, which only the failover brings back.
    pub(super) fn is_lost(&self, node: usize) -> bool {
        matches!(self.failover, Failover::Pending { old, .. } if old == node)
    }

    /// The primary is lost for good, if the run may fail over: no failover yet, and a replica
    /// has joined it. If some commit so far may be on the primary alone (an asynchronous
    /// policy was in force), or one time in four otherwise, the operator will promote by force.
    pub(super) fn lose_primary(&mut self) {
        let primary = self.primary();
        if !matches!(self.failover, Failover::None)
            || !self.nodes[primary].is_up()
            || self.nodes[primary].disk.members().is_empty()
        {
            return;
        }
        let forced = self.fewest_copies == 0 || self.faults.force_promotion();
        let name = self.nodes[primary].name.clone();
        let waiting_for = if forced {
            "a member to promote by force"
        } else {
            "a safe candidate"
        };
        self.log(format!(
            "{name} is LOST for good; waiting for {waiting_for}"
        ));
        self.crash(primary);
        self.failover = Failover::Pending {
            old: primary,
            forced,
        };
        self.schedule(50_000, SimEvent::Promote);
    }

    /// The operator's plan and promotion: waits until every member of the lost primary
    /// answers, then promotes the most advanced.
    pub(super) fn promote(&mut self) -> Check {
        let Failover::Pending { old, forced } = self.failover else {
            return Ok(());
        };
        if self.nodes[old].is_up() {
            // It came back before anyone could be promoted (the cluster was healed): no
            // failover, the primary goes on.
            self.failover = Failover::None;
            return Ok(());
        }
        let members: Vec<usize> = self.nodes[old]
            .disk
            .members()
            .iter()
            .filter_map(|m| self.topology.index(m.node.as_str()))
            .collect();
        // As `repnode failover plan` ranks every server it is given, the candidates are the
        // members and every other replica of the lost primary that answers: one promoted by a
        // switchover may be lost before the old primary, repointed to it, joined its
        // membership, and that one holds what it inherited (simulation seed 6037).
        let mut up: Vec<usize> = members
            .iter()
            .copied()
            .chain(
                self.topology
                    .replicas_of(old)
                    .filter_map(|spec| self.topology.index(spec.name.as_str())),
            )
            .filter(|&m| self.nodes[m].is_up())
            .collect();
        up.sort_unstable();
        up.dedup();
        // The plan's rule waits for every member; a forced promotion takes any that answers.
        let members_up = members.iter().filter(|&&m| self.nodes[m].is_up()).count();
        if up.is_empty() || (!forced && members_up < members.len()) {
            self.schedule(100_000, SimEvent::Promote);
            return Ok(());
        }
        let advanced = |disk: &Disk| (disk.durable_epoch(), disk.durable());
        let rank = |m: usize| (advanced(&self.nodes[m].disk), std::cmp::Reverse(m));
        // Forced, the least advanced: the worst an operator can pick, and the most to rewind.
        let candidate = if forced {
            up.iter().copied().min_by_key(|&m| rank(m))
        } else {
            up.iter().copied().max_by_key(|&m| rank(m))
        };
        let Some(candidate) = candidate else {
            return Ok(());
        };
        // One failover in three, if another member ranks equal (the plan calls both safe),
        // a second operator promotes that one at the same time.
        let racing = !forced && self.faults.race_promotions();
        let rival = up
            .iter()
            .copied()
            .filter(|_| racing)
            .find(|&m| m != candidate && rank(m).0 == rank(candidate).0);
        // Above every epoch an answering node has seen, so that no replica refuses the new
        // primary as older.
        let seen = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].is_up())
            .map(|n| self.nodes[n].disk.state().epoch)
            .max()
            .unwrap_or(Epoch(0));
        for promoted in [Some(candidate), rival].into_iter().flatten() {
            self.nodes[promoted]
                .disk
                .save_epoch(&EpochClaim::new(seen, None));
        }
        let mut repointed = self.topology.promote(candidate, old);
        repointed.retain(|&n| Some(n) != rival);
        let policy = match rival {
            Some(_) => self.racing_policy(),
            None => self.faults.policy_for(&self.topology),
        };
        self.log(format!(
            "PROMOTE{} {} (durable {:?}) above epoch {seen}; repoint {:?}; policy `{policy}`",
            if forced { " BY FORCE" } else { "" },
            self.nodes[candidate].name,
            advanced(&self.nodes[candidate].disk),
            repointed
                .iter()
                .map(|&n| self.nodes[n].name.as_str())
                .collect::<Vec<_>>()
        ));
        self.adopt_policy(policy);
        self.restart_as(candidate, Role::Primary);
        if let Some(rival) = rival {
            self.restart_as(rival, Role::Primary);
        }
        if forced {
            self.forced_promotion(candidate, old, &repointed, seen);
        }
        let address = self.nodes[candidate].name.clone();
        for &node in &repointed {
            let role = Role::Replica {
                address: address.clone(),
            };
            self.restart_as(node, role);
        }
        // The old primary rejoins as a replica of the new one, discarding what it holds that
        // was never committed.
        self.nodes[old].role = Role::Replica { address };
        self.nodes[old].allow_tx_discarding = true;
        self.failover = Failover::Done {
            old,
            rejoined: false,
            reseeded: false,
            forced,
        };
        if let Some(rival) = rival {
            self.start_race(rival, old, &repointed);
        }
        let revive_in = self.faults.revive_delay();
        self.schedule(revive_in, SimEvent::Restart { node: old });
        Ok(())
    }

    /// After `candidate` was promoted by force (and restarted over its durable log): the
    /// acknowledged writes it lacks are given up, as the plan reported them at risk; the
    /// committed history keeps only what its log shares; and every other node may rewind
    /// once, as the operator allows with `db update --allow-rewind`, which restarts a running
    /// one (the repointed ones and the old primary get it as they restart).
    fn forced_promotion(&mut self, candidate: usize, old: usize, repointed: &[usize], seen: Epoch) {
        let disk = &self.nodes[candidate].disk;
        let forgiven = self
            .workload
            .forgive(|write| !disk.holds_durably(write.position.tx_id, write.position.hash));
        let kept = self.oracle.forced_promotion(&disk.hashes(), seen);
        self.forgiven_writes += forgiven;
        self.log(format!(
            "forced: {forgiven} acknowledged writes at risk given up; the committed history \
             keeps {kept} txs"
        ));
        for node in 0..self.nodes.len() {
            if node == candidate {
                continue;
            }
            self.nodes[node].allow_rewind = true;
            if node != old && !repointed.contains(&node) {
                let role = self.nodes[node].role.clone();
                self.restart_as(node, role);
            }
        }
    }

    /// Once every node answers after a forced promotion: a member that was down when it was
    /// promoted may have seen the new primary's epoch under the old one (or a later epoch),
    /// and then refuses it (one writer per epoch). As its error says, the operator promotes
    /// again, which begins an epoch above every one the new primary has seen; the member's
    /// claim is of a lower epoch then, and it rejoins.
    pub(super) fn promote_again_if_taken(&mut self) {
        let Failover::Done { old, rejoined, .. } = self.failover else {
            return;
        };
        let new = self.primary();
        let claim = self.nodes[new].disk.epoch_claim().clone();
        // The old primary, before it rejoins, is re-seeded if it needs to be.
        let taken = (0..self.nodes.len())
            .filter(|&n| n != new && (n != old || rejoined))
            .map(|n| self.nodes[n].disk.epoch_claim().clone())
            .find(|other| other.epoch > claim.epoch || other.conflicts_with(&claim));
        if let Some(taken) = taken {
            self.nodes[new]
                .disk
                .save_epoch(&EpochClaim::new(taken.epoch, None));
            let name = self.nodes[new].name.clone();
            self.log(format!(
                "{name}'s epoch {} is taken ({taken}): PROMOTE it again above",
                claim.epoch
            ));
            self.restart_as(new, Role::Primary);
        }
    }

    /// Restarts `node` (if it runs) with `role`, keeping what its disk made durable. Its
    /// writers never hear back from the engine that stopped.
    pub(super) fn restart_as(&mut self, node: usize, role: Role) {
        self.nodes[node].role = role;
        if self.nodes[node].is_up() {
            self.workload.lost_at(node);
            self.nodes[node].crash();
            let broken = self.network.crashed(node);
            self.notify_broken(broken);
            self.boot(node);
        }
    }

    /// Boots `node`; if it is the old primary coming back after a failover, as its new
    /// primary's replica, first re-seeded when it has seen an epoch the new primary has not
    /// (it restarted alone before it was lost). Rejoining with such an epoch, its subscription
    /// would fence the new primary; `failover plan` shows the operator every member's epoch.
    pub(super) fn boot_or_rejoin(&mut self, node: usize) {
        if let Failover::Done {
            old,
            rejoined: false,
            ..
        } = self.failover
            && old == node
        {
            // Its source: the new primary, or during racing promotions either racer.
            let new = self.topology.nodes()[old]
                .upstream
                .as_deref()
                .and_then(|name| self.topology.index(name))
                .unwrap_or(self.primary());
            let (ours, theirs) = (
                self.nodes[old].disk.state().epoch,
                self.nodes[new].disk.state().epoch,
            );
            let reseeded = ours >= theirs;
            if reseeded {
                let name = self.nodes[old].name.clone();
                self.log(format!(
                    "{name} saw epoch {ours}, not below the new primary's {theirs}: RE-SEED it"
                ));
                self.nodes[old].reseed(Disk::new(Rng::stream(self.seed, Stream::Disk(old))));
            }
            self.failover = Failover::Done {
                old,
                rejoined: true,
                reseeded,
                forced: matches!(self.failover, Failover::Done { forced: true, .. }),
            };
        }
        self.boot(node);
    }
}
