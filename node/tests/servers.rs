//! Real `repnode serve` processes on loopback, driven by the real CLI: a synchronous cluster,
//! a killed synchronous replica (writes wait or report an unknown outcome, reads go on), its
//! return, writes refused by a replica, an unknown database, a quorum update that releases
//! a blocked primary, and a manual failover (promotion, its refusals, repointing, clients
//! given every member).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_synchronous_cluster_of_real_servers() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let certs = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["certs", "init", "--nodes", "n1,n2,n3", "--dir"])
        .arg(root.join("certs"))
        .output()
        .expect("certs");
    assert!(certs.status.success());
    let n1 = Server::start("n1", free_port(), root);
    let mut n2 = Server::start("n2", free_port(), root);
    let n3 = Server::start("n3", free_port(), root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());

    // n1 primary, n2 its synchronous replica, n3 a replica of n2 (a replica of a replica).
    until_ok(
        root,
        &a1,
        &["db", "create", "app", "--quorum", "any 1 (n2)"],
    );
    until_ok(
        root,
        &a2,
        &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
    );
    until_ok(
        root,
        &a3,
        &["db", "create", "app", "--replica-of", &format!("{a2}/app")],
    );

    let put = cli(root, &a1, &["put", "--db", "app", "k1", "v1"]);
    assert!(put.status.success(), "{put:?}");
    let receipt = json(&put);
    assert_eq!(receipt["ack"], "quorum");
    let tx = receipt["tx_id"].as_u64().expect("tx_id");
    let get = json(&cli(
        root,
        &a3,
        &["get", "--db", "app", "k1", "--min-tx", &tx.to_string()],
    ));
    assert_eq!(
        get["value"], "v1",
        "the replica of a replica reads its writes"
    );

    // A write sent to a replica names the primary; an unknown database is its own error.
    let refused = cli(root, &a2, &["put", "--db", "app", "k", "v"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&a1),
        "{refused:?}"
    );
    // Also from a replica of a replica: its source told it where the primary is.
    let refused = cli(root, &a3, &["put", "--db", "app", "k", "v"]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("primary at {a1}")),
        "{refused:?}"
    );
    let unknown = cli(root, &a1, &["get", "--db", "nope", "k"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown database"),
        "{unknown:?}"
    );

    // kill -9 the synchronous replica: a write waits and, at its timeout, is of unknown outcome;
    // reads go on.
    n2.kill_9();
    let waiting = cli(
        root,
        &a1,
        &["put", "--db", "app", "k2", "v2", "--timeout", "1"],
    );
    assert_eq!(waiting.status.code(), Some(3), "{waiting:?}");
    assert_eq!(json(&waiting)["outcome"], "unknown");
    assert_eq!(
        json(&cli(root, &a1, &["get", "--db", "app", "k1"]))["value"],
        "v1"
    );
    let status = json(&cli(root, &a1, &["status", "--db", "app"]));
    assert_eq!(status["committed"]["tx_id"].as_u64(), Some(tx));
    assert_eq!(status["precommitted"]["tx_id"].as_u64(), Some(tx + 1));

    // n2 comes back from its directory: the waiting transaction commits, nothing is lost.
    let n2 = Server::start("n2", n2.port, root);
    let k2 = json(&until_ok(
        root,
        &a2,
        &[
            "get",
            "--db",
            "app",
            "k2",
            "--min-tx",
            &(tx + 1).to_string(),
        ],
    ));
    assert_eq!(k2["value"], "v2");
    assert_eq!(
        json(&cli(
            root,
            &a1,
            &[
                "get",
                "--db",
                "app",
                "k2",
                "--min-tx",
                &(tx + 1).to_string()
            ]
        ))["value"],
        "v2"
    );

    // Blocked again; updating the quorum releases the primary without a restart.
    drop(n2);
    let released = std::thread::spawn({
        let (root, a1) = (root.to_path_buf(), a1.clone());
        move || cli(&root, &a1, &["put", "--db", "app", "k3", "v3"])
    });
    until_status(root, &a1, "app", |s| s["waiting_writes"] == 1);
    assert!(!released.is_finished(), "the write waits for n2");
    let update = cli(root, &a1, &["db", "update", "app", "--quorum", "async"]);
    assert!(update.status.success(), "{update:?}");
    let output = released.join().expect("writer");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(json(&output)["ack"], "async");
    let listed = json(&cli(root, &a1, &["db", "list"]));
    assert_eq!(
        listed[0]["settings"]["quorum"], "async",
        "the new setting is persisted: {listed}"
    );
    drop((n1, n3));
    assert!(root.join("n1/databases/app/settings.toml").exists());
}

