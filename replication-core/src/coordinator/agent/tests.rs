use std::time::Duration;

use super::*;
use crate::types::{TxHash, TxId};

const TTL: Duration = Duration::from_secs(4);

fn at(ms: u64) -> Timestamp {
    Timestamp(ms * 1000)
}

fn position(tx: u64) -> LogPosition {
    LogPosition {
        tx_id: TxId(tx),
        hash: TxHash([tx as u8; 32]),
    }
}

fn local(role: MemberRole, epoch: u64, durable: u64) -> LocalView {
    LocalView {
        role,
        epoch: Epoch(epoch),
        last_epoch: Epoch(epoch),
        durable: position(durable),
        committed: position(durable),
        following: (role == MemberRole::Replica).then(|| "p:1/db".to_string()),
        synchronous: true,
        policy: Some("acks 1".into()),
        proofs: vec![Proof {
            voters: vec!["r1".into(), "r2".into()],
            needed: 2,
        }],
    }
}

fn member(name: &str, epoch: u64, durable: u64) -> MemberRecord {
    MemberRecord {
        member: name.into(),
        address: format!("{name}:1/db"),
        role: MemberRole::Replica,
        epoch: Epoch(epoch),
        last_epoch: Epoch(epoch),
        durable: position(durable),
        committed: position(durable),
        // Published after the key was seen vacant (at revision 0, see `vacant`).
        revision: 1,
    }
}

fn commit(epoch: u64, tx: u64, synchronous: bool) -> CommitRecord {
    CommitRecord {
        member: "p".into(),
        epoch: Epoch(epoch),
        committed: position(tx),
        position_epoch: None,
        synchronous,
        policy: Some("acks 1".into()),
        proofs: vec![Proof {
            voters: vec!["r1".into(), "r2".into()],
            needed: 2,
        }],
    }
}

/// An agent named `name` that was granted lease 7 at `granted`.
fn agent(name: &str, granted: Timestamp) -> FailoverAgent {
    let mut agent = FailoverAgent::new(AgentConfig::new(name, format!("{name}:1/db"), TTL));
    assert_eq!(agent.begin_cycle(granted), LeaseStep::Grant);
    agent.on_lease(granted, Ok(LeaseId(7)));
    agent
}

fn campaigns(actions: &[Action]) -> Option<Epoch> {
    actions.iter().find_map(|a| match a {
        Action::Campaign { above } => Some(*above),
        _ => None,
    })
}

fn vacant(members: Vec<MemberRecord>, last_commit: Option<CommitRecord>) -> ClusterView {
    ClusterView {
        leader: None,
        members,
        last_commit,
        epoch: Epoch(3),
        revision: 0,
    }
}

#[test]
fn the_leader_is_granted_until_the_renewal_it_sent_plus_ttl_minus_margin() {
    let mut agent = agent("p", at(1_000));
    let view = ClusterView {
        leader: Some(LeaderRecord {
            member: "p".into(),
            address: "p:1/db".into(),
            epoch: Epoch(3),
            lease: LeaseId(7),
        }),
        ..ClusterView::default()
    };
    let actions = agent.decide(at(1_900), &local(MemberRole::Primary, 3, 10), &view);
    // 4 s ttl, 0.8 s margin: from the time the renewal was sent, not when it was answered.
    assert!(actions.contains(&Action::Lease { until: at(4_200) }));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::PublishCommit(c) if c.committed.tx_id == TxId(10)))
    );
    // The deadline passes without a renewal: counted once as a self-fencing.
    assert_eq!(agent.begin_cycle(at(4_200)), LeaseStep::Renew(LeaseId(7)));
    assert_eq!(agent.status().self_fencings, 1);
    agent.begin_cycle(at(5_000));
    assert_eq!(agent.status().self_fencings, 1);
}

#[test]
fn a_new_leader_publishes_the_log_it_was_elected_with_until_it_commits_it() {
    // Elected holding tx 12, which the last leader may have acknowledged, with its own commit
    // point at 10: a candidate after it must hold 12.
    let mut agent = agent("r1", at(0));
    let mut me = local(MemberRole::Replica, 3, 12);
    me.committed = position(10);
    agent.on_campaign(&me, Ok(Campaign::Won { epoch: Epoch(4) }));
    let view = ClusterView {
        leader: Some(LeaderRecord {
            member: "r1".into(),
            address: "r1:1/db".into(),
            epoch: Epoch(4),
            lease: LeaseId(7),
        }),
        ..ClusterView::default()
    };
    let mut led = local(MemberRole::Primary, 4, 12);
    led.committed = position(10);
    let published = |actions: Vec<Action>| {
        actions.into_iter().find_map(|a| match a {
            Action::PublishCommit(c) => Some(c.committed.tx_id),
            _ => None,
        })
    };
    assert_eq!(published(agent.decide(at(10), &led, &view)), Some(TxId(12)));
    // Once its own commit point passes it, its own is published.
    led.durable = position(13);
    led.committed = position(13);
    assert_eq!(published(agent.decide(at(20), &led, &view)), Some(TxId(13)));
}

