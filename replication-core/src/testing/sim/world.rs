//! The world: the event queue, the step loop that feeds each event to its node's engine, and
//! the execution of the commands the engines emit against the disks, the network and the
//! clients, with the oracle checking every step.
//!
//! This is the one place that speaks the engine's [`Event`] and [`Command`] vocabulary; the
//! subsystems it drives know nothing of it.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;

use super::auto::Auto;
use super::disk::Pending;
use super::failover::{Failover, guaranteed_copies};
use super::faults::Faults;
use super::network::{Broken, Closing, Network, Transmission};
use super::node::SimNode;
use super::oracle::{self, Check, Oracle};
use super::race::{Race, RaceStats};
use super::rng::{Rng, Stream};
use super::switchover::{Switchover, SwitchoverStats};
use super::topology::Topology;
use super::workload::Workload;
use super::{SimOptions, SimReport};
use crate::engine::{
    AckKind, AppendToken, Command, ConnId, Direction, Engine, Event, Role, Timestamp, WriteError,
    WriteId, WriteReceipt,
};
use crate::protocol::Message;
use crate::quorum::Quorum;
use crate::types::{NodeId, TxId};

/// Something that happens at a point in simulated time. Events for a node carry the
/// incarnation they were meant for: a node that crashed since never sees them.
#[derive(Debug)]
pub(super) enum SimEvent {
    /// A message arrives, unless its link broke while it was in flight.
    Deliver {
        link: usize,
        to_end: usize,
        message: Message,
    },
    /// A ready-made engine event (a read's result, a channel's break).
    Engine {
        node: usize,
        incarnation: u64,
        event: Event,
    },
    /// The engine's timer; only the latest scheduled one fires.
    Tick { node: usize, incarnation: u64 },
    /// An append became durable.
    DurableDone {
        node: usize,
        incarnation: u64,
        token: AppendToken,
        pending: Pending,
    },
    /// A dial resolves, to a channel or a refusal.
    Connect {
        node: usize,
        incarnation: u64,
        address: String,
    },
    /// The clients propose their next batch.
    ClientWrite,
    /// The next fault strikes.
    Fault,
    /// A crashed node comes back.
    Restart { node: usize },
    /// The operator tries to promote the plan's candidate after the primary was lost.
    Promote,
    /// A partition ends.
    Heal { a: usize, b: usize },
    /// A link closed gracefully breaks, after what was in flight on it.
    FinishClose { link: usize },
    /// The switchover under way looks whether the target caught up.
    SwitchoverStep,
    /// During racing promotions, an operator repoints a replica to the other racer.
    RaceRepoint,
    /// An operator ends racing promotions.
    EndRace,
    /// A failover agent's cycle (automatic failover).
    AgentCycle { node: usize, incarnation: u64 },
    /// A call from an agent arrives at the coordinator (automatic failover).
    CoordinatorCall {
        node: usize,
        process: u64,
        call: Box<super::auto::Call>,
    },
    /// The coordinator's answer arrives at the agent.
    CoordinatorAnswer {
        node: usize,
        process: u64,
        answer: Box<super::auto::Answer>,
    },
    /// A node reaches the coordinator again.
    CoordinatorReach { node: usize },
    /// The coordinator is back.
    CoordinatorUp,
    /// A stalled node resumes: what it was sent meanwhile is handled, in order.
    Resume { node: usize },
    /// A node takes a snapshot or compacts its log.
    Retention,
    /// A node's engine asked for a snapshot, which is taken now.
    TakeSnapshot { node: usize, incarnation: u64 },
    /// A replica's install of a snapshot completes.
    InstallDone {
        node: usize,
        incarnation: u64,
        meta: crate::snapshot::SnapshotMeta,
    },
}

/// An event and when it happens; events due at the same time happen in scheduling order.
#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Scheduled) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Scheduled {}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Scheduled) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheduled {
    fn cmp(&self, other: &Scheduled) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The last lines of what happened, for a failure report.
#[derive(Debug)]
pub(super) struct Trace {
    lines: VecDeque<String>,
    capacity: usize,
}

impl Trace {
    fn record(&mut self, now: u64, line: String) {
        if self.lines.len() == self.capacity {
            self.lines.pop_front();
        }
        if self.capacity > 0 {
            self.lines.push_back(format!("{now:>10}us {line}"));
        }
    }

