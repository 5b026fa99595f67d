//! Automatic failover through an external coordinator (etcd, or the in-memory one tests use).
//!
//! repnode elects no primary by itself: a [`Coordinator`] holds, per database, one **leader
//! key** bound to the leader's **lease**, an **epoch counter** that makes every new leader's
//! epoch unique and higher than all before (the fencing token the engine's epochs already
//! enforce), each member's published **position**, and the last **commit point** the leader
//! published. This is Patroni's design, with its users' lessons:
//!
//! - The primary fences itself before its lease can expire: it acknowledges writes only until
//!   the time it *sent* its last successful renewal, plus the time to live, minus a margin
//!   ([`FailoverAgent`] computes it, [`crate::driver::Node::renew_lease`] hands it to the
//!   engine, which refuses everything past it, under any policy).
//! - Only safe candidates campaign: members that rank at least as high as every published
//!   position, that hold the last published commit point under a synchronous policy (and see
//!   enough members that any acknowledged write is among them), or lag it by at most
//!   `max_lag_on_failover` transactions under an asynchronous one.
//! - Without the coordinator nothing is promoted, and the primary stops acknowledging at its
//!   lease deadline.
//!
//! The decisions are a sans-IO state machine, [`FailoverAgent`]; [`crate::driver::failover`]
//! runs it against a [`Coordinator`] and a [`FailoverTarget`](crate::driver::failover::FailoverTarget)
//! (the local database).
//!
//! ```
//! use std::time::Duration;
//! use replication_core::coordinator::{Campaign, Coordinator};
//! use replication_core::testing::MemCoordinator;
//! use replication_core::Epoch;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let etcd_like = MemCoordinator::new();
//! let n1 = etcd_like.client("n1");
//! let lease = n1.grant_lease(Duration::from_secs(5)).await.unwrap();
//! let won = n1.campaign("app", "n1", "127.0.0.1:7440/app", lease, Epoch(0)).await.unwrap();
//! assert_eq!(won, Campaign::Won { epoch: Epoch(1) });
//! # }
//! ```

mod agent;

use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use agent::{Action, AgentConfig, AgentStatus, FailoverAgent, LeaseStep, LocalView};

use crate::types::{Epoch, LogPosition};

/// A lease the coordinator granted: keys bound to it vanish when it is not renewed in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LeaseId(pub i64);

/// Who holds a database's leader key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderRecord {
    /// The member (node name).
    pub member: String,
    /// Where its replicas subscribe (for repnode, `HOST:PORT/DB`).
    pub address: String,
    /// The epoch the coordinator granted it: it writes in exactly this epoch.
    pub epoch: Epoch,
    /// The lease the key is bound to.
    pub lease: LeaseId,
}

/// A member's role, as it publishes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// It takes writes (or would, holding the lease).
    Primary,
    /// It replicates from another member.
    Replica,
}

/// A member's position, published under its own lease (so it vanishes with the member).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member (node name).
    pub member: String,
    /// Where replicas would subscribe to it.
    pub address: String,
    /// Its role.
    pub role: MemberRole,
    /// Its epoch.
    pub epoch: Epoch,
    /// The epoch of its last durable transaction: logs rank by it first, then by position.
    pub last_epoch: Epoch,
    /// Its durable (precommitted) position.
    pub durable: LogPosition,
    /// Its commit point.
    pub committed: LogPosition,
    /// The coordinator's revision of the record as read (0 when publishing): a record newer
    /// than the revision at which a reader first saw the leader key vacant was published
    /// after the last leader stopped, so it holds every write acknowledged through it.
    #[serde(default)]
    pub revision: u64,
}

impl MemberRecord {
    /// The log's rank, as Raft compares logs: the epoch of the last transaction, then its id.
    pub fn rank(&self) -> (Epoch, u64) {
        (self.last_epoch, self.durable.tx_id.0)
    }
}

/// The commit point the leader last published: what a failover must not lose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The leader that published it.
    pub member: String,
    /// Its epoch.
    pub epoch: Epoch,
    /// Its commit point.
    pub committed: LogPosition,
    /// The epoch of the log entry at `committed`, when older than `epoch`: a new leader
    /// publishes the log it was elected with, which ends in an earlier epoch. `None`: `epoch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_epoch: Option<Epoch>,
    /// Whether its policy was synchronous (acknowledged writes are on replicas).
    pub synchronous: bool,
    /// Under a synchronous policy, the ways a candidate can prove that the members whose
    /// positions it sees (its own included) hold every write the policy acknowledged: one
    /// proof that holds is enough (`A and B` policies have one per part).
    pub proofs: Vec<Proof>,
    /// The leader's quorum policy, in its node's text form: the next leader adopts it unless
    /// it was given one of its own.
    pub policy: Option<String>,
}

