//! A deterministic simulation of a replicated cluster: the real [`Engine`] on every node, a
//! simulated disk per node that loses what was not durable when the node crashes, and a seeded
//! network that delays messages, cuts channels, partitions nodes and refuses connections.
//!
//! Everything — time, message order, faults — derives from one seed, so [`run`] with the same
//! seed replays the same history exactly. After the fault phase the simulator heals the cluster
//! and checks that the replicas converge.
//!
//! The topology is a primary `p`, two replicas `r1` and `r2` of `p`, and `r3`, a replica of
//! `r1`. Invariants checked:
//! - after every commit: the transactions a node commits are durable on that node, applied in
//!   order, and equal (by hash) to what every other node committed at the same ids;
//! - at every acknowledgement: the write's hash is the primary's, the primary holds it durably,
//!   and under a synchronous policy as many replicas as the policy demands hold it durably;
//! - at the end: every acknowledged write is in every node's log, all nodes have the primary's
//!   committed history, no replication stopped, and every write was answered.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::engine::{
    AckKind, AppendToken, Command, ConnId, Direction, Engine, EngineConfig, Event, Role, Timestamp,
    WriteError, WriteId, WriteReceipt,
};
use crate::protocol::Message;
use crate::quorum::{Quorum, ReplicaFilter};
use crate::types::{Epoch, LogPosition, LogState, NodeId, Tx, TxHash, TxId};

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Client writes proposed during the fault phase.
    pub writes: usize,
    /// Whether to inject faults (crashes, partitions, cut channels, policy changes).
    pub faults: bool,
    /// Lines of trace kept for a failure report.
    pub trace_lines: usize,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            writes: 200,
            faults: true,
            trace_lines: 400,
        }
    }
}

/// What a successful run observed.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Writes acknowledged under a synchronous policy.
    pub acked_quorum: usize,
    /// Writes acknowledged asynchronously.
    pub acked_async: usize,
    /// Writes answered with an error (refused, timed out, lost in a crash).
    pub not_acked: usize,
    /// Node crashes injected.
    pub crashes: usize,
    /// The final commit point.
    pub committed: u64,
}

/// SplitMix64: small, fast and fully determined by its seed.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A node's disk: what was appended, how much of it is durable, and what survives a crash.
#[derive(Debug, Default)]
struct SimDisk {
    txs: Vec<Tx>,
    durable: u64,
    committed: u64,
    epoch: Epoch,
    /// Bumped by every truncation; a durability completion from before it covers nothing
    /// appended after it.
    truncations: u64,
}

impl SimDisk {
    fn position(&self, id: u64) -> LogPosition {
        if id == 0 {
            LogPosition::START
        } else {
            self.txs[id as usize - 1].position()
        }
    }

    fn state(&self) -> LogState {
        LogState {
            epoch: self.epoch,
            last: self.position(self.txs.len() as u64),
            durable: self.position(self.durable),
            committed: self.position(self.committed),
        }
    }

    fn crash(&mut self) {
        self.txs.truncate(self.durable as usize);
        self.committed = self.committed.min(self.durable);
    }

    fn holds_durably(&self, id: TxId, hash: TxHash) -> bool {
        id.0 <= self.durable
            && self
                .txs
                .get(id.0 as usize - 1)
                .is_some_and(|tx| tx.hash == hash)
    }
}

#[derive(Debug)]
struct SimNode {
    name: String,
    role: Role,
    engine: Option<Engine>,
    disk: SimDisk,
    applied: Vec<LogPosition>,
    /// Bumped on every crash: events addressed to an earlier incarnation are dropped.
    incarnation: u64,
    conns: BTreeMap<ConnId, usize>,
    next_conn: u64,
    /// Earliest time the next durability completion may happen (they complete in order).
    disk_busy_until: u64,
    /// When the node's next tick is scheduled, so that only one is pending at a time.
    tick_at: Option<u64>,
}

#[derive(Debug)]
struct Link {
    /// (node index, its ConnId, its incarnation) for both ends: [dialler, listener].
    ends: [(usize, ConnId, u64); 2],
    alive: bool,
    /// Per direction, the time of the last scheduled delivery, to keep channels FIFO.
    last_delivery: [u64; 2],
}

