//! Promoting a replica by hand (`repnode db promote`), and the checks that come first.
//!
//! A server sees only itself, so the checks are the client's: it asks the other servers it
//! was given, and the candidate's own source, for their status of the database. Promotion is
//! refused when one of them that answers is more advanced (a log that ends in a higher epoch,
//! or in the same epoch at a higher durable position, as Raft compares last terms: the
//! candidate would lose what only that one holds) or is a primary that is not fenced (the
//! primary is alive: promoting would make a second one), and when the candidate still
//! streams from its source (alive as the candidate sees it, whatever this client sees).
//! Those that do not answer are skipped: a failover is for when members are gone. `force` skips the checks, not the
//! server's own refusal to promote a primary.
//!
//! [`check`] is the pure decision; [`promote`] gathers the statuses and sends the request.

use std::time::Duration;

use transport_quic::TlsIdentity;

use crate::client::{Client, ClientError, Outcome};
use crate::server::parse_replica_of;
use crate::wire::{ErrorKind, Request, Response, StatusReport};

/// How long a peer (or the source) may take to connect and answer before it is skipped as
/// unreachable: a failover should not wait for the dead.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// A server that answered with its status of the database.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its address.
    pub server: String,
    /// Its status.
    pub status: StatusReport,
}

/// Why a promotion was refused before anything changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The candidate is not a replica with a source.
    #[error("{db} on {server} is a {role}, not a replica with a source: nothing to promote")]
    NotAReplica {
        /// The database.
        db: String,
        /// The candidate's server.
        server: String,
        /// Its role.
        role: String,
    },
    /// Another member holds more.
    #[error(
        "{peer} holds {db} up to transaction {peer_tx} of epoch {peer_epoch}, beyond {server}'s \
         {own_tx} of epoch {own_epoch}: promote the most advanced member, or give --force to \
         lose what only it holds"
    )]
    Behind {
        /// The database.
        db: String,
        /// The candidate's server.
        server: String,
        /// Its durable position.
        own_tx: u64,
        /// The epoch of its last transaction.
        own_epoch: u64,
        /// The more advanced server.
        peer: String,
        /// Its durable position.
        peer_tx: u64,
        /// The epoch of its last transaction.
        peer_epoch: u64,
    },
    /// The candidate still streams from its source: the source is alive as the candidate
    /// sees it, even if this client cannot reach it.
    #[error(
        "{db} on {server} is still streaming from its source, which is alive as {server} sees \
         it: wait for the link to drop (`repnode status`), or give --force"
    )]
    StillStreaming {
        /// The database.
        db: String,
        /// The candidate's server.
        server: String,
    },
    /// A primary that is not fenced answered: it is alive.
    #[error(
        "the primary of {db} at {peer} is alive (epoch {epoch}, not fenced): a promotion now \
         would make a second primary; switch over instead (`repnode db switchover {db} --to \
         {server} --server {peer}`: it stops writes to it, lets {server} catch up, promotes \
         it, then repoints the old primary), or give --force"
    )]
    PrimaryAlive {
        /// The database.
        db: String,
        /// The candidate's server.
        server: String,
        /// The live primary.
        peer: String,
        /// Its epoch.
        epoch: u64,
    },
}

/// Decides whether `candidate` (its status at `server`) may be promoted, given the statuses
/// of the other servers that answered (its source included).
///
/// # Errors
/// The first [`Refusal`] that applies.
pub fn check(server: &str, candidate: &StatusReport, peers: &[Peer]) -> Result<(), Refusal> {
    check_role(server, candidate)?;
    let db = &candidate.database;
    if let Some(live) = peers
        .iter()
        .find(|p| p.status.role == "primary" && p.status.fenced.is_none())
    {
        return Err(Refusal::PrimaryAlive {
            db: db.clone(),
            server: server.to_string(),
            peer: live.server.clone(),
            epoch: live.status.epoch,
        });
    }
    if candidate.upstream.as_deref() == Some("streaming") {
        return Err(Refusal::StillStreaming {
            db: db.clone(),
            server: server.to_string(),
        });
    }
    let advance = StatusReport::log_rank;
    let own = advance(candidate);
    if let Some(ahead) = peers
        .iter()
        .filter(|p| advance(&p.status) > own)
        .max_by_key(|p| advance(&p.status))
    {
        return Err(Refusal::Behind {
            db: db.clone(),
            server: server.to_string(),
            own_tx: own.1,
            own_epoch: own.0,
            peer: ahead.server.clone(),
            peer_tx: ahead.status.precommitted.tx_id,
            peer_epoch: ahead.status.last_epoch,
        });
    }
    Ok(())
}