impl CommitRecord {
    /// Whether a log ending at `durable`, whose last entry is of epoch `last_epoch`, holds
    /// this commit point. A log that ends in the leader's epoch or later holds it (the
    /// leader's entries follow the whole log it was elected with, and the leader of a later
    /// epoch was elected holding it); one that ends in the epoch of the entry at the commit
    /// point holds it once long enough (one writer per epoch: it is a prefix of that writer's
    /// log); any other only if it reaches exactly that position, hash included. A longer log
    /// of an older epoch may hold a history the leader superseded.
    pub fn held_by(&self, last_epoch: Epoch, durable: LogPosition) -> bool {
        let position_epoch = self.position_epoch.unwrap_or(self.epoch).min(self.epoch);
        (last_epoch >= self.epoch && last_epoch > position_epoch)
            || (last_epoch == position_epoch && durable.tx_id >= self.committed.tx_id)
            || durable == self.committed
    }
}

/// Any `needed` of `voters` include one member that holds every acknowledged write: for a
/// policy that needs `k` acknowledgements among `n` voters, `needed` is `n − k + 1` (the rule
/// of `repnode failover plan`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The members (node names) whose acknowledgements the policy counts.
    pub voters: Vec<String>,
    /// How many of them must be seen.
    pub needed: u32,
}

impl Proof {
    /// Whether the members `seen` prove it.
    pub fn holds<'a>(&self, seen: impl IntoIterator<Item = &'a str>) -> bool {
        let seen: std::collections::BTreeSet<&str> = seen.into_iter().collect();
        let count = self
            .voters
            .iter()
            .filter(|v| seen.contains(v.as_str()))
            .count();
        count >= self.needed as usize
    }
}

/// What the coordinator holds of one database, read at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The leader key, if held.
    pub leader: Option<LeaderRecord>,
    /// Every member whose lease is alive.
    pub members: Vec<MemberRecord>,
    /// The last commit point a leader published.
    pub last_commit: Option<CommitRecord>,
    /// The highest epoch the coordinator granted.
    pub epoch: Epoch,
    /// The coordinator's revision this view reflects: every record published after it was
    /// read has a higher one.
    pub revision: u64,
}

/// The outcome of a campaign for the leader key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Campaign {
    /// The key is ours, in this epoch.
    Won {
        /// The epoch granted: above every epoch granted before and above the one asked.
        epoch: Epoch,
    },
    /// Another member holds it.
    Held(LeaderRecord),
}

/// Why a coordinator call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// The coordinator did not answer (in time): nothing is known of the call's effect.
    #[error("coordinator unavailable: {0}")]
    Unavailable(String),
    /// The lease expired (or was revoked): keys bound to it are gone.
    #[error("lease {0:?} expired")]
    LeaseExpired(LeaseId),
    /// The caller does not hold the leader key it acted under.
    #[error("the leader key of {0:?} is not held by this lease")]
    NotLeader(String),
    /// A record read from the coordinator could not be decoded.
    #[error("malformed record at {key}: {reason}")]
    Malformed {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A stream that yields once per change of a database's leader key (to be read again with
/// [`Coordinator::view`]), or an error after which the watch must be made again.
pub type LeaderWatch =
    Pin<Box<dyn futures::Stream<Item = Result<(), CoordinatorError>> + Send + 'static>>;

/// The coordinator: leases, the leader key, the epoch counter and published positions, per
/// database. Implementations: `coordinator-etcd`, and [`crate::testing::MemCoordinator`].
/// [`crate::testing::coordinator_conformance`] checks the rules below.
///
/// Rules an implementation keeps:
/// - A lease lives until `ttl` after the coordinator last granted or renewed it; keys bound to
///   it vanish then, at once for every reader.
/// - [`campaign`](Coordinator::campaign) is atomic: it takes the leader key only if nobody
///   holds it, and the epoch it grants is one more than the highest of the counter and
///   `above`, stored with the key, so two leaders never share an epoch.
/// - [`publish_commit`](Coordinator::publish_commit) succeeds only while the leader key is
///   bound to the given lease.
#[async_trait::async_trait]
pub trait Coordinator: Send + Sync + 'static {
    /// Grants a lease that lives `ttl` unless renewed.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError>;
    /// Renews a lease for its whole time to live.
    async fn renew_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError>;
    /// Ends a lease now; its keys vanish (a clean hand-over of the leader key).
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError>;
    /// Takes the leader key of `db` for `member` if nobody holds it, bound to `lease`, in an
    /// epoch above `above` and above every epoch granted before.
    async fn campaign(
        &self,
        db: &str,
        member: &str,
        address: &str,
        lease: LeaseId,
        above: Epoch,
    ) -> Result<Campaign, CoordinatorError>;
    /// Reads what the coordinator holds of `db`.
    async fn view(&self, db: &str) -> Result<ClusterView, CoordinatorError>;
    /// Publishes a member's position, bound to its lease.
    async fn publish_member(
        &self,
        db: &str,
        record: &MemberRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError>;
    /// Publishes the leader's commit point; refused ([`CoordinatorError::NotLeader`]) unless
    /// the leader key is bound to `lease`. It outlives the lease: it is what the next leader
    /// must hold.
    async fn publish_commit(
        &self,
        db: &str,
        record: &CommitRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError>;
    /// Watches the leader key of `db`.
    async fn watch_leader(&self, db: &str) -> Result<LeaderWatch, CoordinatorError>;
}
