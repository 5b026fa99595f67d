//! Rollback files: the transactions a database dropped from its log when it rejoined a newer
//! history, kept under `<database>/rollback/` before they were dropped, one file per
//! rollback, as MongoDB keeps them. Each file is JSON lines, one transaction per line:
//! `{"tx_id", "epoch", "hash", "payload_hex"}`, synced (with its directory) before the log is
//! cut.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use replication_core::driver::{RollbackFile, RollbackSink};
use replication_core::{Tx, TxId};

/// Writes rollback files into one directory, created on first use.
#[derive(Debug)]
pub struct RollbackDir {
    dir: PathBuf,
}

impl RollbackDir {
    /// Rollback files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> RollbackDir {
        RollbackDir { dir: dir.into() }
    }
}

impl RollbackSink for RollbackDir {
    fn create(&self, from: TxId, to: TxId) -> io::Result<Box<dyn RollbackFile>> {
        fs::create_dir_all(&self.dir)?;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .dir
            .join(format!("rollback-{millis}-tx{}-{}.jsonl", from.0, to.0));
        // `create_new`: a rollback never overwrites another.
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok(Box::new(Open {
            path,
            out: BufWriter::new(file),
        }))
    }
}

struct Open {
    path: PathBuf,
    out: BufWriter<File>,
}

/// One transaction as a rollback line.
pub fn line(tx: &Tx) -> String {
    let payload: String = tx.payload.iter().map(|b| format!("{b:02x}")).collect();
    serde_json::json!({
        "tx_id": tx.id.0,
        "epoch": tx.epoch.0,
        "hash": tx.hash.to_hex(),
        "payload_hex": payload,
    })
    .to_string()
}

impl RollbackFile for Open {
    fn write(&mut self, txs: &[Tx]) -> io::Result<()> {
        for tx in txs {
            writeln!(self.out, "{}", line(tx))?;
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> io::Result<String> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        Ok(self.path.display().to_string())
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use replication_core::{Epoch, LogPosition};

    use super::*;

    #[test]
    fn a_rollback_is_one_synced_file_of_json_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sink = RollbackDir::new(dir.path().join("rollback"));
        let a = Tx::new(LogPosition::START, Epoch(3), Bytes::from_static(b"\x00ab"));
        let b = Tx::new(a.position(), Epoch(3), Bytes::from_static(b"c"));
        let mut file = sink.create(TxId(1), TxId(2)).expect("create");
        file.write(std::slice::from_ref(&a)).expect("write");
        file.write(std::slice::from_ref(&b)).expect("write");
        let path = file.finish().expect("finish");
        assert!(path.contains("tx1-2"), "{path}");
        let text = fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["tx_id"], 1);
        assert_eq!(lines[0]["epoch"], 3);
        assert_eq!(lines[0]["payload_hex"], "006162");
        assert_eq!(lines[1]["hash"], b.hash.to_hex());
    }
}