#[test]
fn a_new_leader_that_lost_part_of_its_log_claims_only_what_it_holds() {
    // Elected holding tx 12, it holds 11 once it leads: claiming 12 would leave every
    // successor ineligible, and no member's future history has it.
    let mut agent = agent("r1", at(0));
    let mut me = local(MemberRole::Replica, 3, 12);
    me.committed = position(10);
    agent.on_campaign(&me, Ok(Campaign::Won { epoch: Epoch(4) }));
    let view = ClusterView {
        leader: Some(LeaderRecord {
            member: "r1".into(),
            address: "r1:1/db".into(),
            epoch: Epoch(4),
            lease: LeaseId(7),
        }),
        ..ClusterView::default()
    };
    let mut led = local(MemberRole::Primary, 4, 11);
    led.committed = position(10);
    let claimed = agent
        .decide(at(10), &led, &view)
        .into_iter()
        .find_map(|a| match a {
            Action::PublishCommit(c) => Some(c.committed),
            _ => None,
        });
    assert_eq!(claimed, Some(position(11)));
}

#[test]
fn a_primary_in_another_epoch_than_its_key_leads_again_before_any_lease() {
    let mut agent = agent("p", at(0));
    let view = ClusterView {
        leader: Some(LeaderRecord {
            member: "p".into(),
            address: "p:1/db".into(),
            epoch: Epoch(5),
            lease: LeaseId(7),
        }),
        ..ClusterView::default()
    };
    // Restarted, it began epoch 4 on its own: it must restart in the granted epoch 5 first.
    let actions = agent.decide(at(10), &local(MemberRole::Primary, 4, 10), &view);
    assert!(actions.contains(&Action::Lead {
        epoch: Epoch(5),
        policy: None
    }));
    assert!(!actions.iter().any(|a| matches!(a, Action::Lease { .. })));
}

#[test]
fn a_key_left_by_an_earlier_lease_is_neither_used_nor_followed() {
    let mut agent = agent("p", at(0));
    let view = ClusterView {
        leader: Some(LeaderRecord {
            member: "p".into(),
            address: "p:1/db".into(),
            epoch: Epoch(5),
            lease: LeaseId(3),
        }),
        ..ClusterView::default()
    };
    let actions = agent.decide(at(10), &local(MemberRole::Primary, 6, 10), &view);
    assert!(
        actions.iter().all(|a| matches!(a, Action::Publish(_))),
        "{actions:?}"
    );
    assert!(agent.status().not_campaigning.is_some());
}

#[test]
fn another_leader_is_followed_by_a_primary_and_by_a_replica_of_someone_else() {
    let leader = LeaderRecord {
        member: "r1".into(),
        address: "r1:1/db".into(),
        epoch: Epoch(4),
        lease: LeaseId(9),
    };
    // Until r1's own record shows it leads epoch 4, nobody follows it: its database may
    // still be a replica, a relay of the old history.
    let mut view = ClusterView {
        leader: Some(leader.clone()),
        members: vec![member("r1", 3, 10)],
        ..ClusterView::default()
    };
    let mut old_primary = agent("p", at(0));
    let actions = old_primary.decide(at(10), &local(MemberRole::Primary, 3, 10), &view);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Follow(_))),
        "{actions:?}"
    );
    assert!(
        old_primary
            .status()
            .not_campaigning
            .as_deref()
            .is_some_and(|why| why.contains("once it leads")),
        "{:?}",
        old_primary.status()
    );
    assert!(old_primary.poll_soon(), "it looks again soon");
    view.members[0].role = MemberRole::Primary;
    view.members[0].epoch = Epoch(4);
    let actions = old_primary.decide(at(10), &local(MemberRole::Primary, 3, 10), &view);
    assert!(actions.contains(&Action::Follow(leader.clone())));
    // A replica already following it does nothing more; one following the old primary moves.
    let mut replica = agent("r2", at(0));
    let mut following = local(MemberRole::Replica, 3, 10);
    assert!(
        replica
            .decide(at(10), &following, &view)
            .contains(&Action::Follow(leader.clone()))
    );
    following.following = Some("r1:1/db".into());
    assert!(
        !replica
            .decide(at(10), &following, &view)
            .iter()
            .any(|a| matches!(a, Action::Follow(_)))
    );
}

