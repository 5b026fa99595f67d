//! An in-memory [`Coordinator`] with etcd's semantics and fault injection: the coordinator
//! made unavailable, or one member cut from it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::coordinator::{
    Campaign, ClusterView, CommitRecord, Coordinator, CoordinatorError, LeaderRecord, LeaderWatch,
    LeaseId, MemberRecord,
};
use crate::driver::Clock;
use crate::engine::Timestamp;
use crate::types::Epoch;

/// The coordinator's state, with time passed in: leases, and per database the leader key,
/// the members' records, the last commit record and the epoch counter.
#[derive(Debug, Default)]
pub struct CoordinatorState {
    next_lease: i64,
    /// Bumped on every change, as etcd's revision.
    revision: u64,
    /// Each live lease: its time to live and when it expires.
    leases: HashMap<LeaseId, (Duration, Timestamp)>,
    databases: HashMap<String, DatabaseKeys>,
}

#[derive(Debug)]
struct DatabaseKeys {
    leader: Option<LeaderRecord>,
    members: BTreeMap<String, (MemberRecord, LeaseId)>,
    last_commit: Option<CommitRecord>,
    epoch: Epoch,
    /// Bumped on every change of the leader key.
    changes: watch::Sender<u64>,
}

impl Default for DatabaseKeys {
    fn default() -> Self {
        DatabaseKeys {
            leader: None,
            members: BTreeMap::new(),
            last_commit: None,
            epoch: Epoch(0),
            changes: watch::channel(0).0,
        }
    }
}

