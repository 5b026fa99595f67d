//! An in-memory [`Transport`] with fault injection: latency, partitions, cut channels, frame
//! limits and damaged frames.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::protocol::MAX_FRAME_SIZE;
use crate::transport::{Channel, FrameReceiver, FrameSender, PeerKind, Transport, TransportError};
use crate::types::NodeId;

/// Frames buffered in one direction of a channel before the sender waits.
const CHANNEL_CAPACITY: usize = 256;

#[derive(Default)]
struct NetworkState {
    listeners: HashMap<String, mpsc::Sender<Channel>>,
    /// Unordered pairs of endpoint names that cannot reach each other.
    partitions: HashSet<(String, String)>,
    /// Every open channel: its two endpoints and the switch that cuts it.
    links: Vec<(String, String, watch::Sender<bool>)>,
    latency: Duration,
    max_frame_size: usize,
    /// Frames to damage: the next frame of at least this many bytes an endpoint sends.
    corruptions: Vec<(String, usize)>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

/// A network of in-memory endpoints. Endpoints are addressed by their name, which is also
/// the identity they present.
#[derive(Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetworkState>>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemNetwork").finish_non_exhaustive()
    }
}

impl MemNetwork {
    /// An empty network without latency or faults.
    pub fn new() -> MemNetwork {
        let network = MemNetwork::default();
        network.lock().max_frame_size = MAX_FRAME_SIZE;
        network
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds (or replaces, after a simulated restart) the endpoint `name`.
    pub fn endpoint(&self, name: &str) -> MemEndpoint {
        let (tx, rx) = mpsc::channel(64);
        self.lock().listeners.insert(name.to_string(), tx);
        MemEndpoint {
            name: name.to_string(),
            network: self.clone(),
            incoming: tokio::sync::Mutex::new(rx),
        }
    }

    /// Delays every frame by `latency` from now on (channels stay pipelined).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Sets the largest frame a receiver accepts.
    pub fn set_max_frame_size(&self, limit: usize) {
        self.lock().max_frame_size = limit;
    }

    /// Damages the next frame of at least `min_len` bytes that `from` sends: its last byte is
    /// flipped, which leaves a frame that still decodes but whose content is wrong (for a
    /// snapshot chunk, a hash that does not match its data).
    pub fn corrupt_next_frame(&self, from: &str, min_len: usize) {
        self.lock().corruptions.push((from.to_string(), min_len));
    }

    /// Whether a frame of `len` bytes from `from` is one to damage (and no longer pending).
    fn take_corruption(&self, from: &str, len: usize) -> bool {
        let mut state = self.lock();
        match state
            .corruptions
            .iter()
            .position(|(name, min_len)| name == from && len >= *min_len)
        {
            Some(index) => {
                state.corruptions.remove(index);
                true
            }
            None => false,
        }
    }

    /// Cuts every channel between `a` and `b` and refuses new ones until [`MemNetwork::heal`].
    pub fn partition(&self, a: &str, b: &str) {
        let mut state = self.lock();
        state.partitions.insert(pair(a, b));
        state.links.retain(|(x, y, cut)| {
            let hit = pair(x, y) == pair(a, b);
            if hit {
                cut.send_replace(true);
            }
            !hit
        });
    }

    /// Lets `a` and `b` reach each other again.
    pub fn heal(&self, a: &str, b: &str) {
        self.lock().partitions.remove(&pair(a, b));
    }

    /// Cuts every channel of `name` (they fail on both sides), as a crash or a network blip
    /// would. New channels may be opened at once.
    pub fn cut(&self, name: &str) {
        self.lock().links.retain(|(x, y, cut)| {
            let hit = x == name || y == name;
            if hit {
                cut.send_replace(true);
            }
            !hit
        });
    }

    /// Removes the endpoint `name` (a stopped server): its channels are cut and connecting to
    /// it fails until [`MemNetwork::endpoint`] adds it again.
    pub fn remove(&self, name: &str) {
        self.cut(name);
        self.lock().listeners.remove(name);
    }

    fn open(&self, from: &str, to: &str) -> Result<Channel, TransportError> {
        let mut state = self.lock();
        let unreachable = |reason: &str| TransportError::Unreachable {
            address: to.to_string(),
            reason: reason.to_string(),
        };
        if state.partitions.contains(&pair(from, to)) {
            return Err(unreachable("partitioned"));
        }
        let listener = state
            .listeners
            .get(to)
            .ok_or_else(|| unreachable("no such endpoint"))?
            .clone();
        let (cut_tx, cut_rx) = watch::channel(false);
        let (a_to_b, b_from_a) = mpsc::channel(CHANNEL_CAPACITY);
        let (b_to_a, a_from_b) = mpsc::channel(CHANNEL_CAPACITY);
        let latency = state.latency;
        let limit = state.max_frame_size;
        let half = |tx, rx, cut: &watch::Receiver<bool>, name: &str| {
            (
                Box::new(MemSender {
                    frames: tx,
                    cut: cut.clone(),
                    latency,
                    network: self.clone(),
                    from: name.to_string(),
                }) as Box<dyn FrameSender>,
                Box::new(MemReceiver {
                    frames: rx,
                    cut: cut.clone(),
                    limit,
                }) as Box<dyn FrameReceiver>,
            )
        };
        let (local_sender, local_receiver) = half(a_to_b, a_from_b, &cut_rx, from);
        let (remote_sender, remote_receiver) = half(b_to_a, b_from_a, &cut_rx, to);
        let remote = Channel {
            peer: NodeId::new(from),
            peer_kind: PeerKind::Node,
            peer_address: from.to_string(),
            sender: remote_sender,
            receiver: remote_receiver,
        };
        listener
            .try_send(remote)
            .map_err(|_| unreachable("not accepting"))?;
        state.links.push((from.to_string(), to.to_string(), cut_tx));
        Ok(Channel {
            peer: NodeId::new(to),
            peer_kind: PeerKind::Node,
            peer_address: to.to_string(),
            sender: local_sender,
            receiver: local_receiver,
        })
    }
}

/// One node's access to a [`MemNetwork`].
pub struct MemEndpoint {
    name: String,
    network: MemNetwork,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Channel>>,
}

impl std::fmt::Debug for MemEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemEndpoint")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Transport for MemEndpoint {
    async fn connect(&self, address: &str) -> Result<Channel, TransportError> {
        self.network.open(&self.name, address)
    }

