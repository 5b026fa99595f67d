//! Event-in, commands-out tests of the snapshot transfer: a source offers its snapshot to a
//! replica whose next transactions were compacted away (or that starts empty), streams it in
//! a window of chunks, and serves the log after it; a replica refuses a damaged chunk, resumes
//! where it stopped, installs, and subscribes again from the snapshot; compaction never cuts
//! what a connected replica needs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::engine::{
    Command, ConnId, Direction, Engine, EngineConfig, Event, Recovered, ReplicationError, Role,
    Timestamp, UpstreamState,
};
use replication_core::protocol::{Message, PROTOCOL_VERSION, Refusal, SnapshotWish};
use replication_core::quorum::{Quorum, Tags};
use replication_core::snapshot::{SnapshotChunk, SnapshotError, SnapshotFormat, SnapshotMeta};
use replication_core::{Epoch, EpochClaim, LogBase, LogPosition, LogState, ReplicaId, Tx, TxId};

const T0: Timestamp = Timestamp(0);
const REPLICA: ConnId = ConnId(1);
const SOURCE: ConnId = ConnId(0);

fn claim(epoch: u64) -> EpochClaim {
    EpochClaim::new(Epoch(epoch), Some(ReplicaId::new("p", "db")))
}

fn drain(engine: &mut Engine) -> Vec<Command> {
    std::iter::from_fn(|| engine.poll_command()).collect()
}

fn format() -> SnapshotFormat {
    SnapshotFormat {
        name: "test".into(),
        version: 1,
    }
}

/// A history of `count` transactions in epoch 1.
fn history(count: usize) -> Vec<Tx> {
    let mut prev = LogPosition::START;
    (0..count)
        .map(|i| {
            let tx = Tx::new(prev, Epoch(1), Bytes::from(format!("tx{i}")));
            prev = tx.position();
            tx
        })
        .collect()
}

/// A snapshot of three chunks as of `last`.
fn snapshot_at(last: &Tx) -> (SnapshotMeta, Vec<SnapshotChunk>) {
    let chunks: Vec<SnapshotChunk> = (0..3)
        .map(|i| SnapshotChunk::new(i, Bytes::from(vec![i as u8; 10])))
        .collect();
    let mut digest = blake3::Hasher::new();
    for chunk in &chunks {
        digest.update(&chunk.hash);
    }
    let meta = SnapshotMeta {
        format: format(),
        last: last.position(),
        last_epoch: last.epoch,
        chunks: 3,
        bytes: 30,
        digest: *digest.finalize().as_bytes(),
    };
    (meta, chunks)
}

/// A primary of epoch 1 that holds `log[..]` committed, compacted up to `base` (1-based), with
/// `snapshot`; its claim is already saved (it restarted into epoch 2, drained).
fn compacted_primary(log: &[Tx], base: usize, snapshot: Option<SnapshotMeta>) -> Engine {
    let last = log.last().map(Tx::position).unwrap_or(LogPosition::START);
    let base = LogBase {
        position: log[base - 1].position(),
        epoch: Epoch(1),
    };
    let recovered = Recovered {
        state: LogState {
            epoch: Epoch(1),
            last,
            durable: last,
            committed: last,
        },
        epoch_claim: claim(1),
        last_epoch: Epoch(1),
        members: vec![],
        base,
        snapshot,
        partial_snapshot: None,
    };
    let config = EngineConfig::new("p", "db", Role::Primary);
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
    assert_eq!(drain(&mut engine), vec![Command::SaveEpoch(claim(2))]);
    engine.handle(
        T0,
        Event::Connected {
            conn: REPLICA,
            peer: "r1".into(),
            address: "r1".into(),
            direction: Direction::Downstream,
        },
    );
    assert_eq!(drain(&mut engine), vec![]);
    engine
}

fn subscribe(last: LogPosition, known_common: LogPosition, snapshot: SnapshotWish) -> Message {
    Message::Subscribe {
        version: PROTOCOL_VERSION,
        database: "db".into(),
        claim: EpochClaim::new(Epoch(1), None),
        last,
        known_common,
        window: 100,
        tags: Tags::new(),
        replica_database: "db".into(),
        snapshot,
    }
}

fn received(conn: ConnId, message: Message) -> Event {
    Event::Received { conn, message }
}

