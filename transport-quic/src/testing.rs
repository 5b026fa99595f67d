//! Endpoints for tests and benchmarks: a transport on an ephemeral loopback port, so that any
//! number of nodes run in one process without choosing ports.
//!
//! ```
//! use transport_quic::{DevCa, QuicOptions, testing::loopback};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), transport_quic::QuicError> {
//! let ca = DevCa::generate("test CA")?;
//! let (n1, address) = loopback(&ca, "n1", QuicOptions::default()).await?;
//! assert!(address.starts_with("127.0.0.1:"));
//! n1.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use replication_core::transport::TransportError;

use crate::{DevCa, QuicError, QuicOptions, QuicTransport, TlsIdentity};

/// Binds a transport for node `name` on an ephemeral loopback port, with a certificate that
/// `ca` issues for that name; returns it with the address its peers connect to.
///
/// # Errors
/// [`QuicError`] if the certificate cannot be issued or the socket not bound.
pub async fn loopback(
    ca: &DevCa,
    name: &str,
    options: QuicOptions,
) -> Result<(QuicTransport, String), QuicError> {
    loopback_as(ca.identity(name)?, options).await
}

/// [`loopback`] with a given identity: for tests of certificates the cluster CA did not issue
/// as it would (another CA's, an expired one).
///
/// # Errors
/// [`QuicError`] if the socket cannot be bound.
pub async fn loopback_as(
    identity: TlsIdentity,
    options: QuicOptions,
) -> Result<(QuicTransport, String), QuicError> {
    let transport = QuicTransport::bind(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        identity,
        options,
    )
    .await?;
    let address = transport.local_addr()?.to_string();
    Ok((transport, address))
}

/// A raw stream to `address`, on `transport`'s connection to it: what is written goes as it
/// is, unframed, so that tests can send what a well-behaved peer never would (truncated
/// frames, lies in headers) and see what the other side does with it.
///
/// # Errors
/// [`TransportError`] if the peer cannot be reached or refuses the stream.
pub async fn raw_stream(
    transport: &QuicTransport,
    address: &str,
) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
    let (connection, _) = transport.connection_to(address).await?;
    connection
        .open_bi()
        .await
        .map_err(|e| TransportError::Closed(e.to_string()))
}
