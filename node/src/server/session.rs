//! A client session: each [`Request`] frame becomes a typed call of the server, and its
//! result one [`Response`] frame. Errors become responses here only, through
//! `Response::from(ServerError)`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replication_core::engine::AckKind;
use replication_core::transport::Channel;
use replication_core::{TxHash, TxId};

use crate::wire::{Request, Response};

use super::{Server, ServerError};

/// How long `db update --allow-rewind` waits for the replica to stream again (the rewind
/// included) before it answers with the status as it is.
const REWIND_WAIT: Duration = Duration::from_secs(30);

impl Server {
    /// What a database's status warns of, right after a change of its settings.
    async fn warnings(&self, name: &str) -> Vec<String> {
        self.status(name)
            .await
            .map(|status| status.warnings)
            .unwrap_or_default()
    }

    /// Answers requests on `channel`, one at a time, until it closes.
    pub(super) async fn client_session(self: Arc<Server>, mut channel: Channel) {
        let identity = channel.peer.0.clone();
        loop {
            let frame = match channel.receiver.recv().await {
                Ok(Some(frame)) => frame,
                _ => return,
            };
            let response = match postcard::from_bytes::<Request>(&frame) {
                Ok(request) => match self.authorize(&identity, &request).await {
                    Ok(()) => self.handle(&identity, request).await,
                    Err(refused) => {
                        tracing::warn!(%identity, address = %channel.peer_address, error = %refused, "request refused");
                        Err(refused)
                    }
                },
                Err(error) => Err(ServerError::Malformed(error)),
            };
            let response = response.unwrap_or_else(Response::from);
            let Ok(bytes) = postcard::to_allocvec(&response) else {
                return;
            };
            if channel.sender.send(Bytes::from(bytes)).await.is_err() {
                return;
            }
        }
    }

    async fn handle(&self, identity: &str, request: Request) -> Result<Response, ServerError> {
        Ok(match request {
            Request::Write { db, ops } => {
                let receipt = self.write(&db, ops).await?;
                Response::Written {
                    tx_id: receipt.tx_id.0,
                    hash: receipt.hash.to_hex(),
                    ack: if receipt.ack == AckKind::Quorum {
                        "quorum"
                    } else {
                        "async"
                    }
                    .into(),
                }
            }
            Request::Replicate { db, txs } => {
                let receipt = self.replicate(&db, txs).await?;
                Response::Written {
                    tx_id: receipt.tx_id.0,
                    hash: receipt.hash.to_hex(),
                    ack: "async".into(),
                }
            }
            Request::Get {
                db,
                key,
                min_tx,
                wait_ms,
                primary,
            } => {
                let mut min_tx = min_tx.map(TxId);
                if primary {
                    self.require_primary(&db).await?;
                    // Linearizable: the read reflects at least everything durable here when
                    // it arrived, every acknowledged write included (a primary just elected
                    // holds them durably before its quorum commits them again).
                    let durable = self.primary_read_point(&db).await?;
                    min_tx = Some(min_tx.map_or(durable, |m| m.max(durable)));
                }
                let wait = Duration::from_millis(wait_ms);
                let (value, applied) = self.get(&db, &key, min_tx, wait).await?;
                Response::Value {
                    key,
                    value,
                    tx_id: applied.0,
                }
            }
            Request::Status { db } => Response::Status(Box::new(self.status(&db).await?)),
            Request::Promote {
                db,
                quorum,
                sync_acks,
                above_epoch,
            } => {
                let report = self.promote(&db, quorum, sync_acks, above_epoch).await?;
                Response::Promoted {
                    db,
                    epoch: report.epoch,
                    committed: report.committed,
                    precommitted: report.precommitted,
                }
            }
            Request::SwitchoverBegin { db, to } => {
                self.switchover_begin(&db, &to).await?;
                Response::Ok
            }
            Request::SwitchoverAbort { db } => {
                self.switchover_abort(&db).await?;
                Response::Ok
            }
            Request::Members { db, remove } => {
                let (members, removed) = self.members(&db, remove.as_deref()).await?;
                Response::Members {
                    db,
                    members: members.iter().map(ToString::to_string).collect(),
                    removed: removed.map(|r| r.to_string()),
                }
            }
            Request::StateDigest { db } => {
                let store = self.with_database(&db, |d| d.store.clone()).await?;
                let (tx_id, digest) = tokio::task::spawn_blocking(move || store.digest())
                    .await
                    .map_err(|error| ServerError::Internal(error.to_string()))?;
                Response::StateDigest {
                    db,
                    tx_id: tx_id.0,
                    digest: TxHash(digest).to_hex(),
                }
            }
            Request::CompactDb { db } => match self.compact(&db, true).await? {
                Some(compacted) => compacted,
                None => Response::Ok,
            },
            Request::CreateDb { name, settings } => {
                self.create(&name, settings).await?;
                Response::Done {
                    warnings: self.warnings(&name).await,
                }
            }
            Request::UpdateDb {
                name,
                settings,
                allow_rewind,
            } => {
                self.update(&name, settings, allow_rewind).await?;
                if allow_rewind {
                    let status = self.rewind_outcome(&name, REWIND_WAIT).await?;
                    Response::Rewound(Box::new(status))
                } else {
                    Response::Done {
                        warnings: self.warnings(&name).await,
                    }
                }
            }
            Request::ListDbs => Response::Dbs(self.visible_to(identity, self.list().await)),
            Request::LoadDb { name } => {
                self.load(&name).await?;
                Response::Ok
            }
            Request::UnloadDb { name } => Response::Done {
                warnings: self.unload(&name).await?,
            },
            Request::DeleteDb { name } => Response::Done {
                warnings: self.delete(&name).await?,
            },
        })
    }
}