#[test]
fn late_joiner_foreign_certificate_and_primary_kill_9_mid_load() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2");
    let mut n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);

    // Load from a client while the primary is killed with SIGKILL at some point.
    let writer = std::thread::spawn({
        let (root, a1) = (root.to_path_buf(), a1.clone());
        move || {
            let mut acknowledged = Vec::new();
            for i in 0..400 {
                let output = cli(
                    &root,
                    &a1,
                    &[
                        "put",
                        "--db",
                        "app",
                        &format!("key{i}"),
                        &format!("value{i}"),
                        "--timeout",
                        "2",
                    ],
                );
                if !output.status.success() {
                    break;
                }
                acknowledged.push(i);
            }
            acknowledged
        }
    });
    // Kill once the load is well under way.
    until_status(root, &a1, "app", |s| {
        s["committed"]["tx_id"].as_u64().unwrap_or(0) >= 20
    });
    n1.kill_9();
    let acknowledged = writer.join().expect("writer");
    assert!(
        acknowledged.len() > 5,
        "the load ran before the kill ({} writes)",
        acknowledged.len()
    );

    // The primary comes back with every acknowledged write.
    let n1 = Server::start("n1", n1.port, root);
    until_ok(root, &a1, &["status", "--db", "app"]);
    for i in &acknowledged {
        let value = json(&cli(root, &a1, &["get", "--db", "app", &format!("key{i}")]));
        assert_eq!(
            value["value"],
            format!("value{i}"),
            "acknowledged write {i} survived kill -9"
        );
    }
    let epoch = json(&cli(root, &a1, &["status", "--db", "app"]))["epoch"].as_u64();
    assert_eq!(epoch, Some(2), "a restarted primary begins a new epoch");

    // A late-joining empty replica receives the whole history.
    let n2 = Server::start("n2", free_port(), root);
    let a2 = n2.address();
    until_ok(
        root,
        &a2,
        &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
    );
    let last = acknowledged.last().copied().unwrap_or(0);
    // The primary's applied position covers every write: the replica must reach it.
    let tx = json(&cli(
        root,
        &a1,
        &["get", "--db", "app", &format!("key{last}")],
    ))["tx_id"]
        .as_u64()
        .expect("tx");
    let read = json(&until_ok(
        root,
        &a2,
        &[
            "get",
            "--db",
            "app",
            &format!("key{last}"),
            "--min-tx",
            &tx.to_string(),
        ],
    ));
    assert_eq!(read["value"], format!("value{last}"));

    // A client certificate from another CA is refused with a clear error.
    init_certs(root, "other-certs", "x");
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["status", "--db", "app", "--server", &a1, "--tls-dir"])
        .arg(root.join("other-certs"))
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(
        stderr.contains("certificate")
            || stderr.contains("unknownissuer")
            || stderr.contains("refused"),
        "{stderr}"
    );
    drop((n1, n2));
}

