//! The source side: accepting writes (primary), serving replicas, counting acknowledgements.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;

use super::{
    AckKind, Command, ConnId, Engine, PendingWrite, ReplicaStatus, Timestamp, WriteError, WriteId,
    WriteReceipt,
};
use crate::protocol::{DIVERGENCE_WINDOW, Message, PROTOCOL_VERSION, Refusal};
use crate::quorum::{ReplicaProgress, Tags};
use crate::types::{Epoch, LogPosition, NodeId, Tx, TxId};

/// Most replica identities remembered; the longest-disconnected is forgotten first.
const MAX_REPLICA_RECORDS: usize = 1024;

/// A replica's subscription, between `Subscribe` and the handshake read.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    last: LogPosition,
    known_common: LogPosition,
}

#[derive(Debug)]
pub(super) enum DownstreamPhase {
    /// Channel open, no subscription yet.
    Opened,
    /// Reading our log to compare it with the replica's.
    Handshake(Subscription),
    /// Streaming transactions from `next_send`.
    Streaming,
}

/// One channel from a replica.
#[derive(Debug)]
pub(super) struct Downstream {
    peer: NodeId,
    phase: DownstreamPhase,
    next_send: TxId,
    /// The highest position the replica acknowledged as durable on this channel.
    acked: TxId,
    window: u64,
    /// The last transaction of each `Txs` message sent and not yet acknowledged, oldest
    /// first (at most `window` entries).
    batches_in_flight: VecDeque<TxId>,
    read_in_flight: bool,
    last_heard: Timestamp,
    last_sent: Timestamp,
    committed_sent: TxId,
}

/// What a primary remembers of a replica identity across its channels.
#[derive(Debug)]
pub(super) struct ReplicaRecord {
    address: String,
    tags: Tags,
    durable: TxId,
    connected: bool,
    last_seen: Timestamp,
    /// When it last held everything this node had; lag is measured from then.
    caught_up_at: Timestamp,
}

impl Engine {
    pub(super) fn propose(&mut self, now: Timestamp, writes: Vec<(WriteId, Bytes)>) {
        let refusal = if let Some(reason) = &self.failed {
            Some(WriteError::LogFailed(reason.clone()))
        } else if let Some(primary) = self.primary_address() {
            Some(WriteError::NotPrimary {
                source_address: primary,
            })
        } else if self.config.role == super::Role::ExternalReplica {
            let source_address = "its external replicator's source".to_string();
            Some(WriteError::NotPrimary { source_address })
        } else {
            self.fenced.map(|seen| WriteError::Fenced {
                ours: self.epoch,
                seen,
            })
        };
        let mut txs = Vec::with_capacity(writes.len());
        for (write, payload) in writes {
            if let Some(error) = &refusal {
                self.commands.push_back(Command::Reply {
                    write,
                    result: Err(error.clone()),
                });
                continue;
            }
            let uncommitted = self.last.tx_id.0 + txs.len() as u64 - self.committed.0;
            if uncommitted >= self.config.max_uncommitted {
                let error = WriteError::Backlog {
                    uncommitted,
                    limit: self.config.max_uncommitted,
                };
                self.commands.push_back(Command::Reply {
                    write,
                    result: Err(error),
                });
                continue;
            }
            let prev = txs.last().map(Tx::position).unwrap_or(self.last);
            let tx = Tx::new(prev, self.epoch, payload);
            let deadline = self.config.write_timeout.map(|timeout| now.plus(timeout));
            self.pending.push_back(PendingWrite {
                write,
                position: tx.position(),
                deadline,
            });
            txs.push(tx);
        }
        if txs.is_empty() {
            return;
        }
        self.append(txs);
        if self.holds_back_streams() {
            self.stream_later(now);
        } else {
            // Stream at once, while the log syncs: the commit waits for both anyway.
            self.pump_all(now);
        }
    }

    /// Whether new transactions wait for `stream_at` instead of going out at once: only when
    /// no commit waits for a replica, so that replicas get batches rather than a message per
    /// write batch.
    fn holds_back_streams(&self) -> bool {
        !self.policy.is_synchronous() && !self.config.async_stream_delay.is_zero()
    }

