//! [`Replicas`]: what a source knows of its replicas — every identity heard from (address,
//! tags, acknowledged durable position, whether connected) — and the durable membership, the
//! replicas its quorum policy counts.
//!
//! A replica becomes a member when its first subscription is accepted; the source then queues
//! `SaveMembers` before anything the member's acknowledgements can commit. Only an operator
//! removes one. Policies see every member and only members: one not heard from since this
//! node started has acknowledged nothing, which is what a majority must assume.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{ReplicaStatus, Timestamp};
use crate::quorum::{ReplicaProgress, Tags};
use crate::types::{ReplicaId, TxId};

/// Most replica identities remembered; the longest-disconnected is forgotten first.
const MAX_REPLICA_RECORDS: usize = 1024;

/// Most members of one database's membership: an authenticated peer naming ever new databases
/// must not grow it (and what a majority needs) without limit.
const MAX_MEMBERS: usize = 256;

/// The tags of a member not heard from since this node started.
static NO_TAGS: Tags = BTreeMap::new();

/// What a source remembers of a replica identity across its channels.
#[derive(Debug)]
struct ReplicaRecord {
    address: String,
    tags: Tags,
    durable: TxId,
    connected: bool,
    last_seen: Timestamp,
    /// When it last held everything this node had; lag is measured from then.
    caught_up_at: Timestamp,
}

/// The replicas of one source. See the [module docs](self).
#[derive(Debug)]
pub(super) struct Replicas {
    records: BTreeMap<ReplicaId, ReplicaRecord>,
    members: BTreeSet<ReplicaId>,
}

impl Replicas {
    /// No replica heard from yet, and the membership the log saved.
    pub(super) fn new(members: Vec<ReplicaId>) -> Replicas {
        Replicas {
            records: BTreeMap::new(),
            members: members.into_iter().collect(),
        }
    }

    /// The members, in order.
    pub(super) fn members(&self) -> impl Iterator<Item = &ReplicaId> {
        self.members.iter()
    }

    /// Whether `replica` is a member.
    pub(super) fn is_member(&self, replica: &ReplicaId) -> bool {
        self.members.contains(replica)
    }

    /// Whether `replica` may subscribe: a member, or room for one more.
    pub(super) fn can_join(&self, replica: &ReplicaId) -> bool {
        self.members.contains(replica) || self.members.len() < MAX_MEMBERS
    }

    /// Makes `replica` a member; returns whether it was not one (the membership must then be
    /// saved before anything counts it).
    pub(super) fn join(&mut self, replica: &ReplicaId) -> bool {
        self.members.insert(replica.clone())
    }

    /// Retires `replica`; returns whether it was a member.
    pub(super) fn remove_member(&mut self, replica: &ReplicaId) -> bool {
        self.members.remove(replica)
    }

    /// `replica` subscribed from `address`, announcing `tags`.
    pub(super) fn subscribed(
        &mut self,
        replica: &ReplicaId,
        address: String,
        tags: Tags,
        now: Timestamp,
    ) {
        let record = self
            .records
            .entry(replica.clone())
            .or_insert_with(|| ReplicaRecord {
                address: String::new(),
                tags: Tags::new(),
                durable: TxId::ZERO,
                connected: false,
                last_seen: now,
                caught_up_at: now,
            });
        record.address = address;
        record.tags = tags;
        self.forget_old();
    }

    /// Whether a channel of `replica` streams.
    pub(super) fn set_connected(&mut self, replica: &ReplicaId, connected: bool) {
        if let Some(record) = self.records.get_mut(replica) {
            record.connected = connected;
        }
    }

    /// `replica` acknowledged `acked` as durable; `caught_up` when that is everything this
    /// node holds.
    pub(super) fn acknowledged(
        &mut self,
        replica: &ReplicaId,
        acked: TxId,
        caught_up: bool,
        now: Timestamp,
    ) {
        if let Some(record) = self.records.get_mut(replica) {
            record.last_seen = now;
            record.durable = record.durable.max(acked);
            if caught_up {
                record.caught_up_at = now;
            }
        }
    }

    /// What the quorum policy sees: every member, and only members.
    pub(super) fn progress(&self) -> Vec<ReplicaProgress<'_>> {
        self.members
            .iter()
            .map(|id| match self.records.get(id) {
                Some(record) => ReplicaProgress {
                    id: &id.node,
                    tags: &record.tags,
                    durable: record.durable,
                    connected: record.connected,
                },
                None => ReplicaProgress {
                    id: &id.node,
                    tags: &NO_TAGS,
                    durable: TxId::ZERO,
                    connected: false,
                },
            })
            .collect()
    }

    fn forget_old(&mut self) {
        while self.records.len() > MAX_REPLICA_RECORDS {
            let oldest = self
                .records
                .iter()
                .filter(|(_, r)| !r.connected)
                .min_by_key(|(_, r)| r.last_seen)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => self.records.remove(&id),
                None => break,
            };
        }
    }

    /// Every replica heard from and every member, by identity; `last` is this node's last
    /// transaction.
    pub(super) fn statuses(&self, now: Timestamp, last: TxId) -> Vec<ReplicaStatus> {
        let unseen_members = self
            .members
            .iter()
            .filter(|id| !self.records.contains_key(*id))
            .map(|id| ReplicaStatus {
                id: id.clone(),
                address: String::new(),
                tags: Tags::new(),
                acked: TxId::ZERO,
                lag_txs: last.0,
                lag: Duration::ZERO,
                connected: false,
                member: true,
            });
        let mut statuses: Vec<ReplicaStatus> = self
            .records
            .iter()
            .map(|(id, record)| {
                let lag_txs = last.0.saturating_sub(record.durable.0);
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
                    member: self.members.contains(id),
                }
            })
            .chain(unseen_members)
            .collect();
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        statuses
    }
}
