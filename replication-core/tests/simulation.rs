//! Deterministic simulation of a cluster under faults: crashes that lose undurable data,
//! partitions, cut channels, delayed messages and policy changes, over many seeds.
//!
//! `SIM_SEEDS=N` runs N seeds (default 300); `SIM_SEED=S` replays one seed, printing its trace.

use replication_core::testing::sim::{self, SimOptions};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn cluster_survives_faults_across_seeds() {
    let options = SimOptions::default();
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(300)).collect(),
    };
    let (mut quorum, mut async_acks, mut crashes) = (0, 0, 0);
    for seed in seeds {
        match sim::run(seed, &options) {
            Ok(report) => {
                quorum += report.acked_quorum;
                async_acks += report.acked_async;
                crashes += report.crashes;
            }
            Err(failure) => panic!(
                "{failure}\nreplay with: SIM_SEED={seed} cargo test --release -p replication-core --test simulation"
            ),
        }
    }
    // The runs must actually have exercised both kinds of commit and crashes.
    assert!(
        quorum > 0 && async_acks > 0 && crashes > 0,
        "{quorum} {async_acks} {crashes}"
    );
    println!("acknowledged {quorum} under quorum, {async_acks} async; {crashes} crashes");
}

#[test]
fn same_seed_replays_the_same_history() {
    let options = SimOptions {
        writes: 60,
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
}

#[test]
fn without_faults_every_write_is_acknowledged() {
    for seed in 0..20 {
        let options = SimOptions {
            faults: false,
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
