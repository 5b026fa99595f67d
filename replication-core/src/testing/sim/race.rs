//! Racing promotions: two operators (or a script run twice) fail over at the same time, and
//! each promotes one of two members the plan ranks equal (the same durable epoch, position and
//! so hash: both provably safe). Both begin the same epoch, each repoints the lost primary's
//! other replicas, at random, to its own pick, and the clients write to both.
//!
//! The policy the operators give both is one whose quorums intersect over the nodes either
//! can have as direct replicas (every node but the two), so that at most one of them may ever
//! commit in that epoch: a replica records the first claim to the epoch it accepts and refuses
//! the other (`Refusal::EpochTaken`), and a primary told of another claim to its epoch fences
//! itself. While they race, the operators repoint replicas between them, which is how a
//! replica meets the second claim; the oracle checks that no two nodes ever commit as primary
//! in one epoch, on top of every other invariant.
//!
//! Then an operator ends the race, as `failover plan` shows them two primaries: the one that
//! committed in the raced epoch (if either did; else the first) stays primary, the other
//! rejoins it discarding what it never committed, its replicas are repointed, and if a node
//! recorded the other's claim to the epoch, the survivor is promoted again, above it.
//!
//! A racer that crashes during the race is kept down until the race ends (as an operator
//! facing two primaries stops one rather than restart it): restarting, it would begin an epoch
//! above the other's, and with replicas repointed between them a higher epoch no longer implies
//! the other's committed history. Only a coordinator's lease (or a vote, as Raft's) makes every
//! later primary hold every earlier commit; one writer per epoch is what claims alone give.

use super::oracle::Check;
use super::rng::{Rng, Stream};
use super::world::{SimEvent, World};
use crate::engine::{Role, Timestamp};
use crate::quorum::Quorum;

/// Two primaries promoted at once, in one epoch.
#[derive(Debug)]
pub(super) struct Race {
    /// The second primary (the first is the topology's).
    pub(super) rival: usize,
    /// Racers that crashed, kept down until the race ends.
    held: Vec<usize>,
    /// The operators' choices: which racer a replica or a client goes to, and when.
    rng: Rng,
}

/// What racing promotions did in a run.
#[derive(Debug, Default)]
pub(super) struct RaceStats {
    /// Races: two members promoted at once.
    pub(super) races: usize,
    /// Races the second racer won (it committed in the raced epoch).
    pub(super) rival_won: usize,
    /// Racers fenced by the other's claim when the race ended.
    pub(super) fenced: usize,
    /// Replicas repointed from one racer to the other while they raced.
    pub(super) repoints: usize,
}

impl World {
    /// Whether `node` is a racer that crashed and is kept down until the race ends.
    pub(super) fn is_held(&self, node: usize) -> bool {
        self.race
            .as_ref()
            .is_some_and(|race| race.held.contains(&node))
    }

    /// A racer crashed: keep it down.
    pub(super) fn hold_if_racer(&mut self, node: usize) {
        let primary = self.primary();
        if let Some(race) = &mut self.race
            && (node == race.rival || node == primary)
            && !race.held.contains(&node)
        {
            race.held.push(node);
        }
    }

    /// The policy both racers get: `n` acknowledgements, more than half of every node but the
    /// two racers, so that one racer's quorum always meets the other's.
    pub(super) fn racing_policy(&self) -> Quorum {
        let pool = self.nodes.len().saturating_sub(2);
        Quorum::AckCount {
            n: pool / 2 + 1,
            among: None,
        }
    }

    /// `rival` was promoted at the same time as the topology's primary, in the same epoch:
    /// `repointed` (the lost primary's other replicas, following the topology's primary) and
    /// `old` (the lost primary, when it rejoins) go to one or the other at random. Called
    /// once both run as primaries under [`World::racing_policy`].
    pub(super) fn start_race(&mut self, rival: usize, old: usize, repointed: &[usize]) {
        let mut race = Race {
            rival,
            held: Vec::new(),
            rng: Rng::stream(self.seed, Stream::Race),
        };
        self.topology.set_upstream(rival, None);
        let mut to_rival = Vec::new();
        for &node in repointed.iter().chain([&old]) {
            if race.rng.chance(50) {
                to_rival.push(node);
            }
        }
        let name = self.nodes[rival].name.clone();
        self.log(format!(
            "RACE: {name} promoted too, in the same epoch; {:?} follow it",
            to_rival
                .iter()
                .map(|&n| self.nodes[n].name.as_str())
                .collect::<Vec<_>>()
        ));
        let next = race.rng.range(20_000, 300_000);
        let end = race.rng.range(200_000, 2_000_000);
        self.race = Some(race);
        self.races.races += 1;
        for node in to_rival {
            self.topology.set_upstream(node, Some(rival));
            self.restart_as(
                node,
                Role::Replica {
                    address: name.clone(),
                },
            );
        }
        self.schedule(next, SimEvent::RaceRepoint);
        self.schedule(end, SimEvent::EndRace);
    }

