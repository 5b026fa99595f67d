//! [`Upstream`]: a replica following its source: subscribing, verifying and storing what it
//! sends, acknowledging, resolving divergence, and reconnecting.
//!
//! Present exactly while this node is a replica. It never commits by itself: the methods that
//! learn the source's commit point return it, and the engine commits what this node holds
//! durably, so that the [`Source`](super::source::Source) serving this node's own replicas
//! hears of it.

use std::time::Duration;

use super::local_log::NotExtending;
use super::{
    Command, ConnId, Ctx, LinkErrorCause, LinkTrouble, ReplicationError, Timestamp, UpstreamState,
};
use crate::protocol::{DIVERGENCE_WINDOW, Message, PROTOCOL_VERSION, Refusal, SnapshotWish};
use crate::snapshot::{SnapshotChunk, SnapshotError, SnapshotMeta};
use crate::types::{Epoch, EpochClaim, LogBase, LogPosition, Tx, TxHash, TxId};

/// The link to the source.
#[derive(Debug)]
enum Link {
    Idle {
        retry_at: Timestamp,
        backoff: Duration,
    },
    Connecting {
        backoff: Duration,
    },
    /// Reading our own transaction at `probe`, to offer it as common ground.
    Probing {
        conn: ConnId,
        probe: TxId,
    },
    Subscribing {
        conn: ConnId,
        since: Timestamp,
        /// The common position the subscription offered: the source compares after it.
        known_common: LogPosition,
    },
    Resolving {
        conn: ConnId,
        source_epoch: Epoch,
        source_hashes: Vec<TxHash>,
        source_last: TxId,
        base: LogPosition,
    },
    Streaming {
        conn: ConnId,
        source_epoch: Epoch,
        source_committed: TxId,
        last_heard: Timestamp,
        last_ack: Timestamp,
        /// When streaming began, and this node's commit point then: the catch-up rate.
        since: Timestamp,
        committed_then: TxId,
        /// Whether this node has caught up with the source's commit point on this channel.
        caught_up: bool,
    },
    /// Reading our own transaction at the position of the snapshot the source offered: if we
    /// hold it, with the same hash, we share the source's history up to there and subscribe
    /// from it instead of installing (which would drop what we hold beyond it).
    CheckingOffer {
        conn: ConnId,
        meta: SnapshotMeta,
    },
    /// Receiving the snapshot the source offered (chunks from `Upstream::partial`'s count).
    ReceivingSnapshot {
        conn: ConnId,
        last_heard: Timestamp,
    },
    /// Every chunk is stored; the driver installs the snapshot. The channel stays open (the
    /// replica subscribes again on it), kept alive by acknowledgements.
    InstallingSnapshot {
        /// `None` once the channel closed: the subscription then follows on a new one.
        conn: Option<ConnId>,
        last_ack: Timestamp,
    },
    Stopped(ReplicationError),
}

/// A snapshot received from the source, in part or whole, and how the transfer goes.
#[derive(Clone, Debug)]
struct PartialSnapshot {
    meta: SnapshotMeta,
    /// Chunks `0..next` are stored.
    next: u64,
    /// Bytes stored.
    bytes: u64,
    /// When this connection's transfer began, and the bytes stored then.
    since: Timestamp,
    bytes_at_start: u64,
}

/// How many of the source's commit points a replica remembers while it has not reached
/// them, to measure its lag in time.
const PENDING_COMMITS: usize = 64;

/// The link failing, from its first failure until the source accepts a subscription again.
#[derive(Clone, Debug)]
struct Trouble {
    cause: LinkErrorCause,
    message: String,
    attempts: u64,
    first_at: Timestamp,
    last_at: Timestamp,
}

/// What a source's `Diverged` told us: its epoch, its hashes after the position we offered, and
/// its last transaction.
#[derive(Debug)]
struct SourceWindow {
    epoch: Epoch,
    hashes: Vec<TxHash>,
    last: TxId,
}

/// A replica's side of replication. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Upstream {
    /// The source's address, as the transport dials it.
    address: String,
    link: Link,
    /// The primary's address, learned from the source's `Accepted`.
    primary_hint: Option<String>,
    /// Why the link last failed, until the source accepts a subscription again.
    trouble: Option<Trouble>,
    /// Failures since this node started, by cause (indexed as [`LinkErrorCause::ALL`]).
    errors: [u64; LinkErrorCause::ALL.len()],
    /// Connections dialled since this node started.
    connects: u64,
    /// The source's commit point as last heard, kept while disconnected.
    source_seen: Option<TxId>,
    /// The source's commit points this node has not reached yet, with when each was first
    /// heard, oldest first (at most [`PENDING_COMMITS`]): the oldest one's age is the
    /// replica's lag in time, as `pg_stat_replication`'s replay lag measures it.
    pending_commits: std::collections::VecDeque<(TxId, Timestamp)>,
    /// Reconnection jitter: xorshift64* from the configured seed.
    rng: u64,
    /// While the source's history lacks our commit point: the lower position the next
    /// subscription offers instead, searching back for the last transaction we share.
    search_from: Option<TxId>,
    /// Whether one rewind is allowed ([`EngineConfig::allow_rewind`](super::EngineConfig)):
    /// spent by the first, so that a later divergence stops again for an operator to look.
    rewind_allowed: bool,
    /// The snapshot being received, kept across reconnections so that a transfer resumes.
    partial: Option<PartialSnapshot>,
    /// Finding the last transaction shared with the source needs transactions compaction
    /// removed from this log: with a rewind allowed, this replica starts again from the
    /// source's snapshot instead, and asks for one.
    wants_snapshot: bool,
}

