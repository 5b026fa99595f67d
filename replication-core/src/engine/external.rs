//! [`Pushes`]: an external replica's feed, where a replicator outside the engine pushes
//! transactions committed at their source (immudb's `ReplicateTx`).
//!
//! Present exactly while this node is a [`Role::ExternalReplica`](super::Role::ExternalReplica).
//! The hash chain is checked here before anything is stored; pushed transactions commit once
//! durable, since their source already committed them.

use super::local_log::NotExtending;
use super::writes::{PendingWrite, Waiting};
use super::{AckKind, Command, Ctx, PushRefusal, ReplicationError, WriteError, WriteId};
use crate::log::LogFailure;
use crate::types::{Tx, TxId};

/// Pushes waiting for durability, and the error that stopped the feed.
#[derive(Debug, Default)]
pub(super) struct Pushes {
    waiting: Waiting,
    /// Set when the log failed: status shows it as the replication error.
    stopped: Option<ReplicationError>,
}

impl Pushes {
    /// The error that stopped this feed, if any.
    pub(super) fn stopped(&self) -> Option<&ReplicationError> {
        self.stopped.as_ref()
    }

    /// The log failed: nothing more can be stored.
    pub(super) fn stop(&mut self, failure: LogFailure) {
        tracing::error!(%failure, "replication stopped");
        self.stopped = Some(ReplicationError::LogFailed(failure));
    }

    /// Stores pushed transactions after checking that they extend the chain; answered once
    /// durable. `failed` is the log's failure, if it failed.
    pub(super) fn on_replicate(
        &mut self,
        cx: &mut Ctx<'_>,
        write: WriteId,
        txs: Vec<Tx>,
        failed: Option<&LogFailure>,
    ) {
        if let Some(failure) = failed {
            return refuse(cx, write, PushRefusal::LogFailed(failure.clone()));
        }
        let (last, last_epoch) = match cx.log.check_extends(&txs) {
            Ok(reached) => reached,
            Err(NotExtending::Chain(error)) => return refuse(cx, write, error.into()),
            Err(NotExtending::BadEpoch { tx_id, epoch, min }) => {
                return refuse(cx, write, PushRefusal::BadEpoch { tx_id, epoch, min });
            }
        };
        cx.log.raise_epoch(last_epoch, cx.out);
        self.waiting.push(PendingWrite {
            write,
            position: last,
            deadline: None,
        });
        if txs.is_empty() {
            self.answer_committed(cx, cx.log.committed());
        } else {
            cx.log.append(txs, cx.out);
        }
    }

    /// Answers every push up to `committed`.
    pub(super) fn answer_committed(&mut self, cx: &mut Ctx<'_>, committed: TxId) {
        self.waiting.answer_up_to(cx, committed, AckKind::Async);
    }
}

/// Refuses a push; nothing was stored.
pub(super) fn refuse(cx: &mut Ctx<'_>, write: WriteId, refusal: PushRefusal) {
    cx.out.push_back(Command::Reply {
        write,
        result: Err(WriteError::Rejected(refusal)),
    });
}
