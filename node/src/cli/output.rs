//! Client commands: one request, its answer rendered as text or `--json`, and the exit code
//! ([`Exit`]: 3 for a write whose outcome is unknown, 4 for a refusal in the database's
//! state, 6 for an unknown database, 7 for refused settings, ...); a failure is
//! `{"error", "kind"}` on stdout with `--json`.
//!
//! Where a request goes among the `--server` list is [`Target`]'s choice: writes find the
//! primary, reads the first reachable server, and changes to a server's databases go to
//! exactly the first one listed (another would change the wrong server).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use node::client::{Client, Outcome};
use node::routing;
use node::wire::{Request, Response, RollbackReport};

use super::ClientArgs;
use super::exit::Exit;

/// Exit code of a write whose outcome is unknown.
pub const EXIT_UNKNOWN: u8 = Exit::UnknownOutcome as u8;

/// Which of the `--server` list a request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The primary: `NotPrimary` refusals naming it are followed, unreachable servers passed.
    Primary,
    /// The first reachable server.
    AnyReachable,
    /// The first server listed, and no other.
    First,
}

/// What a command prints, and how it exits.
#[derive(Debug, PartialEq)]
pub struct Rendered {
    /// One line for stdout.
    pub stdout: Option<String>,
    /// One line for stderr.
    pub stderr: Option<String>,
    /// The exit code.
    pub code: u8,
}

impl Rendered {
    fn success(stdout: String) -> Rendered {
        Rendered {
            stdout: Some(stdout),
            stderr: None,
            code: 0,
        }
    }

    /// A failure line on stderr, with its exit code.
    pub fn failure(message: String, code: u8) -> Rendered {
        Rendered {
            stdout: None,
            stderr: Some(format!("error: {message}")),
            code,
        }
    }

    /// A failure as `exit` reports it: `{"error", "kind"}` on stdout with `json`, the message
    /// on stderr.
    pub fn error(message: String, exit: Exit, json: bool) -> Rendered {
        Rendered {
            stdout: json
                .then(|| serde_json::json!({"error": message, "kind": exit.kind()}).to_string()),
            stderr: Some(format!("error: {message}")),
            code: exit.code(),
        }
    }

    /// Prints the lines; returns the exit code.
    pub fn print(self) -> ExitCode {
        if let Some(line) = self.stdout {
            println!("{line}");
        }
        if let Some(line) = self.stderr {
            eprintln!("{line}");
        }
        ExitCode::from(self.code)
    }
}

/// Runs one client request and prints its outcome; returns the exit code. Writes go to the
/// primary, anything else to the first reachable server.
pub async fn run_client(args: &ClientArgs, request: Request, is_write: bool) -> Result<ExitCode> {
    let target = if is_write {
        Target::Primary
    } else {
        Target::AnyReachable
    };
    run_client_to(args, request, is_write, target).await
}

/// Runs one client request on `target` of the server list and prints its outcome.
pub async fn run_client_to(
    args: &ClientArgs,
    request: Request,
    is_write: bool,
    target: Target,
) -> Result<ExitCode> {
    let identity = args.identity()?;
    let timeout = args.timeout.map(Duration::from_secs_f64);
    let servers = args.servers();
    // One server is asked alone, as it was named: its answer (a replica's refusal naming the
    // primary included) is shown as it is. A list is what lets a request look further.
    let target = if servers.len() == 1 {
        Target::First
    } else {
        target
    };
    let outcome = match target {
        Target::Primary => {
            routing::request_primary(&servers, &identity, &request, timeout)
                .await?
                .outcome
        }
        Target::AnyReachable => {
            routing::request_any(&servers, &identity, &request, timeout)
                .await?
                .outcome
        }
        Target::First => {
            let first = servers.first().map(String::as_str).unwrap_or_default();
            let mut client = Client::connect(first, identity).await?;
            client.request(&request, timeout).await?
        }
    };
    Ok(render(outcome, is_write, args.json)?.print())
}

