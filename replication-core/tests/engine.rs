//! Event-in, commands-out tests of the engine: no IO, no clock, no runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::engine::{
    AppendToken, Command, ConnId, Direction, Engine, EngineConfig, Event, ReplicationError, Role,
    Timestamp, WriteError, WriteId,
};
use replication_core::protocol::{Message, PROTOCOL_VERSION, Refusal};
use replication_core::quorum::{Quorum, Tags};
use replication_core::{Epoch, LogPosition, LogState, NodeId, Tx, TxId};

const T0: Timestamp = Timestamp(0);
const REPLICA: ConnId = ConnId(1);

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
    let mut engine = Engine::new(config, Arc::new(policy), LogState::default(), Epoch(0), T0);
    assert!(
        matches!(drain(&mut engine)[..], [Command::SaveEpoch(Epoch(1))]),
        "a new epoch first"
    );
    engine
}

fn subscribe(last: LogPosition, epoch: Epoch) -> Message {
    Message::Subscribe {
        version: PROTOCOL_VERSION,
        database: "db".into(),
        epoch,
        last,
        known_common: LogPosition::START,
        window: 100,
        tags: Tags::new(),
    }
}

/// Connects a replica at `conn` with an empty log and completes its handshake.
fn attach_replica(engine: &mut Engine, conn: ConnId, name: &str) {
    let peer = NodeId::new(name);
    engine.handle(
        T0,
        Event::Connected {
            conn,
            peer,
            address: name.into(),
            direction: Direction::Downstream,
        },
    );
    engine.handle(
        T0,
        Event::Received {
            conn,
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    let commands = drain(engine);
    assert!(
        matches!(commands[..], [Command::Read { .. }]),
        "{commands:?}"
    );
    engine.handle(T0, Event::ReadDone { conn, txs: vec![] });
    let commands = drain(engine);
    assert!(
        commands.iter().any(|c| matches!(
            c,
            Command::Send {
                message: Message::Accepted { .. },
                ..
            }
        )),
        "{commands:?}"
    );
}

fn write(engine: &mut Engine, id: u64, payload: &'static str) -> Vec<Command> {
    engine.handle(
        T0,
        Event::Propose(vec![(WriteId(id), Bytes::from_static(payload.as_bytes()))]),
    );
    drain(engine)
}

#[test]
fn primary_streams_before_its_own_sync_and_answers_after_commit() {
    let mut engine = eager_primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let commands = write(&mut engine, 7, "a");
    // Append, then the stream to the replica at once: no Reply before durability.
    assert!(
        matches!(
            commands[0],
            Command::Append {
                token: AppendToken(0),
                ..
            }
        ),
        "{commands:?}"
    );
    assert!(matches!(
        commands[1],
        Command::Send {
            conn: REPLICA,
            message: Message::Txs { .. }
        }
    ));
    assert!(!commands.iter().any(|c| matches!(c, Command::Reply { .. })));
    engine.handle(
        T0,
        Event::Durable {
            token: AppendToken(0),
            up_to: TxId(1),
        },
    );
    let commands = drain(&mut engine);
    let commit = commands
        .iter()
        .position(|c| matches!(c, Command::Commit { up_to: TxId(1) }));
    let reply = commands.iter().position(|c| {
        matches!(
            c,
            Command::Reply {
                write: WriteId(7),
                result: Ok(_)
            }
        )
    });
    assert!(
        commit.is_some() && reply.is_some() && commit < reply,
        "commit, then reply: {commands:?}"
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
    drain(&mut engine);
    assert!(engine.poll_timeout() > T0.plus(delay), "no tick due yet");
    write(&mut engine, 1, "a");
    let durable = |up_to| Event::Durable {
        token: AppendToken(up_to - 1),
        up_to: TxId(up_to),
    };
    engine.handle(T0, durable(1));
    let commands = drain(&mut engine);
    assert!(commands.iter().any(|c| matches!(c, Command::Commit { .. })));
    assert_eq!(committed_sent(&commands), None, "not at once: {commands:?}");
    assert!(
        engine.poll_timeout() <= T0.plus(delay),
        "a tick is due for the notification"
    );

    // Under load, the next batch carries the commit point, and no Committed follows.
    let commands = write(&mut engine, 2, "b");
    assert!(
        commands.iter().any(|c| matches!(
            c,
            Command::Send {
                message: Message::Txs {
                    committed: TxId(1),
                    ..
                },
                ..
            }
        )),
        "{commands:?}"
    );
    engine.handle(T0.plus(delay), Event::Tick);
    assert_eq!(committed_sent(&drain(&mut engine)), None);

    // Idle: once the delay has passed, a Committed message tells the replica.
    let later = T0.plus(delay * 3);
    engine.handle(later, durable(2));
    assert_eq!(committed_sent(&drain(&mut engine)), None);
    engine.handle(later.plus(delay / 2), Event::Tick);
    assert_eq!(
        committed_sent(&drain(&mut engine)),
        None,
        "not before the delay"
    );
    engine.handle(later.plus(delay), Event::Tick);
    assert_eq!(committed_sent(&drain(&mut engine)), Some(TxId(2)));
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
    drain(&mut engine);
    assert!(
        txs_sent(&write(&mut engine, 1, "a")).is_empty(),
        "held back"
    );
    assert!(engine.poll_timeout() <= T0.plus(delay), "a tick is due");
    assert!(txs_sent(&write(&mut engine, 2, "b")).is_empty());
    engine.handle(T0.plus(delay / 2), Event::Tick);
    assert!(
        txs_sent(&drain(&mut engine)).is_empty(),
        "not before the delay"
    );
    engine.handle(T0.plus(delay), Event::Tick);
    assert_eq!(
        txs_sent(&drain(&mut engine)),
        vec![TxId(1), TxId(2)],
        "one batch"
    );

    // A policy that needs the replicas streams what was held back at once, and from then on
    // every write at once.
    let later = T0.plus(delay * 2);
    engine.handle(
        later,
        Event::Propose(vec![(WriteId(3), Bytes::from_static(b"c"))]),
    );
    assert!(txs_sent(&drain(&mut engine)).is_empty());
    let synchronous = Arc::new(Quorum::AckCount { n: 1, among: None });
    engine.handle(later, Event::SetPolicy(synchronous));
    let commands = drain(&mut engine);
    assert_eq!(txs_sent(&commands), vec![TxId(3)]);
    ack_up_to(&mut engine, 3);
    assert_eq!(txs_sent(&write(&mut engine, 4, "d")), vec![TxId(4)]);
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
    assert!(
        txs_sent(&drain(&mut engine)).is_empty(),
        "still two in flight"
    );
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
    let commands = write(&mut engine, 1, "a");
    let Command::Send {
        message: Message::Txs { txs, .. },
        ..
    } = &commands[1]
    else {
        panic!("{commands:?}")
    };
    let position = txs[0].position();
    // The replica's acknowledgement first: not committed, the primary could still lose it.
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: Message::Ack { durable: position },
        },
    );
    assert!(
        !drain(&mut engine)
            .iter()
            .any(|c| matches!(c, Command::Commit { .. }))
    );
    engine.handle(
        T0,
        Event::Durable {
            token: AppendToken(0),
            up_to: TxId(1),
        },
    );
    let commands = drain(&mut engine);
    assert!(
        commands
            .iter()
            .any(|c| matches!(c, Command::Commit { up_to: TxId(1) })),
        "{commands:?}"
    );
}

#[test]
fn uncommitted_backlog_is_bounded() {
    let config = EngineConfig {
        max_uncommitted: 2,
        ..EngineConfig::new("p", "db", Role::Primary)
    };
    let policy = Arc::new(Quorum::AckCount { n: 1, among: None });
    let mut engine = Engine::new(config, policy, LogState::default(), Epoch(0), T0);
    drain(&mut engine);
    write(&mut engine, 1, "a");
    write(&mut engine, 2, "b");
    let commands = write(&mut engine, 3, "c");
    assert!(
        matches!(
            commands[..],
            [Command::Reply {
                write: WriteId(3),
                result: Err(WriteError::Backlog {
                    uncommitted: 2,
                    limit: 2
                })
            }]
        ),
        "{commands:?}"
    );
}

#[test]
fn a_higher_epoch_fences_the_primary() {
    let mut engine = primary(Quorum::Async);
    let peer = NodeId::new("r1");
    engine.handle(
        T0,
        Event::Connected {
            conn: REPLICA,
            peer,
            address: "r1".into(),
            direction: Direction::Downstream,
        },
    );
    engine.handle(
        T0,
        Event::Received {
            conn: REPLICA,
            message: subscribe(LogPosition::START, Epoch(5)),
        },
    );
    let commands = drain(&mut engine);
    assert!(commands.iter().any(|c| matches!(
        c,
        Command::Send {
            message: Message::Refused(Refusal::StaleSource { .. }),
            ..
        }
    )));
    let commands = write(&mut engine, 1, "a");
    assert!(
        matches!(
            &commands[..],
            [Command::Reply {
                result: Err(WriteError::Fenced {
                    ours: Epoch(1),
                    seen: Epoch(5)
                }),
                ..
            }]
        ),
        "{commands:?}"
    );
}

#[test]
fn unknown_database_and_unauthorised_identity_are_refused() {
    let mut config = EngineConfig::new("p", "db", Role::Primary);
    config.allowed_replicators = Some(vec![NodeId::new("r1")]);
    let mut engine = Engine::new(
        config,
        Arc::new(Quorum::Async),
        LogState::default(),
        Epoch(0),
        T0,
    );
    drain(&mut engine);
    let connect = |engine: &mut Engine, conn, name: &str| {
        engine.handle(
            T0,
            Event::Connected {
                conn,
                peer: NodeId::new(name),
                address: name.into(),
                direction: Direction::Downstream,
            },
        );
    };
    connect(&mut engine, ConnId(1), "intruder");
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(1),
            message: subscribe(LogPosition::START, Epoch(0)),
        },
    );
    let commands = drain(&mut engine);
    assert!(commands.iter().any(|c| matches!(c, Command::Send { message: Message::Refused(Refusal::NotAllowed(who)), .. } if who == "intruder")));
    connect(&mut engine, ConnId(2), "r1");
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
    let commands = drain(&mut engine);
    assert!(commands.iter().any(|c| matches!(c, Command::Send { message: Message::Refused(Refusal::UnknownDatabase(db)), .. } if db == "nope")));
}

