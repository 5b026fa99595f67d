//! README's first command: `repnode demo` runs a real cluster on loopback and exits 0.

use std::process::Command;

#[test]
fn the_demo_runs_and_loses_nothing() {
    let output = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .arg("demo")
        .output()
        .expect("run repnode demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("waits for its quorum"), "{stdout}");
    assert!(
        stdout.contains("Nothing was lost: all four nodes hold the same 5 keys at tx 6."),
        "{stdout}"
    );
    // The failover act: n1 lost, n2 promoted in epoch 2, every node on n2's history.
    assert!(
        stdout.contains("bananas=21 written to n2: tx 7 (Quorum), epoch 2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "After the failover nothing was lost: all four nodes hold the same 6 keys at tx 7."
        ),
        "{stdout}"
    );
    // The automatic act: etcd is installed by ci/deps.sh, so it must run, not be skipped.
    assert!(!stdout.contains("Skipped"), "{stdout}");
    assert!(
        stdout.contains("After the automatic failover nothing was lost: n1 reads all four keys."),
        "{stdout}"
    );
}

#[test]
fn certs_init_writes_a_usable_pki() {
    let dir = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_repnode"))
        .args(["certs", "init", "--dir"])
        .arg(dir.path())
        .args(["--nodes", "n1,n2"])
        .status()
        .expect("run");
    assert!(status.success());
    for file in [
        "ca.pem",
        "n1.pem",
        "n1.key",
        "n2.pem",
        "n2.key",
        "client.pem",
        "client.key",
    ] {
        assert!(dir.path().join(file).exists(), "{file} written");
    }
    transport_quic::TlsIdentity::load(dir.path(), "n1").expect("n1's identity loads");
}
