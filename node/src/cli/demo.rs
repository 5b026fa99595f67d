//! `repnode demo`: a local cluster on loopback with real QUIC and files in a temporary
//! directory — a primary, a synchronous replica, an asynchronous replica and a replica of a
//! replica — narrating writes, a lost synchronous replica and its return, then the loss of the
//! primary: the most advanced replica promoted, the others repointed, nothing lost. When etcd
//! is installed, a last act (`demo_auto`) shows the same done automatically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use node::kv::{KvOp, KvStore, KvTx};
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{EngineConfig, EngineStatus, Role};
use replication_core::quorum::Quorum;
use replication_core::{Epoch, TxId};
use store_file::{FileLog, FileLogOptions};
use transport_quic::{DevCa, QuicOptions, QuicTransport, TlsIdentity};

const DATABASE: &str = "demo";

/// One running member of the demo cluster.
struct Member {
    name: &'static str,
    node: Node,
    store: KvStore,
    transport: Arc<QuicTransport>,
    address: String,
}

struct Cluster {
    ca: DevCa,
    dir: PathBuf,
}

impl Cluster {
    async fn start(
        &self,
        name: &'static str,
        role: Role,
        policy: Quorum,
        listen: &str,
    ) -> Result<Member> {
        self.start_above(name, role, policy, listen, Epoch(0)).await
    }

    /// Starts `name`; as a primary, it begins an epoch above `min_epoch` too.
    async fn start_above(
        &self,
        name: &'static str,
        role: Role,
        policy: Quorum,
        listen: &str,
        min_epoch: Epoch,
    ) -> Result<Member> {
        let issued = self.ca.issue(name)?;
        let identity =
            TlsIdentity::from_pem(&self.ca.cert_pem(), &issued.cert_pem, &issued.key_pem)?;
        let options = QuicOptions {
            idle_timeout: Duration::from_secs(2),
            ..QuicOptions::default()
        };
        // A node restarted on its address may find the port still held for a moment by the
        // tasks of its previous run, which end as their connections close: retry briefly.
        let mut attempts = 0;
        let transport = loop {
            match QuicTransport::bind(listen.parse()?, identity.clone(), options.clone()).await {
                Ok(transport) => break Arc::new(transport),
                Err(_) if attempts < 50 && !listen.ends_with(":0") => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error.into()),
            }
        };
        let address = transport.local_addr()?.to_string();
        let log = FileLog::open(self.dir.join(name), FileLogOptions::default())
            .with_context(|| format!("opening {name}'s log"))?;
        let mut config = EngineConfig::new(name, DATABASE, role);
        config.heartbeat_interval = Duration::from_millis(200);
        config.peer_timeout = Duration::from_secs(2);
        config.reconnect_max = Duration::from_millis(500);
        config.min_epoch = min_epoch;
        let store = KvStore::default();
        let node = Node::start(
            config,
            Arc::new(policy),
            log,
            transport.clone(),
            store.clone(),
            NodeOptions::default(),
        )
        .await
        .with_context(|| format!("starting {name}"))?;
        Ok(Member {
            name,
            node,
            store,
            transport,
            address,
        })
    }
}

fn set(key: &str, value: &str) -> bytes::Bytes {
    KvTx {
        ops: vec![KvOp::Set {
            key: key.into(),
            value: value.into(),
        }],
    }
    .encode()
}

fn show(name: &str, status: &EngineStatus) {
    let role = match &status.role {
        Role::Primary => "primary".to_string(),
        Role::Replica { address } => format!("replica of {address}"),
        Role::ExternalReplica => "replica fed by an external replicator".to_string(),
    };
    println!(
        "  {name}: {role}, epoch {}, committed tx_id {}, precommitted tx_id {} (hash {}…)",
        status.epoch,
        status.committed,
        status.durable.tx_id,
        &status.durable.hash.to_hex()[..12]
    );
    for replica in &status.replicas {
        println!(
            "      replica {} acked tx {}, lag {} txs / {} ms, {}",
            replica.id,
            replica.acked,
            replica.lag_txs,
            replica.lag.as_millis(),
            if replica.connected {
                "connected"
            } else {
                "DISCONNECTED"
            }
        );
    }
}

