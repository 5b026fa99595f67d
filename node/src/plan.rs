//! The reasoning behind `repnode failover plan`: from what each listed server says of one
//! database, which replicas provably hold every acknowledged write, and how far behind the
//! others are. Pure (no IO): the CLI gathers the answers, [`plan`] decides.
//!
//! # The rule
//!
//! Under a policy that needs `k` acknowledgements out of `n` replicas, an acknowledged write
//! is durable on `k` of the `n`, and any `n − k + 1` of the `n` include at least one of those.
//! So once `n − k + 1` of them have answered, the answering replica with the highest durable
//! (precommitted) position holds every acknowledged write: this is immudb's advice for
//! choosing a new primary, made exact. With fewer answers no replica is provably safe.
//!
//! - `n` and `k` per policy: `acks N` needs `N` of the durable membership; `majority (names)`,
//!   `any N (names)` and `first N (names)` count among the names (`first` is taken as `any`:
//!   which standbys were the synchronous ones depends on who was connected, which is not known
//!   afterwards); `async` and a count of 0 guarantee nothing beyond the primary. `majority`
//!   needs `⌈m/2⌉` of the `m` members today, but a write may have committed while the
//!   membership was smaller (one member: one copy), so `k = 1` and every member must answer.
//! - `A and B`: an acknowledged write satisfied every part, so one part whose rule holds
//!   proves it is on an answering replica.
//! - The membership is the one the primary reports. Without a primary, the listed servers are
//!   taken for the old primary and its members, and every one of them but the primary must
//!   answer (said so in [`Plan::assumptions`]).
//! - Durable positions compare as Raft compares logs: the epoch of the last transaction first,
//!   then its id. A log that ends in a later epoch holds that epoch's primary's history, every
//!   earlier commit included; a longer log of an older epoch may hold transactions a restarted
//!   primary superseded. Candidates tied at the highest position must agree on its hash, or
//!   their logs diverged and nothing is provably safe.
//!
//! Limits: a member the operator removed, or a policy changed since, may have counted for
//! writes acknowledged before; the plan reasons about the membership and policy in force.

use std::collections::BTreeSet;

use replication_core::coordinator::Proof;
use replication_core::quorum::{Quorum, ReplicaFilter};
use serde::Serialize;

use crate::wire::{Position, StatusReport};

/// What one listed server said of the database.
#[derive(Clone, Debug)]
pub enum Heard {
    /// Its status of the database.
    Status {
        /// The server's identity, as its certificate states it.
        node: String,
        /// Its report.
        report: Box<StatusReport>,
    },
    /// It answered without a status: no such database, not loaded, or stopped.
    NoStatus(String),
    /// It was not reached, or did not answer in time.
    Unreachable(String),
}

/// One server from the command line and what it said.
#[derive(Clone, Debug)]
pub struct Listed {
    /// `HOST:PORT`, as given.
    pub server: String,
    /// What it said.
    pub heard: Heard,
}

/// Whose answers a part of the policy counts, and so where its `n` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The replicas the policy names.
    Names,
    /// The durable membership the primary reported (`node/database`).
    Membership,
    /// No primary answered: every listed server but the old primary is taken for a member.
    Assumed,
}

/// One part of the policy (`A and B` has two) and whether its rule holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartRule {
    /// The part, in the policy's text form.
    pub policy: String,
    /// Acknowledgements a write needed.
    pub k: usize,
    /// Replicas they came from.
    pub n: usize,
    /// Where `n` comes from.
    pub basis: Basis,
    /// The replicas whose answers count: names, `node/database`, or (assumed) the answering
    /// servers.
    pub voters: Vec<String>,
    /// Answers needed: `n − k + 1`, or all `n` when the membership is assumed.
    pub needed: usize,
    /// Answers had from voters.
    pub answered: usize,
    /// Voters that gave no status.
    pub not_heard_from: Vec<String>,
    /// Whether enough voters answered to prove the rule (never when `k = 0`).
    pub holds: bool,
}

/// One listed server, as the plan shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// `HOST:PORT`, as given.
    pub server: String,
    /// Whether it answered at all.
    pub reachable: bool,
    /// Its identity, when it answered.
    pub node: Option<String>,
    /// `primary` or `replica`.
    pub role: Option<String>,
    /// Its epoch.
    pub epoch: Option<u64>,
    /// The epoch of its last transaction, which ranks logs before their position does.
    pub last_epoch: Option<u64>,
    /// Its commit point.
    pub committed: Option<Position>,
    /// Its durable (precommitted) position.
    pub precommitted: Option<Position>,
    /// Why it gave no status.
    pub error: Option<String>,
}

