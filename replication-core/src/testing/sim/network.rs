//! The simulated network: channels between nodes, their latency, partitions and breakage.
//!
//! A channel (link) joins a dialling node and the node it dialled; messages on it arrive in
//! the order they were sent, each after a random latency (now and then a long one). A link
//! breaks when either node crashes, closes it, is partitioned from the other, or — while
//! message loss is on — when a message sent on it is lost: a lost message is never silently
//! skipped, since the protocol relies on TCP's in-order delivery, so the channel is cut
//! instead. Each surviving end learns of the break a random time later, as with a TCP reset
//! or timeout. Dials to a crashed or partitioned node are refused. A node that closes a channel
//! closes it gracefully, as a QUIC stream finishes: what it sent before still arrives (a
//! refusal, say), nothing more reaches it, and the link breaks after its last delivery.

use std::collections::BTreeMap;

use super::rng::Rng;
use crate::engine::ConnId;

/// One end of a link: the node, its channel id for the link, and the node's incarnation when
/// the link opened.
#[derive(Clone, Copy, Debug)]
pub(super) struct End {
    pub(super) node: usize,
    pub(super) conn: ConnId,
    pub(super) incarnation: u64,
}

/// A node that must be told, `delay` from now, that its channel `end.conn` broke.
#[derive(Clone, Copy, Debug)]
pub(super) struct Broken {
    pub(super) end: End,
    pub(super) delay: u64,
}

/// What closing a channel does.
#[derive(Debug)]
pub(super) enum Closing {
    /// The link broke at once (nothing was in flight from the closing end).
    Cut(Vec<Broken>),
    /// Messages from the closing end are in flight: break `link` after `delay`, with
    /// [`Network::finish_close`].
    After { link: usize, delay: u64 },
}

/// What became of a sent message.
#[derive(Debug)]
pub(super) enum Transmission {
    /// The channel was already gone: the message vanishes, as on a closed socket.
    Dropped,
    /// The message was lost and its channel cut.
    Lost(Vec<Broken>),
    /// The message is to be delivered on `link` to end `to_end` after `delay`.
    InFlight {
        link: usize,
        to_end: usize,
        delay: u64,
    },
}

#[derive(Debug)]
struct Link {
    /// [dialler, listener].
    ends: [End; 2],
    alive: bool,
    /// Per direction, the time of the last scheduled delivery, to keep channels FIFO.
    last_delivery: [u64; 2],
    /// The end that closed the link, which receives nothing more.
    closed_end: Option<usize>,
}

/// What the network knows of one node.
#[derive(Debug, Default)]
struct Endpoint {
    conns: BTreeMap<ConnId, usize>,
    next_conn: u64,
    /// Bumped when the node crashes, in step with the node's own.
    incarnation: u64,
}

#[derive(Debug)]
pub(super) struct Network {
    links: Vec<Link>,
    endpoints: Vec<Endpoint>,
    partitions: Vec<(usize, usize)>,
    rng: Rng,
    loss_rng: Rng,
    /// Whether sent messages may be lost (while faults are injected).
    lossy: bool,
}

impl Network {
    pub(super) fn new(nodes: usize, rng: Rng, loss_rng: Rng, lossy: bool) -> Network {
        Network {
            links: Vec::new(),
            endpoints: (0..nodes).map(|_| Endpoint::default()).collect(),
            partitions: Vec::new(),
            rng,
            loss_rng,
            lossy,
        }
    }

    /// How long a dial takes to succeed or fail.
    pub(super) fn dial_time(&mut self) -> u64 {
        self.rng.range(100, 3000)
    }