async fn show_all(members: &[&Member]) -> Result<()> {
    for member in members {
        show(member.name, &member.node.status().await?);
    }
    Ok(())
}

async fn wait_for(what: &str, check: impl AsyncFn() -> bool) -> Result<()> {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("timed out waiting for {what}"))
}

/// Waits until these sources have seen every replica connected acknowledge `tx_id`.
async fn settle(sources: &[&Member], tx_id: TxId) -> Result<()> {
    for source in sources {
        wait_for("acknowledgements", async || {
            source
                .node
                .status()
                .await
                .is_ok_and(|s| s.replicas.iter().all(|r| !r.connected || r.acked >= tx_id))
        })
        .await?;
    }
    Ok(())
}

/// Runs the demo in `dir` (a temporary directory when `None`).
///
/// # Errors
/// Any step that does not behave as narrated.
pub async fn run(dir: Option<&Path>) -> Result<()> {
    let temporary = tempfile::tempdir()?;
    let dir = dir.unwrap_or(temporary.path()).to_path_buf();
    let cluster = Cluster {
        ca: DevCa::generate("repnode demo CA")?,
        dir: dir.clone(),
    };
    println!(
        "repnode demo: four nodes on loopback over QUIC with mutual TLS, logs in {}",
        dir.display()
    );
    println!(
        "database {DATABASE:?}: n1 primary with quorum `any 1 (n2)` (n2 is synchronous), n3 asynchronous replica of n1, n4 replica of n3\n"
    );

    let policy: Quorum = "any 1 (n2)".parse()?;
    let n1 = cluster
        .start("n1", Role::Primary, policy, "127.0.0.1:0")
        .await?;
    let of = |member: &Member| Role::Replica {
        address: member.address.clone(),
    };
    let n2 = cluster
        .start("n2", of(&n1), Quorum::Async, "127.0.0.1:0")
        .await?;
    let n3 = cluster
        .start("n3", of(&n1), Quorum::Async, "127.0.0.1:0")
        .await?;
    let n4 = cluster
        .start("n4", of(&n3), Quorum::Async, "127.0.0.1:0")
        .await?;

    println!(
        "1. Writing five keys to n1. Each is acknowledged only once n1 and n2 hold it on disk."
    );
    let mut last = TxId::ZERO;
    for (key, value) in [
        ("apples", "3"),
        ("pears", "5"),
        ("plums", "8"),
        ("figs", "2"),
        ("kiwis", "13"),
    ] {
        let receipt = n1.node.write(set(key, value)).await?;
        println!(
            "   {key}={value}: tx {} ({:?}), hash {}…",
            receipt.tx_id,
            receipt.ack,
            &receipt.hash.to_hex()[..12]
        );
        last = receipt.tx_id;
    }
    for member in [&n2, &n3, &n4] {
        member.node.wait_applied(last).await?;
    }
    settle(&[&n1, &n3], last).await?;
    println!("\n   Every node has applied tx {last}:");
    show_all(&[&n1, &n2, &n3, &n4]).await?;

    println!("\n2. n2, the synchronous replica, is killed.");
    let n2_address = n2.address.clone();
    n2.node.shutdown().await;
    n2.transport.shutdown().await;
    drop(n2);
    let waiting = tokio::spawn({
        let node = n1.node.clone();
        async move { node.write(set("apples", "4")).await }
    });
    wait_for("the write to be precommitted", async || {
        n1.node
            .status()
            .await
            .map(|s| s.durable.tx_id > last && s.waiting_writes == 1)
            .unwrap_or(false)
    })
    .await?;
    println!("   A write of apples=4 is precommitted on n1 but waits for its quorum:");
    show(n1.name, &n1.node.status().await?);
    ensure!(
        !waiting.is_finished(),
        "the write must wait while n2 is down"
    );
    println!(
        "   Reads go on meanwhile: n1 reads apples={:?}, n4 reads pears={:?}",
        n1.store.get("apples").map(|(v, _)| v),
        n4.store.get("pears").map(|(v, _)| v)
    );

    println!(
        "\n3. n2 restarts from its own directory and catches up; the waiting write completes by itself."
    );
    let n2 = cluster
        .start("n2", of(&n1), Quorum::Async, &n2_address)
        .await?;
    let receipt = waiting.await??;
    println!(
        "   apples=4 committed as tx {} ({:?})",
        receipt.tx_id, receipt.ack
    );
    for member in [&n2, &n3, &n4] {
        member.node.wait_applied(receipt.tx_id).await?;
    }
    settle(&[&n1, &n3], receipt.tx_id).await?;
    show_all(&[&n1, &n2, &n3, &n4]).await?;
    let expected = n1.store.snapshot();
    for member in [&n2, &n3, &n4] {
        ensure!(
            member.store.snapshot() == expected,
            "{} differs from the primary",
            member.name
        );
    }
    println!(
        "\nNothing was lost: all four nodes hold the same {} keys at tx {}.",
        expected.len(),
        receipt.tx_id
    );

    let (n1, n2, n3, n4) = fail_over(&cluster, n1, n2, n3, n4).await?;
    for member in [n4, n3, n2, n1] {
        member.node.shutdown().await;
        member.transport.shutdown().await;
    }
    super::demo_auto::run(&dir).await
}

