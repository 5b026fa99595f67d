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
        /// One JSON object per database, one per line.
        #[arg(long)]
        json: bool,
    },
}

impl LogCommand {
    /// Whether JSON output was asked for.
    pub fn wants_json(&self) -> bool {
        match self {
            LogCommand::Dump { json, .. } | LogCommand::Verify { json, .. } => *json,
        }
    }
}

/// Runs a log tool; returns the exit code. The server must be stopped: a running one holds
/// the directory's lock, and the tools refuse.
pub fn run_log(command: LogCommand) -> Result<ExitCode> {
    let (LogCommand::Dump { dir, .. } | LogCommand::Verify { dir, .. }) = &command;
    // Held until the tool is done: no server starts on the directory meanwhile.
    let _stopped =
        node::server::ensure_stopped(dir).context("the log tools read a stopped server's files")?;
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
        LogCommand::Verify { dir, db, json } => {
            let layout = Layout::new(dir);
            let names: Vec<String> = match db {
                Some(db) => vec![db],
                None => layout
                    .names()
                    .with_context(|| format!("{} holds no databases", layout.root().display()))?,
            };
            let mut failed = false;
            for name in names {
                let verified = store_file::verify(&layout.log(&name), |_| {});
                failed |= verified.is_err();
                if json {
                    println!("{}", verify_json(&name, &verified));
                } else {
                    print_verified(&name, &verified);
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

/// One database's verification as JSON.
fn verify_json(
    name: &str,
    verified: &Result<store_file::VerifyReport, replication_core::LogError>,
) -> serde_json::Value {
    match verified {
        Ok(report) => serde_json::json!({
            "database": name,
            "ok": true,
            "transactions": report.transactions,
            "segments": report.segments,
            "last_tx_id": report.last.tx_id.0,
            "last_hash": report.last.hash.to_hex(),
            "log_base_tx_id": report.base.as_ref().map(|b| b.position.tx_id.0),
            "torn_tail": report.torn_tail.as_ref().map(ToString::to_string),
            "unfinished": report.unfinished.as_ref().map(ToString::to_string),
        }),
        Err(error) => {
            serde_json::json!({"database": name, "ok": false, "error": error.to_string()})
        }
    }
}

/// One database's verification for people: on stdout when it passed, stderr when not.
fn print_verified(
    name: &str,
    verified: &Result<store_file::VerifyReport, replication_core::LogError>,
) {
    let report = match verified {
        Ok(report) => report,
        Err(error) => {
            eprintln!("{name}: {error}");
            return;
        }
    };
    println!(
        "{name}: ok, {} transactions in {} segments, last tx {} hash {}",
        report.transactions, report.segments, report.last.tx_id, report.last.hash
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
    if let Some(torn) = &report.torn_tail {
        println!(
            "{name}: note: a torn record at the end ({torn}) will be cut off when the log is opened"
        );
    }
}