impl Upstream {
    /// Follows the source at `address`, dialling it at `now`.
    pub(super) fn new(
        address: String,
        now: Timestamp,
        backoff: Duration,
        seed: u64,
        rewind_allowed: bool,
        partial: Option<(SnapshotMeta, u64)>,
    ) -> Upstream {
        Upstream {
            address,
            link: Link::Idle {
                retry_at: now,
                backoff,
            },
            primary_hint: None,
            trouble: None,
            errors: [0; LinkErrorCause::ALL.len()],
            connects: 0,
            source_seen: None,
            pending_commits: std::collections::VecDeque::new(),
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
            search_from: None,
            rewind_allowed,
            wants_snapshot: false,
            partial: partial.map(|(meta, next)| {
                // Chunks are not all of one size: the count is exact, the bytes an estimate.
                let bytes = meta.bytes / meta.chunks.max(1) * next;
                PartialSnapshot {
                    meta,
                    next,
                    bytes,
                    since: now,
                    bytes_at_start: bytes,
                }
            }),
        }
    }

    /// The snapshot transfer in progress or paused, as status shows it.
    pub(super) fn snapshot_progress(&self, now: Timestamp) -> Option<super::SnapshotProgress> {
        let partial = self.partial.as_ref()?;
        let elapsed = now.since(partial.since);
        let sent = partial.bytes.saturating_sub(partial.bytes_at_start);
        let rate = if elapsed.is_zero() {
            0
        } else {
            (sent as f64 / elapsed.as_secs_f64()) as u64
        };
        Some(super::SnapshotProgress {
            last: partial.meta.last.tx_id,
            chunks_done: partial.next,
            chunks: partial.meta.chunks,
            bytes_done: partial.bytes,
            bytes: partial.meta.bytes,
            bytes_per_second: rate,
            installing: matches!(self.link, Link::InstallingSnapshot { .. }),
        })
    }

    /// The link's state, as status shows it.
    pub(super) fn state(&self) -> UpstreamState {
        match &self.link {
            Link::Idle { .. } => UpstreamState::Disconnected,
            Link::Connecting { .. } => UpstreamState::Connecting,
            Link::Probing { .. } | Link::Subscribing { .. } | Link::CheckingOffer { .. } => {
                UpstreamState::Subscribing
            }
            Link::Resolving { .. } => UpstreamState::ResolvingDivergence,
            Link::Streaming { .. } => UpstreamState::Streaming,
            Link::ReceivingSnapshot { .. } => UpstreamState::ReceivingSnapshot,
            Link::InstallingSnapshot { .. } => UpstreamState::InstallingSnapshot,
            Link::Stopped(error) => UpstreamState::Stopped(error.to_string()),
        }
    }

    /// The error that stopped replication, or else why the link last failed.
    pub(super) fn last_error(&self) -> Option<String> {
        match &self.link {
            Link::Stopped(error) => Some(error.to_string()),
            _ => self.trouble.as_ref().map(|t| t.message.clone()),
        }
    }

    /// The link failing, as status shows it; `None` while it works.
    pub(super) fn trouble(&self, now: Timestamp) -> Option<LinkTrouble> {
        let trouble = self.trouble.as_ref()?;
        Some(LinkTrouble {
            cause: trouble.cause,
            message: self.last_error().unwrap_or_else(|| trouble.message.clone()),
            attempts: trouble.attempts,
            since_last_attempt: now.since(trouble.last_at),
            since_first: now.since(trouble.first_at),
        })
    }

    /// The link's failures since this node started, by cause, every cause listed.
    pub(super) fn errors_by_cause(&self) -> Vec<(LinkErrorCause, u64)> {
        LinkErrorCause::ALL.into_iter().zip(self.errors).collect()
    }

    /// Connections to the source dialled since this node started.
    pub(super) fn connects(&self) -> u64 {
        self.connects
    }

    /// The source's address.
    pub(super) fn address(&self) -> &str {
        &self.address
    }

    /// Records a failure of the link. Logged as a warning when its cause differs from the
    /// last one's (an operator learns of each new problem once, not at every retry), at debug
    /// level otherwise.
    fn failed(&mut self, cx: &Ctx<'_>, cause: LinkErrorCause, message: String) {
        if let Some(count) = LinkErrorCause::ALL
            .iter()
            .position(|c| *c == cause)
            .and_then(|index| self.errors.get_mut(index))
        {
            *count += 1;
        }
        match &mut self.trouble {
            Some(trouble) if trouble.cause == cause => {
                tracing::debug!(source = %self.address, %cause, attempts = trouble.attempts + 1, error = %message, "replication from the source still failing");
                trouble.attempts += 1;
                trouble.last_at = cx.now;
                trouble.message = message;
            }
            _ => {
                let attempts = self.trouble.as_ref().map_or(0, |t| t.attempts) + 1;
                // A stop is logged as an error by `stop` itself: nothing retries.
                if cause != LinkErrorCause::Stopped {
                    tracing::warn!(source = %self.address, %cause, attempts, error = %message, "replication from the source failing; retrying");
                }
                let first_at = self.trouble.as_ref().map_or(cx.now, |t| t.first_at);
                self.trouble = Some(Trouble {
                    cause,
                    message,
                    attempts,
                    first_at,
                    last_at: cx.now,
                });
            }
        }
    }

    /// The error that stopped replication, if any.
    pub(super) fn stopped(&self) -> Option<&ReplicationError> {
        match &self.link {
            Link::Stopped(error) => Some(error),
            _ => None,
        }
    }

