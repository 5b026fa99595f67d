//! `repnode`: the reference replication node: server, admin and client CLI.
//!
//! This file only sets up logging, parses the command line, builds the runtime and turns the
//! outcome into an exit code; the commands are in `cli/`, the node in the `node` library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.logging());
    let json = cli.wants_json();
    let outcome = cli::prepare(cli).and_then(|command| {
        let mut runtime = tokio::runtime::Builder::new_multi_thread();
        // Chosen before the runtime exists, hence resolved (config file read) before it.
        if let Some(threads) = command.worker_threads() {
            runtime.worker_threads(threads);
        }
        runtime.enable_all().build()?.block_on(command.run())
    });
    match outcome {
        Ok(code) => code,
        Err(error) => cli::exit::report(&error, json),
    }
}

/// Logs to stderr: as text (coloured only on a terminal) or one JSON object per line, at
/// `RUST_LOG`'s level, else the command's default (`info` for a server, `warn` for the
/// others, whose output is their answer).
fn init_logging(logging: cli::Logging) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| logging.default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if logging.json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}
