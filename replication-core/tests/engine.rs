//! Event-in, commands-out tests of the engine: no IO, no clock, no runtime. Each step asserts
//! the whole list of commands it produces, in order.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::engine::{
    AckKind, AppendToken, Command, ConnId, Direction, Engine, EngineConfig, Event, PushRefusal,
    Recovered, ReplicationError, Role, Timestamp, WriteError, WriteId, WriteReceipt,
};
use replication_core::protocol::{
    DIVERGENCE_WINDOW, Message, PROTOCOL_VERSION, Refusal, SnapshotWish,
};
use replication_core::quorum::{Quorum, Tags};
use replication_core::types::{ChainError, TxHash};
use replication_core::{Epoch, EpochClaim, LogPosition, LogState, NodeId, ReplicaId, Tx, TxId};

const T0: Timestamp = Timestamp(0);
const REPLICA: ConnId = ConnId(1);
const SOURCE: ConnId = ConnId(0);

/// The claim of the primary `p` (database `db`) to `epoch`, as its messages carry it.
fn claim(epoch: u64) -> EpochClaim {
    EpochClaim::new(Epoch(epoch), Some(ReplicaId::new("p", "db")))
}

/// What a log recovers: `state`, its epoch claimed by `primary`, no membership.
fn recovered(state: LogState, last_epoch: Epoch, primary: Option<&str>) -> Recovered {
    Recovered {
        state,
        epoch_claim: EpochClaim::new(state.epoch, primary.map(|p| ReplicaId::new(p, "db"))),
        last_epoch,
        members: vec![],
        ..Recovered::default()
    }
}

fn drain(engine: &mut Engine) -> Vec<Command> {
    std::iter::from_fn(|| engine.poll_command()).collect()
}

fn primary(policy: Quorum) -> Engine {
    primary_with(policy, EngineConfig::new("p", "db", Role::Primary))
}

/// A primary that streams at once under every policy.
fn eager_primary(policy: Quorum) -> Engine {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.async_stream_delay = Duration::ZERO;
    primary_with(policy, config)
}

fn primary_with(policy: Quorum, config: EngineConfig) -> Engine {
    let mut engine = Engine::new(config, Arc::new(policy), Recovered::default(), T0);
    assert_eq!(
        drain(&mut engine),
        vec![Command::SaveEpoch(claim(1))],
        "a new epoch first"
    );
    engine
}

/// A subscription from a replica that saw `epoch` without recording its primary.
fn subscribe(last: LogPosition, epoch: Epoch) -> Message {
    subscribe_claiming(last, EpochClaim::new(epoch, None))
}

fn subscribe_claiming(last: LogPosition, claim: EpochClaim) -> Message {
    Message::Subscribe {
        version: PROTOCOL_VERSION,
        database: "db".into(),
        claim,
        last,
        known_common: LogPosition::START,
        window: 100,
        tags: Tags::new(),
        replica_database: "db".into(),
        snapshot: SnapshotWish::Log,
    }
}

fn send(conn: ConnId, message: Message) -> Command {
    Command::Send { conn, message }
}

fn txs_to(conn: ConnId, txs: &[Tx], committed: u64) -> Command {
    send(
        conn,
        Message::Txs {
            claim: claim(1),
            txs: txs.to_vec(),
            committed: TxId(committed),
        },
    )
}

fn append(txs: &[Tx], token: u64) -> Command {
    Command::Append {
        txs: txs.to_vec(),
        token: AppendToken(token),
    }
}

fn commit(up_to: u64) -> Command {
    Command::Commit { up_to: TxId(up_to) }
}

fn committed_message(conn: ConnId, epoch: u64, committed: u64) -> Command {
    send(
        conn,
        Message::Committed {
            claim: claim(epoch),
            committed: TxId(committed),
        },
    )
}

fn reply_ok(write: u64, tx: &Tx, ack: AckKind) -> Command {
    Command::Reply {
        write: WriteId(write),
        result: Ok(WriteReceipt {
            tx_id: tx.id,
            hash: tx.hash,
            ack,
        }),
    }
}

fn reply_err(write: u64, error: WriteError) -> Command {
    Command::Reply {
        write: WriteId(write),
        result: Err(error),
    }
}

fn durable(token: u64, up_to: u64) -> Event {
    Event::Durable {
        token: AppendToken(token),
        up_to: TxId(up_to),
    }
}

/// The read a source issues to compare its log with a subscriber's that ends at `last`.
fn handshake_read(conn: ConnId, last: TxId) -> Command {
    let to = last.0.min(DIVERGENCE_WINDOW as u64);
    Command::Read {
        conn,
        from: TxId(1),
        max_count: (to.saturating_sub(1) + 1) as usize,
        max_bytes: usize::MAX,
    }
}

fn connect_downstream(engine: &mut Engine, conn: ConnId, name: &str) {
    engine.handle(
        T0,
        Event::Connected {
            conn,
            peer: NodeId::new(name),
            address: name.into(),
            direction: Direction::Downstream,
        },
    );
}

