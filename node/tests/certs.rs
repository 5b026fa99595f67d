//! `repnode certs` as an operator uses it: certificates naming real addresses, a kept CA that
//! issues one more node's certificate, refusals to overwrite or to take names that escape the
//! directory, and an existing PKI given file by file.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::{Server, free_port, json, until_ok, until_status};

fn repnode(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run repnode")
}

#[test]
fn certs_init_refuses_to_overwrite_names_addresses_and_adds_nodes_from_the_kept_ca() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let certs = root.join("certs");
    let init = repnode(
        &[
            "certs",
            "init",
            "--nodes",
            "n1=127.0.0.1,n1=n1.example.org,n2",
            "--json",
        ],
        &certs,
    );
    assert!(init.status.success(), "{init:?}");
    let written = json(&init)["written"].clone();
    assert!(
        written
            .as_array()
            .is_some_and(|w| w.iter().any(|f| f == "ca/ca.key")),
        "{written}"
    );
    for key in ["n1.key", "n2.key", "client.key", "ca/ca.key"] {
        let mode = std::fs::metadata(certs.join(key))
            .expect(key)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key} is readable by its owner only");
    }

    // Run again: refused, the CA kept; with --force: replaced.
    let ca_before = std::fs::read(certs.join("ca.pem")).expect("ca");
    let again = repnode(&["certs", "init", "--nodes", "n1"], &certs);
    assert!(!again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a CA"),
        "{again:?}"
    );
    assert_eq!(std::fs::read(certs.join("ca.pem")).expect("ca"), ca_before);

    for bad in ["../evil", "client"] {
        let refused = repnode(&["certs", "add-node", bad], &certs);
        assert!(!refused.status.success(), "{bad}: {refused:?}");
        assert!(!root.join("evil.pem").exists());
    }
    let client_before = std::fs::read(certs.join("client.pem")).expect("client");
    let n1_again = repnode(&["certs", "add-node", "n1"], &certs);
    assert!(
        !n1_again.status.success(),
        "an existing node is not replaced: {n1_again:?}"
    );
    assert_eq!(
        std::fs::read(certs.join("client.pem")).expect("client"),
        client_before
    );

    // A node added later from the kept CA joins the cluster.
    let added = repnode(
        &["certs", "add-node", "n3", "--address", "127.0.0.1"],
        &certs,
    );
    assert!(added.status.success(), "{added:?}");
    let n1 = Server::start("n1", free_port(), root);
    let n3 = Server::start("n3", free_port(), root);
    until_ok(root, &n1.address(), &["db", "create", "app"]);
    let put = until_ok(root, &n1.address(), &["put", "--db", "app", "k", "v"]);
    assert_eq!(json(&put)["tx_id"], 1);
    let source = format!("{}/app", n1.address());
    until_ok(
        root,
        &n3.address(),
        &["db", "create", "app", "--replica-of", &source],
    );
    until_status(root, &n3.address(), "app", |s| s["committed"]["tx_id"] == 1);
}

#[test]
fn an_existing_pki_is_given_file_by_file_to_servers_and_clients() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    // Files of "another" PKI, under names of its own and outside any --tls-dir.
    let pki = root.join("pki");
    let init = repnode(&["certs", "init", "--nodes", "n1"], &pki);
    assert!(init.status.success(), "{init:?}");
    let file = |name: &str| pki.join(name).display().to_string();
    let port = free_port();
    let pki_files = [
        "--ca-cert",
        &file("ca.pem"),
        "--cert",
        &file("n1.pem"),
        "--key",
        &file("n1.key"),
    ];
    // With --tls-dir (root/certs, which does not exist) given too: the files win.
    let _server = Server::start_with("n1", port, root, &pki_files);
    let client = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_repnode"))
            .args(args)
            .args([
                "--server",
                &format!("127.0.0.1:{port}"),
                "--json",
                "--tls-dir",
                "/nonexistent",
            ])
            .env("REPNODE_CA_CERT", file("ca.pem"))
            .env("REPNODE_CERT", file("client.pem"))
            .env("REPNODE_KEY", file("client.key"))
            .output()
            .expect("client")
    };
    let mut created = client(&["db", "create", "app"]);
    for _ in 0..100 {
        if created.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        created = client(&["db", "create", "app"]);
    }
    assert!(created.status.success(), "{created:?}");
    let put = client(&["put", "--db", "app", "k", "v"]);
    assert_eq!(json(&put)["tx_id"], 1, "{put:?}");
}
