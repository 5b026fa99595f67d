//! [`Source`]: serving downstream replicas, counting their acknowledgements and, on a primary,
//! the write path.
//!
//! Every node is a source: a primary serves everything it holds, a replica (a relay) only what
//! is committed. The source owns its channels from replicas, what it remembers of each replica
//! identity, the quorum policy and, on a primary, the [`WritePath`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::replicas::Replicas;
use super::timers::Timer;
use super::writes::WritePath;
use super::{AckKind, Command, ConnId, Ctx, ReplicaStatus, Timestamp, WriteError, WriteId};
use crate::protocol::{DIVERGENCE_WINDOW, Message, PROTOCOL_VERSION, Refusal, SnapshotWish};
use crate::quorum::QuorumPolicy;
use crate::snapshot::{SnapshotChunk, SnapshotMeta};
use crate::types::{Epoch, LogPosition, NodeId, ReplicaId, Tx, TxId};

/// A replica's subscription, between `Subscribe` and the handshake read.
#[derive(Debug, Clone)]
struct Subscription {
    last: LogPosition,
    known_common: LogPosition,
    /// The highest epoch the replica has seen: no transaction of its log is of a later one.
    replica_epoch: Epoch,
    /// `known_common` is our log's base: checked against it, since the log no longer holds
    /// that transaction.
    from_base: bool,
}

/// A snapshot being sent on one channel.
#[derive(Debug)]
struct SnapshotSend {
    meta: SnapshotMeta,
    /// The next chunk to read and send; `None` until the replica said where to start.
    next_send: Option<u64>,
    /// The replica stored every chunk before this one.
    acked: u64,
}

#[derive(Debug)]
enum DownstreamPhase {
    /// Channel open, no subscription yet.
    Opened,
    /// Reading our log to compare it with the replica's.
    Handshake(Subscription),
    /// Streaming transactions from `next_send`.
    Streaming,
    /// Sending a snapshot; the replica subscribes again once it installed it.
    Snapshot(SnapshotSend),
}

/// One channel from a replica.
#[derive(Debug)]
struct Downstream {
    peer: NodeId,
    address: String,
    /// The replica's identity, known once it subscribed.
    replica: Option<ReplicaId>,
    phase: DownstreamPhase,
    next_send: TxId,
    /// The highest position the replica acknowledged as durable on this channel.
    acked: TxId,
    /// The position the replica's subscription shared with this node (its commit point):
    /// until it acknowledges more, what it needs if it subscribes again follows this.
    shared: TxId,
    window: u64,
    /// The last transaction of each `Txs` message sent and not yet acknowledged, oldest
    /// first (at most `window` entries).
    batches_in_flight: VecDeque<TxId>,
    read_in_flight: bool,
    last_heard: Timestamp,
    last_sent: Timestamp,
    committed_sent: TxId,
}

impl Downstream {
    fn is_streaming(&self) -> bool {
        matches!(self.phase, DownstreamPhase::Streaming)
    }
}

/// The source side of one database on one node. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Source {
    policy: Arc<dyn QuorumPolicy>,
    /// The write path: present exactly while this node is a primary.
    writes: Option<WritePath>,
    downstreams: BTreeMap<ConnId, Downstream>,
    /// Every replica heard from, and the durable membership.
    replicas: Replicas,
    /// The commit point moved and, with no notification delay, replicas are told once the
    /// current burst of commands has been drained.
    commit_point_dirty: bool,
    /// The latest snapshot of this node's state, sent to replicas the log cannot serve.
    snapshot: Option<SnapshotMeta>,
}

impl Source {
    /// A source under `policy` with the durable membership `members`; `writes` makes it a
    /// primary's.
    pub(super) fn new(
        policy: Arc<dyn QuorumPolicy>,
        writes: Option<WritePath>,
        members: Vec<ReplicaId>,
        snapshot: Option<SnapshotMeta>,
    ) -> Source {
        Source {
            policy,
            writes,
            downstreams: BTreeMap::new(),
            replicas: Replicas::new(members),
            commit_point_dirty: false,
            snapshot,
        }
    }

    /// The latest snapshot this node can send.
    pub(super) fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// The log starts again after an installed snapshot: it replaces any other, which may be
    /// of the history this node left.
    pub(super) fn snapshot_installed(&mut self, meta: SnapshotMeta) {
        self.snapshot = Some(meta);
    }