#[derive(Debug)]
enum SimEvent {
    Deliver {
        link: usize,
        to_end: usize,
        message: Message,
    },
    Engine {
        node: usize,
        incarnation: u64,
        event: Event,
    },
    Tick {
        node: usize,
        incarnation: u64,
    },
    DurableDone {
        node: usize,
        incarnation: u64,
        token: AppendToken,
        up_to: u64,
        truncations: u64,
    },
    Connect {
        node: usize,
        incarnation: u64,
        address: String,
    },
    ClientWrite,
    Fault,
    Restart {
        node: usize,
    },
    Heal {
        a: usize,
        b: usize,
    },
}

#[derive(Debug, Clone)]
struct AckedWrite {
    position: LogPosition,
    kind: AckKind,
}

struct World {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: BTreeMap<usize, SimEvent>,
    next_event: usize,
    nodes: Vec<SimNode>,
    links: Vec<Link>,
    partitions: Vec<(usize, usize)>,
    policy: Quorum,
    outstanding: BTreeMap<WriteId, Quorum>,
    next_write: u64,
    acked: Vec<AckedWrite>,
    committed_history: Vec<TxHash>,
    trace: VecDeque<String>,
    trace_lines: usize,
    report: SimReport,
    faults: bool,
    writes_left: usize,
    config_seed: u64,
}

type SimResult<T> = Result<T, String>;

const PRIMARY: usize = 0;
const DIRECT_REPLICAS: [&str; 2] = ["r1", "r2"];

impl World {
    fn new(seed: u64, options: &SimOptions) -> World {
        let mut rng = Rng(seed);
        let roles = [
            ("p", Role::Primary),
            (
                "r1",
                Role::Replica {
                    address: "p".into(),
                },
            ),
            (
                "r2",
                Role::Replica {
                    address: "p".into(),
                },
            ),
            (
                "r3",
                Role::Replica {
                    address: "r1".into(),
                },
            ),
        ];
        let nodes = roles
            .into_iter()
            .map(|(name, role)| SimNode {
                name: name.to_string(),
                role,
                engine: None,
                disk: SimDisk::default(),
                applied: Vec::new(),
                incarnation: 0,
                conns: BTreeMap::new(),
                next_conn: 0,
                disk_busy_until: 0,
                tick_at: None,
            })
            .collect();
        let policy = random_policy(&mut rng);
        let config_seed = rng.next();
        World {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes,
            links: Vec::new(),
            partitions: Vec::new(),
            policy,
            outstanding: BTreeMap::new(),
            next_write: 0,
            acked: Vec::new(),
            committed_history: Vec::new(),
            trace: VecDeque::new(),
            trace_lines: options.trace_lines,
            report: SimReport::default(),
            faults: options.faults,
            writes_left: options.writes,
            config_seed,
        }
    }

