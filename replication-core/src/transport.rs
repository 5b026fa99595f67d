//! The `Transport` trait: how nodes reach each other.
//!
//! A transport opens *channels*: ordered, reliable, bidirectional streams of frames between two
//! authenticated nodes, one per replicated database (for QUIC, one stream per channel on one
//! connection per peer pair, so a slow database never blocks another). Frames are opaque bytes;
//! [`protocol`](crate::protocol) encodes the messages they carry.

use async_trait::async_trait;
use bytes::Bytes;

use crate::types::NodeId;

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached or refused the connection.
    #[error("cannot reach {address}: {reason}")]
    Unreachable {
        /// The address dialled.
        address: String,
        /// Why.
        reason: String,
    },
    /// The peer's identity was not accepted (for QUIC: a certificate the CA did not sign).
    #[error("peer refused: {0}")]
    Refused(String),
    /// The channel was closed, cleanly or not.
    #[error("channel closed: {0}")]
    Closed(String),
    /// A frame exceeded the configured maximum size.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The transport is shutting down.
    #[error("transport shut down")]
    Shutdown,
}

/// The sending half of a channel.
#[async_trait]
pub trait FrameSender: Send + 'static {
    /// Sends one frame. Waits while the peer's receive buffer is full (backpressure).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future may leave the frame partly sent, after which the
    /// channel must be dropped.
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError>;
}

/// The receiving half of a channel.
#[async_trait]
pub trait FrameReceiver: Send + 'static {
    /// Receives the next frame; `Ok(None)` when the peer closed the channel cleanly.
    ///
    /// # Errors
    /// [`TransportError::FrameTooLarge`] for a frame over the limit (the channel is then
    /// unusable), [`TransportError::Closed`] when the channel broke.
    ///
    /// # Cancel safety
    /// Cancel safe: a frame is either returned whole or left for the next call.
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError>;
}

/// What kind of certificate (or credential) a peer authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    /// A server of the cluster.
    Node,
    /// A client (an operator's CLI, an application, an external replicator).
    Client,
}

/// An open channel to an authenticated peer.
pub struct Channel {
    /// The peer's authenticated identity.
    pub peer: NodeId,
    /// Whether the peer is a node or a client; by default only nodes may replicate.
    pub peer_kind: PeerKind,
    /// The peer's address, for status output.
    pub peer_address: String,
    /// The sending half.
    pub sender: Box<dyn FrameSender>,
    /// The receiving half.
    pub receiver: Box<dyn FrameReceiver>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("peer", &self.peer)
            .field("peer_address", &self.peer_address)
            .finish_non_exhaustive()
    }
}

/// How nodes reach each other.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Opens a channel to the node at `address`.
    ///
    /// # Errors
    /// [`TransportError::Unreachable`] or [`TransportError::Refused`].
    async fn connect(&self, address: &str) -> Result<Channel, TransportError>;

    /// Waits for the next channel a peer opens to this node.
    ///
    /// # Errors
    /// [`TransportError::Shutdown`] once the transport is closed.
    async fn accept(&self) -> Result<Channel, TransportError>;
}

/// A shared transport is a transport: several owners (a server's databases, a client) can use
/// one endpoint.
#[async_trait]
impl<T: Transport> Transport for std::sync::Arc<T> {
    async fn connect(&self, address: &str) -> Result<Channel, TransportError> {
        (**self).connect(address).await
    }

    async fn accept(&self) -> Result<Channel, TransportError> {
        (**self).accept().await
    }
}