#[test]
fn nobody_campaigns_before_the_key_has_been_vacant_for_the_settle_time() {
    let mut agent = agent("r1", at(0));
    // r2 has not published since the vacancy (dead, its lease not yet expired): it is
    // waited for until the settle time, then proves nothing (the policy needs 1 of r1, r2).
    let mut r2 = member("r2", 3, 10);
    r2.revision = 0;
    let mut commit = commit(3, 10, true);
    commit.proofs[0].needed = 1;
    let view = vacant(vec![r2], Some(commit));
    let me = local(MemberRole::Replica, 3, 10);
    assert_eq!(campaigns(&agent.decide(at(100), &me, &view)), None);
    let settle = agent.config().settle().as_millis() as u64;
    assert_eq!(
        campaigns(&agent.decide(at(100 + settle - 1), &me, &view)),
        None
    );
    assert_eq!(
        campaigns(&agent.decide(at(100 + settle), &me, &view)),
        Some(Epoch(3))
    );
}

#[test]
fn once_every_member_published_since_the_vacancy_the_settle_time_is_not_waited_out() {
    let mut agent = agent("r1", at(0));
    let me = local(MemberRole::Replica, 3, 10);
    let mut stale = member("r2", 3, 10);
    stale.revision = 5;
    let mut view = vacant(vec![stale], Some(commit(3, 10, true)));
    view.revision = 7;
    assert_eq!(campaigns(&agent.decide(at(100), &me, &view)), None);
    assert!(
        agent.poll_soon(),
        "it looks again soon while the key is vacant"
    );
    // r2 publishes after the vacancy was seen (revision 8 > 7): campaign at once.
    view.members[0].revision = 8;
    view.revision = 8;
    assert_eq!(
        campaigns(&agent.decide(at(150), &me, &view)),
        Some(Epoch(3))
    );
}

/// Runs `decide` on a key vacant long enough, and returns the campaign or why not.
#[test]
fn a_vacancy_after_a_reign_this_member_did_not_see_starts_anew() {
    // r1 saw the key vacant at revision 7 (epoch 3), then lost the coordinator; meanwhile a
    // leader of epoch 4 came and went. r2's record of revision 8 was published during that
    // reign, so it proves nothing about the writes acknowledged in it.
    let mut agent = agent("r1", at(0));
    let me = local(MemberRole::Replica, 3, 10);
    let mut view = vacant(vec![member("r2", 3, 10)], Some(commit(3, 10, true)));
    view.members[0].revision = 5;
    view.revision = 7;
    assert_eq!(campaigns(&agent.decide(at(100), &me, &view)), None);
    view.members[0].revision = 8;
    view.revision = 20;
    view.epoch = Epoch(4);
    view.last_commit = Some(commit(4, 10, true));
    assert_eq!(campaigns(&agent.decide(at(150), &me, &view)), None);
    let why = after_settling(&mut agent, &me, &view).unwrap_err();
    assert!(why.contains("cannot prove"), "{why}");
    // Once r2 publishes after this vacancy, the proof holds.
    view.members[0].revision = 21;
    view.revision = 21;
    assert_eq!(
        campaigns(&agent.decide(at(70_000), &me, &view)),
        Some(Epoch(4))
    );
}

fn after_settling(
    agent: &mut FailoverAgent,
    me: &LocalView,
    view: &ClusterView,
) -> Result<Epoch, String> {
    agent.decide(at(0), me, view);
    let actions = agent.decide(at(60_000), me, view);
    campaigns(&actions).ok_or_else(|| agent.status().not_campaigning.clone().unwrap_or_default())
}

#[test]
fn only_the_most_advanced_member_holding_the_commit_point_campaigns() {
    let view = vacant(
        vec![member("r1", 3, 12), member("r2", 3, 11)],
        Some(commit(3, 11, true)),
    );
    let why = after_settling(
        &mut agent("r2", at(0)),
        &local(MemberRole::Replica, 3, 11),
        &view,
    );
    assert!(why.unwrap_err().contains("r1 is more advanced"));
    let above = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 12),
        &view,
    );
    assert_eq!(above, Ok(Epoch(3)));
}

#[test]
fn a_later_epoch_outranks_a_longer_log() {
    let mut stale = member("r2", 2, 50);
    stale.epoch = Epoch(3);
    let view = vacant(vec![stale], Some(commit(3, 11, true)));
    let me = local(MemberRole::Replica, 3, 12);
    assert_eq!(
        after_settling(&mut agent("r1", at(0)), &me, &view),
        Ok(Epoch(3))
    );
}

