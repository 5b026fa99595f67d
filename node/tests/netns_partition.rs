//! A network partition with real processes in network namespaces: three `repnode serve`
//! processes, each in a namespace of its own, and the client in a fourth, joined by a bridge
//! in a fifth (nothing is added to the host's network). nftables in the primary's namespace
//! cuts it off from its replicas under load; the plan's candidate is promoted from the
//! majority side and the other replica repointed; the isolated old primary, still reachable by
//! the client, acknowledges nothing; after the heal it rejoins as a replica, dropping only the
//! writes it never acknowledged; every acknowledged write is on every node.
//!
//! Needs root, `ip` (Debian's `iproute2`) and `nft` (Debian's `nftables`); `ci/test.sh`
//! installs both. Without them the test fails naming the package, it never skips. Names
//! resolve through `/etc/netns/NAME/hosts`, so the certificates' names (`n1`, `n2`, `n3`)
//! match the addresses dialled.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{init_certs, json};

const PORT: u16 = 7000;
const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// Runs a setup command; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fails, naming the Debian package, if a tool the test needs is missing.
fn require(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "`{program}` is missing: install Debian's `{package}` (ci/test.sh does)"
    );
}

/// The namespaces of one run, removed on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A switch namespace holding a bridge, and one namespace per node plus the client's,
    /// each linked to the bridge by a veth pair; `n{i}` is `10.77.0.{i}`, the client `.9`.
    fn build() -> Net {
        require("ip", "iproute2");
        require("nft", "nftables");
        let net = Net {
            prefix: format!("rp{}", std::process::id()),
        };
        let switch = net.ns("sw");
        run("ip", &["netns", "add", &switch]);
        run(
            "ip",
            &["-n", &switch, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &switch, "link", "set", "br0", "up"]);
        let hosts: String = NODES
            .iter()
            .enumerate()
            .map(|(i, name)| format!("10.77.0.{} {name}\n", i + 1))
            .collect::<String>()
            + "127.0.0.1 localhost\n";
        let members = NODES.iter().enumerate().map(|(i, n)| (*n, i + 1));
        for (name, host) in members.chain([("client", 9)]) {
            let ns = net.ns(name);
            let port = format!("p{host}");
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            );
            run(
                "ip",
                &["-n", &switch, "link", "set", &port, "master", "br0", "up"],
            );
            let address = format!("10.77.0.{host}/24");
            run("ip", &["-n", &ns, "addr", "add", &address, "dev", "eth0"]);
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc).expect("/etc/netns");
            std::fs::write(etc.join("hosts"), &hosts).expect("hosts");
        }
        net
    }

    /// Drops every packet between `name` and the other nodes (not the client).
    fn isolate(&self, name: &str) {
        let others: Vec<String> = NODES
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != name)
            .map(|(i, _)| format!("10.77.0.{}", i + 1))
            .collect();
        let set = format!("{{ {} }}", others.join(", "));
        let ruleset = format!(
            "table inet partition {{\n chain input {{ type filter hook input priority 0; ip saddr {set} drop; }}\n chain output {{ type filter hook output priority 0; ip daddr {set} drop; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-cut.nft", self.prefix));
        std::fs::write(&file, ruleset).expect("ruleset");
        let file = file.to_string_lossy().into_owned();
        run("ip", &["netns", "exec", &self.ns(name), "nft", "-f", &file]);
    }

    fn heal(&self, name: &str) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(name),
                "nft",
                "delete",
                "table",
                "inet",
                "partition",
            ],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for name in NODES.iter().chain(&["client", "sw"]) {
            let ns = self.ns(name);
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns));
        }
    }
}

/// A server running in its namespace.
struct Server {
    child: Child,
}

