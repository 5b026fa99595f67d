//! Finding a server among several: a client given every member keeps working across a
//! failover.
//!
//! Reads go to the first reachable server of a list. Writes go to the primary: a
//! [`NotPrimary`](ErrorKind::NotPrimary) refusal that names the primary is followed (at most
//! [`MAX_HOPS`] times), and an unreachable server is passed over for the next one listed.
//! Only what certainly did not reach a server is tried elsewhere: a connection that failed,
//! or a request that could not be sent. A request sent whose answer does not come
//! ([`Outcome::Unknown`]) is never sent again: a write may have committed.
//!
//! [`Route`] is the pure part (which server to try next); [`request_primary`] and
//! [`request_any`] run it over real connections.

use std::time::Duration;

use transport_quic::TlsIdentity;

use crate::client::{Client, ClientError, Outcome};
use crate::wire::{ErrorKind, Request, Response};

/// Redirections followed for one request: enough for a replica of a replica of a replica
/// to lead to its primary, and a bound on a cycle of stale answers.
pub const MAX_HOPS: usize = 3;

/// How long a connection attempt may take before the next server is tried: a dead server's
/// QUIC handshake otherwise waits for the whole idle timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which server to try next, from a list and what the servers tried so far said.
///
/// A redirection goes first; then the listed servers in order, skipping those that were
/// unreachable or already refused. A server named by a redirection is tried even if it is
/// not listed: the refusing server knows the primary better than the list.
#[derive(Clone, Debug)]
pub struct Route {
    listed: Vec<String>,
    next_listed: usize,
    redirect: Option<String>,
    hops: usize,
    max_hops: usize,
    /// Servers that were unreachable, or refused as not the primary: never tried again.
    done: Vec<String>,
}

impl Route {
    /// A route over `servers`, in order, following at most `max_hops` redirections.
    pub fn new(servers: impl IntoIterator<Item = String>, max_hops: usize) -> Route {
        Route {
            listed: servers.into_iter().collect(),
            next_listed: 0,
            redirect: None,
            hops: 0,
            max_hops,
            done: Vec::new(),
        }
    }

    /// The next server to try, if any is left.
    pub fn next_server(&mut self) -> Option<String> {
        if let Some(server) = self.redirect.take() {
            return Some(server);
        }
        while let Some(server) = self.listed.get(self.next_listed) {
            self.next_listed += 1;
            if !self.done.contains(server) {
                return Some(server.clone());
            }
        }
        None
    }

    /// `server` could not be reached, or the request not sent to it.
    pub fn unreachable(&mut self, server: &str) {
        self.done.push(server.to_string());
    }

    /// `server` refused as not the primary, naming `primary` if it knows it. Returns whether
    /// the redirection is followed: not beyond the hop limit, nor to a server already tried.
    pub fn not_primary(&mut self, server: &str, primary: Option<&str>) -> bool {
        self.done.push(server.to_string());
        let Some(primary) = primary else {
            return false;
        };
        if self.hops >= self.max_hops || self.done.iter().any(|s| s == primary) {
            return false;
        }
        self.hops += 1;
        self.redirect = Some(primary.to_string());
        true
    }

    /// Redirections followed so far.
    pub fn hops(&self) -> usize {
        self.hops
    }
}

