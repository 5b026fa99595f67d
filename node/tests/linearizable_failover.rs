//! A failover under load, checked for linearizability: real `repnode serve` processes on
//! loopback (n1 the primary of `app` under `any 1 (n2,n3)`), and four client threads that
//! read and overwrite a few keys with the real CLI, `--server a1,a2,a3` throughout, each write
//! a unique value. Midway the primary is killed with SIGKILL; `failover plan` names the replica
//! to promote, `db promote` promotes it, the other replica is repointed, and the old primary
//! rejoins as a replica. Every operation is recorded with when it was invoked and when it
//! returned; the history, final reads on every node included, must be linearizable (one
//! register per key, checked by stateright's `LinearizabilityTester`), and every acknowledged
//! write must be in every node's log. A second test feeds the same check hand-made histories,
//! so that it cannot pass vacuously.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use history::{Call, Op};

/// A concurrent history of registers (one per key) and its linearizability check.
mod history {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use stateright::semantics::register::{Register, RegisterOp, RegisterRet};
    use stateright::semantics::{ConsistencyTester, LinearizabilityTester};

    /// What an operation did.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Call {
        /// Set the key to a value.
        Write(String),
        /// Read the key: the value returned (`None`: absent).
        Read(Option<String>),
    }

    /// One operation of one process on one key.
    #[derive(Clone, Debug)]
    pub struct Op {
        /// The logical process: at most one operation of a process is in flight, and a
        /// process whose operation never returned issues no other (Knossos's model).
        pub process: u64,
        /// The register.
        pub key: String,
        /// The operation and, for a read, what it returned.
        pub call: Call,
        /// When it was invoked (nanoseconds on one clock).
        pub invoked: u64,
        /// When it returned; `None` for a write of unknown outcome, which may or may not have
        /// taken effect, at any point after its invocation. A read that did not return is left
        /// out of a history: it changed nothing and observed nothing.
        pub returned: Option<u64>,
    }

    /// What a check looked at.
    #[derive(Debug)]
    pub struct Checked {
        /// Registers checked.
        pub keys: usize,
        /// Operations checked.
        pub ops: usize,
        /// Writes of unknown outcome among them.
        pub pending: usize,
        /// Time spent checking.
        pub elapsed: Duration,
    }

    /// Checks that `ops` is linearizable, each key a register initially absent. Keys are
    /// checked one by one: linearizability is local (a history is linearizable if and only
    /// if each object's subhistory is), and the search is exponential in the size of what it
    /// interleaves.
    ///
    /// # Errors
    /// The key whose history has no linearization (or is malformed), with its operations.
    pub fn check(ops: &[Op]) -> Result<Checked, String> {
        let started = Instant::now();
        let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in ops {
            // A read that never returned observed nothing: there is nothing to check.
            if op.returned.is_none() && matches!(op.call, Call::Read(_)) {
                continue;
            }
            by_key.entry(op.key.as_str()).or_default().push(op);
        }
        let mut checked = Checked {
            keys: by_key.len(),
            ops: 0,
            pending: 0,
            elapsed: Duration::ZERO,
        };
        for (key, ops) in &by_key {
            checked.ops += ops.len();
            checked.pending += ops.iter().filter(|op| op.returned.is_none()).count();
            let tester = record(ops).map_err(|e| format!("key {key}: {e}"))?;
            // The search recurses once per operation linearized.
            let linearized = std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn(move || tester.serialized_history().is_some())
                .expect("spawn the checker")
                .join()
                .expect("the checker");
            if !linearized {
                let mut sorted = ops.clone();
                sorted.sort_by_key(|op| op.invoked);
                let lines: Vec<String> = sorted.iter().map(|op| format!("  {op:?}")).collect();
                return Err(format!(
                    "key {key}: the history is not linearizable; its {} operations:\n{}",
                    ops.len(),
                    lines.join("\n")
                ));
            }
        }
        checked.elapsed = started.elapsed();
        Ok(checked)
    }

    type Tester = LinearizabilityTester<u64, Register<Option<String>>>;

    /// Feeds one key's operations to a tester in real-time order. The tester takes the
    /// real-time order from the order of invocations and returns; at the same instant an
    /// invocation goes first, so that the two operations count as concurrent.
    fn record(ops: &[&Op]) -> Result<Tester, String> {
        let mut events: Vec<(u64, bool, usize)> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoked, false, i));
            if let Some(returned) = op.returned {
                if returned < op.invoked {
                    return Err(format!("{op:?} returned before it was invoked"));
                }
                events.push((returned, true, i));
            }
        }
        events.sort();
        let mut tester = Tester::new(Register(None));
        for (_, is_return, i) in events {
            let op = ops[i];
            if is_return {
                let ret = match &op.call {
                    Call::Write(_) => RegisterRet::WriteOk,
                    Call::Read(value) => RegisterRet::ReadOk(value.clone()),
                };
                tester.on_return(op.process, ret)?;
            } else {
                let call = match &op.call {
                    Call::Write(value) => RegisterOp::Write(Some(value.clone())),
                    Call::Read(_) => RegisterOp::Read,
                };
                tester.on_invoke(op.process, call)?;
            }
        }
        Ok(tester)
    }
}