#[test]
fn under_a_synchronous_policy_a_candidate_needs_the_commit_point_and_enough_members() {
    // It lacks the published commit point (the others are gone).
    let view = vacant(vec![], Some(commit(3, 20, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 19),
        &view,
    );
    assert!(
        why.unwrap_err()
            .contains("lacks the last published commit point")
    );
    // It holds it, but alone it cannot prove that r2 holds no later acknowledged write;
    // another member that is not a voter (r3, an asynchronous replica) proves nothing either.
    let view = vacant(vec![member("r3", 3, 20)], Some(commit(3, 20, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 20),
        &view,
    );
    assert!(
        why.as_ref().unwrap_err().contains("cannot prove"),
        "{why:?}"
    );
    // A longer log of an older epoch may hold a history the leader of epoch 5 superseded.
    let view = vacant(vec![], Some(commit(5, 8, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 23),
        &view,
    );
    assert!(
        why.unwrap_err()
            .contains("lacks the last published commit point")
    );
    // A record of r2 older than the vacancy ranks but proves nothing: r2 may have stopped
    // publishing (died) after acknowledging writes it never published.
    let mut stale = member("r2", 3, 20);
    stale.revision = 0;
    let view = vacant(vec![stale], Some(commit(3, 20, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 20),
        &view,
    );
    assert!(
        why.as_ref().unwrap_err().contains("cannot prove"),
        "{why:?}"
    );
    let mut stale_ahead = member("r2", 3, 21);
    stale_ahead.revision = 0;
    let view = vacant(vec![stale_ahead], Some(commit(3, 20, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 20),
        &view,
    );
    assert!(why.unwrap_err().contains("r2 is more advanced"));
    // A leader whose policy named no voter yet (no replica had joined) counted no
    // acknowledgement since: holding its commit point is enough.
    let mut no_voters = commit(3, 20, true);
    no_voters.proofs.clear();
    let view = vacant(vec![], Some(no_voters));
    let ok = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 20),
        &view,
    );
    assert_eq!(ok, Ok(Epoch(3)));
    // With r2 seen since, it can.
    let view = vacant(vec![member("r2", 3, 20)], Some(commit(3, 20, true)));
    let ok = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 20),
        &view,
    );
    assert_eq!(ok, Ok(Epoch(3)));
}

#[test]
fn under_an_asynchronous_policy_the_lag_allowed_is_the_operators_choice() {
    let view = vacant(vec![], Some(commit(3, 20, false)));
    let me = local(MemberRole::Replica, 3, 17);
    let why = after_settling(&mut agent("r1", at(0)), &me, &view);
    assert!(
        why.unwrap_err()
            .contains("lags the last published commit point by 3")
    );
    let mut lenient = agent("r1", at(0));
    lenient.config.max_lag_on_failover = 3;
    assert_eq!(after_settling(&mut lenient, &me, &view), Ok(Epoch(3)));
}

#[test]
fn logs_at_one_position_with_different_hashes_have_diverged() {
    let mut other = member("r2", 3, 12);
    other.durable.hash = TxHash([99; 32]);
    let view = vacant(vec![other], Some(commit(3, 11, true)));
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 3, 12),
        &view,
    );
    assert!(why.unwrap_err().contains("diverged"));
}

#[test]
fn before_any_leader_only_the_member_created_as_primary_campaigns() {
    let view = ClusterView {
        epoch: Epoch(0),
        ..vacant(vec![member("p", 0, 0)], None)
    };
    let why = after_settling(
        &mut agent("r1", at(0)),
        &local(MemberRole::Replica, 0, 0),
        &view,
    );
    assert!(why.unwrap_err().contains("no leader was ever elected"));
    let view = vacant(vec![member("r1", 0, 0)], None);
    assert!(
        after_settling(
            &mut agent("p", at(0)),
            &local(MemberRole::Primary, 1, 0),
            &view
        )
        .is_ok()
    );
}

#[test]
fn after_a_leader_that_never_published_a_commit_point_the_most_advanced_campaigns() {
    // p won epoch 2, then lost its unsynced tail before the coordinator ever took its
    // commit record: it acknowledged nothing, and r1 holds the longest log.
    let view = ClusterView {
        epoch: Epoch(2),
        ..vacant(vec![member("p", 2, 19), member("r2", 2, 20)], None)
    };
    let mut me = local(MemberRole::Replica, 2, 20);
    me.proofs.clear();
    assert_eq!(
        after_settling(&mut agent("r1", at(0)), &me, &view),
        Ok(Epoch(2))
    );
    let mut p = local(MemberRole::Primary, 2, 19);
    p.proofs.clear();
    let view = ClusterView {
        epoch: Epoch(2),
        ..vacant(vec![member("r1", 2, 20)], None)
    };
    let why = after_settling(&mut agent("p", at(0)), &p, &view).unwrap_err();
    assert!(why.contains("r1 is more advanced"), "{why}");
}

