//! What an operator sees of failures, as processes: a replica's link failures by cause in
//! `status`, the log and the metrics (parsed by a real OpenMetrics parser), `/healthz` and
//! `/readyz`, settings refused or warned about, the data directory's lock, and `bench`'s
//! accounting of failed writes.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, cli, free_port, init_certs, json, until_ok, until_status};

/// A free TCP port on loopback, as `HOST:PORT`.
fn free_tcp() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("127.0.0.1:{}", listener.local_addr().expect("addr").port())
}

/// `GET path` on `address`: the status code and the body.
fn http_get(address: &str, path: &str) -> (u16, String) {
    for _ in 0..100 {
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).expect("send");
            let mut response = String::new();
            stream.read_to_string(&mut response).expect("read");
            let code = response
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or_else(|| panic!("no status line in {response:?}"));
            let body = response
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_string())
                .unwrap_or_default();
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {address}");
}

/// Parses an OpenMetrics exposition with Python's `prometheus_client` (Debian's
/// `python3-prometheus-client`, which ci/deps.sh installs): every sample as
/// `[name, labels, value]`, with each family's type, so that a format error fails here.
fn parse_openmetrics(text: &str) -> Vec<(String, String, serde_json::Value, f64)> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        out.append([family.name, family.type, sample.name, sample.labels, sample.value])
print(json.dumps(out))
"#;
    // Debian's interpreter, where apt installs the package (not whatever `python3` is first
    // on the PATH).
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs: install Debian's python3-prometheus-client (ci/deps.sh does)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("python3");
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the exposition (or python3-prometheus-client is \
         missing: install it, as ci/deps.sh does): {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("json");
    samples
        .into_iter()
        .map(|s| {
            (
                s[2].as_str().unwrap_or_default().to_string(),
                s[1].as_str().unwrap_or_default().to_string(),
                s[3].clone(),
                s[4].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect()
}

/// The value of sample `name` whose labels include `labels`.
fn sample(
    samples: &[(String, String, serde_json::Value, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, _, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, _, value)| *value)
}

/// Waits until `check` holds of the scraped samples.
fn until_metrics(
    metrics: &str,
    what: &str,
    check: impl Fn(&[(String, String, serde_json::Value, f64)]) -> bool,
) -> Vec<(String, String, serde_json::Value, f64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(metrics, "/metrics");
        assert_eq!(code, 200, "{body}");
        let samples = parse_openmetrics(&body);
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "never: {what}\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `name` with its log (text, at the default level) written to `root/NAME.log`.
fn start_logged(name: &str, root: &Path, extra: &[&str]) -> Server {
    let log = root.join(format!("{name}.log"));
    Server::start_logged(name, free_port(), root, extra, &log)
}

fn status(root: &Path, server: &str, db: &str) -> serde_json::Value {
    json(&cli(root, server, &["status", "--db", db]))
}

#[test]
fn a_replicas_link_failures_show_their_cause_in_status_log_metrics_and_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    let metrics = free_tcp();
    let n2 = start_logged("n2", root, &["--metrics-listen", &metrics]);
    let a2 = n2.address();

    // Nothing listens at the source's port; the source lacks the database.
    let nowhere = format!("127.0.0.1:{}/app", free_port());
    until_ok(
        root,
        &a2,
        &["db", "create", "cut", "--replica-of", &nowhere],
    );
    let missing = format!("{a1}/nope");
    until_ok(
        root,
        &a2,
        &["db", "create", "missing", "--replica-of", &missing],
    );
    until_status(root, &a2, "cut", |s| {
        s["link_error"]["cause"] == "unreachable" && s["link_error"]["attempts"].as_u64() >= Some(3)
    });
    let cut = status(root, &a2, "cut");
    assert_eq!(cut["source"]["address"], nowhere.as_str());
    assert_eq!(cut["source"]["streaming"], false);
    assert!(
        cut["link_error"]["last_attempt_at"]
            .as_str()
            .is_some_and(|at| at.starts_with("20") && at.ends_with('Z')),
        "an RFC 3339 time: {cut}"
    );
    assert!(
        cut["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{cut}"
    );
    until_status(root, &a2, "missing", |s| {
        s["link_error"]["cause"] == "unknown_database"
    });
    let message = status(root, &a2, "missing")["link_error"]["message"].clone();
    assert!(
        message
            .as_str()
            .is_some_and(|m| m.contains("nope") && m.contains("create it there")),
        "the fix is named: {message}"
    );

    // The text form says the same.
    let text = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["status", "--db", "cut", "--server", &a2, "--tls-dir"])
        .arg(root.join("certs"))
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("last error (unreachable)") && text.contains("failed attempt(s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("source: {nowhere} (not streaming)")),
        "{text}"
    );

    // Metrics, parsed by a real OpenMetrics parser: errors by cause, the link down.
    let samples = until_metrics(&metrics, "three unreachable errors counted", |s| {
        sample(
            s,
            "repnode_source_errors_total",
            &[("database", "cut"), ("cause", "unreachable")],
        )
        .is_some_and(|n| n >= 3.0)
    });
    assert_eq!(
        sample(&samples, "repnode_source_streaming", &[("database", "cut")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &samples,
            "repnode_source_errors_total",
            &[("database", "missing"), ("cause", "unknown_database")]
        )
        .map(|n| n >= 1.0),
        Some(true)
    );
    assert_eq!(
        sample(
            &samples,
            "repnode_source_errors_total",
            &[("database", "cut"), ("cause", "certificate")]
        ),
        Some(0.0),
        "every cause is listed"
    );
    assert_eq!(
        sample(
            &samples,
            "repnode_role",
            &[("database", "cut"), ("role", "replica")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "repnode_ready", &[("database", "cut")]),
        Some(0.0)
    );
    assert!(
        sample(&samples, "repnode_build_info", &[]).is_some(),
        "build info"
    );
    assert!(sample(&samples, "process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
    assert!(sample(&samples, "process_open_fds", &[]).is_some_and(|n| n > 3.0));

    // Health: up; not ready, naming the databases that are not.
    assert_eq!(http_get(&metrics, "/healthz").0, 200);
    assert_eq!(http_get(&metrics, "/nope").0, 404);
    let (code, body) = http_get(&metrics, "/readyz");
    assert_eq!(code, 503, "{body}");
    let readyz: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(readyz["databases"]["cut"]["ready"], false, "{readyz}");
    assert!(
        readyz["databases"]["cut"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("unreachable"))
    );

    // A replica that streams: connected, caught up, ready; the others removed, all ready.
    let source = format!("{a1}/app");
    until_ok(root, &a1, &["put", "--db", "app", "k", "v"]);
    until_ok(
        root,
        &a2,
        &["db", "create", "good", "--replica-of", &source],
    );
    until_status(root, &a2, "good", |s| {
        s["source"]["streaming"] == true && s["committed"]["tx_id"] == 1
    });
    let samples = until_metrics(&metrics, "good streams", |s| {
        sample(s, "repnode_source_streaming", &[("database", "good")]) == Some(1.0)
    });
    assert_eq!(
        sample(
            &samples,
            "repnode_source_committed_tx",
            &[("database", "good")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "repnode_source_lag_transactions",
            &[("database", "good")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&samples, "repnode_ready", &[("database", "good")]),
        Some(1.0)
    );
    for db in ["cut", "missing"] {
        until_ok(root, &a2, &["db", "unload", db]);
    }
    assert_eq!(http_get(&metrics, "/readyz").0, 200);

    // The log named each problem once, with its database, not at every retry.
    drop(n2);
    let log = std::fs::read_to_string(root.join("n2.log")).expect("log");
    let failing = |db: &str| {
        log.lines()
            .filter(|l| {
                l.contains("replication from the source failing") && l.contains(&format!("db={db}"))
            })
            .count()
    };
    assert_eq!(failing("cut"), 1, "once per cause:\n{log}");
    assert_eq!(failing("missing"), 1, "once per cause:\n{log}");
    assert!(
        log.contains("repnode serving") && log.contains(&format!("http://{metrics}/metrics")),
        "startup line:\n{log}"
    );
    drop(n1);
}

#[test]
fn a_replica_of_a_source_with_another_ca_shows_a_certificate_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let foreign = root.join("foreign");
    init_certs(root, "certs", "n1");
    init_certs(&foreign, "certs", "n2");
    let n1 = Server::start("n1", free_port(), root);
    let n2 = Server::start("n2", free_port(), &foreign);
    until_ok(root, &n1.address(), &["db", "create", "app"]);
    let source = format!("{}/app", n1.address());
    until_ok(
        &foreign,
        &n2.address(),
        &["db", "create", "app", "--replica-of", &source],
    );
    until_status(&foreign, &n2.address(), "app", |s| {
        s["link_error"]["cause"] == "certificate"
    });
}

#[test]
fn settings_that_cannot_work_are_refused_or_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let n1 = Server::start_with("n1", free_port(), root, &["--write-timeout", "1"]);
    let a1 = n1.address();
    let refused = |args: &[&str], why: &str| {
        let output = cli(root, &a1, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(why),
            "{args:?}: {output:?}"
        );
    };
    until_ok(root, &a1, &["db", "create", "app"]);
    refused(
        &[
            "db",
            "create",
            "b",
            "--sync-acks",
            "1",
            "--quorum",
            "majority",
        ],
        "cannot be used with",
    );
    refused(
        &["db", "update", "app", "--store", "mem"],
        "unexpected argument '--store'",
    );
    refused(
        &["db", "create", "c", "--replica-of", "127.0.0.1:99999/app"],
        "the port must be",
    );
    refused(
        &[
            "db",
            "create",
            "c",
            "--replica-of",
            "http://127.0.0.1:7440/app",
        ],
        "no scheme",
    );
    refused(
        &["db", "create", "c", "--replica-of", "127.0.0.1:7440"],
        "no database",
    );

    // A policy the connected replicas cannot meet: warned of at once, in status, and named
    // when a write times out (after --write-timeout, not never).
    let created = json(&cli(
        root,
        &a1,
        &["db", "create", "acks3", "--sync-acks", "3"],
    ));
    let warning = created["warnings"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        warning.contains("acks 3") && warning.contains("cannot be met by the 0 replica(s)"),
        "{created}"
    );
    assert_eq!(status(root, &a1, "acks3")["warnings"][0], warning.as_str());
    let started = Instant::now();
    let put = cli(root, &a1, &["put", "--db", "acks3", "k", "v"]);
    assert_eq!(put.status.code(), Some(3), "outcome unknown: {put:?}");
    assert!(
        String::from_utf8_lossy(&put.stdout).contains("cannot be met"),
        "{put:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the write timeout bounds the wait"
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let first = Server::start("n1", free_port(), root);
    until_ok(root, &first.address(), &["db", "list"]);
    let second = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args([
            "serve",
            "--name",
            "n1",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .arg("--dir")
        .arg(root.join("n1"))
        .arg("--tls-dir")
        .arg(root.join("certs"))
        .output()
        .expect("second server");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("is in use by another repnode process")
            && stderr.contains(&format!("pid {}", first.child.id())),
        "{stderr}"
    );
}

#[test]
fn deleting_a_source_warns_of_its_replicas_which_name_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,n2");
    let n1 = Server::start("n1", free_port(), root);
    let n2 = Server::start("n2", free_port(), root);
    let (a1, a2) = (n1.address(), n2.address());
    until_ok(root, &a1, &["db", "create", "app"]);
    let source = format!("{a1}/app");
    until_ok(root, &a2, &["db", "create", "app", "--replica-of", &source]);
    until_status(root, &a1, "app", |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["connected"] == true))
    });
    let unloaded = json(&cli(root, &a1, &["db", "unload", "app"]));
    assert!(
        unloaded["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("n2/app")),
        "{unloaded}"
    );
    let deleted = json(&cli(root, &a1, &["db", "delete", "app"]));
    let warning = deleted["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("n2/app") && warning.contains("--replica-of"),
        "{deleted}"
    );
    until_status(root, &a2, "app", |s| {
        s["link_error"]["cause"] == "unknown_database"
    });
}

#[test]
fn bench_counts_failed_writes_keeps_its_statistics_and_refuses_empty_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let n1 = Server::start("n1", free_port(), root);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    for (args, why) in [
        (["--clients", "0", "--count", "5"], "--clients 0"),
        (["--clients", "1", "--count", "0"], "--count 0"),
    ] {
        let mut all = vec!["bench", "--db", "app"];
        all.extend(args);
        let output = cli(root, &a1, &all);
        assert!(!output.status.success(), "{output:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(why),
            "{output:?}"
        );
    }
    let ok = json(&cli(
        root,
        &a1,
        &["bench", "--db", "app", "--clients", "2", "--count", "20"],
    ));
    assert_eq!(
        (
            ok["writes"].as_u64(),
            ok["errors"].as_object().map(|e| e.len())
        ),
        (Some(20), Some(0)),
        "{ok}"
    );
    // Every write refused: counted, the run reported, exit 1.
    let failed = cli(
        root,
        &a1,
        &["bench", "--db", "nope", "--clients", "2", "--count", "20"],
    );
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    let report = json(&failed);
    assert_eq!(report["writes"], 0);
    assert_eq!(
        report["errors"]["refused"], 2,
        "one per client, which then stops: {report}"
    );
    assert_eq!(report["clients_stopped"], 2);
    assert!(
        report["first_errors"]["refused"]
            .as_str()
            .is_some_and(|e| e.contains("unknown database"))
    );
}