/// `cli` with a comma-separated server list, and nothing else added.
#[test]
fn a_replica_is_promoted_after_kill_9_of_the_primary_and_the_old_primary_rejoins() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [mut n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let all = [a1.as_str(), a2.as_str(), a3.as_str()];

    // Clients given every member write to the primary.
    let mut written = Vec::new();
    for i in 0..5 {
        let key = format!("before{i}");
        let tx = put_through(root, &all, &key);
        written.push((key, tx));
    }
    let last = written.last().map(|(_, tx)| *tx).expect("written");
    for replica in [&a2, &a3] {
        until_status(root, replica, "app", |s| s["precommitted"]["tx_id"] == last);
    }
    let old_epoch = json(&cli(root, &a2, &["status", "--db", "app"]))["epoch"]
        .as_u64()
        .expect("epoch");

    // The primary is lost. n2 is promoted once its link is down (until then it is refused as
    // still streaming); n3 (equal) and n1 (unreachable) do not stop it.
    n1.kill_9();
    until_status(root, &a2, "app", |s| s["upstream"] != "streaming");
    // A write sent to a replica whose source does not answer is refused without naming the
    // source as the primary: a client given other servers goes on to them at once.
    until_status(root, &a3, "app", |s| s["upstream"] != "streaming");
    let refused = cli_to(root, &[&a3], &["put", "--db", "app", "k", "v"]);
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        text.contains(&format!("its source {a1} is not answering it now")),
        "{text}"
    );
    let promoted = cli_to(
        root,
        &[&a2, &a3],
        &["db", "promote", "app", "--quorum", "any 1 (n1,n3)"],
    );
    assert!(promoted.status.success(), "{promoted:?}");
    let promoted = json(&promoted);
    assert_eq!(promoted["database"], "app");
    assert_eq!(promoted["role"], "primary");
    let epoch = promoted["epoch"].as_u64().expect("epoch");
    assert!(epoch > old_epoch, "a new epoch: {promoted}");
    assert_eq!(promoted["precommitted"]["tx_id"].as_u64(), Some(last));
    assert!(promoted["committed"]["hash"].is_string(), "{promoted}");
    let status = json(&cli(root, &a2, &["status", "--db", "app"]));
    assert_eq!(status["role"], "primary");
    let listed = json(&cli(root, &a2, &["db", "list"]));
    assert_eq!(
        listed[0]["settings"]["replica_of"],
        serde_json::Value::Null,
        "persisted: {listed}"
    );
    assert_eq!(listed[0]["settings"]["quorum"], "any 1 (n1,n3)");

    // n3 is repointed to n2 by an update; its policy is kept.
    let repointed = cli(
        root,
        &a3,
        &["db", "update", "app", "--replica-of", &format!("{a2}/app")],
    );
    assert!(repointed.status.success(), "{repointed:?}");
    until_status(root, &a3, "app", |s| {
        s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    assert_eq!(
        json(&cli(root, &a3, &["db", "list"]))[0]["settings"]["replica_of"],
        format!("{a2}/app")
    );

    // Writes through every member: n1 is unreachable and passed over...
    for i in 0..3 {
        let key = format!("after{i}");
        let tx = put_through(root, &all, &key);
        assert!(tx > last, "{key} is transaction {tx}");
        written.push((key, tx));
    }
    // ...and n3, a replica, names n2, which is followed even unlisted.
    let tx = put_through(root, &[&a1, &a3], "redirected");
    written.push(("redirected".into(), tx));
    // A read asking for the primary is redirected the same way; others take the first.
    let read = cli_to(
        root,
        &[&a3, &a2],
        &["get", "--db", "app", "after0", "--primary"],
    );
    assert_eq!(json(&read)["value"], "after0-value", "{read:?}");
    let read = cli_to(root, &[&a1, &a3], &["get", "--db", "app", "after0"]);
    assert_eq!(json(&read)["value"], "after0-value", "{read:?}");
    // A single replica named alone still answers for itself, naming the primary.
    let refused = cli(root, &a3, &["put", "--db", "app", "k", "v"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains(&format!("primary at {a2}")),
        "{refused:?}"
    );
    for server in [&a2, &a3] {
        assert_all_readable(root, server, &written);
    }
    assert_eq!(
        json(&cli(root, &a2, &["status", "--db", "app"]))["epoch"].as_u64(),
        Some(epoch)
    );

    // The old primary comes back and is repointed: it becomes a replica of n2, in its epoch,
    // and catches up with nothing acknowledged lost.
    let n1 = Server::start("n1", n1.port, root);
    let repointed = until_ok(
        root,
        &a1,
        &["db", "update", "app", "--replica-of", &format!("{a2}/app")],
    );
    assert!(repointed.status.success(), "{repointed:?}");
    until_status(root, &a1, "app", |s| {
        s["role"] == "replica" && s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    let listed = json(&cli(root, &a1, &["db", "list"]));
    assert_eq!(
        listed[0]["settings"]["quorum"], "any 1 (n2,n3)",
        "the policy is kept: {listed}"
    );
    let tx = put_through(root, &all, "rejoined");
    written.push(("rejoined".into(), tx));
    for server in [&a1, &a2, &a3] {
        assert_all_readable(root, server, &written);
    }
    drop((n1, n2, n3));
}

#[test]
fn promotion_is_refused_on_a_primary_while_the_primary_lives_and_when_behind() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [mut n1, mut n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let first = put_through(root, &[&a1], "first");
    until_status(root, &a2, "app", |s| s["precommitted"]["tx_id"] == first);

    // A primary has nothing to promote, forced or not.
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["db", "promote", "app"];
        args.extend_from_slice(extra);
        let refused = cli(root, &a1, &args);
        assert_eq!(refused.status.code(), Some(4), "{refused:?}");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("nothing to promote"),
            "{refused:?}"
        );
    }
    // The source primary answers: it is alive, and named.
    let refused = cli(root, &a2, &["db", "promote", "app"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!("primary of app at {a1} is alive"))
            && stderr.contains("switch over"),
        "{stderr}"
    );
    assert_eq!(
        json(&cli(root, &a2, &["status", "--db", "app"]))["role"],
        "replica",
        "nothing changed"
    );

    // n2 stops; n3 alone acknowledges more; then the primary is lost and n2 returns behind.
    n2.kill_9();
    let mut ahead = first;
    for i in 0..3 {
        ahead = put_through(root, &[&a1], &format!("only-n3-{i}"));
    }
    until_status(root, &a3, "app", |s| s["precommitted"]["tx_id"] == ahead);
    n1.kill_9();
    let n2 = Server::start("n2", n2.port, root);
    until_ok(root, &a2, &["status", "--db", "app"]);
    let refused = cli_to(root, &[&a2, &a3], &["db", "promote", "app"]);
    assert_eq!(refused.status.code(), Some(4), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "{a3} holds app up to transaction {ahead} of epoch 1"
        )),
        "{stderr}"
    );
    assert_eq!(
        json(&cli(root, &a2, &["status", "--db", "app"]))["role"],
        "replica"
    );
    // The operator insists.
    let forced = cli_to(root, &[&a2, &a3], &["db", "promote", "app", "--force"]);
    assert!(forced.status.success(), "{forced:?}");
    let forced = json(&forced);
    assert_eq!(forced["role"], "primary");
    assert!(forced["epoch"].as_u64() > Some(1), "{forced}");
    assert_eq!(forced["precommitted"]["tx_id"].as_u64(), Some(first));
    let put = cli(root, &a2, &["put", "--db", "app", "k", "v"]);
    assert!(
        put.status.success(),
        "the forced primary takes writes: {put:?}"
    );

    // The old primary, its source set in its settings file before it starts (so that it is
    // never a primary again), holds what n3 acknowledged and the forced n2 lacks: it does not
    // follow, says why (its committed history diverged, naming the range and both hashes), and
    // discards nothing committed.
    let settings = root.join("n1/databases/app/settings.toml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    std::fs::write(&settings, format!("replica_of = \"{a2}/app\"\n{text}")).expect("write");
    let _n1 = Server::start("n1", n1.port, root);
    until_status(root, &a1, "app", |s| {
        let error = s["last_error"].as_str().unwrap_or_default();
        s["role"] == "replica"
            && s["committed"]["tx_id"].as_u64() == Some(ahead)
            && error.contains("committed history diverged")
            && error.contains(&format!("transactions {} to {ahead}", first + 1))
    });
    assert_eq!(
        json(&cli(root, &a1, &["get", "--db", "app", "only-n3-2"]))["value"],
        "only-n3-2-value",
        "nothing committed is discarded"
    );
    drop((n2, n3));
}

