//! An external replicator, as immudb's: it reads committed transactions from a source
//! database over the replication protocol and pushes them into a database created with
//! `--external-replicator` on another server, whose engine checks the hash chain.

use std::time::Duration;

use replication_core::protocol::{
    self, FrameError, MAX_FRAME_SIZE, Message, PROTOCOL_VERSION, Refusal, SnapshotWish,
};
use replication_core::quorum::Tags;
use replication_core::transport::{Transport, TransportError};
use replication_core::{EpochClaim, LogPosition, Tx, TxHash, TxId};
use transport_quic::{QuicError, QuicOptions, QuicTransport, TlsIdentity};

use crate::client::{Client, ClientError, Outcome};
use crate::wire::{Request, Response};

/// Why a copy stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicatorError {
    /// The target could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The target refused a request (a forged or non-contiguous transaction, say).
    #[error("{0}")]
    Target(String),
    /// The target's answer did not come.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The target answered something else than asked.
    #[error("unexpected answer to {0}")]
    Unexpected(&'static str),
    /// The target reported a hash that is not 64 hexadecimal digits.
    #[error("bad hash {0:?}")]
    BadHash(String),
    /// No local endpoint could be opened.
    #[error(transparent)]
    Bind(#[from] QuicError),
    /// The source is unreachable or refused the certificate.
    #[error("connecting to {server}")]
    Connect {
        /// The source.
        server: String,
        /// Why.
        #[source]
        error: TransportError,
    },
    /// The replication channel failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A replication frame that does not encode or decode.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The source closed the channel.
    #[error("the source closed the channel")]
    Closed,
    /// The source refused the subscription.
    #[error("the source refused: {0}")]
    Refused(Refusal),
    /// The target holds transactions the source does not.
    #[error("the target's log diverges from the source's")]
    Diverged,
    /// The source compacted the transactions the target needs next; it offers a snapshot,
    /// which an external replicator cannot push.
    #[error(
        "the source's log no longer holds transaction {next} (compacted; it offers a snapshot \
         up to {snapshot}): recreate the target as a replica of the source instead"
    )]
    Compacted {
        /// The transaction the target needs next.
        next: TxId,
        /// The last transaction of the snapshot offered.
        snapshot: TxId,
    },
}

fn parse_hash(hex: &str) -> Result<TxHash, ReplicatorError> {
    let bad = || ReplicatorError::BadHash(hex.to_string());
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(TxHash(bytes))
}

async fn ask(client: &mut Client, request: Request) -> Result<Response, ReplicatorError> {
    match client
        .request(&request, Some(Duration::from_secs(30)))
        .await?
    {
        Outcome::Answered(Response::Error { message, .. }) => Err(ReplicatorError::Target(message)),
        Outcome::Answered(response) => Ok(response),
        Outcome::Unknown(why) => Err(ReplicatorError::Unknown(why)),
    }
}

/// Copies committed transactions of `source_db` at `source` into `target_db` at `target`,
/// starting after the target's last transaction, until the target holds `until` (or forever
/// when `None`). Returns the target's last transaction.
///
/// # Errors
/// Either server refusing (a divergent target is refused by the source's handshake, a forged
/// transaction by the target's chain check), or the connection failing.
pub async fn copy(
    source: &str,
    source_db: &str,
    target: &str,
    target_db: &str,
    identity: TlsIdentity,
    until: Option<TxId>,
) -> Result<TxId, ReplicatorError> {
    let mut target_client = Client::connect(target, identity.clone()).await?;
    let Response::Status(status) = ask(
        &mut target_client,
        Request::Status {
            db: target_db.into(),
        },
    )
    .await?
    else {
        return Err(ReplicatorError::Unexpected("status"));
    };
    let mut last = LogPosition {
        tx_id: TxId(status.precommitted.tx_id),
        hash: parse_hash(&status.precommitted.hash)?,
    };
    if last.tx_id == TxId::ZERO {
        last = LogPosition::START;
    }
    let any = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let transport = QuicTransport::bind(any, identity, QuicOptions::default()).await?;
    let mut channel =
        transport
            .connect(source)
            .await
            .map_err(|error| ReplicatorError::Connect {
                server: source.to_string(),
                error,
            })?;
    let subscribe = Message::Subscribe {
        version: PROTOCOL_VERSION,
        database: source_db.into(),
        // An external replicator records no primary: it asks to read, never to vote.
        claim: EpochClaim::default(),
        last,
        known_common: last,
        window: 4096,
        tags: Tags::new(),
        // The replicator stands for the target database: the source counts it as that replica.
        replica_database: target_db.into(),
        snapshot: SnapshotWish::Log,
    };
    channel
        .sender
        .send(protocol::encode(&subscribe, MAX_FRAME_SIZE)?)
        .await?;
    let mut received: Vec<Tx> = Vec::new();
    let mut committed = TxId::ZERO;
    while until.is_none_or(|until| last.tx_id < until) {
        let frame = channel
            .receiver
            .recv()
            .await?
            .ok_or(ReplicatorError::Closed)?;
        match protocol::decode(&frame, MAX_FRAME_SIZE)? {
            Message::Accepted { committed: c, .. } | Message::Committed { committed: c, .. } => {
                committed = committed.max(c)
            }
            Message::Txs {
                txs, committed: c, ..
            } => {
                committed = committed.max(c);
                received.extend(txs);
            }
            Message::Refused(refusal) => return Err(ReplicatorError::Refused(refusal)),
            Message::Diverged { .. } => return Err(ReplicatorError::Diverged),
            Message::SnapshotOffer { meta, .. } => {
                return Err(ReplicatorError::Compacted {
                    next: last.tx_id.next(),
                    snapshot: meta.last.tx_id,
                });
            }
            other => tracing::debug!(message = ?other, "ignored"),
        }
        // Only committed transactions leave the source's history for good: push those.
        let ready = received.iter().take_while(|tx| tx.id <= committed).count();
        if ready == 0 {
            continue;
        }
        let batch: Vec<Tx> = received.drain(..ready).collect();
        let Response::Written { tx_id, .. } = ask(
            &mut target_client,
            Request::Replicate {
                db: target_db.into(),
                txs: batch.clone(),
            },
        )
        .await?
        else {
            return Err(ReplicatorError::Unexpected("replicate"));
        };
        last = batch.last().map(Tx::position).unwrap_or(last);
        debug_assert_eq!(tx_id, last.tx_id.0);
        let ack = Message::Ack { durable: last };
        channel
            .sender
            .send(protocol::encode(&ack, MAX_FRAME_SIZE)?)
            .await?;
    }
    Ok(last.tx_id)
}