fn send(conn: ConnId, message: Message) -> Command {
    Command::Send { conn, message }
}

fn chunk_message(chunk: &SnapshotChunk) -> Message {
    Message::SnapshotChunk {
        index: chunk.index,
        data: chunk.data.clone(),
        hash: chunk.hash,
    }
}

#[test]
fn a_source_sends_its_snapshot_in_a_window_then_the_log_after_it() {
    let log = history(12);
    let (meta, chunks) = snapshot_at(&log[9]);
    let mut primary = compacted_primary(&log, 10, Some(meta.clone()));
    let source = &mut primary;
    // The replica needs transaction 1, which compaction removed.
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(LogPosition::START, LogPosition::START, SnapshotWish::Log),
        ),
    );
    let offer = Message::SnapshotOffer {
        claim: claim(2),
        meta: meta.clone(),
    };
    assert_eq!(drain(source), vec![send(REPLICA, offer)]);
    // The replica resumes at chunk 1: the source reads one chunk at a time, within the window.
    let ack = |next| Message::SnapshotAck {
        digest: meta.digest,
        next,
    };
    source.handle(T0, received(REPLICA, ack(1)));
    let read = |index| Command::SnapshotRead {
        conn: REPLICA,
        digest: meta.digest,
        index,
    };
    assert_eq!(drain(source), vec![read(1)]);
    source.handle(
        T0,
        Event::SnapshotChunkRead {
            conn: REPLICA,
            chunk: Some(chunks[1].clone()),
        },
    );
    assert_eq!(
        drain(source),
        vec![send(REPLICA, chunk_message(&chunks[1])), read(2)]
    );
    source.handle(
        T0,
        Event::SnapshotChunkRead {
            conn: REPLICA,
            chunk: Some(chunks[2].clone()),
        },
    );
    assert_eq!(
        drain(source),
        vec![send(REPLICA, chunk_message(&chunks[2]))]
    );
    source.handle(T0, received(REPLICA, ack(3)));
    assert_eq!(drain(source), vec![], "nothing beyond the last chunk");
    // Installed, the replica subscribes again from the snapshot: the source compares from the
    // transaction after its base, and streams from there.
    source.handle(
        T0,
        received(REPLICA, subscribe(meta.last, meta.last, SnapshotWish::Log)),
    );
    assert_eq!(
        drain(source),
        vec![Command::Read {
            conn: REPLICA,
            from: TxId(11),
            max_count: 1,
            max_bytes: usize::MAX,
        }]
    );
    source.handle(
        T0,
        Event::ReadDone {
            conn: REPLICA,
            txs: log[10..11].to_vec(),
        },
    );
    let commands = drain(source);
    assert!(
        commands.iter().any(|command| matches!(
            command,
            Command::Send {
                message: Message::Accepted {
                    committed: TxId(12),
                    ..
                },
                ..
            }
        )),
        "{commands:?}"
    );
    assert!(
        commands.iter().any(|command| matches!(
            command,
            Command::Read {
                conn: REPLICA,
                from: TxId(11),
                ..
            }
        )),
        "the log after the snapshot follows: {commands:?}"
    );
}

#[test]
fn a_chunk_that_cannot_be_read_closes_the_channel() {
    let log = history(12);
    let (meta, _) = snapshot_at(&log[9]);
    let mut source = compacted_primary(&log, 10, Some(meta.clone()));
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(LogPosition::START, LogPosition::START, SnapshotWish::Log),
        ),
    );
    drain(&mut source);
    source.handle(
        T0,
        received(
            REPLICA,
            Message::SnapshotAck {
                digest: meta.digest,
                next: 0,
            },
        ),
    );
    drain(&mut source);
    source.handle(
        T0,
        Event::SnapshotChunkRead {
            conn: REPLICA,
            chunk: None,
        },
    );
    assert_eq!(drain(&mut source), vec![Command::Close { conn: REPLICA }]);
}

#[test]
fn a_compacted_source_without_a_snapshot_refuses_and_says_why() {
    let log = history(12);
    let mut source = compacted_primary(&log, 10, None);
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(LogPosition::START, LogPosition::START, SnapshotWish::Log),
        ),
    );
    // It takes one for the replica's next attempt.
    assert_eq!(
        drain(&mut source),
        vec![
            Command::TakeSnapshot,
            send(
                REPLICA,
                Message::Refused(Refusal::SnapshotUnavailable { first: TxId(11) })
            ),
            Command::Close { conn: REPLICA }
        ]
    );
}

