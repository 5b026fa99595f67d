//! `repnode serve`: one QUIC endpoint, many databases, each a primary or a replica with its own
//! settings, persisted under the data directory and applied again on restart.
//!
//! Every channel a peer opens is routed by its first frame: a replication `Subscribe` goes to
//! the named database's engine; [`CLIENT_HELLO`] starts a client session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{AckKind, EngineConfig, Role, UpstreamState, WriteError};
use replication_core::protocol::{self, MAX_FRAME_SIZE, Message, Refusal};
use replication_core::quorum::{Quorum, QuorumPolicy};
use replication_core::transport::{Channel, FrameReceiver, PeerKind, Transport, TransportError};
use replication_core::{NodeId, TxId};
use store_file::{FileLog, FileLogOptions};
use store_mem::MemLog;
use tokio::sync::RwLock;
use transport_quic::QuicTransport;

use crate::kv::{KvStore, KvTx};
use crate::wire::{
    CLIENT_HELLO, DbSettings, ErrorKind, Position, ReplicaReport, Request, Response, StatusReport,
};

/// A marker file: the database stays unloaded across restarts.
const UNLOADED: &str = "unloaded";

/// One database on this server.
struct Database {
    settings: DbSettings,
    node: Node,
    store: KvStore,
    commit_latency: Arc<crate::metrics::Histogram>,
}

/// A running server.
pub struct Server {
    name: String,
    dir: PathBuf,
    transport: Arc<QuicTransport>,
    databases: RwLock<BTreeMap<String, Database>>,
}

/// Parses the policy a database's settings describe.
pub fn policy_of(settings: &DbSettings) -> Result<Quorum> {
    if let Some(text) = &settings.quorum {
        return text.parse::<Quorum>().map_err(|e| anyhow!("{e}"));
    }
    Ok(match settings.sync_acks {
        Some(n) if n > 0 => Quorum::AckCount {
            n: n as usize,
            among: None,
        },
        _ => Quorum::Async,
    })
}

