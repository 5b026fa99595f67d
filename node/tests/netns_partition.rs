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
/// The etcd namespace's host number: `10.77.0.8`.
const ETCD_HOST: usize = 8;
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
    fn build(tag: &str) -> Net {
        require("ip", "iproute2");
        require("nft", "nftables");
        let net = Net {
            // Tests run in parallel: each has namespaces of its own.
            prefix: format!("rp{}{tag}", std::process::id()),
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
        for (name, host) in members.chain([("client", 9), ("etcd", ETCD_HOST)]) {
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
        self.isolate_also(name, &[]);
    }

    /// Drops every packet between `name` and the other nodes and the `also` hosts.
    fn isolate_also(&self, name: &str, also: &[usize]) {
        let others: Vec<String> = NODES
            .iter()
            .enumerate()
            .filter(|(_, n)| **n != name)
            .map(|(i, _)| i + 1)
            .chain(also.iter().copied())
            .map(|host| format!("10.77.0.{host}"))
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
        for name in NODES.iter().chain(&["client", "etcd", "sw"]) {
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
        Server::start_with(net, root, name, host, &[])
    }

    fn start_with(net: &Net, root: &Path, name: &str, host: usize, extra: &[&str]) -> Server {
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
            .args(extra)
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

/// Every acknowledged key reads back on every node once the last of them is applied there;
/// none of the `dropped` keys (never acknowledged) does.
fn assert_readable_everywhere(
    net: &Net,
    root: &Path,
    acknowledged: &[(String, u64)],
    dropped: &[&str],
) {
    let last = acknowledged
        .iter()
        .map(|(_, tx)| *tx)
        .max()
        .expect("writes");
    for name in NODES {
        let server = address(name);
        for (key, _) in acknowledged {
            let args = ["get", "--db", "app", key, "--min-tx", &last.to_string()];
            let read = json(&until_ok(net, root, "client", &server, &args));
            assert_eq!(read["value"], format!("{key}-value"), "{key} at {server}");
        }
        for key in dropped {
            let args = ["get", "--db", "app", key, "--min-tx", &last.to_string()];
            let read = json(&until_ok(net, root, "client", &server, &args));
            assert!(
                read["value"].is_null(),
                "{key}, never acknowledged, was dropped at {server}: {read}"
            );
        }
    }
}

#[test]
fn a_partitioned_primary_is_replaced_acknowledges_nothing_and_rejoins_losing_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let net = Net::build("m");
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
    let dropped = ["isolated-0", "stale-0", "healed-0"];
    assert_readable_everywhere(&net, root, &acknowledged, &dropped);
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

/// etcd in its own namespace (`10.77.0.8:2379`), stopped on drop.
struct Etcd {
    child: Child,
}

impl Etcd {
    fn start(net: &Net, root: &Path) -> Etcd {
        require("etcd", "etcd-server");
        let client = format!("http://10.77.0.{ETCD_HOST}:2379");
        let log = std::fs::File::create(root.join("etcd.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.ns("etcd"), "etcd", "--name=e"])
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=e=http://127.0.0.1:2380",
                "--heartbeat-interval=50",
                "--election-timeout=500",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Etcd { child }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Automatic failover across a partition: the primary is cut from its replicas and from
/// etcd (the client still reaches it). It acknowledges nothing once cut, fences itself at its
/// lease deadline; the majority side elects a new primary with no operator; healed, the old
/// primary follows it by itself, dropping (into a rollback file) only what it never
/// acknowledged; every acknowledged write is on every node.
#[test]
fn a_primary_cut_from_etcd_and_its_replicas_is_replaced_automatically() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    init_certs(root, "certs", "n1,n2,n3");
    let net = Net::build("a");
    let _etcd = Etcd::start(&net, root);
    let coordinator = format!("etcd=10.77.0.{ETCD_HOST}:2379");
    // Each advertises its name, which its certificate holds (not its IP address).
    let _servers: Vec<Server> = NODES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let advertise = address(name);
            let flags = [
                "--coordinator",
                coordinator.as_str(),
                "--cluster",
                "netns",
                "--advertise",
                advertise.as_str(),
            ];
            Server::start_with(&net, root, name, i + 1, &flags)
        })
        .collect();
    let (a1, a2, a3) = (address("n1"), address("n2"), address("n3"));
    let all = format!("{a2},{a3},{a1}");
    let auto = ["--failover", "auto", "--lease-ttl", "2"];
    let mut create = vec!["db", "create", "app", "--quorum", "acks 1"];
    create.extend(auto);
    until_ok(&net, root, "client", &a1, &create);
    let source = format!("{a1}/app");
    for replica in [&a2, &a3] {
        let mut create = vec!["db", "create", "app", "--replica-of", &source];
        create.extend(auto);
        until_ok(&net, root, "client", replica, &create);
    }
    let old = until_status(&net, root, "client", &a1, |s| {
        s["failover"]["leader"] == "n1" && s["members"].as_array().map(Vec::len) == Some(2)
    });
    let old_epoch = old["epoch"].as_u64().expect("epoch");
    // A write is acknowledged only through voters the leader has published to etcd, so once
    // these are, a candidate can prove it holds them.
    let (mut acknowledged, _) = write_keys(&net, root, &all, "before", 20);
    assert_eq!(acknowledged.len(), 20, "{acknowledged:?}");

    net.isolate_also("n1", &[ETCD_HOST]);
    let (to_isolated, refused) = write_keys(&net, root, &a1, "isolated", 3);
    assert!(
        to_isolated.is_empty() && refused == 3,
        "the isolated primary acknowledges nothing: {to_isolated:?}"
    );
    // The majority side elects one of its own, in a higher epoch, with no operator.
    let majority = format!("{a2},{a3}");
    let (during, _) = write_keys(&net, root, &majority, "elected", 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut during = during;
    while during.is_empty() {
        assert!(Instant::now() < deadline, "no primary on the majority side");
        during = write_keys(&net, root, &majority, "elected", 1).0;
    }
    let (more, _) = write_keys(&net, root, &majority, "elected-more", 20);
    assert_eq!(more.len(), 20, "the new primary takes writes");
    acknowledged.extend(during);
    acknowledged.extend(more);
    let leader = [&a2, &a3]
        .into_iter()
        .map(|a| until_status(&net, root, "client", a, |_| true))
        .find(|s| s["role"] == "primary")
        .expect("a new primary");
    let epoch = leader["epoch"].as_u64().expect("epoch");
    assert!(epoch > old_epoch, "a higher epoch: {leader}");
    // The old primary fenced itself at its lease deadline and says so.
    let fenced = until_status(&net, root, "client", &a1, |s| {
        s["failover"]["self_fencings"].as_u64() >= Some(1)
    });
    assert!(
        fenced["failover"]["lease_remaining_ms"].is_null(),
        "{fenced}"
    );
    assert!(
        fenced["failover"]["coordinator_error"].is_string(),
        "etcd's loss is shown: {fenced}"
    );
    let (stale, _) = write_keys(&net, root, &a1, "stale", 2);
    assert!(
        stale.is_empty(),
        "the fenced primary acknowledges nothing: {stale:?}"
    );

    // Healed: it finds the key held by another and follows it, with no operator.
    net.heal("n1");
    let rejoined = until_status(&net, root, "client", &a1, |s| {
        s["role"] == "replica"
            && s["upstream"] == "streaming"
            && s["epoch"].as_u64() == Some(epoch)
            && s["last_rollback"].is_object()
    });
    let kept = std::fs::read_to_string(rejoined["last_rollback"]["file"].as_str().expect("file"))
        .expect("the rollback file");
    let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02x}")).collect() };
    assert!(
        kept.contains(&hex("isolated-0")),
        "what it dropped, never acknowledged, is in the rollback file"
    );
    let (after, _) = write_keys(&net, root, &all, "rejoined", 10);
    assert_eq!(after.len(), 10, "writes go on through any server");
    acknowledged.extend(after);

    assert_readable_everywhere(&net, root, &acknowledged, &["isolated-0", "stale-0"]);
}
