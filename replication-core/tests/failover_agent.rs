//! The failover agents of three members, run by `driver::failover` against the in-memory
//! coordinator and fake databases, in paused time: election, self-fencing before the lease
//! can expire, failover to the most advanced member, and the old primary following.

// These tests watch the runner in (paused) tokio time, as the driver itself does.
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use replication_core::coordinator::{AgentConfig, LeaderRecord, LocalView, MemberRole, Proof};
use replication_core::driver::failover::{self, FailoverHandle, FailoverTarget, TargetError};
use replication_core::testing::{MemCoordinator, coordinator_conformance};
use replication_core::types::{Epoch, LogPosition, TxHash, TxId};
use tokio::time::Instant;

const TTL: Duration = Duration::from_secs(2);

#[tokio::test(start_paused = true)]
async fn the_in_memory_coordinator_conforms() {
    let coordinator = MemCoordinator::new();
    let (a, b) = (coordinator.client("a"), coordinator.client("b"));
    coordinator_conformance(&a, &b, "conformance", Duration::from_millis(500)).await;
}

/// What a fake database did: its view, and every lease window it was granted.
#[derive(Debug)]
struct FakeState {
    local: LocalView,
    /// `(granted at, until)`, in order.
    windows: Vec<(Instant, Instant)>,
    /// When it became the primary of an epoch.
    led: Vec<(Instant, Epoch)>,
}

#[derive(Clone, Debug)]
struct FakeDb(Arc<Mutex<FakeState>>);

impl FakeDb {
    fn new(role: MemberRole, durable: u64, following: Option<&str>) -> FakeDb {
        let position = LogPosition {
            tx_id: TxId(durable),
            hash: TxHash([durable as u8; 32]),
        };
        FakeDb(Arc::new(Mutex::new(FakeState {
            local: LocalView {
                role,
                epoch: Epoch(1),
                last_epoch: Epoch(1),
                durable: position,
                committed: position,
                following: following.map(str::to_string),
                synchronous: true,
                policy: None,
                proofs: vec![Proof {
                    voters: vec!["r1".into(), "r2".into()],
                    needed: 2,
                }],
            },
            windows: Vec::new(),
            led: Vec::new(),
        })))
    }

