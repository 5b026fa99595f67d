//! `repnode failover plan`: read-only. Asks every listed server for its status of a database
//! at once, then prints what [`node::plan::plan`] concludes: who answered, the rule, the
//! ranked candidates and the one to promote. Exit 0 when a candidate provably holds every
//! acknowledged write, [`EXIT_NOT_SAFE`] when none does.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use node::client::{Client, Outcome};
use node::plan::{Basis, Heard, Listed, Plan, plan};
use node::wire::{Position, Request, Response};
use replication_core::quorum::Quorum;
use transport_quic::TlsIdentity;

/// Exit code of a plan in which no candidate is provably safe.
pub const EXIT_NOT_SAFE: u8 = 4;

/// `repnode failover ...`.
#[derive(Subcommand)]
pub enum FailoverCommand {
    /// Read-only: asks every listed server for its status of a database and tells which
    /// replicas hold every acknowledged write (safe to promote), what the others could be
    /// missing, and which to promote. Exit 0 when one is provably safe, 4 when none is.
    Plan(PlanArgs),
}

impl FailoverCommand {
    /// Whether JSON output was asked for.
    pub fn wants_json(&self) -> bool {
        let FailoverCommand::Plan(args) = self;
        args.json
    }
}

/// The flags of `failover plan`.
#[derive(Args)]
pub struct PlanArgs {
    /// The database.
    #[arg(long)]
    db: String,
    /// Every server of the database, the old primary included: HOST:PORT, comma separated.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "HOST:PORT,..."
    )]
    servers: Vec<String>,
    /// The primary's quorum policy, used when the primary does not answer (`acks 1`,
    /// `majority`, `any 1 (n2,n3)`, ...).
    #[arg(long, value_name = "POLICY")]
    quorum: Option<String>,
    /// Where ca.pem, client.pem and client.key are.
    #[arg(long, env = "REPNODE_TLS_DIR", default_value = "certs")]
    tls_dir: PathBuf,
    /// An existing PKI instead of `--tls-dir`: the cluster CA's certificate (PEM), with
    /// `--cert` and `--key`.
    #[arg(long, env = "REPNODE_CA_CERT", requires_all = ["cert", "key"])]
    ca_cert: Option<PathBuf>,
    /// This client's certificate (PEM), with `--ca-cert`.
    #[arg(long, env = "REPNODE_CERT", requires = "ca_cert")]
    cert: Option<PathBuf>,
    /// This client's private key (PEM), with `--ca-cert`.
    #[arg(long, env = "REPNODE_KEY", requires = "ca_cert")]
    key: Option<PathBuf>,
    /// Give up on a server after this many seconds; it is then listed as unreachable.
    #[arg(long, env = "REPNODE_TIMEOUT", default_value_t = 5.0)]
    timeout: f64,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs `failover plan`; returns 0 or [`EXIT_NOT_SAFE`].
pub async fn run(command: FailoverCommand) -> Result<ExitCode> {
    let FailoverCommand::Plan(args) = command;
    let quorum = args
        .quorum
        .as_deref()
        .map(str::parse::<Quorum>)
        .transpose()?;
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(args.timeout);
    // A server listed twice would answer twice, and count twice toward the rule.
    let mut servers: Vec<String> = Vec::new();
    for server in args
        .servers
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        if !servers.iter().any(|s| s == server) {
            servers.push(server.to_string());
        }
    }
    if servers.is_empty() {
        bail!("--servers lists no server");
    }
    let files = (&args.ca_cert, &args.cert, &args.key);
    let identity = super::load_identity(&args.tls_dir, files, "client").with_context(|| {
        format!(
            "loading the client identity from {}",
            args.tls_dir.display()
        )
    })?;
    let asks: Vec<_> = servers
        .iter()
        .map(|server| {
            tokio::spawn(ask(
                server.clone(),
                identity.clone(),
                args.db.clone(),
                timeout,
            ))
        })
        .collect();
    let mut listed = Vec::with_capacity(servers.len());
    for (server, ask) in servers.into_iter().zip(asks) {
        let heard = ask
            .await
            .unwrap_or_else(|e| Heard::Unreachable(format!("the request failed: {e}")));
        listed.push(Listed { server, heard });
    }
    let plan = plan(&args.db, &listed, quorum.as_ref());
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        print!("{}", text(&plan));
    }
    Ok(ExitCode::from(if plan.is_safe() {
        0
    } else {
        EXIT_NOT_SAFE
    }))
}

