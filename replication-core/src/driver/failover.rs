//! Runs a [`FailoverAgent`] on tokio: one task per database and member that renews its lease,
//! publishes its position, reads the coordinator, and carries out the agent's actions on a
//! [`FailoverTarget`] (the local database).

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Clock;
use crate::coordinator::{
    Action, AgentConfig, AgentStatus, Coordinator, CoordinatorError, FailoverAgent, LeaderRecord,
    LeaderWatch, LeaseStep, LocalView,
};
use crate::types::Epoch;

/// Why the local database could not do what the agent asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// The local database, as automatic failover acts on it.
#[async_trait::async_trait]
pub trait FailoverTarget: Send + Sync + 'static {
    /// Its role, epoch and positions, and what its policy needs.
    async fn local(&self) -> Result<LocalView, TargetError>;
    /// Makes it the primary of exactly `epoch`, writing under a lease (no write is
    /// acknowledged before [`grant`](FailoverTarget::grant)), under `policy` (the last
    /// leader's) unless it has a policy of its own.
    async fn lead(&self, epoch: Epoch, policy: Option<&str>) -> Result<(), TargetError>;
    /// Makes it a replica of `leader`, by the rejoin rules.
    async fn follow(&self, leader: &LeaderRecord) -> Result<(), TargetError>;
    /// The primary may acknowledge writes until `until`, counting only the acknowledgements
    /// of `voters` (node names): those the coordinator holds as the policy's voters.
    async fn grant(
        &self,
        until: Instant,
        voters: &[String],
        policy: Option<&str>,
    ) -> Result<(), TargetError>;
}

/// What an operator sees of a running agent, with its times as instants.
#[derive(Clone, Debug, Default)]
pub struct FailoverStatus {
    /// The agent's status.
    pub agent: AgentStatus,
    /// When the last successful renewal was sent.
    pub last_renewal: Option<Instant>,
    /// Until when the local primary may acknowledge (as leader).
    pub lease_until: Option<Instant>,
    /// The last error of the local database.
    pub target_error: Option<String>,
}

/// A running agent.
#[derive(Debug)]
pub struct FailoverHandle {
    status: watch::Receiver<FailoverStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FailoverHandle {
    /// The agent's status as of its last cycle.
    pub fn status(&self) -> FailoverStatus {
        self.status.borrow().clone()
    }

    /// Stops the agent. Its lease is revoked, so that a leader's key frees at once (a clean
    /// hand-over: candidates still check they hold everything).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FailoverHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the agent of `config.member` for database `db`.
pub fn spawn<C: Coordinator + ?Sized, T: FailoverTarget>(
    coordinator: Arc<C>,
    db: &str,
    target: T,
    config: AgentConfig,
) -> FailoverHandle {
    let (status_tx, status) = watch::channel(FailoverStatus::default());
    let (stop, stopped) = oneshot::channel();
    let runner = Runner {
        coordinator,
        db: db.to_string(),
        target,
        clock: Clock::start(),
        agent: FailoverAgent::new(config),
        status: status_tx,
        target_error: None,
        published_voters: Vec::new(),
        published_policy: None,
        commit_refused: false,
    };
    // Every line the agent logs names its database, as the engine's do.
    let span = tracing::info_span!("db", db = %db);
    let task = tokio::spawn(tracing::Instrument::instrument(runner.run(stopped), span));
    FailoverHandle {
        status,
        stop: Some(stop),
        task: Some(task),
    }
}

struct Runner<C: ?Sized, T> {
    coordinator: Arc<C>,
    db: String,
    target: T,
    clock: Clock,
    agent: FailoverAgent,
    status: watch::Sender<FailoverStatus>,
    target_error: Option<String>,
    /// The voters of the last commit record the coordinator accepted from this member: the
    /// only members whose acknowledgements the local primary counts.
    published_voters: Vec<String>,
    /// The policy of that commit record.
    published_policy: Option<String>,
    /// The coordinator refused this cycle's commit record: its lease is not granted.
    commit_refused: bool,
}

impl<C: Coordinator + ?Sized, T: FailoverTarget> Runner<C, T> {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let mut leader_watch: Option<LeaderWatch> = None;
        loop {
            let again_at_once = self.cycle().await;
            self.publish_status();
            if leader_watch.is_none() {
                leader_watch = self
                    .call(self.coordinator.watch_leader(&self.db))
                    .await
                    .ok();
            }
            if again_at_once {
                continue;
            }
            let changed = async {
                match leader_watch.as_mut() {
                    Some(watch) => watch.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                () = tokio::time::sleep(self.next_cycle()) => {}
                () = self.voters_changed() => {}
                change = changed => {
                    if !matches!(change, Some(Ok(()))) {
                        leader_watch = None;
                    }
                }
            }
        }
        if let Some(lease) = self.agent.lease() {
            let _ = self.call(self.coordinator.revoke_lease(lease)).await;
        }
    }

    /// When the next cycle runs, unless woken earlier.
    fn next_cycle(&self) -> std::time::Duration {
        match self.agent.poll_soon() {
            true => self.agent.config().cycle() / 8,
            false => self.agent.config().cycle(),
        }
    }

    /// Returns once the local primary's voters differ from those published (a replica
    /// joined): it counts a new member only once the coordinator holds it, so the next cycle
    /// runs at once rather than a whole cycle later. Never returns when not leading.
    async fn voters_changed(&self) {
        if self.agent.status().lease_until.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(self.agent.config().cycle() / 8).await;
            if let Ok(local) = self.target.local().await {
                let mut voters: Vec<&String> =
                    local.proofs.iter().flat_map(|p| p.voters.iter()).collect();
                voters.sort();
                voters.dedup();
                if !voters.iter().copied().eq(self.published_voters.iter()) {
                    return;
                }
            }
        }
    }

    /// A coordinator call, bounded by a cycle: one that hangs is taken as unavailable.
    async fn call<R>(
        &self,
        call: impl Future<Output = Result<R, CoordinatorError>>,
    ) -> Result<R, CoordinatorError> {
        let limit = self.agent.config().cycle();
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => answer,
            Err(_) => Err(CoordinatorError::Unavailable(format!(
                "no answer within {limit:?}"
            ))),
        }
    }

