//! The QUIC transport: the conformance suite, mutual TLS refusals, authorization by
//! certificate identity, and a replicated cluster over real sockets on loopback.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replication_core::driver::{Node, NodeOptions};
use replication_core::engine::{AckKind, EngineConfig, Role};
use replication_core::quorum::Quorum;
use replication_core::testing::{RecordingStateMachine, TransportFactory, transport_conformance};
use replication_core::{NodeId, Transport, TransportError, TxId};
use store_mem::MemLog;
use transport_quic::testing::{loopback, loopback_as};
use transport_quic::{DevCa, QuicOptions, QuicTransport, TlsIdentity};

const MAX_FRAME: usize = 1 << 20;

fn options() -> QuicOptions {
    QuicOptions {
        max_frame_size: MAX_FRAME,
        idle_timeout: Duration::from_secs(2),
        ..QuicOptions::default()
    }
}

struct Factory {
    ca: DevCa,
    addresses: Mutex<HashMap<String, SocketAddr>>,
}

#[async_trait]
impl TransportFactory for Factory {
    type Transport = QuicTransport;

    async fn start(&self, name: &str) -> (QuicTransport, String) {
        let known = self.addresses.lock().expect("lock").get(name).copied();
        let addr = known
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        // A restarted endpoint takes its old port back; the old socket may linger briefly.
        let mut attempts = 0;
        let transport = loop {
            match QuicTransport::bind(
                addr.parse().expect("addr"),
                self.ca.identity(name).expect("identity"),
                options(),
            )
            .await
            {
                Ok(transport) => break transport,
                Err(error) if attempts < 50 => {
                    attempts += 1;
                    tracing::debug!(%error, "rebinding");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("bind {addr}: {error}"),
            }
        };
        let local = transport.local_addr().expect("local addr");
        self.addresses
            .lock()
            .expect("lock")
            .insert(name.to_string(), local);
        (transport, local.to_string())
    }

    async fn stop(&self, _name: &str, transport: QuicTransport) {
        transport.shutdown().await;
        drop(transport);
    }

    fn max_frame_size(&self) -> usize {
        MAX_FRAME
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_passes_the_transport_conformance_suite() {
    let factory = Factory {
        ca: DevCa::generate("test CA").expect("ca"),
        addresses: Mutex::new(HashMap::new()),
    };
    transport_conformance(&factory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = DevCa::generate("cluster CA").expect("ca");
    let rogue_ca = DevCa::generate("rogue CA").expect("ca");
    let (server, address) = loopback(&ca, "n1", options()).await.expect("bind");
    // A client whose certificate the cluster CA did not sign, though it trusts the cluster CA.
    let rogue = rogue_ca.issue("intruder").expect("issue");
    let rogue_identity =
        TlsIdentity::from_pem(&ca.cert_pem(), &rogue.cert_pem, &rogue.key_pem).expect("identity");
    let (client, _) = loopback_as(rogue_identity, options()).await.expect("bind");
    let outcome: Result<(), TransportError> = match client.connect(&address).await {
        Err(error) => Err(error),
        // TLS 1.3 may let the client finish before the server's verdict arrives: the refusal
        // then shows on first use.
        Ok(mut channel) => {
            let _ = channel.sender.send(Bytes::from_static(b"x")).await;
            match tokio::time::timeout(Duration::from_secs(5), channel.receiver.recv()).await {
                Ok(Err(error)) => Err(error),
                other => panic!("a foreign certificate was accepted: {other:?}"),
            }
        }
    };
    let error = outcome.expect_err("refused").to_string();
    assert!(!error.is_empty());
    // The server accepted no channel from it.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), server.accept())
            .await
            .is_err()
    );

    // And a server with a foreign certificate is refused by an honest client.
    let rogue_server_cert = rogue_ca.issue("n9").expect("issue");
    let rogue_server_identity = TlsIdentity::from_pem(
        &ca.cert_pem(),
        &rogue_server_cert.cert_pem,
        &rogue_server_cert.key_pem,
    )
    .expect("identity");
    let (_rogue_server, rogue_address) = loopback_as(rogue_server_identity, options())
        .await
        .expect("bind");
    let (honest, _) = loopback(&ca, "n2", options()).await.expect("bind");
    let error = honest.connect(&rogue_address).await.expect_err("refused");
    assert!(matches!(error, TransportError::Refused(_)), "{error}");
    assert!(
        error.to_string().to_lowercase().contains("certificate")
            || error.to_string().contains("Unknown"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    let ca = DevCa::generate("cluster CA").expect("ca");
    let (server, _) = loopback(&ca, "n1", options()).await.expect("bind");
    let expired = ca
        .issue_with("n1", |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        })
        .expect("issue");
    let identity = TlsIdentity::from_pem(&ca.cert_pem(), &expired.cert_pem, &expired.key_pem)
        .expect("identity");
    let (_expired_server, expired_address) = loopback_as(identity, options()).await.expect("bind");
    let error = server.connect(&expired_address).await.expect_err("expired");
    assert!(
        error.to_string().to_lowercase().contains("expired"),
        "{error}"
    );
}

/// Not `replication_core::testing::fast_timers`: these tests keep their own, slower timers
/// (heartbeats and reconnection at twice its values, the default 3 s peer timeout rather than
/// its 400 ms), since over real sockets with TLS they were never tried faster.
fn config(name: &str, role: Role) -> EngineConfig {
    let mut config = EngineConfig::new(name, "db", role);
    config.heartbeat_interval = Duration::from_millis(100);
    config.reconnect_min = Duration::from_millis(20);
    config.reconnect_max = Duration::from_millis(200);
    config
}

async fn node(ca: &DevCa, config: EngineConfig, policy: Quorum) -> (Node, String) {
    let name = config.node.0.clone();
    let (transport, address) = loopback(ca, &name, options()).await.expect("bind");
    let node = Node::start(
        config,
        Arc::new(policy),
        MemLog::new(),
        transport,
        RecordingStateMachine::default(),
        NodeOptions::default(),
    )
    .await
    .expect("start");
    (node, address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_cluster_over_quic_and_an_unauthorised_replica() {
    let ca = DevCa::generate("cluster CA").expect("ca");
    let mut primary_config = config("n1", Role::Primary);
    primary_config.allowed_replicators = Some(vec![NodeId::new("n2")]);
    let (primary, address) =
        node(&ca, primary_config, Quorum::AckCount { n: 1, among: None }).await;
    let (replica, _) = node(
        &ca,
        config(
            "n2",
            Role::Replica {
                address: address.clone(),
            },
        ),
        Quorum::Async,
    )
    .await;
    for i in 0..50 {
        let receipt = primary
            .write(Bytes::from(format!("w{i}")))
            .await
            .expect("write");
        assert_eq!(receipt.ack, AckKind::Quorum);
    }
    replica.wait_applied(TxId(50)).await.expect("replicated");

    // n3 holds a valid certificate, but the database does not allow it to replicate.
    let (intruder, _) = node(&ca, config("n3", Role::Replica { address }), Quorum::Async).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let status = intruder.status().await.expect("status");
            if let Some(error) = status.last_error {
                return error;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the refusal is reported");
    assert!(
        refused.contains("\"n3\" is not allowed to replicate"),
        "{refused}"
    );
    assert_eq!(intruder.applied(), TxId(0), "nothing replicated to it");
    for node in [primary, replica, intruder] {
        node.shutdown().await;
    }
}