/// The checks of a planned switchover to `candidate` (at `server`) from `primary`, whose
/// writes are stopped: [`check`]'s, except that this primary is alive and the candidate
/// streams from it, which is the point of a switchover: frozen, it takes no write, so a
/// promotion makes no second writer. Every other server in `peers` is checked as
/// [`check`] does (another live primary refuses), and none, the frozen primary included,
/// may hold more than the candidate.
///
/// # Errors
/// The first [`Refusal`] that applies.
pub fn check_switchover(
    server: &str,
    candidate: &StatusReport,
    primary: &Peer,
    peers: &[Peer],
) -> Result<(), Refusal> {
    check_role(server, candidate)?;
    let mut streaming = candidate.clone();
    // Streaming from the frozen primary is expected: only that check is left out.
    streaming.upstream = None;
    let mut frozen = primary.clone();
    // Its writes are stopped: as a peer it is compared by what it holds, not by its role.
    frozen.status.role = "primary (frozen for a switchover)".into();
    let mut all = vec![frozen];
    all.extend(peers.iter().cloned());
    check(server, &streaming, &all)
}

/// The one check `--force` does not skip: only a replica with a source can be promoted.
///
/// # Errors
/// [`Refusal::NotAReplica`].
pub fn check_role(server: &str, candidate: &StatusReport) -> Result<(), Refusal> {
    if candidate.role == "replica" {
        return Ok(());
    }
    Err(Refusal::NotAReplica {
        db: candidate.database.clone(),
        server: server.to_string(),
        role: candidate.role.clone(),
    })
}

/// Why [`promote`] did not promote.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The candidate could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Refused by the checks; nothing changed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The candidate's server answered with an error (for [`ErrorKind::Refused`], nothing
    /// changed).
    #[error("{server}: {message}")]
    Answer {
        /// The server.
        server: String,
        /// What kind of error.
        kind: ErrorKind,
        /// Its message.
        message: String,
    },
    /// The promotion was sent and its answer did not come: it may have happened.
    #[error("{server}: outcome unknown: {why}; see `repnode status`")]
    Unknown {
        /// The server.
        server: String,
        /// Why.
        why: String,
    },
}

impl PromoteError {
    /// Whether this is a refusal: nothing changed because of the database's state.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            PromoteError::Refused(_)
                | PromoteError::Answer {
                    kind: ErrorKind::Refused | ErrorKind::Unauthorized,
                    ..
                }
        )
    }
}

/// What [`promote`] did.
#[derive(Debug)]
pub struct Promotion {
    /// The server's answer: [`Response::Promoted`].
    pub response: Response,
    /// The servers compared with, which answered.
    pub compared: Vec<String>,
    /// The servers skipped as unreachable, and why.
    pub skipped: Vec<(String, String)>,
}

/// Promotes `db` on `servers[0]`, unless (without `force`) another of `servers` or the
/// database's own source answers as more advanced or as a live primary. `policy` is the new
/// quorum policy text or acknowledgement count, if any.
///
/// # Errors
/// A refusal, or the candidate unreachable or answering an error.
pub async fn promote(
    servers: &[String],
    db: &str,
    policy: (Option<String>, Option<u32>),
    force: bool,
    identity: &TlsIdentity,
    timeout: Option<Duration>,
) -> Result<Promotion, PromoteError> {
    let server = servers.first().cloned().unwrap_or_default();
    let mut client =
        Client::connect_within(&server, identity.clone(), crate::routing::CONNECT_TIMEOUT).await?;
    let status = ask(
        &mut client,
        &server,
        &Request::Status { db: db.into() },
        timeout,
    )
    .await?;
    let Response::Status(candidate) = status else {
        return Err(unexpected(&server, &status));
    };
    let (mut compared, mut skipped, mut peers) = (Vec::new(), Vec::new(), Vec::new());
    if !force {
        let mut others: Vec<(String, String)> = servers
            .get(1..)
            .unwrap_or_default()
            .iter()
            .map(|s| (s.clone(), db.to_string()))
            .collect();
        if let Some(source) = source_of(&mut client, &server, db, timeout).await?
            && !others.contains(&source)
        {
            others.push(source);
        }
        for (other, other_db) in others {
            match peer_status(&other, &other_db, identity).await {
                Ok(status) => {
                    compared.push(other.clone());
                    peers.push(Peer {
                        server: other,
                        status,
                    });
                }
                Err(why) => skipped.push((other, why)),
            }
        }
    }
    if force {
        check_role(&server, &candidate)?;
    } else {
        check(&server, &candidate, &peers)?;
    }
    let request = Request::Promote {
        db: db.to_string(),
        quorum: policy.0,
        sync_acks: policy.1,
        // Above every epoch the others have seen, so that none refuses the new primary as
        // older or fences it by subscribing with an epoch it never saw.
        above_epoch: peers.iter().map(|peer| peer.status.epoch).max(),
    };
    let response = ask(&mut client, &server, &request, timeout).await?;
    match response {
        Response::Promoted { .. } => Ok(Promotion {
            response,
            compared,
            skipped,
        }),
        other => Err(unexpected(&server, &other)),
    }
}