/// A replica that could become the primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// `HOST:PORT`, as given.
    pub server: String,
    /// Its identity.
    pub node: String,
    /// Whether it provably holds every acknowledged write.
    pub safe: bool,
    /// Transactions the most advanced answering server holds durably beyond this one: what
    /// promoting it could lose, as far as the answers show.
    pub missing_txs: u64,
    /// Its durable (precommitted) transaction.
    pub precommitted_tx_id: u64,
    /// Its committed transaction.
    pub committed_tx_id: u64,
    /// Why it is not safe.
    pub why: Option<String>,
}

/// The plan: who answered, the rule applied, the ranked candidates and the recommendation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The database.
    pub db: String,
    /// The policy reasoned with, in its text form.
    pub policy: Option<String>,
    /// Where it came from: the primary (`primary HOST:PORT`) or `--quorum`.
    pub policy_from: Option<String>,
    /// The durable membership, when a primary reported it.
    pub membership: Option<Vec<String>>,
    /// The rule, part by part.
    pub rule: Vec<PartRule>,
    /// Every listed server, in the order given.
    pub members: Vec<MemberView>,
    /// Every answering replica, best first: durable position, then commit point, then the
    /// order given.
    pub candidates: Vec<Candidate>,
    /// The server to promote, if any.
    pub recommended: Option<String>,
    /// One sentence on the outcome.
    pub verdict: String,
    /// How many more voters must answer before a candidate is provably safe, when that is
    /// what is missing.
    pub more_needed: Option<usize>,
    /// What the plan took for granted.
    pub assumptions: Vec<String>,
    /// Anything else an operator should know.
    pub notes: Vec<String>,
    /// Listed servers that gave no status.
    pub not_heard_from: Vec<String>,
}

impl Plan {
    /// Whether some candidate provably holds every acknowledged write.
    pub fn is_safe(&self) -> bool {
        self.candidates.iter().any(|c| c.safe)
    }
}

/// How many acknowledgements a part needs, given its `n`.
#[derive(Clone, Copy, Debug)]
enum Need {
    Count(usize),
    /// `⌈n/2⌉`, at least one.
    Majority,
}

/// Whose answers a part counts.
enum Voters {
    Names(Vec<String>),
    /// The membership, or the listed servers when it is unknown.
    Members,
}

/// A part of a policy, before the answers are counted.
struct Part {
    text: String,
    need: Need,
    voters: Voters,
}

fn names(list: &[replication_core::NodeId]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    list.iter()
        .map(|n| n.as_str().to_string())
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

/// The parts of `policy`, `A and B` flattened.
fn parts(policy: &Quorum, out: &mut Vec<Part>) {
    let text = policy.to_string();
    let part = match policy {
        Quorum::AllOf(inner) => {
            inner.iter().for_each(|p| parts(p, out));
            return;
        }
        Quorum::Async => Part {
            text,
            need: Need::Count(0),
            voters: Voters::Members,
        },
        Quorum::AckCount {
            n,
            among: Some(ReplicaFilter::Names(list)),
        }
        | Quorum::Any { n, names: list }
        | Quorum::First { n, names: list } => Part {
            text,
            need: Need::Count(*n),
            voters: Voters::Names(names(list)),
        },
        // A tag filter only narrows which members could acknowledge; the `k` acknowledgers
        // are still members, so counting among all of them stays sound.
        Quorum::AckCount { n, .. } => Part {
            text,
            need: Need::Count(*n),
            voters: Voters::Members,
        },
        // `⌈m/2⌉` of the members today, but a write may have committed while the membership
        // was smaller (a member joins when it first subscribes): only one copy is certain.
        Quorum::Majority => Part {
            text,
            need: Need::Count(1),
            voters: Voters::Members,
        },
        Quorum::MajorityOf(list) => Part {
            text,
            need: Need::Majority,
            voters: Voters::Names(names(list)),
        },
    };
    out.push(part);
}

/// One answering server.
struct Answer<'a> {
    index: usize,
    server: &'a str,
    node: &'a str,
    report: &'a StatusReport,
}

