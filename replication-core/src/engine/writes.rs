//! [`WritePath`]: a primary's client writes, from proposal to their answer.
//!
//! Owned by the [`Source`](super::source::Source) while this node is a primary; a replica has
//! none, so a role change replaces it.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{AckKind, Command, Ctx, Timestamp, WriteError, WriteId, WriteReceipt};
use crate::types::{Epoch, LogPosition, ReplicaId, Tx, TxId};

/// A write waiting for its commit.
#[derive(Debug)]
pub(super) struct PendingWrite {
    pub(super) write: WriteId,
    pub(super) position: LogPosition,
    pub(super) deadline: Option<Timestamp>,
}

/// Writes appended and waiting for the commit point, in log order.
#[derive(Debug, Default)]
pub(super) struct Waiting(VecDeque<PendingWrite>);

impl Waiting {
    /// Adds a write, which follows every write already waiting.
    pub(super) fn push(&mut self, pending: PendingWrite) {
        self.0.push_back(pending);
    }

    /// Answers every write up to `committed` as committed with `ack`.
    pub(super) fn answer_up_to(&mut self, cx: &mut Ctx<'_>, committed: TxId, ack: AckKind) {
        while self
            .0
            .front()
            .is_some_and(|p| p.position.tx_id <= committed)
        {
            if let Some(pending) = self.0.pop_front() {
                let receipt = WriteReceipt {
                    tx_id: pending.position.tx_id,
                    hash: pending.position.hash,
                    ack,
                };
                cx.out.push_back(Command::Reply {
                    write: pending.write,
                    result: Ok(receipt),
                });
            }
        }
    }
}

/// The writes a primary has appended and not yet answered, whether it is fenced, and the
/// lease it writes under, if any.
#[derive(Debug, Default)]
pub(super) struct WritePath {
    /// In proposal order; deadlines are proposal time plus one fixed timeout, so the first
    /// deadline is the earliest.
    pending: Waiting,
    /// Why this primary is fenced, as every write is then refused; with the epoch that
    /// fenced it.
    fenced: Option<(Epoch, WriteError)>,
    /// Whether it writes under a coordinator's lease
    /// ([`EngineConfig::leased`](super::EngineConfig::leased)).
    leased: bool,
    /// The end of that lease, once granted.
    lease_until: Option<Timestamp>,
    /// The members whose acknowledgements count, as the coordinator last held them.
    counted: Option<std::collections::BTreeSet<crate::types::NodeId>>,
    /// The policy whose proofs the coordinator holds, as last reported.
    published_policy: Option<std::sync::Arc<dyn crate::quorum::QuorumPolicy>>,
}

impl WritePath {
    /// The write path of a primary that writes under a coordinator's lease (`leased`) or not.
    pub(super) fn new(leased: bool) -> WritePath {
        WritePath {
            leased,
            ..WritePath::default()
        }
    }

    /// Whether this primary may acknowledge at `now`: it writes under no lease, or its lease
    /// has not ended.
    pub(super) fn may_acknowledge(&self, now: Timestamp) -> bool {
        !self.leased || self.lease_until.is_some_and(|until| now < until)
    }

    /// The end of the lease, on a leased primary that was granted one.
    pub(super) fn lease_until(&self) -> Option<Timestamp> {
        self.lease_until.filter(|_| self.leased)
    }

    /// The coordinator renewed the lease until `until`. A renewal answered late reports an
    /// earlier end than one answered before it: the later end stands.
    pub(super) fn renew_lease(
        &mut self,
        until: Timestamp,
        voters: Option<Vec<crate::types::NodeId>>,
        published: Option<std::sync::Arc<dyn crate::quorum::QuorumPolicy>>,
    ) {
        if self.leased {
            self.lease_until = self.lease_until.max(Some(until));
            self.counted = voters.map(|voters| voters.into_iter().collect());
            self.published_policy = published;
        }
    }

    /// On a leased primary, the policy whose proofs the coordinator holds, if reported.
    pub(super) fn published_policy(
        &self,
    ) -> Option<&std::sync::Arc<dyn crate::quorum::QuorumPolicy>> {
        self.published_policy.as_ref().filter(|_| self.leased)
    }

    /// On a leased primary, the members whose acknowledgements count (`None`: all).
    pub(super) fn counted(&self) -> Option<&std::collections::BTreeSet<crate::types::NodeId>> {
        self.counted.as_ref().filter(|_| self.leased)
    }

    /// When the lease ends while writes wait for their commit: they are answered then.
    pub(super) fn lease_end(&self) -> Option<Timestamp> {
        self.lease_until().filter(|_| !self.pending.0.is_empty())
    }

    /// Once the lease has ended, answers every waiting write as of unknown outcome: it may
    /// commit under the next primary, or not.
    pub(super) fn end_lease_if_passed(&mut self, cx: &mut Ctx<'_>) {
        if self.may_acknowledge(cx.now) || self.pending.0.is_empty() {
            return;
        }
        tracing::warn!(
            waiting = self.pending.0.len(),
            "leader lease ended: waiting writes answered as of unknown outcome"
        );
        for pending in std::mem::take(&mut self.pending.0) {
            let error = WriteError::LeaseEnded {
                tx_id: pending.position.tx_id,
            };
            cx.out.push_back(Command::Reply {
                write: pending.write,
                result: Err(error),
            });
        }
    }