#[test]
fn a_live_primary_is_repointed_after_a_forced_promotion_and_clients_follow() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let all = [a1.as_str(), a2.as_str(), a3.as_str()];
    let mut written = vec![("k0".to_string(), put_through(root, &all, "k0"))];
    until_status(root, &a2, "app", |s| {
        s["precommitted"]["tx_id"] == written[0].1
    });

    // A switchover: n1 is alive, so the promotion must be forced; n1 is then repointed while
    // it runs, and becomes a replica of n2.
    let promoted = cli_to(
        root,
        &[&a2, &a3],
        &[
            "db",
            "promote",
            "app",
            "--force",
            "--quorum",
            "any 1 (n1,n3)",
        ],
    );
    assert!(promoted.status.success(), "{promoted:?}");
    let epoch = json(&promoted)["epoch"].as_u64().expect("epoch");
    assert!(epoch > 1);
    let target = format!("{a2}/app");
    for server in [&a1, &a3] {
        let repointed = cli(
            root,
            server,
            &["db", "update", "app", "--replica-of", &target],
        );
        assert!(repointed.status.success(), "{repointed:?}");
    }
    for server in [&a1, &a3] {
        until_status(root, server, "app", |s| {
            s["role"] == "replica"
                && s["upstream"] == "streaming"
                && s["epoch"].as_u64() == Some(epoch)
        });
    }
    // n1, listed first, is a replica now: it names n2, and the write follows.
    for i in 1..4 {
        let key = format!("k{i}");
        let tx = put_through(root, &all, &key);
        written.push((key, tx));
    }
    // The list may come from the environment.
    let put = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["put", "--db", "app", "from-env", "from-env-value", "--json"])
        .env("REPNODE_SERVER", all.join(","))
        .env("REPNODE_TLS_DIR", root.join("certs"))
        .output()
        .expect("run repnode");
    assert!(put.status.success(), "{put:?}");
    written.push(("from-env".into(), json(&put)["tx_id"].as_u64().expect("tx")));
    // The load generator finds the primary too.
    let bench = cli_to(
        root,
        &all,
        &["bench", "--db", "app", "--clients", "2", "--count", "20"],
    );
    assert!(bench.status.success(), "{bench:?}");
    assert_eq!(json(&bench)["writes"], 20);
    for server in [&a1, &a2, &a3] {
        assert_all_readable(root, server, &written);
    }
    drop((n1, n2, n3));
}

