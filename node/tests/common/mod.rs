//! Helpers shared by the process tests: real `repnode serve` processes on loopback, the real
//! CLI, and waits on conditions with a deadline.
// Each test crate uses its own subset of these.
#![allow(dead_code)]

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use coordinator_etcd::{EtcdCoordinator, EtcdOptions, EtcdTls};
use replication_core::coordinator::Coordinator;

pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(name: &str, port: u16, root: &Path) -> Server {
        Server::start_with(name, port, root, &[])
    }

    pub fn start_with(name: &str, port: u16, root: &Path, extra: &[&str]) -> Server {
        Server::spawn(name, port, root, extra, None)
    }

    /// Starts `name` with its log (at the default level, `RUST_LOG` ignored) written to
    /// `log`.
    pub fn start_logged(name: &str, port: u16, root: &Path, extra: &[&str], log: &Path) -> Server {
        Server::spawn(name, port, root, extra, Some(log))
    }

    fn spawn(name: &str, port: u16, root: &Path, extra: &[&str], log: Option<&Path>) -> Server {
        let dir: PathBuf = root.join(name);
        let mut command = Command::new(env!("CARGO_BIN_EXE_repnode"));
        command
            .args([
                "serve",
                "--name",
                name,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("--dir")
            .arg(&dir)
            .arg("--tls-dir")
            .arg(root.join("certs"))
            .args(extra)
            .stdout(Stdio::null());
        match log {
            Some(log) => {
                let file = std::fs::File::create(log).expect("log file");
                command.env_remove("RUST_LOG").stderr(file);
            }
            // REPNODE_TEST_SERVER_LOGS=1 shows the servers' logs (with RUST_LOG) when a test
            // needs explaining.
            None if std::env::var_os("REPNODE_TEST_SERVER_LOGS").is_some() => {
                command.stderr(Stdio::inherit());
            }
            None => {
                command.stderr(Stdio::null());
            }
        }
        let child = command.spawn().expect("start repnode serve");
        Server { child, port }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for a server's QUIC socket, chosen below Linux's ephemeral range (32768 and
/// up): every CLI process binds an ephemeral UDP port of its own, and one of those taking a
/// server's port between this choice and the server's start made the server exit at once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()) << 20;
    loop {
        let mut x = seed.wrapping_add(NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let port = 20_000 + (x % 12_000) as u16;
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn cli(root: &Path, server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(args)
        .args(["--server", server, "--json"])
        .arg("--tls-dir")
        .arg(root.join("certs"))
        .output()
        .expect("run repnode")
}

pub fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Polls a database's status until `ready` holds, with a deadline.
pub fn until_status(
    root: &Path,
    server: &str,
    db: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) {
    let mut last = String::new();
    for _ in 0..200 {
        let output = cli(root, server, &["status", "--db", db]);
        if output.status.success() && ready(&json(&output)) {
            return;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the status of {db} at {server} never became ready; last: {last}");
}

/// Retries a CLI call until it succeeds (a server that is still starting).
pub fn until_ok(root: &Path, server: &str, args: &[&str]) -> Output {
    for _ in 0..100 {
        let output = cli(root, server, args);
        if output.status.success() {
            return output;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("repnode {args:?} kept failing");
}

/// Writes a development PKI for `nodes` (comma-separated) into `root/dir`.
pub fn init_certs(root: &Path, dir: &str, nodes: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["certs", "init", "--nodes", nodes, "--dir"])
        .arg(root.join(dir))
        .output()
        .expect("certs");
    assert!(output.status.success(), "{output:?}");
}

pub fn cli_to(root: &Path, servers: &[&str], args: &[&str]) -> Output {
    cli(root, &servers.join(","), args)
}

/// Three servers: n1 the primary of `app` under `any 1 (n2,n3)`, n2 and n3 its replicas, with
/// both members before anything is written.
pub fn three_node_cluster(root: &Path) -> [Server; 3] {
    init_certs(root, "certs", "n1,n2,n3");
    let servers = ["n1", "n2", "n3"].map(|name| Server::start(name, free_port(), root));
    let a1 = servers[0].address();
    until_ok(
        root,
        &a1,
        &["db", "create", "app", "--quorum", "any 1 (n2,n3)"],
    );
    for replica in &servers[1..] {
        until_ok(
            root,
            &replica.address(),
            &["db", "create", "app", "--replica-of", &format!("{a1}/app")],
        );
    }
    until_status(root, &a1, "app", |s| {
        s["members"].as_array().map(Vec::len) == Some(2)
    });
    servers
}

/// Writes `key` = `key`-value through `servers`; returns its transaction.
pub fn put_through(root: &Path, servers: &[&str], key: &str) -> u64 {
    let value = format!("{key}-value");
    let output = cli_to(
        root,
        servers,
        &["put", "--db", "app", key, &value, "--timeout", "10"],
    );
    assert!(output.status.success(), "{output:?}");
    json(&output)["tx_id"].as_u64().expect("tx_id")
}

/// Every key in `written` reads back at `server` once `last` is applied there.
pub fn assert_all_readable(root: &Path, server: &str, written: &[(String, u64)]) {
    let last = written.iter().map(|(_, tx)| *tx).max().unwrap_or(0);
    for (key, _) in written {
        let read = json(&until_ok(
            root,
            server,
            &["get", "--db", "app", key, "--min-tx", &last.to_string()],
        ));
        assert_eq!(
            read["value"],
            format!("{key}-value"),
            "acknowledged write {key} is readable at {server}"
        );
    }
}

/// The lease TTL of the automatic-failover tests: `REPNODE_TEST_LEASE_TTL` seconds, or 2
/// (etcd's minimum here; the default of `--lease-ttl` is 5).
pub fn ttl_secs() -> String {
    std::env::var("REPNODE_TEST_LEASE_TTL").unwrap_or_else(|_| "2".into())
}

/// Three servers under `etcd` (its endpoints, comma separated), and `app` on them under automatic failover, n1 its first
/// primary; returns once n1 holds the key and takes writes.
pub fn auto_cluster(root: &Path, etcd: &str) -> Vec<Server> {
    init_certs(root, "certs", "n1,n2,n3");
    let servers: Vec<Server> = ["n1", "n2", "n3"]
        .iter()
        .map(|name| start_under(root, etcd, name, free_port()))
        .collect();
    let a1 = servers[0].address();
    let ttl = ttl_secs();
    let auto = ["--failover", "auto", "--lease-ttl", ttl.as_str()];
    let mut create = vec!["db", "create", "app", "--quorum", "acks 1"];
    create.extend(auto);
    until_ok(root, &a1, &create);
    let source = format!("{a1}/app");
    for replica in &servers[1..] {
        let mut create = vec!["db", "create", "app", "--replica-of", &source];
        create.extend(auto);
        until_ok(root, &replica.address(), &create);
    }
    until_status(root, &a1, "app", |s| {
        s["failover"]["leader"] == "n1" && s["members"].as_array().map(Vec::len) == Some(2)
    });
    // The leader publishes its membership with its commit point every cycle: until it names
    // both replicas, no candidate could prove it holds every acknowledged write.
    published_voters(etcd, &["n2", "n3"]);
    servers
}

/// Starts (again) server `name` on `port` under `etcd`, as `auto_cluster` does.
pub fn start_under(root: &Path, etcd: &str, name: &str, port: u16) -> Server {
    let coordinator = format!("etcd={etcd}");
    Server::start_with(
        name,
        port,
        root,
        &["--coordinator", &coordinator, "--cluster", "test"],
    )
}

/// Waits until the leader's published commit point proves with exactly `voters`.
pub fn published_voters(etcd: &str, voters: &[&str]) {
    published_voters_over(etcd, voters, None);
}

/// As [`published_voters`], through a connection with `tls` when etcd requires it.
pub fn published_voters_over(etcd: &str, voters: &[&str], tls: Option<EtcdTls>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let endpoints = etcd.split(',').map(str::to_string).collect();
        let mut options = EtcdOptions::new(endpoints, "test");
        options.tls = tls;
        let coordinator = EtcdCoordinator::connect(options).await.expect("etcd");
        for _ in 0..200 {
            let view = coordinator.view("app").await.expect("a view of app");
            let published = view.last_commit.map(|c| c.proofs).unwrap_or_default();
            if published.iter().any(|p| p.voters == voters) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the leader never published its membership {voters:?}");
    });
}
