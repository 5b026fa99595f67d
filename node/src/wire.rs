//! The client protocol of `repnode`: requests and responses on a QUIC channel whose first
//! frame is [`CLIENT_HELLO`] (replication channels begin with a `Subscribe` instead, which is
//! how the server tells them apart).

use serde::{Deserialize, Serialize};

use crate::kv::KvOp;

/// The first frame of a client channel. It is not a valid replication message. The number
/// is the client protocol's version: a server refuses another, naming both.
pub const CLIENT_HELLO: &[u8] = b"repnode-client/2";

/// What every client hello begins with, whatever its version.
pub const CLIENT_HELLO_PREFIX: &[u8] = b"repnode-client/";

/// Per-database settings, persisted in the server's data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbSettings {
    /// `HOST:PORT/DB` of the source; absent for a primary.
    pub replica_of: Option<String>,
    /// immudb's `--replication-sync-acks`: 0 or absent is asynchronous.
    pub sync_acks: Option<u32>,
    /// A quorum policy text (`majority`, `any 2 (n2,n3)`, ...); wins over `sync_acks`.
    pub quorum: Option<String>,
    /// Transactions a source may send ahead of this replica's acknowledgement.
    pub prefetch_buffer: Option<u32>,
    /// Whether diverged uncommitted transactions may be discarded (absent: no; on an
    /// update, absent leaves it as it is).
    pub allow_tx_discarding: Option<bool>,
    /// Identities allowed to replicate from this database (default: any cluster node).
    pub replicators: Option<Vec<String>>,
    /// `file` (default) or `mem`.
    pub store: Option<String>,
    /// A replica without a replicator of its own, fed by an external replicator through
    /// [`Request::Replicate`] (immudb's `ReplicateTx`).
    #[serde(default)]
    pub external_replicator: bool,
    /// As a primary, begin epochs above this one too: `db promote` records the highest
    /// epoch the other members reported. (No `skip_serializing_if`: the wire is postcard,
    /// which has no field names to skip by; TOML leaves `None` out by itself.)
    #[serde(default)]
    pub min_epoch: Option<u64>,
    /// `auto`: the coordinator (`serve --coordinator`) elects the primary, and this database
    /// follows whoever holds its leader key; `manual` or absent: operators promote.
    #[serde(default)]
    pub failover: Option<String>,
    /// Under automatic failover, the leader lease's time to live in seconds (default 5): how
    /// long a lost primary keeps the key, and so roughly how long writes wait for a new one.
    #[serde(default)]
    pub lease_ttl: Option<u64>,
    /// Under automatic failover and an asynchronous policy, how many transactions behind the
    /// last published commit point a replica may be and still be elected (default 0: none
    /// lost; more is a choice to lose them).
    #[serde(default)]
    pub max_lag_on_failover: Option<u64>,
    /// Keep at least this many of the latest committed transactions in the log; older ones
    /// are compacted away once a snapshot covers them (absent, with `retain_bytes` absent
    /// too: the log is cut only by `db compact`).
    #[serde(default)]
    pub retain_txs: Option<u64>,
    /// Keep at least this many bytes of the latest log files (whole segments).
    #[serde(default)]
    pub retain_bytes: Option<u64>,
    /// A connected replica holds compaction back until it lags the log's end by more than
    /// this many bytes; it then gets a snapshot when it returns (absent: always held back).
    #[serde(default)]
    pub max_replica_lag_bytes: Option<u64>,
    /// A new replica replays its source's whole log (while the source still holds it) instead
    /// of starting from a snapshot: every transaction, hash-chained, is on this replica too.
    #[serde(default)]
    pub replay_history: Option<bool>,
    /// Client identities that may read this database (`get`, `status`, ...), beyond the
    /// server's admins.
    #[serde(default)]
    pub readers: Option<Vec<String>>,
    /// Client identities that may read and write this database, beyond the server's admins.
    #[serde(default)]
    pub writers: Option<Vec<String>>,
}

impl DbSettings {
    /// Whether the coordinator elects this database's primary.
    pub fn automatic_failover(&self) -> bool {
        self.failover.as_deref() == Some("auto")
    }
}