    pub(super) fn dump(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            let _ = writeln!(out, "{line}");
        }
        out
    }
}

/// The simulated cluster and its surroundings, one field per subsystem, and the clock.
pub(super) struct World {
    /// Simulated microseconds since the start.
    pub(super) now: u64,
    /// Breaks ties between events due at the same time: first scheduled, first run.
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    /// The cluster's shape now (a promotion would change it).
    pub(super) topology: Topology,
    pub(super) nodes: Vec<SimNode>,
    pub(super) network: Network,
    pub(super) faults: Faults,
    pub(super) workload: Workload,
    pub(super) oracle: Oracle,
    /// The quorum policy in force on the primary.
    pub(super) policy: Quorum,
    pub(super) trace: Trace,
    pub(super) crashes: usize,
    pub(super) seed: u64,
    pub(super) majority_acks_with_members_away: usize,
    pub(super) failover: Failover,
    /// The fewest replicas a commit so far is on: the least `k` of every policy in force.
    pub(super) fewest_copies: usize,
    /// Acknowledged writes a forced promotion gave up.
    pub(super) forgiven_writes: usize,
    /// Rewinds the nodes made.
    pub(super) rewinds: usize,
    /// The switchover under way, if any.
    pub(super) switchover: Option<Switchover>,
    pub(super) switchovers: SwitchoverStats,
    /// Racing promotions under way, if any.
    pub(super) race: Option<Race>,
    pub(super) races: RaceStats,
    /// Automatic failover, when the run has it.
    pub(super) auto: Option<Auto>,
    /// Snapshots and compaction.
    pub(super) snapshots: super::snapshots::Snapshots,
}

impl World {
    pub(super) fn new(seed: u64, options: &SimOptions) -> World {
        let topology = options.topology.clone();
        let mut nodes = topology
            .nodes()
            .iter()
            .enumerate()
            .map(|(index, spec)| SimNode::new(seed, index, spec, topology.role(index)))
            .collect::<Vec<_>>();
        let mut faults = Faults::new(seed, options.faults);
        let mut policy = faults.initial_policy(&topology);
        let mut auto = None;
        if options.automatic {
            let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
            let mut automatic = Auto::new(seed, &names);
            policy = automatic.policy(topology.direct_replicas().count());
            // As repnode opens a database under automatic failover: leased, and dropping
            // uncommitted transactions a new leader's history lacks.
            nodes.iter_mut().for_each(|n| {
                n.leased = true;
                n.allow_tx_discarding = true;
            });
            auto = Some(automatic);
        }
        let fewest_copies = guaranteed_copies(&policy);
        World {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            network: Network::new(
                nodes.len(),
                Rng::stream(seed, Stream::Network),
                Rng::stream(seed, Stream::MessageLoss),
                options.faults,
            ),
            nodes,
            topology,
            faults,
            workload: Workload::new(Rng::stream(seed, Stream::Workload), options.writes),
            oracle: Oracle::default(),
            policy,
            trace: Trace {
                lines: VecDeque::new(),
                capacity: options.trace_lines,
            },
            crashes: 0,
            seed,
            majority_acks_with_members_away: 0,
            failover: Failover::None,
            fewest_copies,
            forgiven_writes: 0,
            rewinds: 0,
            switchover: None,
            switchovers: SwitchoverStats::default(),
            race: None,
            races: RaceStats::default(),
            auto,
            snapshots: super::snapshots::Snapshots::new(seed),
        }
    }

    /// The node that takes writes now.
    pub(super) fn primary(&self) -> usize {
        self.topology.primary_index()
    }

    pub(super) fn log(&mut self, line: String) {
        self.trace.record(self.now, line);
    }