impl Answer<'_> {
    fn is_primary(&self) -> bool {
        self.report.role == "primary"
    }
}

/// Decides the plan for database `db` from what the `listed` servers said; `quorum` is the
/// operator's `--quorum`, used when no primary reports its policy.
pub fn plan(db: &str, listed: &[Listed], quorum: Option<&Quorum>) -> Plan {
    let mut notes = Vec::new();
    let mut assumptions = Vec::new();
    let answers: Vec<Answer<'_>> = listed
        .iter()
        .enumerate()
        .filter_map(|(index, l)| match &l.heard {
            Heard::Status { node, report } => Some(Answer {
                index,
                server: &l.server,
                node,
                report,
            }),
            _ => None,
        })
        .collect();
    let not_heard_from: Vec<String> = listed
        .iter()
        .filter(|l| !matches!(l.heard, Heard::Status { .. }))
        .map(|l| l.server.clone())
        .collect();

    // The primary: the one of the highest epoch if several answer (a fenced one is older).
    let primaries: Vec<&Answer<'_>> = answers.iter().filter(|a| a.is_primary()).collect();
    let primary = primaries.iter().copied().reduce(|best, a| {
        if a.report.epoch > best.report.epoch {
            a
        } else {
            best
        }
    });
    if primaries.len() > 1 {
        notes.push(format!(
            "{} servers answer as primary ({}); the one at the highest epoch is taken",
            primaries.len(),
            primaries
                .iter()
                .map(|a| a.server)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    let (policy, policy_from) = choose_policy(primary, quorum, &mut notes);
    let membership = primary.map(|p| p.report.members.clone());

    let replicas: Vec<&Answer<'_>> = answers.iter().filter(|a| !a.is_primary()).collect();
    let answering_nodes: BTreeSet<&str> = replicas.iter().map(|a| a.node).collect();
    let answering_members: BTreeSet<String> = replicas
        .iter()
        .map(|a| format!("{}/{}", a.node, a.report.database))
        .collect();

    let mut split = Vec::new();
    if let Some(policy) = &policy {
        parts(policy, &mut split);
    }
    let distinct_listed: BTreeSet<&str> = listed.iter().map(|l| l.server.as_str()).collect();
    // Without a primary, the listed servers are taken for the old primary and its members: if
    // one gave no status it may be that primary, otherwise the primary was not listed.
    let assumed_n = if not_heard_from.is_empty() {
        distinct_listed.len()
    } else {
        distinct_listed.len() - 1
    };
    let rule: Vec<PartRule> = split
        .iter()
        .map(|part| {
            let (basis, voters, answered_voters): (Basis, Vec<String>, Vec<String>) =
                match (&part.voters, &membership) {
                    (Voters::Names(list), _) => (
                        Basis::Names,
                        list.clone(),
                        list.iter()
                            .filter(|n| answering_nodes.contains(n.as_str()))
                            .cloned()
                            .collect(),
                    ),
                    (Voters::Members, Some(members)) => (
                        Basis::Membership,
                        members.clone(),
                        members
                            .iter()
                            .filter(|m| answering_members.contains(*m))
                            .cloned()
                            .collect(),
                    ),
                    (Voters::Members, None) => {
                        let servers: Vec<String> =
                            replicas.iter().map(|a| a.server.to_string()).collect();
                        (Basis::Assumed, servers.clone(), servers)
                    }
                };
            let n = match basis {
                Basis::Assumed => assumed_n.max(answering_nodes.len()),
                _ => voters.len(),
            };
            let k = match part.need {
                Need::Count(k) => k,
                Need::Majority => n.div_ceil(2).max(1),
            };
            let needed = if basis == Basis::Assumed || k > n || k == 0 {
                // Assumed: every member must answer. `k > n`: the policy could not have
                // committed with this membership, so writes were acknowledged under a larger
                // one or another policy: only every member answering is conclusive. `k = 0`
                // never holds; all members is what it is shown as.
                n.max(1)
            } else {
                n - k + 1
            };
            let answered = match basis {
                Basis::Assumed => answering_nodes.len(),
                _ => answered_voters.len(),
            };
            let not_heard: Vec<String> = match basis {
                Basis::Assumed => not_heard_from.clone(),
                _ => voters
                    .iter()
                    .filter(|v| !answered_voters.contains(v))
                    .cloned()
                    .collect(),
            };
            PartRule {
                policy: part.text.clone(),
                k,
                n,
                basis,
                voters,
                needed,
                answered,
                not_heard_from: not_heard,
                holds: k > 0 && answered >= needed,
            }
        })
        .collect();
    if rule.iter().any(|r| r.basis == Basis::Assumed) {
        assumptions.push(format!(
            "no primary answered, so the membership is unknown: the {} listed servers are taken \
             for the old primary and all its members (n = {assumed_n}), and every member must answer",
            distinct_listed.len()
        ));
    }
    let guaranteed = rule.iter().any(|r| r.holds);
    let asynchronous = !rule.is_empty() && rule.iter().all(|r| r.k == 0);

    // Rank: durable position (the epoch of the last transaction, then its id), then commit
    // point, then the order given.
    let mut ranked = replicas.clone();
    ranked.sort_by(|a, b| {
        b.report
            .log_rank()
            .cmp(&a.report.log_rank())
            .then(b.report.committed.tx_id.cmp(&a.report.committed.tx_id))
            .then(a.index.cmp(&b.index))
    });
    // What promoting a candidate could lose counts from the most advanced answer, the
    // primary's included when it is up.
    let most_advanced = answers
        .iter()
        .map(|a| a.report)
        .max_by_key(|r| r.log_rank());
    let top = ranked.first().map(|a| a.report);
    let ties = |a: &Answer<'_>| {
        top.is_some_and(|t| {
            t.last_epoch == a.report.last_epoch && t.precommitted == a.report.precommitted
        })
    };
    // Two logs that end at the same transaction of the same epoch with different hashes are
    // not of one history: which holds the acknowledged writes cannot be told from here.
    let diverged = top.is_some_and(|t| {
        ranked.iter().any(|a| {
            a.report.log_rank() == t.log_rank() && a.report.precommitted.hash != t.precommitted.hash
        })
    });
    if diverged && let Some(t) = top {
        notes.push(format!(
            "the most advanced replicas disagree on the hash of tx {}: their logs diverged; \
             compare them (`repnode log dump`) before choosing",
            t.precommitted.tx_id
        ));
    }
    if asynchronous {
        notes.push(
            "under an asynchronous policy a write is acknowledged on the primary alone: \
             acknowledged writes may be lost whichever replica is promoted"
                .into(),
        );
    }
    if primary.is_some() {
        notes.push("the primary is up: this is a snapshot, and writes may commit meanwhile".into());
    }
    let proven = guaranteed && !diverged;
    let more_needed = (!guaranteed && !asynchronous && !rule.is_empty()).then(|| {
        rule.iter()
            .filter(|r| r.k > 0)
            .map(|r| r.needed.saturating_sub(r.answered))
            .min()
            .unwrap_or(0)
    });

    let candidates: Vec<Candidate> = ranked
        .iter()
        .map(|a| {
            let missing = most_advanced.map_or(0, |m| missing_txs(a.report, m));
            let safe = proven && ties(a);
            let why = if safe {
                None
            } else if policy.is_none() {
                Some("the policy is unknown".to_string())
            } else if asynchronous {
                Some("asynchronous policy: nothing is guaranteed beyond the primary".into())
            } else if diverged {
                Some("the most advanced logs diverged".into())
            } else if !guaranteed {
                let more = more_needed.unwrap_or(0);
                Some(format!("not provably safe: {more} more must answer"))
            } else {
                let behind = top.map_or(0, |t| missing_txs(a.report, t));
                Some(format!(
                    "behind the most advanced durable position by {behind} txs"
                ))
            };
            Candidate {
                server: a.server.to_string(),
                node: a.node.to_string(),
                safe,
                missing_txs: missing,
                precommitted_tx_id: a.report.precommitted.tx_id,
                committed_tx_id: a.report.committed.tx_id,
                why,
            }
        })
        .collect();

    let best = candidates.first();
    let recommended = match best {
        Some(c) if c.safe => Some(c.server.clone()),
        // Nothing can be proven under an asynchronous policy: the most advanced loses least.
        Some(c) if asynchronous && !diverged => Some(c.server.clone()),
        _ => None,
    };
    let verdict = match (best, &policy) {
        (None, _) => "no replica answered: there is no candidate".to_string(),
        (Some(_), None) => {
            "the policy is unknown (no primary reported it): pass --quorum POLICY".into()
        }
        (Some(c), Some(_)) if c.safe => {
            let r = rule.iter().find(|r| r.holds);
            format!(
                "{} holds every acknowledged write{}",
                c.server,
                r.map_or(String::new(), |r| format!(
                    " ({} of the {} voters answered; any {} include one of the k = {} that \
                     acknowledged each write){}",
                    r.answered,
                    r.n,
                    r.needed,
                    r.k,
                    if r.basis == Basis::Assumed {
                        ", if the listed servers are all the members"
                    } else {
                        ""
                    }
                ))
            )
        }
        (Some(c), Some(_)) if asynchronous && recommended.is_some() => format!(
            "no candidate is provably safe under an asynchronous policy: acknowledged writes may \
             be lost; {} is the most advanced",
            c.server
        ),
        (Some(_), Some(_)) if !guaranteed => {
            let closest = rule
                .iter()
                .filter(|r| r.k > 0)
                .min_by_key(|r| r.needed.saturating_sub(r.answered));
            match closest {
                Some(r) => format!(
                    "no candidate is provably safe: {} more of {} must answer",
                    r.needed.saturating_sub(r.answered),
                    if r.not_heard_from.is_empty() {
                        "the voters".to_string()
                    } else {
                        r.not_heard_from.join(", ")
                    }
                ),
                None => "no candidate is provably safe".into(),
            }
        }
        (Some(_), Some(_)) => {
            "no candidate is provably safe: the most advanced logs diverged".into()
        }
    };
    let members = listed.iter().map(view).collect();
    Plan {
        db: db.to_string(),
        policy: policy.as_ref().map(Quorum::to_string),
        policy_from,
        membership,
        rule,
        members,
        candidates,
        recommended,
        verdict,
        more_needed,
        assumptions,
        notes,
        not_heard_from,
    }
}

/// The transactions `log` could be missing that `most` holds: the difference of positions
/// when both end in one epoch; otherwise what `log` holds beyond its commit point may be
/// superseded, so everything `most` holds past that point.
fn missing_txs(log: &StatusReport, most: &StatusReport) -> u64 {
    let from = if log.last_epoch == most.last_epoch {
        log.precommitted.tx_id
    } else {
        log.committed.tx_id.min(log.precommitted.tx_id)
    };
    most.precommitted.tx_id.saturating_sub(from)
}

/// The policy to reason with: the primary's, else `--quorum`.
fn choose_policy(
    primary: Option<&Answer<'_>>,
    quorum: Option<&Quorum>,
    notes: &mut Vec<String>,
) -> (Option<Quorum>, Option<String>) {
    let reported = primary.and_then(|p| {
        let text = p.report.policy.as_deref()?;
        match text.parse::<Quorum>() {
            Ok(policy) => Some((policy, p.server)),
            Err(error) => {
                notes.push(format!("the primary's policy does not parse: {error}"));
                None
            }
        }
    });
    match (reported, quorum) {
        (Some((policy, server)), given) => {
            if let Some(given) = given.filter(|g| **g != policy) {
                notes.push(format!(
                    "--quorum {given} ignored: the primary at {server} reports {policy}"
                ));
            }
            (Some(policy), Some(format!("primary {server}")))
        }
        (None, Some(given)) => (Some(given.clone()), Some("--quorum".into())),
        (None, None) => (None, None),
    }
}

fn view(listed: &Listed) -> MemberView {
    let empty = |reachable: bool, error: &str| MemberView {
        server: listed.server.clone(),
        reachable,
        node: None,
        role: None,
        epoch: None,
        last_epoch: None,
        committed: None,
        precommitted: None,
        error: Some(error.to_string()),
    };
    match &listed.heard {
        Heard::Status { node, report } => MemberView {
            server: listed.server.clone(),
            reachable: true,
            node: Some(node.clone()),
            role: Some(report.role.clone()),
            epoch: Some(report.epoch),
            last_epoch: Some(report.last_epoch),
            committed: Some(report.committed.clone()),
            precommitted: Some(report.precommitted.clone()),
            error: None,
        },
        Heard::NoStatus(why) => empty(true, why),
        Heard::Unreachable(why) => empty(false, why),
    }
}

#[cfg(test)]
mod tests;

/// What automatic failover publishes with a leader's commit point:
/// [`Quorum::failover_proofs`], this module's rule for each part of `policy`.
pub fn proofs(policy: &Quorum, members: &[String]) -> Vec<Proof> {
    policy.failover_proofs(members)
}
