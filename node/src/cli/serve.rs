//! `repnode serve`: its flags, the resolution of its settings from flags, environment and
//! config file, and running the server until a signal.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use node::server::Server;
use node::wire::DbSettings;
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

/// The contents of `serve --config FILE`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    name: Option<String>,
    dir: Option<PathBuf>,
    listen: Option<String>,
    tls_dir: Option<PathBuf>,
    metrics_listen: Option<String>,
    threads: Option<usize>,
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
    pub metrics_listen: Option<String>,
    pub threads: Option<usize>,
    /// `--default-db` and the settings it is ensured with.
    pub default_db: Option<(String, DbSettings)>,
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
    Ok(ServeSettings {
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
        metrics_listen,
        default_db,
        ..
    } = settings;
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
    if let Some((db, settings)) = default_db {
        server.ensure_database(&db, settings).await?;
    }
    if let Some(metrics) = metrics_listen {
        let listener = tokio::net::TcpListener::bind(&metrics)
            .await
            .with_context(|| format!("--metrics-listen {metrics}"))?;
        let server = server.clone();
        tokio::spawn(node::metrics::serve(listener, move || {
            let server = server.clone();
            async move { server.metric_snapshots().await }
        }));
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
    fn unknown_keys_in_the_file_are_refused() {
        assert!(toml::from_str::<ServeFile>("default_db = \"app\"").is_err());
    }
}