/// Connects a replica at `conn` with an empty log and completes its handshake.
fn attach_replica(engine: &mut Engine, conn: ConnId, name: &str) {
    connect_downstream(engine, conn, name);
    engine.handle(
        T0,
        Event::Received {
            conn,
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    assert_eq!(drain(engine), vec![handshake_read(conn, TxId(0))]);
    let replica = ReplicaId::new(name, "db");
    let mut members = engine.status(T0).members;
    let joins = !engine.is_member(&replica);
    engine.handle(T0, Event::ReadDone { conn, txs: vec![] });
    let accepted = Message::Accepted {
        claim: claim(engine.epoch().0),
        committed: engine.committed(),
        primary: None,
    };
    let mut expected = vec![];
    if joins {
        // A new replica joins the membership, durably, before anything can count it.
        members.push(replica.clone());
        members.sort();
        expected.push(Command::SaveMembers(members));
    }
    expected.push(send(conn, accepted));
    assert_eq!(drain(engine), expected);
    assert!(engine.is_member(&replica));
}

fn write(engine: &mut Engine, id: u64, payload: &'static str) -> Vec<Command> {
    engine.handle(
        T0,
        Event::Propose(vec![(WriteId(id), Bytes::from_static(payload.as_bytes()))]),
    );
    drain(engine)
}

fn chain(epoch: Epoch, payloads: &[&'static str], prev: LogPosition) -> Vec<Tx> {
    let mut prev = prev;
    payloads
        .iter()
        .map(|p| {
            let tx = Tx::new(prev, epoch, Bytes::from_static(p.as_bytes()));
            prev = tx.position();
            tx
        })
        .collect()
}

/// The transactions a primary of epoch 1 writes for `payloads` after an empty log.
fn primary_txs(payloads: &[&'static str]) -> Vec<Tx> {
    chain(Epoch(1), payloads, LogPosition::START)
}

#[test]
fn primary_streams_before_its_own_sync_and_answers_after_commit() {
    let mut engine = eager_primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let a = primary_txs(&["a"]);
    // Append, then the stream to the replica at once: no Reply before durability.
    assert_eq!(
        write(&mut engine, 7, "a"),
        vec![append(&a, 0), txs_to(REPLICA, &a, 0)]
    );
    engine.handle(T0, durable(0, 1));
    // Commit, then reply.
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(7, &a[0], AckKind::Async)]
    );
}

fn committed_sent(commands: &[Command]) -> Option<TxId> {
    commands.iter().find_map(|c| match c {
        Command::Send {
            conn: REPLICA,
            message: Message::Committed { committed, .. },
        } => Some(*committed),
        _ => None,
    })
}

#[test]
fn replicas_learn_the_commit_point_from_the_next_batch_or_after_a_delay() {
    let mut engine = eager_primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let delay = EngineConfig::new("p", "db", Role::Primary).commit_notify_delay;
    assert!(!delay.is_zero());
    engine.handle(T0, Event::Tick);
    assert_eq!(drain(&mut engine), vec![]);
    assert!(engine.poll_timeout() > T0.plus(delay), "no tick due yet");
    let txs = primary_txs(&["a", "b"]);
    write(&mut engine, 1, "a");
    engine.handle(T0, durable(0, 1));
    let commands = drain(&mut engine);
    assert_eq!(
        commands,
        vec![commit(1), reply_ok(1, &txs[0], AckKind::Async)],
        "no Committed message at once"
    );
    assert!(
        engine.poll_timeout() <= T0.plus(delay),
        "a tick is due for the notification"
    );

    // Under load, the next batch carries the commit point, and no Committed follows.
    assert_eq!(
        write(&mut engine, 2, "b"),
        vec![append(&txs[1..], 1), txs_to(REPLICA, &txs[1..], 1)]
    );
    engine.handle(T0.plus(delay), Event::Tick);
    assert_eq!(drain(&mut engine), vec![]);

    // Idle: once the delay has passed, a Committed message tells the replica.
    let later = T0.plus(delay * 3);
    engine.handle(later, durable(1, 2));
    assert_eq!(
        drain(&mut engine),
        vec![commit(2), reply_ok(2, &txs[1], AckKind::Async)]
    );
    engine.handle(later.plus(delay / 2), Event::Tick);
    assert_eq!(drain(&mut engine), vec![], "not before the delay");
    engine.handle(later.plus(delay), Event::Tick);
    let commands = drain(&mut engine);
    assert_eq!(commands, vec![committed_message(REPLICA, 1, 2)]);
    assert_eq!(committed_sent(&commands), Some(TxId(2)));
}

fn txs_sent(commands: &[Command]) -> Vec<TxId> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::Send {
                conn: REPLICA,
                message: Message::Txs { txs, .. },
            } => Some(txs.iter().map(|tx| tx.id)),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn asynchronous_writes_reach_replicas_in_batches_and_synchronous_ones_at_once() {
    let mut engine = primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let delay = EngineConfig::new("p", "db", Role::Primary).async_stream_delay;
    assert!(!delay.is_zero());
    engine.handle(T0, Event::Tick);
    assert_eq!(drain(&mut engine), vec![]);
    let txs = primary_txs(&["a", "b", "c", "d"]);
    assert_eq!(
        write(&mut engine, 1, "a"),
        vec![append(&txs[..1], 0)],
        "held back"
    );
    assert!(engine.poll_timeout() <= T0.plus(delay), "a tick is due");
    assert_eq!(write(&mut engine, 2, "b"), vec![append(&txs[1..2], 1)]);
    engine.handle(T0.plus(delay / 2), Event::Tick);
    assert_eq!(drain(&mut engine), vec![], "not before the delay");
    engine.handle(T0.plus(delay), Event::Tick);
    let commands = drain(&mut engine);
    assert_eq!(commands, vec![txs_to(REPLICA, &txs[..2], 0)], "one batch");
    assert_eq!(txs_sent(&commands), vec![TxId(1), TxId(2)]);

    // A policy that needs the replicas streams what was held back at once, and from then on
    // every write at once.
    let later = T0.plus(delay * 2);
    engine.handle(
        later,
        Event::Propose(vec![(WriteId(3), Bytes::from_static(b"c"))]),
    );
    assert_eq!(drain(&mut engine), vec![append(&txs[2..3], 2)]);
    let synchronous = Arc::new(Quorum::AckCount { n: 1, among: None });
    engine.handle(later, Event::SetPolicy(synchronous));
    assert_eq!(drain(&mut engine), vec![txs_to(REPLICA, &txs[2..3], 0)]);
    ack_up_to(&mut engine, 3);
    assert_eq!(
        drain(&mut engine),
        vec![],
        "the primary holds nothing durably yet"
    );
    assert_eq!(
        write(&mut engine, 4, "d"),
        vec![append(&txs[3..], 3), txs_to(REPLICA, &txs[3..], 0)]
    );
}

/// The replica at `REPLICA` acknowledges everything up to `tx_id` as durable.
fn ack_up_to(engine: &mut Engine, tx_id: u64) {
    let durable = LogPosition {
        tx_id: TxId(tx_id),
        hash: replication_core::TxHash::GENESIS,
    };
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: Message::Ack { durable },
        },
    );
}

fn write_many(engine: &mut Engine, ids: std::ops::RangeInclusive<u64>) -> Vec<Command> {
    let writes = ids
        .map(|id| (WriteId(id), Bytes::from(format!("w{id}"))))
        .collect();
    engine.handle(T0, Event::Propose(writes));
    drain(engine)
}

#[test]
fn a_busy_synchronous_stream_sends_one_batch_per_acknowledgement() {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.max_batch_txs = 3;
    let mut engine = primary_with(Quorum::AckCount { n: 1, among: None }, config);
    attach_replica(&mut engine, REPLICA, "r1");
    assert_eq!(
        EngineConfig::new("p", "db", Role::Primary).partial_batches_in_flight,
        2
    );
    assert_eq!(
        txs_sent(&write(&mut engine, 1, "a")),
        vec![TxId(1)],
        "an idle stream sends at once"
    );
    assert_eq!(txs_sent(&write(&mut engine, 2, "b")), vec![TxId(2)]);
    assert!(
        txs_sent(&write(&mut engine, 3, "c")).is_empty(),
        "two in flight: held"
    );
    assert!(txs_sent(&write(&mut engine, 4, "d")).is_empty());
    // A full message is never held.
    assert_eq!(
        txs_sent(&write_many(&mut engine, 5..=6)),
        vec![TxId(3), TxId(4), TxId(5)]
    );
    assert!(txs_sent(&write(&mut engine, 7, "g")).is_empty());

    // An acknowledgement that leaves fewer than two in flight lets what was held go out as
    // one message.
    ack_up_to(&mut engine, 1);
    assert_eq!(drain(&mut engine), vec![], "still two in flight");
    ack_up_to(&mut engine, 2);
    assert_eq!(txs_sent(&drain(&mut engine)), vec![TxId(6), TxId(7)]);
    assert!(txs_sent(&write(&mut engine, 8, "h")).is_empty());
    ack_up_to(&mut engine, 7);
    assert_eq!(txs_sent(&drain(&mut engine)), vec![TxId(8)]);
    assert_eq!(txs_sent(&write(&mut engine, 9, "i")), vec![TxId(9)]);
}

#[test]
fn without_a_limit_on_partial_batches_every_write_streams_at_once() {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.partial_batches_in_flight = 0;
    let mut engine = primary_with(Quorum::AckCount { n: 1, among: None }, config);
    attach_replica(&mut engine, REPLICA, "r1");
    for id in 1..=5 {
        assert_eq!(txs_sent(&write(&mut engine, id, "x")), vec![TxId(id)]);
    }
}

#[test]
fn synchronous_commit_needs_both_own_durability_and_the_ack() {
    let mut engine = primary(Quorum::AckCount { n: 1, among: None });
    attach_replica(&mut engine, REPLICA, "r1");
    let a = primary_txs(&["a"]);
    assert_eq!(
        write(&mut engine, 1, "a"),
        vec![append(&a, 0), txs_to(REPLICA, &a, 0)]
    );
    // The replica's acknowledgement first: not committed, the primary could still lose it.
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: Message::Ack {
                durable: a[0].position(),
            },
        },
    );
    assert_eq!(drain(&mut engine), vec![]);
    engine.handle(T0, durable(0, 1));
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(1, &a[0], AckKind::Quorum)]
    );
}

