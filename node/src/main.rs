//! `repnode`: the reference replication node: server, admin and client CLI.
//!
//! This file only sets up logging, parses the command line, builds the runtime and turns the
//! outcome into an exit code; the commands are in `cli/`, the node in the `node` library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let outcome = cli::prepare(Cli::parse()).and_then(|command| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        // Chosen before the runtime exists, hence resolved (config file read) before it.
        if let Some(threads) = command.worker_threads() {
            runtime.worker_threads(threads);
        }
        runtime.enable_all().build()?.block_on(command.run())
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
