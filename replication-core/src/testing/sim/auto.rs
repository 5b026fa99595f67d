//! Automatic failover in the simulation ([`SimOptions::automatic`](super::SimOptions)): the
//! in-memory coordinator's state ([`CoordinatorState`], in simulated time), one real
//! [`FailoverAgent`] per node, and the faults that matter to them: a node cut from the
//! coordinator, the coordinator down, a node stalled (its events wait until it resumes, as a
//! paused process's do), and the crash of whichever node leads. No operator acts: the agents'
//! `Lead` and `Follow` are carried out as the node does (the engine restarted with the
//! granted epoch, or as a replica of the leader), their `Lease` becomes `Event::Lease`.
//!
//! A cycle runs at once, at one instant: the lease call, the node's view, the coordinator's
//! view, the decision and its actions; the coordinator applies each call at that instant, so
//! the lease the agent computes from its send time ends exactly a margin before the
//! coordinator's. Cycles of every node follow a change of the leader key after a network
//! delay, as etcd's watch wakes them.
//!
//! Checked on every acknowledgement, beyond the world's checks: it comes from a node whose
//! granted lease runs at that instant, while no other node's granted lease does (at most one
//! node may acknowledge at any instant), and no write is acknowledged in an epoch below one
//! that already acknowledged one.

use super::oracle::Check;
use super::rng::{Rng, Stream};
use super::world::{SimEvent, World};
use crate::coordinator::{
    Action, AgentConfig, Campaign, CommitRecord, CoordinatorError, FailoverAgent, LeaderRecord,
    LeaseId, LeaseStep, LocalView, MemberRole,
};
use crate::engine::{Event, Role, Timestamp, WriteReceipt};
use crate::quorum::{Quorum, QuorumPolicy};
use crate::testing::CoordinatorState;
use crate::types::{Epoch, NodeId};
use std::sync::Arc;

/// The lease time to live in the simulation.
const TTL: std::time::Duration = std::time::Duration::from_millis(400);
/// The database's name at the coordinator.
const DB: &str = "db";

/// What the simulation counts of automatic failover.
#[derive(Clone, Debug, Default)]
pub struct AutoStats {
    /// Campaigns won.
    pub elections: usize,
    /// Times a leader's granted lease ran out without a renewal.
    pub self_fencings: usize,
    /// Nodes stalled past their lease.
    pub stalls: usize,
    /// Times a node was cut from the coordinator.
    pub coordinator_cuts: usize,
    /// Times the coordinator was down.
    pub coordinator_outages: usize,
    /// Times the leader was crashed.
    pub leader_crashes: usize,
}

/// The coordinator, the agents, and what the oracle needs of them.
#[derive(Debug)]
pub(super) struct Auto {
    state: CoordinatorState,
    agents: Vec<FailoverAgent>,
    rng: Rng,
    /// Nodes cut from the coordinator.
    cut: Vec<bool>,
    /// The coordinator is down.
    down: bool,
    /// Until when each node is stalled.
    stalled_until: Vec<u64>,
    /// What each stalled node was sent, in order.
    held: Vec<Vec<SimEvent>>,
    /// The voters of the last commit record the coordinator accepted from each node.
    published: Vec<Vec<String>>,
    /// The policy of that record.
    published_policy: Vec<Option<Quorum>>,
    /// The end of the last lease window each node's engine was granted, and its epoch.
    windows: Vec<Option<(u64, Epoch)>>,
    /// The highest epoch in which a write was acknowledged.
    acked_epoch: Epoch,
    /// The leader key as last seen, to wake every agent when it changes.
    last_leader: Option<LeaderRecord>,
    pub(super) stats: AutoStats,
}

impl Auto {
    pub(super) fn new(seed: u64, names: &[String]) -> Auto {
        Auto {
            state: CoordinatorState::default(),
            agents: names.iter().map(|name| agent(name)).collect(),
            rng: Rng::stream(seed, Stream::Coordinator),
            cut: vec![false; names.len()],
            down: false,
            stalled_until: vec![0; names.len()],
            held: names.iter().map(|_| Vec::new()).collect(),
            published: vec![Vec::new(); names.len()],
            published_policy: vec![None; names.len()],
            windows: vec![None; names.len()],
            acked_epoch: Epoch(0),
            last_leader: None,
            stats: AutoStats::default(),
        }
    }

    /// A policy by count, which stays meaningful whichever member leads (named policies name
    /// the leader itself once it changes), and synchronous: under an asynchronous policy the
    /// writes acknowledged since the last published commit point may be lost by design.
    pub(super) fn policy(&mut self, replicas: usize) -> Quorum {
        match self.rng.below(3) {
            0 => Quorum::Majority,
            1 if replicas >= 2 => Quorum::AckCount { n: 2, among: None },
            _ => Quorum::AckCount { n: 1, among: None },
        }
    }

