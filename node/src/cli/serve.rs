//! `repnode serve`: its flags, the resolution of its settings from flags, environment and
//! config file, and running the server until a signal.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use coordinator_etcd::{EtcdCoordinator, EtcdOptions, EtcdTls};
use node::server::{Server, ServerOptions};
use node::wire::DbSettings;
use replication_core::coordinator::Coordinator;
use serde::Deserialize;
use transport_quic::{QuicOptions, QuicTransport, TlsIdentity};

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// This server's identity: its certificate and the name quorum policies use.
    #[arg(long, env = "REPNODE_NAME")]
    name: Option<String>,
    /// The data directory.
    #[arg(long, env = "REPNODE_DIR")]
    dir: Option<PathBuf>,
    /// The UDP address to listen on.
    #[arg(long, env = "REPNODE_LISTEN")]
    listen: Option<String>,
    /// Where ca.pem, NAME.pem and NAME.key are (as `certs init` writes them).
    #[arg(long, env = "REPNODE_TLS_DIR")]
    tls_dir: Option<PathBuf>,
    /// An existing PKI instead of `--tls-dir`: the cluster CA's certificate (PEM), with
    /// `--cert` and `--key`.
    #[arg(long, env = "REPNODE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// This server's certificate (PEM; its common name is `--name`), with `--ca-cert`.
    #[arg(long, env = "REPNODE_CERT")]
    cert: Option<PathBuf>,
    /// This server's private key (PEM), with `--ca-cert`.
    #[arg(long, env = "REPNODE_KEY")]
    key: Option<PathBuf>,
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
    /// The coordinator of automatic failover: `etcd=HOST:PORT[,HOST:PORT...]` (databases
    /// created with `--failover auto` need one).
    #[arg(long, env = "REPNODE_COORDINATOR", value_name = "etcd=HOST:PORT,...")]
    coordinator: Option<String>,
    /// The cluster's name in the coordinator: keys live under `/repnode/<cluster>/`.
    #[arg(long, env = "REPNODE_CLUSTER")]
    cluster: Option<String>,
    /// `HOST:PORT` other servers reach this one at, as published to the coordinator
    /// (default: the `--listen` address).
    #[arg(long, env = "REPNODE_ADVERTISE")]
    advertise: Option<String>,
    /// etcd's CA certificate (PEM), for mutual TLS to etcd.
    #[arg(long, env = "REPNODE_COORDINATOR_CACERT", requires_all = ["coordinator_cert", "coordinator_key"])]
    coordinator_cacert: Option<PathBuf>,
    /// This server's client certificate for etcd (PEM).
    #[arg(
        long,
        env = "REPNODE_COORDINATOR_CERT",
        requires = "coordinator_cacert"
    )]
    coordinator_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "REPNODE_COORDINATOR_KEY", requires = "coordinator_cacert")]
    coordinator_key: Option<PathBuf>,
    /// Send snapshots to replicas at most this fast, in bytes per second, per replica (as
    /// `pg_basebackup --max-rate`): a replica bootstrapping does not starve the others.
    #[arg(
        long,
        env = "REPNODE_SNAPSHOT_MAX_RATE",
        value_name = "BYTES_PER_SECOND"
    )]
    snapshot_max_rate: Option<u64>,
    /// The size at which a log file (segment) is sealed and a new one begun (default 64 MiB):
    /// compaction removes whole segments, so smaller ones let retention cut closer.
    #[arg(long, env = "REPNODE_LOG_SEGMENT_BYTES", value_name = "BYTES")]
    log_segment_bytes: Option<u64>,
    /// How long a write waits for its commit before it is answered as of unknown outcome (it
    /// may still commit), in seconds; 0: without limit. Default 30.
    #[arg(long, env = "REPNODE_WRITE_TIMEOUT", value_name = "SECONDS")]
    write_timeout: Option<f64>,
    /// `/readyz` counts a replica ready while it streams and trails its source by at most
    /// this many seconds. Default 10.
    #[arg(long, env = "REPNODE_READY_MAX_LAG", value_name = "SECONDS")]
    ready_max_lag: Option<f64>,
    /// Connections one peer identity may hold open at once (default 256); more are closed
    /// as they arrive, and logged with the peer.
    #[arg(long, env = "REPNODE_MAX_CONNECTIONS_PER_PEER", value_name = "N")]
    max_connections_per_peer: Option<usize>,
    /// The client identities (certificate common names) that may create, change and delete
    /// databases, promote and switch over, comma separated (default: `client`, the identity
    /// `certs init` issues). Others get what each database grants (`--readers`, `--writers`).
    #[arg(
        long,
        env = "REPNODE_ADMINS",
        value_delimiter = ',',
        value_name = "ID,..."
    )]
    admins: Option<Vec<String>>,
    /// Log lines as `text` (default; coloured only on a terminal) or `json` (one object per
    /// line, for log collectors). `RUST_LOG` sets the level (default `info`).
    #[arg(long, env = "REPNODE_LOG_FORMAT", value_parser = ["text", "json"])]
    pub(crate) log_format: Option<String>,
    /// A TOML file with any of: name, dir, listen, tls_dir, metrics_listen, threads,
    /// coordinator, cluster, advertise, coordinator_cacert, coordinator_cert,
    /// coordinator_key, snapshot_max_rate, log_segment_bytes, write_timeout, ready_max_lag,
    /// ca_cert, cert, key, admins, max_connections_per_peer (flags and environment win).
    #[arg(long, env = "REPNODE_CONFIG")]
    config: Option<PathBuf>,
}

