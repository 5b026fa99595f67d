//! The client side of the `repnode` protocol, used by the CLI commands.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use replication_core::transport::{Channel, Transport, TransportError};
use transport_quic::{QuicError, QuicOptions, QuicTransport, TlsIdentity};

use crate::wire::{CLIENT_HELLO, Request, Response};

/// Why a request could not be made. Once a request is sent, failures are an
/// [`Outcome::Unknown`] instead: the server may have acted on it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No local endpoint could be opened.
    #[error(transparent)]
    Bind(#[from] QuicError),
    /// The server is unreachable or refused the certificate.
    #[error("connecting to {server}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        #[source]
        error: TransportError,
    },
    /// The connection broke before the session began.
    #[error("{server}: {error}")]
    Hello {
        /// The server.
        server: String,
        /// Why.
        error: TransportError,
    },
    /// The request does not encode.
    #[error(transparent)]
    Encode(#[from] postcard::Error),
    /// The request could not be sent (nothing reached the server).
    #[error("sending the request: {0}")]
    Send(TransportError),
    /// The server did not complete the connection in time.
    #[error("connecting to {server}: no answer within {} ms", limit.as_millis())]
    ConnectTimeout {
        /// The server.
        server: String,
        /// How long the attempt took.
        limit: Duration,
    },
    /// No server listed leads to a primary of the database.
    #[error("no primary of {db} found: {why}")]
    NoPrimary {
        /// The database.
        db: String,
        /// The last answer.
        why: String,
    },
    /// None of several servers could be reached; each one's error, in order.
    #[error("no server reachable: {}", describe(.0))]
    NoneReachable(Vec<(String, ClientError)>),
}

impl ClientError {
    /// The error of a list of servers that all failed: the one server's own error, else all.
    pub(crate) fn none_reachable(mut failures: Vec<(String, ClientError)>) -> ClientError {
        match failures.len() {
            1 => failures.remove(0).1,
            _ => ClientError::NoneReachable(failures),
        }
    }
}

/// Each server and its error with causes, for [`ClientError::NoneReachable`].
fn describe(failures: &[(String, ClientError)]) -> String {
    failures
        .iter()
        .map(|(server, error)| format!("{server}: {}", crate::server::error_chain(error)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A session with one server.
pub struct Client {
    _transport: QuicTransport,
    channel: Channel,
}

/// How a request ended, from the client's point of view.
#[derive(Debug)]
pub enum Outcome {
    /// The server answered.
    Answered(Response),
    /// The connection broke or the timeout expired after the request was sent: for a write,
    /// the outcome is unknown.
    Unknown(String),
}

impl Client {
    /// Connects to `server` presenting `identity`.
    ///
    /// # Errors
    /// The server is unreachable or refused the certificate.
    pub async fn connect(server: &str, identity: TlsIdentity) -> Result<Client, ClientError> {
        let any = SocketAddr::from(([0, 0, 0, 0], 0));
        let transport = QuicTransport::bind(any, identity, QuicOptions::default()).await?;
        let mut channel =
            transport
                .connect(server)
                .await
                .map_err(|error| ClientError::Connect {
                    server: server.to_string(),
                    error,
                })?;
        channel
            .sender
            .send(Bytes::from_static(CLIENT_HELLO))
            .await
            .map_err(|error| ClientError::Hello {
                server: server.to_string(),
                error,
            })?;
        Ok(Client {
            _transport: transport,
            channel,
        })
    }

    /// The server's identity, as its certificate states it (the name quorum policies and
    /// memberships use for it).
    pub fn server_identity(&self) -> &str {
        self.channel.peer.as_str()
    }

    /// Connects as [`connect`](Client::connect) does, giving up after `limit`.
    ///
    /// # Errors
    /// The server is unreachable, refused the certificate, or did not answer in time.
    pub async fn connect_within(
        server: &str,
        identity: TlsIdentity,
        limit: Duration,
    ) -> Result<Client, ClientError> {
        tokio::time::timeout(limit, Client::connect(server, identity))
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::ConnectTimeout {
                    server: server.to_string(),
                    limit,
                })
            })
    }

    /// Sends a request and waits for the answer, at most `timeout` if given.
    ///
    /// # Errors
    /// The request could not be sent at all (nothing happened on the server).
    pub async fn request(
        &mut self,
        request: &Request,
        timeout: Option<Duration>,
    ) -> Result<Outcome, ClientError> {
        let frame = postcard::to_allocvec(request)?;
        self.channel
            .sender
            .send(Bytes::from(frame))
            .await
            .map_err(ClientError::Send)?;
        let answer = async {
            match self.channel.receiver.recv().await {
                Ok(Some(frame)) => postcard::from_bytes::<Response>(&frame)
                    .map(Outcome::Answered)
                    .unwrap_or_else(|e| Outcome::Unknown(format!("unreadable answer: {e}"))),
                Ok(None) => Outcome::Unknown("the server closed the connection".into()),
                Err(error) => Outcome::Unknown(format!("connection lost: {error}")),
            }
        };
        Ok(match timeout {
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .unwrap_or_else(|_| {
                    Outcome::Unknown(format!("no answer within {} s", limit.as_secs_f64()))
                }),
            None => answer.await,
        })
    }
}