    /// The channel to the source, while one is open.
    pub(super) fn conn(&self) -> Option<ConnId> {
        match &self.link {
            Link::Probing { conn, .. }
            | Link::CheckingOffer { conn, .. }
            | Link::Subscribing { conn, .. }
            | Link::Resolving { conn, .. }
            | Link::Streaming { conn, .. }
            | Link::ReceivingSnapshot { conn, .. }
            | Link::InstallingSnapshot {
                conn: Some(conn), ..
            } => Some(*conn),
            _ => None,
        }
    }

    /// Whether a read of our own log for divergence resolution on `conn` is outstanding.
    pub(super) fn is_resolving_on(&self, conn: ConnId) -> bool {
        match self.link {
            Link::Resolving { conn: reading, .. }
            | Link::Probing { conn: reading, .. }
            | Link::CheckingOffer { conn: reading, .. } => reading == conn,
            _ => false,
        }
    }

    /// When to dial the source next, while waiting to.
    pub(super) fn retry_at(&self) -> Option<Timestamp> {
        match self.link {
            Link::Idle { retry_at, .. } => Some(retry_at),
            _ => None,
        }
    }

    /// The primary's address as far as this replica knows: the source's hint, or the source.
    pub(super) fn primary_address(&self) -> &str {
        self.primary_hint.as_deref().unwrap_or(&self.address)
    }

    /// Dials the source when due; drops a silent source; acknowledges as a heartbeat.
    pub(super) fn on_tick(&mut self, cx: &mut Ctx<'_>) {
        let now = cx.now;
        match &mut self.link {
            Link::Idle { retry_at, backoff } if *retry_at <= now => {
                let backoff = *backoff;
                self.link = Link::Connecting { backoff };
                self.connects += 1;
                cx.out.push_back(Command::Connect {
                    address: self.address.clone(),
                });
            }
            Link::Subscribing { conn, since, .. } if now.since(*since) > cx.config.peer_timeout => {
                let conn = *conn;
                let why = "the source did not answer the subscription";
                self.drop_link(cx, conn, LinkErrorCause::Timeout, why);
            }
            Link::Streaming {
                conn,
                last_heard,
                last_ack,
                ..
            } => {
                let conn = *conn;
                if now.since(*last_heard) > cx.config.peer_timeout {
                    let why = "the source was silent past the peer timeout";
                    self.drop_link(cx, conn, LinkErrorCause::Timeout, why);
                } else if now.since(*last_ack) >= cx.config.heartbeat_interval {
                    *last_ack = now;
                    let durable = cx.log.durable();
                    cx.out.push_back(Command::Send {
                        conn,
                        message: Message::Ack { durable },
                    });
                }
            }
            Link::ReceivingSnapshot { conn, last_heard }
                if now.since(*last_heard) > cx.config.peer_timeout =>
            {
                let conn = *conn;
                let why = "the source was silent past the peer timeout";
                self.drop_link(cx, conn, LinkErrorCause::Timeout, why);
            }
            // The source drops a silent replica: an install may take longer than that.
            Link::InstallingSnapshot {
                conn: Some(conn),
                last_ack,
            } => {
                if now.since(*last_ack) >= cx.config.heartbeat_interval
                    && let Some(partial) = &self.partial
                {
                    *last_ack = now;
                    cx.out.push_back(Command::Send {
                        conn: *conn,
                        message: Message::SnapshotAck {
                            digest: partial.meta.digest,
                            next: partial.next,
                        },
                    });
                }
            }
            _ => {}
        }
    }

    fn next_jitter(&mut self, max: Duration) -> Duration {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let max_micros = max.as_micros().max(1) as u64;
        Duration::from_micros(value % max_micros)
    }

    fn wait_before_retry(&mut self, cx: &Ctx<'_>, backoff: Duration) {
        let jitter = self.next_jitter(backoff / 2 + Duration::from_micros(1));
        let next = (backoff * 2).min(cx.config.reconnect_max);
        self.link = Link::Idle {
            retry_at: cx.now.plus(backoff / 2 + jitter),
            backoff: next,
        };
    }

    fn drop_link(&mut self, cx: &mut Ctx<'_>, conn: ConnId, cause: LinkErrorCause, why: &str) {
        tracing::debug!(?conn, why, "dropping the channel to the source");
        self.failed(cx, cause, why.to_string());
        cx.out.push_back(Command::Close { conn });
        self.wait_before_retry(cx, cx.config.reconnect_min);
    }

    /// A [`Command::Connect`] failed.
    pub(super) fn on_connect_failed(
        &mut self,
        cx: &mut Ctx<'_>,
        reason: String,
        cause: LinkErrorCause,
    ) {
        if let Link::Connecting { backoff } = self.link {
            self.failed(cx, cause, reason);
            self.wait_before_retry(cx, backoff);
        }
    }

    /// A channel to the source opened.
    pub(super) fn on_connected(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        if !matches!(self.link, Link::Connecting { .. }) {
            // Not wanted any more (stopped, or a stale attempt).
            cx.out.push_back(Command::Close { conn });
            return;
        }
        match self.search_from {
            // Compacted away: nothing older can be offered.
            Some(probe)
                if probe <= cx.log.base().position.tx_id
                    && cx.log.base().position.tx_id > TxId::ZERO =>
            {
                self.compacted_past(cx, conn, probe);
            }
            // Our hash there is needed first.
            Some(probe) if probe > TxId::ZERO => {
                self.link = Link::Probing { conn, probe };
                cx.out.push_back(Command::Read {
                    conn,
                    from: probe,
                    max_count: 1,
                    max_bytes: usize::MAX,
                });
            }
            Some(_) => self.subscribe(cx, conn, LogPosition::START),
            None => self.subscribe(cx, conn, cx.log.committed_position()),
        }
    }

