//! An external replicator, as immudb's: it reads committed transactions from a source
//! database over the replication protocol and pushes them into a database created with
//! `--external-replicator` on another server, whose engine checks the hash chain.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use replication_core::protocol::{self, MAX_FRAME_SIZE, Message, PROTOCOL_VERSION};
use replication_core::quorum::Tags;
use replication_core::transport::Transport;
use replication_core::{Epoch, LogPosition, Tx, TxHash, TxId};
use transport_quic::{QuicOptions, QuicTransport, TlsIdentity};

use crate::client::{Client, Outcome};
use crate::wire::{Request, Response};

fn parse_hash(hex: &str) -> Result<TxHash> {
    if hex.len() != 64 {
        bail!("bad hash {hex:?}");
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| anyhow!("bad hash {hex:?}"))?;
    }
    Ok(TxHash(bytes))
}

async fn ask(client: &mut Client, request: Request) -> Result<Response> {
    match client
        .request(&request, Some(Duration::from_secs(30)))
        .await?
    {
        Outcome::Answered(Response::Error { message, .. }) => bail!("{message}"),
        Outcome::Answered(response) => Ok(response),
        Outcome::Unknown(why) => bail!("outcome unknown: {why}"),
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
) -> Result<TxId> {
    let mut target_client = Client::connect(target, identity.clone()).await?;
    let Response::Status(status) = ask(
        &mut target_client,
        Request::Status {
            db: target_db.into(),
        },
    )
    .await?
    else {
        bail!("unexpected answer to status");
    };
    let mut last = LogPosition {
        tx_id: TxId(status.precommitted.tx_id),
        hash: parse_hash(&status.precommitted.hash)?,
    };
    if last.tx_id == TxId::ZERO {
        last = LogPosition::START;
    }
    let transport =
        QuicTransport::bind("0.0.0.0:0".parse()?, identity, QuicOptions::default()).await?;
    let mut channel = transport
        .connect(source)
        .await
        .with_context(|| format!("connecting to {source}"))?;
    let subscribe = Message::Subscribe {
        version: PROTOCOL_VERSION,
        database: source_db.into(),
        epoch: Epoch(0),
        last,
        known_common: last,
        window: 4096,
        tags: Tags::new(),
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
            .ok_or_else(|| anyhow!("the source closed the channel"))?;
        match protocol::decode(&frame, MAX_FRAME_SIZE)? {
            Message::Accepted { committed: c, .. } | Message::Committed { committed: c, .. } => {
                committed = committed.max(c)
            }
            Message::Txs { txs, committed: c } => {
                committed = committed.max(c);
                received.extend(txs);
            }
            Message::Refused(refusal) => bail!("the source refused: {refusal}"),
            Message::Diverged { .. } => bail!("the target's log diverges from the source's"),
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
            bail!("unexpected answer to replicate");
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