    /// This node rewound to `after`: a snapshot beyond it is of the history it left.
    pub(super) fn forget_snapshot_after(&mut self, after: TxId) {
        if self
            .snapshot
            .as_ref()
            .is_some_and(|meta| meta.last.tx_id > after)
        {
            self.snapshot = None;
        }
    }

    /// A snapshot of this node's state was stored: it is sent from now on (transfers in
    /// progress go on with theirs, whose file the driver keeps open).
    pub(super) fn snapshot_taken(&mut self, meta: SnapshotMeta) {
        let newer = self
            .snapshot
            .as_ref()
            .is_none_or(|current| meta.last.tx_id >= current.last.tx_id);
        if newer {
            self.snapshot = Some(meta);
        }
    }

    /// How far the log may be compacted: `up_to`, but not past the latest snapshot, nor up
    /// to what a channel still needs (the transactions after a snapshot in transfer, after
    /// the position a subscription offered, or not yet sent), except a channel that needs
    /// something before `unpin_below`. `None` when nothing may go.
    pub(super) fn compaction_limit(
        &self,
        base: crate::types::LogBase,
        committed: TxId,
        up_to: TxId,
        unpin_below: TxId,
    ) -> Option<TxId> {
        let snapshot = self.snapshot.as_ref()?.last.tx_id;
        let mut limit = up_to.min(snapshot).min(committed);
        for downstream in self.downstreams.values() {
            let needs = match &downstream.phase {
                DownstreamPhase::Opened => continue,
                DownstreamPhase::Handshake(subscription) => subscription.known_common.tx_id.next(),
                DownstreamPhase::Streaming => downstream
                    .next_send
                    .min(downstream.acked.max(downstream.shared).next()),
                DownstreamPhase::Snapshot(send) => send.meta.last.tx_id.next(),
            };
            if needs >= unpin_below {
                limit = limit.min(needs.prev());
            }
        }
        (limit > base.position.tx_id).then_some(limit)
    }

    /// The log was compacted: a channel that needs what was removed is closed, and its
    /// replica is sent a snapshot when it subscribes again.
    pub(super) fn on_compacted(&mut self, cx: &mut Ctx<'_>) {
        let first = cx.log.base().first();
        let behind: Vec<ConnId> = self
            .downstreams
            .iter()
            .filter(|(_, d)| d.is_streaming() && d.next_send < first)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in behind {
            tracing::warn!(?conn, %first, "a replica needs transactions compaction removed; it will get a snapshot");
            cx.out.push_back(Command::Close { conn });
            self.on_disconnected(cx, conn);
        }
    }

    /// The durable membership.
    pub(super) fn members(&self) -> impl Iterator<Item = &ReplicaId> {
        self.replicas.members()
    }

    /// Whether `replica` is a member.
    pub(super) fn is_member(&self, replica: &ReplicaId) -> bool {
        self.replicas.is_member(replica)
    }

    fn save_members(&self, cx: &mut Ctx<'_>) {
        let members = self.replicas.members().cloned().collect();
        cx.out.push_back(Command::SaveMembers(members));
    }

    /// An operator retires `replica` for good: it no longer counts toward the policy, which
    /// applies to waiting writes at once. Returns whether it was a member.
    pub(super) fn remove_member(&mut self, cx: &mut Ctx<'_>, replica: &ReplicaId) -> bool {
        if !self.replicas.remove_member(replica) {
            return false;
        }
        tracing::warn!(%replica, "replica removed from the membership");
        self.save_members(cx);
        self.advance_commit(cx);
        true
    }

    /// The write path, on a primary.
    pub(super) fn writes(&self) -> Option<&WritePath> {
        self.writes.as_ref()
    }

    /// The quorum policy.
    pub(super) fn policy(&self) -> &Arc<dyn QuorumPolicy> {
        &self.policy
    }

    fn ack_kind(&self) -> AckKind {
        if self.policy.is_synchronous() {
            AckKind::Quorum
        } else {
            AckKind::Async
        }
    }

    /// Takes client writes on a primary: appends what is accepted and streams it (at once, or
    /// in the next batch under an asynchronous policy).
    pub(super) fn propose(&mut self, cx: &mut Ctx<'_>, writes: Vec<(WriteId, Bytes)>) {
        let Some(write_path) = &mut self.writes else {
            return;
        };
        let txs = write_path.accept(cx, writes);
        if txs.is_empty() {
            return;
        }
        cx.log.append(txs, cx.out);
        if self.holds_back_streams(cx) {
            self.stream_later(cx);
        } else {
            // Stream at once, while the log syncs: the commit waits for both anyway.
            self.pump_all(cx);
        }
    }