    /// The search for common ground with the source reached `at`, which compaction removed
    /// from this log: with a rewind allowed, start again from the source's snapshot (its
    /// install replaces the state machine and the log, which is the rewind); otherwise stop
    /// for an operator, naming the position.
    fn compacted_past(&mut self, cx: &mut Ctx<'_>, conn: ConnId, at: TxId) {
        if self.rewind_allowed && !self.wants_snapshot && cx.config.snapshot_format.is_some() {
            tracing::warn!(%at, base = %cx.log.base().position.tx_id, "the search for common ground with the source passes this log's base; starting again from the source's snapshot, as the rewind allowed");
            self.wants_snapshot = true;
            self.search_from = None;
            return self.subscribe(cx, conn, LogPosition::START);
        }
        let error = ReplicationError::Refused(Refusal::CommittedDivergence {
            tx_id: at,
            replica_hash: cx.log.committed_position().hash,
            source_hash: None,
        });
        self.stop(cx, error);
    }

    fn subscribe(&mut self, cx: &mut Ctx<'_>, conn: ConnId, known_common: LogPosition) {
        let message = Message::Subscribe {
            version: PROTOCOL_VERSION,
            database: cx
                .config
                .source_database
                .clone()
                .unwrap_or_else(|| cx.config.database.clone()),
            claim: cx.log.claim().clone(),
            last: cx.log.last(),
            known_common,
            window: cx.config.prefetch_buffer,
            tags: cx.config.tags.clone(),
            replica_database: cx.config.database.clone(),
            snapshot: if self.wants_snapshot {
                SnapshotWish::Need
            } else if cx.config.prefer_snapshot
                && cx.config.snapshot_format.is_some()
                && cx.log.last().tx_id == TxId::ZERO
            {
                SnapshotWish::Prefer
            } else {
                SnapshotWish::Log
            },
        };
        self.link = Link::Subscribing {
            conn,
            since: cx.now,
            known_common,
        };
        cx.out.push_back(Command::Send { conn, message });
    }

    /// The channel to the source closed.
    pub(super) fn on_disconnected(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        tracing::debug!(?conn, "channel to the source closed; reconnecting");
        if matches!(self.link, Link::InstallingSnapshot { .. }) {
            // The install goes on; the subscription follows it on a new channel.
            self.link = Link::InstallingSnapshot {
                conn: None,
                last_ack: cx.now,
            };
            return;
        }
        if !matches!(self.link, Link::Stopped(_) | Link::Idle { .. }) {
            let why = "the channel to the source closed".to_string();
            self.failed(cx, LinkErrorCause::ConnectionLost, why);
        }
        self.wait_before_retry(cx, cx.config.reconnect_min);
    }

    /// A message from the source. Returns the source's commit point when it may let this
    /// replica commit.
    #[must_use]
    pub(super) fn on_message(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        message: Message,
    ) -> Option<TxId> {
        match message {
            Message::Accepted {
                claim,
                committed,
                primary,
            } => {
                self.primary_hint = Some(primary.unwrap_or_else(|| self.address.clone()));
                self.search_from = None;
                // Recorded before the acknowledgement below: from here this replica belongs
                // to the claim's primary for its epoch.
                if let Err(refusal) = cx.log.adopt_claim(&claim, cx.out) {
                    self.refused(cx, conn, refusal);
                    return None;
                }
                let epoch = claim.epoch;
                self.restart_lag(committed, cx.log.committed(), cx.now);
                match self.trouble.take() {
                    Some(trouble) => {
                        tracing::warn!(source = %self.address, failed_attempts = trouble.attempts, after = ?cx.now.since(trouble.first_at), last_cause = %trouble.cause, "replicating from the source again")
                    }
                    None => {
                        tracing::info!(?conn, %claim, %committed, last = %cx.log.last().tx_id, "streaming from source")
                    }
                }
                self.link = Link::Streaming {
                    conn,
                    source_epoch: epoch,
                    source_committed: committed,
                    last_heard: cx.now,
                    last_ack: cx.now,
                    since: cx.now,
                    committed_then: cx.log.committed(),
                    caught_up: false,
                };
                // Already there (after a snapshot that holds the source's commit point): say so.
                self.on_committed(cx.log.committed());
                cx.out.push_back(Command::Send {
                    conn,
                    message: Message::Ack {
                        durable: cx.log.durable(),
                    },
                });
                self.source_commit_point()
            }
            Message::Refused(refusal) => {
                self.refused(cx, conn, refusal);
                None
            }
            Message::Diverged {
                claim,
                source_hashes,
                source_last,
            } => {
                self.on_diverged(cx, conn, claim, source_hashes, source_last);
                None
            }
            Message::Txs {
                claim,
                txs,
                committed,
            } => {
                if !self.follow_claim(cx, conn, &claim) {
                    return None;
                }
                self.on_txs(cx, txs, committed)
            }
            Message::SnapshotOffer { claim, meta } => {
                self.on_snapshot_offer(cx, conn, claim, meta);
                None
            }
            Message::SnapshotChunk { index, data, hash } => {
                self.on_snapshot_chunk(cx, conn, SnapshotChunk { index, data, hash });
                None
            }
            Message::Committed { claim, committed } => {
                if !self.follow_claim(cx, conn, &claim) {
                    return None;
                }
                let Link::Streaming {
                    source_committed,
                    last_heard,
                    ..
                } = &mut self.link
                else {
                    return None;
                };
                *last_heard = cx.now;
                *source_committed = (*source_committed).max(committed);
                self.source_commit_point()
            }
            other => {
                tracing::warn!(?conn, message = ?other, "unexpected message from the source");
                None
            }
        }
    }