/// The candidate's source, `(address, database)`, from its settings.
async fn source_of(
    client: &mut Client,
    server: &str,
    db: &str,
    timeout: Option<Duration>,
) -> Result<Option<(String, String)>, PromoteError> {
    let listed = ask(client, server, &Request::ListDbs, timeout).await?;
    let Response::Dbs(dbs) = listed else {
        return Err(unexpected(server, &listed));
    };
    Ok(dbs
        .into_iter()
        .find(|(name, _, _)| name == db)
        .and_then(|(_, _, settings)| settings.replica_of)
        .and_then(|text| parse_replica_of(&text).ok()))
}

/// A peer's status of `db`, within [`PEER_TIMEOUT`]; why not, as text, when it does not
/// answer with one.
async fn peer_status(
    server: &str,
    db: &str,
    identity: &TlsIdentity,
) -> Result<StatusReport, String> {
    let asked = async {
        let mut client = Client::connect(server, identity.clone())
            .await
            .map_err(|e| crate::server::error_chain(&e))?;
        match client
            .request(&Request::Status { db: db.into() }, Some(PEER_TIMEOUT))
            .await
        {
            Ok(Outcome::Answered(Response::Status(status))) => Ok(*status),
            Ok(Outcome::Answered(Response::Error { message, .. })) => Err(message),
            Ok(Outcome::Answered(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Outcome::Unknown(why)) => Err(why),
            Err(error) => Err(crate::server::error_chain(&error)),
        }
    };
    tokio::time::timeout(PEER_TIMEOUT, asked)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} ms", PEER_TIMEOUT.as_millis())))
}

