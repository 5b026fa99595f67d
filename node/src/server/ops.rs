//! The server's typed operations, one per client request. Each returns a [`ServerError`]
//! rather than a response: the session converts, once, for every operation.
//!
//! A database's engine is cloned out of its slot before anything is awaited on it, so a
//! write waiting for its quorum holds no lock; an update holds its own database's slot, and
//! nothing else, while it restarts the engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use replication_core::engine::{EngineStatus, Role, UpstreamState, WriteError, WriteReceipt};
use replication_core::types::ParseReplicaIdError;
use replication_core::{ReplicaId, Tx, TxId};

use crate::kv::{KvOp, KvTx};
use crate::metrics::{DatabaseMetrics, ServerMetrics};
use crate::wire::{
    DbSettings, LinkErrorReport, Position, ProgressReport, ReplicaReport, RollbackReport,
    SnapshotReport, SourceReport, StatusReport,
};

use super::catalog::valid_name;
use super::database::{self, Database, policy_of};
use super::{Server, ServerError};

impl Server {
    /// Reads from a loaded database's slot, waiting if it is being opened.
    pub(super) async fn with_database<T>(
        &self,
        db: &str,
        read: impl FnOnce(&Database) -> T,
    ) -> Result<T, ServerError> {
        let unknown = || ServerError::UnknownDatabase(db.to_string());
        let slot = self.catalog.slot(db).ok_or_else(unknown)?;
        let database = slot.read().await;
        database.as_ref().map(read).ok_or_else(unknown)
    }

    /// Writes an atomic transaction to a primary and waits for its commit.
    ///
    /// # Errors
    /// [`ServerError::Write`], whose [`kind`](ServerError::kind) says whether the outcome is
    /// unknown, or an unknown database.
    pub async fn write(&self, db: &str, ops: Vec<KvOp>) -> Result<WriteReceipt, ServerError> {
        let (node, latency, gate) = self
            .with_database(db, |d| {
                (d.node.clone(), d.commit_latency.clone(), d.gate.clone())
            })
            .await?;
        // Counted from here until answered: a switchover waits for this write too.
        let _pass = gate.enter().map_err(|to| ServerError::SwitchingOver {
            db: db.to_string(),
            to,
        })?;
        let started = Instant::now();
        let receipt = match node.write(KvTx { ops }.encode()).await {
            Ok(receipt) => receipt,
            // Not the elected primary (any more): the client follows the one that is.
            Err(WriteError::NoLease) if self.elected_elsewhere(db).is_some() => {
                return Err(ServerError::NotPrimary {
                    via: self.elected_elsewhere(db),
                });
            }
            // Under automatic failover the coordinator's leader key, not the source this
            // replica last followed (perhaps the dead primary being replaced), is the primary.
            Err(WriteError::NotPrimary { .. }) if self.coordinated(db) => {
                return Err(match self.elected_elsewhere(db) {
                    Some(leader) => ServerError::NotPrimary { via: Some(leader) },
                    None => ServerError::NoElectedPrimary(db.to_string()),
                });
            }
            Err(WriteError::NotPrimary { source_address }) => {
                let link = node.status().await.ok().and_then(|s| s.upstream);
                return Err(match link {
                    // Not streaming: nothing shows the source alive (a dial may even reuse a
                    // connection to a dead peer, and wait for its answer to a subscription).
                    Some(
                        state @ (UpstreamState::Disconnected
                        | UpstreamState::Connecting
                        | UpstreamState::Subscribing),
                    ) => ServerError::SourceNotAnswering {
                        last_source: source_address,
                        state: format!("{state:?}").to_lowercase(),
                    },
                    _ => ServerError::Write(WriteError::NotPrimary { source_address }),
                });
            }
            Err(error @ WriteError::Timeout { .. }) => {
                let hint = self
                    .status(db)
                    .await
                    .ok()
                    .and_then(|status| status.warnings.into_iter().next());
                return Err(ServerError::WriteTimedOut { error, hint });
            }
            Err(error) => return Err(ServerError::Write(error)),
        };
        latency.observe(started.elapsed());
        Ok(receipt)
    }

    /// Pushes transactions committed at their source into an external-replicator database.
    ///
    /// # Errors
    /// [`ServerError::Replicate`] for transactions that do not extend its log.
    pub async fn replicate(&self, db: &str, txs: Vec<Tx>) -> Result<WriteReceipt, ServerError> {
        let node = self.with_database(db, |d| d.node.clone()).await?;
        node.replicate(txs).await.map_err(ServerError::Replicate)
    }