/// The registers the clients share: few, so that operations on each overlap.
const KEYS: [&str; 3] = ["x", "y", "z"];

/// Client threads.
const CLIENTS: usize = 4;

/// A bound on each client's operations, whatever happens to the cluster.
const MAX_OPS_PER_CLIENT: usize = 300;

/// The process id of a client's `generation`-th process: a client whose write's outcome is
/// unknown goes on as a new process, since the old one still has that write in flight. Later
/// generations get lower ids: the tester tries processes in id order, so a write that may
/// never have happened is tried after the operations that did.
fn process_id(client: usize, generation: u64) -> u64 {
    (1_000_000 - generation) * CLIENTS as u64 + client as u64
}

/// An acknowledged write: its transaction and hash.
#[derive(Clone, Debug)]
struct Acked {
    value: String,
    tx_id: u64,
    hash: String,
}

/// What one client did.
#[derive(Default)]
struct ClientRun {
    ops: Vec<Op>,
    acked: Vec<Acked>,
    /// Writes refused or never sent (exit code 1 or 4): not applied, left out of the history.
    failed_writes: usize,
    /// Reads that did not answer a value: left out of the history.
    failed_reads: usize,
    /// Writes of unknown outcome (exit code 3, or none): pending forever in the history.
    unknown_writes: usize,
}

/// Nanoseconds since `clock`, the history's one clock.
fn nanos(clock: Instant) -> u64 {
    u64::try_from(clock.elapsed().as_nanos()).expect("nanoseconds fit")
}

/// A small deterministic generator per client: which key, read or write.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the clients share: where and what to run, the history's clock, and progress.
struct Load {
    root: PathBuf,
    servers: String,
    clock: Instant,
    stop: AtomicBool,
    /// Operations that returned (acknowledged writes and reads that answered).
    returned: AtomicUsize,
}