    fn state<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.0.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl FailoverTarget for FakeDb {
    async fn local(&self) -> Result<LocalView, TargetError> {
        Ok(self.state(|s| s.local.clone()))
    }

    async fn lead(&self, epoch: Epoch, _policy: Option<&str>) -> Result<(), TargetError> {
        self.state(|s| {
            s.local.role = MemberRole::Primary;
            s.local.epoch = epoch;
            s.local.following = None;
            s.led.push((Instant::now(), epoch));
        });
        Ok(())
    }

    async fn follow(&self, leader: &LeaderRecord) -> Result<(), TargetError> {
        self.state(|s| {
            s.local.role = MemberRole::Replica;
            s.local.epoch = s.local.epoch.max(leader.epoch);
            s.local.following = Some(leader.address.clone());
        });
        Ok(())
    }

    async fn grant(
        &self,
        until: Instant,
        _voters: &[String],
        _policy: Option<&str>,
    ) -> Result<(), TargetError> {
        self.state(|s| s.windows.push((Instant::now(), until)));
        Ok(())
    }
}

fn start(coordinator: &MemCoordinator, name: &str, db: &FakeDb) -> FailoverHandle {
    let config = AgentConfig::new(name, format!("{name}:1/app"), TTL);
    failover::spawn(
        Arc::new(coordinator.client(name)),
        "app",
        db.clone(),
        config,
    )
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_primary_cut_from_the_coordinator_fences_itself_before_the_most_advanced_replica_leads() {
    let coordinator = MemCoordinator::new();
    let p = FakeDb::new(MemberRole::Primary, 10, None);
    let r1 = FakeDb::new(MemberRole::Replica, 10, Some("p:1/app"));
    let r2 = FakeDb::new(MemberRole::Replica, 9, Some("p:1/app"));
    let agents = [
        start(&coordinator, "p", &p),
        start(&coordinator, "r1", &r1),
        start(&coordinator, "r2", &r2),
    ];
    // The member created as the primary takes the key and is granted lease windows.
    wait_for("p to lead", || p.state(|s| s.windows.len() >= 2)).await;
    let first_epoch = coordinator.view("app").leader.expect("a leader").epoch;
    assert_eq!(
        p.state(|s| s.led.clone()).last().map(|l| l.1),
        Some(first_epoch)
    );
    assert_eq!(
        coordinator
            .view("app")
            .last_commit
            .map(|c| c.committed.tx_id),
        Some(TxId(10))
    );

    // p loses the coordinator. r1 holds everything and is the most advanced: it leads.
    coordinator.cut("p");
    wait_for("r1 to lead", || r1.state(|s| !s.windows.is_empty())).await;
    let leader = coordinator.view("app").leader.expect("a leader");
    assert_eq!(leader.member, "r1");
    assert!(leader.epoch > first_epoch);
    // No instant at which both could acknowledge: p's last window ended before r1's began.
    let p_last_until = p.state(|s| s.windows.last().unwrap().1);
    let r1_first = r1.state(|s| s.windows[0].0);
    assert!(
        p_last_until <= r1_first,
        "p could acknowledge until {p_last_until:?}, r1 from {r1_first:?}"
    );
    // r2 never led and follows r1; so does p once it reaches the coordinator again.
    wait_for("r2 to follow r1", || {
        r2.state(|s| s.local.following.as_deref() == Some("r1:1/app"))
    })
    .await;
    assert!(r2.state(|s| s.led.is_empty()));
    assert_eq!(agents[1].status().agent.elections_won, 1);
    assert!(
        agents[0].status().agent.self_fencings >= 1,
        "p's lapse was not counted"
    );
    coordinator.heal("p");
    wait_for("p to follow r1", || {
        p.state(|s| {
            s.local.role == MemberRole::Replica && s.local.following.as_deref() == Some("r1:1/app")
        })
    })
    .await;
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn nobody_leads_while_the_coordinator_is_down_and_the_primary_stops_acknowledging() {
    let coordinator = MemCoordinator::new();
    let p = FakeDb::new(MemberRole::Primary, 5, None);
    // Its policy counts r1 alone ("any 1 (r1)").
    p.state(|s| {
        s.local.proofs = vec![Proof {
            voters: vec!["r1".into()],
            needed: 1,
        }]
    });
    let r1 = FakeDb::new(MemberRole::Replica, 5, Some("p:1/app"));
    let agents = [start(&coordinator, "p", &p), start(&coordinator, "r1", &r1)];
    wait_for("p to lead", || p.state(|s| !s.windows.is_empty())).await;
    coordinator.set_available(false);
    let cut_at = Instant::now();
    tokio::time::sleep(TTL * 10).await;
    // p was granted nothing beyond a deadline within a ttl of the cut, and r1 did not lead.
    let last_until = p.state(|s| s.windows.last().unwrap().1);
    assert!(last_until <= cut_at + TTL, "p acknowledged past its lease");
    assert!(r1.state(|s| s.led.is_empty() && s.windows.is_empty()));
    assert!(agents[1].status().agent.coordinator_error.is_some());
    // Back: p still holds nothing (its lease expired meanwhile)… or it renews; either way
    // exactly one member leads afterwards.
    coordinator.set_available(true);
    wait_for("a leader again", || {
        coordinator.view("app").leader.is_some()
    })
    .await;
    wait_for("windows again", || {
        p.state(|s| s.windows.last().unwrap().0 > cut_at) || r1.state(|s| !s.windows.is_empty())
    })
    .await;
    for agent in agents {
        agent.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_stopped_leader_frees_the_key_at_once() {
    let coordinator = MemCoordinator::new();
    let p = FakeDb::new(MemberRole::Primary, 5, None);
    let agent = start(&coordinator, "p", &p);
    wait_for("p to lead", || p.state(|s| !s.windows.is_empty())).await;
    agent.stop().await;
    assert_eq!(coordinator.view("app").leader, None);
}
