//! A planned switchover under load, as `repnode db switchover NAME --to HOST:PORT` runs it:
//! the primary, alive, refuses new writes (its clients would follow the target named in the
//! refusal); once it has no write waiting and the target holds its whole log durably, the
//! target is promoted above the primary's epoch, the primary's other replicas are repointed
//! to it, and the old primary becomes its replica, holding exactly its history.
//!
//! Faults go on meanwhile. If the primary crashes before the promotion, the switchover is
//! aborted (its restart takes writes again, as a restarted server's does); if the target does
//! not catch up before the deadline (it crashed, a partition), the switchover is aborted and
//! the primary takes writes again. The oracle holds the cluster to every write acknowledged
//! before, during and after, and [`SimReport`](super::SimReport) reports the longest window
//! writes were refused, in simulated time.

use super::world::{SimEvent, World};
use crate::engine::{Role, Timestamp};
use crate::types::EpochClaim;

/// How often the operator's command asks both nodes whether the target caught up
/// (`switchover`'s poll).
const POLL: u64 = 2_000;

/// How long the target may take to catch up before the switchover is aborted (the command's
/// `DEFAULT_CATCH_UP` is 10 s; the simulation's faults are faster).
const CATCH_UP: u64 = 1_000_000;

/// A switchover under way: writes are refused on `from` until it completes or is aborted.
#[derive(Debug)]
pub(super) struct Switchover {
    /// The primary handing over.
    from: usize,
    /// The replica taking over.
    to: usize,
    /// When writes were first refused.
    frozen_at: u64,
}

/// What the switchovers of a run did.
#[derive(Debug, Default)]
pub(super) struct SwitchoverStats {
    /// Completed: the target promoted, the old primary its replica.
    pub(super) completed: usize,
    /// Aborted before the promotion, writes taken again on the primary.
    pub(super) aborted: usize,
    /// The longest time from the first refused write to the promotion, in microseconds.
    pub(super) longest_window: u64,
    /// The sum of those times over the completed switchovers.
    pub(super) total_window: u64,
}

impl World {
    /// Whether the primary refuses new writes for a switchover.
    pub(super) fn switching_over(&self) -> bool {
        self.switchover.is_some()
    }

    /// Begins a switchover of the primary to one of its direct replicas (`pick` chooses
    /// which), if one may begin: no failover waiting, no racing promotions, the primary and
    /// the target up.
    pub(super) fn begin_switchover(&mut self, pick: u64) {
        let from = self.primary();
        let targets: Vec<usize> = self
            .topology
            .direct_replicas()
            .filter_map(|spec| self.topology.index(&spec.name))
            .collect();
        if self.switchover.is_some()
            || self.race.is_some()
            || self.is_lost(from)
            || !self.nodes[from].is_up()
            || targets.is_empty()
        {
            return;
        }
        let to = targets[(pick % targets.len() as u64) as usize];
        if !self.nodes[to].is_up() {
            // The command reaches the target first, and is refused before anything changes.
            return;
        }
        let (a, b) = (&self.nodes[from].name, &self.nodes[to].name);
        let line = format!("SWITCHOVER {a} -> {b} begins: new writes refused");
        self.log(line);
        self.switchover = Some(Switchover {
            from,
            to,
            frozen_at: self.now,
        });
        self.schedule(POLL, SimEvent::SwitchoverStep);
    }

    /// The switchover's next look at both nodes: promote once the target holds everything,
    /// abort if the primary went down or the deadline passed, else ask again later.
    pub(super) fn switchover_step(&mut self) {
        let Some(Switchover {
            from,
            to,
            frozen_at,
        }) = self.switchover
        else {
            return;
        };
        let (primary, target) = (&self.nodes[from], &self.nodes[to]);
        let Some(primary_engine) = primary.engine.as_ref() else {
            return self.abort_switchover("the primary went down");
        };
        let caught_up = target.engine.as_ref().is_some_and(|t| {
            let waiting = primary_engine.status(Timestamp(self.now)).waiting_writes;
            waiting == 0 && t.durable() == primary_engine.durable()
        });
        if !caught_up {
            if self.now >= frozen_at + CATCH_UP {
                return self.abort_switchover("the target did not catch up in time");
            }
            self.schedule(POLL, SimEvent::SwitchoverStep);
            return;
        }
        // Above the primary's epoch (and the target's), so that the old primary follows it.
        let epoch = primary_engine.epoch().max(target.disk.state().epoch);
        self.nodes[to]
            .disk
            .save_epoch(&EpochClaim::new(epoch, None));
        let repointed = self.topology.promote(to, from);
        let policy = self.faults.policy_for(&self.topology);
        let window = self.now - frozen_at;
        let line = format!(
            "SWITCHOVER to {} above epoch {epoch} after {window}us of refused writes; repoint \
             {:?}; policy `{policy}`",
            self.nodes[to].name,
            repointed
                .iter()
                .map(|&n| self.nodes[n].name.as_str())
                .collect::<Vec<_>>()
        );
        self.log(line);
        self.adopt_policy(policy);
        self.switchover = None;
        self.switchovers.completed += 1;
        self.switchovers.longest_window = self.switchovers.longest_window.max(window);
        self.switchovers.total_window += window;
        self.restart_as(to, Role::Primary);
        let address = self.nodes[to].name.clone();
        for node in repointed.into_iter().chain([from]) {
            let role = Role::Replica {
                address: address.clone(),
            };
            self.restart_as(node, role);
        }
    }

    /// Undoes the refusal of writes: the primary takes them again.
    pub(super) fn abort_switchover(&mut self, why: &str) {
        self.log(format!("SWITCHOVER aborted: {why}; writes taken again"));
        self.switchover = None;
        self.switchovers.aborted += 1;
    }
}
