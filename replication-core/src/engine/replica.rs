//! The replica side: subscribing to a source, verifying and storing what it sends,
//! acknowledging, resolving divergence, and reconnecting.

use std::time::Duration;

use super::{Command, ConnId, Engine, ReplicationError, Timestamp};
use crate::protocol::{Message, PROTOCOL_VERSION, Refusal};
use crate::types::{Epoch, LogPosition, Tx, TxHash, TxId};

/// The state of a replica's link to its source, as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamState {
    /// Waiting to reconnect.
    Disconnected,
    /// Dialling the source.
    Connecting,
    /// Subscribed, waiting for the source's answer.
    Subscribing,
    /// Comparing logs after the source reported a divergence.
    ResolvingDivergence,
    /// Receiving transactions.
    Streaming,
    /// Stopped by an error that needs an operator.
    Stopped(String),
}

#[derive(Debug)]
pub(super) enum Upstream {
    Idle {
        retry_at: Timestamp,
        backoff: Duration,
    },
    Connecting {
        backoff: Duration,
    },
    Subscribing {
        conn: ConnId,
        since: Timestamp,
    },
    Resolving {
        conn: ConnId,
        source_epoch: Epoch,
        source_hashes: Vec<TxHash>,
        base: LogPosition,
    },
    Streaming {
        conn: ConnId,
        source_epoch: Epoch,
        source_committed: TxId,
        last_heard: Timestamp,
        last_ack: Timestamp,
    },
    Stopped(ReplicationError),
}

impl Upstream {
    pub(super) fn state(&self) -> UpstreamState {
        match self {
            Upstream::Idle { .. } => UpstreamState::Disconnected,
            Upstream::Connecting { .. } => UpstreamState::Connecting,
            Upstream::Subscribing { .. } => UpstreamState::Subscribing,
            Upstream::Resolving { .. } => UpstreamState::ResolvingDivergence,
            Upstream::Streaming { .. } => UpstreamState::Streaming,
            Upstream::Stopped(error) => UpstreamState::Stopped(error.to_string()),
        }
    }

    pub(super) fn last_error(&self) -> Option<String> {
        match self {
            Upstream::Stopped(error) => Some(error.to_string()),
            _ => None,
        }
    }

    pub(super) fn stopped(&self) -> Option<&ReplicationError> {
        match self {
            Upstream::Stopped(error) => Some(error),
            _ => None,
        }
    }

    fn conn(&self) -> Option<ConnId> {
        match self {
            Upstream::Subscribing { conn, .. }
            | Upstream::Resolving { conn, .. }
            | Upstream::Streaming { conn, .. } => Some(*conn),
            _ => None,
        }
    }
}

impl Engine {
    pub(super) fn tick_upstream(&mut self, now: Timestamp) {
        match &mut self.upstream {
            Upstream::Idle { retry_at, backoff } if *retry_at <= now => {
                let backoff = *backoff;
                let address = match &self.config.role {
                    super::Role::Replica { address } => address.clone(),
                    super::Role::Primary | super::Role::ExternalReplica => return,
                };
                self.upstream = Upstream::Connecting { backoff };
                self.commands.push_back(Command::Connect { address });
            }
            Upstream::Subscribing { conn, since }
                if now.since(*since) > self.config.peer_timeout =>
            {
                let conn = *conn;
                self.drop_upstream(now, conn, "source did not answer the subscription");
            }
            Upstream::Streaming {
                conn,
                last_heard,
                last_ack,
                ..
            } => {
                let conn = *conn;
                if now.since(*last_heard) > self.config.peer_timeout {
                    self.drop_upstream(now, conn, "source silent past the peer timeout");
                } else if now.since(*last_ack) >= self.config.heartbeat_interval {
                    *last_ack = now;
                    let durable = self.durable;
                    self.commands.push_back(Command::Send {
                        conn,
                        message: Message::Ack { durable },
                    });
                }
            }
            _ => {}
        }
    }

    fn backoff_after(&mut self, now: Timestamp, backoff: Duration) -> Upstream {
        let jitter = self.next_jitter(backoff / 2 + Duration::from_micros(1));
        let next = (backoff * 2).min(self.config.reconnect_max);
        Upstream::Idle {
            retry_at: now.plus(backoff / 2 + jitter),
            backoff: next,
        }
    }

