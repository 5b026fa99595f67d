//! `db create --replica-of ... --wait`: creates a replica and follows it until it has caught
//! up with its source, showing the snapshot transfer and the catch-up as `pg_basebackup -P`
//! does: a progress bar on a terminal, plain lines otherwise, and with `--json` nothing but
//! the final object.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use node::client::{Client, Outcome};
use node::wire::{DbSettings, Request, Response, StatusReport};

use super::ClientArgs;
use super::output::{EXIT_UNKNOWN, Rendered, human_bytes, progress_text, render};

/// How often the replica's status is read.
const POLL: Duration = Duration::from_millis(200);
/// How often a plain progress line is printed when not on a terminal.
const LINE_EVERY: Duration = Duration::from_secs(2);

/// Whether a replica's status says it has caught up with its source.
pub fn caught_up(status: &StatusReport) -> bool {
    status.phase.as_deref() == Some("streaming")
}

/// Creates `name` with `settings` on the first server and waits until it has caught up.
pub async fn create_and_wait(
    args: &ClientArgs,
    name: &str,
    settings: DbSettings,
) -> Result<ExitCode> {
    if settings.replica_of.is_none() {
        return Ok(Rendered::failure(
            "--wait follows a new replica until it catches up: give --replica-of".into(),
            2,
        )
        .print());
    }
    let identity = args.identity()?;
    let server = args.servers().into_iter().next().unwrap_or_default();
    let mut client = Client::connect(&server, identity).await?;
    let create = Request::CreateDb {
        name: name.to_string(),
        settings,
    };
    match client.request(&create, None).await? {
        Outcome::Answered(Response::Done { warnings }) => {
            for warning in warnings {
                eprintln!("warning: {warning}");
            }
        }
        other => return Ok(render(other, false, args.json)?.print()),
    }
    let started = Instant::now();
    let deadline = args
        .timeout
        .map(|seconds| started + Duration::from_secs_f64(seconds));
    let show = Display::new(args.json);
    loop {
        let request = Request::Status {
            db: name.to_string(),
        };
        let status = match client
            .request(&request, Some(Duration::from_secs(5)))
            .await?
        {
            Outcome::Answered(Response::Status(status)) => status,
            other => {
                show.finish();
                return Ok(render(other, false, args.json)?.print());
            }
        };
        if caught_up(&status) {
            show.finish();
            tracing::debug!(?status, "caught up");
            let elapsed = started.elapsed();
            let text = format!(
                "{name}: caught up with its source at tx {} in {:.1} s{}",
                status.committed.tx_id,
                elapsed.as_secs_f64(),
                if status.log_base > 0 {
                    format!(" (started from a snapshot up to tx {})", status.log_base)
                } else {
                    String::new()
                }
            );
            let mut value = serde_json::to_value(&*status)?;
            value["elapsed_ms"] = serde_json::json!(elapsed.as_millis() as u64);
            let out = if args.json { value.to_string() } else { text };
            println!("{out}");
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(stopped) = status
            .upstream
            .as_deref()
            .filter(|state| state.starts_with("stopped"))
        {
            show.finish();
            let message = format!("{name}: replication {stopped}");
            return Ok(Rendered::failure(message, 1).print());
        }
        show.update(&status);
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            show.finish();
            let message = format!(
                "{name} has not caught up after {:.1} s (phase {}); it goes on in the background",
                started.elapsed().as_secs_f64(),
                status.phase.as_deref().unwrap_or("unknown")
            );
            return Ok(Rendered::failure(message, EXIT_UNKNOWN).print());
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where progress goes: a bar on a terminal, lines elsewhere, nothing under `--json`.
enum Display {
    Quiet,
    Bar(ProgressBar, std::cell::Cell<Option<String>>),
    Lines(std::cell::Cell<Option<(Instant, String)>>),
}

impl Display {
    fn new(json: bool) -> Display {
        if json {
            Display::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix:>18} [{bar:30}] {msg} ({eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            Display::Bar(bar, std::cell::Cell::new(None))
        } else {
            Display::Lines(std::cell::Cell::new(None))
        }
    }

    fn update(&self, status: &StatusReport) {
        let phase = status.phase.clone().unwrap_or_else(|| "waiting".into());
        match self {
            Display::Quiet => {}
            Display::Bar(bar, shown_phase) => {
                let previous = shown_phase.replace(Some(phase.clone()));
                if previous.as_deref() != Some(phase.as_str()) {
                    bar.reset();
                    bar.set_prefix(phase.clone());
                }
                match &status.progress {
                    Some(progress) if progress.bytes_total > 0 => {
                        bar.set_length(progress.bytes_total);
                        bar.set_position(progress.bytes_done);
                        bar.set_message(format!(
                            "{} / {}",
                            human_bytes(progress.bytes_done),
                            human_bytes(progress.bytes_total)
                        ));
                    }
                    Some(progress) => {
                        bar.set_length(progress.txs_done + progress.txs_remaining);
                        bar.set_position(progress.txs_done);
                        bar.set_message(format!(
                            "{} / {} txs",
                            progress.txs_done,
                            progress.txs_done + progress.txs_remaining
                        ));
                    }
                    None => bar.set_message(
                        status
                            .last_error
                            .clone()
                            .unwrap_or_else(|| status.upstream.clone().unwrap_or_default()),
                    ),
                }
            }
            Display::Lines(last) => {
                let line = match &status.progress {
                    Some(progress) => format!("{phase}: {}", progress_text(progress)),
                    None => match &status.last_error {
                        Some(error) => format!("{phase}: {error}"),
                        None => phase.clone(),
                    },
                };
                let previous = last.take();
                let due = previous.as_ref().is_none_or(|(at, shown)| {
                    at.elapsed() >= LINE_EVERY || !shown.starts_with(phase.as_str())
                });
                if due {
                    eprintln!("{line}");
                    last.set(Some((Instant::now(), line)));
                } else {
                    last.set(previous);
                }
            }
        }
    }

    fn finish(&self) {
        if let Display::Bar(bar, _) = self {
            bar.finish_and_clear();
        }
    }
}
