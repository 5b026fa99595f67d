//! Building one database from its settings: the quorum policy, the role, the log (a
//! `FileLog` or a `MemLog`) and the engine, with a fresh [`KvStore`] rebuilt from the log.

use std::path::Path;
use std::sync::Arc;

use replication_core::driver::{Node, NodeOptions, StartError};

use crate::rollback::RollbackDir;
use replication_core::engine::{EngineConfig, Role};
use replication_core::log::LogError;
use replication_core::quorum::{ParseQuorumError, Quorum, QuorumPolicy};
use replication_core::{Epoch, NodeId};
use store_file::{FileLog, FileLogOptions};
use store_mem::MemLog;
use transport_quic::QuicTransport;

use crate::kv::KvStore;
use crate::metrics::CommitLatency;
use crate::wire::DbSettings;

/// One open database.
pub(crate) struct Database {
    /// The settings it was opened with (and later changes of policy).
    pub(crate) settings: DbSettings,
    /// Its engine.
    pub(crate) node: Node,
    /// Its state machine, which reads are served from.
    pub(crate) store: KvStore,
    /// Its commit latency, for the metrics endpoint.
    pub(crate) commit_latency: CommitLatency,
    /// Whether new writes are taken, and how many are in flight: a switchover closes it.
    /// A restart builds a new one, open: a promoted or repointed database has no switchover.
    pub(crate) gate: Arc<WriteGate>,
    /// What its log's files hold (for retention by size); `None` for a log without files.
    pub(crate) footprint: Option<Footprint>,
}

/// Reads what a database's log files hold: each segment's first transaction and size.
pub(crate) type Footprint = Arc<dyn Fn() -> super::retention::Segments + Send + Sync>;

/// The door new writes pass on their way to the engine. A switchover closes it, naming the
/// new primary; the writes that passed before are counted until they are answered, so that
/// "no write waiting" covers those not yet appended too (the engine counts only the others).
#[derive(Debug, Default)]
pub(crate) struct WriteGate {
    state: std::sync::Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// The server writes go to instead (`HOST:PORT`), while a switchover to it runs.
    switching_to: Option<String>,
    /// Writes past the gate and not yet answered.
    in_flight: usize,
}

/// A write past the [`WriteGate`]: counted until dropped.
pub(crate) struct GatePass(Arc<WriteGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
    }
}

impl WriteGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic elsewhere while holding it leaves plain counters: still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets a write through, or names where writes go now.
    pub(crate) fn enter(self: &Arc<WriteGate>) -> Result<GatePass, String> {
        let mut state = self.lock();
        if let Some(to) = &state.switching_to {
            return Err(to.clone());
        }
        state.in_flight += 1;
        Ok(GatePass(self.clone()))
    }

    /// Closes the gate to new writes, naming `to`.
    pub(crate) fn close(&self, to: String) {
        self.lock().switching_to = Some(to);
    }

    /// Opens it again; returns where writes were sent while it was closed.
    pub(crate) fn open(&self) -> Option<String> {
        self.lock().switching_to.take()
    }

    /// Writes past the gate and not yet answered.
    pub(crate) fn in_flight(&self) -> usize {
        self.lock().in_flight
    }
}