/// How an outcome is shown: `json` picks one JSON object on stdout over text.
pub fn render(outcome: Outcome, is_write: bool, json: bool) -> Result<Rendered> {
    let pick = |value: serde_json::Value, text: String| {
        Rendered::success(if json { value.to_string() } else { text })
    };
    let unknown = |why: String, text: String| {
        Rendered {
        stdout: json.then(|| {
            serde_json::json!({"outcome": "unknown", "error": why, "kind": Exit::UnknownOutcome.kind()})
                .to_string()
        }),
        stderr: Some(text),
        code: EXIT_UNKNOWN,
    }
    };
    let failed = |why: String, exit: Exit, primary: Option<String>| {
        let mut object = serde_json::json!({"error": why, "kind": exit.kind()});
        if let Some(primary) = primary {
            object["primary"] = primary.into();
        }
        Rendered {
            stdout: json.then(|| object.to_string()),
            stderr: Some(format!("error: {why}")),
            code: exit.code(),
        }
    };
    Ok(match outcome {
        Outcome::Unknown(why) if is_write => {
            let text = format!("outcome unknown: {why}; it may or may not have taken effect");
            unknown(why, text)
        }
        Outcome::Unknown(why) => failed(why, Exit::Unreachable, None),
        Outcome::Answered(Response::Error {
            kind,
            message,
            primary,
        }) => match Exit::of_answer(kind, is_write) {
            Exit::UnknownOutcome => {
                let text = format!("outcome unknown: {message}");
                unknown(message, text)
            }
            exit => failed(message, exit, primary),
        },
        Outcome::Answered(Response::Promoted {
            db,
            epoch,
            committed,
            precommitted,
        }) => pick(
            serde_json::json!({
                "database": db,
                "role": "primary",
                "epoch": epoch,
                "committed": committed,
                "precommitted": precommitted,
            }),
            format!(
                "{db} promoted: primary in epoch {epoch}\ncommitted: tx_id {}, hash {}\nprecommitted: tx_id {}, hash {}",
                committed.tx_id, committed.hash, precommitted.tx_id, precommitted.hash
            ),
        ),
        Outcome::Answered(Response::Written { tx_id, hash, ack }) => pick(
            serde_json::json!({"tx_id": tx_id, "hash": hash, "ack": ack}),
            format!("tx {tx_id} committed ({ack}), hash {hash}"),
        ),
        Outcome::Answered(Response::Value { key, value, tx_id }) => {
            let text = match &value {
                Some(value) => format!("{key} = {value} (as of tx {tx_id})"),
                None => format!("{key} not found (as of tx {tx_id})"),
            };
            pick(
                serde_json::json!({"key": key, "value": value, "tx_id": tx_id}),
                text,
            )
        }
        Outcome::Answered(Response::Status(report)) => {
            let mut text = format!(
                "database: {}\nrole: {}\nepoch: {}\ncommitted: tx_id {}, hash {}\nprecommitted: tx_id {}, hash {}\nwaiting_writes: {}",
                report.database,
                report.role,
                report.epoch,
                report.committed.tx_id,
                report.committed.hash,
                report.precommitted.tx_id,
                report.precommitted.hash,
                report.waiting_writes
            );
            if let Some(r) = &report.last_rollback {
                text.push_str(&format!("\nrolled back: {}", rollback_text(r)));
            }
            if let Some(primary) = &report.epoch_primary {
                text.push_str(&format!("\nepoch primary: {primary}"));
            }
            if let Some(seen) = report.fenced {
                text.push_str(&format!("\nfenced: epoch {seen} was seen; no writes taken"));
            }
            if let Some(upstream) = &report.upstream {
                text.push_str(&format!("\nsource link: {upstream}"));
            }
            if let Some(phase) = &report.phase {
                text.push_str(&format!("\nphase: {phase}"));
            }
            if let Some(progress) = &report.progress {
                text.push_str(&format!("\nprogress: {}", progress_text(progress)));
            }
            if report.log_base > 0 {
                text.push_str(&format!(
                    "\nlog begins after tx {} (compacted or from a snapshot)",
                    report.log_base
                ));
            }
            if let Some(snapshot) = &report.snapshot {
                text.push_str(&format!(
                    "\nsnapshot: up to tx {}, {}",
                    snapshot.last_tx_id,
                    human_bytes(snapshot.bytes)
                ));
            }
            if let Some(source) = &report.source {
                text.push_str(&format!("\n{}", source_text(source)));
            }
            match (&report.link_error, &report.last_error) {
                (Some(link), _) => text.push_str(&format!(
                    "\nlast error ({}): {}\n  {} failed attempt(s) over {}, the last at {}",
                    link.cause,
                    link.message,
                    link.attempts,
                    human_duration(link.failing_for_ms),
                    link.last_attempt_at
                )),
                (None, Some(error)) => text.push_str(&format!("\nlast error: {error}")),
                (None, None) => {}
            }
            if let Some(failure) = &report.log_failure {
                text.push_str(&format!(
                    "\nlog failed: {failure}; writes refused until a restart recovers the log"
                ));
            }
            for warning in &report.warnings {
                text.push_str(&format!("\nwarning: {warning}"));
            }
            for r in &report.replicas {
                text.push_str(&format!(
                    "\nreplica {}{} at {}: acked tx_id {}, lag {} txs / {} ms, {}",
                    r.replica,
                    if r.member { " (member)" } else { "" },
                    r.address,
                    r.acked_tx_id,
                    r.lag_txs,
                    r.lag_ms,
                    if r.connected {
                        "connected"
                    } else {
                        "disconnected"
                    }
                ));
            }
            pick(serde_json::to_value(&report)?, text)
        }
        Outcome::Answered(Response::Rewound(report)) => {
            let db = &report.database;
            let state = report.upstream.clone().unwrap_or_default();
            let value = serde_json::json!({
                "database": db,
                "upstream": state,
                "last_error": report.last_error,
                "rolled_back": report.last_rollback,
                "committed": report.committed,
            });
            let rolled_back = match &report.last_rollback {
                Some(r) => format!("{db}: rolled back {}", rollback_text(r)),
                None => format!("{db}: nothing rolled back"),
            };
            if state == "streaming" {
                pick(
                    value,
                    format!(
                        "{rolled_back}\nstreaming from its source again\ncommitted: tx_id {}, hash {}",
                        report.committed.tx_id, report.committed.hash
                    ),
                )
            } else {
                let why = report.last_error.clone().unwrap_or_default();
                Rendered {
                    stdout: json.then(|| value.to_string()),
                    stderr: Some(format!(
                        "error: {rolled_back}; the source link is {state}: {why}\n(the \
                         rewind stays allowed until the database restarts)"
                    )),
                    code: 1,
                }
            }
        }
        Outcome::Answered(Response::StateDigest { db, tx_id, digest }) => pick(
            serde_json::json!({"database": db, "tx_id": tx_id, "digest": digest}),
            format!("{db}: state digest {digest} as of tx {tx_id}"),
        ),
        Outcome::Answered(Response::Compacted {
            snapshot,
            base_before,
            base_after,
        }) => {
            let text = if base_after > base_before {
                format!(
                    "snapshot up to tx {} ({}); the log now begins after tx {base_after} (was {base_before})",
                    snapshot.last_tx_id,
                    human_bytes(snapshot.bytes)
                )
            } else {
                format!(
                    "snapshot up to tx {} ({}); nothing cut: the log begins after tx {base_after} \
                     (retention, or what connected replicas still need, keeps the rest)",
                    snapshot.last_tx_id,
                    human_bytes(snapshot.bytes)
                )
            };
            pick(
                serde_json::json!({"snapshot": snapshot, "base_before": base_before, "base_after": base_after}),
                text,
            )
        }
        Outcome::Answered(Response::Members {
            db,
            members,
            removed,
        }) => {
            let mut text = match &removed {
                Some(removed) => format!("removed {removed} from {db}\n"),
                None => String::new(),
            };
            text.push_str(&match members.len() {
                0 => format!("{db} has no members"),
                count => format!("{db}: {count} members: {}", members.join(", ")),
            });
            pick(
                serde_json::json!({"database": db, "members": members, "removed": removed}),
                text,
            )
        }
        Outcome::Answered(Response::Dbs(dbs)) => {
            let value: Vec<serde_json::Value> = dbs
                .iter()
                .map(|(name, loaded, s)| serde_json::json!({"database": name, "loaded": loaded, "settings": s}))
                .collect();
            pick(serde_json::Value::Array(value), dbs_table(&dbs))
        }
        Outcome::Answered(Response::Ok) => pick(serde_json::json!({"ok": true}), "ok".into()),
        // Warnings go to stderr beside the answer, as a compiler's do.
        Outcome::Answered(Response::Done { warnings }) => Rendered {
            stderr: (!json && !warnings.is_empty()).then(|| {
                warnings
                    .iter()
                    .map(|w| format!("warning: {w}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }),
            ..pick(
                serde_json::json!({"ok": true, "warnings": warnings}),
                "ok".into(),
            )
        },
    })
}

/// A replica's source as one line: where, whether streaming, and how far behind.
fn source_text(source: &node::wire::SourceReport) -> String {
    let state = if source.streaming {
        "streaming"
    } else {
        "not streaming"
    };
    let mut text = format!("source: {} ({state})", source.address);
    if let (Some(committed), Some(lag_txs)) = (source.committed_tx_id, source.lag_txs) {
        text.push_str(&format!(
            ", its commit point tx {committed} as last heard, {lag_txs} txs behind"
        ));
        if let Some(lag_ms) = source.lag_ms.filter(|ms| *ms > 0) {
            text.push_str(&format!(" for {}", human_duration(lag_ms)));
        }
    }
    text
}

/// `db list` for people: one row per database, in aligned columns.
fn dbs_table(dbs: &[(String, bool, node::wire::DbSettings)]) -> String {
    let header = ["DATABASE", "STATE", "ROLE", "POLICY", "FAILOVER", "STORE"].map(String::from);
    let rows: Vec<[String; 6]> = dbs
        .iter()
        .map(|(name, loaded, s)| {
            let role = match (&s.replica_of, s.external_replicator) {
                (_, true) => "replica (external replicator)".to_string(),
                (Some(source), false) => format!("replica of {source}"),
                (None, false) => "primary".to_string(),
            };
            let policy = match (&s.quorum, s.sync_acks) {
                (Some(quorum), _) => quorum.clone(),
                (None, Some(n)) if n > 0 => format!("acks {n}"),
                _ if s.replica_of.is_some() => "-".to_string(),
                _ => "async".to_string(),
            };
            [
                name.clone(),
                if *loaded { "loaded" } else { "unloaded" }.to_string(),
                role,
                policy,
                s.failover.clone().unwrap_or_else(|| "manual".into()),
                s.store.clone().unwrap_or_else(|| "file".into()),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| {
            row.iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rollback as one line: the range, how much of it was committed, and the file.
fn rollback_text(r: &RollbackReport) -> String {
    let committed = match r.committed_to_tx_id {
        Some(to) => format!(" (committed up to {to})"),
        None => String::new(),
    };
    format!(
        "txs {}..={}{committed}, kept in {}",
        r.from_tx_id, r.to_tx_id, r.file
    )
}

/// A size for people: `512 B`, `3.2 MiB`, `1.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A transfer's or a catch-up's progress for people.
pub fn progress_text(progress: &node::wire::ProgressReport) -> String {
    let mut parts = Vec::new();
    if progress.bytes_total > 0 {
        parts.push(format!(
            "{} of {} ({:.0}%) at {}/s",
            human_bytes(progress.bytes_done),
            human_bytes(progress.bytes_total),
            100.0 * progress.bytes_done as f64 / progress.bytes_total as f64,
            human_bytes(progress.rate as u64)
        ));
        if progress.txs_remaining > 0 {
            parts.push(format!("then {} txs to catch up", progress.txs_remaining));
        }
    } else {
        parts.push(format!(
            "{} txs done, {} to go at {:.0} txs/s",
            progress.txs_done, progress.txs_remaining, progress.rate
        ));
    }
    if let Some(eta) = progress.eta_ms {
        parts.push(format!("about {} left", human_duration(eta)));
    }
    parts.join(", ")
}

fn human_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::wire::ErrorKind;

    fn written() -> Outcome {
        Outcome::Answered(Response::Written {
            tx_id: 7,
            hash: "ab".into(),
            ack: "quorum".into(),
        })
    }

    #[test]
    fn a_write_renders_as_text_or_json() {
        let text = render(written(), true, false).expect("renders");
        assert_eq!(
            text,
            Rendered::success("tx 7 committed (quorum), hash ab".into())
        );
        let json = render(written(), true, true).expect("renders");
        let value: serde_json::Value =
            serde_json::from_str(json.stdout.as_deref().expect("stdout")).expect("json");
        assert_eq!(value["tx_id"], 7);
        assert_eq!(value["ack"], "quorum");
        assert_eq!(json.code, 0);
    }

    #[test]
    fn an_unknown_outcome_exits_3_for_a_write_only() {
        let lost = || Outcome::Unknown("connection lost".into());
        let write = render(lost(), true, true).expect("renders");
        assert_eq!(write.code, EXIT_UNKNOWN);
        assert!(
            write
                .stdout
                .expect("json")
                .contains("\"outcome\":\"unknown\"")
        );
        let read = render(lost(), false, true).expect("renders");
        assert_eq!(read.code, Exit::Unreachable.code());
        let value: serde_json::Value =
            serde_json::from_str(read.stdout.as_deref().expect("json")).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"error": "connection lost", "kind": "unreachable"})
        );
        let timed_out = Outcome::Answered(Response::Error {
            kind: ErrorKind::Unknown,
            message: "timeout".into(),
            primary: None,
        });
        let write = render(timed_out, true, false).expect("renders");
        assert_eq!((write.stdout, write.code), (None, EXIT_UNKNOWN));
        assert_eq!(write.stderr.as_deref(), Some("outcome unknown: timeout"));
    }

    #[test]
    fn a_refusal_exits_4_and_says_so_in_json() {
        let refused = Outcome::Answered(Response::Error {
            kind: ErrorKind::NotPrimary,
            message: "a replica".into(),
            primary: Some("h:1".into()),
        });
        let rendered = render(refused, true, true).expect("renders");
        assert_eq!(rendered.code, Exit::Refused.code());
        let value: serde_json::Value =
            serde_json::from_str(rendered.stdout.as_deref().expect("json")).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"error": "a replica", "kind": "refused", "primary": "h:1"})
        );
        let refused = Outcome::Answered(Response::Error {
            kind: ErrorKind::Refused,
            message: "a primary: nothing to promote".into(),
            primary: None,
        });
        assert_eq!(
            render(refused, false, false).expect("renders"),
            Rendered::failure("a primary: nothing to promote".into(), Exit::Refused.code())
        );
    }

    #[test]
    fn a_promotion_renders_one_object() {
        let position = |tx_id| node::wire::Position {
            tx_id,
            hash: "ab".into(),
        };
        let promoted = Outcome::Answered(Response::Promoted {
            db: "app".into(),
            epoch: 2,
            committed: position(4),
            precommitted: position(5),
        });
        let json = render(promoted, false, true).expect("renders");
        let value: serde_json::Value =
            serde_json::from_str(json.stdout.as_deref().expect("stdout")).expect("json");
        assert_eq!(
            value,
            serde_json::json!({
                "database": "app", "role": "primary", "epoch": 2,
                "committed": {"tx_id": 4, "hash": "ab"},
                "precommitted": {"tx_id": 5, "hash": "ab"},
            })
        );
    }
}
