//! The executable contract of [`Transport`]: every transport runs [`transport_conformance`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::transport::{Channel, Transport, TransportError};

/// Makes endpoints for the conformance suite.
#[async_trait]
pub trait TransportFactory: Send + Sync {
    /// The transport under test.
    type Transport: Transport;

    /// Starts (or restarts, after [`TransportFactory::stop`]) the endpoint whose identity is
    /// `name`; returns it and the address peers dial.
    async fn start(&self, name: &str) -> (Self::Transport, String);

    /// Stops an endpoint as a crashed server would: its peers' channels break.
    async fn stop(&self, name: &str, transport: Self::Transport);

    /// The largest frame the endpoints accept.
    fn max_frame_size(&self) -> usize;
}

const PATIENCE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn open<T: Transport>(from: &T, to: &T, address: &str) -> (Channel, Channel) {
    let mut local = within("connect", from.connect(address))
        .await
        .expect("connect");
    // Some transports announce a channel only once it carries data.
    local
        .sender
        .send(Bytes::from_static(b"hello"))
        .await
        .expect("hello");
    let mut remote = within("accept", to.accept()).await.expect("accept");
    let hello = within("hello", remote.receiver.recv())
        .await
        .expect("recv")
        .expect("frame");
    assert_eq!(&hello[..], b"hello");
    (local, remote)
}

/// Runs every check of the [`Transport`] contract. Panics naming the broken rule.
pub async fn transport_conformance<F: TransportFactory>(factory: &F) {
    let (a, _) = factory.start("conformance-a").await;
    let (b, b_address) = factory.start("conformance-b").await;

    // Identities come from authentication, both ways.
    let (mut ab, mut ba) = open(&a, &b, &b_address).await;
    assert_eq!(
        ab.peer.as_str(),
        "conformance-b",
        "the dialler sees the listener's identity"
    );
    assert_eq!(
        ba.peer.as_str(),
        "conformance-a",
        "the listener sees the dialler's identity"
    );

    // Order and integrity, in both directions, with sizes from empty to large.
    let frames: Vec<Bytes> = (0..300usize)
        .map(|i| Bytes::from(vec![(i % 251) as u8; (i * 977) % 70_000]))
        .collect();
    let sender = async {
        for frame in &frames {
            ab.sender.send(frame.clone()).await.expect("send");
        }
    };
    let receiver = async {
        for (i, frame) in frames.iter().enumerate() {
            let got = ba.receiver.recv().await.expect("recv").expect("frame");
            assert_eq!(&got, frame, "frame {i} arrives intact and in order");
        }
    };
    within("ordered frames", async { tokio::join!(sender, receiver) }).await;
    ba.sender
        .send(Bytes::from_static(b"reply"))
        .await
        .expect("reply");
    assert_eq!(
        &within("reply", ab.receiver.recv())
            .await
            .expect("recv")
            .expect("frame")[..],
        b"reply"
    );

    // Channels are independent: a channel nobody reads does not hold up another.
    let (mut stuck, stuck_remote) = open(&a, &b, &b_address).await;
    for _ in 0..8 {
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            stuck.sender.send(Bytes::from(vec![1u8; 32 << 10])),
        )
        .await;
    }
    ab.sender
        .send(Bytes::from_static(b"still flowing"))
        .await
        .expect("send");
    assert_eq!(
        &within("independent channel", ba.receiver.recv())
            .await
            .expect("recv")
            .expect("frame")[..],
        b"still flowing"
    );

    // Backpressure: a sender whose peer does not read is eventually made to wait.
    let (mut flood, flood_remote) = open(&a, &b, &b_address).await;
    let mut blocked = false;
    for _ in 0..8192 {
        if tokio::time::timeout(
            Duration::from_millis(300),
            flood.sender.send(Bytes::from(vec![2u8; 64 << 10])),
        )
        .await
        .is_err()
        {
            blocked = true;
            break;
        }
    }
    assert!(
        blocked,
        "sending 512 MiB to a peer that never reads must block"
    );

    // An oversized frame is refused by one side or the other, and other channels go on.
    let (mut big, mut big_remote) = open(&a, &b, &b_address).await;
    let oversized = Bytes::from(vec![3u8; factory.max_frame_size() + 1]);
    let refused = match big.sender.send(oversized).await {
        Err(TransportError::FrameTooLarge { .. }) => true,
        _ => matches!(
            within("oversized", big_remote.receiver.recv()).await,
            Err(TransportError::FrameTooLarge { .. })
        ),
    };
    assert!(refused, "an oversized frame is refused with FrameTooLarge");
    ab.sender
        .send(Bytes::from_static(b"after oversized"))
        .await
        .expect("send");
    assert_eq!(
        &within("after oversized", ba.receiver.recv())
            .await
            .expect("recv")
            .expect("frame")[..],
        b"after oversized"
    );

    // Peer loss is noticed, then a restarted peer is reachable again.
    // Everything of B's goes, as in a crash (a stream can keep a QUIC endpoint alive).
    drop((
        stuck,
        stuck_remote,
        flood,
        flood_remote,
        big,
        big_remote,
        ba,
    ));
    factory.stop("conformance-b", b).await;
    let ended = within("peer loss noticed", ab.receiver.recv()).await;
    assert!(
        !matches!(ended, Ok(Some(_))),
        "a lost peer's channel ends: {ended:?}"
    );
    let (b, b_address) = factory.start("conformance-b").await;
    let mut reconnected = None;
    for _ in 0..50 {
        if let Ok(Ok(channel)) =
            tokio::time::timeout(Duration::from_secs(1), a.connect(&b_address)).await
        {
            reconnected = Some(channel);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut channel = reconnected.expect("reconnect to a restarted peer");
    channel
        .sender
        .send(Bytes::from_static(b"again"))
        .await
        .expect("send");
    let mut accepted = within("accept after restart", b.accept())
        .await
        .expect("accept");
    assert_eq!(
        &within("frame after restart", accepted.receiver.recv())
            .await
            .expect("recv")
            .expect("frame")[..],
        b"again"
    );
}