#[test]
fn a_replica_that_needs_a_snapshot_gets_one_even_from_a_source_that_holds_its_log() {
    let log = history(12);
    let (meta, _) = snapshot_at(&log[9]);
    let mut source = compacted_primary(&log, 1, Some(meta.clone()));
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(log[11].position(), LogPosition::START, SnapshotWish::Need),
        ),
    );
    let offer = Message::SnapshotOffer {
        claim: claim(2),
        meta,
    };
    assert_eq!(drain(&mut source), vec![send(REPLICA, offer)]);
}

#[test]
fn an_empty_replica_that_prefers_a_snapshot_gets_one_and_a_replica_at_the_base_streams() {
    let log = history(12);
    let (meta, _) = snapshot_at(&log[9]);
    let mut source = compacted_primary(&log, 1, Some(meta.clone()));
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(LogPosition::START, LogPosition::START, SnapshotWish::Prefer),
        ),
    );
    let commands = drain(&mut source);
    assert!(
        matches!(
            &commands[..],
            [Command::Send {
                message: Message::SnapshotOffer { .. },
                ..
            }]
        ),
        "{commands:?}"
    );
    // A replica whose commit point is the source's base, with another hash, is refused.
    let mut source = compacted_primary(&log, 10, Some(meta));
    let forged = LogPosition {
        tx_id: TxId(10),
        hash: log[3].hash,
    };
    source.handle(
        T0,
        received(REPLICA, subscribe(forged, forged, SnapshotWish::Log)),
    );
    let commands = drain(&mut source);
    assert!(
        matches!(
            &commands[0],
            Command::Send {
                message: Message::Refused(Refusal::CommittedDivergence {
                    tx_id: TxId(10),
                    ..
                }),
                ..
            }
        ),
        "{commands:?}"
    );
}

#[test]
fn compaction_spares_what_a_connected_replica_needs_unless_it_lags_too_far() {
    let log = history(12);
    let (meta, _) = snapshot_at(&log[9]);
    let mut source = compacted_primary(&log, 2, Some(meta));
    // The replica holds 1..=4 and streams from 5.
    source.handle(
        T0,
        received(
            REPLICA,
            subscribe(log[3].position(), log[1].position(), SnapshotWish::Log),
        ),
    );
    drain(&mut source);
    source.handle(
        T0,
        Event::ReadDone {
            conn: REPLICA,
            txs: log[2..4].to_vec(),
        },
    );
    drain(&mut source);
    source.handle(
        T0,
        received(
            REPLICA,
            Message::Ack {
                durable: log[3].position(),
            },
        ),
    );
    drain(&mut source);
    let compact = |up_to, unpin_below| Event::Compact {
        up_to: TxId(up_to),
        unpin_below: TxId(unpin_below),
    };
    // Never past the snapshot, and not what the replica needs next (5).
    source.handle(T0, compact(12, 0));
    assert_eq!(
        drain(&mut source),
        vec![Command::Compact { up_to: TxId(4) }]
    );
    // A replica needing something before `unpin_below` does not hold the log back.
    source.handle(T0, compact(12, 8));
    assert_eq!(
        drain(&mut source),
        vec![Command::Compact { up_to: TxId(10) }]
    );
    // Once compacted past it, its channel closes: it gets a snapshot when it returns.
    source.handle(
        T0,
        Event::Compacted(LogBase {
            position: log[9].position(),
            epoch: Epoch(1),
        }),
    );
    assert_eq!(drain(&mut source), vec![Command::Close { conn: REPLICA }]);
    assert_eq!(source.base().position.tx_id, TxId(10));
    // Nothing more to cut.
    source.handle(T0, compact(12, 0));
    assert_eq!(drain(&mut source), vec![]);
}

/// A replica with an empty log, whose state machine reads `format`, connected to its source.
fn empty_replica(format: Option<SnapshotFormat>) -> Engine {
    let mut config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    config.snapshot_format = format;
    let mut engine = Engine::new(config, Arc::new(Quorum::Async), Recovered::default(), T0);
    engine.handle(T0, Event::Tick);
    assert_eq!(
        drain(&mut engine),
        vec![Command::Connect {
            address: "p".into()
        }]
    );
    connect(&mut engine, SOURCE);
    engine
}