#[test]
fn a_fenced_old_primary_is_repointed_and_catches_up() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let all = [a1.as_str(), a2.as_str(), a3.as_str()];
    let mut written = vec![("k0".to_string(), put_through(root, &all, "k0"))];
    until_status(root, &a2, "app", |s| {
        s["precommitted"]["tx_id"] == written[0].1
    });
    let promoted = cli_to(
        root,
        &[&a2],
        &[
            "db",
            "promote",
            "app",
            "--force",
            "--quorum",
            "any 1 (n1,n3)",
        ],
    );
    assert!(promoted.status.success(), "{promoted:?}");
    let epoch = json(&promoted)["epoch"].as_u64().expect("epoch");
    let repoint = |server: &str, source: &str| {
        let source = format!("{source}/app");
        let output = cli(
            root,
            server,
            &["db", "update", "app", "--replica-of", &source],
        );
        assert!(output.status.success(), "{output:?}");
    };
    repoint(&a3, &a2);
    written.push(("k1".into(), put_through(root, &[&a2], "k1")));

    // n3, which has seen the new epoch, subscribes to the old primary: n1 is fenced.
    repoint(&a3, &a1);
    until_status(root, &a1, "app", |s| s["fenced"].as_u64() == Some(epoch));
    let refused = cli(root, &a1, &["put", "--db", "app", "k", "v"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("fenced"),
        "{refused:?}"
    );

    // Repointed, the fenced old primary becomes a replica of n2 and catches up.
    repoint(&a1, &a2);
    repoint(&a3, &a2);
    for server in [&a1, &a3] {
        until_status(root, server, "app", |s| {
            s["role"] == "replica"
                && s["upstream"] == "streaming"
                && s["epoch"].as_u64() == Some(epoch)
                && s["fenced"].is_null()
        });
    }
    written.push(("k2".into(), put_through(root, &all, "k2")));
    for server in [&a1, &a2, &a3] {
        assert_all_readable(root, server, &written);
    }
    drop((n1, n2, n3));
}

