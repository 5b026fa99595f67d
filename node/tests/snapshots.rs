//! Snapshots with real `repnode serve` processes: a new replica of a compacted primary starts
//! from its snapshot while the receiver and then the sender are killed (kill -9) in the middle
//! of the transfer, and resumes where it stopped; `db create --wait` follows a replica of that
//! replica, started from its parent's snapshot, until it has caught up; every state digest
//! agrees. The sender is paced (`--snapshot-max-rate`) so that the kills land mid-transfer.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Server, cli, free_port, init_certs, json, until_ok, until_status};

/// Bytes per second each server sends a snapshot at: about 8 s for the 8 MB written below.
const RATE: &str = "1000000";

/// Log segments of 256 KiB: compaction removes whole segments.
fn start(name: &str, port: u16, root: &Path) -> Server {
    Server::start_with(
        name,
        port,
        root,
        &["--snapshot-max-rate", RATE, "--log-segment-bytes", "262144"],
    )
}

fn status(root: &Path, server: &str, db: &str) -> serde_json::Value {
    json(&until_ok(root, server, &["status", "--db", db]))
}

/// Snapshot bytes the replica holds, while it receives or installs one.
fn bytes_held(status: &serde_json::Value) -> Option<u64> {
    status["progress"]["bytes_done"].as_u64()
}