impl Server {
    fn start(net: &Net, root: &Path, name: &str, host: usize) -> Server {
        let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns(name)])
            .arg(env!("CARGO_BIN_EXE_repnode"))
            .args(["serve", "--name", name, "--listen"])
            .arg(format!("10.77.0.{host}:{PORT}"))
            .arg("--dir")
            .arg(root.join(name))
            .arg("--tls-dir")
            .arg(root.join("certs"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start repnode serve");
        Server { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address(name: &str) -> String {
    format!("{name}:{PORT}")
}

/// The CLI, run in namespace `from` against `servers`.
fn cli(net: &Net, root: &Path, from: &str, servers: &str, args: &[&str]) -> Output {
    let mut args = args.to_vec();
    args.extend(["--server", servers]);
    repnode_in(net, root, from, &args)
}

/// The CLI with `args` as given (and `--json`), run in namespace `from`.
fn repnode_in(net: &Net, root: &Path, from: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &net.ns(from)])
        .arg(env!("CARGO_BIN_EXE_repnode"))
        .args(args)
        .args(["--json", "--tls-dir"])
        .arg(root.join("certs"))
        .output()
        .expect("run repnode")
}

/// Retries the CLI until it succeeds, with a deadline.
fn until_ok(net: &Net, root: &Path, from: &str, servers: &str, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = cli(net, root, from, servers, args);
        if output.status.success() {
            return output;
        }
        assert!(
            Instant::now() < deadline,
            "repnode {args:?} kept failing: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the status of `app` at `server` until `ready` holds.
fn until_status(
    net: &Net,
    root: &Path,
    from: &str,
    server: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = cli(net, root, from, server, &["status", "--db", "app"]);
        if output.status.success() {
            let status = json(&output);
            if ready(&status) {
                return status;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the status of app at {server} never became ready: {output:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `count` keys named `{prefix}-{i}` through `servers` from the client's namespace;
/// returns the acknowledged ones with their transaction, and how many were not acknowledged.
fn write_keys(
    net: &Net,
    root: &Path,
    servers: &str,
    prefix: &str,
    count: usize,
) -> (Vec<(String, u64)>, usize) {
    let (mut acknowledged, mut not) = (Vec::new(), 0);
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        let value = format!("{key}-value");
        let args = ["put", "--db", "app", &key, &value, "--timeout", "2"];
        let output = cli(net, root, "client", servers, &args);
        if output.status.success() {
            let tx = json(&output)["tx_id"].as_u64().expect("tx_id");
            acknowledged.push((key, tx));
        } else {
            not += 1;
        }
    }
    (acknowledged, not)
}

#[test]
fn a_partitioned_primary_is_replaced_acknowledges_nothing_and_rejoins_losing_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let net = Net::build();
    let _servers: Vec<Server> = NODES
        .iter()
        .enumerate()
        .map(|(i, name)| Server::start(&net, root, name, i + 1))
        .collect();
    let (a1, a2, a3) = (address("n1"), address("n2"), address("n3"));
    let all = format!("{a2},{a3},{a1}");
    until_ok(
        &net,
        root,
        "client",
        &a1,
        &["db", "create", "app", "--quorum", "any 1 (n2,n3)"],
    );
    let source = format!("{a1}/app");
    for replica in [&a2, &a3] {
        let args = ["db", "create", "app", "--replica-of", &source];
        until_ok(&net, root, "client", replica, &args);
    }
    let old = until_status(&net, root, "client", &a1, |s| {
        s["members"].as_array().map(Vec::len) == Some(2)
    });
    let old_epoch = old["epoch"].as_u64().expect("epoch");

    // Writes through every server (the replicas name the primary, the client follows).
    let (mut acknowledged, _) = write_keys(&net, root, &all, "before", 20);
    assert_eq!(
        acknowledged.len(),
        20,
        "every write before the partition is acknowledged"
    );

    // The primary is cut off from its replicas; the client still reaches it.
    net.isolate("n1");
    let (to_isolated, refused) = write_keys(&net, root, &a1, "isolated", 3);
    assert!(
        to_isolated.is_empty() && refused == 3,
        "the isolated primary cannot reach its quorum and acknowledges nothing: {to_isolated:?}"
    );

    // On the majority side: the plan, then the promotion and the repoint.
    let majority = format!("{a1},{a2},{a3}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let plan = loop {
        let output = repnode_in(
            &net,
            root,
            "n2",
            &[
                "failover",
                "plan",
                "--db",
                "app",
                "--servers",
                &majority,
                "--quorum",
                "any 1 (n2,n3)",
                "--timeout",
                "2",
            ],
        );
        if output.status.code() == Some(0) {
            let plan = json(&output);
            if plan["recommended"].is_string() {
                break plan;
            }
        }
        assert!(Instant::now() < deadline, "no plan recommends: {output:?}");
    };
    assert!(
        plan["members"]
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["server"] == a1.as_str() && m["reachable"] == false),
        "the plan shows the primary unreachable from the majority side: {plan}"
    );
    let new = plan["recommended"]
        .as_str()
        .expect("recommended")
        .to_string();
    let (new_name, other) = if new == a2 {
        ("n2", a3.clone())
    } else {
        ("n3", a2.clone())
    };
    let other_name = if new_name == "n2" { "n3" } else { "n2" };
    until_status(&net, root, new_name, &new, |s| s["upstream"] != "streaming");
    let policy = format!("any 1 (n1,{other_name})");
    let promoted = json(&until_ok(
        &net,
        root,
        new_name,
        &format!("{new},{other}"),
        &["db", "promote", "app", "--quorum", &policy],
    ));
    let epoch = promoted["epoch"].as_u64().expect("epoch");
    assert!(epoch > old_epoch, "a new epoch: {promoted}");
    let new_source = format!("{new}/app");
    until_ok(
        &net,
        root,
        other_name,
        &other,
        &["db", "update", "app", "--replica-of", &new_source],
    );
    until_status(&net, root, "client", &other, |s| {
        s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    let (during, _) = write_keys(&net, root, &format!("{new},{other}"), "promoted", 20);
    assert_eq!(
        during.len(),
        20,
        "the new primary takes writes with its quorum"
    );
    acknowledged.extend(during);
    let (to_isolated, _) = write_keys(&net, root, &a1, "stale", 2);
    assert!(
        to_isolated.is_empty(),
        "the old primary acknowledges nothing after the promotion: {to_isolated:?}"
    );

    // Healed, the old primary still acknowledges nothing: its replicas follow the new one.
    net.heal("n1");
    let (to_old, _) = write_keys(&net, root, &a1, "healed", 2);
    assert!(to_old.is_empty(), "after the heal: {to_old:?}");
    // It rejoins as a replica, dropping the writes it took and never acknowledged.
    until_ok(
        &net,
        root,
        "client",
        &a1,
        &[
            "db",
            "update",
            "app",
            "--replica-of",
            &new_source,
            "--allow-tx-discarding",
        ],
    );
    until_status(&net, root, "client", &a1, |s| {
        s["role"] == "replica" && s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    // What it dropped was kept first, in a rollback file its status names.
    let rejoined = until_status(&net, root, "client", &a1, |s| {
        s["last_rollback"].is_object()
    });
    let rollback = &rejoined["last_rollback"];
    let (from, to) = (
        rollback["from_tx_id"].as_u64().expect("from"),
        rollback["to_tx_id"].as_u64().expect("to"),
    );
    let kept = std::fs::read_to_string(rollback["file"].as_str().expect("file")).expect("read");
    let kept: Vec<serde_json::Value> = kept
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(kept.len() as u64, to - from + 1, "{rollback}");
    let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02x}")).collect() };
    for key in ["isolated-0", "stale-0", "healed-0"] {
        assert!(
            kept.iter().any(|tx| tx["payload_hex"]
                .as_str()
                .is_some_and(|p| p.contains(&hex(key)))),
            "{key}, dropped, is in the rollback file"
        );
    }
    let (after, _) = write_keys(&net, root, &all, "rejoined", 10);
    assert_eq!(after.len(), 10, "writes go on through any server");
    acknowledged.extend(after);

    // Every acknowledged write is readable on every node; no unacknowledged one is.
    let last = acknowledged
        .iter()
        .map(|(_, tx)| *tx)
        .max()
        .expect("writes");
    for server in [&a1, &a2, &a3] {
        for (key, _) in &acknowledged {
            let args = ["get", "--db", "app", key, "--min-tx", &last.to_string()];
            let read = json(&until_ok(&net, root, "client", server, &args));
            assert_eq!(read["value"], format!("{key}-value"), "{key} at {server}");
        }
        for key in ["isolated-0", "stale-0", "healed-0"] {
            let args = ["get", "--db", "app", key, "--min-tx", &last.to_string()];
            let read = json(&until_ok(&net, root, "client", server, &args));
            assert!(
                read["value"].is_null(),
                "{key}, never acknowledged, was dropped at {server}: {read}"
            );
        }
    }
    let statuses: Vec<serde_json::Value> = [&a1, &a2, &a3]
        .iter()
        .map(|server| {
            until_status(&net, root, "client", server, |s| {
                s["committed"]["tx_id"].as_u64() >= Some(last)
            })
        })
        .collect();
    let committed: Vec<&serde_json::Value> = statuses.iter().map(|s| &s["committed"]).collect();
    assert!(
        committed.windows(2).all(|w| w[0] == w[1]),
        "every node holds the same history: {committed:?}"
    );
}
