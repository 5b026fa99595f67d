//! The command line of `repnode`: clap's types, and what each command runs.
//!
//! - `serve`: `serve`'s flags and the pure resolution of its settings (flags, environment,
//!   config file), then the server.
//! - `output`: client commands: a request, its answer as text or `--json`, the exit code.
//! - `promote`: `db promote`, a replica made primary by hand after its checks.
//! - `switchover`: `db switchover`, a planned hand-over from a live primary to a replica.
//! - `log`: offline tools over a stopped server's data directory.
//! - `demo` and `bench`: the narrated local cluster and the load generator.

mod bench;
mod demo;
mod demo_auto;
pub mod exit;
mod log;
mod output;
mod plan;
mod promote;
mod serve;
mod switchover;
mod wait;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};
use node::kv::KvOp;
use node::wire::{DbSettings, Request};
use transport_quic::TlsIdentity;

use log::LogCommand;
use output::{Target, run_client, run_client_to};
use serve::{ServeArgs, ServeFile, ServeSettings};

#[derive(Parser)]
#[command(
    name = "repnode",
    version = node::VERSION,
    about = "The reference node of the replication framework",
    after_help = "Client commands reach --server (REPNODE_SERVER, default 127.0.0.1:7440) with the \
client certificate in --tls-dir (REPNODE_TLS_DIR, default ./certs), or --ca-cert/--cert/--key.\n\n\
Exit codes: 0 done; 1 failed; 2 usage; 3 a write's outcome is unknown (it may still commit); \
4 refused (a replica, a fenced primary, a promotion or failover its checks refuse); \
5 no server reachable; 6 no such database; 7 settings refused. With --json a failure is \
{\"error\": ..., \"kind\": ...} on stdout."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a local four-node cluster over QUIC and narrates writes, a lost synchronous replica
    /// and its return.
    Demo {
        /// Keep the nodes' data here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Runs a server.
    Serve(ServeArgs),
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Manages databases.
    Db {
        #[command(subcommand)]
        command: DbCommand,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Sets a key.
    Put {
        /// The database (a primary, found among `--server`).
        #[arg(long)]
        db: String,
        /// The key.
        key: String,
        /// Its new value.
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reads a key.
    Get {
        /// The database (a primary or a replica).
        #[arg(long)]
        db: String,
        /// The key.
        key: String,
        /// Wait until this transaction is applied here first (read your writes on a replica).
        #[arg(long)]
        min_tx: Option<u64>,
        /// Read from the primary, found among `--server` as writes find it, rather than from
        /// the first reachable server.
        #[arg(long)]
        primary: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a key.
    Del {
        /// The database (a primary, found among `--server`).
        #[arg(long)]
        db: String,
        /// The key.
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Writes an atomic transaction: `tx --db D set K V del K ...`.
    Tx {
        /// The database (a primary, found among `--server`).
        #[arg(long)]
        db: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Operations: `set KEY VALUE` and `del KEY`, in order (after `--` if a value
        /// begins with `-`).
        #[arg(required = true, num_args = 1..)]
        ops: Vec<String>,
    },
    /// Offline tools for a stopped server's data directory.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Failover tools: `failover plan` tells which replica can become the primary safely.
    Failover {
        #[command(subcommand)]
        command: plan::FailoverCommand,
    },
    /// Loads a running server: N clients writing single keys; throughput and latency
    /// percentiles (HDR histogram) at the end.
    Bench {
        /// The database (a primary, found among `--server`).
        #[arg(long)]
        db: String,
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Run this many seconds...
        #[arg(long)]
        duration: Option<f64>,
        /// ...or this many writes in all (attempts: a failed one counts, and is reported).
        #[arg(long)]
        count: Option<u64>,
        /// Bytes per value.
        #[arg(long, default_value_t = 128)]
        value_size: usize,
        /// Distinct keys each client overwrites in turn (default: a new key per write).
        #[arg(long)]
        key_space: Option<u64>,
        /// Print the progress line every second (to stderr) even with `--json`.
        #[arg(long)]
        progress: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prints a shell completion script: `repnode completions bash > /etc/bash_completion.d/repnode`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the manual page (roff): `repnode man > repnode.1 && man ./repnode.1`.
    Man,
    /// Shows a database's replication status.
    Status {
        /// The database.
        #[arg(long)]
        db: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The server, HOST:PORT, or several, comma separated: writes (and `get --primary`) find
    /// the primary among them, following a replica's answer naming it; reads use the first
    /// reachable; changes to databases go to the first. One server is asked alone.
    #[arg(
        long,
        env = "REPNODE_SERVER",
        default_value = "127.0.0.1:7440",
        global = true
    )]
    server: String,
    /// Where ca.pem, client.pem and client.key are (as `certs init` writes them).
    #[arg(long, env = "REPNODE_TLS_DIR", default_value = "certs", global = true)]
    tls_dir: PathBuf,
    /// An existing PKI instead of `--tls-dir`: the cluster CA's certificate (PEM), with
    /// `--cert` and `--key`.
    // Ids of their own: `put KEY VALUE` has an argument named `key` too.
    #[arg(
        long = "ca-cert",
        id = "tls_ca_cert",
        env = "REPNODE_CA_CERT",
        requires_all = ["tls_cert", "tls_key"],
        global = true
    )]
    ca_cert: Option<PathBuf>,
    /// This client's certificate (PEM; organizational unit `client`), with `--ca-cert`.
    #[arg(
        long = "cert",
        id = "tls_cert",
        env = "REPNODE_CERT",
        requires = "tls_ca_cert",
        global = true
    )]
    cert: Option<PathBuf>,
    /// This client's private key (PEM), with `--ca-cert`.
    #[arg(
        long = "key",
        id = "tls_key",
        env = "REPNODE_KEY",
        requires = "tls_ca_cert",
        global = true
    )]
    key: Option<PathBuf>,
    /// Give up waiting after this many seconds (a write is then reported as of unknown outcome).
    #[arg(long, env = "REPNODE_TIMEOUT", global = true)]
    timeout: Option<f64>,
    /// Print one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

