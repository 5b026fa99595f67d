//! `repnode`: the reference replication node.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    /// Development certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
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

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo { dir } => node::demo::run(dir.as_deref()).await,
        Command::Certs {
            command: CertsCommand::Init { dir, nodes },
        } => {
            let names: Vec<&str> = nodes.iter().map(String::as_str).collect();
            transport_quic::write_dev_pki(&dir, &names)?;
            println!(
                "wrote ca.pem, {} and client.pem/.key to {}",
                names
                    .iter()
                    .map(|n| format!("{n}.pem/.key"))
                    .collect::<Vec<_>>()
                    .join(", "),
                dir.display()
            );
            Ok(())
        }
    }
}
