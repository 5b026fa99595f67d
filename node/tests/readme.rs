//! Runs the command sequence of README.md's "Running repnode" section as it is written, on
//! free ports in a temporary directory: every command in it must work, so the README cannot
//! drift from the binary.

mod common;

use std::io::Write;
use std::process::Command;

use common::free_port;

/// The first `sh` block after the heading `## Running repnode`.
fn readme_sequence() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split_once("## Running repnode")
        .expect("a \"Running repnode\" section")
        .1;
    let block = section.split_once("```sh\n").expect("an sh block in it").1;
    block
        .split_once("```")
        .expect("a closed block")
        .0
        .to_string()
}

#[test]
fn the_readme_sequence_runs_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sequence = readme_sequence();
    for needed in [
        "certs init",
        "serve",
        "db create",
        "put",
        "get",
        "status",
        "log verify",
    ] {
        assert!(sequence.contains(needed), "the README shows `{needed}`");
    }
    // The README's ports, moved to free ones (the QUIC ports are UDP, the metrics one TCP).
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let (p1, p2) = (free_port(), free_port());
    let sequence = sequence
        .replace("127.0.0.1:7440", &format!("127.0.0.1:{p1}"))
        .replace("127.0.0.1:7441", &format!("127.0.0.1:{p2}"))
        .replace("127.0.0.1:9440", &format!("127.0.0.1:{metrics}"));
    // `repnode` is the binary under test. A client command retries while the servers just
    // started are not reachable yet (exit 5), as a person would; a server replaces its
    // background shell, so that `kill %1` reaches it.
    let script = format!(
        r#"set -euo pipefail
# Whatever happens, no server outlives the script.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
repnode() {{
    if [ "$1" = serve ]; then exec "$REPNODE" "$@"; fi
    local tries=0 rc
    while true; do
        rc=0; "$REPNODE" "$@" || rc=$?
        if [ "$rc" -ne 5 ] || [ "$tries" -ge 100 ]; then return "$rc"; fi
        tries=$((tries + 1)); sleep 0.1
    done
}}
{sequence}
echo README-SEQUENCE-DONE
"#
    );
    let path = dir.path().join("readme.sh");
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(script.as_bytes()))
        .expect("script");
    let output = Command::new("bash")
        .arg(&path)
        .current_dir(dir.path())
        .env("REPNODE", env!("CARGO_BIN_EXE_repnode"))
        // The default server is the README's 127.0.0.1:7440, moved like the others.
        .env("REPNODE_SERVER", format!("127.0.0.1:{p1}"))
        .env_remove("REPNODE_TLS_DIR")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("README-SEQUENCE-DONE"),
        "the README sequence failed ({:?}):\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("\"tx_id\":1"),
        "the put committed: {stdout}"
    );
    assert!(stdout.contains("app: ok"), "log verify passed: {stdout}");
}