/// One server's status of `db`, or why there is none; never longer than `timeout`.
async fn ask(server: String, identity: TlsIdentity, db: String, timeout: Duration) -> Heard {
    let attempt = async {
        let mut client = match Client::connect(&server, identity).await {
            Ok(client) => client,
            Err(error) => return Heard::Unreachable(chain(&error)),
        };
        let node = client.server_identity().to_string();
        match client.request(&Request::Status { db }, Some(timeout)).await {
            Ok(Outcome::Answered(Response::Status(report))) => Heard::Status { node, report },
            Ok(Outcome::Answered(Response::Error { message, .. })) => Heard::NoStatus(message),
            Ok(Outcome::Answered(_)) => Heard::NoStatus("an answer that is not a status".into()),
            Ok(Outcome::Unknown(why)) => Heard::Unreachable(why),
            Err(error) => Heard::Unreachable(chain(&error)),
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Heard::Unreachable(format!("no answer within {} s", timeout.as_secs_f64()))
        })
}

/// An error and its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn position(p: &Option<Position>) -> String {
    p.as_ref()
        .map_or_else(|| "-".into(), |p| format!("tx {} ({})", p.tx_id, p.hash))
}

/// The plan for people.
fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let policy = match (&plan.policy, &plan.policy_from) {
        (Some(policy), Some(from)) => format!("{policy} (from {from})"),
        (Some(policy), None) => policy.clone(),
        _ => "unknown".into(),
    };
    let _ = writeln!(out, "database {}, policy {policy}", plan.db);
    if let Some(members) = &plan.membership {
        let _ = writeln!(
            out,
            "membership ({}): {}",
            members.len(),
            members.join(", ")
        );
    }
    let _ = writeln!(out, "servers:");
    for m in &plan.members {
        match (&m.role, &m.error) {
            (Some(role), _) => {
                let _ = writeln!(
                    out,
                    "  {} {}: {role}, epoch {} (last tx's {}), committed {}, precommitted {}",
                    m.server,
                    m.node.as_deref().unwrap_or("?"),
                    m.epoch.unwrap_or(0),
                    m.last_epoch.unwrap_or(0),
                    position(&m.committed),
                    position(&m.precommitted),
                );
            }
            (None, error) => {
                let state = if m.reachable {
                    "no status"
                } else {
                    "unreachable"
                };
                let _ = writeln!(
                    out,
                    "  {}: {state}: {}",
                    m.server,
                    error.as_deref().unwrap_or("")
                );
            }
        }
    }
    for r in &plan.rule {
        let basis = match r.basis {
            Basis::Names => "the names",
            Basis::Membership => "the membership",
            Basis::Assumed => "the listed servers, assumed",
        };
        let _ = writeln!(
            out,
            "rule `{}`: k = {} of n = {} ({basis}); {} must answer, {} did{}{}",
            r.policy,
            r.k,
            r.n,
            r.needed,
            r.answered,
            if r.holds { ": holds" } else { "" },
            if r.not_heard_from.is_empty() {
                String::new()
            } else {
                format!("; not heard from: {}", r.not_heard_from.join(", "))
            }
        );
    }
    let _ = writeln!(out, "candidates:");
    if plan.candidates.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for (rank, c) in plan.candidates.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}. {} {}: {}, precommitted tx {}, committed tx {}, missing up to {} txs{}",
            rank + 1,
            c.server,
            c.node,
            if c.safe { "safe" } else { "unsafe" },
            c.precommitted_tx_id,
            c.committed_tx_id,
            c.missing_txs,
            c.why
                .as_deref()
                .map_or(String::new(), |why| format!(" ({why})"))
        );
    }
    let _ = writeln!(
        out,
        "recommended: {}",
        plan.recommended.as_deref().unwrap_or("none")
    );
    let _ = writeln!(out, "{}", plan.verdict);
    for line in &plan.assumptions {
        let _ = writeln!(out, "assumption: {line}");
    }
    for line in &plan.notes {
        let _ = writeln!(out, "note: {line}");
    }
    if !plan.not_heard_from.is_empty() {
        let _ = writeln!(out, "not heard from: {}", plan.not_heard_from.join(", "));
    }
    out
}
