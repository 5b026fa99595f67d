//! Authorization as processes: admins (`serve --admins`, `client` by default) change
//! databases; other client identities get what each database grants (`--readers`,
//! `--writers`), and every refusal names the identity and the permission it lacks.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, free_port, init_certs, json, until_ok};

/// `repnode ARGS` as client identity `who` (its certificate in `root/certs`).
fn as_client(root: &Path, who: &str, server: &str, args: &[&str]) -> Output {
    let file = |ext: &str| root.join("certs").join(format!("{who}.{ext}"));
    Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(args)
        .args(["--server", server, "--json"])
        .arg("--ca-cert")
        .arg(root.join("certs/ca.pem"))
        .arg("--cert")
        .arg(file("pem"))
        .arg("--key")
        .arg(file("key"))
        .output()
        .expect("run repnode")
}

/// Asserts `output` is a refusal of `permission` to `who`: exit 4, kind `refused`.
fn assert_refused(output: &Output, who: &str, permission: &str) {
    assert_eq!(output.status.code(), Some(4), "{output:?}");
    let error = json(output);
    assert_eq!(error["kind"], "refused", "{error}");
    let message = error["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("identity \"{who}\" may not {permission}")),
        "names the identity and the permission: {message}"
    );
}

fn add_client(root: &Path, name: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["certs", "add-client", name, "--dir"])
        .arg(root.join("certs"))
        .output()
        .expect("add-client");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn identities_get_what_databases_grant_and_refusals_name_what_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,n2");
    for name in ["alice", "bob", "carol", "ops"] {
        add_client(root, name);
    }
    let admins = ["--admins", "client,ops"];
    let n1 = Server::start_with("n1", free_port(), root, &admins);
    let n2 = Server::start_with("n2", free_port(), root, &admins);
    let (a1, a2) = (n1.address(), n2.address());
    until_ok(root, &a1, &["db", "create", "app"]);
    until_ok(root, &a1, &["put", "--db", "app", "k", "v"]);
    // A replica on n2, which alice may read (so that promotion and switchover get as far
    // as the requests only an admin may make).
    let source = format!("{a1}/app");
    until_ok(
        root,
        &a2,
        &[
            "db",
            "create",
            "app",
            "--replica-of",
            &source,
            "--readers",
            "alice",
        ],
    );

    // No grant: nothing but an empty list.
    assert_refused(
        &as_client(root, "alice", &a1, &["put", "--db", "app", "k", "x"]),
        "alice",
        "write",
    );
    assert_refused(
        &as_client(root, "alice", &a1, &["get", "--db", "app", "k"]),
        "alice",
        "read",
    );
    assert_refused(
        &as_client(root, "alice", &a1, &["status", "--db", "app"]),
        "alice",
        "read",
    );
    let listed = json(&as_client(root, "alice", &a1, &["db", "list"]));
    assert_eq!(listed, serde_json::json!([]), "alice sees no database");

    // An admin other than the default grants: alice writes, bob reads.
    let granted = as_client(
        root,
        "ops",
        &a1,
        &[
            "db",
            "update",
            "app",
            "--writers",
            "alice",
            "--readers",
            "bob",
        ],
    );
    assert!(granted.status.success(), "{granted:?}");
    let put = as_client(root, "alice", &a1, &["put", "--db", "app", "k", "alice"]);
    assert_eq!(json(&put)["tx_id"], 2, "{put:?}");
    let read = as_client(root, "bob", &a1, &["get", "--db", "app", "k"]);
    assert_eq!(json(&read)["value"], "alice", "{read:?}");
    assert!(
        as_client(root, "bob", &a1, &["status", "--db", "app"])
            .status
            .success()
    );
    assert_refused(
        &as_client(root, "bob", &a1, &["put", "--db", "app", "k", "bob"]),
        "bob",
        "write",
    );
    assert_refused(
        &as_client(root, "carol", &a1, &["get", "--db", "app", "k"]),
        "carol",
        "read",
    );
    let listed = json(&as_client(root, "bob", &a1, &["db", "list"]));
    assert_eq!(
        listed[0]["database"], "app",
        "bob sees what he may read: {listed}"
    );

    // Changes are for admins, whatever a database grants.
    for args in [
        vec!["db", "create", "other"],
        vec!["db", "update", "app", "--writers", "alice,carol"],
        vec!["db", "unload", "app"],
        vec!["db", "delete", "app"],
        vec!["db", "compact", "app"],
        vec!["db", "members", "app", "--remove", "n2/app"],
    ] {
        let output = as_client(root, "alice", &a1, &args);
        assert_refused(&output, "alice", "admin");
    }
    let promote = as_client(root, "alice", &a2, &["db", "promote", "app", "--force"]);
    assert_refused(&promote, "alice", "admin");
    let switchover = as_client(
        root,
        "alice",
        &a1,
        &["db", "switchover", "app", "--to", &a2],
    );
    assert_refused(&switchover, "alice", "admin");
    // Refused before the gate closed: the primary still takes writes.
    let put = as_client(root, "alice", &a1, &["put", "--db", "app", "after", "x"]);
    assert!(put.status.success(), "{put:?}");
    // Nothing changed: the database is there, with its grants.
    let listed = json(&as_client(root, "ops", &a1, &["db", "list"]));
    assert_eq!(
        listed[0]["settings"]["writers"],
        serde_json::json!(["alice"]),
        "{listed}"
    );

    // The default admin is no admin once --admins names others... here it is listed.
    assert!(
        as_client(root, "client", &a1, &["db", "create", "b"])
            .status
            .success()
    );
}
