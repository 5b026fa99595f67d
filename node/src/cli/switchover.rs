//! `repnode db switchover`: the steps are the library's ([`node::switchover`]); this prints
//! the outcome and chooses the exit code: 4 for a refusal (nothing changed), 1 for a failure
//! before the promotion (writes restored on the primary), 5 for one after it (the target is
//! the primary: what remains is printed).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use node::switchover::{self, DEFAULT_CATCH_UP, SwitchoverError};

use super::ClientArgs;
use super::exit::Exit;
use super::output::Rendered;

/// Switches `name` over from the first `--server` to `to`.
pub async fn run(args: &ClientArgs, name: &str, to: &str) -> Result<ExitCode> {
    let identity = args.identity()?;
    let catch_up = args
        .timeout
        .map(Duration::try_from_secs_f64)
        .transpose()
        .context("--timeout")?
        .unwrap_or(DEFAULT_CATCH_UP);
    let servers = args.servers();
    let from = servers.first().map(String::as_str).unwrap_or_default();
    match switchover::switchover(from, to, name, &identity, catch_up).await {
        Ok(done) => {
            let unavailable_ms = done.unavailable.as_secs_f64() * 1000.0;
            let line = if args.json {
                serde_json::json!({
                    "database": done.db,
                    "from": done.from,
                    "to": done.to,
                    "epoch": done.epoch,
                    "unavailable_ms": (unavailable_ms * 1000.0).round() / 1000.0,
                    "committed": done.committed,
                })
                .to_string()
            } else {
                format!(
                    "{} switched over from {} to {}: primary in epoch {}, writes refused for \
                     {unavailable_ms:.1} ms\ncommitted: tx_id {}, hash {}",
                    done.db,
                    done.from,
                    done.to,
                    done.epoch,
                    done.committed.tx_id,
                    done.committed.hash
                )
            };
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            let exit = match &error {
                _ if error.is_refusal() => Exit::Refused,
                SwitchoverError::Incomplete { .. } => Exit::Incomplete,
                SwitchoverError::Aborted { .. } | SwitchoverError::Refused(_) => Exit::Failed,
            };
            Ok(Rendered::error(error.to_string(), exit, args.json).print())
        }
    }
}
