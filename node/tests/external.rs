//! The external replicator: a database created with `external_replicator` takes pushed
//! transactions (immudb's ReplicateTx) only when they extend its hash chain; the replicator
//! copies a primary's committed transactions into it.

use std::time::Duration;

use node::client::{Client, Outcome};
use node::kv::{KvOp, KvTx};
use node::server::Server;
use node::wire::{DbSettings, Request, Response};
use replication_core::{Epoch, LogPosition, Tx, TxId};
use transport_quic::{QuicOptions, QuicTransport, TlsIdentity, write_dev_pki};

async fn server(
    certs: &std::path::Path,
    name: &str,
    dir: &std::path::Path,
) -> std::sync::Arc<Server> {
    let identity = TlsIdentity::load(certs, name).expect("identity");
    let transport = QuicTransport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        identity,
        QuicOptions::default(),
    )
    .await
    .expect("bind");
    Server::start(name, dir, transport).await.expect("server")
}

async fn ask(client: &mut Client, request: Request) -> Response {
    match client
        .request(&request, Some(Duration::from_secs(20)))
        .await
        .expect("request")
    {
        Outcome::Answered(response) => response,
        Outcome::Unknown(why) => panic!("no answer: {why}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_replicator_copies_committed_transactions_and_forgeries_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let certs = root.path().join("certs");
    write_dev_pki(&certs, &["n1", "n2"]).expect("pki");
    let n1 = server(&certs, "n1", &root.path().join("n1")).await;
    let n2 = server(&certs, "n2", &root.path().join("n2")).await;
    let (a1, a2) = (
        n1.local_addr().expect("addr").to_string(),
        n2.local_addr().expect("addr").to_string(),
    );
    let client_identity = TlsIdentity::load(&certs, "client").expect("client identity");
    let mut c1 = Client::connect(&a1, client_identity.clone())
        .await
        .expect("client n1");
    let mut c2 = Client::connect(&a2, client_identity.clone())
        .await
        .expect("client n2");

    assert!(matches!(
        ask(
            &mut c1,
            Request::CreateDb {
                name: "app".into(),
                // The replicator uses the client certificate: the source must name it.
                settings: DbSettings {
                    replicators: Some(vec!["client".into()]),
                    ..DbSettings::default()
                },
            }
        )
        .await,
        Response::Done { .. }
    ));
    let mirror = DbSettings {
        external_replicator: true,
        ..DbSettings::default()
    };
    assert!(matches!(
        ask(
            &mut c2,
            Request::CreateDb {
                name: "mirror".into(),
                settings: mirror
            }
        )
        .await,
        Response::Done { .. }
    ));
    for i in 0..20 {
        let ops = vec![KvOp::Set {
            key: format!("k{i}"),
            value: format!("v{i}"),
        }];
        assert!(matches!(
            ask(
                &mut c1,
                Request::Write {
                    db: "app".into(),
                    ops
                }
            )
            .await,
            Response::Written { .. }
        ));
    }

    let last = node::replicator::copy(
        &a1,
        "app",
        &a2,
        "mirror",
        client_identity.clone(),
        Some(TxId(20)),
    )
    .await
    .expect("copy");
    assert_eq!(last, TxId(20));
    let Response::Value { value, .. } = ask(
        &mut c2,
        Request::Get {
            db: "mirror".into(),
            key: "k19".into(),
            min_tx: Some(20),
            wait_ms: 5000,
            primary: false,
        },
    )
    .await
    else {
        panic!("value expected");
    };
    assert_eq!(value.as_deref(), Some("v19"));

    // A forged continuation is refused and nothing is stored.
    let Response::Status(status) = ask(
        &mut c2,
        Request::Status {
            db: "mirror".into(),
        },
    )
    .await
    else {
        panic!()
    };
    assert_eq!(status.precommitted.tx_id, 20);
    let wrong_prev = LogPosition {
        tx_id: TxId(20),
        hash: Default::default(),
    };
    let forged = Tx::new(
        wrong_prev,
        Epoch(1),
        KvTx {
            ops: vec![KvOp::Set {
                key: "k0".into(),
                value: "evil".into(),
            }],
        }
        .encode(),
    );
    let Response::Error { message, .. } = ask(
        &mut c2,
        Request::Replicate {
            db: "mirror".into(),
            txs: vec![forged],
        },
    )
    .await
    else {
        panic!("a forged transaction must be refused");
    };
    assert!(message.contains("hash chain"), "{message}");
    // Direct writes to the mirror are refused too.
    let refused = ask(
        &mut c2,
        Request::Write {
            db: "mirror".into(),
            ops: vec![KvOp::Delete { key: "k0".into() }],
        },
    )
    .await;
    assert!(matches!(refused, Response::Error { .. }));

    // Later writes follow with another run of the replicator.
    assert!(matches!(
        ask(
            &mut c1,
            Request::Write {
                db: "app".into(),
                ops: vec![KvOp::Delete { key: "k0".into() }]
            }
        )
        .await,
        Response::Written { .. }
    ));
    let last = node::replicator::copy(&a1, "app", &a2, "mirror", client_identity, Some(TxId(21)))
        .await
        .expect("copy again");
    assert_eq!(last, TxId(21));
    let Response::Value { value, .. } = ask(
        &mut c2,
        Request::Get {
            db: "mirror".into(),
            key: "k0".into(),
            min_tx: Some(21),
            wait_ms: 5000,
            primary: false,
        },
    )
    .await
    else {
        panic!();
    };
    assert_eq!(value, None);

    // Without a replicators list, a client certificate may not replicate: only nodes may.
    assert!(matches!(
        ask(
            &mut c1,
            Request::CreateDb {
                name: "closed".into(),
                settings: DbSettings::default()
            }
        )
        .await,
        Response::Done { .. }
    ));
    let mirror2 = DbSettings {
        external_replicator: true,
        ..DbSettings::default()
    };
    assert!(matches!(
        ask(
            &mut c2,
            Request::CreateDb {
                name: "mirror2".into(),
                settings: mirror2
            }
        )
        .await,
        Response::Done { .. }
    ));
    let identity = TlsIdentity::load(&certs, "client").expect("client identity");
    let refused = node::replicator::copy(&a1, "closed", &a2, "mirror2", identity, Some(TxId(1)))
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("not allowed to replicate"),
        "{refused}"
    );
    n1.shutdown().await;
    n2.shutdown().await;
}
