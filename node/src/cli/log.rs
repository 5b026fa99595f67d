//! `repnode log`: offline tools that read a stopped server's logs in place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use node::server::Layout;

#[derive(Subcommand)]
pub enum LogCommand {
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

/// Runs a log tool; returns the exit code.
pub fn run_log(command: LogCommand) -> Result<ExitCode> {
    match command {
        LogCommand::Dump { dir, db, json } => {
            let report = store_file::verify(&Layout::new(dir).log(&db), |tx| {
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
            let layout = Layout::new(dir);
            let names: Vec<String> = match db {
                Some(db) => vec![db],
                None => layout
                    .names()
                    .with_context(|| format!("{} holds no databases", layout.root().display()))?,
            };
            let mut failed = false;
            for name in names {
                match store_file::verify(&layout.log(&name), |_| {}) {
                    Ok(report) => {
                        println!(
                            "{name}: ok, {} transactions in {} segments, last tx {} hash {}",
                            report.transactions,
                            report.segments,
                            report.last.tx_id,
                            report.last.hash
                        );
                        if let Some(claim) = &report.epoch_claim {
                            println!("{name}: last recorded primary: {claim}");
                        }
                        if let Some(base) = &report.base
                            && base.position.tx_id.0 > 0
                        {
                            println!(
                                "{name}: the log begins after tx {} (hash {}, epoch {}): compacted, or started from a snapshot",
                                base.position.tx_id, base.position.hash, base.epoch
                            );
                        }
                        if let Some(unfinished) = &report.unfinished {
                            println!("{name}: note: {unfinished}; opening the log finishes it");
                        }
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
