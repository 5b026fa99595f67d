//! The reference node `repnode`: a key-value store replicated with replication-core over QUIC,
//! on store-file.
//!
//! This library is the node; the `repnode` binary (`main.rs`, with the command line in `cli/`)
//! only parses flags, renders answers and runs it. [`kv`] is the state machine, [`server`]
//! the multi-database server, [`wire`] and [`client`] the client protocol, [`routing`] how a
//! client finds the primary among several servers, [`promotion`] the checks before a
//! replica is promoted, [`switchover`] a planned hand-over to a replica, [`metrics`] its Prometheus rendering, [`replicator`] the external
//! replicator and [`plan`] the reasoning of `failover plan`.
//!
//! ```
//! use node::kv::{KvOp, KvStore, KvTx};
//! use replication_core::{StateMachine, Tx, LogPosition, Epoch};
//!
//! let mut store = KvStore::default();
//! let payload = KvTx { ops: vec![KvOp::Set { key: "a".into(), value: "1".into() }] }.encode();
//! store.apply(&Tx::new(LogPosition::START, Epoch(1), payload));
//! assert_eq!(store.get("a").map(|(v, _)| v), Some("1".to_string()));
//! ```

pub mod client;
pub mod kv;
pub mod metrics;
pub mod plan;
pub mod promotion;
pub mod replicator;
pub mod rollback;
pub mod routing;
pub mod server;
pub mod switchover;
pub mod wire;

/// The commit this binary was built from (`git rev-parse --short HEAD` at build time), or
/// `unknown` when built outside a Git checkout.
pub const BUILD_COMMIT: &str = env!("REPNODE_BUILD_COMMIT");

/// The version `repnode --version` prints: the crate's version and the commit.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("REPNODE_BUILD_COMMIT"),
    ")"
);
