//! `db update --allow-rewind` with real processes: an asynchronous primary commits writes its
//! replica never received, the replica is promoted by force, and the old primary rejoins. It
//! stops naming the divergence until an operator allows one rewind; then the writes it drops
//! are in a rollback file, its reads reflect the new history, and it follows the new primary.

mod common;

use std::path::Path;

use common::{Server, cli, free_port, init_certs, json, put_through, until_ok, until_status};

fn get(root: &Path, server: &str, key: &str, min_tx: u64) -> serde_json::Value {
    json(&until_ok(
        root,
        server,
        &["get", "--db", "app", key, "--min-tx", &min_tx.to_string()],
    ))
}

#[test]
fn a_rejoining_primary_drops_committed_writes_only_when_allowed_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = Server::start("n1", free_port(), root);
    let n2 = Server::start("n2", free_port(), root);
    let (a1, a2) = (n1.address(), n2.address());
    until_ok(root, &a1, &["db", "create", "app"]);
    until_ok(
        root,
        &a2,
        &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
    );
    for key in ["k1", "k2", "k3"] {
        put_through(root, &[&a1], key);
    }
    until_status(root, &a2, "app", |s| s["committed"]["tx_id"] == 3);

    // The replica stops following; the asynchronous primary commits two writes alone.
    until_ok(root, &a2, &["db", "unload", "app"]);
    let lost: Vec<serde_json::Value> = ["k4", "k5"]
        .iter()
        .map(|key| {
            json(&until_ok(
                root,
                &a1,
                &["put", "--db", "app", key, &format!("{key}-value")],
            ))
        })
        .collect();
    assert_eq!(
        (&lost[0]["tx_id"], &lost[1]["tx_id"]),
        (&4.into(), &5.into())
    );
    let lost_hashes: Vec<String> = lost
        .iter()
        .map(|receipt| receipt["hash"].as_str().expect("hash").to_string())
        .collect();

    // The primary goes away; the replica is promoted by force and writes on.
    until_ok(root, &a1, &["db", "unload", "app"]);
    until_ok(root, &a2, &["db", "load", "app"]);
    let promoted = cli(root, &a2, &["db", "promote", "app", "--force"]);
    assert!(promoted.status.success(), "{promoted:?}");
    let new_tx = put_through(root, &[&a2], "k6");
    assert_eq!(new_tx, 4, "the new history continues after transaction 3");

    // Repointed, the old primary stops: it committed 4 and 5, which the new history lacks.
    until_ok(root, &a1, &["db", "load", "app"]);
    until_ok(
        root,
        &a1,
        &["db", "update", "app", "--replica-of", &format!("{a2}/app")],
    );
    until_status(root, &a1, "app", |s| {
        s["upstream"]
            .as_str()
            .is_some_and(|u| u.starts_with("stopped"))
    });
    let status = json(&cli(root, &a1, &["status", "--db", "app"]));
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("transactions 4 to 5") && error.contains(&lost_hashes[0]),
        "the error names the range and our hash: {error}"
    );
    assert_eq!(status["committed"]["tx_id"], 5, "nothing dropped unasked");

    // A rewind is for a replica only.
    let on_primary = cli(root, &a2, &["db", "update", "app", "--allow-rewind"]);
    assert_eq!(on_primary.status.code(), Some(4), "{on_primary:?}");

    // Allowed once: it drops 4 and 5 into a rollback file and follows the new primary.
    let rewound = cli(root, &a1, &["db", "update", "app", "--allow-rewind"]);
    assert!(rewound.status.success(), "{rewound:?}");
    let rewound = json(&rewound);
    assert_eq!(rewound["upstream"], "streaming");
    let rolled_back = &rewound["rolled_back"];
    assert_eq!(
        (&rolled_back["from_tx_id"], &rolled_back["to_tx_id"]),
        (&serde_json::json!(4), &serde_json::json!(5))
    );
    assert_eq!(rolled_back["committed_to_tx_id"], 5);
    let file = rolled_back["file"].as_str().expect("file");
    let kept = std::fs::read_to_string(file).expect("the rollback file is readable");
    let kept: Vec<serde_json::Value> = kept
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let kept_ids: Vec<u64> = kept.iter().filter_map(|tx| tx["tx_id"].as_u64()).collect();
    assert_eq!(kept_ids, vec![4, 5]);
    assert_eq!(kept[0]["hash"], lost_hashes[0]);
    assert_eq!(kept[1]["hash"], lost_hashes[1]);

    // Its reads now reflect the new history, rebuilt from the log.
    assert_eq!(get(root, &a1, "k6", 4)["value"], "k6-value");
    assert_eq!(get(root, &a1, "k1", 4)["value"], "k1-value");
    assert!(get(root, &a1, "k4", 4)["value"].is_null(), "k4 was dropped");
    // And it follows the new primary.
    let next = put_through(root, &[&a2], "k7");
    assert_eq!(get(root, &a1, "k7", next)["value"], "k7-value");
    let status = json(&cli(root, &a1, &["status", "--db", "app"]));
    assert_eq!(status["last_rollback"]["committed_to_tx_id"], 5);
}