#[test]
fn offline_log_dump_and_verify() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1");
    let mut n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    for i in 0..5 {
        assert!(
            cli(root, &a1, &["put", "--db", "app", &format!("k{i}"), "v"])
                .status
                .success()
        );
    }
    n1.kill_9();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_repnode"))
            .args(args)
            .arg("--dir")
            .arg(root.join("n1"))
            .output()
            .expect("run")
    };
    let dump = run(&["log", "dump", "--db", "app", "--json"]);
    assert!(dump.status.success(), "{dump:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[4]["tx_id"], 5);
    assert!(run(&["log", "verify"]).status.success());

    // Damage a byte in the middle of the log: verify names the file and fails.
    let log = root.join("n1/databases/app/log");
    let segment = std::fs::read_dir(&log)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("segment");
    let mut bytes = std::fs::read(&segment).expect("read");
    bytes[30] ^= 0xff;
    std::fs::write(&segment, bytes).expect("write");
    let verify = run(&["log", "verify", "--db", "app"]);
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stderr).contains(".seg at offset"),
        "{verify:?}"
    );
}

#[test]
fn databases_load_unload_and_delete() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1");
    let n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "one"]);
    until_ok(root, &a1, &["db", "create", "two", "--store", "mem"]);
    assert!(
        cli(root, &a1, &["put", "--db", "one", "k", "v"])
            .status
            .success()
    );
    let bad = cli(
        root,
        &a1,
        &["db", "create", "three", "--quorum", "most of them"],
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid quorum policy"),
        "{bad:?}"
    );
    let busy = cli(root, &a1, &["db", "delete", "one"]);
    assert!(
        String::from_utf8_lossy(&busy.stderr).contains("unload it first"),
        "{busy:?}"
    );

    assert!(cli(root, &a1, &["db", "unload", "one"]).status.success());
    let unloaded = cli(root, &a1, &["get", "--db", "one", "k"]);
    assert!(
        String::from_utf8_lossy(&unloaded.stderr).contains("not loaded"),
        "{unloaded:?}"
    );
    let listed = json(&cli(root, &a1, &["db", "list"]));
    assert_eq!(listed[0]["database"], "one");
    assert_eq!(listed[0]["loaded"], false);
    assert!(cli(root, &a1, &["db", "load", "one"]).status.success());
    assert_eq!(
        json(&cli(root, &a1, &["get", "--db", "one", "k"]))["value"],
        "v",
        "data kept across unload and load"
    );

    // An atomic multi-operation transaction.
    let tx = cli(
        root,
        &a1,
        &[
            "tx", "--db", "one", "set", "a", "1", "set", "b", "2", "del", "k",
        ],
    );
    assert!(tx.status.success(), "{tx:?}");
    assert_eq!(
        json(&cli(root, &a1, &["get", "--db", "one", "a"]))["value"],
        "1"
    );
    assert_eq!(
        json(&cli(root, &a1, &["get", "--db", "one", "k"]))["value"],
        serde_json::Value::Null
    );
    let bad = cli(root, &a1, &["tx", "--db", "one", "set", "only-a-key"]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("set KEY VALUE"),
        "{bad:?}"
    );
    // A flag an update can set and clear again.
    assert!(
        cli(root, &a1, &["db", "update", "one", "--allow-tx-discarding"])
            .status
            .success()
    );
    assert_eq!(
        json(&cli(root, &a1, &["db", "list"]))[0]["settings"]["allow_tx_discarding"],
        true
    );
    assert!(
        cli(
            root,
            &a1,
            &["db", "update", "one", "--allow-tx-discarding=false"]
        )
        .status
        .success()
    );
    assert_eq!(
        json(&cli(root, &a1, &["db", "list"]))[0]["settings"]["allow_tx_discarding"],
        false
    );
    assert!(cli(root, &a1, &["db", "unload", "two"]).status.success());
    assert!(cli(root, &a1, &["db", "delete", "two"]).status.success());
    let listed = json(&cli(root, &a1, &["db", "list"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[test]
fn startup_flags_make_the_default_database_a_replica() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = Server::start_with("n1", free_port(), root, &["--default-db", "defaultdb"]);
    let a1 = n1.address();
    let put = until_ok(root, &a1, &["put", "--db", "defaultdb", "k", "v"]);
    let tx = json(&put)["tx_id"].as_u64().expect("tx");
    let source = format!("{a1}/defaultdb");
    let n2 = Server::start_with(
        "n2",
        free_port(),
        root,
        &["--default-db", "defaultdb", "--default-replica-of", &source],
    );
    let a2 = n2.address();
    let read = json(&until_ok(
        root,
        &a2,
        &["get", "--db", "defaultdb", "k", "--min-tx", &tx.to_string()],
    ));
    assert_eq!(read["value"], "v");
    let status = json(&cli(root, &a2, &["status", "--db", "defaultdb"]));
    assert_eq!(status["role"], "replica");
}

/// The runtime's worker threads, counted by name (Linux).
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "tokio-rt-worker")
        .count()
}

