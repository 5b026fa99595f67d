//! Automatic failover with a real etcd: three `repnode serve` processes on loopback with
//! `--coordinator etcd=...`, `app` created with `--failover auto` under `acks 1` (a policy
//! by count, which stays meaningful whichever member leads).
//!
//! - kill -9 of the primary under writes: a replica is elected within the lease TTL and a
//!   little, every acknowledged write survives, and the old primary, restarted, rejoins as a
//!   replica of the new one;
//! - SIGSTOP of the primary past its TTL, then SIGCONT: another is elected meanwhile, and
//!   the resumed primary acknowledges nothing more: it follows the new one.
//!
//! - with mutual TLS to etcd (`--coordinator-cacert/-cert/-key`): the same election, and a
//!   server whose certificate etcd refuses shows it and acknowledges nothing.
//!
//! The measured failover time is printed, never asserted (the machine is shared).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use coordinator_etcd::EtcdTls;
use coordinator_etcd::testing::{EtcdServer, EtcdTlsFiles};
use transport_quic::{DevCa, IssuedCert};

fn addresses(servers: &[Server]) -> Vec<String> {
    servers.iter().map(Server::address).collect()
}

/// Puts `key` through `servers`, retrying while no primary takes it; returns its
/// transaction, or `None` if none did within `within`.
fn put_within(root: &Path, servers: &[&str], key: &str, within: Duration) -> Option<u64> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let value = format!("{key}-value");
        let output = cli_to(
            root,
            servers,
            &["put", "--db", "app", key, &value, "--timeout", "2"],
        );
        if output.status.success() {
            return json(&output)["tx_id"].as_u64();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn status(root: &Path, server: &str) -> serde_json::Value {
    status_of(root, server, "app")
}

fn status_of(root: &Path, server: &str, db: &str) -> serde_json::Value {
    json(&until_ok(root, server, &["status", "--db", db]))
}

fn signal(server: &Server, signal: &str) {
    let sent = Command::new("kill")
        .arg(signal)
        .arg(server.child.id().to_string())
        .status()
        .expect("kill");
    assert!(sent.success());
}

#[test]
fn a_killed_primary_is_replaced_automatically_and_rejoins_as_a_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let etcd = EtcdServer::start().expect("start etcd");
    let mut servers = auto_cluster(root, &etcd.endpoint());
    let all = addresses(&servers);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    for i in 0..20 {
        let key = format!("before-{i}");
        let tx = put_within(root, &all, &key, Duration::from_secs(10)).expect("a write");
        written.push((key, tx));
    }
    let old_epoch = status(root, all[0])["epoch"].as_u64().expect("epoch");

    servers[0].kill_9();
    let killed = Instant::now();
    let survivors = [all[1], all[2]];
    let tx =
        put_within(root, &survivors, "after-kill", Duration::from_secs(30)).unwrap_or_else(|| {
            let statuses: Vec<_> = survivors.iter().map(|s| status(root, s)).collect();
            panic!("no new primary takes writes: {statuses:#?}")
        });
    let took = killed.elapsed();
    eprintln!(
        "automatic failover: a write acknowledged {took:?} after kill -9 (lease TTL {} s)",
        ttl_secs()
    );
    written.push(("after-kill".into(), tx));

    let statuses: Vec<serde_json::Value> = survivors.iter().map(|s| status(root, s)).collect();
    let leaders: Vec<usize> = (0..2)
        .filter(|&i| statuses[i]["role"] == "primary")
        .collect();
    assert_eq!(leaders.len(), 1, "one new primary: {statuses:?}");
    let leader = survivors[leaders[0]];
    let new = &statuses[leaders[0]];
    assert!(
        new["epoch"].as_u64() > Some(old_epoch),
        "a higher epoch: {new}"
    );
    assert_eq!(new["failover"]["elections_won"], 1);
    assert_all_readable(root, leader, &written);

    // The old primary comes back: it follows the new one, and holds everything.
    let port = servers[0].port;
    servers[0] = start_under(root, &etcd.endpoint(), "n1", port);
    let leader_app = format!("{leader}/app");
    until_status(root, all[0], "app", |s| {
        s["role"] == "replica"
            && s["upstream"] == "streaming"
            && s["failover"]["leader_address"] == leader_app.as_str()
    });
    assert_all_readable(root, all[0], &written);
    // Writes sent to it first go to the new primary, which kept the policy.
    let tx = put_within(root, &all, "through-old", Duration::from_secs(10))
        .expect("redirected to the new primary");
    let leader_status = status(root, leader);
    assert_eq!(leader_status["policy"], "acks 1", "{leader_status}");
    written.push(("through-old".into(), tx));
    assert_all_readable(root, leader, &written);
}