    pub(super) fn partitioned(&self, a: usize, b: usize) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
    }

    /// Opens a link from `dialler` to `listener`; returns their channel ids for it.
    pub(super) fn open(&mut self, dialler: usize, listener: usize) -> (ConnId, ConnId) {
        let link = self.links.len();
        let mut end = |node: usize| {
            let endpoint = &mut self.endpoints[node];
            let conn = ConnId(endpoint.next_conn);
            endpoint.next_conn += 1;
            endpoint.conns.insert(conn, link);
            End {
                node,
                conn,
                incarnation: endpoint.incarnation,
            }
        };
        let ends = [end(dialler), end(listener)];
        self.links.push(Link {
            ends,
            alive: true,
            last_delivery: [0, 0],
            closed_end: None,
        });
        (ends[0].conn, ends[1].conn)
    }

    /// Sends a message from `node` on its channel `conn` at time `now`.
    pub(super) fn send(&mut self, node: usize, conn: ConnId, now: u64) -> Transmission {
        let Some(&link) = self.endpoints[node].conns.get(&conn) else {
            return Transmission::Dropped;
        };
        if !self.links[link].alive {
            return Transmission::Dropped;
        }
        if self.lossy && self.loss_rng.chance(1) && self.loss_rng.chance(20) {
            return Transmission::Lost(self.cut(link));
        }
        let ends = self.links[link].ends;
        let from_end = usize::from(ends[1].node == node && ends[1].conn == conn);
        let latency = if self.rng.chance(3) {
            self.rng.range(5_000, 60_000)
        } else {
            self.rng.range(50, 2_000)
        };
        let at = (now + latency).max(self.links[link].last_delivery[from_end]);
        self.links[link].last_delivery[from_end] = at;
        Transmission::InFlight {
            link,
            to_end: 1 - from_end,
            delay: at - now,
        }
    }

    /// The end a message in flight on `link` arrives at, unless the link broke meanwhile.
    pub(super) fn arrival(&self, link: usize, to_end: usize) -> Option<End> {
        let link = &self.links[link];
        (link.alive && link.closed_end != Some(to_end)).then_some(link.ends[to_end])
    }

    /// Breaks `link`; the ends on live incarnations are to be told.
    fn cut(&mut self, link: usize) -> Vec<Broken> {
        if !self.links[link].alive {
            return Vec::new();
        }
        self.links[link].alive = false;
        let mut broken = Vec::new();
        for end in self.links[link].ends {
            let endpoint = &mut self.endpoints[end.node];
            if endpoint.incarnation == end.incarnation {
                endpoint.conns.remove(&end.conn);
                let delay = self.rng.range(0, 2000);
                broken.push(Broken { end, delay });
            }
        }
        broken
    }

    fn cut_where(&mut self, touches: impl Fn(&[End; 2]) -> bool) -> Vec<Broken> {
        let mut broken = Vec::new();
        for link in 0..self.links.len() {
            if touches(&self.links[link].ends) {
                broken.extend(self.cut(link));
            }
        }
        broken
    }

    /// `node` closes its channel `conn`. Its own end is told too, as a socket reports its
    /// own close.
    pub(super) fn close(&mut self, node: usize, conn: ConnId, now: u64) -> Closing {
        let Some(link) = self.endpoints[node].conns.remove(&conn) else {
            return Closing::Cut(Vec::new());
        };
        let state = &mut self.links[link];
        let from_end = usize::from(state.ends[1].node == node && state.ends[1].conn == conn);
        state.closed_end = Some(from_end);
        let last = state.last_delivery[from_end];
        if !state.alive || last <= now {
            Closing::Cut(self.cut(link))
        } else {
            Closing::After {
                link,
                delay: last - now + 1,
            }
        }
    }

    /// Breaks a link closed gracefully once what was in flight arrived.
    pub(super) fn finish_close(&mut self, link: usize) -> Vec<Broken> {
        self.cut(link)
    }

    /// Breaks every link of `node`.
    pub(super) fn cut_all(&mut self, node: usize) -> Vec<Broken> {
        self.cut_where(|ends| ends.iter().any(|end| end.node == node))
    }

    /// `node` crashed: its channels die with it, and only its peers notice.
    pub(super) fn crashed(&mut self, node: usize) -> Vec<Broken> {
        let endpoint = &mut self.endpoints[node];
        endpoint.incarnation += 1;
        endpoint.conns.clear();
        self.cut_all(node)
    }

    /// Separates `a` from `b` until [`Network::heal`]: their links break, dials fail.
    pub(super) fn partition(&mut self, a: usize, b: usize) -> Vec<Broken> {
        self.partitions.push((a, b));
        self.cut_where(|ends| {
            (ends[0].node == a && ends[1].node == b) || (ends[0].node == b && ends[1].node == a)
        })
    }

    pub(super) fn heal(&mut self, a: usize, b: usize) {
        self.partitions.retain(|&p| p != (a, b));
    }

    /// Lifts every partition and stops losing messages, for the cluster to converge.
    pub(super) fn heal_all(&mut self) {
        self.partitions.clear();
        self.lossy = false;
    }
}
