//! `repnode db switchover` against real `repnode serve` processes on loopback: n1 the primary
//! of `app` under `any 1 (n2,n3)`, n2 and n3 its replicas. Clients keep writing through every
//! server while n1 hands over to n2: nothing acknowledged is lost, n1 ends a replica of n2 at
//! n2's epoch, and the window writes were refused is measured (with 16 clients too). A
//! switchover to a server that is not a replica of the database is refused, and one that
//! cannot catch up (a write waiting for a lost replica) is aborted: in both, the primary keeps
//! taking writes.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::client::{Client, Outcome};
use node::kv::KvOp;
use node::wire::{Request, Response};
use transport_quic::TlsIdentity;

use common::*;

/// Switches `app` over from `from` to `to`; returns the command's JSON answer.
fn switch_over(root: &Path, from: &str, to: &str) -> serde_json::Value {
    let output = cli(root, from, &["db", "switchover", "app", "--to", to]);
    assert!(output.status.success(), "{output:?}");
    let done = json(&output);
    for field in [
        "database",
        "from",
        "to",
        "epoch",
        "unavailable_ms",
        "committed",
    ] {
        assert!(!done[field].is_null(), "{field} in {done}");
    }
    assert_eq!(done["database"], "app");
    assert_eq!(done["from"], from);
    assert_eq!(done["to"], to);
    assert!(done["committed"]["tx_id"].is_u64() && done["committed"]["hash"].is_string());
    done
}

/// After a switchover to n2: n3 repointed to n2, then both others stream from it in its epoch.
fn repoint_and_check_roles(root: &Path, a1: &str, a2: &str, a3: &str, epoch: u64) {
    let repointed = cli(
        root,
        a3,
        &["db", "update", "app", "--replica-of", &format!("{a2}/app")],
    );
    assert!(repointed.status.success(), "{repointed:?}");
    until_status(root, a2, "app", |s| {
        s["role"] == "primary" && s["epoch"].as_u64() == Some(epoch)
    });
    for server in [a1, a3] {
        until_status(root, server, "app", |s| {
            s["role"] == "replica"
                && s["upstream"] == "streaming"
                && s["epoch"].as_u64() == Some(epoch)
        });
    }
}