    /// Which racer the next batch of writes goes to: either, as each operator's clients write
    /// to the primary they made. `None` when no race is under way.
    pub(super) fn racer_for_writes(&mut self) -> Option<usize> {
        let primary = self.primary();
        let race = self.race.as_mut()?;
        Some(if race.rng.chance(50) {
            race.rival
        } else {
            primary
        })
    }

    /// An operator repoints one replica of a racer to the other racer.
    pub(super) fn race_repoint(&mut self) {
        let primary = self.primary();
        let Some(race) = self.race.as_mut() else {
            return;
        };
        let rival = race.rival;
        let followers: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| n != primary && n != rival)
            .filter(|&n| {
                let upstream = self.topology.nodes()[n].upstream.as_deref();
                upstream == Some(self.nodes[primary].name.as_str())
                    || upstream == Some(self.nodes[rival].name.as_str())
            })
            .collect();
        let next = race.rng.range(20_000, 300_000);
        let pick = race.rng.below(followers.len().max(1) as u64) as usize;
        self.schedule(next, SimEvent::RaceRepoint);
        let Some(&node) = followers.get(pick) else {
            return;
        };
        let to = if self.topology.nodes()[node].upstream.as_deref()
            == Some(self.nodes[primary].name.as_str())
        {
            rival
        } else {
            primary
        };
        let (a, b) = (self.nodes[node].name.clone(), self.nodes[to].name.clone());
        self.log(format!("RACE: repoint {a} to {b}"));
        self.races.repoints += 1;
        self.topology.set_upstream(node, Some(to));
        self.restart_as(node, Role::Replica { address: b });
    }

    /// An operator ends the race: the racer that committed in the raced epoch (or the
    /// topology's primary if neither did) stays; the other and its replicas are repointed to
    /// it; held racers come back.
    pub(super) fn end_race(&mut self) -> Check {
        let Some(race) = self.race.take() else {
            return Ok(());
        };
        let first = self.primary();
        let rival = race.rival;
        // What the operator reads in each racer's status: the epoch and position of what it
        // committed. At most one of them committed in the raced epoch.
        let committed = |node: usize| {
            let disk = &self.nodes[node].disk;
            let epoch = (disk.committed() as usize)
                .checked_sub(1)
                .and_then(|last| disk.txs().get(last))
                .map(|tx| tx.epoch);
            (epoch, disk.committed())
        };
        let (winner, loser) = if committed(rival) > committed(first) {
            (rival, first)
        } else {
            (first, rival)
        };
        let fenced = [first, rival]
            .iter()
            .filter(|&&n| {
                self.nodes[n]
                    .engine
                    .as_ref()
                    .is_some_and(|e| e.status(Timestamp(self.now)).fenced.is_some())
            })
            .count();
        self.races.fenced += fenced;
        self.races.rival_won += usize::from(winner == rival);
        let (w, l) = (
            self.nodes[winner].name.clone(),
            self.nodes[loser].name.clone(),
        );
        self.log(format!(
            "RACE ends: {w} stays primary ({fenced} racers fenced); {l} rejoins it"
        ));
        self.topology.crown(winner);
        let repointed = self.topology.repoint(loser, winner);
        self.topology.set_upstream(loser, Some(winner));
        self.nodes[loser].allow_tx_discarding = true;
        for node in repointed.into_iter().chain([loser]) {
            self.restart_as(node, Role::Replica { address: w.clone() });
        }
        // The survivor's policy, now that it has all the replicas.
        let policy = self.faults.policy_for(&self.topology);
        self.set_policy(policy)?;
        self.promote_again_if_taken();
        for node in race.held {
            if !self.nodes[node].is_up() {
                self.schedule(1_000, SimEvent::Restart { node });
            }
        }
        Ok(())
    }
}
