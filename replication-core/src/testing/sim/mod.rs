//! A deterministic simulation of a replicated cluster: the real [`Engine`](crate::engine::Engine) on
//! every node, a simulated disk per node that loses what was not durable when the node
//! crashes, and a seeded network that delays messages, cuts channels, partitions nodes and
//! refuses connections.
//!
//! Everything — time, message order, faults — derives from one seed, so [`run`] with the same
//! seed replays the same history exactly. Each subsystem draws from its own stream of that
//! seed, so a change to one subsystem's draws leaves the others' as they were. After the fault
//! phase the simulator heals the cluster and checks that the replicas converge.
//!
//! The cluster's shape is a [`Topology`] (by default a primary `p`, replicas `r1` and `r2` of
//! `p`, and `r3`, a replica of `r1`). The modules:
//! - `world`: the event queue and the step loop that runs the engines' commands;
//! - `node`, `disk`, `network`: a node's engine and state machine, its log, the channels;
//! - `faults`: crashes, partitions, cut channels, policy changes, and the loss of the primary
//!   for good, after which `failover` promotes the plan's safe candidate (or, forced, the
//!   least advanced member, giving up the acknowledged writes it lacks and letting every other
//!   node rewind once), repoints the other replicas and has the old primary rejoin;
//!   `race` has a second operator promote another equally advanced member at the same time,
//!   and `switchover` hands the primary over to a replica under load;
//! - `workload`: the clients' writes and what became of them;
//! - `oracle`: the invariants, one function each — checked after every append, truncation,
//!   commit and acknowledgement (appends are contiguous, truncations spare committed data,
//!   commits never move back, are durable, applied in order and agree across nodes, no two
//!   nodes commit as primary in one epoch, a reply
//!   answers an outstanding write, an acknowledged write is committed and durable on the
//!   primary, labelled by the policy in force and, under a synchronous policy, durable on the
//!   replicas the policy demands), and at the
//!   end (every write answered, every node holding and having applied exactly the primary's
//!   history, no acknowledged write lost, no replication stopped);
//! - `auto`: automatic failover ([`SimOptions::automatic`]): the in-memory coordinator's
//!   state and a failover agent per node, the faults that matter to them, and the checks that
//!   at most one node acknowledges at any instant, within its lease;
//! - `topology`, `rng`: the cluster's shape; the per-subsystem random streams.

mod auto;
mod disk;
mod failover;
mod faults;
mod network;
mod node;
mod oracle;
mod race;
mod rng;
mod snapshots;
mod switchover;
mod topology;
mod workload;
mod world;

pub use auto::AutoStats;
pub use snapshots::SnapshotStats;
pub use topology::{NodeSpec, Topology};

use world::World;

/// How a simulation runs.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Client writes proposed during the fault phase.
    pub writes: usize,
    /// Whether to inject faults (crashes, partitions, cut channels, lost messages, policy
    /// changes).
    pub faults: bool,
    /// Lines of trace kept for a failure report (and [`SimReport::trace`]).
    pub trace_lines: usize,
    /// The cluster's nodes and who replicates from whom.
    pub topology: Topology,
    /// Automatic failover: an in-memory coordinator and a failover agent per node elect the
    /// primary; the faults are those that matter to them (the leader crashed, a node stalled
    /// or cut from the coordinator, the coordinator down) instead of an operator's.
    pub automatic: bool,
}

impl Default for SimOptions {
    fn default() -> SimOptions {
        SimOptions {
            writes: 200,
            faults: true,
            trace_lines: 400,
            topology: Topology::default(),
            automatic: false,
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
    /// Failovers completed: the primary lost for good and a replica promoted.
    pub failovers: usize,
    /// Old primaries the operator had to re-seed to rejoin after a failover.
    pub reseeds: usize,
    /// Failovers that promoted by force a member that may lack acknowledged writes.
    pub forced_promotions: usize,
    /// Acknowledged writes a forced promotion gave up: the new primary lacked them, and the
    /// plan reported them at risk. No other acknowledged write may be lost.
    pub forgiven_writes: usize,
    /// Nodes that rewound (dropped committed transactions of the old history) to rejoin after
    /// a forced promotion, as the operator allowed.
    pub rewinds: usize,
    /// Switchovers completed under load: writes refused, the target caught up and promoted,
    /// the old primary its replica.
    pub switchovers: usize,
    /// Switchovers aborted before the promotion (the primary crashed, or the target did not
    /// catch up in time), writes taken again.
    pub switchovers_aborted: usize,
    /// The longest time a completed switchover refused writes, in simulated microseconds.
    pub longest_switchover_us: u64,
    /// The time completed switchovers refused writes, summed, in simulated microseconds.
    pub switchover_us: u64,
    /// Failovers in which two members were promoted at once, in one epoch.
    pub racing_promotions: usize,
    /// Races won by the second racer (it committed in the raced epoch, the first could not).
    pub races_won_by_rival: usize,
    /// Racers found fenced by the other's claim when the race ended.
    pub racers_fenced: usize,
    /// Replicas repointed from one racer to the other during races.
    pub race_repoints: usize,
    /// Writes acknowledged under `majority` while a member was away (not connected to the
    /// primary, as after a restart before it reconnects): each was checked against a majority
    /// of all members, not of those connected.
    pub majority_acks_with_members_away: usize,
    /// Automatic failover's counts (all zero without it).
    pub automatic: AutoStats,
    /// Snapshots taken, compactions, snapshots installed by replicas, transfers resumed.
    pub snapshots: SnapshotStats,
    /// The final commit point.
    pub committed: u64,
    /// The last events of the run, one per line: the same seed gives the same trace.
    pub trace: String,
}

/// A failed run: the seed and topology that replay it, what broke, and the last events before
/// it.
#[derive(Debug)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The topology's name ([`Topology::name`]).
    pub topology: String,
    /// The broken invariant.
    pub message: String,
    /// The last events, one per line.
    pub trace: String,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "simulation seed {} (topology {}) failed: {}\n--- last events ---\n{}",
            self.seed, self.topology, self.message, self.trace
        )
    }
}

/// Runs one simulation. Errors name the seed and the broken invariant, with a trace.
pub fn run(seed: u64, options: &SimOptions) -> Result<SimReport, SimFailure> {
    let mut world = World::new(seed, options);
    match world.simulate() {
        Ok(()) => Ok(world.report()),
        Err(message) => Err(SimFailure {
            seed,
            topology: options.topology.name(),
            message,
            trace: world.trace.dump(),
        }),
    }
}
