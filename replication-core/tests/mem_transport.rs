//! The in-memory transport passes the transport conformance suite.

use async_trait::async_trait;
use replication_core::testing::{MemEndpoint, MemNetwork, TransportFactory, transport_conformance};

struct Factory {
    network: MemNetwork,
}

#[async_trait]
impl TransportFactory for Factory {
    type Transport = MemEndpoint;

    async fn start(&self, name: &str) -> (MemEndpoint, String) {
        (self.network.endpoint(name), name.to_string())
    }

    async fn stop(&self, name: &str, _transport: MemEndpoint) {
        self.network.remove(name);
    }

    fn max_frame_size(&self) -> usize {
        1 << 20
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_transport_passes_the_conformance_suite() {
    let network = MemNetwork::new();
    network.set_max_frame_size(1 << 20);
    transport_conformance(&Factory { network }).await;
}
