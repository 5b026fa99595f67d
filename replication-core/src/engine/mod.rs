//! The replication engine: the whole replication logic as a state machine that performs no IO,
//! reads no clock and draws no randomness.
//!
//! # Architecture invariant
//! Nothing in this module does IO, reads a clock (`clippy.toml` bans `Instant::now` and
//! `SystemTime::now` in this crate outside the driver's one clock function), spawns tasks or
//! uses randomness. Time comes in as the `now` argument; jitter comes from a seed in the
//! configuration. The same events in the same order produce the same commands, which is what
//! lets [`crate::testing::sim`] replay any failure from its seed.
//!
//! # Parts
//! [`Engine`] routes each event to the part that owns the state it concerns; the parts never
//! call each other, so each borrows only its own state plus the shared context (the
//! configuration, the local log, the timers and the command queue):
//! - `local_log`: this node's log positions (last, durable, committed), its epoch, the recent
//!   cache and the append tokens. The only code that appends, truncates and commits.
//! - `source`: serving downstream replicas, their acknowledgements and the quorum policy, and
//!   on a primary the write path (`writes`). Every node has one.
//! - `upstream`: following a source (replica only).
//! - `external`: transactions pushed by an external replicator (external replica only).
//!
//! A node's role is which of these it has: a primary has a source with a write path; a replica
//! an upstream and a source that serves only committed transactions; an external replica the
//! pushes. Changing role is replacing a part.
//!
//! # How to drive it
//! 1. Build it with [`Engine::new`] from the log's [`LogState`] at startup.
//! 2. Feed every event with [`Engine::handle`], passing the current time. Several events may be
//!    handled before the commands are drained (a burst).
//! 3. Then drain [`Engine::poll_command`] until it returns `None` and execute the commands
//!    **in order**: an [`Command::Append`] must have returned (the transactions are readable)
//!    before a later [`Command::Send`] is executed, a [`Command::Truncate`] or
//!    [`Command::SaveEpoch`] must be durable before what follows, and [`Command::Commit`]
//!    (record the commit point and apply to the state machine) must be done before the
//!    [`Command::Reply`] after it. Outcomes of commands that are known at once (a read, a
//!    failed send) may be handled as events while draining; keep draining afterwards.
//! 4. Only once the queue is empty, read [`Engine::poll_timeout`] and call [`Engine::handle`]
//!    with [`Event::Tick`] no later than that time. `poll_timeout` only reads; every timer is
//!    set while handling events, in one table.
//!
//! Report the outcome of commands as events: [`Event::Durable`] when an append's durability
//! completes, [`Event::ReadDone`] for a read, [`Event::Connected`] / [`Event::ConnectFailed`]
//! for a connect, [`Event::LogFailed`] when the log fails.

mod command;
mod config;
mod error;
mod event;
mod external;
mod local_log;
mod replicas;
mod source;
mod status;
mod timers;
mod upstream;
mod writes;

use std::collections::VecDeque;
use std::sync::Arc;

pub use command::{AckKind, Command, WriteReceipt};
pub use config::{EngineConfig, Role, default_policy};
pub use error::{PushRefusal, ReplicationError, WriteError};
pub use event::{AppendToken, ConnId, Direction, Event, WriteId};
pub use status::{
    EngineStatus, LinkErrorCause, LinkTrouble, ReplicaStatus, Rollback, SnapshotProgress,
    UpstreamState,
};
pub use timers::Timestamp;

use crate::log::LogFailure;
use crate::quorum::QuorumPolicy;
use crate::snapshot::SnapshotMeta;
use crate::types::{Epoch, EpochClaim, LogBase, LogPosition, LogState, ReplicaId, Tx, TxId};
use external::Pushes;
use local_log::LocalLog;
use source::Source;
use timers::{Timer, TimerTable};
use upstream::Upstream;
use writes::WritePath;

/// What every part may use while it handles an event: the configuration, this node's log,
/// the timers, the command queue and the time.
struct Ctx<'a> {
    config: &'a EngineConfig,
    log: &'a mut LocalLog,
    timers: &'a mut TimerTable,
    out: &'a mut VecDeque<Command>,
    now: Timestamp,
}

/// Builds a [`Ctx`] from the engine's fields, so that it borrows only those and leaves the
/// parts free to borrow themselves.
macro_rules! cx {
    ($engine:ident) => {
        &mut Ctx {
            config: &$engine.config,
            log: &mut $engine.log,
            timers: &mut $engine.timers,
            out: &mut $engine.commands,
            now: $engine.now,
        }
    };
}