/// One request to the candidate: its answer, with errors as [`PromoteError`]s.
async fn ask(
    client: &mut Client,
    server: &str,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Response, PromoteError> {
    match client.request(request, timeout).await? {
        Outcome::Answered(Response::Error { kind, message, .. }) => Err(PromoteError::Answer {
            server: server.to_string(),
            kind,
            message,
        }),
        Outcome::Answered(response) => Ok(response),
        Outcome::Unknown(why) => Err(PromoteError::Unknown {
            server: server.to_string(),
            why,
        }),
    }
}

fn unexpected(server: &str, response: &Response) -> PromoteError {
    PromoteError::Answer {
        server: server.to_string(),
        kind: ErrorKind::Failed,
        message: format!("unexpected answer {response:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Position;

    fn status(role: &str, durable: u64, fenced: Option<u64>) -> StatusReport {
        let position = |tx_id| Position {
            tx_id,
            hash: String::new(),
        };
        StatusReport {
            database: "app".into(),
            role: role.into(),
            epoch: 1,
            epoch_primary: None,
            last_rollback: None,
            failover: None,
            last_epoch: 1,
            committed: position(durable.saturating_sub(1)),
            precommitted: position(durable),
            waiting_writes: 0,
            fenced,
            upstream: None,
            last_error: None,
            replicas: Vec::new(),
            members: Vec::new(),
            policy: None,
            ..StatusReport::default()
        }
    }

    fn peer(server: &str, status: StatusReport) -> Peer {
        Peer {
            server: server.into(),
            status,
        }
    }

    #[test]
    fn the_most_advanced_replica_may_be_promoted() {
        let candidate = status("replica", 10, None);
        assert_eq!(check("a2", &candidate, &[]), Ok(()));
        let equal = [peer("a3", status("replica", 10, None))];
        assert_eq!(check("a2", &candidate, &equal), Ok(()));
        let behind = [peer("a3", status("replica", 7, None))];
        assert_eq!(check("a2", &candidate, &behind), Ok(()));
        // A fenced old primary is not alive as a primary; it holds no more than us here.
        let fenced = [peer("a1", status("primary", 10, Some(2)))];
        assert_eq!(check("a2", &candidate, &fenced), Ok(()));
    }

    #[test]
    fn a_more_advanced_member_refuses_naming_it() {
        let candidate = status("replica", 10, None);
        let peers = [
            peer("a3", status("replica", 11, None)),
            peer("a4", status("replica", 12, None)),
        ];
        let refusal = check("a2", &candidate, &peers).expect_err("refused");
        assert_eq!(
            refusal,
            Refusal::Behind {
                db: "app".into(),
                server: "a2".into(),
                own_tx: 10,
                own_epoch: 1,
                peer: "a4".into(),
                peer_tx: 12,
                peer_epoch: 1,
            }
        );
        assert!(refusal.to_string().contains("--force"));
        // A newer epoch wins over a longer log of an older one, and loses to a newer one.
        let mut newer = status("replica", 8, None);
        newer.last_epoch = 2;
        assert_eq!(check("a2", &newer, &peers), Ok(()));
        let mut newest = status("replica", 3, None);
        newest.last_epoch = 3;
        let refusal = check("a2", &newer, &[peer("a5", newest)]).expect_err("refused");
        assert!(
            matches!(refusal, Refusal::Behind { peer_epoch: 3, .. }),
            "{refusal}"
        );
    }

    #[test]
    fn a_switchover_skips_only_the_frozen_primary_being_alive() {
        let mut candidate = status("replica", 10, None);
        candidate.upstream = Some("streaming".into());
        let primary = peer("a1", status("primary", 10, None));
        assert_eq!(check_switchover("a2", &candidate, &primary, &[]), Ok(()));
        // The frozen primary holds more: the candidate has not caught up.
        let ahead = peer("a1", status("primary", 11, None));
        assert!(matches!(
            check_switchover("a2", &candidate, &ahead, &[]),
            Err(Refusal::Behind { ref peer, .. }) if peer == "a1"
        ));
        // Another live primary still refuses, and so does a more advanced replica.
        let other = [peer("a9", status("primary", 10, None))];
        assert!(matches!(
            check_switchover("a2", &candidate, &primary, &other),
            Err(Refusal::PrimaryAlive { ref peer, .. }) if peer == "a9"
        ));
        let more = [peer("a3", status("replica", 12, None))];
        assert!(matches!(
            check_switchover("a2", &candidate, &primary, &more),
            Err(Refusal::Behind { .. })
        ));
        assert!(matches!(
            check_switchover("a1", &status("primary", 10, None), &primary, &[]),
            Err(Refusal::NotAReplica { .. })
        ));
    }

    #[test]
    fn a_live_primary_or_a_primary_candidate_refuses() {
        let candidate = status("replica", 10, None);
        let live = [peer("a1", status("primary", 10, None))];
        let refusal = check("a2", &candidate, &live).expect_err("refused");
        assert!(matches!(refusal, Refusal::PrimaryAlive { ref peer, .. } if peer == "a1"));
        assert!(refusal.to_string().contains("switch over"), "{refusal}");
        let primary = status("primary", 10, None);
        assert!(matches!(
            check("a1", &primary, &[]),
            Err(Refusal::NotAReplica { .. })
        ));
        let external = status("replica (external replicator)", 10, None);
        assert!(matches!(
            check("a1", &external, &[]),
            Err(Refusal::NotAReplica { .. })
        ));
        // The source unreachable from here, but not from the candidate.
        let mut streaming = status("replica", 10, None);
        streaming.upstream = Some("streaming".into());
        assert!(matches!(
            check("a2", &streaming, &[]),
            Err(Refusal::StillStreaming { .. })
        ));
        streaming.upstream = Some("connecting".into());
        assert_eq!(check("a2", &streaming, &[]), Ok(()));
    }
}
