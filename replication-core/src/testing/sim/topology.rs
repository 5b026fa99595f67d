//! Who the simulated nodes are and who replicates from whom.
//!
//! A topology is a tree rooted at the primary: every other node replicates from a source that
//! was declared before it, either the primary or another replica (a cascade). The simulator
//! boots one engine per node with the role the tree gives it; the oracle asks it which nodes
//! can acknowledge to the primary (its direct replicas) and what tags they announce.

use std::fmt;

use crate::engine::Role;

/// One simulated node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its identity and address.
    pub name: String,
    /// The node it replicates from; `None` for the primary.
    pub upstream: Option<String>,
    /// The `zone` tag it announces to its source, which zone-aware quorum policies filter on.
    pub zone: String,
}

/// The nodes of a simulated cluster and who replicates from whom. The first node is the
/// primary; build one with [`Topology::primary`] and [`Topology::replica`], or take a preset.
///
/// ```
/// use replication_core::testing::sim::Topology;
///
/// // A primary, two replicas of it, and a replica of the first replica.
/// let topology = Topology::primary("p").replica("r1", "p").replica("r2", "p").replica("r3", "r1");
/// assert_eq!(topology.nodes(), Topology::default().nodes());
/// assert_eq!(topology.to_string(), "p; r1<-p; r2<-p; r3<-r1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    name: String,
    nodes: Vec<NodeSpec>,
    /// The node that takes writes. During racing promotions a second node has no upstream
    /// either; this one is the primary the operator keeps.
    primary: usize,
}

impl Topology {
    /// The names [`Topology::preset`] knows, the default first.
    pub const PRESETS: [&'static str; 3] = ["four", "three", "five-cascade"];

    /// A topology of one primary called `name`, for [`Topology::replica`] to extend. It is
    /// named after its shape (its [`Display`](fmt::Display) form).
    pub fn primary(name: &str) -> Topology {
        Topology {
            name: String::new(),
            nodes: vec![NodeSpec {
                name: name.to_string(),
                upstream: None,
                zone: zone_of(0),
            }],
            primary: 0,
        }
    }

    /// Adds `name`, replicating from `upstream`. Zones alternate `a`, `b` in declaration
    /// order (the primary is in `a`), so that zone-aware policies have replicas to tell apart.
    ///
    /// # Panics
    /// If `name` is already taken or `upstream` was not declared before: a topology is a tree.
    pub fn replica(mut self, name: &str, upstream: &str) -> Topology {
        assert!(self.index(name).is_none(), "node {name} declared twice");
        assert!(
            self.index(upstream).is_some(),
            "{name}'s upstream {upstream} is not declared before it"
        );
        let zone = zone_of(self.nodes.len());
        self.nodes.push(NodeSpec {
            name: name.to_string(),
            upstream: Some(upstream.to_string()),
            zone,
        });
        self
    }

    /// The same topology under another name (reported with failures, to replay them).
    pub fn named(mut self, name: &str) -> Topology {
        self.name = name.to_string();
        self
    }

    /// The default: primary `p`, replicas `r1` and `r2` of `p`, and `r3`, a replica of `r1`.
    pub fn four() -> Topology {
        Topology::primary("p")
            .replica("r1", "p")
            .replica("r2", "p")
            .replica("r3", "r1")
            .named("four")
    }

    /// Primary `p` and its replicas `r1` and `r2`, no cascade.
    pub fn three() -> Topology {
        Topology::primary("p")
            .replica("r1", "p")
            .replica("r2", "p")
            .named("three")
    }

    /// Primary `p` with replicas `r1` and `r2`, and a two-level cascade below `r1`: `r3`
    /// replicates from `r1` and `r4` from `r3`.
    pub fn five_cascade() -> Topology {
        Topology::primary("p")
            .replica("r1", "p")
            .replica("r2", "p")
            .replica("r3", "r1")
            .replica("r4", "r3")
            .named("five-cascade")
    }

    /// The preset called `name`, one of [`Topology::PRESETS`].
    pub fn preset(name: &str) -> Option<Topology> {
        match name {
            "four" => Some(Topology::four()),
            "three" => Some(Topology::three()),
            "five-cascade" => Some(Topology::five_cascade()),
            _ => None,
        }
    }

    /// Its name: a preset's, the one given to [`Topology::named`], or else its shape.
    pub fn name(&self) -> String {
        if self.name.is_empty() {
            self.to_string()
        } else {
            self.name.clone()
        }
    }

    /// Every node, the primary first.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// The index of the node called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The role node `index` boots with.
    pub fn role(&self, index: usize) -> Role {
        match &self.nodes[index].upstream {
            None => Role::Primary,
            Some(upstream) => Role::Replica {
                address: upstream.clone(),
            },
        }
    }

    /// The primary's index (the builder puts it first; a promotion may move it).
    pub fn primary_index(&self) -> usize {
        self.primary
    }

    /// Promotes `new` in place of `old`: `new` becomes the primary, the nodes that replicated
    /// from `old` now replicate from `new` (returned), and `old` will replicate from `new`.
    pub(super) fn promote(&mut self, new: usize, old: usize) -> Vec<usize> {
        let repointed = self.repoint(old, new);
        self.crown(new);
        self.set_upstream(old, Some(new));
        repointed
    }

    /// The nodes that replicated from `from` (but `to`) now replicate from `to`; returns them.
    pub(super) fn repoint(&mut self, from: usize, to: usize) -> Vec<usize> {
        let (from_name, to_name) = (self.nodes[from].name.clone(), self.nodes[to].name.clone());
        let mut repointed = Vec::new();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if index != to && node.upstream.as_ref() == Some(&from_name) {
                node.upstream = Some(to_name.clone());
                repointed.push(index);
            }
        }
        repointed
    }

