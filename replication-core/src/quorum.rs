//! Quorum policies: which acknowledgements commit a transaction.
//!
//! The engine asks the policy, given every replica's acknowledged durable position, up to which
//! transaction the replicas satisfy it; it then caps that with the primary's own durable
//! position, because nothing is committed that the primary itself could still lose.
//!
//! ```
//! use replication_core::quorum::{Quorum, QuorumPolicy, ReplicaProgress};
//! use replication_core::{NodeId, TxId};
//!
//! let policy: Quorum = "any 1 (n2,n3)".parse().unwrap();
//! let (n2, n3) = (NodeId::new("n2"), NodeId::new("n3"));
//! let tags = Default::default();
//! let replicas = [
//!     ReplicaProgress { id: &n2, tags: &tags, durable: TxId(7), connected: true },
//!     ReplicaProgress { id: &n3, tags: &tags, durable: TxId(9), connected: true },
//! ];
//! assert_eq!(policy.satisfied(&replicas), TxId(9));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, TxId};

/// Free-form labels a replica announces about itself, such as `zone=eu-west-1a`.
pub type Tags = BTreeMap<String, String>;

/// What a policy sees of one replica. The engine passes every member of the database's
/// durable membership, and only members: one not heard from since the primary started is there
/// with nothing acknowledged and `connected: false`.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaProgress<'a> {
    /// The replica's authenticated identity.
    pub id: &'a NodeId,
    /// The tags it announced.
    pub tags: &'a Tags,
    /// The highest transaction it has acknowledged as durably stored.
    pub durable: TxId,
    /// Whether it is connected now. A disconnected replica's acknowledgements stay valid (the
    /// data is on its disk), but [`Quorum::First`] only picks connected standbys.
    pub connected: bool,
}