fn connect(engine: &mut Engine, conn: ConnId) {
    engine.handle(
        T0,
        Event::Connected {
            conn,
            peer: "p".into(),
            address: "p".into(),
            direction: Direction::Upstream,
        },
    );
    let commands = drain(engine);
    assert!(
        matches!(
            &commands[..],
            [Command::Send {
                message: Message::Subscribe {
                    snapshot: SnapshotWish::Prefer,
                    ..
                },
                ..
            }]
        ),
        "an empty replica asks for a snapshot: {commands:?}"
    );
}

#[test]
fn a_replica_refuses_a_damaged_chunk_resumes_after_what_it_stored_and_installs() {
    let log = history(12);
    let (meta, chunks) = snapshot_at(&log[9]);
    let mut replica = empty_replica(Some(format()));
    let offer = Message::SnapshotOffer {
        claim: claim(1),
        meta: meta.clone(),
    };
    replica.handle(T0, received(SOURCE, offer.clone()));
    assert_eq!(
        drain(&mut replica),
        vec![Command::SnapshotReceive {
            meta: meta.clone(),
            from: 0
        }]
    );
    replica.handle(
        T0,
        Event::SnapshotReceiving {
            digest: meta.digest,
            result: Ok(0),
        },
    );
    let ack = |next| {
        send(
            SOURCE,
            Message::SnapshotAck {
                digest: meta.digest,
                next,
            },
        )
    };
    assert_eq!(drain(&mut replica), vec![ack(0)]);
    replica.handle(T0, received(SOURCE, chunk_message(&chunks[0])));
    assert_eq!(
        drain(&mut replica),
        vec![
            Command::SnapshotStore {
                chunk: chunks[0].clone()
            },
            ack(1)
        ]
    );
    // A chunk whose data does not match its hash is never stored.
    let damaged = Message::SnapshotChunk {
        index: 1,
        data: Bytes::from_static(b"not chunk one"),
        hash: chunks[1].hash,
    };
    replica.handle(T0, received(SOURCE, damaged));
    assert_eq!(drain(&mut replica), vec![Command::Close { conn: SOURCE }]);
    let status = replica.status(T0);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("snapshot chunk 1")),
        "{status:?}"
    );
    let progress = status.snapshot_transfer.expect("a transfer to resume");
    assert_eq!((progress.chunks_done, progress.chunks), (1, 3));
    // Reconnected, it resumes at chunk 1.
    let later = Timestamp(Duration::from_secs(1).as_micros() as u64);
    replica.handle(later, Event::Tick);
    assert_eq!(
        drain(&mut replica),
        vec![Command::Connect {
            address: "p".into()
        }]
    );
    let second = ConnId(7);
    connect(&mut replica, second);
    replica.handle(later, received(second, offer));
    assert_eq!(
        drain(&mut replica),
        vec![Command::SnapshotReceive {
            meta: meta.clone(),
            from: 1
        }]
    );
    replica.handle(
        later,
        Event::SnapshotReceiving {
            digest: meta.digest,
            result: Ok(1),
        },
    );
    let ack_on = |next| {
        send(
            second,
            Message::SnapshotAck {
                digest: meta.digest,
                next,
            },
        )
    };
    assert_eq!(drain(&mut replica), vec![ack_on(1)]);
    replica.handle(later, received(second, chunk_message(&chunks[1])));
    drain(&mut replica);
    replica.handle(later, received(second, chunk_message(&chunks[2])));
    assert_eq!(
        drain(&mut replica),
        vec![
            Command::SnapshotStore {
                chunk: chunks[2].clone()
            },
            ack_on(3),
            Command::SnapshotInstall {
                meta: meta.clone(),
                keep_dropped: false
            }
        ]
    );
    assert_eq!(
        replica.status(later).upstream,
        Some(UpstreamState::InstallingSnapshot)
    );
    replica.handle(
        later,
        Event::SnapshotInstalled {
            meta: meta.clone(),
            result: Ok(()),
        },
    );
    let commands = drain(&mut replica);
    // The log starts after the snapshot, and the replica subscribes from there.
    assert!(
        commands.iter().any(|command| matches!(
            command,
            Command::Send { conn, message: Message::Subscribe { last, known_common, snapshot: SnapshotWish::Log, .. } }
                if *conn == second && *last == meta.last && *known_common == meta.last
        )),
        "{commands:?}"
    );
    let status = replica.status(later);
    assert_eq!(status.base.position, meta.last);
    assert_eq!(status.committed, TxId(10));
    assert_eq!(status.last, meta.last);
    assert_eq!(status.snapshot, Some((TxId(10), 30)), "it can send it on");
    assert_eq!(status.snapshot_transfer, None);
    // The log that follows must chain from the snapshot's hash.
    replica.handle(
        later,
        received(
            second,
            Message::Accepted {
                claim: claim(1),
                primary: None,
                committed: TxId(12),
            },
        ),
    );
    drain(&mut replica);
    replica.handle(
        later,
        received(
            second,
            Message::Txs {
                claim: claim(1),
                txs: log[10..].to_vec(),
                committed: TxId(12),
            },
        ),
    );
    let commands = drain(&mut replica);
    assert!(
        commands
            .iter()
            .any(|command| matches!(command, Command::Append { txs, .. } if txs == &log[10..])),
        "{commands:?}"
    );
}

