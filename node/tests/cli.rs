//! The command line as scripts use it: exit codes and JSON errors, the version, completions
//! and the manual page, `db list`'s columns, and JSON logs.

mod common;

use std::process::Command;

use common::{Server, cli, free_port, init_certs, json, until_ok};

#[test]
fn each_kind_of_failure_exits_with_its_code_and_a_json_error() {
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
    let nobody = format!("127.0.0.1:{}", free_port());
    for (server, args, code, kind) in [
        (&a1, vec!["status", "--db", "nope"], 6, "not_found"),
        (
            &a1,
            vec!["db", "create", "b", "--quorum", "most of them"],
            7,
            "invalid_settings",
        ),
        (&a2, vec!["put", "--db", "app", "k", "v"], 4, "refused"),
        (
            &nobody,
            vec!["status", "--db", "app", "--timeout", "1"],
            5,
            "unreachable",
        ),
        (
            &a1,
            vec!["bench", "--db", "app", "--clients", "0", "--count", "1"],
            2,
            "usage",
        ),
    ] {
        let output = cli(root, server, &args);
        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        let error = json(&output);
        assert_eq!(error["kind"], kind, "{args:?}: {error}");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{error}"
        );
    }
    // clap's own usage errors exit 2 as well.
    let usage = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["put", "--no-such-flag"])
        .output()
        .expect("run");
    assert_eq!(usage.status.code(), Some(2), "{usage:?}");
}

#[test]
fn the_version_names_the_commit_and_completions_and_the_manual_are_printed() {
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
            .args(args)
            .output()
            .expect("run");
        assert!(output.status.success(), "{args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let version = run(&["--version"]);
    assert!(
        version.starts_with(&format!("repnode {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let bash = run(&["completions", "bash"]);
    assert!(
        bash.contains("_repnode()") && bash.contains("switchover"),
        "bash completions"
    );
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH repnode"),
        "roff: {}",
        &man[..80.min(man.len())]
    );
    let help = run(&["--help"]);
    assert!(
        help.contains("Exit codes: 0 done") && help.contains("REPNODE_SERVER"),
        "{help}"
    );
}

#[test]
fn db_list_prints_columns_and_json_names_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app", "--sync-acks", "1"]);
    until_ok(
        root,
        &a1,
        &["db", "create", "copy", "--replica-of", "127.0.0.1:9/app"],
    );
    let text = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["db", "list", "--server", &a1, "--tls-dir"])
        .arg(root.join("certs"))
        .output()
        .expect("list");
    let text = String::from_utf8_lossy(&text.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("DATABASE") && lines[0].contains("POLICY"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("app ") && l.contains("primary") && l.contains("acks 1")),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("copy") && l.contains("replica of 127.0.0.1:9/app")),
        "{text}"
    );
    assert!(!text.contains('='), "no TOML: {text}");
    let listed = json(&cli(root, &a1, &["db", "list"]));
    assert_eq!(listed[0]["database"], "app", "{listed}");
}

#[test]
fn json_logs_carry_the_database_on_every_line_about_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let log = root.join("n1.log");
    let json_logs = ["--log-format", "json"];
    // Killed when dropped, even when an assertion fails.
    let server = Server::start_logged("n1", free_port(), root, &json_logs, &log);
    let address = server.address();
    until_ok(
        root,
        &address,
        &["db", "create", "lost", "--replica-of", "127.0.0.1:9/app"],
    );
    common::until_status(root, &address, "lost", |s| {
        s["link_error"]["cause"] == "unreachable"
    });
    drop(server);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let startup = lines
        .iter()
        .find(|l| l["fields"]["message"] == "repnode serving")
        .expect("a startup line");
    assert_eq!(startup["fields"]["quic"], address.as_str(), "{startup}");
    assert!(startup["timestamp"].as_str().is_some(), "{startup}");
    let failing = lines
        .iter()
        .find(|l| l["fields"]["message"] == "replication from the source failing; retrying")
        .expect("the link failure is logged");
    assert_eq!(failing["span"]["db"], "lost", "{failing}");
    assert_eq!(failing["fields"]["cause"], "unreachable", "{failing}");
    assert_eq!(failing["fields"]["source"], "127.0.0.1:9", "{failing}");
}
