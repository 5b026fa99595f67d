//! Table-driven quorum cases from `testdata/quorum_cases.txt` (raft-rs style): each line gives
//! a policy, the replicas' acknowledged positions, and what the policy commits.

use replication_core::quorum::{Quorum, QuorumPolicy, ReplicaProgress, Tags};
use replication_core::{NodeId, TxId};

struct Replica {
    id: NodeId,
    tags: Tags,
    durable: TxId,
    connected: bool,
}

fn parse_replica(spec: &str) -> Replica {
    let mut parts = spec.split(':');
    let (name, acked) = parts
        .next()
        .and_then(|p| p.split_once('='))
        .expect("name=acked");
    let mut replica = Replica {
        id: NodeId::new(name),
        tags: Tags::new(),
        durable: TxId(acked.parse().expect("acked position")),
        connected: true,
    };
    for part in parts {
        match part.split_once('=') {
            Some((key, value)) => {
                replica.tags.insert(key.into(), value.into());
            }
            None if part == "down" => replica.connected = false,
            None => panic!("unknown replica attribute {part:?}"),
        }
    }
    replica
}

#[test]
fn quorum_cases_from_testdata() {
    let text = include_str!("testdata/quorum_cases.txt");
    let mut cases = 0;
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [policy, replicas, expected] = fields[..] else {
            panic!("line {}: three fields", number + 1)
        };
        let policy: Quorum = policy
            .parse()
            .unwrap_or_else(|e| panic!("line {}: {e}", number + 1));
        // The textual form round-trips.
        assert_eq!(
            policy.to_string().parse::<Quorum>().unwrap(),
            policy,
            "line {}",
            number + 1
        );
        let replicas: Vec<Replica> = replicas.split_whitespace().map(parse_replica).collect();
        let progress: Vec<ReplicaProgress<'_>> = replicas
            .iter()
            .map(|r| ReplicaProgress {
                id: &r.id,
                tags: &r.tags,
                durable: r.durable,
                connected: r.connected,
            })
            .collect();
        let expected = if expected == "max" {
            TxId(u64::MAX)
        } else {
            TxId(expected.parse().unwrap())
        };
        assert_eq!(
            policy.satisfied(&progress),
            expected,
            "line {}: {line}",
            number + 1
        );
        cases += 1;
    }
    assert!(cases >= 20, "the table was read ({cases} cases)");
}

#[test]
fn bad_policy_texts_are_clear_errors() {
    for text in [
        "",
        "acks",
        "acks two",
        "any 3 (n2,n3)",
        "first 1 ()",
        "quorum 2",
        "acks 1 where zone",
    ] {
        let error = text.parse::<Quorum>().expect_err(text).to_string();
        assert!(error.contains("invalid quorum policy"), "{text}: {error}");
    }
}

#[test]
fn synchronous_flags() {
    for (text, synchronous) in [
        ("async", false),
        ("acks 0", false),
        ("acks 1", true),
        ("majority", true),
        ("first 1 (a)", true),
        ("async and acks 1", true),
    ] {
        assert_eq!(
            text.parse::<Quorum>().unwrap().is_synchronous(),
            synchronous,
            "{text}"
        );
    }
}
