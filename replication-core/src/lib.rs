//! Storage-agnostic primary/replica replication.
//!
//! The plug-in points are traits: [`TxLog`] (the ordered, hash-chained transaction log a node
//! keeps), [`Transport`] (how nodes reach each other), [`QuorumPolicy`] (which
//! acknowledgements commit a transaction) and [`StateMachine`] (where committed transactions
//! are applied). The replication logic is [`engine::Engine`], a state machine that performs no
//! IO; [`driver`] runs it on tokio against a log and a transport.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use replication_core::{driver::{Node, NodeOptions}, engine::{EngineConfig, Role}};
//! use replication_core::quorum::Quorum;
//! use replication_core::testing::{MemNetwork, RecordingStateMachine};
//! use store_mem::MemLog;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let network = MemNetwork::new();
//! let primary = Node::start(
//!     EngineConfig::new("n1", "db", Role::Primary),
//!     Arc::new(Quorum::Async),
//!     MemLog::new(),
//!     network.endpoint("n1"),
//!     RecordingStateMachine::default(),
//!     NodeOptions::default(),
//! ).await.unwrap();
//! let receipt = primary.write(Bytes::from_static(b"hello")).await.unwrap();
//! assert_eq!(receipt.tx_id.0, 1);
//! primary.shutdown().await;
//! # }
//! ```

pub mod coordinator;
pub mod driver;
pub mod engine;
pub mod log;
pub mod protocol;
pub mod quorum;
pub mod snapshot;
pub mod state_machine;
pub mod testing;
pub mod transport;
pub mod types;

pub use log::{Durability, LogError, TxLog};
pub use quorum::QuorumPolicy;
pub use state_machine::StateMachine;
pub use transport::{Channel, Transport, TransportError};
pub use types::{
    Epoch, EpochClaim, LogBase, LogPosition, LogState, NodeId, ReplicaId, Tx, TxHash, TxId,
    chain_hash,
};