#[test]
fn a_replica_whose_state_machine_reads_another_format_stops_with_the_reason() {
    let log = history(3);
    let (meta, _) = snapshot_at(&log[2]);
    let mut replica = empty_replica(Some(SnapshotFormat {
        name: "test".into(),
        version: 2,
    }));
    replica.handle(
        T0,
        received(
            SOURCE,
            Message::SnapshotOffer {
                claim: claim(1),
                meta: meta.clone(),
            },
        ),
    );
    assert_eq!(drain(&mut replica), vec![Command::Close { conn: SOURCE }]);
    let expected = ReplicationError::Snapshot(SnapshotError::FormatMismatch {
        offered: meta.format,
        supported: "test v2".into(),
    });
    assert_eq!(replica.replication_error(), Some(&expected));
    let status = replica.status(T0);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("test v1") && error.contains("test v2")),
        "{status:?}"
    );
}

#[test]
fn a_failed_install_fetches_the_snapshot_again() {
    let log = history(3);
    let (meta, chunks) = snapshot_at(&log[2]);
    let mut replica = empty_replica(Some(format()));
    replica.handle(
        T0,
        received(
            SOURCE,
            Message::SnapshotOffer {
                claim: claim(1),
                meta: meta.clone(),
            },
        ),
    );
    replica.handle(
        T0,
        Event::SnapshotReceiving {
            digest: meta.digest,
            result: Ok(0),
        },
    );
    for chunk in &chunks {
        replica.handle(T0, received(SOURCE, chunk_message(chunk)));
    }
    drain(&mut replica);
    replica.handle(
        T0,
        Event::SnapshotInstalled {
            meta: meta.clone(),
            result: Err(SnapshotError::Corrupt {
                chunk: 3,
                why: "digest".into(),
            }),
        },
    );
    assert_eq!(drain(&mut replica), vec![Command::Close { conn: SOURCE }]);
    let status = replica.status(T0);
    assert_eq!(status.upstream, Some(UpstreamState::Disconnected));
    assert_eq!(status.snapshot_transfer, None, "started again from nothing");
    assert_eq!(status.last, LogPosition::START);
}

#[test]
fn a_replica_holding_the_snapshot_position_follows_the_log_from_there_and_drops_nothing() {
    let log = history(12);
    let (meta, _) = snapshot_at(&log[9]);
    // A replica that holds 1..=12 durably, 5 committed: the source compacted up to 10.
    let mut config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    config.snapshot_format = Some(format());
    let last = log[11].position();
    let recovered = Recovered {
        state: LogState {
            epoch: Epoch(1),
            last,
            durable: last,
            committed: log[4].position(),
        },
        epoch_claim: claim(1),
        last_epoch: Epoch(1),
        ..Recovered::default()
    };
    let mut replica = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
    replica.handle(T0, Event::Tick);
    drain(&mut replica);
    replica.handle(
        T0,
        Event::Connected {
            conn: SOURCE,
            peer: "p".into(),
            address: "p".into(),
            direction: Direction::Upstream,
        },
    );
    drain(&mut replica);
    replica.handle(
        T0,
        received(
            SOURCE,
            Message::SnapshotOffer {
                claim: claim(1),
                meta: meta.clone(),
            },
        ),
    );
    // It reads its own transaction at the snapshot's position first.
    assert_eq!(
        drain(&mut replica),
        vec![Command::Read {
            conn: SOURCE,
            from: TxId(10),
            max_count: 1,
            max_bytes: usize::MAX,
        }]
    );
    replica.handle(
        T0,
        Event::ReadDone {
            conn: SOURCE,
            txs: vec![log[9].clone()],
        },
    );
    // Same hash: it shares the source's history up to 10 and subscribes from there, keeping
    // 11 and 12 (which it may have acknowledged).
    let commands = drain(&mut replica);
    assert!(
        matches!(
            &commands[..],
            [Command::Send { message: Message::Subscribe { known_common, last: subscribed_last, snapshot: SnapshotWish::Log, .. }, .. }]
                if *known_common == meta.last && *subscribed_last == last
        ),
        "{commands:?}"
    );
    assert_eq!(replica.status(T0).last, last, "nothing dropped");
}