    /// Reads `key`, once `min_tx` (if given) is applied here, waiting at most `wait` for it.
    /// Returns the value and the last transaction applied, which the read reflects.
    ///
    /// # Errors
    /// [`ServerError::NotApplied`] when `min_tx` is not applied in time.
    pub async fn get(
        &self,
        db: &str,
        key: &str,
        min_tx: Option<TxId>,
        wait: Duration,
    ) -> Result<(Option<String>, TxId), ServerError> {
        let (node, store) = self
            .with_database(db, |d| (d.node.clone(), d.store.clone()))
            .await?;
        if let Some(min_tx) = min_tx {
            // A stopped engine ends the wait too: the read then shows what was applied.
            let waited = tokio::time::timeout(wait, node.wait_applied(min_tx)).await;
            if waited.is_err() {
                return Err(ServerError::NotApplied {
                    min_tx,
                    wait,
                    applied: store.applied_tx(),
                });
            }
        }
        let applied = store.applied_tx();
        Ok((store.get(key).map(|(value, _)| value), applied))
    }

    /// A database's replication status.
    ///
    /// # Errors
    /// [`ServerError::Status`] when its engine stopped.
    pub async fn status(&self, db: &str) -> Result<StatusReport, ServerError> {
        let (node, settings, gate) = self
            .with_database(db, |d| (d.node.clone(), d.settings.clone(), d.gate.clone()))
            .await?;
        let status = node.status().await.map_err(ServerError::Status)?;
        // Writes past the gate but not yet appended wait too: a switchover must see them.
        let waiting_writes = status.waiting_writes.max(gate.in_flight());
        // The settings' text form, not the engine's Debug one: a client parses it back. The
        // settings hold every policy change (`update` stores them), so it is the one in force.
        let policy = match status.role {
            Role::Primary => policy_of(&settings).ok().map(|q| q.to_string()),
            _ => None,
        };
        let mut report = status_report(db, status);
        if let (Some(source), Some(address)) = (&mut report.source, &settings.replica_of) {
            source.address = address.clone();
        }
        if let (Some(policy), Some(false)) = (&policy, report.policy_met_by_connected) {
            report.warnings.push(unmet_policy_warning(policy, &report));
        }
        Ok(StatusReport {
            policy,
            waiting_writes,
            failover: self.failover_report(db, &settings),
            ..report
        })
    }

    /// Begins a switchover of the primary `db` to `to` (`HOST:PORT`, one of its replicas): new
    /// writes are refused from now on as [`ServerError::SwitchingOver`], naming `to`, so that
    /// clients go there; writes already taken are left to commit. Undone by
    /// [`switchover_abort`](Server::switchover_abort), and by any restart of the database
    /// (its promotion elsewhere is followed by its repointing, which restarts it).
    ///
    /// # Errors
    /// [`ServerError::NotPrimaryHere`] on a replica, [`ServerError::BadTarget`] for a `to`
    /// that is not `HOST:PORT`; an unknown database.
    pub async fn switchover_begin(&self, db: &str, to: &str) -> Result<(), ServerError> {
        if !to.contains(':') || to.contains(char::is_whitespace) || to.contains('/') {
            return Err(ServerError::BadTarget(to.to_string()));
        }
        self.refuse_if_automatic(db).await?;
        let (settings, gate) = self
            .with_database(db, |d| (d.settings.clone(), d.gate.clone()))
            .await?;
        if settings.replica_of.is_some() || settings.external_replicator {
            return Err(ServerError::NotPrimaryHere(db.to_string()));
        }
        gate.close(to.to_string());
        tracing::warn!(db, to, "switchover begun: new writes refused");
        Ok(())
    }

    /// Undoes [`switchover_begin`](Server::switchover_begin): writes are taken again. Returns
    /// the target the switchover had, if one was under way.
    ///
    /// # Errors
    /// An unknown database.
    pub async fn switchover_abort(&self, db: &str) -> Result<Option<String>, ServerError> {
        let gate = self.with_database(db, |d| d.gate.clone()).await?;
        let was = gate.open();
        if let Some(to) = &was {
            tracing::warn!(db, to, "switchover aborted: writes taken again");
        }
        Ok(was)
    }