/// Act 4: the primary is lost; the most advanced member is promoted above every epoch seen,
/// the other replica is repointed, and the old primary rejoins as a replica.
async fn fail_over(
    cluster: &Cluster,
    n1: Member,
    n2: Member,
    n3: Member,
    n4: Member,
) -> Result<(Member, Member, Member, Member)> {
    println!("\n4. n1, the primary, is lost. The plan, as `repnode failover plan` makes it:");
    let n1_address = n1.address.clone();
    n1.node.shutdown().await;
    n1.transport.shutdown().await;
    drop(n1);
    let (s2, s3) = (n2.node.status().await?, n3.node.status().await?);
    // Logs compare by the epoch of their last transaction, then by position: every write n1
    // acknowledged is on n2 (`any 1 (n2)`), so n2 holds all of them if it is the most advanced.
    let rank = |s: &EngineStatus| (s.last_epoch, s.durable.tx_id);
    for (name, status) in [("n2", &s2), ("n3", &s3)] {
        println!(
            "   {name}: last transaction of epoch {}, precommitted tx_id {}",
            status.last_epoch, status.durable.tx_id
        );
    }
    ensure!(
        rank(&s2) >= rank(&s3),
        "n2 must hold every acknowledged write"
    );
    println!("   n2 holds every acknowledged write: it is promoted, with quorum `any 1 (n3)`.");
    let seen = s2.epoch.max(s3.epoch);
    let n2_address = n2.address.clone();
    n2.node.shutdown().await;
    n2.transport.shutdown().await;
    drop(n2);
    let policy: Quorum = "any 1 (n3)".parse()?;
    let n2 = cluster
        .start_above("n2", Role::Primary, policy, &n2_address, seen)
        .await?;
    println!("   n3 is repointed to n2; n4 goes on following n3; n1 rejoins as n2's replica.");
    n3.node.shutdown().await;
    n3.transport.shutdown().await;
    let n3_address = n3.address.clone();
    drop(n3);
    let of = |member: &Member| Role::Replica {
        address: member.address.clone(),
    };
    let n3 = cluster
        .start("n3", of(&n2), Quorum::Async, &n3_address)
        .await?;
    let n1 = cluster
        .start("n1", of(&n2), Quorum::Async, &n1_address)
        .await?;
    let receipt = n2.node.write(set("bananas", "21")).await?;
    println!(
        "   bananas=21 written to n2: tx {} ({:?}), epoch {}",
        receipt.tx_id,
        receipt.ack,
        n2.node.status().await?.epoch
    );
    for member in [&n1, &n3, &n4] {
        member.node.wait_applied(receipt.tx_id).await?;
    }
    settle(&[&n2, &n3], receipt.tx_id).await?;
    show_all(&[&n2, &n1, &n3, &n4]).await?;
    let expected = n2.store.snapshot();
    for member in [&n1, &n3, &n4] {
        ensure!(
            member.store.snapshot() == expected,
            "{} differs from the new primary",
            member.name
        );
    }
    println!(
        "\nAfter the failover nothing was lost: all four nodes hold the same {} keys at tx {}.",
        expected.len(),
        receipt.tx_id
    );
    Ok((n1, n2, n3, n4))
}
