//! [`FailoverAgent`]: what one member of one database does, each cycle, with what the
//! coordinator holds. Sans-IO: it takes what was read and answered, and returns [`Action`]s.

use std::time::Duration;

use super::{Campaign, ClusterView, CommitRecord, CoordinatorError, LeaderRecord, LeaseId};
use super::{MemberRecord, MemberRole, Proof};
use crate::engine::Timestamp;
use crate::types::{Epoch, LogPosition};

/// How one member takes part in automatic failover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    /// This member's name, unique in the cluster.
    pub member: String,
    /// Where replicas subscribe to it (for repnode, `HOST:PORT/DB`).
    pub address: String,
    /// The lease's time to live: how long a lost primary keeps the key.
    pub ttl: Duration,
    /// Under an asynchronous policy, how many transactions a candidate may lack of the last
    /// published commit point (0: none; more is a choice to lose them).
    pub max_lag_on_failover: u64,
}

impl AgentConfig {
    /// A member with the defaults: no lag allowed on failover.
    pub fn new(member: impl Into<String>, address: impl Into<String>, ttl: Duration) -> Self {
        AgentConfig {
            member: member.into(),
            address: address.into(),
            ttl,
            max_lag_on_failover: 0,
        }
    }

    /// How often the agent renews its lease and reconciles: a quarter of the time to live,
    /// so that three renewals in a row may fail before the lease is at risk.
    pub fn cycle(&self) -> Duration {
        self.ttl / 4
    }

    /// How long before the coordinator could expire the lease the primary stops
    /// acknowledging: a fifth of the time to live, which covers clock rate differences and
    /// a renewal answered late.
    pub fn margin(&self) -> Duration {
        self.ttl / 5
    }

    /// How long the leader key stays vacant before anyone campaigns, so that every live
    /// member has published its position since (a cycle; the last leader stopped
    /// acknowledging before its lease, and so its key, could expire).
    pub fn settle(&self) -> Duration {
        self.cycle()
    }
}

/// What the local database is, as the agent needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalView {
    /// Its role.
    pub role: MemberRole,
    /// Its epoch.
    pub epoch: Epoch,
    /// The epoch of its last durable transaction.
    pub last_epoch: Epoch,
    /// Its durable (precommitted) position.
    pub durable: LogPosition,
    /// Its commit point.
    pub committed: LogPosition,
    /// The address it replicates from (a replica).
    pub following: Option<String>,
    /// Whether its policy is synchronous.
    pub synchronous: bool,
    /// Under its policy, which members' positions prove where every acknowledged write is
    /// ([`CommitRecord::proofs`]).
    pub proofs: Vec<Proof>,
    /// Its policy's text form, published for the next leader ([`CommitRecord::policy`]).
    pub policy: Option<String>,
}

impl LocalView {
    /// The view of an engine with `status`, under `policy`: a replica follows the address its
    /// role names, the proofs are `policy`'s over the engine's members.
    pub fn of(status: &crate::engine::EngineStatus, policy: &crate::quorum::Quorum) -> LocalView {
        use crate::quorum::QuorumPolicy;
        let members: Vec<String> = status.members.iter().map(ToString::to_string).collect();
        LocalView {
            role: match status.role {
                crate::engine::Role::Primary => MemberRole::Primary,
                _ => MemberRole::Replica,
            },
            epoch: status.epoch,
            last_epoch: status.last_epoch,
            durable: status.durable,
            committed: status.committed_position,
            following: match &status.role {
                crate::engine::Role::Replica { address } => Some(address.clone()),
                _ => None,
            },
            synchronous: policy.is_synchronous(),
            proofs: policy.failover_proofs(&members),
            policy: Some(policy.to_string()),
        }
    }
}