/// Splits a `--server` value, `HOST:PORT[,HOST:PORT...]`, dropping empty entries.
pub fn split_servers(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A request's answer and where it came from.
pub struct Routed {
    /// The server that answered (or, for an unknown outcome, was asked).
    pub server: String,
    /// The session with it, for further requests.
    pub client: Client,
    /// How the request ended.
    pub outcome: Outcome,
}

impl Client {
    /// Connects to the first server of `servers` that answers, each given
    /// [`CONNECT_TIMEOUT`]; returns it with its address.
    ///
    /// # Errors
    /// No server is reachable ([`ClientError::NoneReachable`], or the one server's error).
    pub async fn connect_any(
        servers: &[String],
        identity: TlsIdentity,
    ) -> Result<(Client, String), ClientError> {
        let mut failures = Vec::new();
        for server in servers {
            match Client::connect_within(server, identity.clone(), CONNECT_TIMEOUT).await {
                Ok(client) => return Ok((client, server.clone())),
                Err(error) => failures.push((server.clone(), error)),
            }
        }
        Err(ClientError::none_reachable(failures))
    }
}

/// Sends `request` to the first reachable server of `servers` (reads, status).
///
/// # Errors
/// No server is reachable, or the request does not encode.
pub async fn request_any(
    servers: &[String],
    identity: &TlsIdentity,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Routed, ClientError> {
    route(
        Route::new(servers.iter().cloned(), 0),
        identity,
        request,
        timeout,
    )
    .await
}

/// Sends `request` to the primary: `NotPrimary` refusals that name it are followed, at most
/// [`MAX_HOPS`] times, and unreachable servers passed over. When no server is left, the last
/// refusal is the answer.
///
/// # Errors
/// No server is reachable, or the request does not encode.
pub async fn request_primary(
    servers: &[String],
    identity: &TlsIdentity,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Routed, ClientError> {
    route(
        Route::new(servers.iter().cloned(), MAX_HOPS),
        identity,
        request,
        timeout,
    )
    .await
}

/// Finds the primary of `db` among `servers` (as [`request_primary`] does, with a read that
/// only a primary answers); returns a session with it and its address.
///
/// # Errors
/// No server is reachable, or none leads to a primary ([`ClientError::NoPrimary`]).
pub async fn find_primary(
    servers: &[String],
    identity: &TlsIdentity,
    db: &str,
) -> Result<(Client, String), ClientError> {
    let probe = Request::Get {
        db: db.to_string(),
        key: String::new(),
        min_tx: None,
        wait_ms: 0,
        primary: true,
    };
    let routed = request_primary(servers, identity, &probe, Some(CONNECT_TIMEOUT)).await?;
    match routed.outcome {
        Outcome::Answered(Response::Value { .. }) => Ok((routed.client, routed.server)),
        Outcome::Answered(Response::Error { message, .. }) => Err(ClientError::NoPrimary {
            db: db.to_string(),
            why: message,
        }),
        Outcome::Answered(other) => Err(ClientError::NoPrimary {
            db: db.to_string(),
            why: format!("unexpected answer {other:?}"),
        }),
        Outcome::Unknown(why) => Err(ClientError::NoPrimary {
            db: db.to_string(),
            why,
        }),
    }
}

async fn route(
    mut route: Route,
    identity: &TlsIdentity,
    request: &Request,
    timeout: Option<Duration>,
) -> Result<Routed, ClientError> {
    let mut failures = Vec::new();
    let mut refusal = None;
    while let Some(server) = route.next_server() {
        let mut client =
            match Client::connect_within(&server, identity.clone(), CONNECT_TIMEOUT).await {
                Ok(client) => client,
                Err(error) => {
                    route.unreachable(&server);
                    failures.push((server, error));
                    continue;
                }
            };
        let outcome = match client.request(request, timeout).await {
            Ok(outcome) => outcome,
            // Nothing reached the server: safe to try the next one.
            Err(ClientError::Send(error)) => {
                route.unreachable(&server);
                failures.push((server, ClientError::Send(error)));
                continue;
            }
            Err(error) => return Err(error),
        };
        if let Outcome::Answered(Response::Error {
            kind: ErrorKind::NotPrimary,
            primary,
            ..
        }) = &outcome
        {
            // Refused before anything was written: following it is safe.
            let primary = primary.clone();
            route.not_primary(&server, primary.as_deref());
            refusal = Some(Routed {
                server,
                client,
                outcome,
            });
            continue;
        }
        return Ok(Routed {
            server,
            client,
            outcome,
        });
    }
    refusal.ok_or_else(|| ClientError::none_reachable(failures))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(servers: &[&str], max_hops: usize) -> Route {
        Route::new(servers.iter().map(|s| s.to_string()), max_hops)
    }

    #[test]
    fn listed_servers_are_tried_in_order_past_unreachable_ones() {
        let mut r = route(&["a", "b", "c"], MAX_HOPS);
        assert_eq!(r.next_server().as_deref(), Some("a"));
        r.unreachable("a");
        assert_eq!(r.next_server().as_deref(), Some("b"));
        r.unreachable("b");
        assert_eq!(r.next_server().as_deref(), Some("c"));
        r.unreachable("c");
        assert_eq!(r.next_server(), None);
    }

    #[test]
    fn a_refusal_naming_the_primary_is_followed_first() {
        // c is a replica of b, the new primary; a is down.
        let mut r = route(&["a", "c", "b"], MAX_HOPS);
        assert_eq!(r.next_server().as_deref(), Some("a"));
        r.unreachable("a");
        assert_eq!(r.next_server().as_deref(), Some("c"));
        assert!(r.not_primary("c", Some("b")));
        assert_eq!(r.next_server().as_deref(), Some("b"));
        assert_eq!(r.hops(), 1);
        // An unlisted primary is followed too.
        let mut r = route(&["c"], MAX_HOPS);
        r.next_server();
        assert!(r.not_primary("c", Some("x")));
        assert_eq!(r.next_server().as_deref(), Some("x"));
        assert_eq!(r.next_server(), None, "c is not asked again");
    }

    #[test]
    fn a_refusal_naming_an_unreachable_or_refusing_server_falls_back_to_the_list() {
        // b still names a, the dead old primary: the list goes on with c.
        let mut r = route(&["a", "b", "c"], MAX_HOPS);
        r.next_server();
        r.unreachable("a");
        assert_eq!(r.next_server().as_deref(), Some("b"));
        assert!(!r.not_primary("b", Some("a")));
        assert_eq!(r.next_server().as_deref(), Some("c"));
        // Two replicas naming each other: no cycle.
        let mut r = route(&["b", "c"], MAX_HOPS);
        r.next_server();
        assert!(r.not_primary("b", Some("c")));
        assert_eq!(r.next_server().as_deref(), Some("c"));
        assert!(!r.not_primary("c", Some("b")));
        assert_eq!(r.next_server(), None);
        // A refusal without an address moves on down the list.
        let mut r = route(&["b", "c"], MAX_HOPS);
        r.next_server();
        assert!(!r.not_primary("b", None));
        assert_eq!(r.next_server().as_deref(), Some("c"));
    }

    #[test]
    fn redirections_stop_at_the_hop_limit() {
        let mut r = route(&["s0"], 3);
        let mut asked = vec![r.next_server().expect("s0")];
        for hop in 1..=5 {
            let next = format!("s{hop}");
            let followed = r.not_primary(asked.last().expect("asked"), Some(&next));
            assert_eq!(followed, hop <= 3, "hop {hop}");
            if let Some(server) = r.next_server() {
                asked.push(server);
            }
        }
        assert_eq!(asked, ["s0", "s1", "s2", "s3"]);
        assert_eq!(r.hops(), 3);
        // Reads follow nothing.
        let mut r = route(&["a", "b"], 0);
        r.next_server();
        assert!(!r.not_primary("a", Some("z")));
        assert_eq!(r.next_server().as_deref(), Some("b"));
    }

    #[test]
    fn server_lists_split_on_commas() {
        assert_eq!(split_servers("a:1, b:2,,c:3"), ["a:1", "b:2", "c:3"]);
        assert_eq!(split_servers("a:1"), ["a:1"]);
        assert!(split_servers("").is_empty());
    }
}
