//! The clients: batches of writes proposed to the primary at random intervals, and the
//! bookkeeping of which were answered and how.
//!
//! A write's outcome is one of: acknowledged (the oracle then holds the cluster to it forever),
//! refused or timed out (nothing is promised), or unknown because the primary crashed before
//! answering (nothing is promised either, but the write may still surface in the history).

use std::collections::BTreeMap;

use bytes::Bytes;

use super::rng::Rng;
use crate::engine::{AckKind, WriteId, WriteReceipt};
use crate::quorum::Quorum;
use crate::types::LogPosition;

/// A write the primary acknowledged.
#[derive(Clone, Debug)]
pub(super) struct AckedWrite {
    pub(super) position: LogPosition,
    pub(super) kind: AckKind,
}

/// What the clients do next.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// When the clients propose again, if they have writes left.
    pub(super) next_in: Option<u64>,
    /// The writes to propose now (none if the primary is down).
    pub(super) writes: Vec<(WriteId, Bytes)>,
}

#[derive(Debug)]
pub(super) struct Workload {
    rng: Rng,
    writes_left: usize,
    next_write: u64,
    /// Writes proposed and not answered, with the policy in force when they were proposed
    /// and the node they were proposed to.
    outstanding: BTreeMap<WriteId, (Quorum, usize)>,
    acked: Vec<AckedWrite>,
    pub(super) acked_quorum: usize,
    pub(super) acked_async: usize,
    pub(super) not_acked: usize,
}

impl Workload {
    pub(super) fn new(rng: Rng, writes: usize) -> Workload {
        Workload {
            rng,
            writes_left: writes,
            next_write: 0,
            outstanding: BTreeMap::new(),
            acked: Vec::new(),
            acked_quorum: 0,
            acked_async: 0,
            not_acked: 0,
        }
    }

    /// `count` more writes to propose.
    pub(super) fn more(&mut self, count: usize) {
        self.writes_left += count;
    }

    /// Whether every write has been proposed.
    pub(super) fn proposed_all(&self) -> bool {
        self.writes_left == 0
    }

    /// Whether every write has been proposed and answered (or given up on).
    pub(super) fn finished(&self) -> bool {
        self.writes_left == 0 && self.outstanding.is_empty()
    }

    pub(super) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    pub(super) fn acked(&self) -> &[AckedWrite] {
        &self.acked
    }

    /// The next batch of one to four writes, under `policy`, for the primary `to`. Writes
    /// meant for no primary (`None`: it is down, or refuses writes during a switchover) count
    /// as not acknowledged. The draws do not depend on `to`, so the clients' schedule and
    /// payloads are a function of the seed alone.
    pub(super) fn next_batch(&mut self, to: Option<usize>, policy: &Quorum) -> Batch {
        if self.writes_left == 0 {
            return Batch::default();
        }
        let count = self.rng.range(1, 4).min(self.writes_left as u64) as usize;
        self.writes_left -= count;
        let next_in = Some(self.rng.range(500, 60_000));
        let writes: Vec<(WriteId, Bytes)> = (0..count)
            .map(|_| {
                let write = WriteId(self.next_write);
                self.next_write += 1;
                let payload = Bytes::from(format!("write-{}-{}", write.0, self.rng.next()));
                (write, payload)
            })
            .collect();
        let Some(to) = to else {
            self.not_acked += count;
            return Batch {
                next_in,
                writes: Vec::new(),
            };
        };
        for (write, _) in &writes {
            self.outstanding.insert(*write, (policy.clone(), to));
        }
        Batch { next_in, writes }
    }

    /// `node` crashed or restarted: the writers waiting on it will never hear back, and the
    /// outcome is unknown rather than a failure.
    pub(super) fn lost_at(&mut self, node: usize) {
        let before = self.outstanding.len();
        self.outstanding.retain(|_, (_, to)| *to != node);
        self.not_acked += before - self.outstanding.len();
    }

    /// Takes `write`, answered by `node`, off the outstanding ones; returns the policy it was
    /// proposed under, or `None` if it was not outstanding there.
    pub(super) fn answer(&mut self, write: WriteId, node: usize) -> Option<Quorum> {
        match self.outstanding.get(&write) {
            Some((_, to)) if *to == node => {
                self.outstanding.remove(&write).map(|(policy, _)| policy)
            }
            _ => None,
        }
    }

    pub(super) fn refused(&mut self) {
        self.not_acked += 1;
    }

    /// A forced promotion gave up the acknowledged writes `lost` says the new primary lacks,
    /// as the plan reported them at risk: they are no longer owed. Returns how many.
    pub(super) fn forgive(&mut self, lost: impl Fn(&AckedWrite) -> bool) -> usize {
        let before = self.acked.len();
        self.acked.retain(|write| !lost(write));
        before - self.acked.len()
    }

    /// Records an acknowledgement the oracle accepted.
    pub(super) fn acknowledged(&mut self, receipt: &WriteReceipt) {
        if receipt.ack == AckKind::Quorum {
            self.acked_quorum += 1;
        } else {
            self.acked_async += 1;
        }
        self.acked.push(AckedWrite {
            position: LogPosition {
                tx_id: receipt.tx_id,
                hash: receipt.hash,
            },
            kind: receipt.ack,
        });
    }
}