/// Decides which acknowledgements commit a transaction. Implement it for a policy the built-in
/// [`Quorum`] cannot express.
pub trait QuorumPolicy: Send + Sync + fmt::Debug {
    /// The highest transaction the replicas' acknowledgements satisfy this policy for
    /// (`TxId(u64::MAX)` when the policy needs no replica). The engine takes the minimum of this
    /// and the primary's own durable position, and never moves the commit point backwards.
    fn satisfied(&self, replicas: &[ReplicaProgress<'_>]) -> TxId;

    /// Whether the policy waits for any replica. Writes committed under a synchronous policy are
    /// acknowledged as such.
    fn is_synchronous(&self) -> bool;
}

/// Which replicas an acknowledgement count considers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaFilter {
    /// Only these identities.
    Names(Vec<NodeId>),
    /// Replicas whose tag `key` equals `value`.
    TagEquals {
        /// The tag.
        key: String,
        /// The value it must have.
        value: String,
    },
    /// Replicas whose tag `key` is absent or differs from `value` (e.g. "another zone").
    TagNotEquals {
        /// The tag.
        key: String,
        /// The value it must not have.
        value: String,
    },
}

impl ReplicaFilter {
    fn admits(&self, replica: &ReplicaProgress<'_>) -> bool {
        match self {
            ReplicaFilter::Names(names) => names.contains(replica.id),
            ReplicaFilter::TagEquals { key, value } => replica.tags.get(key) == Some(value),
            ReplicaFilter::TagNotEquals { key, value } => replica.tags.get(key) != Some(value),
        }
    }
}

/// The built-in policies. Each has a textual form ([`FromStr`] and [`Display`](fmt::Display)),
/// used by configuration files and the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quorum {
    /// Commit on the primary's own durability; replicas follow asynchronously. Text: `async`.
    ///
    /// ```
    /// # use replication_core::quorum::{Quorum, QuorumPolicy};
    /// assert!(!Quorum::Async.is_synchronous());
    /// ```
    Async,
    /// Commit once `n` replicas acknowledged, as immudb's `--replication-sync-acks n`
    /// (`n = 0` is asynchronous). With `among`, only replicas the filter admits count.
    /// Text: `acks 2`, `acks 1 where zone!=eu`, `acks 1 where zone=us`.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// assert_eq!("acks 2".parse::<Quorum>().unwrap(), Quorum::AckCount { n: 2, among: None });
    /// ```
    AckCount {
        /// How many replicas must acknowledge.
        n: usize,
        /// Which replicas count (all when `None`).
        among: Option<ReplicaFilter>,
    },
    /// Commit once the primary and the acknowledging members form a majority of the primary
    /// plus every member of the durable membership, connected or not: with `m` members,
    /// `⌈m/2⌉` of them must acknowledge (a strict majority of the `m + 1` nodes), and at least
    /// one (so a database no replica has joined yet does not commit on the primary alone).
    /// A member that has not reconnected since the primary restarted has acknowledged nothing.
    /// Text: `majority`.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// assert_eq!("majority".parse::<Quorum>().unwrap(), Quorum::Majority);
    /// ```
    Majority,
    /// A majority of the named replicas, whatever the membership holds: with `k` names,
    /// `⌈k/2⌉` of them (at least one) must acknowledge. Text: `majority (n2,n3,n4)`.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// let q: Quorum = "majority (n2,n3,n4)".parse().unwrap();
    /// assert_eq!(q.to_string(), "majority (n2,n3,n4)");
    /// ```
    MajorityOf(Vec<NodeId>),
    /// PostgreSQL's `ANY n (names)`: any `n` of the listed replicas. Text: `any 2 (n2,n3,n4)`.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// let q: Quorum = "any 2 (n2,n3,n4)".parse().unwrap();
    /// assert_eq!(q.to_string(), "any 2 (n2,n3,n4)");
    /// ```
    Any {
        /// How many must acknowledge.
        n: usize,
        /// The eligible replicas.
        names: Vec<NodeId>,
    },
    /// PostgreSQL's `FIRST n (names)`: the first `n` listed replicas that are connected are the
    /// synchronous ones and all of them must acknowledge; when one is lost the next listed one
    /// takes its place (semi-synchronous replication). Text: `first 1 (n2,n3)`.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// let q: Quorum = "first 1 (n2,n3)".parse().unwrap();
    /// assert!(matches!(q, Quorum::First { n: 1, .. }));
    /// ```
    First {
        /// How many synchronous standbys.
        n: usize,
        /// The candidates, in priority order.
        names: Vec<NodeId>,
    },
    /// Every policy must be satisfied: "2 acknowledgements, at least one from another zone" is
    /// `acks 2 and acks 1 where zone!=eu`.
    ///
    /// ```
    /// # use replication_core::quorum::{Quorum, ReplicaFilter};
    /// let q: Quorum = "acks 2 and acks 1 where zone!=eu".parse().unwrap();
    /// assert!(matches!(q, Quorum::AllOf(ref parts) if parts.len() == 2));
    /// ```
    AllOf(Vec<Quorum>),
}