    /// Records a streaming source's claim, which moves when a relay's own source begins a
    /// newer epoch. Returns false, having dropped the channel, when the claim is refused.
    fn follow_claim(&mut self, cx: &mut Ctx<'_>, conn: ConnId, claim: &EpochClaim) -> bool {
        let Link::Streaming { source_epoch, .. } = &mut self.link else {
            return false;
        };
        *source_epoch = (*source_epoch).max(claim.epoch);
        match cx.log.adopt_claim(claim, cx.out) {
            Ok(()) => true,
            Err(refusal) => {
                self.refused(cx, conn, refusal);
                false
            }
        }
    }

    fn on_diverged(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        claim: EpochClaim,
        source_hashes: Vec<TxHash>,
        source_last: TxId,
    ) {
        // Checked, not recorded: the claim is recorded once the subscription is accepted.
        if let Err(refusal) = cx.log.check_claim(&claim) {
            return self.refused(cx, conn, refusal);
        }
        let epoch = claim.epoch;
        // The source's hashes follow the position our subscription offered, which after a
        // first round of resolution lies beyond our commit point.
        let Link::Subscribing {
            known_common: base, ..
        } = self.link
        else {
            return;
        };
        if base.tx_id < cx.log.base().position.tx_id {
            return self.compacted_past(cx, conn, base.tx_id);
        }
        let count = source_hashes.len().max(1);
        self.link = Link::Resolving {
            conn,
            source_epoch: epoch,
            source_hashes,
            source_last,
            base,
        };
        // From `base` itself, to learn its epoch too (there is none before the first, nor in a
        // log that begins after it), and one beyond the source's hashes, to see whether our
        // log goes on where the source's ends.
        let from_base = usize::from(base.tx_id > cx.log.base().position.tx_id);
        let from = if from_base == 1 {
            base.tx_id
        } else {
            base.tx_id.next()
        };
        cx.out.push_back(Command::Read {
            conn,
            from,
            max_count: count + 1 + from_base,
            max_bytes: usize::MAX,
        });
    }

    fn on_snapshot_offer(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        claim: EpochClaim,
        meta: SnapshotMeta,
    ) {
        if !matches!(self.link, Link::Subscribing { .. }) {
            return;
        }
        // Checked, not recorded: the claim is recorded once the subscription is accepted.
        if let Err(refusal) = cx.log.check_claim(&claim) {
            return self.refused(cx, conn, refusal);
        }
        let supported = match &cx.config.snapshot_format {
            Some(format) if *format == meta.format => None,
            Some(format) => Some(format.to_string()),
            None => Some("no snapshots".to_string()),
        };
        if let Some(supported) = supported {
            let error = SnapshotError::FormatMismatch {
                offered: meta.format.clone(),
                supported,
            };
            return self.stop(cx, ReplicationError::Snapshot(error));
        }
        // This replica may hold transactions beyond the snapshot (acknowledged as durable,
        // and so counted by the primary): it must not drop them. If its log holds the
        // snapshot's position with the same hash, it shares the source's history up to there.
        let base = cx.log.base().position;
        if !self.wants_snapshot && meta.last == base {
            return self.subscribe(cx, conn, base);
        }
        if !self.wants_snapshot
            && meta.last.tx_id > base.tx_id
            && meta.last.tx_id <= cx.log.last().tx_id
        {
            let from = meta.last.tx_id;
            self.link = Link::CheckingOffer { conn, meta };
            cx.out.push_back(Command::Read {
                conn,
                from,
                max_count: 1,
                max_bytes: usize::MAX,
            });
            return;
        }
        self.accept_offer(cx, conn, meta);
    }

    /// Receives the snapshot offered: resumes a transfer of it, or begins one.
    fn accept_offer(&mut self, cx: &mut Ctx<'_>, conn: ConnId, meta: SnapshotMeta) {
        let resumed = self
            .partial
            .take()
            .filter(|partial| partial.meta.digest == meta.digest);
        let mut partial = resumed.unwrap_or(PartialSnapshot {
            meta: meta.clone(),
            next: 0,
            bytes: 0,
            since: cx.now,
            bytes_at_start: 0,
        });
        partial.since = cx.now;
        partial.bytes_at_start = partial.bytes;
        tracing::info!(
            ?conn, last = %meta.last.tx_id, bytes = meta.bytes, chunks = meta.chunks, from = partial.next,
            "the source sends a snapshot"
        );
        cx.out.push_back(Command::SnapshotReceive {
            meta,
            from: partial.next,
        });
        self.partial = Some(partial);
        // The first acknowledgement waits for the driver to say how many chunks it holds.
        self.link = Link::ReceivingSnapshot {
            conn,
            last_heard: cx.now,
        };
    }

    /// The driver is ready to store the snapshot's chunks, holding `result` of them already.
    pub(super) fn on_snapshot_receiving(
        &mut self,
        cx: &mut Ctx<'_>,
        digest: [u8; 32],
        result: Result<u64, SnapshotError>,
    ) {
        let Link::ReceivingSnapshot { conn, .. } = self.link else {
            return;
        };
        let Some(partial) = self.partial.as_mut().filter(|p| p.meta.digest == digest) else {
            return;
        };
        let next = match result {
            Ok(next) => next,
            // The state machine cannot take this snapshot: an operator must look.
            Err(
                error @ (SnapshotError::Refused(_)
                | SnapshotError::FormatMismatch { .. }
                | SnapshotError::Unsupported),
            ) => {
                self.partial = None;
                return self.stop(cx, ReplicationError::Snapshot(error));
            }
            Err(error) => {
                let why = format!("cannot store the source's snapshot: {error}");
                self.failed(cx, LinkErrorCause::Snapshot, why);
                self.partial = None;
                cx.out.push_back(Command::Close { conn });
                return self.wait_before_retry(cx, cx.config.reconnect_max);
            }
        };
        if next != partial.next {
            partial.bytes = partial.meta.bytes / partial.meta.chunks.max(1) * next;
            partial.bytes_at_start = partial.bytes;
            partial.next = next;
        }
        if next >= partial.meta.chunks {
            return self.install(cx, conn);
        }
        cx.out.push_back(Command::Send {
            conn,
            message: Message::SnapshotAck { digest, next },
        });
    }