/// What a node's log holds at startup, as [`Engine::new`] needs it.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    /// The log's positions and epoch ([`TxLog::state`](crate::TxLog::state)).
    pub state: LogState,
    /// Who claimed that epoch ([`TxLog::epoch_claim`](crate::TxLog::epoch_claim)).
    pub epoch_claim: EpochClaim,
    /// The epoch of the log's last transaction (`Epoch(0)` for an empty log).
    pub last_epoch: Epoch,
    /// The membership the log last saved ([`TxLog::members`](crate::TxLog::members)).
    pub members: Vec<ReplicaId>,
    /// Where the log begins ([`TxLog::base`](crate::TxLog::base)).
    pub base: LogBase,
    /// The latest snapshot of this node's state that it can send to replicas.
    pub snapshot: Option<SnapshotMeta>,
    /// A snapshot received in part from the source: its metadata and how many chunks are
    /// stored, so that the transfer resumes there.
    pub partial_snapshot: Option<(SnapshotMeta, u64)>,
}

/// The replication engine of one database on one node. See the [module docs](self).
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    log: LocalLog,
    source: Source,
    /// Present exactly on a replica.
    upstream: Option<Upstream>,
    /// Present exactly on an external replica.
    pushes: Option<Pushes>,
    failed: Option<LogFailure>,
    timers: TimerTable,
    /// The time of the latest event.
    now: Timestamp,
    commands: VecDeque<Command>,
    last_rollback: Option<Rollback>,
}

impl Engine {
    /// Builds the engine from what the log holds at startup. A primary begins a new epoch
    /// (the first command saves it); a replica schedules its first connection.
    pub fn new(
        config: EngineConfig,
        policy: Arc<dyn QuorumPolicy>,
        recovered: Recovered,
        now: Timestamp,
    ) -> Engine {
        let Recovered {
            state,
            mut epoch_claim,
            last_epoch,
            members,
            base,
            snapshot,
            partial_snapshot,
        } = recovered;
        let me = ReplicaId::new(config.node.clone(), config.database.clone());
        // A primary that began an epoch and holds nothing durable of it, restarted as a
        // replica (an old primary restarted as one before it was repointed), gives up its
        // claim: nothing of that epoch was acknowledged through it, since a write is
        // acknowledged only once durable on the primary, so following that epoch's other
        // primary costs nothing. With transactions of its own in that epoch it keeps the claim,
        // and a second primary of the epoch is refused.
        if !matches!(config.role, Role::Primary)
            && epoch_claim.primary.as_ref() == Some(&me)
            && last_epoch < epoch_claim.epoch
        {
            epoch_claim.primary = None;
        }
        let log = LocalLog::new(
            state,
            base,
            epoch_claim,
            last_epoch,
            config.recent_cache_txs,
            64 * config.max_batch_bytes,
        );
        let (writes, upstream, pushes) = match &config.role {
            Role::Primary => (Some(WritePath::new(config.leased)), None, None),
            Role::Replica { address } => {
                let upstream = Upstream::new(
                    address.clone(),
                    now,
                    config.reconnect_min,
                    config.seed,
                    config.allow_rewind,
                    partial_snapshot,
                );
                (None, Some(upstream), None)
            }
            Role::ExternalReplica => (None, None, Some(Pushes::default())),
        };
        let is_primary = writes.is_some();
        let mut engine = Engine {
            log,
            source: Source::new(policy, writes, members, snapshot),
            upstream,
            pushes,
            failed: None,
            timers: TimerTable::default(),
            now,
            commands: VecDeque::new(),
            last_rollback: None,
            config,
        };
        // A leased primary (automatic failover) begins no epoch of its own at a restart: the
        // coordinator grants the next one, and a number it chose alone could be the one the
        // coordinator grants another node meanwhile. It begins one when asked to go above its
        // log (`min_epoch`, the granted epoch less one) or when its log's epoch names no
        // primary (a floor saved before a promotion, or a new log).
        let begins = !engine.config.leased
            || engine.config.min_epoch >= engine.log.epoch().max(last_epoch)
            || engine.log.claim().primary.is_none();
        if is_primary && begins {
            // A new epoch on every start: a replica holding transactions this primary streamed
            // but lost in a crash sees they come from an older epoch and may drop them.
            let epoch = engine
                .log
                .epoch()
                .max(last_epoch)
                .max(engine.config.min_epoch)
                .next();
            let me = engine.identity();
            engine.log.begin_epoch(epoch, me, &mut engine.commands);
        }
        engine.timers.set(Timer::Heartbeat, now);
        engine.refresh_timers();
        engine
    }