    /// The coordinator renewed this primary's lease until `until` (nothing on a replica).
    pub(super) fn renew_lease(
        &mut self,
        cx: &mut Ctx<'_>,
        until: Timestamp,
        voters: Option<Vec<crate::types::NodeId>>,
        published: Option<Arc<dyn QuorumPolicy>>,
    ) {
        if let Some(writes) = &mut self.writes {
            writes.renew_lease(until, voters, published);
            // Writes may have committed while the lease was lapsing: answer them now.
            self.advance_commit(cx);
        }
    }

    /// Replaces the policy; it applies to waiting writes at once.
    pub(super) fn set_policy(&mut self, cx: &mut Ctx<'_>, policy: Arc<dyn QuorumPolicy>) {
        self.policy = policy;
        if cx.timers.stop(Timer::StreamBatch) {
            self.pump_all(cx);
        }
        self.advance_commit(cx);
    }

    /// Whether new transactions wait for the stream timer instead of going out at once: only
    /// when no commit waits for a replica, so that replicas get batches rather than a message
    /// per write batch.
    fn holds_back_streams(&self, cx: &Ctx<'_>) -> bool {
        !self.policy.is_synchronous() && !cx.config.async_stream_delay.is_zero()
    }

    fn stream_later(&mut self, cx: &mut Ctx<'_>) {
        let at = cx.now.plus(cx.config.async_stream_delay);
        cx.timers.start_unless_running(Timer::StreamBatch, at);
    }

    /// Recomputes the commit point from the policy (primary only) and answers committed
    /// writes. A primary whose lease ended moves no commit point: under an asynchronous
    /// policy its replicas would otherwise learn as committed what the next primary may lack.
    pub(super) fn advance_commit(&mut self, cx: &mut Ctx<'_>) {
        let Some(writes) = &mut self.writes else {
            return;
        };
        if !writes.may_acknowledge(cx.now) {
            return writes.end_lease_if_passed(cx);
        }
        let mut progress = self.replicas.progress();
        if let Some(voters) = writes.counted() {
            // A member the coordinator does not hold as a voter yet stays a member (the
            // policy's majority is still of the whole membership), but nothing it acknowledged
            // counts until it is published.
            for replica in progress.iter_mut().filter(|r| !voters.contains(r.id)) {
                replica.durable = crate::types::TxId::ZERO;
            }
        }
        let mut satisfied = self.policy.satisfied(&progress);
        if let Some(published) = writes.published_policy() {
            satisfied = satisfied.min(published.satisfied(&progress));
        }
        if cx.log.set_committed(satisfied, cx.out) {
            self.on_commit_advanced(cx);
        }
    }

    /// Called after the commit point moved: answer writers, serve what a relay may now serve,
    /// and arrange for replicas to learn it.
    pub(super) fn on_commit_advanced(&mut self, cx: &mut Ctx<'_>) {
        let ack = self.ack_kind();
        match &mut self.writes {
            Some(writes) => writes.answer_committed(cx, ack),
            // A relay serves only committed transactions: new ones may now be sendable.
            None => self.pump_all(cx),
        }
        // Replicas learn the commit point once per burst of events rather than once per
        // acknowledgement, and only after `commit_notify_delay`, by when the next `Txs` has
        // usually carried it: the primary's commit never waits for this message.
        if cx.config.commit_notify_delay.is_zero() {
            self.commit_point_dirty = true;
        } else {
            let at = cx.now.plus(cx.config.commit_notify_delay);
            cx.timers.start_unless_running(Timer::CommitNotify, at);
        }
    }

    /// With no notification delay, tells replicas the commit point once a burst of commands
    /// has been drained.
    pub(super) fn flush_commit_point(&mut self, cx: &mut Ctx<'_>) {
        if std::mem::take(&mut self.commit_point_dirty) {
            self.send_commit_points(cx);
        }
    }

    /// The log failed: answer every waiting write.
    pub(super) fn fail_writes(&mut self, cx: &mut Ctx<'_>, error: WriteError) {
        if let Some(writes) = &mut self.writes {
            writes.fail_all(cx, error);
        }
    }

    /// Tells every streaming replica the commit point, unless a `Txs` message already did.
    fn send_commit_points(&mut self, cx: &mut Ctx<'_>) {
        let committed = cx.log.committed();
        for (&conn, downstream) in &mut self.downstreams {
            if downstream.is_streaming() && downstream.committed_sent < committed {
                downstream.committed_sent = committed;
                let claim = cx.log.claim().clone();
                cx.out.push_back(Command::Send {
                    conn,
                    message: Message::Committed { claim, committed },
                });
            }
        }
    }