    fn on_snapshot_chunk(&mut self, cx: &mut Ctx<'_>, conn: ConnId, chunk: SnapshotChunk) {
        let Link::ReceivingSnapshot { last_heard, .. } = &mut self.link else {
            return;
        };
        *last_heard = cx.now;
        let Some(partial) = &mut self.partial else {
            return;
        };
        if chunk.index != partial.next {
            // Sent before a resumption: the one we need follows.
            return;
        }
        if let Err(error) = chunk.verify() {
            // Never stored: the transfer resumes at this chunk on a new channel.
            let why = format!("refused a snapshot chunk from the source: {error}");
            return self.drop_link(cx, conn, LinkErrorCause::Snapshot, &why);
        }
        partial.next += 1;
        partial.bytes += chunk.data.len() as u64;
        let (digest, next, done) = (
            partial.meta.digest,
            partial.next,
            partial.next >= partial.meta.chunks,
        );
        cx.out.push_back(Command::SnapshotStore { chunk });
        cx.out.push_back(Command::Send {
            conn,
            message: Message::SnapshotAck { digest, next },
        });
        if done {
            self.install(cx, conn);
        }
    }

    fn install(&mut self, cx: &mut Ctx<'_>, conn: ConnId) {
        let Some(partial) = &self.partial else { return };
        self.link = Link::InstallingSnapshot {
            conn: Some(conn),
            last_ack: cx.now,
        };
        cx.out.push_back(Command::SnapshotInstall {
            meta: partial.meta.clone(),
            keep_dropped: self.wants_snapshot,
        });
    }

    /// The driver installed the snapshot (or failed to). Returns the new base of the log when
    /// it is installed: the engine then starts the log again there.
    pub(super) fn on_snapshot_installed(
        &mut self,
        cx: &mut Ctx<'_>,
        meta: &SnapshotMeta,
        result: Result<(), SnapshotError>,
    ) -> Option<LogBase> {
        let conn = match self.link {
            Link::InstallingSnapshot { conn, .. } => conn,
            _ => return None,
        };
        self.partial = None;
        match result {
            Ok(()) => {
                if std::mem::take(&mut self.wants_snapshot) {
                    // The install replaced what the rewind would have dropped.
                    self.rewind_allowed = false;
                }
                tracing::info!(last = %meta.last.tx_id, "snapshot installed; following the source's log from there");
                Some(LogBase {
                    position: meta.last,
                    epoch: meta.last_epoch,
                })
            }
            // Damaged in storage or unreadable: fetch it again.
            Err(error @ (SnapshotError::Corrupt { .. } | SnapshotError::Io(_))) => {
                let why = format!("installing the source's snapshot failed: {error}");
                self.failed(cx, LinkErrorCause::Snapshot, why);
                if let Some(conn) = conn {
                    cx.out.push_back(Command::Close { conn });
                }
                self.wait_before_retry(cx, cx.config.reconnect_max);
                None
            }
            Err(error) => {
                self.stop(cx, ReplicationError::Snapshot(error));
                None
            }
        }
    }

    /// After an install: subscribe again from the snapshot, on the same channel if it is
    /// still open.
    pub(super) fn after_install(&mut self, cx: &mut Ctx<'_>) {
        match self.link {
            Link::InstallingSnapshot {
                conn: Some(conn), ..
            } => {
                self.subscribe(cx, conn, cx.log.committed_position());
            }
            Link::InstallingSnapshot { .. } => {
                self.link = Link::Idle {
                    retry_at: cx.now,
                    backoff: cx.config.reconnect_min,
                }
            }
            _ => {}
        }
    }

    fn refused(&mut self, cx: &mut Ctx<'_>, conn: ConnId, refusal: Refusal) {
        tracing::debug!(%refusal, "source refused the subscription");
        cx.out.push_back(Command::Close { conn });
        let cause = match refusal {
            Refusal::UnknownDatabase(_) => LinkErrorCause::UnknownDatabase,
            Refusal::NotAllowed(_) => LinkErrorCause::NotAllowed,
            _ => LinkErrorCause::Refused,
        };
        let offered = match self.link {
            Link::Subscribing { known_common, .. } => Some(known_common.tx_id),
            _ => None,
        };
        match refusal {
            // The source's history lacks the position we offered, which we committed: search
            // back for the last transaction we share, to name exactly what differs (and, if
            // allowed, rewind to it).
            Refusal::CommittedDivergence { .. } if offered.is_some_and(|at| at > TxId::ZERO) => {
                let offered = offered.unwrap_or(TxId::ZERO);
                let step =
                    (cx.log.committed().0.saturating_sub(offered.0)).max(DIVERGENCE_WINDOW as u64);
                let probe = TxId(offered.0.saturating_sub(step));
                tracing::info!(%offered, %probe, "source lacks our committed position; searching back");
                self.search_from = Some(probe);
                self.wait_before_retry(cx, cx.config.reconnect_min);
            }
            // The history itself is at stake: an operator must look.
            Refusal::CommittedDivergence { .. } | Refusal::ProtocolVersion { .. } => {
                self.stop(cx, ReplicationError::Refused(refusal));
            }
            // A new primary waits for its lease for milliseconds only: retry soon.
            Refusal::NoLease => {
                self.wait_before_retry(cx, cx.config.reconnect_min);
                self.failed(cx, cause, refusal.to_string());
            }
            // These may resolve themselves (the database created, the source catching up, the
            // permission granted), so keep trying, slowly, and show the reason.
            _ => {
                self.wait_before_retry(cx, cx.config.reconnect_max);
                let message = refusal_advice(&refusal, &self.address);
                self.failed(cx, cause, message);
            }
        }
    }