    /// The durable membership of `db`, after retiring `remove` from it: an operator's action
    /// for a replica that is gone for good (it is logged; the policy stops counting it at
    /// once, and a replica that subscribes again joins again).
    ///
    /// # Errors
    /// An unknown database, a `remove` that is not `node/database` or not a member, or a
    /// stopped database.
    pub async fn members(
        &self,
        db: &str,
        remove: Option<&str>,
    ) -> Result<(Vec<ReplicaId>, Option<ReplicaId>), ServerError> {
        let node = self.with_database(db, |d| d.node.clone()).await?;
        let removed = match remove {
            None => None,
            Some(text) => {
                let replica: ReplicaId = text
                    .parse()
                    .map_err(|e: ParseReplicaIdError| ServerError::BadMember(e.to_string()))?;
                if !node
                    .remove_member(replica.clone())
                    .await
                    .map_err(ServerError::Status)?
                {
                    return Err(ServerError::BadMember(format!(
                        "{replica} is not a member of {db}"
                    )));
                }
                tracing::warn!(db, %replica, "member removed by an operator");
                Some(replica)
            }
        };
        let status = node.status().await.map_err(ServerError::Status)?;
        Ok((status.members, removed))
    }

    /// Creates a database and persists its settings.
    ///
    /// # Errors
    /// A bad name or settings, a name in use, or a failure to open or persist.
    pub async fn create(&self, name: &str, settings: DbSettings) -> Result<(), ServerError> {
        if !valid_name(name) {
            return Err(ServerError::BadName(name.to_string()));
        }
        let exists = || ServerError::Exists(name.to_string());
        let reservation = self.catalog.reserve(name).ok_or_else(exists)?;
        if self.catalog.exists_on_disk(name) {
            return Err(exists());
        }
        database::check(&settings).map_err(|e| ServerError::BadSettings(e.into()))?;
        self.check_coordinator(&settings)?;
        let database = self
            .open(name, settings.clone())
            .await
            .map_err(ServerError::BadSettings)?;
        if let Err(error) = self.catalog.persist(name, &settings) {
            database.node.shutdown().await;
            return Err(error.into());
        }
        reservation.fill(database);
        self.start_agent(name, &settings)
    }

