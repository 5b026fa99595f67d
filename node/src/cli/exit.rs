//! The exit codes of `repnode`, one per kind of failure a script reacts to differently, and
//! the `{"error", "kind"}` object `--json` prints for a failure.
//!
//! | code | kind | meaning |
//! |---|---|---|
//! | 0 | | done |
//! | 1 | `failed` | anything else (nothing was changed unless the message says so) |
//! | 2 | `usage` | the command line is wrong (clap's own errors exit 2 too) |
//! | 3 | `unknown_outcome` | a write whose outcome is unknown: it may or may not commit |
//! | 4 | `refused` | refused: a replica, a fenced primary, an identity without the permission, a promotion its checks refuse, no safe failover candidate |
//! | 5 | `unreachable` | no server answered |
//! | 6 | `not_found` | no such database |
//! | 7 | `invalid_settings` | settings refused: contradictory, malformed, or not changeable |
//! | 8 | `incomplete` | a switchover promoted its target and failed after: what remains is said |

use std::process::ExitCode;

use node::client::ClientError;
use node::wire::ErrorKind;

/// Why a command failed, as its exit code and its JSON `kind` say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Anything else.
    Failed = 1,
    /// A wrong command line.
    Usage = 2,
    /// A write whose outcome is unknown.
    UnknownOutcome = 3,
    /// Refused in the database's present state.
    Refused = 4,
    /// No server answered.
    Unreachable = 5,
    /// No such database.
    NotFound = 6,
    /// Settings refused.
    InvalidSettings = 7,
    /// A switchover that promoted its target and failed after: not undone.
    Incomplete = 8,
}

impl Exit {
    /// The exit code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The `kind` of the JSON error object.
    pub fn kind(self) -> &'static str {
        match self {
            Exit::Failed => "failed",
            Exit::Usage => "usage",
            Exit::UnknownOutcome => "unknown_outcome",
            Exit::Refused => "refused",
            Exit::Unreachable => "unreachable",
            Exit::NotFound => "not_found",
            Exit::InvalidSettings => "invalid_settings",
            Exit::Incomplete => "incomplete",
        }
    }

    /// How a server's refusal of `kind` exits; `is_write` makes an unknown outcome exit 3.
    pub fn of_answer(kind: ErrorKind, is_write: bool) -> Exit {
        match kind {
            ErrorKind::Unknown if is_write => Exit::UnknownOutcome,
            ErrorKind::Unknown | ErrorKind::Failed => Exit::Failed,
            ErrorKind::NotPrimary | ErrorKind::Refused | ErrorKind::Unauthorized => Exit::Refused,
            ErrorKind::UnknownDatabase => Exit::NotFound,
            ErrorKind::BadSetting => Exit::InvalidSettings,
        }
    }

    /// How an error that ended a command exits: a server that cannot be reached exits 5, a
    /// [`UsageError`] 2, anything else 1.
    pub fn of_error(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if let Some(client) = cause.downcast_ref::<ClientError>() {
                return match client {
                    ClientError::Connect { .. }
                    | ClientError::ConnectTimeout { .. }
                    | ClientError::NoneReachable(_) => Exit::Unreachable,
                    _ => Exit::Failed,
                };
            }
            if cause.downcast_ref::<UsageError>().is_some() {
                return Exit::Usage;
            }
        }
        Exit::Failed
    }
}

/// A command line that parses but asks for something that cannot be done (`bench --clients
/// 0`): exit 2, as clap's own errors.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Reports the error that ended a command: `{"error", "kind"}` on stdout with `json` (and the
/// text on stderr), the text alone otherwise; returns its exit code.
pub fn report(error: &anyhow::Error, json: bool) -> ExitCode {
    let exit = Exit::of_error(error);
    let message = format!("{error:#}");
    if json {
        println!(
            "{}",
            serde_json::json!({"error": message, "kind": exit.kind()})
        );
    }
    eprintln!("error: {message}");
    ExitCode::from(exit.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_own_code() {
        let codes = [
            Exit::Failed,
            Exit::Usage,
            Exit::UnknownOutcome,
            Exit::Refused,
            Exit::Unreachable,
            Exit::NotFound,
            Exit::InvalidSettings,
        ]
        .map(Exit::code);
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            Exit::of_answer(ErrorKind::Unknown, true),
            Exit::UnknownOutcome
        );
        assert_eq!(Exit::of_answer(ErrorKind::Unknown, false), Exit::Failed);
        assert_eq!(Exit::of_answer(ErrorKind::NotPrimary, true), Exit::Refused);
        assert_eq!(
            Exit::of_answer(ErrorKind::UnknownDatabase, false),
            Exit::NotFound
        );
        assert_eq!(
            Exit::of_answer(ErrorKind::BadSetting, false),
            Exit::InvalidSettings
        );
        let usage = anyhow::Error::new(UsageError("--clients 0".into()));
        assert_eq!(Exit::of_error(&usage.context("bench")), Exit::Usage);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("other")), Exit::Failed);
    }
}
