//! Automatic failover in the simulation ([`SimOptions::automatic`](super::SimOptions)): the
//! in-memory coordinator's state ([`CoordinatorState`], in simulated time), one real
//! [`FailoverAgent`] per node, and the faults that matter to them: a node cut from the
//! coordinator, the coordinator down, a node stalled (its events wait until it resumes, as a
//! paused process's do), and the crash of whichever node leads. No operator acts: the agents'
//! `Lead` and `Follow` are carried out as the node does (the engine restarted with the
//! granted epoch, or as a replica of the leader), their `Lease` becomes `Event::Lease`.
//!
//! A cycle runs as the runner's does, one coordinator call at a time: the lease call, the
//! node's view, the coordinator's view, the decision, and each action. Every call takes a
//! seeded network delay to the coordinator, which applies it when it arrives, and another
//! back; the node may stall or crash in between, and decides on a view that is that old.
//! The lease the agent computes from the send time so ends at least a margin before the
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
    Action, AgentConfig, Campaign, ClusterView, CommitRecord, CoordinatorError, FailoverAgent,
    LeaderRecord, LeaseId, LeaseStep, LocalView, MemberRecord,
};
use crate::engine::{Event, Role, Timestamp, WriteReceipt};
use crate::quorum::{Quorum, QuorumPolicy};
use crate::testing::CoordinatorState;
use crate::types::{Epoch, NodeId};
use std::collections::VecDeque;
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
    /// Processes started so far: each agent's process gets the next number.
    processes: u64,
    /// The process each node's agent runs in; answers to an earlier process's calls are lost.
    process: Vec<u64>,
    /// The cycle each agent has under way, if any.
    cycles: Vec<Option<Cycle>>,
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
            processes: 0,
            process: vec![0; names.len()],
            cycles: names.iter().map(|_| None).collect(),
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

    /// The network delay of one way to or from the coordinator: mostly a loopback's, one time
    /// in eight up to half a cycle (a loaded etcd), so that a round trip stays within the
    /// runner's call timeout of one cycle.
    fn call_delay(&mut self) -> u64 {
        let half_cycle = (TTL / 8).as_micros() as u64;
        if self.rng.chance(12) {
            self.rng.range(5_000, half_cycle)
        } else {
            self.rng.range(200, 3_000)
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

/// A call from an agent to the coordinator, in flight.
#[derive(Debug)]
pub(super) enum Call {
    /// Grant a lease, or renew the agent's.
    Lease(LeaseStep),
    /// Read the database's view.
    View,
    /// Publish the member's position.
    Publish(MemberRecord, LeaseId),
    /// Publish the leader's commit point.
    PublishCommit(CommitRecord, LeaseId),
    /// Campaign for the leader key.
    Campaign {
        /// The epoch the new one must exceed.
        above: Epoch,
        /// The lease the key is bound to.
        lease: LeaseId,
    },
}

/// The coordinator's answer to a [`Call`], in flight back.
#[derive(Debug)]
pub(super) enum Answer {
    /// To [`Call::Lease`].
    Lease(Result<LeaseId, CoordinatorError>),
    /// To [`Call::View`].
    View(Result<ClusterView, CoordinatorError>),
    /// To [`Call::Publish`].
    Published(Result<(), CoordinatorError>),
    /// To [`Call::PublishCommit`], with the record.
    Committed(CommitRecord, Result<(), CoordinatorError>),
    /// To [`Call::Campaign`].
    Campaign(Result<Campaign, CoordinatorError>),
}

/// An agent's cycle under way, as the runner's `cycle` is between two awaits: the lease call,
/// the view, then the actions the agent decided, one call at a time.
#[derive(Debug)]
struct Cycle {
    /// When the lease call was sent: the lease the agent computes runs from there.
    sent: Timestamp,
    /// The node's view, taken when the lease answer came.
    local: Option<LocalView>,
    /// The actions still to carry out.
    actions: VecDeque<Action>,
    /// Another cycle was asked for meanwhile: it follows at once.
    again: bool,
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
        let auto = self.auto();
        auto.agents[node] = agent(&name);
        auto.windows[node] = None;
        auto.processes += 1;
        auto.process[node] = auto.processes;
        auto.cycles[node] = None;
        let incarnation = self.nodes[node].incarnation;
        let delay = self.auto().rng.range(100, 5_000);
        self.schedule(delay, SimEvent::AgentCycle { node, incarnation });
    }

    /// `node`'s agent begins a cycle, unless one is under way (then it runs another at once
    /// after it, as the runner's loop does after a wake-up that came during a cycle).
    pub(super) fn agent_cycle(&mut self, node: usize) {
        let at = Timestamp(self.now);
        let auto = self.auto();
        if let Some(cycle) = auto.cycles[node].as_mut() {
            cycle.again = true;
            return;
        }
        let before = auto.agents[node].status().self_fencings;
        let step = auto.agents[node].begin_cycle(at);
        auto.stats.self_fencings += (auto.agents[node].status().self_fencings - before) as usize;
        auto.cycles[node] = Some(Cycle {
            sent: at,
            local: None,
            actions: VecDeque::new(),
            again: false,
        });
        self.call(node, Call::Lease(step));
    }

    /// Sends `call` to the coordinator; it arrives after a network delay.
    fn call(&mut self, node: usize, call: Call) {
        let delay = self.auto().call_delay();
        let process = self.auto().process[node];
        let call = Box::new(call);
        self.schedule(
            delay,
            SimEvent::CoordinatorCall {
                node,
                process,
                call,
            },
        );
    }

    /// The coordinator applies `call` from `node` at this instant, and answers after a network
    /// delay. A call reaches it even when its sender crashed meanwhile, as a packet in flight
    /// does; a node cut from it, or the coordinator down, gets an error.
    pub(super) fn coordinator_call(&mut self, node: usize, process: u64, call: Call) {
        let at = Timestamp(self.now);
        let auto = self.auto();
        auto.state.expire(at);
        let answer = if auto.down || auto.cut[node] {
            let error = CoordinatorError::Unavailable("cut from the coordinator".into());
            match call {
                Call::Lease(_) => Answer::Lease(Err(error)),
                Call::View => Answer::View(Err(error)),
                Call::Publish(..) => Answer::Published(Err(error)),
                Call::PublishCommit(record, _) => Answer::Committed(record, Err(error)),
                Call::Campaign { .. } => Answer::Campaign(Err(error)),
            }
        } else {
            match call {
                Call::Lease(LeaseStep::Grant) => Answer::Lease(Ok(auto.state.grant(at, TTL))),
                Call::Lease(LeaseStep::Renew(lease)) => {
                    Answer::Lease(auto.state.renew(at, lease).map(|()| lease))
                }
                Call::View => Answer::View(Ok(auto.state.view(DB))),
                Call::Publish(record, lease) => {
                    Answer::Published(auto.state.publish_member(DB, &record, lease))
                }
                Call::PublishCommit(record, lease) => {
                    let outcome = auto.state.publish_commit(DB, &record, lease);
                    Answer::Committed(record, outcome)
                }
                Call::Campaign { above, lease } => {
                    let name = self.nodes[node].name.clone();
                    let outcome = self.auto().state.campaign(DB, &name, &name, lease, above);
                    if let Ok(Campaign::Won { epoch }) = &outcome {
                        self.log(format!("{name} WINS the leader key in epoch {epoch}"));
                        self.auto().stats.elections += 1;
                    }
                    Answer::Campaign(outcome)
                }
            }
        };
        self.wake_on_leader_change();
        let delay = self.auto().call_delay();
        let answer = Box::new(answer);
        self.schedule(
            delay,
            SimEvent::CoordinatorAnswer {
                node,
                process,
                answer,
            },
        );
    }

    /// `node` receives the coordinator's answer, and goes on with its cycle.
    pub(super) fn coordinator_answer(
        &mut self,
        node: usize,
        process: u64,
        answer: Answer,
    ) -> Check {
        if self.auto().process[node] != process || !self.nodes[node].is_up() {
            return Ok(());
        }
        let Some(sent) = self.auto().cycles[node].as_ref().map(|c| c.sent) else {
            return Ok(());
        };
        let at = Timestamp(self.now);
        match answer {
            Answer::Lease(answer) => {
                self.auto().agents[node].on_lease(sent, answer);
                let Some(local) = self.local_view(node) else {
                    self.auto().cycles[node] = None;
                    return Ok(());
                };
                if let Some(cycle) = self.auto().cycles[node].as_mut() {
                    cycle.local = Some(local);
                }
                self.call(node, Call::View);
                return Ok(());
            }
            Answer::View(Err(error)) => {
                self.auto().agents[node].on_error(error);
                self.end_cycle(node);
                return Ok(());
            }
            Answer::View(Ok(view)) => {
                let name = self.nodes[node].name.clone();
                let mut campaign_line = None;
                let auto = self.auto();
                if let Some(cycle) = auto.cycles[node].as_mut()
                    && let Some(local) = &cycle.local
                {
                    cycle.actions = auto.agents[node].decide(at, local, &view).into();
                    if cycle
                        .actions
                        .iter()
                        .any(|a| matches!(a, Action::Campaign { .. }))
                    {
                        let seen: Vec<String> = view
                            .members
                            .iter()
                            .map(|m| format!("{}@{}={}", m.member, m.revision, m.durable.tx_id))
                            .collect();
                        let line = format!(
                            "{} campaigns at {} of epoch {}, seeing {seen:?} at revision {}, \
                             commit {:?}",
                            name,
                            local.durable.tx_id,
                            local.last_epoch,
                            view.revision,
                            view.last_commit
                                .as_ref()
                                .map(|c| (c.epoch, c.committed.tx_id)),
                        );
                        campaign_line = Some(line);
                    }
                }
                if let Some(line) = campaign_line {
                    self.log(line);
                }
            }
            Answer::Published(outcome) => {
                if let Err(error) = outcome {
                    self.auto().agents[node].on_error(error);
                }
            }
            Answer::Committed(record, outcome) => self.committed(node, &record, outcome),
            Answer::Campaign(outcome) => {
                let auto = self.auto();
                if let Some(cycle) = auto.cycles[node].as_mut()
                    && let Some(local) = &cycle.local
                {
                    let next = auto.agents[node].on_campaign(local, outcome);
                    for action in next.into_iter().rev() {
                        cycle.actions.push_front(action);
                    }
                }
            }
        }
        self.run_actions(node)
    }

    /// Carries out the cycle's actions in order until one needs the coordinator (its answer
    /// resumes them), and ends the cycle when none is left.
    fn run_actions(&mut self, node: usize) -> Check {
        loop {
            let auto = self.auto();
            let Some(cycle) = auto.cycles[node].as_mut() else {
                return Ok(());
            };
            let Some(action) = cycle.actions.pop_front() else {
                self.end_cycle(node);
                return Ok(());
            };
            let lease = auto.agents[node].lease();
            match (action, lease) {
                (Action::Publish(record), Some(lease)) => {
                    self.call(node, Call::Publish(record, lease));
                    return Ok(());
                }
                (Action::PublishCommit(record), Some(lease)) => {
                    self.call(node, Call::PublishCommit(record, lease));
                    return Ok(());
                }
                (Action::Campaign { above }, Some(lease)) => {
                    self.call(node, Call::Campaign { above, lease });
                    return Ok(());
                }
                (Action::Publish(_) | Action::PublishCommit(_) | Action::Campaign { .. }, None) => {
                }
                (Action::Lead { epoch, .. }, _) => self.lead(node, epoch),
                (Action::Follow(leader), _) => self.follow(node, &leader),
                (Action::Lease { until }, _) => self.grant_lease(node, until)?,
            }
        }
    }

    /// The cycle is over: the next one comes after the agent's interval, or at once.
    fn end_cycle(&mut self, node: usize) {
        let auto = self.auto();
        let again = auto.cycles[node].take().is_some_and(|c| c.again);
        let cycle = auto.agents[node].config().cycle().as_micros() as u64;
        let next = match (again, auto.agents[node].poll_soon()) {
            (true, _) => 1,
            (false, true) => cycle / 8,
            (false, false) => cycle,
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
        Some(LocalView::of(
            &engine.status(Timestamp(self.now)),
            &self.policy,
        ))
    }

    /// Grants `node`'s engine the lease the agent computed, counting the voters and policy
    /// of the commit record the coordinator last accepted from it.
    fn grant_lease(&mut self, node: usize, until: Timestamp) -> Check {
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
        self.deliver(node, event)
    }

    /// The coordinator's answer to a commit record `node` published.
    fn committed(
        &mut self,
        node: usize,
        record: &CommitRecord,
        outcome: Result<(), CoordinatorError>,
    ) {
        match outcome {
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
            Err(error) => {
                // As the runner does: no lease for the engine this cycle.
                if let Some(cycle) = self.auto().cycles[node].as_mut() {
                    cycle.actions.retain(|a| !matches!(a, Action::Lease { .. }));
                }
                self.auto().agents[node].on_error(error);
            }
        }
    }

    /// The node becomes the primary of exactly `epoch`, as `repnode`'s `Server::lead` does.
    fn lead(&mut self, node: usize, epoch: Epoch) {
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} LEADS in epoch {epoch}"));
        let floor = Epoch(epoch.0.saturating_sub(1));
        self.nodes[node].min_epoch = self.nodes[node].min_epoch.max(floor);
        self.nodes[node].allow_tx_discarding = true;
        // A Lead carried out after the key moved on (its campaign's answer came late) makes a
        // primary that leads nothing: the topology's primary stays the key's holder.
        let current = self
            .auto()
            .state
            .view(DB)
            .leader
            .is_some_and(|l| l.member == name && l.epoch == epoch);
        if current {
            self.topology.crown(node);
        }
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
        let auto = self.auto();
        let agent = std::mem::replace(&mut auto.agents[node], agent(&name));
        let (process, cycle) = (auto.process[node], auto.cycles[node].take());
        self.restart_as(node, role);
        let auto = self.auto();
        auto.agents[node] = agent;
        auto.process[node] = process;
        auto.cycles[node] = cycle;
    }

    /// The nodes whose engine runs as a primary, whether or not the key names them.
    pub(super) fn running_primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&n| {
                self.nodes[n]
                    .engine
                    .as_ref()
                    .is_some_and(|e| matches!(e.config().role, Role::Primary))
            })
            .collect()
    }

    /// The node writes take, among those that run as primaries: most often the newest, but
    /// one time in four another (an old primary, cut off or stalled, that clients still
    /// reach), which must acknowledge nothing.
    pub(super) fn auto_write_target(&mut self) -> Option<usize> {
        let primaries = self.running_primaries();
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