    fn log(&mut self, line: String) {
        if self.trace.len() == self.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>10}us {line}", self.now));
    }

    fn schedule(&mut self, delay: u64, event: SimEvent) {
        let id = self.next_event;
        self.next_event += 1;
        self.events.insert(id, event);
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq, id)));
    }

    fn engine_config(&mut self, node: usize) -> EngineConfig {
        let name = self.nodes[node].name.clone();
        let mut config = EngineConfig::new(name.as_str(), "db", self.nodes[node].role.clone());
        let mut rng = Rng(self.config_seed ^ node as u64);
        config.heartbeat_interval = Duration::from_millis(50);
        config.peer_timeout = Duration::from_millis(300);
        config.reconnect_min = Duration::from_millis(10);
        config.reconnect_max = Duration::from_millis(200);
        config.prefetch_buffer = rng.range(2, 64) as u32;
        config.recent_cache_txs = rng.range(1, 64) as usize;
        config.max_batch_txs = rng.range(1, 16) as usize;
        config.max_uncommitted = rng.range(8, 128);
        config.write_timeout = rng
            .chance(50)
            .then(|| Duration::from_millis(rng.range(200, 3000)));
        config.tags.insert(
            "zone".into(),
            if node.is_multiple_of(2) {
                "a".into()
            } else {
                "b".into()
            },
        );
        config.seed = rng.next();
        config
    }

    fn boot(&mut self, node: usize) {
        let config = self.engine_config(node);
        let state = self.nodes[node].disk.state();
        let last_epoch = self.nodes[node]
            .disk
            .txs
            .last()
            .map(|tx| tx.epoch)
            .unwrap_or(Epoch(0));
        // The state machine is rebuilt from the committed log, as a real node does.
        let committed = self.nodes[node].disk.committed as usize;
        let applied: Vec<LogPosition> = self.nodes[node].disk.txs[..committed]
            .iter()
            .map(Tx::position)
            .collect();
        self.nodes[node].applied = applied;
        let engine = Engine::new(
            config,
            Arc::new(self.policy.clone()),
            state,
            last_epoch,
            Timestamp(self.now),
        );
        self.nodes[node].engine = Some(engine);
        let name = self.nodes[node].name.clone();
        self.log(format!("{name} boots at {:?}", state.last));
        self.nodes[node].tick_at = None;
        self.schedule_tick(node, self.now);
    }

    fn schedule_tick(&mut self, node: usize, at: u64) {
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

    fn crash(&mut self, node: usize) {
        let name = self.nodes[node].name.clone();
        self.log(format!(
            "{name} CRASHES (durable {} of {})",
            self.nodes[node].disk.durable,
            self.nodes[node].disk.txs.len()
        ));
        self.report.crashes += 1;
        let n = &mut self.nodes[node];
        n.engine = None;
        n.incarnation += 1;
        n.disk.crash();
        n.conns.clear();
        for index in 0..self.links.len() {
            if self.links[index].ends.iter().any(|end| end.0 == node) {
                self.cut_link(index);
            }
        }
        if node == PRIMARY {
            // Their writers will never hear back: the outcome is unknown, not a failure.
            let lost = std::mem::take(&mut self.outstanding);
            self.report.not_acked += lost.len();
        }
    }

    fn cut_link(&mut self, index: usize) {
        if !self.links[index].alive {
            return;
        }
        self.links[index].alive = false;
        for (node, conn, incarnation) in self.links[index].ends {
            if self.nodes[node].incarnation == incarnation {
                self.nodes[node].conns.remove(&conn);
                let delay = self.rng.range(0, 2000);
                let event = Event::Disconnected { conn };
                self.schedule(
                    delay,
                    SimEvent::Engine {
                        node,
                        incarnation,
                        event,
                    },
                );
            }
        }
    }

    fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    fn deliver_to_engine(&mut self, node: usize, event: Event) -> SimResult<()> {
        let Some(engine) = self.nodes[node].engine.as_mut() else {
            return Ok(());
        };
        engine.handle(Timestamp(self.now), event);
        self.run_commands(node)
    }

    fn run_commands(&mut self, node: usize) -> SimResult<()> {
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

    fn execute(&mut self, node: usize, command: Command) -> SimResult<()> {
        let name = self.nodes[node].name.clone();
        let incarnation = self.nodes[node].incarnation;
        match command {
            Command::Append { txs, token } => {
                let disk = &mut self.nodes[node].disk;
                let first = txs.first().map(|tx| tx.id.0).unwrap_or(0);
                if first != disk.txs.len() as u64 + 1 {
                    return Err(format!(
                        "{name}: append of {first} after {}",
                        disk.txs.len()
                    ));
                }
                let up_to = txs.last().map(|tx| tx.id.0).unwrap_or(0);
                disk.txs.extend(txs);
                let truncations = disk.truncations;
                let at =
                    (self.now + self.rng.range(20, 3000)).max(self.nodes[node].disk_busy_until);
                self.nodes[node].disk_busy_until = at;
                let delay = at - self.now;
                self.schedule(
                    delay,
                    SimEvent::DurableDone {
                        node,
                        incarnation,
                        token,
                        up_to,
                        truncations,
                    },
                );
            }
            Command::Truncate { after } => {
                let disk = &mut self.nodes[node].disk;
                if after.0 < disk.committed {
                    return Err(format!(
                        "{name}: truncate to {after} below committed {}",
                        disk.committed
                    ));
                }
                disk.txs.truncate(after.0 as usize);
                disk.durable = disk.durable.min(after.0);
                disk.truncations += 1;
                self.log(format!("{name} truncates after {after}"));
            }
            Command::SaveEpoch(epoch) => {
                let disk = &mut self.nodes[node].disk;
                disk.epoch = disk.epoch.max(epoch);
            }
            Command::Commit { up_to } => self.commit(node, up_to)?,
            Command::Read {
                conn,
                from,
                max_count,
                max_bytes,
            } => {
                let disk = &self.nodes[node].disk;
                let mut bytes = 0;
                let txs: Vec<Tx> = disk
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
                let delay = self.rng.range(10, 500);
                self.schedule(
                    delay,
                    SimEvent::Engine {
                        node,
                        incarnation,
                        event: Event::ReadDone { conn, txs },
                    },
                );
            }
            Command::Send { conn, message } => {
                let Some(&link) = self.nodes[node].conns.get(&conn) else {
                    return Ok(());
                };
                if !self.links[link].alive {
                    return Ok(());
                }
                if self.faults && self.rng.chance(1) && self.rng.chance(20) {
                    self.log(format!("{name} conn {conn:?}: message lost, channel cut"));
                    self.cut_link(link);
                    return Ok(());
                }
                let from_end = usize::from(
                    self.links[link].ends[1].0 == node && self.links[link].ends[1].1 == conn,
                );
                let to_end = 1 - from_end;
                let latency = if self.rng.chance(3) {
                    self.rng.range(5_000, 60_000)
                } else {
                    self.rng.range(50, 2_000)
                };
                let at = (self.now + latency).max(self.links[link].last_delivery[from_end]);
                self.links[link].last_delivery[from_end] = at;
                let delay = at - self.now;
                self.schedule(
                    delay,
                    SimEvent::Deliver {
                        link,
                        to_end,
                        message,
                    },
                );
            }
            Command::Connect { address } => {
                let delay = self.rng.range(100, 3000);
                self.schedule(
                    delay,
                    SimEvent::Connect {
                        node,
                        incarnation,
                        address,
                    },
                );
            }
            Command::Close { conn } => {
                if let Some(link) = self.nodes[node].conns.remove(&conn) {
                    self.cut_link(link);
                }
            }
            Command::Reply { write, result } => self.on_reply(write, result)?,
        }
        Ok(())
    }

    fn commit(&mut self, node: usize, up_to: TxId) -> SimResult<()> {
        let name = self.nodes[node].name.clone();
        let n = &mut self.nodes[node];
        if up_to.0 > n.disk.durable {
            return Err(format!(
                "{name}: commits {up_to} but only {} is durable",
                n.disk.durable
            ));
        }
        n.disk.committed = n.disk.committed.max(up_to.0);
        while (n.applied.len() as u64) < up_to.0 {
            let tx = &n.disk.txs[n.applied.len()];
            if tx.id.0 != n.applied.len() as u64 + 1 {
                return Err(format!("{name}: applies {} out of order", tx.id));
            }
            let index = n.applied.len();
            match self.committed_history.get(index) {
                Some(hash) if *hash != tx.hash => {
                    return Err(format!(
                        "{name}: committed {} with hash {:?}, but another node committed {:?}",
                        tx.id, tx.hash, hash
                    ));
                }
                Some(_) => {}
                None => self.committed_history.push(tx.hash),
            }
            n.applied.push(tx.position());
        }
        Ok(())
    }

    fn on_reply(
        &mut self,
        write: WriteId,
        result: Result<WriteReceipt, WriteError>,
    ) -> SimResult<()> {
        let Some(policy) = self.outstanding.remove(&write) else {
            return Err(format!("reply to unknown write {write:?}"));
        };
        let receipt = match result {
            Ok(receipt) => receipt,
            Err(error) => {
                self.log(format!("write {write:?} not acknowledged: {error}"));
                self.report.not_acked += 1;
                return Ok(());
            }
        };
        let primary = &self.nodes[PRIMARY].disk;
        if !primary.holds_durably(receipt.tx_id, receipt.hash) {
            return Err(format!(
                "acknowledged {} that the primary does not hold durably",
                receipt.tx_id
            ));
        }
        if receipt.ack == AckKind::Quorum {
            // The policy in force when the write committed may be newer than the one when it
            // was proposed; it is checked against the weaker of the two.
            let current = self.policy.clone();
            let required = required_copies(&policy).min(required_copies(&current));
            let holders: Vec<&str> = DIRECT_REPLICAS
                .iter()
                .copied()
                .filter(|name| {
                    let node = self.node_index(name).unwrap_or(PRIMARY);
                    self.nodes[node]
                        .disk
                        .holds_durably(receipt.tx_id, receipt.hash)
                })
                .collect();
            if holders.len() < required {
                return Err(format!(
                    "{} acknowledged under `{current}` held durably by {holders:?} only",
                    receipt.tx_id
                ));
            }
            self.report.acked_quorum += 1;
        } else {
            self.report.acked_async += 1;
        }
        self.log(format!(
            "write {write:?} acknowledged as {} ({:?})",
            receipt.tx_id, receipt.ack
        ));
        self.acked.push(AckedWrite {
            position: LogPosition {
                tx_id: receipt.tx_id,
                hash: receipt.hash,
            },
            kind: receipt.ack,
        });
        Ok(())
    }

    fn connect(&mut self, node: usize, address: &str) -> SimResult<()> {
        let incarnation = self.nodes[node].incarnation;
        let target = self.node_index(address);
        let reachable =
            target.filter(|&t| self.nodes[t].engine.is_some() && !self.partitioned(node, t));
        let Some(target) = reachable else {
            let event = Event::ConnectFailed {
                reason: "unreachable".into(),
            };
            return self.deliver_to_engine(node, event);
        };
        let local = ConnId(self.nodes[node].next_conn);
        self.nodes[node].next_conn += 1;
        let remote = ConnId(self.nodes[target].next_conn);
        self.nodes[target].next_conn += 1;
        let link = self.links.len();
        let target_incarnation = self.nodes[target].incarnation;
        self.links.push(Link {
            ends: [
                (node, local, incarnation),
                (target, remote, target_incarnation),
            ],
            alive: true,
            last_delivery: [0, 0],
        });
        self.nodes[node].conns.insert(local, link);
        self.nodes[target].conns.insert(remote, link);
        let (node_name, target_name) = (
            self.nodes[node].name.clone(),
            self.nodes[target].name.clone(),
        );
        self.deliver_to_engine(
            target,
            Event::Connected {
                conn: remote,
                peer: NodeId::new(node_name.clone()),
                address: node_name,
                direction: Direction::Downstream,
            },
        )?;
        self.deliver_to_engine(
            node,
            Event::Connected {
                conn: local,
                peer: NodeId::new(target_name.clone()),
                address: target_name,
                direction: Direction::Upstream,
            },
        )
    }

    fn client_write(&mut self) -> SimResult<()> {
        if self.writes_left == 0 {
            return Ok(());
        }
        let count = self.rng.range(1, 4).min(self.writes_left as u64) as usize;
        self.writes_left -= count;
        let delay = self.rng.range(500, 60_000);
        self.schedule(delay, SimEvent::ClientWrite);
        if self.nodes[PRIMARY].engine.is_none() {
            self.report.not_acked += count;
            return Ok(());
        }
        let mut writes = Vec::new();
        for _ in 0..count {
            let write = WriteId(self.next_write);
            self.next_write += 1;
            let payload = Bytes::from(format!("write-{}-{}", write.0, self.rng.next()));
            self.outstanding.insert(write, self.policy.clone());
            writes.push((write, payload));
        }
        self.deliver_to_engine(PRIMARY, Event::Propose(writes))
    }

    fn fault(&mut self) -> SimResult<()> {
        if !self.faults || (self.writes_left == 0 && self.outstanding.is_empty()) {
            return Ok(());
        }
        let delay = self.rng.range(50_000, 400_000);
        self.schedule(delay, SimEvent::Fault);
        match self.rng.below(10) {
            0 | 1 => {
                let node = self.rng.below(self.nodes.len() as u64) as usize;
                if self.nodes[node].engine.is_some() {
                    self.crash(node);
                    let down_for = self.rng.range(10_000, 1_500_000);
                    self.schedule(down_for, SimEvent::Restart { node });
                }
            }
            2 | 3 => {
                let a = self.rng.below(self.nodes.len() as u64) as usize;
                let b = (a + 1 + self.rng.below(self.nodes.len() as u64 - 1) as usize)
                    % self.nodes.len();
                let (na, nb) = (self.nodes[a].name.clone(), self.nodes[b].name.clone());
                self.log(format!("partition {na} | {nb}"));
                self.partitions.push((a, b));
                for index in 0..self.links.len() {
                    let ends = self.links[index].ends;
                    if (ends[0].0 == a && ends[1].0 == b) || (ends[0].0 == b && ends[1].0 == a) {
                        self.cut_link(index);
                    }
                }
                let heal_after = self.rng.range(10_000, 2_000_000);
                self.schedule(heal_after, SimEvent::Heal { a, b });
            }
            4 => {
                let node = self.rng.below(self.nodes.len() as u64) as usize;
                self.log(format!("cut every channel of {}", self.nodes[node].name));
                for index in 0..self.links.len() {
                    if self.links[index].ends.iter().any(|end| end.0 == node) {
                        self.cut_link(index);
                    }
                }
            }
            5 | 6 => {
                let policy = random_policy(&mut self.rng);
                self.log(format!("policy becomes `{policy}`"));
                self.policy = policy.clone();
                self.deliver_to_engine(PRIMARY, Event::SetPolicy(Arc::new(policy)))?;
            }
            _ => {}
        }
        Ok(())
    }

    fn step(&mut self) -> SimResult<bool> {
        let Some(Reverse((at, _, id))) = self.queue.pop() else {
            return Ok(false);
        };
        self.now = at;
        let Some(event) = self.events.remove(&id) else {
            return Ok(true);
        };
        match event {
            SimEvent::Deliver {
                link,
                to_end,
                message,
            } => {
                if !self.links[link].alive {
                    return Ok(true);
                }
                let (node, conn, incarnation) = self.links[link].ends[to_end];
                if self.nodes[node].incarnation == incarnation {
                    self.log(format!(
                        "{} <- {}",
                        self.nodes[node].name,
                        describe(&message)
                    ));
                    self.deliver_to_engine(node, Event::Received { conn, message })?;
                }
            }
            SimEvent::Engine {
                node,
                incarnation,
                event,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.deliver_to_engine(node, event)?;
                }
            }
            SimEvent::Tick { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation
                    && self.nodes[node].tick_at == Some(self.now)
                {
                    self.nodes[node].tick_at = None;
                    self.deliver_to_engine(node, Event::Tick)?;
                }
            }
            SimEvent::DurableDone {
                node,
                incarnation,
                token,
                up_to,
                truncations,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    let disk = &mut self.nodes[node].disk;
                    if disk.truncations == truncations {
                        disk.durable = disk.durable.max(up_to.min(disk.txs.len() as u64));
                    }
                    self.deliver_to_engine(
                        node,
                        Event::Durable {
                            token,
                            up_to: TxId(up_to),
                        },
                    )?;
                }
            }
            SimEvent::Connect {
                node,
                incarnation,
                address,
            } => {
                if self.nodes[node].incarnation == incarnation {
                    self.connect(node, &address)?;
                }
            }
            SimEvent::ClientWrite => self.client_write()?,
            SimEvent::Fault => self.fault()?,
            SimEvent::Restart { node } => {
                if self.nodes[node].engine.is_none() {
                    self.boot(node);
                }
            }
            SimEvent::Heal { a, b } => {
                self.partitions.retain(|&p| p != (a, b));
            }
        }
        Ok(true)
    }

    fn converged(&self) -> bool {
        let primary = &self.nodes[PRIMARY];
        let Some(engine) = primary.engine.as_ref() else {
            return false;
        };
        let target = engine.last().tx_id.0;
        // Every node holds exactly the primary's history: a replica that still holds
        // uncommitted transactions a crashed primary lost has not converged until it dropped
        // them, which it does once it subscribes to the restarted primary.
        self.outstanding.is_empty()
            && self.nodes.iter().all(|n| {
                n.engine.as_ref().is_some_and(|e| e.committed().0 == target)
                    && n.applied.len() as u64 == target
                    && n.disk.txs.len() as u64 == target
            })
    }

    fn heal_everything(&mut self) {
        self.faults = false;
        self.partitions.clear();
        for node in 0..self.nodes.len() {
            if self.nodes[node].engine.is_none() {
                self.boot(node);
            }
        }
    }

    fn final_checks(&mut self) -> SimResult<()> {
        for node in &self.nodes {
            if let Some(error) = node.engine.as_ref().and_then(Engine::replication_error) {
                return Err(format!("{}: replication stopped: {error}", node.name));
            }
        }
        if !self.outstanding.is_empty() {
            return Err(format!(
                "{} writes were never answered",
                self.outstanding.len()
            ));
        }
        let primary_log: Vec<TxHash> = self.nodes[PRIMARY]
            .disk
            .txs
            .iter()
            .map(|tx| tx.hash)
            .collect();
        for node in &self.nodes {
            let log: Vec<TxHash> = node.disk.txs.iter().map(|tx| tx.hash).collect();
            if log != primary_log {
                return Err(format!(
                    "{}'s log ({} txs) differs from the primary's ({})",
                    node.name,
                    log.len(),
                    primary_log.len()
                ));
            }
            let applied: Vec<TxHash> = node.applied.iter().map(|p| p.hash).collect();
            if applied != primary_log {
                return Err(format!("{} applied a different history", node.name));
            }
            for acked in &self.acked {
                if !node
                    .disk
                    .holds_durably(acked.position.tx_id, acked.position.hash)
                {
                    return Err(format!(
                        "{} lost acknowledged write {} ({:?})",
                        node.name, acked.position.tx_id, acked.kind
                    ));
                }
            }
        }
        self.report.committed = primary_log.len() as u64;
        Ok(())
    }
}

