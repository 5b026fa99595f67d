//! A planned switchover (`repnode db switchover`): the primary, alive, hands its database to
//! one of its replicas without losing or refusing for good a single write.
//!
//! 1. **Freeze**: the primary refuses new writes, naming the target, which clients follow
//!    (and retry until it takes them); writes already taken are left to commit.
//! 2. **Catch up**: wait until the primary has no write waiting and the target holds its
//!    whole log durably (same precommitted position and hash).
//! 3. **Promote** the target, above the primary's epoch, with the primary's policy; the
//!    promotion checks apply, but for the frozen primary being alive.
//! 4. **Repoint** the old primary as the target's replica: it holds exactly the target's
//!    history, so it streams at once.
//!
//! A failure before 3 undoes 1, so the database is never left without a writer; after 3
//! nothing is undone (the target is the primary), and what remains is reported.

use std::time::{Duration, Instant};

use transport_quic::TlsIdentity;

use crate::client::{Client, Outcome};
use crate::promotion::{Peer, Refusal, check_switchover};
use crate::server::parse_replica_of;
use crate::wire::{DbSettings, ErrorKind, Position, Request, Response, StatusReport};

/// How long step 2 waits by default for the target to hold everything.
pub const DEFAULT_CATCH_UP: Duration = Duration::from_secs(10);

/// How often step 2 asks both servers: the window writes are refused lasts this much more.
const POLL: Duration = Duration::from_millis(2);

/// How long one request of the switchover may take: a server that does not answer fails
/// its step rather than holding writes stopped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the promotion may take: the target restarts its engine over its whole log.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(30);

/// The steps, to name the one that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Step 1: stopping new writes on the primary.
    Freeze,
    /// Step 2: waiting for the target to hold everything.
    CatchUp,
    /// Step 3: promoting the target.
    Promote,
    /// Step 4: repointing the old primary.
    Repoint,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Freeze => "1 (stop writes on the primary)",
            Step::CatchUp => "2 (catch up)",
            Step::Promote => "3 (promote the target)",
            Step::Repoint => "4 (repoint the old primary)",
        })
    }
}

/// Why a switchover did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SwitchoverError {
    /// Refused before anything changed: the target is not a replica of that database, or
    /// the promotion checks refuse.
    #[error("switchover refused: {0}")]
    Refused(String),
    /// A step before the promotion failed; the primary takes writes again (`restored`), or
    /// could not be told to (then it still refuses them: `repnode db update` on it, or its
    /// restart, clears that).
    #[error(
        "switchover failed at step {step}: {why}; {}",
        if *restored { "writes restored on the primary" } else { "WRITES STILL STOPPED on the primary: its restart restores them" }
    )]
    Aborted {
        /// The step.
        step: Step,
        /// Why.
        why: String,
        /// Whether the primary was told to take writes again and said so.
        restored: bool,
    },
    /// The target was promoted (or may have been: its answer did not come) and a later
    /// step failed: nothing is undone, what remains is said.
    #[error("switchover incomplete at step {step}: {why}; remains: {remains}")]
    Incomplete {
        /// The step.
        step: Step,
        /// Why.
        why: String,
        /// What an operator must still do.
        remains: String,
    },
}

impl SwitchoverError {
    /// Whether nothing changed because the database's state refused it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SwitchoverError::Refused(_))
    }
}

/// A completed switchover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switchover {
    /// The database.
    pub db: String,
    /// The old primary.
    pub from: String,
    /// The new primary.
    pub to: String,
    /// The new primary's epoch.
    pub epoch: u64,
    /// From writes stopped on the old primary to the new one taking them (its promotion
    /// answered).
    pub unavailable: Duration,
    /// The last transaction handed over: the old primary's last, held by the new one.
    pub committed: Position,
}

