//! `repnode db promote`: the checks and the promotion are the library's
//! ([`node::promotion`]); this prints the outcome and chooses the exit code: 4 for a refusal
//! (nothing changed), 3 when the request was sent and its answer did not come (it may have
//! happened: `repnode status` tells).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use node::client::Outcome;
use node::promotion::{self, PromoteError};

use super::ClientArgs;
use super::exit::Exit;
use super::output::{Rendered, render};

/// Promotes `name` on the first `--server`, comparing with the others unless `force`.
pub async fn run(
    args: &ClientArgs,
    name: &str,
    policy: (Option<String>, Option<u32>),
    force: bool,
) -> Result<ExitCode> {
    let identity = args.identity()?;
    let timeout = args.timeout.map(Duration::from_secs_f64);
    let servers = args.servers();
    match promotion::promote(&servers, name, policy, force, &identity, timeout).await {
        Ok(done) => {
            for (server, why) in &done.skipped {
                eprintln!("warning: {server} did not answer ({why}); not compared");
            }
            let outcome = Outcome::Answered(done.response);
            Ok(render(outcome, false, args.json)?.print())
        }
        Err(error) => {
            let exit = match &error {
                _ if error.is_refusal() => Exit::Refused,
                PromoteError::Unknown { .. } => Exit::UnknownOutcome,
                _ => Exit::Failed,
            };
            Ok(Rendered::error(error.to_string(), exit, args.json).print())
        }
    }
}
