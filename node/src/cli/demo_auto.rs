//! `repnode demo`'s last act, when etcd is installed: automatic failover. Three
//! `repnode serve` processes (this binary) under a local etcd, database `auto` created with
//! `--failover auto`; the primary is killed with SIGKILL, etcd's lease runs out, the most
//! advanced replica is elected in a new epoch, nothing acknowledged is lost, and the old
//! primary, restarted, follows the new one.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use coordinator_etcd::testing::EtcdServer;
use node::client::Outcome;
use node::kv::KvOp;
use node::routing::{request_any, request_primary};
use node::wire::{DbSettings, Request, Response, StatusReport};
use transport_quic::TlsIdentity;

const DATABASE: &str = "auto";
const LEASE_TTL_SECS: u64 = 2;

/// A `repnode serve` child, killed on drop.
struct Process {
    name: &'static str,
    child: Child,
    address: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_address() -> Result<String> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.to_string())
}

fn serve(dir: &Path, name: &'static str, address: &str, etcd: &str) -> Result<Process> {
    let child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--name",
            name,
            "--listen",
            address,
            "--threads",
            "1",
        ])
        .arg("--dir")
        .arg(dir.join(name))
        .arg("--tls-dir")
        .arg(dir.join("certs"))
        .args([
            "--coordinator",
            &format!("etcd={etcd}"),
            "--cluster",
            "demo",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting repnode serve")?;
    Ok(Process {
        name,
        child,
        address: address.to_string(),
    })
}

/// Sends `request` to the first of `servers` that answers (the primary, for `primary`),
/// retrying for up to `within` while none answers as asked.
async fn ask(
    identity: &TlsIdentity,
    servers: &[String],
    request: Request,
    primary: bool,
    within: Duration,
) -> Result<Response> {
    let deadline = Instant::now() + within;
    loop {
        let timeout = Some(Duration::from_secs(2));
        let routed = match primary {
            true => request_primary(servers, identity, &request, timeout).await,
            false => request_any(servers, identity, &request, timeout).await,
        };
        let last = match routed.map(|r| r.outcome) {
            Ok(Outcome::Answered(Response::Error { message, .. })) => message,
            Ok(Outcome::Answered(answer)) => return Ok(answer),
            Ok(Outcome::Unknown(why)) => why,
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(anyhow!("{request:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status(identity: &TlsIdentity, server: &str) -> Result<StatusReport> {
    let request = Request::Status {
        db: DATABASE.into(),
    };
    match ask(
        identity,
        &[server.into()],
        request,
        false,
        Duration::from_secs(10),
    )
    .await?
    {
        Response::Status(report) => Ok(*report),
        other => Err(anyhow!("unexpected answer {other:?}")),
    }
}

/// Waits until `server`'s status satisfies `ready`.
async fn until(
    identity: &TlsIdentity,
    server: &str,
    what: &str,
    ready: impl Fn(&StatusReport) -> bool,
) -> Result<StatusReport> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(report) = status(identity, server).await
            && ready(&report)
        {
            return Ok(report);
        }
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn put(
    identity: &TlsIdentity,
    servers: &[String],
    key: &str,
    within: Duration,
) -> Result<u64> {
    let request = Request::Write {
        db: DATABASE.into(),
        ops: vec![KvOp::Set {
            key: key.into(),
            value: format!("{key}-value"),
        }],
    };
    match ask(identity, servers, request, true, within).await? {
        Response::Written { tx_id, .. } => Ok(tx_id),
        other => Err(anyhow!("unexpected answer {other:?}")),
    }
}

fn show(name: &str, report: &StatusReport) {
    let failover = report.failover.clone().unwrap_or_default();
    println!(
        "  {name}: {}, epoch {}, committed tx_id {}, leader key held by {} (epoch {}){}",
        report.role,
        report.epoch,
        report.committed.tx_id,
        failover.leader.as_deref().unwrap_or("nobody"),
        failover.leader_epoch.map_or("-".into(), |e| e.to_string()),
        match failover.lease_remaining_ms {
            Some(ms) => format!(", may acknowledge for {ms} ms without a renewal"),
            None => String::new(),
        }
    );
}

/// Runs the act in `dir`, or says how to install etcd when it is missing.
///
/// # Errors
/// A step that does not behave as narrated.
pub async fn run(dir: &Path) -> Result<()> {
    println!("\n5. Automatic failover: etcd holds the leader key, and nobody has to wake up.");
    let etcd = match EtcdServer::start() {
        Ok(etcd) => etcd,
        Err(why) => {
            println!("   Skipped: {why}. (ci/deps.sh installs it.)");
            return Ok(());
        }
    };
    let dir = dir.join("automatic");
    std::fs::create_dir_all(&dir)?;
    transport_quic::write_dev_pki(&dir.join("certs"), &["n1", "n2", "n3"])?;
    let identity = TlsIdentity::load(&dir.join("certs"), "client")?;
    let names = ["n1", "n2", "n3"];
    let mut servers = Vec::new();
    for name in names {
        servers.push(serve(&dir, name, &free_address()?, &etcd.endpoint())?);
    }
    let all: Vec<String> = servers.iter().map(|s| s.address.clone()).collect();
    println!(
        "   etcd on {}; n1, n2, n3 serve database {DATABASE:?} with --failover auto, quorum \
         `acks 1`, lease TTL {LEASE_TTL_SECS} s.",
        etcd.endpoint()
    );
    let source = format!("{}/{DATABASE}", all[0]);
    for (index, server) in all.iter().enumerate() {
        let settings = DbSettings {
            replica_of: (index > 0).then(|| source.clone()),
            quorum: (index == 0).then(|| "acks 1".to_string()),
            failover: Some("auto".into()),
            lease_ttl: Some(LEASE_TTL_SECS),
            ..DbSettings::default()
        };
        let create = Request::CreateDb {
            name: DATABASE.into(),
            settings,
        };
        ask(
            &identity,
            std::slice::from_ref(server),
            create,
            false,
            Duration::from_secs(20),
        )
        .await?;
    }
    until(&identity, &all[0], "n1 to lead", |r| {
        r.failover.as_ref().and_then(|f| f.leader.as_deref()) == Some("n1") && r.members.len() == 2
    })
    .await?;
    let mut last = 0;
    for key in ["oak", "ash", "elm"] {
        last = put(&identity, &all, key, Duration::from_secs(10)).await?;
    }
    println!("   Three keys written through n1 (tx {last}); n1 holds the leader key:");
    for (name, server) in names.iter().zip(&all) {
        show(name, &status(&identity, server).await?);
    }
    // Its commit point and membership reach etcd within a cycle.
    tokio::time::sleep(Duration::from_millis(LEASE_TTL_SECS * 1000 / 2)).await;

    println!("\n   n1 is killed (SIGKILL): it renews its lease no more.");
    let killed = Instant::now();
    servers[0].child.kill()?;
    servers[0].child.wait()?;
    let survivors = all[1..].to_vec();
    let tx = put(&identity, &survivors, "yew", Duration::from_secs(30)).await?;
    let took = killed.elapsed();
    println!(
        "   yew written as tx {tx} {:.1} s after the kill: the lease ran out, a replica holding \
         every acknowledged write was elected, the other follows it.",
        took.as_secs_f64()
    );
    for (name, server) in names[1..].iter().zip(&survivors) {
        show(name, &status(&identity, server).await?);
    }

    println!("\n   n1 restarts: it finds the key held by another and follows it.");
    let n1 = serve(&dir, "n1", &all[0], &etcd.endpoint())?;
    servers[0] = n1;
    let report = until(&identity, &all[0], "n1 to follow", |r| {
        r.role == "replica" && r.upstream.as_deref() == Some("streaming") && r.committed.tx_id >= tx
    })
    .await?;
    show(servers[0].name, &report);
    for key in ["oak", "ash", "elm", "yew"] {
        let get = Request::Get {
            db: DATABASE.into(),
            key: key.into(),
            min_tx: Some(tx),
            wait_ms: 5_000,
            primary: false,
        };
        let answer = ask(&identity, &all[..1], get, false, Duration::from_secs(10)).await?;
        let expected = format!("{key}-value");
        ensure!(
            matches!(&answer, Response::Value { value: Some(v), .. } if *v == expected),
            "n1 lacks {key}: {answer:?}"
        );
    }
    println!("\nAfter the automatic failover nothing was lost: n1 reads all four keys.");
    Ok(())
}