fn describe(message: &Message) -> String {
    match message {
        Message::Txs { txs, committed } => format!(
            "Txs {}..={} committed {committed}",
            txs.first().map(|t| t.id.0).unwrap_or(0),
            txs.last().map(|t| t.id.0).unwrap_or(0)
        ),
        Message::Diverged {
            epoch,
            source_hashes,
            source_last,
        } => {
            format!(
                "Diverged epoch {epoch} hashes {} source_last {source_last}",
                source_hashes.len()
            )
        }
        other => format!("{other:?}"),
    }
}

/// How many of the direct replicas must durably hold a write committed under `policy`.
fn required_copies(policy: &Quorum) -> usize {
    match policy {
        Quorum::Async => 0,
        Quorum::AckCount { n, .. } | Quorum::Any { n, .. } | Quorum::First { n, .. } => *n,
        Quorum::Majority => 1,
        Quorum::AllOf(parts) => parts.iter().map(required_copies).max().unwrap_or(0),
    }
}

fn random_policy(rng: &mut Rng) -> Quorum {
    let names = || {
        DIRECT_REPLICAS
            .iter()
            .map(|n| NodeId::new(*n))
            .collect::<Vec<_>>()
    };
    match rng.below(8) {
        0 => Quorum::Async,
        1 => Quorum::AckCount { n: 1, among: None },
        2 => Quorum::AckCount { n: 2, among: None },
        3 => Quorum::Majority,
        4 => Quorum::Any {
            n: 1,
            names: names(),
        },
        5 => Quorum::First {
            n: 1,
            names: names(),
        },
        6 => Quorum::AllOf(vec![
            Quorum::AckCount { n: 1, among: None },
            Quorum::AckCount {
                n: 1,
                among: Some(ReplicaFilter::TagNotEquals {
                    key: "zone".into(),
                    value: "a".into(),
                }),
            },
        ]),
        _ => Quorum::Any {
            n: 2,
            names: names(),
        },
    }
}