/// What the agent asks its runner to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish this member's position under its lease.
    Publish(MemberRecord),
    /// Campaign for the leader key, in an epoch above `above`.
    Campaign {
        /// The highest epoch this member knows of.
        above: Epoch,
    },
    /// Make the local database the primary of exactly `epoch` (a promotion, or a primary's
    /// restart in the coordinator's epoch).
    Lead {
        /// The epoch the coordinator granted.
        epoch: Epoch,
        /// The last leader's policy, to adopt unless the local database has one of its own.
        policy: Option<String>,
    },
    /// The local primary may acknowledge writes until `until`, counting the acknowledgements
    /// of the voters of the last commit record the coordinator accepted (the runner knows
    /// which: it carried out the [`Action::PublishCommit`] before this).
    Lease {
        /// The deadline, in the agent's time.
        until: Timestamp,
    },
    /// Publish the leader's commit point.
    PublishCommit(CommitRecord),
    /// Make the local database a replica of this leader.
    Follow(LeaderRecord),
}

/// What an operator sees of the agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentStatus {
    /// The leader key's holder, as last read.
    pub leader: Option<LeaderRecord>,
    /// This member's lease, if it holds one.
    pub lease: Option<LeaseId>,
    /// When the last successful grant or renewal was sent.
    pub last_renewal: Option<Timestamp>,
    /// As leader: until when the local primary may acknowledge.
    pub lease_until: Option<Timestamp>,
    /// The last coordinator error, until a call succeeds again.
    pub coordinator_error: Option<String>,
    /// Why this member does not campaign for a vacant key.
    pub not_campaigning: Option<String>,
    /// Campaigns won.
    pub elections_won: u64,
    /// Lease grants or renewals that failed.
    pub renew_failures: u64,
    /// Times the local primary's lease deadline passed without a renewal: it stopped
    /// acknowledging.
    pub self_fencings: u64,
}

/// The lease step a cycle begins with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Ask for a new lease.
    Grant,
    /// Renew this one.
    Renew(LeaseId),
}

/// One member's failover logic for one database (Patroni's HA loop, sans IO).
///
/// Each cycle: [`begin_cycle`](FailoverAgent::begin_cycle) names the lease call to make,
/// [`on_lease`](FailoverAgent::on_lease) takes its answer, [`decide`](FailoverAgent::decide)
/// takes the local view and the coordinator's and returns what to do;
/// [`on_campaign`](FailoverAgent::on_campaign) takes a campaign's outcome.
#[derive(Debug)]
pub struct FailoverAgent {
    config: AgentConfig,
    /// The lease and when its last successful grant or renewal was sent.
    lease: Option<(LeaseId, Timestamp)>,
    /// Since when the leader key has been seen vacant, and the coordinator's revision and
    /// epoch counter then: only records published after it count as fresh.
    vacant_since: Option<(Timestamp, u64, Epoch)>,
    /// The last leader's policy, as last read: what a new leader adopts.
    last_policy: Option<String>,
    /// As a new leader: the durable position it was elected with. The last leader may have
    /// acknowledged all of it (it was elected for holding every acknowledged write), so the
    /// commit points it publishes cover it until its own commit point passes it: otherwise
    /// a candidate lacking it could be elected after it, and lose those writes.
    inherited: Option<(LogPosition, Epoch)>,
    /// Another member holds the key but does not lead yet: it is looked at again soon.
    awaiting_leader: bool,
    status: AgentStatus,
}