/// Switches `db` over from its primary `from` to its replica `to`, waiting at most
/// `catch_up` for `to` to hold everything.
///
/// # Errors
/// See [`SwitchoverError`]: refused, aborted before the promotion (writes restored), or
/// incomplete after it.
pub async fn switchover(
    from: &str,
    to: &str,
    db: &str,
    identity: &TlsIdentity,
    catch_up: Duration,
) -> Result<Switchover, SwitchoverError> {
    let refused = SwitchoverError::Refused;
    let mut primary = connect(from, identity).await.map_err(refused)?;
    let mut target = connect(to, identity).await.map_err(refused)?;
    let before = status(&mut primary, from, db).await.map_err(refused)?;
    if before.role != "primary" || before.fenced.is_some() {
        return Err(refused(format!(
            "{db} on {from} is a {}{}, not a live primary",
            before.role,
            if before.fenced.is_some() {
                " (fenced)"
            } else {
                ""
            }
        )));
    }
    let candidate = status(&mut target, to, db).await.map_err(refused)?;
    check_source(&mut target, from, to, db)
        .await
        .map_err(refused)?;
    // Refused now, before writes stop, if it could never pass: a role or another primary.
    // (That it is behind is expected: step 2 is for that.)
    let primary_peer = Peer {
        server: from.to_string(),
        status: before.clone(),
    };
    match check_switchover(to, &candidate, &primary_peer, &[]) {
        Ok(()) | Err(Refusal::Behind { .. }) => {}
        Err(refusal) => return Err(refused(refusal.to_string())),
    }

    // 1. Freeze.
    let frozen_at = Instant::now();
    let begin = Request::SwitchoverBegin {
        db: db.to_string(),
        to: to.to_string(),
    };
    match primary.request(&begin, Some(REQUEST_TIMEOUT)).await {
        Ok(Outcome::Answered(Response::Ok | Response::Done { .. })) => {}
        // Answered with a refusal (a replica, an identity that is no admin): the gate never
        // closed, and nothing is undone.
        Ok(Outcome::Answered(Response::Error { message, .. })) => {
            return Err(refused(format!("{from}: {message}")));
        }
        other => {
            let why = match other {
                Ok(Outcome::Unknown(why)) => format!("{from}: no answer: {why}"),
                Ok(Outcome::Answered(answer)) => format!("{from}: unexpected answer {answer:?}"),
                Err(error) => format!("{from}: {}", crate::server::error_chain(&error)),
            };
            // Its answer may not have come after the gate closed: undo in any case.
            return Err(abort(&mut primary, from, db, identity, Step::Freeze, why).await);
        }
    }

    // 2. Catch up.
    let deadline = frozen_at + catch_up;
    let (last, held) = loop {
        let asked = async {
            let p = status(&mut primary, from, db).await?;
            let t = status(&mut target, to, db).await?;
            Ok::<_, String>((p, t))
        };
        match asked.await {
            Ok((p, t)) if p.waiting_writes == 0 && t.precommitted == p.precommitted => {
                break (p, t);
            }
            Ok(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
            Ok((p, t)) => {
                let why = format!(
                    "{to} did not catch up within {} ms: it holds transaction {}, the primary \
                     {} with {} write(s) waiting",
                    catch_up.as_millis(),
                    t.precommitted.tx_id,
                    p.precommitted.tx_id,
                    p.waiting_writes
                );
                return Err(abort(&mut primary, from, db, identity, Step::CatchUp, why).await);
            }
            Err(why) => {
                return Err(abort(&mut primary, from, db, identity, Step::CatchUp, why).await);
            }
        }
    };
    let frozen_peer = Peer {
        server: from.to_string(),
        status: last.clone(),
    };
    if let Err(refusal) = check_switchover(to, &held, &frozen_peer, &[]) {
        return Err(abort(
            &mut primary,
            from,
            db,
            identity,
            Step::Promote,
            refusal.to_string(),
        )
        .await);
    }

    // 3. Promote: above every epoch the primary saw, under its policy.
    let promote = Request::Promote {
        db: db.to_string(),
        quorum: last.policy.clone(),
        sync_acks: None,
        above_epoch: Some(last.epoch.max(last.last_epoch).max(held.epoch)),
    };
    let remains_repoint = format!(
        "repoint the old primary by hand: repnode db update {db} --replica-of {to}/{db} \
         --server {from}"
    );
    let answer = match target.request(&promote, Some(PROMOTE_TIMEOUT)).await {
        Ok(outcome) => outcome,
        // Not sent (it did not encode, or nothing reached the target): nothing promoted.
        Err(error) => {
            let why = format!("{to}: {}", crate::server::error_chain(&error));
            return Err(abort(&mut primary, from, db, identity, Step::Promote, why).await);
        }
    };
    let see = format!("see `repnode status --db {db} --server {to}`");
    let epoch = match answer {
        Outcome::Answered(Response::Promoted { epoch, .. }) => epoch,
        // Refused before anything changed on the target: the primary may write again.
        Outcome::Answered(Response::Error {
            kind: ErrorKind::Refused | ErrorKind::BadSetting | ErrorKind::UnknownDatabase,
            message,
            ..
        }) => {
            let why = format!("{to}: {message}");
            return Err(abort(&mut primary, from, db, identity, Step::Promote, why).await);
        }
        // Anything else may have changed the target's settings to a primary's: restoring
        // writes on the old primary could make two writers. It stays frozen.
        Outcome::Answered(Response::Error { message, .. }) => {
            return Err(SwitchoverError::Incomplete {
                step: Step::Promote,
                why: format!("{to}: {message}"),
                remains: format!(
                    "{see}; if it is a primary, {remains_repoint}; the old primary refuses \
                     writes until it is repointed or restarted"
                ),
            });
        }
        Outcome::Answered(other) => {
            return Err(SwitchoverError::Incomplete {
                step: Step::Promote,
                why: format!("{to}: unexpected answer {other:?}"),
                remains: format!("{see}; if it is a primary, {remains_repoint}"),
            });
        }
        Outcome::Unknown(why) => {
            return Err(SwitchoverError::Incomplete {
                step: Step::Promote,
                why: format!("{to}: outcome unknown: {why}"),
                remains: format!(
                    "{see}; if it is a primary, {remains_repoint}; if not, restart the old \
                     primary (or run the switchover again) for writes to be taken again"
                ),
            });
        }
    };
    let unavailable = frozen_at.elapsed();

    // 4. Repoint the old primary: never undone now, only reported.
    let repoint = Request::UpdateDb {
        name: db.to_string(),
        settings: DbSettings {
            replica_of: Some(format!("{to}/{db}")),
            ..DbSettings::default()
        },
        allow_rewind: false,
    };
    if let Err(why) = expect_ok(&mut primary, from, &repoint).await {
        return Err(SwitchoverError::Incomplete {
            step: Step::Repoint,
            why: format!("{to} is the primary in epoch {epoch}; {why}"),
            remains: remains_repoint,
        });
    }
    Ok(Switchover {
        db: db.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        epoch,
        unavailable,
        committed: last.committed,
    })
}

/// Undoes step 1 after a failure at `step`: the primary takes writes again.
async fn abort(
    primary: &mut Client,
    from: &str,
    db: &str,
    identity: &TlsIdentity,
    step: Step,
    why: String,
) -> SwitchoverError {
    let request = Request::SwitchoverAbort { db: db.to_string() };
    let mut restored = expect_ok(primary, from, &request).await.is_ok();
    if !restored {
        // The session may be what broke: once more on a new one.
        if let Ok(mut fresh) = connect(from, identity).await {
            restored = expect_ok(&mut fresh, from, &request).await.is_ok();
        }
    }
    SwitchoverError::Aborted {
        step,
        why,
        restored,
    }
}

/// A session with `server`, or why not, as text.
async fn connect(server: &str, identity: &TlsIdentity) -> Result<Client, String> {
    Client::connect_within(server, identity.clone(), crate::routing::CONNECT_TIMEOUT)
        .await
        .map_err(|error| crate::server::error_chain(&error))
}

/// One request, bounded by [`REQUEST_TIMEOUT`]: its answer, or why not, as text.
async fn ask(client: &mut Client, server: &str, request: &Request) -> Result<Response, String> {
    match client.request(request, Some(REQUEST_TIMEOUT)).await {
        Ok(Outcome::Answered(Response::Error { message, .. })) => {
            Err(format!("{server}: {message}"))
        }
        Ok(Outcome::Answered(response)) => Ok(response),
        Ok(Outcome::Unknown(why)) => Err(format!("{server}: no answer: {why}")),
        Err(error) => Err(format!("{server}: {}", crate::server::error_chain(&error))),
    }
}

/// A request answered with [`Response::Ok`] or [`Response::Done`].
async fn expect_ok(client: &mut Client, server: &str, request: &Request) -> Result<(), String> {
    match ask(client, server, request).await? {
        Response::Ok | Response::Done { .. } => Ok(()),
        other => Err(format!("{server}: unexpected answer {other:?}")),
    }
}

/// The status of `db` on `server`.
async fn status(client: &mut Client, server: &str, db: &str) -> Result<StatusReport, String> {
    match ask(client, server, &Request::Status { db: db.into() }).await? {
        Response::Status(report) => Ok(*report),
        other => Err(format!("{server}: unexpected answer {other:?}")),
    }
}

/// Checks that `db` on `to` is a replica whose source is `db` on `from`: a member of the
/// primary's database, not a replica of something else.
async fn check_source(client: &mut Client, from: &str, to: &str, db: &str) -> Result<(), String> {
    let Response::Dbs(dbs) = ask(client, to, &Request::ListDbs).await? else {
        return Err(format!("{to}: unexpected answer to a listing"));
    };
    let source = dbs
        .into_iter()
        .find(|(name, loaded, _)| name == db && *loaded)
        .ok_or_else(|| format!("{to} serves no database {db}"))?
        .2
        .replica_of;
    let expected = (from.to_string(), db.to_string());
    match source.as_deref().map(parse_replica_of) {
        Some(Ok(source)) if source == expected => Ok(()),
        Some(_) => Err(format!(
            "{db} on {to} is a replica of {}, not of {from}/{db}",
            source.unwrap_or_default()
        )),
        None => Err(format!("{db} on {to} is not a replica (no source)")),
    }
}