#[test]
fn a_replica_allowed_to_rewind_below_its_compacted_log_starts_again_from_a_snapshot_keeping_its_log()
 {
    // The replica's log begins after 10 (compacted); it committed 12 of a history its source
    // lacks (an old primary after a forced promotion), and may rewind once.
    let ours = history(12);
    let mut config = EngineConfig::new(
        "r1",
        "db",
        Role::Replica {
            address: "p".into(),
        },
    );
    config.snapshot_format = Some(format());
    config.allow_rewind = true;
    let recovered = Recovered {
        state: LogState {
            epoch: Epoch(1),
            last: ours[11].position(),
            durable: ours[11].position(),
            committed: ours[11].position(),
        },
        epoch_claim: claim(1),
        last_epoch: Epoch(1),
        base: LogBase {
            position: ours[9].position(),
            epoch: Epoch(1),
        },
        ..Recovered::default()
    };
    let mut replica = Engine::new(config, Arc::new(Quorum::Async), recovered, T0);
    replica.handle(T0, Event::Tick);
    drain(&mut replica);
    let connected = |replica: &mut Engine, conn: ConnId, at: Timestamp| {
        replica.handle(
            at,
            Event::Connected {
                conn,
                peer: "p".into(),
                address: "p".into(),
                direction: Direction::Upstream,
            },
        );
        drain(replica)
    };
    connected(&mut replica, SOURCE, T0);
    replica.handle(
        T0,
        received(
            SOURCE,
            Message::Refused(Refusal::CommittedDivergence {
                tx_id: TxId(12),
                replica_hash: ours[11].hash,
                source_hash: None,
            }),
        ),
    );
    drain(&mut replica);
    // The search back for common ground passes the log's base: it asks for a snapshot.
    let later = Timestamp(Duration::from_secs(1).as_micros() as u64);
    replica.handle(later, Event::Tick);
    drain(&mut replica);
    let commands = connected(&mut replica, ConnId(5), later);
    assert!(
        matches!(
            &commands[..],
            [Command::Send {
                message: Message::Subscribe {
                    snapshot: SnapshotWish::Need,
                    ..
                },
                ..
            }]
        ),
        "{commands:?}"
    );
    // Another history's snapshot, up to 8: installed in place of the rewind, keeping its log.
    let theirs: Vec<Tx> = {
        let mut prev = LogPosition::START;
        (0..8)
            .map(|i| {
                let tx = Tx::new(prev, Epoch(2), Bytes::from(format!("theirs {i}")));
                prev = tx.position();
                tx
            })
            .collect()
    };
    let (meta, chunks) = snapshot_at(&theirs[7]);
    replica.handle(
        later,
        received(
            ConnId(5),
            Message::SnapshotOffer {
                claim: EpochClaim::new(Epoch(2), Some(ReplicaId::new("q", "db"))),
                meta: meta.clone(),
            },
        ),
    );
    drain(&mut replica);
    replica.handle(
        later,
        Event::SnapshotReceiving {
            digest: meta.digest,
            result: Ok(0),
        },
    );
    drain(&mut replica);
    for chunk in &chunks {
        replica.handle(later, received(ConnId(5), chunk_message(chunk)));
    }
    let commands = drain(&mut replica);
    assert_eq!(
        commands.last(),
        Some(&Command::SnapshotInstall {
            meta,
            keep_dropped: true
        })
    );
}
