//! Bad input at the network edge, from a peer holding a valid certificate: garbage, truncated
//! frames, a frame over the size limit, valid frames of the wrong type for the channel, and
//! floods of channels and connections. The server stays up, logs the peer, and serves its
//! databases as before.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, cli, free_port, init_certs, json, until_ok};
use node::wire::{CLIENT_HELLO, Request, Response};
use replication_core::protocol::{self, MAX_FRAME_SIZE, Message};
use replication_core::transport::Transport;
use replication_core::{LogPosition, TxId};
use transport_quic::{QuicOptions, QuicTransport, TlsIdentity};

/// A QUIC endpoint on loopback holding the certificate `name` in `root/certs`, sending frames
/// up to `max_frame_size`.
async fn endpoint(root: &std::path::Path, name: &str, max_frame_size: usize) -> QuicTransport {
    let identity = TlsIdentity::load(&root.join("certs"), name).expect("identity");
    let options = QuicOptions {
        max_frame_size,
        ..QuicOptions::default()
    };
    QuicTransport::bind("127.0.0.1:0".parse().expect("addr"), identity, options)
        .await
        .expect("bind")
}

#[test]
fn garbage_truncated_oversized_and_misplaced_frames_and_floods_leave_the_server_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    init_certs(root, "certs", "n1,intruder");
    let log = root.join("n1.log");
    let mut n1 = Server::start_logged(
        "n1",
        free_port(),
        root,
        &["--max-connections-per-peer", "8"],
        &log,
    );
    let a1 = n1.address();
    until_ok(root, &a1, &["db", "create", "app"]);
    until_ok(root, &a1, &["db", "create", "other"]);
    until_ok(root, &a1, &["put", "--db", "app", "k", "v"]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = endpoint(root, "client", MAX_FRAME_SIZE).await;
        let node = endpoint(root, "intruder", 4 * MAX_FRAME_SIZE).await;

        // Garbage as a channel's first frame: neither a subscription nor a client hello.
        let mut channel = node.connect(&a1).await.expect("channel");
        channel
            .sender
            .send(Bytes::from_static(b"\xff\xfe garbage"))
            .await
            .expect("send");
        assert!(
            matches!(channel.receiver.recv().await, Ok(None) | Err(_)),
            "closed without an answer"
        );

        // A valid replication message of the wrong kind to begin a channel with.
        let ack = Message::Ack {
            durable: LogPosition::START,
        };
        let mut channel = node.connect(&a1).await.expect("channel");
        channel
            .sender
            .send(protocol::encode(&ack, MAX_FRAME_SIZE).expect("encode"))
            .await
            .expect("send");
        assert!(matches!(channel.receiver.recv().await, Ok(None) | Err(_)));

        // A client session sent garbage, then a replication message, then a valid request:
        // each is answered (the garbage as malformed), and the session goes on.
        let mut session = client.connect(&a1).await.expect("channel");
        session
            .sender
            .send(Bytes::from_static(CLIENT_HELLO))
            .await
            .expect("hello");
        for bad in [
            Bytes::from_static(b"\xff\xff\xff\xff\xff\xff"),
            protocol::encode(
                &Message::Committed {
                    claim: Default::default(),
                    committed: TxId(9),
                },
                MAX_FRAME_SIZE,
            )
            .expect("encode"),
        ] {
            let garbage = bad[0] == 0xff;
            session.sender.send(bad).await.expect("send");
            let answer = session
                .receiver
                .recv()
                .await
                .expect("recv")
                .expect("an answer");
            let answer: Response = postcard::from_bytes(&answer).expect("a response");
            if garbage {
                assert!(matches!(answer, Response::Error { .. }), "{answer:?}");
            }
        }
        let status = postcard::to_allocvec(&Request::Status { db: "app".into() }).expect("encode");
        session
            .sender
            .send(Bytes::from(status))
            .await
            .expect("send");
        let answer = session
            .receiver
            .recv()
            .await
            .expect("recv")
            .expect("an answer");
        let answer: Response = postcard::from_bytes(&answer).expect("a response");
        assert!(
            matches!(answer, Response::Status(_)),
            "the session still serves: {answer:?}"
        );

        // A frame over the limit: the channel is dropped, nothing read into memory.
        let mut channel = node.connect(&a1).await.expect("channel");
        let huge = Bytes::from(vec![0u8; MAX_FRAME_SIZE + 1]);
        let _ = channel.sender.send(huge).await;
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(10), channel.receiver.recv()).await,
            Ok(Ok(None) | Err(_))
        ));

        // A truncated frame: a header announcing more than follows, then the stream ends.
        let (mut send, _recv) = transport_quic::testing::raw_stream(&node, &a1)
            .await
            .expect("raw stream");
        send.write_all(&1000u32.to_le_bytes())
            .await
            .expect("header");
        send.write_all(b"only this").await.expect("body");
        let _ = send.finish();

        // A flood of channels that never say anything.
        let mut idle = Vec::new();
        for _ in 0..300 {
            match tokio::time::timeout(Duration::from_secs(2), node.connect(&a1)).await {
                Ok(Ok(channel)) => idle.push(channel),
                _ => break,
            }
        }

        // A flood of connections from one identity: past the limit (8), refused.
        let mut refused = 0;
        let mut held = Vec::new();
        for _ in 0..12 {
            let extra = endpoint(root, "intruder", MAX_FRAME_SIZE).await;
            match tokio::time::timeout(Duration::from_secs(5), async {
                let mut channel = extra.connect(&a1).await?;
                channel
                    .sender
                    .send(Bytes::from_static(CLIENT_HELLO))
                    .await?;
                let request = postcard::to_allocvec(&Request::ListDbs).expect("encode");
                channel.sender.send(Bytes::from(request)).await?;
                channel.receiver.recv().await
            })
            .await
            {
                Ok(Ok(Some(_))) => held.push(extra),
                _ => refused += 1,
            }
        }
        assert!(
            refused >= 4,
            "at most 8 connections of one identity: {refused} refused"
        );
        drop(idle);
        drop(held);
    });

    // Still serving, both databases, to a well-behaved client.
    let read = json(&until_ok(root, &a1, &["get", "--db", "app", "k"]));
    assert_eq!(read["value"], "v");
    assert!(
        cli(root, &a1, &["put", "--db", "other", "k", "v"])
            .status
            .success()
    );
    assert!(
        n1.child.try_wait().expect("wait").is_none(),
        "the server is still up"
    );
    n1.kill_9();
    let log = std::fs::read_to_string(&log).expect("log");
    for expected in [
        "a channel began with neither a subscription nor a client hello",
        "too many connections from one identity",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("{expected:?} logged:\n{log}"));
        assert!(line.contains("intruder"), "the peer is named: {line}");
    }
}