    /// The higher epoch that fenced this primary, if any.
    pub(super) fn fenced(&self) -> Option<Epoch> {
        self.fenced.as_ref().map(|(epoch, _)| *epoch)
    }

    /// Why this primary is fenced, if it is.
    pub(super) fn fence_reason(&self) -> Option<String> {
        self.fenced.as_ref().map(|(_, error)| error.to_string())
    }

    /// How many writes wait for their commit.
    pub(super) fn waiting(&self) -> usize {
        self.pending.0.len()
    }

    /// When the oldest waiting write times out.
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        self.pending.0.front().and_then(|pending| pending.deadline)
    }

    /// Chains the accepted writes into transactions of this node's epoch and registers them
    /// as waiting; refuses the rest (fenced, or beyond `max_uncommitted`) at once. Returns
    /// the transactions to append.
    pub(super) fn accept(&mut self, cx: &mut Ctx<'_>, writes: Vec<(WriteId, Bytes)>) -> Vec<Tx> {
        let epoch = cx.log.epoch();
        let refusal = match &self.fenced {
            Some((_, error)) => Some(error.clone()),
            None if !self.may_acknowledge(cx.now) => Some(WriteError::NoLease),
            None => None,
        };
        let mut txs: Vec<Tx> = Vec::with_capacity(writes.len());
        for (write, payload) in writes {
            if let Some(error) = &refusal {
                cx.out.push_back(Command::Reply {
                    write,
                    result: Err(error.clone()),
                });
                continue;
            }
            let uncommitted = cx.log.last().tx_id.0 + txs.len() as u64 - cx.log.committed().0;
            if uncommitted >= cx.config.max_uncommitted {
                let error = WriteError::Backlog {
                    uncommitted,
                    limit: cx.config.max_uncommitted,
                };
                cx.out.push_back(Command::Reply {
                    write,
                    result: Err(error),
                });
                continue;
            }
            let prev = txs.last().map(Tx::position).unwrap_or(cx.log.last());
            let tx = Tx::new(prev, epoch, payload);
            let deadline = cx.config.write_timeout.map(|timeout| cx.now.plus(timeout));
            self.pending.push(PendingWrite {
                write,
                position: tx.position(),
                deadline,
            });
            txs.push(tx);
        }
        txs
    }

    /// Answers every waiting write up to the commit point (none once the lease ended).
    pub(super) fn answer_committed(&mut self, cx: &mut Ctx<'_>, ack: AckKind) {
        if !self.may_acknowledge(cx.now) {
            return self.end_lease_if_passed(cx);
        }
        let committed = cx.log.committed();
        self.pending.answer_up_to(cx, committed, ack);
    }

    /// Answers writes whose deadline has passed: their outcome is unknown.
    pub(super) fn expire(&mut self, cx: &mut Ctx<'_>) {
        while self
            .pending
            .0
            .front()
            .is_some_and(|p| p.deadline.is_some_and(|d| d <= cx.now))
        {
            if let Some(pending) = self.pending.0.pop_front() {
                let error = WriteError::Timeout {
                    tx_id: pending.position.tx_id,
                };
                cx.out.push_back(Command::Reply {
                    write: pending.write,
                    result: Err(error),
                });
            }
        }
    }

    /// A node of epoch `seen` exists: stop accepting writes and answer the waiting ones.
    pub(super) fn fence(&mut self, cx: &mut Ctx<'_>, seen: Epoch) {
        if self.fenced().is_some_and(|s| s >= seen) {
            return;
        }
        let ours = cx.log.epoch();
        tracing::error!(%ours, %seen, "a higher epoch exists: this primary is fenced");
        self.fence_with(cx, seen, WriteError::Fenced { ours, seen });
    }

    /// Another primary claims this primary's own epoch (a replica recorded it first): at most
    /// one of the two may write in it, and this one cannot tell that it is the one, so it
    /// stops accepting writes and answers the waiting ones.
    pub(super) fn fence_taken(&mut self, cx: &mut Ctx<'_>, other: ReplicaId) {
        let epoch = cx.log.epoch();
        if self.fenced.is_some() {
            return;
        }
        tracing::error!(%epoch, %other, "another primary claims this epoch: this primary is fenced");
        self.fence_with(cx, epoch, WriteError::EpochTaken { epoch, other });
    }

    fn fence_with(&mut self, cx: &mut Ctx<'_>, seen: Epoch, error: WriteError) {
        self.fenced = Some((seen, error.clone()));
        // Appended but never committed here: the outcome is for the new primary to decide.
        self.fail_all(cx, error);
    }

    /// Answers every waiting write with `error`.
    pub(super) fn fail_all(&mut self, cx: &mut Ctx<'_>, error: WriteError) {
        for pending in std::mem::take(&mut self.pending.0) {
            cx.out.push_back(Command::Reply {
                write: pending.write,
                result: Err(error.clone()),
            });
        }
    }
}