    fn drop_upstream(&mut self, now: Timestamp, conn: ConnId, why: &str) {
        tracing::warn!(?conn, why, "dropping the channel to the source");
        self.commands.push_back(Command::Close { conn });
        let backoff = self.config.reconnect_min;
        self.upstream = self.backoff_after(now, backoff);
    }

    pub(super) fn on_connect_failed(&mut self, now: Timestamp, reason: String) {
        if let Upstream::Connecting { backoff } = self.upstream {
            tracing::debug!(%reason, "cannot reach the source; retrying");
            self.upstream = self.backoff_after(now, backoff);
        }
    }

    pub(super) fn on_upstream_connected(&mut self, now: Timestamp, conn: ConnId) {
        if !matches!(self.upstream, Upstream::Connecting { .. }) {
            // Not wanted any more (stopped, or a stale attempt).
            self.commands.push_back(Command::Close { conn });
            return;
        }
        self.subscribe(now, conn, self.committed_position);
    }

    fn subscribe(&mut self, now: Timestamp, conn: ConnId, known_common: LogPosition) {
        let message = Message::Subscribe {
            version: PROTOCOL_VERSION,
            database: self
                .config
                .source_database
                .clone()
                .unwrap_or_else(|| self.config.database.clone()),
            epoch: self.epoch,
            last: self.last,
            known_common,
            window: self.config.prefetch_buffer,
            tags: self.config.tags.clone(),
        };
        self.upstream = Upstream::Subscribing { conn, since: now };
        self.commands.push_back(Command::Send { conn, message });
    }

    pub(super) fn on_disconnected(&mut self, now: Timestamp, conn: ConnId) {
        if self.upstream.conn() == Some(conn) {
            tracing::info!(?conn, "channel to the source closed; reconnecting");
            let backoff = self.config.reconnect_min;
            self.upstream = self.backoff_after(now, backoff);
        } else {
            self.on_downstream_disconnected(conn);
        }
    }

    pub(super) fn on_message(&mut self, now: Timestamp, conn: ConnId, message: Message) {
        if self.upstream.conn() != Some(conn) {
            return self.on_downstream_message(now, conn, message);
        }
        match message {
            Message::Accepted {
                epoch,
                committed,
                primary,
            } => {
                if let super::Role::Replica { address } = &self.config.role {
                    self.primary_hint = Some(primary.unwrap_or_else(|| address.clone()));
                }
                if epoch < self.epoch {
                    let refusal = Refusal::StaleSource {
                        source_epoch: epoch,
                        replica: self.epoch,
                    };
                    return self.refused(now, conn, refusal);
                }
                self.raise_epoch(epoch);
                tracing::info!(?conn, %epoch, %committed, last = %self.last.tx_id, "streaming from source");
                self.upstream = Upstream::Streaming {
                    conn,
                    source_epoch: epoch,
                    source_committed: committed,
                    last_heard: now,
                    last_ack: now,
                };
                self.commands.push_back(Command::Send {
                    conn,
                    message: Message::Ack {
                        durable: self.durable,
                    },
                });
                self.commit_from_source();
            }
            Message::Refused(refusal) => self.refused(now, conn, refusal),
            Message::Diverged {
                epoch,
                source_hashes,
                source_last: _,
            } => {
                if epoch < self.epoch {
                    let refusal = Refusal::StaleSource {
                        source_epoch: epoch,
                        replica: self.epoch,
                    };
                    return self.refused(now, conn, refusal);
                }
                let Upstream::Subscribing { .. } = self.upstream else {
                    return;
                };
                let base = self.committed_position;
                let count = source_hashes.len().max(1);
                self.upstream = Upstream::Resolving {
                    conn,
                    source_epoch: epoch,
                    source_hashes,
                    base,
                };
                // From `base` itself, to learn its epoch too.
                self.commands.push_back(Command::Read {
                    conn,
                    from: TxId(base.tx_id.0.max(1)),
                    max_count: count + 1,
                    max_bytes: usize::MAX,
                });
            }
            Message::Txs { txs, committed } => self.on_txs(now, conn, txs, committed),
            Message::Committed { epoch, committed } => {
                if let Upstream::Streaming {
                    source_committed,
                    last_heard,
                    source_epoch,
                    ..
                } = &mut self.upstream
                {
                    *last_heard = now;
                    *source_committed = (*source_committed).max(committed);
                    *source_epoch = (*source_epoch).max(epoch);
                    self.raise_epoch(epoch);
                    self.commit_from_source();
                }
            }
            other => tracing::warn!(?conn, message = ?other, "unexpected message from the source"),
        }
    }

