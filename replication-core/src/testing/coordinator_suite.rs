//! The conformance suite for [`Coordinator`] implementations.

use std::time::Duration;

use futures::StreamExt;

use crate::coordinator::{
    Campaign, CommitRecord, Coordinator, CoordinatorError, LeaderRecord, MemberRecord, MemberRole,
    Proof,
};
use crate::driver::Clock;
use crate::types::{Epoch, LogPosition, TxId};

/// Checks the rules of [`Coordinator`] against two members' clients `a` and `b` of one
/// coordinator, on databases whose names start with `prefix` (fresh for each run). `ttl` is
/// the shortest lease the coordinator grants; the suite waits for expiry in real time, so
/// it takes a few times `ttl`. Panics, naming the rule, on the first violation.
pub async fn coordinator_conformance<A: Coordinator + ?Sized, B: Coordinator + ?Sized>(
    a: &A,
    b: &B,
    prefix: &str,
    ttl: Duration,
) {
    exclusive_leader_with_rising_epochs(a, b, &format!("{prefix}-campaign"), ttl).await;
    commit_only_by_the_leader(a, b, &format!("{prefix}-commit"), ttl).await;
    keys_vanish_with_their_lease(a, b, &format!("{prefix}-expiry"), ttl).await;
    renewal_keeps_the_key(a, &format!("{prefix}-renew"), ttl).await;
    watch_sees_changes(a, b, &format!("{prefix}-watch"), ttl).await;
}

/// A record as published, without the revision the coordinator gave it.
fn unrevised(record: &MemberRecord) -> MemberRecord {
    MemberRecord {
        revision: 0,
        ..record.clone()
    }
}

fn record(member: &str, tx: u64) -> MemberRecord {
    MemberRecord {
        member: member.to_string(),
        address: format!("{member}:7440/db"),
        role: MemberRole::Replica,
        epoch: Epoch(1),
        last_epoch: Epoch(1),
        durable: LogPosition {
            tx_id: TxId(tx),
            ..LogPosition::START
        },
        committed: LogPosition::START,
        revision: 0,
    }
}

async fn exclusive_leader_with_rising_epochs<A: Coordinator + ?Sized, B: Coordinator + ?Sized>(
    a: &A,
    b: &B,
    db: &str,
    ttl: Duration,
) {
    let lease_a = a.grant_lease(ttl).await.expect("grant a lease");
    let lease_b = b.grant_lease(ttl).await.expect("grant a lease");
    assert_ne!(lease_a, lease_b, "two leases share an id");
    let view = a.view(db).await.expect("view");
    assert_eq!(view.leader, None, "a new database has a leader");
    let Campaign::Won { epoch: first } = a
        .campaign(db, "a", "a:1/db", lease_a, Epoch(0))
        .await
        .expect("campaign")
    else {
        panic!("the first campaign for a vacant key lost");
    };
    assert!(first > Epoch(0), "an epoch of 0 was granted");
    let held = b
        .campaign(db, "b", "b:1/db", lease_b, Epoch(100))
        .await
        .expect("campaign");
    let expected = LeaderRecord {
        member: "a".into(),
        address: "a:1/db".into(),
        epoch: first,
        lease: lease_a,
    };
    assert_eq!(
        held,
        Campaign::Held(expected.clone()),
        "a held key was taken"
    );
    assert_eq!(a.view(db).await.expect("view").leader, Some(expected));
    // The holder gives up: the next leader's epoch is above both the counter and `above`.
    a.revoke_lease(lease_a).await.expect("revoke");
    assert_eq!(
        b.view(db).await.expect("view").leader,
        None,
        "the key outlived its lease"
    );
    let won = b
        .campaign(db, "b", "b:1/db", lease_b, Epoch(first.0 + 10))
        .await
        .expect("campaign");
    assert_eq!(
        won,
        Campaign::Won {
            epoch: Epoch(first.0 + 11)
        },
        "epoch not above `above`"
    );
    b.revoke_lease(lease_b).await.expect("revoke");
    let lease_a = a.grant_lease(ttl).await.expect("grant");
    let won = a
        .campaign(db, "a", "a:1/db", lease_a, Epoch(0))
        .await
        .expect("campaign");
    assert_eq!(
        won,
        Campaign::Won {
            epoch: Epoch(first.0 + 12)
        },
        "an epoch was granted twice or went down"
    );
    assert_eq!(a.view(db).await.expect("view").epoch, Epoch(first.0 + 12));
    a.revoke_lease(lease_a).await.expect("revoke");
}

