//! The etcd coordinator against a real etcd on loopback: the conformance suite, campaigns
//! racing from many clients, calls while etcd is frozen, and mutual TLS.

use std::sync::Arc;
use std::time::Duration;

use coordinator_etcd::testing::{EtcdServer, EtcdTlsFiles};
use coordinator_etcd::{EtcdCoordinator, EtcdOptions, EtcdTls};
use replication_core::coordinator::{Campaign, Coordinator, CoordinatorError, LeaseId};
use replication_core::testing::coordinator_conformance;
use replication_core::types::Epoch;
use transport_quic::{DevCa, IssuedCert};

async fn coordinator(etcd: &EtcdServer, cluster: &str) -> EtcdCoordinator {
    let options = EtcdOptions::new(vec![etcd.endpoint()], cluster);
    EtcdCoordinator::connect(options)
        .await
        .expect("connect to etcd")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_coordinator_conforms() {
    let etcd = EtcdServer::start().expect("start etcd");
    let a = coordinator(&etcd, "conformance").await;
    let b = coordinator(&etcd, "conformance").await;
    // etcd grants at least its minimum TTL (a few heartbeats); 2 s is above it here.
    coordinator_conformance(&a, &b, "db", Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_campaigns_elect_one_leader_per_epoch() {
    let etcd = EtcdServer::start().expect("start etcd");
    let mut epochs = Vec::new();
    for round in 0..5u64 {
        let mut racers = Vec::new();
        for member in 0..8 {
            let client = Arc::new(coordinator(&etcd, "race").await);
            racers.push(tokio::spawn(async move {
                let lease = client.grant_lease(Duration::from_secs(10)).await?;
                let name = format!("m{member}");
                let outcome = client
                    .campaign("db", &name, "addr", lease, Epoch(round))
                    .await?;
                Ok::<_, CoordinatorError>((name, lease, outcome, client))
            }));
        }
        let mut winners = Vec::new();
        let mut held = Vec::new();
        for racer in racers {
            let (name, lease, outcome, client) = racer.await.unwrap().expect("campaign");
            match outcome {
                Campaign::Won { epoch } => winners.push((name, lease, epoch, client)),
                Campaign::Held(leader) => held.push(leader),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
        let (name, lease, epoch, client) = winners.pop().unwrap();
        assert!(held.iter().all(|l| l.member == name && l.epoch == epoch));
        epochs.push(epoch);
        client.revoke_lease(lease).await.expect("revoke");
    }
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "epochs not rising: {epochs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_answers_unavailable_within_the_call_timeout() {
    let etcd = EtcdServer::start().expect("start etcd");
    let client = coordinator(&etcd, "frozen").await;
    let lease = client
        .grant_lease(Duration::from_secs(5))
        .await
        .expect("grant");
    etcd.pause();
    let renewed = client.renew_lease(lease).await;
    assert!(
        matches!(renewed, Err(CoordinatorError::Unavailable(_))),
        "{renewed:?}"
    );
    assert!(matches!(
        client.view("db").await,
        Err(CoordinatorError::Unavailable(_))
    ));
    etcd.resume();
    // Back within the lease: the lease is still there.
    let mut renewed = Err(CoordinatorError::Unavailable(String::new()));
    for _ in 0..20 {
        renewed = client.renew_lease(lease).await;
        if renewed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    renewed.expect("renew after etcd resumed");
}

#[tokio::test]
async fn a_bad_cluster_name_is_refused() {
    let options = EtcdOptions::new(vec!["127.0.0.1:1".into()], "a/b");
    let refused = EtcdCoordinator::connect(options).await;
    assert!(
        matches!(refused, Err(CoordinatorError::Unavailable(m)) if m.contains("bad cluster name"))
    );
}

/// Grants a lease, retrying while etcd is still starting (its TLS port opens before it
/// answers).
async fn grant_when_ready(etcd: &EtcdCoordinator) -> Result<LeaseId, CoordinatorError> {
    let mut last = Err(CoordinatorError::Unavailable(String::new()));
    for _ in 0..50 {
        last = etcd.grant_lease(Duration::from_secs(5)).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_takes_the_clusters_certificate_and_refuses_another() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("etcd test CA").expect("a CA");
    let server = ca.issue("etcd").expect("etcd's certificate");
    let files = EtcdTlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("etcd.pem"),
        key: dir.path().join("etcd.key"),
    };
    std::fs::write(&files.ca, ca.cert_pem()).expect("write");
    std::fs::write(&files.cert, &server.cert_pem).expect("write");
    std::fs::write(&files.key, &server.key_pem).expect("write");
    let etcd = EtcdServer::start_tls(Some(&files)).expect("start etcd with TLS");
    let with_client = |client: &IssuedCert| {
        let mut options = EtcdOptions::new(vec![etcd.endpoint()], "tls");
        options.tls = Some(EtcdTls {
            ca_pem: ca.cert_pem().into_bytes(),
            cert_pem: client.cert_pem.clone().into_bytes(),
            key_pem: client.key_pem.clone().into_bytes(),
        });
        options
    };
    let member = ca.issue("n1").expect("a client certificate");
    let trusted = EtcdCoordinator::connect(with_client(&member))
        .await
        .expect("connect");
    let lease = grant_when_ready(&trusted)
        .await
        .expect("a lease over mutual TLS");
    let won = trusted.campaign("db", "n1", "a", lease, Epoch(0)).await;
    assert_eq!(won, Ok(Campaign::Won { epoch: Epoch(1) }));
    // A certificate of another CA is refused by etcd; so is a plain connection.
    let rogue = DevCa::generate("another CA")
        .and_then(|other| other.issue("n1"))
        .expect("a rogue certificate");
    let refused = match EtcdCoordinator::connect(with_client(&rogue)).await {
        Ok(client) => client.grant_lease(Duration::from_secs(5)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        matches!(refused, Err(CoordinatorError::Unavailable(_))),
        "{refused:?}"
    );
    let plain = EtcdOptions::new(vec![etcd.endpoint()], "tls");
    let refused = match EtcdCoordinator::connect(plain).await {
        Ok(client) => client.grant_lease(Duration::from_secs(5)).await.map(|_| ()),
        Err(error) => Err(error),
    };
    assert!(
        matches!(refused, Err(CoordinatorError::Unavailable(_))),
        "{refused:?}"
    );
}