#[test]
fn a_paused_primary_acknowledges_nothing_once_another_is_elected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let etcd = EtcdServer::start().expect("start etcd");
    let servers = auto_cluster(root, &etcd.endpoint());
    let all = addresses(&servers);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    for i in 0..10 {
        let key = format!("before-{i}");
        let tx = put_within(root, &all, &key, Duration::from_secs(10)).expect("a write");
        written.push((key, tx));
    }
    let old_epoch = status(root, all[0])["epoch"].as_u64().expect("epoch");

    // Frozen past its lease (a long stall): the others elect one of them.
    signal(&servers[0], "-STOP");
    let survivors = [all[1], all[2]];
    let tx = put_within(root, &survivors, "during-pause", Duration::from_secs(30))
        .expect("a new primary takes writes while the old one is frozen");
    written.push(("during-pause".into(), tx));
    signal(&servers[0], "-CONT");

    // Resumed, it takes no write of its own: asked alone (no redirection), it refuses, and
    // the write is not in anyone's log.
    let output = cli(
        root,
        all[0],
        &["put", "--db", "app", "resumed", "v", "--timeout", "2"],
    );
    assert!(
        !output.status.success(),
        "the resumed primary acknowledged a write: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let leader_epoch = survivors
        .iter()
        .map(|s| status(root, s))
        .find(|s| s["role"] == "primary")
        .and_then(|s| s["epoch"].as_u64())
        .expect("a new primary");
    assert!(leader_epoch > old_epoch);
    until_status(root, all[0], "app", |s| {
        s["role"] == "replica" && s["upstream"] == "streaming"
    });
    let resumed = status(root, all[0]);
    assert!(
        resumed["failover"]["self_fencings"].as_u64() >= Some(1),
        "the lapse of its lease is counted: {resumed}"
    );
    assert_all_readable(root, all[0], &written);
    let read = json(&until_ok(root, all[1], &["get", "--db", "app", "resumed"]));
    assert_eq!(
        read["value"],
        serde_json::Value::Null,
        "the refused write is nowhere"
    );
}