    /// A replica opened a channel.
    pub(super) fn on_connected(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        peer: NodeId,
        address: String,
    ) {
        let now = cx.now;
        self.downstreams.insert(
            conn,
            Downstream {
                peer,
                address,
                replica: None,
                phase: DownstreamPhase::Opened,
                next_send: TxId(1),
                acked: TxId::ZERO,
                shared: TxId::ZERO,
                window: 0,
                batches_in_flight: VecDeque::new(),
                read_in_flight: false,
                last_heard: now,
                last_sent: now,
                committed_sent: TxId::ZERO,
            },
        );
    }

    /// A replica's channel closed.
    pub(super) fn on_disconnected(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        if let Some(downstream) = self.downstreams.remove(&conn) {
            if let Some(replica) = &downstream.replica {
                let still_connected = self
                    .downstreams
                    .values()
                    .any(|d| d.replica.as_ref() == Some(replica) && d.is_streaming());
                self.replicas.set_connected(replica, still_connected);
            }
            // `First` picks among connected standbys: losing one may let the next take over.
            self.advance_commit(cx);
        }
    }

    /// This node rewound below what it served: its replicas may hold transactions it no longer
    /// has, so every channel closes and each replica resolves the difference when it
    /// subscribes again.
    pub(super) fn drop_downstreams(&mut self, cx: &mut Ctx<'_>) {
        let conns: Vec<ConnId> = self.downstreams.keys().copied().collect();
        for conn in conns {
            tracing::info!(?conn, "closing a replica's channel after a rewind");
            cx.out.push_back(Command::Close { conn });
            self.on_disconnected(cx, conn);
        }
    }

    fn refuse(&mut self, cx: &mut Ctx<'_>, conn: ConnId, refusal: Refusal) {
        tracing::warn!(?conn, %refusal, "refusing replica");
        cx.out.push_back(Command::Send {
            conn,
            message: Message::Refused(refusal),
        });
        cx.out.push_back(Command::Close { conn });
        self.on_disconnected(cx, conn);
    }

    /// The last transaction this node serves to its replicas: everything it has if primary,
    /// only committed transactions if it is itself a replica.
    fn serve_limit(&self, cx: &Ctx<'_>) -> TxId {
        if self.writes.is_some() {
            cx.log.last().tx_id
        } else {
            cx.log.committed()
        }
    }

    /// A message from a replica.
    pub(super) fn on_message(&mut self, cx: &mut Ctx<'_>, conn: ConnId, message: Message) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.last_heard = cx.now;
        match message {
            subscribe @ Message::Subscribe { .. } => self.on_subscribe(cx, conn, subscribe),
            Message::Ack { durable } => self.on_ack(cx, conn, durable),
            Message::SnapshotAck { digest, next } => self.on_snapshot_ack(cx, conn, digest, next),
            other => {
                tracing::warn!(?conn, message = ?other, "unexpected message from a replica");
            }
        }
    }

