//! The QUIC [`Transport`] for replication-core: quinn over rustls with mutual TLS.
//!
//! - One QUIC connection per peer (reused by every channel to it), one bidirectional stream
//!   per channel, so a slow database never blocks another.
//! - Mutual TLS: both sides present a certificate signed by the cluster CA and verify the
//!   other's; the certificate's common name is the identity [`Channel::peer`] reports, which
//!   authorization (`allowed_replicators`) and quorum policies use.
//! - ALPN `repl/<version>` carries the protocol version: a peer speaking another version fails
//!   the handshake with an error saying so.
//! - Frames are length-prefixed (u32, little-endian) with a configurable maximum: an oversized
//!   or truncated frame ends that stream with an error; the connection and its other streams
//!   go on.
//! - Keep-alives and an idle timeout detect a dead peer within [`QuicOptions::idle_timeout`].
//!
//! ```no_run
//! use transport_quic::{QuicOptions, QuicTransport, TlsIdentity};
//! # async fn run() -> Result<(), transport_quic::QuicError> {
//! let identity = TlsIdentity::load("certs".as_ref(), "n1")?;
//! let transport = QuicTransport::bind("127.0.0.1:7000".parse().unwrap(), identity, QuicOptions::default()).await?;
//! # Ok(()) }
//! ```

pub mod certs;
mod frames;
pub mod testing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use replication_core::NodeId;
use replication_core::protocol::{MAX_FRAME_SIZE, PROTOCOL_VERSION};
use replication_core::transport::{Channel, PeerKind, Transport, TransportError};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::sync::mpsc;

pub use certs::{
    DevCa, IssuedCert, NodeSpec, TlsIdentity, add_client, add_node, check_identity, init_pki,
    write_dev_pki,
};
pub use frames::{QuicFrameReceiver, QuicFrameSender};

/// The ALPN protocol id: the protocol name and version.
pub fn alpn() -> Vec<u8> {
    format!("repl/{PROTOCOL_VERSION}").into_bytes()
}

/// Errors setting up the transport.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// A certificate or key could not be made, read or used.
    #[error("certificate: {0}")]
    Certificate(String),
    /// TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding or other I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Transport settings.
#[derive(Clone, Debug)]
pub struct QuicOptions {
    /// Largest frame sent or accepted.
    pub max_frame_size: usize,
    /// How often an idle connection sends a keep-alive.
    pub keep_alive: Duration,
    /// A peer silent this long is considered dead and its connection closed.
    pub idle_timeout: Duration,
    /// Channels opened by peers that wait to be accepted before new ones are refused.
    pub accept_queue: usize,
    /// Channels (QUIC streams) one connection may have open at once: a peer opening more
    /// waits for some to close (QUIC flow control), so a flood of channels costs the
    /// server at most this many per connection.
    pub max_channels_per_connection: u32,
    /// Connections one identity may have open at once; more are closed as they arrive,
    /// naming the limit. Every client process opens one (a `bench` client each).
    pub max_connections_per_peer: usize,
}

impl Default for QuicOptions {
    fn default() -> QuicOptions {
        QuicOptions {
            max_frame_size: MAX_FRAME_SIZE,
            keep_alive: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            accept_queue: 256,
            max_channels_per_connection: 1024,
            max_connections_per_peer: 256,
        }
    }
}

/// A peer's identity and kind, as its certificate states them.
type Authenticated = (NodeId, PeerKind);

/// A QUIC endpoint that both dials peers and accepts them.
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    connections: Mutex<HashMap<String, (quinn::Connection, Authenticated)>>,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Channel>>,
    options: QuicOptions,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn transport_config(options: &QuicOptions) -> Result<Arc<quinn::TransportConfig>, QuicError> {
    let mut config = quinn::TransportConfig::default();
    config.keep_alive_interval(Some(options.keep_alive));
    let idle = quinn::IdleTimeout::try_from(options.idle_timeout)
        .map_err(|_| QuicError::Certificate("idle timeout out of range".into()))?;
    config.max_idle_timeout(Some(idle));
    // Replication streams carry bulk catch-up: allow a generous window per stream.
    config.stream_receive_window(quinn::VarInt::from_u32(8 << 20));
    config.receive_window(quinn::VarInt::from_u32(32 << 20));
    config.send_window(32 << 20);
    config
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(options.max_channels_per_connection));
    // Channels are bidirectional streams; nothing uses unidirectional ones.
    config.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Ok(Arc::new(config))
}