/// Waits until `ready` holds of the status of `db` at `server`, for at most 60 s; returns it.
fn wait_for(
    root: &Path,
    server: &str,
    db: &str,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    for _ in 0..1200 {
        let output = cli(root, server, &["status", "--db", db]);
        if output.status.success() {
            last = json(&output);
            if std::env::var_os("SNAPSHOT_TEST_TRACE").is_some() {
                eprintln!("{what}: {} {}", last["phase"], last["progress"]);
            }
            if ready(&last) {
                return last;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} never happened at {server}; last status: {last}");
}

fn digest(root: &Path, server: &str, db: &str) -> (u64, String) {
    let answer = json(&until_ok(root, server, &["db", "digest", db]));
    (
        answer["tx_id"].as_u64().expect("tx_id"),
        answer["digest"].as_str().expect("digest").to_string(),
    )
}

/// Waits until `server`'s state of `db` reflects `tx_id` and returns its digest there.
fn digest_at(root: &Path, server: &str, db: &str, tx_id: u64) -> String {
    for _ in 0..600 {
        let (at, digest) = digest(root, server, db);
        if at == tx_id {
            return digest;
        }
        assert!(at < tx_id, "{server} is beyond {tx_id}: {at}");
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{server} never reached tx {tx_id}");
}

#[test]
fn a_new_replica_starts_from_a_snapshot_through_kills_of_either_side_and_a_cascade_follows() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let mut n1 = start("n1", p1, root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app", "--retain-txs", "100"]);
    // 8,000 keys of 1 KiB.
    let filled = until_ok(
        root,
        &a1,
        &[
            "bench",
            "--db",
            "app",
            "--clients",
            "8",
            "--count",
            "8000",
            "--value-size",
            "1024",
        ],
    );
    assert!(filled.status.success(), "{filled:?}");
    // Retention keeps the latest 100 transactions; `db compact` cuts now.
    let compacted = json(&until_ok(root, &a1, &["db", "compact", "app"]));
    let base = compacted["base_after"].as_u64().expect("base_after");
    // Whole segments of about 250 transactions go, up to the 100 retained.
    assert!(
        (7400..=7900).contains(&base),
        "the log begins after {base}: {compacted}"
    );
    let status1 = status(root, &a1, "app");
    assert_eq!(status1["log_base"].as_u64(), Some(base), "{status1}");

    // A new replica: it needs transactions compaction removed, so it gets the snapshot.
    let mut n2 = start("n2", p2, root);
    let a2 = n2.address();
    until_ok(
        root,
        &a2,
        &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
    );
    let receiving = wait_for(root, &a2, "app", "a quarter of the transfer", |s| {
        s["phase"] == "snapshot transfer"
            && bytes_held(s).is_some_and(|held| {
                held * 4 >= s["progress"]["bytes_total"].as_u64().unwrap_or(u64::MAX)
            })
    });
    let held = bytes_held(&receiving).expect("bytes held");
    assert!(
        receiving["progress"]["rate"]
            .as_f64()
            .is_some_and(|rate| rate > 0.0),
        "{receiving}"
    );
    // The receiver dies mid-transfer, and resumes after what it stored.
    n2.kill_9();
    let n2 = start("n2", p2, root);
    let resumed = wait_for(root, &a2, "app", "the resumed transfer", |s| {
        bytes_held(s).is_some() || s["phase"] == "streaming"
    });
    eprintln!(
        "receiver killed holding {held} bytes; restarted holding {:?}",
        bytes_held(&resumed)
    );
    if let Some(now_held) = bytes_held(&resumed) {
        // Chunks are 1 MiB: at most the one being written when it died is lost.
        assert!(
            now_held + (1 << 20) >= held,
            "resumed at {now_held} bytes after holding {held}: {resumed}"
        );
    }
    let restarted_with = bytes_held(&resumed).unwrap_or(0);
    let further = wait_for(root, &a2, "app", "more of the transfer", |s| {
        s["phase"] == "streaming"
            || (s["phase"] == "snapshot transfer"
                && bytes_held(s).is_some_and(|held| held > restarted_with))
    });
    // The sender dies mid-transfer too (if the transfer has not finished yet).
    let sender_killed = further["phase"] != "streaming";
    if sender_killed {
        let held = bytes_held(&further).expect("bytes held");
        n1.kill_9();
        n1 = start("n1", p1, root);
        // The replica resumes from the restarted sender where it stopped: what it holds never
        // drops below what it held, and grows.
        let lowest = std::cell::Cell::new(u64::MAX);
        let after = wait_for(
            root,
            &a2,
            "app",
            "progress from the restarted sender",
            |s| {
                if let Some(now_held) = bytes_held(s) {
                    lowest.set(lowest.get().min(now_held));
                }
                s["phase"] == "streaming" || bytes_held(s).is_some_and(|now| now > held)
            },
        );
        eprintln!(
            "sender killed while the replica held {held} bytes; it held at least {} after, then {}",
            lowest.get(),
            after["progress"]
        );
        assert!(
            lowest.get() == u64::MAX || lowest.get() >= held,
            "started again from {} after {held}",
            lowest.get()
        );
    }
    // The receiver dies once more, later in the transfer.
    let before = wait_for(root, &a2, "app", "a later point of the transfer", |s| {
        s["phase"] == "streaming"
            || bytes_held(s).is_some_and(|now| {
                now * 3 >= 2 * s["progress"]["bytes_total"].as_u64().unwrap_or(u64::MAX)
            })
    });
    let receiver_killed_again = before["phase"] != "streaming";
    let n2 = if receiver_killed_again {
        let held = bytes_held(&before).expect("bytes held");
        drop(n2);
        let n2 = start("n2", p2, root);
        let resumed = wait_for(root, &a2, "app", "the transfer resumed again", |s| {
            bytes_held(s).is_some() || s["phase"] == "streaming"
        });
        eprintln!(
            "receiver killed again holding {held} bytes; restarted holding {:?}",
            bytes_held(&resumed)
        );
        if let Some(now_held) = bytes_held(&resumed) {
            assert!(now_held + (1 << 20) >= held, "{now_held} after {held}");
        }
        n2
    } else {
        n2
    };
    let streaming = wait_for(root, &a2, "app", "streaming", |s| s["phase"] == "streaming");
    assert!(streaming["log_base"].as_u64() >= Some(base), "{streaming}");
    assert!(
        sender_killed && receiver_killed_again,
        "the transfer ended before the sender and the receiver again could be killed in the \
         middle of it"
    );
    // Writes go on, and the states agree.
    let more = until_ok(
        root,
        &a1,
        &["bench", "--db", "app", "--clients", "2", "--count", "50"],
    );
    assert!(more.status.success(), "{more:?}");
    let last = status(root, &a1, "app")["committed"]["tx_id"]
        .as_u64()
        .expect("committed");
    let primary_digest = digest_at(root, &a1, "app", last);
    assert_eq!(digest_at(root, &a2, "app", last), primary_digest);

    // A replica of the replica, from the replica's own snapshot, with --wait: the final
    // object only, under --json, once it has caught up.
    until_ok(root, &a2, &["db", "compact", "app"]);
    let n3 = start("n3", p3, root);
    let a3 = n3.address();
    let created = until_ok(
        root,
        &a3,
        &[
            "db",
            "create",
            "app",
            "--replica-of",
            &format!("{a2}/app"),
            "--wait",
            "--timeout",
            "60",
        ],
    );
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let done = json(&created);
    assert_eq!(done["phase"], "streaming", "{done}");
    assert!(
        done["log_base"].as_u64() >= Some(base),
        "started from a snapshot: {done}"
    );
    assert!(done["elapsed_ms"].as_u64().is_some(), "{done}");
    assert_eq!(digest_at(root, &a3, "app", last), primary_digest);
    drop((n1, n2, n3));
}

#[test]
fn db_create_wait_shows_progress_lines_when_not_on_a_terminal() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    let filled = until_ok(
        root,
        &a1,
        &[
            "bench",
            "--db",
            "app",
            "--clients",
            "4",
            "--count",
            "3000",
            "--value-size",
            "1024",
        ],
    );
    assert!(filled.status.success(), "{filled:?}");
    until_ok(root, &a1, &["db", "compact", "app"]);
    let n2 = start("n2", free_port(), root);
    let a2 = n2.address();
    // Without --json: progress lines on stderr (stderr is not a terminal here), one line
    // on stdout at the end.
    let mut output = None;
    for _ in 0..100 {
        let attempt = std::process::Command::new(env!("CARGO_BIN_EXE_repnode"))
            .args(["db", "create", "app", "--replica-of"])
            .arg(format!("{a1}/app"))
            .args(["--wait", "--timeout", "60", "--server", &a2, "--tls-dir"])
            .arg(root.join("certs"))
            .output()
            .expect("run repnode");
        let refused = String::from_utf8_lossy(&attempt.stderr).contains("connect");
        if attempt.status.success() || !refused {
            output = Some(attempt);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = output.expect("the server answers");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout.contains("caught up with its source") && stdout.contains("snapshot"),
        "{stdout}"
    );
    assert!(
        stderr.contains("snapshot transfer:") && stderr.contains("%"),
        "progress lines: {stderr}"
    );
    until_status(root, &a2, "app", |s| s["phase"] == "streaming");
}