/// A client request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Writes an atomic transaction.
    Write {
        /// The database.
        db: String,
        /// Its operations.
        ops: Vec<KvOp>,
    },
    /// Reads a key, after waiting until `min_tx` is applied.
    Get {
        /// The database.
        db: String,
        /// The key.
        key: String,
        /// Wait until this transaction is applied first.
        min_tx: Option<u64>,
        /// How long to wait for `min_tx`.
        wait_ms: u64,
        /// Only the primary may answer: a replica refuses with [`ErrorKind::NotPrimary`],
        /// naming its source, so that the client can follow it as writes do.
        primary: bool,
    },
    /// Pushes transactions committed at their source into a database created with
    /// `external_replicator`; their hash chain is checked first.
    Replicate {
        /// The database.
        db: String,
        /// Contiguous transactions following the database's last.
        txs: Vec<replication_core::Tx>,
    },
    /// A database's replication status.
    Status {
        /// The database.
        db: String,
    },
    /// Creates a database.
    CreateDb {
        /// Its name.
        name: String,
        /// Its settings.
        settings: DbSettings,
    },
    /// Changes a database's settings (fields left `None` are kept).
    UpdateDb {
        /// Its name.
        name: String,
        /// The settings to change.
        settings: DbSettings,
        /// Allow this replica one rewind (not stored): drop transactions it committed that
        /// its source's history lacks, into a rollback file. Answered with
        /// [`Response::Rewound`].
        allow_rewind: bool,
    },
    /// Lists databases.
    ListDbs,
    /// Starts serving an unloaded database again.
    LoadDb {
        /// Its name.
        name: String,
    },
    /// Stops serving a database, keeping its data; it stays unloaded across restarts.
    UnloadDb {
        /// Its name.
        name: String,
    },
    /// Deletes an unloaded database and its data.
    DeleteDb {
        /// Its name.
        name: String,
    },
    /// Promotes a replica database to a primary in a new epoch: it stops following its source,
    /// keeps its whole log, and commits what it holds beyond its commit point once its new
    /// quorum holds it. Refused ([`ErrorKind::Refused`]) on a primary. The policy is kept
    /// unless `quorum` or `sync_acks` is given.
    Promote {
        /// The database.
        db: String,
        /// The new primary's quorum policy.
        quorum: Option<String>,
        /// Or its acknowledgement count (immudb's `--replication-sync-acks`).
        sync_acks: Option<u32>,
        /// The highest epoch the other members reported: the new primary begins above it.
        above_epoch: Option<u64>,
    },
    /// Begins a planned switchover of a primary database to `to`, one of its replicas: new
    /// writes are refused ([`ErrorKind::NotPrimary`], naming `to`) while those already taken
    /// commit. Refused ([`ErrorKind::Refused`]) on a replica. Undone by [`SwitchoverAbort`]
    /// or by the database's restart (its repointing as a replica of `to`).
    ///
    /// [`SwitchoverAbort`]: Request::SwitchoverAbort
    SwitchoverBegin {
        /// The database.
        db: String,
        /// The new primary, `HOST:PORT`.
        to: String,
    },
    /// Undoes a [`SwitchoverBegin`](Request::SwitchoverBegin): writes are taken again.
    SwitchoverAbort {
        /// The database.
        db: String,
    },
    /// Lists a database's durable membership (the replicas its quorum policy counts), after
    /// retiring `remove` (`node/database`) from it if given.
    Members {
        /// The database.
        db: String,
        /// A member to retire for good.
        remove: Option<String>,
    },
    /// Takes a snapshot of a database now and compacts its log below it, within its
    /// retention settings and what its connected replicas still need.
    CompactDb {
        /// The database.
        db: String,
    },
    /// A digest of a database's whole state, to compare replicas.
    StateDigest {
        /// The database.
        db: String,
    },
}