    pub(super) fn schedule(&mut self, delay: u64, event: SimEvent) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    pub(super) fn boot(&mut self, node: usize) {
        let last = self.nodes[node].boot(&self.policy, self.now);
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} boots at {last:?}"));
        self.schedule_tick(node, self.now);
        if self.auto.is_some() {
            self.start_agent(node);
        }
    }

    pub(super) fn schedule_tick(&mut self, node: usize, at: u64) {
        let at = at.max(self.now + 1);
        if self.nodes[node]
            .tick_at
            .is_some_and(|pending| pending <= at)
        {
            return;
        }
        self.nodes[node].tick_at = Some(at);
        let incarnation = self.nodes[node].incarnation;
        self.schedule(at - self.now, SimEvent::Tick { node, incarnation });
    }

    /// Tells the nodes on the broken ends of channels, each after its delay.
    pub(super) fn notify_broken(&mut self, broken: Vec<Broken>) {
        for Broken { end, delay } in broken {
            let event = Event::Disconnected { conn: end.conn };
            self.schedule(
                delay,
                SimEvent::Engine {
                    node: end.node,
                    incarnation: end.incarnation,
                    event,
                },
            );
        }
    }

    /// Feeds `event` to `node`'s engine, if it runs, and executes what it commands.
    pub(super) fn deliver(&mut self, node: usize, event: Event) -> Check {
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return Ok(());
        };
        engine.handle(Timestamp(self.now), event);
        loop {
            let Some(engine) = self.nodes[node].engine.as_mut() else {
                return Ok(());
            };
            let Some(command) = engine.poll_command() else {
                break;
            };
            self.execute(node, command)?;
        }
        if let Some(at) = self.nodes[node].engine.as_ref().map(|e| e.poll_timeout().0) {
            self.schedule_tick(node, at);
        }
        Ok(())
    }

    fn execute(&mut self, node: usize, command: Command) -> Check {
        let incarnation = self.nodes[node].incarnation;
        match command {
            Command::Append { txs, token } => {
                oracle::append_follows_log(&self.nodes[node], &txs)?;
                let pending = self.nodes[node].disk.append(txs, self.now);
                let event = SimEvent::DurableDone {
                    node,
                    incarnation,
                    token,
                    pending,
                };
                self.schedule(pending.at - self.now, event);
            }
            Command::Truncate { after, rewind } => {
                oracle::rewind_allowed(&self.nodes[node], rewind)?;
                if rewind {
                    self.oracle
                        .rewind_spares_the_history(&self.nodes[node], after)?;
                    // The operator allowed one rewind; it is spent.
                    self.nodes[node].allow_rewind = false;
                    self.rewinds += 1;
                } else {
                    oracle::truncation_spares_committed(&self.nodes[node], after)?;
                }
                self.nodes[node].disk.truncate(after);
                if rewind {
                    // As the driver does: a snapshot beyond the cut is of the history left.
                    self.nodes[node]
                        .snapshots
                        .retain(|snapshot| snapshot.meta.last.tx_id <= after);
                }
                // The state machine forgets what a rewind drops.
                self.nodes[node].applied.truncate(after.0 as usize);
                let name = self.nodes[node].name.clone();
                let how = if rewind { "rewinds" } else { "truncates" };
                self.log(format!("{name} {how} after {after}"));
            }
            Command::SaveEpoch(claim) => self.nodes[node].disk.save_epoch(&claim),
            Command::SaveMembers(members) => {
                // Under automatic failover a member that is down keeps the upstream it had
                // until its agent, back, follows the leader: its place in the topology says
                // nothing of cascading then.
                if self.auto.is_none() {
                    oracle::members_replicate_from_it(&self.topology, node, &members)?;
                }
                let name = self.nodes[node].name.clone();
                self.log(format!("{name} saves members {members:?}"));
                self.nodes[node].disk.save_members(members);
            }
            Command::Commit { up_to } => self.commit(node, up_to)?,
            Command::Read {
                conn,
                from,
                max_count,
                max_bytes,
            } => {
                let (delay, txs) = self.nodes[node].disk.read(from, max_count, max_bytes);
                let Some(txs) = txs else {
                    self.read_removed(node, conn);
                    return Ok(());
                };
                let event = Event::ReadDone { conn, txs };
                let event = SimEvent::Engine {
                    node,
                    incarnation,
                    event,
                };
                self.schedule(delay, event);
            }
            Command::Send { conn, message } => self.send(node, conn, message),
            Command::Connect { address } => {
                let delay = self.network.dial_time();
                let event = SimEvent::Connect {
                    node,
                    incarnation,
                    address,
                };
                self.schedule(delay, event);
            }
            Command::Close { conn } => self.close_channel(node, conn),
            Command::Reply { write, result } => self.reply(node, write, result)?,
            command @ (Command::SnapshotRead { .. }
            | Command::SnapshotReceive { .. }
            | Command::SnapshotStore { .. }
            | Command::SnapshotInstall { .. }
            | Command::TakeSnapshot
            | Command::Compact { .. }) => self.execute_snapshot_command(node, command)?,
        }
        Ok(())
    }

    /// Closes `node`'s channel `conn` gracefully: what it sent before still arrives.
    pub(super) fn close_channel(&mut self, node: usize, conn: ConnId) {
        match self.network.close(node, conn, self.now) {
            Closing::Cut(broken) => self.notify_broken(broken),
            Closing::After { link, delay } => {
                self.schedule(delay, SimEvent::FinishClose { link });
            }
        }
    }

    fn send(&mut self, node: usize, conn: ConnId, message: Message) {
        match self.network.send(node, conn, self.now) {
            Transmission::Dropped => {}
            Transmission::Lost(broken) => {
                let name = self.nodes[node].name.clone();
                self.log(format!("{name} conn {conn:?}: message lost, channel cut"));
                self.notify_broken(broken);
            }
            Transmission::InFlight {
                link,
                to_end,
                delay,
            } => self.schedule(
                delay,
                SimEvent::Deliver {
                    link,
                    to_end,
                    message,
                },
            ),
        }
    }

    fn commit(&mut self, node: usize, up_to: TxId) -> Check {
        oracle::commit_never_regresses(&self.nodes[node], up_to)?;
        oracle::commit_within_durable(&self.nodes[node], up_to)?;
        let writing_epoch = self.nodes[node]
            .engine
            .as_ref()
            .filter(|engine| matches!(engine.config().role, Role::Primary))
            .map(Engine::epoch);
        if let Some(epoch) = writing_epoch
            && up_to.0 > self.nodes[node].disk.committed()
        {
            self.oracle
                .one_writer_per_epoch(&self.nodes[node].name, epoch)?;
        }
        self.nodes[node].disk.commit(up_to);
        while (self.nodes[node].applied.len() as u64) < up_to.0 {
            let n = &self.nodes[node];
            let tx = &n.disk.txs()[n.applied.len()];
            oracle::applies_in_order(n, tx)?;
            self.oracle.committed_history_agrees(n, tx)?;
            let position = tx.position();
            self.nodes[node].applied.push(position);
        }
        Ok(())
    }

    /// `primary` answers `write`.
    fn reply(
        &mut self,
        primary: usize,
        write: WriteId,
        result: Result<WriteReceipt, WriteError>,
    ) -> Check {
        let proposed =
            oracle::reply_is_for_outstanding(write, self.workload.answer(write, primary))?;
        let receipt = match result {
            Ok(receipt) => receipt,
            Err(error) => {
                self.log(format!("write {write:?} not acknowledged: {error}"));
                self.workload.refused();
                return Ok(());
            }
        };
        let node = &self.nodes[primary];
        oracle::ack_durable_on_primary(node, &receipt)?;
        oracle::commit_before_reply(node, &receipt)?;
        oracle::ack_kind_matches_policy(&receipt, &self.policy)?;
        if receipt.ack == AckKind::Quorum && matches!(self.policy, Quorum::Majority) {
            let away = node.engine.as_ref().is_some_and(|engine| {
                let status = engine.status(Timestamp(self.now));
                status.replicas.iter().any(|r| r.member && !r.connected)
            });
            self.majority_acks_with_members_away += usize::from(away);
        }
        if receipt.ack == AckKind::Quorum {
            // Its members, wherever they replicate from now: one an operator repointed away
            // (switching racers) still holds what it acknowledged.
            let replicas: Vec<usize> = (0..self.nodes.len()).filter(|&n| n != primary).collect();
            oracle::quorum_ack_held_by_replicas(
                &self.nodes,
                &replicas,
                self.nodes[primary].disk.members(),
                &receipt,
                &proposed,
                &self.policy,
            )?;
        }
        if self.auto.is_some() {
            self.check_auto_ack(primary, &receipt)?;
        }
        let name = &self.nodes[primary].name;
        let line = format!(
            "write {write:?} acknowledged by {name} as {} ({:?})",
            receipt.tx_id, receipt.ack
        );
        self.log(line);
        self.workload.acknowledged(&receipt);
        Ok(())
    }

    fn connect(&mut self, node: usize, address: &str) -> Check {
        let reachable = self
            .topology
            .index(address)
            .filter(|&t| self.nodes[t].is_up() && !self.network.partitioned(node, t));
        let Some(target) = reachable else {
            let event = Event::ConnectFailed {
                reason: "unreachable".into(),
                cause: crate::engine::LinkErrorCause::Unreachable,
            };
            return self.deliver(node, event);
        };
        let (local, remote) = self.network.open(node, target);
        let (node_name, target_name) = (
            self.nodes[node].name.clone(),
            self.nodes[target].name.clone(),
        );
        self.deliver(
            target,
            Event::Connected {
                conn: remote,
                peer: NodeId::new(node_name.clone()),
                address: node_name,
                direction: Direction::Downstream,
            },
        )?;
        self.deliver(
            node,
            Event::Connected {
                conn: local,
                peer: NodeId::new(target_name.clone()),
                address: target_name,
                direction: Direction::Upstream,
            },
        )
    }

    fn client_write(&mut self) -> Check {
        let auto_target = match self.auto.is_some() {
            true => Some(self.auto_write_target()),
            false => None,
        };
        let primary = match auto_target {
            Some(target) => target.unwrap_or_else(|| self.primary()),
            None => self.racer_for_writes().unwrap_or_else(|| self.primary()),
        };
        // A switching primary refuses new writes, naming the target.
        let takes = self.nodes[primary].is_up()
            && !self.switching_over()
            && auto_target.is_none_or(|target| target.is_some());
        let batch = self
            .workload
            .next_batch(takes.then_some(primary), &self.policy);
        if let Some(delay) = batch.next_in {
            self.schedule(delay, SimEvent::ClientWrite);
        }
        if batch.writes.is_empty() {
            return Ok(());
        }
        self.deliver(primary, Event::Propose(batch.writes))
    }

    /// The primary's policy becomes `policy`.
    pub(super) fn set_policy(&mut self, policy: Quorum) -> Check {
        self.log(format!("policy becomes `{policy}`"));
        self.adopt_policy(policy.clone());
        if self.auto.is_some() {
            // Whichever runs as a primary: a Lead carried out late may leave one running that
            // the key has already moved past, as the operator's `db update` may reach it.
            for node in self.running_primaries() {
                self.deliver(node, Event::SetPolicy(Arc::new(policy.clone())))?;
            }
            return Ok(());
        }
        self.deliver(self.primary(), Event::SetPolicy(Arc::new(policy)))
    }

    /// `policy` is the one in force from now on (a primary booting gets it).
    pub(super) fn adopt_policy(&mut self, policy: Quorum) {
        self.fewest_copies = self.fewest_copies.min(guaranteed_copies(&policy));
        self.policy = policy;
    }

    /// Runs the next event; `false` when none is left.
    pub(super) fn step(&mut self) -> Result<bool, String> {
        let Some(Reverse(Scheduled { at, event, .. })) = self.queue.pop() else {
            return Ok(false);
        };
        self.now = at;
        // A stalled node handles nothing until it resumes, then all of it in order.
        if let Some(node) = self.stalled_target(&event) {
            self.hold(node, event);
            return Ok(true);
        }
        self.dispatch(event)?;
        Ok(true)
    }

    /// Runs one event at `now`.
    pub(super) fn dispatch(&mut self, event: SimEvent) -> Check {
        let current = |world: &World, node: usize, incarnation: u64| {
            world.nodes[node].incarnation == incarnation
        };
        match event {
            SimEvent::Deliver {
                link,
                to_end,
                message,
            } => {
                if let Some(end) = self.network.arrival(link, to_end)
                    && current(self, end.node, end.incarnation)
                {
                    let name = &self.nodes[end.node].name;
                    let line = format!("{name} <- {}", describe(&message));
                    self.log(line);
                    let event = Event::Received {
                        conn: end.conn,
                        message,
                    };
                    self.deliver(end.node, event)?;
                }
            }
            SimEvent::Engine {
                node,
                incarnation,
                event,
            } => {
                if current(self, node, incarnation) {
                    self.deliver(node, event)?;
                }
            }
            SimEvent::Tick { node, incarnation } => {
                if current(self, node, incarnation) && self.nodes[node].tick_at == Some(self.now) {
                    self.nodes[node].tick_at = None;
                    self.deliver(node, Event::Tick)?;
                }
            }
            SimEvent::DurableDone {
                node,
                incarnation,
                token,
                pending,
            } => {
                if current(self, node, incarnation) {
                    self.nodes[node].disk.complete(pending);
                    let up_to = TxId(pending.up_to);
                    self.deliver(node, Event::Durable { token, up_to })?;
                }
            }
            SimEvent::Connect {
                node,
                incarnation,
                address,
            } => {
                if current(self, node, incarnation) {
                    self.connect(node, &address)?;
                }
            }
            SimEvent::ClientWrite => self.client_write()?,
            SimEvent::Fault => self.fault()?,
            SimEvent::Restart { node } => {
                if !self.nodes[node].is_up() && !self.is_lost(node) && !self.is_held(node) {
                    self.boot_or_rejoin(node);
                }
            }
            SimEvent::Promote => self.promote()?,
            SimEvent::Heal { a, b } => self.network.heal(a, b),
            SimEvent::FinishClose { link } => {
                let broken = self.network.finish_close(link);
                self.notify_broken(broken);
            }
            SimEvent::SwitchoverStep => self.switchover_step(),
            SimEvent::RaceRepoint => self.race_repoint(),
            SimEvent::EndRace => self.end_race()?,
            SimEvent::AgentCycle { node, incarnation } => {
                if current(self, node, incarnation) && self.nodes[node].is_up() {
                    self.agent_cycle(node);
                }
            }
            SimEvent::CoordinatorCall {
                node,
                process,
                call,
            } => self.coordinator_call(node, process, *call),
            SimEvent::CoordinatorAnswer {
                node,
                process,
                answer,
            } => self.coordinator_answer(node, process, *answer)?,
            SimEvent::CoordinatorReach { node } => self.coordinator_reach(node),
            SimEvent::CoordinatorUp => self.coordinator_up(),
            SimEvent::Resume { node } => self.resume(node)?,
            SimEvent::Retention => self.retention_round()?,
            SimEvent::TakeSnapshot { node, incarnation } => {
                if current(self, node, incarnation) {
                    self.take_snapshot(node)?;
                }
            }
            SimEvent::InstallDone {
                node,
                incarnation,
                meta,
            } => {
                if current(self, node, incarnation) {
                    self.install_done(node, meta)?;
                }
            }
        }
        Ok(())
    }

    /// Schedules `event` before any other due at the same time.
    pub(super) fn schedule_first(&mut self, delay: u64, event: SimEvent) {
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: 0,
            event,
        }));
    }

    /// The node `event` is for, if it is stalled now (automatic failover only).
    fn stalled_target(&self, event: &SimEvent) -> Option<usize> {
        let auto = self.auto.as_ref()?;
        let node = match event {
            SimEvent::Engine { node, .. }
            | SimEvent::Tick { node, .. }
            | SimEvent::DurableDone { node, .. }
            | SimEvent::Connect { node, .. }
            | SimEvent::AgentCycle { node, .. }
            | SimEvent::InstallDone { node, .. }
            | SimEvent::TakeSnapshot { node, .. }
            | SimEvent::CoordinatorAnswer { node, .. } => *node,
            SimEvent::Deliver { link, to_end, .. } => self.network.arrival(*link, *to_end)?.node,
            _ => return None,
        };
        auto.stalled(node, self.now).map(|_| node)
    }

    /// Ends the fault phase: no more faults, no partitions, every node up.
    fn heal_everything(&mut self) -> Check {
        self.faults.stop();
        self.network.heal_all();
        if let Some(auto) = self.auto.as_mut() {
            auto.heal_all();
        }
        self.end_race()?;
        for node in 0..self.nodes.len() {
            if !self.nodes[node].is_up() && !self.is_lost(node) {
                self.boot_or_rejoin(node);
            }
        }
        // Every member answers now: a pending failover completes, unless no replica ever
        // joined the lost primary, which then comes back.
        self.promote()?;
        if let Failover::Pending { .. } = self.failover {
            self.failover = Failover::None;
        }
        // After a forced promotion the clients go on writing: a cascaded replica that
        // committed beyond the new history learns so only once that history passes it, since
        // until then its relay cannot tell the difference from a lag.
        if let Failover::Done { forced: true, .. } = self.failover {
            self.promote_again_if_taken();
            // Enough to pass the furthest commit point of the old history: a cascaded replica
            // may have committed far beyond the new primary (seed 87719: 18 transactions,
            // behind a relay that started again from a snapshot).
            let furthest = self
                .nodes
                .iter()
                .map(|n| n.disk.committed())
                .max()
                .unwrap_or(0);
            let new_primary = self.nodes[self.primary()].disk.committed();
            self.workload
                .more(4 + furthest.saturating_sub(new_primary) as usize);
            self.schedule(1_000, SimEvent::ClientWrite);
        }
        for node in 0..self.nodes.len() {
            if !self.nodes[node].is_up() {
                self.boot_or_rejoin(node);
            }
        }
        Ok(())
    }

    /// The whole run: a safety phase of writes and faults with every step checked, then a
    /// liveness phase that heals the cluster and waits for it to converge.
    pub(super) fn simulate(&mut self) -> Check {
        for node in 0..self.nodes.len() {
            self.boot(node);
        }
        self.schedule(1_000, SimEvent::ClientWrite);
        self.schedule(20_000, SimEvent::Fault);
        let first_round = self.snapshots.next_round();
        self.schedule(first_round, SimEvent::Retention);
        let mut steps = 0u64;
        while !self.workload.proposed_all() {
            if !self.step()? {
                break;
            }
            steps += 1;
            if steps > 5_000_000 {
                return Err("fault phase did not finish".into());
            }
        }
        self.heal_everything()?;
        let deadline = self.now + 120_000_000;
        while !oracle::converged(&self.nodes, self.primary(), &self.workload) {
            if self.now > deadline || !self.step()? {
                return Err(format!("no convergence after healing: {}", self.status()));
            }
        }
        oracle::final_checks(&self.nodes, self.primary(), &self.workload)
    }

    fn status(&self) -> String {
        let now = Timestamp(self.now);
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "{} last {} committed {} applied {} upstream {:?}",
                    n.name,
                    n.disk.len(),
                    n.engine.as_ref().map(|e| e.committed().0).unwrap_or(0),
                    n.applied.len(),
                    n.engine.as_ref().and_then(|e| e.status(now).upstream)
                )
            })
            .collect();
        nodes.join("; ")
    }

    pub(super) fn report(&self) -> SimReport {
        SimReport {
            acked_quorum: self.workload.acked_quorum,
            acked_async: self.workload.acked_async,
            not_acked: self.workload.not_acked,
            crashes: self.crashes,
            majority_acks_with_members_away: self.majority_acks_with_members_away,
            failovers: usize::from(matches!(self.failover, Failover::Done { .. })),
            reseeds: usize::from(matches!(
                self.failover,
                Failover::Done { reseeded: true, .. }
            )),
            forced_promotions: usize::from(matches!(
                self.failover,
                Failover::Done { forced: true, .. }
            )),
            forgiven_writes: self.forgiven_writes,
            rewinds: self.rewinds,
            switchovers: self.switchovers.completed,
            switchovers_aborted: self.switchovers.aborted,
            longest_switchover_us: self.switchovers.longest_window,
            switchover_us: self.switchovers.total_window,
            racing_promotions: self.races.races,
            races_won_by_rival: self.races.rival_won,
            racers_fenced: self.races.fenced,
            race_repoints: self.races.repoints,
            automatic: self
                .auto
                .as_ref()
                .map(|auto| auto.stats.clone())
                .unwrap_or_default(),
            snapshots: self.snapshots.stats,
            committed: self.nodes[self.primary()].disk.len(),
            trace: self.trace.dump(),
        }
    }
}

fn describe(message: &Message) -> String {
    match message {
        Message::Txs {
            txs,
            committed,
            claim,
        } => format!(
            "Txs {}..={} committed {committed} {claim}",
            txs.first().map(|t| t.id.0).unwrap_or(0),
            txs.last().map(|t| t.id.0).unwrap_or(0)
        ),
        Message::Diverged {
            claim,
            source_hashes,
            source_last,
        } => {
            format!(
                "Diverged {claim} hashes {} source_last {source_last}",
                source_hashes.len()
            )
        }
        other => format!("{other:?}"),
    }
}
