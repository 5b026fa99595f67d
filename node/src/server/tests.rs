//! The catalog's reservations, through a real server on loopback: a database being opened
//! (a held reservation) stalls nothing else, its name is refused meanwhile, and a failed open
//! gives the name back.

use std::sync::Arc;
use std::time::Duration;

use transport_quic::{QuicOptions, QuicTransport, TlsIdentity, write_dev_pki};

use super::{Server, ServerError};
use crate::kv::KvOp;
use crate::wire::{DbSettings, ErrorKind, Response};

async fn server(root: &std::path::Path) -> Arc<Server> {
    write_dev_pki(&root.join("certs"), &["n1"]).expect("pki");
    let identity = TlsIdentity::load(&root.join("certs"), "n1").expect("identity");
    let transport = QuicTransport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        identity,
        QuicOptions::default(),
    )
    .await
    .expect("bind");
    Server::start("n1", &root.join("n1"), transport)
        .await
        .expect("server")
}

fn set(key: &str) -> Vec<KvOp> {
    vec![KvOp::Set {
        key: key.into(),
        value: "v".into(),
    }]
}

/// Within a second: what must not wait for another database's open.
async fn soon<T>(what: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), what)
        .await
        .expect("not stalled by the database being opened")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_being_opened_stalls_no_other_and_its_name_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path()).await;
    server
        .create("app", DbSettings::default())
        .await
        .expect("create app");

    // What a create or load holds while the log replays.
    let opening = server.catalog.reserve("slow").expect("a free name");

    soon(server.write("app", set("k"))).await.expect("write");
    soon(server.create("other", DbSettings::default()))
        .await
        .expect("create another");
    let names: Vec<String> = soon(server.list()).await.into_iter().map(|d| d.0).collect();
    assert_eq!(
        names,
        ["app", "other"],
        "the database opening is not listed yet"
    );
    assert!(matches!(
        soon(server.create("slow", DbSettings::default())).await,
        Err(ServerError::Exists(_))
    ));
    assert!(matches!(
        soon(server.load("slow")).await,
        Err(ServerError::AlreadyLoaded(_))
    ));
    assert!(matches!(
        soon(server.delete("slow")).await,
        Err(ServerError::StillLoaded(_))
    ));

    // A request for the name waits for the open, and finds nothing if it fails.
    let waiting = tokio::spawn({
        let server = server.clone();
        async move { server.status("slow").await }
    });
    let mut waiting = waiting;
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut waiting)
            .await
            .is_err(),
        "waits while the database opens"
    );
    drop(opening);
    assert!(matches!(
        soon(waiting).await.expect("joined"),
        Err(ServerError::UnknownDatabase(_))
    ));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_open_gives_the_name_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path()).await;
    let bogus = DbSettings {
        store: Some("tape".into()),
        ..DbSettings::default()
    };
    let refused = server
        .create("app", bogus)
        .await
        .expect_err("no such store");
    assert_eq!(refused.kind(), ErrorKind::BadSetting);
    assert!(
        server.catalog.slot("app").is_none(),
        "the reservation is released"
    );
    server
        .create("app", DbSettings::default())
        .await
        .expect("the name is free again");
    server.write("app", set("k")).await.expect("write");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_make_one_database() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path()).await;
    let creates: Vec<_> = (0..4)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move { server.create("app", DbSettings::default()).await })
        })
        .collect();
    let mut created = 0;
    for create in creates {
        match create.await.expect("joined") {
            Ok(()) => created += 1,
            Err(error) => assert!(matches!(error, ServerError::Exists(_)), "{error}"),
        }
    }
    assert_eq!(created, 1);
    server.write("app", set("k")).await.expect("write");
    server.shutdown().await;
}

#[test]
fn errors_become_responses_with_their_kind_and_causes() {
    let unknown = Response::from(ServerError::UnknownDatabase("app".into()));
    assert!(matches!(
        unknown,
        Response::Error { kind: ErrorKind::UnknownDatabase, ref message, primary: None }
            if message == "unknown database \"app\" (or not loaded)"
    ));
    let named = ServerError::InDatabase {
        name: "app".into(),
        error: Box::new(ServerError::Exists("app".into())),
    };
    assert!(matches!(
        Response::from(named),
        Response::Error { kind: ErrorKind::Failed, ref message, primary: None }
            if message == "database app: database \"app\" exists"
    ));
    let timeout = ServerError::Write(replication_core::engine::WriteError::Timeout {
        tx_id: replication_core::TxId(3),
    });
    assert_eq!(timeout.kind(), ErrorKind::Unknown);
}

#[test]
fn a_not_primary_refusal_names_the_primary_for_clients_to_follow() {
    use replication_core::engine::WriteError;
    let refusal = ServerError::Write(WriteError::NotPrimary {
        source_address: "127.0.0.1:7440".into(),
    });
    assert!(matches!(
        Response::from(refusal),
        Response::Error { kind: ErrorKind::NotPrimary, ref message, primary: Some(ref primary) }
            if primary == "127.0.0.1:7440" && message.contains("primary at 127.0.0.1:7440")
    ));
    // An external replica names no address: nothing to follow.
    let external = ServerError::Write(WriteError::NotPrimary {
        source_address: "its external replicator's source".into(),
    });
    assert_eq!(external.kind(), ErrorKind::NotPrimary);
    assert_eq!(external.primary(), None);
    let read = ServerError::NotPrimary {
        via: Some("h:1".into()),
    };
    assert_eq!(read.primary().as_deref(), Some("h:1"));
    assert_eq!(
        ServerError::NotAReplica("app".into()).kind(),
        ErrorKind::Refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_refuses_new_writes_naming_the_target_until_aborted() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = server(root.path()).await;
    server
        .create("app", DbSettings::default())
        .await
        .expect("create app");
    server.write("app", set("before")).await.expect("write");
    assert!(matches!(
        server.switchover_begin("app", "not an address").await,
        Err(ServerError::BadTarget(_))
    ));
    server
        .switchover_begin("app", "127.0.0.1:9")
        .await
        .expect("begin");
    let refused = server
        .write("app", set("during"))
        .await
        .expect_err("refused");
    assert_eq!(refused.kind(), ErrorKind::NotPrimary);
    assert_eq!(refused.primary().as_deref(), Some("127.0.0.1:9"));
    let Response::Error { primary, .. } = Response::from(refused) else {
        panic!("an error response");
    };
    assert_eq!(primary.as_deref(), Some("127.0.0.1:9"), "clients follow it");
    assert_eq!(
        server.status("app").await.expect("status").waiting_writes,
        0
    );
    assert_eq!(
        server
            .switchover_abort("app")
            .await
            .expect("abort")
            .as_deref(),
        Some("127.0.0.1:9")
    );
    server
        .write("app", set("after"))
        .await
        .expect("writes restored");
    assert_eq!(server.switchover_abort("app").await.expect("abort"), None);

    // Only a primary switches over.
    let replica = DbSettings {
        replica_of: Some("127.0.0.1:9/app".into()),
        ..DbSettings::default()
    };
    server.create("copy", replica).await.expect("create copy");
    let refused = server
        .switchover_begin("copy", "127.0.0.1:9")
        .await
        .expect_err("a replica");
    assert!(matches!(refused, ServerError::NotPrimaryHere(_)));
    assert_eq!(refused.kind(), ErrorKind::Refused);
    server.shutdown().await;
}