/// The status of one database, as `repnode status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// The database.
    pub database: String,
    /// `primary` or `replica`.
    pub role: String,
    /// The node's epoch.
    pub epoch: u64,
    /// The primary that claims that epoch (`node/database`), when the node recorded it: a
    /// replica follows only that primary in it.
    pub epoch_primary: Option<String>,
    /// The epoch of the last transaction in the log: compare logs by it first, then by
    /// position (a longer log of an older epoch may hold only superseded transactions).
    pub last_epoch: u64,
    /// The commit point.
    pub committed: Position,
    /// The durable (precommitted) position.
    pub precommitted: Position,
    /// Writes waiting for their quorum.
    pub waiting_writes: usize,
    /// A primary fenced by a higher epoch: the epoch it saw (it accepts no writes).
    pub fenced: Option<u64>,
    /// The replica's link to its source, when a replica.
    pub upstream: Option<String>,
    /// The last replication error.
    pub last_error: Option<String>,
    /// A replica's link to its source failing: the cause, the attempts and when (`None` once
    /// the source accepted a subscription again).
    pub link_error: Option<LinkErrorReport>,
    /// A replica's source, as this replica sees it.
    pub source: Option<SourceReport>,
    /// Why the log refuses every write and acknowledgement (a failed write or sync): the
    /// database needs a restart, which recovers its log.
    pub log_failure: Option<String>,
    /// On a primary: whether the replicas connected now can meet its policy (`false`: new
    /// writes wait for more to connect).
    pub policy_met_by_connected: Option<bool>,
    /// Warnings about settings the present state cannot honour (a quorum more replicas than
    /// are connected can meet, for example).
    pub warnings: Vec<String>,
    /// The replicas of this database: those heard from since it started, and every member.
    pub replicas: Vec<ReplicaReport>,
    /// The durable membership (`node/database`): the replicas its quorum policy counts.
    pub members: Vec<String>,
    /// The quorum policy in its text form (`acks 1`, `majority`, ...), on a primary: what
    /// `failover plan` needs to know how many acknowledgements a write had.
    pub policy: Option<String>,
    /// The last transactions this database dropped from its log (rejoining a newer history)
    /// since it started, and the rollback file that keeps them.
    pub last_rollback: Option<RollbackReport>,
    /// The last transaction before the log's first: those up to it were compacted away or
    /// came in a snapshot (0: the log holds the whole history).
    pub log_base: u64,
    /// The latest snapshot this database can send its replicas.
    pub snapshot: Option<SnapshotReport>,
    /// What a replica is doing: `snapshot transfer`, `installing snapshot`, `catching up`,
    /// `streaming`, or, not streaming, its link's state.
    pub phase: Option<String>,
    /// How far a snapshot transfer or a catch-up has come, while one runs.
    pub progress: Option<ProgressReport>,
    /// Under automatic failover, what this member's failover agent sees and does.
    pub failover: Option<FailoverReport>,
}

/// A replica's link to its source failing, from its first failure until the source accepts a
/// subscription again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkErrorReport {
    /// The kind of the last failure: `unreachable`, `certificate`, `unknown_database`,
    /// `not_allowed`, `refused`, `timeout`, `connection_lost`, `snapshot` or `stopped`.
    pub cause: String,
    /// The last failure, in words.
    pub message: String,
    /// Failed attempts since the link last worked.
    pub attempts: u64,
    /// When the last attempt failed (RFC 3339, UTC).
    pub last_attempt_at: String,
    /// How long the link has been failing, in milliseconds.
    pub failing_for_ms: u64,
}

/// A replica's source, as the replica sees it (`pg_stat_wal_receiver`, immudb's replication
/// lag).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// `HOST:PORT/DB`.
    pub address: String,
    /// Whether the replica streams from it now.
    pub streaming: bool,
    /// Its commit point as last heard.
    pub committed_tx_id: Option<u64>,
    /// Transactions it has committed that this replica has not, as last heard.
    pub lag_txs: Option<u64>,
    /// The age of the oldest commit point of the source this replica has not reached, in
    /// milliseconds (0 when it holds every one heard).
    pub lag_ms: Option<u64>,
    /// Connections dialled to it since this server started.
    pub connects: u64,
    /// Failures of the link since this server started, by cause (every cause listed).
    pub errors: Vec<(String, u64)>,
}

/// A snapshot a database holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotReport {
    /// Its last transaction.
    pub last_tx_id: u64,
    /// Its size.
    pub bytes: u64,
}

/// How far a replica's snapshot transfer or catch-up has come.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressReport {
    /// Snapshot bytes received (during a transfer).
    pub bytes_done: u64,
    /// Snapshot bytes in all (during a transfer).
    pub bytes_total: u64,
    /// Transactions committed here since this phase began.
    pub txs_done: u64,
    /// Transactions the source has committed that this replica has not, as last heard (after
    /// a transfer: from the snapshot to the source's commit point).
    pub txs_remaining: u64,
    /// Bytes (transfer) or transactions (catch-up) per second since the phase began.
    pub rate: f64,
    /// Estimated time left at that rate, in milliseconds.
    pub eta_ms: Option<u64>,
}

/// A database's automatic failover, as its member's agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverReport {
    /// The member holding the leader key, as last read.
    pub leader: Option<String>,
    /// Where its replicas subscribe (`HOST:PORT/DB`).
    pub leader_address: Option<String>,
    /// The epoch the coordinator granted it.
    pub leader_epoch: Option<u64>,
    /// The lease's time to live.
    pub lease_ttl_ms: u64,
    /// As leader: how long this primary may still acknowledge writes without a renewal.
    pub lease_remaining_ms: Option<u64>,
    /// How long ago the last successful renewal was sent.
    pub last_renewal_ms_ago: Option<u64>,
    /// The last coordinator error, until a call succeeds again.
    pub coordinator_error: Option<String>,
    /// Why this member does not campaign for a vacant leader key.
    pub not_campaigning: Option<String>,
    /// The last error of the local database carrying out the agent's decision.
    pub local_error: Option<String>,
    /// Campaigns this member won since it started.
    pub elections_won: u64,
    /// Lease grants or renewals that failed.
    pub renew_failures: u64,
    /// Times this primary's lease deadline passed without a renewal: it stopped
    /// acknowledging writes (self-fencing).
    pub self_fencings: u64,
}