/// The TLS identity `name` presents: from `--ca-cert`, `--cert` and `--key` when given (an
/// existing PKI), else `ca.pem`, `NAME.pem` and `NAME.key` in `tls_dir`.
fn load_identity(
    tls_dir: &std::path::Path,
    files: (&Option<PathBuf>, &Option<PathBuf>, &Option<PathBuf>),
    name: &str,
) -> Result<TlsIdentity> {
    Ok(match files {
        (Some(ca), Some(cert), Some(key)) => TlsIdentity::load_files(ca, cert, key)?,
        (None, None, None) => TlsIdentity::load(tls_dir, name)?,
        _ => bail!("--ca-cert, --cert and --key go together"),
    })
}

impl ClientArgs {
    /// The client's TLS identity.
    fn identity(&self) -> Result<TlsIdentity> {
        load_identity(
            &self.tls_dir,
            (&self.ca_cert, &self.cert, &self.key),
            "client",
        )
    }

    /// The `--server` list.
    fn servers(&self) -> Vec<String> {
        node::routing::split_servers(&self.server)
    }
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Writes a new cluster PKI: a CA (ca.pem; its key kept apart in ca/ca.key), a
    /// certificate and key per node, and client.pem/.key. Keys are written 0600. Refuses a
    /// directory that already holds a CA unless `--force`.
    Init {
        /// Where to write them.
        #[arg(long, env = "REPNODE_TLS_DIR")]
        dir: PathBuf,
        /// The nodes, comma separated, each `NAME` or `NAME=ADDRESS` (an IP address or a DNS
        /// name its peers dial it at; repeat a name for several:
        /// `n1=10.0.0.1,n1=db1.example.org,n2=10.0.0.2`). Every certificate also names the
        /// node, `localhost` and `127.0.0.1`.
        #[arg(
            long,
            value_delimiter = ',',
            required = true,
            value_name = "NAME[=ADDRESS],..."
        )]
        nodes: Vec<String>,
        /// More names or addresses for every node's certificate (a load balancer's, say).
        #[arg(long, value_delimiter = ',', value_name = "ADDRESS,...")]
        san: Vec<String>,
        /// Replace an existing PKI in `--dir` (every certificate it issued stops verifying).
        #[arg(long)]
        force: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Issues a client certificate for identity NAME from the kept CA: grant it access with
    /// `db update DB --readers NAME` or `--writers NAME`, or make it an admin with `serve
    /// --admins`.
    AddClient {
        /// The identity (its certificate's common name).
        name: String,
        /// Where the CA and the other certificates are.
        #[arg(long, env = "REPNODE_TLS_DIR")]
        dir: PathBuf,
        /// Replace the identity's existing certificate and key.
        #[arg(long)]
        force: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Issues a certificate for one more node from the CA that `certs init` kept in `--dir`.
    AddNode {
        /// `NAME` or `NAME=ADDRESS`; repeat `--address` for more addresses.
        node: String,
        /// More addresses (IP addresses or DNS names) the node is reached at.
        #[arg(long = "address", value_name = "ADDRESS")]
        addresses: Vec<String>,
        /// Where the CA and the other certificates are.
        #[arg(long, env = "REPNODE_TLS_DIR")]
        dir: PathBuf,
        /// Replace the node's existing certificate and key.
        #[arg(long)]
        force: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `certs init` or `certs add-node`; prints the files written.
fn run_certs(command: CertsCommand) -> Result<ExitCode> {
    let (dir, written, json) = match command {
        CertsCommand::Init {
            dir,
            nodes,
            san,
            force,
            json,
        } => {
            let specs = nodes
                .iter()
                .map(|text| transport_quic::NodeSpec::parse(text))
                .collect::<Result<Vec<_>, _>>()?;
            let specs = transport_quic::NodeSpec::merge(specs);
            let written = transport_quic::init_pki(&dir, &specs, &san, force)?;
            (dir, written, json)
        }
        CertsCommand::AddNode {
            node,
            addresses,
            dir,
            force,
            json,
        } => {
            let mut spec = transport_quic::NodeSpec::parse(&node)?;
            for address in addresses {
                let extra = transport_quic::NodeSpec::parse(&format!("{}={address}", spec.name))?;
                spec.addresses.extend(extra.addresses);
            }
            let written = transport_quic::add_node(&dir, &spec, force)?;
            (dir, written, json)
        }
        CertsCommand::AddClient {
            name,
            dir,
            force,
            json,
        } => {
            let written = transport_quic::add_client(&dir, &name, force)?;
            (dir, written, json)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"dir": dir.display().to_string(), "written": written})
        );
    } else {
        println!("wrote {} in {}", written.join(", "), dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Clone, Default)]
struct SettingsArgs {
    /// HOST:PORT/DB of the source; absent: a primary.
    #[arg(long)]
    replica_of: Option<String>,
    /// Replica acknowledgements a commit needs (0: asynchronous); `--quorum "acks N"`.
    #[arg(long, conflicts_with = "quorum")]
    sync_acks: Option<u32>,
    /// A quorum policy: `majority`, `any 2 (n2,n3,n4)`, `first 1 (n2,n3)`, `acks 2`, `async`.
    #[arg(long)]
    quorum: Option<String>,
    /// Transactions the source may send ahead of this replica's acknowledgement.
    #[arg(long)]
    prefetch_buffer: Option<u32>,
    /// Let this replica discard diverged uncommitted transactions (`--allow-tx-discarding`
    /// or `--allow-tx-discarding=false`).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    allow_tx_discarding: Option<bool>,
    /// Identities allowed to replicate from this database, comma separated.
    #[arg(long, value_delimiter = ',')]
    replicators: Option<Vec<String>>,
    /// Client identities (certificate common names) that may read this database (`get`,
    /// `status`, `db digest`, `db members`), comma separated; admins always may.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    readers: Option<Vec<String>>,
    /// Client identities that may read and write this database, comma separated.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    writers: Option<Vec<String>>,
    /// `auto`: the coordinator of `serve --coordinator` elects the primary and every member
    /// follows the holder of the leader key; `manual` (default): operators promote.
    #[arg(long, value_parser = ["auto", "manual"])]
    failover: Option<String>,
    /// Under `--failover auto`, the leader lease's time to live in seconds (default 5).
    #[arg(long, value_name = "SECONDS")]
    lease_ttl: Option<u64>,
    /// Under `--failover auto` and an asynchronous policy, how many transactions behind the
    /// last published commit point a replica may be elected (default 0).
    #[arg(long, value_name = "TXS")]
    max_lag_on_failover: Option<u64>,
    /// Keep at least the latest TXS committed transactions in the log; older ones are
    /// compacted away once a snapshot covers them (taken as needed, every TXS transactions).
    #[arg(long, value_name = "TXS")]
    retain_txs: Option<u64>,
    /// Keep at least the latest BYTES of log files (whole segments); with `--retain-txs`,
    /// whichever keeps more.
    #[arg(long, value_name = "BYTES")]
    retain_bytes: Option<u64>,
    /// A connected replica holds compaction back until it lags by more than BYTES of log;
    /// it then gets a snapshot when it returns (default: always held back).
    #[arg(long, value_name = "BYTES")]
    max_replica_lag_bytes: Option<u64>,
    /// As a new replica, replay the source's whole log (while it still holds it) rather than
    /// start from its snapshot, to hold every transaction of the history here too.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    replay_history: Option<bool>,
}

/// What is chosen once, when a database is created.
#[derive(Args, Clone, Default)]
struct CreateOnlyArgs {
    /// `file` (default) or `mem`.
    #[arg(long, value_parser = ["file", "mem"])]
    store: Option<String>,
    /// A replica fed by an external replicator (see examples/external_replicator.rs) rather
    /// than by a replicator of its own.
    #[arg(long)]
    external_replicator: bool,
}

impl CreateOnlyArgs {
    /// `settings` with these choices.
    fn apply(self, settings: SettingsArgs) -> DbSettings {
        DbSettings {
            store: self.store,
            external_replicator: self.external_replicator,
            ..settings.into()
        }
    }
}

impl From<SettingsArgs> for DbSettings {
    fn from(args: SettingsArgs) -> DbSettings {
        DbSettings {
            replica_of: args.replica_of,
            sync_acks: args.sync_acks,
            quorum: args.quorum,
            prefetch_buffer: args.prefetch_buffer,
            allow_tx_discarding: args.allow_tx_discarding,
            replicators: args.replicators,
            store: None,
            external_replicator: false,
            min_epoch: None,
            failover: args.failover,
            lease_ttl: args.lease_ttl,
            max_lag_on_failover: args.max_lag_on_failover,
            retain_txs: args.retain_txs,
            retain_bytes: args.retain_bytes,
            max_replica_lag_bytes: args.max_replica_lag_bytes,
            replay_history: args.replay_history,
            readers: args.readers,
            writers: args.writers,
        }
    }
}

#[derive(Subcommand)]
enum DbCommand {
    /// Creates a database: a primary, or with `--replica-of` a replica of another server's.
    Create {
        /// Its name: 1 to 64 letters, digits, '-' or '_'.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        #[command(flatten)]
        once: CreateOnlyArgs,
        /// With `--replica-of`: wait until the new replica has caught up with its source
        /// (snapshot transfer, install, catch-up), showing progress (a bar on a terminal,
        /// lines otherwise, nothing but the final object with `--json`), as
        /// `pg_basebackup -P` does. `--timeout` bounds the wait.
        #[arg(long)]
        wait: bool,
    },
    /// Changes a database's settings; a new quorum applies at once, to waiting writes too.
    Update {
        /// The database.
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
        /// Once, not stored: let this replica drop transactions it had committed that its
        /// source's history lacks (after a forced promotion, or under an asynchronous
        /// policy). They are first written to a rollback file under the database's
        /// directory. Waits until it streams again and prints what was rolled back.
        #[arg(long)]
        allow_rewind: bool,
    },
    /// Lists databases and their settings.
    List,
    /// Starts serving an unloaded database.
    Load {
        /// The database.
        name: String,
    },
    /// Stops serving a database, keeping its data (it stays unloaded across restarts).
    Unload {
        /// The database.
        name: String,
    },
    /// Deletes an unloaded database and its data; warns of the replicas it had.
    Delete {
        /// The database.
        name: String,
    },
    /// Makes the replica NAME on the first `--server` a primary in a new epoch, keeping its
    /// log: it stops following its source. Refused (exit code 4) on a primary, and, unless
    /// `--force`, if the other servers listed or its source answer as more advanced or as a
    /// live primary, or while it still streams from its source.
    Promote {
        /// The database (a replica on the first `--server`).
        name: String,
        /// The new primary's quorum policy (kept if neither this nor `--sync-acks` is given).
        #[arg(long, conflicts_with = "sync_acks")]
        quorum: Option<String>,
        /// Or the replica acknowledgements a commit needs.
        #[arg(long)]
        sync_acks: Option<u32>,
        /// Promote without comparing with the other servers or the source.
        #[arg(long)]
        force: bool,
    },
    /// Hands NAME over from its live primary, the first `--server`, to its replica at `--to`
    /// (upgrades, maintenance): new writes are refused naming the target, which catches up;
    /// it is promoted above the primary's epoch with its policy, and the old primary
    /// repointed as its replica. A failure before the promotion restores writes on the
    /// primary. `--timeout` bounds the catch-up (default 10 s).
    Switchover {
        /// The database (the primary on the first `--server`).
        name: String,
        /// The replica to hand over to, HOST:PORT.
        #[arg(long, value_name = "HOST:PORT")]
        to: String,
    },
    /// Takes a snapshot of NAME now and cuts its log below it: within `--retain-txs` /
    /// `--retain-bytes` if set (everything the snapshot covers otherwise), and never what a
    /// connected replica or a snapshot transfer still needs (unless it lags beyond
    /// `--max-replica-lag-bytes`).
    Compact {
        /// The database.
        name: String,
    },
    /// Prints a digest of NAME's whole state (every key, value and the transaction that set
    /// it) and the transaction it reflects: equal on replicas that hold the same state.
    Digest {
        /// The database.
        name: String,
    },
    /// Lists the durable membership: the replicas the quorum policy counts, connected or not
    /// (`majority` is a majority of them). A replica joins when it first subscribes.
    Members {
        /// The database (a primary).
        name: String,
        /// Retires a member that is gone for good (`NODE/DATABASE`); the policy stops counting
        /// it at once, waiting writes included.
        #[arg(long, value_name = "NODE/DATABASE")]
        remove: Option<String>,
    },
}

/// How a command logs.
pub struct Logging {
    /// One JSON object per line rather than text.
    pub json: bool,
    /// The level without `RUST_LOG`.
    pub default_level: &'static str,
}

impl Cli {
    /// Whether the command was asked for JSON output (`--json`): its errors are then a JSON
    /// object on stdout too.
    pub fn wants_json(&self) -> bool {
        match &self.command {
            Command::Db { client, .. }
            | Command::Put { client, .. }
            | Command::Get { client, .. }
            | Command::Del { client, .. }
            | Command::Tx { client, .. }
            | Command::Bench { client, .. }
            | Command::Status { client, .. } => client.json,
            Command::Certs {
                command:
                    CertsCommand::Init { json, .. }
                    | CertsCommand::AddNode { json, .. }
                    | CertsCommand::AddClient { json, .. },
            } => *json,
            Command::Log { command } => command.wants_json(),
            Command::Failover { command } => command.wants_json(),
            Command::Demo { .. }
            | Command::Serve(_)
            | Command::Completions { .. }
            | Command::Man => false,
        }
    }

    /// How this command logs: `serve` at `info`, in its `--log-format`; the others at `warn`,
    /// as text.
    pub fn logging(&self) -> Logging {
        match &self.command {
            Command::Serve(args) => Logging {
                json: args.log_format.as_deref() == Some("json"),
                default_level: "info",
            },
            _ => Logging {
                json: false,
                default_level: "warn",
            },
        }
    }
}

/// A parsed command, with `serve`'s settings resolved: they must be known before the
/// runtime is built, since they choose its worker threads.
pub struct Prepared(Ready);

enum Ready {
    // Both boxed: either is large, and the enum is built once.
    Serve(Box<ServeSettings>),
    Other(Box<Command>),
}

/// Resolves `serve`'s settings (reading its config file); other commands pass through.
pub fn prepare(cli: Cli) -> Result<Prepared> {
    Ok(Prepared(match cli.command {
        Command::Serve(args) => {
            let file = ServeFile::load(&args)?;
            Ready::Serve(Box::new(serve::resolve(args, file)?))
        }
        other => Ready::Other(Box::new(other)),
    }))
}

impl Prepared {
    /// The runtime's worker threads: `serve --threads` (or its config file), else tokio's
    /// default.
    pub fn worker_threads(&self) -> Option<usize> {
        match &self.0 {
            Ready::Serve(settings) => settings.threads,
            Ready::Other(_) => None,
        }
    }

    /// Runs the command; returns its exit code.
    pub async fn run(self) -> Result<ExitCode> {
        match self.0 {
            Ready::Serve(settings) => serve::serve(*settings).await.map(|()| ExitCode::SUCCESS),
            Ready::Other(command) => run(*command).await,
        }
    }
}

fn parse_ops(words: &[String]) -> Result<Vec<KvOp>> {
    let mut ops = Vec::new();
    let mut rest = words;
    while let Some((word, tail)) = rest.split_first() {
        match (word.as_str(), tail) {
            ("set", [key, value, more @ ..]) => {
                ops.push(KvOp::Set {
                    key: key.clone(),
                    value: value.clone(),
                });
                rest = more;
            }
            ("del", [key, more @ ..]) => {
                ops.push(KvOp::Delete { key: key.clone() });
                rest = more;
            }
            _ => bail!("expected `set KEY VALUE` or `del KEY`, found {word:?}"),
        }
    }
    Ok(ops)
}

async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Log { command } => log::run_log(command),
        Command::Failover { command } => plan::run(command).await,
        Command::Demo { dir } => demo::run(dir.as_deref()).await.map(|()| ExitCode::SUCCESS),
        Command::Serve(_) => unreachable!("prepared as Ready::Serve"),
        Command::Certs { command } => run_certs(command),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "repnode",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Db {
            command:
                DbCommand::Promote {
                    name,
                    quorum,
                    sync_acks,
                    force,
                },
            client,
        } => promote::run(&client, &name, (quorum, sync_acks), force).await,
        Command::Db {
            command: DbCommand::Switchover { name, to },
            client,
        } => switchover::run(&client, &name, &to).await,
        Command::Db {
            command:
                DbCommand::Create {
                    name,
                    settings,
                    once,
                    wait: true,
                },
            client,
        } => wait::create_and_wait(&client, &name, once.apply(settings)).await,
        Command::Db { command, client } => {
            // A change goes to the first server only: another would change the wrong one.
            let target = match &command {
                DbCommand::List | DbCommand::Members { remove: None, .. } => Target::AnyReachable,
                DbCommand::Digest { .. } => Target::First,
                _ => Target::First,
            };
            let request = match command {
                DbCommand::Create {
                    name,
                    settings,
                    once,
                    ..
                } => Request::CreateDb {
                    name,
                    settings: once.apply(settings),
                },
                DbCommand::Update {
                    name,
                    settings,
                    allow_rewind,
                } => Request::UpdateDb {
                    name,
                    settings: settings.into(),
                    allow_rewind,
                },
                DbCommand::List => Request::ListDbs,
                DbCommand::Load { name } => Request::LoadDb { name },
                DbCommand::Unload { name } => Request::UnloadDb { name },
                DbCommand::Delete { name } => Request::DeleteDb { name },
                DbCommand::Members { name, remove } => Request::Members { db: name, remove },
                DbCommand::Compact { name } => Request::CompactDb { db: name },
                DbCommand::Digest { name } => Request::StateDigest { db: name },
                DbCommand::Promote { .. } | DbCommand::Switchover { .. } => {
                    unreachable!("matched above")
                }
            };
            // A change whose answer is lost may have been made: exit 3, as a write.
            let is_change = !matches!(
                request,
                Request::ListDbs
                    | Request::StateDigest { .. }
                    | Request::Members { remove: None, .. }
            );
            run_client_to(&client, request, is_change, target).await
        }
        Command::Put {
            db,
            key,
            value,
            client,
        } => {
            let ops = vec![KvOp::Set { key, value }];
            run_client(&client, Request::Write { db, ops }, true).await
        }
        Command::Del { db, key, client } => {
            let ops = vec![KvOp::Delete { key }];
            run_client(&client, Request::Write { db, ops }, true).await
        }
        Command::Tx { db, client, ops } => {
            let ops = parse_ops(&ops)?;
            run_client(&client, Request::Write { db, ops }, true).await
        }
        Command::Get {
            db,
            key,
            min_tx,
            primary,
            client,
        } => {
            let wait_ms = client
                .timeout
                .map(|t| (t * 1000.0) as u64)
                .unwrap_or(30_000);
            let request = Request::Get {
                db,
                key,
                min_tx,
                wait_ms,
                primary,
            };
            let target = if primary {
                Target::Primary
            } else {
                Target::AnyReachable
            };
            run_client_to(&client, request, false, target).await
        }
        Command::Bench {
            db,
            clients,
            duration,
            count,
            value_size,
            key_space,
            progress,
            client,
        } => {
            let options = bench::BenchOptions {
                server: client.server.clone(),
                db,
                clients,
                duration: duration.map(Duration::from_secs_f64),
                count,
                value_size,
                key_space,
                progress: progress || !client.json,
            };
            let identity = client.identity()?;
            bench::run_and_print(options, identity, client.json).await
        }
        Command::Status { db, client } => run_client(&client, Request::Status { db }, false).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument of every command, with the path of commands that leads to it, that has
    /// no help text.
    fn undocumented(command: &clap::Command, path: &str, found: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                found.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            if sub.get_about().is_none() && sub.get_name() != "help" {
                found.push(format!("{path} {} (the command itself)", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }

    #[test]
    fn every_command_and_argument_has_help() {
        use clap::CommandFactory;
        let command = Cli::command();
        command.clone().debug_assert();
        let mut found = Vec::new();
        undocumented(&command, "repnode", &mut found);
        assert!(found.is_empty(), "without help text: {found:#?}");
    }

    fn words(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn tx_operations_parse_in_order() {
        let ops = parse_ops(&words("set a 1 del b set c 3")).expect("parses");
        assert_eq!(
            ops,
            vec![
                KvOp::Set {
                    key: "a".into(),
                    value: "1".into()
                },
                KvOp::Delete { key: "b".into() },
                KvOp::Set {
                    key: "c".into(),
                    value: "3".into()
                },
            ]
        );
        assert!(parse_ops(&words("set a")).is_err());
        assert!(parse_ops(&words("put a 1")).is_err());
    }
}
