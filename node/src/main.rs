//! `repnode`: the reference replication node: server, admin and client CLI.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use node::client::{Client, Outcome};
use node::kv::KvOp;
use node::server::Server;
use node::wire::{DbSettings, ErrorKind, Request, Response};
use serde::Deserialize;
use transport_quic::{QuicOptions, QuicTransport, TlsIdentity};

/// Exit code of a write whose outcome is unknown.
const EXIT_UNKNOWN: u8 = 3;

#[derive(Parser)]
#[command(
    name = "repnode",
    version,
    about = "The reference node of the replication framework"
)]
struct Cli {
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
        #[arg(long)]
        db: String,
        key: String,
        value: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reads a key.
    Get {
        #[arg(long)]
        db: String,
        key: String,
        /// Wait until this transaction is applied here first (read your writes on a replica).
        #[arg(long)]
        min_tx: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deletes a key.
    Del {
        #[arg(long)]
        db: String,
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Writes an atomic transaction: `tx --db D set K V del K ...`.
    Tx {
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
    /// Loads a running server: N clients writing single keys; throughput and latency
    /// percentiles (HDR histogram) at the end.
    Bench {
        #[arg(long)]
        db: String,
        /// Concurrent clients, each on its own connection.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Run this many seconds...
        #[arg(long)]
        duration: Option<f64>,
        /// ...or this many writes in all.
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
    /// Shows a database's replication status.
    Status {
        #[arg(long)]
        db: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// This server's identity: its certificate and the name quorum policies use.
    #[arg(long, env = "REPNODE_NAME")]
    name: Option<String>,
    /// The data directory.
    #[arg(long, env = "REPNODE_DIR")]
    dir: Option<PathBuf>,
    /// The UDP address to listen on.
    #[arg(long, env = "REPNODE_LISTEN")]
    listen: Option<String>,
    /// Where ca.pem, NAME.pem and NAME.key are.
    #[arg(long, env = "REPNODE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// A database to create (or keep) at startup, as immudb's default database.
    #[arg(long, env = "REPNODE_DEFAULT_DB")]
    default_db: Option<String>,
    /// Make the default database a replica of HOST:PORT/DB (immudb's
    /// `--replication-primary-*` startup flags).
    #[arg(long, env = "REPNODE_DEFAULT_REPLICA_OF", requires = "default_db")]
    default_replica_of: Option<String>,
    /// The default database's replica acknowledgements per commit (primary only).
    #[arg(long, env = "REPNODE_DEFAULT_SYNC_ACKS", requires = "default_db")]
    default_sync_acks: Option<u32>,
    /// Serve Prometheus metrics over HTTP on this TCP address.
    #[arg(long, env = "REPNODE_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Worker threads of the async runtime (default: one per CPU). Servers that share a
    /// machine's cores with other servers, such as a local test cluster, do better with fewer:
    /// idle workers waking one another costs context switches on every request.
    #[arg(long, env = "REPNODE_THREADS")]
    threads: Option<usize>,
    /// A TOML file with any of: name, dir, listen, tls_dir, metrics_listen, threads (flags
    /// and environment win).
    #[arg(long, env = "REPNODE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServeFile {
    name: Option<String>,
    dir: Option<PathBuf>,
    listen: Option<String>,
    tls_dir: Option<PathBuf>,
    metrics_listen: Option<String>,
    threads: Option<usize>,
}

impl ServeFile {
    fn load(path: Option<&PathBuf>) -> Result<ServeFile> {
        let Some(path) = path else {
            return Ok(ServeFile::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// The server, HOST:PORT.
    #[arg(
        long,
        env = "REPNODE_SERVER",
        default_value = "127.0.0.1:7440",
        global = true
    )]
    server: String,
    /// Where ca.pem, client.pem and client.key are.
    #[arg(long, env = "REPNODE_TLS_DIR", default_value = "certs", global = true)]
    tls_dir: PathBuf,
    /// Give up waiting after this many seconds (a write is then reported as of unknown outcome).
    #[arg(long, env = "REPNODE_TIMEOUT", global = true)]
    timeout: Option<f64>,
    /// Print one JSON object.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum LogCommand {
    /// Prints one line per transaction: id, epoch, hash, payload size.
    Dump {
        /// The server's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// The database.
        #[arg(long)]
        db: String,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Checks every checksum, index and the hash chain; exits non-zero naming the first
    /// problem's file, offset and reason.
    Verify {
        /// The server's data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Only this database (default: all).
        #[arg(long)]
        db: Option<String>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Writes a development CA (ca.pem), a certificate and key per node, and client.pem/.key.
    Init {
        /// Where to write them.
        #[arg(long, env = "REPNODE_TLS_DIR")]
        dir: PathBuf,
        /// Node names, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Args, Clone, Default)]
struct SettingsArgs {
    /// HOST:PORT/DB of the source; absent: a primary.
    #[arg(long)]
    replica_of: Option<String>,
    /// Replica acknowledgements a commit needs (0: asynchronous).
    #[arg(long)]
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
    /// `file` (default) or `mem`.
    #[arg(long)]
    store: Option<String>,
    /// A replica fed by an external replicator (see examples/external_replicator.rs) rather
    /// than by a replicator of its own.
    #[arg(long)]
    external_replicator: bool,
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
            store: args.store,
            external_replicator: args.external_replicator,
        }
    }
}

#[derive(Subcommand)]
enum DbCommand {
    /// Creates a database.
    Create {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Changes a database's settings; a new quorum applies at once, to waiting writes too.
    Update {
        name: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Lists databases and their settings.
    List,
    /// Starts serving an unloaded database.
    Load { name: String },
    /// Stops serving a database, keeping its data.
    Unload { name: String },
    /// Deletes an unloaded database and its data.
    Delete { name: String },
}

async fn serve(args: ServeArgs, file: ServeFile) -> Result<()> {
    let name = args
        .name
        .or(file.name)
        .ok_or_else(|| anyhow!("--name is required"))?;
    let dir = args
        .dir
        .or(file.dir)
        .ok_or_else(|| anyhow!("--dir is required"))?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:7440".into());
    let tls_dir = args
        .tls_dir
        .or(file.tls_dir)
        .unwrap_or_else(|| "certs".into());
    let identity = TlsIdentity::load(&tls_dir, &name)?;
    let transport = QuicTransport::bind(
        listen
            .parse()
            .with_context(|| format!("--listen {listen}"))?,
        identity,
        QuicOptions::default(),
    )
    .await?;
    let server = Server::start(&name, &dir, transport).await?;
    if let Some(default_db) = &args.default_db {
        let settings = DbSettings {
            replica_of: args.default_replica_of.clone(),
            sync_acks: args.default_sync_acks,
            ..DbSettings::default()
        };
        server.ensure_database(default_db, settings).await?;
    }
    if let Some(metrics) = args.metrics_listen.or(file.metrics_listen) {
        let listener = tokio::net::TcpListener::bind(&metrics)
            .await
            .with_context(|| format!("--metrics-listen {metrics}"))?;
        tokio::spawn(node::metrics::serve(listener, server.clone()));
    }
    eprintln!(
        "repnode {name} serving {} from {}",
        server.local_addr()?,
        dir.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("repnode {name}: shutting down");
    server.shutdown().await;
    Ok(())
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

/// Runs one client request and prints its outcome; returns the exit code.
async fn run_client(args: &ClientArgs, request: Request, is_write: bool) -> Result<ExitCode> {
    let identity = TlsIdentity::load(&args.tls_dir, "client")?;
    let mut client = Client::connect(&args.server, identity).await?;
    let timeout = args.timeout.map(Duration::from_secs_f64);
    let outcome = client.request(&request, timeout).await?;
    let print = |value: serde_json::Value, text: String| {
        if args.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    };
    match outcome {
        Outcome::Unknown(why) if is_write => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"outcome": "unknown", "error": why})
                );
            }
            eprintln!("outcome unknown: {why}; the write may or may not have committed");
            Ok(ExitCode::from(EXIT_UNKNOWN))
        }
        Outcome::Unknown(why) => {
            eprintln!("error: {why}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Answered(Response::Error { kind, message }) => {
            if kind == ErrorKind::Unknown && is_write {
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"outcome": "unknown", "error": message})
                    );
                }
                eprintln!("outcome unknown: {message}");
                return Ok(ExitCode::from(EXIT_UNKNOWN));
            }
            eprintln!("error: {message}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Answered(Response::Written { tx_id, hash, ack }) => {
            print(
                serde_json::json!({"tx_id": tx_id, "hash": hash, "ack": ack}),
                format!("tx {tx_id} committed ({ack}), hash {hash}"),
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Answered(Response::Value { key, value, tx_id }) => {
            let text = match &value {
                Some(value) => format!("{key} = {value} (as of tx {tx_id})"),
                None => format!("{key} not found (as of tx {tx_id})"),
            };
            print(
                serde_json::json!({"key": key, "value": value, "tx_id": tx_id}),
                text,
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Answered(Response::Status(report)) => {
            let mut text = format!(
                "database: {}\nrole: {}\nepoch: {}\ntxID: {}\nhash: {}\nprecommittedTxID: {}\nprecommittedHash: {}\nwaiting writes: {}",
                report.database,
                report.role,
                report.epoch,
                report.committed.tx_id,
                report.committed.hash,
                report.precommitted.tx_id,
                report.precommitted.hash,
                report.waiting_writes
            );
            if let Some(upstream) = &report.upstream {
                text.push_str(&format!("\nsource link: {upstream}"));
            }
            if let Some(error) = &report.last_error {
                text.push_str(&format!("\nlast error: {error}"));
            }
            for r in &report.replicas {
                text.push_str(&format!(
                    "\nreplica {} at {}: acked tx {}, lag {} txs / {} ms, {}",
                    r.id,
                    r.address,
                    r.acked_tx_id,
                    r.lag_txs,
                    r.lag_ms,
                    if r.connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                ));
            }
            print(serde_json::to_value(&report)?, text);
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Answered(Response::Dbs(dbs)) => {
            let text = dbs
                .iter()
                .map(|(name, loaded, s)| {
                    let state = if *loaded { "loaded" } else { "unloaded" };
                    let settings = toml::to_string(s).unwrap_or_default().replace('\n', " ");
                    format!("{name}\t{state}\t{settings}")
                })
                .collect::<Vec<_>>()
                .join("\n");
            let value: Vec<serde_json::Value> = dbs
                .iter()
                .map(|(name, loaded, s)| serde_json::json!({"name": name, "loaded": loaded, "settings": s}))
                .collect();
            print(serde_json::Value::Array(value), text);
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Answered(Response::Ok) => {
            print(serde_json::json!({"ok": true}), "ok".into());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn log_dir(dir: &std::path::Path, db: &str) -> PathBuf {
    dir.join("databases").join(db).join("log")
}

fn run_log(command: LogCommand) -> Result<ExitCode> {
    match command {
        LogCommand::Dump { dir, db, json } => {
            let report = store_file::verify(&log_dir(&dir, &db), |tx| {
                if json {
                    let line = serde_json::json!({"tx_id": tx.id.0, "epoch": tx.epoch.0, "hash": tx.hash.to_hex(), "size": tx.payload.len()});
                    println!("{line}");
                } else {
                    println!(
                        "tx {}	epoch {}	hash {}	size {}",
                        tx.id,
                        tx.epoch,
                        tx.hash,
                        tx.payload.len()
                    );
                }
            })?;
            if let Some(torn) = report.torn_tail {
                eprintln!(
                    "note: a torn record at the end ({torn}) will be cut off when the log is opened"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Verify { dir, db } => {
            let names: Vec<String> = match db {
                Some(db) => vec![db],
                None => {
                    let mut names: Vec<String> = std::fs::read_dir(dir.join("databases"))
                        .with_context(|| format!("{} holds no databases", dir.display()))?
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    names.sort();
                    names
                }
            };
            let mut failed = false;
            for name in names {
                match store_file::verify(&log_dir(&dir, &name), |_| {}) {
                    Ok(report) => {
                        println!(
                            "{name}: ok, {} transactions in {} segments, last tx {} hash {}",
                            report.transactions,
                            report.segments,
                            report.last.tx_id,
                            report.last.hash
                        );
                        if let Some(torn) = report.torn_tail {
                            println!(
                                "{name}: note: a torn record at the end ({torn}) will be cut off when the log is opened"
                            );
                        }
                    }
                    Err(error) => {
                        eprintln!("{name}: {error}");
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Runs a command; `serve_file` is `serve --config`'s contents, read before the runtime started.
async fn run(cli: Cli, serve_file: ServeFile) -> Result<ExitCode> {
    match cli.command {
        Command::Log { command } => run_log(command),
        Command::Demo { dir } => node::demo::run(dir.as_deref())
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Serve(args) => serve(args, serve_file).await.map(|()| ExitCode::SUCCESS),
        Command::Certs {
            command: CertsCommand::Init { dir, nodes },
        } => {
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            transport_quic::write_dev_pki(&dir, &names)?;
            let files: Vec<String> = names.iter().map(|n| format!("{n}.pem/.key")).collect();
            println!(
                "wrote ca.pem, {} and client.pem/.key to {}",
                files.join(", "),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Db { command, client } => {
            let request = match command {
                DbCommand::Create { name, settings } => Request::CreateDb {
                    name,
                    settings: settings.into(),
                },
                DbCommand::Update { name, settings } => Request::UpdateDb {
                    name,
                    settings: settings.into(),
                },
                DbCommand::List => Request::ListDbs,
                DbCommand::Load { name } => Request::LoadDb { name },
                DbCommand::Unload { name } => Request::UnloadDb { name },
                DbCommand::Delete { name } => Request::DeleteDb { name },
            };
            run_client(&client, request, false).await
        }
        Command::Put {
            db,
            key,
            value,
            client,
        } => {
            run_client(
                &client,
                Request::Write {
                    db,
                    ops: vec![KvOp::Set { key, value }],
                },
                true,
            )
            .await
        }
        Command::Del { db, key, client } => {
            run_client(
                &client,
                Request::Write {
                    db,
                    ops: vec![KvOp::Delete { key }],
                },
                true,
            )
            .await
        }
        Command::Tx { db, client, ops } => {
            run_client(
                &client,
                Request::Write {
                    db,
                    ops: parse_ops(&ops)?,
                },
                true,
            )
            .await
        }
        Command::Get {
            db,
            key,
            min_tx,
            client,
        } => {
            let wait_ms = client
                .timeout
                .map(|t| (t * 1000.0) as u64)
                .unwrap_or(30_000);
            run_client(
                &client,
                Request::Get {
                    db,
                    key,
                    min_tx,
                    wait_ms,
                },
                false,
            )
            .await
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
            let options = node::bench::BenchOptions {
                server: client.server.clone(),
                db,
                clients,
                duration: duration.map(Duration::from_secs_f64),
                count,
                value_size,
                key_space,
                progress: progress || !client.json,
            };
            let report =
                node::bench::run(options, TlsIdentity::load(&client.tls_dir, "client")?).await?;
            if client.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} clients: {} writes in {:.1} s = {:.0} writes/s; latency ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
                    report.clients,
                    report.writes,
                    report.seconds,
                    report.writes_per_second,
                    report.p50_ms,
                    report.p90_ms,
                    report.p99_ms,
                    report.p999_ms,
                    report.max_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { db, client } => run_client(&client, Request::Status { db }, false).await,
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = serve_file(&cli).and_then(|serve_file| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = worker_threads(&cli, &serve_file)? {
            runtime.worker_threads(threads);
        }
        runtime.enable_all().build()?.block_on(run(cli, serve_file))
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `serve --config`'s contents (empty for other commands or without the flag).
fn serve_file(cli: &Cli) -> Result<ServeFile> {
    match &cli.command {
        Command::Serve(args) => ServeFile::load(args.config.as_ref()),
        _ => Ok(ServeFile::default()),
    }
}

/// The runtime's worker threads: `serve --threads` (or its config file), else tokio's default.
fn worker_threads(cli: &Cli, serve_file: &ServeFile) -> Result<Option<usize>> {
    let Command::Serve(args) = &cli.command else {
        return Ok(None);
    };
    match args.threads.or(serve_file.threads) {
        Some(0) => Err(anyhow!("--threads must be at least 1")),
        threads => Ok(threads),
    }
}