#[test]
fn a_silent_replica_is_dropped_and_async_writes_do_not_wait() {
    let mut engine = primary(Quorum::Async);
    attach_replica(&mut engine, REPLICA, "r1");
    let later = T0.plus(Duration::from_secs(10));
    engine.handle(later, Event::Tick);
    assert!(
        drain(&mut engine)
            .iter()
            .any(|c| matches!(c, Command::Close { conn: REPLICA }))
    );
    let status = engine.status(later);
    assert!(!status.replicas[0].connected);
    write(&mut engine, 1, "a");
    engine.handle(
        later,
        Event::Durable {
            token: AppendToken(0),
            up_to: TxId(1),
        },
    );
    assert!(
        drain(&mut engine)
            .iter()
            .any(|c| matches!(c, Command::Reply { result: Ok(_), .. }))
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
    let last = log.last().map(Tx::position).unwrap_or(LogPosition::START);
    let state = LogState {
        epoch: Epoch(1),
        last,
        durable: last,
        committed: LogPosition::START,
    };
    let last_epoch = log.last().map(|tx| tx.epoch).unwrap_or(Epoch(0));
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), state, last_epoch, T0);
    engine.handle(T0, Event::Tick);
    assert!(matches!(drain(&mut engine)[..], [Command::Connect { .. }]));
    engine.handle(
        T0,
        Event::Connected {
            conn: ConnId(0),
            peer: NodeId::new("p"),
            address: "p".into(),
            direction: Direction::Upstream,
        },
    );
    let commands = drain(&mut engine);
    assert!(
        matches!(
            &commands[..],
            [Command::Send {
                message: Message::Subscribe { .. },
                ..
            }]
        ),
        "{commands:?}"
    );
    engine
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