impl FailoverAgent {
    /// An agent that holds no lease yet.
    pub fn new(config: AgentConfig) -> FailoverAgent {
        FailoverAgent {
            config,
            lease: None,
            vacant_since: None,
            last_policy: None,
            inherited: None,
            awaiting_leader: false,
            status: AgentStatus::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// What an operator sees.
    pub fn status(&self) -> &AgentStatus {
        &self.status
    }

    /// Whether the next cycle should come soon rather than a whole cycle later: the leader
    /// key is vacant and this member waits for the others' positions (they publish as soon
    /// as they see the key vacated), or another member won it and this one waits until it
    /// leads to follow it.
    pub fn poll_soon(&self) -> bool {
        self.vacant_since.is_some() || self.awaiting_leader
    }

    /// The lease it holds.
    pub fn lease(&self) -> Option<LeaseId> {
        self.lease.map(|(lease, _)| lease)
    }

    /// Starts a cycle at `now`: counts a lease deadline that passed, and names the lease call.
    pub fn begin_cycle(&mut self, now: Timestamp) -> LeaseStep {
        if let Some(until) = self.status.lease_until
            && now >= until
        {
            self.status.lease_until = None;
            self.status.self_fencings += 1;
            tracing::warn!(
                member = %self.config.member,
                "leader lease not renewed in time: this primary acknowledges nothing more"
            );
        }
        match self.lease {
            Some((lease, _)) => LeaseStep::Renew(lease),
            None => LeaseStep::Grant,
        }
    }

    /// The answer to the cycle's lease call, sent at `sent`.
    pub fn on_lease(&mut self, sent: Timestamp, answer: Result<LeaseId, CoordinatorError>) {
        match answer {
            Ok(lease) => {
                self.lease = Some((lease, sent));
                self.status.lease = Some(lease);
                self.status.last_renewal = Some(sent);
                self.status.coordinator_error = None;
            }
            Err(error) => {
                self.status.renew_failures += 1;
                if let CoordinatorError::LeaseExpired(_) = error {
                    self.lease = None;
                    self.status.lease = None;
                }
                self.on_error(error);
            }
        }
    }

    /// A coordinator call failed.
    pub fn on_error(&mut self, error: CoordinatorError) {
        let text = error.to_string();
        if self.status.coordinator_error.as_ref() != Some(&text) {
            tracing::warn!(member = %self.config.member, %error, "coordinator call failed");
        }
        self.status.coordinator_error = Some(text);
    }

    /// What to do, given the local database and what the coordinator holds.
    pub fn decide(&mut self, now: Timestamp, local: &LocalView, view: &ClusterView) -> Vec<Action> {
        self.status.leader = view.leader.clone();
        self.status.not_campaigning = None;
        self.awaiting_leader = false;
        if let Some(commit) = &view.last_commit {
            self.last_policy = commit.policy.clone();
        }
        let mut out = Vec::new();
        let Some((lease, sent)) = self.lease else {
            // Without a lease nothing is published or claimed, but a leader is followed.
            if let Some(leader) = view
                .leader
                .as_ref()
                .filter(|l| l.member != self.config.member)
            {
                self.follow(local, leader, view, &mut out);
            }
            return out;
        };
        out.push(Action::Publish(self.record(local)));
        match &view.leader {
            Some(leader) if leader.member == self.config.member && leader.lease == lease => {
                self.vacant_since = None;
                if local.role == MemberRole::Primary && local.epoch == leader.epoch {
                    // The history this leader builds on is the log it holds now. A tail it
                    // lost between winning and leading is in no member's future, whatever
                    // it claims; claiming it would leave every successor ineligible.
                    if let Some((held, _)) = self.inherited
                        && held.tx_id > local.durable.tx_id
                    {
                        tracing::error!(
                            member = %self.config.member,
                            elected_with = %held.tx_id,
                            holds = %local.durable.tx_id,
                            "the new leader lost part of the log it was elected with"
                        );
                        self.inherited = Some((local.durable, local.last_epoch));
                    }
                    // The commit point and its voters first: the lease that follows lets
                    // the engine count only the voters the coordinator holds.
                    if self
                        .inherited
                        .is_some_and(|(held, _)| local.committed.tx_id >= held.tx_id)
                    {
                        self.inherited = None;
                    }
                    // The entry at the commit point is of the epoch the log ended in, at most.
                    let (committed, position_epoch) = match self.inherited {
                        Some((held, epoch)) if held.tx_id > local.committed.tx_id => (held, epoch),
                        _ => (local.committed, local.last_epoch.min(leader.epoch)),
                    };
                    out.push(Action::PublishCommit(CommitRecord {
                        member: self.config.member.clone(),
                        epoch: leader.epoch,
                        committed,
                        position_epoch: Some(position_epoch),
                        synchronous: local.synchronous,
                        proofs: local.proofs.clone(),
                        policy: local.policy.clone(),
                    }));
                    let until = sent.plus(self.config.ttl.saturating_sub(self.config.margin()));
                    self.status.lease_until = Some(until);
                    out.push(Action::Lease { until });
                } else {
                    self.inherited
                        .get_or_insert((local.durable, local.last_epoch));
                    out.push(Action::Lead {
                        epoch: leader.epoch,
                        policy: self.last_policy.clone(),
                    });
                }
            }
            Some(leader) if leader.member == self.config.member => {
                self.vacant_since = None;
                self.status.not_campaigning = Some(format!(
                    "the leader key is held by an earlier lease of this member ({:?}); it is \
                     taken again once that lease expires",
                    leader.lease
                ));
            }
            Some(leader) => {
                self.vacant_since = None;
                self.follow(local, leader, view, &mut out);
            }
            None => {
                // A leader elected and gone since (the epoch counter moved while this member
                // could not read the view) began a new reign: records published during it
                // are not fresh for this vacancy, which starts now.
                if self
                    .vacant_since
                    .is_some_and(|(_, _, epoch)| epoch != view.epoch)
                {
                    self.vacant_since = None;
                }
                let (since, vacated, _) =
                    *self
                        .vacant_since
                        .get_or_insert((now, view.revision, view.epoch));
                // Every other member published since the vacancy was seen: their positions
                // are final, no need to wait out the settle time (a member that stopped
                // publishing, dead with its lease still alive, is waited for until then).
                let all_fresh = view
                    .members
                    .iter()
                    .filter(|m| m.member != self.config.member)
                    .all(|m| m.revision > vacated);
                if now.since(since) < self.config.settle() && !all_fresh {
                    self.status.not_campaigning = Some(
                        "the leader key is vacant: waiting for every member's position".into(),
                    );
                } else {
                    match self.eligibility(local, view, vacated) {
                        Ok(above) => out.push(Action::Campaign { above }),
                        Err(why) => self.status.not_campaigning = Some(why),
                    }
                }
            }
        }
        out
    }

    /// The outcome of a campaign the last [`decide`](FailoverAgent::decide) asked for.
    pub fn on_campaign(
        &mut self,
        local: &LocalView,
        outcome: Result<Campaign, CoordinatorError>,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        match outcome {
            Ok(Campaign::Won { epoch }) => {
                self.status.elections_won += 1;
                tracing::warn!(member = %self.config.member, %epoch, "won the leader key");
                self.vacant_since = None;
                self.inherited = Some((local.durable, local.last_epoch));
                out.push(Action::Lead {
                    epoch,
                    policy: self.last_policy.clone(),
                });
            }
            Ok(Campaign::Held(leader)) => {
                // Followed by the next cycle, once the view shows it leads.
                self.vacant_since = None;
                self.awaiting_leader = true;
                self.status.leader = Some(leader);
            }
            Err(error) => self.on_error(error),
        }
        out
    }

    /// Follows `leader` unless the local database already does, once `view` shows it leads
    /// (its own record a primary of its epoch). Until then its database may still be a
    /// replica, and a relay at that: following it then could make two members each other's
    /// source, and the one serving only what it knows committed would cut the tail of the
    /// log the new leader was elected with.
    fn follow(
        &mut self,
        local: &LocalView,
        leader: &LeaderRecord,
        view: &ClusterView,
        out: &mut Vec<Action>,
    ) {
        self.status.lease_until = None;
        self.inherited = None;
        let leads = view.members.iter().any(|m| {
            m.member == leader.member && m.role == MemberRole::Primary && m.epoch >= leader.epoch
        });
        self.awaiting_leader = !leads;
        if !leads {
            self.status.not_campaigning = Some(format!(
                "the leader key is held by {}: followed once it leads epoch {}",
                leader.member, leader.epoch
            ));
            return;
        }
        if local.role == MemberRole::Primary
            || local.following.as_deref() != Some(leader.address.as_str())
        {
            out.push(Action::Follow(leader.clone()));
        }
    }

    fn record(&self, local: &LocalView) -> MemberRecord {
        MemberRecord {
            member: self.config.member.clone(),
            address: self.config.address.clone(),
            role: local.role,
            epoch: local.epoch,
            last_epoch: local.last_epoch,
            durable: local.durable,
            committed: local.committed,
            revision: 0,
        }
    }

    /// Whether this member may campaign for the vacant key, and above which epoch; or why
    /// not. Records of revision `vacated` or older may predate the last leader's end: they
    /// rank (a member may be more advanced than it published), but prove nothing (a member
    /// that stopped publishing may hold writes acknowledged since).
    fn eligibility(
        &self,
        local: &LocalView,
        view: &ClusterView,
        vacated: u64,
    ) -> Result<Epoch, String> {
        let mine = (local.last_epoch, local.durable.tx_id.0);
        let others: Vec<&MemberRecord> = view
            .members
            .iter()
            .filter(|m| m.member != self.config.member)
            .collect();
        // A log that ends before the epoch of the last published commit point holds nothing
        // acknowledged beyond that point: the leader of that epoch was elected holding every
        // acknowledged write, and its commit point covers what it was elected with. A longer
        // log of an older epoch is then a superseded tail, not more advanced.
        let floor = view.last_commit.as_ref().map(|c| c.epoch);
        let contenders = others
            .iter()
            .filter(|other| floor.is_none_or(|epoch| other.last_epoch >= epoch));
        for other in contenders {
            if other.rank() > mine {
                return Err(format!(
                    "{} is more advanced (transaction {} of epoch {})",
                    other.member, other.durable.tx_id, other.last_epoch
                ));
            }
            if other.rank() == mine && other.durable.hash != local.durable.hash {
                return Err(format!(
                    "{} holds another transaction {}: the logs diverged",
                    other.member, other.durable.tx_id
                ));
            }
        }
        match &view.last_commit {
            // No leader ever: the database created as the primary takes the key first. A
            // leader that won but never published a commit point acknowledged nothing (its
            // engine is granted a lease only once the coordinator accepted one), so then the
            // most advanced member may take the key.
            None if view.epoch == Epoch(0) && local.role != MemberRole::Primary => {
                return Err(
                    "no leader was ever elected: the member created as the primary \
                            takes the key first"
                        .into(),
                );
            }
            None => {}
            Some(commit) if commit.synchronous => {
                let holds = commit.held_by(local.last_epoch, local.durable)
                    || local.committed == commit.committed;
                if !holds {
                    return Err(format!(
                        "lacks the last published commit point (transaction {} of epoch {})",
                        commit.committed.tx_id, commit.epoch
                    ));
                }
                let seen = || {
                    others
                        .iter()
                        .filter(|m| m.revision > vacated)
                        .map(|m| m.member.as_str())
                        .chain([self.config.member.as_str()])
                };
                // No proof: the leader counted no voter's acknowledgement since it published
                // this (a leased primary counts only the voters of its last accepted commit
                // point), so nothing beyond the commit point was acknowledged, and holding it
                // is enough.
                let proven = commit.proofs.is_empty()
                    || commit.proofs.iter().any(|proof| proof.holds(seen()));
                if !proven {
                    let needs: Vec<String> = commit
                        .proofs
                        .iter()
                        .map(|p| format!("{} of {}", p.needed, p.voters.join(",")))
                        .collect();
                    return Err(format!(
                        "the members that published since the leader key was vacated ({}) \
                         cannot prove that they hold every acknowledged write: the last \
                         leader's policy needs {}",
                        seen().collect::<Vec<_>>().join(","),
                        needs.join(" or ")
                    ));
                }
            }
            Some(commit) => {
                let lag = if commit.held_by(local.last_epoch, local.durable) {
                    0
                } else {
                    commit
                        .committed
                        .tx_id
                        .0
                        .saturating_sub(local.durable.tx_id.0)
                };
                if lag > self.config.max_lag_on_failover {
                    return Err(format!(
                        "lags the last published commit point by {lag} transactions, more than \
                         max-lag-on-failover {}",
                        self.config.max_lag_on_failover
                    ));
                }
            }
        }
        let above = others
            .iter()
            .map(|m| m.epoch)
            .chain(view.last_commit.as_ref().map(|c| c.epoch))
            .chain([local.epoch, view.epoch])
            .max()
            .unwrap_or(local.epoch);
        Ok(above)
    }
}

#[cfg(test)]
mod tests;