    /// Holds an event for a stalled node until it resumes.
    pub(super) fn hold(&mut self, node: usize, event: SimEvent) {
        self.held[node].push(event);
    }

    /// Until when `node` is stalled, if it is now.
    pub(super) fn stalled(&self, node: usize, now: u64) -> Option<u64> {
        (self.stalled_until[node] > now).then_some(self.stalled_until[node])
    }

    /// Ends every coordinator fault and stall (the cluster is being healed).
    pub(super) fn heal_all(&mut self) {
        self.cut.iter_mut().for_each(|c| *c = false);
        self.down = false;
    }
}

fn agent(name: &str) -> FailoverAgent {
    FailoverAgent::new(AgentConfig::new(name, name, TTL))
}

impl World {
    fn auto(&mut self) -> &mut Auto {
        self.auto.as_mut().expect("automatic failover")
    }

    /// A node (re)starts: a new process, with a new agent whose first cycle comes soon.
    pub(super) fn start_agent(&mut self, node: usize) {
        let name = self.nodes[node].name.clone();
        self.auto().agents[node] = agent(&name);
        self.auto().windows[node] = None;
        let incarnation = self.nodes[node].incarnation;
        let delay = self.auto().rng.range(100, 5_000);
        self.schedule(delay, SimEvent::AgentCycle { node, incarnation });
    }

    /// One cycle of `node`'s agent.
    pub(super) fn agent_cycle(&mut self, node: usize) -> Check {
        let now = self.now;
        let at = Timestamp(now);
        let reachable = {
            let auto = self.auto();
            !auto.down && !auto.cut[node]
        };
        let unreachable = || CoordinatorError::Unavailable("cut from the coordinator".into());
        {
            let auto = self.auto.as_mut().expect("automatic failover");
            let before = auto.agents[node].status().self_fencings;
            let step = auto.agents[node].begin_cycle(at);
            auto.stats.self_fencings +=
                (auto.agents[node].status().self_fencings - before) as usize;
            auto.state.expire(at);
            let answer = match (reachable, step) {
                (false, _) => Err(unreachable()),
                (true, LeaseStep::Grant) => Ok(auto.state.grant(at, TTL)),
                (true, LeaseStep::Renew(lease)) => auto.state.renew(at, lease).map(|()| lease),
            };
            auto.agents[node].on_lease(at, answer);
        }
        let Some(local) = self.local_view(node) else {
            return Ok(());
        };
        let view = if reachable {
            self.auto().state.view(DB)
        } else {
            self.auto().agents[node].on_error(unreachable());
            self.schedule_cycle(node);
            return Ok(());
        };
        let actions = self.auto().agents[node].decide(at, &local, &view);
        for action in actions {
            self.agent_action(node, action, &local)?;
        }
        self.wake_on_leader_change();
        self.schedule_cycle(node);
        Ok(())
    }

    fn schedule_cycle(&mut self, node: usize) {
        let auto = self.auto();
        let cycle = auto.agents[node].config().cycle().as_micros() as u64;
        let next = if auto.agents[node].poll_soon() {
            cycle / 8
        } else {
            cycle
        };
        let incarnation = self.nodes[node].incarnation;
        self.schedule(next, SimEvent::AgentCycle { node, incarnation });
    }

    /// Every agent looks again, a network delay after the leader key changed.
    fn wake_on_leader_change(&mut self) {
        let leader = self.auto().state.view(DB).leader;
        if leader == self.auto().last_leader {
            return;
        }
        self.auto().last_leader = leader;
        for node in 0..self.nodes.len() {
            if self.nodes[node].is_up() {
                let delay = self.auto().rng.range(100, 3_000);
                let incarnation = self.nodes[node].incarnation;
                self.schedule(delay, SimEvent::AgentCycle { node, incarnation });
            }
        }
    }

    fn local_view(&self, node: usize) -> Option<LocalView> {
        let engine = self.nodes[node].engine.as_ref()?;
        let status = engine.status(Timestamp(self.now));
        let members: Vec<String> = status.members.iter().map(ToString::to_string).collect();
        Some(LocalView {
            role: match status.role {
                Role::Primary => MemberRole::Primary,
                _ => MemberRole::Replica,
            },
            epoch: status.epoch,
            last_epoch: status.last_epoch,
            durable: status.durable,
            committed: status.committed_position,
            following: match &status.role {
                Role::Replica { address } => Some(address.clone()),
                _ => None,
            },
            synchronous: self.policy.is_synchronous(),
            proofs: self.policy.failover_proofs(&members),
            policy: Some(self.policy.to_string()),
        })
    }