#[test]
fn uncommitted_backlog_is_bounded() {
    let config = EngineConfig {
        max_uncommitted: 2,
        ..EngineConfig::new("p", "db", Role::Primary)
    };
    let policy = Arc::new(Quorum::AckCount { n: 1, among: None });
    let mut engine = Engine::new(config, policy, Recovered::default(), T0);
    drain(&mut engine);
    write(&mut engine, 1, "a");
    write(&mut engine, 2, "b");
    assert_eq!(
        write(&mut engine, 3, "c"),
        vec![reply_err(
            3,
            WriteError::Backlog {
                uncommitted: 2,
                limit: 2
            }
        )]
    );
}

#[test]
fn a_higher_epoch_fences_the_primary() {
    let mut engine = primary(Quorum::Async);
    connect_downstream(&mut engine, REPLICA, "r1");
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: subscribe(LogPosition::START, Epoch(5)),
        },
    );
    let refusal = Refusal::StaleSource {
        source_epoch: Epoch(1),
        replica: Epoch(5),
    };
    assert_eq!(
        drain(&mut engine),
        vec![
            send(REPLICA, Message::Refused(refusal)),
            Command::Close { conn: REPLICA }
        ]
    );
    let fenced = WriteError::Fenced {
        ours: Epoch(1),
        seen: Epoch(5),
    };
    assert_eq!(write(&mut engine, 1, "a"), vec![reply_err(1, fenced)]);
}

/// A primary writing under a coordinator's lease, streaming at once under every policy.
fn leased_primary(policy: Quorum) -> Engine {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.leased = true;
    config.async_stream_delay = Duration::ZERO;
    primary_with(policy, config)
}

/// The coordinator reports at `at` the lease renewed until `until`.
fn grant_lease(engine: &mut Engine, at: Timestamp, until: u64) {
    let until = Timestamp(until);
    engine.handle(
        at,
        Event::Lease {
            until,
            voters: None,
            policy: None,
        },
    );
}

fn propose_at(engine: &mut Engine, at: u64, id: u64, payload: &'static str) -> Vec<Command> {
    let write = (WriteId(id), Bytes::from_static(payload.as_bytes()));
    engine.handle(Timestamp(at), Event::Propose(vec![write]));
    drain(engine)
}

#[test]
fn a_leased_primary_takes_writes_only_within_its_lease() {
    let mut engine = leased_primary(Quorum::Async);
    // No lease granted yet: refused, nothing appended.
    assert_eq!(
        propose_at(&mut engine, 0, 1, "a"),
        vec![reply_err(1, WriteError::NoLease)]
    );
    grant_lease(&mut engine, T0, 1_000);
    assert_eq!(drain(&mut engine), vec![]);
    assert_eq!(engine.status(T0).lease_until, Some(Timestamp(1_000)));
    let a = primary_txs(&["a"]);
    assert_eq!(propose_at(&mut engine, 10, 2, "a"), vec![append(&a, 0)]);
    engine.handle(Timestamp(20), durable(0, 1));
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(2, &a[0], AckKind::Async)]
    );
    // A renewal answered late reports an earlier end: the later one stands.
    grant_lease(&mut engine, Timestamp(30), 900);
    assert_eq!(engine.status(T0).lease_until, Some(Timestamp(1_000)));
}

#[test]
fn a_primary_resuming_after_its_lease_ended_acknowledges_and_commits_nothing() {
    // Asynchronous: its own sync alone would commit the write.
    let mut engine = leased_primary(Quorum::Async);
    grant_lease(&mut engine, T0, 1_000);
    let a = primary_txs(&["a"]);
    assert_eq!(propose_at(&mut engine, 10, 1, "a"), vec![append(&a, 0)]);
    // Paused (SIGSTOP, a stall) until the lease ended; then its sync completes.
    engine.handle(Timestamp(1_000), durable(0, 1));
    assert_eq!(
        drain(&mut engine),
        vec![reply_err(1, WriteError::LeaseEnded { tx_id: TxId(1) })]
    );
    assert_eq!(engine.committed(), TxId(0), "no commit point moved");
    assert_eq!(
        propose_at(&mut engine, 1_001, 2, "b"),
        vec![reply_err(2, WriteError::NoLease)]
    );
}

#[test]
fn waiting_writes_end_with_the_lease_and_a_renewal_resumes_writes() {
    let mut engine = leased_primary(Quorum::AckCount { n: 1, among: None });
    grant_lease(&mut engine, T0, 1_000);
    attach_replica(&mut engine, REPLICA, "r1");
    let a = primary_txs(&["a"]);
    assert_eq!(
        propose_at(&mut engine, 10, 1, "a"),
        vec![append(&a, 0), txs_to(REPLICA, &a, 0)]
    );
    engine.handle(Timestamp(20), durable(0, 1));
    assert_eq!(
        drain(&mut engine),
        vec![],
        "the replica has not acknowledged"
    );
    // The lease ends with the write waiting: its outcome is unknown.
    assert!(engine.poll_timeout() <= Timestamp(1_000));
    engine.handle(Timestamp(1_000), Event::Tick);
    assert_eq!(
        drain(&mut engine),
        vec![reply_err(1, WriteError::LeaseEnded { tx_id: TxId(1) })]
    );
    // The acknowledgement comes late: no commit without a lease.
    let ack = Message::Ack {
        durable: a[0].position(),
    };
    engine.handle(
        Timestamp(1_100),
        Event::Received {
            conn: REPLICA,
            message: ack,
        },
    );
    assert_eq!(drain(&mut engine), vec![]);
    assert_eq!(engine.committed(), TxId(0));
    // The coordinator renews the lease (the key stayed ours): the commit point moves, and
    // writes are taken again.
    grant_lease(&mut engine, Timestamp(1_200), 5_000);
    assert_eq!(drain(&mut engine), vec![commit(1)]);
    let b = chain(Epoch(1), &["b"], a[0].position());
    assert_eq!(
        propose_at(&mut engine, 1_300, 2, "b"),
        vec![append(&b, 1), txs_to(REPLICA, &b, 1)]
    );
}

#[test]
fn a_leased_primary_counts_only_the_voters_its_coordinator_holds() {
    let mut engine = leased_primary(Quorum::AckCount { n: 1, among: None });
    // The coordinator holds no voter yet (the replica joined since the last publication).
    engine.handle(
        T0,
        Event::Lease {
            until: Timestamp(10_000),
            voters: Some(vec![]),
            policy: None,
        },
    );
    attach_replica(&mut engine, REPLICA, "r1");
    let a = primary_txs(&["a"]);
    assert_eq!(
        propose_at(&mut engine, 10, 1, "a"),
        vec![append(&a, 0), txs_to(REPLICA, &a, 0)]
    );
    engine.handle(Timestamp(20), durable(0, 1));
    let ack = Message::Ack {
        durable: a[0].position(),
    };
    engine.handle(
        Timestamp(30),
        Event::Received {
            conn: REPLICA,
            message: ack,
        },
    );
    assert_eq!(drain(&mut engine), vec![], "r1 is not a published voter");
    // Published: its acknowledgement now counts.
    engine.handle(
        Timestamp(40),
        Event::Lease {
            until: Timestamp(10_000),
            voters: Some(vec![NodeId::new("r1")]),
            policy: None,
        },
    );
    assert_eq!(drain(&mut engine)[0], commit(1));
}

#[test]
fn a_leased_primary_serves_no_replica_before_its_lease() {
    let mut engine = leased_primary(Quorum::Async);
    // It began its epoch on its own: a replica recording that claim would refuse the epoch
    // the coordinator grants next.
    connect_downstream(&mut engine, REPLICA, "r1");
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![
            send(REPLICA, Message::Refused(Refusal::NoLease)),
            Command::Close { conn: REPLICA }
        ]
    );
    // Once granted, the same replica is served.
    grant_lease(&mut engine, T0, 1_000);
    attach_replica(&mut engine, ConnId(9), "r1");
    assert_eq!(engine.status(Timestamp(10)).replicas.len(), 1);
}