    /// Applies new settings: a new policy takes effect at once, on waiting writes too; other
    /// changes restart the database's engine. The settings are persisted first.
    ///
    /// # Errors
    /// An unknown database, bad settings, or a failure to persist or reopen.
    ///
    /// With `allow_rewind` the engine restarts allowing one rewind: a replica that committed
    /// transactions its source's history lacks drops them (into a rollback file) instead of
    /// stopping. The permission is not stored; [`rewind_outcome`](Server::rewind_outcome)
    /// reports what happened.
    pub async fn update(
        &self,
        name: &str,
        changes: DbSettings,
        allow_rewind: bool,
    ) -> Result<(), ServerError> {
        let unknown = || ServerError::UnknownDatabase(name.to_string());
        // The agent is stopped before the database's slot is taken: it may be waiting for
        // that slot itself.
        let current = self.with_database(name, |d| d.settings.clone()).await?;
        check_changeable(&changes, &current).map_err(|e| ServerError::BadSettings(e.into()))?;
        let failover_changed = changes.failover.is_some() && changes.failover != current.failover
            || changes.lease_ttl.is_some() && changes.lease_ttl != current.lease_ttl
            || changes.max_lag_on_failover.is_some()
                && changes.max_lag_on_failover != current.max_lag_on_failover;
        if failover_changed {
            // Refused settings leave the agent running.
            let proposed = DbSettings {
                failover: changes.failover.clone().or(current.failover.clone()),
                lease_ttl: changes.lease_ttl.or(current.lease_ttl),
                ..current.clone()
            };
            database::check(&proposed).map_err(|e| ServerError::BadSettings(e.into()))?;
            self.check_coordinator(&proposed)?;
            self.stop_agent(name).await;
        }
        let slot = self.catalog.slot(name).ok_or_else(unknown)?;
        let mut guard = slot.write().await;
        let database = guard.as_mut().ok_or_else(unknown)?;
        let bad = |error: database::SettingError| ServerError::BadSettings(error.into());
        let mut settings = database.settings.clone();
        if changes.quorum.is_some() || changes.sync_acks.is_some() {
            settings.quorum = changes.quorum.clone();
            settings.sync_acks = changes.sync_acks;
        }
        let policy = policy_of(&settings).map_err(bad)?;
        let restart = allow_rewind
            || changes.replica_of.is_some() && changes.replica_of != settings.replica_of
            || changes
                .prefetch_buffer
                .is_some_and(|p| Some(p) != settings.prefetch_buffer)
            || changes.replicators.is_some() && changes.replicators != settings.replicators
            || changes
                .allow_tx_discarding
                .is_some_and(|allow| Some(allow) != settings.allow_tx_discarding);
        if let Some(replica_of) = changes.replica_of {
            database::check_replica_of(&replica_of).map_err(bad)?;
            settings.replica_of = Some(replica_of);
        }
        settings.prefetch_buffer = changes.prefetch_buffer.or(settings.prefetch_buffer);
        settings.replicators = changes.replicators.or(settings.replicators);
        // Read at each request: no restart.
        settings.readers = changes.readers.or(settings.readers);
        settings.writers = changes.writers.or(settings.writers);
        settings.allow_tx_discarding = changes.allow_tx_discarding.or(settings.allow_tx_discarding);
        if allow_rewind && (settings.replica_of.is_none() || settings.external_replicator) {
            return Err(ServerError::RewindNeedsReplica(name.to_string()));
        }
        // A change of failover settings restarts the agent (stopped above; stopping a
        // leader's hands its key over); of mode, the engine too (a primary under automatic
        // failover writes only under a lease).
        let was_automatic = settings.automatic_failover();
        settings.failover = changes.failover.or(settings.failover);
        settings.lease_ttl = changes.lease_ttl.or(settings.lease_ttl);
        settings.max_lag_on_failover = changes.max_lag_on_failover.or(settings.max_lag_on_failover);
        // Read by the retention task at its next round: no restart.
        settings.retain_txs = changes.retain_txs.or(settings.retain_txs);
        settings.retain_bytes = changes.retain_bytes.or(settings.retain_bytes);
        settings.max_replica_lag_bytes = changes
            .max_replica_lag_bytes
            .or(settings.max_replica_lag_bytes);
        // Taken at the next start of the engine: it matters only to a replica still empty.
        settings.replay_history = changes.replay_history.or(settings.replay_history);
        database::check(&settings).map_err(bad)?;
        self.check_coordinator(&settings)?;
        let restart = restart || was_automatic != settings.automatic_failover();
        self.catalog.persist(name, &settings)?;
        if restart {
            self.restart(name, database, settings.clone(), allow_rewind)
                .await?;
        } else {
            database
                .node
                .set_policy(Arc::new(policy))
                .await
                .map_err(|_| ServerError::PolicyNotApplied)?;
            database.settings = settings.clone();
        }
        if failover_changed {
            self.start_agent(name, &settings)?;
        }
        Ok(())
    }

    /// Refuses settings under automatic failover on a server without a coordinator.
    fn check_coordinator(&self, settings: &DbSettings) -> Result<(), ServerError> {
        if settings.automatic_failover() && self.coordination.is_none() {
            return Err(super::failover::no_coordinator());
        }
        Ok(())
    }

    /// Refuses an operator's promotion or switchover of a database the coordinator elects.
    async fn refuse_if_automatic(&self, db: &str) -> Result<(), ServerError> {
        let automatic = self
            .with_database(db, |d| d.settings.automatic_failover())
            .await?;
        match automatic {
            true => Err(ServerError::AutomaticFailover(db.to_string())),
            false => Ok(()),
        }
    }

    /// Restarts `database` with `settings`, which are persisted already.
    pub(super) async fn restart(
        &self,
        name: &str,
        database: &mut Database,
        settings: DbSettings,
        allow_rewind: bool,
    ) -> Result<(), ServerError> {
        // Only this database's slot is held: requests for it wait, others go on. A reopen
        // that fails leaves the stopped engine in place, answering that it is shutting down,
        // until the database is unloaded and loaded again.
        database.node.shutdown().await;
        *database = self
            .open_with(name, settings, allow_rewind)
            .await
            .map_err(ServerError::OpenFailed)?;
        Ok(())
    }