    fn agent_action(&mut self, node: usize, action: Action, local: &LocalView) -> Check {
        let lease = self.auto().agents[node].lease();
        match action {
            Action::Publish(record) => {
                if let Some(lease) = lease
                    && let Err(error) = self.auto().state.publish_member(DB, &record, lease)
                {
                    self.auto().agents[node].on_error(error);
                }
            }
            Action::PublishCommit(record) => self.publish_commit(node, &record, lease),
            Action::Campaign { above } => {
                let Some(lease) = lease else { return Ok(()) };
                let name = self.nodes[node].name.clone();
                let outcome = self.auto().state.campaign(DB, &name, &name, lease, above);
                if let Ok(Campaign::Won { epoch }) = &outcome {
                    self.log(format!("{name} WINS the leader key in epoch {epoch}"));
                    self.auto().stats.elections += 1;
                }
                let next = self.auto().agents[node].on_campaign(local, outcome);
                for action in next {
                    self.agent_action(node, action, local)?;
                }
            }
            Action::Lead { epoch, .. } => self.lead(node, epoch),
            Action::Follow(leader) => self.follow(node, &leader),
            Action::Lease { until } => {
                let voters: Vec<NodeId> = self.auto().published[node]
                    .iter()
                    .map(|v| NodeId::new(v.as_str()))
                    .collect();
                let epoch = self.nodes[node].engine.as_ref().map(|e| e.epoch());
                let name = self.nodes[node].name.clone();
                self.log(format!(
                    "{name} leased until {} counting {voters:?}",
                    until.0
                ));
                if let Some(epoch) = epoch {
                    self.auto().windows[node] = Some((until.0, epoch));
                }
                let policy = self.auto().published_policy[node].clone();
                let event = Event::Lease {
                    until,
                    voters: Some(voters),
                    policy: policy.map(|p| Arc::new(p) as Arc<dyn QuorumPolicy>),
                };
                self.deliver(node, event)?;
            }
        }
        Ok(())
    }

    fn publish_commit(&mut self, node: usize, record: &CommitRecord, lease: Option<LeaseId>) {
        let Some(lease) = lease else { return };
        match self.auto().state.publish_commit(DB, record, lease) {
            Ok(()) => {
                let mut voters: Vec<String> = record
                    .proofs
                    .iter()
                    .flat_map(|p| p.voters.iter().cloned())
                    .collect();
                voters.sort();
                voters.dedup();
                self.auto().published[node] = voters;
                self.auto().published_policy[node] =
                    record.policy.as_deref().and_then(|t| t.parse().ok());
            }
            Err(error) => self.auto().agents[node].on_error(error),
        }
    }