/// One client: reads (from the primary) and writes until told to stop.
fn client(id: usize, load: &Load) -> ClientRun {
    let mut run = ClientRun::default();
    let mut generation = 0;
    let mut random = 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    for seq in 0..MAX_OPS_PER_CLIENT {
        if load.stop.load(Ordering::Relaxed) {
            break;
        }
        let draw = next(&mut random);
        let key = KEYS[(draw % KEYS.len() as u64) as usize];
        let process = process_id(id, generation);
        let invoked = nanos(load.clock);
        let ok = if (draw >> 32).is_multiple_of(2) {
            let value = format!("c{id}-{seq}");
            let output = cli(
                &load.root,
                &load.servers,
                &["put", "--db", "app", key, &value, "--timeout", "5"],
            );
            let returned = nanos(load.clock);
            let mut op = Op {
                process,
                key: key.to_string(),
                call: Call::Write(value.clone()),
                invoked,
                returned: Some(returned),
            };
            match output.status.code() {
                Some(0) => {
                    let answer = json(&output);
                    run.acked.push(Acked {
                        value,
                        tx_id: answer["tx_id"].as_u64().expect("tx_id"),
                        hash: answer["hash"].as_str().expect("hash").to_string(),
                    });
                    run.ops.push(op);
                    true
                }
                // Refused (not the primary, no primary yet) or never sent: by the CLI's
                // contract nothing was written (Knossos's `fail`). Were that untrue, a read
                // of the value would make the history fail the check.
                Some(1 | 4) => {
                    run.failed_writes += 1;
                    false
                }
                // Exit code 3 (or a client that died): it may or may not have committed
                // (Knossos's `info`); the process never returns from it.
                _ => {
                    op.returned = None;
                    run.ops.push(op);
                    run.unknown_writes += 1;
                    generation += 1;
                    false
                }
            }
        } else {
            let output = cli(
                &load.root,
                &load.servers,
                &["get", "--db", "app", key, "--primary", "--timeout", "5"],
            );
            let returned = nanos(load.clock);
            if output.status.success() {
                let value = json(&output)["value"].as_str().map(String::from);
                run.ops.push(Op {
                    process,
                    key: key.to_string(),
                    call: Call::Read(value),
                    invoked,
                    returned: Some(returned),
                });
                true
            } else {
                run.failed_reads += 1;
                false
            }
        };
        if ok {
            load.returned.fetch_add(1, Ordering::Relaxed);
        } else {
            // Paces a client while no primary answers, so that the load does not starve the
            // failover of CPU; this waits for nothing.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    run
}

/// Waits until `load` has had `count` operations return, with a deadline.
fn until_returned(load: &Load, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while load.returned.load(Ordering::Relaxed) < count {
        assert!(Instant::now() < deadline, "{what}: the clients stopped");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `failover plan` over every server, with the lost primary's policy; retried until it
/// recommends a replica.
fn plan(root: &Path, servers: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
            .args(["failover", "plan", "--db", "app", "--servers"])
            .arg(servers.join(","))
            .args(["--quorum", "any 1 (n2,n3)", "--timeout", "2", "--json"])
            .arg("--tls-dir")
            .arg(root.join("certs"))
            .output()
            .expect("run repnode failover plan");
        if output.status.code() == Some(0) {
            let plan = json(&output);
            if plan["recommended"].is_string() {
                return plan;
            }
        }
        assert!(Instant::now() < deadline, "no plan recommends: {output:?}");
    }
}

/// Every transaction `(tx_id, hash)` in a stopped server's log of `app`.
fn log_of(root: &Path, name: &str) -> BTreeMap<u64, String> {
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["log", "dump", "--db", "app", "--json", "--dir"])
        .arg(root.join(name))
        .output()
        .expect("run repnode log dump");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let tx: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let id = tx["tx_id"].as_u64().expect("tx_id");
            (id, tx["hash"].as_str().expect("hash").to_string())
        })
        .collect()
}

/// Every node, once it has applied `last`, reads every key; those reads join the history as
/// processes of their own.
fn final_reads(root: &Path, load: &Load, servers: &[&str], last: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    for (n, server) in servers.iter().enumerate() {
        for (k, key) in KEYS.iter().enumerate() {
            let invoked = nanos(load.clock);
            let read = until_ok(
                root,
                server,
                &["get", "--db", "app", key, "--min-tx", &last.to_string()],
            );
            ops.push(Op {
                process: (n * KEYS.len() + k) as u64,
                key: key.to_string(),
                call: Call::Read(json(&read)["value"].as_str().map(String::from)),
                invoked,
                returned: Some(nanos(load.clock)),
            });
        }
    }
    ops
}

/// Every acknowledged write is in every (stopped) node's log, at its position with its hash
/// (the hash chains the whole history before it).
fn assert_in_every_log(root: &Path, acked: &[Acked]) {
    for name in ["n1", "n2", "n3"] {
        let log = log_of(root, name);
        for write in acked {
            assert_eq!(
                log.get(&write.tx_id),
                Some(&write.hash),
                "{name} holds the acknowledged write of {} at tx {}",
                write.value,
                write.tx_id
            );
        }
    }
}