#[test]
fn worker_threads_come_from_the_flag_or_the_config_file() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2");
    let config = root.join("n1.toml");
    std::fs::write(&config, "threads = 1\n").expect("config");
    let config = config.to_str().expect("utf-8 path");
    let n1 = Server::start_with("n1", free_port(), root, &["--config", config]);
    let n2 = Server::start_with("n2", free_port(), root, &["--threads", "3"]);
    until_ok(root, &n1.address(), &["db", "list"]);
    until_ok(root, &n2.address(), &["db", "list"]);
    assert_eq!(worker_threads(n1.child.id()), 1);
    assert_eq!(worker_threads(n2.child.id()), 3);

    let refused = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["serve", "--name", "n1", "--threads", "0", "--dir"])
        .arg(root.join("zero"))
        .output()
        .expect("run repnode");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--threads must be at least 1"), "{stderr}");
}

#[test]
fn sigterm_answers_waiting_writes_and_exits_cleanly() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1");
    let mut n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    // Two acknowledgements from replicas that do not exist: every write waits.
    until_ok(root, &a1, &["db", "create", "app", "--sync-acks", "2"]);
    let waiting = std::thread::spawn({
        let (root, a1) = (root.to_path_buf(), a1.clone());
        move || cli(&root, &a1, &["put", "--db", "app", "k", "v"])
    });
    until_status(root, &a1, "app", |s| s["waiting_writes"] == 1);
    let term = Command::new("kill")
        .args(["-TERM", &n1.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    let exit = n1.child.wait().expect("wait");
    assert!(exit.success(), "a clean exit on SIGTERM: {exit:?}");
    let answered = waiting.join().expect("writer");
    assert_eq!(
        answered.status.code(),
        Some(3),
        "the waiting write is reported as of unknown outcome: {answered:?}"
    );
    // The precommitted write is on disk, intact.
    let verify = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["log", "verify", "--dir"])
        .arg(root.join("n1"))
        .output()
        .expect("verify");
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("1 transactions"),
        "{verify:?}"
    );
}

