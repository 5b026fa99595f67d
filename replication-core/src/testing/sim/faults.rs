//! Fault injection: which fault strikes when, and what it does to the world.
//!
//! Every few hundred milliseconds of the fault phase one of these strikes (or nothing):
//! a node crashes and restarts later, two nodes are partitioned and healed later, every
//! channel of a node is cut, the primary's quorum policy changes, the primary is lost for
//! good (a failover follows), or a switchover begins. The choice and its
//! parameters come from the faults stream alone, drawn the same way whatever the cluster's
//! state, so that the same seed strikes the same faults at the same times however the engines
//! behave; the policies come from a stream of their own. (Message loss is the network's.)

use super::oracle::Check;
use super::rng::{Rng, Stream};
use super::topology::Topology;
use super::world::{SimEvent, World};
use crate::quorum::{Quorum, ReplicaFilter};
use crate::types::NodeId;

/// A fault, with the parameters drawn for it.
#[derive(Debug)]
enum Fault {
    /// `node` crashes (if up) and restarts `down_for` later.
    Crash {
        node: usize,
        down_for: u64,
    },
    /// `a` and `b` cannot reach each other for `heal_after`.
    Partition {
        a: usize,
        b: usize,
        heal_after: u64,
    },
    /// Every channel of `node` breaks.
    CutChannels {
        node: usize,
    },
    /// The primary's policy changes.
    Policy(Quorum),
    /// The primary is lost for good: a failover follows.
    LosePrimary,
    /// A planned switchover to the primary's direct replica `pick` chooses.
    Switchover {
        pick: u64,
    },
    Nothing,
}

#[derive(Debug)]
pub(super) struct Faults {
    rng: Rng,
    policy_rng: Rng,
    enabled: bool,
}

impl Faults {
    pub(super) fn new(seed: u64, enabled: bool) -> Faults {
        Faults {
            rng: Rng::stream(seed, Stream::Faults),
            policy_rng: Rng::stream(seed, Stream::Policy),
            enabled,
        }
    }

    /// The policy the cluster starts under.
    pub(super) fn initial_policy(&mut self, topology: &Topology) -> Quorum {
        random_policy(&mut self.policy_rng, topology)
    }

    /// The policy a promoted primary is given.
    pub(super) fn policy_for(&mut self, topology: &Topology) -> Quorum {
        random_policy(&mut self.policy_rng, topology)
    }

    /// Whether the operator promotes by force (`db promote --force`) a member that may lack
    /// acknowledged writes, without waiting for the plan's safe candidate: one failover in
    /// four.
    pub(super) fn force_promotion(&mut self) -> bool {
        self.rng.chance(25)
    }

    /// Whether a second operator promotes, at the same time, another member the plan ranks
    /// equal to the candidate: one failover in three.
    pub(super) fn race_promotions(&mut self) -> bool {
        self.rng.chance(33)
    }

    /// How long after a promotion the old primary is revived.
    pub(super) fn revive_delay(&mut self) -> u64 {
        self.rng.range(50_000, 1_500_000)
    }

    /// Whether faults are still injected (the fault phase).
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// No more faults: the cluster is being healed.
    pub(super) fn stop(&mut self) {
        self.enabled = false;
    }

    /// How long until the next fault, and the fault to inject now.
    fn next(&mut self, topology: &Topology) -> (u64, Fault) {
        let nodes = topology.nodes().len() as u64;
        let delay = self.rng.range(50_000, 400_000);
        let fault = match self.rng.below(10) {
            0 | 1 => Fault::Crash {
                node: self.rng.below(nodes) as usize,
                down_for: self.rng.range(10_000, 1_500_000),
            },
            2 | 3 if nodes > 1 => {
                let a = self.rng.below(nodes);
                let b = (a + 1 + self.rng.below(nodes - 1)) % nodes;
                Fault::Partition {
                    a: a as usize,
                    b: b as usize,
                    heal_after: self.rng.range(10_000, 2_000_000),
                }
            }
            4 => Fault::CutChannels {
                node: self.rng.below(nodes) as usize,
            },
            5 | 6 => Fault::Policy(random_policy(&mut self.policy_rng, topology)),
            7 => Fault::LosePrimary,
            8 => Fault::Switchover {
                pick: self.rng.next(),
            },
            _ => Fault::Nothing,
        };
        (delay, fault)
    }
}