#[test]
fn unknown_database_and_unauthorised_identity_are_refused() {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.allowed_replicators = Some(vec![NodeId::new("r1")]);
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), Recovered::default(), T0);
    drain(&mut engine);
    let refused = |conn, refusal| {
        vec![
            send(conn, Message::Refused(refusal)),
            Command::Close { conn },
        ]
    };
    connect_downstream(&mut engine, ConnId(1), "intruder");
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(1),
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    assert_eq!(
        drain(&mut engine),
        refused(ConnId(1), Refusal::NotAllowed("intruder".into()))
    );
    connect_downstream(&mut engine, ConnId(2), "r1");
    let mut other_db = subscribe(LogPosition::START, Epoch(0));
    if let Message::Subscribe { database, .. } = &mut other_db {
        *database = "nope".into();
    }
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(2),
            message: other_db,
        },
    );
    assert_eq!(
        drain(&mut engine),
        refused(ConnId(2), Refusal::UnknownDatabase("nope".into()))
    );
}

#[test]
fn a_silent_replica_is_dropped_and_async_writes_do_not_wait() {
    let mut engine = primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let later = T0.plus(Duration::from_secs(10));
    engine.handle(later, Event::Tick);
    assert_eq!(drain(&mut engine), vec![Command::Close { conn: REPLICA }]);
    let status = engine.status(later);
    assert!(!status.replicas[0].connected);
    let a = primary_txs(&["a"]);
    assert_eq!(write(&mut engine, 1, "a"), vec![append(&a, 0)]);
    engine.handle(later, durable(0, 1));
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(1, &a[0], AckKind::Async)]
    );
}

/// A replica engine connected to its source, with `log` already stored and durable.
fn replica_with(log: &[Tx], allow_tx_discarding: bool) -> Engine {
    let mut config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    config.allow_tx_discarding = allow_tx_discarding;
    replica_committed(log, 0, config)
}

/// A replica engine under `config` connected to its source, with `log` stored and durable and
/// its first `committed` transactions committed.
fn replica_committed(log: &[Tx], committed: usize, config: EngineConfig) -> Engine {
    replica_in_epoch(log, committed, config, 1)
}

/// [`replica_committed`], its log's epoch `epoch` (claimed by `p`).
fn replica_in_epoch(log: &[Tx], committed: usize, config: EngineConfig, epoch: u64) -> Engine {
    let last = log.last().map(Tx::position).unwrap_or(LogPosition::START);
    let committed = committed
        .checked_sub(1)
        .map_or(LogPosition::START, |index| log[index].position());
    let state = LogState {
        epoch: Epoch(epoch),
        last,
        durable: last,
        committed,
    };
    let last_epoch = log.last().map(|tx| tx.epoch).unwrap_or(Epoch(0));
    // A replica that followed `p` in epoch 1 before it restarted.
    let recovered = recovered(state, last_epoch, Some("p"));
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
    engine.handle(T0, Event::Tick);
    assert_eq!(
        drain(&mut engine),
        vec![Command::Connect {
            address: "p".into()
        }]
    );
    engine.handle(
        T0,
        Event::Connected {
            conn: SOURCE,
            peer: NodeId::new("p"),
            address: "p".into(),
            direction: Direction::Upstream,
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![subscribe_in_epoch(epoch, last, committed)]
    );
    engine
}

/// The subscription a replica of epoch 1 whose log ends at `last`, and whose commit point is
/// `known_common`, sends its source.
fn subscribe_to_source(last: LogPosition, known_common: LogPosition) -> Command {
    subscribe_in_epoch(1, last, known_common)
}

/// [`subscribe_to_source`] from a replica of `epoch`.
fn subscribe_in_epoch(epoch: u64, last: LogPosition, known_common: LogPosition) -> Command {
    send(
        SOURCE,
        Message::Subscribe {
            version: PROTOCOL_VERSION,
            database: "db".into(),
            claim: claim(epoch),
            last,
            known_common,
            window: EngineConfig::new("r1", "db", Role::Primary).prefetch_buffer,
            tags: Tags::new(),
            replica_database: "db".into(),
            snapshot: SnapshotWish::Log,
        },
    )
}

fn accepted(epoch: u64, committed: u64) -> Message {
    Message::Accepted {
        claim: claim(epoch),
        committed: TxId(committed),
        primary: None,
    }
}

fn ack(durable: LogPosition) -> Command {
    send(SOURCE, Message::Ack { durable })
}

#[test]
fn a_replica_refuses_a_tampered_transaction() {
    let mut engine = replica_with(&[], false);
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: accepted(1, 0),
        },
    );
    assert_eq!(drain(&mut engine), vec![ack(LogPosition::START)]);
    let mut txs = chain(Epoch(1), &["a", "b"], LogPosition::START);
    txs[1].payload = Bytes::from_static(b"forged");
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: Message::Txs {
                claim: claim(1),
                txs,
                committed: TxId(0),
            },
        },
    );
    // Nothing stored: the channel is closed and replication stops.
    assert_eq!(drain(&mut engine), vec![Command::Close { conn: SOURCE }]);
    assert!(matches!(
        engine.replication_error(),
        Some(ReplicationError::Chain(ChainError::HashMismatch { .. }))
    ));
}

#[test]
fn same_epoch_divergence_stops_with_both_hashes_unless_discarding_is_allowed() {
    let ours = chain(Epoch(1), &["a", "mine"], LogPosition::START);
    let theirs = chain(Epoch(1), &["theirs"], ours[0].position());
    let diverged = Message::Diverged {
        claim: claim(1),
        source_hashes: vec![ours[0].hash, theirs[0].hash],
        source_last: TxId(2),
    };
    for allow in [false, true] {
        let mut engine = replica_with(&ours, allow);
        engine.handle(
            T0,
            Event::Received {
                conn: SOURCE,
                message: diverged.clone(),
            },
        );
        assert_eq!(
            drain(&mut engine),
            vec![Command::Read {
                conn: SOURCE,
                from: TxId(1),
                max_count: 3,
                max_bytes: usize::MAX,
            }]
        );
        engine.handle(
            T0,
            Event::ReadDone {
                conn: SOURCE,
                txs: ours.clone(),
            },
        );
        let commands = drain(&mut engine);
        if allow {
            assert_eq!(
                commands,
                vec![
                    Command::Truncate {
                        after: TxId(1),
                        rewind: false,
                    },
                    subscribe_to_source(ours[0].position(), ours[0].position())
                ]
            );
        } else {
            assert_eq!(commands, vec![Command::Close { conn: SOURCE }]);
            let error = engine.replication_error().expect("stopped").to_string();
            assert!(
                error.contains(&ours[1].hash.to_hex()) && error.contains(&theirs[0].hash.to_hex()),
                "{error}"
            );
        }
    }
}

/// One round of divergence resolution on a replica: the source's `Diverged` with
/// `source_hashes` and its last transaction `source_last`, the replica's read of its own log (asserted to ask for `read_count`
/// transactions from `read_from`), answered with `ours`. Returns what the replica does then.
fn divergence_round(
    engine: &mut Engine,
    source_epoch: Epoch,
    source_hashes: Vec<TxHash>,
    source_last: u64,
    (read_from, read_count): (u64, usize),
    ours: &[Tx],
) -> Vec<Command> {
    let diverged = Message::Diverged {
        claim: EpochClaim::new(source_epoch, Some(ReplicaId::new("p", "db"))),
        source_hashes,
        source_last: TxId(source_last),
    };
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: diverged,
        },
    );
    assert_eq!(
        drain(engine),
        vec![Command::Read {
            conn: SOURCE,
            from: TxId(read_from),
            max_count: read_count,
            max_bytes: usize::MAX,
        }]
    );
    let txs = ours.to_vec();
    engine.handle(T0, Event::ReadDone { conn: SOURCE, txs });
    drain(engine)
}