#[test]
fn a_replica_refuses_a_tampered_transaction() {
    let mut engine = replica_with(&[], false);
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(0),
            message: Message::Accepted {
                epoch: Epoch(1),
                committed: TxId(0),
                primary: None,
            },
        },
    );
    drain(&mut engine);
    let mut txs = chain(Epoch(1), &["a", "b"], LogPosition::START);
    txs[1].payload = Bytes::from_static(b"forged");
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(0),
            message: Message::Txs {
                txs,
                committed: TxId(0),
            },
        },
    );
    let commands = drain(&mut engine);
    assert!(
        !commands.iter().any(|c| matches!(c, Command::Append { .. })),
        "nothing stored: {commands:?}"
    );
    assert!(matches!(
        engine.replication_error(),
        Some(ReplicationError::Chain(_))
    ));
}

#[test]
fn same_epoch_divergence_stops_with_both_hashes_unless_discarding_is_allowed() {
    let ours = chain(Epoch(1), &["a", "mine"], LogPosition::START);
    let theirs = chain(Epoch(1), &["theirs"], ours[0].position());
    let diverged = Message::Diverged {
        epoch: Epoch(1),
        source_hashes: vec![ours[0].hash, theirs[0].hash],
        source_last: TxId(2),
    };
    for allow in [false, true] {
        let mut engine = replica_with(&ours, allow);
        engine.handle(
            T0,
            Event::Received {
                conn: ConnId(0),
                message: diverged.clone(),
            },
        );
        let commands = drain(&mut engine);
        assert!(
            matches!(commands[..], [Command::Read { from: TxId(1), .. }]),
            "{commands:?}"
        );
        engine.handle(
            T0,
            Event::ReadDone {
                conn: ConnId(0),
                txs: ours.clone(),
            },
        );
        let commands = drain(&mut engine);
        if allow {
            assert!(
                matches!(commands[0], Command::Truncate { after: TxId(1) }),
                "{commands:?}"
            );
            assert!(
                matches!(&commands[1], Command::Send { message: Message::Subscribe { last, .. }, .. } if *last == ours[0].position())
            );
        } else {
            let error = engine.replication_error().expect("stopped").to_string();
            assert!(
                error.contains(&ours[1].hash.to_hex()) && error.contains(&theirs[0].hash.to_hex()),
                "{error}"
            );
            assert!(
                !commands
                    .iter()
                    .any(|c| matches!(c, Command::Truncate { .. }))
            );
        }
    }
}