async fn commit_only_by_the_leader<A: Coordinator + ?Sized, B: Coordinator + ?Sized>(
    a: &A,
    b: &B,
    db: &str,
    ttl: Duration,
) {
    let lease_a = a.grant_lease(ttl).await.expect("grant");
    let lease_b = b.grant_lease(ttl).await.expect("grant");
    let Campaign::Won { epoch } = a
        .campaign(db, "a", "a:1/db", lease_a, Epoch(0))
        .await
        .expect("campaign")
    else {
        panic!("the first campaign lost");
    };
    let commit = CommitRecord {
        member: "a".into(),
        epoch,
        committed: LogPosition {
            tx_id: TxId(42),
            ..LogPosition::START
        },
        position_epoch: Some(Epoch(epoch.0.saturating_sub(1))),
        synchronous: true,
        policy: Some("acks 1".into()),
        proofs: vec![Proof {
            voters: vec!["b".into()],
            needed: 1,
        }],
    };
    let refused = b.publish_commit(db, &commit, lease_b).await;
    assert_eq!(
        refused,
        Err(CoordinatorError::NotLeader(db.to_string())),
        "a commit point published without the leader key"
    );
    a.publish_commit(db, &commit, lease_a)
        .await
        .expect("commit");
    a.publish_member(db, &record("a", 42), lease_a)
        .await
        .expect("publish");
    b.publish_member(db, &record("b", 40), lease_b)
        .await
        .expect("publish");
    let before = b.view(db).await.expect("view");
    b.publish_member(db, &record("b", 41), lease_b)
        .await
        .expect("publish again");
    let view = b.view(db).await.expect("view");
    assert_eq!(view.last_commit.as_ref(), Some(&commit));
    // Freshness, which candidates rely on: a record published after a view was read has a
    // higher revision than that view, and no view is older than what it shows.
    let b41 = view.members.iter().find(|m| m.member == "b").expect("b");
    assert!(
        b41.revision > before.revision,
        "a later record is not newer than a view"
    );
    assert!(view.members.iter().all(|m| m.revision <= view.revision));
    let mut members: Vec<MemberRecord> = view.members.iter().map(unrevised).collect();
    members.sort_by(|x, y| x.member.cmp(&y.member));
    assert_eq!(
        members,
        vec![record("a", 42), record("b", 41)],
        "published members"
    );
    // The leader's member record goes with its lease; its commit point stays.
    a.revoke_lease(lease_a).await.expect("revoke");
    let view = b.view(db).await.expect("view");
    assert_eq!(
        view.members.iter().map(unrevised).collect::<Vec<_>>(),
        vec![record("b", 41)],
        "a record outlived its lease"
    );
    assert_eq!(
        view.last_commit,
        Some(commit),
        "the last commit point vanished"
    );
    let refused = a.publish_member(db, &record("a", 43), lease_a).await;
    assert!(refused.is_err(), "published under a revoked lease");
    b.revoke_lease(lease_b).await.expect("revoke");
}

async fn keys_vanish_with_their_lease<A: Coordinator + ?Sized, B: Coordinator + ?Sized>(
    a: &A,
    b: &B,
    db: &str,
    ttl: Duration,
) {
    let lease = a.grant_lease(ttl).await.expect("grant");
    a.campaign(db, "a", "a:1/db", lease, Epoch(0))
        .await
        .expect("campaign");
    a.publish_member(db, &record("a", 1), lease)
        .await
        .expect("publish");
    let clock = Clock::start();
    let deadline = clock.now().plus(ttl * 4 + Duration::from_secs(2));
    loop {
        let view = b.view(db).await.expect("view");
        if view.leader.is_none() && view.members.is_empty() {
            break;
        }
        assert!(
            clock.now() < deadline,
            "keys outlived their lease by far: {view:?}"
        );
        tokio::time::sleep(ttl / 10).await;
    }
    let renewed = a.renew_lease(lease).await;
    assert_eq!(
        renewed,
        Err(CoordinatorError::LeaseExpired(lease)),
        "an expired lease was renewed"
    );
}

async fn renewal_keeps_the_key<A: Coordinator + ?Sized>(a: &A, db: &str, ttl: Duration) {
    let lease = a.grant_lease(ttl).await.expect("grant");
    a.campaign(db, "a", "a:1/db", lease, Epoch(0))
        .await
        .expect("campaign");
    let clock = Clock::start();
    let until = clock.now().plus(ttl * 2);
    while clock.now() < until {
        tokio::time::sleep(ttl / 4).await;
        a.renew_lease(lease).await.expect("renew");
        let leader = a.view(db).await.expect("view").leader;
        assert!(
            leader.is_some_and(|l| l.lease == lease),
            "the key was lost although its lease was renewed"
        );
    }
    a.revoke_lease(lease).await.expect("revoke");
}

async fn watch_sees_changes<A: Coordinator + ?Sized, B: Coordinator + ?Sized>(
    a: &A,
    b: &B,
    db: &str,
    ttl: Duration,
) {
    let mut watch = b.watch_leader(db).await.expect("watch");
    let lease = a.grant_lease(ttl).await.expect("grant");
    a.campaign(db, "a", "a:1/db", lease, Epoch(0))
        .await
        .expect("campaign");
    let woke = tokio::time::timeout(ttl * 2, watch.next()).await;
    assert!(
        matches!(woke, Ok(Some(Ok(())))),
        "the watch missed a new leader: {woke:?}"
    );
    a.revoke_lease(lease).await.expect("revoke");
    // Wakes for the key's removal (or still for its creation, once more); then the key is gone.
    let clock = Clock::start();
    let deadline = clock.instant_of(clock.now().plus(ttl * 2));
    loop {
        let woke = tokio::time::timeout_at(deadline, watch.next()).await;
        assert!(
            matches!(woke, Ok(Some(Ok(())))),
            "the watch missed the key's removal"
        );
        if b.view(db).await.expect("view").leader.is_none() {
            break;
        }
    }
}