    /// Stops replication until an operator acts.
    pub(super) fn stop(&mut self, cx: &mut Ctx<'_>, error: ReplicationError) {
        self.search_from = None;
        tracing::error!(source = %self.address, %error, "replication stopped");
        self.failed(cx, LinkErrorCause::Stopped, error.to_string());
        if let Some(conn) = self.conn() {
            cx.out.push_back(Command::Close { conn });
        }
        self.link = Link::Stopped(error);
    }

    fn on_txs(&mut self, cx: &mut Ctx<'_>, txs: Vec<Tx>, committed: TxId) -> Option<TxId> {
        let Link::Streaming {
            last_heard,
            source_committed,
            ..
        } = &mut self.link
        else {
            return None;
        };
        *last_heard = cx.now;
        *source_committed = (*source_committed).max(committed);
        // Verify the whole batch before storing any of it: tampering anywhere is refused.
        let last_epoch = match cx.log.check_extends(&txs) {
            Ok((_, last_epoch)) => last_epoch,
            Err(NotExtending::Chain(error)) => {
                self.stop(cx, error.into());
                return None;
            }
            Err(NotExtending::BadEpoch { tx_id, epoch, min }) => {
                let error = ReplicationError::BadEpoch { tx_id, epoch, min };
                self.stop(cx, error);
                return None;
            }
        };
        // A relay's epoch may lag the transactions it forwards; they carry the truth.
        cx.log.raise_epoch(last_epoch, cx.out);
        cx.log.append(txs, cx.out);
        self.source_commit_point()
    }

    /// What the source reported committed, while streaming.
    pub(super) fn source_committed(&self) -> Option<TxId> {
        self.source_commit_point()
    }

    /// While streaming: for how long, and this node's commit point when it began.
    pub(super) fn streaming_since(&self, now: Timestamp) -> Option<(Duration, TxId)> {
        match self.link {
            Link::Streaming {
                since,
                committed_then,
                ..
            } => Some((now.since(since), committed_then)),
            _ => None,
        }
    }

    /// The source reported its commit point `committed` (this node's is `ours`).
    pub(super) fn saw_source_commit(&mut self, committed: TxId, ours: TxId, now: Timestamp) {
        self.source_seen = Some(
            self.source_seen
                .map_or(committed, |seen| seen.max(committed)),
        );
        if committed <= ours {
            return;
        }
        let full = self.pending_commits.len() >= PENDING_COMMITS;
        match self.pending_commits.back_mut() {
            Some((newest, _)) if *newest >= committed => {}
            // Bounded: the newest entry moves up, keeping its (earlier) time, so the lag is
            // never understated.
            Some((newest, _)) if full => *newest = committed,
            _ => self.pending_commits.push_back((committed, now)),
        }
    }

    /// The source's commit point as last heard, and for how long this node has trailed it:
    /// the age of the oldest commit point of the source it has not reached.
    pub(super) fn source_lag(&self, now: Timestamp) -> Option<(TxId, Duration)> {
        let seen = self.source_seen?;
        let lag = self
            .pending_commits
            .front()
            .map_or(Duration::ZERO, |(_, heard)| now.since(*heard));
        Some((seen, lag))
    }

    /// A new subscription was accepted: the source's commit point starts again from what it
    /// says now (it may be another source, or one that went back after a failover).
    fn restart_lag(&mut self, committed: TxId, ours: TxId, now: Timestamp) {
        self.source_seen = Some(committed);
        self.pending_commits.clear();
        if committed > ours {
            self.pending_commits.push_back((committed, now));
        }
    }

    /// This node's commit point moved: logs once per channel when it reaches the source's.
    pub(super) fn on_committed(&mut self, committed: TxId) {
        while self
            .pending_commits
            .front()
            .is_some_and(|(pending, _)| *pending <= committed)
        {
            self.pending_commits.pop_front();
        }
        if let Link::Streaming {
            source_committed,
            caught_up,
            committed_then,
            ..
        } = &mut self.link
            && !*caught_up
            && committed >= *source_committed
        {
            *caught_up = true;
            tracing::info!(
                %committed,
                from = %committed_then,
                "caught up with the source"
            );
        }
    }

    /// What the source reports committed, while streaming.
    fn source_commit_point(&self) -> Option<TxId> {
        match self.link {
            Link::Streaming {
                source_committed, ..
            } => Some(source_committed),
            _ => None,
        }
    }

    /// This node's durable position moved: acknowledge it. Returns the source's commit point,
    /// which may now be committed here.
    #[must_use]
    pub(super) fn on_durable(&mut self, cx: &mut Ctx<'_>) -> Option<TxId> {
        if let Link::Streaming { conn, .. } = self.link {
            cx.out.push_back(Command::Send {
                conn,
                message: Message::Ack {
                    durable: cx.log.durable(),
                },
            });
        }
        self.source_commit_point()
    }