/// The `n`-th highest durable position among the replicas the filter admits.
impl Quorum {
    /// What automatic failover publishes with a leader's commit point, so that a candidate
    /// can tell whether the members it sees hold every write this policy acknowledged: for
    /// each part (`A and B` has two; an acknowledged write satisfied both, so one proof that
    /// holds is enough), its voters (node names) and how many of them must be seen,
    /// `n − k + 1` for `k` acknowledgements among `n` voters (the rule of `repnode failover
    /// plan`). `members` is the durable membership (`node/database`). `majority` may have
    /// committed on one copy while the membership was smaller, so it needs every member;
    /// parts that need no acknowledgement prove nothing and are left out; a part that needs
    /// more acknowledgements than it has voters needs them all.
    ///
    /// ```
    /// # use replication_core::quorum::Quorum;
    /// let members = ["n2/app".to_string(), "n3/app".to_string()];
    /// let proofs = "acks 1".parse::<Quorum>().unwrap().failover_proofs(&members);
    /// assert_eq!((proofs[0].voters.len(), proofs[0].needed), (2, 2));
    /// ```
    pub fn failover_proofs(&self, members: &[String]) -> Vec<crate::coordinator::Proof> {
        let distinct = |names: &mut dyn Iterator<Item = String>| {
            let mut seen = std::collections::BTreeSet::new();
            names.filter(|n| seen.insert(n.clone())).collect::<Vec<_>>()
        };
        let of_members = || {
            let mut nodes = members.iter().map(|m| {
                m.split_once('/')
                    .map_or(m.as_str(), |(node, _)| node)
                    .to_string()
            });
            distinct(&mut nodes)
        };
        let named = |list: &[NodeId]| distinct(&mut list.iter().map(|n| n.as_str().to_string()));
        let (voters, k) = match self {
            Quorum::AllOf(parts) => {
                return parts
                    .iter()
                    .flat_map(|p| p.failover_proofs(members))
                    .collect();
            }
            Quorum::Async => return Vec::new(),
            Quorum::AckCount {
                n,
                among: Some(ReplicaFilter::Names(list)),
            }
            | Quorum::Any { n, names: list }
            | Quorum::First { n, names: list } => (named(list), *n),
            // A tag filter only narrows which members could acknowledge: counting among all
            // of them stays sound.
            Quorum::AckCount { n, .. } => (of_members(), *n),
            Quorum::Majority => (of_members(), 1),
            Quorum::MajorityOf(list) => (named(list), list.len().div_ceil(2).max(1)),
        };
        let n = voters.len();
        if k == 0 || n == 0 {
            return Vec::new();
        }
        let needed = if k > n { n } else { n - k + 1 };
        vec![crate::coordinator::Proof {
            voters,
            needed: needed as u32,
        }]
    }
}

fn nth_highest<'a>(replicas: impl Iterator<Item = &'a ReplicaProgress<'a>>, n: usize) -> TxId {
    if n == 0 {
        return TxId(u64::MAX);
    }
    let mut positions: Vec<TxId> = replicas.map(|r| r.durable).collect();
    if positions.len() < n {
        return TxId::ZERO;
    }
    positions.sort_unstable_by(|a, b| b.cmp(a));
    positions[n - 1]
}

impl QuorumPolicy for Quorum {
    fn satisfied(&self, replicas: &[ReplicaProgress<'_>]) -> TxId {
        match self {
            Quorum::Async => TxId(u64::MAX),
            Quorum::AckCount { n, among } => nth_highest(
                replicas
                    .iter()
                    .filter(|r| among.as_ref().is_none_or(|f| f.admits(r))),
                *n,
            ),
            Quorum::Majority => {
                let needed = replicas.len().div_ceil(2).max(1);
                nth_highest(replicas.iter(), needed)
            }
            Quorum::MajorityOf(names) => {
                let needed = names.len().div_ceil(2).max(1);
                nth_highest(replicas.iter().filter(|r| names.contains(r.id)), needed)
            }
            Quorum::Any { n, names } => {
                nth_highest(replicas.iter().filter(|r| names.contains(r.id)), *n)
            }
            Quorum::First { n, names } => {
                if *n == 0 {
                    return TxId(u64::MAX);
                }
                let standbys: Vec<TxId> = names
                    .iter()
                    .filter_map(|name| replicas.iter().find(|r| r.id == name && r.connected))
                    .take(*n)
                    .map(|r| r.durable)
                    .collect();
                if standbys.len() < *n {
                    TxId::ZERO
                } else {
                    standbys.into_iter().min().unwrap_or(TxId::ZERO)
                }
            }
            Quorum::AllOf(parts) => parts
                .iter()
                .map(|p| p.satisfied(replicas))
                .min()
                .unwrap_or(TxId(u64::MAX)),
        }
    }

    fn is_synchronous(&self) -> bool {
        match self {
            Quorum::Async => false,
            Quorum::AckCount { n, .. } | Quorum::Any { n, .. } | Quorum::First { n, .. } => *n > 0,
            Quorum::Majority | Quorum::MajorityOf(_) => true,
            Quorum::AllOf(parts) => parts.iter().any(Quorum::is_synchronous),
        }
    }
}

/// A policy text that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid quorum policy {text:?}: {reason} (expected e.g. `async`, `acks 2`, `majority`, \
     `majority (n2,n3,n4)`, `any 2 (n2,n3,n4)`, `first 1 (n2,n3)`, \
     `acks 2 and acks 1 where zone!=eu`)"
)]
pub struct ParseQuorumError {
    text: String,
    reason: &'static str,
}