/// Transactions dropped from a log, and the rollback file that keeps them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReport {
    /// The first dropped.
    pub from_tx_id: u64,
    /// The last dropped.
    pub to_tx_id: u64,
    /// The last of them this database had committed (a rewind an operator allowed); `None`
    /// when none was.
    pub committed_to_tx_id: Option<u64>,
    /// The rollback file.
    pub file: String,
}

impl StatusReport {
    /// How advanced this durable log is, as Raft compares last terms: the epoch of its last
    /// transaction first (a log that ends in a later epoch holds that epoch's primary's
    /// history, which includes every earlier commit), then its durable position. A longer log
    /// of an older epoch may hold only transactions a newer primary superseded.
    pub fn log_rank(&self) -> (u64, u64) {
        (self.last_epoch, self.precommitted.tx_id)
    }
}

/// A transaction id and its hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The id.
    pub tx_id: u64,
    /// The hash, hexadecimal.
    pub hash: String,
}

/// One replica in a status report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// The replica, `node/database`: as the membership lists it and the metrics label it.
    pub replica: String,
    /// Its node's identity.
    pub node: String,
    /// Its database on that node.
    pub database: String,
    /// Whether it is a member: its quorum policy counts it, connected or not.
    pub member: bool,
    /// Its address.
    pub address: String,
    /// The last transaction it acknowledged.
    pub acked_tx_id: u64,
    /// Transactions behind.
    pub lag_txs: u64,
    /// Milliseconds behind.
    pub lag_ms: u64,
    /// Whether connected.
    pub connected: bool,
}

/// A server's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// A write committed.
    Written {
        /// Its transaction.
        tx_id: u64,
        /// Its hash.
        hash: String,
        /// `quorum` or `async`.
        ack: String,
    },
    /// A read.
    Value {
        /// The key.
        key: String,
        /// The value, if present.
        value: Option<String>,
        /// The transaction the read reflects.
        tx_id: u64,
    },
    /// A status report (boxed: it is much larger than the other answers).
    Status(Box<StatusReport>),
    /// Database names, whether each is loaded, and their settings.
    Dbs(Vec<(String, bool, DbSettings)>),
    /// A database's membership, after `removed` was retired from it.
    Members {
        /// The database.
        db: String,
        /// The members (`node/database`).
        members: Vec<String>,
        /// The member retired by this request.
        removed: Option<String>,
    },
    /// A replica promoted: its status right after its restart as a primary.
    Promoted {
        /// The database.
        db: String,
        /// Its new epoch.
        epoch: u64,
        /// The commit point.
        committed: Position,
        /// The durable (precommitted) position.
        precommitted: Position,
    },
    /// An update that allowed a rewind: the replica's status once it streams again or
    /// stopped (or when the wait ran out), naming what it rolled back.
    Rewound(Box<StatusReport>),
    /// A digest of a database's state ([`crate::kv::KvStore::digest`]).
    StateDigest {
        /// The database.
        db: String,
        /// The last transaction the state reflects.
        tx_id: u64,
        /// BLAKE3 of every key, value and the transaction that set it, in hex.
        digest: String,
    },
    /// A database compacted.
    Compacted {
        /// The snapshot its log was cut below.
        snapshot: SnapshotReport,
        /// The log's base before.
        base_before: u64,
        /// The log's base now: the log holds the transactions after it.
        base_after: u64,
    },
    /// Done.
    Ok,
    /// Done, with what the operator should know (replicas a deleted database leaves
    /// behind, a policy the connected replicas cannot meet, ...).
    Done {
        /// The warnings, each a sentence; empty when there is nothing to say.
        warnings: Vec<String>,
    },
    /// Refused or failed.
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A message for people.
        message: String,
        /// With [`ErrorKind::NotPrimary`]: the primary's address (`HOST:PORT`) as the server
        /// knows it, for a client to follow; `None` when it knows none.
        primary: Option<String>,
    },
}

/// Kinds of failure a client reacts to differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// No such database.
    UnknownDatabase,
    /// A write sent to a replica.
    NotPrimary,
    /// A setting is invalid.
    BadSetting,
    /// The outcome of a write is unknown (it may still commit).
    Unknown,
    /// Refused in the database's present state (promoting a primary); nothing changed.
    Refused,
    /// Anything else; nothing was written.
    Failed,
    /// The client's identity may not make this request; nothing changed.
    Unauthorized,
}