    /// Our log's transactions from the divergence base, read to compare with the source's.
    pub(super) fn on_read(&mut self, cx: &mut Ctx<'_>, conn: ConnId, ours: Vec<Tx>) {
        if let Link::CheckingOffer { meta, .. } = &self.link {
            let meta = meta.clone();
            let shared = ours.first().is_some_and(|tx| tx.position() == meta.last);
            return if shared {
                tracing::info!(at = %meta.last.tx_id, "holding the source's snapshot position: following its log from there");
                self.subscribe(cx, conn, meta.last)
            } else {
                self.accept_offer(cx, conn, meta)
            };
        }
        if let Link::Probing { probe, .. } = self.link {
            return match ours.into_iter().find(|tx| tx.id == probe) {
                Some(tx) => self.subscribe(cx, conn, tx.position()),
                // Removed by retention: nothing older can be offered.
                None => {
                    let error = ReplicationError::Refused(Refusal::CommittedDivergence {
                        tx_id: probe,
                        replica_hash: cx.log.committed_position().hash,
                        source_hash: None,
                    });
                    self.stop(cx, error)
                }
            };
        }
        // Every outcome below replaces this: a new subscription on `conn`, or a stop that
        // closes it.
        let placeholder = Link::Subscribing {
            conn,
            since: cx.now,
            known_common: cx.log.committed_position(),
        };
        let Link::Resolving {
            source_epoch,
            source_hashes,
            source_last,
            base,
            ..
        } = std::mem::replace(&mut self.link, placeholder)
        else {
            return;
        };
        let source = SourceWindow {
            epoch: source_epoch,
            hashes: source_hashes,
            last: source_last,
        };
        self.resolve_divergence(cx, conn, source, base, ours);
    }

    /// Finds the last transaction this replica shares with its source and, where allowed,
    /// discards what follows it.
    fn resolve_divergence(
        &mut self,
        cx: &mut Ctx<'_>,
        conn: ConnId,
        source: SourceWindow,
        base: LogPosition,
        ours: Vec<Tx>,
    ) {
        let SourceWindow {
            epoch: source_epoch,
            hashes: source_hashes,
            last: source_last,
        } = source;
        let log_base = cx.log.base();
        let base_epoch = ours
            .iter()
            .find(|tx| tx.id == base.tx_id)
            .map(|tx| tx.epoch)
            .or((base == log_base.position).then_some(log_base.epoch));
        let ours: Vec<&Tx> = ours.iter().filter(|tx| tx.id > base.tx_id).collect();
        let mut common = base;
        let mut first_difference = None;
        for (index, tx) in ours.iter().enumerate() {
            match source_hashes.get(index) {
                Some(hash) if *hash == tx.hash => common = tx.position(),
                Some(hash) => {
                    first_difference = Some((tx.id, tx.hash, Some(*hash)));
                    break;
                }
                // The source's log ends before ours.
                None if tx.id > source_last => {
                    first_difference = Some((tx.id, tx.hash, None));
                    break;
                }
                // The source holds more than one window of hashes: compare the rest in
                // another round.
                None => break,
            }
        }
        let Some((tx_id, local_hash, source_hash)) = first_difference else {
            // Everything compared matches: the difference lies beyond this window.
            return self.subscribe(cx, conn, common);
        };
        let committed = cx.log.committed();
        let rewind = tx_id <= committed;
        if rewind && !self.rewind_allowed {
            let error = ReplicationError::CommittedDivergence {
                tx_id,
                local_hash,
                source_hash,
                committed,
            };
            return self.stop(cx, error);
        }
        // A source of a higher epoch than our last transaction supersedes our suffix: those
        // transactions were streamed by a primary that since restarted without them, so they
        // were never committed.
        let superseded = source_epoch > cx.log.last_epoch();
        if !(rewind || superseded || cx.config.allow_tx_discarding) {
            return self.stop(
                cx,
                ReplicationError::Diverged {
                    tx_id,
                    local_hash,
                    source_hash,
                },
            );
        }
        if rewind {
            tracing::warn!(
                %tx_id, %local_hash, keep = %common.tx_id, %committed, discard_to = %cx.log.last().tx_id,
                "rewinding: discarding committed transactions the source's history lacks, as allowed"
            );
        } else {
            tracing::warn!(
                %tx_id, %local_hash, keep = %common.tx_id, discard_to = %cx.log.last().tx_id,
                "discarding uncommitted transactions that diverge from the source"
            );
        }
        let common_epoch = ours
            .iter()
            .rev()
            .find(|tx| tx.id <= common.tx_id)
            .map(|tx| tx.epoch)
            .or(base_epoch)
            .unwrap_or(Epoch(0));
        self.search_from = None;
        if rewind {
            self.rewind_allowed = false;
        }
        cx.log.truncate(common, common_epoch, rewind, cx.out);
        self.subscribe(cx, conn, common);
    }
}

/// A refusal in words, with what fixes it where the source's answer alone does not say.
fn refusal_advice(refusal: &Refusal, source: &str) -> String {
    const RECREATED: &str = "if the source database was deleted and created again, it holds \
        another history: delete this replica and create it again to follow it";
    match refusal {
        Refusal::UnknownDatabase(_) => format!(
            "{refusal} on the source {source}: create it there, or point this replica at \
             another source (`repnode db update NAME --replica-of HOST:PORT/DB`)"
        ),
        Refusal::NotAllowed(identity) => format!(
            "{refusal} on the source {source}: add {identity:?} to its replicators \
             (`repnode db update NAME --replicators ...` there)"
        ),
        Refusal::EpochTaken { .. } | Refusal::StaleSource { .. } => {
            format!("{refusal} (source {source}); {RECREATED}")
        }
        Refusal::SourceBehind { .. } => format!(
            "{refusal} (source {source}): a lagging source catches up by itself; {RECREATED}"
        ),
        _ => refusal.to_string(),
    }
}
