//! A primary and two replicas composed from the replication-core traits with in-memory parts:
//! store-mem logs, the in-memory transport, and a tiny key-value state machine.
//!
//! Run with `cargo run --example three_nodes`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{EngineConfig, Role};
use replication_core::quorum::Quorum;
use replication_core::testing::MemNetwork;
use replication_core::{StateMachine, Tx, TxId};
use store_mem::MemLog;

/// The application's state: `key=value` payloads applied to a map shared with readers.
#[derive(Clone, Default)]
struct KeyValue {
    map: Arc<RwLock<BTreeMap<String, String>>>,
    applied: TxId,
}

impl StateMachine for KeyValue {
    fn apply(&mut self, tx: &Tx) {
        let text = String::from_utf8_lossy(&tx.payload);
        if let Some((key, value)) = text.split_once('=') {
            self.map
                .write()
                .expect("lock")
                .insert(key.into(), value.into());
        }
        self.applied = tx.id;
    }

    fn applied(&self) -> TxId {
        self.applied
    }
}

async fn start(
    network: &MemNetwork,
    name: &str,
    role: Role,
    policy: Quorum,
) -> anyhow::Result<(Node, KeyValue)> {
    let mut config = EngineConfig::new(name, "inventory", role);
    config.peer_timeout = Duration::from_millis(500);
    let state = KeyValue::default();
    let node = Node::start(
        config,
        Arc::new(policy),
        MemLog::new(),
        network.endpoint(name),
        state.clone(),
        NodeOptions::default(),
    )
    .await?;
    Ok((node, state))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let network = MemNetwork::new();
    // n1 commits once n2 (the first listed, connected standby) holds a write durably.
    let policy: Quorum = "first 1 (n2,n3)".parse()?;
    println!("primary n1 with quorum `{policy}`, replicas n2 and n3");
    let (primary, primary_state) = start(&network, "n1", Role::Primary, policy).await?;
    let replica_of_n1 = || Role::Replica {
        address: "n1".into(),
    };
    let (n2, _) = start(&network, "n2", replica_of_n1(), Quorum::Async).await?;
    let (n3, n3_state) = start(&network, "n3", replica_of_n1(), Quorum::Async).await?;

    for (key, value) in [("apples", "3"), ("pears", "5"), ("plums", "8")] {
        let receipt = primary.write(Bytes::from(format!("{key}={value}"))).await?;
        println!(
            "wrote {key}={value}: tx {} ({:?}), hash {}",
            receipt.tx_id,
            receipt.ack,
            &receipt.hash.to_hex()[..16]
        );
    }
    n3.wait_applied(TxId(3)).await?;
    println!(
        "n3 reads apples={:?}",
        n3_state.map.read().expect("lock").get("apples")
    );

    println!("\nstopping n2: under FIRST 1 (n2,n3), n3 takes over as the synchronous standby");
    n2.shutdown().await;
    network.remove("n2");
    let receipt = primary.write(Bytes::from_static(b"apples=2")).await?;
    println!(
        "wrote apples=2: tx {} acknowledged by the quorum ({:?})",
        receipt.tx_id, receipt.ack
    );

    let status = primary.status().await?;
    println!(
        "\nprimary status: epoch {}, committed tx {}, precommitted tx {}",
        status.epoch, status.committed, status.durable.tx_id
    );
    for replica in &status.replicas {
        println!(
            "  replica {:<3} acked tx {:<3} lag {} txs, connected: {}",
            replica.id, replica.acked, replica.lag_txs, replica.connected
        );
    }
    n3.wait_applied(receipt.tx_id).await?;
    let primary_view = primary_state.map.read().expect("lock").clone();
    let replica_view = n3_state.map.read().expect("lock").clone();
    println!("\nprimary and n3 agree: {}", primary_view == replica_view);
    anyhow::ensure!(primary_view == replica_view, "replica diverged");
    primary.shutdown().await;
    n3.shutdown().await;
    Ok(())
}
