//! Crash safety for real: a child process appends in a loop and reports each append once its
//! durability completed; the parent kills it with SIGKILL at varying moments, reopens the log
//! and checks that every reported append is present and intact. Many rounds, one directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use bytes::Bytes;
use replication_core::{Epoch, LogPosition, Tx, TxId, TxLog};
use store_file::{FileLog, FileLogOptions};

const CHILD_DIR: &str = "STORE_FILE_CRASH_CHILD_DIR";

fn payload_for(id: TxId) -> Bytes {
    // Varying sizes, so that kills land in small and large records alike.
    let size = 16 + (id.0 as usize * 97) % 3000;
    Bytes::from(format!("tx-{}-", id.0).repeat(size / 8 + 1).into_bytes())
}

fn options() -> FileLogOptions {
    // Small segments: kills also land while a segment is being sealed.
    FileLogOptions {
        segment_bytes: 64 << 10,
        ..FileLogOptions::default()
    }
}

/// The child: not a test on its own (it returns at once unless the parent set the variable).
#[tokio::test]
async fn child_appends_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let log = FileLog::open(&dir, options()).expect("child open");
    let mut last = log.state().await.expect("state").last;
    loop {
        let count = 1 + (last.tx_id.0 % 5) as usize;
        let mut txs = Vec::with_capacity(count);
        for _ in 0..count {
            let tx = Tx::new(last, Epoch(1), payload_for(last.tx_id.next()));
            last = tx.position();
            txs.push(tx);
        }
        let durable = log.append(txs).await.expect("append");
        let up_to = durable.await.expect("durable");
        println!("acked {}", up_to.0);
    }
}

#[tokio::test]
async fn every_acknowledged_append_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut total_acked = 0u64;
    for round in 0..25u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        // Kill after a varying number of acknowledgements: the child is mid-append or mid-sync.
        let kill_after = 5 + (round * 37) % 120;
        let mut acked = 0;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("acked ") {
                acked = id.parse().expect("id");
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        assert!(
            acked >= total_acked,
            "round {round}: the child continued from the log"
        );
        total_acked = acked;

        let log = FileLog::open(dir.path(), options()).expect("reopen after kill -9");
        let state = log.state().await.expect("state");
        assert!(
            state.last.tx_id.0 >= acked,
            "round {round}: acknowledged up to {acked}, log holds {}",
            state.last.tx_id
        );
        let mut prev = LogPosition::START;
        let mut next = TxId(1);
        while next <= state.last.tx_id {
            let txs = log.read(next, 512, 8 << 20).await.expect("read back");
            assert!(!txs.is_empty());
            for tx in txs {
                tx.verify_follows(&prev)
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
                assert_eq!(
                    tx.payload,
                    payload_for(tx.id),
                    "round {round}: payload of {}",
                    tx.id
                );
                prev = tx.position();
                next = tx.id.next();
            }
        }
    }
    assert!(total_acked > 100, "the child made progress ({total_acked})");
}
