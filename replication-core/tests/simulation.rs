//! Deterministic simulation of a cluster under faults: crashes that lose undurable data,
//! partitions, cut channels, delayed messages and policy changes, over many seeds.
//!
//! `SIM_SEEDS=N` runs N seeds (default 300) of the default topology, and a tenth as many (at
//! least 100) of each other preset; `SIM_SEED=S` replays one seed, printing its trace, in the
//! topology `SIM_TOPOLOGY` names (default `four`, see `Topology::PRESETS`); `SIM_TRACE_LINES=N`
//! keeps the last N lines of trace instead of 400.

use replication_core::testing::sim::{self, SimOptions, Topology};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// What the seeds exercised, summed.
#[derive(Default)]
struct Totals {
    failovers: usize,
    reseeds: usize,
    forced_promotions: usize,
    forgiven_writes: usize,
    rewinds: usize,
    switchovers: usize,
    switchovers_aborted: usize,
    longest_switchover_us: u64,
    switchover_us: u64,
    races: usize,
    races_won_by_rival: usize,
    racers_fenced: usize,
    race_repoints: usize,
    majority_acks_with_members_away: usize,
    snapshots_taken: usize,
    compactions: usize,
    snapshots_installed: usize,
    transfers_resumed: usize,
}

impl Totals {
    fn snapshot_summary(&self) -> String {
        format!(
            "{} snapshots taken, {} compactions, {} snapshots installed by replicas ({} \
             transfers resumed)",
            self.snapshots_taken,
            self.compactions,
            self.snapshots_installed,
            self.transfers_resumed
        )
    }

    fn failover_summary(&self) -> String {
        format!(
            "{} failovers ({} old primaries re-seeded; {} promotions forced, giving up {} \
             acknowledged writes at risk; {} rewinds)",
            self.failovers,
            self.reseeds,
            self.forced_promotions,
            self.forgiven_writes,
            self.rewinds
        )
    }

    fn switchover_summary(&self) -> String {
        format!(
            "{} switchovers under load ({} aborted; writes refused for {} ms on average, {} ms \
             at most, simulated); {} racing promotions ({} won by the second racer, {} racers fenced, \
             {} replicas repointed between racers)",
            self.switchovers,
            self.switchovers_aborted,
            self.switchover_us / 1_000 / self.switchovers.max(1) as u64,
            self.longest_switchover_us / 1_000,
            self.races,
            self.races_won_by_rival,
            self.racers_fenced,
            self.race_repoints
        )
    }
}

/// Acknowledgements under quorum, asynchronous ones, and crashes, summed over the seeds; the
/// failovers and re-seeds in `totals`.
fn run_seeds(
    topology: &Topology,
    seeds: impl Iterator<Item = u64>,
    totals: &mut Totals,
) -> (usize, usize, usize) {
    let defaults = SimOptions::default();
    let options = SimOptions {
        topology: topology.clone(),
        trace_lines: env_u64("SIM_TRACE_LINES").map_or(defaults.trace_lines, |n| n as usize),
        ..defaults
    };
    let name = topology.name();
    let (mut quorum, mut async_acks, mut crashes) = (0, 0, 0);
    for seed in seeds {
        match sim::run(seed, &options) {
            Ok(report) => {
                quorum += report.acked_quorum;
                async_acks += report.acked_async;
                crashes += report.crashes;
                totals.failovers += report.failovers;
                totals.reseeds += report.reseeds;
                totals.forced_promotions += report.forced_promotions;
                totals.forgiven_writes += report.forgiven_writes;
                totals.rewinds += report.rewinds;
                totals.switchovers += report.switchovers;
                totals.switchovers_aborted += report.switchovers_aborted;
                totals.longest_switchover_us = totals
                    .longest_switchover_us
                    .max(report.longest_switchover_us);
                totals.switchover_us += report.switchover_us;
                totals.races += report.racing_promotions;
                totals.races_won_by_rival += report.races_won_by_rival;
                totals.racers_fenced += report.racers_fenced;
                totals.race_repoints += report.race_repoints;
                totals.majority_acks_with_members_away += report.majority_acks_with_members_away;
                totals.snapshots_taken += report.snapshots.taken;
                totals.compactions += report.snapshots.compactions;
                totals.snapshots_installed += report.snapshots.installed;
                totals.transfers_resumed += report.snapshots.resumed;
                if std::env::var("SIM_SEED").is_ok() {
                    println!(
                        "--- seed {seed} (topology {name}): last events ---\n{}",
                        report.trace
                    );
                }
            }
            Err(failure) => panic!(
                "{failure}\nreplay with: SIM_SEED={seed} SIM_TOPOLOGY={name} cargo test --release -p replication-core --test simulation"
            ),
        }
    }
    (quorum, async_acks, crashes)
}