fn roots(identity: &TlsIdentity) -> Result<Arc<rustls::RootCertStore>, QuicError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in &identity.ca {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The identity in a peer's certificate (its common name), and whether it is a client
/// certificate (organizational unit `client`) or a node's.
fn peer_identity(connection: &quinn::Connection) -> Result<Authenticated, TransportError> {
    let refused = |why: &str| TransportError::Refused(format!("peer certificate: {why}"));
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| refused("none presented"))?;
    let first = certs.first().ok_or_else(|| refused("empty chain"))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(first).map_err(|_| refused("unparsable"))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| refused("no common name"))?;
    let is_client = cert
        .subject()
        .iter_organizational_unit()
        .any(|unit| unit.as_str().is_ok_and(|u| u == certs::CLIENT_UNIT));
    Ok((
        NodeId::new(name),
        if is_client {
            PeerKind::Client
        } else {
            PeerKind::Node
        },
    ))
}

fn describe_connection_error(error: &quinn::ConnectionError) -> String {
    let text = error.to_string();
    if text.contains("no application protocol") || text.contains("NoApplicationProtocol") {
        format!(
            "the peer speaks another protocol version (we offer ALPN repl/{PROTOCOL_VERSION}): {text}"
        )
    } else if text.contains("UnknownIssuer") {
        format!("certificate not signed by this cluster's CA (another cluster's?): {text}")
    } else if text.contains("UnknownCA") || text.contains("unknown CA") {
        format!(
            "the peer refused our certificate: not signed by its cluster's CA (another \
             cluster's?): {text}"
        )
    } else if text.contains("NotValidForName") {
        format!(
            "the peer's certificate does not name the address dialled: issue it for that \
             address (`repnode certs add-node NAME=ADDRESS`): {text}"
        )
    } else if text.contains("Expired") || text.contains("expired") {
        format!("certificate expired: {text}")
    } else {
        text
    }
}

impl QuicTransport {
    /// Binds `listen` and starts accepting peers that present a certificate of the cluster CA.
    ///
    /// # Errors
    /// [`QuicError`] for unusable certificates or a port that cannot be bound.
    pub async fn bind(
        listen: SocketAddr,
        identity: TlsIdentity,
        options: QuicOptions,
    ) -> Result<QuicTransport, QuicError> {
        let roots = roots(&identity)?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| QuicError::Certificate(format!("client verifier: {e}")))?;
        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
        server_tls.alpn_protocols = vec![alpn()];
        let server_crypto = QuicServerConfig::try_from(server_tls)
            .map_err(|e| QuicError::Certificate(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(transport_config(&options)?);

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
        client_tls.alpn_protocols = vec![alpn()];
        let client_crypto = QuicClientConfig::try_from(client_tls)
            .map_err(|e| QuicError::Certificate(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport_config(&options)?);

        let endpoint = quinn::Endpoint::server(server_config, listen)?;
        let (channels_tx, channels_rx) = mpsc::channel(options.accept_queue);
        tokio::spawn(accept_loop(
            endpoint.clone(),
            channels_tx,
            options.max_frame_size,
            options.max_connections_per_peer,
        ));
        Ok(QuicTransport {
            endpoint,
            client_config,
            connections: Mutex::new(HashMap::new()),
            incoming: tokio::sync::Mutex::new(channels_rx),
            options,
        })
    }

    /// The address the endpoint is bound to (useful after binding port 0).
    ///
    /// # Errors
    /// I/O errors from the socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"shutting down");
    }

    /// Closes every connection and waits until peers were told (or timed out), so that the
    /// port can be bound again once the transport is dropped.
    pub async fn shutdown(&self) {
        self.close();
        self.endpoint.wait_idle().await;
    }

    async fn connection_to(
        &self,
        address: &str,
    ) -> Result<(quinn::Connection, Authenticated), TransportError> {
        let cached = self
            .connections
            .lock()
            .ok()
            .and_then(|c| c.get(address).cloned());
        if let Some((connection, peer)) = cached
            && connection.close_reason().is_none()
        {
            return Ok((connection, peer));
        }
        let unreachable = |reason: String| TransportError::Unreachable {
            address: address.to_string(),
            reason,
        };
        let (host, _) = address
            .rsplit_once(':')
            .ok_or_else(|| unreachable("expected HOST:PORT".into()))?;
        let socket = tokio::net::lookup_host(address)
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .next()
            .ok_or_else(|| unreachable("no address".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(format!("bad host name: {e}")))?;
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), socket, host)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = connecting.await.map_err(|e| {
            let text = describe_connection_error(&e);
            match e {
                quinn::ConnectionError::TransportError(_)
                | quinn::ConnectionError::ConnectionClosed(_) => {
                    TransportError::Refused(format!("{address}: {text}"))
                }
                _ => unreachable(text),
            }
        })?;
        let peer = peer_identity(&connection)?;
        if let Ok(mut connections) = self.connections.lock() {
            connections.insert(address.to_string(), (connection.clone(), peer.clone()));
        }
        Ok((connection, peer))
    }
}