    /// After an update that allowed a rewind: waits (at most `wait`) until the replica
    /// streams from its source again or replication stops, and returns its status, which
    /// names what was rolled back and where it is kept.
    ///
    /// # Errors
    /// An unknown database, or its engine stopped.
    pub async fn rewind_outcome(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<StatusReport, ServerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let status = self.status(name).await?;
            let settled = status
                .upstream
                .as_deref()
                .is_none_or(|state| state == "streaming" || state.starts_with("stopped"));
            if settled || tokio::time::Instant::now() >= deadline {
                return Ok(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Promotes the replica database `name` to a primary: its source is cleared from its
    /// settings (persisted first, as [`update`](Server::update) does) and its engine restarted
    /// as a primary over the same log, which is the engine's promotion: a new epoch, saved
    /// before any write is taken, the whole durable log kept, and what it holds beyond its
    /// commit point committed once its new quorum holds it. The policy is kept unless
    /// `quorum` or `sync_acks` is given. Returns the status after the restart.
    ///
    /// Whether another member is more advanced, or the old primary alive, is the caller's
    /// to check (`repnode db promote` does, from the servers it is given): this server sees
    /// only itself.
    ///
    /// # Errors
    /// [`ServerError::NotAReplica`] for a primary or an external replica; an unknown database,
    /// a bad policy, or a failure to persist or reopen.
    pub async fn promote(
        &self,
        name: &str,
        quorum: Option<String>,
        sync_acks: Option<u32>,
        above_epoch: Option<u64>,
    ) -> Result<StatusReport, ServerError> {
        self.refuse_if_automatic(name).await?;
        let unknown = || ServerError::UnknownDatabase(name.to_string());
        let slot = self.catalog.slot(name).ok_or_else(unknown)?;
        let node = {
            let mut guard = slot.write().await;
            let database = guard.as_mut().ok_or_else(unknown)?;
            if database.settings.replica_of.is_none() || database.settings.external_replicator {
                return Err(ServerError::NotAReplica(name.to_string()));
            }
            let mut settings = database.settings.clone();
            settings.replica_of = None;
            settings.min_epoch = settings.min_epoch.max(above_epoch);
            if quorum.is_some() || sync_acks.is_some() {
                settings.quorum = quorum;
                settings.sync_acks = sync_acks;
            }
            policy_of(&settings).map_err(|e| ServerError::BadSettings(e.into()))?;
            self.catalog.persist(name, &settings)?;
            self.restart(name, database, settings, false).await?;
            tracing::warn!(db = name, "promoted to primary by an operator");
            database.node.clone()
        };
        let status = node.status().await.map_err(ServerError::Status)?;
        Ok(status_report(name, status))
    }

    /// Refuses, naming its source, when `db` is not a primary: for reads that ask for the
    /// primary's view, which the client then looks for as it does for writes.
    ///
    /// # Errors
    /// [`ServerError::NotPrimary`] on a replica; an unknown database.
    pub async fn require_primary(&self, db: &str) -> Result<(), ServerError> {
        let settings = self.with_database(db, |d| d.settings.clone()).await?;
        if settings.external_replicator {
            return Err(ServerError::NotPrimary { via: None });
        }
        match settings.replica_of {
            // Under automatic failover, a primary answers only within its lease.
            None if settings.automatic_failover() && !self.holds_lease(db) => {
                Err(ServerError::NotPrimary {
                    via: self.elected_elsewhere(db),
                })
            }
            None => Ok(()),
            Some(text) => Err(ServerError::NotPrimary {
                via: database::parse_replica_of(&text)
                    .ok()
                    .map(|(address, _)| address),
            }),
        }
    }

    /// The transaction a read on the primary must reflect: the last one durable here, so that
    /// it sees every write acknowledged anywhere before it arrived. A primary applies only
    /// what is committed, and one just promoted or elected holds acknowledged writes of the
    /// old primary that its own quorum has not committed again yet: serving its applied
    /// state at once would return a value older than an acknowledged write (Raft's leaders
    /// commit an entry of their term before serving reads, for the same reason).
    ///
    /// # Errors
    /// An unknown database, or an engine that stopped.
    pub async fn primary_read_point(&self, db: &str) -> Result<TxId, ServerError> {
        let node = self.with_database(db, |d| d.node.clone()).await?;
        let status = node.status().await.map_err(ServerError::Status)?;
        Ok(status.durable.tx_id)
    }

    /// Every database: its name, whether it is loaded, and its settings, in name order.
    pub async fn list(&self) -> Vec<(String, bool, DbSettings)> {
        let mut list = Vec::new();
        for (name, slot) in self.catalog.slots() {
            if let Some(database) = slot.read().await.as_ref() {
                list.push((name, true, database.settings.clone()));
            }
        }
        for name in self.catalog.unloaded() {
            let settings = self.catalog.read_settings(&name).unwrap_or_default();
            list.push((name, false, settings));
        }
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Starts serving an unloaded database again.
    ///
    /// # Errors
    /// A database loaded already, not on disk, or that fails to open.
    pub async fn load(&self, name: &str) -> Result<(), ServerError> {
        let reservation = self
            .catalog
            .reserve(name)
            .ok_or_else(|| ServerError::AlreadyLoaded(name.to_string()))?;
        if !self.catalog.unloaded().iter().any(|n| n == name) {
            return Err(ServerError::UnknownDatabase(name.to_string()));
        }
        let settings = self.catalog.read_settings(name)?;
        self.check_coordinator(&settings)?;
        let database = self
            .open(name, settings.clone())
            .await
            .map_err(ServerError::OpenFailed)?;
        self.catalog.clear_unloaded(name);
        reservation.fill(database);
        self.start_agent(name, &settings)
    }

    /// Stops serving a database, keeping its data; it stays unloaded across restarts.
    ///
    /// # Errors
    /// An unknown database, or a marker that could not be written (it is stopped, but loads
    /// again on restart).
    pub async fn unload(&self, name: &str) -> Result<Vec<String>, ServerError> {
        let unknown = || ServerError::UnknownDatabase(name.to_string());
        let slot = self.catalog.slot(name).ok_or_else(unknown)?;
        let connected: Vec<String> = match self.status(name).await {
            Ok(status) => status
                .replicas
                .iter()
                .filter(|r| r.connected)
                .map(|r| r.replica.clone())
                .collect(),
            Err(_) => Vec::new(),
        };
        self.stop_agent(name).await;
        let database = {
            let mut guard = slot.write().await;
            let database = guard.take().ok_or_else(unknown)?;
            self.catalog.release(name, &slot);
            database
        };
        database.node.shutdown().await;
        self.catalog.mark_unloaded(name)?;
        let mut warnings = Vec::new();
        if !connected.is_empty() {
            warnings.push(format!(
                "{} replica(s) were streaming from {name}: {}; they retry until it is loaded \
                 again (`repnode db load {name}`)",
                connected.len(),
                connected.join(", ")
            ));
        }
        Ok(warnings)
    }

    /// Deletes an unloaded database and its data. Returns warnings: the replicas it had,
    /// which now find no such database.
    ///
    /// # Errors
    /// A loaded database, an unknown one, or a failure to remove its files.
    pub async fn delete(&self, name: &str) -> Result<Vec<String>, ServerError> {
        // Reserved while the files go, so that a load or create of the name meanwhile is
        // refused instead of opening a log being removed.
        let _reservation = self
            .catalog
            .reserve(name)
            .ok_or_else(|| ServerError::StillLoaded(name.to_string()))?;
        if !valid_name(name) || !self.catalog.unloaded().iter().any(|n| n == name) {
            return Err(ServerError::UnknownDatabase(name.to_string()));
        }
        // A log that cannot say (a memory store, a damaged file) has no warning to give.
        let members =
            store_file::read_members(&self.catalog.layout().log(name)).unwrap_or_default();
        self.catalog.remove(name)?;
        let mut warnings = Vec::new();
        if !members.is_empty() {
            let names: Vec<String> = members.iter().map(ToString::to_string).collect();
            warnings.push(format!(
                "{name} had {} replica(s): {}; they now find no database {name:?} here. \
                 Delete them, or point them at another source (`repnode db update NAME \
                 --replica-of HOST:PORT/DB`); a database created again under this name is \
                 another history, which they refuse",
                names.len(),
                names.join(", ")
            ));
        }
        Ok(warnings)
    }

    /// What the metrics and health endpoints show: every loaded database's status (as
    /// `status` reports it) with its commit latency and what its state machine applied.
    pub async fn metrics(&self) -> ServerMetrics {
        let mut metrics = ServerMetrics::new(&self.name, self.ready_max_lag);
        for (db, _) in self.catalog.slots() {
            let Ok((store, commit_latency)) = self
                .with_database(&db, |d| (d.store.clone(), d.commit_latency.clone()))
                .await
            else {
                continue;
            };
            // A database whose engine stopped answers no status: not ready, with the reason.
            let status = match self.status(&db).await {
                Ok(status) => status,
                Err(error) => StatusReport {
                    database: db.clone(),
                    log_failure: Some(super::error_chain(&error)),
                    ..StatusReport::default()
                },
            };
            metrics.databases.push(DatabaseMetrics {
                status,
                commit_latency,
                applied: store.applied_tx().0,
                applied_bytes: store.applied_bytes(),
            });
        }
        metrics
    }

    /// Makes sure the database `name` exists with these replication settings, as immudb's
    /// startup `--replication-*` flags do for its default database: created if missing,
    /// updated (and persisted) if its role or quorum differs; an unloaded one is left as it is.
    ///
    /// # Errors
    /// [`ServerError::InDatabase`]: invalid settings, or a database that cannot be opened.
    pub async fn ensure_database(
        &self,
        name: &str,
        settings: DbSettings,
    ) -> Result<(), ServerError> {
        let existing = match self.catalog.slot(name) {
            Some(slot) => slot.read().await.as_ref().map(|db| db.settings.clone()),
            None => None,
        };
        let done = match existing {
            None if self.catalog.unloaded().iter().any(|n| n == name) => Ok(()),
            None => self.create(name, settings).await,
            Some(current)
                if current.replica_of == settings.replica_of
                    && current.quorum == settings.quorum
                    && current.sync_acks == settings.sync_acks =>
            {
                Ok(())
            }
            Some(_) => self.update(name, settings, false).await,
        };
        done.map_err(|error| ServerError::InDatabase {
            name: name.to_string(),
            error: Box::new(error),
        })
    }
}

/// The status report of database `db`.
fn status_report(db: &str, status: EngineStatus) -> StatusReport {
    let (phase, progress) = phase_of(&status);
    StatusReport {
        database: db.to_string(),
        role: match status.role {
            Role::Primary => "primary".into(),
            Role::Replica { .. } => "replica".into(),
            Role::ExternalReplica => "replica (external replicator)".into(),
        },
        epoch: status.epoch.0,
        epoch_primary: status.epoch_primary.as_ref().map(ToString::to_string),
        last_epoch: status.last_epoch.0,
        committed: Position {
            tx_id: status.committed.0,
            hash: status.committed_position.hash.to_hex(),
        },
        precommitted: Position {
            tx_id: status.durable.tx_id.0,
            hash: status.durable.hash.to_hex(),
        },
        waiting_writes: status.waiting_writes,
        fenced: status.fenced.map(|epoch| epoch.0),
        phase,
        progress,
        log_base: status.base.position.tx_id.0,
        snapshot: status.snapshot.map(|(last, bytes)| SnapshotReport {
            last_tx_id: last.0,
            bytes,
        }),
        upstream: status.upstream.clone().map(|state| match state {
            UpstreamState::Stopped(why) => format!("stopped: {why}"),
            UpstreamState::ReceivingSnapshot => "receiving snapshot".into(),
            UpstreamState::InstallingSnapshot => "installing snapshot".into(),
            other => format!("{other:?}").to_lowercase(),
        }),
        last_error: status.last_error,
        link_error: status.link_trouble.map(|trouble| LinkErrorReport {
            cause: trouble.cause.to_string(),
            message: trouble.message,
            attempts: trouble.attempts,
            last_attempt_at: humantime::format_rfc3339_millis(
                std::time::SystemTime::now() - trouble.since_last_attempt,
            )
            .to_string(),
            failing_for_ms: trouble.since_first.as_millis() as u64,
        }),
        source: status.source_address.map(|address| {
            let seen = status.source_lag.map(|(tx, _)| tx.0);
            SourceReport {
                address,
                streaming: status.upstream == Some(UpstreamState::Streaming),
                committed_tx_id: seen,
                lag_txs: seen.map(|seen| seen.saturating_sub(status.committed.0)),
                lag_ms: status.source_lag.map(|(_, lag)| lag.as_millis() as u64),
                connects: status.link_connects,
                errors: status
                    .link_errors
                    .iter()
                    .map(|(cause, count)| (cause.to_string(), *count))
                    .collect(),
            }
        }),
        log_failure: status.log_failure,
        policy_met_by_connected: status.policy_met_by_connected,
        warnings: Vec::new(),
        replicas: replica_reports(status.replicas),
        members: status.members.iter().map(ToString::to_string).collect(),
        policy: None,
        last_rollback: status.last_rollback.map(|r| RollbackReport {
            from_tx_id: r.from.0,
            to_tx_id: r.to.0,
            committed_to_tx_id: r.committed_to.map(|tx| tx.0),
            file: r.location,
        }),
        failover: None,
    }
}

/// What a replica is doing, and how far it has come: `snapshot transfer` (bytes), `installing
/// snapshot`, `catching up` (transactions, as of the source's commit point last heard), or
/// `streaming` once it holds that; its link's state otherwise. `None` on a primary.
fn phase_of(status: &EngineStatus) -> (Option<String>, Option<ProgressReport>) {
    let Some(upstream) = &status.upstream else {
        return (None, None);
    };
    let transfer = status.snapshot_transfer.as_ref().map(|t| {
        let left = t.bytes.saturating_sub(t.bytes_done);
        ProgressReport {
            bytes_done: t.bytes_done,
            bytes_total: t.bytes,
            rate: t.bytes_per_second as f64,
            eta_ms: (t.bytes_per_second > 0).then(|| left * 1000 / t.bytes_per_second),
            ..ProgressReport::default()
        }
    });
    match upstream {
        UpstreamState::ReceivingSnapshot => (Some("snapshot transfer".into()), transfer),
        UpstreamState::InstallingSnapshot => (Some("installing snapshot".into()), transfer),
        UpstreamState::Streaming => {
            let committed = status.committed;
            let source = status.source_committed.unwrap_or(committed);
            if committed >= source {
                return (Some("streaming".into()), None);
            }
            let remaining = source.0 - committed.0;
            let (elapsed, since) = status
                .streaming_since
                .unwrap_or((Duration::ZERO, committed));
            let done = committed.0.saturating_sub(since.0);
            let rate = if elapsed.is_zero() {
                0.0
            } else {
                done as f64 / elapsed.as_secs_f64()
            };
            let progress = ProgressReport {
                txs_done: done,
                txs_remaining: remaining,
                rate,
                eta_ms: (rate > 0.0).then(|| (remaining as f64 / rate * 1000.0) as u64),
                ..ProgressReport::default()
            };
            (Some("catching up".into()), Some(progress))
        }
        UpstreamState::Stopped(_) => (Some("stopped".into()), None),
        other => (Some(format!("{other:?}").to_lowercase()), transfer),
    }
}

/// The replicas of a status, as reports and metrics show them.
fn replica_reports(replicas: Vec<replication_core::engine::ReplicaStatus>) -> Vec<ReplicaReport> {
    replicas
        .into_iter()
        .map(|r| ReplicaReport {
            replica: r.id.to_string(),
            node: r.id.node.0,
            database: r.id.database,
            member: r.member,
            address: r.address,
            acked_tx_id: r.acked.0,
            lag_txs: r.lag_txs,
            lag_ms: r.lag.as_millis() as u64,
            connected: r.connected,
        })
        .collect()
}

/// Why a primary's writes wait: its policy needs more replicas than are connected.
fn unmet_policy_warning(policy: &str, report: &StatusReport) -> String {
    let connected = report.replicas.iter().filter(|r| r.connected).count();
    format!(
        "the policy `{policy}` cannot be met by the {connected} replica(s) connected now: new \
         writes wait (until their timeout) for more to connect; connect replicas or lower the \
         policy (`repnode db update NAME --quorum ...`)"
    )
}

/// Refuses changes an update cannot make, rather than answering `ok` and ignoring them: the
/// store and the external replicator are chosen at creation, and `min_epoch` only by
/// promotion.
fn check_changeable(
    changes: &DbSettings,
    current: &DbSettings,
) -> Result<(), database::SettingError> {
    let refused = |what: &str| {
        Err(database::SettingError::Contradictory(format!(
            "{what} is chosen when a database is created and cannot be changed: create a \
             new database (and replicate into it) instead"
        )))
    };
    let store = |s: &DbSettings| s.store.clone().unwrap_or_else(|| "file".into());
    if changes.store.is_some() && store(changes) != store(current) {
        return refused("--store");
    }
    if changes.external_replicator && !current.external_replicator {
        return refused("--external-replicator");
    }
    if changes.quorum.is_some() && changes.sync_acks.is_some() {
        return database::check(changes);
    }
    Ok(())
}