    /// The next command to execute, in order.
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.commands.is_empty() {
            // With no notification delay, replicas learn a new commit point once per burst.
            self.source.flush_commit_point(cx!(self));
        }
        self.commands.pop_front()
    }

    /// When the engine next needs an [`Event::Tick`].
    pub fn poll_timeout(&self) -> Timestamp {
        self.timers.earliest().unwrap_or(self.now)
    }

    /// Handles one event at time `now`. Time never goes back for the engine: an event with an
    /// earlier `now` than one before it is handled at the latest time seen.
    pub fn handle(&mut self, now: Timestamp, event: Event) {
        self.now = self.now.max(now);
        match event {
            Event::Propose(writes) => self.propose(writes),
            Event::Durable { token, up_to } => {
                if self.log.on_durable(token, up_to) {
                    self.on_durable_advanced();
                }
            }
            Event::Connected {
                conn,
                peer,
                address,
                direction,
            } => match (direction, &mut self.upstream) {
                (Direction::Upstream, Some(upstream)) => upstream.on_connected(cx!(self), conn),
                // Not a replica any more: the channel is not wanted.
                (Direction::Upstream, None) => self.commands.push_back(Command::Close { conn }),
                (Direction::Downstream, _) => {
                    self.source.on_connected(cx!(self), conn, peer, address)
                }
            },
            Event::ConnectFailed { reason, cause } => {
                if let Some(upstream) = &mut self.upstream {
                    upstream.on_connect_failed(cx!(self), reason, cause);
                }
            }
            Event::Disconnected { conn } => match &mut self.upstream {
                Some(upstream) if upstream.conn() == Some(conn) => {
                    upstream.on_disconnected(cx!(self), conn)
                }
                _ => self.source.on_disconnected(cx!(self), conn),
            },
            Event::Received { conn, message } => match &mut self.upstream {
                Some(upstream) if upstream.conn() == Some(conn) => {
                    let source_committed = upstream.on_message(cx!(self), conn, message);
                    self.commit_from_source(source_committed);
                }
                _ => self.source.on_message(cx!(self), conn, message),
            },
            Event::ReadDone { conn, txs } => match &mut self.upstream {
                Some(upstream) if upstream.is_resolving_on(conn) => {
                    let committed = self.log.committed();
                    upstream.on_read(cx!(self), conn, txs);
                    if self.log.committed() < committed {
                        self.source.drop_downstreams(cx!(self));
                        self.source.forget_snapshot_after(self.log.committed());
                    }
                }
                _ => {
                    let primary = self.upstream.as_ref().map(Upstream::primary_address);
                    self.source.on_read(cx!(self), conn, txs, primary);
                }
            },
            Event::Replicate { write, txs } => match &mut self.pushes {
                Some(pushes) => pushes.on_replicate(cx!(self), write, txs, self.failed.as_ref()),
                None => external::refuse(cx!(self), write, PushRefusal::NotExternalReplica),
            },
            Event::SetPolicy(policy) => self.source.set_policy(cx!(self), policy),
            Event::RemoveMember(replica) => {
                self.source.remove_member(cx!(self), &replica);
            }
            Event::LogFailed(failure) => self.on_log_failed(failure),
            Event::RolledBack(rollback) => {
                tracing::warn!(
                    from = %rollback.from,
                    to = %rollback.to,
                    location = %rollback.location,
                    "dropped transactions the new history lacks; they are kept in the rollback"
                );
                self.last_rollback = Some(rollback);
            }
            Event::Lease {
                until,
                voters,
                policy,
            } => self.source.renew_lease(cx!(self), until, voters, policy),
            Event::SnapshotChunkRead { conn, chunk } => {
                self.source.on_snapshot_chunk(cx!(self), conn, chunk)
            }
            Event::SnapshotInstalled { meta, result } => self.on_snapshot_installed(&meta, result),
            Event::SnapshotReceiving { digest, result } => {
                if let Some(upstream) = &mut self.upstream {
                    upstream.on_snapshot_receiving(cx!(self), digest, result);
                }
            }
            Event::SnapshotTaken(meta) => self.source.snapshot_taken(meta),
            Event::Compacted(base) => {
                self.log.compacted(base);
                self.source.on_compacted(cx!(self));
            }
            Event::Compact { up_to, unpin_below } => {
                let limit = self.source.compaction_limit(
                    self.log.base(),
                    self.log.committed(),
                    up_to,
                    unpin_below,
                );
                if self.failed.is_none()
                    && let Some(limit) = limit
                {
                    self.commands.push_back(Command::Compact { up_to: limit });
                }
            }
            Event::Tick => {
                self.source.on_tick(cx!(self));
                let next = self.now.plus(self.config.heartbeat_interval / 2);
                self.timers.set(Timer::Heartbeat, next);
                if let Some(upstream) = &mut self.upstream {
                    upstream.on_tick(cx!(self));
                }
            }
        }
        self.refresh_timers();
    }

    /// Sets the timers whose deadlines live in the parts' state.
    fn refresh_timers(&mut self) {
        let write_deadline = self.source.writes().and_then(WritePath::next_deadline);
        self.timers
            .set_or_stop(Timer::WriteDeadline, write_deadline);
        let lease_end = self.source.writes().and_then(WritePath::lease_end);
        self.timers.set_or_stop(Timer::LeaseEnd, lease_end);
        let reconnect = self.upstream.as_ref().and_then(Upstream::retry_at);
        self.timers.set_or_stop(Timer::Reconnect, reconnect);
    }

    fn propose(&mut self, writes: Vec<(WriteId, bytes::Bytes)>) {
        let refusal = if let Some(failure) = &self.failed {
            Some(WriteError::LogFailed(failure.clone()))
        } else if let Some(upstream) = &self.upstream {
            Some(WriteError::NotPrimary {
                source_address: upstream.primary_address().to_string(),
            })
        } else if self.pushes.is_some() {
            let source_address = "its external replicator's source".to_string();
            Some(WriteError::NotPrimary { source_address })
        } else {
            None
        };
        match refusal {
            Some(error) => {
                for (write, _) in writes {
                    self.commands.push_back(Command::Reply {
                        write,
                        result: Err(error.clone()),
                    });
                }
            }
            None => self.source.propose(cx!(self), writes),
        }
    }

    /// Called after this node's own durable position moved.
    fn on_durable_advanced(&mut self) {
        if self.source.writes().is_some() {
            self.source.advance_commit(cx!(self));
        } else if let Some(upstream) = &mut self.upstream {
            let source_committed = upstream.on_durable(cx!(self));
            self.commit_from_source(source_committed);
        } else if self.pushes.is_some() {
            // Pushed transactions were committed at their source: durable here is committed.
            self.commit(self.log.durable().tx_id);
            let committed = self.log.committed();
            if let Some(pushes) = &mut self.pushes {
                pushes.answer_committed(cx!(self), committed);
            }
        }
    }

    /// Commits what the source reports committed and this node holds durably.
    fn commit_from_source(&mut self, source_committed: Option<TxId>) {
        if let Some(up_to) = source_committed {
            if let Some(upstream) = &mut self.upstream {
                upstream.saw_source_commit(up_to, self.log.committed(), self.now);
            }
            self.commit(up_to);
        }
    }

    /// Moves the commit point (never past durable) and lets the source react.
    fn commit(&mut self, up_to: TxId) {
        if self.log.set_committed(up_to, &mut self.commands) {
            self.source.on_commit_advanced(cx!(self));
            if let Some(upstream) = &mut self.upstream {
                upstream.on_committed(self.log.committed());
            }
        }
    }

    fn on_snapshot_installed(
        &mut self,
        meta: &SnapshotMeta,
        result: Result<(), crate::snapshot::SnapshotError>,
    ) {
        let Some(upstream) = &mut self.upstream else {
            return;
        };
        let Some(base) = upstream.on_snapshot_installed(cx!(self), meta, result) else {
            return;
        };
        // The log starts again after the snapshot: what this node served its own replicas
        // may be another history, so they subscribe again (and may get this snapshot).
        self.log.reset_to(base);
        self.log.raise_epoch(base.epoch, &mut self.commands);
        self.source.drop_downstreams(cx!(self));
        self.source.snapshot_installed(meta.clone());
        if let Some(upstream) = &mut self.upstream {
            upstream.after_install(cx!(self));
        }
    }

    fn on_log_failed(&mut self, failure: LogFailure) {
        tracing::error!(%failure, "log failed; refusing writes");
        let error = WriteError::LogFailed(failure.clone());
        self.source.fail_writes(cx!(self), error);
        if let Some(upstream) = &mut self.upstream {
            upstream.stop(cx!(self), ReplicationError::LogFailed(failure.clone()));
        }
        if let Some(pushes) = &mut self.pushes {
            pushes.stop(failure.clone());
        }
        self.failed = Some(failure);
    }

    /// The engine's state, for status output.
    pub fn status(&self, now: Timestamp) -> EngineStatus {
        let writes = self.source.writes();
        EngineStatus {
            role: self.config.role.clone(),
            epoch: self.log.epoch(),
            epoch_primary: self.log.claim().primary.clone(),
            last: self.log.last(),
            last_epoch: self.log.last_epoch(),
            durable: self.log.durable(),
            committed: self.log.committed(),
            committed_position: self.log.committed_position(),
            policy: writes.map(|_| format!("{:?}", self.source.policy())),
            policy_met_by_connected: self.source.policy_met_by_connected(),
            fenced: writes.and_then(WritePath::fenced),
            lease_until: writes.and_then(WritePath::lease_until),
            waiting_writes: writes.map_or(0, WritePath::waiting),
            upstream: self.upstream.as_ref().map(Upstream::state),
            last_error: match (&self.upstream, &self.pushes) {
                (Some(upstream), _) => upstream.last_error(),
                (None, Some(pushes)) => pushes.stopped().map(ToString::to_string),
                (None, None) => writes.and_then(WritePath::fence_reason),
            },
            link_trouble: self
                .upstream
                .as_ref()
                .and_then(|upstream| upstream.trouble(now)),
            link_errors: self
                .upstream
                .as_ref()
                .map(Upstream::errors_by_cause)
                .unwrap_or_default(),
            link_connects: self.upstream.as_ref().map_or(0, Upstream::connects),
            source_lag: self
                .upstream
                .as_ref()
                .and_then(|upstream| upstream.source_lag(now)),
            source_address: self
                .upstream
                .as_ref()
                .map(|upstream| upstream.address().to_string()),
            replicas: self.source.replica_statuses(now, self.log.last().tx_id),
            members: self.source.members().cloned().collect(),
            log_failure: self.failed.as_ref().map(ToString::to_string),
            last_rollback: self.last_rollback.clone(),
            base: self.log.base(),
            snapshot: self
                .source
                .snapshot()
                .map(|meta| (meta.last.tx_id, meta.bytes)),
            snapshot_transfer: self
                .upstream
                .as_ref()
                .and_then(|upstream| upstream.snapshot_progress(now)),
            source_committed: self.upstream.as_ref().and_then(Upstream::source_committed),
            streaming_since: self
                .upstream
                .as_ref()
                .and_then(|upstream| upstream.streaming_since(now)),
        }
    }

    /// Whether `replica` is a member: it counts toward the quorum policy.
    pub fn is_member(&self, replica: &ReplicaId) -> bool {
        self.source.is_member(replica)
    }

    /// The committed transactions `from..=up_to` if all of them are still in the recent
    /// cache, so that the driver can apply them without reading the log.
    pub fn recent(&self, from: TxId, up_to: TxId) -> Option<Vec<Tx>> {
        self.log.recent(from, up_to)
    }

    /// The node's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The commit point.
    pub fn committed(&self) -> TxId {
        self.log.committed()
    }

    /// The last transaction appended.
    pub fn last(&self) -> LogPosition {
        self.log.last()
    }

    /// Where the log begins.
    pub fn base(&self) -> LogBase {
        self.log.base()
    }

    /// The last durable transaction.
    pub fn durable(&self) -> LogPosition {
        self.log.durable()
    }

    /// The node's epoch.
    pub fn epoch(&self) -> Epoch {
        self.log.epoch()
    }

    /// The node's epoch and the primary that claims it, as recorded.
    pub fn epoch_claim(&self) -> &EpochClaim {
        self.log.claim()
    }

    /// This database on this node: a primary's claim to its epochs, a replica's identity at
    /// its source.
    fn identity(&self) -> ReplicaId {
        ReplicaId::new(self.config.node.clone(), self.config.database.clone())
    }

    /// The error that stopped replication from the source (or, on an external replica, the
    /// pushes), if any.
    pub fn replication_error(&self) -> Option<&ReplicationError> {
        match (&self.upstream, &self.pushes) {
            (Some(upstream), _) => upstream.stopped(),
            (None, Some(pushes)) => pushes.stopped(),
            (None, None) => None,
        }
    }

    /// The primary's address as far as this node knows: `None` on the primary itself, the
    /// source's hint (or the source) on a replica.
    pub fn primary_address(&self) -> Option<String> {
        self.upstream
            .as_ref()
            .map(|upstream| upstream.primary_address().to_string())
    }
}