    fn on_subscribe(&mut self, cx: &mut Ctx<'_>, conn: ConnId, subscribe: Message) {
        let Message::Subscribe {
            version,
            database,
            claim,
            last,
            known_common,
            window,
            tags,
            replica_database,
            snapshot: wish,
        } = subscribe
        else {
            return;
        };
        let base = cx.log.base().position;
        let subscription = Subscription {
            last,
            known_common,
            replica_epoch: claim.epoch,
            from_base: base.tx_id > TxId::ZERO && known_common.tx_id == base.tx_id,
        };
        let Some(downstream) = self.downstreams.get(&conn) else {
            return;
        };
        let peer = downstream.peer.clone();
        if version != PROTOCOL_VERSION {
            let refusal = Refusal::ProtocolVersion {
                source_version: PROTOCOL_VERSION,
                replica: version,
            };
            return self.refuse(cx, conn, refusal);
        }
        if database != cx.config.database {
            return self.refuse(cx, conn, Refusal::UnknownDatabase(database));
        }
        if let Some(allowed) = &cx.config.allowed_replicators
            && !allowed.contains(&peer)
        {
            return self.refuse(cx, conn, Refusal::NotAllowed(peer.0));
        }
        // A leased primary without a lease began its epoch on its own (at a restart, or
        // before the coordinator answered): a replica that recorded that claim would refuse
        // the epoch the coordinator grants next. Serve no one until the lease comes.
        if self
            .writes
            .as_ref()
            .is_some_and(|writes| !writes.may_acknowledge(cx.now))
        {
            return self.refuse(cx, conn, Refusal::NoLease);
        }
        if claim.epoch > cx.log.epoch() {
            if let Some(writes) = &mut self.writes {
                writes.fence(cx, claim.epoch);
            }
            let refusal = Refusal::StaleSource {
                source_epoch: cx.log.epoch(),
                replica: claim.epoch,
            };
            return self.refuse(cx, conn, refusal);
        }
        // The replica follows another primary of our epoch: two promotions raced to it. The
        // replica stays with the one it recorded first, and a primary stops writing, since it
        // cannot know that the quorum it needs is not already the other's.
        if let Some(taken) = Refusal::epoch_taken(cx.log.claim(), &claim) {
            if let (Some(writes), Some(other)) = (&mut self.writes, claim.primary.clone()) {
                writes.fence_taken(cx, other);
            }
            return self.refuse(cx, conn, taken);
        }
        let serve_limit = self.serve_limit(cx);
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        let replica = ReplicaId::new(peer, replica_database);
        if !self.replicas.can_join(&replica) {
            tracing::warn!(%replica, "membership full; refusing a new replica");
            return self.refuse(cx, conn, Refusal::NotAllowed(replica.to_string()));
        }
        let address = downstream.address.clone();
        self.replicas.subscribed(&replica, address, tags, cx.now);
        downstream.replica = Some(replica);
        downstream.window = u64::from(window.max(1));
        // The transactions the replica needs next were compacted away (or it asks for a
        // snapshot, holding nothing): it starts from the latest snapshot instead.
        let compacted = subscription.known_common.tx_id < base.tx_id;
        let needed = compacted || wish == SnapshotWish::Need;
        let preferred = wish == SnapshotWish::Prefer
            && self
                .snapshot
                .as_ref()
                .is_some_and(|meta| meta.last.tx_id > TxId::ZERO);
        if needed || preferred {
            return match self.snapshot.clone() {
                Some(meta) => self.offer_snapshot(cx, conn, meta),
                None => {
                    // One is taken for the replica's next attempt.
                    cx.out.push_back(Command::TakeSnapshot);
                    let first = base.tx_id.next();
                    self.refuse(cx, conn, Refusal::SnapshotUnavailable { first })
                }
            };
        }
        if subscription.from_base && subscription.known_common.hash != base.hash {
            let refusal = Refusal::CommittedDivergence {
                tx_id: base.tx_id,
                replica_hash: subscription.known_common.hash,
                source_hash: Some(base.hash),
            };
            return self.refuse(cx, conn, refusal);
        }
        // A relay whose last served transaction is its log's base (it holds nothing beyond a
        // snapshot yet) cannot read it: its base tells a lag from another history, as that
        // transaction would in `finish_handshake`.
        let log_base = cx.log.base();
        if self.writes.is_none()
            && base.tx_id > TxId::ZERO
            && serve_limit == base.tx_id
            && subscription.known_common.tx_id > base.tx_id
        {
            let refusal = if log_base.epoch > subscription.replica_epoch {
                Refusal::CommittedDivergence {
                    tx_id: subscription.known_common.tx_id,
                    replica_hash: subscription.known_common.hash,
                    source_hash: None,
                }
            } else {
                Refusal::SourceBehind {
                    source_last: serve_limit,
                }
            };
            return self.refuse(cx, conn, refusal);
        }
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.read_in_flight = true;
        // Our log holds nothing at the base itself: compare from the transaction after it.
        let known = subscription.known_common.tx_id.0 + u64::from(subscription.from_base);
        // Beyond what a relay serves, its last served transaction tells a lagging relay from
        // a history the replica does not share (see `finish_handshake`).
        let from = if self.writes.is_some() {
            known.max(1)
        } else {
            known.min(serve_limit.0).max(1)
        };
        let to = subscription
            .last
            .tx_id
            .0
            .min(known + DIVERGENCE_WINDOW as u64);
        downstream.phase = DownstreamPhase::Handshake(subscription);
        cx.out.push_back(Command::Read {
            conn,
            from: TxId(from),
            max_count: (to.saturating_sub(from) + 1) as usize,
            max_bytes: usize::MAX,
        });
    }