#[test]
fn a_history_through_a_kill_9_failover_is_linearizable_and_nothing_acknowledged_is_lost() {
    let test_started = Instant::now();
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let [mut n1, n2, n3] = three_node_cluster(root);
    let (a1, a2, a3) = (n1.address(), n2.address(), n3.address());
    let names = BTreeMap::from([(a1.clone(), "n1"), (a2.clone(), "n2"), (a3.clone(), "n3")]);
    let old_epoch = json(&cli(root, &a1, &["status", "--db", "app"]))["epoch"]
        .as_u64()
        .expect("epoch");

    let load = Arc::new(Load {
        root: root.to_path_buf(),
        servers: format!("{a1},{a2},{a3}"),
        clock: Instant::now(),
        stop: AtomicBool::new(false),
        returned: AtomicUsize::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let load = load.clone();
            std::thread::spawn(move || client(id, &load))
        })
        .collect();

    // Under load, the primary is killed.
    until_returned(&load, 100, "before the kill");
    let killed_at = nanos(load.clock);
    n1.kill_9();

    // The plan names the replica holding every acknowledged write; it is promoted once its
    // link to the dead primary is down, and the other replica repointed to it.
    let plan = plan(root, &[&a1, &a2, &a3]);
    let new = plan["recommended"]
        .as_str()
        .expect("recommended")
        .to_string();
    let other = if new == a2 { a3.clone() } else { a2.clone() };
    until_status(root, &new, "app", |s| s["upstream"] != "streaming");
    let policy = format!("any 1 (n1,{})", names[&other]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let promoted = loop {
        let output = cli_to(
            root,
            &[&new, &other],
            &["db", "promote", "app", "--quorum", &policy],
        );
        if output.status.success() {
            break json(&output);
        }
        assert!(Instant::now() < deadline, "promotion refused: {output:?}");
    };
    assert_eq!(promoted["role"], "primary", "{promoted}");
    let epoch = promoted["epoch"].as_u64().expect("epoch");
    assert!(epoch > old_epoch, "a new epoch: {promoted}");
    let source = format!("{new}/app");
    let repointed = cli(
        root,
        &other,
        &["db", "update", "app", "--replica-of", &source],
    );
    assert!(repointed.status.success(), "{repointed:?}");
    until_status(root, &other, "app", |s| {
        s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    let promoted_at = nanos(load.clock);
    let before = load.returned.load(Ordering::Relaxed);
    until_returned(&load, before + 20, "after the promotion");

    // The old primary rejoins: its source is set in its settings before it starts, so that
    // it never takes a write as a primary (clients list it first), then it is repointed.
    let settings = root.join("n1/databases/app/settings.toml");
    let text = std::fs::read_to_string(&settings).expect("settings");
    std::fs::write(&settings, format!("replica_of = \"{source}\"\n{text}")).expect("settings");
    let n1 = Server::start("n1", n1.port, root);
    until_ok(root, &a1, &["db", "update", "app", "--replica-of", &source]);
    until_status(root, &a1, "app", |s| {
        s["role"] == "replica" && s["upstream"] == "streaming" && s["epoch"].as_u64() == Some(epoch)
    });
    let rejoined_at = nanos(load.clock);
    let before = load.returned.load(Ordering::Relaxed);
    until_returned(&load, before + 100, "after the rejoin");
    load.stop.store(true, Ordering::Relaxed);
    let runs: Vec<ClientRun> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();

    let mut ops: Vec<Op> = runs.iter().flat_map(|r| r.ops.clone()).collect();
    let acked: Vec<Acked> = runs.iter().flat_map(|r| r.acked.clone()).collect();
    let unknown: usize = runs.iter().map(|r| r.unknown_writes).sum();
    let failed_writes: usize = runs.iter().map(|r| r.failed_writes).sum();
    let failed_reads: usize = runs.iter().map(|r| r.failed_reads).sum();
    // The history covers each phase: before the kill, after the promotion, after the rejoin.
    let phases = [
        ("before the kill", 0, killed_at),
        ("after the promotion", promoted_at, rejoined_at),
        ("after the rejoin", rejoined_at, u64::MAX),
    ];
    for (phase, from, to) in phases {
        let within = |op: &&Op| op.invoked >= from && op.returned.is_some_and(|r| r < to);
        let writes = ops
            .iter()
            .filter(within)
            .filter(|op| matches!(op.call, Call::Write(_)))
            .count();
        let reads_of_values = ops
            .iter()
            .filter(within)
            .filter(|op| matches!(op.call, Call::Read(Some(_))))
            .count();
        assert!(
            writes > 0 && reads_of_values > 0,
            "{phase}: {writes} acknowledged writes, {reads_of_values} reads of a value"
        );
        println!("{phase}: {writes} acknowledged writes, {reads_of_values} reads of a value");
    }
    println!(
        "the kill to the repointed replica streaming: {:?}; to the rejoined old primary: {:?}",
        Duration::from_nanos(promoted_at - killed_at),
        Duration::from_nanos(rejoined_at - killed_at)
    );

    // Every node, once it has applied every acknowledged write, reads the same values; those
    // reads join the history as processes of their own.
    let last = acked
        .iter()
        .map(|a| a.tx_id)
        .max()
        .expect("acknowledged writes");
    let servers = [a1.as_str(), a2.as_str(), a3.as_str()];
    ops.extend(final_reads(root, &load, &servers, last));

    let checked = history::check(&ops).unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(checked.pending, unknown);
    println!(
        "history: {} operations on {} keys ({} acknowledged writes, {} writes of unknown \
         outcome, {} refused writes and {} failed reads left out); checked in {:?}",
        checked.ops,
        checked.keys,
        acked.len(),
        unknown,
        failed_writes,
        failed_reads,
        checked.elapsed
    );

    // Every acknowledged write is in every node's log, at its position with its hash (the
    // hash chains the whole history before it). The logs are read offline, once every node
    // has committed the last one.
    for server in servers {
        until_status(root, server, "app", |s| {
            s["committed"]["tx_id"].as_u64() >= Some(last)
        });
    }
    let mut servers = [n1, n2, n3];
    for server in &mut servers {
        server.kill_9();
    }
    assert_in_every_log(root, &acked);
    println!("test took {:?}", test_started.elapsed());
}

/// Hand-made histories: the check rejects what is not linearizable and accepts what is,
/// writes of unknown outcome included.
#[test]
fn the_check_rejects_a_stale_read_and_accepts_concurrent_and_pending_writes() {
    let op = |process, key: &str, call, invoked, returned| Op {
        process,
        key: key.to_string(),
        call,
        invoked,
        returned,
    };
    let write = |v: &str| Call::Write(v.to_string());
    let read = |v: Option<&str>| Call::Read(v.map(String::from));

    // a is overwritten by b before the read begins, which still returns a.
    let stale = [
        op(0, "x", write("a"), 0, Some(10)),
        op(1, "x", write("b"), 20, Some(30)),
        op(2, "x", read(Some("a")), 40, Some(50)),
    ];
    let error = history::check(&stale).expect_err("a stale read");
    assert!(error.contains("key x"), "{error}");
    // The same with the read overlapping b's write: linearizable (the read before b).
    let overlapping = [
        op(0, "x", write("a"), 0, Some(10)),
        op(1, "x", write("b"), 20, Some(45)),
        op(2, "x", read(Some("a")), 40, Some(50)),
    ];
    history::check(&overlapping).expect("linearizable");
    // A read of an acknowledged key that finds nothing (a lost write).
    let lost = [
        op(0, "x", write("a"), 0, Some(10)),
        op(1, "x", read(None), 20, Some(30)),
    ];
    assert!(history::check(&lost).is_err());
    // Two readers that see two overlapping writes in opposite orders.
    let disagree = [
        op(0, "x", write("a"), 0, Some(100)),
        op(1, "x", write("b"), 0, Some(100)),
        op(2, "x", read(Some("a")), 10, Some(20)),
        op(2, "x", read(Some("b")), 30, Some(40)),
        op(3, "x", read(Some("b")), 10, Some(20)),
        op(3, "x", read(Some("a")), 30, Some(40)),
    ];
    assert!(history::check(&disagree).is_err());

    // A write of unknown outcome may take effect late, or never, but not be undone.
    let pending = |reads: &[(Option<&str>, u64)]| {
        let mut ops = vec![
            op(0, "x", write("a"), 0, Some(10)),
            op(1, "x", write("b"), 12, None),
        ];
        for (i, (value, at)) in reads.iter().enumerate() {
            ops.push(op(2 + i as u64, "x", read(*value), *at, Some(at + 5)));
        }
        history::check(&ops)
    };
    let late = pending(&[(Some("a"), 20), (Some("b"), 30), (Some("b"), 40)])
        .expect("b took effect after the first read");
    assert_eq!((late.ops, late.pending), (5, 1));
    pending(&[(Some("a"), 20), (Some("a"), 40)]).expect("b never took effect");
    assert!(pending(&[(Some("b"), 20), (Some("a"), 30)]).is_err());

    // Keys are registers of their own: a's value on y says nothing about x.
    let two_keys = [
        op(0, "x", write("a"), 0, Some(10)),
        op(0, "y", write("b"), 20, Some(30)),
        op(1, "x", read(Some("a")), 40, Some(50)),
        op(1, "y", read(Some("b")), 40, Some(50)),
    ];
    let checked = history::check(&two_keys).expect("linearizable");
    assert_eq!((checked.keys, checked.ops), (2, 4));
    // A process with two operations in flight is a malformed history.
    let malformed = [
        op(0, "x", write("a"), 0, None),
        op(0, "x", write("b"), 5, Some(10)),
    ];
    assert!(history::check(&malformed).is_err());
}

/// The same load and checks through an automatic failover: `app` under `--failover auto`
/// with a real etcd, the primary killed with SIGKILL, a replica elected by the coordinator
/// with no operator, and the old primary restarted (with nothing set by hand): it follows
/// the new primary by itself. Reads with `--primary` are answered only within a lease.
#[test]
fn a_history_through_an_automatic_failover_is_linearizable_and_nothing_acknowledged_is_lost() {
    let test_started = Instant::now();
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    let etcd = coordinator_etcd::testing::EtcdServer::start().expect("start etcd");
    let mut servers = auto_cluster(root, &etcd.endpoint());
    let addresses: Vec<String> = servers.iter().map(Server::address).collect();
    let load = Arc::new(Load {
        root: root.to_path_buf(),
        servers: addresses.join(","),
        clock: Instant::now(),
        stop: AtomicBool::new(false),
        returned: AtomicUsize::new(0),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let load = load.clone();
            std::thread::spawn(move || client(id, &load))
        })
        .collect();

    until_returned(&load, 100, "before the kill");
    let killed_at = nanos(load.clock);
    servers[0].kill_9();
    // A replica is elected and takes writes: nothing to do but wait.
    let before = load.returned.load(Ordering::Relaxed);
    until_returned(&load, before + 40, "after the election");
    let elected_at = nanos(load.clock);
    let port = servers[0].port;
    servers[0] = start_under(root, &etcd.endpoint(), "n1", port);
    until_status(root, &addresses[0], "app", |s| {
        s["role"] == "replica" && s["upstream"] == "streaming"
    });
    let rejoined_at = nanos(load.clock);
    let before = load.returned.load(Ordering::Relaxed);
    until_returned(&load, before + 100, "after the rejoin");
    load.stop.store(true, Ordering::Relaxed);
    let runs: Vec<ClientRun> = clients
        .into_iter()
        .map(|c| c.join().expect("client"))
        .collect();

    let mut ops: Vec<Op> = runs.iter().flat_map(|r| r.ops.clone()).collect();
    let acked: Vec<Acked> = runs.iter().flat_map(|r| r.acked.clone()).collect();
    let unknown: usize = runs.iter().map(|r| r.unknown_writes).sum();
    let phases = [
        ("before the kill", 0, killed_at),
        ("after the election", killed_at, rejoined_at),
        ("after the rejoin", rejoined_at, u64::MAX),
    ];
    for (phase, from, to) in phases {
        let within = |op: &&Op| op.invoked >= from && op.returned.is_some_and(|r| r < to);
        let writes = ops
            .iter()
            .filter(within)
            .filter(|op| matches!(op.call, Call::Write(_)))
            .count();
        assert!(writes > 0, "{phase}: no acknowledged write");
        println!("{phase}: {writes} acknowledged writes");
    }
    // (Clients list the dead n1 first: each operation then waits out a connection attempt
    // to it, so 40 operations take long after the kill; the first acknowledgement does not.)
    let first_ack = ops
        .iter()
        .filter(|op| matches!(op.call, Call::Write(_)) && op.invoked > killed_at)
        .filter_map(|op| op.returned)
        .min()
        .expect("a write acknowledged after the kill");
    println!(
        "the kill to the first write acknowledged by the elected primary: {:?}; to 40 \
         operations returned: {:?}; to the old primary following it: {:?}",
        Duration::from_nanos(first_ack - killed_at),
        Duration::from_nanos(elected_at - killed_at),
        Duration::from_nanos(rejoined_at - killed_at)
    );
    let last = acked
        .iter()
        .map(|a| a.tx_id)
        .max()
        .expect("acknowledged writes");
    let every: Vec<&str> = addresses.iter().map(String::as_str).collect();
    ops.extend(final_reads(root, &load, &every, last));
    let checked = history::check(&ops).unwrap_or_else(|violation| panic!("{violation}"));
    assert_eq!(checked.pending, unknown);
    println!(
        "history: {} operations on {} keys ({} acknowledged writes, {} of unknown outcome); \
         checked in {:?}",
        checked.ops,
        checked.keys,
        acked.len(),
        unknown,
        checked.elapsed
    );
    for server in &addresses {
        until_status(root, server, "app", |s| {
            s["committed"]["tx_id"].as_u64() >= Some(last)
        });
    }
    for server in &mut servers {
        server.kill_9();
    }
    assert_in_every_log(root, &acked);
    println!("test took {:?}", test_started.elapsed());
}