/// A divergence found in a second round (the first window of hashes all matched) is compared
/// from the position the second subscription offered, not from the commit point: the shared
/// transactions of the first round stay.
#[test]
fn a_second_round_of_divergence_compares_after_the_offered_position() {
    let ours = chain(Epoch(1), &["a", "b", "mine"], LogPosition::START);
    let theirs = chain(Epoch(1), &["theirs"], ours[1].position());
    let mut engine = replica_with(&ours, true);
    let first = vec![ours[0].hash];
    // Everything compared matches: subscribe again from the last shared transaction.
    assert_eq!(
        divergence_round(&mut engine, Epoch(1), first, 3, (1, 2), &ours[..2]),
        vec![subscribe_to_source(ours[2].position(), ours[0].position())]
    );
    let second = vec![ours[1].hash, theirs[0].hash];
    assert_eq!(
        divergence_round(&mut engine, Epoch(1), second, 3, (1, 4), &ours),
        vec![
            Command::Truncate {
                after: TxId(2),
                rewind: false,
            },
            subscribe_to_source(ours[1].position(), ours[1].position())
        ]
    );
}

#[test]
fn a_higher_epoch_source_supersedes_the_uncommitted_suffix() {
    let ours = chain(Epoch(1), &["a", "lost"], LogPosition::START);
    let mut engine = replica_with(&ours, false);
    assert_eq!(
        divergence_round(&mut engine, Epoch(2), vec![ours[0].hash], 1, (1, 2), &ours),
        vec![
            Command::Truncate {
                after: TxId(1),
                rewind: false,
            },
            subscribe_to_source(ours[0].position(), ours[0].position())
        ]
    );
}

#[test]
fn a_replica_refuses_a_source_of_a_lower_epoch() {
    let mut engine = replica_with(&[], false);
    // Our own epoch is 1 (from the log state); the source claims 0.
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: accepted(0, 0),
        },
    );
    assert_eq!(drain(&mut engine), vec![Command::Close { conn: SOURCE }]);
    let status = engine.status(T0);
    assert!(status.last_error.is_some_and(|e| e.contains("lower than")));
}

#[test]
fn a_replica_rejects_writes_naming_its_source() {
    let mut engine = replica_with(&[], false);
    let not_primary = WriteError::NotPrimary {
        source_address: "p".into(),
    };
    assert_eq!(write(&mut engine, 9, "x"), vec![reply_err(9, not_primary)]);
}

#[test]
fn an_external_replica_checks_pushed_transactions_and_answers_once_durable() {
    let config = EngineConfig::new("mirror", "db", Role::ExternalReplica);
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), Recovered::default(), T0);
    engine.handle(T0, Event::Tick);
    assert_eq!(
        drain(&mut engine),
        vec![],
        "no replicator of its own: it never connects"
    );
    let txs = chain(Epoch(1), &["a", "b"], LogPosition::START);

    let mut forged = txs.clone();
    forged[1].payload = Bytes::from_static(b"forged");
    engine.handle(
        T0,
        Event::Replicate {
            write: WriteId(1),
            txs: forged.clone(),
        },
    );
    let commands = drain(&mut engine);
    let [
        Command::Reply {
            write: WriteId(1),
            result: Err(WriteError::Rejected(PushRefusal::Chain(_))),
        },
    ] = &commands[..]
    else {
        panic!("refused for its chain: {commands:?}");
    };

    engine.handle(
        T0,
        Event::Replicate {
            write: WriteId(2),
            txs: txs.clone(),
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![
            Command::SaveEpoch(EpochClaim::new(Epoch(1), None)),
            append(&txs, 0)
        ],
        "not answered before durability"
    );
    engine.handle(T0, durable(0, 2));
    assert_eq!(
        drain(&mut engine),
        vec![commit(2), reply_ok(2, &txs[1], AckKind::Async)]
    );
    let not_primary = WriteError::NotPrimary {
        source_address: "its external replicator's source".into(),
    };
    assert_eq!(
        write(&mut engine, 3, "direct"),
        vec![reply_err(3, not_primary)]
    );
}

/// A primary of epoch 1 under `policy` whose log saved `members` before it restarted.
fn restarted_primary(policy: Quorum, members: &[&str]) -> Engine {
    let members = members.iter().map(|m| ReplicaId::new(*m, "db")).collect();
    let config = EngineConfig::new("p", "db", Role::Primary);
    let recovered = Recovered {
        members,
        ..Recovered::default()
    };
    let mut engine = Engine::new(config, Arc::new(policy), recovered, T0);
    assert_eq!(drain(&mut engine), vec![Command::SaveEpoch(claim(1))]);
    engine
}

/// The replica at `conn` acknowledges everything up to `tx_id` as durable.
fn ack_on(engine: &mut Engine, conn: ConnId, tx_id: u64) {
    let durable = LogPosition {
        tx_id: TxId(tx_id),
        hash: replication_core::TxHash::GENESIS,
    };
    engine.handle(
        T0,
        Event::Received {
            conn,
            message: Message::Ack { durable },
        },
    );
}

#[test]
fn majority_counts_members_that_have_not_reconnected_since_a_restart() {
    // Three members were saved; after the restart only r1 is back: one acknowledgement of one
    // replica seen is not a majority of four nodes.
    let mut engine = restarted_primary(Quorum::Majority, &["r1", "r2", "r3"]);
    attach_replica(&mut engine, ConnId(1), "r1");
    let a = primary_txs(&["a"]);
    assert_eq!(
        write(&mut engine, 1, "a"),
        vec![append(&a, 0), txs_to(ConnId(1), &a, 0)]
    );
    engine.handle(T0, durable(0, 1));
    ack_on(&mut engine, ConnId(1), 1);
    assert_eq!(drain(&mut engine), vec![], "1 of 3 members is not enough");
    let status = engine.status(T0);
    assert_eq!(status.members.len(), 3);
    assert_eq!(
        status
            .replicas
            .iter()
            .filter(|r| r.member && !r.connected)
            .count(),
        2,
        "the members not back yet are listed: {:?}",
        status.replicas
    );
    // A second member returns (it is a member already: nothing to save), catches up and
    // acknowledges: 3 of 4 nodes hold it.
    connect_downstream(&mut engine, ConnId(2), "r2");
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(2),
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    assert_eq!(drain(&mut engine), vec![handshake_read(ConnId(2), TxId(0))]);
    engine.handle(
        T0,
        Event::ReadDone {
            conn: ConnId(2),
            txs: vec![],
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![send(ConnId(2), accepted(1, 0)), txs_to(ConnId(2), &a, 0)]
    );
    ack_on(&mut engine, ConnId(2), 1);
    let commands = drain(&mut engine);
    assert_eq!(
        commands,
        vec![commit(1), reply_ok(1, &a[0], AckKind::Quorum)]
    );
}

/// Attaches r1, writes "a" as write 1, makes it durable on the primary and has r1 alone
/// acknowledge it; returns its transaction.
fn write_acknowledged_by_r1_only(engine: &mut Engine) -> Vec<Tx> {
    attach_replica(engine, ConnId(1), "r1");
    let a = primary_txs(&["a"]);
    write(engine, 1, "a");
    engine.handle(T0, durable(0, 1));
    ack_on(engine, ConnId(1), 1);
    a
}

#[test]
fn a_removed_member_stops_counting_and_waiting_writes_commit_at_once() {
    let mut engine = restarted_primary(Quorum::AckCount { n: 2, among: None }, &["r1", "r2"]);
    let a = write_acknowledged_by_r1_only(&mut engine);
    assert_eq!(drain(&mut engine), vec![], "r2 has not acknowledged");
    // r2 is gone for good: the operator removes it, and `acks 2` can no longer be met...
    engine.handle(T0, Event::RemoveMember(ReplicaId::new("r2", "db")));
    assert_eq!(
        drain(&mut engine),
        vec![Command::SaveMembers(vec![ReplicaId::new("r1", "db")])]
    );
    // ...until the policy is changed, which applies to the waiting write at once.
    let one = Arc::new(Quorum::AckCount { n: 1, among: None });
    engine.handle(T0, Event::SetPolicy(one));
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(1, &a[0], AckKind::Quorum)]
    );
    // Removing what is not a member changes nothing.
    engine.handle(T0, Event::RemoveMember(ReplicaId::new("r9", "db")));
    assert_eq!(drain(&mut engine), vec![]);
}