/// How many rounds `killing_whichever_node_is_primary_loses_nothing` runs:
/// `REPNODE_FAILOVER_ROUNDS`, or 50.
fn rounds() -> usize {
    std::env::var("REPNODE_FAILOVER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

/// The member that answers as the primary of `app`, by index, if exactly one does.
fn primary_of(root: &Path, servers: &[String]) -> Option<usize> {
    let primaries: Vec<usize> = (0..servers.len())
        .filter(|&i| {
            let output = cli(root, &servers[i], &["status", "--db", "app"]);
            output.status.success()
                && json(&output)["role"] == "primary"
                && json(&output)["failover"]["lease_remaining_ms"].as_u64() > Some(0)
        })
        .collect();
    (primaries.len() == 1).then(|| primaries[0])
}

#[test]
fn killing_whichever_node_is_primary_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let etcd = EtcdServer::start().expect("start etcd");
    let mut servers = auto_cluster(&root, &etcd.endpoint());
    let all = addresses(&servers);
    let names = ["n1", "n2", "n3"];

    // A client writes through every member all along; what it was told committed must
    // survive every kill.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let writer = {
        let (stop, acknowledged, root, all) = (
            stop.clone(),
            acknowledged.clone(),
            root.clone(),
            all.join(","),
        );
        std::thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{next}");
                next += 1;
                let output = cli(
                    &root,
                    &all,
                    &[
                        "put",
                        "--db",
                        "app",
                        &key,
                        &format!("{key}-value"),
                        "--timeout",
                        "2",
                    ],
                );
                if output.status.success() {
                    let tx = json(&output)["tx_id"].as_u64().expect("tx_id");
                    acknowledged.lock().unwrap().push((key, tx));
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };

    let started = Instant::now();
    let mut failovers = Vec::new();
    let mut elections = Vec::new();
    for round in 0..rounds() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let victim = loop {
            if let Some(primary) = primary_of(&root, &all) {
                break primary;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no single primary"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        servers[victim].kill_9();
        let killed = Instant::now();
        // Another member is elected (a write in flight may still have been acknowledged by
        // the victim just before it died: it does not count) ...
        let survivors: Vec<String> = (0..all.len())
            .filter(|&i| i != victim)
            .map(|i| all[i].clone())
            .collect();
        while primary_of(&root, &survivors).is_none() {
            if killed.elapsed() > Duration::from_secs(60) {
                let statuses: Vec<String> = all
                    .iter()
                    .map(|s| {
                        let output = cli(&root, s, &["status", "--db", "app"]);
                        String::from_utf8_lossy(&output.stdout).into_owned()
                    })
                    .collect();
                panic!(
                    "round {round}: nobody elected after killing {}: {statuses:#?}",
                    names[victim]
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        elections.push(killed.elapsed());
        // ... and acknowledges the client's writes.
        let acked_before = acknowledged.lock().unwrap().len();
        while acknowledged.lock().unwrap().len() == acked_before {
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "round {round}: the new primary acknowledged nothing"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        failovers.push(killed.elapsed());
        let port = servers[victim].port;
        servers[victim] = start_under(&root, &etcd.endpoint(), names[victim], port);
        until_status(&root, &all[victim], "app", |s| {
            s["role"] == "replica" && s["upstream"] == "streaming"
        });
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");
    let written = acknowledged.lock().unwrap().clone();
    failovers.sort();
    elections.sort();
    eprintln!(
        "{} rounds in {:?}: {} writes acknowledged; after a kill, a new primary holding its \
         lease: median {:?}, max {:?}; the client's first acknowledged write: median {:?}, \
         max {:?}",
        failovers.len(),
        started.elapsed(),
        written.len(),
        elections[elections.len() / 2],
        elections.last().expect("a round"),
        failovers[failovers.len() / 2],
        failovers.last().expect("a round")
    );
    assert!(!written.is_empty());
    // Every member holds every acknowledged write.
    let last = written.iter().map(|(_, tx)| *tx).max().unwrap_or(0);
    for server in &all {
        assert_all_readable(&root, server, &written);
    }
    // The same history everywhere: every member reaches the primary's commit point, hash
    // included.
    let leader = all
        .iter()
        .map(|s| status(&root, s))
        .find(|s| s["role"] == "primary")
        .expect("a primary");
    assert!(leader["committed"]["tx_id"].as_u64() >= Some(last));
    for server in &all {
        until_status(&root, server, "app", |s| {
            s["committed"] == leader["committed"]
        });
    }
}

#[test]
fn with_three_etcd_members_losing_one_and_the_primary_at_once_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut etcd = coordinator_etcd::testing::EtcdCluster::start(3).expect("three etcd members");
    let mut servers = auto_cluster(root, &etcd.endpoints());
    let all = addresses(&servers);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut written = Vec::new();
    for i in 0..10 {
        let key = format!("before-{i}");
        let tx = put_within(root, &all, &key, Duration::from_secs(10)).expect("a write");
        written.push((key, tx));
    }
    // An etcd member and the primary are lost together: etcd keeps its quorum of two, and
    // its clients move to the members left.
    etcd.kill(0);
    servers[0].kill_9();
    let killed = Instant::now();
    let survivors = [all[1], all[2]];
    let tx = put_within(root, &survivors, "after", Duration::from_secs(30))
        .expect("a new primary takes writes");
    eprintln!(
        "three etcd members, one lost with the primary: a write acknowledged {:?} after the kill",
        killed.elapsed()
    );
    written.push(("after".into(), tx));
    for server in survivors {
        assert_all_readable(root, server, &written);
    }
    let port = servers[0].port;
    servers[0] = start_under(root, &etcd.endpoints(), "n1", port);
    until_status(root, all[0], "app", |s| {
        s["role"] == "replica" && s["upstream"] == "streaming"
    });
    assert_all_readable(root, all[0], &written);
}

/// Certificates for etcd's mutual TLS: a CA, etcd's own, and a client pair per name, written
/// under `dir`; `rogue` names get theirs from another CA, which etcd does not trust.
struct EtcdCerts {
    files: EtcdTlsFiles,
    ca_pem: String,
}

impl EtcdCerts {
    fn issue(dir: &Path, trusted: &[&str], rogue: &[&str]) -> EtcdCerts {
        std::fs::create_dir_all(dir).expect("mkdir");
        let ca = DevCa::generate("etcd test CA").expect("a CA");
        let other = DevCa::generate("another CA").expect("another CA");
        let write = |name: &str, cert: &IssuedCert| {
            std::fs::write(dir.join(format!("{name}.pem")), &cert.cert_pem).expect("write");
            std::fs::write(dir.join(format!("{name}.key")), &cert.key_pem).expect("write");
        };
        write("etcd", &ca.issue("etcd").expect("etcd's certificate"));
        for name in trusted {
            write(name, &ca.issue(name).expect("a client certificate"));
        }
        for name in rogue {
            write(name, &other.issue(name).expect("a rogue certificate"));
        }
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write");
        EtcdCerts {
            files: EtcdTlsFiles {
                ca: dir.join("ca.pem"),
                cert: dir.join("etcd.pem"),
                key: dir.join("etcd.key"),
            },
            ca_pem: ca.cert_pem(),
        }
    }

    /// `repnode serve`'s flags for `name`'s client pair.
    fn flags(&self, name: &str) -> Vec<String> {
        let dir = self.files.ca.parent().expect("a directory");
        let path = |file: String| dir.join(file).display().to_string();
        vec![
            "--coordinator-cacert".into(),
            self.files.ca.display().to_string(),
            "--coordinator-cert".into(),
            path(format!("{name}.pem")),
            "--coordinator-key".into(),
            path(format!("{name}.key")),
        ]
    }

    /// What a test's own client uses, with `name`'s pair.
    fn client(&self, name: &str) -> EtcdTls {
        let dir = self.files.ca.parent().expect("a directory");
        EtcdTls {
            ca_pem: self.ca_pem.clone().into_bytes(),
            cert_pem: std::fs::read(dir.join(format!("{name}.pem"))).expect("read"),
            key_pem: std::fs::read(dir.join(format!("{name}.key"))).expect("read"),
        }
    }
}

/// `repnode serve --coordinator-cacert/--coordinator-cert/--coordinator-key` against an etcd
/// that requires client certificates: members with the cluster's certificates elect and fail
/// over as over plain connections; a server whose certificate etcd refuses shows the error in
/// `status`, never holds the key, and its primary under `--failover auto` acknowledges nothing.
#[test]
fn serve_reaches_etcd_over_mutual_tls_and_a_refused_certificate_shows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let certs = EtcdCerts::issue(&root.join("etcd-tls"), &["n1", "n2", "probe"], &["n3"]);
    let etcd = EtcdServer::start_tls(Some(&certs.files)).expect("start etcd with TLS");
    init_certs(root, "certs", "n1,n2,n3");
    let start = |name: &str, port: u16| {
        let coordinator = format!("etcd={}", etcd.endpoint());
        let mut flags = vec!["--coordinator", &coordinator, "--cluster", "test"];
        let tls = certs.flags(name);
        flags.extend(tls.iter().map(String::as_str));
        Server::start_with(name, port, root, &flags)
    };
    let mut servers: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| start(name, free_port()))
        .collect();
    let all = addresses(&servers);
    let ttl = ttl_secs();
    let auto = ["--failover", "auto", "--lease-ttl", ttl.as_str()];
    let mut create = vec!["db", "create", "app", "--quorum", "acks 1"];
    create.extend(auto);
    until_ok(root, &all[0], &create);
    let source = format!("{}/app", all[0]);
    let mut replica = vec!["db", "create", "app", "--replica-of", &source];
    replica.extend(auto);
    until_ok(root, &all[1], &replica);
    until_status(root, &all[0], "app", |s| {
        s["failover"]["leader"] == "n1" && s["members"].as_array().map(Vec::len) == Some(1)
    });
    published_voters_over(&etcd.endpoint(), &["n2"], Some(certs.client("probe")));
    let first = put_within(root, &[&all[0]], "over-tls", Duration::from_secs(10))
        .expect("n1 takes writes under its lease");

    // n3's certificate comes from a CA etcd does not trust: its own database under automatic
    // failover never gets a lease, says why, and takes no write.
    let mut solo = vec!["db", "create", "solo"];
    solo.extend(auto);
    until_ok(root, &all[2], &solo);
    until_status(root, &all[2], "solo", |s| {
        s["failover"]["coordinator_error"].is_string()
            && s["failover"]["renew_failures"].as_u64() > Some(1)
    });
    let refused = status_of(root, &all[2], "solo");
    assert_eq!(refused["failover"]["leader"], serde_json::Value::Null);
    assert_eq!(refused["failover"]["elections_won"], 0, "{refused}");
    let write = cli_to(
        root,
        &[&all[2]],
        &["put", "--db", "solo", "k", "v", "--timeout", "2"],
    );
    assert!(
        !write.status.success(),
        "a primary without a lease acknowledged a write: {write:?}"
    );

    // The leader is lost: n2 is elected over TLS, and holds what n1 acknowledged. (Alone, it
    // cannot meet `acks 1` for new writes: the test stops at the election.)
    servers[0].kill_9();
    until_status(root, &all[1], "app", |s| {
        s["role"] == "primary" && s["failover"]["leader"] == "n2"
    });
    let promoted = status(root, &all[1]);
    assert_eq!(promoted["failover"]["elections_won"], 1, "{promoted}");
    assert_eq!(
        promoted["failover"]["coordinator_error"],
        serde_json::Value::Null
    );
    assert_all_readable(root, &all[1], &[("over-tls".into(), first)]);
}

/// Rounds of `killing_random_servers_keeps_every_acknowledged_write_in_identical_logs`:
/// `REPNODE_KILL_ROUNDS`, or 20 (CI); `REPNODE_KILL_SEED` replays a run's choice of victims.
fn kill_rounds() -> usize {
    std::env::var("REPNODE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Every transaction of `app` in a stopped server's log: id → (epoch, hash), by `log dump`.
fn dumped_log(root: &Path, name: &str) -> std::collections::BTreeMap<u64, (u64, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["log", "dump", "--db", "app", "--json", "--dir"])
        .arg(root.join(name))
        .output()
        .expect("run repnode log dump");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let tx: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let id = tx["tx_id"].as_u64().expect("tx_id");
            let epoch = tx["epoch"].as_u64().expect("epoch");
            (id, (epoch, tx["hash"].as_str().expect("hash").to_string()))
        })
        .collect()
}

#[test]
fn killing_random_servers_keeps_every_acknowledged_write_in_identical_logs() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let seed: u64 = std::env::var("REPNODE_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("victims chosen with REPNODE_KILL_SEED={seed}");
    let mut rng = seed;
    let mut next_victim = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 3) as usize
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    let etcd = EtcdServer::start().expect("start etcd");
    let mut servers = auto_cluster(&root, &etcd.endpoint());
    let all = addresses(&servers);
    let names = ["n1", "n2", "n3"];

    // A client writes through every member all along, keeping each acknowledged write's
    // transaction and hash.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(u64, String)>::new()));
    let writer = {
        let (stop, acknowledged, root, all) = (
            stop.clone(),
            acknowledged.clone(),
            root.clone(),
            all.join(","),
        );
        std::thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{next}");
                next += 1;
                let args = ["put", "--db", "app", &key, "v", "--timeout", "2"];
                let output = cli(&root, &all, &args);
                if output.status.success() {
                    let answer = json(&output);
                    let tx = answer["tx_id"].as_u64().expect("tx_id");
                    let hash = answer["hash"].as_str().expect("hash").to_string();
                    acknowledged.lock().unwrap().push((tx, hash));
                } else {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };

    let mut primaries_killed = 0;
    for round in 0..kill_rounds() {
        let deadline = Instant::now() + Duration::from_secs(60);
        let primary = loop {
            if let Some(primary) = primary_of(&root, &all) {
                break primary;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: no single primary"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let victim = next_victim();
        primaries_killed += usize::from(victim == primary);
        servers[victim].kill_9();
        let killed = Instant::now();
        // Writes are acknowledged again (by the same primary, or an elected one) ...
        let acked_before = acknowledged.lock().unwrap().len();
        while acknowledged.lock().unwrap().len() == acked_before {
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "round {round} (seed {seed}): nothing acknowledged after killing {}",
                names[victim]
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // ... and the victim, restarted, follows the primary.
        let port = servers[victim].port;
        servers[victim] = start_under(&root, &etcd.endpoint(), names[victim], port);
        until_status(&root, &all[victim], "app", |s| {
            s["role"] == "replica" && s["upstream"] == "streaming"
        });
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer");
    let written = acknowledged.lock().unwrap().clone();
    assert!(!written.is_empty());

    // Every member reaches the primary's commit point; then all stop, and their logs are
    // read offline.
    let leader = all
        .iter()
        .map(|s| status(&root, s))
        .find(|s| s["role"] == "primary")
        .expect("a primary");
    for server in &all {
        until_status(&root, server, "app", |s| {
            s["committed"] == leader["committed"]
        });
    }
    let committed = leader["committed"]["tx_id"].as_u64().expect("committed");
    for server in &mut servers {
        server.kill_9();
    }
    let logs: Vec<_> = names.iter().map(|name| dumped_log(&root, name)).collect();
    for (name, log) in names.iter().zip(&logs) {
        // Every acknowledged write, with the hash its client was given.
        for (tx, hash) in &written {
            let held = log.get(tx).map(|(_, h)| h.as_str());
            assert_eq!(
                held,
                Some(hash.as_str()),
                "{name}: acknowledged tx {tx} (seed {seed})"
            );
        }
        // Epochs never go back along a log.
        let epochs: Vec<u64> = log.values().map(|(epoch, _)| *epoch).collect();
        assert!(
            epochs.windows(2).all(|pair| pair[0] <= pair[1]),
            "{name}: epochs go back (seed {seed})"
        );
        // The committed history is the same everywhere.
        let prefix: Vec<_> = log.range(..=committed).collect();
        let first: Vec<_> = logs[0].range(..=committed).collect();
        assert_eq!(
            prefix, first,
            "{name} and n1 differ up to tx {committed} (seed {seed})"
        );
    }
    eprintln!(
        "{} rounds (seed {seed}, {primaries_killed} of them killing the primary): {} \
         acknowledged writes checked in 3 logs, identical up to tx {committed}",
        kill_rounds(),
        written.len()
    );
}