    async fn accept(&self) -> Result<Channel, TransportError> {
        self.incoming
            .lock()
            .await
            .recv()
            .await
            .ok_or(TransportError::Shutdown)
    }
}

struct MemSender {
    frames: mpsc::Sender<(Option<tokio::time::Instant>, Bytes)>,
    cut: watch::Receiver<bool>,
    latency: Duration,
    network: MemNetwork,
    /// The endpoint sending.
    from: String,
}

#[async_trait]
impl FrameSender for MemSender {
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        if *self.cut.borrow() {
            return Err(TransportError::Closed("cut".into()));
        }
        let frame = if self.network.take_corruption(&self.from, frame.len()) {
            let mut damaged = frame.to_vec();
            if let Some(last) = damaged.last_mut() {
                *last ^= 0xff;
            }
            Bytes::from(damaged)
        } else {
            frame
        };
        // Without latency, deliver at once: even a timer already due costs a timer-wheel tick.
        #[allow(clippy::disallowed_methods)] // Test transport: latency is wall-clock by design.
        let deliver_at =
            (!self.latency.is_zero()).then(|| tokio::time::Instant::now() + self.latency);
        self.frames
            .send((deliver_at, frame))
            .await
            .map_err(|_| TransportError::Closed("peer dropped the channel".into()))
    }
}

struct MemReceiver {
    frames: mpsc::Receiver<(Option<tokio::time::Instant>, Bytes)>,
    cut: watch::Receiver<bool>,
    limit: usize,
}

#[async_trait]
impl FrameReceiver for MemReceiver {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        if *self.cut.borrow() {
            return Err(TransportError::Closed("cut".into()));
        }
        let received = tokio::select! {
            frame = self.frames.recv() => frame,
            _ = self.cut.wait_for(|cut| *cut) => return Err(TransportError::Closed("cut".into())),
        };
        let Some((deliver_at, frame)) = received else {
            return Ok(None);
        };
        if let Some(deliver_at) = deliver_at {
            tokio::time::sleep_until(deliver_at).await;
        }
        if frame.len() > self.limit {
            return Err(TransportError::FrameTooLarge {
                size: frame.len(),
                limit: self.limit,
            });
        }
        Ok(Some(frame))
    }
}