impl CoordinatorState {
    /// Expires every lease past its time at `now`, with the keys bound to it.
    pub fn expire(&mut self, now: Timestamp) {
        let expired: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(lease, _)| *lease)
            .collect();
        for lease in expired {
            self.drop_lease(lease);
        }
    }

    fn drop_lease(&mut self, lease: LeaseId) {
        self.leases.remove(&lease);
        self.revision += 1;
        for keys in self.databases.values_mut() {
            keys.members.retain(|_, (_, bound)| *bound != lease);
            if keys.leader.as_ref().is_some_and(|l| l.lease == lease) {
                keys.leader = None;
                keys.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// Grants a lease at `now`.
    pub fn grant(&mut self, now: Timestamp, ttl: Duration) -> LeaseId {
        self.next_lease += 1;
        let lease = LeaseId(self.next_lease);
        self.leases.insert(lease, (ttl, now.plus(ttl)));
        lease
    }

    /// Renews a lease at `now`.
    ///
    /// # Errors
    /// [`CoordinatorError::LeaseExpired`] for a lease that is gone.
    pub fn renew(&mut self, now: Timestamp, lease: LeaseId) -> Result<(), CoordinatorError> {
        let (ttl, until) = self
            .leases
            .get_mut(&lease)
            .ok_or(CoordinatorError::LeaseExpired(lease))?;
        *until = now.plus(*ttl);
        Ok(())
    }

    /// Ends a lease.
    pub fn revoke(&mut self, lease: LeaseId) {
        self.drop_lease(lease);
    }

    fn alive(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        match self.leases.contains_key(&lease) {
            true => Ok(()),
            false => Err(CoordinatorError::LeaseExpired(lease)),
        }
    }

    fn keys(&mut self, db: &str) -> &mut DatabaseKeys {
        self.databases.entry(db.to_string()).or_default()
    }

    /// Takes the leader key if vacant.
    ///
    /// # Errors
    /// [`CoordinatorError::LeaseExpired`] for a lease that is gone.
    pub fn campaign(
        &mut self,
        db: &str,
        member: &str,
        address: &str,
        lease: LeaseId,
        above: Epoch,
    ) -> Result<Campaign, CoordinatorError> {
        self.alive(lease)?;
        if let Some(leader) = &self.keys(db).leader {
            return Ok(Campaign::Held(leader.clone()));
        }
        self.revision += 1;
        let keys = self.keys(db);
        let epoch = keys.epoch.max(above).next();
        keys.epoch = epoch;
        keys.leader = Some(LeaderRecord {
            member: member.to_string(),
            address: address.to_string(),
            epoch,
            lease,
        });
        keys.changes.send_modify(|n| *n += 1);
        Ok(Campaign::Won { epoch })
    }

    /// What is held of `db`.
    pub fn view(&self, db: &str) -> ClusterView {
        let Some(keys) = self.databases.get(db) else {
            return ClusterView::default();
        };
        ClusterView {
            leader: keys.leader.clone(),
            members: keys.members.values().map(|(r, _)| r.clone()).collect(),
            last_commit: keys.last_commit.clone(),
            epoch: keys.epoch,
            revision: self.revision,
        }
    }

    /// Publishes a member's record under its lease.
    ///
    /// # Errors
    /// [`CoordinatorError::LeaseExpired`] for a lease that is gone.
    pub fn publish_member(
        &mut self,
        db: &str,
        record: &MemberRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        self.alive(lease)?;
        self.revision += 1;
        let record = MemberRecord {
            revision: self.revision,
            ..record.clone()
        };
        let keys = self.keys(db);
        keys.members.insert(record.member.clone(), (record, lease));
        Ok(())
    }

    /// Publishes the leader's commit point.
    ///
    /// # Errors
    /// [`CoordinatorError::NotLeader`] unless the leader key is bound to `lease`.
    pub fn publish_commit(
        &mut self,
        db: &str,
        record: &CommitRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        let keys = self.keys(db);
        if keys.leader.as_ref().is_none_or(|l| l.lease != lease) {
            return Err(CoordinatorError::NotLeader(db.to_string()));
        }
        keys.last_commit = Some(record.clone());
        self.revision += 1;
        Ok(())
    }

    /// When the lease of `db`'s leader expires, if it is held.
    fn leader_expiry(&self, db: &str) -> Option<Timestamp> {
        let lease = self.databases.get(db)?.leader.as_ref()?.lease;
        self.leases.get(&lease).map(|(_, until)| *until)
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<CoordinatorState>,
    clock: Clock,
    unavailable: Mutex<bool>,
    cut: Mutex<HashSet<String>>,
}

/// An in-memory coordinator shared by the members of a test cluster, each through its own
/// [`client`](MemCoordinator::client). Leases expire by the tokio clock (so paused-time tests
/// control it); the coordinator can be made unavailable, or one member cut from it.
#[derive(Clone, Debug)]
pub struct MemCoordinator {
    shared: Arc<Shared>,
}

impl Default for MemCoordinator {
    fn default() -> Self {
        MemCoordinator::new()
    }
}

impl MemCoordinator {
    /// An empty coordinator.
    pub fn new() -> MemCoordinator {
        MemCoordinator {
            shared: Arc::new(Shared {
                state: Mutex::new(CoordinatorState::default()),
                clock: Clock::start(),
                unavailable: Mutex::new(false),
                cut: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The coordinator as member `member` reaches it.
    pub fn client(&self, member: &str) -> MemCoordinatorClient {
        MemCoordinatorClient {
            member: member.to_string(),
            shared: self.shared.clone(),
        }
    }

    /// Makes every call fail as unavailable (`false`), or answer again (`true`).
    pub fn set_available(&self, available: bool) {
        if let Ok(mut unavailable) = self.shared.unavailable.lock() {
            *unavailable = !available;
        }
    }

    /// Cuts `member` from the coordinator: its calls fail as unavailable.
    pub fn cut(&self, member: &str) {
        if let Ok(mut cut) = self.shared.cut.lock() {
            cut.insert(member.to_string());
        }
    }

    /// Heals a cut.
    pub fn heal(&self, member: &str) {
        if let Ok(mut cut) = self.shared.cut.lock() {
            cut.remove(member);
        }
    }

    /// What is held of `db` now, as an observer outside the cluster reads it.
    pub fn view(&self, db: &str) -> ClusterView {
        let mut state = self.shared.lock();
        state.expire(self.shared.clock.now());
        state.view(db)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, CoordinatorState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One member's handle on a [`MemCoordinator`].
#[derive(Clone, Debug)]
pub struct MemCoordinatorClient {
    member: String,
    shared: Arc<Shared>,
}

impl MemCoordinatorClient {
    /// The state, with expired leases dropped, unless this member cannot reach it.
    fn reach(&self) -> Result<MutexGuard<'_, CoordinatorState>, CoordinatorError> {
        let down = self.shared.unavailable.lock().map(|u| *u).unwrap_or(true);
        let cut = self
            .shared
            .cut
            .lock()
            .map(|c| c.contains(&self.member))
            .unwrap_or(true);
        if down || cut {
            return Err(CoordinatorError::Unavailable(format!(
                "in-memory coordinator unreachable from {}",
                self.member
            )));
        }
        let mut state = self.shared.lock();
        state.expire(self.shared.clock.now());
        Ok(state)
    }
}

#[async_trait::async_trait]
impl Coordinator for MemCoordinatorClient {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, CoordinatorError> {
        let now = self.shared.clock.now();
        Ok(self.reach()?.grant(now, ttl))
    }

    async fn renew_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        let now = self.shared.clock.now();
        self.reach()?.renew(now, lease)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), CoordinatorError> {
        self.reach()?.revoke(lease);
        Ok(())
    }

    async fn campaign(
        &self,
        db: &str,
        member: &str,
        address: &str,
        lease: LeaseId,
        above: Epoch,
    ) -> Result<Campaign, CoordinatorError> {
        self.reach()?.campaign(db, member, address, lease, above)
    }

    async fn view(&self, db: &str) -> Result<ClusterView, CoordinatorError> {
        Ok(self.reach()?.view(db))
    }

    async fn publish_member(
        &self,
        db: &str,
        record: &MemberRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        self.reach()?.publish_member(db, record, lease)
    }

    async fn publish_commit(
        &self,
        db: &str,
        record: &CommitRecord,
        lease: LeaseId,
    ) -> Result<(), CoordinatorError> {
        self.reach()?.publish_commit(db, record, lease)
    }

    async fn watch_leader(&self, db: &str) -> Result<LeaderWatch, CoordinatorError> {
        let changes = self.reach()?.keys(db).changes.subscribe();
        let client = self.clone();
        let db = db.to_string();
        // Wakes on every change of the key, and when the leader's lease runs out (expiry is
        // otherwise lazy: it happens at the next call).
        let stream = futures::stream::unfold(changes, move |mut changes| {
            let client = client.clone();
            let db = db.clone();
            async move {
                let expiry = client.shared.lock().leader_expiry(&db);
                let at_expiry = async {
                    match expiry {
                        Some(at) => {
                            tokio::time::sleep_until(client.shared.clock.instant_of(at)).await
                        }
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = changes.changed() => match changed {
                        Ok(()) => Some((Ok(()), changes)),
                        Err(_) => None,
                    },
                    () = at_expiry => {
                        let now = client.shared.clock.now();
                        client.shared.lock().expire(now);
                        Some((Ok(()), changes))
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}