#[test]
fn removing_a_member_that_blocked_a_majority_commits_waiting_writes() {
    let mut engine = restarted_primary(Quorum::Majority, &["r1", "r2", "r3", "r4"]);
    let a = write_acknowledged_by_r1_only(&mut engine);
    assert_eq!(drain(&mut engine), vec![], "1 of 4 members");
    engine.handle(T0, Event::RemoveMember(ReplicaId::new("r4", "db")));
    assert_eq!(drain(&mut engine).len(), 1, "only the saved membership");
    // 3 members left: 2 must acknowledge. Removing another leaves 2 members: 1 suffices.
    engine.handle(T0, Event::RemoveMember(ReplicaId::new("r3", "db")));
    let remaining = vec![ReplicaId::new("r1", "db"), ReplicaId::new("r2", "db")];
    assert_eq!(
        drain(&mut engine),
        vec![
            Command::SaveMembers(remaining),
            commit(1),
            reply_ok(1, &a[0], AckKind::Quorum)
        ]
    );
}

#[test]
fn two_replica_databases_on_one_server_are_two_members() {
    let mut engine = primary(Quorum::AckCount { n: 2, among: None });
    attach_replica(&mut engine, ConnId(1), "r1");
    connect_downstream(&mut engine, ConnId(2), "r1");
    let mut other = subscribe(LogPosition::START, Epoch(0));
    if let Message::Subscribe {
        replica_database, ..
    } = &mut other
    {
        *replica_database = "db-copy".into();
    }
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(2),
            message: other,
        },
    );
    drain(&mut engine);
    engine.handle(
        T0,
        Event::ReadDone {
            conn: ConnId(2),
            txs: vec![],
        },
    );
    let both = vec![ReplicaId::new("r1", "db"), ReplicaId::new("r1", "db-copy")];
    assert_eq!(drain(&mut engine)[0], Command::SaveMembers(both.clone()));
    assert_eq!(engine.status(T0).members, both);
    // Each counts once: both must acknowledge under `acks 2`.
    let a = primary_txs(&["a"]);
    write(&mut engine, 1, "a");
    engine.handle(T0, durable(0, 1));
    ack_on(&mut engine, ConnId(1), 1);
    assert_eq!(drain(&mut engine), vec![]);
    ack_on(&mut engine, ConnId(2), 1);
    assert_eq!(
        drain(&mut engine),
        vec![commit(1), reply_ok(1, &a[0], AckKind::Quorum)]
    );
}

#[test]
fn a_promoted_primary_begins_above_the_epochs_other_members_saw() {
    // The replica saw epoch 2; another member reported epoch 7 (the old primary restarted
    // where this one could not see it): the new primary begins at 8, so that member neither
    // refuses it as older nor fences it.
    let mut config = EngineConfig::new("r1", "db", Role::Primary);
    config.min_epoch = Epoch(7);
    let state = LogState {
        epoch: Epoch(2),
        ..LogState::default()
    };
    let r1_claims = |epoch| EpochClaim::new(Epoch(epoch), Some(ReplicaId::new("r1", "db")));
    let mut engine = Engine::new(
        config,
        Arc::new(Quorum::Async),
        recovered(state, Epoch(1), None),
        T0,
    );
    assert_eq!(drain(&mut engine), vec![Command::SaveEpoch(r1_claims(8))]);
    // Below what the log saw, the floor changes nothing.
    let mut config = EngineConfig::new("r1", "db", Role::Primary);
    config.min_epoch = Epoch(1);
    let mut engine = Engine::new(
        config,
        Arc::new(Quorum::Async),
        recovered(state, Epoch(1), None),
        T0,
    );
    assert_eq!(drain(&mut engine), vec![Command::SaveEpoch(r1_claims(3))]);
}

#[test]
fn a_replica_that_committed_beyond_the_primary_is_told_its_committed_history_differs() {
    // An old primary rejoining after a forced promotion committed transaction 3, which the new
    // primary never had: it must stop and name the difference, not wait for the source to
    // catch up as a lagging relay would make it.
    let mut engine = primary(Quorum::Async);
    connect_downstream(&mut engine, REPLICA, "old");
    let theirs = chain(Epoch(1), &["a", "b", "c"], LogPosition::START);
    let mut message = subscribe(theirs[2].position(), Epoch(1));
    if let Message::Subscribe { known_common, .. } = &mut message {
        *known_common = theirs[2].position();
    }
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message,
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![Command::Read {
            conn: REPLICA,
            from: TxId(3),
            max_count: 1,
            max_bytes: usize::MAX,
        }]
    );
    engine.handle(
        T0,
        Event::ReadDone {
            conn: REPLICA,
            txs: vec![],
        },
    );
    let refusal = Refusal::CommittedDivergence {
        tx_id: TxId(3),
        replica_hash: theirs[2].hash,
        source_hash: None,
    };
    assert_eq!(
        drain(&mut engine),
        vec![
            send(REPLICA, Message::Refused(refusal)),
            Command::Close { conn: REPLICA }
        ]
    );
}

/// A claim of `epoch` by the primary `node` (database `db`).
fn claim_by(epoch: u64, node: &str) -> EpochClaim {
    EpochClaim::new(Epoch(epoch), Some(ReplicaId::new(node, "db")))
}

#[test]
fn a_replica_bound_to_one_primary_of_an_epoch_refuses_another() {
    // The replica followed `p` in epoch 1; a second promotion to epoch 1 (`q`) offers itself.
    let mut engine = replica_with(&[], false);
    let accepted_by_q = Message::Accepted {
        claim: claim_by(1, "q"),
        committed: TxId(0),
        primary: None,
    };
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: accepted_by_q,
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![Command::Close { conn: SOURCE }],
        "no acknowledgement, and the recorded claim is not replaced"
    );
    assert_eq!(engine.epoch_claim(), &claim(1));
    let error = engine.status(T0).last_error.expect("the reason is shown");
    assert!(
        error.contains("two primaries") && error.contains("q/db") && error.contains("p/db"),
        "{error}"
    );
}

#[test]
fn a_replica_records_the_claim_of_its_epoch_before_it_acknowledges() {
    let config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    let state = LogState {
        epoch: Epoch(1),
        ..LogState::default()
    };
    // An epoch seen without its primary (a log from before claims were recorded).
    let recovered = recovered(state, Epoch(0), None);
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
    engine.handle(T0, Event::Tick);
    drain(&mut engine);
    engine.handle(
        T0,
        Event::Connected {
            conn: SOURCE,
            peer: NodeId::new("p"),
            address: "p".into(),
            direction: Direction::Upstream,
        },
    );
    let commands = drain(&mut engine);
    assert!(
        matches!(&commands[..], [Command::Send { message: Message::Subscribe { claim, .. }, .. }] if *claim == EpochClaim::new(Epoch(1), None)),
        "{commands:?}"
    );
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: accepted(1, 0),
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![Command::SaveEpoch(claim(1)), ack(LogPosition::START)],
        "the claim is durable before anything of its epoch is acknowledged"
    );
    // A higher epoch's claim, as a relay passes it on in a heartbeat: recorded too.
    engine.handle(
        T0,
        Event::Received {
            conn: SOURCE,
            message: Message::Committed {
                claim: claim_by(2, "q"),
                committed: TxId(0),
            },
        },
    );
    assert_eq!(
        drain(&mut engine),
        vec![Command::SaveEpoch(claim_by(2, "q"))]
    );
    assert_eq!(
        engine.status(T0).epoch_primary,
        Some(ReplicaId::new("q", "db"))
    );
}