    fn raise_epoch(&mut self, epoch: Epoch) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.commands.push_back(Command::SaveEpoch(epoch));
        }
    }

    fn refused(&mut self, now: Timestamp, conn: ConnId, refusal: Refusal) {
        tracing::warn!(%refusal, "source refused the subscription");
        self.commands.push_back(Command::Close { conn });
        match refusal {
            // The history itself is at stake: an operator must look.
            Refusal::CommittedDivergence { .. } | Refusal::ProtocolVersion { .. } => {
                self.stop_replication(ReplicationError::Refused(refusal));
            }
            // These may resolve themselves (the database created, the source catching up, the
            // permission granted), so keep trying, slowly, and show the reason.
            _ => {
                let backoff = self.config.reconnect_max;
                self.upstream = self.backoff_after(now, backoff);
                self.last_refusal = Some(refusal.to_string());
            }
        }
    }

    pub(super) fn stop_replication(&mut self, error: ReplicationError) {
        tracing::error!(%error, "replication stopped");
        if let Some(conn) = self.upstream.conn() {
            self.commands.push_back(Command::Close { conn });
        }
        self.upstream = super::replica::Upstream::Stopped(error);
    }

    fn on_txs(&mut self, now: Timestamp, conn: ConnId, txs: Vec<Tx>, committed: TxId) {
        let Upstream::Streaming {
            last_heard,
            source_committed,
            ..
        } = &mut self.upstream
        else {
            return;
        };
        *last_heard = now;
        *source_committed = (*source_committed).max(committed);
        let mut prev = self.last;
        let mut prev_epoch = self.last_epoch;
        // Verify the whole batch before storing any of it: tampering anywhere is refused.
        for tx in &txs {
            if let Err(error) = tx.verify_follows(&prev) {
                return self.stop_replication(error.into());
            }
            if tx.epoch < prev_epoch {
                let error = ReplicationError::BadEpoch {
                    tx_id: tx.id,
                    epoch: tx.epoch,
                    min: prev_epoch,
                };
                return self.stop_replication(error);
            }
            prev = tx.position();
            prev_epoch = tx.epoch;
        }
        self.last_refusal = None;
        let _ = conn;
        // A relay's epoch may lag the transactions it forwards; they carry the truth.
        self.raise_epoch(prev_epoch);
        self.append(txs);
        self.commit_from_source();
    }

    /// Commits what the source reports committed and this replica holds durably.
    fn commit_from_source(&mut self) {
        if let Upstream::Streaming {
            source_committed, ..
        } = self.upstream
        {
            self.set_committed(source_committed);
        }
    }

    /// Stores transactions an external replicator pushed, after checking that they extend
    /// the chain; they were committed at their source, so they commit here once durable.
    pub(super) fn on_replicate(&mut self, write: super::WriteId, txs: Vec<Tx>) {
        let refuse = |engine: &mut Engine, why: String| {
            let result = Err(super::WriteError::Rejected(why));
            engine.commands.push_back(Command::Reply { write, result });
        };
        if self.config.role != super::Role::ExternalReplica {
            return refuse(
                self,
                "this database does not take pushed transactions".into(),
            );
        }
        if let Some(reason) = &self.failed {
            return refuse(self, format!("the log failed: {reason}"));
        }
        let mut prev = self.last;
        let mut prev_epoch = self.last_epoch;
        for tx in &txs {
            if let Err(error) = tx.verify_follows(&prev) {
                return refuse(self, error.to_string());
            }
            if tx.epoch < prev_epoch {
                return refuse(
                    self,
                    format!(
                        "transaction {} has epoch {}, lower than {prev_epoch}",
                        tx.id, tx.epoch
                    ),
                );
            }
            prev = tx.position();
            prev_epoch = tx.epoch;
        }
        self.raise_epoch(prev_epoch);
        self.pushed.push_back(super::PendingWrite {
            write,
            position: prev,
            deadline: None,
        });
        if txs.is_empty() {
            self.answer_pushes();
        } else {
            self.append(txs);
        }
    }

    fn answer_pushes(&mut self) {
        while self
            .pushed
            .front()
            .is_some_and(|p| p.position.tx_id <= self.committed)
        {
            if let Some(push) = self.pushed.pop_front() {
                let receipt = super::WriteReceipt {
                    tx_id: push.position.tx_id,
                    hash: push.position.hash,
                    ack: super::AckKind::Async,
                };
                self.commands.push_back(Command::Reply {
                    write: push.write,
                    result: Ok(receipt),
                });
            }
        }
    }

    pub(super) fn on_replica_durable(&mut self) {
        if self.config.role == super::Role::ExternalReplica {
            self.set_committed(self.durable.tx_id);
            return self.answer_pushes();
        }
        if let Upstream::Streaming { conn, last_ack, .. } = &mut self.upstream {
            let conn = *conn;
            let _ = last_ack;
            let durable = self.durable;
            self.commands.push_back(Command::Send {
                conn,
                message: Message::Ack { durable },
            });
        }
        self.commit_from_source();
    }

    pub(super) fn on_read_done(&mut self, now: Timestamp, conn: ConnId, txs: Vec<Tx>) {
        let Upstream::Resolving {
            conn: upstream_conn,
            ..
        } = &self.upstream
        else {
            return self.on_downstream_read(conn, txs);
        };
        if *upstream_conn != conn {
            return self.on_downstream_read(conn, txs);
        }
        let Upstream::Resolving {
            source_epoch,
            source_hashes,
            base,
            ..
        } = std::mem::replace(
            &mut self.upstream,
            Upstream::Connecting {
                backoff: Duration::ZERO,
            },
        )
        else {
            return;
        };
        self.resolve_divergence(now, conn, source_epoch, source_hashes, base, txs);
    }

    /// Finds the last transaction this replica shares with its source and, where allowed,
    /// discards what follows it.
    fn resolve_divergence(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        source_epoch: Epoch,
        source_hashes: Vec<TxHash>,
        base: LogPosition,
        ours: Vec<Tx>,
    ) {
        let base_epoch = ours
            .iter()
            .find(|tx| tx.id == base.tx_id)
            .map(|tx| tx.epoch);
        let ours: Vec<&Tx> = ours.iter().filter(|tx| tx.id > base.tx_id).collect();
        let mut common = base;
        let mut first_difference = None;
        for (index, tx) in ours.iter().enumerate() {
            match source_hashes.get(index) {
                Some(hash) if *hash == tx.hash => common = tx.position(),
                source_hash => {
                    first_difference = Some((tx.id, tx.hash, source_hash.copied()));
                    break;
                }
            }
        }
        let Some((tx_id, local_hash, source_hash)) = first_difference else {
            // Everything compared matches: the difference lies beyond this window.
            return self.subscribe(now, conn, common);
        };
        if tx_id <= self.committed {
            let refusal = Refusal::CommittedDivergence {
                tx_id,
                replica_hash: local_hash,
                source_hash,
            };
            return self.stop_replication(ReplicationError::Refused(refusal));
        }
        // A source of a higher epoch than our last transaction supersedes our suffix: those
        // transactions were streamed by a primary that since restarted without them, so they
        // were never committed.
        let superseded = source_epoch > self.last_epoch;
        if !(superseded || self.config.allow_tx_discarding) {
            return self.stop_replication(ReplicationError::Diverged {
                tx_id,
                local_hash,
                source_hash,
            });
        }
        tracing::warn!(
            %tx_id, %local_hash, keep = %common.tx_id, discard_to = %self.last.tx_id,
            "discarding uncommitted transactions that diverge from the source"
        );
        self.last_epoch = ours
            .iter()
            .rev()
            .find(|tx| tx.id <= common.tx_id)
            .map(|tx| tx.epoch)
            .or(base_epoch)
            .unwrap_or(Epoch(0));
        self.truncate(common);
        self.subscribe(now, conn, common);
    }
}