fn parse_names(text: &str) -> Option<Vec<NodeId>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let names: Vec<NodeId> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(NodeId::new)
        .collect();
    (!names.is_empty()).then_some(names)
}

fn parse_one(text: &str) -> Result<Quorum, &'static str> {
    let text = text.trim();
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let rest = rest.trim();
    match word.to_ascii_lowercase().as_str() {
        "async" if rest.is_empty() => Ok(Quorum::Async),
        "majority" if rest.is_empty() => Ok(Quorum::Majority),
        "majority" => parse_names(rest)
            .map(Quorum::MajorityOf)
            .ok_or("bad `(names)` list after `majority`"),
        "acks" => {
            let (count, filter) = match rest.split_once(" where ") {
                Some((count, filter)) => (count.trim(), Some(filter.trim())),
                None => (rest, None),
            };
            let n = count.parse().map_err(|_| "`acks` needs a count")?;
            let among = match filter {
                None => None,
                Some(filter) => Some(if let Some((key, value)) = filter.split_once("!=") {
                    ReplicaFilter::TagNotEquals {
                        key: key.trim().into(),
                        value: value.trim().into(),
                    }
                } else if let Some((key, value)) = filter.split_once('=') {
                    ReplicaFilter::TagEquals {
                        key: key.trim().into(),
                        value: value.trim().into(),
                    }
                } else {
                    return Err("`where` needs `tag=value` or `tag!=value`");
                }),
            };
            Ok(Quorum::AckCount { n, among })
        }
        "any" | "first" => {
            let (count, names) = rest.split_once('(').ok_or("missing `(names)`")?;
            let n: usize = count
                .trim()
                .parse()
                .map_err(|_| "missing count before `(names)`")?;
            let names = parse_names(&format!("({names}")).ok_or("bad `(names)` list")?;
            if n > names.len() {
                return Err("count exceeds the number of names");
            }
            Ok(if word.eq_ignore_ascii_case("any") {
                Quorum::Any { n, names }
            } else {
                Quorum::First { n, names }
            })
        }
        _ => Err("unknown policy"),
    }
}

impl FromStr for Quorum {
    type Err = ParseQuorumError;

    fn from_str(text: &str) -> Result<Quorum, ParseQuorumError> {
        let error = |reason| ParseQuorumError {
            text: text.to_string(),
            reason,
        };
        let mut parts: Vec<Quorum> = text
            .split(" and ")
            .map(|p| parse_one(p).map_err(error))
            .collect::<Result<_, _>>()?;
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Quorum::AllOf(parts)
        })
    }
}

fn join_names(names: &[NodeId]) -> String {
    names
        .iter()
        .map(NodeId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::Async => f.write_str("async"),
            Quorum::AckCount { n, among: None } => write!(f, "acks {n}"),
            Quorum::AckCount {
                n,
                among: Some(ReplicaFilter::TagEquals { key, value }),
            } => {
                write!(f, "acks {n} where {key}={value}")
            }
            Quorum::AckCount {
                n,
                among: Some(ReplicaFilter::TagNotEquals { key, value }),
            } => {
                write!(f, "acks {n} where {key}!={value}")
            }
            Quorum::AckCount {
                n,
                among: Some(ReplicaFilter::Names(names)),
            } => {
                write!(f, "any {n} ({})", join_names(names))
            }
            Quorum::Majority => f.write_str("majority"),
            Quorum::MajorityOf(names) => write!(f, "majority ({})", join_names(names)),
            Quorum::Any { n, names } => write!(f, "any {n} ({})", join_names(names)),
            Quorum::First { n, names } => write!(f, "first {n} ({})", join_names(names)),
            Quorum::AllOf(parts) => {
                let texts: Vec<String> = parts.iter().map(Quorum::to_string).collect();
                f.write_str(&texts.join(" and "))
            }
        }
    }
}
