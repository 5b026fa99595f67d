//! `repnode failover plan` against real `repnode serve` processes on loopback: a primary with
//! two replicas under `acks 1`; a plan while the primary is up uses its policy and membership;
//! then one replica falls behind, the primary is killed with SIGKILL, and the plan recommends
//! the replica that holds every acknowledged write, or nothing when too few answer.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

/// Each server runs one runtime worker: three share two cores.
const THREADS: &[&str] = &["--threads", "1"];

/// Polls a database's status until its durable position is `tx`.
fn until_durable(root: &Path, server: &str, tx: u64) {
    for _ in 0..200 {
        let output = cli(root, server, &["status", "--db", "app"]);
        if output.status.success() && json(&output)["precommitted"]["tx_id"] == tx {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{server} never held tx {tx} durably");
}

fn put(root: &Path, server: &str, key: &str) -> u64 {
    let output = cli(
        root,
        server,
        &["put", "--db", "app", key, "v", "--timeout", "10"],
    );
    assert!(output.status.success(), "{output:?}");
    json(&output)["tx_id"].as_u64().expect("tx_id")
}

/// `failover plan --db app --servers ...` with `extra` flags, as JSON unless `text`.
fn plan(root: &Path, servers: &[&str], extra: &[&str], text: bool) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_repnode"));
    command
        .args([
            "failover",
            "plan",
            "--db",
            "app",
            "--servers",
            &servers.join(","),
        ])
        .args(["--timeout", "2"])
        .args(extra)
        .arg("--tls-dir")
        .arg(root.join("certs"));
    if !text {
        command.arg("--json");
    }
    command.output().expect("run repnode failover plan")
}

#[test]
fn failover_plan_before_and_after_the_primary_is_killed() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let certs = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["certs", "init", "--nodes", "n1,n2,n3", "--dir"])
        .arg(root.join("certs"))
        .output()
        .expect("certs");
    assert!(certs.status.success(), "{certs:?}");
    let mut n1 = Server::start_with("n1", free_port(), root, THREADS);
    let n2 = Server::start_with("n2", free_port(), root, THREADS);
    let mut n3 = Server::start_with("n3", free_port(), root, THREADS);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    until_ok(root, &a1, &["db", "create", "app", "--quorum", "acks 1"]);
    for replica in [&a2, &a3] {
        let source = format!("{a1}/app");
        until_ok(
            root,
            replica,
            &["db", "create", "app", "--replica-of", &source],
        );
    }
    put(root, &a1, "k1");
    let both = put(root, &a1, "k2");
    until_durable(root, &a2, both);
    until_durable(root, &a3, both);

    // The primary is up: its policy and its membership are the ones reasoned with, and both
    // replicas hold everything: both safe, the first given recommended.
    let output = plan(root, &[&a1, &a2, &a3], &[], false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let up = json(&output);
    assert_eq!(up["members"][0]["role"], "primary", "{up}");
    assert_eq!(up["members"][0]["reachable"], true);
    assert_eq!(up["members"][0]["precommitted"]["tx_id"], both);
    assert_eq!(up["policy"], "acks 1");
    assert_eq!(up["policy_from"], format!("primary {a1}"));
    assert_eq!(up["membership"], serde_json::json!(["n2/app", "n3/app"]));
    assert_eq!(up["rule"][0]["basis"], "membership");
    assert_eq!(
        (up["rule"][0]["k"].as_u64(), up["rule"][0]["n"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(up["candidates"].as_array().map(Vec::len), Some(2), "{up}");
    assert_eq!(up["candidates"][0]["server"], a2.as_str());
    assert_eq!(up["candidates"][0]["safe"], true);
    assert_eq!(up["candidates"][1]["safe"], true);
    assert_eq!(up["recommended"], a2.as_str());

    // n3 stops; the writes that follow are acknowledged by n2 alone; then the primary dies.
    n3.kill_9();
    put(root, &a1, "k3");
    let last = put(root, &a1, "k4");
    until_durable(root, &a2, last);
    n1.kill_9();
    let n3 = Server::start_with("n3", n3.port, root, THREADS);
    until_ok(root, &a3, &["status", "--db", "app"]);

    // n1 unreachable, both replicas answer: n − k + 1 = 2 answered, n2 is safe, n3 could be
    // missing the two transactions it did not receive.
    let output = plan(root, &[&a1, &a2, &a3], &["--quorum", "acks 1"], false);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let down = json(&output);
    assert_eq!(down["recommended"], a2.as_str(), "{down}");
    assert_eq!(down["members"][0]["reachable"], false);
    assert_eq!(down["not_heard_from"], serde_json::json!([a1]));
    assert_eq!(down["candidates"][0]["server"], a2.as_str());
    assert_eq!(down["candidates"][0]["safe"], true);
    assert_eq!(down["candidates"][0]["missing_txs"], 0);
    assert_eq!(down["candidates"][1]["server"], a3.as_str());
    assert_eq!(down["candidates"][1]["safe"], false);
    assert_eq!(down["candidates"][1]["missing_txs"], last - both);
    assert_eq!(down["members"][2]["precommitted"]["tx_id"], both);
    assert_eq!(down["policy_from"], "--quorum");

    // The same as text.
    let output = plan(root, &[&a1, &a2, &a3], &["--quorum", "acks 1"], true);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains(&format!("recommended: {a2}")), "{text}");
    assert!(text.contains(&format!("{a1}: unreachable")), "{text}");

    // Only n2 listed, under a policy that needs n3's answer too: nothing is provably safe.
    let output = plan(root, &[&a1, &a2], &["--quorum", "any 1 (n2,n3)"], false);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let few = json(&output);
    assert_eq!(few["recommended"], serde_json::Value::Null, "{few}");
    assert_eq!(few["more_needed"], 1);
    assert_eq!(few["candidates"][0]["safe"], false);
    assert_eq!(few["rule"][0]["not_heard_from"], serde_json::json!(["n3"]));

    // Without the primary and without --quorum the policy is unknown.
    let output = plan(root, &[&a1, &a2, &a3], &[], false);
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    assert_eq!(json(&output)["recommended"], serde_json::Value::Null);
    drop((n2, n3));
}