/// Connections open per peer identity, for [`QuicOptions::max_connections_per_peer`].
#[derive(Default)]
struct PeerConnections(Mutex<HashMap<NodeId, usize>>);

/// One connection counted for its peer, until dropped.
struct CountedConnection {
    peers: Arc<PeerConnections>,
    peer: NodeId,
}

impl PeerConnections {
    /// Counts one more connection of `peer`, unless it has `limit` open already.
    fn admit(self: &Arc<Self>, peer: &NodeId, limit: usize) -> Option<CountedConnection> {
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(peer.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(CountedConnection {
            peers: self.clone(),
            peer: peer.clone(),
        })
    }
}

impl Drop for CountedConnection {
    fn drop(&mut self) {
        let mut open = self
            .peers
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    channels: mpsc::Sender<Channel>,
    max_frame_size: usize,
    max_connections_per_peer: usize,
) {
    let peers = Arc::new(PeerConnections::default());
    while let Some(incoming) = endpoint.accept().await {
        let channels = channels.clone();
        let peers = peers.clone();
        let remote = incoming.remote_address();
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(peer = %remote, error = %describe_connection_error(&error), "refused a peer during the handshake");
                    return;
                }
            };
            let Ok((peer, peer_kind)) = peer_identity(&connection) else {
                connection.close(quinn::VarInt::from_u32(1), b"no identity");
                return;
            };
            let address = connection.remote_address().to_string();
            let Some(_counted) = peers.admit(&peer, max_connections_per_peer) else {
                tracing::warn!(%peer, %address, limit = max_connections_per_peer, "too many connections from one identity: closing the new one");
                connection.close(
                    quinn::VarInt::from_u32(2),
                    b"too many connections from this identity",
                );
                return;
            };
            loop {
                match connection.accept_bi().await {
                    Ok((send, recv)) => {
                        let channel = Channel {
                            peer: peer.clone(),
                            peer_kind,
                            peer_address: address.clone(),
                            sender: Box::new(QuicFrameSender::new(send, max_frame_size)),
                            receiver: Box::new(QuicFrameReceiver::new(recv, max_frame_size)),
                        };
                        if channels.try_send(channel).is_err() {
                            tracing::warn!(%peer, "accept queue full or closed; refusing a channel");
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%peer, %error, "connection ended");
                        return;
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Transport for QuicTransport {
    async fn connect(&self, address: &str) -> Result<Channel, TransportError> {
        let (connection, (peer, peer_kind)) = self.connection_to(address).await?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| TransportError::Closed(e.to_string()))?;
        Ok(Channel {
            peer,
            peer_kind,
            peer_address: address.to_string(),
            sender: Box::new(QuicFrameSender::new(send, self.options.max_frame_size)),
            receiver: Box::new(QuicFrameReceiver::new(recv, self.options.max_frame_size)),
        })
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
