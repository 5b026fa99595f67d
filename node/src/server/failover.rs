//! Automatic failover: every database created with `--failover auto` runs a
//! [`FailoverAgent`](replication_core::coordinator::FailoverAgent) against the server's
//! coordinator (`serve --coordinator`), which makes it the primary of exactly the epoch the
//! coordinator grants, grants its writes a lease, or repoints it to the member holding the
//! leader key. The decisions are the core's; this module is the local database's side.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use replication_core::QuorumPolicy;
use replication_core::coordinator::{AgentConfig, Coordinator, LeaderRecord, LocalView};
use replication_core::driver::failover::{self, FailoverHandle, FailoverTarget, TargetError};
use replication_core::types::Epoch;

use super::database::{self, policy_of};
use super::{Server, ServerError};
use crate::wire::{DbSettings, FailoverReport};

/// The server's coordinator and the agents of its databases under automatic failover.
pub(crate) struct Coordination {
    coordinator: Arc<dyn Coordinator>,
    /// `HOST:PORT` replicas reach this server at.
    advertise: String,
    agents: Mutex<HashMap<String, FailoverHandle>>,
}

impl Coordination {
    /// A coordination through `coordinator`, this server reachable at `advertise`.
    pub(crate) fn new(coordinator: Arc<dyn Coordinator>, advertise: String) -> Coordination {
        Coordination {
            coordinator,
            advertise,
            agents: Mutex::new(HashMap::new()),
        }
    }

    fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, FailoverHandle>> {
        self.agents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The local database as its agent acts on it. It holds the server weakly: a stopped
/// server's agents find nothing to act on.
struct DbTarget {
    server: Weak<Server>,
    db: String,
}

impl DbTarget {
    fn server(&self) -> Result<Arc<Server>, TargetError> {
        self.server
            .upgrade()
            .ok_or_else(|| TargetError("the server is shutting down".into()))
    }
}

/// A database under automatic failover on a server without a coordinator.
pub(crate) fn no_coordinator() -> ServerError {
    ServerError::BadSettings(
        database::SettingError::Failover(
            "--failover auto needs a coordinator: serve --coordinator etcd=HOST:PORT --cluster \
             NAME"
                .into(),
        )
        .into(),
    )
}

fn target_error(error: ServerError) -> TargetError {
    TargetError(super::error_chain(&error))
}

#[async_trait::async_trait]
impl FailoverTarget for DbTarget {
    async fn local(&self) -> Result<LocalView, TargetError> {
        self.server()?
            .local_view(&self.db)
            .await
            .map_err(target_error)
    }

    async fn lead(&self, epoch: Epoch, policy: Option<&str>) -> Result<(), TargetError> {
        let server = self.server()?;
        server
            .lead(&self.db, epoch, policy)
            .await
            .map_err(target_error)
    }

    async fn follow(&self, leader: &LeaderRecord) -> Result<(), TargetError> {
        let changes = DbSettings {
            replica_of: Some(leader.address.clone()),
            ..DbSettings::default()
        };
        let server = self.server()?;
        server
            .update(&self.db, changes, false)
            .await
            .map_err(target_error)
    }

    async fn grant(
        &self,
        until: tokio::time::Instant,
        voters: &[String],
        policy: Option<&str>,
    ) -> Result<(), TargetError> {
        let node = self
            .server()?
            .node_of(&self.db)
            .await
            .map_err(target_error)?;
        let voters = voters
            .iter()
            .map(|v| replication_core::NodeId::new(v.as_str()));
        // The published policy in the text form this node wrote; one that does not parse
        // (another version's) leaves the node's own policy alone in force.
        let published = policy
            .and_then(|text| text.parse::<replication_core::quorum::Quorum>().ok())
            .map(|q| std::sync::Arc::new(q) as std::sync::Arc<dyn QuorumPolicy>);
        node.renew_lease(until, Some(voters.collect()), published)
            .await
            .map_err(|e| TargetError(e.to_string()))
    }
}

impl Server {
    /// Starts the failover agent of `db` if its settings ask for automatic failover.
    ///
    /// # Errors
    /// [`ServerError::BadSettings`] when they do and this server has no coordinator.
    pub(crate) fn start_agent(&self, db: &str, settings: &DbSettings) -> Result<(), ServerError> {
        if !settings.automatic_failover() {
            return Ok(());
        }
        let Some(coordination) = &self.coordination else {
            return Err(no_coordinator());
        };
        let mut agents = coordination.agents();
        if agents.contains_key(db) {
            return Ok(());
        }
        let mut config = AgentConfig::new(
            self.name.as_str(),
            format!("{}/{db}", coordination.advertise),
            database::lease_ttl(settings),
        );
        config.max_lag_on_failover = settings.max_lag_on_failover.unwrap_or(0);
        let target = DbTarget {
            server: self.me.clone(),
            db: db.to_string(),
        };
        let handle = failover::spawn(coordination.coordinator.clone(), db, target, config);
        agents.insert(db.to_string(), handle);
        tracing::info!(db, "automatic failover: agent started");
        Ok(())
    }

    /// Stops the failover agent of `db`, if it runs: its lease is revoked, so that a leader's
    /// key frees at once for a member that holds everything.
    pub(crate) async fn stop_agent(&self, db: &str) {
        let handle = self
            .coordination
            .as_ref()
            .and_then(|c| c.agents().remove(db));
        if let Some(handle) = handle {
            handle.stop().await;
        }
    }

    /// Stops every agent (at shutdown).
    pub(crate) async fn stop_agents(&self) {
        let handles: Vec<FailoverHandle> = match &self.coordination {
            Some(c) => c.agents().drain().map(|(_, h)| h).collect(),
            None => Vec::new(),
        };
        for handle in handles {
            handle.stop().await;
        }
    }

    /// What the agent of `db` sees, for its status.
    pub(crate) fn failover_report(
        &self,
        db: &str,
        settings: &DbSettings,
    ) -> Option<FailoverReport> {
        let coordination = self.coordination.as_ref()?;
        let status = coordination.agents().get(db)?.status();
        let now = tokio::time::Instant::now();
        let agent = status.agent;
        Some(FailoverReport {
            leader: agent.leader.as_ref().map(|l| l.member.clone()),
            leader_address: agent.leader.as_ref().map(|l| l.address.clone()),
            leader_epoch: agent.leader.as_ref().map(|l| l.epoch.0),
            lease_ttl_ms: database::lease_ttl(settings).as_millis() as u64,
            lease_remaining_ms: status
                .lease_until
                .map(|until| until.saturating_duration_since(now).as_millis() as u64),
            last_renewal_ms_ago: status
                .last_renewal
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            coordinator_error: agent.coordinator_error,
            not_campaigning: agent.not_campaigning,
            local_error: status.target_error,
            elections_won: agent.elections_won,
            renew_failures: agent.renew_failures,
            self_fencings: agent.self_fencings,
        })
    }

    /// Whether a failover agent runs for `db` (automatic failover).
    pub(crate) fn coordinated(&self, db: &str) -> bool {
        self.coordination
            .as_ref()
            .is_some_and(|coordination| coordination.agents().contains_key(db))
    }

    /// Where the leader of `db` is (`HOST:PORT`), when its agent knows of one elsewhere: a
    /// write refused for want of a lease is sent there.
    pub(crate) fn elected_elsewhere(&self, db: &str) -> Option<String> {
        let coordination = self.coordination.as_ref()?;
        let leader = coordination.agents().get(db)?.status().agent.leader?;
        let (address, _) = leader.address.rsplit_once('/')?;
        (address != coordination.advertise).then(|| address.to_string())
    }

    /// Whether this member leads `db` under a lease that has not run out, as its agent last
    /// granted it: only then may it answer reads as the primary (a primary past its lease
    /// may have been replaced, and would serve stale reads).
    pub(crate) fn holds_lease(&self, db: &str) -> bool {
        let Some(coordination) = &self.coordination else {
            return false;
        };
        let Some(status) = coordination.agents().get(db).map(FailoverHandle::status) else {
            return false;
        };
        let leads = status
            .agent
            .leader
            .is_some_and(|leader| leader.member == self.name);
        leads && status.lease_until > Some(tokio::time::Instant::now())
    }

    /// The engine of a loaded database.
    async fn node_of(&self, db: &str) -> Result<replication_core::driver::Node, ServerError> {
        let unknown = || ServerError::UnknownDatabase(db.to_string());
        let slot = self.catalog.slot(db).ok_or_else(unknown)?;
        let guard = slot.read().await;
        guard.as_ref().map(|d| d.node.clone()).ok_or_else(unknown)
    }

    /// The local view of `db` its agent decides from.
    async fn local_view(&self, db: &str) -> Result<LocalView, ServerError> {
        let unknown = || ServerError::UnknownDatabase(db.to_string());
        let slot = self.catalog.slot(db).ok_or_else(unknown)?;
        let (node, settings) = {
            let guard = slot.read().await;
            let database = guard.as_ref().ok_or_else(unknown)?;
            (database.node.clone(), database.settings.clone())
        };
        let status = node.status().await.map_err(ServerError::Status)?;
        let policy = policy_of(&settings).map_err(|e| ServerError::BadSettings(e.into()))?;
        // The source as the settings name it (`HOST:PORT/DB`), the form of a leader's address.
        Ok(LocalView {
            following: settings.replica_of.clone(),
            ..LocalView::of(&status, &policy)
        })
    }

    /// Makes `db` the primary of exactly `epoch`: its source cleared and its engine restarted
    /// above `epoch − 1` (persisted first), as a promotion does, under `policy` (the last
    /// leader's) unless its settings name one. The engine is leased: it acknowledges nothing
    /// until its agent grants the lease.
    ///
    /// # Errors
    /// An unknown database, a failure to persist or reopen, or an engine that began another
    /// epoch (its log already holds a higher one: the agent campaigns again above it).
    async fn lead(&self, db: &str, epoch: Epoch, policy: Option<&str>) -> Result<(), ServerError> {
        let unknown = || ServerError::UnknownDatabase(db.to_string());
        let slot = self.catalog.slot(db).ok_or_else(unknown)?;
        let node = {
            let mut guard = slot.write().await;
            let database = guard.as_mut().ok_or_else(unknown)?;
            let mut settings = database.settings.clone();
            settings.replica_of = None;
            if settings.quorum.is_none() && settings.sync_acks.is_none() {
                settings.quorum = policy.map(str::to_string);
            }
            policy_of(&settings).map_err(|e| ServerError::BadSettings(e.into()))?;
            let below = epoch.0.saturating_sub(1);
            settings.min_epoch = Some(settings.min_epoch.unwrap_or(0).max(below));
            self.catalog.persist(db, &settings)?;
            self.restart(db, database, settings, false).await?;
            database.node.clone()
        };
        let status = node.status().await.map_err(ServerError::Status)?;
        if status.epoch != epoch {
            return Err(ServerError::EpochNotGranted {
                db: db.to_string(),
                granted: epoch.0,
                began: status.epoch.0,
            });
        }
        tracing::warn!(db, %epoch, "elected primary by the coordinator");
        Ok(())
    }
}
