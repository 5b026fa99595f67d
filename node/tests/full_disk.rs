//! A full disk (root: each test mounts a small tmpfs of its own). A primary whose data
//! directory fills refuses writes with an error that names the full disk, loses nothing it
//! acknowledged and goes on serving reads; once space is freed and it restarts, it takes
//! writes again and `log verify` passes. A replica whose disk fills stops acknowledging; the
//! primary's status shows it behind; once space returns it catches up.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, cli, free_port, init_certs, json, until_ok, until_status};

/// A tmpfs of `megabytes` mounted at `dir` for the life of the value (needs root: a test
/// never skips, it fails saying so).
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, megabytes: u64) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mounting a tmpfs needs root (the full-disk tests run as root, as CI does): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    /// Fills the disk's free space but `leave` bytes with a file that `free` removes.
    fn fill(&self, leave: u64) {
        let free = free_bytes(&self.dir);
        let size = free.saturating_sub(leave);
        let filler = std::fs::File::create(self.dir.join("filler")).expect("filler");
        // tmpfs allocates on write: write it, not just set its length.
        use std::io::Write;
        let mut filler = std::io::BufWriter::new(filler);
        let chunk = vec![0xa5u8; 1 << 20];
        let mut written = 0;
        while written < size {
            let n = chunk.len().min((size - written) as usize);
            if filler.write_all(&chunk[..n]).is_err() {
                break;
            }
            written += n as u64;
        }
        let _ = filler.flush();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Free bytes on the filesystem holding `dir` (`df`).
fn free_bytes(dir: &Path) -> u64 {
    let output = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df's figure")
}

/// Writes 64 KiB values to `db` through `server` until one is refused; returns the
/// acknowledged keys and the refusal's output.
fn write_until_refused(root: &Path, server: &str, db: &str) -> (Vec<String>, std::process::Output) {
    let value = "x".repeat(64 << 10);
    let mut acknowledged = Vec::new();
    for i in 0..10_000 {
        let key = format!("k{i}");
        let output = cli(
            root,
            server,
            &["put", "--db", db, &key, &value, "--timeout", "5"],
        );
        if !output.status.success() {
            return (acknowledged, output);
        }
        acknowledged.push(key);
    }
    panic!("10,000 writes of 64 KiB fit on the small disk");
}

#[test]
fn a_primary_on_a_full_disk_refuses_writes_keeps_what_it_acknowledged_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1");
    let disk = SmallDisk::mount(&root.join("n1"), 32);
    let segment = ["--log-segment-bytes", "4194304"];
    let mut n1 = Server::start_with("n1", free_port(), root, &segment);
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    disk.fill(6 << 20);

    let (acknowledged, refused) = write_until_refused(root, &a1, "app");
    assert!(!acknowledged.is_empty(), "some writes fit");
    let error = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    eprintln!("the refusal: {error}");
    assert!(
        error.contains("No space left on device"),
        "the refusal names the full disk: {error}"
    );
    let status = json(&cli(root, &a1, &["status", "--db", "app"]));
    assert!(
        status["log_failure"]
            .as_str()
            .is_some_and(|f| f.contains("No space left")),
        "status says why writes are refused: {status}"
    );
    // Reads go on, every acknowledged write among them.
    for key in acknowledged.iter().step_by(7).chain(acknowledged.last()) {
        let read = json(&until_ok(root, &a1, &["get", "--db", "app", key]));
        assert_eq!(
            read["value"].as_str().map(str::len),
            Some(64 << 10),
            "{key}"
        );
    }

    // Space freed, the server restarted: writes again, nothing acknowledged lost.
    disk.free();
    n1.kill_9();
    let verify = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["log", "verify", "--dir"])
        .arg(root.join("n1"))
        .output()
        .expect("verify");
    assert!(
        verify.status.success(),
        "log verify after the full disk: {verify:?}"
    );
    let n1 = Server::start_with("n1", n1.port, root, &segment);
    let put = until_ok(root, &a1, &["put", "--db", "app", "after", "v"]);
    assert!(json(&put)["tx_id"].as_u64() > Some(acknowledged.len() as u64));
    for key in &acknowledged {
        let read = json(&until_ok(root, &a1, &["get", "--db", "app", key]));
        assert_eq!(
            read["value"].as_str().map(str::len),
            Some(64 << 10),
            "{key} survived"
        );
    }
    drop(n1);
}

#[test]
fn a_replica_on_a_full_disk_stops_acknowledging_and_catches_up_once_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,n2");
    let segment = ["--log-segment-bytes", "4194304"];
    let n1 = Server::start_with("n1", free_port(), root, &segment);
    let disk = SmallDisk::mount(&root.join("n2"), 32);
    let mut n2 = Server::start_with("n2", free_port(), root, &segment);
    let (a1, a2) = (n1.address(), n2.address());
    until_ok(root, &a1, &["db", "create", "app", "--sync-acks", "1"]);
    let source = format!("{a1}/app");
    until_ok(root, &a2, &["db", "create", "app", "--replica-of", &source]);
    until_status(root, &a1, "app", |s| {
        s["members"].as_array().map(Vec::len) == Some(1)
    });
    disk.fill(6 << 20);

    // Synchronous writes stop once the replica cannot store them.
    let (acknowledged, refused) = write_until_refused(root, &a1, "app");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "outcome unknown, not lost: {refused:?}"
    );
    let status = json(&cli(root, &a2, &["status", "--db", "app"]));
    assert!(
        status["log_failure"]
            .as_str()
            .is_some_and(|f| f.contains("No space left")),
        "the replica says why: {status}"
    );
    let primary = json(&cli(root, &a1, &["status", "--db", "app"]));
    eprintln!("the primary's view: {}", primary["replicas"]);
    assert!(
        primary["replicas"][0]["lag_txs"].as_u64() > Some(0),
        "{primary}"
    );

    // Space returns; the replica restarts and catches up; writes commit again.
    disk.free();
    n2.kill_9();
    let n2 = Server::start_with("n2", n2.port, root, &segment);
    let started = Instant::now();
    let put = until_ok(
        root,
        &a1,
        &["put", "--db", "app", "after", "v", "--timeout", "30"],
    );
    let tx = json(&put)["tx_id"].as_u64().expect("tx");
    until_status(root, &a2, "app", |s| {
        s["committed"]["tx_id"].as_u64() >= Some(tx)
    });
    assert!(started.elapsed() < Duration::from_secs(120));
    let last = acknowledged.last().expect("some writes fit");
    let read = json(&until_ok(root, &a2, &["get", "--db", "app", last]));
    assert_eq!(read["value"].as_str().map(str::len), Some(64 << 10));
    drop((n1, n2));
}
