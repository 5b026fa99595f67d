//! An external replicator, as immudb's: copies committed transactions from a database on one
//! `repnode` server into a database created with `--external-replicator` on another, whose
//! engine verifies the hash chain of everything pushed.
//!
//! ```sh
//! repnode db create mirror --external-replicator --server 127.0.0.1:7441
//! cargo run --example external_replicator -- 127.0.0.1:7440/app 127.0.0.1:7441/mirror certs
//! ```
//! It follows the source until interrupted (or until a transaction id given as a fourth
//! argument is copied).

use anyhow::{Context, Result, bail};
use replication_core::TxId;
use transport_quic::TlsIdentity;

fn split(target: &str) -> Result<(&str, &str)> {
    target.rsplit_once('/').context("expected HOST:PORT/DB")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        bail!(
            "usage: external_replicator SOURCE_HOST:PORT/DB TARGET_HOST:PORT/DB TLS_DIR [UNTIL_TX]"
        );
    }
    let (source, source_db) = split(&args[0])?;
    let (target, target_db) = split(&args[1])?;
    let identity = TlsIdentity::load(args[2].as_ref(), "client")?;
    let until = args.get(3).map(|t| t.parse().map(TxId)).transpose()?;
    let last =
        node::replicator::copy(source, source_db, target, target_db, identity, until).await?;
    println!("copied up to transaction {last}");
    Ok(())
}