impl World {
    /// Injects the next fault and schedules the one after, until the clients are done.
    pub(super) fn fault(&mut self) -> Check {
        if !self.faults.enabled || self.workload.finished() {
            return Ok(());
        }
        let (delay, fault) = self.faults.next(&self.topology);
        self.schedule(delay, SimEvent::Fault);
        match fault {
            Fault::Crash { node, down_for } => {
                if self.nodes[node].is_up() {
                    self.crash(node);
                    self.schedule(down_for, SimEvent::Restart { node });
                }
            }
            Fault::Partition { a, b, heal_after } => {
                let (na, nb) = (&self.nodes[a].name, &self.nodes[b].name);
                let line = format!("partition {na} | {nb}");
                self.log(line);
                let broken = self.network.partition(a, b);
                self.notify_broken(broken);
                self.schedule(heal_after, SimEvent::Heal { a, b });
            }
            Fault::CutChannels { node } => {
                let line = format!("cut every channel of {}", self.nodes[node].name);
                self.log(line);
                let broken = self.network.cut_all(node);
                self.notify_broken(broken);
            }
            // Under automatic failover: its own faults instead of an operator's, and
            // policies by count.
            Fault::LosePrimary | Fault::Switchover { .. } | Fault::Nothing
                if self.auto.is_some() =>
            {
                self.auto_fault();
            }
            Fault::Policy(_) if self.auto.is_some() => {
                let replicas = self.nodes.len() - 1;
                let policy = self.auto.as_mut().map(|a| a.policy(replicas));
                if let Some(policy) = policy {
                    self.set_policy(policy)?;
                }
            }
            // Racing primaries keep the policy whose quorums intersect.
            Fault::Policy(_) if self.race.is_some() => {}
            Fault::Policy(policy) => self.set_policy(policy)?,
            Fault::LosePrimary => self.lose_primary(),
            Fault::Switchover { pick } => self.begin_switchover(pick),
            Fault::Nothing => {}
        }
        Ok(())
    }

    /// `node` loses its engine, its undurable data and its channels.
    pub(super) fn crash(&mut self, node: usize) {
        let n = &self.nodes[node];
        let line = format!(
            "{} CRASHES (durable {} of {})",
            n.name,
            n.disk.durable(),
            n.disk.len()
        );
        self.log(line);
        self.crashes += 1;
        self.nodes[node].crash();
        let broken = self.network.crashed(node);
        self.notify_broken(broken);
        self.workload.lost_at(node);
        self.hold_if_racer(node);
        if node == self.primary() && self.switching_over() {
            self.abort_switchover("the primary crashed");
        }
    }
}

/// A random policy the topology can satisfy: counts never exceed the primary's direct
/// replicas, and the zone-aware one is drawn only if a direct replica is outside zone `a`.
fn random_policy(rng: &mut Rng, topology: &Topology) -> Quorum {
    let names: Vec<NodeId> = topology
        .direct_replicas()
        .map(|n| NodeId::new(n.name.as_str()))
        .collect();
    let all = names.len().max(1);
    let other_zone = topology.direct_replicas().any(|n| n.zone != "a");
    match rng.below(9) {
        0 => Quorum::Async,
        1 => Quorum::AckCount { n: 1, among: None },
        2 => Quorum::AckCount {
            n: all,
            among: None,
        },
        3 => Quorum::Majority,
        4 => Quorum::Any { n: 1, names },
        5 => Quorum::First { n: 1, names },
        6 if other_zone => Quorum::AllOf(vec![
            Quorum::AckCount { n: 1, among: None },
            Quorum::AckCount {
                n: 1,
                among: Some(ReplicaFilter::TagNotEquals {
                    key: "zone".into(),
                    value: "a".into(),
                }),
            },
        ]),
        6 => Quorum::AckCount { n: 1, among: None },
        7 => Quorum::MajorityOf(names),
        _ => Quorum::Any { n: all, names },
    }
}