    fn stream_later(&mut self, now: Timestamp) {
        if self.stream_at.is_none() {
            self.stream_at = Some(now.plus(self.config.async_stream_delay));
        }
    }

    pub(super) fn expire_writes(&mut self, now: Timestamp) {
        let expired: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.pending[i].deadline.is_some_and(|d| d <= now))
            .collect();
        for index in expired.into_iter().rev() {
            if let Some(pending) = self.pending.remove(index) {
                let error = WriteError::Timeout {
                    tx_id: pending.position.tx_id,
                };
                self.commands.push_back(Command::Reply {
                    write: pending.write,
                    result: Err(error),
                });
            }
        }
    }

    /// Recomputes the commit point from the policy (primary) and answers committed writes.
    pub(super) fn advance_commit(&mut self) {
        if !self.is_primary() {
            return;
        }
        let progress: Vec<ReplicaProgress<'_>> = self
            .replicas
            .iter()
            .map(|(id, record)| ReplicaProgress {
                id,
                tags: &record.tags,
                durable: record.durable,
                connected: record.connected,
            })
            .collect();
        let satisfied = self.policy.satisfied(&progress);
        self.set_committed(satisfied);
    }

    /// Called after the commit point moved: answer writers, tell replicas.
    pub(super) fn on_commit_advanced(&mut self) {
        let ack = if self.policy.is_synchronous() {
            AckKind::Quorum
        } else {
            AckKind::Async
        };
        while self
            .pending
            .front()
            .is_some_and(|p| p.position.tx_id <= self.committed)
        {
            if let Some(pending) = self.pending.pop_front() {
                let receipt = WriteReceipt {
                    tx_id: pending.position.tx_id,
                    hash: pending.position.hash,
                    ack,
                };
                self.commands.push_back(Command::Reply {
                    write: pending.write,
                    result: Ok(receipt),
                });
            }
        }
        if !self.is_primary() {
            // A relay serves only committed transactions: new ones may now be sendable.
            let conns: Vec<ConnId> = self.downstreams.keys().copied().collect();
            for conn in conns {
                self.pump(conn);
            }
        }
        self.commit_point_dirty = true;
    }

    /// Tells every streaming replica the commit point, unless a `Txs` message already did.
    pub(super) fn send_commit_points(&mut self) {
        let conns: Vec<ConnId> = self.downstreams.keys().copied().collect();
        for conn in conns {
            self.send_commit_point(conn);
        }
    }

    /// Called after this node's own durable position moved.
    pub(super) fn on_durable_advanced(&mut self) {
        if self.is_primary() {
            self.advance_commit();
        } else {
            self.on_replica_durable();
        }
    }

    fn send_commit_point(&mut self, conn: ConnId) {
        let (epoch, committed) = (self.epoch, self.committed);
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        if matches!(downstream.phase, DownstreamPhase::Streaming)
            && downstream.committed_sent < committed
        {
            downstream.committed_sent = committed;
            self.commands.push_back(Command::Send {
                conn,
                message: Message::Committed { epoch, committed },
            });
        }
    }

    pub(super) fn on_downstream_connected(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        peer: NodeId,
        address: String,
    ) {
        let record = self.replicas.entry(peer.clone()).or_insert(ReplicaRecord {
            address: address.clone(),
            tags: Tags::new(),
            durable: TxId::ZERO,
            connected: false,
            last_seen: now,
            caught_up_at: now,
        });
        record.address = address;
        self.downstreams.insert(
            conn,
            Downstream {
                peer,
                phase: DownstreamPhase::Opened,
                next_send: TxId(1),
                acked: TxId::ZERO,
                window: 0,
                batches_in_flight: VecDeque::new(),
                read_in_flight: false,
                last_heard: now,
                last_sent: now,
                committed_sent: TxId::ZERO,
            },
        );
        self.forget_old_replicas();
    }

    fn forget_old_replicas(&mut self) {
        while self.replicas.len() > MAX_REPLICA_RECORDS {
            let oldest = self
                .replicas
                .iter()
                .filter(|(_, r)| !r.connected)
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.replicas.remove(&id),
                None => break,
            };
        }
    }

    pub(super) fn on_downstream_disconnected(&mut self, conn: ConnId) {
        if let Some(downstream) = self.downstreams.remove(&conn) {
            let still_connected = self.downstreams.values().any(|d| {
                d.peer == downstream.peer && matches!(d.phase, DownstreamPhase::Streaming)
            });
            if let Some(record) = self.replicas.get_mut(&downstream.peer) {
                record.connected = still_connected;
            }
            // `First` picks among connected standbys: losing one may let the next take over.
            self.advance_commit();
        }
    }

    fn refuse(&mut self, conn: ConnId, refusal: Refusal) {
        tracing::warn!(?conn, %refusal, "refusing replica");
        self.commands.push_back(Command::Send {
            conn,
            message: Message::Refused(refusal),
        });
        self.commands.push_back(Command::Close { conn });
        self.on_downstream_disconnected(conn);
    }

    /// The last transaction this node serves to its replicas: everything it has if primary,
    /// only committed transactions if it is itself a replica.
    fn serve_limit(&self) -> TxId {
        if self.is_primary() {
            self.last.tx_id
        } else {
            self.committed
        }
    }

    pub(super) fn on_downstream_message(&mut self, now: Timestamp, conn: ConnId, message: Message) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.last_heard = now;
        let peer = downstream.peer.clone();
        match message {
            Message::Subscribe {
                version,
                database,
                epoch,
                last,
                known_common,
                window,
                tags,
            } => {
                if version != PROTOCOL_VERSION {
                    let refusal = Refusal::ProtocolVersion {
                        source_version: PROTOCOL_VERSION,
                        replica: version,
                    };
                    return self.refuse(conn, refusal);
                }
                if database != self.config.database {
                    return self.refuse(conn, Refusal::UnknownDatabase(database));
                }
                if let Some(allowed) = &self.config.allowed_replicators
                    && !allowed.contains(&peer)
                {
                    return self.refuse(conn, Refusal::NotAllowed(peer.0));
                }
                if epoch > self.epoch {
                    if self.is_primary() {
                        self.fence(epoch);
                    }
                    let refusal = Refusal::StaleSource {
                        source_epoch: self.epoch,
                        replica: epoch,
                    };
                    return self.refuse(conn, refusal);
                }
                if let Some(record) = self.replicas.get_mut(&peer) {
                    record.tags = tags;
                }
                let downstream = self.downstreams.get_mut(&conn).expect("checked above");
                downstream.window = u64::from(window.max(1));
                downstream.read_in_flight = true;
                let from = known_common.tx_id.0.max(1);
                let to = last
                    .tx_id
                    .0
                    .min(known_common.tx_id.0 + DIVERGENCE_WINDOW as u64);
                downstream.phase = DownstreamPhase::Handshake(Subscription { last, known_common });
                self.commands.push_back(Command::Read {
                    conn,
                    from: TxId(from),
                    max_count: (to.saturating_sub(from) + 1) as usize,
                    max_bytes: usize::MAX,
                });
            }
            Message::Ack { durable } => {
                if !matches!(downstream.phase, DownstreamPhase::Streaming) {
                    return;
                }
                // Never count more than the replica can hold of our history.
                let acked = durable.tx_id.min(downstream.next_send.prev());
                if acked <= downstream.acked {
                    return;
                }
                downstream.acked = acked;
                while downstream
                    .batches_in_flight
                    .front()
                    .is_some_and(|&last| last <= acked)
                {
                    downstream.batches_in_flight.pop_front();
                }
                if let Some(record) = self.replicas.get_mut(&peer) {
                    record.last_seen = now;
                    record.durable = record.durable.max(acked);
                    if acked >= self.last.tx_id {
                        record.caught_up_at = now;
                    }
                }
                // The acknowledgement opened the window; under an asynchronous policy what it
                // lets through joins the next batch.
                if self.holds_back_streams() {
                    self.stream_later(now);
                } else {
                    self.pump(conn);
                }
                self.advance_commit();
            }
            other => {
                tracing::warn!(?conn, message = ?other, "unexpected message from a replica");
            }
        }
    }

    pub(super) fn fence(&mut self, seen: Epoch) {
        if self.fenced.is_some_and(|s| s >= seen) {
            return;
        }
        tracing::error!(ours = %self.epoch, %seen, "a higher epoch exists: this primary is fenced");
        self.fenced = Some(seen);
        for pending in std::mem::take(&mut self.pending) {
            // Appended but never committed here: the outcome is for the new primary to decide.
            let error = WriteError::Fenced {
                ours: self.epoch,
                seen,
            };
            self.commands.push_back(Command::Reply {
                write: pending.write,
                result: Err(error),
            });
        }
    }

    /// Finishes a handshake with our transactions from `known_common` (or just after it).
    fn finish_handshake(&mut self, conn: ConnId, subscription: Subscription, ours: Vec<Tx>) {
        let limit = self.serve_limit();
        let ours: Vec<Tx> = ours.into_iter().filter(|tx| tx.id <= limit).collect();
        let known = subscription.known_common;
        let mut rest = ours.as_slice();
        if known.tx_id > TxId::ZERO {
            match ours.first() {
                Some(tx) if tx.id == known.tx_id && tx.hash == known.hash => rest = &ours[1..],
                Some(tx) if tx.id == known.tx_id => {
                    let refusal = Refusal::CommittedDivergence {
                        tx_id: known.tx_id,
                        replica_hash: known.hash,
                        source_hash: Some(tx.hash),
                    };
                    return self.refuse(conn, refusal);
                }
                _ => {
                    return self.refuse(conn, Refusal::SourceBehind { source_last: limit });
                }
            }
        }
        let last = subscription.last;
        let matches_last = last.tx_id == known.tx_id
            || rest
                .iter()
                .any(|tx| tx.id == last.tx_id && tx.hash == last.hash);
        if matches_last {
            let (epoch, committed, primary) = (self.epoch, self.committed, self.primary_address());
            let Some(downstream) = self.downstreams.get_mut(&conn) else {
                return;
            };
            downstream.phase = DownstreamPhase::Streaming;
            downstream.next_send = last.tx_id.next();
            downstream.committed_sent = committed;
            let peer = downstream.peer.clone();
            if let Some(record) = self.replicas.get_mut(&peer) {
                record.connected = true;
            }
            self.commands.push_back(Command::Send {
                conn,
                message: Message::Accepted {
                    epoch,
                    committed,
                    primary,
                },
            });
            self.pump(conn);
            self.advance_commit();
        } else {
            let message = Message::Diverged {
                epoch: self.epoch,
                source_hashes: rest.iter().map(|tx| tx.hash).collect(),
                source_last: limit,
            };
            if let Some(downstream) = self.downstreams.get_mut(&conn) {
                downstream.phase = DownstreamPhase::Opened;
            }
            self.commands.push_back(Command::Send { conn, message });
        }
    }

    pub(super) fn on_downstream_read(&mut self, conn: ConnId, txs: Vec<Tx>) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.read_in_flight = false;
        match std::mem::replace(&mut downstream.phase, DownstreamPhase::Opened) {
            DownstreamPhase::Handshake(subscription) => {
                self.finish_handshake(conn, subscription, txs);
            }
            DownstreamPhase::Streaming => {
                downstream.phase = DownstreamPhase::Streaming;
                let from = downstream.next_send;
                let batch: Vec<Tx> = txs.into_iter().skip_while(|tx| tx.id < from).collect();
                if batch.first().is_some_and(|tx| tx.id == from) {
                    self.send_batch(conn, batch);
                }
                self.pump(conn);
            }
            DownstreamPhase::Opened => {}
        }
    }

    /// How far `conn` may be sent: the serve limit, within the replica's window.
    fn send_bound(&self, downstream: &Downstream) -> TxId {
        let window_end = TxId(downstream.acked.0 + downstream.window);
        self.serve_limit().min(window_end)
    }

    fn send_batch(&mut self, conn: ConnId, mut batch: Vec<Tx>) {
        let committed = self.committed;
        let Some(downstream) = self.downstreams.get(&conn) else {
            return;
        };
        let bound = self.send_bound(downstream);
        batch.retain(|tx| tx.id <= bound);
        let Some(last_id) = batch.last().map(|tx| tx.id) else {
            return;
        };
        let next = last_id.next();
        let downstream = self.downstreams.get_mut(&conn).expect("checked above");
        downstream.next_send = next;
        downstream.committed_sent = committed;
        downstream.batches_in_flight.push_back(last_id);
        self.commands.push_back(Command::Send {
            conn,
            message: Message::Txs {
                txs: batch,
                committed,
            },
        });
    }

    pub(super) fn pump_all(&mut self, _now: Timestamp) {
        let conns: Vec<ConnId> = self.downstreams.keys().copied().collect();
        for conn in conns {
            self.pump(conn);
        }
    }

    /// Sends `conn` what it may have next: from the recent cache if it is there, else by a read.
    pub(super) fn pump(&mut self, conn: ConnId) {
        loop {
            let Some(downstream) = self.downstreams.get(&conn) else {
                return;
            };
            if !matches!(downstream.phase, DownstreamPhase::Streaming) || downstream.read_in_flight
            {
                return;
            }
            let from = downstream.next_send;
            let bound = self.send_bound(downstream);
            if from > bound {
                return;
            }
            let count = ((bound.0 - from.0 + 1) as usize).min(self.config.max_batch_txs);
            let cached_from = self.recent.front().map(|tx| tx.id);
            if cached_from.is_some_and(|first| first <= from) {
                let first = cached_from.unwrap_or(from);
                let start = (from.0 - first.0) as usize;
                let holding = self.config.partial_batches_in_flight > 0
                    && downstream.batches_in_flight.len() >= self.config.partial_batches_in_flight;
                let mut bytes = 0;
                let fitting = self
                    .recent
                    .iter()
                    .skip(start)
                    .take(count)
                    .take_while(|tx| {
                        let fits =
                            bytes == 0 || bytes + tx.payload.len() <= self.config.max_batch_bytes;
                        bytes += tx.payload.len();
                        fits
                    })
                    .count();
                let available = count.min(self.recent.len().saturating_sub(start));
                let full = fitting == self.config.max_batch_txs || fitting < available;
                if fitting == 0 || (holding && !full) {
                    // Held: the acknowledgement of a message in flight pumps again.
                    return;
                }
                let batch: Vec<Tx> = self
                    .recent
                    .iter()
                    .skip(start)
                    .take(fitting)
                    .cloned()
                    .collect();
                self.send_batch(conn, batch);
            } else {
                let max_bytes = self.config.max_batch_bytes;
                if let Some(downstream) = self.downstreams.get_mut(&conn) {
                    downstream.read_in_flight = true;
                }
                self.commands.push_back(Command::Read {
                    conn,
                    from,
                    max_count: count,
                    max_bytes,
                });
                return;
            }
        }
    }

    pub(super) fn tick_downstreams(&mut self, now: Timestamp) {
        let mut lost = Vec::new();
        let mut heartbeats = Vec::new();
        for (conn, downstream) in &mut self.downstreams {
            if now.since(downstream.last_heard) > self.config.peer_timeout {
                lost.push(*conn);
            } else if matches!(downstream.phase, DownstreamPhase::Streaming)
                && now.since(downstream.last_sent) >= self.config.heartbeat_interval
            {
                downstream.last_sent = now;
                heartbeats.push(*conn);
            }
        }
        for conn in lost {
            tracing::warn!(
                ?conn,
                "replica silent past the peer timeout; dropping its channel"
            );
            self.commands.push_back(Command::Close { conn });
            self.on_downstream_disconnected(conn);
        }
        for conn in heartbeats {
            let message = Message::Committed {
                epoch: self.epoch,
                committed: self.committed,
            };
            self.commands.push_back(Command::Send { conn, message });
        }
    }

    pub(super) fn replica_statuses(&self, now: Timestamp) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|(id, record)| {
                let lag_txs = self.last.tx_id.0.saturating_sub(record.durable.0);
                ReplicaStatus {
                    id: id.clone(),
                    address: record.address.clone(),
                    tags: record.tags.clone(),
                    acked: record.durable,
                    lag_txs,
                    lag: if lag_txs == 0 {
                        Duration::ZERO
                    } else {
                        now.since(record.caught_up_at)
                    },
                    connected: record.connected,
                }
            })
            .collect()
    }
}