/// A setting that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// A quorum policy text that does not parse.
    #[error("{0}")]
    Policy(ParseQuorumError),
    /// A source that is not `HOST:PORT/DB`.
    #[error("--replica-of {text:?}: {why}; expected HOST:PORT/DB (for example 10.0.0.1:7440/app)")]
    ReplicaOf {
        /// What was given.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// Settings that contradict each other, or one that cannot be changed.
    #[error("{0}")]
    Contradictory(String),
    /// A store other than `file` or `mem`.
    #[error("--store {0:?}: expected file or mem")]
    Store(String),
    /// Failover settings that cannot work.
    #[error("{0}")]
    Failover(String),
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Its settings do not parse.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// Its log could not be opened.
    #[error("opening the log of database {db}")]
    Log {
        /// The database.
        db: String,
        /// The log's error.
        #[source]
        error: LogError,
    },
    /// Its engine could not start.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Parses the policy a database's settings describe.
///
/// # Errors
/// A `quorum` text that does not parse.
pub fn policy_of(settings: &DbSettings) -> Result<Quorum, SettingError> {
    if let Some(text) = &settings.quorum {
        return text.parse::<Quorum>().map_err(SettingError::Policy);
    }
    Ok(match settings.sync_acks {
        Some(n) if n > 0 => Quorum::AckCount {
            n: n as usize,
            among: None,
        },
        _ => Quorum::Async,
    })
}

/// Splits `HOST:PORT/DB` as saved settings hold it. Lenient, so that a source accepted by an
/// earlier version still opens; new settings pass [`check_replica_of`] first.
///
/// # Errors
/// [`SettingError::ReplicaOf`] for a text without a port or a database.
pub fn parse_replica_of(text: &str) -> Result<(String, String), SettingError> {
    let refused = |why: &str| SettingError::ReplicaOf {
        text: text.to_string(),
        why: why.to_string(),
    };
    let (address, database) = text
        .rsplit_once('/')
        .ok_or_else(|| refused("no database after the address"))?;
    if !address.contains(':') || database.is_empty() {
        return Err(refused("no port in the address, or no database"));
    }
    Ok((address.to_string(), database.to_string()))
}

/// Checks a new `--replica-of` part by part: a host (a name, an IPv4 address or a bracketed
/// IPv6 one), a port from 1 to 65535, a valid database name, and no scheme.
///
/// # Errors
/// [`SettingError::ReplicaOf`], saying which part is wrong.
pub fn check_replica_of(text: &str) -> Result<(), SettingError> {
    let refused = |why: &str| SettingError::ReplicaOf {
        text: text.to_string(),
        why: why.to_string(),
    };
    if text.contains("://") {
        return Err(refused("no scheme is taken (the transport is QUIC)"));
    }
    let (address, database) = parse_replica_of(text)?;
    if !super::catalog::valid_name(&database) {
        return Err(refused(
            "the database name must be 1 to 64 letters, digits, `_` or `-`",
        ));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| refused("no port in the address"))?;
    match port.parse::<u16>() {
        Ok(port) if port > 0 => {}
        _ => return Err(refused("the port must be a number from 1 to 65535")),
    }
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<std::net::Ipv6Addr>().is_ok(),
        // Names as resolvers take them: container names often hold `_`.
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        }
    };
    if !host_ok {
        return Err(refused(
            "the host must be a name, an IPv4 address or a bracketed IPv6 address",
        ));
    }
    Ok(())
}

/// Checks what can be checked of settings without opening anything.
pub(crate) fn check(settings: &DbSettings) -> Result<(), SettingError> {
    if settings.quorum.is_some() && settings.sync_acks.is_some() {
        return Err(SettingError::Contradictory(
            "--sync-acks and --quorum both set the quorum policy: give one (`--sync-acks N` \
             is `--quorum \"acks N\"`)"
                .into(),
        ));
    }
    policy_of(settings)?;
    if let Some(text) = &settings.replica_of {
        check_replica_of(text)?;
    }
    let refused = |why: &str| Err(SettingError::Failover(why.to_string()));
    match settings.failover.as_deref() {
        None | Some("manual") => {}
        Some("auto") if settings.external_replicator => {
            return refused(
                "--failover auto: a database fed by an external replicator cannot be elected",
            );
        }
        Some("auto") => {}
        Some(other) => {
            return Err(SettingError::Failover(format!(
                "--failover {other:?}: expected auto or manual"
            )));
        }
    }
    // etcd grants no lease shorter than its own minimum (about 2 s with its defaults).
    if settings
        .lease_ttl
        .is_some_and(|ttl| !(2..=3600).contains(&ttl))
    {
        return refused("--lease-ttl: expected 2 to 3600 seconds");
    }
    Ok(())
}

/// The lease time to live of a database under automatic failover.
pub(crate) fn lease_ttl(settings: &DbSettings) -> std::time::Duration {
    std::time::Duration::from_secs(settings.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL_SECS))
}

/// The default `--lease-ttl`.
pub(crate) const DEFAULT_LEASE_TTL_SECS: u64 = 5;

/// A server's settings for every database it opens.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tuning {
    /// Snapshots are sent at most this many bytes per second, per replica.
    pub(crate) snapshot_max_rate: Option<u64>,
    /// The size of log segments.
    pub(crate) log_segment_bytes: Option<u64>,
    /// How long a write waits for its commit.
    pub(crate) write_timeout: Option<std::time::Duration>,
}