/// A failed run: the seed that replays it, what broke, and the last events before it.
#[derive(Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The broken invariant.
    pub message: String,
    /// The last events, one per line.
    pub trace: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulation seed {} failed: {}\n--- last events ---\n{}",
            self.seed, self.message, self.trace
        )
    }
}

/// Runs one simulation. Errors name the seed and the broken invariant, with a trace.
pub fn run(seed: u64, options: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut world = World::new(seed, options);
    let outcome = simulate(&mut world);
    outcome.map(|()| world.report.clone()).map_err(|message| {
        let mut trace = String::new();
        for line in &world.trace {
            let _ = writeln!(trace, "{line}");
        }
        SimFailure {
            seed,
            message,
            trace,
        }
    })
}

fn simulate(world: &mut World) -> SimResult<()> {
    for node in 0..world.nodes.len() {
        world.boot(node);
    }
    world.schedule(1_000, SimEvent::ClientWrite);
    world.schedule(20_000, SimEvent::Fault);
    // Safety phase: writes and faults, invariants checked at every step.
    let mut steps = 0u64;
    while world.writes_left > 0 {
        if !world.step()? {
            break;
        }
        steps += 1;
        if steps > 5_000_000 {
            return Err("fault phase did not finish".into());
        }
    }
    // Liveness phase: heal everything, then every write must be answered and every node
    // converge to the primary's history.
    world.heal_everything();
    let deadline = world.now + 120_000_000;
    while !world.converged() {
        if world.now > deadline || !world.step()? {
            return Err(format!(
                "no convergence after healing: {}",
                world
                    .nodes
                    .iter()
                    .map(|n| format!(
                        "{} last {} committed {} applied {} upstream {:?}",
                        n.name,
                        n.disk.txs.len(),
                        n.engine.as_ref().map(|e| e.committed().0).unwrap_or(0),
                        n.applied.len(),
                        n.engine
                            .as_ref()
                            .and_then(|e| e.status(Timestamp(world.now)).upstream)
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    world.final_checks()
}