#[test]
fn cluster_survives_faults_across_seeds() {
    let topology = match std::env::var("SIM_TOPOLOGY") {
        Ok(name) => Topology::preset(&name)
            .unwrap_or_else(|| panic!("SIM_TOPOLOGY={name}: not one of {:?}", Topology::PRESETS)),
        Err(_) => Topology::default(),
    };
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(300)).collect(),
    };
    let replay = seeds.len() == 1;
    let mut totals = Totals::default();
    let (quorum, async_acks, crashes) = run_seeds(&topology, seeds.into_iter(), &mut totals);
    // The runs must actually have exercised both kinds of commit and crashes.
    assert!(
        replay || (quorum > 0 && async_acks > 0 && crashes > 0),
        "{quorum} {async_acks} {crashes}"
    );
    // ... and failovers: a primary lost for good, the safe candidate promoted, the old primary
    // rejoining; forced promotions of a member lacking acknowledged writes, and the rewinds
    // an operator then allows.
    assert!(replay || totals.failovers > 0, "no failover in any seed");
    assert!(
        replay || (totals.forced_promotions > 0 && totals.rewinds > 0),
        "no forced promotion with a rewind in any seed"
    );
    // ... and switchovers under load, and two promotions racing to one epoch.
    assert!(
        replay || (totals.switchovers > 0 && totals.races > 0 && totals.race_repoints > 0),
        "no switchover or no racing promotions in any seed: {}",
        totals.switchover_summary()
    );
    // ... and `majority` with members away (a restarted primary, a partition).
    assert!(
        replay || totals.majority_acks_with_members_away > 0,
        "no majority acknowledgement with a member away"
    );
    // ... and snapshots: compactions, and replicas sent a snapshot the log could not replace.
    assert!(
        replay || (totals.compactions > 0 && totals.snapshots_installed > 0),
        "no compaction or no snapshot installed in any seed: {}",
        totals.snapshot_summary()
    );
    println!(
        "acknowledged {quorum} under quorum, {async_acks} async; {crashes} crashes; {}; {}; {} \
         majority acknowledgements with a member away; {}",
        totals.failover_summary(),
        totals.switchover_summary(),
        totals.majority_acks_with_members_away,
        totals.snapshot_summary()
    );
}

#[test]
fn other_topologies_survive_faults() {
    if env_u64("SIM_SEED").is_some() {
        return; // A replay runs in `cluster_survives_faults_across_seeds`.
    }
    let seeds = (env_u64("SIM_SEEDS").unwrap_or(300) / 10).max(100);
    for name in &Topology::PRESETS[1..] {
        let topology = Topology::preset(name).expect("a preset");
        let mut totals = Totals::default();
        let (quorum, async_acks, crashes) = run_seeds(&topology, 0..seeds, &mut totals);
        assert!(
            quorum > 0 && async_acks > 0 && crashes > 0,
            "{name}: {quorum} {async_acks} {crashes}"
        );
        assert!(totals.failovers > 0, "{name}: no failover in any seed");
        println!(
            "{name}: acknowledged {quorum} under quorum, {async_acks} async; {crashes} crashes; \
             {}; {}; {}",
            totals.failover_summary(),
            totals.switchover_summary(),
            totals.snapshot_summary()
        );
    }
}

#[test]
fn same_seed_replays_the_same_history() {
    for topology in Topology::PRESETS.map(|name| Topology::preset(name).expect("a preset")) {
        let options = SimOptions {
            writes: 60,
            topology,
            ..SimOptions::default()
        };
        let a = sim::run(7, &options).expect("seed 7");
        let b = sim::run(7, &options).expect("seed 7");
        assert_eq!(
            (
                a.acked_quorum,
                a.acked_async,
                a.not_acked,
                a.crashes,
                a.committed
            ),
            (
                b.acked_quorum,
                b.acked_async,
                b.not_acked,
                b.crashes,
                b.committed
            )
        );
        assert_eq!(a.trace, b.trace, "the same seed, event for event");
        assert!(!a.trace.is_empty());
    }
}