/// Opens database `db` of server `server_name` with its log in `log_dir`, replaying the
/// log into a new store; replicas reach their source, and are reached, through `transport`.
pub(crate) async fn open(
    server_name: &str,
    db: &str,
    settings: DbSettings,
    log_dir: &Path,
    transport: Arc<QuicTransport>,
    allow_rewind: bool,
    tuning: Tuning,
) -> Result<Database, OpenError> {
    let policy = policy_of(&settings)?;
    let role = match &settings.replica_of {
        _ if settings.external_replicator => Role::ExternalReplica,
        Some(text) => Role::Replica {
            address: parse_replica_of(text)?.0,
        },
        None => Role::Primary,
    };
    let mut config = EngineConfig::new(server_name, db, role);
    if let Some(text) = &settings.replica_of {
        config.source_database = Some(parse_replica_of(text)?.1);
    }
    if let Some(prefetch) = settings.prefetch_buffer {
        config.prefetch_buffer = prefetch.max(1);
    }
    // Under automatic failover an old primary rejoins the elected one: what it holds beyond
    // its commit point was never acknowledged, and is dropped (kept in a rollback file).
    let automatic = settings.automatic_failover();
    config.allow_tx_discarding = settings.allow_tx_discarding.unwrap_or(automatic);
    // The coordinator grants the writes: nothing acknowledged, nor any replica served, before
    // the agent reports a lease.
    config.leased = automatic;
    // Never a setting: an operator allows one rewind, for this run of the engine.
    config.allow_rewind = allow_rewind;
    config.min_epoch = Epoch(settings.min_epoch.unwrap_or(0));
    config.write_timeout = tuning.write_timeout;
    config.prefer_snapshot = !settings.replay_history.unwrap_or(false);
    config.allowed_replicators = settings
        .replicators
        .as_ref()
        .map(|ids| ids.iter().map(|id| NodeId::new(id.as_str())).collect());
    // The server routes every channel itself (see the router): the engine must not accept.
    // Beside the log: `<database>/rollback/`, kept when the log is replaced.
    let rollback_dir = log_dir.parent().map_or_else(
        || log_dir.join("rollback"),
        |db_dir| db_dir.join("rollback"),
    );
    // Beside the log too: `<database>/snapshots/`. A database in memory starts empty at
    // every start, so the snapshots of its last run are not its state: they go.
    let db_dir = log_dir.parent().unwrap_or(log_dir);
    let snapshot_dir = db_dir.join("snapshots");
    if settings.store.as_deref() == Some("mem") && snapshot_dir.exists() {
        std::fs::remove_dir_all(&snapshot_dir).map_err(|error| OpenError::Log {
            db: db.to_string(),
            error: LogError::Io(error),
        })?;
    }
    let options = NodeOptions {
        accept_replicas: false,
        rollback: Some(Arc::new(RollbackDir::new(rollback_dir))),
        snapshot_dir: Some(snapshot_dir),
        snapshot_max_rate: tuning.snapshot_max_rate,
        ..NodeOptions::default()
    };
    let store = KvStore::default();
    let policy: Arc<dyn QuorumPolicy> = Arc::new(policy);
    let (node, footprint) = match settings.store.as_deref().unwrap_or("file") {
        "file" => {
            let mut log_options = FileLogOptions::default();
            if let Some(bytes) = tuning.log_segment_bytes {
                log_options.segment_bytes = bytes.max(4096);
            }
            let log = FileLog::open(log_dir, log_options).map_err(|error| OpenError::Log {
                db: db.to_string(),
                error,
            })?;
            // From the directory, not through the log: a handle would keep the log (and its
            // lock) open past a restart of the engine.
            let files = log_dir.to_path_buf();
            let footprint: Footprint =
                Arc::new(move || store_file::segment_sizes(&files).unwrap_or_default());
            let node = Node::start(config, policy, log, transport, store.clone(), options).await?;
            (node, Some(footprint))
        }
        "mem" => {
            let node = Node::start(
                config,
                policy,
                MemLog::new(),
                transport,
                store.clone(),
                options,
            )
            .await?;
            (node, None)
        }
        other => return Err(SettingError::Store(other.to_string()).into()),
    };
    Ok(Database {
        settings,
        node,
        store,
        commit_latency: CommitLatency::default(),
        gate: Arc::default(),
        footprint,
    })
}
