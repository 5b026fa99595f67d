//! `repnode serve`: one QUIC endpoint, many databases, each a primary or a replica with its own
//! settings, persisted under the data directory and applied again on restart.
//!
//! - `catalog`: the data directory's [`Layout`], settings files, unloaded markers, and the
//!   databases in memory, reserved by name while they open so that opening one never stalls
//!   the others.
//! - `database`: building a database from its settings ([`policy_of`], [`parse_replica_of`]).
//! - `router`: every channel a peer opens is routed by its first frame: a replication
//!   `Subscribe` goes to the named database's engine; [`CLIENT_HELLO`](crate::wire::CLIENT_HELLO)
//!   starts a client session.
//! - `session` and `ops`: a client's [`Request`](crate::wire::Request) becomes a typed call
//!   of [`Server`]; its [`ServerError`] becomes a [`Response`](crate::wire::Response) in
//!   one place (`error`).

mod access;
mod catalog;
mod database;
mod error;
mod failover;
mod ops;
mod retention;
mod router;
mod session;

use std::path::Path;
use std::sync::{Arc, Weak};

use replication_core::coordinator::Coordinator;

use transport_quic::QuicTransport;

pub use access::Permission;
pub use catalog::{CatalogError, Layout, ensure_stopped, lock_dir};
pub use database::{OpenError, SettingError, check_replica_of, parse_replica_of, policy_of};
pub use error::ServerError;
pub(crate) use error::chain as error_chain;

use crate::wire::DbSettings;
use catalog::Catalog;
use database::Database;
use failover::Coordination;

/// A running server.
pub struct Server {
    name: String,
    transport: Arc<QuicTransport>,
    catalog: Catalog,
    /// The coordinator of automatic failover, and the agents of the databases under it.
    coordination: Option<Coordination>,
    /// This server, for the tasks it starts (failover agents), which must not keep it alive.
    me: Weak<Server>,
    /// `--snapshot-max-rate`.
    snapshot_max_rate: Option<u64>,
    /// `--log-segment-bytes`.
    log_segment_bytes: Option<u64>,
    /// `--write-timeout`.
    write_timeout: Option<std::time::Duration>,
    /// `--ready-max-lag`.
    ready_max_lag: std::time::Duration,
    /// `--admins`: the identities that may change databases, promote and switch over.
    admins: Vec<String>,
    /// The data directory's lock, held while the server runs: a second server on the same
    /// directory is refused at its start.
    _lock: std::fs::File,
}

/// What a server runs with beyond its name, directory and transport.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// The coordinator of automatic failover (`serve --coordinator`); without one, a database
    /// with `--failover auto` is refused.
    pub coordinator: Option<Arc<dyn Coordinator>>,
    /// `HOST:PORT` other servers reach this one at (default: the address it listens on).
    pub advertise: Option<String>,
    /// Snapshots are sent at most this many bytes per second, per replica.
    pub snapshot_max_rate: Option<u64>,
    /// The size of log segments (`FileLogOptions::segment_bytes`); `None`: the default.
    pub log_segment_bytes: Option<u64>,
    /// How long a write waits for its commit before it is answered as of unknown outcome;
    /// `None`: without limit.
    pub write_timeout: Option<std::time::Duration>,
    /// How far behind its source (in time) a replica may be and still count as ready.
    pub ready_max_lag: std::time::Duration,
    /// The client identities that may change databases, promote and switch over (`None`:
    /// [`DEFAULT_ADMIN`] alone).
    pub admins: Option<Vec<String>>,
}

/// The admin identity when none is configured: the client certificate `certs init` issues.
pub const DEFAULT_ADMIN: &str = "client";

impl Server {
    /// Opens every database recorded under `dir` and starts serving on `transport`.
    ///
    /// # Errors
    /// A database whose settings or log cannot be opened.
    pub async fn start(
        name: &str,
        dir: &Path,
        transport: QuicTransport,
    ) -> Result<Arc<Server>, ServerError> {
        Server::start_with(name, dir, transport, ServerOptions::default()).await
    }

    /// [`start`](Server::start), with a coordinator for automatic failover.
    ///
    /// # Errors
    /// As [`start`](Server::start); a database under automatic failover without a
    /// coordinator.
    pub async fn start_with(
        name: &str,
        dir: &Path,
        transport: QuicTransport,
        options: ServerOptions,
    ) -> Result<Arc<Server>, ServerError> {
        let advertise = match options.advertise {
            Some(address) => address,
            None => transport
                .local_addr()
                .map_err(|e| ServerError::Listen(e.to_string()))?
                .to_string(),
        };
        let lock = catalog::lock_dir(dir)?;
        let server = Arc::new_cyclic(|me| Server {
            _lock: lock,
            write_timeout: options.write_timeout,
            admins: options
                .admins
                .unwrap_or_else(|| vec![DEFAULT_ADMIN.to_string()]),
            ready_max_lag: options.ready_max_lag,
            name: name.to_string(),
            transport: Arc::new(transport),
            catalog: Catalog::new(Layout::new(dir)),
            coordination: options
                .coordinator
                .map(|coordinator| Coordination::new(coordinator, advertise)),
            me: me.clone(),
            snapshot_max_rate: options.snapshot_max_rate,
            log_segment_bytes: options.log_segment_bytes,
        });
        for db in server.catalog.to_load()? {
            let settings = server.catalog.read_settings(&db)?;
            let reservation = server
                .catalog
                .reserve(&db)
                .ok_or_else(|| ServerError::AlreadyLoaded(db.clone()))?;
            let database = server
                .open(&db, settings.clone())
                .await
                .map_err(ServerError::OpenFailed)?;
            reservation.fill(database);
            server.start_agent(&db, &settings)?;
        }
        tokio::spawn(server.clone().route_channels());
        tokio::spawn(Server::apply_retention(Arc::downgrade(&server)));
        Ok(server)
    }

    /// The address the server listens on.
    ///
    /// # Errors
    /// The endpoint is closed.
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.transport.local_addr()
    }

    /// Builds database `name` from `settings`, with its log where the catalog keeps it.
    async fn open(&self, name: &str, settings: DbSettings) -> Result<Database, OpenError> {
        self.open_with(name, settings, false).await
    }

    /// [`open`](Server::open), allowing one rewind when `allow_rewind`.
    async fn open_with(
        &self,
        name: &str,
        settings: DbSettings,
        allow_rewind: bool,
    ) -> Result<Database, OpenError> {
        database::open(
            &self.name,
            name,
            settings,
            &self.catalog.layout().log(name),
            self.transport.clone(),
            allow_rewind,
            database::Tuning {
                snapshot_max_rate: self.snapshot_max_rate,
                log_segment_bytes: self.log_segment_bytes,
                write_timeout: self.write_timeout,
            },
        )
        .await
    }

    /// Stops every database: waiting writes are answered as of unknown outcome, logs closed.
    pub async fn shutdown(&self) {
        // First the agents: a leader's lease is revoked, and no agent acts on a database
        // being closed.
        self.stop_agents().await;
        for slot in self.catalog.take_all() {
            // Waits for a database still opening, then stops it.
            let database = slot.write().await.take();
            if let Some(database) = database {
                database.node.shutdown().await;
            }
        }
        self.transport.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