#[test]
fn a_live_primary_switches_over_while_a_client_writes_through_every_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let all = format!("{a1},{a2},{a3}");

    // A client writing continuously through the whole list, as the CLI does: refusals that
    // name the new primary are followed, and a refused write is tried again.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let writer = {
        let (stop, acknowledged, root, all) = (
            stop.clone(),
            acknowledged.clone(),
            root.to_path_buf(),
            all.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0;
            let mut refused = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{i}");
                let value = format!("{key}-value");
                let output = cli(
                    &root,
                    &all,
                    &["put", "--db", "app", &key, &value, "--timeout", "10"],
                );
                if output.status.success() {
                    let tx = json(&output)["tx_id"].as_u64().expect("tx_id");
                    acknowledged.lock().expect("lock").push((key, tx));
                    i += 1;
                } else {
                    // Refused (not the primary yet) or unknown: not acknowledged; a new key,
                    // so that an unknown outcome is never mistaken for an acknowledgement.
                    refused += 1;
                    i += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            refused
        })
    };
    let acked = || acknowledged.lock().expect("lock").len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked() < 10 {
        assert!(Instant::now() < deadline, "the client never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }

    let done = switch_over(root, &a1, &a2);
    let epoch = done["epoch"].as_u64().expect("epoch");
    assert!(epoch > 1, "{done}");
    println!(
        "switchover with one CLI client: unavailable_ms = {}",
        done["unavailable_ms"]
    );
    repoint_and_check_roles(root, &a1, &a2, &a3, epoch);

    // The client keeps working: writes go to n2 now.
    let before = acked();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked() < before + 10 {
        assert!(Instant::now() < deadline, "the client stopped writing");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let refused = writer.join().expect("writer");
    let written = acknowledged.lock().expect("lock").clone();
    println!(
        "{} writes acknowledged, {refused} refused or unknown",
        written.len()
    );
    // What n1 committed before the hand-over is in n2's history.
    let handed = done["committed"]["tx_id"].as_u64().expect("tx_id");
    assert!(
        written.iter().any(|(_, tx)| *tx > handed),
        "writes after it"
    );
    for server in [&a2, &a1, &a3] {
        assert_all_readable(root, server, &written);
    }
    drop((n1, n2, n3));
}

/// One client's loop: writes new keys until `stop`, following refusals through `servers`;
/// returns what was acknowledged, and when.
/// Waits until the clients have had `at_least` writes acknowledged, with a deadline.
fn wait_for_acks(acked: &AtomicUsize, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < at_least {
        assert!(Instant::now() < deadline, "the clients stopped writing");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn client_loop(
    id: usize,
    servers: Vec<String>,
    identity: TlsIdentity,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> (Vec<(String, u64, Instant)>, usize, usize) {
    let mut acknowledged = Vec::new();
    let (mut not_acknowledged, mut rerouted) = (0, 0);
    let mut session: Option<Client> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("c{id}-{i}");
        i += 1;
        let request = Request::Write {
            db: "app".into(),
            ops: vec![KvOp::Set {
                key: key.clone(),
                value: format!("{key}-value"),
            }],
        };
        let timeout = Some(Duration::from_secs(10));
        let outcome = match session.as_mut() {
            Some(client) => client.request(&request, timeout).await.ok(),
            None => None,
        };
        let outcome = match outcome {
            Some(Outcome::Answered(written @ Response::Written { .. })) => Some(written),
            // Refused, unknown or no session: find the primary again (a refusal is followed).
            other => {
                rerouted += usize::from(other.is_some());
                session = None;
                match node::routing::request_primary(&servers, &identity, &request, timeout).await {
                    Ok(routed) => match routed.outcome {
                        Outcome::Answered(written @ Response::Written { .. }) => {
                            session = Some(routed.client);
                            Some(written)
                        }
                        _ => None,
                    },
                    Err(_) => None,
                }
            }
        };
        match outcome {
            Some(Response::Written { tx_id, .. }) => {
                acknowledged.push((key, tx_id, Instant::now()));
                acked.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                not_acknowledged += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    (acknowledged, not_acknowledged, rerouted)
}

#[test]
fn the_unavailability_window_with_16_clients() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let servers = vec![a1.clone(), a2.clone(), a3.clone()];
    let identity = TlsIdentity::load(&root.join("certs"), "client").expect("identity");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..16)
        .map(|id| {
            runtime.spawn(client_loop(
                id,
                servers.clone(),
                identity.clone(),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    // Under way before the switchover, and again after it.
    wait_for_acks(&acked, 200);
    let started = Instant::now();
    let done = switch_over(root, &a1, &a2);
    let switched = Instant::now();
    let epoch = done["epoch"].as_u64().expect("epoch");
    repoint_and_check_roles(root, &a1, &a2, &a3, epoch);
    wait_for_acks(&acked, acked.load(Ordering::Relaxed) + 200);
    stop.store(true, Ordering::Relaxed);
    let (mut written, mut refused, mut rerouted) = (Vec::new(), 0, 0);
    for client in clients {
        let (acknowledged, not_acknowledged, followed) = runtime.block_on(client).expect("client");
        written.extend(acknowledged);
        refused += not_acknowledged;
        rerouted += followed;
    }
    written.sort_by_key(|(_, _, at)| *at);
    // As the clients saw it: the longest stretch without an acknowledgement around the
    // switchover (it includes the wait for n3 to be repointed, as n2's policy counts it).
    let gap = written
        .windows(2)
        .filter(|w| w[1].2 >= started && w[0].2 <= switched + Duration::from_secs(1))
        .map(|w| w[1].2 - w[0].2)
        .max()
        .unwrap_or_default();
    println!(
        "16 clients: {} writes acknowledged, {refused} refused or unknown (tried again), {rerouted} refused by the server \
         a client wrote to and followed elsewhere; switchover unavailable_ms = {}; longest gap \
         between acknowledgements seen by the clients = {} ms",
        written.len(),
        done["unavailable_ms"],
        gap.as_millis()
    );
    assert!(done["unavailable_ms"].as_f64().is_some());
    // Every client wrote to n1 first: each was refused there and followed the refusal.
    assert!(rerouted >= 16, "{rerouted} refusals followed");
    let handed = done["committed"]["tx_id"].as_u64().expect("tx_id");
    assert!(
        written.iter().any(|(_, tx, _)| *tx > handed),
        "writes after it"
    );
    // Nothing acknowledged is lost: a sample of every client's keys, and the last of each,
    // read back on the new primary (the full set is checked by the test above).
    let written: Vec<(String, u64)> = written
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 50 == 0 || *i + 1 == written.len())
        .map(|(_, (key, tx, _))| (key.clone(), *tx))
        .collect();
    assert_all_readable(root, &a2, &written);
    drop((n1, n2, n3));
}

#[test]
fn a_switchover_to_a_server_that_is_not_a_replica_is_refused_and_writes_go_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let [n1, n2, n3] = ["n1", "n2", "n3"].map(|name| Server::start(name, free_port(), root));
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    until_ok(root, &a1, &["db", "create", "app"]);
    // n2: its own primary of `app`; n3: a replica of another database.
    until_ok(root, &a2, &["db", "create", "app"]);
    until_ok(root, &a1, &["db", "create", "other"]);
    until_ok(
        root,
        &a3,
        &[
            "db",
            "create",
            "app",
            "--replica-of",
            &format!("{a1}/other"),
        ],
    );
    for (to, why) in [(&a2, "not a replica"), (&a3, "not of")] {
        let output = cli(root, &a1, &["db", "switchover", "app", "--to", to]);
        assert_eq!(output.status.code(), Some(4), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{stderr}");
        let put = cli(
            root,
            &a1,
            &["put", "--db", "app", "after", "v", "--timeout", "5"],
        );
        assert!(put.status.success(), "the primary takes writes: {put:?}");
    }
    until_status(root, &a1, "app", |s| s["role"] == "primary");
    drop((n1, n2, n3));
}

#[test]
fn a_switchover_that_cannot_catch_up_is_aborted_and_writes_are_taken_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let [n1, n2, mut n3] = ["n1", "n2", "n3"].map(|name| Server::start(name, free_port(), root));
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    // Only n3 counts: with n3 gone, a write waits on n1, so n1 never has none waiting.
    until_ok(
        root,
        &a1,
        &["db", "create", "app", "--quorum", "any 1 (n3)"],
    );
    for replica in [&a2, &a3] {
        until_ok(
            root,
            replica,
            &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
        );
    }
    until_status(root, &a1, "app", |s| {
        s["members"].as_array().map(Vec::len) == Some(2)
    });
    let first = cli(
        root,
        &a1,
        &["put", "--db", "app", "k0", "v", "--timeout", "10"],
    );
    assert!(first.status.success(), "{first:?}");
    let _ = n3.child.kill();
    let _ = n3.child.wait();
    let waiting = {
        let (root, a1) = (root.to_path_buf(), a1.clone());
        std::thread::spawn(move || {
            cli(
                &root,
                &a1,
                &["put", "--db", "app", "k1", "v", "--timeout", "30"],
            )
        })
    };
    until_status(root, &a1, "app", |s| s["waiting_writes"] == 1);

    let output = cli(
        root,
        &a1,
        &["db", "switchover", "app", "--to", &a2, "--timeout", "1"],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("step 2"), "{stderr}");
    assert!(stderr.contains("writes restored"), "{stderr}");
    until_status(root, &a2, "app", |s| s["role"] == "replica");
    until_status(root, &a1, "app", |s| s["role"] == "primary");
    // n1 takes writes again: with its policy relaxed, the waiting one and a new one commit.
    let relaxed = cli(root, &a1, &["db", "update", "app", "--quorum", "async"]);
    assert!(relaxed.status.success(), "{relaxed:?}");
    let waited = waiting.join().expect("writer");
    assert!(waited.status.success(), "{waited:?}");
    let put = cli(
        root,
        &a1,
        &["put", "--db", "app", "k2", "v", "--timeout", "5"],
    );
    assert!(put.status.success(), "a write after the abort: {put:?}");
    drop((n1, n2, n3));
}