#[test]
fn a_primary_told_of_another_primary_of_its_epoch_fences_itself() {
    let mut engine = primary(Quorum::AckCount { n: 1, among: None });
    attach_replica(&mut engine, REPLICA, "r1");
    let commands = write(&mut engine, 1, "a");
    assert!(
        matches!(commands[0], Command::Append { .. }),
        "{commands:?}"
    );
    // A replica that recorded `q` for epoch 1 subscribes: two promotions raced to epoch 1.
    connect_downstream(&mut engine, ConnId(2), "r2");
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(2),
            message: subscribe_claiming(LogPosition::START, claim_by(1, "q")),
        },
    );
    let taken = WriteError::EpochTaken {
        epoch: Epoch(1),
        other: ReplicaId::new("q", "db"),
    };
    let refusal = Refusal::EpochTaken {
        epoch: Epoch(1),
        source_primary: ReplicaId::new("p", "db"),
        replica_primary: ReplicaId::new("q", "db"),
    };
    assert_eq!(
        drain(&mut engine),
        vec![
            reply_err(1, taken.clone()),
            send(ConnId(2), Message::Refused(refusal)),
            Command::Close { conn: ConnId(2) }
        ],
        "the waiting write ends, and the replica stays with the primary it recorded"
    );
    assert_eq!(write(&mut engine, 2, "b"), vec![reply_err(2, taken)]);
    let status = engine.status(T0);
    assert!(
        status
            .last_error
            .is_some_and(|e| e.contains("q/db") && e.contains("promote again")),
        "the fence reason is shown"
    );
}

#[test]
fn an_old_primary_restarted_as_a_replica_gives_up_a_claim_it_wrote_nothing_in() {
    // `p` began epoch 2 on a restart, wrote nothing durable in it, and is repointed at `q`,
    // promoted to epoch 2 meanwhile: it follows `q`. Had it written in epoch 2, it keeps its
    // claim and `q` is refused.
    let state = LogState {
        epoch: Epoch(2),
        ..LogState::default()
    };
    for (last_epoch, follows) in [(Epoch(1), true), (Epoch(2), false)] {
        let config = EngineConfig::new(
            "p",
            "db",
            Role::Replica {
                address: "q".into(),
            },
        );
        let recovered = recovered(state, last_epoch, Some("p"));
        let mut engine = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
        engine.handle(T0, Event::Tick);
        drain(&mut engine);
        engine.handle(
            T0,
            Event::Connected {
                conn: SOURCE,
                peer: NodeId::new("q"),
                address: "q".into(),
                direction: Direction::Upstream,
            },
        );
        drain(&mut engine);
        engine.handle(
            T0,
            Event::Received {
                conn: SOURCE,
                message: Message::Accepted {
                    claim: claim_by(2, "q"),
                    committed: TxId(0),
                    primary: None,
                },
            },
        );
        let commands = drain(&mut engine);
        if follows {
            assert_eq!(
                commands[0],
                Command::SaveEpoch(claim_by(2, "q")),
                "{commands:?}"
            );
        } else {
            assert_eq!(commands, vec![Command::Close { conn: SOURCE }]);
            assert_eq!(engine.epoch_claim(), &claim_by(2, "p"));
        }
    }
}

/// A replica of `p` allowed (or not) to rewind.
fn rewind_config(allow_rewind: bool) -> EngineConfig {
    let mut config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    config.allow_rewind = allow_rewind;
    config
}

/// The source refuses the position a replica offered; the replica reconnects. Returns what it
/// does once connected again.
fn refused_and_reconnected(engine: &mut Engine, offered: &Tx, at: Timestamp) -> Vec<Command> {
    let refusal = Refusal::CommittedDivergence {
        tx_id: offered.id,
        replica_hash: offered.hash,
        source_hash: None,
    };
    let message = Message::Refused(refusal);
    engine.handle(
        at,
        Event::Received {
            conn: SOURCE,
            message,
        },
    );
    assert_eq!(drain(engine), vec![Command::Close { conn: SOURCE }]);
    assert!(
        engine.replication_error().is_none(),
        "a source lacking our commit point starts a search, not a stop"
    );
    let later = at.plus(Duration::from_secs(5));
    engine.handle(later, Event::Tick);
    assert!(drain(engine).contains(&Command::Connect {
        address: "p".into()
    }));
    let event = Event::Connected {
        conn: SOURCE,
        peer: NodeId::new("p"),
        address: "p".into(),
        direction: Direction::Upstream,
    };
    engine.handle(later, event);
    drain(engine)
}

/// A replica that committed transactions 4 and 5, which the newer primary (promoted without
/// them) lacks, searches back to the last transaction they share. It stops naming the range
/// and both hashes, or, allowed to rewind, drops them with its commit point.
#[test]
fn committed_transactions_a_newer_history_lacks_are_dropped_only_when_a_rewind_is_allowed() {
    let ours = chain(
        Epoch(1),
        &["a", "b", "c", "mine-4", "mine-5"],
        LogPosition::START,
    );
    let theirs = chain(
        Epoch(2),
        &["theirs-4", "theirs-5", "theirs-6"],
        ours[2].position(),
    );
    for allow in [false, true] {
        let mut engine = replica_committed(&ours, 5, rewind_config(allow));
        // Under a thousand transactions, the search goes back to the start at once.
        assert_eq!(
            refused_and_reconnected(&mut engine, &ours[4], T0),
            vec![subscribe_to_source(ours[4].position(), LogPosition::START)]
        );
        let source_hashes = vec![ours[0].hash, ours[1].hash, ours[2].hash, theirs[0].hash];
        let commands = divergence_round(&mut engine, Epoch(2), source_hashes, 6, (1, 5), &ours);
        if allow {
            assert_eq!(
                commands,
                vec![
                    Command::Truncate {
                        after: TxId(3),
                        rewind: true,
                    },
                    subscribe_to_source(ours[2].position(), ours[2].position())
                ]
            );
            assert_eq!(engine.committed(), TxId(3), "the commit point moves back");
            assert_eq!(engine.status(T0).committed_position, ours[2].position());
        } else {
            assert_eq!(commands, vec![Command::Close { conn: SOURCE }]);
            assert_eq!(engine.committed(), TxId(5));
            let error = engine.replication_error().expect("stopped");
            assert!(matches!(
                error,
                ReplicationError::CommittedDivergence {
                    tx_id: TxId(4),
                    committed: TxId(5),
                    ..
                }
            ));
            let text = error.to_string();
            assert!(
                text.contains(&ours[3].hash.to_hex())
                    && text.contains(&theirs[0].hash.to_hex())
                    && text.contains("transactions 4 to 5")
                    && text.contains("allow_rewind"),
                "{text}"
            );
        }
    }
}

/// Far behind the commit point, the search offers our own transaction a window lower, then
/// doubles the distance.
#[test]
fn the_search_for_a_shared_transaction_steps_back_by_growing_distances() {
    let payloads = vec!["x"; 1100];
    let ours = chain(Epoch(1), &payloads, LogPosition::START);
    let mut engine = replica_committed(&ours, 1100, rewind_config(true));
    let probe = 1100 - DIVERGENCE_WINDOW as u64;
    assert_eq!(
        refused_and_reconnected(&mut engine, &ours[1099], T0),
        vec![Command::Read {
            conn: SOURCE,
            from: TxId(probe),
            max_count: 1,
            max_bytes: usize::MAX,
        }],
        "our hash at the probe is read first"
    );
    let txs = vec![ours[probe as usize - 1].clone()];
    engine.handle(T0, Event::ReadDone { conn: SOURCE, txs });
    let offered = ours[probe as usize - 1].position();
    assert_eq!(
        drain(&mut engine),
        vec![subscribe_to_source(ours[1099].position(), offered)]
    );
    // Refused there too: twice the distance reaches the start.
    let at = T0.plus(Duration::from_secs(10));
    assert_eq!(
        refused_and_reconnected(&mut engine, &ours[probe as usize - 1], at),
        vec![subscribe_to_source(
            ours[1099].position(),
            LogPosition::START
        )]
    );
}