    fn offer_snapshot(&mut self, cx: &mut Ctx<'_>, conn: ConnId, meta: SnapshotMeta) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        tracing::info!(?conn, last = %meta.last.tx_id, bytes = meta.bytes, "offering a snapshot to a replica");
        downstream.phase = DownstreamPhase::Snapshot(SnapshotSend {
            meta: meta.clone(),
            next_send: None,
            acked: 0,
        });
        cx.out.push_back(Command::Send {
            conn,
            message: Message::SnapshotOffer {
                claim: cx.log.claim().clone(),
                meta,
            },
        });
    }

    fn on_snapshot_ack(&mut self, cx: &mut Ctx<'_>, conn: ConnId, digest: [u8; 32], next: u64) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        let DownstreamPhase::Snapshot(send) = &mut downstream.phase else {
            return;
        };
        if send.meta.digest != digest || next > send.meta.chunks {
            tracing::warn!(
                ?conn,
                "snapshot acknowledgement for another snapshot; closing"
            );
            cx.out.push_back(Command::Close { conn });
            return self.on_disconnected(cx, conn);
        }
        send.acked = send.acked.max(next);
        // The first acknowledgement says where the replica resumes.
        send.next_send.get_or_insert(next);
        self.pump_snapshot(cx, conn);
    }

    /// Reads the next chunk for `conn` if the replica's window has room.
    fn pump_snapshot(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        let window = u64::from(cx.config.snapshot_window.max(1));
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        let DownstreamPhase::Snapshot(send) = &downstream.phase else {
            return;
        };
        let Some(next) = send.next_send else { return };
        if downstream.read_in_flight || next >= send.meta.chunks || next >= send.acked + window {
            return;
        }
        let digest = send.meta.digest;
        downstream.read_in_flight = true;
        cx.out.push_back(Command::SnapshotRead {
            conn,
            digest,
            index: next,
        });
    }

    /// A chunk read for `conn`: send it and read the next.
    pub(super) fn on_snapshot_chunk(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        chunk: Option<SnapshotChunk>,
    ) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.read_in_flight = false;
        let DownstreamPhase::Snapshot(send) = &mut downstream.phase else {
            return;
        };
        let Some(chunk) = chunk.filter(|chunk| Some(chunk.index) == send.next_send) else {
            tracing::warn!(
                ?conn,
                "the snapshot in transfer cannot be read; closing the channel"
            );
            cx.out.push_back(Command::Close { conn });
            return self.on_disconnected(cx, conn);
        };
        send.next_send = Some(chunk.index + 1);
        downstream.last_sent = cx.now;
        cx.out.push_back(Command::Send {
            conn,
            message: Message::SnapshotChunk {
                index: chunk.index,
                data: chunk.data,
                hash: chunk.hash,
            },
        });
        self.pump_snapshot(cx, conn);
    }

    fn on_ack(&mut self, cx: &mut Ctx<'_>, conn: ConnId, durable: LogPosition) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        if !downstream.is_streaming() {
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
        if let Some(replica) = &downstream.replica {
            let caught_up = acked >= cx.log.last().tx_id;
            self.replicas
                .acknowledged(replica, acked, caught_up, cx.now);
        }
        // The acknowledgement opened the window; under an asynchronous policy what it lets
        // through joins the next batch.
        if self.holds_back_streams(cx) {
            self.stream_later(cx);
        } else {
            self.pump(cx, conn);
        }
        self.advance_commit(cx);
    }

    /// A read for a replica's channel completed. `primary` is the primary's address as this
    /// node knows it, named to replicas that subscribe (`None` on the primary itself).
    pub(super) fn on_read(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        txs: Vec<Tx>,
        primary: Option<&str>,
    ) {
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.read_in_flight = false;
        match std::mem::replace(&mut downstream.phase, DownstreamPhase::Opened) {
            DownstreamPhase::Handshake(subscription) => {
                self.finish_handshake(cx, conn, subscription, txs, primary);
            }
            DownstreamPhase::Streaming => {
                downstream.phase = DownstreamPhase::Streaming;
                let from = downstream.next_send;
                let batch: Vec<Tx> = txs.into_iter().skip_while(|tx| tx.id < from).collect();
                if batch.first().is_some_and(|tx| tx.id == from) {
                    self.send_batch(cx, conn, batch);
                }
                self.pump(cx, conn);
            }
            phase @ (DownstreamPhase::Opened | DownstreamPhase::Snapshot(_)) => {
                downstream.phase = phase;
            }
        }
    }

    /// Finishes a handshake with our transactions from `known_common` (or just after it).
    fn finish_handshake(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        subscription: Subscription,
        ours: Vec<Tx>,
        primary: Option<&str>,
    ) {
        let limit = self.serve_limit(cx);
        let ours: Vec<Tx> = ours.into_iter().filter(|tx| tx.id <= limit).collect();
        let known = subscription.known_common;
        let mut rest = ours.as_slice();
        if known.tx_id > TxId::ZERO && !subscription.from_base {
            match ours.first() {
                Some(tx) if tx.id == known.tx_id && tx.hash == known.hash => rest = &ours[1..],
                Some(tx) if tx.id == known.tx_id => {
                    let refusal = Refusal::CommittedDivergence {
                        tx_id: known.tx_id,
                        replica_hash: known.hash,
                        source_hash: Some(tx.hash),
                    };
                    return self.refuse(cx, conn, refusal);
                }
                // A primary holds everything any replica of its history committed: a replica
                // that committed beyond it followed another history (an old primary
                // rejoining after a forced promotion, say), and an operator must decide.
                _ if self.writes.is_some() => {
                    let refusal = Refusal::CommittedDivergence {
                        tx_id: known.tx_id,
                        replica_hash: known.hash,
                        source_hash: None,
                    };
                    return self.refuse(cx, conn, refusal);
                }
                // The relay's last committed transaction is of an epoch the replica never saw,
                // so the replica's log lacks it, and what the replica committed beyond it is
                // another history: not a lag to wait out.
                Some(tx) if tx.id < known.tx_id && tx.epoch > subscription.replica_epoch => {
                    let refusal = Refusal::CommittedDivergence {
                        tx_id: known.tx_id,
                        replica_hash: known.hash,
                        source_hash: None,
                    };
                    return self.refuse(cx, conn, refusal);
                }
                // A relay may simply lag: the replica retries.
                _ => {
                    return self.refuse(cx, conn, Refusal::SourceBehind { source_last: limit });
                }
            }
        }
        let last = subscription.last;
        let matches_last = last.tx_id == known.tx_id
            || rest
                .iter()
                .any(|tx| tx.id == last.tx_id && tx.hash == last.hash);
        if !matches_last {
            let message = Message::Diverged {
                claim: cx.log.claim().clone(),
                source_hashes: rest.iter().map(|tx| tx.hash).collect(),
                source_last: limit,
            };
            // The downstream is back in `Opened` (the caller took its phase) for a new
            // subscription from the common point the replica will find.
            cx.out.push_back(Command::Send { conn, message });
            return;
        }
        let committed = cx.log.committed();
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.phase = DownstreamPhase::Streaming;
        downstream.next_send = last.tx_id.next();
        downstream.shared = known.tx_id;
        downstream.committed_sent = committed;
        let replica = downstream.replica.clone();
        if let Some(replica) = replica {
            self.replicas.set_connected(&replica, true);
            if self.replicas.join(&replica) {
                tracing::info!(%replica, "replica joins the membership");
                // Queued before anything its acknowledgements can commit.
                self.save_members(cx);
            }
        }
        cx.out.push_back(Command::Send {
            conn,
            message: Message::Accepted {
                claim: cx.log.claim().clone(),
                committed,
                primary: primary.map(str::to_string),
            },
        });
        self.pump(cx, conn);
        self.advance_commit(cx);
    }

    /// How far `downstream` may be sent: the serve limit, within the replica's window.
    fn send_bound(&self, cx: &Ctx<'_>, downstream: &Downstream) -> TxId {
        let window_end = TxId(downstream.acked.0 + downstream.window);
        self.serve_limit(cx).min(window_end)
    }

    fn send_batch(&mut self, cx: &mut Ctx<'_>, conn: ConnId, mut batch: Vec<Tx>) {
        let Some(downstream) = self.downstreams.get(&conn) else {
            return;
        };
        let bound = self.send_bound(cx, downstream);
        batch.retain(|tx| tx.id <= bound);
        let Some(last_id) = batch.last().map(|tx| tx.id) else {
            return;
        };
        let committed = cx.log.committed();
        let Some(downstream) = self.downstreams.get_mut(&conn) else {
            return;
        };
        downstream.next_send = last_id.next();
        downstream.committed_sent = committed;
        downstream.batches_in_flight.push_back(last_id);
        cx.out.push_back(Command::Send {
            conn,
            message: Message::Txs {
                claim: cx.log.claim().clone(),
                txs: batch,
                committed,
            },
        });
    }

    /// Sends every replica what it may have next.
    pub(super) fn pump_all(&mut self, cx: &mut Ctx<'_>) {
        let conns: Vec<ConnId> = self.downstreams.keys().copied().collect();
        for conn in conns {
            self.pump(cx, conn);
        }
    }

    /// Sends `conn` what it may have next: from the recent cache if it is there, else by a read.
    fn pump(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        loop {
            let Some(downstream) = self.downstreams.get(&conn) else {
                return;
            };
            if !downstream.is_streaming() || downstream.read_in_flight {
                return;
            }
            let from = downstream.next_send;
            let bound = self.send_bound(cx, downstream);
            if from > bound {
                return;
            }
            let count = ((bound.0 - from.0 + 1) as usize).min(cx.config.max_batch_txs);
            let recent = cx.log.recent_cache();
            let cached_from = recent.front().map(|tx| tx.id);
            if cached_from.is_some_and(|first| first <= from) {
                let first = cached_from.unwrap_or(from);
                let start = (from.0 - first.0) as usize;
                let max_batch_bytes = cx.config.max_batch_bytes;
                let holding = cx.config.partial_batches_in_flight > 0
                    && downstream.batches_in_flight.len() >= cx.config.partial_batches_in_flight;
                let mut bytes = 0;
                let fitting = recent
                    .iter()
                    .skip(start)
                    .take(count)
                    .take_while(|tx| {
                        let fits = bytes == 0 || bytes + tx.payload.len() <= max_batch_bytes;
                        bytes += tx.payload.len();
                        fits
                    })
                    .count();
                let available = count.min(recent.len().saturating_sub(start));
                let full = fitting == cx.config.max_batch_txs || fitting < available;
                if fitting == 0 || (holding && !full) {
                    // Held: the acknowledgement of a message in flight pumps again.
                    return;
                }
                let batch: Vec<Tx> = recent.iter().skip(start).take(fitting).cloned().collect();
                self.send_batch(cx, conn, batch);
            } else {
                if let Some(downstream) = self.downstreams.get_mut(&conn) {
                    downstream.read_in_flight = true;
                }
                cx.out.push_back(Command::Read {
                    conn,
                    from,
                    max_count: count,
                    max_bytes: cx.config.max_batch_bytes,
                });
                return;
            }
        }
    }

    /// Streams held-back transactions and notifies commit points whose timers are due, times
    /// out waiting writes, drops replicas silent past the peer timeout and sends heartbeats on
    /// quiet channels.
    pub(super) fn on_tick(&mut self, cx: &mut Ctx<'_>) {
        if cx.timers.expire(Timer::StreamBatch, cx.now) {
            self.pump_all(cx);
        }
        if cx.timers.expire(Timer::CommitNotify, cx.now) {
            self.send_commit_points(cx);
        }
        if let Some(writes) = &mut self.writes {
            writes.expire(cx);
            writes.end_lease_if_passed(cx);
        }
        let now = cx.now;
        let mut lost = Vec::new();
        let mut heartbeats = Vec::new();
        for (conn, downstream) in &mut self.downstreams {
            if now.since(downstream.last_heard) > cx.config.peer_timeout {
                lost.push(*conn);
            } else if downstream.is_streaming()
                && now.since(downstream.last_sent) >= cx.config.heartbeat_interval
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
            cx.out.push_back(Command::Close { conn });
            self.on_disconnected(cx, conn);
        }
        for conn in heartbeats {
            let message = Message::Committed {
                claim: cx.log.claim().clone(),
                committed: cx.log.committed(),
            };
            cx.out.push_back(Command::Send { conn, message });
        }
    }

    /// What this node knows of its replicas and members; `last` is its own last transaction.
    pub(super) fn replica_statuses(&self, now: Timestamp, last: TxId) -> Vec<ReplicaStatus> {
        self.replicas.statuses(now, last)
    }

    /// On a primary: whether the replicas connected now could commit a new write under the
    /// policy (as if each acknowledged everything); `None` elsewhere. `false` means writes
    /// wait until more replicas connect.
    pub(super) fn policy_met_by_connected(&self) -> Option<bool> {
        self.writes.as_ref()?;
        let mut progress = self.replicas.progress();
        for replica in &mut progress {
            replica.durable = if replica.connected {
                TxId(u64::MAX)
            } else {
                TxId::ZERO
            };
        }
        Some(self.policy.satisfied(&progress) == TxId(u64::MAX))
    }
}
