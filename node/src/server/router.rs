//! The channel router: the first frame of every channel a peer opens decides where it goes.
//! A replication `Subscribe` is handed to the named database's engine with the frame put back
//! in front; [`CLIENT_HELLO`] starts a client session.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replication_core::protocol::{self, MAX_FRAME_SIZE, Message, Refusal};
use replication_core::transport::{Channel, FrameReceiver, PeerKind, Transport, TransportError};

use crate::wire::{CLIENT_HELLO, CLIENT_HELLO_PREFIX};

use super::Server;

/// A receiver that first returns a frame already read.
struct Prepended {
    first: Option<Bytes>,
    rest: Box<dyn FrameReceiver>,
}

#[async_trait]
impl FrameReceiver for Prepended {
    async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        match self.first.take() {
            Some(frame) => Ok(Some(frame)),
            None => self.rest.recv().await,
        }
    }
}

impl Server {
    /// Routes every channel accepted until the transport closes.
    pub(super) async fn route_channels(self: Arc<Server>) {
        loop {
            match self.transport.accept().await {
                Ok(channel) => {
                    tokio::spawn(self.clone().route(channel));
                }
                Err(error) => {
                    tracing::info!(%error, "no longer accepting channels");
                    return;
                }
            }
        }
    }

    async fn route(self: Arc<Server>, mut channel: Channel) {
        let first =
            match tokio::time::timeout(Duration::from_secs(10), channel.receiver.recv()).await {
                Ok(Ok(Some(frame))) => frame,
                _ => return,
            };
        if first == CLIENT_HELLO {
            return self.client_session(channel).await;
        }
        if first.starts_with(CLIENT_HELLO_PREFIX) {
            // Another version's client: its requests and our answers would not decode.
            tracing::warn!(
                peer = %channel.peer,
                address = %channel.peer_address,
                theirs = %String::from_utf8_lossy(&first),
                ours = %String::from_utf8_lossy(CLIENT_HELLO),
                "a client of another protocol version: upgrade it to this server's version"
            );
            return;
        }
        match protocol::decode(&first, MAX_FRAME_SIZE) {
            Ok(Message::Subscribe { database, .. }) => {
                let subscriber_kind = channel.peer_kind;
                let peer = channel.peer.0.clone();
                let found = match self.catalog.slot(&database) {
                    Some(slot) => slot.read().await.as_ref().map(|db| {
                        // Without an explicit list of replicators, only the cluster's nodes
                        // may replicate; a client certificate must be named.
                        let allowed =
                            db.settings.replicators.is_some() || subscriber_kind == PeerKind::Node;
                        (db.node.clone(), allowed)
                    }),
                    None => None,
                };
                let refusal = match found {
                    Some((node, true)) => {
                        let receiver = Box::new(Prepended {
                            first: Some(first),
                            rest: channel.receiver,
                        });
                        node.attach(Channel {
                            receiver,
                            ..channel
                        })
                        .await;
                        return;
                    }
                    Some((_, false)) => Refusal::NotAllowed(peer),
                    None => Refusal::UnknownDatabase(database),
                };
                if let Ok(frame) = protocol::encode(&Message::Refused(refusal), MAX_FRAME_SIZE) {
                    let _ = channel.sender.send(frame).await;
                }
            }
            _ => {
                tracing::warn!(peer = %channel.peer, "a channel began with neither a subscription nor a client hello")
            }
        }
    }
}
