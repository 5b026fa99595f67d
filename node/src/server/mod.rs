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

mod catalog;
mod database;
mod error;
mod ops;
mod router;
mod session;

use std::path::Path;
use std::sync::Arc;

use transport_quic::QuicTransport;

pub use catalog::{CatalogError, Layout};
pub use database::{OpenError, SettingError, parse_replica_of, policy_of};
pub use error::ServerError;
pub(crate) use error::chain as error_chain;

use crate::wire::DbSettings;
use catalog::Catalog;
use database::Database;

/// A running server.
pub struct Server {
    name: String,
    transport: Arc<QuicTransport>,
    catalog: Catalog,
}

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
        let server = Arc::new(Server {
            name: name.to_string(),
            transport: Arc::new(transport),
            catalog: Catalog::new(Layout::new(dir)),
        });
        for db in server.catalog.to_load()? {
            let settings = server.catalog.read_settings(&db)?;
            let reservation = server
                .catalog
                .reserve(&db)
                .ok_or_else(|| ServerError::AlreadyLoaded(db.clone()))?;
            let database = server
                .open(&db, settings)
                .await
                .map_err(ServerError::OpenFailed)?;
            reservation.fill(database);
        }
        tokio::spawn(server.clone().route_channels());
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
        )
        .await
    }

    /// Stops every database: waiting writes are answered as of unknown outcome, logs closed.
    pub async fn shutdown(&self) {
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