/// Splits `HOST:PORT/DB`.
pub fn parse_replica_of(text: &str) -> Result<(String, String)> {
    let (address, database) = text
        .rsplit_once('/')
        .ok_or_else(|| anyhow!("--replica-of {text:?}: expected HOST:PORT/DB"))?;
    if !address.contains(':') || database.is_empty() {
        bail!("--replica-of {text:?}: expected HOST:PORT/DB");
    }
    Ok((address.to_string(), database.to_string()))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn replica_reports(replicas: Vec<replication_core::engine::ReplicaStatus>) -> Vec<ReplicaReport> {
    replicas
        .into_iter()
        .map(|r| ReplicaReport {
            id: r.id.0,
            address: r.address,
            acked_tx_id: r.acked.0,
            lag_txs: r.lag_txs,
            lag_ms: r.lag.as_millis() as u64,
            connected: r.connected,
        })
        .collect()
}

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
    /// Opens every database recorded under `dir` and starts serving on `transport`.
    ///
    /// # Errors
    /// A database whose settings or log cannot be opened.
    pub async fn start(name: &str, dir: &Path, transport: QuicTransport) -> Result<Arc<Server>> {
        let server = Arc::new(Server {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            transport: Arc::new(transport),
            databases: RwLock::new(BTreeMap::new()),
        });
        let databases_dir = dir.join("databases");
        std::fs::create_dir_all(&databases_dir)?;
        let mut names: Vec<String> = std::fs::read_dir(&databases_dir)?
            .filter_map(|entry| entry.ok())
            .filter(|entry| {
                entry.path().join("settings.toml").exists() && !entry.path().join(UNLOADED).exists()
            })
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for db in names {
            let text = std::fs::read_to_string(databases_dir.join(&db).join("settings.toml"))?;
            let settings: DbSettings =
                toml::from_str(&text).with_context(|| format!("settings of database {db}"))?;
            let database = server.open_database(&db, settings).await?;
            server.databases.write().await.insert(db, database);
        }
        tokio::spawn(server.clone().route_channels());
        Ok(server)
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.transport.local_addr()
    }

    fn database_dir(&self, db: &str) -> PathBuf {
        self.dir.join("databases").join(db)
    }

    async fn open_database(&self, db: &str, settings: DbSettings) -> Result<Database> {
        let policy = policy_of(&settings)?;
        let role = match &settings.replica_of {
            _ if settings.external_replicator => Role::ExternalReplica,
            Some(text) => Role::Replica {
                address: parse_replica_of(text)?.0,
            },
            None => Role::Primary,
        };
        let mut config = EngineConfig::new(self.name.as_str(), db, role);
        if let Some(text) = &settings.replica_of {
            config.source_database = Some(parse_replica_of(text)?.1);
        }
        if let Some(prefetch) = settings.prefetch_buffer {
            config.prefetch_buffer = prefetch.max(1);
        }
        config.allow_tx_discarding = settings.allow_tx_discarding.unwrap_or(false);
        config.allowed_replicators = settings
            .replicators
            .as_ref()
            .map(|ids| ids.iter().map(|id| NodeId::new(id.as_str())).collect());
        let options = NodeOptions {
            accept_replicas: false,
            ..NodeOptions::default()
        };
        let store = KvStore::default();
        let policy: Arc<dyn QuorumPolicy> = Arc::new(policy);
        let node = match settings.store.as_deref().unwrap_or("file") {
            "file" => {
                let log =
                    FileLog::open(self.database_dir(db).join("log"), FileLogOptions::default())
                        .with_context(|| format!("opening the log of database {db}"))?;
                Node::start(
                    config,
                    policy,
                    log,
                    self.transport.clone(),
                    store.clone(),
                    options,
                )
                .await?
            }
            "mem" => {
                Node::start(
                    config,
                    policy,
                    MemLog::new(),
                    self.transport.clone(),
                    store.clone(),
                    options,
                )
                .await?
            }
            other => bail!("--store {other:?}: expected file or mem"),
        };
        Ok(Database {
            settings,
            node,
            store,
            commit_latency: Arc::default(),
        })
    }

    fn read_settings(&self, db: &str) -> Result<DbSettings> {
        let text = std::fs::read_to_string(self.database_dir(db).join("settings.toml"))?;
        toml::from_str(&text).with_context(|| format!("settings of database {db}"))
    }

    /// Database names on disk that are not loaded.
    fn unloaded(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("databases"))
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().join(UNLOADED).exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    async fn load(&self, name: String) -> Response {
        let mut databases = self.databases.write().await;
        if databases.contains_key(&name) {
            return Response::Error {
                kind: ErrorKind::Failed,
                message: format!("database {name:?} is already loaded"),
            };
        }
        if !self.unloaded().contains(&name) {
            return Self::unknown(&name);
        }
        let opened = match self.read_settings(&name) {
            Ok(settings) => self.open_database(&name, settings).await,
            Err(error) => Err(error),
        };
        match opened {
            Ok(database) => {
                let _ = std::fs::remove_file(self.database_dir(&name).join(UNLOADED));
                databases.insert(name, database);
                Response::Ok
            }
            Err(error) => Response::Error {
                kind: ErrorKind::Failed,
                message: format!("{error:#}"),
            },
        }
    }

    async fn unload(&self, name: String) -> Response {
        let Some(database) = self.databases.write().await.remove(&name) else {
            return Self::unknown(&name);
        };
        database.node.shutdown().await;
        match std::fs::write(self.database_dir(&name).join(UNLOADED), b"") {
            Ok(()) => Response::Ok,
            Err(error) => Response::Error {
                kind: ErrorKind::Failed,
                message: format!("unloaded, but not recorded: {error}"),
            },
        }
    }

    async fn delete(&self, name: String) -> Response {
        if self.databases.read().await.contains_key(&name) {
            return Response::Error {
                kind: ErrorKind::Failed,
                message: format!("database {name:?} is loaded: unload it first"),
            };
        }
        if !valid_name(&name) || !self.unloaded().contains(&name) {
            return Self::unknown(&name);
        }
        match std::fs::remove_dir_all(self.database_dir(&name)) {
            Ok(()) => Response::Ok,
            Err(error) => Response::Error {
                kind: ErrorKind::Failed,
                message: format!("deleting {name}: {error}"),
            },
        }
    }

    fn persist(&self, db: &str, settings: &DbSettings) -> Result<()> {
        let dir = self.database_dir(db);
        std::fs::create_dir_all(&dir)?;
        let temporary = dir.join("settings.toml.tmp");
        std::fs::write(&temporary, toml::to_string(settings)?)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, dir.join("settings.toml"))?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    async fn route_channels(self: Arc<Server>) {
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
        match protocol::decode(&first, MAX_FRAME_SIZE) {
            Ok(Message::Subscribe { database, .. }) => {
                let databases = self.databases.read().await;
                let refusal = match databases.get(&database) {
                    // Without an explicit list of replicators, only the cluster's nodes may
                    // replicate; a client certificate must be named.
                    Some(db)
                        if db.settings.replicators.is_none()
                            && channel.peer_kind != PeerKind::Node =>
                    {
                        Some(Refusal::NotAllowed(channel.peer.0.clone()))
                    }
                    Some(_) => None,
                    None => Some(Refusal::UnknownDatabase(database.clone())),
                };
                match (databases.get(&database), refusal) {
                    (Some(db), None) => {
                        let receiver = Box::new(Prepended {
                            first: Some(first),
                            rest: channel.receiver,
                        });
                        db.node
                            .attach(Channel {
                                receiver,
                                ..channel
                            })
                            .await;
                    }
                    (_, refusal) => {
                        let refusal = Message::Refused(
                            refusal.unwrap_or(Refusal::UnknownDatabase(database.clone())),
                        );
                        if let Ok(frame) = protocol::encode(&refusal, MAX_FRAME_SIZE) {
                            let _ = channel.sender.send(frame).await;
                        }
                    }
                }
            }
            _ => {
                tracing::warn!(peer = %channel.peer, "a channel began with neither a subscription nor a client hello")
            }
        }
    }

    async fn client_session(self: Arc<Server>, mut channel: Channel) {
        loop {
            let frame = match channel.receiver.recv().await {
                Ok(Some(frame)) => frame,
                _ => return,
            };
            let response = match postcard::from_bytes::<Request>(&frame) {
                Ok(request) => self.handle(request).await,
                Err(error) => Response::Error {
                    kind: ErrorKind::Failed,
                    message: format!("malformed request: {error}"),
                },
            };
            let Ok(bytes) = postcard::to_allocvec(&response) else {
                return;
            };
            if channel.sender.send(Bytes::from(bytes)).await.is_err() {
                return;
            }
        }
    }

    fn unknown(db: &str) -> Response {
        Response::Error {
            kind: ErrorKind::UnknownDatabase,
            message: format!("unknown database {db:?} (or not loaded)"),
        }
    }

    fn bad_setting(error: impl std::fmt::Display) -> Response {
        Response::Error {
            kind: ErrorKind::BadSetting,
            message: error.to_string(),
        }
    }

    async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Write { db, ops } => {
                let (node, latency) = match self.databases.read().await.get(&db) {
                    Some(database) => (database.node.clone(), database.commit_latency.clone()),
                    None => return Self::unknown(&db),
                };
                let started = std::time::Instant::now();
                let written = node.write(KvTx { ops }.encode()).await;
                if written.is_ok() {
                    latency.observe(started.elapsed());
                }
                match written {
                    Ok(receipt) => Response::Written {
                        tx_id: receipt.tx_id.0,
                        hash: receipt.hash.to_hex(),
                        ack: if receipt.ack == AckKind::Quorum {
                            "quorum"
                        } else {
                            "async"
                        }
                        .into(),
                    },
                    Err(error @ WriteError::NotPrimary { .. }) => Response::Error {
                        kind: ErrorKind::NotPrimary,
                        message: error.to_string(),
                    },
                    Err(
                        error @ (WriteError::Timeout { .. }
                        | WriteError::ShuttingDown
                        | WriteError::LogFailed(_)
                        | WriteError::Fenced { .. }),
                    ) => Response::Error {
                        kind: ErrorKind::Unknown,
                        message: error.to_string(),
                    },
                    Err(error) => Response::Error {
                        kind: ErrorKind::Failed,
                        message: error.to_string(),
                    },
                }
            }
            Request::Replicate { db, txs } => {
                let node = match self.databases.read().await.get(&db) {
                    Some(database) => database.node.clone(),
                    None => return Self::unknown(&db),
                };
                match node.replicate(txs).await {
                    Ok(receipt) => Response::Written {
                        tx_id: receipt.tx_id.0,
                        hash: receipt.hash.to_hex(),
                        ack: "async".into(),
                    },
                    Err(error) => Response::Error {
                        kind: ErrorKind::Failed,
                        message: error.to_string(),
                    },
                }
            }
            Request::Get {
                db,
                key,
                min_tx,
                wait_ms,
            } => {
                let (node, store) = match self.databases.read().await.get(&db) {
                    Some(database) => (database.node.clone(), database.store.clone()),
                    None => return Self::unknown(&db),
                };
                if let Some(min_tx) = min_tx {
                    let waited = tokio::time::timeout(
                        Duration::from_millis(wait_ms),
                        node.wait_applied(TxId(min_tx)),
                    )
                    .await;
                    if waited.is_err() {
                        return Response::Error {
                            kind: ErrorKind::Failed,
                            message: format!(
                                "transaction {min_tx} not applied here within {wait_ms} ms (applied: {})",
                                store.applied_tx()
                            ),
                        };
                    }
                }
                let tx_id = store.applied_tx().0;
                Response::Value {
                    value: store.get(&key).map(|(value, _)| value),
                    key,
                    tx_id,
                }
            }
            Request::Status { db } => {
                let node = match self.databases.read().await.get(&db) {
                    Some(database) => database.node.clone(),
                    None => return Self::unknown(&db),
                };
                match node.status().await {
                    Ok(status) => Response::Status(StatusReport {
                        database: db,
                        role: match status.role {
                            Role::Primary => "primary".into(),
                            Role::Replica { .. } => "replica".into(),
                            Role::ExternalReplica => "replica (external replicator)".into(),
                        },
                        epoch: status.epoch.0,
                        committed: Position {
                            tx_id: status.committed.0,
                            hash: status.committed_position.hash.to_hex(),
                        },
                        precommitted: Position {
                            tx_id: status.durable.tx_id.0,
                            hash: status.durable.hash.to_hex(),
                        },
                        waiting_writes: status.waiting_writes,
                        upstream: status.upstream.map(|state| match state {
                            UpstreamState::Stopped(why) => format!("stopped: {why}"),
                            other => format!("{other:?}").to_lowercase(),
                        }),
                        last_error: status.last_error,
                        replicas: replica_reports(status.replicas),
                    }),
                    Err(error) => Response::Error {
                        kind: ErrorKind::Failed,
                        message: error.to_string(),
                    },
                }
            }
            Request::CreateDb { name, settings } => {
                if !valid_name(&name) {
                    return Self::bad_setting(format!(
                        "database name {name:?}: use letters, digits, '-' and '_'"
                    ));
                }
                let mut databases = self.databases.write().await;
                if databases.contains_key(&name) || self.database_dir(&name).exists() {
                    return Response::Error {
                        kind: ErrorKind::Failed,
                        message: format!("database {name:?} exists"),
                    };
                }
                if let Err(error) = policy_of(&settings) {
                    return Self::bad_setting(error);
                }
                if let Some(Err(error)) = settings.replica_of.as_deref().map(parse_replica_of) {
                    return Self::bad_setting(error);
                }
                match self.open_database(&name, settings.clone()).await {
                    Ok(database) => {
                        if let Err(error) = self.persist(&name, &settings) {
                            database.node.shutdown().await;
                            return Response::Error {
                                kind: ErrorKind::Failed,
                                message: format!("{error:#}"),
                            };
                        }
                        databases.insert(name, database);
                        Response::Ok
                    }
                    Err(error) => Self::bad_setting(format!("{error:#}")),
                }
            }
            Request::UpdateDb { name, settings } => self.update(name, settings).await,
            Request::ListDbs => {
                let databases = self.databases.read().await;
                let mut list: Vec<(String, bool, DbSettings)> = databases
                    .iter()
                    .map(|(name, db)| (name.clone(), true, db.settings.clone()))
                    .collect();
                for name in self.unloaded() {
                    let settings = self.read_settings(&name).unwrap_or_default();
                    list.push((name, false, settings));
                }
                list.sort_by(|a, b| a.0.cmp(&b.0));
                Response::Dbs(list)
            }
            Request::LoadDb { name } => self.load(name).await,
            Request::UnloadDb { name } => self.unload(name).await,
            Request::DeleteDb { name } => self.delete(name).await,
        }
    }

    /// Applies new settings: a new policy takes effect at once, on waiting writes too; other
    /// changes restart the database's engine. The settings are persisted first.
    async fn update(&self, name: String, changes: DbSettings) -> Response {
        let mut databases = self.databases.write().await;
        let Some(database) = databases.get_mut(&name) else {
            return Self::unknown(&name);
        };
        let mut settings = database.settings.clone();
        if changes.quorum.is_some() || changes.sync_acks.is_some() {
            settings.quorum = changes.quorum.clone();
            settings.sync_acks = changes.sync_acks;
        }
        let policy = match policy_of(&settings) {
            Ok(policy) => policy,
            Err(error) => return Self::bad_setting(error),
        };
        let restart = changes.replica_of.is_some() && changes.replica_of != settings.replica_of
            || changes
                .prefetch_buffer
                .is_some_and(|p| Some(p) != settings.prefetch_buffer)
            || changes.replicators.is_some() && changes.replicators != settings.replicators
            || changes
                .allow_tx_discarding
                .is_some_and(|allow| Some(allow) != settings.allow_tx_discarding);
        if let Some(replica_of) = changes.replica_of {
            if let Err(error) = parse_replica_of(&replica_of) {
                return Self::bad_setting(error);
            }
            settings.replica_of = Some(replica_of);
        }
        settings.prefetch_buffer = changes.prefetch_buffer.or(settings.prefetch_buffer);
        settings.replicators = changes.replicators.or(settings.replicators);
        settings.allow_tx_discarding = changes.allow_tx_discarding.or(settings.allow_tx_discarding);
        if let Err(error) = self.persist(&name, &settings) {
            return Response::Error {
                kind: ErrorKind::Failed,
                message: format!("{error:#}"),
            };
        }
        if restart {
            database.node.shutdown().await;
            match self.open_database(&name, settings).await {
                Ok(reopened) => *database = reopened,
                Err(error) => {
                    return Response::Error {
                        kind: ErrorKind::Failed,
                        message: format!("{error:#}"),
                    };
                }
            }
        } else {
            if database.node.set_policy(Arc::new(policy)).await.is_err() {
                return Response::Error {
                    kind: ErrorKind::Failed,
                    message: "database stopped".into(),
                };
            }
            database.settings = settings;
        }
        Response::Ok
    }

    /// Makes sure the database `name` exists with these replication settings, as immudb's
    /// startup `--replication-*` flags do for its default database: created if missing,
    /// updated (and persisted) if its role or quorum differs.
    ///
    /// # Errors
    /// Invalid settings, or a database that cannot be opened.
    pub async fn ensure_database(&self, name: &str, settings: DbSettings) -> Result<()> {
        let existing = self
            .databases
            .read()
            .await
            .get(name)
            .map(|db| db.settings.clone());
        let response = match existing {
            None if self.unloaded().iter().any(|n| n == name) => return Ok(()),
            None => {
                self.handle(Request::CreateDb {
                    name: name.into(),
                    settings,
                })
                .await
            }
            Some(current)
                if current.replica_of == settings.replica_of
                    && current.quorum == settings.quorum
                    && current.sync_acks == settings.sync_acks =>
            {
                return Ok(());
            }
            Some(_) => self.update(name.into(), settings).await,
        };
        match response {
            Response::Ok => Ok(()),
            Response::Error { message, .. } => bail!("database {name}: {message}"),
            other => bail!("database {name}: unexpected {other:?}"),
        }
    }

    /// What the metrics endpoint shows of each loaded database.
    pub async fn metric_snapshots(&self) -> Vec<crate::metrics::Snapshot> {
        let databases: Vec<(String, Node, KvStore, Arc<crate::metrics::Histogram>)> = self
            .databases
            .read()
            .await
            .iter()
            .map(|(name, db)| {
                (
                    name.clone(),
                    db.node.clone(),
                    db.store.clone(),
                    db.commit_latency.clone(),
                )
            })
            .collect();
        let mut snapshots = Vec::new();
        for (db, node, store, commit_latency) in databases {
            let Ok(status) = node.status().await else {
                continue;
            };
            snapshots.push(crate::metrics::Snapshot {
                db,
                commit_latency,
                committed: status.committed.0,
                precommitted: status.durable.tx_id.0,
                waiting_writes: status.waiting_writes as u64,
                applied: store.applied_tx().0,
                applied_bytes: store.applied_bytes(),
                replicas: replica_reports(status.replicas),
            });
        }
        snapshots
    }

    /// Stops every database: waiting writes are answered as of unknown outcome, logs closed.
    pub async fn shutdown(&self) {
        let databases = std::mem::take(&mut *self.databases.write().await);
        for (_, database) in databases {
            database.node.shutdown().await;
        }
        self.transport.shutdown().await;
    }
}