    /// `index` takes writes: the primary from now on.
    pub(super) fn crown(&mut self, index: usize) {
        self.nodes[index].upstream = None;
        self.primary = index;
    }

    /// `index` replicates from `upstream` (`None`: it is a primary, as a racing promotion's
    /// rival is, but not the one [`Topology::primary_index`] names).
    pub(super) fn set_upstream(&mut self, index: usize, upstream: Option<usize>) {
        self.nodes[index].upstream = upstream.map(|u| self.nodes[u].name.clone());
    }

    /// The nodes that replicate straight from `index`.
    pub(super) fn replicas_of(&self, index: usize) -> impl Iterator<Item = &NodeSpec> {
        let source = &self.nodes[index].name;
        self.nodes
            .iter()
            .filter(move |n| n.upstream.as_ref() == Some(source))
    }

    /// The nodes that replicate straight from the primary: the only ones whose
    /// acknowledgements a quorum policy counts.
    pub fn direct_replicas(&self) -> impl Iterator<Item = &NodeSpec> {
        self.replicas_of(self.primary)
    }
}

fn zone_of(index: usize) -> String {
    if index.is_multiple_of(2) { "a" } else { "b" }.to_string()
}

impl Default for Topology {
    fn default() -> Topology {
        Topology::four()
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&node.name)?;
            if let Some(upstream) = &node.upstream {
                write!(f, "<-{upstream}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_their_shapes() {
        for name in Topology::PRESETS {
            let topology = Topology::preset(name).expect("a preset");
            assert_eq!(topology.name(), name);
            assert_eq!(topology.primary_index(), 0);
            assert_eq!(topology.role(0), Role::Primary);
        }
        let five = Topology::five_cascade();
        assert_eq!(five.to_string(), "p; r1<-p; r2<-p; r3<-r1; r4<-r3");
        let direct: Vec<&str> = five.direct_replicas().map(|n| n.name.as_str()).collect();
        assert_eq!(direct, ["r1", "r2"]);
        assert_eq!(
            five.role(4),
            Role::Replica {
                address: "r3".into()
            }
        );
        let zones: Vec<&str> = five.nodes().iter().map(|n| n.zone.as_str()).collect();
        assert_eq!(zones, ["a", "b", "a", "b", "a"]);
        assert_eq!(Topology::primary("x").replica("y", "x").name(), "x; y<-x");
    }

    #[test]
    #[should_panic(expected = "not declared before")]
    fn an_upstream_must_come_first() {
        let _ = Topology::primary("p").replica("r2", "r1");
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn names_are_unique() {
        let _ = Topology::primary("p").replica("p", "p");
    }
}