/// The contents of `serve --config FILE`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    name: Option<String>,
    dir: Option<PathBuf>,
    listen: Option<String>,
    tls_dir: Option<PathBuf>,
    ca_cert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    metrics_listen: Option<String>,
    threads: Option<usize>,
    coordinator: Option<String>,
    cluster: Option<String>,
    advertise: Option<String>,
    coordinator_cacert: Option<PathBuf>,
    coordinator_cert: Option<PathBuf>,
    coordinator_key: Option<PathBuf>,
    snapshot_max_rate: Option<u64>,
    log_segment_bytes: Option<u64>,
    write_timeout: Option<f64>,
    ready_max_lag: Option<f64>,
    admins: Option<Vec<String>>,
    max_connections_per_peer: Option<usize>,
}

impl ServeFile {
    /// Reads `--config`'s file, or nothing without the flag.
    pub fn load(args: &ServeArgs) -> Result<ServeFile> {
        let Some(path) = &args.config else {
            return Ok(ServeFile::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What `serve` runs with, once flags and environment (merged by clap, flags first) and the
/// config file are combined.
#[derive(Debug, PartialEq)]
pub struct ServeSettings {
    pub name: String,
    pub dir: PathBuf,
    /// Parsed when binding, after the TLS identity loads: a bad TLS directory is reported
    /// before a bad address.
    pub listen: String,
    pub tls_dir: PathBuf,
    /// `--ca-cert`, `--cert` and `--key`, when an existing PKI is given.
    pub tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    pub metrics_listen: Option<String>,
    pub threads: Option<usize>,
    /// `--default-db` and the settings it is ensured with.
    pub default_db: Option<(String, DbSettings)>,
    /// The coordinator of automatic failover, when given.
    pub coordinator: Option<CoordinatorSettings>,
    /// `--advertise`.
    pub advertise: Option<String>,
    /// `--snapshot-max-rate`.
    pub snapshot_max_rate: Option<u64>,
    /// `--log-segment-bytes`.
    pub log_segment_bytes: Option<u64>,
    /// `--write-timeout`: `None` for none.
    pub write_timeout: Option<Duration>,
    /// `--ready-max-lag`.
    pub ready_max_lag: Duration,
    /// `--admins`.
    pub admins: Option<Vec<String>>,
    /// `--max-connections-per-peer`.
    pub max_connections_per_peer: Option<usize>,
}

/// The default `--write-timeout`, in seconds.
const DEFAULT_WRITE_TIMEOUT_SECS: f64 = 30.0;

/// The default `--ready-max-lag`, in seconds.
const DEFAULT_READY_MAX_LAG_SECS: f64 = 10.0;

/// A number of seconds from a flag, refused when negative or not finite.
fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow!("{flag} {value}: expected a number of seconds, 0 or more"))
}

/// `--coordinator` and what goes with it.
#[derive(Debug, PartialEq)]
pub struct CoordinatorSettings {
    /// etcd's endpoints, `HOST:PORT`.
    pub etcd: Vec<String>,
    /// `--cluster`.
    pub cluster: String,
    /// `(ca, cert, key)` files for mutual TLS to etcd.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// Parses `--coordinator etcd=HOST:PORT,...` into etcd's endpoints.
fn parse_coordinator(text: &str) -> Result<Vec<String>> {
    let endpoints = text.strip_prefix("etcd=").ok_or_else(|| {
        anyhow!("--coordinator {text:?}: expected etcd=HOST:PORT[,HOST:PORT...] (etcd is the only coordinator)")
    })?;
    let endpoints: Vec<String> = endpoints.split(',').map(|e| e.trim().to_string()).collect();
    for endpoint in &endpoints {
        let port = endpoint
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(p)) if p > 0) || endpoint.contains('/') {
            return Err(anyhow!(
                "--coordinator: {endpoint:?} is not HOST:PORT (no scheme: etcd=127.0.0.1:2379)"
            ));
        }
    }
    Ok(endpoints)
}

/// Combines flags (or their environment variables) with the config file: the flags win.
pub fn resolve(args: ServeArgs, file: ServeFile) -> Result<ServeSettings> {
    let threads = match args.threads.or(file.threads) {
        Some(0) => return Err(anyhow!("--threads must be at least 1")),
        threads => threads,
    };
    let name = args
        .name
        .or(file.name)
        .ok_or_else(|| anyhow!("--name is required"))?;
    let dir = args
        .dir
        .or(file.dir)
        .ok_or_else(|| anyhow!("--dir is required"))?;
    let default_db = args.default_db.map(|db| {
        let settings = DbSettings {
            replica_of: args.default_replica_of,
            sync_acks: args.default_sync_acks,
            ..DbSettings::default()
        };
        (db, settings)
    });
    let coordinator = match args.coordinator.or(file.coordinator) {
        None => None,
        Some(text) => {
            let cluster = args
                .cluster
                .or(file.cluster)
                .ok_or_else(|| anyhow!("--coordinator needs --cluster NAME"))?;
            let ca = args.coordinator_cacert.or(file.coordinator_cacert);
            let cert = args.coordinator_cert.or(file.coordinator_cert);
            let key = args.coordinator_key.or(file.coordinator_key);
            let tls = match (ca, cert, key) {
                (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
                (None, None, None) => None,
                _ => {
                    return Err(anyhow!(
                        "mutual TLS to etcd needs all of --coordinator-cacert, \
                         --coordinator-cert and --coordinator-key"
                    ));
                }
            };
            Some(CoordinatorSettings {
                etcd: parse_coordinator(&text)?,
                cluster,
                tls,
            })
        }
    };
    let write_timeout = seconds(
        "--write-timeout",
        args.write_timeout
            .or(file.write_timeout)
            .unwrap_or(DEFAULT_WRITE_TIMEOUT_SECS),
    )?;
    let ready_max_lag = seconds(
        "--ready-max-lag",
        args.ready_max_lag
            .or(file.ready_max_lag)
            .unwrap_or(DEFAULT_READY_MAX_LAG_SECS),
    )?;
    let tls_files = match (
        args.ca_cert.or(file.ca_cert),
        args.cert.or(file.cert),
        args.key.or(file.key),
    ) {
        (Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
        (None, None, None) => None,
        _ => return Err(anyhow!("--ca-cert, --cert and --key go together")),
    };
    if args
        .max_connections_per_peer
        .or(file.max_connections_per_peer)
        == Some(0)
    {
        return Err(anyhow!("--max-connections-per-peer must be at least 1"));
    }
    Ok(ServeSettings {
        max_connections_per_peer: args
            .max_connections_per_peer
            .or(file.max_connections_per_peer),
        admins: args.admins.or(file.admins),
        tls_files,
        write_timeout: (!write_timeout.is_zero()).then_some(write_timeout),
        ready_max_lag,
        coordinator,
        advertise: args.advertise.or(file.advertise),
        snapshot_max_rate: args.snapshot_max_rate.or(file.snapshot_max_rate),
        log_segment_bytes: args.log_segment_bytes.or(file.log_segment_bytes),
        name,
        dir,
        listen: args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:7440".into()),
        tls_dir: args
            .tls_dir
            .or(file.tls_dir)
            .unwrap_or_else(|| "certs".into()),
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        threads,
        default_db,
    })
}

/// Serves until SIGINT or SIGTERM, then shuts down cleanly.
pub async fn serve(settings: ServeSettings) -> Result<()> {
    let ServeSettings {
        name,
        dir,
        listen,
        tls_dir,
        tls_files,
        metrics_listen,
        default_db,
        coordinator,
        advertise,
        snapshot_max_rate,
        log_segment_bytes,
        write_timeout,
        ready_max_lag,
        admins,
        max_connections_per_peer,
        ..
    } = settings;
    let coordinator = match coordinator {
        Some(settings) => Some(connect_coordinator(settings).await?),
        None => None,
    };
    let identity = match &tls_files {
        Some((ca, cert, key)) => TlsIdentity::load_files(ca, cert, key)?,
        None => TlsIdentity::load(&tls_dir, &name)?,
    };
    let transport = QuicTransport::bind(
        listen
            .parse()
            .with_context(|| format!("--listen {listen}"))?,
        identity,
        QuicOptions {
            max_connections_per_peer: max_connections_per_peer
                .unwrap_or(QuicOptions::default().max_connections_per_peer),
            ..QuicOptions::default()
        },
    )
    .await?;
    let options = ServerOptions {
        coordinator,
        advertise,
        snapshot_max_rate,
        log_segment_bytes,
        write_timeout,
        ready_max_lag,
        admins,
    };
    // Bound before the server starts: a port in use stops it before it serves anything.
    let metrics_listener = match &metrics_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("--metrics-listen {address}"))?,
        ),
        None => None,
    };
    let server = Server::start_with(&name, &dir, transport, options).await?;
    if let Some((db, settings)) = default_db {
        server.ensure_database(&db, settings).await?;
    }
    let metrics_address = match metrics_listener {
        Some(listener) => {
            let address = listener.local_addr()?;
            let server = server.clone();
            tokio::spawn(node::metrics::serve(listener, move || {
                let server = server.clone();
                async move { server.metrics().await }
            }));
            Some(address)
        }
        None => None,
    };
    tracing::info!(
        server = %name,
        version = node::VERSION,
        quic = %server.local_addr()?,
        metrics = %metrics_address.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics")),
        dir = %dir.display(),
        "repnode serving"
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!(server = %name, "shutting down: waiting writes are answered, logs closed");
    server.shutdown().await;
    Ok(())
}

/// Connects to etcd (lazily: a server starts while etcd is down, and its databases under
/// automatic failover wait for it).
async fn connect_coordinator(settings: CoordinatorSettings) -> Result<Arc<dyn Coordinator>> {
    let mut options = EtcdOptions::new(settings.etcd, settings.cluster);
    if let Some((ca, cert, key)) = settings.tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        options.tls = Some(EtcdTls {
            ca_pem: read(&ca)?,
            cert_pem: read(&cert)?,
            key_pem: read(&key)?,
        });
    }
    let etcd = EtcdCoordinator::connect(options)
        .await
        .context("--coordinator")?;
    Ok(Arc::new(etcd))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command as CliCommand};

    fn args(words: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["repnode", "serve"].iter().chain(words)).expect("parses");
        match cli.command {
            CliCommand::Serve(args) => args,
            _ => unreachable!("a serve command"),
        }
    }

    fn file(text: &str) -> ServeFile {
        toml::from_str(text).expect("a config file")
    }

    const FILE: &str = r#"
        name = "file-name"
        dir = "file-dir"
        listen = "127.0.0.1:1"
        tls_dir = "file-certs"
        threads = 2
    "#;

    /// Set when this test binary runs again as the child of
    /// `flags_beat_the_environment_which_beats_the_file`.
    const CHILD: &str = "REPNODE_RESOLVE_TEST_CHILD";

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        // The environment cannot be changed in this process without `unsafe` (edition 2024,
        // and the workspace forbids it), so the test runs itself again with one.
        if std::env::var_os(CHILD).is_none() {
            let output = Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "cli::serve::tests::flags_beat_the_environment_which_beats_the_file",
                    "--nocapture",
                ])
                .env_clear()
                .env(CHILD, "1")
                .env("REPNODE_NAME", "env-name")
                .env("REPNODE_DIR", "env-dir")
                .env("REPNODE_THREADS", "3")
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{stdout}");
            assert!(
                stdout.contains("1 passed"),
                "the child ran the test: {stdout}"
            );
            return;
        }
        let settings = resolve(args(&["--name", "flag-name"]), file(FILE)).expect("resolves");
        assert_eq!(settings.name, "flag-name", "a flag beats the environment");
        assert_eq!(
            settings.dir,
            PathBuf::from("env-dir"),
            "the environment beats the file"
        );
        assert_eq!(settings.threads, Some(3), "the environment beats the file");
        assert_eq!(settings.listen, "127.0.0.1:1", "the file fills in the rest");
        assert_eq!(settings.tls_dir, PathBuf::from("file-certs"));
    }

    #[test]
    fn flags_beat_the_file_and_defaults_fill_in() {
        let settings =
            resolve(args(&["--dir", "flag-dir", "--threads", "4"]), file(FILE)).expect("resolves");
        assert_eq!(settings.name, "file-name");
        assert_eq!(settings.dir, PathBuf::from("flag-dir"));
        assert_eq!(settings.threads, Some(4));
        let settings =
            resolve(args(&["--name", "n1", "--dir", "d"]), ServeFile::default()).expect("resolves");
        assert_eq!(settings.listen, "127.0.0.1:7440");
        assert_eq!(settings.tls_dir, PathBuf::from("certs"));
        assert_eq!((settings.threads, settings.metrics_listen), (None, None));
    }

    #[test]
    fn zero_threads_are_refused_from_a_flag_or_the_file() {
        let refused = resolve(
            args(&["--name", "n1", "--dir", "d", "--threads", "0"]),
            ServeFile::default(),
        );
        assert_eq!(
            refused.expect_err("refused").to_string(),
            "--threads must be at least 1"
        );
        let refused = resolve(args(&["--name", "n1", "--dir", "d"]), file("threads = 0"));
        assert!(refused.is_err());
    }

    #[test]
    fn name_and_dir_are_required() {
        let missing = resolve(args(&["--dir", "d"]), ServeFile::default());
        assert_eq!(
            missing.expect_err("refused").to_string(),
            "--name is required"
        );
        let missing = resolve(args(&["--name", "n1"]), ServeFile::default());
        assert_eq!(
            missing.expect_err("refused").to_string(),
            "--dir is required"
        );
    }

    #[test]
    fn the_default_database_takes_its_replication_flags() {
        let settings = resolve(
            args(&[
                "--name",
                "n2",
                "--dir",
                "d",
                "--default-db",
                "app",
                "--default-replica-of",
                "127.0.0.1:7440/app",
            ]),
            ServeFile::default(),
        )
        .expect("resolves");
        let (db, settings) = settings.default_db.expect("a default database");
        assert_eq!(db, "app");
        assert_eq!(settings.replica_of.as_deref(), Some("127.0.0.1:7440/app"));
        assert_eq!(settings.sync_acks, None);
    }

    #[test]
    fn the_coordinator_is_etcd_endpoints_with_a_cluster() {
        let base = ["--name", "n1", "--dir", "d"];
        let with = |extra: &[&str]| {
            let words: Vec<&str> = base.iter().chain(extra).copied().collect();
            resolve(args(&words), ServeFile::default())
        };
        let settings = with(&[
            "--coordinator",
            "etcd=127.0.0.1:2379,10.0.0.2:2379",
            "--cluster",
            "prod",
        ])
        .expect("resolves");
        let coordinator = settings.coordinator.expect("a coordinator");
        assert_eq!(coordinator.etcd, vec!["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(coordinator.cluster, "prod");
        assert_eq!(coordinator.tls, None);
        let refused = |extra: &[&str]| with(extra).expect_err("refused").to_string();
        assert!(refused(&["--coordinator", "etcd=127.0.0.1:2379"]).contains("--cluster"));
        assert!(refused(&["--coordinator", "consul=1:2", "--cluster", "c"]).contains("etcd="));
        assert!(
            refused(&[
                "--coordinator",
                "etcd=http://127.0.0.1:2379",
                "--cluster",
                "c"
            ])
            .contains("not HOST:PORT")
        );
        assert!(
            refused(&["--coordinator", "etcd=h:0", "--cluster", "c"]).contains("not HOST:PORT")
        );
        let file =
            file("coordinator = \"etcd=h:2379\"\ncluster = \"from-file\"\nadvertise = \"h:7440\"");
        let settings = resolve(args(&base), file).expect("resolves");
        assert_eq!(
            settings.coordinator.expect("from the file").cluster,
            "from-file"
        );
        assert_eq!(settings.advertise.as_deref(), Some("h:7440"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<ServeFile>("default_db = \"app\"").is_err());
    }
}