#[test]
fn the_epoch_asked_is_above_every_epoch_known() {
    let mut high = member("r2", 3, 10);
    high.epoch = Epoch(9);
    let view = ClusterView {
        epoch: Epoch(4),
        ..vacant(vec![high], Some(commit(3, 10, true)))
    };
    let me = local(MemberRole::Replica, 3, 10);
    assert_eq!(
        after_settling(&mut agent("r1", at(0)), &me, &view),
        Ok(Epoch(9))
    );
}

#[test]
fn a_won_campaign_leads_and_a_lost_one_follows() {
    let me = local(MemberRole::Replica, 3, 10);
    let mut winner = agent("r1", at(0));
    // It adopts the last leader's policy, as it read it.
    winner.decide(at(0), &me, &vacant(vec![], Some(commit(3, 10, true))));
    let actions = winner.on_campaign(&me, Ok(Campaign::Won { epoch: Epoch(4) }));
    assert_eq!(
        actions,
        vec![Action::Lead {
            epoch: Epoch(4),
            policy: Some("acks 1".into())
        }]
    );
    assert_eq!(winner.status().elections_won, 1);
    let leader = LeaderRecord {
        member: "r1".into(),
        address: "r1:1/db".into(),
        epoch: Epoch(4),
        lease: LeaseId(8),
    };
    let mut loser = agent("r2", at(0));
    let actions = loser.on_campaign(&me, Ok(Campaign::Held(leader.clone())));
    assert!(actions.is_empty(), "followed before it leads: {actions:?}");
    assert_eq!(loser.status().leader, Some(leader.clone()));
    let mut leading = member("r1", 4, 10);
    leading.role = MemberRole::Primary;
    let view = ClusterView {
        leader: Some(leader.clone()),
        members: vec![leading],
        ..ClusterView::default()
    };
    assert!(
        loser
            .decide(at(0), &me, &view)
            .contains(&Action::Follow(leader))
    );
}

#[test]
fn without_a_lease_nothing_is_published_or_claimed() {
    let mut agent = FailoverAgent::new(AgentConfig::new("r1", "r1:1/db", TTL));
    agent.begin_cycle(at(0));
    agent.on_lease(at(0), Err(CoordinatorError::Unavailable("down".into())));
    assert_eq!(agent.status().renew_failures, 1);
    let view = vacant(vec![], Some(commit(3, 10, false)));
    let me = local(MemberRole::Replica, 3, 10);
    assert!(agent.decide(at(0), &me, &view).is_empty());
    assert!(agent.decide(at(60_000), &me, &view).is_empty());
    assert!(
        agent
            .status()
            .coordinator_error
            .as_deref()
            .unwrap()
            .contains("down")
    );
}

#[test]
fn an_expired_lease_is_given_up_and_granted_anew() {
    let mut agent = agent("r1", at(0));
    assert_eq!(agent.begin_cycle(at(1_000)), LeaseStep::Renew(LeaseId(7)));
    agent.on_lease(at(1_000), Err(CoordinatorError::LeaseExpired(LeaseId(7))));
    assert_eq!(agent.lease(), None);
    assert_eq!(agent.begin_cycle(at(2_000)), LeaseStep::Grant);
}

#[test]
fn a_commit_point_inherited_from_an_older_epoch_is_held_by_a_longer_log_of_that_epoch() {
    // The leader of epoch 3 was elected with a log ending at tx 12 of epoch 2 and published
    // it before writing anything of its own.
    let record = CommitRecord {
        position_epoch: Some(Epoch(2)),
        ..commit(3, 12, true)
    };
    assert!(record.held_by(Epoch(2), position(14)), "longer, of epoch 2");
    assert!(record.held_by(Epoch(2), position(12)), "exactly as long");
    assert!(!record.held_by(Epoch(2), position(11)), "shorter");
    assert!(
        record.held_by(Epoch(3), position(13)),
        "with the leader's own entries"
    );
    assert!(
        !record.held_by(Epoch(1), position(20)),
        "a superseded tail of epoch 1"
    );
    // Without the position's epoch, the commit point is of the leader's own epoch.
    let own = commit(3, 12, true);
    assert!(!own.held_by(Epoch(2), position(14)));
    assert!(own.held_by(Epoch(3), position(12)));
    assert!(own.held_by(Epoch(4), position(5)));
}