/// A relay asked for more than it committed tells a lag from another history: a replica that
/// never saw the epoch of the relay's last committed transaction cannot hold it, so what it
/// committed beyond is not the relay's history (and it searches back); one that saw it waits.
#[test]
fn a_relay_tells_a_replica_of_another_history_from_one_it_lags() {
    let mut log = chain(Epoch(1), &["a", "b"], LogPosition::START);
    log.extend(chain(Epoch(2), &["new"], log[1].position()));
    let theirs = chain(Epoch(1), &["c", "d", "e"], log[1].position());
    for (replica_epoch, diverged) in [(1, true), (2, false)] {
        let mut relay = replica_in_epoch(&log, 3, rewind_config(false), 2);
        connect_downstream(&mut relay, REPLICA, "r2");
        let mut message = subscribe(theirs[2].position(), Epoch(replica_epoch));
        if let Message::Subscribe { known_common, .. } = &mut message {
            *known_common = theirs[2].position();
        }
        relay.handle(
            T0,
            Event::Received {
                conn: REPLICA,
                message,
            },
        );
        assert_eq!(
            drain(&mut relay),
            vec![Command::Read {
                conn: REPLICA,
                from: TxId(3),
                max_count: 3,
                max_bytes: usize::MAX,
            }],
            "the relay reads its last committed transaction"
        );
        let txs = vec![log[2].clone()];
        relay.handle(T0, Event::ReadDone { conn: REPLICA, txs });
        let refusal = if diverged {
            Refusal::CommittedDivergence {
                tx_id: TxId(5),
                replica_hash: theirs[2].hash,
                source_hash: None,
            }
        } else {
            Refusal::SourceBehind {
                source_last: TxId(3),
            }
        };
        assert_eq!(
            drain(&mut relay),
            vec![
                send(REPLICA, Message::Refused(refusal)),
                Command::Close { conn: REPLICA }
            ]
        );
    }
}

/// The channel to the source `p` opened at `at`; what the replica sends is dropped.
fn source_opened(engine: &mut Engine, at: Timestamp) {
    let event = Event::Connected {
        conn: SOURCE,
        peer: NodeId::new("p"),
        address: "p".into(),
        direction: Direction::Upstream,
    };
    engine.handle(at, event);
    drain(engine);
}

/// Dials the source once its retry is due (ticking forward from `at`); returns when it dialled.
fn redial(engine: &mut Engine, mut at: Timestamp) -> Timestamp {
    for _ in 0..1000 {
        at = at.plus(Duration::from_millis(50));
        engine.handle(at, Event::Tick);
        if drain(engine).contains(&Command::Connect {
            address: "p".into(),
        }) {
            return at;
        }
    }
    panic!("the replica never dialled its source again");
}

#[test]
fn a_failing_link_shows_its_cause_attempts_and_history_until_it_streams_again() {
    use replication_core::engine::LinkErrorCause;
    let config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), Recovered::default(), T0);
    engine.handle(T0, Event::Tick);
    assert_eq!(
        drain(&mut engine),
        vec![Command::Connect {
            address: "p".into()
        }]
    );
    assert_eq!(engine.status(T0).link_trouble, None, "no failure yet");

    // Three unreachable attempts: one cause, counted, the last attempt's time kept.
    let mut at = T0;
    for attempt in 1..=3u64 {
        let failure = Event::ConnectFailed {
            reason: "cannot reach p: timed out".into(),
            cause: LinkErrorCause::Unreachable,
        };
        engine.handle(at, failure);
        let trouble = engine.status(at).link_trouble.expect("a failure is shown");
        assert_eq!(
            (trouble.cause, trouble.attempts, trouble.message.as_str()),
            (
                LinkErrorCause::Unreachable,
                attempt,
                "cannot reach p: timed out"
            ),
            "attempt {attempt}"
        );
        at = redial(&mut engine, at);
    }
    let status = engine.status(at);
    let trouble = status.link_trouble.expect("still failing");
    assert!(
        trouble.since_last_attempt > Duration::ZERO
            && trouble.since_first > trouble.since_last_attempt,
        "times since the last and the first failure: {trouble:?}"
    );
    assert_eq!(status.link_connects, 4, "the first dial and three retries");
    assert_eq!(status.source_address.as_deref(), Some("p"));

    // The source answers but lacks the database: a new cause, with what fixes it.
    source_opened(&mut engine, at);
    engine.handle(
        at,
        Event::Received {
            conn: SOURCE,
            message: Message::Refused(Refusal::UnknownDatabase("db".into())),
        },
    );
    drain(&mut engine);
    let status = engine.status(at);
    let trouble = status.link_trouble.clone().expect("refused");
    assert_eq!(
        (trouble.cause, trouble.attempts),
        (LinkErrorCause::UnknownDatabase, 4)
    );
    assert!(
        trouble.message.contains("unknown database") && trouble.message.contains("create it there"),
        "the refusal names its fix: {}",
        trouble.message
    );
    assert_eq!(status.last_error.as_deref(), Some(trouble.message.as_str()));
    let count = |status: &replication_core::engine::EngineStatus, cause| {
        status
            .link_errors
            .iter()
            .find(|(c, _)| *c == cause)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(&status, LinkErrorCause::Unreachable), Some(3));
    assert_eq!(count(&status, LinkErrorCause::UnknownDatabase), Some(1));
    assert_eq!(
        count(&status, LinkErrorCause::Certificate),
        Some(0),
        "every cause is listed"
    );

    // Accepted: the failure is over, its counts stay.
    at = redial(&mut engine, at);
    source_opened(&mut engine, at);
    engine.handle(
        at,
        Event::Received {
            conn: SOURCE,
            message: accepted(1, 0),
        },
    );
    let status = engine.status(at);
    assert_eq!(status.link_trouble, None, "streaming again");
    assert_eq!(status.last_error, None);
    assert_eq!(count(&status, LinkErrorCause::Unreachable), Some(3));

    // The source's commit point as last heard, and since when this replica trails it.
    assert_eq!(status.source_lag, Some((TxId(0), Duration::ZERO)));
    let committed = Message::Committed {
        claim: claim(1),
        committed: TxId(3),
    };
    engine.handle(
        at,
        Event::Received {
            conn: SOURCE,
            message: committed,
        },
    );
    let later = at.plus(Duration::from_millis(1500));
    engine.handle(later, Event::Disconnected { conn: SOURCE });
    assert_eq!(
        engine.status(later).source_lag,
        Some((TxId(3), Duration::from_millis(1500))),
        "kept while disconnected"
    );
}

#[test]
fn a_primary_tells_whether_its_connected_replicas_can_meet_its_policy() {
    let mut engine = primary(Quorum::AckCount { n: 1, among: None });
    assert_eq!(
        engine.status(T0).policy_met_by_connected,
        Some(false),
        "no replica yet"
    );
    attach_replica(&mut engine, REPLICA, "r1");
    drain(&mut engine);
    assert_eq!(engine.status(T0).policy_met_by_connected, Some(true));
    engine.handle(T0, Event::Disconnected { conn: REPLICA });
    assert_eq!(
        engine.status(T0).policy_met_by_connected,
        Some(false),
        "its acknowledgements stay, but a new write has no one to hold it"
    );
    assert_eq!(
        primary(Quorum::Async).status(T0).policy_met_by_connected,
        Some(true)
    );
}