    /// One cycle; returns whether to run the next at once (the local database changed role).
    async fn cycle(&mut self) -> bool {
        let sent = self.clock.now();
        let answer = match self.agent.begin_cycle(sent) {
            LeaseStep::Grant => {
                let ttl = self.agent.config().ttl;
                self.call(self.coordinator.grant_lease(ttl)).await
            }
            LeaseStep::Renew(lease) => self
                .call(self.coordinator.renew_lease(lease))
                .await
                .map(|()| lease),
        };
        self.agent.on_lease(sent, answer);
        let local = match self.target.local().await {
            Ok(local) => local,
            Err(error) => {
                self.target_failed(error);
                return false;
            }
        };
        let view = match self.call(self.coordinator.view(&self.db)).await {
            Ok(view) => view,
            Err(error) => {
                self.agent.on_error(error);
                return false;
            }
        };
        let now = self.clock.now();
        let actions = self.agent.decide(now, &local, &view);
        self.commit_refused = false;
        let mut again = false;
        for action in actions {
            again |= self.execute(action, &local).await;
        }
        again
    }

    /// Carries out one action; returns whether the local database changed role.
    async fn execute(&mut self, action: Action, local: &LocalView) -> bool {
        let lease = self.agent.lease();
        match action {
            Action::Publish(record) => {
                if let Some(lease) = lease {
                    let published = self.coordinator.publish_member(&self.db, &record, lease);
                    if let Err(error) = self.call(published).await {
                        self.agent.on_error(error);
                    }
                }
                false
            }
            Action::PublishCommit(record) => {
                if let Some(lease) = lease {
                    let published = self.coordinator.publish_commit(&self.db, &record, lease);
                    match self.call(published).await {
                        Ok(()) => {
                            let mut voters: Vec<String> = record
                                .proofs
                                .iter()
                                .flat_map(|proof| proof.voters.iter().cloned())
                                .collect();
                            voters.sort();
                            voters.dedup();
                            self.published_voters = voters;
                            self.published_policy = record.policy.clone();
                        }
                        Err(error) => {
                            self.commit_refused = true;
                            self.agent.on_error(error);
                        }
                    }
                }
                false
            }
            Action::Campaign { above } => {
                let Some(lease) = lease else { return false };
                let config = self.agent.config();
                let campaign = self.coordinator.campaign(
                    &self.db,
                    &config.member,
                    &config.address,
                    lease,
                    above,
                );
                let outcome = self.call(campaign).await;
                let mut again = false;
                for next in self.agent.on_campaign(local, outcome) {
                    again |= Box::pin(self.execute(next, local)).await;
                }
                again
            }
            Action::Lead { epoch, policy } => {
                tracing::warn!(db = %self.db, %epoch, "leading: restarting as the primary of the coordinator's epoch");
                let led = self.target.lead(epoch, policy.as_deref()).await;
                self.target_done(led)
            }
            Action::Follow(leader) => {
                tracing::warn!(db = %self.db, leader = %leader.member, address = %leader.address, epoch = %leader.epoch, "following the leader the coordinator names");
                let followed = self.target.follow(&leader).await;
                self.target_done(followed)
            }
            // A lease whose commit point the coordinator did not take would let the engine
            // acknowledge writes that no successor is bound to hold.
            Action::Lease { .. } if self.commit_refused => false,
            Action::Lease { until } => {
                let until = self.clock.instant_of(until);
                let policy = self.published_policy.as_deref();
                let granted = self
                    .target
                    .grant(until, &self.published_voters, policy)
                    .await;
                if let Err(error) = granted {
                    self.target_failed(error);
                }
                false
            }
        }
    }

    fn target_done(&mut self, done: Result<(), TargetError>) -> bool {
        match done {
            Ok(()) => {
                self.target_error = None;
                true
            }
            Err(error) => {
                self.target_failed(error);
                false
            }
        }
    }

    fn target_failed(&mut self, error: TargetError) {
        if self.target_error.as_ref() != Some(&error.0) {
            tracing::warn!(db = %self.db, %error, "the local database could not follow the failover agent");
        }
        self.target_error = Some(error.0);
    }

    fn publish_status(&self) {
        let agent = self.agent.status().clone();
        let status = FailoverStatus {
            last_renewal: agent.last_renewal.map(|at| self.clock.instant_of(at)),
            lease_until: agent.lease_until.map(|at| self.clock.instant_of(at)),
            agent,
            target_error: self.target_error.clone(),
        };
        let _ = self.status.send(status);
    }
}