    /// The node becomes the primary of exactly `epoch`, as `repnode`'s `Server::lead` does.
    fn lead(&mut self, node: usize, epoch: Epoch) {
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} LEADS in epoch {epoch}"));
        let floor = Epoch(epoch.0.saturating_sub(1));
        self.nodes[node].min_epoch = self.nodes[node].min_epoch.max(floor);
        self.nodes[node].allow_tx_discarding = true;
        self.topology.crown(node);
        self.restart_engine(node, Role::Primary);
        self.auto().published[node].clear();
        self.auto().published_policy[node] = None;
        // As the runner does: the next cycle at once, to publish and grant the lease.
        let incarnation = self.nodes[node].incarnation;
        self.schedule(50, SimEvent::AgentCycle { node, incarnation });
    }

    /// The node replicates from the leader, as `repnode` repoints it.
    fn follow(&mut self, node: usize, leader: &LeaderRecord) {
        let Some(index) = self.topology.index(&leader.member) else {
            return;
        };
        let name = self.nodes[node].name.clone();
        self.log(format!(
            "{name} FOLLOWS {} (epoch {})",
            leader.member, leader.epoch
        ));
        self.nodes[node].allow_tx_discarding = true;
        self.topology.set_upstream(node, Some(index));
        let role = Role::Replica {
            address: leader.member.clone(),
        };
        self.restart_engine(node, role);
        self.auto().windows[node] = None;
    }

    /// Restarts `node`'s engine with `role`, as the server restarts a database: the process,
    /// and so its agent and the lease it holds, go on.
    fn restart_engine(&mut self, node: usize, role: Role) {
        let name = self.nodes[node].name.clone();
        let agent = std::mem::replace(&mut self.auto().agents[node], agent(&name));
        self.restart_as(node, role);
        self.auto().agents[node] = agent;
    }

    /// The node writes take, among those that run as primaries: most often the newest, but
    /// one time in four another (an old primary, cut off or stalled, that clients still
    /// reach), which must acknowledge nothing.
    pub(super) fn auto_write_target(&mut self) -> Option<usize> {
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n]
                    .engine
                    .as_ref()
                    .is_some_and(|e| matches!(e.config().role, Role::Primary))
            })
            .collect();
        let newest = primaries
            .iter()
            .copied()
            .max_by_key(|&n| self.nodes[n].engine.as_ref().map(|e| e.epoch()));
        let other = self.auto().rng.chance(25);
        let pick = self.auto().rng.below(primaries.len() as u64) as usize;
        if other && !primaries.is_empty() {
            Some(primaries[pick])
        } else {
            newest
        }
    }

    /// The checks of an acknowledgement by `node` under automatic failover.
    pub(super) fn check_auto_ack(&mut self, node: usize, receipt: &WriteReceipt) -> Check {
        let now = self.now;
        let name = self.nodes[node].name.clone();
        let epoch = self.nodes[node]
            .engine
            .as_ref()
            .map(|e| e.epoch())
            .unwrap_or(Epoch(0));
        let auto = self.auto();
        match auto.windows[node] {
            Some((until, _)) if until > now => {}
            window => {
                return Err(format!(
                    "{name} acknowledged tx {} at {now} outside a granted lease ({window:?})",
                    receipt.tx_id
                ));
            }
        }
        for (other, window) in auto.windows.iter().enumerate() {
            if other != node
                && let Some((until, other_epoch)) = window
                && *until > now
            {
                return Err(format!(
                    "{name} (epoch {epoch}) acknowledged tx {} at {now} while node {other}'s \
                     lease (epoch {other_epoch}) runs until {until}",
                    receipt.tx_id
                ));
            }
        }
        if epoch < auto.acked_epoch {
            return Err(format!(
                "{name} acknowledged tx {} in epoch {epoch} after epoch {} acknowledged one",
                receipt.tx_id, auto.acked_epoch
            ));
        }
        auto.acked_epoch = epoch;
        Ok(())
    }

    /// The faults of automatic failover, in place of an operator's (a lost primary, a
    /// switchover, nothing): crash the leader, stall a node past its lease, cut a node from
    /// the coordinator, or take the coordinator down.
    pub(super) fn auto_fault(&mut self) {
        let ttl = TTL.as_micros() as u64;
        let nodes = self.nodes.len() as u64;
        let leader = self
            .auto()
            .state
            .view(DB)
            .leader
            .and_then(|l| self.topology.index(&l.member));
        let kind = self.auto().rng.below(4);
        let node = match (self.auto().rng.chance(60), leader) {
            (true, Some(leader)) => leader,
            _ => self.auto().rng.below(nodes) as usize,
        };
        let lasting = self.auto().rng.range(ttl / 4, ttl * 2);
        match kind {
            0 => {
                if self.nodes[node].is_up() {
                    self.auto().stats.leader_crashes += usize::from(Some(node) == leader);
                    self.crash(node);
                    self.schedule(lasting, SimEvent::Restart { node });
                }
            }
            1 => {
                let name = self.nodes[node].name.clone();
                self.log(format!("{name} STALLS for {lasting}us"));
                self.auto().stats.stalls += 1;
                let until = self.now + lasting;
                let auto = self.auto();
                auto.stalled_until[node] = auto.stalled_until[node].max(until);
                self.schedule_first(lasting, SimEvent::Resume { node });
            }
            2 => {
                let name = self.nodes[node].name.clone();
                self.log(format!(
                    "{name} is CUT from the coordinator for {lasting}us"
                ));
                self.auto().stats.coordinator_cuts += 1;
                self.auto().cut[node] = true;
                self.schedule(lasting, SimEvent::CoordinatorReach { node });
            }
            _ => {
                self.log(format!("the coordinator is DOWN for {lasting}us"));
                self.auto().stats.coordinator_outages += 1;
                self.auto().down = true;
                self.schedule(lasting, SimEvent::CoordinatorUp);
            }
        }
    }

    /// Holds `event` for the stalled `node`.
    pub(super) fn hold(&mut self, node: usize, event: SimEvent) {
        self.auto().hold(node, event);
    }

    /// `node` resumes, unless a longer stall holds it still: it handles what it was sent, in
    /// order, before anything else, and ticks again.
    pub(super) fn resume(&mut self, node: usize) -> Check {
        let now = self.now;
        if self.auto().stalled(node, now).is_some() {
            return Ok(());
        }
        let held = std::mem::take(&mut self.auto().held[node]);
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} RESUMES, {} events held", held.len()));
        for event in held {
            self.dispatch(event)?;
        }
        if let Some(at) = self.nodes[node].engine.as_ref().map(|e| e.poll_timeout().0) {
            self.nodes[node].tick_at = None;
            self.schedule_tick(node, at);
        }
        Ok(())
    }

    pub(super) fn coordinator_reach(&mut self, node: usize) {
        self.auto().cut[node] = false;
    }

    pub(super) fn coordinator_up(&mut self) {
        self.auto().down = false;
    }
}
