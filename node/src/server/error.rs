//! The server's errors, and the one place they become [`Response::Error`]s.
//!
//! Every fallible operation of the server returns a [`ServerError`]; the client session
//! converts it with `Response::from` and nothing else builds an error response, so the kind a
//! client sees (and, for a write, whether its outcome is unknown) is decided here alone.

use replication_core::driver::NodeError;
use replication_core::engine::WriteError;

use crate::wire::{ErrorKind, Response};

use super::catalog::CatalogError;
use super::database::OpenError;

/// Why a server operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A task of the server failed unexpectedly (it panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
    /// A snapshot could not be taken.
    #[error("snapshot of database {db}: {error}")]
    Snapshot {
        /// The database.
        db: String,
        /// What failed.
        error: replication_core::snapshot::SnapshotError,
    },
    /// No such database, or it is not loaded.
    #[error("unknown database {0:?} (or not loaded)")]
    UnknownDatabase(String),
    /// A name that cannot be a database's directory.
    #[error("database name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    /// Create of a database that exists (or is being opened or deleted).
    #[error("database {0:?} exists")]
    Exists(String),
    /// Load of a database that is loaded (or being opened).
    #[error("database {0:?} is already loaded")]
    AlreadyLoaded(String),
    /// Delete of a database that is loaded.
    #[error("database {0:?} is loaded: unload it first")]
    StillLoaded(String),
    /// Settings refused before anything was kept: a bad policy or source, or a new
    /// database that could not be opened with them.
    #[error(transparent)]
    BadSettings(OpenError),
    /// A database with accepted settings that could not be opened (on start, load, or the
    /// restart of an update).
    #[error(transparent)]
    OpenFailed(OpenError),
    /// The data directory could not be read or written.
    #[error(transparent)]
    Catalog(CatalogError),
    /// A write the engine refused, or whose outcome is unknown.
    #[error(transparent)]
    Write(WriteError),
    /// A write not committed within the write timeout (`serve --write-timeout`): its
    /// outcome is unknown. `hint` says why it waits, when the status shows it.
    #[error("{error}{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    WriteTimedOut {
        /// The engine's error.
        error: WriteError,
        /// Why it waited, if known.
        hint: Option<String>,
    },
    /// Pushed transactions the engine refused.
    #[error(transparent)]
    Replicate(WriteError),
    /// A read that asked for the primary, sent to a replica.
    #[error("this database is not the primary here; ask the primary, or the next hop towards it, at {}", via.as_deref().unwrap_or("(none known)"))]
    NotPrimary {
        /// The replica's source (`HOST:PORT`): the next hop towards the primary (the source
        /// of a replica of a replica is a replica, which names its own source in turn).
        via: Option<String>,
    },
    /// A write sent to a replica that is not streaming from its source now. The source is not offered
    /// as the primary (it may be the dead primary a failover replaces), so that a client
    /// given other servers tries them at once instead of waiting out a connection to it.
    #[error(
        "this database is a replica, and its source {last_source} is not answering it now \
         ({state}): send writes to the primary"
    )]
    SourceNotAnswering {
        /// The source it follows (`HOST:PORT`).
        last_source: String,
        /// Its link's state, as `status` shows it.
        state: String,
    },
    /// A write sent to a replica of a database under automatic failover while the
    /// coordinator names no leader elsewhere (the key is vacant: an election is under way).
    #[error(
        "database {0:?} has no elected primary right now (an election is under way): retry \
         shortly"
    )]
    NoElectedPrimary(String),
    /// A write refused because a switchover is under way: the new primary takes it (once
    /// promoted; until then it refuses too, and the client retries).
    #[error("database {db:?} is switching over to {to}: write there")]
    SwitchingOver {
        /// The database.
        db: String,
        /// The new primary (`HOST:PORT`).
        to: String,
    },
    /// The local address could not be read.
    #[error("reading the listening address: {0}")]
    Listen(String),
    /// An elected database whose engine began another epoch than the coordinator granted.
    #[error(
        "database {db:?} was granted epoch {granted} but its log made it begin {began}; it \
         campaigns again above it"
    )]
    EpochNotGranted {
        /// The database.
        db: String,
        /// The epoch the coordinator granted.
        granted: u64,
        /// The epoch the engine began.
        began: u64,
    },
    /// A manual promotion or switchover of a database the coordinator elects.
    #[error(
        "database {0:?} fails over automatically: the coordinator elects its primary (db \
         update --failover manual first)"
    )]
    AutomaticFailover(String),
    /// A request the client's identity may not make.
    #[error(
        "identity {identity:?} may not {permission} {}{}",
        db.as_deref().map(|d| format!("database {d:?}")).unwrap_or_else(|| "this server's databases".into()),
        match permission {
            super::access::Permission::Admin => " (an admin's: `serve --admins`)".to_string(),
            permission => format!(
                " (it holds no {permission} grant: `repnode db update {} --{permission}ers {identity}` by an admin)",
                db.as_deref().unwrap_or("NAME")
            ),
        }
    )]
    Unauthorized {
        /// The client's identity (its certificate's common name).
        identity: String,
        /// What it lacks.
        permission: super::access::Permission,
        /// The database concerned.
        db: Option<String>,
    },
    /// A switchover of a database that is not a primary here.
    #[error("database {0:?} is not a primary here: nothing to switch over")]
    NotPrimaryHere(String),
    /// A switchover target that is not `HOST:PORT`.
    #[error("switchover target {0:?}: expected HOST:PORT")]
    BadTarget(String),
    /// A promotion of a database that is not a replica with a source of its own.
    #[error(
        "database {0:?} is not a replica with a source (a primary, or fed by an external replicator): nothing to promote"
    )]
    NotAReplica(String),
    /// `--allow-rewind` on a database that does not follow a source.
    #[error("database {0:?} follows no source: --allow-rewind applies to a replica")]
    RewindNeedsReplica(String),
    /// A member to remove that is not `node/database` or not a member.
    #[error("{0}")]
    BadMember(String),
    /// The engine did not report its status (it stopped).
    #[error(transparent)]
    Status(NodeError),
    /// The engine did not take the new policy (it stopped).
    #[error("database stopped")]
    PolicyNotApplied,
    /// A read's `min_tx` was not applied within its wait.
    #[error(
        "transaction {min_tx} not applied here within {} ms (applied: {applied})",
        wait.as_millis()
    )]
    NotApplied {
        /// The transaction waited for.
        min_tx: replication_core::TxId,
        /// How long the read waited.
        wait: std::time::Duration,
        /// The last transaction applied here.
        applied: replication_core::TxId,
    },
    /// A request frame that does not decode.
    #[error("malformed request")]
    Malformed(#[source] postcard::Error),
    /// A failure about one database, named (for errors reported outside a session).
    #[error("database {name}")]
    InDatabase {
        /// The database.
        name: String,
        /// What failed.
        #[source]
        error: Box<ServerError>,
    },
}

