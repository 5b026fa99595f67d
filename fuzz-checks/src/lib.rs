//! What each fuzz target checks, on any input: nothing read from the network or from disk
//! makes the code panic, and what decodes encodes back to the same thing. The targets in
//! `fuzz/` (cargo-fuzz, nightly) call these functions; `tests/corpus.rs` replays the
//! committed corpus through them on the stable toolchain, so CI guards against regressions
//! without nightly.
//!
//! ```
//! fuzz_checks::frame(b"\x00garbage");
//! fuzz_checks::quorum_policy(b"any 2 (n1,n2)");
//! ```

use std::io::Write;

use replication_core::protocol::{self, MAX_FRAME_SIZE};
use replication_core::quorum::Quorum;

/// The names of the targets, as `fuzz/fuzz_targets/` and `fuzz/corpus/` name them.
pub const TARGETS: [&str; 5] = [
    "frame",
    "client_request",
    "segment_recovery",
    "settings",
    "quorum_policy",
];

/// Runs the check of target `name` on `data`.
///
/// # Panics
/// On an unknown target name, or when the check finds a bug (its purpose).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "frame" => frame(data),
        "client_request" => client_request(data),
        "segment_recovery" => segment_recovery(data),
        "settings" => settings(data),
        "quorum_policy" => quorum_policy(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

/// A replication frame from the network: decoded or refused, never a panic; what decodes
/// encodes and decodes to the same message.
pub fn frame(data: &[u8]) {
    if let Ok(message) = protocol::decode(data, MAX_FRAME_SIZE) {
        let again = protocol::encode(&message, MAX_FRAME_SIZE).expect("a decoded message encodes");
        assert_eq!(
            protocol::decode(&again, MAX_FRAME_SIZE).expect("re-encoded decodes"),
            message
        );
    }
}

/// A client request and a server answer, as postcard frames from the network.
pub fn client_request(data: &[u8]) {
    if let Ok(request) = postcard::from_bytes::<node::wire::Request>(data) {
        let again = postcard::to_allocvec(&request).expect("a decoded request encodes");
        let twice: node::wire::Request = postcard::from_bytes(&again).expect("re-encoded decodes");
        assert_eq!(format!("{twice:?}"), format!("{request:?}"));
    }
    let _ = postcard::from_bytes::<node::wire::Response>(data);
}

/// A segment file of arbitrary bytes, as a crash or a damaged disk could leave it: the
/// offline check and the log's recovery refuse it or recover a prefix, never panic; a log
/// that opens reports a state it can read back.
pub fn segment_recovery(data: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let segment = dir.path().join(format!("{:020}.seg", 1));
    std::fs::File::create(&segment)
        .and_then(|mut file| file.write_all(data))
        .expect("the segment written");
    let _ = store_file::verify(dir.path(), |_| {});
    let options = store_file::FileLogOptions {
        preallocate: false,
        ..store_file::FileLogOptions::default()
    };
    let _ = store_file::FileLog::open(dir.path(), options);
}

/// A database's settings file (TOML), as the data directory holds it, and the checks the
/// server applies to new settings.
pub fn settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(settings) = toml::from_str::<node::wire::DbSettings>(text) {
        let _ = node::server::policy_of(&settings);
        if let Some(source) = &settings.replica_of {
            let _ = node::server::check_replica_of(source);
            let _ = node::server::parse_replica_of(source);
        }
    }
    let _ = node::server::check_replica_of(text);
}

/// A quorum policy's text: parsed or refused; what parses prints as text that parses to the
/// same policy.
pub fn quorum_policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = text.parse::<Quorum>() {
        let printed = policy.to_string();
        assert_eq!(
            printed.parse::<Quorum>().as_ref(),
            Ok(&policy),
            "{text:?} printed as {printed:?}"
        );
    }
}