#[test]
fn a_higher_epoch_source_supersedes_the_uncommitted_suffix() {
    let ours = chain(Epoch(1), &["a", "lost"], LogPosition::START);
    let mut engine = replica_with(&ours, false);
    let diverged = Message::Diverged {
        epoch: Epoch(2),
        source_hashes: vec![ours[0].hash],
        source_last: TxId(1),
    };
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(0),
            message: diverged,
        },
    );
    drain(&mut engine);
    engine.handle(
        T0,
        Event::ReadDone {
            conn: ConnId(0),
            txs: ours.clone(),
        },
    );
    let commands = drain(&mut engine);
    assert!(
        matches!(commands[0], Command::Truncate { after: TxId(1) }),
        "{commands:?}"
    );
}

#[test]
fn a_replica_refuses_a_source_of_a_lower_epoch() {
    let mut engine = replica_with(&[], false);
    // Our own epoch is 1 (from the log state); the source claims 0.
    engine.handle(
        T0,
        Event::Received {
            conn: ConnId(0),
            message: Message::Accepted {
                epoch: Epoch(0),
                committed: TxId(0),
                primary: None,
            },
        },
    );
    let commands = drain(&mut engine);
    assert!(
        commands.iter().any(|c| matches!(c, Command::Close { .. })),
        "{commands:?}"
    );
    let status = engine.status(T0);
    assert!(status.last_error.is_some_and(|e| e.contains("lower than")));
}

#[test]
fn a_replica_rejects_writes_naming_its_source() {
    let mut engine = replica_with(&[], false);
    let commands = write(&mut engine, 9, "x");
    assert!(
        matches!(&commands[..], [Command::Reply { result: Err(WriteError::NotPrimary { source_address }), .. }] if source_address == "p")
    );
}

#[test]
fn an_external_replica_checks_pushed_transactions_and_answers_once_durable() {
    let config = EngineConfig::new("mirror", "db", Role::ExternalReplica);
    let mut engine = Engine::new(
        config,
        Arc::new(Quorum::Async),
        LogState::default(),
        Epoch(0),
        T0,
    );
    engine.handle(T0, Event::Tick);
    assert!(
        drain(&mut engine).is_empty(),
        "no replicator of its own: it never connects"
    );
    let txs = chain(Epoch(1), &["a", "b"], LogPosition::START);

    let mut forged = txs.clone();
    forged[1].payload = Bytes::from_static(b"forged");
    engine.handle(
        T0,
        Event::Replicate {
            write: WriteId(1),
            txs: forged,
        },
    );
    let commands = drain(&mut engine);
    assert!(
        matches!(
            &commands[..],
            [Command::Reply {
                result: Err(WriteError::Rejected(_)),
                ..
            }]
        ),
        "{commands:?}"
    );

    engine.handle(
        T0,
        Event::Replicate {
            write: WriteId(2),
            txs: txs.clone(),
        },
    );
    let commands = drain(&mut engine);
    assert!(commands.iter().any(|c| matches!(c, Command::Append { .. })));
    assert!(
        !commands.iter().any(|c| matches!(c, Command::Reply { .. })),
        "not before durability"
    );
    engine.handle(
        T0,
        Event::Durable {
            token: AppendToken(0),
            up_to: TxId(2),
        },
    );
    let commands = drain(&mut engine);
    let commit = commands
        .iter()
        .position(|c| matches!(c, Command::Commit { up_to: TxId(2) }));
    let reply = commands.iter().position(|c| {
        matches!(
            c,
            Command::Reply {
                write: WriteId(2),
                result: Ok(_)
            }
        )
    });
    assert!(commit.is_some() && commit < reply, "{commands:?}");
    let commands = write(&mut engine, 3, "direct");
    assert!(matches!(
        &commands[..],
        [Command::Reply {
            result: Err(WriteError::NotPrimary { .. }),
            ..
        }]
    ));
}