impl From<CatalogError> for ServerError {
    fn from(error: CatalogError) -> ServerError {
        ServerError::Catalog(error)
    }
}

impl ServerError {
    /// How a client should react: the kind its [`Response::Error`] carries.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ServerError::UnknownDatabase(_) => ErrorKind::UnknownDatabase,
            ServerError::BadName(_)
            | ServerError::BadSettings(_)
            | ServerError::BadMember(_)
            | ServerError::BadTarget(_) => ErrorKind::BadSetting,
            // No lease: nothing was appended, and the elected primary takes the write.
            ServerError::Write(WriteError::NotPrimary { .. } | WriteError::NoLease)
            | ServerError::NotPrimary { .. }
            | ServerError::SourceNotAnswering { .. }
            | ServerError::NoElectedPrimary(_)
            | ServerError::SwitchingOver { .. } => ErrorKind::NotPrimary,
            ServerError::Unauthorized { .. } => ErrorKind::Unauthorized,
            ServerError::NotAReplica(_)
            | ServerError::NotPrimaryHere(_)
            | ServerError::RewindNeedsReplica(_)
            | ServerError::AutomaticFailover(_) => ErrorKind::Refused,
            // Appended (or possibly appended) but not known to be committed.
            ServerError::Write(
                WriteError::Timeout { .. }
                | WriteError::LeaseEnded { .. }
                | WriteError::ShuttingDown
                | WriteError::LogFailed(_)
                | WriteError::Fenced { .. },
            ) => ErrorKind::Unknown,
            ServerError::WriteTimedOut { .. } => ErrorKind::Unknown,
            ServerError::InDatabase { error, .. } => error.kind(),
            _ => ErrorKind::Failed,
        }
    }

    /// Where the primary is, for a refusal of [`ErrorKind::NotPrimary`]: the address clients
    /// follow. An engine that knows no address names something else in its text (an
    /// external replica names "its external replicator's source"), so only a `HOST:PORT`
    /// is passed on.
    pub fn primary(&self) -> Option<String> {
        let address = match self {
            ServerError::Write(WriteError::NotPrimary { source_address }) => Some(source_address),
            ServerError::NotPrimary { via } => via.as_ref(),
            ServerError::SwitchingOver { to, .. } => Some(to),
            ServerError::InDatabase { error, .. } => return error.primary(),
            _ => None,
        }?;
        let plausible = address.contains(':') && !address.contains(char::is_whitespace);
        plausible.then(|| address.clone())
    }
}

impl From<ServerError> for Response {
    /// The message is the error and its causes, as `anyhow` prints them with `{:#}`: clients
    /// have only this text to go on.
    fn from(error: ServerError) -> Response {
        Response::Error {
            kind: error.kind(),
            message: chain(&error),
            primary: error.primary(),
        }
    }
}

/// An error and its sources, joined by `": "`.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