#[test]
fn without_faults_every_write_is_acknowledged() {
    for topology in Topology::PRESETS.map(|name| Topology::preset(name).expect("a preset")) {
        for seed in 0..20 {
            let options = SimOptions {
                faults: false,
                topology: topology.clone(),
                ..SimOptions::default()
            };
            let report = sim::run(seed, &options).unwrap_or_else(|f| panic!("{f}"));
            assert_eq!(
                report.not_acked, 0,
                "seed {seed}: a healthy cluster refuses nothing"
            );
            assert_eq!(
                report.committed as usize,
                report.acked_async + report.acked_quorum
            );
        }
    }
}

/// Automatic failover: the in-memory coordinator and a failover agent per node, under
/// crashes of the leader, stalls past the lease, nodes cut from the coordinator, the
/// coordinator down, partitions, cut channels and policy changes, with no operator.
/// `SIM_AUTO_SEEDS=N` runs N seeds per preset topology (default 300 of `four`, 100 of each
/// other); `SIM_AUTO_SEED=S` replays one, printing its trace, in `SIM_TOPOLOGY`.
#[test]
fn automatic_failover_survives_faults_across_seeds() {
    let replay = env_u64("SIM_AUTO_SEED");
    let count = env_u64("SIM_AUTO_SEEDS");
    let presets: Vec<(Topology, u64)> = match std::env::var("SIM_TOPOLOGY") {
        Ok(name) => vec![(
            Topology::preset(&name).expect("a preset"),
            count.unwrap_or(300),
        )],
        Err(_) => vec![
            (Topology::four(), count.unwrap_or(300)),
            (Topology::three(), count.map_or(100, |n| (n / 10).max(100))),
            (
                Topology::five_cascade(),
                count.map_or(100, |n| (n / 10).max(100)),
            ),
        ],
    };
    for (topology, seeds) in presets {
        let options = SimOptions {
            topology: topology.clone(),
            automatic: true,
            trace_lines: env_u64("SIM_TRACE_LINES").map_or(400, |n| n as usize),
            ..SimOptions::default()
        };
        let name = topology.name();
        let seeds: Vec<u64> = match replay {
            Some(seed) => vec![seed],
            None => (0..seeds).collect(),
        };
        let mut totals = sim::AutoStats::default();
        let (mut quorum, mut crashes) = (0, 0);
        let mut snapshots = sim::SnapshotStats::default();
        for &seed in &seeds {
            match sim::run(seed, &options) {
                Ok(report) => {
                    quorum += report.acked_quorum;
                    crashes += report.crashes;
                    let a = report.automatic;
                    totals.elections += a.elections;
                    totals.self_fencings += a.self_fencings;
                    totals.stalls += a.stalls;
                    totals.coordinator_cuts += a.coordinator_cuts;
                    totals.coordinator_outages += a.coordinator_outages;
                    totals.leader_crashes += a.leader_crashes;
                    snapshots.taken += report.snapshots.taken;
                    snapshots.compactions += report.snapshots.compactions;
                    snapshots.installed += report.snapshots.installed;
                    snapshots.resumed += report.snapshots.resumed;
                    if replay.is_some() {
                        println!("--- seed {seed} ({name}) ---\n{}", report.trace);
                    }
                }
                Err(failure) => panic!(
                    "{failure}\nreplay with: SIM_AUTO_SEED={seed} SIM_TOPOLOGY={name} cargo test \
                     --release -p replication-core --test simulation automatic"
                ),
            }
        }
        assert!(quorum > 0, "{name}: no write acknowledged");
        if replay.is_none() {
            assert!(
                totals.elections > seeds.len(),
                "{name}: too few elections: {totals:?}"
            );
            assert!(
                totals.self_fencings > 0,
                "{name}: no leader ever fenced itself"
            );
        }
        println!(
            "automatic failover, {name}, {} seeds: {quorum} writes acknowledged under quorum, \
             {crashes} crashes ({} of the leader), {} elections, {} self-fencings, {} stalls, \
             {} nodes cut from the coordinator, {} coordinator outages; {} snapshots taken, \
             {} compactions, {} installed ({} resumed)",
            seeds.len(),
            totals.leader_crashes,
            totals.elections,
            totals.self_fencings,
            totals.stalls,
            totals.coordinator_cuts,
            totals.coordinator_outages,
            snapshots.taken,
            snapshots.compactions,
            snapshots.installed,
            snapshots.resumed
        );
    }
}