#[test]
fn repnode_bench_reports_throughput_and_latency() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = Server::start("n1", free_port(), root);
    let n2 = Server::start("n2", free_port(), root);
    let (a1, a2) = (n1.address(), n2.address());
    until_ok(root, &a1, &["db", "create", "app", "--sync-acks", "1"]);
    until_ok(
        root,
        &a2,
        &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
    );
    let output = cli(
        root,
        &a1,
        &[
            "bench",
            "--db",
            "app",
            "--clients",
            "4",
            "--count",
            "200",
            "--value-size",
            "64",
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let report = json(&output);
    assert_eq!(report["writes"], 200);
    assert_eq!(report["clients"], 4);
    let (p50, p99, max) = (
        report["p50_ms"].as_f64().unwrap(),
        report["p99_ms"].as_f64().unwrap(),
        report["max_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{report}");
    let status = json(&cli(root, &a1, &["status", "--db", "app"]));
    assert_eq!(
        status["committed"]["tx_id"], 200,
        "every bench write committed under the quorum"
    );
}

#[test]
fn majority_counts_every_member_across_a_primary_restart_until_one_is_removed() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3,n4");
    let p1 = free_port();
    let mut n1 = Server::start("n1", p1, root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app", "--quorum", "majority"]);
    let mut replicas = Vec::new();
    for name in ["n2", "n3", "n4"] {
        let server = Server::start(name, free_port(), root);
        let source = format!("{a1}/app");
        until_ok(
            root,
            &server.address(),
            &["db", "create", "app", "--replica-of", &source],
        );
        replicas.push(server);
    }
    let put = |key: &str| {
        cli(
            root,
            &a1,
            &["put", "--db", "app", key, "v", "--timeout", "3"],
        )
    };
    let members = |args: &[&str]| {
        let mut all = vec!["db", "members", "app"];
        all.extend_from_slice(args);
        cli(root, &a1, &all)
    };
    // Every replica that subscribed is a member, durably.
    for _ in 0..100 {
        if json(&members(&[]))["members"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        json(&members(&[]))["members"],
        serde_json::json!(["n2/app", "n3/app", "n4/app"])
    );
    let first = put("k0");
    assert!(first.status.success(), "{first:?}");
    assert_eq!(json(&first)["ack"], "quorum");

    // n3 and n4 are lost; the primary restarts and only n2 comes back: one acknowledgement
    // of three members is not a majority of four nodes, however many replicas are connected.
    replicas[1].kill_9();
    replicas[2].kill_9();
    n1.kill_9();
    let _n1 = Server::start("n1", p1, root);
    until_status(root, &a1, "app", |s| {
        s["replicas"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["node"] == "n2" && r["connected"] == true)
        })
    });
    assert_eq!(
        json(&members(&[]))["members"].as_array().map(Vec::len),
        Some(3)
    );
    let waiting = put("k1");
    assert_eq!(
        waiting.status.code(),
        Some(3),
        "outcome unknown: {waiting:?}"
    );
    assert_eq!(json(&waiting)["outcome"], "unknown");

    // The operator retires n3 for good: two members left, n2's acknowledgement is a majority,
    // and the waiting write commits at once.
    let removed = members(&["--remove", "n3/app"]);
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(json(&removed)["removed"], "n3/app");
    assert_eq!(
        json(&removed)["members"],
        serde_json::json!(["n2/app", "n4/app"])
    );
    let read = until_ok(root, &a1, &["get", "--db", "app", "k1", "--min-tx", "2"]);
    assert_eq!(json(&read)["value"], "v");
    // Removing what is not a member is refused, naming it.
    let again = members(&["--remove", "n3/app"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("n3/app is not a member"));
}
